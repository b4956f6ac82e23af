//! Shared helpers for the tests that run against the real stack (`scripts/stack.sh test`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod dpop;
pub mod own_envoy;
pub mod yaml;

use keycloak_pep::wire::http::HttpRequest;
use std::time::Duration;

/// The stack's URLs, exported by `scripts/stack.sh test`.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run these tests through `make test` (scripts/stack.sh test)")
    })
}

pub fn keycloak() -> String {
    env("KCPEP_KEYCLOAK_URL")
}

pub fn envoy() -> String {
    env("KCPEP_ENVOY_URL")
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One request through ureq (a maintained HTTP/1.1 client): no redirects followed, every status
/// returned as an answer, a new connection each time (as the stack's restarts need), and the
/// `host` header as given (the virtual host is the test's choice, not the URL's).
/// A base may carry a path: Keycloak under its legacy context path (`http://host:port/auth`).
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Response {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    let agent = AGENT.get_or_init(|| agent_config().build().into());
    let base = base.trim_end_matches('/');
    let base = if base.starts_with("http://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    agent_send(agent, method, &format!("{base}{path}"), headers, body)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The test clients' settings: statuses are answers, redirects are not followed, a connection
/// per request, 30 s at most.
fn agent_config() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .allow_non_standard_methods(true)
        .max_idle_connections(0)
        .timeout_global(Some(Duration::from_secs(30)))
}

fn agent_send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<Response, String> {
    use ureq::http;
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        let value = http::HeaderValue::from_bytes(v)
            .unwrap_or_else(|e| panic!("{k}: {e}: a test that sends such bytes uses raw::request"));
        req = req.header(*k, value);
    }
    let req = req.body(body.to_vec()).map_err(|e| e.to_string())?;
    let r = agent.run(req).map_err(|e| format!("{method} {url}: {e}"))?;
    Ok(response(r, method, url))
}

fn response(mut r: ureq::http::Response<ureq::Body>, method: &str, url: &str) -> Response {
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
    Response {
        status: r.status().as_u16(),
        headers,
        body,
    }
}

/// The stack's test CA and certificates (scripts/test-pki.sh): `KCPEP_PKI/<name>.pem|.key`.
pub fn pki(file: &str) -> Vec<u8> {
    let path = std::path::Path::new(&env("KCPEP_PKI")).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One request over HTTPS to `base` (`https://host:port[/path]`), trusting only the stack's test
/// CA, presenting the client certificate `client` of that CA (`client-a`, ...) when given. A
/// refused handshake (a listener that requires a certificate) is an `Err`, not a panic.
pub fn tls_request(
    base: &str,
    client: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<Response, String> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(&pki("ca.pem")).unwrap();
    let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca]));
    if let Some(name) = client {
        let cert = Certificate::from_pem(&pki(&format!("{name}.pem"))).unwrap();
        let key = PrivateKey::from_pem(&pki(&format!("{name}.key"))).unwrap();
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
    }
    let agent: ureq::Agent = agent_config().tls_config(tls.build()).build().into();
    agent_send(
        &agent,
        method,
        &format!("{}{path}", base.trim_end_matches('/')),
        headers,
        body,
    )
}

