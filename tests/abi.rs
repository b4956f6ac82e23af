//! ABI tests: the built dist/keycloak_pep.wasm driven through the proxy-wasm ABI by the wasmtime
//! host of tests/host, exactly as Envoy drives it. They pin what the filter asks of the host:
//! the callouts it dispatches (cluster, headers, body, timeout), its local replies and their
//! headers, resumed requests and forwarded headers, and its use of shared data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod host;

use base64::Engine;
use host::{Action, SharedData, Vm};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const NOW_MS: u64 = 1_800_000_000_000;
const ISSUER: &str = "http://kc:8080/realms/bank";

/// The `bank` enforcer most tests here run (tests/fixtures/bank-enforcer.json).
fn bank_enforcer() -> Value {
    serde_json::from_slice(&fixture("bank-enforcer.json")).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn config() -> Vec<u8> {
    json!({
        "enforcers": {
            "bank": bank_enforcer(),
            "other": {"realm": "bank", "auth-server-url": "http://kc:8080", "resource": "other-api",
                      "policy-enforcer": {"enforcement-mode": "PERMISSIVE", "paths": [{"path": "/x"}]}}
        },
        "routes": [{"route-name": "other-route", "enforcer": "other"}],
        "default": "bank"
    })
    .to_string()
    .into_bytes()
}

fn sign(claims: &Value) -> String {
    let der = base64::engine::general_purpose::STANDARD
        .decode(fixture("rsa-private.der.b64"))
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_rsa_der(&der)).unwrap()
}

fn token(extra: Value) -> String {
    let now = (NOW_MS / 1000) as i64;
    let mut c = json!({"iss": ISSUER, "sub": "u1", "typ": "Bearer", "exp": now + 300, "iat": now});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    sign(&c)
}

fn vm_with(shared: Option<host::Shared>) -> Vm {
    let vm = match shared {
        Some(s) => Vm::with_shared(host::module(), s),
        None => Vm::new(host::module()),
    };
    envoy_like(vm.unwrap(), Arc::new(AtomicU32::new(0)))
}

/// As in Envoy: the keycloak cluster, the test clock, and verify_signature (its calls counted),
/// through which the default module checks signatures.
fn envoy_like(vm: Vm, verify_calls: Arc<AtomicU32>) -> Vm {
    let mut vm = vm
        .allow_clusters(&["keycloak"])
        .foreign_function(host::envoy_crypto::verify_signature(verify_calls));
    vm.set_time_ms(NOW_MS);
    vm
}

/// A configured VM whose background fetches were answered (keys, PAT, binding of the named path).
fn ready_vm() -> Vm {
    ready_vm_with(&config())
}

fn ready_vm_with(config: &[u8]) -> Vm {
    let mut vm = vm_with(None);
    assert!(vm.configure(config).unwrap());
    answer_background(&mut vm);
    vm
}

/// The callouts the filter made, after answering its template instance lookups (Keycloak's
/// `resolvePathConfig`: `resource_set?uri=<path>`, the parent's, then the server's match) with
/// "no such instance", so the template's own resource is asked for, as these tests expect.
fn callouts(vm: &mut Vm) -> Vec<host::Callout> {
    let mut out = Vec::new();
    loop {
        let (lookups, rest): (Vec<_>, Vec<_>) = vm.take_callouts().into_iter().partition(|c| {
            c.header(":path")
                .is_some_and(|p| String::from_utf8_lossy(p).contains("/resource_set?uri="))
        });
        out.extend(rest);
        if lookups.is_empty() {
            return out;
        }
        for c in lookups {
            vm.respond(c.token, 200, &[("content-type", "application/json")], b"[]")
                .unwrap();
        }
    }
}

fn answer_background(vm: &mut Vm) {
    answer_background_with(vm, &fixture("jwks.json"));
}

/// Answers the background fetches, the realm's keys with `jwks`.
fn answer_background_with(vm: &mut Vm, jwks: &[u8]) {
    for _ in 0..5 {
        vm.tick().unwrap();
        let calls = vm.take_callouts();
        if calls.is_empty() {
            break;
        }
        for c in calls {
            let path = String::from_utf8(c.header(":path").unwrap().to_vec()).unwrap();
            let body: Vec<u8> = if path.ends_with("/uma2-configuration") {
                json!({"issuer": ISSUER, "token_endpoint": format!("{ISSUER}/protocol/openid-connect/token"),
                       "jwks_uri": format!("{ISSUER}/protocol/openid-connect/certs")}).to_string().into_bytes()
            } else if path.ends_with("/certs") {
                jwks.to_vec()
            } else if path.ends_with("/token") {
                br#"{"access_token":"PAT-TOKEN","expires_in":300}"#.to_vec()
            } else if path.contains("/resource_set?") {
                br#"[{"_id":"rid-1","name":"View Account Resource","uris":["/account/{id}"],"scopes":[{"name":"account:view"}]}]"#.to_vec()
            } else {
                panic!("unexpected background callout {path}");
            };
            vm.respond(c.token, 200, &[("content-type", "application/json")], &body)
                .unwrap();
        }
    }
}

fn get(vm: &mut Vm, path: &str, auth: Option<&[u8]>, extra: &[(&str, &[u8])]) -> u32 {
    let mut h: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":path", path.as_bytes()),
        (":authority", b"bank.local"),
        (":scheme", b"http"),
    ];
    if let Some(a) = auth {
        h.push(("authorization", a));
    }
    h.extend_from_slice(extra);
    vm.request(&h).unwrap()
}

fn bearer(t: &str) -> Vec<u8> {
    format!("Bearer {t}").into_bytes()
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8(body.to_vec())
        .unwrap()
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            let dec = |s: &str| {
                let s = s.replace('+', " ");
                let mut out = Vec::new();
                let b = s.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'%' {
                        out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                        i += 3;
                    } else {
                        out.push(b[i]);
                        i += 1;
                    }
                }
                String::from_utf8(out).unwrap()
            };
            (dec(k), dec(v))
        })
        .collect()
}

#[test]
fn bad_configuration_is_refused_with_its_json_path() {
    let mut vm = vm_with(None);
    let bad = br#"{"realm":"bank","auth-server-url":"http://kc","resource":"c","policy-enforcer":{"paths":[{"path":"/a","methods":[{"method":"GET","scopes-enforcement-mode":"SOME"}]}]}}"#;
    assert!(!vm.configure(bad).unwrap());
    assert!(vm.log_contains("policy-enforcer.paths[0].methods[0].scopes-enforcement-mode: expected ALL, ANY or DISABLED"));
    assert!(vm.failed().is_none(), "refused, not crashed");
    let mut vm = vm_with(None);
    assert!(!vm.configure(b"not json").unwrap());
}

#[test]
fn background_fetches_go_to_the_keycloak_cluster() {
    let mut vm = vm_with(None);
    assert!(vm.configure(&config()).unwrap());
    vm.tick().unwrap();
    let calls = callouts(&mut vm);
    let paths: Vec<String> = calls
        .iter()
        .map(|c| String::from_utf8(c.header(":path").unwrap().to_vec()).unwrap())
        .collect();
    assert!(
        paths.contains(&"/realms/bank/.well-known/uma2-configuration".to_string()),
        "{paths:?}"
    );
    assert!(paths.contains(&"/realms/bank/protocol/openid-connect/certs".to_string()));
    let pat = calls
        .iter()
        .find(|c| c.header(":path") == Some(b"/realms/bank/protocol/openid-connect/token"))
        .unwrap();
    assert_eq!(pat.cluster, "keycloak");
    assert_eq!(pat.header(":method"), Some(&b"POST"[..]));
    assert_eq!(pat.header(":authority"), Some(&b"kc:8080"[..]));
    assert_eq!(
        pat.header("authorization"),
        Some(&b"Basic YmFuay1hcGk6czNjcmV0"[..])
    );
    assert_eq!(pat.body, b"grant_type=client_credentials");
    assert_eq!(pat.timeout_ms, Some(1500));
    // the realm is the same for both enforcers: one JWKS fetch, not two
    assert_eq!(
        paths.iter().filter(|p| p.ends_with("/certs")).count(),
        1,
        "{paths:?}"
    );
    // a tick while they are in flight starts nothing new
    vm.tick().unwrap();
    assert!(callouts(&mut vm).is_empty());
}

#[test]
fn requests_before_the_keys_are_loaded_fail_closed() {
    let mut vm = vm_with(None);
    assert!(vm.configure(&config()).unwrap());
    let req = get(&mut vm, "/account/1", Some(&bearer(&token(json!({})))), &[]);
    assert_eq!(vm.local_response(req).unwrap().status, 503);
    // ...but public paths pass, and requests without a token get 401
    let req = get(&mut vm, "/public/x", None, &[]);
    assert!(vm.continued(req));
    let req = get(&mut vm, "/account/1", None, &[]);
    assert_eq!(vm.local_response(req).unwrap().status, 401);
    assert!(
        callouts(&mut vm).iter().all(|c| c.header(":path")
            != Some(b"/realms/bank/protocol/openid-connect/token")
            || c.body == b"grant_type=client_credentials"),
        "no per-request callouts while keys are missing"
    );
}

