use super::*;
use crate::config::claims::{chain, needs_body, Cip};
use crate::request::view::RequestView;
use serde_json::json;

fn cip(v: Value) -> Cip {
    Cip::parse(&v, "policy-enforcer.claim-information-point").unwrap()
}

fn cx_with<'a>(view: &'a RequestView<'a>, token: &'a Value) -> Context<'a> {
    Context {
        method: "POST",
        path: "/transfer/1?a=1",
        relative_path: "/transfer/1?a=1",
        view,
        remote_addr: "198.51.100.4",
        secure: false,
        token: Some(("raw", token)),
    }
}

#[test]
fn static_values_arrays_and_dropped_claims() {
    let c = cip(json!({"claims": {
        "static": "v", "list": ["static", "value"], "method": "{request.method}",
        "gone": "{request.header['absent']}", "mixed": ["{request.header['absent']}", "x"]}}));
    let view = RequestView::default();
    let tok = json!({});
    let mut done = Vec::new();
    let Next::Done(claims) = advance(&chain(Some(&c), None), &cx_with(&view, &tok), &mut done)
    else {
        panic!()
    };
    assert_eq!(claims["static"], ["v"]);
    assert_eq!(claims["list"], ["static", "value"]);
    assert_eq!(claims["method"], ["POST"]);
    assert!(!claims.contains_key("gone"));
    assert_eq!(claims["mixed"], ["x"]);
}

#[test]
fn path_claims_replace_global_claims_of_the_same_name() {
    let global = cip(json!({"claims": {"a": "global", "b": "global"}}));
    let path = cip(json!({"claims": {"a": "path"}}));
    let view = RequestView::default();
    let tok = json!({});
    let mut done = Vec::new();
    let Next::Done(claims) = advance(
        &chain(Some(&global), Some(&path)),
        &cx_with(&view, &tok),
        &mut done,
    ) else {
        panic!()
    };
    assert_eq!(claims["a"], ["path"]);
    assert_eq!(claims["b"], ["global"]);
}

