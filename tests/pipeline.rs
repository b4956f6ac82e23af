//! The request pipeline natively, on the in-memory host: workers sharing one store as Envoy's
//! do, Keycloak's answers given by the test, time moved by the test. The rules between the
//! enforcer and the proxy live here (the memo, parking and waking, coalescing across workers,
//! the decision table, lost callouts, the filter's own headers); the ABI suite keeps what tests
//! the proxy-wasm interface itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use keycloak_pep::enforce::events::Event;
use keycloak_pep::enforce::step::CacheUse;
use keycloak_pep::pipeline::memory::{Callout, Connection, MemoryHost, Shared};
use keycloak_pep::pipeline::{Go, Worker};
use keycloak_pep::wire::http::Answer;
use serde_json::{json, Value};

const NOW_MS: i64 = 1_800_000_000_000;
const ISSUER: &str = "http://kc:8080/realms/bank";
const GRANTED: &[u8] =
    br#"[{"rsid":"rid-1","rsname":"View Account Resource","scopes":["account:view"]}]"#;

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

fn config() -> Value {
    json!({
        "enforcers": {
            "bank": bank_enforcer()
        },
        "routes": [{"host": "bank.local", "enforcer": "bank"}]
    })
}

fn token(extra: Value) -> String {
    let now = NOW_MS / 1000;
    let mut c = json!({"iss": ISSUER, "sub": "u1", "typ": "Bearer", "exp": now + 300, "iat": now});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    sign(&c)
}

/// `claims` signed with the realm's test key (`tests/fixtures`), as Keycloak signs.
fn sign(claims: &Value) -> String {
    let der = base64::engine::general_purpose::STANDARD
        .decode(fixture("rsa-private.der.b64"))
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_rsa_der(&der)).unwrap()
}

/// One worker of the proxy and its host.
struct Node {
    worker: Worker,
    host: MemoryHost,
}

impl Node {
    /// A worker configured with `config`, its start-up fetches answered as Keycloak would.
    fn new(shared: &Shared, config: &Value, nonce: u64) -> Node {
        let mut host = MemoryHost::new(shared);
        let bytes = config.to_string().into_bytes();
        let worker = Worker::configure(&bytes, None, nonce, &mut host).unwrap();
        let mut node = Node { worker, host };
        node.answer_background();
        node
    }

    fn answer_background(&mut self) {
        for _ in 0..5 {
            self.worker.on_tick(&mut self.host);
            let calls = self.host.take_calls();
            if calls.is_empty() {
                return;
            }
            for c in calls {
                let path = c.request.path.as_str();
                let body: Vec<u8> = if path.ends_with("/uma2-configuration") {
                    json!({"issuer": ISSUER,
                           "token_endpoint": format!("{ISSUER}/protocol/openid-connect/token"),
                           "jwks_uri": format!("{ISSUER}/protocol/openid-connect/certs")})
                    .to_string()
                    .into_bytes()
                } else if path.ends_with("/certs") {
                    fixture("jwks.json")
                } else if path.ends_with("/token") {
                    br#"{"access_token":"PAT-TOKEN","expires_in":300}"#.to_vec()
                } else if path.contains("/resource_set?") {
                    br#"[{"_id":"rid-1","name":"View Account Resource","uris":["/account/{id}"],"scopes":[{"name":"account:view"}]}]"#.to_vec()
                } else {
                    panic!("unexpected background callout {path}");
                };
                self.respond(c.token, 200, &body);
            }
        }
    }

    /// A GET with the bearer token `t` (if any) and `extra` headers, the whole request in its
    /// headers.
    fn get(&mut self, id: u32, path: &str, t: Option<&str>, extra: &[(&str, &str)]) -> Go {
        let auth = t.map(|t| format!("Bearer {t}"));
        let mut owned: Vec<(String, String)> = vec![
            (":method".into(), "GET".into()),
            (":path".into(), path.into()),
            (":authority".into(), "bank.local".into()),
            (":scheme".into(), "http".into()),
        ];
        if let Some(a) = auth {
            owned.push(("authorization".into(), a));
        }
        owned.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut headers: Vec<(&[u8], &[u8])> = owned
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        let props = Connection::default();
        self.worker
            .on_request_headers(&mut self.host, id, &mut headers, true, &props)
    }

