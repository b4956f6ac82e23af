//! End to end: the claim information point through the real Envoy against the real Keycloak.
//! Keycloak decides with JavaScript policies that read the pushed claims
//! (envoy/keycloak/policies, deployed as a provider jar by scripts/stack.sh):
//! - /branch/transfer: header `x-branch` is tokyo, body `/amount` <= 1000, client in 203.0.113.0/24;
//! - /branch/statement: the claim service (scripts/claim_service.py) says the customer is active.
//!
//! `claims.bank.local` trusts 127.0.0.1 as a proxy (X-Forwarded-For believed),
//! `untrusted.bank.local` trusts only 10.0.0.0/8; `dryrun.bank.local` never blocks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;

fn transfer(host: &str, token: &str, branch: &str, body: &[u8]) -> Response {
    let auth = format!("Bearer {token}");
    request(
        &envoy(),
        "POST",
        "/branch/transfer",
        &[
            ("host", host.as_bytes()),
            ("authorization", auth.as_bytes()),
            ("x-branch", branch.as_bytes()),
            ("x-forwarded-for", b"203.0.113.7"),
            ("content-type", b"application/json"),
        ],
        body,
    )
}

fn statement(token: &str) -> Response {
    let auth = format!("Bearer {token}");
    request(
        &envoy(),
        "GET",
        "/branch/statement",
        &[
            ("host", b"claims.bank.local"),
            ("authorization", auth.as_bytes()),
        ],
        b"",
    )
}

