//! The outcome table of docs/keycloak-enforcer.md §5, row by row, plus our deliberate changes.

use super::*;
use crate::config::{EnforcementMode, EnforcerConfig};
use crate::enforce::step::{CacheUse, Call, Credential, RequestFacts, Step};
use crate::keycloak::knowledge::Knowledge;
use crate::keycloak::token::tests::{claims, jwks, sign_rs256, ISSUER, NOW};
use crate::keycloak::token::{verify, Expectations, TokenError};
use crate::keycloak::token::{BearerError, Token};
use crate::request::view::RequestView;
use crate::store::DecisionStore;
use crate::store::NoStore;
use crate::wire::claims::Claims;
use crate::wire::http::Answer;
use serde_json::{json, Value};

const NOW_MS: i64 = NOW * 1000;

fn cfg_with(pe: Value) -> EnforcerConfig {
    let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
                   "credentials": {"secret": "s"}, "policy-enforcer": pe});
    EnforcerConfig::from_value(&v, "").unwrap()
}

fn bank() -> EnforcerConfig {
    cfg_with(json!({"paths": [
        {"name": "View Account Resource", "path": "/account/{id}",
         "methods": [{"method": "GET", "scopes": ["account:view"]},
                     {"method": "POST", "scopes": ["a", "b"]},
                     {"method": "PUT", "scopes": ["a", "b"], "scopes-enforcement-mode": "ANY"},
                     {"method": "DELETE", "scopes": ["d"], "scopes-enforcement-mode": "DISABLED"}]},
        {"path": "/public/*", "enforcement-mode": "DISABLED"},
        {"path": "/soft/*", "enforcement-mode": "PERMISSIVE", "name": "Soft"}
    ]}))
}

struct T {
    raw: String,
    token: Token,
}

fn token(extra: Value) -> T {
    let mut c = claims();
    c["iss"] = json!(ISSUER);
    if let Value::Object(m) = extra {
        for (k, v) in m {
            c[k] = v;
        }
    }
    let raw = sign_rs256(&c);
    let e = Expectations {
        issuer: ISSUER,
        audiences: &[],
        leeway_seconds: 30,
        dpop: false,
    };
    let token = verify(&raw, &jwks(), &e, NOW).unwrap();
    T { raw, token }
}

fn run(
    cfg: &EnforcerConfig,
    known: &mut Knowledge,
    method: &str,
    path: &str,
    cred: Credential,
) -> Step {
    let req = RequestFacts {
        method,
        path,
        credential: &cred,
        view: Default::default(),
        grpc: false,
    };
    decide(cfg, known, &req, &mut NoStore, NOW_MS)
}

fn valid(t: &T) -> Credential {
    Credential::Valid(t.raw.clone(), std::rc::Rc::new(t.token.clone()))
}

fn status(step: &Step) -> u16 {
    match step {
        Step::Allow(_) => 200,
        Step::Reply(r) => r.status,
        Step::Call(_) | Step::Wait { .. } | Step::ReadBody => 0,
    }
}

fn header<'a>(step: &'a Step, name: &str) -> Option<&'a str> {
    match step {
        Step::Reply(r) => r
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str()),
        _ => None,
    }
}

fn form_value(call: &Call, key: &str) -> Option<String> {
    let body = String::from_utf8(call.request.body.clone()).unwrap();
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%23", "#")
                .replace("%3A", ":")
                .replace('+', " ")
                .replace("%2C", ",")
        })
    })
}

#[allow(clippy::too_many_arguments)]
fn answer(
    cfg: &EnforcerConfig,
    known: &mut Knowledge,
    method: &str,
    path: &str,
    t: &T,
    step: Step,
    status: u16,
    body: &str,
) -> Step {
    let Step::Call(call) = step else {
        panic!("expected a call, got {step:?}")
    };
    let req = RequestFacts {
        method,
        path,
        credential: &valid(t),
        view: Default::default(),
        grpc: false,
    };
    resume(
        cfg,
        known,
        &req,
        &mut NoStore,
        call.pending,
        Answer::Http {
            status,
            body: body.as_bytes(),
        },
        NOW_MS,
    )
}

#[test]
fn global_disabled() {
    let c = cfg_with(json!({"enforcement-mode": "DISABLED"}));
    let mut known = Knowledge::new(&c);
    let s = run(&c, &mut known, "GET", "/x", Credential::Anonymous);
    assert_eq!(status(&s), 401);
    assert_eq!(
        header(&s, "www-authenticate"),
        Some("Bearer realm=\"bank\"")
    );
    assert_eq!(
        status(&run(
            &c,
            &mut known,
            "GET",
            "/x",
            Credential::Invalid(TokenError::Expired)
        )),
        200
    );
}

#[test]
fn anonymous_requests() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    assert_eq!(
        status(&run(
            &c,
            &mut known,
            "GET",
            "/public/info",
            Credential::Anonymous
        )),
        200
    );
    let s = run(&c, &mut known, "GET", "/account/1", Credential::Anonymous);
    assert_eq!(status(&s), 401);
    assert_eq!(
        header(&s, "www-authenticate"),
        Some("Bearer realm=\"bank\"")
    );
    assert_eq!(
        status(&run(
            &c,
            &mut known,
            "GET",
            "/nowhere",
            Credential::Anonymous
        )),
        401
    );
    // kcpep.no-token-status 403: as Keycloak's enforcer answers; public paths still pass
    let mut kc = bank();
    kc.proxy.no_token_status = 403;
    let mut known = Knowledge::new(&kc);
    let s = run(&kc, &mut known, "GET", "/account/1", Credential::Anonymous);
    assert_eq!(status(&s), 403);
    assert_eq!(header(&s, "www-authenticate"), None);
    assert_eq!(
        status(&run(
            &kc,
            &mut known,
            "GET",
            "/public/x",
            Credential::Anonymous
        )),
        200
    );
}