#[test]
fn no_token_gets_401_bearer_challenge() {
    let mut vm = ready_vm();
    let req = get(&mut vm, "/account/1", None, &[]);
    let r = vm.local_response(req).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(&b"Bearer realm=\"bank\""[..])
    );
    assert!(callouts(&mut vm).is_empty());
}

#[test]
fn uma_grant_is_dispatched_and_the_request_resumed() {
    let mut vm = ready_vm();
    let t = token(json!({}));
    let spoof: &[(&str, &[u8])] = &[("x-kcpep-permissions", b"[{\"rsname\":\"all\"}]")];
    let req = get(&mut vm, "/account/42?x=1", Some(&bearer(&t)), spoof);
    assert_eq!(vm.action(req), Action::Pause);
    let calls = callouts(&mut vm);
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.cluster, "keycloak");
    assert_eq!(
        c.header(":path"),
        Some(&b"/realms/bank/protocol/openid-connect/token"[..])
    );
    assert_eq!(
        c.header("authorization"),
        Some(&b"Basic YmFuay1hcGk6czNjcmV0"[..])
    );
    let f = form(&c.body);
    let want: Vec<(String, String)> = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:uma-ticket"),
        ("audience", "bank-api"),
        ("permission", "rid-1#account:view"),
        ("response_mode", "permissions"),
        ("subject_token", t.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(f, want);
    assert!(!vm.continued(req));
    vm.respond(
        c.token,
        200,
        &[],
        br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"]}]"#,
    )
    .unwrap();
    assert!(vm.continued(req));
    assert!(vm.local_response(req).is_none());
    let perms = vm.request_header(req, "x-kcpep-permissions").unwrap();
    assert_eq!(
        perms,
        br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"]}]"#
    );
    assert_eq!(
        vm.stream_property(req, &["kcpep.permissions"]),
        Some(perms),
        "also as filter state"
    );
    vm.finish(req).unwrap();
}

