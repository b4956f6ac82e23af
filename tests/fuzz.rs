//! Whatever bytes arrive, every parser of the filter answers, and none panics (a panic kills the
//! worker's VM: every request on it fails until Envoy recreates it). Bounded property runs
//! (proptest) over the configuration reader, path normalization and matching, the bearer and
//! JWT parsers, the JWKS and every Keycloak answer parser, placeholders, forwarded addresses and
//! the shared-data record decoders, plus whole decisions on arbitrary requests; round-trip
//! properties where they exist. `make test` runs them with the case counts below;
//! `make fuzz` runs them longer (`PROPTEST_CASES`, 200,000 by default there).
//!
//! proptest, not cargo-fuzz: libFuzzer needs a nightly compiler with sanitizer support, which
//! this toolchain route does not offer; proptest runs on the stable compiler and shrinks a failing
//! input to a small one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keycloak_pep::config::routes::PluginConfig;
use keycloak_pep::config::EnforcerConfig;
use keycloak_pep::enforce::step::{Credential, RequestFacts};
use keycloak_pep::keycloak::knowledge::Knowledge;
use keycloak_pep::keycloak::token::{self, Expectations, Jwks, Token};
use keycloak_pep::keycloak::uma::{self, ResponseMode};
use keycloak_pep::request::forwarded::{parse_addr, Cidr};
use keycloak_pep::request::pattern::{build_uri_from_template, validate_template, PathMatcher};
use keycloak_pep::request::placeholders::Template;
use keycloak_pep::request::uri;
use keycloak_pep::request::view::RequestView;
use keycloak_pep::store::{decisions, documents, NoStore};
use keycloak_pep::wire::http::Url;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::rc::Rc;

const NOW: i64 = 1_800_000_000;

fn jwks() -> Jwks {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwks.json"
    ))
    .unwrap();
    Jwks::parse(&text).unwrap()
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
        "/[a-z{}*./]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z-]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid enforcer configuration, to mutate.
fn base_config() -> Value {
    json!({
        "realm": "bank", "auth-server-url": "http://kc:8080", "resource": "bank-api",
        "credentials": {"secret": "s"},
        "lazy-load-paths": true,
        "paths": [
            {"name": "Account", "path": "/account/{id}",
             "methods": [{"method": "GET", "scopes": ["view"]}],
             "claim-information-point": {"claims": {"a": "{request.parameter['a']}",
                                                    "b": "{request.body['/x']}"}}},
            {"path": "/public/*", "enforcement-mode": "DISABLED"}
        ],
        "kcpep": {"decision-cache": {"max-entries": 0}, "trusted-proxies": ["10.0.0.0/8"],
                  "proxy-headers": "xforwarded"}
    })
}

/// The key paths of the base configuration where a mutation may land.
const CONFIG_SPOTS: &[&[&str]] = &[
    &["realm"],
    &["auth-server-url"],
    &["resource"],
    &["credentials"],
    &["lazy-load-paths"],
    &["paths"],
    &["paths", "0"],
    &["paths", "0", "path"],
    &["paths", "0", "methods"],
    &["paths", "0", "claim-information-point"],
    &["paths", "0", "claim-information-point", "claims", "a"],
    &["paths", "1", "enforcement-mode"],
    &["kcpep"],
    &["kcpep", "decision-cache"],
    &["kcpep", "trusted-proxies"],
    &["path-cache"],
    &["enforcement-mode"],
    &["policy-enforcer"],
    &["on-deny-redirect-to"],
    &["claim-information-point"],
];

fn set(v: &mut Value, at: &[&str], new: Value) {
    let mut cur = v;
    for (i, k) in at.iter().enumerate() {
        let last = i + 1 == at.len();
        let next = match cur {
            Value::Object(m) if last => {
                m.insert((*k).to_string(), new);
                return;
            }
            Value::Object(m) => m.entry((*k).to_string()).or_insert(Value::Null),
            Value::Array(a) => match k.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(x) if last => {
                    *x = new;
                    return;
                }
                Some(x) => x,
                None => return,
            },
            _ => return,
        };
        cur = next;
    }
}