#[test]
fn bad_tokens_get_401_invalid_token_except_on_disabled_paths() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    for cred in [
        Credential::Invalid(TokenError::Expired),
        Credential::Invalid(TokenError::BadSignature),
        Credential::Invalid(TokenError::WrongIssuer),
        Credential::Malformed(BearerError::Duplicate),
    ] {
        let s = run(&c, &mut known, "GET", "/account/1", cred.clone());
        assert_eq!(status(&s), 401);
        let h = header(&s, "www-authenticate").unwrap();
        assert!(
            h.starts_with("Bearer realm=\"bank\", error=\"invalid_token\""),
            "{h}"
        );
        assert_eq!(status(&run(&c, &mut known, "GET", "/public/x", cred)), 200);
    }
    // RFC 6750 §3.1: another scheme (Basic) offered no bearer credential, so no error code
    let s = run(
        &c,
        &mut known,
        "GET",
        "/account/1",
        Credential::Malformed(BearerError::NotBearer),
    );
    assert_eq!(status(&s), 401);
    assert_eq!(
        header(&s, "www-authenticate"),
        Some("Bearer realm=\"bank\"")
    );
}

#[test]
fn a_subject_keycloak_refuses_gets_401_and_is_not_cached() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    let t = token(json!({}));
    let mut store = MemStore::default();
    let req = RequestFacts {
        method: "GET",
        path: "/account/1",
        credential: &valid(&t),
        view: Default::default(),
        grpc: false,
    };
    for _ in 0..2 {
        let Step::Call(call) = decide(&c, &mut known, &req, &mut store, NOW_MS) else {
            panic!("asks Keycloak each time: the refusal was not cached as a denial")
        };
        let body = br#"{"error":"unauthorized_client","error_description":"Invalid identity"}"#;
        let s = resume(
            &c,
            &mut known,
            &req,
            &mut store,
            call.pending,
            Answer::Http { status: 400, body },
            NOW_MS,
        );
        assert_eq!(status(&s), 401, "{s:?}");
        assert!(header(&s, "www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
    }
}

#[test]
fn keys_not_loaded_fails_closed() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    assert_eq!(
        status(&run(
            &c,
            &mut known,
            "GET",
            "/account/1",
            Credential::Unverifiable
        )),
        503
    );
}

#[test]
fn unmatched_paths_follow_the_global_mode() {
    let t = token(json!({}));
    let c = bank();
    let mut known = Knowledge::new(&c);
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/nowhere", valid(&t))),
        403
    );
    let c = cfg_with(json!({"enforcement-mode": "PERMISSIVE", "paths": [{"path": "/a"}]}));
    let mut known = Knowledge::new(&c);
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/nowhere", valid(&t))),
        200
    );
    // unparseable paths match nothing
    let c = bank();
    let mut known = Knowledge::new(&c);
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/account/%zz", valid(&t))),
        403
    );
}

#[test]
fn uma_grant_is_built_from_method_config() {
    let t = token(json!({}));
    let c = bank();
    let mut known = Knowledge::new(&c);
    let s = run(&c, &mut known, "GET", "/account/1?x=y", valid(&t));
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert_eq!(
        call.request.path,
        "/realms/bank/protocol/openid-connect/token"
    );
    assert_eq!(
        form_value(call, "permission").as_deref(),
        Some("View Account Resource#account:view")
    );
    assert_eq!(form_value(call, "audience").as_deref(), Some("bank-api"));
    assert_eq!(
        form_value(call, "response_mode").as_deref(),
        Some("permissions")
    );
    assert_eq!(
        form_value(call, "subject_token").as_deref(),
        Some(t.raw.as_str())
    );
    assert_eq!(form_value(call, "rpt"), None);
    assert_eq!(form_value(call, "permission_resource_format"), None);
}

