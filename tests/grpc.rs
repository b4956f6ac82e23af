//! gRPC through the stack's Envoy: a real grpcio client (scripts/grpc_client.py) calling the
//! stack's grpcio upstream (scripts/grpc_upstream.py) on `grpc.bank.local`, whose enforcer maps
//! Keycloak resources to gRPC method paths (`/bank.v1.Accounts/GetAccount`,
//! `/bank.v1.Transfers/{method}`, `/bank.v1.Ops/*`) and has `on-deny-redirect-to` set. What a
//! gRPC client must get: UNAUTHENTICATED with the challenge as metadata, PERMISSION_DENIED with
//! the reason as its message (never a redirect), UNAVAILABLE while Keycloak fails, the UMA ticket
//! it can exchange, and the same answers through gRPC-Web (Envoy's grpc_web filter).
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

const GRPC_HOST: &str = "grpc.bank.local";
const UMA_HOST: &str = "grpc-uma.bank.local";

/// Envoy's listener as a gRPC target (`host:port`).
fn target() -> String {
    envoy().trim_start_matches("http://").to_string()
}

/// One unary call: authority, method, bearer token, more metadata.
type Call<'a> = (&'a str, &'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);

/// Unary calls through the real grpcio client; what the client saw of each (code, details,
/// metadata, response).
fn calls(list: &[Call<'_>]) -> Vec<Value> {
    let input: Vec<Value> = list
        .iter()
        .map(|(authority, method, token, extra)| {
            let mut md: Vec<Value> = token
                .map(|t| json!(["authorization", format!("Bearer {t}")]))
                .into_iter()
                .collect();
            md.extend(extra.iter().map(|(k, v)| json!([k, v])));
            json!({"target": target(), "authority": authority, "method": method,
                   "metadata": md, "request": "account 7"})
        })
        .collect();
    let python = env("KCPEP_GRPC_PYTHON");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/grpc_client.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gRPC client starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::from(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "grpc_client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn call(authority: &str, method: &str, token: Option<&str>) -> Value {
    calls(&[(authority, method, token, &[])]).remove(0)
}

/// A metadata value the client saw, in the initial or the trailing metadata.
fn metadata<'a>(answer: &'a Value, name: &str) -> Option<&'a str> {
    ["initial_metadata", "trailing_metadata"]
        .iter()
        .flat_map(|part| answer[part].as_array().into_iter().flatten())
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv[1].as_str())
}

/// Calls the gRPC upstream has answered so far.
fn upstream_calls() -> i64 {
    cluster_stat("grpc", "upstream_rq_total")
}

fn faults(method: &str, body: &str) {
    let r = request(
        &env("KCPEP_FAULTS_URL"),
        method,
        "/faults",
        &[],
        body.as_bytes(),
    );
    assert_eq!(r.status, 204, "{}", r.text());
}

#[test]
fn seed_002_s_table_holds_for_grpc_calls_and_a_denial_never_reaches_the_upstream() {
    for user in USERS {
        let t = user_token(user);
        let before = upstream_calls();
        // a forged permissions header arrives as metadata too: it never reaches the upstream
        let forged = [("x-kcpep-permissions", "[{\"rsname\":\"everything\"}]")];
        let a = calls(&[(GRPC_HOST, "/bank.v1.Accounts/GetAccount", Some(&t), &forged)]).remove(0);
        let reached = upstream_calls() > before;
        if expected_allowed("UNANIMOUS", user) {
            assert_eq!(a["code"], "OK", "{user}: {a}");
            assert!(reached, "{user}: allowed but not at the upstream");
            let echo: Value = serde_json::from_str(a["response"].as_str().unwrap()).unwrap();
            assert_eq!(echo["method"], "/bank.v1.Accounts/GetAccount");
            let granted = echo["metadata"]["x-kcpep-permissions"].clone();
            assert_eq!(granted.as_array().map(Vec::len), Some(1), "{user}: {echo}");
            let granted: Value = serde_json::from_str(granted[0].as_str().unwrap()).unwrap();
            assert_eq!(granted[0]["rsname"], "View Account Resource", "{user}");
        } else {
            assert_eq!(a["code"], "PERMISSION_DENIED", "{user}: {a}");
            assert!(!reached, "{user}: a denied call reached the upstream");
            // the reason, not an HTTP body, and no redirect
            assert_ne!(a["details"], "Forbidden", "{user}: {a}");
            assert!(!a["details"].as_str().unwrap().is_empty(), "{user}: {a}");
            assert_eq!(metadata(&a, "location"), None, "{user}: {a}");
        }
    }
}

