//! End to end: the built .wasm inside the real Envoy, enforcing against the real Keycloak
//! (`scripts/stack.sh test`, envoy/envoy.yaml, envoy/keycloak/bank-realm.json).
//! Each virtual host of envoy.yaml selects one enforcer configuration of the plugin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

fn get(host: &str, path: &str, token: Option<&str>) -> Response {
    call(host, "GET", path, token, &[])
}

fn call(
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &[u8])],
) -> Response {
    send_to(&envoy(), method, host, path, token, extra, b"")
}

/// The echo upstream's view of the request (only when Envoy forwarded it).
fn echoed(r: &Response) -> Value {
    assert_eq!(r.status, 200, "not forwarded: {} {}", r.status, r.text());
    r.json()
}

#[test]
fn seed_002_through_envoy() {
    for (host, strategy) in [
        ("unanimous.bank.local", "UNANIMOUS"),
        ("affirmative.bank.local", "AFFIRMATIVE"),
    ] {
        for user in USERS {
            let tok = user_token(user);
            let r = get(host, "/account/1", Some(&tok));
            let want = if expected_allowed(strategy, user) {
                200
            } else {
                403
            };
            assert_eq!(r.status, want, "{strategy} {user}: {}", r.text());
            if want == 200 {
                let e = echoed(&r);
                assert_eq!(e["path"], "/account/1");
                let perms: Value =
                    serde_json::from_str(e["headers"]["x-kcpep-permissions"].as_str().unwrap())
                        .unwrap();
                assert!(
                    perms.as_array().unwrap().iter().any(|p| p["rsname"]
                        == "View Account Resource"
                        && p["scopes"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|s| s == "account:view")),
                    "{perms}"
                );
                assert!(
                    e["headers"]["authorization"]
                        .as_str()
                        .unwrap()
                        .starts_with("Bearer "),
                    "the token is forwarded"
                );
            }
        }
    }
}

#[test]
fn missing_and_malformed_credentials_get_401() {
    let r = get("unanimous.bank.local", "/account/1", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"bank\""));
    // RFC 6750 §3.1: another scheme offers no bearer credential, so no error code
    let r = request(
        &envoy(),
        "GET",
        "/account/1",
        &[
            ("host", b"unanimous.bank.local"),
            ("authorization", b"Basic dXNlcjpwYXNz"),
        ],
        b"",
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"bank\""));
    for auth in [
        &b"Bearer not.a.jwt"[..],
        b"Bearer",
        b"Bearer a b",
        b"Bearer \xff\xfe",
    ] {
        let r = raw::request(
            &envoy(),
            "GET",
            "/account/1",
            &[("host", b"unanimous.bank.local"), ("authorization", auth)],
            b"",
        );
        assert_eq!(r.status, 401, "{:?}", String::from_utf8_lossy(auth));
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
    }
    // two Authorization headers are refused even when both are valid
    let tok = user_token("owner");
    let a = format!("Bearer {tok}");
    let r = raw::request(
        &envoy(),
        "GET",
        "/account/1",
        &[
            ("host", b"unanimous.bank.local"),
            ("authorization", a.as_bytes()),
            ("authorization", a.as_bytes()),
        ],
        b"",
    );
    assert_eq!(r.status, 401);
    // and the VM survived all of it
    assert_eq!(
        get("unanimous.bank.local", "/account/1", Some(&tok)).status,
        200
    );
}

#[test]
fn expired_forged_and_foreign_tokens_get_401() {
    let real = user_token("owner");
    // the same claims re-signed by the realm key pass (control)
    let claims = jwt_claims(&real);
    assert_eq!(
        get(
            "unanimous.bank.local",
            "/account/1",
            Some(&realm_signed(&claims))
        )
        .status,
        200
    );
    let now = claims["iat"].as_i64().unwrap();
    let mut expired = claims.clone();
    expired["exp"] = json!(now - 120);
    expired["iat"] = json!(now - 420);
    let r = get(
        "unanimous.bank.local",
        "/account/1",
        Some(&realm_signed(&expired)),
    );
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("token expired"),
        "{:?}",
        r.header("www-authenticate")
    );
    let mut foreign = claims.clone();
    foreign["iss"] = json!("http://127.0.0.1:8180/realms/other");
    let r = get(
        "unanimous.bank.local",
        "/account/1",
        Some(&realm_signed(&foreign)),
    );
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("wrong issuer"));
    let mut bytes = real.into_bytes();
    let i = bytes.len() - 7;
    bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
    let r = get(
        "unanimous.bank.local",
        "/account/1",
        Some(std::str::from_utf8(&bytes).unwrap()),
    );
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid signature"));
}

