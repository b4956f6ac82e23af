//! AuthZEN decisions (`kcpep.decision-protocol`): who is asked for which token, the question
//! (subject from the token, resource by name and type, one evaluation per scope, the scope mode's
//! semantic), and the answer judged as the UMA grant's.

use super::*;
use crate::wire::resource::Resource;

fn cfg(protocol: &str) -> EnforcerConfig {
    let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
    "credentials": {"secret": "s"}, "kcpep": {"decision-protocol": protocol},
    "policy-enforcer": {"paths": [
        {"name": "View Account Resource", "path": "/account/{id}",
         "methods": [{"method": "GET", "scopes": ["account:view"]},
                     {"method": "POST", "scopes": ["a", "b"]},
                     {"method": "PUT", "scopes": ["a", "b"], "scopes-enforcement-mode": "ANY"}]},
        {"path": "/by-uri/*"}
    ]}});
    EnforcerConfig::from_value(&v, "").unwrap()
}

/// What the enforcer knows once started: the PAT, and the configured path bound to its server
/// resource (with its type).
fn known(c: &EnforcerConfig) -> Knowledge {
    let mut k = Knowledge::new(c);
    k.pat = Some("the-pat".into());
    let r = Resource::read(
        &json!({"_id": "r1", "name": "View Account Resource",
            "type": "urn:bank:account", "uris": ["/account/{id}"]}),
        "",
    )
    .unwrap();
    k.paths.bind(0, &r);
    k
}

/// The request's step once the template instance lookups (Keycloak's `resolvePathConfig`, asked
/// with the PAT) found no resource of their own.
fn decide_for(c: &EnforcerConfig, k: &mut Knowledge, method: &str, path: &str, t: &T) -> Step {
    let mut s = run(c, k, method, path, valid(t));
    while let Step::Call(call) = &s {
        if !matches!(call.pending, crate::enforce::step::Pending::LazyLoad { .. }) {
            break;
        }
        s = answer(c, k, method, path, t, s, 200, "[]");
    }
    s
}

fn dpop_bound() -> T {
    token(json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}))
}

fn call(step: &Step) -> &Call {
    match step {
        Step::Call(c) => c,
        other => panic!("expected a call, got {other:?}"),
    }
}

fn body(c: &Call) -> Value {
    serde_json::from_slice(&c.request.body).unwrap()
}

fn header_of<'a>(c: &'a Call, name: &str) -> Option<&'a str> {
    c.request
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn bound_tokens_go_to_authzen_and_others_to_the_uma_grant() {
    let c = cfg("authzen-for-bound-tokens");
    let mut k = known(&c);
    let plain = token(json!({}));
    let s = decide_for(&c, &mut k, "GET", "/account/1", &plain);
    assert!(call(&s)
        .request
        .path
        .ends_with("/protocol/openid-connect/token"));

    let bound = dpop_bound();
    let s = decide_for(&c, &mut k, "GET", "/account/1", &bound);
    let q = call(&s);
    assert!(
        q.request
            .path
            .ends_with("/realms/bank/authzen/access/v1/evaluations"),
        "{}",
        q.request.path
    );
    assert_eq!(header_of(q, "authorization"), Some("Bearer the-pat"));
    let b = body(q);
    assert_eq!(b["subject"], json!({"type": "user", "id": "id:u1"}));
    assert_eq!(
        b["evaluations"],
        json!([{"resource": {"type": "urn:bank:account", "id": "View Account Resource"},
                "action": {"name": "account:view"}}])
    );
    assert_eq!(b["options"]["evaluations_semantic"], "deny_on_first_deny");
    // the user's token never goes to AuthZEN
    assert!(!String::from_utf8_lossy(&q.request.body).contains(&bound.raw));

    // with the UMA grant alone, the bound token is asked there (and Keycloak refuses it)
    let c = cfg("uma-grant");
    let s = decide_for(&c, &mut known(&c), "GET", "/account/1", &bound);
    assert!(call(&s)
        .request
        .path
        .ends_with("/protocol/openid-connect/token"));
}