#[test]
fn no_token_is_unauthenticated_with_the_bearer_challenge_where_http_is_redirected() {
    let a = call(GRPC_HOST, "/bank.v1.Accounts/GetAccount", None);
    assert_eq!(a["code"], "UNAUTHENTICATED", "{a}");
    assert_eq!(a["details"], "no token", "{a}");
    assert_eq!(
        metadata(&a, "www-authenticate"),
        Some("Bearer realm=\"bank\""),
        "{a}"
    );
    assert_eq!(metadata(&a, "location"), None, "{a}");
    // an HTTP client of the same enforcer is sent to on-deny-redirect-to (Keycloak's behaviour)
    let http = send_to(
        &envoy(),
        "POST",
        GRPC_HOST,
        "/bank.v1.Accounts/GetAccount",
        None,
        &[],
        b"",
    );
    assert_eq!(
        (http.status, http.header("location")),
        (302, Some("/denied"))
    );
    // a token that is not valid: UNAUTHENTICATED, the RFC 6750 error in the challenge
    let a = call(GRPC_HOST, "/bank.v1.Accounts/GetAccount", Some("not-a-jwt"));
    assert_eq!(a["code"], "UNAUTHENTICATED", "{a}");
    let challenge = metadata(&a, "www-authenticate").unwrap_or_default();
    assert!(challenge.contains("error=\"invalid_token\""), "{a}");
}

#[test]
fn a_method_no_path_maps_is_permission_denied_rather_than_redirected() {
    let t = user_token("owner");
    let before = upstream_calls();
    let a = call(GRPC_HOST, "/bank.v1.Accounts/CloseAccount", Some(&t));
    assert_eq!(a["code"], "PERMISSION_DENIED", "{a}");
    let details = a["details"].as_str().unwrap();
    assert!(details.contains("on-deny-redirect-to"), "{a}");
    assert_eq!(upstream_calls(), before);
}