/// The hostile suites' client, written by hand because no maintained client sends what they
/// must: bytes outside HTTP's grammar in header values, two `Authorization` headers, paths
/// with backslashes or raw non-ASCII, bodies on a GET. One request per connection.
pub mod raw {
    use super::Response;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Sends exactly these bytes: the request line, `headers` as given (a `Host` added when
    /// absent), `Content-Length` and `Connection: close`.
    pub fn request(
        base: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Response {
        // a base may carry a path: Keycloak under its legacy context path (http://host:port/auth)
        let base = base.trim_start_matches("http://").trim_end_matches('/');
        let (hostport, prefix) = base.split_once('/').map_or((base, ""), |(h, p)| (h, p));
        let path = if prefix.is_empty() {
            path.to_string()
        } else {
            format!("/{prefix}{path}")
        };
        let mut req = Vec::new();
        req.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.extend_from_slice(format!("Host: {hostport}\r\n").as_bytes());
        }
        for (k, v) in headers {
            req.extend_from_slice(k.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        req.extend_from_slice(body);
        request_bytes(hostport, &req, b"")
    }

    /// Sends `head` then `body` exactly as given (framing included: chunked bodies, trailers)
    /// to `base` (`host:port` or `http://host:port`) and reads one response.
    pub fn request_bytes(base: &str, head: &[u8], body: &[u8]) -> Response {
        let hostport = base.trim_start_matches("http://").trim_end_matches('/');
        let mut stream =
            TcpStream::connect(hostport).unwrap_or_else(|e| panic!("connect {hostport}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(head).unwrap();
        stream.write_all(body).unwrap();
        parse_response(&read_response(&mut stream))
    }

    /// Reads one response: up to its Content-Length, or its last chunk, or else the connection's
    /// end. (Waiting for the close alone would also wait out Envoy's delayed close, a second per
    /// local reply.)
    fn read_response(stream: &mut TcpStream) -> Vec<u8> {
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
                let body = &raw[split + 4..];
                let length = head.lines().find_map(|l| {
                    l.strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
                let chunked = head
                    .lines()
                    .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
                let no_body = head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304");
                match length {
                    Some(n) if body.len() >= n => return raw,
                    None if chunked && body.ends_with(b"0\r\n\r\n") => return raw,
                    None if no_body => return raw,
                    _ => {}
                }
            }
            match stream.read(&mut buf) {
                Ok(0) => return raw,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading the response: {e} (after {} bytes)", raw.len()),
            }
        }
    }

    fn parse_response(raw: &[u8]) -> Response {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("no header end");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
        {
            body = dechunk(&body);
        }
        Response {
            status,
            headers,
            body,
        }
    }

    fn dechunk(mut b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
            b = &b[eol + 2 + size + 2..];
        }
        out
    }
}

/// Sends a core-built request to Keycloak (its path already holds any context path).
pub fn send(req: &HttpRequest) -> Response {
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let url = keycloak();
    let origin = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    request(&origin, req.method, &req.path, &headers, &req.body)
}

/// A user's token response (access and refresh token) from the public `demo-cli` client.
pub fn user_tokens(user: &str) -> serde_json::Value {
    user_tokens_with(user, "")
}

/// The same, with more of the grant's form (`&scope=openid` for an ID token too).
pub fn user_tokens_with(user: &str, form: &str) -> serde_json::Value {
    token_grant(
        "bank",
        &format!("grant_type=password&client_id=demo-cli&username={user}&password=password{form}"),
    )
}

/// A realm's token endpoint answering `form` (any grant): its JSON, which must be a 200.
pub fn token_grant(realm: &str, form: &str) -> serde_json::Value {
    let r = request(
        &keycloak(),
        "POST",
        &format!("/realms/{realm}/protocol/openid-connect/token"),
        &[("content-type", b"application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "token grant in {realm}: {}", r.text());
    r.json()
}

/// The claims of a JWT (its payload decoded, the signature not checked): what a test reads of
/// a token Keycloak just issued.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .expect("base64url"),
    )
    .expect("a JSON payload")
}

/// The stack Envoy's access-log line of the request `"{method} {path}"` (Envoy flushes access
/// logs on its own schedule: polled).
pub fn access_line(method: &str, path: &str) -> String {
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".run/envoy.log");
    let wanted = format!("\"{method} {path}\"");
    poll_until("the access log line", Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains(&wanted))
            .map(str::to_string)
    })
}

/// The decision record an access-log line ends with (`kcpep_decision=<JSON>`).
pub fn decision_of(line: &str) -> serde_json::Value {
    let json = line
        .split_once(" kcpep_decision=")
        .unwrap_or_else(|| panic!("no decision record in {line}"))
        .1;
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// A user's access token from the public `demo-cli` client (password grant).
pub fn user_token(user: &str) -> String {
    user_tokens(user)["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A request through Envoy (`base`: one of its listeners) to a virtual host, with a bearer token.
pub fn send_to(
    base: &str,
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &[u8])],
    body: &[u8],
) -> Response {
    routed(request, base, method, host, path, token, extra, body)
}

/// [`send_to`] through the raw client, for bytes ureq would refuse to send.
pub fn send_raw_to(
    base: &str,
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &[u8])],
    body: &[u8],
) -> Response {
    routed(raw::request, base, method, host, path, token, extra, body)
}

type Client = fn(&str, &str, &str, &[(&str, &[u8])], &[u8]) -> Response;

#[allow(clippy::too_many_arguments)]
fn routed(
    client: Client,
    base: &str,
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &[u8])],
    body: &[u8],
) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &[u8])> = vec![("host", host.as_bytes())];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_bytes()));
    }
    headers.extend_from_slice(extra);
    client(base, method, path, &headers, body)
}

