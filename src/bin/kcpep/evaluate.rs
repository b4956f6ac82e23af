//! `kcpep evaluate`: one request through the same core the filter runs, against the live
//! Keycloak, with the trace a person needs to see why it was allowed or denied. The core's
//! steps are the filter's: its calls are sent here with ureq instead of Envoy's callouts, and
//! the decision cache is an empty one in memory (so Keycloak is always asked). Tokens and
//! secrets never appear in the trace: only the token's header and registered claims.

use crate::keycloak::{now_ms, Exchange, Keycloak};
use crate::Select;
use anyhow::{anyhow, Result};
use base64::Engine;
use keycloak_pep::enforce::arrival::{Arrival, Filter, Properties, Request};
use keycloak_pep::enforce::enforcer::Cred;
use keycloak_pep::enforce::step::Reply;
use keycloak_pep::enforce::step::{RequestFacts, Step};
use keycloak_pep::keycloak::token;
use keycloak_pep::request::view::RequestView;
use keycloak_pep::store::decisions::{Entry, Key, Verdict};
use keycloak_pep::store::replay::Memory;
use keycloak_pep::store::DecisionStore;
use keycloak_pep::wire::http::{form_decode, HttpRequest};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

pub struct Options {
    pub config: PathBuf,
    pub select: Select,
    pub token_file: Option<PathBuf>,
    pub headers: Vec<String>,
    pub json: bool,
    pub timeout_s: u64,
    pub method: String,
    pub path: String,
}

/// How many calls one request may make before evaluate gives up (the filter's own chains are
/// a few: lookups, claim services, the grant, a ticket).
const MAX_CALLS: usize = 16;