    fn respond(&mut self, token: u32, status: u16, body: &[u8]) {
        let answer = Answer::Http { status, body };
        self.worker.on_call_answer(&mut self.host, token, answer);
    }

    /// The callouts sent since the last look, template lookups answered "no such instance" (as
    /// the ABI suite does).
    fn calls(&mut self) -> Vec<Callout> {
        let mut out = Vec::new();
        loop {
            let (lookups, rest): (Vec<_>, Vec<_>) = self
                .host
                .take_calls()
                .into_iter()
                .partition(|c| c.request.path.contains("/resource_set?uri="));
            out.extend(rest);
            if lookups.is_empty() {
                return out;
            }
            for c in lookups {
                self.respond(c.token, 200, b"[]");
            }
        }
    }

    /// Let on: at once (`go`) or later, from a callout answer or a tick.
    fn allowed(&self, id: u32, go: Go) -> bool {
        let s = self.host.stream(id);
        s.reply.is_none() && (go == Go::Continue || s.continued)
    }

    fn status(&self, id: u32) -> Option<u16> {
        self.host.stream(id).reply.map(|r| r.status)
    }

    /// How far `name` (a counter, `kcpep.<name>` in Envoy) moved.
    fn counter(&self, name: &str) -> usize {
        let events = self.host.events.iter().copied();
        let counters = events.flat_map(|e| e.counters().into_iter().flatten());
        counters.filter(|c| c.name() == name).count()
    }

    fn hits(&self) -> usize {
        let hit = |e: &&Event| matches!(e, Event::Allowed(CacheUse::Hit));
        self.host.events.iter().filter(hit).count()
    }
}

fn grant_call(calls: &[Callout]) -> &Callout {
    calls
        .iter()
        .find(|c| c.request.path.ends_with("/protocol/openid-connect/token"))
        .expect("a UMA grant")
}

#[test]
fn a_repeated_request_is_answered_from_the_memo_until_its_decision_expires() {
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &config(), 1);
    let t = token(json!({}));
    let go = a.get(1, "/account/1", Some(&t), &[]);
    assert_eq!(go, Go::Pause);
    let calls = a.calls();
    assert_eq!(calls.len(), 1);
    a.respond(grant_call(&calls).token, 200, GRANTED);
    assert!(a.allowed(1, go));
    assert_eq!(a.hits(), 0);
    // the request's UMA grant is a grant; the token endpoint also served the background's PAT
    assert_eq!(a.counter("keycloak.grants"), 1);
    assert_eq!(a.counter("keycloak.calls.token"), 2);
    // the same token, method and path: let on at once, with the permissions, counted as a hit
    let go = a.get(2, "/account/1", Some(&t), &[]);
    assert_eq!(go, Go::Continue);
    assert!(a.calls().is_empty());
    assert_eq!(a.hits(), 1);
    let perms = a.host.stream(2).permissions.unwrap();
    assert!(perms.contains("account:view"), "{perms}");
    let header = a
        .host
        .stream(2)
        .headers
        .into_iter()
        .find(|(k, _)| k == "x-kcpep-permissions");
    assert_eq!(header, Some(("x-kcpep-permissions".into(), Some(perms))));
    // a forged copy of the token is not the same token
    let mut forged = t.clone().into_bytes();
    let i = forged.len() - 20;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    a.get(3, "/account/1", Some(&forged), &[]);
    assert_eq!(a.status(3), Some(401));
    // the decision's lifespan (30 s by default) bounds the memo too
    shared.advance(29_000);
    assert_eq!(a.get(4, "/account/1", Some(&t), &[]), Go::Continue);
    shared.advance(1_001);
    assert_eq!(a.get(5, "/account/1", Some(&t), &[]), Go::Pause);
    assert_eq!(a.calls().len(), 1, "Keycloak asked again");
}

