//! Sender-constrained tokens through the real Envoy and Keycloak: DPoP-bound tokens from the
//! realm's `demo-cli-dpop` client (Keycloak makes them at its token endpoint, with a proof), sent
//! to the `dpop` enforcer (`sender-constraint: if-bound`, envoy/envoy.yaml). Every proof here is
//! made by the test, as a client would, with its own P-256 key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::dpop::{b64, jti, now, Client};
use common::*;
use serde_json::{json, Value};
use sha2::Digest;

const HOST: &str = "dpop.bank.local";

/// Whether this Keycloak issues DPoP-bound tokens: a supported feature, on by default, from
/// 26.4. Before, it is a preview feature whose token endpoint fails every UMA grant with a
/// plain bearer token in 26.0 (an NPE in `DPoPUtil`: docs/configuration.md), so the 26.0 line of
/// `make e2e-matrix` runs without it: there Keycloak must ignore the proof and issue a plain
/// bearer token, and the tests that need bound tokens from Keycloak end after checking that.
fn keycloak_binds_dpop() -> bool {
    if keycloak_version() >= (26, 4) {
        return true;
    }
    let body = Client::new().grant("owner");
    assert_eq!(
        body["token_type"],
        "Bearer",
        "Keycloak {:?} without its dpop feature",
        keycloak_version()
    );
    assert!(jwt_claims(body["access_token"].as_str().unwrap())["cnf"].is_null());
    false
}

/// The URL Envoy's client used: the test listener is plain HTTP, the host the virtual host.
fn url(path: &str) -> String {
    format!("http://{HOST}{path}")
}

/// `GET path` with `Authorization: <scheme> <token>` and the given `DPoP` headers.
fn get(scheme: &str, token: &str, proofs: &[&str], path: &str) -> Response {
    let auth = format!("{scheme} {token}");
    let mut headers: Vec<(&str, &[u8])> = vec![("authorization", auth.as_bytes())];
    for p in proofs {
        headers.push(("dpop", p.as_bytes()));
    }
    send_to(&envoy(), "GET", HOST, path, None, &headers, b"")
}

/// The refusal the filter gave: its status, and the challenge's scheme and error.
fn refusal(r: &Response) -> (u16, String) {
    let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
    let scheme = challenge.split(' ').next().unwrap_or_default().to_string();
    let error = challenge
        .split("error=\"")
        .nth(1)
        .and_then(|e| e.split('"').next())
        .unwrap_or_default();
    (r.status, format!("{scheme} {error}"))
}

/// What Keycloak itself says when asked for the decision with this token as the subject (the
/// filter's own request, sent directly): the oracle for the filter's answer to a good proof.
fn keycloak_decision(token: &str) -> (u16, Value) {
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bank-api:bank-api-secret")
    );
    let form = format!(
        "audience=bank-api&permission=View+Account+Resource%23account%3Aview&response_mode=decision&subject_token={token}"
    );
    let r = uma_grant("bank", &auth, &form);
    (r.status, r.json())
}

#[test]
fn keycloak_binds_the_token_to_the_clients_key() {
    if !keycloak_binds_dpop() {
        return;
    }
    let client = Client::new();
    let token = client.token("owner");
    let c = jwt_claims(&token);
    assert_eq!(c["typ"], "DPoP");
    assert_eq!(c["cnf"]["jkt"], client.thumbprint());
}

