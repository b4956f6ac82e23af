//! `kcpep evaluate`: a request through the filter's own pipeline (`pipeline::Worker`, the one
//! Envoy's workers run) on an in-memory proxy whose callouts go to the live Keycloak with ureq,
//! with the trace a person needs to see why it was allowed or denied. The gate, routing, the
//! logout endpoint, bindings, the memo and the decision table answer here as in Envoy;
//! `--repeat` sends it again through the same worker. Tokens and secrets never appear in the
//! trace: only the token's header and registered claims.

use crate::keycloak::{now_ms, Exchange, Keycloak};
use crate::Select;
use anyhow::{anyhow, Result};
use base64::Engine;
use keycloak_pep::enforce::arrival::{Arrival, Request};
use keycloak_pep::enforce::step::Credential;
use keycloak_pep::keycloak::token;
use keycloak_pep::pipeline::memory::{Connection, MemoryHost, Shared, StreamLog};
use keycloak_pep::pipeline::{Go, Worker};
use keycloak_pep::store::replay::Memory;
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
    /// How many times the request is sent through the same worker.
    pub repeat: u32,
}

/// How many rounds of calls one request may make before evaluate gives up (the filter's own
/// chains are a few: lookups, claim services, the grant, a ticket).
const MAX_CALLS: usize = 16;

pub fn run(o: &Options) -> Result<ExitCode> {
    let cfg = crate::load(&o.config)?;
    notes::install();
    let shared = Shared::at(now_ms());
    let mut host = MemoryHost::new(&shared);
    let mut worker = Worker::new(cfg, None, 1, &mut host).map_err(|e| anyhow!("{e}"))?;
    if let Some(n) = &o.select.enforcer {
        // the enforcer named: the route rules are not asked
        let filter = &mut worker.filter;
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
    if let Some(t) = &raw_token {
        headers.push(("authorization".into(), format!("{scheme} {t}").into_bytes()));
    }
    let props = Connection {
        route_name: o.select.route.clone(),
        virtual_host: o.select.virtual_host.clone(),
        peer: Some("127.0.0.1".into()),
        tls: false,
        certificate_sha256_hex: None,
    };
    let net = Net::new(&worker, o.timeout_s)?;

    // Start-up: the worker's ticks, their fetches sent to Keycloak until none is due.
    let mut log = Vec::new();
    shared.clock.set(now_ms());
    worker.on_tick(&mut host);
    net.drain(&mut worker, &mut host, &shared, &mut log, &mut Vec::new())?;
    if !log.iter().any(|e| e.status.is_some()) {
        let why = log
            .first()
            .and_then(|e| e.error.clone())
            .unwrap_or_default();
        eprintln!("kcpep: cannot reach Keycloak at {}: {why}", net.origins());
        return Ok(ExitCode::from(2));
    }
    let start_calls = log.len();

    // The request, `--repeat` times, through the worker as Envoy hands the filter its headers.
    let mut wire: Vec<(&[u8], &[u8])> = vec![
        (b":method", o.method.as_bytes()),
        (b":path", o.path.as_bytes()),
        (b":authority", authority.as_bytes()),
        (b":scheme", b"http"),
    ];
    wire.extend(headers.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())));
    // The token as the first request's check sees it (before the memo has it).
    let cred = {
        let req = Request {
            headers: &wire,
            end_of_stream: true,
        };
        let mut scratch = Memory::default();
        match worker
            .filter
            .arrive(&req, &props, &mut scratch, None, now_ms())
        {
            Arrival::Decide { cred, .. } => Some(cred),
            _ => None,
        }
    };
    let mut sent: Vec<Value> = Vec::new();
    let mut attempts = Vec::new();
    let mut removed = Vec::new();
    for id in 1..=o.repeat.max(1) {
        shared.clock.set(now_ms());
        let mut request = wire.clone();
        let go = worker.on_request_headers(&mut host, id, &mut request, true, &props);
        let mut calls = Vec::new();
        net.drain(&mut worker, &mut host, &shared, &mut log, &mut calls)?;
        sent.extend(calls);
        let st = host.stream(id);
        removed = st
            .headers
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        attempts.push(outcome(&st, go));
    }
    let result = attempts.last().cloned().unwrap_or(Value::Null);

    // What a person needs to see of it: the enforcer the rules chose, its path and scopes, the
    // token's check.
    let chosen = host
        .streams
        .values()
        .find_map(|s| s.verdict.as_ref().and_then(|v| v.enforcer));
    let shown_headers: Vec<String> = headers
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !removed.contains(k))
        .collect();
    let request = json!({"method": o.method, "path": o.path, "headers": shown_headers});
    let Some(index) = chosen else {
        return print(
            o,
            json!({"enforcer": Value::Null, "request": request, "route": props.route_name,
                   "calls": sent, "result": result}),
        );
    };
    let enforcer = &worker.filter.enforcers[index];
    let (name, ec) = (&enforcer.name, &enforcer.config);
    let explained = enforcer.explain(&o.method, &o.path);
    let out = json!({
        "enforcer": name,
        "client": ec.client_id,
        "keycloak": net.origin_of(&ec.proxy.cluster),
        "request": request,
        "normalized_path": explained.normalized_path,
        "matched_path": explained.entry.as_ref().map(|x| x.config.path.clone()),
        "resource": explained.entry.as_ref().and_then(|x| x.resource.name.clone()).or_else(|| explained.entry.as_ref().and_then(|x| x.config.name.clone())),
        "scopes": explained.method.as_ref().map(|m| m.scopes.clone()).unwrap_or_default(),
        "scopes_enforcement_mode": explained.method.as_ref().map(|m| m.scopes_enforcement_mode.as_str()),
        "enforcement_mode": explained.enforcement_mode.as_str(),
        "token": cred.as_ref().map_or(Value::Null, |c| token_trace(c, raw_token.as_deref())),
        "start_up": log[..start_calls].iter().map(|e| format!("{} {}", e.what, e.status.map_or("no answer".into(), |s| s.to_string()))).collect::<Vec<_>>(),
        "notes": notes::take(),
        "calls": sent,
        "attempts": attempts,
        "result": result,
    });
    print(o, out)
}