#[test]
fn keycloak_answers() {
    let t = token(json!({}));
    let c = bank();
    let mut known = Knowledge::new(&c);
    let go = |known: &mut Knowledge, method: &str, st: u16, body: &str| {
        let s = run(&c, known, method, "/account/1", valid(&t));
        answer(&c, known, method, "/account/1", &t, s, st, body)
    };
    let granted = r#"[{"rsid":"r1","rsname":"View Account Resource","scopes":["account:view"]}]"#;
    let s = go(&mut known, "GET", 200, granted);
    let Step::Allow(a) = &s else { panic!("{s:?}") };
    assert!(a
        .permissions
        .as_deref()
        .unwrap()
        .starts_with(r#"[{"rsid":"r1""#));
    assert_eq!(
        status(&go(
            &mut known,
            "GET",
            403,
            r#"{"error":"access_denied","error_description":"not_authorized"}"#
        )),
        403
    );
    assert_eq!(
        status(&go(&mut known, "GET", 400, r#"{"error":"invalid_scope"}"#)),
        403
    );
    assert_eq!(
        status(&go(&mut known, "GET", 400, r#"{"error":"invalid_grant"}"#)),
        401
    );
    assert_eq!(
        status(&go(&mut known, "GET", 503, "upstream connect error")),
        503
    );
    assert_eq!(
        status(&go(
            &mut known,
            "GET",
            401,
            r#"{"error":"unauthorized_client"}"#
        )),
        503
    );
    let s = run(&c, &mut known, "GET", "/account/1", valid(&t));
    let Step::Call(call) = s else { panic!() };
    let req = RequestFacts {
        method: "GET",
        path: "/account/1",
        credential: &valid(&t),
        view: Default::default(),
        grpc: false,
    };
    assert_eq!(
        status(&resume(
            &c,
            &mut known,
            &req,
            &mut NoStore,
            call.pending,
            Answer::NoAnswer,
            NOW_MS
        )),
        503
    );
    // ALL needs both scopes; ANY needs one
    let one = r#"[{"rsid":"r1","rsname":"View Account Resource","scopes":["a"]}]"#;
    assert_eq!(status(&go(&mut known, "POST", 200, one)), 403);
    assert_eq!(
        status(&go(
            &mut known,
            "POST",
            200,
            r#"[{"rsid":"r1","rsname":"View Account Resource","scopes":["a","b"]}]"#
        )),
        200
    );
    assert_eq!(status(&go(&mut known, "PUT", 200, one)), 200);
    // DISABLED scopes mode grants after a denial
    assert_eq!(
        status(&go(
            &mut known,
            "DELETE",
            403,
            r#"{"error":"access_denied"}"#
        )),
        200
    );
}

#[test]
fn fail_open_only_when_configured() {
    let t = token(json!({}));
    let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
                   "policy-enforcer": {"paths": [{"path": "/a"}]}, "kcpep": {"on-keycloak-error": "allow"}});
    let c = EnforcerConfig::from_value(&v, "").unwrap();
    let mut known = Knowledge::new(&c);
    let s = run(&c, &mut known, "GET", "/a", valid(&t));
    assert_eq!(
        status(&answer(&c, &mut known, "GET", "/a", &t, s, 503, "")),
        200
    );
}

#[test]
fn rpt_with_permission_needs_no_callout() {
    let mut c = bank();
    c.paths[0].id = Some("r1".into()); // bound to its resource id at start
    let mut known = Knowledge::new(&c);
    let t = token(json!({"aud": "bank-api", "authorization": {"permissions": [
        {"rsid": "r1", "rsname": "View Account Resource", "scopes": ["account:view"]}]}}));
    let s = run(&c, &mut known, "GET", "/account/1", valid(&t));
    assert_eq!(status(&s), 200, "{s:?}");
    // wrong scope: ask Keycloak, sending the RPT for incremental authorization
    let s = run(&c, &mut known, "POST", "/account/1", valid(&t));
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert_eq!(form_value(call, "rpt").as_deref(), Some(t.raw.as_str()));
    // a permission of another resource does not count
    let other = token(
        json!({"aud": "bank-api", "authorization": {"permissions": [{"rsid": "zz", "rsname": "Other", "scopes": ["account:view"]}]}}),
    );
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/account/1", valid(&other))),
        0
    );
    // a scope-only permission grants any path (Keycloak's rule)
    let scope_only = token(
        json!({"aud": "bank-api", "authorization": {"permissions": [{"scopes": ["account:view"]}]}}),
    );
    assert_eq!(
        status(&run(
            &c,
            &mut known,
            "GET",
            "/account/1",
            valid(&scope_only)
        )),
        200
    );
}

#[test]
fn another_resource_servers_rpt_or_an_unbound_path_asks_keycloak() {
    let perms = json!({"permissions": [
        {"rsid": "r1", "rsname": "View Account Resource", "scopes": ["account:view"]}]});
    let mut bound = bank();
    bound.paths[0].id = Some("r1".into());
    // issued for another resource server, with our very resource id: not ours to accept
    let foreign = token(json!({"aud": "bank-api-affirmative", "authorization": perms}));
    let mut known = Knowledge::new(&bound);
    let Step::Call(call) = run(&bound, &mut known, "GET", "/account/1", valid(&foreign)) else {
        panic!()
    };
    assert_eq!(
        form_value(&call, "rpt"),
        None,
        "a foreign RPT is not merged"
    );
    assert_eq!(form_value(&call, "audience").as_deref(), Some("bank-api"));
    // ours, but the path is not bound (PAT refused, protection API down): the name alone does
    // not prove the resource, so Keycloak is asked
    let ours = token(json!({"aud": ["bank-api", "account"], "authorization": perms}));
    let unbound = bank();
    let mut known = Knowledge::new(&unbound);
    let step = run(&unbound, &mut known, "GET", "/account/1", valid(&ours));
    assert!(matches!(step, Step::Call(_)), "{step:?}");
    // Keycloak's own answer to our by-name question still counts by name
    let s = answer(
        &unbound,
        &mut known,
        "GET",
        "/account/1",
        &ours,
        step,
        200,
        r#"[{"rsid":"r9","rsname":"View Account Resource","scopes":["account:view"]}]"#,
    );
    assert_eq!(status(&s), 200, "{s:?}");
}

#[test]
fn path_level_permissive_passes_rpts_without_that_resource() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    let t = token(
        json!({"aud": "bank-api", "authorization": {"permissions": [{"rsid": "zz", "rsname": "Other"}]}}),
    );
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/soft/x", valid(&t))),
        200
    );
}

#[test]
fn http_method_as_scope() {
    let t = token(json!({}));
    let c = cfg_with(json!({"http-method-as-scope": true, "paths": [
        {"name": "R", "path": "/r/*", "methods": [{"method": "GET", "scopes": ["view"]}]}]}));
    let mut known = Knowledge::new(&c);
    let Step::Call(call) = run(&c, &mut known, "PATCH", "/r/1", valid(&t)) else {
        panic!()
    };
    assert_eq!(form_value(&call, "permission").as_deref(), Some("R#PATCH"));
    let Step::Call(call) = run(&c, &mut known, "GET", "/r/1", valid(&t)) else {
        panic!()
    };
    assert_eq!(
        form_value(&call, "permission").as_deref(),
        Some("R#view"),
        "explicit methods win"
    );
}

#[test]
fn unresolved_paths_ask_by_uri() {
    let t = token(json!({}));
    let c = cfg_with(json!({"paths": [{"path": "/things/{id}"}]}));
    let mut known = Knowledge::new(&c);
    let Step::Call(call) = run(&c, &mut known, "GET", "/things/7/", valid(&t)) else {
        panic!()
    };
    assert_eq!(
        form_value(&call, "permission").as_deref(),
        Some("%2Fthings%2F7")
    );
    assert_eq!(
        form_value(&call, "permission_resource_format").as_deref(),
        Some("uri")
    );
    assert_eq!(
        form_value(&call, "permission_resource_matching_uri").as_deref(),
        Some("true")
    );
}

#[test]
fn on_deny_redirect_to() {
    let t = token(json!({}));
    let c =
        cfg_with(json!({"on-deny-redirect-to": "/denied", "paths": [{"name": "A", "path": "/a"}]}));
    let mut known = Knowledge::new(&c);
    let s = run(&c, &mut known, "GET", "/nowhere", valid(&t));
    assert_eq!((status(&s), header(&s, "location")), (302, Some("/denied")));
    let s = run(&c, &mut known, "GET", "/a", Credential::Anonymous);
    assert_eq!((status(&s), header(&s, "location")), (302, Some("/denied")));
    // the deny page itself passes, normalized; a look-alike does not (CVE-2026-9800)
    assert_eq!(
        status(&run(
            &c,
            &mut known,
            "GET",
            "/denied/",
            Credential::Anonymous
        )),
        200
    );
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/denied?x=1", valid(&t))),
        200
    );
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/x/denied", valid(&t))),
        302
    );
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/nowhere?x=/denied", valid(&t))),
        302
    );
    // a bearer denial on a matched path stays 403 (Keycloak's bearer rule)
    let s = run(&c, &mut known, "GET", "/a", valid(&t));
    assert_eq!(
        status(&answer(
            &c,
            &mut known,
            "GET",
            "/a",
            &t,
            s,
            403,
            r#"{"error":"access_denied"}"#
        )),
        403
    );
}