#[test]
fn unmatched_paths_follow_enforcement_mode_and_disabled_paths_pass() {
    let tok = user_token("owner");
    assert_eq!(
        get("unanimous.bank.local", "/nowhere", Some(&tok)).status,
        403,
        "ENFORCING"
    );
    assert_eq!(
        echoed(&get("permissive.bank.local", "/nowhere", Some(&tok)))["path"],
        "/nowhere",
        "PERMISSIVE"
    );
    assert_eq!(
        get(
            "permissive.bank.local",
            "/account/1",
            Some(&user_token("plain"))
        )
        .status,
        403,
        "PERMISSIVE only opens unmatched paths"
    );
    assert_eq!(
        echoed(&get("unanimous.bank.local", "/public/info", None))["path"],
        "/public/info"
    );
}

#[test]
fn on_deny_redirect_to() {
    let tok = user_token("owner");
    let r = get("redirect.bank.local", "/nowhere", Some(&tok));
    assert_eq!((r.status, r.header("location")), (302, Some("/denied")));
    let r = get("redirect.bank.local", "/account/1", None);
    assert_eq!((r.status, r.header("location")), (302, Some("/denied")));
    assert_eq!(
        echoed(&get("redirect.bank.local", "/denied", Some(&tok)))["path"],
        "/denied"
    );
    // a bearer denial on a protected path stays 403, as in Keycloak's enforcer
    assert_eq!(
        get(
            "redirect.bank.local",
            "/account/1",
            Some(&user_token("plain"))
        )
        .status,
        403
    );
}

#[test]
fn http_method_as_scope() {
    // Ops Resource: scope GET for tellers and owners, POST for owners only (AFFIRMATIVE)
    let teller = user_token("teller");
    let owner = user_token("owner");
    assert_eq!(
        call("methods.bank.local", "GET", "/ops/run", Some(&teller), &[]).status,
        200
    );
    assert_eq!(
        call("methods.bank.local", "POST", "/ops/run", Some(&teller), &[]).status,
        403
    );
    assert_eq!(
        call("methods.bank.local", "POST", "/ops/run", Some(&owner), &[]).status,
        200
    );
}

#[test]
fn all_and_any_scopes() {
    // Transfer Resource: transfer:view for tellers and owners, transfer:create for owners only.
    // POST needs ALL of create+view, PUT needs ANY.
    let teller = user_token("teller");
    let owner = user_token("owner");
    assert_eq!(
        call(
            "affirmative.bank.local",
            "POST",
            "/transfer/1",
            Some(&owner),
            &[]
        )
        .status,
        200
    );
    assert_eq!(
        call(
            "affirmative.bank.local",
            "POST",
            "/transfer/1",
            Some(&teller),
            &[]
        )
        .status,
        403
    );
    assert_eq!(
        call(
            "affirmative.bank.local",
            "PUT",
            "/transfer/1",
            Some(&teller),
            &[]
        )
        .status,
        200
    );
    assert_eq!(
        call(
            "affirmative.bank.local",
            "PUT",
            "/transfer/1",
            Some(&user_token("plain")),
            &[]
        )
        .status,
        403
    );
}

#[test]
fn lazy_loaded_paths_exist_only_in_keycloak() {
    // /reports/{id} is not configured in envoy.yaml; the affirmative enforcer loads it lazily.
    assert_eq!(
        get(
            "affirmative.bank.local",
            "/reports/7",
            Some(&user_token("teller"))
        )
        .status,
        200
    );
    assert_eq!(
        get(
            "affirmative.bank.local",
            "/reports/8",
            Some(&user_token("plain"))
        )
        .status,
        403
    );
    assert_eq!(
        get(
            "affirmative.bank.local",
            "/no-such-resource",
            Some(&user_token("owner"))
        )
        .status,
        403
    );
    // the unanimous enforcer does not lazy-load: unknown path, denied
    assert_eq!(
        get(
            "unanimous.bank.local",
            "/reports/7",
            Some(&user_token("owner"))
        )
        .status,
        403
    );
}