#[test]
fn a_huge_keycloak_answer_is_refused_without_being_copied_into_the_vm() {
    // The VM's memory never shrinks: a 32 MiB answer read once would stay in every VM that
    // read it. Over wire::http::MAX_ANSWER_BYTES the answer is not read: 503, as for no answer.
    let mut vm = ready_vm();
    let before = vm.memory_size();
    let t = token(json!({}));
    let req = get(&mut vm, "/account/42", Some(&bearer(&t)), &[]);
    let calls = callouts(&mut vm);
    assert_eq!(calls.len(), 1);
    let mut huge =
        br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"],"pad":""#
            .to_vec();
    huge.resize(32 * 1024 * 1024, b'x');
    huge.extend_from_slice(br#""}]"#);
    vm.respond(calls[0].token, 200, &[], &huge).unwrap();
    assert_eq!(vm.local_response(req).map(|r| r.status), Some(503));
    let grown = vm.memory_size() - before;
    assert!(
        grown < 4 * 1024 * 1024,
        "the VM grew by {} KiB reading the answer",
        grown / 1024
    );
    assert!(vm.failed().is_none());
}

#[test]
fn keycloak_answers_become_local_replies() {
    let mut vm = ready_vm();
    for (n, (status, body, want)) in [
        (
            403u32,
            &br#"{"error":"access_denied","error_description":"not_authorized"}"#[..],
            403u32,
        ),
        (
            503,
            b"upstream connect error or disconnect/reset before headers",
            503,
        ),
        (
            400,
            br#"{"error":"invalid_grant","error_description":"Invalid bearer token"}"#,
            401,
        ),
        (200, b"<html>oops</html>", 503),
    ]
    .into_iter()
    .enumerate()
    {
        // a token of its own each time: a decision is cached per token
        let t = token(json!({ "jti": n }));
        let req = get(&mut vm, "/account/1", Some(&bearer(&t)), &[]);
        let c = callouts(&mut vm).pop().unwrap();
        vm.respond(c.token, status, &[], body).unwrap();
        assert_eq!(
            vm.local_response(req).map(|r| r.status),
            Some(want),
            "Keycloak {status}"
        );
        assert!(!vm.continued(req));
    }
    // a timeout or reset (no response headers) is 503 too
    let t = token(json!({"jti": "timeout"}));
    let req = get(&mut vm, "/account/1", Some(&bearer(&t)), &[]);
    let c = callouts(&mut vm).pop().unwrap();
    vm.fail_callout(c.token).unwrap();
    assert_eq!(vm.local_response(req).unwrap().status, 503);
    assert!(vm.failed().is_none());
}

#[test]
fn rpt_with_the_permission_passes_without_a_grant() {
    let mut vm = ready_vm();
    let rpt = token(
        json!({"aud": "bank-api", "authorization": {"permissions": [{"rsid": "rid-1", "rsname": "View Account Resource", "scopes": ["account:view"]}]}}),
    );
    let req = get(&mut vm, "/account/1", Some(&bearer(&rpt)), &[]);
    // the template path's instance is looked up (none: the template's resource, rid-1)...
    assert!(callouts(&mut vm).is_empty(), "no UMA grant");
    assert!(vm.continued(req));
    // ...once per path
    let again = get(&mut vm, "/account/1", Some(&bearer(&rpt)), &[]);
    assert!(vm.continued(again));
    assert!(vm.take_callouts().is_empty());
    assert!(vm
        .request_header(req, "x-kcpep-permissions")
        .unwrap()
        .starts_with(b"[{\"rsid\":\"rid-1\""));
}

#[test]
fn hostile_bytes_never_crash_the_vm() {
    let mut vm = ready_vm();
    for auth in [
        &b"Bearer \xff\xfe"[..],
        b"\xff",
        b"Basic abc",
        b"Bearer a.b.c",
        b"Bearer",
    ] {
        let req = get(
            &mut vm,
            "/account/1",
            Some(auth),
            &[("x-odd", b"\xff\xfe\x00")],
        );
        let r = vm.local_response(req).unwrap();
        assert_eq!(r.status, 401);
        let challenge = String::from_utf8(r.header("www-authenticate").unwrap().to_vec()).unwrap();
        // RFC 6750 §3.1: an error code only when a bearer credential was offered
        let offered_bearer = auth != b"Basic abc";
        assert_eq!(
            challenge.contains("invalid_token"),
            offered_bearer,
            "{challenge}"
        );
    }
    let req = vm
        .request(&[
            (":method", b"GET"),
            (":path", b"/account/\xff"),
            (":authority", b"\xfe"),
        ])
        .unwrap();
    assert!(vm.local_response(req).is_some());
    // two Authorization headers: refused even if both are valid
    let t = bearer(&token(json!({})));
    let req = get(&mut vm, "/account/1", Some(&t), &[("authorization", &t)]);
    assert_eq!(vm.local_response(req).unwrap().status, 401);
    assert!(vm.failed().is_none(), "the VM survived: {:?}", vm.failed());
}

#[test]
fn generated_hostile_requests_and_answers_never_crash_the_vm() {
    // #15: a seeded stream of hostile input through the real .wasm (paths of any bytes, UTF-8
    // included, odd methods and headers, garbage in shared data, Keycloak answering anything or
    // nothing): the VM never traps, and every request is let on or answered with a documented
    // status. A non-ASCII path used to panic the filter here (fixed in request/uri.rs).
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(15);
    let mut vm = ready_vm();
    let good = bearer(&token(json!({})));
    let pieces: &[&[u8]] = &[
        b"/account/1",
        b"/public/x",
        b"/",
        b"/account/",
        b"%2F",
        b"%2e%2e",
        b";x=1",
        b"//",
        b"\\",
        b"?q=1",
        b"#f",
        b"%zz",
        b"%",
        "日本".as_bytes(),
        "é".as_bytes(),
        b"\xff\xfe",
        b"\x00",
        b"{id}",
        b"*",
        b"/..",
        b"%3B",
        b" ",
        b"\r\n",
    ];
    let bodies: &[&[u8]] = &[
        b"",
        b"{}",
        b"[]",
        b"null",
        b"<html>",
        b"\xff\x00",
        br#"{"access_token":1}"#,
        br#"{"error":"access_denied"}"#,
        br#"{"result":true}"#,
        br#"[{"rsid":7}]"#,
        br#"{"ticket":null}"#,
        br#"{"keys":[{"kty":"RSA","n":"","e":""}]}"#,
    ];
    let documented = [200, 302, 400, 401, 403, 413, 500, 503];
    for round in 0..300 {
        let mut path = Vec::new();
        for _ in 0..rng.gen_range(1..5) {
            path.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
        }
        let method: &[u8] =
            [&b"GET"[..], b"POST", b"get", b"", b"\xff", b"DELETE"][rng.gen_range(0..6)];
        let auth: Option<Vec<u8>> = match rng.gen_range(0..4) {
            0 => None,
            1 => Some(good.clone()),
            2 => Some(format!("Bearer {}", "x".repeat(rng.gen_range(0..40))).into_bytes()),
            _ => Some(bodies[rng.gen_range(0..bodies.len())].to_vec()),
        };
        if rng.gen_bool(0.1) {
            // another VM (or anything else) wrote garbage where the filter keeps its tables
            let shared = vm.shared();
            let mut shared = shared.lock().unwrap();
            for key in shared.keys() {
                let v = bodies[rng.gen_range(0..bodies.len())];
                let cas = shared.get(&key).map_or(0, |(_, c)| c);
                let _ = shared.set(&key, v, cas);
            }
        }
        let mut h: Vec<(&str, &[u8])> = vec![
            (":method", method),
            (":path", &path),
            (":authority", b"bank.local"),
            ("x-kcpep-permissions", b"[]"),
        ];
        if let Some(a) = &auth {
            h.push(("authorization", a));
        }
        let req = vm.request(&h).unwrap();
        // answer whatever the filter asked, with anything
        for _ in 0..4 {
            let calls = vm.take_callouts();
            if calls.is_empty() {
                break;
            }
            for c in calls {
                if rng.gen_bool(0.2) {
                    vm.fail_callout(c.token).unwrap();
                } else {
                    let status = [200, 400, 401, 403, 500, 503, 0, 999][rng.gen_range(0..8)];
                    vm.respond(c.token, status, &[], bodies[rng.gen_range(0..bodies.len())])
                        .unwrap();
                }
            }
        }
        if rng.gen_bool(0.05) {
            vm.advance_ms(rng.gen_range(0..120_000));
            vm.tick().unwrap();
            answer_background(&mut vm);
        }
        assert!(
            vm.failed().is_none(),
            "round {round}: the VM failed: {:?}",
            vm.failed()
        );
        if let Some(r) = vm.local_response(req) {
            assert!(
                documented.contains(&r.status),
                "round {round} {path:?}: status {}",
                r.status
            );
        }
    }
}

#[test]
fn forged_expired_and_foreign_tokens() {
    let mut vm = ready_vm();
    let good = token(json!({}));
    let mut forged = good.clone().into_bytes();
    let n = forged.len() - 4;
    forged[n] = if forged[n] == b'A' { b'B' } else { b'A' };
    let now = (NOW_MS / 1000) as i64;
    for (tok, why) in [
        (String::from_utf8(forged).unwrap(), "invalid signature"),
        (token(json!({"exp": now - 60})), "token expired"),
        (
            token(json!({"iss": "http://evil/realms/bank"})),
            "wrong issuer",
        ),
        (token(json!({"typ": "Refresh"})), "not an access token"),
    ] {
        let req = get(&mut vm, "/account/1", Some(&bearer(&tok)), &[]);
        let r = vm.local_response(req).unwrap();
        assert_eq!(r.status, 401);
        let h = String::from_utf8(r.header("www-authenticate").unwrap().to_vec()).unwrap();
        assert!(h.contains(why), "{h}");
    }
    assert!(callouts(&mut vm).is_empty());
    // no token material in the logs
    assert!(!vm.logs().iter().any(|(_, l)| l.contains(&good[..20])));
}

#[test]
fn route_name_selects_the_enforcer() {
    let mut vm = ready_vm();
    vm.set_property(&["xds", "route_name"], b"other-route");
    let req = get(&mut vm, "/unmatched", Some(&bearer(&token(json!({})))), &[]);
    assert!(
        vm.continued(req),
        "the PERMISSIVE enforcer lets unmatched paths through"
    );
    vm.set_property(&["xds", "route_name"], b"something-else");
    let req = get(&mut vm, "/unmatched", Some(&bearer(&token(json!({})))), &[]);
    assert_eq!(
        vm.local_response(req).unwrap().status,
        403,
        "the default ENFORCING enforcer"
    );
}

#[test]
fn a_second_vm_reuses_the_first_vms_documents() {
    let shared = SharedData::new();
    let mut a = vm_with(Some(shared.clone()));
    assert!(a.configure(&config()).unwrap());
    answer_background(&mut a);
    let mut b = vm_with(Some(shared.clone()));
    assert!(b.configure(&config()).unwrap());
    b.tick().unwrap();
    b.tick().unwrap();
    let calls = callouts(&mut b);
    assert!(
        calls.is_empty(),
        "VM b fetched again: {:?}",
        calls.iter().map(|c| c.header(":path")).collect::<Vec<_>>()
    );
    // and it is ready: its UMA grant uses the shared PAT-bound resource id
    let req = get(&mut b, "/account/1", Some(&bearer(&token(json!({})))), &[]);
    let c = callouts(&mut b).pop().unwrap();
    assert!(form(&c.body).contains(&("permission".into(), "rid-1#account:view".into())));
    assert_eq!(b.action(req), Action::Pause);
}

/// Envoy keeps VMs and shared data over a configuration change and configures a new root context:
/// it must not answer 503 until its first tick while shared data holds what it needs.
#[test]
fn a_new_root_context_decides_at_once_with_the_documents_in_shared_data() {
    let shared = SharedData::new();
    let mut a = vm_with(Some(shared.clone()));
    assert!(a.configure(&config()).unwrap());
    answer_background(&mut a);
    let mut b = vm_with(Some(shared.clone()));
    assert!(b.configure(&config()).unwrap());
    let req = get(&mut b, "/account/1", Some(&bearer(&token(json!({})))), &[]);
    assert_eq!(b.action(req), Action::Pause, "no tick yet, and no 503");
    let c = callouts(&mut b).pop().unwrap();
    assert!(form(&c.body).contains(&("permission".into(), "rid-1#account:view".into())));
}

#[test]
fn host_signature_verification_is_detected_and_used() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut vm = envoy_like(Vm::new(host::module()).unwrap(), calls.clone());
    assert!(vm.configure(&config()).unwrap());
    assert!(vm.log_contains("verified by the host"), "{:?}", vm.logs());
    answer_background(&mut vm);
    let probes = calls.load(Ordering::SeqCst);
    assert!(probes >= 2, "probed with a good and a bad vector");
    let good = token(json!({}));
    let req = get(&mut vm, "/account/1", Some(&bearer(&good)), &[]);
    assert_eq!(vm.action(req), Action::Pause, "verified, asking Keycloak");
    assert_eq!(calls.load(Ordering::SeqCst), probes + 1);
    // the same token again: remembered, not verified again
    let _ = callouts(&mut vm);
    let req = get(&mut vm, "/account/1", Some(&bearer(&good)), &[]);
    assert_eq!(vm.action(req), Action::Pause);
    assert_eq!(calls.load(Ordering::SeqCst), probes + 1);
    let mut forged = good.into_bytes();
    let n = forged.len() - 4;
    forged[n] = if forged[n] == b'A' { b'B' } else { b'A' };
    let req = get(
        &mut vm,
        "/account/1",
        Some(&bearer(std::str::from_utf8(&forged).unwrap())),
        &[],
    );
    assert_eq!(vm.local_response(req).unwrap().status, 401);
    assert_eq!(calls.load(Ordering::SeqCst), probes + 2);
}

#[test]
fn without_the_host_function_the_rust_crypto_module_verifies_tokens_in_wasm() {
    let mut vm = Vm::new(host::rust_crypto_module())
        .unwrap()
        .allow_clusters(&["keycloak"]);
    vm.set_time_ms(NOW_MS);
    assert!(vm.configure(&config()).unwrap());
    answer_background(&mut vm);
    assert!(vm.log_contains("verified in wasm"));
    let req = get(&mut vm, "/account/1", Some(&bearer(&token(json!({})))), &[]);
    assert_eq!(vm.action(req), Action::Pause);
}