#[test]
fn user_managed_access_challenges_with_a_ticket() {
    let t = token(json!({}));
    let c = cfg_with(json!({"user-managed-access": {}, "paths": [
        {"name": "A", "path": "/a", "id": "rid", "scopes": ["s"]}]}));
    let mut known = Knowledge::new(&c);
    known.pat = Some("PAT".into());
    let s = run(&c, &mut known, "GET", "/a", valid(&t));
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert_eq!(
        call.request.path,
        "/realms/bank/authz/protection/permission"
    );
    assert_eq!(call.request.header("authorization"), Some("Bearer PAT"));
    let s = answer(
        &c,
        &mut known,
        "GET",
        "/a",
        &t,
        s,
        201,
        r#"{"ticket":"TKT"}"#,
    );
    assert_eq!(status(&s), 401);
    assert_eq!(
        header(&s, "www-authenticate"),
        Some("UMA realm=\"bank\",as_uri=\"http://kc/realms/bank\",ticket=\"TKT\"")
    );
    // anonymous too
    let s = run(&c, &mut known, "GET", "/a", Credential::Anonymous);
    let Step::Call(call) = s else { panic!() };
    let req = RequestFacts {
        method: "GET",
        path: "/a",
        credential: &Credential::Anonymous,
        view: Default::default(),
        grpc: false,
    };
    let s = resume(
        &c,
        &mut known,
        &req,
        &mut NoStore,
        call.pending,
        Answer::Http {
            status: 201,
            body: br#"{"ticket":"T2"}"#,
        },
        NOW_MS,
    );
    assert!(header(&s, "www-authenticate")
        .unwrap()
        .ends_with("ticket=\"T2\""));
}

