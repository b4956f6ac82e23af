//! The claim information point inside decisions: claims pushed with the grant, the body read only
//! when needed, http providers as callouts, claims in the cache key and in RPT checks, dry-run.

use super::*;
use crate::enforce::replies::body_too_large;

fn branch_cfg(extra_kcpep: Value) -> EnforcerConfig {
    let mut kcpep = json!({"decision-cache": {"max-entries": 100, "lifespan-ms": 60000},
                           "proxy-headers": "xforwarded", "trusted-proxies": ["127.0.0.1"]});
    if let Value::Object(m) = extra_kcpep {
        for (k, v) in m {
            kcpep[k] = v;
        }
    }
    let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
    "credentials": {"secret": "s"}, "kcpep": kcpep,
    "policy-enforcer": {
        "claim-information-point": {"claims": {"ip": "{request.remoteAddr}"}},
        "paths": [
            {"name": "Branch Transfer", "path": "/branch/transfer",
             "claim-information-point": {"claims": {
                 "branch": "{request.header['x-branch']}",
                 "amount": "{request.body['/amount']}"}}},
            {"name": "Limits", "path": "/limits",
             "claim-information-point": {"http": {
                 "url": "http://claims:8082/limits", "method": "GET", "cluster": "claims",
                 "parameters": {"user": "{keycloak.access_token['/preferred_username']}"},
                 "claims": {"tier": "/tier"}}}},
            {"name": "Soft Limits", "path": "/soft-limits",
             "claim-information-point": {"http": {
                 "url": "http://claims:8082/limits", "method": "GET", "on-error": "continue"}}},
            {"name": "View Account Resource", "path": "/account/{id}"}
        ]}});
    EnforcerConfig::from_value(&v, "").unwrap()
}

use crate::request::view::lines as hs;

#[allow(clippy::too_many_arguments)]
fn go(
    c: &EnforcerConfig,
    known: &mut Knowledge,
    store: &mut MemStore,
    t: &T,
    path: &str,
    headers: &[(String, Vec<u8>)],
    body: Option<&[u8]>,
    answer: Option<(&Step, u16, &str)>,
) -> Step {
    let req = RequestFacts {
        method: "POST",
        path,
        credential: &valid(t),
        view: RequestView {
            headers,
            peer: Some("127.0.0.1:40000"),
            tls: false,
            body,
        },
        grpc: false,
    };
    match answer {
        None => decide(c, known, &req, store, NOW_MS),
        Some((Step::Call(call), status, text)) => resume(
            c,
            known,
            &req,
            store,
            call.pending.clone(),
            Answer::Http {
                status,
                body: text.as_bytes(),
            },
            NOW_MS,
        ),
        Some((other, ..)) => panic!("expected a call, got {other:?}"),
    }
}

fn pushed(step: &Step) -> Claims {
    let Step::Call(call) = step else {
        panic!("expected a call, got {step:?}")
    };
    let b64 = form_value(call, "claim_token").expect("claim_token");
    let b64 = b64
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    use base64::Engine;
    let json = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(
        form_value(call, "claim_token_format").as_deref(),
        Some("urn:ietf:params:oauth:token-type:jwt")
    );
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let values = v.as_array().unwrap().iter();
            (
                k.clone(),
                values.map(|s| s.as_str().unwrap().to_string()).collect(),
            )
        })
        .collect()
}

const BRANCH_GRANTED: &str = r#"[{"rsid":"b1","rsname":"Branch Transfer"}]"#;