#[test]
fn keycloak_failing_is_unavailable_and_never_reaches_the_upstream() {
    let t = user_token("owner");
    faults("PUT", r#"{"uma": "reset"}"#);
    let before = upstream_calls();
    let a = call(GRPC_HOST, "/bank.v1.Accounts/GetAccount", Some(&t));
    let b = call(GRPC_HOST, "/bank.v1.Transfers/Create", Some(&t));
    faults("DELETE", "");
    for answer in [&a, &b] {
        assert_eq!(answer["code"], "UNAVAILABLE", "{answer}");
    }
    assert_eq!(upstream_calls(), before);
    // and once Keycloak answers again, the same call goes through
    let a = call(GRPC_HOST, "/bank.v1.Accounts/GetAccount", Some(&t));
    assert_eq!(a["code"], "OK", "{a}");
}

#[test]
fn the_uma_challenge_reaches_a_grpc_client_as_metadata_whose_ticket_it_can_exchange() {
    let a = call(UMA_HOST, "/bank.v1.Accounts/GetAccount", None);
    assert_eq!(a["code"], "UNAUTHENTICATED", "{a}");
    let challenge = metadata(&a, "www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("UMA realm=\"bank\""), "{a}");
    let ticket = challenge
        .split("ticket=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or_else(|| panic!("no ticket in {challenge}"));
    // the client exchanges the ticket for an RPT at Keycloak, and calls again with it
    let owner = user_token("owner");
    let rpt = rpt_with("bank", &owner, &format!("ticket={ticket}"));
    let a = call(UMA_HOST, "/bank.v1.Accounts/GetAccount", Some(&rpt));
    assert_eq!(a["code"], "OK", "{a}");
}

#[test]
fn keycloak_path_templates_and_wildcards_select_grpc_methods() {
    let owner = user_token("owner");
    let teller = user_token("teller");
    // /bank.v1.Transfers/{method}: Transfer Resource, transfer:create (the owner only)
    // /bank.v1.Ops/*: Ops Resource, its GET scope (teller and owner)
    let got = calls(&[
        (
            GRPC_HOST,
            "/bank.v1.Transfers/CreateTransfer",
            Some(&owner),
            &[],
        ),
        (
            GRPC_HOST,
            "/bank.v1.Transfers/CreateTransferTeller",
            Some(&teller),
            &[],
        ),
        (GRPC_HOST, "/bank.v1.Ops/Status", Some(&teller), &[]),
        (GRPC_HOST, "/bank.v1.Ops/Status", Some(&owner), &[]),
    ]);
    let codes: Vec<&str> = got.iter().map(|a| a["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["OK", "PERMISSION_DENIED", "OK", "OK"], "{got:?}");
    // the access log's decision records name the pattern and resource, and the gRPC status
    let allowed = decision_of(&access_line("POST", "/bank.v1.Transfers/CreateTransfer"));
    assert_eq!(
        (&allowed["outcome"], &allowed["path"], &allowed["resource"]),
        (
            &json!("allow"),
            &json!("/bank.v1.Transfers/{method}"),
            &json!("Transfer Resource")
        )
    );
    let denied = decision_of(&access_line(
        "POST",
        "/bank.v1.Transfers/CreateTransferTeller",
    ));
    assert_eq!(
        (
            &denied["outcome"],
            &denied["status"],
            &denied["grpc_status"]
        ),
        (&json!("deny"), &json!(403), &json!(7)),
        "{denied}"
    );
    assert_eq!(denied["scopes"], json!(["transfer:create"]));
}

/// A gRPC-Web call over HTTP/1.1, as a browser makes it: one length-prefixed message.
fn grpc_web(method: &str, token: Option<&str>) -> Response {
    let message = b"account 7";
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    send_to(
        &envoy(),
        "POST",
        GRPC_HOST,
        method,
        token,
        &[
            ("content-type", b"application/grpc-web+proto"),
            ("x-grpc-web", b"1"),
        ],
        &body,
    )
}

/// A gRPC-Web answer's status: in its headers (trailers-only) or in its trailer frame.
fn grpc_web_status(r: &Response) -> Option<String> {
    if let Some(s) = r.header("grpc-status") {
        return Some(s.to_string());
    }
    // frames: 1 flag byte (0x80: trailers), 4 length bytes, the payload
    let mut rest = &r.body[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = rest.get(5..5 + len)?;
        if rest[0] & 0x80 != 0 {
            let text = String::from_utf8_lossy(payload);
            return text
                .lines()
                .find_map(|l| l.strip_prefix("grpc-status:"))
                .map(|v| v.trim().to_string());
        }
        rest = &rest[5 + len..];
    }
    None
}

#[test]
fn grpc_web_through_envoys_grpc_web_filter_gets_the_same_answers() {
    let owner = user_token("owner");
    let teller = user_token("teller");
    let cases = [
        (None, "16"),
        (Some(teller.as_str()), "7"),
        (Some(owner.as_str()), "0"),
    ];
    for (token, status) in cases {
        let r = grpc_web("/bank.v1.Accounts/GetAccount", token);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            grpc_web_status(&r).as_deref(),
            Some(status),
            "{:?} {}",
            r.headers,
            r.text()
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/grpc-web")),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("location"), None);
    }
    // the allowed one carried the upstream's answer
    let r = grpc_web("/bank.v1.Accounts/GetAccount", Some(&owner));
    assert!(
        r.text().contains("/bank.v1.Accounts/GetAccount"),
        "{}",
        r.text()
    );
}