#[test]
fn identical_concurrent_misses_make_one_callout() {
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &config(), 1);
    let mut b = Node::new(&shared, &config(), 2);
    let t = token(json!({}));
    let first = a.get(1, "/account/1", Some(&t), &[]);
    let same_worker = a.get(2, "/account/1", Some(&t), &[]);
    let other_worker = b.get(3, "/account/1", Some(&t), &[]);
    let calls = a.calls();
    assert_eq!(calls.len(), 1, "one UMA call for three requests");
    assert!(b.calls().is_empty());
    assert_eq!((same_worker, other_worker), (Go::Pause, Go::Pause));
    assert!(
        b.host.tick_ms <= 10,
        "waiting requests are polled from the tick"
    );
    let coalesced = |n: &Node| {
        let c = |e: &&Event| matches!(e, Event::Coalesced);
        n.host.events.iter().filter(c).count()
    };
    assert_eq!((coalesced(&a), coalesced(&b)), (1, 1));
    a.respond(calls[0].token, 200, GRANTED);
    assert!(a.allowed(1, first));
    assert!(
        a.allowed(2, same_worker),
        "woken by the answer on its own worker"
    );
    assert!(
        !b.allowed(3, other_worker),
        "the other worker learns it on its tick"
    );
    b.worker.on_tick(&mut b.host);
    assert!(b.allowed(3, other_worker), "woken by its tick");
    assert!(b.calls().is_empty());
    assert!(b.host.stream(3).permissions.is_some());
}

#[test]
fn a_waiter_asks_keycloak_itself_when_the_claim_lapses() {
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &config(), 1);
    let mut b = Node::new(&shared, &config(), 2);
    let t = token(json!({}));
    a.get(1, "/account/1", Some(&t), &[]);
    assert_eq!(a.calls().len(), 1);
    // worker a's stream ends before Keycloak answers: its claim stays until it lapses
    a.worker.on_stream_gone(1);
    b.get(2, "/account/1", Some(&t), &[]);
    b.worker.on_tick(&mut b.host);
    assert!(b.calls().is_empty() && b.host.stream(2) == Default::default());
    shared.advance(1_001);
    b.worker.on_tick(&mut b.host);
    let calls = b.calls();
    assert_eq!(calls.len(), 1, "asks itself after the bound");
    b.respond(calls[0].token, 403, br#"{"error":"access_denied"}"#);
    assert_eq!(b.status(2), Some(403));
}

#[test]
fn an_answer_for_a_stream_that_ended_is_dropped() {
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &config(), 1);
    let t = token(json!({}));
    a.get(1, "/account/1", Some(&t), &[]);
    let waiting = a.get(2, "/account/1", Some(&t), &[]);
    assert_eq!(waiting, Go::Pause);
    let calls = a.calls();
    a.worker.on_stream_gone(1);
    a.worker.on_stream_gone(2);
    // the proxy drops the answers of a context that ended; one arriving anyway changes nothing
    a.respond(calls[0].token, 200, GRANTED);
    assert_eq!(a.host.stream(1), Default::default());
    a.worker.on_tick(&mut a.host);
    assert_eq!(a.host.stream(2), Default::default());
    // the claim of the ended request lapses; the next request asks Keycloak itself
    shared.advance(1_001);
    assert_eq!(a.get(3, "/account/1", Some(&t), &[]), Go::Pause);
    assert_eq!(a.calls().len(), 1);
}