/// The dpop enforcer's `decision-protocol: authzen-for-bound-tokens`: Keycloak's UMA grant
/// refuses a DPoP-bound subject token (first below), so a bound token whose proof holds is decided
/// by Keycloak's AuthZEN evaluations (26.7, `--features=authzen`), the subject the token's `sub`.
/// The oracle is Keycloak's own UMA decision for the same user with a plain bearer token: seed
/// 002's table on the UNANIMOUS resource server, owner and both allowed, teller and plain not.
#[test]
fn a_bound_token_with_a_good_proof_gets_what_keycloak_decides() {
    if !keycloak_binds_dpop() {
        return;
    }
    let client = Client::new();
    let (status, body) = keycloak_decision(&client.token("owner"));
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("Invalid identity")),
        "Keycloak's UMA grant refuses a DPoP-bound subject token: {body}"
    );
    for user in USERS {
        let token = client.token(user);
        let before = stat("kcpep.keycloak.grants");
        let authzen_before = stat("kcpep.keycloak.calls.authzen");
        let proof = client.proof("GET", &url("/account/1"), Some(&token));
        let r = get("DPoP", &token, &[&proof], "/account/1");
        assert!(
            stat("kcpep.keycloak.grants") > before,
            "{user}: the proof passed, the filter asked Keycloak"
        );
        assert!(
            stat("kcpep.keycloak.calls.authzen") > authzen_before,
            "{user}: by AuthZEN"
        );
        if keycloak_version() < (26, 7) {
            // no AuthZEN before 26.7: closed
            assert_eq!(r.status, 503, "{user}: {}", r.text());
            continue;
        }
        let (status, oracle) = keycloak_decision(&user_token(user));
        assert_eq!(
            status,
            if expected_allowed("UNANIMOUS", user) {
                200
            } else {
                403
            },
            "{user}: {oracle}"
        );
        if status == 200 {
            assert_eq!(r.status, 200, "{user}: {}", r.text());
            let echoed: Value = r.json();
            let perms = echoed["headers"]["x-kcpep-permissions"]
                .as_str()
                .unwrap_or_default();
            assert!(perms.contains("View Account Resource"), "{user}: {perms}");
        } else {
            assert_eq!(r.status, 403, "{user}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), None);
        }
    }
}

#[test]
fn a_path_without_a_resource_takes_the_token_and_its_proof_alone() {
    if !keycloak_binds_dpop() {
        return;
    }
    // The dpop enforcer is PERMISSIVE and /me has no resource: nothing is asked of Keycloak, so a
    // good proof is all it takes (what `make demo` shows), and the binding is checked all the same.
    let client = Client::new();
    let token = client.token("owner");
    let before = stat("kcpep.keycloak.grants");
    let proof = client.proof("GET", &url("/me"), Some(&token));
    let r = get("DPoP", &token, &[&proof], "/me");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get("DPoP", &token, &[&proof], "/me");
    assert_eq!(
        refusal(&r),
        (401, "DPoP invalid_dpop_proof".into()),
        "replayed"
    );
    let r = get("Bearer", &token, &[], "/me");
    assert_eq!(refusal(&r), (401, "DPoP invalid_token".into()), "as Bearer");
    let r = get(
        "DPoP",
        &token,
        &[&Client::new().proof("GET", &url("/me"), Some(&token))],
        "/me",
    );
    assert_eq!(
        refusal(&r),
        (401, "DPoP invalid_dpop_proof".into()),
        "another key"
    );
    assert_eq!(stat("kcpep.keycloak.grants"), before, "Keycloak not asked");
}

/// The port of a base URL (`http://127.0.0.1:10000` -> `10000`).
fn port_of(base: &str) -> String {
    base.trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string()
}