#[test]
fn uma_challenge() {
    let r = get("uma.bank.local", "/account/1", Some(&user_token("teller")));
    assert_eq!(r.status, 401);
    let h = r.header("www-authenticate").unwrap();
    assert!(
        h.starts_with(&format!(
            "UMA realm=\"bank\",as_uri=\"{}/realms/bank\",ticket=\"",
            keycloak()
        )),
        "{h}"
    );
    let ticket = h.rsplit("ticket=\"").next().unwrap().trim_end_matches('"');
    assert_eq!(ticket.split('.').count(), 3, "a JWS ticket");
    let r = get("uma.bank.local", "/account/1", None);
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("UMA realm=\"bank\""));
}

#[test]
fn spoofed_permission_headers_are_stripped() {
    let spoof: &[(&str, &[u8])] = &[("x-kcpep-permissions", br#"[{"rsname":"Everything"}]"#)];
    let e = echoed(&call(
        "unanimous.bank.local",
        "GET",
        "/public/x",
        None,
        spoof,
    ));
    assert!(e["headers"].get("x-kcpep-permissions").is_none(), "{e}");
    let e = echoed(&call(
        "unanimous.bank.local",
        "GET",
        "/account/1",
        Some(&user_token("owner")),
        spoof,
    ));
    let h = e["headers"]["x-kcpep-permissions"].as_str().unwrap();
    assert!(
        !h.contains("Everything") && h.contains("View Account Resource"),
        "{h}"
    );
}

#[test]
fn route_name_selects_the_enforcer() {
    // envoy.yaml names the affirmative virtual host's route "affirmative"; the plugin's first rule
    // selects by that route name, so the teller passes there and not on the unanimous host.
    let teller = user_token("teller");
    assert_eq!(
        get("affirmative.bank.local", "/account/1", Some(&teller)).status,
        200
    );
    assert_eq!(
        get("unanimous.bank.local", "/account/1", Some(&teller)).status,
        403
    );
}

#[test]
fn normalized_paths_cannot_bypass() {
    let plain = user_token("plain");
    for path in [
        "/account/1/",
        "/account//1",
        "/account;x=1/1",
        "/public/../account/1",
        "/account/%31",
    ] {
        let r = get("unanimous.bank.local", path, Some(&plain));
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
}

fn keycloak_requests() -> i64 {
    cluster_stat("keycloak", "upstream_rq_total")
}

#[test]
fn a_second_identical_request_causes_no_keycloak_call() {
    let tok = user_token("both");
    let before = keycloak_requests();
    assert_eq!(
        get("unanimous.bank.local", "/account/7", Some(&tok)).status,
        200
    );
    let after_first = keycloak_requests();
    assert!(after_first > before, "the first request asked Keycloak");
    for _ in 0..5 {
        let r = get("unanimous.bank.local", "/account/7", Some(&tok));
        assert_eq!(r.status, 200);
        assert!(echoed(&r)["headers"]["x-kcpep-permissions"]
            .as_str()
            .unwrap()
            .contains("View Account Resource"));
    }
    assert_eq!(
        keycloak_requests(),
        after_first,
        "cache hits, counted at Keycloak's cluster"
    );
    // denials are cached too
    let plain = user_token("plain");
    assert_eq!(
        get("unanimous.bank.local", "/account/7", Some(&plain)).status,
        403
    );
    let after_deny = keycloak_requests();
    assert_eq!(
        get("unanimous.bank.local", "/account/7", Some(&plain)).status,
        403
    );
    assert_eq!(keycloak_requests(), after_deny);
}

#[test]
fn granted_permissions_reach_envoy_filter_state() {
    // envoy.yaml's access log prints %FILTER_STATE(wasm.kcpep.permissions:PLAIN)%
    let id = std::process::id();
    let path = format!("/account/fs{id}");
    assert_eq!(
        get("unanimous.bank.local", &path, Some(&user_token("owner"))).status,
        200
    );
    let line = access_line("GET", &path);
    assert!(line.contains("kcpep_permissions=[{\"rsid\":"), "{line}");
    assert!(line.contains("View Account Resource"), "{line}");
}

/// envoy.yaml's access log ends each line with the filter state `wasm.kcpep.decision`: the
/// decision record of the request, JSON, naming who and what but never the token.
#[test]
fn every_request_leaves_its_decision_record_in_the_access_log() {
    let id = std::process::id();
    let owner = user_token("owner");
    let teller = user_token("teller");
    let plain = user_token("plain");
    let path = |what: &str| format!("/account/rec-{what}-{id}");
    let sub = |t: &str| jwt_claims(t)["sub"].as_str().unwrap().to_string();
    // Keycloak asked, then the same question six times more (a worker's memo or the table)
    for _ in 0..7 {
        assert_eq!(
            get("unanimous.bank.local", &path("allow"), Some(&owner)).status,
            200
        );
    }
    assert_eq!(
        get("unanimous.bank.local", &path("deny"), Some(&teller)).status,
        403
    );
    assert_eq!(
        get("unanimous.bank.local", &path("anonymous"), None).status,
        401
    );
    assert_eq!(
        get("dryrun.bank.local", &path("dry"), Some(&plain)).status,
        200
    );
    // the last request's line is in: so are the others (one flush of Envoy's access log)
    access_line("GET", &path("dry"));
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".run/envoy.log"),
    )
    .unwrap();
    let lines = |p: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| l.contains(&format!("\"GET {p}\"")))
            .collect()
    };
    let allows = lines(&path("allow"));
    assert_eq!(allows.len(), 7, "{allows:#?}");
    let first = decision_of(allows[0]);
    assert_eq!(
        (
            &first["outcome"],
            &first["status"],
            &first["enforcer"],
            &first["client"]
        ),
        (
            &json!("allow"),
            &json!(200),
            &json!("unanimous"),
            &json!("bank-api")
        )
    );
    assert_eq!(first["subject"], json!(sub(&owner)));
    assert_eq!(
        (&first["path"], &first["resource"], &first["scopes"]),
        (
            &json!("/account/{id}"),
            &json!("View Account Resource"),
            &json!(["account:view"])
        )
    );
    assert_eq!(first["granted"][0]["rsname"], "View Account Resource");
    assert_eq!(first["source"], "keycloak");
    assert!(first["keycloak_ms"].as_i64().is_some(), "{first}");
    // the others from the decision table or a worker's memo (which depends on the worker Envoy
    // picks; with two workers and six requests one worker answers twice: a memo hit)
    let sources: Vec<String> = allows[1..]
        .iter()
        .map(|l| {
            decision_of(l)["source"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        sources.iter().all(|s| s == "memo" || s == "table"),
        "{sources:?}"
    );
    assert!(sources.iter().any(|s| s == "memo"), "{sources:?}");
    // a denial, with the reason of the denial line
    let deny = decision_of(lines(&path("deny"))[0]);
    assert_eq!(
        (
            &deny["outcome"],
            &deny["status"],
            &deny["reason"],
            &deny["subject"]
        ),
        (
            &json!("deny"),
            &json!(403),
            &json!("denied by Keycloak policies"),
            &json!(sub(&teller))
        )
    );
    // a rule of the filter: no token
    let anon = decision_of(lines(&path("anonymous"))[0]);
    assert_eq!(
        (&anon["source"], &anon["reason"]),
        (&json!("rule"), &json!("no token"))
    );
    // dry-run: let on, and what it would have answered
    let dry = decision_of(lines(&path("dry"))[0]);
    assert_eq!(
        (&dry["outcome"], &dry["status"], &dry["dry_run"]["status"]),
        (&json!("dry-run-deny"), &json!(200), &json!(403))
    );
    // never a token
    for p in ["allow", "deny", "anonymous", "dry"] {
        for line in lines(&path(p)) {
            for t in [&owner, &teller, &plain] {
                for part in t.split('.') {
                    assert!(!line.contains(part), "a token part in {line}");
                }
            }
        }
    }
}

/// Keycloak's admin REST API as the bootstrap admin (scripts/stack.sh: admin/admin).
fn admin(method: &str, path: &str, body: &str) -> Response {
    let form = "grant_type=password&client_id=admin-cli&username=admin&password=admin";
    let t = request(
        &keycloak(),
        "POST",
        "/realms/master/protocol/openid-connect/token",
        &[("content-type", b"application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_eq!(t.status, 200, "admin token: {}", t.text());
    let auth = format!("Bearer {}", t.json()["access_token"].as_str().unwrap());
    request(
        &keycloak(),
        method,
        path,
        &[
            ("authorization", auth.as_bytes()),
            ("content-type", b"application/json"),
        ],
        body.as_bytes(),
    )
}

/// Grants or revokes a realm role of a user; gives it back when dropped.
struct RoleGrant {
    user_id: String,
    role: String,
}

impl RoleGrant {
    fn new(username: &str, role: &str) -> Self {
        let users = admin(
            "GET",
            &format!("/admin/realms/bank/users?username={username}&exact=true"),
            "",
        );
        let user_id = users.json()[0]["id"].as_str().unwrap().to_string();
        let role = admin("GET", &format!("/admin/realms/bank/roles/{role}"), "").text();
        let g = RoleGrant { user_id, role };
        g.set(true);
        g
    }

    fn set(&self, present: bool) {
        let r = admin(
            if present { "POST" } else { "DELETE" },
            &format!(
                "/admin/realms/bank/users/{}/role-mappings/realm",
                self.user_id
            ),
            &format!("[{}]", self.role),
        );
        assert!(
            r.status == 204 || r.status == 200,
            "{} {}",
            r.status,
            r.text()
        );
    }
}

impl Drop for RoleGrant {
    fn drop(&mut self) {
        self.set(true);
    }
}

#[test]
fn revoking_a_role_takes_effect_when_the_cached_decision_expires() {
    // "revocable.bank.local": decision-cache lifespan-ms 3000; the policy reads the user's
    // current roles (fetchRoles), so only the cache stands between the revocation and a 403.
    let grant = RoleGrant::new("revocable", "account_owner");
    let tok = user_token("revocable");
    let host = "revocable.bank.local";
    assert_eq!(get(host, "/revocable/a", Some(&tok)).status, 200);
    let decided = std::time::Instant::now();
    grant.set(false);
    // still allowed: the cached decision holds
    assert_eq!(get(host, "/revocable/a", Some(&tok)).status, 200);
    let flipped = poll_until(
        "the revocation taking effect",
        std::time::Duration::from_secs(20),
        || (get(host, "/revocable/a", Some(&tok)).status == 403).then(|| decided.elapsed()),
    );
    assert!(
        flipped >= std::time::Duration::from_millis(2_900),
        "denied after {flipped:?}, before the 3 s lifespan: the cache did not hold"
    );
    drop(grant);
}

#[test]
fn a_lazily_loaded_path_is_looked_up_once_for_both_workers() {
    // Envoy runs two workers (two Wasm VMs); each request opens a new connection, so both
    // workers see the path. The first lookup is shared with the other worker through shared data.
    let tok = user_token("teller");
    let path = format!(
        "/reports/shared-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let before = stat("kcpep.keycloak.calls.resource_set");
    for _ in 0..12 {
        assert_eq!(get("affirmative.bank.local", &path, Some(&tok)).status, 200);
    }
    assert_eq!(stat("kcpep.keycloak.calls.resource_set") - before, 1);
}

#[test]
fn es256_tokens_of_the_real_realm_are_verified_by_envoy() {
    // demo-cli-es256's access tokens are signed with the realm's generated P-256 key: the module
    // hands Envoy's verify_signature the key's SPKI and the signature as DER.
    let owner = token_grant(
        "bank",
        "grant_type=password&client_id=demo-cli-es256&username=owner&password=password",
    )["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(owner.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(
        get("unanimous.bank.local", "/account/1", Some(&owner)).status,
        200
    );
    // one changed signature byte: refused by the host's check
    let mut forged = owner.clone().into_bytes();
    let n = forged.len() - 6;
    forged[n] = if forged[n] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let r = get("unanimous.bank.local", "/account/1", Some(&forged));
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
}

/// Envoy's Prometheus page as (name, labels, value) samples and `# TYPE` lines (name, kind).
struct Prometheus {
    types: Vec<(String, String)>,
    samples: Vec<(String, String, f64)>,
}

impl Prometheus {
    fn read() -> Prometheus {
        let r = request(
            &env("KCPEP_ENVOY_ADMIN"),
            "GET",
            "/stats/prometheus",
            &[],
            b"",
        );
        assert_eq!(r.status, 200);
        let (mut types, mut samples) = (vec![], vec![]);
        for line in r.text().lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                types.push((name.to_string(), kind.to_string()));
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (series, ""),
                };
                samples.push((name.to_string(), labels.to_string(), value.parse().unwrap()));
            }
        }
        Prometheus { types, samples }
    }

    fn value(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("{name} is not on /stats/prometheus"))
    }
}

/// A name Prometheus accepts: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn prometheus_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[test]
fn prometheus_lists_every_kcpep_metric_and_the_counters_move() {
    // Every metric the filter defines, as Envoy's own /stats lists it.
    let stats = request(
        &env("KCPEP_ENVOY_ADMIN"),
        "GET",
        "/stats?filter=^wasmcustom\\.kcpep\\.",
        &[],
        b"",
    )
    .text();
    let ours: Vec<String> = stats
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
        .collect();
    assert!(ours.len() >= 20, "the filter's metrics: {ours:?}");
    let before = Prometheus::read();
    for stat in &ours {
        let name = stat.trim_start_matches("wasmcustom.").replace('.', "_");
        assert!(prometheus_name(&name), "{name}");
        assert!(
            before.types.iter().any(|(n, _)| *n == name),
            "{stat} is not on /stats/prometheus as {name}"
        );
    }
    let kinds: Vec<&str> = before
        .types
        .iter()
        .filter(|(n, _)| n.starts_with("kcpep_"))
        .map(|(_, k)| k.as_str())
        .collect();
    assert!(
        kinds.contains(&"counter") && kinds.contains(&"gauge"),
        "{kinds:?}"
    );

    // Traffic: an allow, a 401, a 403, and a lazily loaded path (a Keycloak call).
    let teller = user_token("teller");
    let plain = user_token("plain");
    assert_eq!(
        get("affirmative.bank.local", "/account/1", Some(&teller)).status,
        200
    );
    assert_eq!(
        get("affirmative.bank.local", "/account/1", None).status,
        401
    );
    assert_eq!(
        get("affirmative.bank.local", "/account/1", Some(&plain)).status,
        403
    );
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path = format!("/reports/prometheus-{unique}");
    assert_eq!(
        get("affirmative.bank.local", &path, Some(&teller)).status,
        200
    );

    // Counters move at once; histograms when Envoy next merges them (its flush interval).
    let after = Prometheus::read();
    for counter in [
        "kcpep_requests_allowed",
        "kcpep_requests_denied_401",
        "kcpep_requests_denied_403",
        "kcpep_keycloak_calls_resource_set",
    ] {
        assert!(
            after.value(counter) > before.value(counter),
            "{counter}: {} then {}",
            before.value(counter),
            after.value(counter)
        );
    }
    let count = "kcpep_keycloak_latency_ms_count";
    let after = poll_until(
        "the Keycloak latency histogram to count the new calls",
        std::time::Duration::from_secs(15),
        || {
            let p = Prometheus::read();
            (p.value(count) > before.value(count)).then_some(p)
        },
    );
    assert!(after
        .types
        .iter()
        .any(|(n, k)| n == "kcpep_keycloak_latency_ms" && k == "histogram"));
    let buckets: Vec<(f64, f64)> = after
        .samples
        .iter()
        .filter(|(n, _, _)| n == "kcpep_keycloak_latency_ms_bucket")
        .map(|(_, labels, v)| {
            let le = labels
                .strip_prefix("le=\"")
                .and_then(|l| l.strip_suffix('"'))
                .unwrap_or_else(|| panic!("a bucket without le: {labels}"));
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, *v)
        })
        .collect();
    assert!(buckets.len() >= 5, "{buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "buckets ascend and are cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
    assert_eq!(buckets.last().map(|b| b.1), Some(after.value(count)));
    assert!(after.value("kcpep_keycloak_latency_ms_sum") > 0.0);
}

/// Envoy's generic per-route switch, `FilterConfig {disabled: true}` under the filter's name
/// (envoy.yaml's `unanimous.health` route): the filter never sees the request, so nothing is
/// checked, counted or recorded, and the route must remove the filter's own header itself.
#[test]
fn a_route_with_the_filter_disabled_is_never_seen_by_it() {
    let path = format!("/healthz/{}", std::process::id());
    let seen = || stat("kcpep.requests.allowed") + stat("kcpep.requests.denied.401");
    let before = seen();
    let r = call(
        "unanimous.bank.local",
        "GET",
        &path,
        None,
        &[("x-kcpep-permissions", br#"[{"rsname":"Everything"}]"#)],
    );
    let echoed: Value = r.json();
    assert_eq!(echoed["path"], path, "let on with no token");
    assert_eq!(seen(), before, "the filter counted nothing");
    assert!(
        echoed["headers"]["x-kcpep-permissions"].is_null(),
        "the route removed the client's copy: {echoed}"
    );
    assert!(access_line("GET", &path).ends_with(" kcpep_decision=-"));
    // the rest of the virtual host is the filter's
    assert_eq!(get("unanimous.bank.local", "/account/1", None).status, 401);
}