#[test]
fn lazy_load_resolves_paths_that_exist_only_in_keycloak() {
    let t = token(json!({}));
    let c = cfg_with(
        json!({"lazy-load-paths": true, "paths": [{"path": "/public/*", "enforcement-mode": "DISABLED"}]}),
    );
    let mut known = Knowledge::new(&c);
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/reports/9", valid(&t))),
        503,
        "no PAT yet: fail closed"
    );
    known.pat = Some("PAT".into());
    let s = run(&c, &mut known, "GET", "/reports/9", valid(&t));
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert!(call
        .request
        .path
        .ends_with("resource_set?uri=/reports/9&matchingUri=true&deep=true&max=-1"));
    let s = answer(
        &c,
        &mut known,
        "GET",
        "/reports/9",
        &t,
        s,
        200,
        r#"[{"_id":"rep","name":"Lazy Report","uris":["/reports/{id}"],"resource_scopes":[{"name":"report:view"}]}]"#,
    );
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert_eq!(
        form_value(call, "permission").as_deref(),
        Some("rep#report:view")
    );
    // the path cache answers the next request without a lookup
    let s = run(&c, &mut known, "GET", "/reports/9", valid(&t));
    let Step::Call(call) = &s else { panic!() };
    assert!(call.request.path.ends_with("/token"));
    // an unknown path is cached as unknown: 403 without a lookup next time
    let s = run(&c, &mut known, "GET", "/nothing", valid(&t));
    assert_eq!(
        status(&answer(&c, &mut known, "GET", "/nothing", &t, s, 200, "[]")),
        403
    );
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/nothing", valid(&t))),
        403
    );
    // no lookups for anonymous requests or DISABLED paths
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/else", Credential::Anonymous)),
        401
    );
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/public/x", valid(&t))),
        200
    );
}

#[test]
fn explain_reports_the_match() {
    let c = bank();
    let known = Knowledge::new(&c);
    let e = explain(&c, &known.paths, "GET", "/account//1;x=y/?q");
    assert_eq!(e.normalized_path.as_deref(), Some("/account/1"));
    assert_eq!(e.entry.unwrap().config.path, "/account/{id}");
    assert_eq!(e.method.unwrap().scopes, vec!["account:view"]);
    let e = explain(&c, &known.paths, "GET", "/public/a");
    assert_eq!(e.enforcement_mode, EnforcementMode::Disabled);
}

#[test]
fn strip_prefix_is_the_context_path() {
    let t = token(json!({}));
    let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "c",
                   "policy-enforcer": {"paths": [{"path": "/public/*", "enforcement-mode": "DISABLED"}]},
                   "kcpep": {"strip-prefix": "/app"}});
    let c = EnforcerConfig::from_value(&v, "").unwrap();
    let mut known = Knowledge::new(&c);
    assert_eq!(
        status(&run(&c, &mut known, "GET", "/app/public/x", valid(&t))),
        200
    );
    assert_eq!(
        status(&run(
            &c,
            &mut known,
            "GET",
            "/application/public/x",
            valid(&t)
        )),
        403
    );
}

/// A decision store in memory, with CAS-like claims.
#[derive(Default)]
struct MemStore(
    std::collections::HashMap<crate::store::decisions::Key, crate::store::decisions::State>,
    std::collections::HashMap<String, Vec<u8>>,
);

impl DecisionStore for MemStore {
    fn get(
        &mut self,
        key: &crate::store::decisions::Key,
    ) -> Option<crate::store::decisions::State> {
        self.0.get(key).cloned()
    }
    /// Single-threaded: nobody can write between `get` and `claim`.
    fn claim(&mut self, key: &crate::store::decisions::Key, until_ms: i64) -> bool {
        self.0
            .insert(*key, crate::store::decisions::State::Pending { until_ms });
        true
    }
    fn put(&mut self, key: &crate::store::decisions::Key, entry: crate::store::decisions::State) {
        self.0.insert(*key, entry);
    }
    fn get_path(&mut self, path: &str, now_ms: i64) -> Option<Vec<u8>> {
        let v = self.1.get(path)?;
        crate::store::decisions::decode_path(path, v, now_ms).map(<[u8]>::to_vec)
    }
    fn put_path(&mut self, path: &str, answer: &[u8], expires_ms: i64) {
        self.1.insert(
            path.to_string(),
            crate::store::decisions::encode_path(path, expires_ms, answer),
        );
    }
}

#[test]
fn lazily_loaded_paths_are_shared_with_the_other_workers() {
    let t = token(json!({}));
    let c = cfg_with(json!({"lazy-load-paths": true, "path-cache": {"lifespan": 60000}}));
    let mut store = MemStore::default();
    let (mut a, mut b) = (Knowledge::new(&c), Knowledge::new(&c));
    a.pat = Some("PAT".into());
    b.pat = Some("PAT".into());
    let s = step(&c, &mut a, &mut store, &t, "GET", "/reports/9", NOW_MS);
    let Step::Call(call) = s else { panic!("{s:?}") };
    assert!(call.request.path.contains("resource_set?uri=/reports/9"));
    let req = RequestFacts {
        method: "GET",
        path: "/reports/9",
        credential: &valid(&t),
        view: Default::default(),
        grpc: false,
    };
    let body = r#"[{"_id":"rep","name":"Lazy Report","uris":["/reports/{id}"],"resource_scopes":[{"name":"report:view"}]}]"#;
    let answer = Answer::Http {
        status: 200,
        body: body.as_bytes(),
    };
    let s = resume(&c, &mut a, &req, &mut store, call.pending, answer, NOW_MS);
    assert!(
        matches!(&s, Step::Call(g) if g.request.path.ends_with("/token")),
        "{s:?}"
    );
    // worker b does not look the path up: it resolves it to the same resource, whose decision
    // worker a is asking Keycloak for right now (so b waits for that answer)
    let s = step(&c, &mut b, &mut store, &t, "GET", "/reports/9", NOW_MS + 1);
    assert!(matches!(s, Step::Wait { .. }), "{s:?}");
    // after the path-cache lifespan, b asks Keycloak again
    let mut c2 = Knowledge::new(&c);
    c2.pat = Some("PAT".into());
    let s = step(
        &c,
        &mut c2,
        &mut store,
        &t,
        "GET",
        "/reports/9",
        NOW_MS + 60_001,
    );
    assert!(
        matches!(&s, Step::Call(l) if l.request.path.contains("resource_set")),
        "{s:?}"
    );
}