#[test]
fn authzen_for_every_token() {
    let c = cfg("authzen");
    let mut k = known(&c);
    let t = token(json!({}));
    let s = decide_for(&c, &mut k, "GET", "/account/1", &t);
    assert!(
        call(&s)
            .request
            .path
            .ends_with("/authzen/access/v1/evaluations"),
        "{:?}",
        call(&s)
    );
}

#[test]
fn the_decisions_are_judged_as_the_uma_grants_permissions() {
    let c = cfg("authzen");
    let t = token(json!({}));
    let ask = |method: &str, answer_body: &str| {
        let mut k = known(&c);
        let s = decide_for(&c, &mut k, method, "/account/1", &t);
        let semantic = body(call(&s))["options"]["evaluations_semantic"].clone();
        let out = answer(&c, &mut k, method, "/account/1", &t, s, 200, answer_body);
        (semantic, out)
    };
    let (sem, s) = ask("GET", r#"{"evaluations":[{"decision":true}]}"#);
    assert_eq!(sem, "deny_on_first_deny");
    let Step::Allow(a) = &s else { panic!("{s:?}") };
    let perms: Value = serde_json::from_str(a.permissions.as_deref().unwrap()).unwrap();
    assert_eq!(
        perms,
        json!([{"rsid": "r1", "rsname": "View Account Resource", "scopes": ["account:view"]}])
    );
    assert_eq!(
        status(&ask("GET", r#"{"evaluations":[{"decision":false}]}"#).1),
        403
    );
    // ALL (POST a, b): one deny is a deny
    let deny_b = r#"{"evaluations":[{"decision":true},{"decision":false,"context":{"reason":"deny_on_first_deny"}}]}"#;
    assert_eq!(status(&ask("POST", deny_b).1), 403);
    let (_, s) = ask(
        "POST",
        r#"{"evaluations":[{"decision":true},{"decision":true}]}"#,
    );
    assert_eq!(status(&s), 200);
    // ANY (PUT a, b): the first permit stops the batch, and is enough
    let (sem, s) = ask(
        "PUT",
        r#"{"evaluations":[{"decision":false},{"decision":true}]}"#,
    );
    assert_eq!(sem, "permit_on_first_permit");
    assert_eq!(status(&s), 200);
    assert_eq!(
        status(&ask("PUT", r#"{"evaluations":[{"decision":true}]}"#).1),
        200
    );
    assert_eq!(
        status(
            &ask(
                "PUT",
                r#"{"evaluations":[{"decision":false},{"decision":false}]}"#
            )
            .1
        ),
        403
    );
}

#[test]
fn keycloak_without_authzen_or_without_a_pat_is_unavailable_and_closed() {
    let c = cfg("authzen");
    let t = token(json!({}));
    let mut k = known(&c);
    let s = decide_for(&c, &mut k, "GET", "/account/1", &t);
    // the feature is off: 404
    assert_eq!(
        status(&answer(&c, &mut k, "GET", "/account/1", &t, s, 404, "")),
        503
    );
    let mut k = known(&c);
    k.pat = None;
    assert_eq!(
        status(&decide_for(&c, &mut k, "GET", "/account/1", &t)),
        503
    );
}

#[test]
fn no_question_without_a_subject_a_resource_name_or_a_scope() {
    let c = cfg("authzen");
    let mut k = known(&c);
    let no_sub = {
        let mut cl = claims();
        cl["iss"] = json!(ISSUER);
        cl.as_object_mut().unwrap().remove("sub");
        let raw = sign_rs256(&cl);
        let e = Expectations {
            issuer: ISSUER,
            audiences: &[],
            leeway_seconds: 30,
            dpop: false,
        };
        T {
            token: verify(&raw, &jwks(), &e, NOW).unwrap(),
            raw,
        }
    };
    let s = decide_for(&c, &mut k, "GET", "/account/1", &no_sub);
    assert_eq!(status(&s), 403);
    let Step::Reply(r) = &s else { unreachable!() };
    assert!(r.reason.contains("sub"), "{}", r.reason);

    // a path Keycloak knows by URI only: no resource name to ask by
    let t = token(json!({}));
    let s = decide_for(&c, &mut k, "GET", "/by-uri/x", &t);
    let Step::Reply(r) = &s else { panic!("{s:?}") };
    assert_eq!(r.status, 403);
    assert!(r.reason.contains("resource name"), "{}", r.reason);
}

#[test]
fn the_setting_is_checked_at_load() {
    let mut v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
        "credentials": {"secret": "s"}, "kcpep": {"decision-protocol": "opa"}});
    let e = EnforcerConfig::from_value(&v, "").unwrap_err().to_string();
    assert!(e.starts_with("kcpep.decision-protocol: expected"), "{e}");
    assert!(e.contains("authzen-for-bound-tokens"), "{e}");
    v["kcpep"]["decision-protocol"] = json!("authzen");
    v.as_object_mut().unwrap().remove("credentials");
    let e = EnforcerConfig::from_value(&v, "").unwrap_err().to_string();
    assert!(
        e.starts_with("kcpep.decision-protocol:") && e.contains("credentials.secret"),
        "{e}"
    );
}

#[test]
fn a_claim_written_with_several_values_is_refused_at_load_under_authzen() {
    let v = |protocol: &str| {
        json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
            "credentials": {"secret": "s"}, "kcpep": {"decision-protocol": protocol},
            "policy-enforcer": {"paths": [
                {"name": "Branch", "path": "/branch/*",
                 "claim-information-point": {"claims": {"one": "{request.header['a']}",
                                                         "two": ["x", "{request.header['b']}"]}}}]}})
    };
    assert!(EnforcerConfig::from_value(&v("uma-grant"), "").is_ok());
    for protocol in ["authzen", "authzen-for-bound-tokens"] {
        let e = EnforcerConfig::from_value(&v(protocol), "")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "policy-enforcer.paths[0].claim-information-point.claims.two: several values"
            ),
            "{e}"
        );
    }
}