pub fn run(o: &Options) -> Result<ExitCode> {
    let cfg = crate::load(&o.config)?;
    let mut filter = Filter::new(cfg, 16);
    if let Some(n) = &o.select.enforcer {
        // the enforcer named: the route rules are not asked
        let i = filter
            .enforcers
            .iter()
            .position(|e| &e.name == n)
            .ok_or_else(|| anyhow!("no enforcer named {n}"))?;
        filter.routes.rules.clear();
        filter.routes.default = Some(i);
    }
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    for h in &o.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--header {h:?}: expected NAME:VALUE"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().as_bytes().to_vec()));
    }
    // The Host: --host, else a Host header, else localhost (Envoy's :authority).
    let authority = o.select.host.clone().unwrap_or_else(|| {
        headers.iter().find(|(k, _)| k == "host").map_or_else(
            || "localhost".into(),
            |(_, v)| String::from_utf8_lossy(v).into_owned(),
        )
    });
    headers.retain(|(k, _)| k != "host");
    let raw_token = o
        .token_file
        .as_deref()
        .map(crate::read_token_file)
        .transpose()?;
    // A DPoP proof given with --header DPoP:... goes with the DPoP scheme.
    let has_proof = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("dpop"));
    let scheme = if has_proof { "DPoP" } else { "Bearer" };
    let authorization = raw_token.as_ref().map(|t| format!("{scheme} {t}"));
    if let Some(a) = &authorization {
        headers.push(("authorization".into(), a.clone().into_bytes()));
    }
    // what the filter removes before anything reads the request
    let received: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_slice()))
        .collect();
    let spoofed = filter.spoofed(&received);
    drop(received);
    headers.retain(|(k, _)| !spoofed.iter().any(|n| n == k));
    let mut wire: Vec<(&[u8], &[u8])> = vec![
        (b":method", o.method.as_bytes()),
        (b":path", o.path.as_bytes()),
        (b":authority", authority.as_bytes()),
    ];
    wire.extend(headers.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())));
    let req = Request {
        headers: &wire,
        end_of_stream: true,
    };
    let props = Connection {
        route: o.select.route.clone(),
        virtual_host: o.select.virtual_host.clone(),
    };
    let mut shared = Memory::default();
    // Routing first: the enforcer it picks is the one whose Keycloak is asked at start-up (until
    // then no token can be verified, so nothing is remembered of this first pass).
    let index = match filter.arrive(&req, &props, &mut shared, None, now_ms()) {
        Arrival::Reply { reply, route_name } => {
            return answered_before_any_enforcer(o, &reply, route_name, &headers);
        }
        Arrival::Logout { enforcer, .. }
        | Arrival::Memo { enforcer, .. }
        | Arrival::Decide { enforcer, .. } => enforcer,
    };
    let enforcer = &filter.enforcers[index];
    let (name, ec) = (&enforcer.name, &enforcer.config);
    let kc = Keycloak::for_enforcer(ec, o.timeout_s)?;

    let mut log = Vec::new();
    let notes = kc.warm_up(enforcer, &mut log, 8);
    if !log.iter().any(|e| e.status.is_some()) {
        let why = log
            .first()
            .and_then(|e| e.error.clone())
            .unwrap_or_default();
        eprintln!("kcpep: cannot reach Keycloak at {}: {why}", kc.origin());
        return Ok(ExitCode::from(2));
    }
    let start_calls = log.len();
    let explained = enforcer.explain(&o.method, &o.path);
    let cred = match filter.arrive(&req, &props, &mut shared, None, now_ms()) {
        Arrival::Decide { cred, .. } => cred,
        Arrival::Logout { content_type, .. } => {
            // the filter answers its back-channel logout endpoint itself; evaluate sends no body
            let mut replay = keycloak_pep::store::LocalReplay::default();
            let (reply, _) = enforcer.backchannel_logout(
                content_type.as_deref(),
                b"",
                now_ms(),
                None,
                &mut replay,
            );
            return answered_before_any_enforcer(o, &reply, None, &headers);
        }
        Arrival::Memo { .. } | Arrival::Reply { .. } => {
            return Err(anyhow!(
                "the request was routed otherwise once Keycloak was asked"
            ));
        }
    };
    let token_trace = token_trace(&cred, raw_token.as_deref());

    let view = RequestView {
        headers: &headers,
        peer: Some("127.0.0.1"),
        tls: false,
        body: None,
    };
    let facts = RequestFacts {
        method: &o.method,
        path: &o.path,
        credential: cred.credential(),
        view,
    };
    let mut store = Recording::default();
    let mut sent: Vec<Value> = Vec::new();
    let mut step = enforcer.decide(&facts, &mut store, now_ms());
    while let Step::Call(call) = step {
        if sent.len() >= MAX_CALLS {
            return Err(anyhow!("more than {MAX_CALLS} calls for one request"));
        }
        let reply = match &call.service {
            None => kc.exchange(what(&call.request), &call.request, &mut log),
            Some(service) => {
                let svc = Keycloak::at(&format!("http://{}", service.authority), o.timeout_s);
                svc.exchange("claim service", &call.request, &mut log)
            }
        };
        sent.push(request_trace(&call.request, log.last()));
        step = enforcer.resume(
            &facts,
            &mut store,
            call.pending,
            Keycloak::answer(&reply),
            now_ms(),
        );
    }
    let verdict = match &step {
        Step::Allow(a) => json!({
            "status": 200, "verdict": "allow", "reason": a.reason,
            "permissions_header": a.permissions,
            "dry_run_would": a.would_deny.as_ref().map(|r| json!({"status": r.status, "reason": r.reason})),
        }),
        Step::Reply(r) => json!({
            "status": r.status,
            "verdict": if r.status == 302 { "redirect" } else { "deny" },
            "reason": r.reason,
            "headers": r.headers.iter().map(|(k, v)| {
                if k.eq_ignore_ascii_case("location") { format!("{k}: {v}") } else { k.clone() }
            }).collect::<Vec<_>>(),
        }),
        Step::Wait { .. } => {
            json!({"verdict": "wait", "reason": "another request holds the decision (cannot happen here)"})
        }
        Step::ReadBody => {
            json!({"verdict": "needs the request body", "reason": "the path's claims read the body; evaluate sends none"})
        }
        Step::Call(_) => json!({}),
    };
    let out = json!({
        "enforcer": name,
        "client": ec.client_id,
        "keycloak": kc.origin(),
        "request": {"method": o.method, "path": o.path,
                    "headers": headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()},
        "normalized_path": explained.normalized_path,
        "matched_path": explained.entry.as_ref().map(|x| x.config.path.clone()),
        "resource": explained.entry.as_ref().and_then(|x| x.resource.name.clone()).or_else(|| explained.entry.as_ref().and_then(|x| x.config.name.clone())),
        "scopes": explained.method.as_ref().map(|m| m.scopes.clone()).unwrap_or_default(),
        "scopes_enforcement_mode": explained.method.as_ref().map(|m| m.scopes_enforcement_mode.as_str()),
        "enforcement_mode": explained.enforcement_mode.as_str(),
        "token": token_trace,
        "start_up": log[..start_calls].iter().map(|e| format!("{} {}", e.what, e.status.map_or("no answer".into(), |s| s.to_string()))).collect::<Vec<_>>(),
        "notes": notes,
        "calls": sent,
        "decision_cache": store.trace,
        "result": verdict,
    });
    if o.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_lines(&out);
    }
    Ok(ExitCode::SUCCESS)
}