#[test]
fn body_claims_wait_for_the_body_then_travel_as_claim_token() {
    let c = branch_cfg(json!({}));
    let mut known = Knowledge::new(&c);
    let mut store = MemStore::default();
    let t = token(json!({}));
    let h = hs(&[
        ("x-branch", "tokyo"),
        ("content-type", "application/json"),
        ("x-forwarded-for", "203.0.113.7"),
    ]);
    // POST /branch/transfer with these headers, this body, and Keycloak's answer to `answer`
    let mut transfer = |body: Option<&[u8]>, answer: Option<(&Step, u16, &str)>| {
        go(
            &c,
            &mut known,
            &mut store,
            &t,
            "/branch/transfer",
            &h,
            body,
            answer,
        )
    };
    let amount_900: &[u8] = br#"{"amount": 900}"#;
    assert_eq!(transfer(None, None), Step::ReadBody);
    let s = transfer(Some(amount_900), None);
    let claims = pushed(&s);
    assert_eq!(claims["branch"], ["tokyo"]);
    assert_eq!(claims["amount"], ["900"]);
    // global claims too, with the trusted proxy's X-Forwarded-For believed
    assert_eq!(claims["ip"], ["203.0.113.7"]);
    let done = transfer(Some(amount_900), Some((&s, 200, BRANCH_GRANTED)));
    assert!(
        matches!(&done, Step::Allow(a) if a.cache == CacheUse::Stored),
        "{done:?}"
    );
    // same claims: a cache hit; other claims: Keycloak is asked again
    let again = transfer(Some(amount_900), None);
    assert!(
        matches!(&again, Step::Allow(a) if a.cache == CacheUse::Hit),
        "{again:?}"
    );
    let other = transfer(Some(br#"{"amount": 5000}"#), None);
    assert_eq!(pushed(&other)["amount"], ["5000"]);
}

#[test]
fn paths_without_body_claims_never_ask_for_the_body() {
    let c = branch_cfg(json!({}));
    let mut known = Knowledge::new(&c);
    let t = token(json!({}));
    let s = go(
        &c,
        &mut known,
        &mut MemStore::default(),
        &t,
        "/account/1",
        &[],
        None,
        None,
    );
    let claims = pushed(&s);
    assert_eq!(claims.keys().collect::<Vec<_>>(), ["ip"]);
    // the peer is not believed about X-Forwarded-For unless trusted
    let c = branch_cfg(json!({"trusted-proxies": ["10.0.0.0/8"]}));
    let mut known = Knowledge::new(&c);
    let h = hs(&[("x-forwarded-for", "203.0.113.7")]);
    let s = go(
        &c,
        &mut known,
        &mut MemStore::default(),
        &t,
        "/account/1",
        &h,
        None,
        None,
    );
    assert_eq!(pushed(&s)["ip"], ["127.0.0.1"]);
}

#[test]
fn a_body_that_is_not_json_is_a_bad_request_naming_the_path() {
    let c = branch_cfg(json!({}));
    let mut known = Knowledge::new(&c);
    let t = token(json!({}));
    let h = hs(&[("content-type", "application/json")]);
    let s = go(
        &c,
        &mut known,
        &mut MemStore::default(),
        &t,
        "/branch/transfer",
        &h,
        Some(b"{nope"),
        None,
    );
    let Step::Reply(r) = s else { panic!("{s:?}") };
    assert_eq!(r.status, 400);
    let m = r.matched.as_ref().unwrap();
    assert_eq!(m.path, "/branch/transfer");
    assert_eq!(m.resource.as_deref(), Some("Branch Transfer"));
    assert_eq!(status(&body_too_large(&c)), 413);
}

#[test]
fn http_provider_is_a_callout_before_the_grant() {
    let c = branch_cfg(json!({}));
    let mut known = Knowledge::new(&c);
    let mut store = MemStore::default();
    let t = token(json!({"preferred_username": "alice"}));
    let s = go(&c, &mut known, &mut store, &t, "/limits", &[], None, None);
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    let svc = call.service.as_ref().expect("a claim service call");
    assert_eq!(svc.cluster, "claims");
    assert_eq!(call.request.path, "/limits?user=alice");
    let grant = go(
        &c,
        &mut known,
        &mut store,
        &t,
        "/limits",
        &[],
        None,
        Some((&s, 200, r#"{"tier":"gold"}"#)),
    );
    let Step::Call(g) = &grant else {
        panic!("{grant:?}")
    };
    assert!(g.service.is_none(), "then Keycloak");
    assert_eq!(pushed(&grant)["tier"], ["gold"]);
    // a failing provider denies (503) ...
    let s = go(&c, &mut known, &mut store, &t, "/limits", &[], None, None);
    let failed = go(
        &c,
        &mut known,
        &mut store,
        &t,
        "/limits",
        &[],
        None,
        Some((&s, 500, "oops")),
    );
    assert_eq!(status(&failed), 503);
    // ... unless it says on-error: continue
    let s = go(
        &c,
        &mut known,
        &mut store,
        &t,
        "/soft-limits",
        &[],
        None,
        None,
    );
    let cont = go(
        &c,
        &mut known,
        &mut store,
        &t,
        "/soft-limits",
        &[],
        None,
        Some((&s, 500, "oops")),
    );
    assert_eq!(pushed(&cont).keys().collect::<Vec<_>>(), ["ip"]);
}

#[test]
fn rpt_permissions_with_claims_are_checked_against_the_request_claims() {
    let t = token(json!({"aud": "bank-api", "authorization": {"permissions": [
        {"rsid": "acc", "rsname": "View Account Resource", "claims": {"ip": ["127.0.0.1"]}}]}}));
    let mut cfg2 = branch_cfg(json!({"trusted-proxies": ["10.0.0.0/8"]}));
    // bind the configured path to the RPT's resource id
    cfg2.paths[3].id = Some("acc".into());
    let mut rt2 = Knowledge::new(&cfg2);
    let s = go(
        &cfg2,
        &mut rt2,
        &mut MemStore::default(),
        &t,
        "/account/1",
        &[],
        None,
        None,
    );
    assert!(
        matches!(&s, Step::Allow(a) if a.reason == "the token already carries the permission"),
        "{s:?}"
    );
    // from another address the RPT's claims do not hold: Keycloak is asked
    let h = hs(&[("x-forwarded-for", "198.51.100.1")]);
    let mut cfg3 = branch_cfg(json!({"trusted-proxies": ["127.0.0.1"]}));
    cfg3.paths[3].id = Some("acc".into());
    let mut rt3 = Knowledge::new(&cfg3);
    let s = go(
        &cfg3,
        &mut rt3,
        &mut MemStore::default(),
        &t,
        "/account/1",
        &h,
        None,
        None,
    );
    assert!(matches!(s, Step::Call(_)), "{s:?}");
}

#[test]
fn dry_run_lets_denials_through_and_says_what_they_were() {
    let c = branch_cfg(json!({"dry-run": true}));
    let mut known = Knowledge::new(&c);
    let t = token(json!({}));
    let s = go(
        &c,
        &mut known,
        &mut MemStore::default(),
        &t,
        "/nowhere",
        &[],
        None,
        None,
    );
    let Step::Allow(a) = &s else { panic!("{s:?}") };
    let would = a.would_deny.as_ref().expect("the would-be denial");
    assert_eq!(would.status, 403);
    assert_eq!(would.reason, "no path matched");
    let anon = RequestFacts {
        method: "GET",
        path: "/account/1",
        credential: &Credential::Anonymous,
        view: Default::default(),
        grpc: false,
    };
    let s = decide(&c, &mut known, &anon, &mut NoStore, NOW_MS);
    assert!(matches!(&s, Step::Allow(a) if a.would_deny.as_ref().is_some_and(|r| r.status == 401)));
    // without dry-run the same request is refused
    let c = branch_cfg(json!({}));
    let mut known = Knowledge::new(&c);
    assert_eq!(
        status(&go(
            &c,
            &mut known,
            &mut MemStore::default(),
            &t,
            "/nowhere",
            &[],
            None,
            None
        )),
        403
    );
}