/// RFC 9449 §4.3: a proof's `htu` is the URL the client used, port included, with the scheme's
/// default port written or not; a proof for another port of the same host is another URL. On
/// both listeners: plain HTTP (:10000) and mutual TLS (:10443, https).
#[test]
fn a_proof_names_the_port_the_client_used() {
    if !keycloak_binds_dpop() {
        return;
    }
    let client = Client::new();
    let token = client.token("owner");
    let auth = format!("DPoP {token}");
    let plain = |host: &str, htu: &str| {
        let proof = client.proof("GET", htu, Some(&token));
        let headers: [(&str, &[u8]); 2] = [
            ("authorization", auth.as_bytes()),
            ("dpop", proof.as_bytes()),
        ];
        send_to(&envoy(), "GET", host, "/me", None, &headers, b"")
    };
    let with_port = format!("{HOST}:{}", port_of(&envoy()));
    let r = plain(&with_port, &format!("http://{with_port}/me"));
    assert_eq!(r.status, 200, "the port the client used: {}", r.text());
    let r = plain(&with_port, &format!("http://{HOST}/me"));
    assert_eq!(
        refusal(&r),
        (401, "DPoP invalid_dpop_proof".into()),
        "a proof for port 80, the request on {with_port}"
    );
    let r = plain(&format!("{HOST}:80"), &format!("http://{HOST}/me"));
    assert_eq!(r.status, 200, "the default port written out: {}", r.text());
    let r = plain(HOST, &format!("http://{with_port}/me"));
    assert_eq!(
        refusal(&r),
        (401, "DPoP invalid_dpop_proof".into()),
        "a proof for {with_port}, the request on port 80"
    );
    let tls_base = env("KCPEP_ENVOY_TLS_URL");
    let tls = |host: &str, htu: &str| {
        let proof = client.proof("GET", htu, Some(&token));
        let headers: [(&str, &[u8]); 3] = [
            ("host", host.as_bytes()),
            ("authorization", auth.as_bytes()),
            ("dpop", proof.as_bytes()),
        ];
        tls_request(&tls_base, Some("client-a"), "GET", "/me", &headers, b"").unwrap()
    };
    let with_port = format!("{HOST}:{}", port_of(&tls_base));
    let r = tls(&with_port, &format!("https://{with_port}/me"));
    assert_eq!(r.status, 200, "https on {with_port}: {}", r.text());
    for htu in [
        format!("https://{HOST}/me"),
        format!("http://{with_port}/me"),
    ] {
        let r = tls(&with_port, &htu);
        assert_eq!(
            refusal(&r),
            (401, "DPoP invalid_dpop_proof".into()),
            "{htu} for a request to https://{with_port}/me"
        );
    }
    let r = tls(&format!("{HOST}:443"), &format!("https://{HOST}/me"));
    assert_eq!(
        r.status,
        200,
        "https's default port written out: {}",
        r.text()
    );
}

/// What is sent (scheme, proofs) and the refusal expected (status, challenge).
type Case<'a> = (&'a str, &'a str, Vec<String>, (u16, String));

#[test]
fn every_broken_proof_is_refused_before_keycloak_is_asked() {
    if !keycloak_binds_dpop() {
        return;
    }
    let client = Client::new();
    let other = Client::new();
    let token = client.token("owner");
    let u = url("/account/1");
    let before = stat("kcpep.keycloak.grants");
    let refused_before = stat("kcpep.binding.iat");
    let proof_error = (401, "DPoP invalid_dpop_proof".to_string());
    let cases: Vec<Case> = vec![
        (
            "as Bearer",
            "Bearer",
            vec![client.proof("GET", &u, Some(&token))],
            (401, "DPoP invalid_token".into()),
        ),
        ("no proof", "DPoP", vec![], proof_error.clone()),
        (
            "another method",
            "DPoP",
            vec![client.proof("POST", &u, Some(&token))],
            proof_error.clone(),
        ),
        (
            "another URL",
            "DPoP",
            vec![client.proof("GET", &url("/account/2"), Some(&token))],
            proof_error.clone(),
        ),
        (
            "an old iat",
            "DPoP",
            vec![client.proof_with("GET", &u, Some(&token), |_, c| {
                c["iat"] = json!(now() - 120)
            })],
            proof_error.clone(),
        ),
        (
            "another key",
            "DPoP",
            vec![other.proof("GET", &u, Some(&token))],
            proof_error.clone(),
        ),
        (
            "a wrong ath",
            "DPoP",
            vec![client.proof("GET", &u, Some("another token"))],
            proof_error.clone(),
        ),
        (
            "alg none",
            "DPoP",
            vec![{
                let h = json!({"typ": "dpop+jwt", "alg": "none", "jwk": client.jwk()});
                let c = json!({"jti": jti(), "htm": "GET", "htu": u, "iat": now(),
                               "ath": b64(&sha2::Sha256::digest(token.as_bytes()))});
                format!(
                    "{}.{}.",
                    b64(h.to_string().as_bytes()),
                    b64(c.to_string().as_bytes())
                )
            }],
            proof_error.clone(),
        ),
        (
            "a private key in the proof",
            "DPoP",
            vec![client.proof_with("GET", &u, Some(&token), |h, _| {
                h["jwk"]["d"] = json!(b64(&client.key.to_bytes()))
            })],
            proof_error.clone(),
        ),
        (
            "two proofs",
            "DPoP",
            vec![
                client.proof("GET", &u, Some(&token)),
                client.proof("GET", &u, Some(&token)),
            ],
            proof_error.clone(),
        ),
    ];
    for (what, scheme, proofs, expected) in &cases {
        let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let r = get(scheme, &token, &proofs, "/account/1");
        assert_eq!(&refusal(&r), expected, "{what}: {} {}", r.status, r.text());
    }
    assert_eq!(
        stat("kcpep.keycloak.grants"),
        before,
        "no broken proof reached Keycloak"
    );
    assert!(
        stat("kcpep.binding.iat") > refused_before,
        "counted by reason"
    );
}