/// The token as far as a person may see it: never the token itself, never its signature.
fn token_trace(cred: &Cred, raw: Option<&str>) -> Value {
    let kid = raw.and_then(token::key_id);
    match cred {
        Cred::Anonymous => json!({"check": "none (no Authorization header)"}),
        Cred::Malformed(e) => json!({"check": format!("malformed: {e:?}")}),
        Cred::Invalid(e) => json!({"check": format!("invalid: {}", e.describe()), "kid": kid}),
        Cred::Unverifiable => json!({"check": "not verifiable (no realm keys)", "kid": kid}),
        Cred::Refused(r) => json!({"check": format!("binding refused: {}", r.reason), "kid": kid}),
        Cred::Valid(_, t) => {
            let c = unverified_claims(raw.unwrap_or_default());
            json!({
                "check": "valid", "kid": kid, "exp": t.exp,
                "expires_in_s": t.exp - now_ms() / 1000,
                "iss": c["iss"], "sub": c["sub"], "azp": c["azp"], "aud": c["aud"],
                "typ": c["typ"], "rpt": t.permissions().is_some(),
            })
        }
    }
}

/// A verified token's payload, for the trace (signature already checked by the core).
fn unverified_claims(raw: &str) -> Value {
    raw.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn what(req: &HttpRequest) -> &'static str {
    let p = req.path.as_str();
    if p.contains("/protocol/openid-connect/token") {
        "token endpoint"
    } else if p.contains("/authz/protection/resource_set") {
        "resource lookup"
    } else if p.contains("/authz/protection/permission") {
        "permission ticket"
    } else {
        "keycloak"
    }
}

/// Form parameters the trace may show; any other (subject_token, rpt, client secrets) is
/// replaced by `<redacted>`.
const SHOWN: [&str; 9] = [
    "grant_type",
    "audience",
    "permission",
    "response_mode",
    "permission_resource_format",
    "permission_resource_matching_uri",
    "claim_token_format",
    "submit_request",
    "response_include_resource_name",
];

fn request_trace(req: &HttpRequest, ex: Option<&Exchange>) -> Value {
    let body = String::from_utf8_lossy(&req.body);
    let mut form = Vec::new();
    let mut pushed = Value::Null;
    if req
        .header("content-type")
        .is_some_and(|c| c.contains("form"))
    {
        for pair in body.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (form_decode(k), form_decode(v));
            if k == "claim_token" {
                pushed = base64::engine::general_purpose::STANDARD
                    .decode(&v)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(Value::Null);
                form.push(format!("{k}=<the claims below>"));
            } else if SHOWN.contains(&k.as_str()) {
                form.push(format!("{k}={v}"));
            } else {
                form.push(format!("{k}=<redacted>"));
            }
        }
    }
    json!({
        "what": ex.map(|e| e.what.clone()),
        "request": format!("{} {}", req.method, req.path),
        "form": form,
        "claims_pushed": pushed,
        "status": ex.and_then(|e| e.status),
        "error": ex.and_then(|e| e.error.clone()),
        "ms": ex.map(|e| e.ms),
    })
}

/// What evaluate tells the core of the connection: the route and virtual host names given, a
/// plain-HTTP client on the loopback address, no client certificate.
struct Connection {
    route: Option<String>,
    virtual_host: Option<String>,
}

impl Properties for Connection {
    fn route_name(&self) -> Option<String> {
        self.route.clone()
    }
    fn virtual_host(&self) -> Option<String> {
        self.virtual_host.clone()
    }
    fn peer(&self) -> Option<String> {
        Some("127.0.0.1".into())
    }
    fn tls(&self) -> bool {
        false
    }
    fn certificate_sha256_hex(&self) -> Option<Vec<u8>> {
        None
    }
}