fn print(o: &Options, out: Value) -> Result<ExitCode> {
    if o.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_lines(&out);
    }
    Ok(ExitCode::SUCCESS)
}

/// What became of one request, as the client (and the upstream) would see it.
fn outcome(st: &StreamLog, go: Go) -> Value {
    let reason = st.verdict.as_ref().map(|v| v.reason.clone());
    let cache = st.verdict.as_ref().map(|v| format!("{:?}", v.cache));
    if let Some(r) = &st.reply {
        let verdict = match r.status {
            302 => "redirect",
            200 => "answered by the filter",
            _ => "deny",
        };
        return json!({
            "status": r.status, "verdict": verdict, "reason": r.reason, "cache": cache,
            // a gRPC client's answer: HTTP 200 on the wire, this status in grpc-status
            "grpc_status": r.grpc_status,
            "headers": r.headers.iter().map(|(k, v)| {
                if k.eq_ignore_ascii_case("location") { format!("{k}: {v}") } else { k.clone() }
            }).collect::<Vec<_>>(),
        });
    }
    if go == Go::Continue || st.continued {
        return json!({
            "status": 200, "verdict": "allow", "reason": reason, "cache": cache,
            "permissions_header": st.permissions,
            "dry_run_would": notes::dry_run(),
        });
    }
    json!({"verdict": "needs the request body",
           "reason": "the path's claims read the body; evaluate sends none"})
}

/// Where the worker's callouts go: each enforcer's cluster is its Keycloak (the origin of its
/// `auth-server-url`); any other cluster is a claim service at the callout's authority.
struct Net {
    keycloaks: Vec<(String, Keycloak)>,
    timeout_s: u64,
}

impl Net {
    fn new(worker: &Worker, timeout_s: u64) -> Result<Net> {
        let mut keycloaks: Vec<(String, Keycloak)> = Vec::new();
        for e in &worker.filter.enforcers {
            let cluster = &e.config.proxy.cluster;
            if !keycloaks.iter().any(|(c, _)| c == cluster) {
                keycloaks.push((
                    cluster.clone(),
                    Keycloak::for_enforcer(&e.config, timeout_s)?,
                ));
            }
        }
        Ok(Net {
            keycloaks,
            timeout_s,
        })
    }

    fn origin_of(&self, cluster: &str) -> Option<&str> {
        let kc = self.keycloaks.iter().find(|(c, _)| c == cluster);
        kc.map(|(_, k)| k.origin())
    }