#[test]
fn decisions_are_cached_in_shared_data_for_all_vms() {
    let shared = SharedData::new();
    let mut a = vm_with(Some(shared.clone()));
    assert!(a.configure(&config()).unwrap());
    answer_background(&mut a);
    let t = token(json!({}));
    let req = get(&mut a, "/account/1", Some(&bearer(&t)), &[]);
    let c = callouts(&mut a).pop().unwrap();
    a.respond(
        c.token,
        200,
        &[],
        br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"]}]"#,
    )
    .unwrap();
    assert!(a.continued(req));
    // the same question again, on this VM and on another one: no callout
    let req = get(&mut a, "/account/1", Some(&bearer(&t)), &[]);
    assert!(a.continued(req));
    assert!(callouts(&mut a).is_empty());
    assert!(a
        .request_header(req, "x-kcpep-permissions")
        .unwrap()
        .starts_with(b"[{\"rsid\":\"rid-1\""));
    let mut b = vm_with(Some(shared.clone()));
    assert!(b.configure(&config()).unwrap());
    answer_background(&mut b);
    let req = get(&mut b, "/account/1", Some(&bearer(&t)), &[]);
    assert!(b.continued(req), "VM b used VM a's decision");
    assert!(callouts(&mut b).is_empty());
    // the token's digest is stored, never the token
    for key in shared_keys(&shared) {
        let v = shared.lock().unwrap().get(&key).unwrap().0;
        assert!(
            !v.windows(20).any(|w| w == &t.as_bytes()[..20]),
            "{key} holds the token"
        );
    }
    // the table is bounded: many tokens, at most max-entries slots
    for i in 0..50 {
        let u = token(json!({"jti": i}));
        get(&mut a, "/account/1", Some(&bearer(&u)), &[]);
        for c in callouts(&mut a) {
            a.respond(c.token, 403, &[], br#"{"error":"access_denied"}"#)
                .unwrap();
        }
    }
    let table: Vec<String> = shared_keys(&shared)
        .into_iter()
        .filter(|k| k.starts_with("kcpep/v1/dc/"))
        .collect();
    // every slot is made at configure (two enforcers, two tables of the default max-entries),
    // empty until a decision takes it
    assert_eq!(table.len(), 2 * 10_000);
    let slots = table
        .iter()
        .filter(|k| !shared.lock().unwrap().get(k).unwrap().0.is_empty())
        .count();
    assert!(slots <= 51 && slots > 0, "{slots}");
    // the "entries in use" gauge counts exactly the slots holding an entry
    assert_eq!(a.metric("kcpep.cache.entries"), Some(slots as i64));
    // ...of every table: a decision of the other enforcer (its own table) adds to it
    a.set_property(&["xds", "route_name"], b"other-route");
    let req = get(&mut a, "/x", Some(&bearer(&t)), &[]);
    for c in callouts(&mut a) {
        a.respond(c.token, 403, &[], br#"{"error":"access_denied"}"#)
            .unwrap();
    }
    assert!(a.local_response(req).is_some() || a.continued(req));
    let used = |prefix: &str| {
        shared_keys(&shared)
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .filter(|k| !shared.lock().unwrap().get(k).unwrap().0.is_empty())
            .count()
    };
    let other = used("kcpep/v1/dc/") - slots;
    assert_eq!(
        other, 1,
        "the other enforcer's decision took a slot of its table"
    );
    assert_eq!(a.metric("kcpep.cache.entries"), Some(slots as i64 + 1));
}

/// Two ready VMs sharing one shared-data store, as two Envoy workers do.
fn two_workers() -> (host::Shared, Vm, Vm) {
    let shared = SharedData::new();
    let mut a = vm_with(Some(shared.clone()));
    assert!(a.configure(&config()).unwrap());
    answer_background(&mut a);
    let mut b = vm_with(Some(shared.clone()));
    assert!(b.configure(&config()).unwrap());
    answer_background(&mut b);
    (shared, a, b)
}

fn shared_keys(shared: &host::Shared) -> Vec<String> {
    shared.lock().unwrap().keys()
}

#[test]
fn identical_concurrent_misses_make_one_callout() {
    let (_shared, mut a, mut b) = two_workers();
    let t = token(json!({}));
    let first = get(&mut a, "/account/1", Some(&bearer(&t)), &[]);
    let same_vm = get(&mut a, "/account/1", Some(&bearer(&t)), &[]);
    let other_vm = get(&mut b, "/account/1", Some(&bearer(&t)), &[]);
    let calls = callouts(&mut a);
    assert_eq!(calls.len(), 1, "one UMA call for three requests");
    assert!(callouts(&mut b).is_empty());
    assert_eq!(a.action(same_vm), Action::Pause);
    assert_eq!(b.action(other_vm), Action::Pause);
    assert!(
        b.tick_period_ms() <= 10,
        "waiting requests are polled from the tick"
    );
    a.respond(
        calls[0].token,
        200,
        &[],
        br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"]}]"#,
    )
    .unwrap();
    assert!(a.continued(first));
    assert!(
        a.continued(same_vm),
        "woken by the answer on its own worker"
    );
    assert!(!b.continued(other_vm));
    b.tick().unwrap();
    assert!(b.continued(other_vm), "woken by its tick");
    assert!(b.request_header(other_vm, "x-kcpep-permissions").is_some());
}

// ---- claim information point

fn claims_config(kcpep: Value) -> Vec<u8> {
    let mut k = json!({"proxy-headers": "xforwarded", "trusted-proxies": ["127.0.0.1"],
                       "max-body-bytes": 64});
    for (key, v) in kcpep.as_object().unwrap() {
        k[key] = v.clone();
    }
    json!({"realm": "bank", "auth-server-url": "http://kc:8080", "resource": "bank-api",
        "credentials": {"secret": "s3cret"}, "kcpep": k,
        "policy-enforcer": {
            "claim-information-point": {"claims": {"ip": "{request.remoteAddr}", "secure": "{request.secure}"}},
            "paths": [
                {"name": "View Account Resource", "path": "/account/{id}",
                 "claim-information-point": {"claims": {
                     "branch": "{request.header['x-branch']}", "amount": "{request.body['/amount']}",
                     "q": "{request.parameter['q']}", "c": "{request.cookie['c']}",
                     "who": "{keycloak.access_token['/sub']}", "m": "{request.method} {request.uri}"}}},
                {"name": "Statement", "path": "/statement",
                 "claim-information-point": {"http": {
                     "url": "http://claims.svc:8082/customers", "method": "GET", "cluster": "claims",
                     "parameters": {"user": "{keycloak.access_token['/sub']}"},
                     "claims": {"status": "/status"}}}}
            ]}})
    .to_string()
    .into_bytes()
}

/// The claims a UMA grant callout pushed (its base64 JSON `claim_token`).
fn pushed_claims(c: &host::Callout) -> Value {
    let f = form(&c.body);
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(
        get("claim_token_format").as_deref(),
        Some("urn:ietf:params:oauth:token-type:jwt")
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(get("claim_token").expect("claim_token"))
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn post(vm: &mut Vm, path: &str, t: &str, extra: &[(&str, &[u8])]) -> u32 {
    let auth = bearer(t);
    let mut h: Vec<(&str, &[u8])> = vec![
        (":method", b"POST"),
        (":path", path.as_bytes()),
        (":authority", b"bank.local"),
        (":scheme", b"http"),
        ("authorization", &auth),
        ("content-type", b"application/json"),
    ];
    h.extend_from_slice(extra);
    vm.request_with(&h, false).unwrap()
}

#[test]
fn body_claims_read_the_body_then_push_every_placeholder_kind() {
    let mut vm = ready_vm_with(&claims_config(json!({})));
    vm.set_property(&["source", "address"], b"127.0.0.1:41000");
    let t = token(json!({}));
    let req = post(
        &mut vm,
        "/account/7?q=a%20b",
        &t,
        &[
            ("x-branch", b"tokyo"),
            ("cookie", b"c=cv; d=1"),
            ("x-forwarded-for", b"203.0.113.7"),
            ("x-forwarded-proto", b"https"),
            ("x-kcpep-permissions", b"forged"),
        ],
    );
    // the headers are held while the filter reads the body: nothing reaches the upstream
    // before the decision, whatever route Envoy picked
    assert_eq!(vm.action(req), Action::Pause);
    assert!(
        callouts(&mut vm).is_empty(),
        "nothing asked before the body"
    );
    assert_eq!(
        vm.request_header(req, "x-kcpep-permissions"),
        None,
        "stripped"
    );
    assert_eq!(
        vm.request_body(req, br#"{"amo"#, false).unwrap(),
        Some(Action::Pause)
    );
    assert_eq!(
        vm.request_body(req, br#"unt": 900}"#, true).unwrap(),
        Some(Action::Pause)
    );
    let calls = callouts(&mut vm);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "keycloak");
    let claims = pushed_claims(&calls[0]);
    assert_eq!(
        claims,
        json!({"ip": ["203.0.113.7"], "secure": ["true"], "branch": ["tokyo"], "amount": ["900"],
               "q": ["a b"], "c": ["cv"], "who": ["u1"], "m": ["POST /account/7"]})
    );
    vm.respond(
        calls[0].token,
        200,
        &[],
        br#"[{"rsid":"rid-1","rsname":"View Account Resource"}]"#,
    )
    .unwrap();
    assert!(vm.continued(req));
    assert_eq!(vm.forwarded_body(req), br#"{"amount": 900}"#);
    // the headers were held, so the upstream gets the permissions header too
    assert!(vm
        .request_header(req, "x-kcpep-permissions")
        .is_some_and(|h| String::from_utf8_lossy(&h).contains("rid-1")));
    assert!(vm.stream_property(req, &["kcpep.permissions"]).is_some());
    assert!(vm.failed().is_none());
}

#[test]
fn forwarded_headers_are_ignored_from_an_untrusted_peer() {
    let mut vm = ready_vm_with(&claims_config(json!({"trusted-proxies": ["10.0.0.0/8"]})));
    vm.set_property(&["source", "address"], b"127.0.0.1:41000");
    let t = token(json!({}));
    let req = post(
        &mut vm,
        "/account/7",
        &t,
        &[("x-forwarded-for", b"203.0.113.7")],
    );
    vm.request_body(req, b"{}", true).unwrap();
    let calls = callouts(&mut vm);
    let claims = pushed_claims(&calls[0]);
    assert_eq!(claims["ip"], json!(["127.0.0.1"]));
    assert_eq!(claims["secure"], json!(["false"]));
}

#[test]
fn a_body_over_the_bound_gets_413_and_a_bad_one_400() {
    let mut vm = ready_vm_with(&claims_config(json!({})));
    let t = token(json!({}));
    let req = post(&mut vm, "/account/7", &t, &[]);
    vm.request_body(req, &[b'x'; 40], false).unwrap();
    vm.request_body(req, &[b'x'; 40], false).unwrap();
    // held while the template path's instance is looked up; then too large, whatever comes next
    assert!(callouts(&mut vm).is_empty(), "no grant");
    assert_eq!(vm.local_response(req).unwrap().status, 413);
    let req = post(&mut vm, "/account/7", &t, &[]);
    vm.request_body(req, b"{oops", true).unwrap();
    assert_eq!(vm.local_response(req).unwrap().status, 400);
    assert_eq!(vm.metric("kcpep.requests.denied.413"), Some(1));
    assert_eq!(vm.metric("kcpep.requests.denied.400"), Some(1));
    // a request without a body decides at once, with an empty one
    let req = get(&mut vm, "/account/7", Some(&bearer(&t)), &[]);
    let calls = callouts(&mut vm);
    assert_eq!(calls.len(), 1, "asked at the headers");
    assert!(pushed_claims(&calls[0]).get("amount").is_none());
    assert!(!vm.continued(req));
}

#[test]
fn http_provider_calls_its_cluster_then_keycloak() {
    let mut vm = vm_with(None).allow_clusters(&["keycloak", "claims"]);
    assert!(vm.configure(&claims_config(json!({}))).unwrap());
    answer_background(&mut vm);
    let t = token(json!({}));
    let req = get(&mut vm, "/statement", Some(&bearer(&t)), &[]);
    let calls = callouts(&mut vm);
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.cluster, "claims");
    assert_eq!(c.header(":authority"), Some(&b"claims.svc:8082"[..]));
    assert_eq!(c.header(":path"), Some(&b"/customers?user=u1"[..]));
    vm.respond(c.token, 200, &[], br#"{"status":"active"}"#)
        .unwrap();
    let calls = callouts(&mut vm);
    assert_eq!(calls[0].cluster, "keycloak");
    assert_eq!(pushed_claims(&calls[0])["status"], json!(["active"]));
    vm.respond(calls[0].token, 200, &[], br#"[{"rsid":"rid-1"}]"#)
        .unwrap();
    assert!(vm.continued(req));
    // the service failing: 503, Keycloak not asked
    let req = get(&mut vm, "/statement", Some(&bearer(&t)), &[]);
    let c = callouts(&mut vm).remove(0);
    vm.respond(c.token, 500, &[], b"{}").unwrap();
    assert_eq!(vm.local_response(req).unwrap().status, 503);
    assert!(callouts(&mut vm).is_empty());
    assert_eq!(vm.metric("kcpep.claims.calls"), Some(2));
    assert_eq!(vm.metric("kcpep.claims.errors"), Some(1));
}

#[test]
fn dry_run_logs_the_denial_and_lets_the_request_through() {
    let mut vm = ready_vm_with(
        json!({"realm": "bank", "auth-server-url": "http://kc:8080", "resource": "bank-api",
               "credentials": {"secret": "s3cret"}, "kcpep": {"dry-run": true},
               "policy-enforcer": {"paths": [{"path": "/only"}]}})
        .to_string()
        .as_bytes(),
    );
    let t = token(json!({}));
    let req = get(&mut vm, "/elsewhere", Some(&bearer(&t)), &[]);
    assert!(vm.continued(req));
    assert_eq!(vm.metric("kcpep.requests.dry_run_denied"), Some(1));
    assert!(vm.log_contains("kcpep dry-run would deny status=403"));
    assert!(vm.log_contains("reason=\"no path matched\""));
    assert!(!vm.log_contains(&t), "never the token");
}

#[test]
fn the_client_secret_can_come_from_the_vm_environment() {
    let cfg = json!({"realm": "bank", "auth-server-url": "http://kc:8080", "resource": "bank-api",
                     "credentials": {"secret": "${env.KC_SECRET}"}});
    let mut vm = vm_with(None).env("KC_SECRET", "from-env");
    assert!(vm.configure(cfg.to_string().as_bytes()).unwrap());
    vm.tick().unwrap();
    let pat = vm
        .take_callouts()
        .into_iter()
        .find(|c| c.header(":path") == Some(b"/realms/bank/protocol/openid-connect/token"))
        .unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode("bank-api:from-env");
    assert_eq!(
        pat.header("authorization"),
        Some(format!("Basic {basic}").as_bytes())
    );
    assert!(!vm.log_contains("from-env"));
    // unset and no default: refused at configure, naming the field
    let mut vm = vm_with(None);
    assert!(!vm.configure(cfg.to_string().as_bytes()).unwrap());
    assert!(vm.log_contains("credentials.secret: environment variable KC_SECRET is not set"));
}

/// `vm` configured, its background fetches answered, after it allowed `t` once on /account/1
/// (Keycloak granted it).
fn after_one_grant(vm: Vm, t: &str) -> Vm {
    let mut vm = envoy_like(vm, Arc::new(AtomicU32::new(0)));
    assert!(vm.configure(&config()).unwrap());
    answer_background(&mut vm);
    let req = get(&mut vm, "/account/1", Some(&bearer(t)), &[]);
    if let Some(c) = callouts(&mut vm).pop() {
        let granted =
            br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"]}]"#;
        vm.respond(c.token, 200, &[], granted).unwrap();
    }
    assert!(vm.continued(req));
    vm.finish(req).unwrap();
    vm
}

/// A repeated request answered from the memo with exactly the host calls `expected` (name,
/// count) and a decision record saying so.
fn assert_memo_hit(
    vm: &Vm,
    req: u32,
    calls: std::collections::BTreeMap<String, u64>,
    expected: &[(&str, u64)],
) {
    let expected: std::collections::BTreeMap<String, u64> =
        expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(calls, expected);
    let record = vm.stream_property(req, &["kcpep.decision"]).unwrap();
    let record: Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(
        (&record["source"], &record["outcome"]),
        (&json!("memo"), &json!("allow"))
    );
}

/// What a repeated request costs the host (`make profile` prints it): each host call is a
/// transition out of the VM, and inside Envoy some cost microseconds (`make bench`, host calls).
/// A new call on this path must be a deliberate choice, hence the exact list.
#[test]
fn a_memo_hit_makes_only_the_host_calls_it_needs() {
    let t = token(json!({}));
    let vm = Vm::counting_host_calls(host::module(), SharedData::new()).unwrap();
    let mut vm = after_one_grant(vm, &t);
    vm.take_host_calls();
    let req = get(&mut vm, "/account/1", Some(&bearer(&t)), &[]);
    assert!(vm.continued(req));
    let calls = vm.take_host_calls();
    eprintln!("memo hit: {calls:?}");
    let expected = [
        ("proxy_get_current_time_nanoseconds", 1),
        ("proxy_get_header_map_pairs", 1),
        // this configuration selects enforcers by route name: `xds.route_name`, `route_name`
        ("proxy_get_property", 2),
        // requests allowed, cache hits
        ("proxy_increment_metric", 2),
        ("proxy_replace_header_map_value", 1),
        // the permissions and the decision record (`kcpep.decision-record: false` drops one)
        ("proxy_set_property", 2),
    ];
    assert_memo_hit(&vm, req, calls, &expected);
    vm.finish(req).unwrap();
    assert_eq!(
        vm.take_host_calls().len(),
        0,
        "nothing at the end of the stream"
    );
}

/// `send-permissions-header: false`: the permissions only in the filter state, one host call
/// less per hit; a client's copy of the header is still removed.
#[test]
fn the_permissions_header_can_be_left_out() {
    let mut cfg: Value = serde_json::from_slice(&config()).unwrap();
    cfg["enforcers"]["bank"]["kcpep"]["send-permissions-header"] = json!(false);
    let mut vm = vm_with(None);
    assert!(vm.configure(cfg.to_string().as_bytes()).unwrap());
    answer_background(&mut vm);
    let t = token(json!({}));
    let spoof: &[(&str, &[u8])] = &[("x-kcpep-permissions", b"[\"all\"]")];
    for _ in 0..2 {
        // the first asks Keycloak, the second is a memo hit
        let req = get(&mut vm, "/account/1", Some(&bearer(&t)), spoof);
        if let Some(c) = callouts(&mut vm).pop() {
            let granted =
                br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"]}]"#;
            vm.respond(c.token, 200, &[], granted).unwrap();
        }
        assert!(vm.continued(req));
        assert_eq!(vm.request_header(req, "x-kcpep-permissions"), None);
        let state = vm.stream_property(req, &["kcpep.permissions"]).unwrap();
        assert!(String::from_utf8(state).unwrap().contains("account:view"));
        vm.finish(req).unwrap();
    }
}

/// How many requests a profile runs: KCPEP_PROFILE_REQUESTS, else `default`.
fn profile_requests(default: u32) -> u32 {
    std::env::var("KCPEP_PROFILE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `make profile`: the memo-hit path, many times, in one VM, under `perf record` (with
/// KCPEP_PERFMAP the guest's compiled functions are named; build the module unstripped).
#[test]
#[ignore = "make profile runs it under perf"]
fn hit_path_profile() {
    let n = profile_requests(200_000);
    let t = token(json!({}));
    let mut vm = after_one_grant(Vm::new(host::module()).unwrap(), &t);
    let auth = bearer(&t);
    let started = std::time::Instant::now();
    for _ in 0..n {
        let req = get(&mut vm, "/account/1", Some(&auth), &[]);
        assert!(vm.continued(req));
        vm.finish(req).unwrap();
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    eprintln!("profile: {n} memo hits, {per:.2} us each under wasmtime (host harness included)");
}

#[test]
fn a_lazily_loaded_path_is_looked_up_once_for_all_workers() {
    let cfg = json!({"realm": "bank", "auth-server-url": "http://kc:8080", "resource": "bank-api",
                     "credentials": {"secret": "s3cret"},
                     "policy-enforcer": {"lazy-load-paths": true}})
    .to_string()
    .into_bytes();
    let shared = SharedData::new();
    let mut a = vm_with(Some(shared.clone()));
    assert!(a.configure(&cfg).unwrap());
    answer_background(&mut a);
    let mut b = vm_with(Some(shared.clone()));
    assert!(b.configure(&cfg).unwrap());
    answer_background(&mut b);
    let t = token(json!({}));
    get(&mut a, "/reports/9", Some(&bearer(&t)), &[]);
    let lookup = a.take_callouts().pop().unwrap();
    assert!(String::from_utf8_lossy(lookup.header(":path").unwrap()).contains("uri=/reports/9"));
    a.respond(
        lookup.token,
        200,
        &[],
        br#"[{"_id":"rep","name":"Lazy Report","uris":["/reports/{id}"],"resource_scopes":[{"name":"report:view"}]}]"#,
    )
    .unwrap();
    assert!(callouts(&mut a)[0]
        .header(":path")
        .unwrap()
        .ends_with(b"/token"));
    // worker b resolves the path from shared data: no lookup of its own
    get(&mut b, "/reports/9", Some(&bearer(&t)), &[]);
    assert!(b
        .take_callouts()
        .iter()
        .all(|c| !String::from_utf8_lossy(c.header(":path").unwrap()).contains("resource_set")));
    assert!(shared_keys(&shared)
        .iter()
        .any(|k| k.starts_with("kcpep/v1/pc/") && k.contains("/bank/bank-api/")));
}

#[test]
fn one_client_id_in_two_realms_never_shares_a_path_lookup() {
    // The same client id in two realms (a tenant layout) on one process: realm tenant-2's worker
    // must ask its own Keycloak realm, not take realm bank's resource (a foreign resource id).
    let cfg = |realm: &str| {
        json!({"realm": realm, "auth-server-url": "http://kc:8080", "resource": "bank-api",
               "credentials": {"secret": "s3cret"},
               "policy-enforcer": {"lazy-load-paths": true},
               "kcpep": {"issuer": ISSUER}})
        .to_string()
        .into_bytes()
    };
    let shared = SharedData::new();
    let mut a = vm_with(Some(shared.clone()));
    assert!(a.configure(&cfg("bank")).unwrap());
    answer_background(&mut a);
    let mut b = vm_with(Some(shared.clone()));
    assert!(b.configure(&cfg("tenant-2")).unwrap());
    answer_background(&mut b);
    let t = token(json!({}));
    get(&mut a, "/reports/9", Some(&bearer(&t)), &[]);
    let lookup = a.take_callouts().pop().unwrap();
    a.respond(
        lookup.token,
        200,
        &[],
        br#"[{"_id":"bank-rep","name":"Report","uris":["/reports/{id}"]}]"#,
    )
    .unwrap();
    get(&mut b, "/reports/9", Some(&bearer(&t)), &[]);
    let lookups: Vec<String> = b
        .take_callouts()
        .iter()
        .map(|c| String::from_utf8_lossy(c.header(":path").unwrap()).into_owned())
        .filter(|p| p.contains("resource_set"))
        .collect();
    assert_eq!(lookups.len(), 1, "tenant-2 asks its own realm: {lookups:?}");
    assert!(lookups[0].starts_with("/realms/tenant-2/"), "{lookups:?}");
}

#[test]
fn a_body_ended_by_trailers_is_decided_before_it_goes_on() {
    let mut vm = ready_vm_with(&claims_config(json!({})));
    let t = token(json!({}));
    let req = post(&mut vm, "/account/7", &t, &[("x-branch", b"tokyo")]);
    assert_eq!(
        vm.request_body(req, br#"{"amount": 5}"#, false).unwrap(),
        Some(Action::Pause)
    );
    // HTTP/2 or gRPC: the stream ends with trailers, not with an end-of-stream data frame
    assert_eq!(
        vm.request_trailers(req, &[("grpc-status", "0")]).unwrap(),
        Some(Action::Pause),
        "held until Keycloak answers"
    );
    assert!(vm.forwarded_body(req).is_empty());
    let calls = callouts(&mut vm);
    assert_eq!(pushed_claims(&calls[0])["amount"], json!(["5"]));
    vm.respond(calls[0].token, 403, &[], br#"{"error":"access_denied"}"#)
        .unwrap();
    assert_eq!(vm.local_response(req).unwrap().status, 403);
    assert!(vm.forwarded_body(req).is_empty(), "never forwarded");
}

#[test]
fn background_fetch_failures_are_counted_as_keycloak_errors() {
    let mut vm = vm_with(None);
    assert!(vm.configure(&config()).unwrap());
    vm.tick().unwrap();
    let calls = callouts(&mut vm);
    let discovery = calls
        .iter()
        .find(|c| c.header(":path").unwrap().ends_with(b"/uma2-configuration"))
        .unwrap();
    vm.respond(discovery.token, 503, &[], b"upstream connect error")
        .unwrap();
    let certs = calls
        .iter()
        .find(|c| c.header(":path").unwrap().ends_with(b"/certs"))
        .unwrap();
    vm.fail_callout(certs.token).unwrap();
    assert_eq!(vm.metric("kcpep.keycloak.errors"), Some(1));
    assert_eq!(vm.metric("kcpep.keycloak.timeouts"), Some(1));
    assert!(vm
        .histogram("kcpep.keycloak.latency_ms")
        .is_some_and(|h| h.len() == 2));
}

#[test]
fn a_body_that_arrives_while_keycloak_is_asked_is_held_until_the_decision() {
    // Envoy with allow_on_headers_stop_iteration delivers body callbacks to a filter whose
    // headers are paused; going on from one of them would release the undecided request.
    let mut vm = ready_vm();
    for (status, body, forwarded) in [
        (403, &br#"{"error":"access_denied"}"#[..], false),
        (
            200,
            &br#"[{"rsid":"rid-1","rsname":"View Account Resource"}]"#[..],
            true,
        ),
    ] {
        let t = token(json!({"jti": status.to_string()})); // each its own decision
        let auth = bearer(&t);
        let h: Vec<(&str, &[u8])> = vec![
            (":method", b"GET"),
            (":path", b"/account/1"),
            (":authority", b"bank.local"),
            (":scheme", b"http"),
            ("authorization", &auth),
        ];
        let req = vm.request_with(&h, false).unwrap();
        assert_eq!(vm.action(req), Action::Pause);
        assert_eq!(vm.local_response(req).map(|r| r.status), None);
        assert_eq!(
            vm.request_body(req, b"transfer", false).unwrap(),
            Some(Action::Pause)
        );
        assert_eq!(
            vm.request_body(req, b" all", true).unwrap(),
            Some(Action::Pause)
        );
        assert!(!vm.continued(req), "nothing goes on before the decision");
        let c = callouts(&mut vm).pop().unwrap();
        vm.respond(c.token, status, &[], body).unwrap();
        assert_eq!(vm.continued(req), forwarded);
        let expected: &[u8] = if forwarded { b"transfer all" } else { b"" };
        assert_eq!(vm.forwarded_body(req), expected);
    }
    assert!(vm.failed().is_none());
}

#[test]
fn body_claims_hold_the_request_even_where_envoy_would_not_deliver_the_body() {
    // Without allow_on_headers_stop_iteration Envoy stops every callback while the headers are
    // paused: the body never comes, and the request waits rather than going on undecided.
    let mut vm = vm_with(None);
    vm.without_stop_iteration();
    assert!(vm.configure(&claims_config(json!({}))).unwrap());
    answer_background(&mut vm);
    let t = token(json!({}));
    let req = post(&mut vm, "/account/7", &t, &[("x-branch", b"tokyo")]);
    assert_eq!(vm.action(req), Action::Pause);
    assert_eq!(
        vm.request_body(req, br#"{"amount": 900}"#, true).unwrap(),
        None
    );
    assert!(!vm.continued(req));
    assert!(callouts(&mut vm).is_empty());
    assert!(vm.local_response(req).is_none());
}

#[test]
fn without_the_host_function_the_default_module_refuses_to_start_and_says_why() {
    // Envoy always has verify_signature; another proxy-wasm host may not. The default module
    // carries no signature code, so it cannot verify anything there: it refuses the
    // configuration (Envoy then fails the filter closed) and names the module that can.
    let mut vm = Vm::new(host::module())
        .unwrap()
        .allow_clusters(&["keycloak"]);
    vm.set_time_ms(NOW_MS);
    assert!(!vm.configure(&config()).unwrap());
    assert!(
        vm.log_contains("keycloak_pep_rust_crypto.wasm"),
        "{:?}",
        vm.logs()
    );
}

fn sign_es256(claims: &Value) -> String {
    let der = base64::engine::general_purpose::STANDARD
        .decode(fixture("ec-private.pk8.b64"))
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("ec-1".into());
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_ec_der(&der)).unwrap()
}

#[test]
fn es256_tokens_are_verified_by_the_host() {
    // The realm's EC key (ec-1 in the fixtures' JWKS): its SPKI and the token's JOSE signature
    // converted to DER go to verify_signature; a signature of another key is refused there.
    let calls = Arc::new(AtomicU32::new(0));
    let mut vm = envoy_like(Vm::new(host::module()).unwrap(), calls.clone());
    assert!(vm.configure(&config()).unwrap());
    answer_background(&mut vm);
    let now = (NOW_MS / 1000) as i64;
    let claims = json!({"iss": ISSUER, "sub": "u1", "typ": "Bearer", "exp": now + 300, "iat": now});
    let good = sign_es256(&claims);
    let before = calls.load(Ordering::SeqCst);
    let req = get(&mut vm, "/account/1", Some(&bearer(&good)), &[]);
    assert_eq!(vm.action(req), Action::Pause, "verified, asking Keycloak");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "checked by the host"
    );
    // the same claims signed by the RSA key under the EC key's id: refused
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, _) = rest.split_once('.').unwrap();
    let other = sign(&claims);
    let foreign_sig = other.rsplit_once('.').unwrap().1;
    let forged = format!("{head}.{payload}.{foreign_sig}");
    let req = get(&mut vm, "/account/1", Some(&bearer(&forged)), &[]);
    assert_eq!(vm.local_response(req).unwrap().status, 401);
    // and a flipped bit in a real ES256 signature
    let mut flipped = good.into_bytes();
    let n = flipped.len() - 5;
    flipped[n] = if flipped[n] == b'A' { b'B' } else { b'A' };
    let req = get(
        &mut vm,
        "/account/1",
        Some(&bearer(std::str::from_utf8(&flipped).unwrap())),
        &[],
    );
    assert_eq!(vm.local_response(req).unwrap().status, 401);
}

#[test]
fn realm_keys_the_host_cannot_check_are_named_with_the_way_out() {
    // A realm whose keys are RSA-PSS and EdDSA only: the default module cannot check either.
    // It says so when the keys arrive, names them and the rust-crypto module, and stays closed.
    let mut vm = vm_with(None);
    assert!(vm.configure(&config()).unwrap());
    let mut rsa: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let keys = rsa["keys"].as_array_mut().unwrap();
    keys.retain(|k| k["kty"] == "RSA" && k["use"] != "enc");
    keys[0]["alg"] = json!("PS256");
    keys[0]["kid"] = json!("pss-1");
    keys.push(
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "use": "sig", "alg": "EdDSA",
                     "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
    );
    answer_background_with(&mut vm, rsa.to_string().as_bytes());
    assert!(
        vm.log_contains("pss-1 (PS256)") && vm.log_contains("ed-1 (EdDSA)"),
        "{:?}",
        vm.logs()
    );
    assert!(vm.log_contains("make wasm-rust-crypto"));
    let req = get(&mut vm, "/account/1", Some(&bearer(&token(json!({})))), &[]);
    let status = vm.local_response(req).map(|r| r.status);
    assert!(matches!(status, Some(401 | 503)), "{status:?}");
    assert!(vm.failed().is_none());
}

/// `kcpep.wasm.memory_bytes` is the VM's linear memory after a tick, and follows its growth:
/// the part of Envoy's RSS that is the module's (docs/soak.md reads it).
#[test]
fn the_memory_gauge_follows_the_vms_linear_memory() {
    let mut a = ready_vm();
    a.tick().unwrap();
    let first = a.memory_size() as i64;
    assert_eq!(a.metric("kcpep.wasm.memory_bytes"), Some(first));
    for i in 0..200 {
        let u = token(json!({"jti": i, "pad": "x".repeat(2000)}));
        get(&mut a, "/account/1", Some(&bearer(&u)), &[]);
        for c in callouts(&mut a) {
            a.respond(c.token, 403, &[], br#"{"error":"access_denied"}"#)
                .unwrap();
        }
    }
    a.tick().unwrap();
    let now = a.memory_size() as i64;
    assert_eq!(a.metric("kcpep.wasm.memory_bytes"), Some(now));
}

/// Not a test: prints the wasm memory a VM holds per distinct token (`--ignored --nocapture`;
/// about 7 minutes, the test's signing is slow). Each token is verified, remembered, asked of
/// Keycloak (granted) and memoized. 2026-12-02: about 700 B per token until the verified tokens
/// fill (4,096), then flat (before the claims were trimmed: about 5 KB).
#[test]
#[ignore]
fn print_memory_per_token() {
    let mut a = ready_vm();
    let grant = br#"[{"rsid":"r1","rsname":"View Account Resource","scopes":["account:view"]}]"#;
    let mut at = Vec::new();
    for i in 0..6000 {
        let u = token(
            json!({"jti": format!("{i}"), "sub": format!("user-{i}"), "aud": ["bank-api", "account"],
            "azp": "demo-cli", "sid": "0a1b2c3d-4e5f-6789-abcd-ef0123456789", "realm_access": {"roles": ["a", "b", "c"]},
            "preferred_username": format!("soak-{i:04}"), "email": format!("soak-{i:04}@example.com"), "scope": "openid profile email"}),
        );
        let id = get(&mut a, "/account/1", Some(&bearer(&u)), &[]);
        for c in callouts(&mut a) {
            a.respond(c.token, 200, &[("content-type", "application/json")], grant)
                .unwrap();
        }
        a.finish(id).unwrap();
        if i % 500 == 0 {
            at.push((i, a.memory_size()));
        }
    }
    for w in at.windows(2) {
        let ((i0, m0), (i1, m1)) = (w[0], w[1]);
        println!(
            "tokens {i0:>5}..{i1:>5}: memory {:>9} -> {:>9} B, {:>6.0} B per token",
            m0,
            m1,
            (m1 - m0) as f64 / (i1 - i0) as f64
        );
    }
}

/// The bank enforcer with DPoP-bound tokens enforced and a replay table of `slots` slots (every
/// enforcer says so: the VM's table is the largest any of them asks for), one key allowed all
/// of it.
fn dpop_config(slots: u32) -> Vec<u8> {
    let mut c: Value = serde_json::from_slice(&config()).unwrap();
    c["enforcers"]["bank"]["kcpep"]["sender-constraint"] = json!("if-bound");
    for (_, e) in c["enforcers"].as_object_mut().unwrap() {
        e["kcpep"]["dpop"] = json!({"replay-slots": slots, "replay-share-percent": 100});
    }
    c.to_string().into_bytes()
}

/// A client's P-256 key: its RFC 7638 thumbprint, and proofs for `GET http://bank.local{path}`.
struct DpopKey(p256::ecdsa::SigningKey);

impl DpopKey {
    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn xy(&self) -> (String, String) {
        let p = self.0.verifying_key().to_encoded_point(false);
        (Self::b64(p.x().unwrap()), Self::b64(p.y().unwrap()))
    }

    fn thumbprint(&self) -> String {
        use sha2::Digest;
        let (x, y) = self.xy();
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        Self::b64(&sha2::Sha256::digest(canonical.as_bytes()))
    }

    fn proof(&self, path: &str, token: &str, jti: &str) -> String {
        use p256::ecdsa::signature::Signer;
        use sha2::Digest;
        let (x, y) = self.xy();
        let header = json!({"typ": "dpop+jwt", "alg": "ES256",
                            "jwk": {"kty": "EC", "crv": "P-256", "x": x, "y": y}});
        let claims = json!({"jti": jti, "htm": "GET", "htu": format!("http://bank.local{path}"),
                            "iat": NOW_MS / 1000,
                            "ath": Self::b64(&sha2::Sha256::digest(token.as_bytes()))});
        let input = format!(
            "{}.{}",
            Self::b64(header.to_string().as_bytes()),
            Self::b64(claims.to_string().as_bytes())
        );
        let sig: p256::ecdsa::Signature = self.0.sign(input.as_bytes());
        format!("{input}.{}", Self::b64(&sig.to_bytes()))
    }
}

/// `GET /account/1` with a DPoP-bound token and its proof.
fn dpop_get(vm: &mut Vm, t: &str, proof: &str) -> u32 {
    let auth = format!("DPoP {t}");
    get(
        vm,
        "/account/1",
        Some(auth.as_bytes()),
        &[("dpop", proof.as_bytes())],
    )
}

/// A DPoP-bound token's first request granted and its decision remembered, on a VM whose
/// replay table holds `slots` proofs: what a DPoP hit needs before it is measured.
fn after_one_dpop_grant(vm: Vm, key: &DpopKey, t: &str, slots: u32) -> Vm {
    let mut vm = envoy_like(vm, Arc::new(AtomicU32::new(0)));
    assert!(vm.configure(&dpop_config(slots)).unwrap());
    answer_background(&mut vm);
    let proof = key.proof("/account/1", t, "first");
    let req = dpop_get(&mut vm, t, &proof);
    let c = callouts(&mut vm).pop().expect("a UMA grant");
    let granted =
        br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"]}]"#;
    vm.respond(c.token, 200, &[], granted).unwrap();
    assert!(vm.continued(req));
    vm.finish(req).unwrap();
    vm
}

/// What a DPoP hit costs the host beside a bearer hit's calls (`make profile` prints it): the
/// proof's signature checked by the host, the replay table's two buckets read and one written,
/// its owner's share read and written. The exact list, as for the memo hit.
#[test]
fn a_dpop_hit_makes_only_the_host_calls_it_needs() {
    let key = DpopKey(p256::ecdsa::SigningKey::random(&mut rand::thread_rng()));
    let t = token(json!({"cnf": {"jkt": key.thumbprint()}}));
    let vm = Vm::counting_host_calls(host::module(), SharedData::new()).unwrap();
    let mut vm = after_one_dpop_grant(vm, &key, &t, 1 << 16);
    vm.take_host_calls();
    let proof = key.proof("/account/1", &t, "second");
    let req = dpop_get(&mut vm, &t, &proof);
    assert!(vm.continued(req));
    let calls = vm.take_host_calls();
    eprintln!("dpop hit: {calls:?}");
    let expected = [
        ("proxy_call_foreign_function", 1),
        ("proxy_get_current_time_nanoseconds", 1),
        ("proxy_get_header_map_pairs", 1),
        ("proxy_get_property", 3),
        ("proxy_get_shared_data", 3),
        ("proxy_increment_metric", 2),
        ("proxy_replace_header_map_value", 1),
        ("proxy_set_property", 2),
        ("proxy_set_shared_data", 2),
    ];
    assert_memo_hit(&vm, req, calls, &expected);
    vm.finish(req).unwrap();
}

/// `make profile KCPEP_PROFILE_CASE=dpop`: DPoP hits, each with a proof of its own (signed
/// before the clock starts), in one VM, under `perf record`.
#[test]
#[ignore = "make profile runs it under perf"]
fn dpop_hit_path_profile() {
    let n = profile_requests(20_000);
    let key = DpopKey(p256::ecdsa::SigningKey::random(&mut rand::thread_rng()));
    let t = token(json!({"cnf": {"jkt": key.thumbprint()}}));
    let mut vm = after_one_dpop_grant(Vm::new(host::module()).unwrap(), &key, &t, 1 << 20);
    let proofs: Vec<String> = (0..n)
        .map(|i| key.proof("/account/1", &t, &format!("p{i}")))
        .collect();
    let started = std::time::Instant::now();
    for proof in &proofs {
        let req = dpop_get(&mut vm, &t, proof);
        assert!(vm.continued(req));
        vm.finish(req).unwrap();
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    eprintln!("profile: {n} DPoP hits, {per:.2} us each under wasmtime (host harness and its ES256 check included)");
}

#[test]
fn a_dpop_proof_is_taken_once_across_workers_and_a_full_table_refuses() {
    let shared = SharedData::new();
    let mut workers = [0, 1].map(|_| {
        let mut vm = vm_with(Some(shared.clone()));
        assert!(vm.configure(&dpop_config(64)).unwrap());
        answer_background(&mut vm);
        vm
    });
    let key = DpopKey(p256::ecdsa::SigningKey::random(&mut rand::thread_rng()));
    let t = token(json!({"cnf": {"jkt": key.thumbprint()}}));
    let send = |vm: &mut Vm, jti: &str| {
        let proof = key.proof("/account/1", &t, jti);
        let auth = format!("DPoP {t}");
        get(
            vm,
            "/account/1",
            Some(auth.as_bytes()),
            &[("dpop", proof.as_bytes())],
        )
    };
    // the first proof passes on worker 0 (Keycloak grants; the decision is cached)
    let [a, b] = &mut workers;
    let req = send(a, "first");
    let c = callouts(a).pop().expect("a UMA grant");
    let granted =
        br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"]}]"#;
    a.respond(c.token, 200, &[], granted).unwrap();
    assert!(a.continued(req));
    // the same proof on worker 1: a replay, refused before Keycloak is asked
    let req = send(b, "first");
    let r = b.local_response(req).expect("refused");
    assert_eq!(r.status, 401);
    let challenge = String::from_utf8_lossy(r.header("www-authenticate").unwrap()).to_string();
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert!(
        challenge.contains("error=\"invalid_dpop_proof\""),
        "{challenge}"
    );
    assert_eq!(b.metric("kcpep.binding.replay"), Some(1));
    assert!(callouts(b).is_empty());
    // 99 new proofs, alternating workers, into a table of 64 slots: the table takes what it
    // holds (two choices of 8 buckets of 8: nearly all of it) and refuses the rest, forgetting
    // none of the proofs it took
    let (mut taken, mut refused) = (1, 0);
    for n in 0..99 {
        let vm = &mut workers[n % 2];
        let req = send(vm, &format!("proof-{n}"));
        if vm.continued(req) {
            taken += 1;
        } else {
            let r = vm.local_response(req).expect("allowed or refused");
            assert_eq!(r.status, 401);
            refused += 1;
        }
    }
    assert_eq!(taken + refused, 100);
    assert!((56..=64).contains(&taken), "{taken} proofs taken");
    // refused as the table full, or (this one key holding every slot, its share being all of
    // them) as the key over its share
    let full: i64 = workers
        .iter()
        .flat_map(|vm| {
            ["replay_table_full", "replay_key_share"]
                .map(|c| vm.metric(&format!("kcpep.binding.{c}")).unwrap_or(0))
        })
        .sum();
    assert_eq!(full, refused);
    for n in 0..99 {
        let vm = &mut workers[(n + 1) % 2];
        let req = send(vm, &format!("proof-{n}"));
        assert!(!vm.continued(req), "proof-{n} taken twice");
    }
}