/// A request the filter answers before any enforcer's flow (no enforcer for it, a method
/// override, the back-channel logout endpoint): its answer, as Envoy's client would get it.
fn answered_before_any_enforcer(
    o: &Options,
    r: &Reply,
    route_name: Option<String>,
    headers: &[(String, Vec<u8>)],
) -> Result<ExitCode> {
    let out = json!({
        "enforcer": Value::Null,
        "request": {"method": o.method, "path": o.path,
                    "headers": headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()},
        "route": route_name,
        "result": {
            "status": r.status,
            "verdict": if r.status == 200 { "answered by the filter" } else { "deny" },
            "reason": r.reason,
        },
    });
    if o.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("request      {} {}", o.method, o.path);
        println!(
            "verdict      {} {} ({}), before any enforcer's flow",
            r.status,
            out["result"]["verdict"].as_str().unwrap_or_default(),
            r.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An empty decision cache that says what the core did with it.
#[derive(Default)]
struct Recording {
    entries: Vec<(Key, Entry)>,
    trace: Vec<String>,
}

fn short(key: &Key) -> String {
    key[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl DecisionStore for Recording {
    fn get(&mut self, key: &Key) -> Option<Entry> {
        let found = self
            .entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, e)| e.clone());
        self.trace.push(format!(
            "lookup {}... (client, rules digest, token digest, resource, scopes, claims digest): {}",
            short(key),
            if found.is_some() { "hit" } else { "miss" }
        ));
        found
    }
    fn claim(&mut self, key: &Key, until_ms: i64) -> bool {
        self.entries.push((*key, Entry::Pending { until_ms }));
        true
    }
    fn put(&mut self, key: &Key, entry: Entry) {
        if let Entry::Decided {
            verdict,
            expires_ms,
        } = &entry
        {
            let v = match verdict {
                Verdict::Allow(_) => "allow",
                Verdict::Deny => "deny",
            };
            self.trace.push(format!(
                "store {}...: {v} for {} s",
                short(key),
                (expires_ms - now_ms()).max(0) / 1000
            ));
        }
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((*key, entry));
    }
}

fn print_lines(out: &Value) {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!(
        "enforcer     {} (client {}, Keycloak {})",
        s(&out["enforcer"]),
        s(&out["client"]),
        s(&out["keycloak"])
    );
    println!(
        "request      {} {}",
        s(&out["request"]["method"]),
        s(&out["request"]["path"])
    );
    println!("normalized   {}", s(&out["normalized_path"]));
    println!(
        "matched      {} ({}), resource {}",
        s(&out["matched_path"]),
        s(&out["enforcement_mode"]),
        s(&out["resource"])
    );
    println!(
        "scopes       {} ({})",
        s(&out["scopes"]),
        s(&out["scopes_enforcement_mode"])
    );
    let t = &out["token"];
    let mut token = s(&t["check"]);
    for k in ["kid", "iss", "sub", "azp", "expires_in_s"] {
        if !t[k].is_null() {
            token.push_str(&format!(", {k} {}", s(&t[k])));
        }
    }
    println!("token        {token}");
    println!("start-up     {}", s(&out["start_up"]));
    for n in out["notes"].as_array().into_iter().flatten() {
        println!("note         {}", s(n));
    }
    for c in out["calls"].as_array().into_iter().flatten() {
        println!(
            "call         {} -> {}{}",
            s(&c["request"]),
            s(&c["status"]),
            c["error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        if let Some(form) = c["form"].as_array().filter(|f| !f.is_empty()) {
            let f: Vec<String> = form.iter().map(s).collect();
            println!("  form       {}", f.join("&"));
        }
        if !c["claims_pushed"].is_null() {
            println!("  claims     {}", c["claims_pushed"]);
        }
    }
    for d in out["decision_cache"].as_array().into_iter().flatten() {
        println!("cache        {}", s(d));
    }
    let r = &out["result"];
    println!(
        "verdict      {} {} ({})",
        s(&r["status"]),
        s(&r["verdict"]),
        s(&r["reason"])
    );
}