#[test]
fn decisions_are_shared_by_workers_and_never_hold_the_token() {
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &config(), 1);
    let t = token(json!({}));
    let go = a.get(1, "/account/1", Some(&t), &[]);
    let calls = a.calls();
    a.respond(grant_call(&calls).token, 200, GRANTED);
    assert!(a.allowed(1, go));
    assert_eq!(a.host.cache_entries, 1, "the gauge counts the slot taken");
    // a worker started later takes it from the table: no callout
    let mut b = Node::new(&shared, &config(), 2);
    assert_eq!(b.get(2, "/account/1", Some(&t), &[]), Go::Continue);
    assert!(b.calls().is_empty());
    let data = shared.data.borrow();
    let keys: Vec<String> = data.keys().map(str::to_string).collect();
    drop(data);
    assert!(keys.iter().any(|k| k.starts_with("kcpep/v1/dc/")));
    for key in keys {
        let value = {
            use keycloak_pep::store::Cas;
            shared.data.borrow_mut().read(&key).0.unwrap_or_default()
        };
        assert!(
            !value.windows(20).any(|w| w == &t.as_bytes()[..20]),
            "{key} holds the token"
        );
    }
}

#[test]
fn an_expired_allow_is_served_while_keycloak_fails_within_stale_on_error() {
    let mut cfg = config();
    cfg["enforcers"]["bank"]["kcpep"]["decision-cache"] =
        json!({"lifespan-ms": 1000, "stale-on-error-ms": 60000});
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &cfg, 1);
    let t = token(json!({}));
    let go = a.get(1, "/account/1", Some(&t), &[]);
    let calls = a.calls();
    a.respond(grant_call(&calls).token, 200, GRANTED);
    assert!(a.allowed(1, go));
    shared.advance(2_000);
    let go = a.get(2, "/account/1", Some(&t), &[]);
    assert_eq!(go, Go::Pause, "expired: Keycloak is asked");
    let calls = a.calls();
    a.worker
        .on_call_answer(&mut a.host, calls[0].token, Answer::NoAnswer);
    assert!(a.allowed(2, go), "served stale");
    let stale = |e: &&Event| matches!(e, Event::Allowed(CacheUse::Stale));
    assert_eq!(a.host.events.iter().filter(stale).count(), 1);
    // beyond the window, the closed default
    shared.advance(60_000);
    a.get(3, "/account/1", Some(&t), &[]);
    let calls = a.calls();
    a.worker
        .on_call_answer(&mut a.host, calls[0].token, Answer::NoAnswer);
    assert_eq!(a.status(3), Some(503));
}

#[test]
fn the_filters_own_headers_are_removed_from_the_client_request() {
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &config(), 1);
    let go = a.get(
        1,
        "/public/x",
        None,
        &[
            ("x-kcpep-permissions", "[\"all\"]"),
            ("X-Kcpep-Permissions", "1"),
        ],
    );
    assert_eq!(go, Go::Continue, "a DISABLED path");
    let removed = a.host.stream(1).headers;
    assert!(
        removed.contains(&("x-kcpep-permissions".to_string(), None)),
        "{removed:?}"
    );
}

#[test]
fn a_host_no_route_selects_is_answered_without_asking_keycloak() {
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &config(), 1);
    let t = token(json!({}));
    let owned: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":path", b"/account/1"),
        (b":authority", b"elsewhere.local"),
        (b"authorization", format!("Bearer {t}").into_bytes().leak()),
    ];
    let mut headers = owned;
    let go =
        a.worker
            .on_request_headers(&mut a.host, 1, &mut headers, true, &Connection::default());
    assert_eq!(go, Go::Pause);
    let reply = a.host.stream(1).reply.expect("answered by the filter");
    assert!(reply.status >= 400, "{reply:?}");
    assert!(a.calls().is_empty());
}