fn step(
    c: &EnforcerConfig,
    known: &mut Knowledge,
    store: &mut MemStore,
    t: &T,
    method: &str,
    path: &str,
    now: i64,
) -> Step {
    let req = RequestFacts {
        method,
        path,
        credential: &valid(t),
        view: Default::default(),
        grpc: false,
    };
    decide(c, known, &req, store, now)
}

#[allow(clippy::too_many_arguments)]
fn reply(
    c: &EnforcerConfig,
    known: &mut Knowledge,
    store: &mut MemStore,
    t: &T,
    s: Step,
    status: u16,
    body: &str,
    now: i64,
) -> Step {
    let Step::Call(call) = s else {
        panic!("expected a call, got {s:?}")
    };
    let req = RequestFacts {
        method: "GET",
        path: "/account/1",
        credential: &valid(t),
        view: Default::default(),
        grpc: false,
    };
    resume(
        c,
        known,
        &req,
        store,
        call.pending,
        Answer::Http {
            status,
            body: body.as_bytes(),
        },
        now,
    )
}

const GRANTED: &str =
    r#"[{"rsid":"r1","rsname":"View Account Resource","scopes":["account:view"]}]"#;

#[test]
fn decisions_are_cached_per_token_and_resource() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    let mut store = MemStore::default();
    let t = token(json!({}));
    let s = step(&c, &mut known, &mut store, &t, "GET", "/account/1", NOW_MS);
    let s = reply(&c, &mut known, &mut store, &t, s, 200, GRANTED, NOW_MS);
    assert!(matches!(&s, Step::Allow(a) if a.cache == CacheUse::Stored));
    // the second identical request: no callout
    let s = step(
        &c,
        &mut known,
        &mut store,
        &t,
        "GET",
        "/account/1",
        NOW_MS + 1,
    );
    let Step::Allow(a) = &s else { panic!("{s:?}") };
    assert_eq!(a.cache, CacheUse::Hit);
    assert!(a
        .permissions
        .as_deref()
        .unwrap()
        .contains("View Account Resource"));
    // another token, or another scope set, is another question
    let other = token(json!({"sub": "u2"}));
    assert!(matches!(
        step(
            &c,
            &mut known,
            &mut store,
            &other,
            "GET",
            "/account/1",
            NOW_MS + 1
        ),
        Step::Call(_)
    ));
    assert!(matches!(
        step(
            &c,
            &mut known,
            &mut store,
            &t,
            "POST",
            "/account/1",
            NOW_MS + 1
        ),
        Step::Call(_)
    ));
    // after the lifespan (30 s by default) Keycloak is asked again
    assert!(matches!(
        step(
            &c,
            &mut known,
            &mut store,
            &t,
            "GET",
            "/account/1",
            NOW_MS + 30_000
        ),
        Step::Call(_)
    ));
}

#[test]
fn cached_entries_never_outlive_the_token() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    let mut store = MemStore::default();
    let t = token(json!({"exp": NOW + 10}));
    let s = step(&c, &mut known, &mut store, &t, "GET", "/account/1", NOW_MS);
    reply(&c, &mut known, &mut store, &t, s, 200, GRANTED, NOW_MS);
    assert!(matches!(
        step(
            &c,
            &mut known,
            &mut store,
            &t,
            "GET",
            "/account/1",
            NOW_MS + 9_999
        ),
        Step::Allow(_)
    ));
    assert!(matches!(
        step(
            &c,
            &mut known,
            &mut store,
            &t,
            "GET",
            "/account/1",
            NOW_MS + 10_000
        ),
        Step::Call(_)
    ));
}

#[test]
fn denials_are_cached_shorter() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    let mut store = MemStore::default();
    let t = token(json!({}));
    let s = step(&c, &mut known, &mut store, &t, "GET", "/account/1", NOW_MS);
    assert_eq!(
        status(&reply(
            &c,
            &mut known,
            &mut store,
            &t,
            s,
            403,
            r#"{"error":"access_denied"}"#,
            NOW_MS
        )),
        403
    );
    let s = step(
        &c,
        &mut known,
        &mut store,
        &t,
        "GET",
        "/account/1",
        NOW_MS + 4_999,
    );
    assert!(
        matches!(&s, Step::Reply(r) if r.status == 403 && r.cache == CacheUse::Hit),
        "{s:?}"
    );
    assert!(matches!(
        step(
            &c,
            &mut known,
            &mut store,
            &t,
            "GET",
            "/account/1",
            NOW_MS + 5_000
        ),
        Step::Call(_)
    ));
}