/// Every parser of Keycloak's answers, on one answer.
fn every_answer_parser(status: u16, body: &[u8]) {
    let _ = uma::parse_token_response(status, body);
    let _ = uma::parse_discovery(status, body);
    for mode in [
        ResponseMode::Rpt,
        ResponseMode::Decision,
        ResponseMode::Permissions,
    ] {
        let _ = uma::parse_uma_response(status, body, mode);
    }
    let _ = uma::parse_resources(status, body);
    let _ = uma::parse_ticket(status, body);
}

/// Request headers, some of them ones the claims and the forwarded rules read.
fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        Just("content-type".to_string()),
        Just("cookie".to_string()),
        Just("x-forwarded-for".to_string()),
        Just("forwarded".to_string()),
        Just("x-forwarded-proto".to_string()),
        "[a-z_-]{1,12}",
    ];
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        Just(b"application/grpc".to_vec()),
        Just(b"application/x-www-form-urlencoded".to_vec()),
    ];
    prop::collection::vec((name, value), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2_000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_path_normalizes_or_is_refused(s in any::<String>()) {
        let _ = uri::normalize(&s);
        let _ = uri::segmentation_hazard(&s);
    }

    #[test]
    fn path_like_text_normalizes_once(s in "/[/a-zA-Z0-9%;.\\\\?#{}*é日 ]{0,40}") {
        let _ = uri::segmentation_hazard(&s);
        if let Some(n) = uri::normalize(&s) {
            // without escapes to decode, normalizing again changes nothing
            if !s.contains('%') && uri::segmentation_hazard(&s).is_none() {
                prop_assert_eq!(uri::normalize(&n), Some(n.clone()), "{:?}", s);
            }
            // the query and fragment are gone (an encoded `%3F` decodes to a `?` of the path)
            if !s.contains('%') {
                prop_assert!(!n.contains('?') && !n.contains('#'), "{:?} -> {:?}", s, n);
            }
        }
    }

    #[test]
    fn any_pattern_loads_and_matches_without_a_panic(
        patterns in prop::collection::vec("[/a-z{}*.]{0,24}", 1..5),
        path in "/[/a-z0-9.{}*]{0,30}",
    ) {
        let m = PathMatcher::new(patterns.iter().map(String::as_str));
        let _ = m.find(&path);
        for p in &patterns {
            let _ = build_uri_from_template(p, &path, true);
            let _ = build_uri_from_template(p, &path, false);
            let _ = validate_template(p);
        }
    }

    #[test]
    fn any_bytes_as_configuration(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = PluginConfig::from_json(&bytes);
        let _ = EnforcerConfig::from_json(&bytes);
    }

    #[test]
    fn any_value_anywhere_in_a_configuration(spot in 0..CONFIG_SPOTS.len(), v in json_value(), flat in any::<bool>()) {
        let mut c = base_config();
        set(&mut c, CONFIG_SPOTS[spot], v);
        let text = if flat {
            c.to_string()
        } else {
            json!({"enforcers": {"e": c}, "default": "e"}).to_string()
        };
        let _ = PluginConfig::from_json(text.as_bytes());
        let _ = EnforcerConfig::from_json(text.as_bytes());
    }

    #[test]
    fn any_authorization_header(values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 0..3)) {
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let _ = token::bearer(&refs, 4096);
    }

    #[test]
    fn any_token_text(raw in any::<String>(), h in "[A-Za-z0-9_-]{0,80}", p in "[A-Za-z0-9_-]{0,80}", s in "[A-Za-z0-9_-]{0,80}") {
        let keys = jwks();
        let expect = Expectations { issuer: "http://kc:8080/realms/bank", audiences: &[], leeway_seconds: 30 , dpop: false};
        let _ = token::verify(&raw, &keys, &expect, NOW);
        let _ = token::verify(&format!("{h}.{p}.{s}"), &keys, &expect, NOW);
        let _ = token::key_id(&raw);
    }

    #[test]
    fn any_header_and_payload_json_in_a_token(hdr in json_value(), payload in json_value()) {
        use base64::Engine;
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let raw = format!("{}.{}.c2ln", b64(&hdr), b64(&payload));
        let expect = Expectations { issuer: "http://kc:8080/realms/bank", audiences: &[], leeway_seconds: 30 , dpop: false};
        let _ = token::verify(&raw, &jwks(), &expect, NOW);
    }

    #[test]
    fn any_keycloak_answer(status in prop_oneof![Just(200u16), Just(400), Just(401), Just(403), any::<u16>()], body in prop::collection::vec(any::<u8>(), 0..200)) {
        every_answer_parser(status, &body);
        let _ = Jwks::parse(&body);
    }

    #[test]
    fn any_json_keycloak_answer(status in prop_oneof![Just(200u16), Just(400), Just(403)], v in json_value()) {
        every_answer_parser(status, v.to_string().as_bytes());
        let _ = Jwks::parse(&json!({"keys": [v]}).to_string().into_bytes());
    }

    #[test]
    fn any_placeholder_text(s in any::<String>(), t in "[a-z{}.'\\[\\]/]{0,40}") {
        let _ = Template::parse(&s);
        let _ = Template::parse(&t);
    }

    #[test]
    fn any_address_text(s in any::<String>(), t in "[0-9a-f.:/\\[\\]]{0,40}") {
        let _ = Cidr::parse(&s);
        let _ = Cidr::parse(&t);
        let _ = parse_addr(&s);
        let _ = parse_addr(&t);
        let _ = Url::parse(&s);
    }

    #[test]
    fn any_shared_data_value(v in prop::collection::vec(any::<u8>(), 0..80), path in "/[a-z/]{0,10}") {
        let _ = documents::decode_doc(&v);
        let _ = documents::decode_lease(&v);
        let _ = decisions::decode_path(&path, &v, NOW);
        let _ = decisions::decode(&[7u8; 32], &v);
    }

    #[test]
    fn shared_records_decode_to_what_was_encoded(at in any::<i64>(), body in prop::collection::vec(any::<u8>(), 0..80), path in "/[a-z/]{0,10}", exp in any::<i64>()) {
        let doc = documents::encode_doc(at, &body);
        prop_assert_eq!(documents::decode_doc(&doc), Some((at, body.as_slice())));
        let rec = decisions::encode_path(&path, exp, &body);
        let now = exp.saturating_sub(1);
        if now < exp {
            prop_assert_eq!(decisions::decode_path(&path, &rec, now), Some(body.as_slice()));
        }
    }

    #[test]
    fn any_request_gets_a_decision(
        method in prop_oneof![Just("GET".to_string()), Just("POST".to_string()), "[A-Za-z]{0,8}"],
        path in prop_oneof!["/[/a-z0-9%;.{}?=&]{0,30}", any::<String>()],
        hdrs in headers(),
        body in prop::option::of(prop::collection::vec(any::<u8>(), 0..60)),
        peer in prop::option::of("[0-9.:a-f]{0,20}"),
        claims in json_value(),
        spot in 0..CONFIG_SPOTS.len(), v in json_value(), mutate in any::<bool>(),
    ) {
        let mut c = base_config();
        if mutate {
            set(&mut c, CONFIG_SPOTS[spot], v);
        }
        let Ok(cfg) = EnforcerConfig::from_json(c.to_string().as_bytes()) else {
            return Ok(());
        };
        let mut known = Knowledge::new(&cfg);
        known.pat = Some("pat".into());
        let token = Rc::new(Token { claims, exp: NOW + 300, digest: [1; 32] });
        for credential in [Credential::Anonymous, Credential::Valid("raw".into(), Rc::clone(&token))] {
            let req = RequestFacts {
                method: &method,
                path: &path,
                credential: &credential,
                view: RequestView { headers: &hdrs, peer: peer.as_deref(), tls: false, body: body.as_deref() },
                grpc: hdrs.iter().any(|(k, v)| k == "content-type" && keycloak_pep::enforce::grpc::Wire::of(v).is_some()),
            };
            let _ = keycloak_pep::enforce::decide(&cfg, &mut known, &req, &mut NoStore, NOW * 1000);
            let _ = keycloak_pep::enforce::explain(&cfg, &known.paths, &method, &path);
        }
        let _ = cfg.proxy.proxy_trust.client(peer.as_deref(), false, &hdrs);
    }
}