/// The demo realm's clients: (client id, secret, decision strategy).
pub const CLIENTS: &[(&str, &str, &str)] = &[
    ("bank-api", "bank-api-secret", "UNANIMOUS"),
    (
        "bank-api-affirmative",
        "bank-api-affirmative-secret",
        "AFFIRMATIVE",
    ),
];

pub const USERS: &[&str] = &["teller", "owner", "both", "plain"];

/// Seed 002's expected outcome for `GET /account/{id}` with scope account:view.
pub fn expected_allowed(strategy: &str, user: &str) -> bool {
    match strategy {
        "UNANIMOUS" => matches!(user, "owner" | "both"),
        _ => matches!(user, "teller" | "owner" | "both"),
    }
}

/// An Envoy cluster's counter from the admin (`cluster.<cluster>.<name>`), 0 when absent.
pub fn cluster_stat(cluster: &str, name: &str) -> i64 {
    let r = request(
        &env("KCPEP_ENVOY_ADMIN"),
        "GET",
        &format!("/stats?filter=^cluster.{cluster}.{name}$"),
        &[],
        b"",
    );
    r.text()
        .lines()
        .find_map(|l| l.split_once(": ").and_then(|(_, v)| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Envoy's tests-only listener: the same filters and routes with Envoy's protections off.
pub fn raw_listener() -> String {
    env("KCPEP_ENVOY_RAW_URL")
}

/// Requests Envoy sent to the echo upstream so far.
pub fn upstream_requests() -> i64 {
    cluster_stat("upstream", "upstream_rq_total")
}

/// Requests Envoy sent to Keycloak so far (the `keycloak` cluster).
pub fn keycloak_requests() -> i64 {
    cluster_stat("keycloak", "upstream_rq_total")
}

/// Sends the request and says whether it reached the upstream (nothing else runs meanwhile:
/// the e2e binaries run one test at a time).
pub fn reaches_upstream(send: impl FnOnce() -> Response) -> (Response, bool) {
    let before = upstream_requests();
    let r = send();
    (r, upstream_requests() > before)
}

/// An RPT from a realm's token endpoint (`realm`: its name): the UMA grant with the user's
/// access token and `form` (`audience=...`, `ticket=...`).
pub fn rpt_with(realm: &str, access: &str, form: &str) -> String {
    let r = uma_grant(realm, &format!("Bearer {access}"), form);
    assert_eq!(r.status, 200, "RPT ({form}): {}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// Keycloak's UMA grant (`grant_type=...uma-ticket&{form}`) on `realm`'s token endpoint, with
/// this `Authorization` header value: Keycloak's own answer, for the tests that use it as the
/// oracle.
pub fn uma_grant(realm: &str, authorization: &str, form: &str) -> Response {
    let body = format!("grant_type=urn:ietf:params:oauth:grant-type:uma-ticket&{form}");
    request(
        &keycloak(),
        "POST",
        &format!("/realms/{realm}/protocol/openid-connect/token"),
        &[
            ("authorization", authorization.as_bytes()),
            ("content-type", b"application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
}

/// An access token of Keycloak's admin (master realm, `admin-cli`), for the admin API.
pub fn admin_token() -> String {
    let r = request(
        &keycloak(),
        "POST",
        "/realms/master/protocol/openid-connect/token",
        &[("content-type", b"application/x-www-form-urlencoded")],
        b"grant_type=password&client_id=admin-cli&username=admin&password=admin",
    );
    assert_eq!(r.status, 200, "admin token: {}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// The running Keycloak's (major, minor) version, from its admin API's server info.
pub fn keycloak_version() -> (u32, u32) {
    static VERSION: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        let bearer = format!("Bearer {}", admin_token());
        let r = request(
            &keycloak(),
            "GET",
            "/admin/serverinfo",
            &[("authorization", bearer.as_bytes())],
            b"",
        );
        assert_eq!(r.status, 200, "server info: {}", r.text());
        let info = r.json();
        let v = info["systemInfo"]["version"].as_str().unwrap_or_default();
        let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), Some(minor)) => (major, minor),
            _ => panic!("Keycloak's version {v:?}"),
        }
    })
}

/// The bank realm's published keys (JWKS) as Keycloak serves them.
pub fn realm_jwks() -> serde_json::Value {
    request(
        &keycloak(),
        "GET",
        "/realms/bank/protocol/openid-connect/certs",
        &[],
        b"",
    )
    .json()
}

/// One of the filter's metrics from Envoy's admin (Envoy lists them as `wasmcustom.<name>`).
pub fn stat(name: &str) -> i64 {
    stat_at(&env("KCPEP_ENVOY_ADMIN"), name)
}

/// [`stat`] from another Envoy's admin.
pub fn stat_at(admin: &str, name: &str) -> i64 {
    envoy_stat(admin, &format!("wasmcustom.{name}"))
}

/// One of Envoy's own stats, by its whole name, from an admin; 0 when absent.
pub fn envoy_stat(admin: &str, name: &str) -> i64 {
    let r = request(admin, "GET", &format!("/stats?filter=^{name}$"), &[], b"");
    r.text()
        .lines()
        .find_map(|l| {
            l.split_once(": ")
                .filter(|(k, _)| k.ends_with(name))
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Polls `check` until it yields a value, failing after `timeout`: for states that only time or
/// another process brings about (a cache entry expiring, Keycloak restarting, a log flush), never
/// a fixed sleep standing in for them.
pub fn poll_until<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    try_poll_until(timeout, check).unwrap_or_else(|| panic!("timed out: {what}"))
}

/// The same, `None` when `timeout` passes, for a caller with more to say about why.
pub fn try_poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The JSON blocks under `value: |` of a YAML file (the plugin configurations).
pub fn plugin_configs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim_end().ends_with("value: |") {
            let indent = l.len() - l.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|x| x.trim().is_empty() || x.len() - x.trim_start().len() > indent)
                .copied()
                .collect();
            out.push(block.join("\n"));
        }
    }
    out
}

/// Signs claims with the realm's key (the demo realm imports the test-only key of tests/fixtures).
pub fn realm_signed(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let jwks = realm_jwks();
    let ours: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/jwks.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let n = ours["keys"][0]["n"].as_str().unwrap();
    let kid = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["n"] == n && k["use"] == "sig")
        .expect("the realm signs with the fixture key")["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            std::fs::read(format!(
                "{}/tests/fixtures/rsa-private.der.b64",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid);
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_rsa_der(&der)).unwrap()
}

/// The password grant of `demo-cli-mtls` on Keycloak's HTTPS port, over a connection presenting
/// `client`'s certificate (or none).
pub fn mtls_grant(user: &str, client: Option<&str>) -> Response {
    let form =
        format!("grant_type=password&client_id=demo-cli-mtls&username={user}&password=password");
    tls_request(
        &env("KCPEP_KEYCLOAK_TLS_URL"),
        client,
        "POST",
        "/realms/bank/protocol/openid-connect/token",
        &[("content-type", b"application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .unwrap()
}

/// A token of `user` bound to `client`'s certificate.
pub fn mtls_token(user: &str, client: &str) -> String {
    let r = mtls_grant(user, Some(client));
    assert_eq!(r.status, 200, "token of {user}: {}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// Istio's control plane serving envoy/istio/ to a gateway Envoy (tests/mesh.rs).
pub mod mesh;