#[test]
fn concurrent_identical_misses_wait_for_one_call() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    let mut store = MemStore::default();
    let t = token(json!({}));
    let first = step(&c, &mut known, &mut store, &t, "GET", "/account/1", NOW_MS);
    assert!(matches!(first, Step::Call(_)));
    for _ in 0..63 {
        let s = step(&c, &mut known, &mut store, &t, "GET", "/account/1", NOW_MS);
        assert!(
            matches!(s, Step::Wait { until_ms, .. } if until_ms == NOW_MS + 1000),
            "{s:?}"
        );
    }
    reply(&c, &mut known, &mut store, &t, first, 200, GRANTED, NOW_MS);
    // the waiters decide again and find the answer
    assert!(
        matches!(step(&c, &mut known, &mut store, &t, "GET", "/account/1", NOW_MS + 5), Step::Allow(a) if a.cache == CacheUse::Hit)
    );
}

#[test]
fn a_lapsed_claim_lets_waiters_ask_themselves() {
    let c = bank();
    let mut known = Knowledge::new(&c);
    let mut store = MemStore::default();
    let t = token(json!({}));
    let _stuck = step(&c, &mut known, &mut store, &t, "GET", "/account/1", NOW_MS);
    assert!(matches!(
        step(
            &c,
            &mut known,
            &mut store,
            &t,
            "GET",
            "/account/1",
            NOW_MS + 999
        ),
        Step::Wait { .. }
    ));
    assert!(matches!(
        step(
            &c,
            &mut known,
            &mut store,
            &t,
            "GET",
            "/account/1",
            NOW_MS + 1000
        ),
        Step::Call(_)
    ));
}

#[test]
fn stale_on_error_serves_expired_allows_only() {
    let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api", "credentials": {"secret": "s"},
                   "policy-enforcer": {"paths": [{"name": "View Account Resource", "path": "/account/{id}",
                                                  "methods": [{"method": "GET", "scopes": ["account:view"]}]}]},
                   "kcpep": {"decision-cache": {"lifespan-ms": 1000, "stale-on-error-ms": 60000}}});
    let c = EnforcerConfig::from_value(&v, "").unwrap();
    let mut known = Knowledge::new(&c);
    let mut store = MemStore::default();
    let t = token(json!({}));
    let s = step(&c, &mut known, &mut store, &t, "GET", "/account/1", NOW_MS);
    reply(&c, &mut known, &mut store, &t, s, 200, GRANTED, NOW_MS);
    // expired; Keycloak down: served stale, and again for the next request
    for later in [2_000, 3_000] {
        let s = step(
            &c,
            &mut known,
            &mut store,
            &t,
            "GET",
            "/account/1",
            NOW_MS + later,
        );
        let s = reply(
            &c,
            &mut known,
            &mut store,
            &t,
            s,
            503,
            "upstream connect error",
            NOW_MS + later,
        );
        assert!(
            matches!(&s, Step::Allow(a) if a.cache == CacheUse::Stale),
            "{s:?}"
        );
    }
    // beyond the window: 503
    let s = step(
        &c,
        &mut known,
        &mut store,
        &t,
        "GET",
        "/account/1",
        NOW_MS + 61_000,
    );
    assert_eq!(
        status(&reply(
            &c,
            &mut known,
            &mut store,
            &t,
            s,
            503,
            "x",
            NOW_MS + 61_000
        )),
        503
    );
    // denials never go stale: a fresh user denied, then Keycloak down
    let u = token(json!({"sub": "u9"}));
    let s = step(&c, &mut known, &mut store, &u, "GET", "/account/1", NOW_MS);
    reply(
        &c,
        &mut known,
        &mut store,
        &u,
        s,
        403,
        r#"{"error":"access_denied"}"#,
        NOW_MS,
    );
    let s = step(
        &c,
        &mut known,
        &mut store,
        &u,
        "GET",
        "/account/1",
        NOW_MS + 6_000,
    );
    assert_eq!(
        status(&reply(
            &c,
            &mut known,
            &mut store,
            &u,
            s,
            503,
            "x",
            NOW_MS + 6_000
        )),
        503
    );
}

#[test]
fn cache_off_asks_every_time() {
    let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
                   "policy-enforcer": {"paths": [{"name": "A", "path": "/account/{id}"}]},
                   "kcpep": {"decision-cache": {"max-entries": 0}}});
    let c = EnforcerConfig::from_value(&v, "").unwrap();
    let mut known = Knowledge::new(&c);
    let mut store = MemStore::default();
    let t = token(json!({}));
    let s = step(&c, &mut known, &mut store, &t, "GET", "/account/1", NOW_MS);
    reply(
        &c,
        &mut known,
        &mut store,
        &t,
        s,
        200,
        r#"[{"rsid":"x","rsname":"A"}]"#,
        NOW_MS,
    );
    assert!(matches!(
        step(
            &c,
            &mut known,
            &mut store,
            &t,
            "GET",
            "/account/1",
            NOW_MS + 1
        ),
        Step::Call(_)
    ));
    assert!(store.0.is_empty());
}

mod authzen;
mod cip;