/// Envoy's per-worker connection counters of the main listener.
fn per_worker() -> Vec<i64> {
    let r = request(
        &env("KCPEP_ENVOY_ADMIN"),
        "GET",
        "/stats?filter=^listener\\.127\\.0\\.0\\.1_10000\\.worker_[0-9]+\\.downstream_cx_total$",
        &[],
        b"",
    );
    r.text()
        .lines()
        .filter_map(|l| l.split_once(": ").and_then(|(_, v)| v.trim().parse().ok()))
        .collect()
}

#[test]
fn a_proof_is_taken_once_on_every_worker() {
    if !keycloak_binds_dpop() {
        return;
    }
    let client = Client::new();
    let token = client.token("owner");
    let proof = client.proof("GET", &url("/account/1"), Some(&token));
    let first = get("DPoP", &token, &[&proof], "/account/1");
    assert_ne!(first.status, 401, "the first use: {}", first.text());
    let workers_before = per_worker();
    assert!(workers_before.len() >= 2, "two workers: {workers_before:?}");
    // Each request is a new connection; both workers get some of them.
    let mut rounds = 0;
    loop {
        let r = get("DPoP", &token, &[&proof], "/account/1");
        assert_eq!(
            refusal(&r),
            (401, "DPoP invalid_dpop_proof".to_string()),
            "a replay: {}",
            r.text()
        );
        rounds += 1;
        let now: Vec<i64> = per_worker();
        let both = now.iter().zip(&workers_before).all(|(n, b)| n > b);
        if both && rounds >= 4 {
            break;
        }
        assert!(
            rounds < 64,
            "the replays never reached both workers: {now:?}"
        );
    }
}

#[test]
fn an_unbound_token_is_taken_as_bearer_and_refused_with_the_dpop_scheme() {
    let plain = user_token("owner");
    let r = get("Bearer", &plain, &[], "/account/1");
    assert_eq!(r.status, 200, "{}", r.text());
    let client = Client::new();
    let proof = client.proof("GET", &url("/account/1"), Some(&plain));
    let r = get("DPoP", &plain, &[&proof], "/account/1");
    assert_eq!(
        refusal(&r),
        (401, "DPoP invalid_token".to_string()),
        "{}",
        r.text()
    );
}

/// The status and `WWW-Authenticate` of `GET /account/1` on the dpop enforcer with a bearer token.
fn bearer_get(token: &str) -> Response {
    send_to(&envoy(), "GET", HOST, "/account/1", Some(token), &[], b"")
}