#[test]
fn a_back_channel_logout_on_one_worker_ends_the_session_on_the_others_by_their_tick() {
    let mut cfg = config();
    cfg["enforcers"]["bank"]["kcpep"]["backchannel-logout"] =
        json!({"path": "/kcpep/backchannel-logout", "audiences": ["demo-cli"]});
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &cfg, 1);
    let mut b = Node::new(&shared, &cfg, 2);
    assert!(
        b.host.tick_ms <= 250,
        "the ring is read at least every 250 ms"
    );
    let t = token(json!({"sid": "s-1"}));
    let go = b.get(1, "/account/1", Some(&t), &[]);
    let calls = b.calls();
    b.respond(grant_call(&calls).token, 200, GRANTED);
    assert!(b.allowed(1, go));
    assert_eq!(
        b.get(2, "/account/1", Some(&t), &[]),
        Go::Continue,
        "a memo hit"
    );
    // Keycloak posts the logout token to worker a; its body comes after the headers
    let now = NOW_MS / 1000;
    let logout = sign(
        &json!({"iss": ISSUER, "aud": "demo-cli", "iat": now, "exp": now + 60,
                              "jti": "j-1", "sid": "s-1", "sub": "u1",
                              "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
    );
    let body = format!("logout_token={logout}").into_bytes();
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":path", b"/kcpep/backchannel-logout"),
        (b":authority", b"bank.local"),
        (b"content-type", b"application/x-www-form-urlencoded"),
    ];
    let props = Connection::default();
    let go = a
        .worker
        .on_request_headers(&mut a.host, 10, &mut headers, false, &props);
    assert_eq!(go, Go::Pause);
    assert_eq!(a.status(10), None, "waits for the body");
    a.host.bodies.insert(10, body.clone());
    a.worker.on_request_body(&mut a.host, 10, body.len(), true);
    assert_eq!(a.status(10), Some(200));
    // the same token again (a replay) ends nothing more and is refused
    a.host.bodies.insert(11, body.clone());
    let mut headers = headers.clone();
    a.worker
        .on_request_headers(&mut a.host, 11, &mut headers, false, &props);
    a.worker.on_request_body(&mut a.host, 11, body.len(), true);
    assert_eq!(a.status(11), Some(400));
    // worker b reads the ring on its tick: the memo no longer serves the session
    b.worker.on_tick(&mut b.host);
    assert_eq!(b.get(3, "/account/1", Some(&t), &[]), Go::Pause);
    assert_eq!(b.status(3), Some(401));
    assert!(b.calls().is_empty());
    // another session is not ended
    let other = token(json!({"sid": "s-2"}));
    assert_eq!(b.get(4, "/account/1", Some(&other), &[]), Go::Pause);
    assert_eq!(b.calls().len(), 1);
}

impl Node {
    /// A stream's decision record, as Envoy's filter state `wasm.kcpep.decision` holds it.
    fn record(&self, id: u32) -> Value {
        let r = self.host.stream(id).record.expect("a decision record");
        serde_json::from_str(&r).unwrap()
    }
}