#[test]
fn http_provider_get_with_placeholders_then_pointers() {
    let c = cip(json!({
        "claims": {"first": "static"},
        "http": {"url": "http://claims.local:8082/limits?v=1", "method": "get",
                 "headers": {"Authorization": "Bearer {keycloak.access_token}", "X-Multi": "{request.header['x-m']}"},
                 "parameters": {"user": "{keycloak.access_token['/preferred_username']}"},
                 "claims": {"limit": "/limit", "both": ["/d/0", "/d/1"], "none": "/missing"}}}));
    let headers: Vec<(String, Vec<u8>)> =
        vec![("x-m".into(), b"1".to_vec()), ("x-m".into(), b"2".to_vec())];
    let view = RequestView {
        headers: &headers,
        ..Default::default()
    };
    let tok = json!({"preferred_username": "alice smith"});
    let providers = chain(Some(&c), None);
    let mut done = Vec::new();
    let Next::Call {
        index,
        request,
        service,
    } = advance(&providers, &cx_with(&view, &tok), &mut done)
    else {
        panic!()
    };
    assert_eq!(index, 1);
    assert_eq!(service.cluster, "claims.local:8082");
    assert_eq!(service.authority, "claims.local:8082");
    assert_eq!(request.method, "GET");
    assert_eq!(request.path, "/limits?v=1&user=alice+smith");
    assert_eq!(request.header("authorization"), Some("Bearer raw"));
    let multi: Vec<&str> = request
        .headers
        .iter()
        .filter(|(k, _)| k == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["1", "2"]);
    let Provider::Http(h) = providers[index] else {
        panic!()
    };
    let got = http_answer(h, Some(200), br#"{"limit": 1000, "d": ["d1", "d2"]}"#).unwrap();
    done.push(got);
    let Next::Done(claims) = advance(&providers, &cx_with(&view, &tok), &mut done) else {
        panic!()
    };
    assert_eq!(claims["first"], ["static"]);
    assert_eq!(claims["limit"], ["1000"]);
    assert_eq!(claims["both"], ["d1", "d2"]);
    assert_eq!(claims["none"], [""]);
}

#[test]
fn http_provider_post_form_and_whole_answer() {
    let c = cip(
        json!({"http": {"url": "https://svc/x", "method": "POST", "cluster": "outbound|443||svc",
                                "parameters": {"m": "{request.method}", "s": ["a", "b"]}, "timeout-ms": 300}}),
    );
    let view = RequestView::default();
    let tok = json!({});
    let providers = chain(Some(&c), None);
    let Next::Call {
        request, service, ..
    } = advance(&providers, &cx_with(&view, &tok), &mut Vec::new())
    else {
        panic!()
    };
    assert_eq!(
        service,
        Service {
            cluster: "outbound|443||svc".into(),
            authority: "svc".into(),
            timeout_ms: Some(300)
        }
    );
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/x");
    assert_eq!(String::from_utf8(request.body).unwrap(), "m=POST&s=a&s=b");
    // Keycloak's provider sends the configured headers and a form body's type, nothing else
    assert_eq!(
        request.headers,
        [(
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string()
        )]
    );
    let Provider::Http(h) = providers[0] else {
        panic!()
    };
    let all = http_answer(
        h,
        Some(200),
        br#"{"a": "a-value1", "d": ["d-value1", "d-value2"]}"#,
    )
    .unwrap();
    assert_eq!(all["a"], ["a-value1"]);
    assert_eq!(all["d"], ["d-value1", "d-value2"]);
    assert!(http_answer(h, Some(500), b"{}")
        .unwrap_err()
        .0
        .contains("500"));
    assert!(http_answer(h, Some(200), b"<html>")
        .unwrap_err()
        .0
        .contains("not JSON"));
    assert!(http_answer(h, None, b"").is_err());
}

#[test]
fn body_need_and_bad_body() {
    let c = cip(json!({"claims": {"amount": "{request.body['/amount']}"}}));
    let q = cip(json!({"claims": {"p": "{request.parameter['p']}"}}));
    assert!(needs_body(&chain(Some(&c), None), false));
    assert!(!needs_body(&chain(Some(&q), None), false));
    assert!(needs_body(&chain(Some(&q), None), true));
    let headers: Vec<(String, Vec<u8>)> =
        vec![("content-type".into(), b"application/json".to_vec())];
    let view = RequestView {
        headers: &headers,
        body: Some(b"{oops"),
        ..Default::default()
    };
    let tok = json!({});
    assert!(matches!(
        advance(
            &chain(Some(&c), None),
            &cx_with(&view, &tok),
            &mut Vec::new()
        ),
        Next::Failed(ClaimFailure::BadRequest(_))
    ));
}

#[test]
fn custom_provider_network() {
    let c = cip(
        json!({"network": {"networks": {"office": ["198.51.100.0/24"], "vpn": "100.64.0.0/10"}}}),
    );
    let view = RequestView::default();
    let tok = json!({});
    let Next::Done(claims) = advance(
        &chain(Some(&c), None),
        &cx_with(&view, &tok),
        &mut Vec::new(),
    ) else {
        panic!()
    };
    assert_eq!(claims["network"], ["office"]);
}

#[test]
fn configuration_errors_name_the_field() {
    let bad = |v: Value| {
        Cip::parse(&v, "policy-enforcer.claim-information-point")
            .unwrap_err()
            .to_string()
    };
    assert!(bad(json!({"claims": {"a": "{request.nothing}"}}))
        .starts_with("policy-enforcer.claim-information-point.claims.a: "));
    assert!(bad(json!({"claims": {"a": ["ok", 3]}}))
        .starts_with("policy-enforcer.claim-information-point.claims.a[1]: "));
    assert!(bad(json!({"http": {"url": "http://x/"}})).contains("http.method: required"));
    assert!(bad(json!({"http": {"url": "ftp://x/", "method": "GET"}})).contains("http.url"));
    assert!(
        bad(json!({"http": {"url": "http://x/", "method": "GET", "claims": {"c": "nope"}}}))
            .contains("http.claims.c")
    );
    assert!(bad(json!({"vault": {}}))
        .contains("unknown claim provider \"vault\" (known: claims, http, network)"));
    assert!(
        bad(json!({"network": {"networks": {"x": "10.0.0.0/99"}}})).contains("network.networks.x")
    );
    assert!(bad(json!("x")).contains("expected an object of providers"));
}

#[test]
fn granted_claims_must_cover_the_request_claims() {
    let granted: Claims = [(
        "branch".to_string(),
        vec!["tokyo".to_string(), "osaka".to_string()],
    )]
    .into();
    let req = |v: &[&str]| -> Claims {
        [(
            "branch".to_string(),
            v.iter().map(|s| s.to_string()).collect(),
        )]
        .into()
    };
    assert!(permission_claims_hold(None, &Claims::new()));
    assert!(permission_claims_hold(Some(&granted), &req(&["tokyo"])));
    assert!(!permission_claims_hold(
        Some(&granted),
        &req(&["tokyo", "nagoya"])
    ));
    assert!(!permission_claims_hold(Some(&granted), &req(&[])));
    assert!(!permission_claims_hold(Some(&granted), &Claims::new()));
}

#[test]
fn a_configured_content_type_is_sent_once() {
    // the http example of tests/fixtures/seed000 names Content-Type itself
    let c = cip(
        json!({"http": {"url": "http://mycompany/claim-provider", "method": "POST",
        "headers": {"Content-Type": "application/x-www-form-urlencoded",
                    "header-b": ["header-b-value1", "header-b-value2"]},
        "parameters": {"param-a": ["param-a-value1", "param-a-value2"]}}}),
    );
    let view = RequestView::default();
    let tok = json!({});
    let providers = chain(Some(&c), None);
    let Next::Call { request, .. } = advance(&providers, &cx_with(&view, &tok), &mut Vec::new())
    else {
        panic!()
    };
    let named = |n: &str| request.headers.iter().filter(|(k, _)| k == n).count();
    assert_eq!(named("content-type"), 1, "{:?}", request.headers);
    assert_eq!(named("header-b"), 2);
    assert_eq!(request.headers.len(), 3, "{:?}", request.headers);
}