    fn origins(&self) -> String {
        let all: Vec<&str> = self.keycloaks.iter().map(|(_, k)| k.origin()).collect();
        all.join(", ")
    }

    /// Sends every callout the worker made, hands it the answers, until it makes no more (a
    /// request parked on another's call wakes on the next tick, as in Envoy). Each request's
    /// callout is traced into `trace`.
    fn drain(
        &self,
        worker: &mut Worker,
        host: &mut MemoryHost,
        shared: &Shared,
        log: &mut Vec<Exchange>,
        trace: &mut Vec<Value>,
    ) -> Result<()> {
        for _ in 0..MAX_CALLS {
            let calls = host.take_calls();
            if calls.is_empty() {
                return Ok(());
            }
            for c in calls {
                let reply = match self.keycloaks.iter().find(|(k, _)| *k == c.cluster) {
                    Some((_, kc)) => kc.exchange(what(&c.request), &c.request, log),
                    None => Keycloak::at(&format!("http://{}", c.authority), self.timeout_s)
                        .exchange("claim service", &c.request, log),
                };
                trace.push(request_trace(&c.request, log.last()));
                shared.clock.set(now_ms());
                worker.on_call_answer(host, c.token, Keycloak::answer(&reply));
            }
        }
        Err(anyhow!(
            "more than {MAX_CALLS} rounds of calls for one request"
        ))
    }
}

/// The worker's log lines: its warnings are the trace's notes, a dry-run denial its verdict's
/// "would". Tokens and secrets never reach them (the core logs neither).
mod notes {
    use std::sync::Mutex;

    static LINES: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

    struct Collect;

    impl log::Log for Collect {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                if let Ok(mut lines) = LINES.lock() {
                    lines.push((r.level(), r.args().to_string()));
                }
            }
        }
        fn flush(&self) {}
    }

    pub fn install() {
        static COLLECT: Collect = Collect;
        if log::set_logger(&COLLECT).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    }

    /// The warnings so far, each once.
    pub fn take() -> Vec<String> {
        let Ok(lines) = LINES.lock() else {
            return Vec::new();
        };
        let mut notes: Vec<String> = lines
            .iter()
            .filter(|(l, _)| *l == log::Level::Warn)
            .map(|(_, m)| m.clone())
            .collect();
        notes.sort();
        notes.dedup();
        notes
    }

    /// The last dry-run denial logged, if any.
    pub fn dry_run() -> Option<String> {
        let lines = LINES.lock().ok()?;
        lines
            .iter()
            .rev()
            .find(|(_, m)| m.starts_with("kcpep dry-run would deny"))
            .map(|(_, m)| m.clone())
    }
}

/// The token as far as a person may see it: never the token itself, never its signature.
fn token_trace(cred: &Credential, raw: Option<&str>) -> Value {
    let kid = raw.and_then(token::key_id);
    match cred {
        Credential::Anonymous => json!({"check": "none (no Authorization header)"}),
        Credential::Malformed(e) => json!({"check": format!("malformed: {e:?}")}),
        Credential::Invalid(e) => {
            json!({"check": format!("invalid: {}", e.describe()), "kid": kid})
        }
        Credential::Unverifiable => json!({"check": "not verifiable (no realm keys)", "kid": kid}),
        Credential::Refused(r) => {
            json!({"check": format!("binding refused: {}", r.reason), "kid": kid})
        }
        Credential::Valid(_, t) => {
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
    if p.contains("/.well-known/") {
        "discovery"
    } else if p.contains("/protocol/openid-connect/certs") {
        "jwks"
    } else if p.contains("/protocol/openid-connect/token") {
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
    let attempts = out["attempts"].as_array().map_or(0, Vec::len);
    for (i, a) in out["attempts"].as_array().into_iter().flatten().enumerate() {
        if i + 1 < attempts {
            println!(
                "attempt {}    {} ({})",
                i + 1,
                s(&a["status"]),
                s(&a["reason"])
            );
        }
    }
    let r = &out["result"];
    let grpc = match r["grpc_status"].as_u64() {
        Some(code) => format!(", to a gRPC client grpc-status {code}"),
        None => String::new(),
    };
    println!(
        "verdict      {} {} ({}), cache {}{grpc}",
        s(&r["status"]),
        s(&r["verdict"]),
        s(&r["reason"]),
        s(&r["cache"])
    );
}