#[test]
fn every_verdict_leaves_a_decision_record_that_says_where_it_came_from() {
    let mut cfg = config();
    cfg["enforcers"]["bank"]["kcpep"]["decision-cache"] =
        json!({"lifespan-ms": 1000, "stale-on-error-ms": 60000});
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &cfg, 1);
    let mut b = Node::new(&shared, &cfg, 2);
    let t = token(json!({}));
    // Keycloak asked: the matched path, its resource and scopes, the grant, the wait on Keycloak
    let go = a.get(1, "/account/1", Some(&t), &[]);
    let calls = a.calls();
    // meanwhile on the other worker: the same question, which waits for a's call
    let waiting = b.get(2, "/account/1", Some(&t), &[]);
    assert!(b.calls().is_empty());
    shared.advance(7);
    a.respond(grant_call(&calls).token, 200, GRANTED);
    assert!(a.allowed(1, go));
    let r = a.record(1);
    assert_eq!(
        (&r["outcome"], &r["status"], &r["source"], &r["keycloak_ms"]),
        (&json!("allow"), &json!(200), &json!("keycloak"), &json!(7))
    );
    assert_eq!(
        (&r["enforcer"], &r["client"], &r["subject"]),
        (&json!("bank"), &json!("bank-api"), &json!("u1"))
    );
    assert_eq!(
        (&r["path"], &r["resource"], &r["scopes"]),
        (
            &json!("/account/{id}"),
            &json!("View Account Resource"),
            &json!(["account:view"])
        )
    );
    assert_eq!(r["granted"][0]["scopes"], json!(["account:view"]));
    // the other worker's request waited for that call
    b.worker.on_tick(&mut b.host);
    assert!(b.allowed(2, waiting));
    assert_eq!(b.record(2)["source"], "coalesced");
    // on a third worker: from the decision table; again on a: from its memo, still naming who
    // and what
    let mut c = Node::new(&shared, &cfg, 3);
    c.get(3, "/account/1", Some(&t), &[]);
    c.calls();
    assert_eq!(c.record(3)["source"], "table");
    a.get(4, "/account/1", Some(&t), &[]);
    let r = a.record(4);
    assert_eq!(
        (&r["source"], &r["subject"], &r["path"]),
        (&json!("memo"), &json!("u1"), &json!("/account/{id}"))
    );
    // Keycloak fails after the decision expired: the stale allow says so
    shared.advance(2_000);
    let go = a.get(5, "/account/1", Some(&t), &[]);
    let calls = a.calls();
    a.worker
        .on_call_answer(&mut a.host, calls[0].token, Answer::NoAnswer);
    assert!(a.allowed(5, go));
    assert_eq!(a.record(5)["source"], "stale");
    // a rule of the filter: no token
    a.get(6, "/account/1", None, &[]);
    let r = a.record(6);
    assert_eq!(
        (&r["outcome"], &r["status"], &r["source"], &r["reason"]),
        (
            &json!("deny"),
            &json!(401),
            &json!("rule"),
            &json!("no token")
        )
    );
    assert!(r.get("subject").is_none());
    // no record names the token
    for (n, id) in [(&a, 1), (&b, 2), (&c, 3), (&a, 4), (&a, 5), (&a, 6)] {
        let raw = n.host.stream(id).record.unwrap();
        assert!(!raw.contains(&t[..40]), "record {id} holds the token");
    }
}

#[test]
fn a_dry_run_allow_records_what_it_would_have_answered_and_records_can_be_turned_off() {
    let mut cfg = config();
    cfg["enforcers"]["bank"]["kcpep"]["dry-run"] = json!(true);
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &cfg, 1);
    let go = a.get(1, "/account/1", None, &[]);
    assert!(a.allowed(1, go));
    let r = a.record(1);
    assert_eq!(
        (&r["outcome"], &r["status"], &r["dry_run"]),
        (
            &json!("dry-run-deny"),
            &json!(200),
            &json!({"status": 401, "reason": "no token"})
        )
    );
    cfg["enforcers"]["bank"]["kcpep"]["decision-record"] = json!(false);
    let mut quiet = Node::new(&shared, &cfg, 2);
    quiet.get(2, "/account/1", None, &[]);
    assert!(quiet.host.stream(2).record.is_none());
}

#[test]
fn a_record_can_name_its_subject_by_a_keyed_hash_or_not_at_all() {
    let t = token(json!({}));
    let subject_with = |record: Value| {
        let mut cfg = config();
        cfg["enforcers"]["bank"]["kcpep"]["decision-record"] = record;
        let shared = Shared::at(NOW_MS);
        let mut a = Node::new(&shared, &cfg, 1);
        a.get(1, "/account/1", Some(&t), &[]);
        let calls = a.calls();
        a.respond(grant_call(&calls).token, 200, GRANTED);
        a.record(1)["subject"].clone()
    };
    let key = |k: &str| json!({"subject": "hashed", "subject-key": k});
    let hashed = subject_with(key("a key of sixteen+"));
    let hashed = hashed.as_str().unwrap();
    assert!(
        hashed.starts_with("hmac:") && !hashed.contains("u1"),
        "{hashed}"
    );
    assert_eq!(
        subject_with(key("a key of sixteen+")),
        json!(hashed),
        "stable"
    );
    assert_ne!(subject_with(key("another key, long")), json!(hashed));
    assert_eq!(subject_with(json!({"subject": "omitted"})), Value::Null);
    assert_eq!(subject_with(json!({"subject": "sub"})), json!("u1"));
}