/// Posts a logout token to the filter's back-channel logout endpoint, as Keycloak does.
fn post_logout(logout_token: &str) -> Response {
    let body = format!("logout_token={logout_token}");
    request(
        &envoy(),
        "POST",
        "/kcpep/backchannel-logout",
        &[
            ("host", b"127.0.0.1:10000"),
            ("content-type", b"application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
}

#[test]
fn a_backchannel_logout_from_keycloak_ends_the_session_on_every_worker() {
    let tokens = user_tokens("owner");
    let token = tokens["access_token"].as_str().unwrap().to_string();
    let sid = jwt_claims(&token)["sid"].as_str().map(str::to_string);
    assert!(sid.is_some(), "Keycloak's access token names its session");
    // Allowed, and cached for five minutes (the dpop enforcer's lifespan), on both workers.
    let before = per_worker();
    let mut rounds = 0;
    while !per_worker().iter().zip(&before).all(|(n, b)| n > b) {
        assert_eq!(bearer_get(&token).status, 200);
        rounds += 1;
        assert!(rounds < 64, "never reached both workers");
    }
    // A forged logout token (signed by another key) ends nothing.
    let forged = {
        use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
        let der = base64::engine::general_purpose::STANDARD
            .decode(include_str!("fixtures/attacker-rsa-private.der.b64").trim())
            .unwrap();
        let claims = json!({"iss": format!("{}/realms/bank", keycloak()), "aud": "demo-cli",
            "iat": now(), "jti": jti(), "sid": sid, "sub": jwt_claims(&token)["sub"],
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
        let mut h = Header::new(Algorithm::RS256);
        // the realm's key id, so only the signature is wrong
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        h.kid = header["kid"].as_str().map(str::to_string);
        encode(&h, &claims, &EncodingKey::from_rsa_der(&der)).unwrap()
    };
    let r = post_logout(&forged);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_request");
    assert_eq!(
        bearer_get(&token).status,
        200,
        "a forged logout changed nothing"
    );
    // The user is logged out through Keycloak's admin API: Keycloak posts the logout token.
    let sub = jwt_claims(&token)["sub"].as_str().unwrap().to_string();
    let admin = format!("Bearer {}", admin_token());
    let r = request(
        &keycloak(),
        "POST",
        &format!("/admin/realms/bank/users/{sub}/logout"),
        &[("authorization", admin.as_bytes())],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let logged_out = std::time::Instant::now();
    // Every worker comes to refuse it (the other worker learns it on its tick): a round in which
    // both workers answered and every answer was 401. How long it took is printed, not asserted.
    let took = poll_until(
        "every worker refuses the logged-out session",
        std::time::Duration::from_secs(15),
        || {
            let before = per_worker();
            let mut all_refused = true;
            let mut rounds = 0;
            while !per_worker().iter().zip(&before).all(|(n, b)| n > b) {
                match bearer_get(&token) {
                    r if r.status == 200 => all_refused = false,
                    r if r.status == 401 => {}
                    r => panic!("{}: {}", r.status, r.text()),
                }
                rounds += 1;
                assert!(rounds < 64, "never reached both workers");
            }
            all_refused.then(|| logged_out.elapsed())
        },
    );
    eprintln!("the logout took effect on every worker {took:?} after Keycloak's admin API call");
    let r = bearer_get(&token);
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("session logged out"),
        "{:?}",
        r.header("www-authenticate")
    );
    // A new login of the same user is served.
    assert_eq!(bearer_get(&user_token("owner")).status, 200);
}

// ---- certificate-bound tokens (RFC 8705): Keycloak's HTTPS port issues them to the realm's
// `demo-cli-mtls` client over a connection presenting a client certificate of the stack's test
// CA; Envoy's mutual-TLS listener (:10443) hands the filter the connection's certificate digest.

/// base64url SHA-256 of a test certificate's DER: what `cnf.x5t#S256` holds.
fn certificate_thumbprint(name: &str) -> String {
    let pem = pki(&format!("{name}.pem"));
    let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
    b64(&sha2::Sha256::digest(cert.der()))
}

/// `GET path` with a Bearer token through Envoy's mutual-TLS listener, presenting `client`'s
/// certificate; `Err` when the TLS handshake is refused.
fn mtls_get(client: Option<&str>, token: &str, path: &str) -> Result<Response, String> {
    let auth = format!("Bearer {token}");
    tls_request(
        &env("KCPEP_ENVOY_TLS_URL"),
        client,
        "GET",
        path,
        &[
            ("host", HOST.as_bytes()),
            ("authorization", auth.as_bytes()),
        ],
        b"",
    )
}

#[test]
fn keycloak_binds_a_token_to_the_client_certificate_it_was_issued_over() {
    let token = mtls_token("owner", "client-a");
    let c = jwt_claims(&token);
    assert_eq!(
        c["cnf"]["x5t#S256"],
        certificate_thumbprint("client-a"),
        "{c}"
    );
    assert_ne!(c["cnf"]["x5t#S256"], certificate_thumbprint("client-b"));
    assert_eq!(
        c["iss"],
        format!("{}/realms/bank", keycloak()),
        "one issuer on both ports"
    );
    // and refuses to issue one without a certificate to bind it to
    let r = mtls_grant("owner", None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("Client Certification missing"),
        "{}",
        r.text()
    );
}

#[test]
fn keycloak_decides_for_a_certificate_bound_token_on_its_own_connection() {
    for user in USERS {
        let token = mtls_token(user, "client-a");
        let before = stat("kcpep.keycloak.calls.authzen");
        let r = mtls_get(Some("client-a"), &token, "/account/1").unwrap();
        if keycloak_version() < (26, 7) {
            // no AuthZEN before 26.7 (the stack starts it without): closed
            assert_eq!(r.status, 503, "{user}: {}", r.text());
            continue;
        }
        // The dpop enforcer asks AuthZEN for a bound token whose binding held. Keycloak's UMA
        // grant does not look at a certificate binding (docs/configuration.md): its answer for
        // the token is the oracle.
        let (status, body) = keycloak_decision(&token);
        let allowed = match status {
            200 => body["result"] == json!(true),
            403 => false,
            _ => panic!("Keycloak on {user}'s token: {status} {body}"),
        };
        eprintln!("{user}: Keycloak {status} {body}, the filter {}", r.status);
        assert_eq!(
            r.status,
            if allowed { 200 } else { 403 },
            "{user}: {}",
            r.text()
        );
        assert!(
            stat("kcpep.keycloak.calls.authzen") > before,
            "Keycloak asked by AuthZEN"
        );
        let r = mtls_get(Some("client-a"), &token, "/me").unwrap();
        assert_eq!(r.status, 200, "{user} /me: {}", r.text());
    }
}

#[test]
fn a_certificate_bound_token_from_another_connection_is_refused() {
    let token = mtls_token("owner", "client-a");
    let (mismatch, missing) = (
        stat("kcpep.binding.certificate_mismatch"),
        stat("kcpep.binding.certificate_missing"),
    );
    let before = stat("kcpep.keycloak.grants");

    // another client certificate of the same CA
    let r = mtls_get(Some("client-b"), &token, "/account/1").unwrap();
    assert_eq!(
        refusal(&r),
        (401, "Bearer invalid_token".into()),
        "{}",
        r.text()
    );
    assert!(stat("kcpep.binding.certificate_mismatch") > mismatch);

    // no certificate: the plain listener, and the DPoP scheme changes nothing
    let r = bearer_get(&token);
    assert_eq!(
        refusal(&r),
        (401, "Bearer invalid_token".into()),
        "{}",
        r.text()
    );
    let r = get("DPoP", &token, &[], "/me");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(stat("kcpep.binding.certificate_missing") > missing);

    // the mutual-TLS listener takes no connection without a certificate at all
    let refused = mtls_get(None, &token, "/account/1");
    assert!(
        refused.is_err(),
        "handshake without a certificate: {refused:?}"
    );

    assert_eq!(stat("kcpep.keycloak.grants"), before, "Keycloak not asked");

    // an unbound token is not held to any certificate (sender-constraint if-bound)
    let plain = user_token("owner");
    let r = mtls_get(Some("client-b"), &plain, "/me").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// RFC 8705 §3 and closed defaults: an enforcer that says nothing of sender constraints (the
/// stack's UNANIMOUS one) holds a certificate-bound token to its certificate all the same.
#[test]
fn a_certificate_bound_token_is_held_to_its_certificate_by_default() {
    let token = mtls_token("owner", "client-a");
    let host = "unanimous.bank.local";
    let r = send_to(&envoy(), "GET", host, "/account/1", Some(&token), &[], b"");
    assert_eq!(
        refusal(&r),
        (401, "Bearer invalid_token".into()),
        "over plain HTTP (the echo's answer would hold the token: not shown)"
    );
    let auth = format!("Bearer {token}");
    let headers: [(&str, &[u8]); 2] = [
        ("host", host.as_bytes()),
        ("authorization", auth.as_bytes()),
    ];
    let r = tls_request(
        &env("KCPEP_ENVOY_TLS_URL"),
        Some("client-a"),
        "GET",
        "/account/1",
        &headers,
        b"",
    )
    .unwrap();
    let want = if expected_allowed("UNANIMOUS", "owner") {
        200
    } else {
        403
    };
    assert_eq!(r.status, want, "on its own connection");
}

// ---- logout tokens (OpenID Back-Channel Logout 1.0) and the once-only tables

const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A logout token for `token`'s session, signed with the realm's key (the bank realm imports
/// the test-only key of tests/fixtures), as Keycloak would post it; `exp` as given.
fn logout_token_for(token: &str, exp: i64) -> String {
    let c = jwt_claims(token);
    realm_signed(&json!({
        "iss": format!("{}/realms/bank", keycloak()), "aud": "demo-cli", "iat": now(),
        "exp": exp, "jti": jti(), "sid": c["sid"], "sub": c["sub"], "typ": "Logout",
        "events": {LOGOUT_EVENT: {}}
    }))
}

/// Every `Content-Type` value of a response.
fn content_types(r: &Response) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// §2.6: a logout token is validated as an ID token is, `exp` included when present. A
/// realm-signed one past its `exp` ends nothing (400, in JSON with exactly that one type); the
/// same token in date ends the session (the control: the test's signing is the realm's).
#[test]
fn an_expired_logout_token_ends_nothing() {
    let token = user_token("owner");
    assert_eq!(bearer_get(&token).status, 200);
    let r = post_logout(&logout_token_for(&token, now() - 60));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error_description"], "logout token expired");
    assert_eq!(
        content_types(&r),
        ["application/json"],
        "one type, the body's"
    );
    assert_eq!(
        bearer_get(&token).status,
        200,
        "an expired logout token ended the session"
    );
    let r = post_logout(&logout_token_for(&token, now() + 60));
    assert_eq!(r.status, 200, "{}", r.text());
    poll_until(
        "the session ended on the worker asked",
        std::time::Duration::from_secs(5),
        || (bearer_get(&token).status == 401).then_some(()),
    );
}

const FLOOD_ADMIN: u16 = 9942;
const FLOOD_LISTENER: u16 = 10410;

/// An Envoy of this test's own whose proof table is tiny (64 slots; one key may hold 10 % of
/// them, 6 live proofs), so one client can try to fill it: the stack's table is sized for
/// production and shared by every test.
fn flood_envoy() -> common::own_envoy::OwnEnvoy {
    use common::own_envoy::{cluster, keycloak_address, OwnEnvoy, Setup};
    let (_, kc_port) = keycloak_address();
    let plugin = json!({
        "realm": "bank", "auth-server-url": keycloak(), "resource": "bank-api",
        "credentials": {"secret": "bank-api-secret"},
        "policy-enforcer": {"enforcement-mode": "PERMISSIVE", "paths": [
            {"name": "View Account Resource", "path": "/account/{id}",
             "methods": [{"method": "GET", "scopes": ["account:view"]}]}]},
        "kcpep": {"cluster": "keycloak",
                  "dpop": {"replay-slots": 64, "replay-share-percent": 10},
                  "backchannel-logout": {"path": "/kcpep/backchannel-logout",
                                         "audiences": ["demo-cli"]}}
    });
    OwnEnvoy::start(
        Setup {
            name: "flood",
            admin: FLOOD_ADMIN,
            listener: FLOOD_LISTENER,
            base_id: 81,
            clusters: vec![
                cluster("keycloak", &[kc_port]),
                cluster("upstream", &[8081]),
            ],
        },
        &plugin,
    )
}

/// One client sending fresh, valid proofs of its own token as fast as it can is refused alone,
/// once it holds its share of the proof table: another DPoP client is still served, and
/// Keycloak's logout tokens, in a table of their own, still end sessions. The counter names the
/// limit that refused.
#[test]
fn one_client_flooding_proofs_is_refused_alone() {
    if !keycloak_binds_dpop() {
        return;
    }
    let envoy = flood_envoy();
    let base = envoy.url();
    let host = format!("{HOST}:{FLOOD_LISTENER}");
    let me = format!("http://{host}/me");
    let dpop_get = |client: &Client, token: &str| {
        let proof = client.proof("GET", &me, Some(token));
        let auth = format!("DPoP {token}");
        let headers: [(&str, &[u8]); 2] = [
            ("authorization", auth.as_bytes()),
            ("dpop", proof.as_bytes()),
        ];
        send_to(&base, "GET", &host, "/me", None, &headers, b"")
    };
    let (flooder, other) = (Client::new(), Client::new());
    let (flooder_token, other_token) = (flooder.token("owner"), other.token("teller"));
    let session = user_token("plain");
    let bearer = |token: &str| send_to(&base, "GET", &host, "/me", Some(token), &[], b"");
    assert_eq!(bearer(&session).status, 200);
    let share = "kcpep.binding.replay_key_share";
    let full = "kcpep.binding.replay_table_full";
    let (share_before, full_before) = (
        stat_at(&envoy.admin(), share),
        stat_at(&envoy.admin(), full),
    );
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(dpop_get(&flooder, &flooder_token).status);
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(served, 6, "the flooder's share of 64 slots: {statuses:?}");
    assert!(statuses[6..].iter().all(|s| *s == 401), "{statuses:?}");
    let r = dpop_get(&flooder, &flooder_token);
    assert_eq!(refusal(&r), (401, "DPoP invalid_dpop_proof".into()));
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("replay-share-percent"),
        "{:?}",
        r.header("www-authenticate")
    );
    assert_eq!(stat_at(&envoy.admin(), share) - share_before, 35);
    assert_eq!(
        stat_at(&envoy.admin(), full),
        full_before,
        "the table never filled"
    );
    // the other client, meanwhile
    for n in 0..5 {
        let r = dpop_get(&other, &other_token);
        assert_eq!(r.status, 200, "the other client's proof {n}: {}", r.text());
    }
    // and Keycloak's logout of a session
    let r = request(
        &base,
        "POST",
        "/kcpep/backchannel-logout",
        &[("content-type", b"application/x-www-form-urlencoded")],
        format!("logout_token={}", logout_token_for(&session, now() + 60)).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    poll_until(
        "the logged-out session refused",
        std::time::Duration::from_secs(5),
        || (bearer(&session).status == 401).then_some(()),
    );
}