/// Changes what the claim service answers for a customer.
fn claim_service(method: &str, body: &str) {
    let r = request(
        &env("KCPEP_CLAIMS_URL"),
        method,
        "/state",
        &[("content-type", b"application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn header_and_body_claims_decide_in_keycloak() {
    let tok = user_token("owner");
    let ok = transfer("claims.bank.local", &tok, "tokyo", br#"{"amount": 900}"#);
    assert_eq!(ok.status, 200, "{}", ok.text());
    // forwarded with its body intact, and the headers only after the decision
    let echoed: Value = ok.json();
    assert_eq!(echoed["body"], r#"{"amount": 900}"#);
    // the filter held the headers while it read the body, so the permissions header went too
    assert!(echoed["headers"]["x-kcpep-permissions"]
        .as_str()
        .is_some_and(|h| h.contains("Branch Transfer")));
    // flip the header, then the body
    let r = transfer("claims.bank.local", &tok, "osaka", br#"{"amount": 900}"#);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = transfer("claims.bank.local", &tok, "tokyo", br#"{"amount": 1001}"#);
    assert_eq!(r.status, 403, "{}", r.text());
    // numbers arrive as text; a nested pointer that is missing gives "" (not a number) -> deny
    let r = transfer("claims.bank.local", &tok, "tokyo", br#"{"total": 5}"#);
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let tok = user_token("owner");
    let body = br#"{"amount": 10}"#;
    assert_eq!(
        transfer("claims.bank.local", &tok, "tokyo", body).status,
        200
    );
    // same request, but the peer (127.0.0.1) is not a trusted proxy here: the client address is
    // the peer's, outside 203.0.113.0/24
    assert_eq!(
        transfer("untrusted.bank.local", &tok, "tokyo", body).status,
        403
    );
}

#[test]
fn body_bound_and_bad_bodies_are_refused_with_clear_statuses() {
    let tok = user_token("owner");
    // kcpep.max-body-bytes is 1024 on these hosts
    let mut big = br#"{"amount": 1, "pad": ""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 2000));
    big.extend_from_slice(br#""}"#);
    let r = transfer("claims.bank.local", &tok, "tokyo", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    let r = transfer("claims.bank.local", &tok, "tokyo", b"{not json");
    assert_eq!(r.status, 400, "{}", r.text());
    // under the bound, the same shape passes
    let mut small = br#"{"amount": 1, "pad": ""#.to_vec();
    small.extend(std::iter::repeat_n(b'x', 500));
    small.extend_from_slice(br#""}"#);
    assert_eq!(
        transfer("claims.bank.local", &tok, "tokyo", &small).status,
        200
    );
}

#[test]
fn http_provider_answers_flip_the_decision() {
    let tok = user_token("both");
    claim_service("DELETE", "");
    let calls_before = stat("kcpep.claims.calls");
    assert_eq!(statement(&tok).status, 200);
    claim_service("PUT", r#"{"user": "both", "status": "frozen"}"#);
    assert_eq!(statement(&tok).status, 403);
    // the claim service failing: refused (fail closed), never allowed
    claim_service("PUT", r#"{"user": "both", "http_status": 500}"#);
    assert_eq!(statement(&tok).status, 503);
    claim_service("DELETE", "");
    assert_eq!(statement(&tok).status, 200);
    // every request asked the claim service (counted by the filter, and at the service)
    assert!(stat("kcpep.claims.calls") >= calls_before + 4);
    let served = request(&env("KCPEP_CLAIMS_URL"), "GET", "/calls", &[], b"").json();
    assert!(served["count"].as_i64().unwrap() >= 4);
    // a claims callout carries the trace context of the request it is for
    let traceparent = format!("00-{:032x}-00f067aa0ba902b7-01", rand::random::<u128>());
    let auth = format!("Bearer {tok}");
    let r = request(
        &envoy(),
        "GET",
        "/branch/statement",
        &[
            ("host", b"claims.bank.local"),
            ("authorization", auth.as_bytes()),
            ("traceparent", traceparent.as_bytes()),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let served = request(&env("KCPEP_CLAIMS_URL"), "GET", "/calls", &[], b"").json();
    assert_eq!(
        served["trace"]["traceparent"],
        traceparent.as_str(),
        "{served}"
    );
}

#[test]
fn dry_run_records_denials_without_blocking() {
    let tok = user_token("plain"); // no role: denied by Keycloak on the enforcing hosts
    let before = stat("kcpep.requests.dry_run_denied");
    let auth = format!("Bearer {tok}");
    let r = request(
        &envoy(),
        "GET",
        "/account/1",
        &[
            ("host", b"dryrun.bank.local"),
            ("authorization", auth.as_bytes()),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let enforcing = request(
        &envoy(),
        "GET",
        "/account/1",
        &[
            ("host", b"unanimous.bank.local"),
            ("authorization", auth.as_bytes()),
        ],
        b"",
    );
    assert_eq!(enforcing.status, 403);
    assert_eq!(stat("kcpep.requests.dry_run_denied"), before + 1);
}

#[test]
fn every_request_placeholder_reaches_keycloak() {
    // /branch/echo pushes one claim per placeholder kind; Keycloak grants the owner and returns
    // the claims it evaluated inside the permission, which reaches the upstream as a header.
    let tok = user_token("owner");
    let auth = format!("Bearer {tok}");
    let r = request(
        &envoy(),
        "GET",
        "/branch/echo?q=a%20b&x=1",
        &[
            ("host", b"claims.bank.local"),
            ("authorization", auth.as_bytes()),
            ("cookie", b"c=cookie-value; other=1"),
            ("x-h", b"header-value"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.json();
    let perms: Value =
        serde_json::from_str(echoed["headers"]["x-kcpep-permissions"].as_str().unwrap()).unwrap();
    let claims = &perms[0]["claims"];
    let one = |name: &str| claims[name].as_array().map(|v| v.to_vec());
    let want = |v: &[&str]| Some(v.iter().map(|s| Value::from(*s)).collect::<Vec<_>>());
    assert_eq!(one("method"), want(&["GET"]), "{claims}");
    assert_eq!(one("uri"), want(&["/branch/echo"]));
    assert_eq!(one("relative"), want(&["/branch/echo"]));
    assert_eq!(one("secure"), want(&["false"]));
    assert_eq!(one("q"), want(&["a b"]));
    assert_eq!(one("c"), want(&["cookie-value"]));
    assert_eq!(one("h"), want(&["header-value"]));
    assert_eq!(one("user"), want(&["owner"]));
    assert_eq!(one("mixed"), want(&["GET by owner"]));
    let mut list = one("list").unwrap();
    list.sort_by_key(|v| v.to_string());
    assert_eq!(Some(list), want(&["header-value", "static"]));
    assert_eq!(
        one("ip"),
        want(&["127.0.0.1"]),
        "the global claim, no forwarding header"
    );
}