#[test]
fn a_grpc_request_is_answered_in_grpc_status_codes_and_never_redirected() {
    let mut cfg = config();
    cfg["enforcers"]["bank"]["policy-enforcer"]["on-deny-redirect-to"] = json!("/denied");
    let shared = Shared::at(NOW_MS);
    let mut a = Node::new(&shared, &cfg, 1);
    let grpc = [("content-type", "application/grpc")];
    let t = token(json!({}));
    let reply = |n: &Node, id: u32| n.host.stream(id).reply.expect("a local reply");
    let location = |r: &keycloak_pep::enforce::step::Reply| {
        let l = r.headers.iter().find(|(k, _)| k == "location");
        l.map(|(_, v)| v.clone())
    };
    // no token: an HTTP client is sent to on-deny-redirect-to; a gRPC client is told
    // UNAUTHENTICATED, with the Bearer challenge as metadata and no body content type
    a.get(1, "/account/1", None, &[]);
    let http = reply(&a, 1);
    assert_eq!(
        (http.status, location(&http)),
        (302, Some("/denied".into()))
    );
    a.get(2, "/account/1", None, &grpc);
    let r = reply(&a, 2);
    assert_eq!(
        (r.status, r.wire_status(), r.grpc_status),
        (401, 200, Some(16))
    );
    let header = |r: &keycloak_pep::enforce::step::Reply, name: &str| {
        let h = r.wire_headers().into_iter().find(|(k, _)| *k == name);
        h.map(|(_, v)| v.to_string())
    };
    assert!(header(&r, "www-authenticate").is_some());
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/grpc")
    );
    assert_eq!(header(&r, "grpc-message").as_deref(), Some("no token"));
    assert!(r.body.is_empty());
    assert_eq!(a.record(2)["grpc_status"], 16);
    // a path no entry matches: HTTP redirected, gRPC PERMISSION_DENIED saying why
    a.get(3, "/nowhere", Some(&t), &[]);
    a.calls();
    assert_eq!(location(&reply(&a, 3)), Some("/denied".into()));
    a.get(4, "/nowhere", Some(&t), &grpc);
    a.calls();
    let r = reply(&a, 4);
    assert_eq!(
        (r.status, r.grpc_status, location(&r)),
        (403, Some(7), None)
    );
    assert!(r.reason.contains("on-deny-redirect-to"), "{}", r.reason);
    // Keycloak refuses: PERMISSION_DENIED with the reason as its message
    a.get(5, "/account/1", Some(&t), &grpc);
    let calls = a.calls();
    a.respond(
        grant_call(&calls).token,
        403,
        br#"{"error":"access_denied","error_description":"not_authorized"}"#,
    );
    let r = reply(&a, 5);
    assert_eq!((r.status, r.grpc_status), (403, Some(7)));
    assert_eq!(header(&r, "grpc-message"), Some(r.reason.clone()));
    // Keycloak unreachable: UNAVAILABLE
    let t2 = token(json!({"sub": "u2"}));
    a.get(6, "/account/1", Some(&t2), &grpc);
    let calls = a.calls();
    a.worker
        .on_call_answer(&mut a.host, grant_call(&calls).token, Answer::NoAnswer);
    assert_eq!(reply(&a, 6).grpc_status, Some(14));
    // a gRPC-Web request no grpc_web filter translated is answered in gRPC-Web's content type
    let web = [("content-type", "application/grpc-web+proto")];
    a.get(7, "/account/1", None, &web);
    let r = reply(&a, 7);
    assert_eq!(r.grpc_status, Some(16));
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/grpc-web")
    );
}