#[test]
fn a_claim_resolved_to_several_values_gets_no_authzen_question() {
    let c = cfg("authzen");
    let mut k = known(&c);
    let t = token(json!({}));
    let entry = k.paths.entries()[0].clone();
    let method = crate::enforce::method_config(&c, &entry, "GET");
    let ask = |claims: Claims, k: &mut Knowledge| {
        let req = RequestFacts {
            method: "GET",
            path: "/account/1",
            credential: &valid(&t),
            view: Default::default(),
            grpc: false,
        };
        let mut j = crate::enforce::judge::Judge {
            cfg: &c,
            known: k,
            req: &req,
            store: &mut NoStore,
            now_ms: NOW_MS,
        };
        let a = super::super::authorize::Authorize {
            raw: &t.raw,
            token: &t.token,
            entry: entry.clone(),
            method: method.clone(),
        };
        super::super::authorize::authorize(&mut j, &a, claims)
    };
    let one: Claims = [("branch".to_string(), vec!["tokyo".to_string()])].into();
    let s = ask(one, &mut k);
    assert_eq!(body(call(&s))["context"], json!({"branch": "tokyo"}));
    for values in [vec![], vec!["a".to_string(), "b".to_string()]] {
        let n = values.len();
        let s = ask([("branch".to_string(), values)].into(), &mut k);
        let Step::Reply(r) = &s else { panic!("{s:?}") };
        assert_eq!(r.status, 403);
        assert!(
            r.reason.contains(&format!("\"branch\" has {n} values")),
            "{}",
            r.reason
        );
    }
}