#[test]
fn paths_the_upstream_could_segment_otherwise_get_400_in_every_mode() {
    let t = token(json!({}));
    let hostile = [
        "/account/1/..%2F..%2Fpublic/x",
        "/account/1/..%2f..%2fdenied",
        "/account/1/%2e%2e%2f%2e%2e%2fpublic/x",
        "/account/1%2F..%2F..%2Fpublic%2Fx",
        "/account/1/../../public/x",
        "//public/account/1",
    ];
    let redirecting = cfg_with(json!({"on-deny-redirect-to": "/denied", "paths": [
        {"name": "View Account Resource", "path": "/account/{id}"},
        {"path": "/public/*", "enforcement-mode": "DISABLED"}]}));
    let disabled = cfg_with(json!({"enforcement-mode": "DISABLED"}));
    let permissive = cfg_with(json!({"enforcement-mode": "PERMISSIVE"}));
    for c in [bank(), redirecting, disabled, permissive] {
        let mut known = Knowledge::new(&c);
        for p in hostile {
            for cred in [Credential::Anonymous, valid(&t)] {
                let step = run(&c, &mut known, "GET", p, cred);
                assert_eq!(status(&step), 400, "{p}: {step:?}");
            }
        }
        // the same resource, spelled so every reader segments it alike, is judged as usual
        assert_ne!(
            status(&run(
                &c,
                &mut known,
                "GET",
                "/public/x",
                Credential::Anonymous
            )),
            400
        );
    }
    // dry-run never blocks: it lets the request on and says it would have refused it
    let mut dry = bank();
    dry.proxy.dry_run = true;
    let mut known = Knowledge::new(&dry);
    let Step::Allow(a) = run(&dry, &mut known, "GET", hostile[0], Credential::Anonymous) else {
        panic!()
    };
    assert_eq!(a.would_deny.map(|r| r.status), Some(400));
}

#[test]
fn template_paths_ask_for_the_resource_of_their_instance() {
    // Keycloak's resolvePathConfig: /v1/tenants/1 is the server resource tenant:1 (URI
    // /v1/tenants/1), asked with the template's method scopes, although no resource is named
    // "tenant-resource" on the server
    let t = token(json!({}));
    let c = cfg_with(
        json!({"paths": [{"name": "tenant-resource", "path": "/{version}/tenants/{id}",
        "methods": [{"method": "GET", "scopes": ["admin"]}]},
        {"path": "/resource/{id}/*", "scopes": ["view"]}]}),
    );
    let mut known = Knowledge::new(&c);
    known.pat = Some("PAT".into());
    let s = run(&c, &mut known, "GET", "/v1/tenants/1", valid(&t));
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert!(
        call.request
            .path
            .contains("resource_set?uri=/v1/tenants/1&")
            && !call.request.path.contains("matchingUri=true"),
        "an exact lookup: {}",
        call.request.path
    );
    let s = answer(
        &c,
        &mut known,
        "GET",
        "/v1/tenants/1",
        &t,
        s,
        200,
        r#"[{"_id":"t1","name":"tenant:1","uris":["/v1/tenants/1"],"resource_scopes":[{"name":"admin"},{"name":"other"}]}]"#,
    );
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert_eq!(form_value(call, "permission").as_deref(), Some("t1#admin"));
    // cached per path: no second lookup
    let Step::Call(call) = run(&c, &mut known, "GET", "/v1/tenants/1", valid(&t)) else {
        panic!()
    };
    assert!(call.request.path.ends_with("/token"));
    // no instance resource: the parent's (/resource/1 for /resource/1/test) grants it
    let s = run(&c, &mut known, "GET", "/resource/1/test", valid(&t));
    let s = answer(&c, &mut known, "GET", "/resource/1/test", &t, s, 200, "[]");
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert!(
        call.request.path.contains("resource_set?uri=/resource/1&"),
        "{}",
        call.request.path
    );
    let s = answer(
        &c,
        &mut known,
        "GET",
        "/resource/1/test",
        &t,
        s,
        200,
        r#"[{"_id":"r1","name":"resource 1","uris":["/resource/1"]}]"#,
    );
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert_eq!(form_value(call, "permission").as_deref(), Some("r1#view"));
    // no exact resource: the server's match (a server resource that is a template itself)
    let s = run(&c, &mut known, "GET", "/v3/tenants/7", valid(&t));
    let s = answer(&c, &mut known, "GET", "/v3/tenants/7", &t, s, 200, "[]");
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert!(
        call.request
            .path
            .contains("resource_set?uri=/v3/tenants/7&matchingUri=true&"),
        "{}",
        call.request.path
    );
    let s = answer(
        &c,
        &mut known,
        "GET",
        "/v3/tenants/7",
        &t,
        s,
        200,
        r#"[{"_id":"t7","name":"tenant:7","uris":["/{ver}/tenants/7"]}]"#,
    );
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert_eq!(form_value(call, "permission").as_deref(), Some("t7#admin"));
    // none of them: the template's own resource, by name
    let s = run(&c, &mut known, "GET", "/v2/tenants/9", valid(&t));
    let s = answer(&c, &mut known, "GET", "/v2/tenants/9", &t, s, 200, "[]");
    let s = answer(&c, &mut known, "GET", "/v2/tenants/9", &t, s, 200, "[]");
    let Step::Call(call) = &s else {
        panic!("{s:?}")
    };
    assert_eq!(
        form_value(call, "permission").as_deref(),
        Some("tenant-resource#admin")
    );
}
