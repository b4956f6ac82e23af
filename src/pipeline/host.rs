//! What the pipeline needs of the proxy, and nothing more: the clock, shared data with
//! compare-and-swap, callouts, stats, and a handful of actions on a request stream. The
//! proxy-wasm shell implements it over Envoy; `memory::MemoryHost` implements it for tests and
//! the CLI. The pipeline never names proxy-wasm.

use crate::enforce::events::Event;
use crate::enforce::step::{CacheUse, Matched, Reply};
use crate::store::replay::Cas;
use crate::wire::http::HttpRequest;

/// Where a callout goes: a cluster of the proxy, with the authority and timeout to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream<'a> {
    pub cluster: &'a str,
    pub authority: &'a str,
    pub timeout_ms: u32,
}

/// What a stream callback tells the proxy: let the request go on, or hold it (answered, waiting
/// for Keycloak or for its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Go {
    Continue,
    Pause,
}

/// What became of a request, told once per request: its decision record ([`Verdict::record`]),
/// and what `kcpep evaluate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'a> {
    /// 200 for a request let on, else the local reply's.
    pub status: u16,
    pub reason: &'a str,
    pub cache: CacheUse,
    /// The enforcer whose flow decided (`None`: answered before one was chosen), by index and
    /// by name, and its client.
    pub enforcer: Option<usize>,
    pub enforcer_name: Option<&'a str>,
    pub client: Option<&'a str>,
    pub source: Source,
    /// How long the request waited on Keycloak's answers (its own calls), in ms.
    pub keycloak_ms: Option<i64>,
    pub matched: Option<&'a Matched>,
    /// The granted permissions (JSON), as the upstream gets them.
    pub permissions: Option<&'a str>,
    /// Dry-run: the status and reason the request would have got.
    pub would_deny: Option<(u16, &'a str)>,
    /// The verified token's `sub`: who, without the token.
    pub subject: Option<&'a str>,
    /// A gRPC request's answer: its gRPC status (`status` keeps the HTTP one it stands for).
    pub grpc_status: Option<u8>,
}

/// Where a verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No Keycloak decision was involved: a rule of the filter (no token, a DISABLED path, a
    /// refused binding, the token's own permissions...).
    Rule,
    /// The worker's memo of this token's same request.
    Memo,
    /// The shared decision table.
    Table,
    /// The decision table, after waiting for another request's identical Keycloak call.
    Coalesced,
    /// An expired allow served while Keycloak fails (`stale-on-error-ms`).
    Stale,
    /// Keycloak, asked for this request.
    Keycloak,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Rule => "rule",
            Source::Memo => "memo",
            Source::Table => "table",
            Source::Coalesced => "coalesced",
            Source::Stale => "stale",
            Source::Keycloak => "keycloak",
        }
    }
}

impl Verdict<'_> {
    /// The decision record: one JSON object, for Envoy's filter state `wasm.kcpep.decision` and
    /// so its access logs. Names the subject by `sub`, never the token or any credential.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn record(&self) -> String {
        let outcome = match (self.status, self.would_deny) {
            (_, Some(_)) => "dry-run-deny",
            (200, None) => "allow",
            _ => "deny",
        };
        let record = Record {
            outcome,
            status: self.status,
            reason: self.reason,
            source: self.source.as_str(),
            enforcer: self.enforcer_name,
            client: self.client,
            subject: self.subject,
            path: self.matched.map(|m| m.path.as_str()),
            resource: self.matched.and_then(|m| m.resource.as_deref()),
            scopes: self.matched.map(|m| m.scopes.as_slice()),
            keycloak_ms: self.keycloak_ms,
            grpc_status: self.grpc_status,
            dry_run: self
                .would_deny
                .map(|(status, reason)| DryRun { status, reason }),
        };
        let mut json = serde_json::to_string(&record).unwrap_or_else(|_| "{}".into());
        if let Some(granted) = self.permissions {
            // the filter's own JSON (`permissions_header_value`), as the upstream got it:
            // spliced in rather than parsed again on every request
            json.pop();
            json.push_str(",\"granted\":");
            json.push_str(granted);
            json.push('}');
        }
        json
    }
}

/// The decision record's fields, in their order; absent ones are left out.
#[derive(serde::Serialize)]
struct Record<'a> {
    outcome: &'a str,
    status: u16,
    reason: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforcer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keycloak_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run: Option<DryRun<'a>>,
}

#[derive(serde::Serialize)]
struct DryRun<'a> {
    status: u16,
    reason: &'a str,
}

/// One worker's proxy. Stream actions name the stream: the pipeline acts on requests other than
/// the one whose callback runs (a parked request woken by another's answer or by the tick).
pub trait Host: Cas {
    /// Milliseconds since the epoch by the proxy's clock.
    fn now_ms(&self) -> i64;
    /// Sends `req` to `to`; the answer comes back through `Worker::on_call_answer` with the
    /// returned token. `None`: the proxy refused to send it (no such cluster).
    fn dispatch(
        &mut self,
        to: Upstream<'_>,
        req: &HttpRequest,
        trace: &[(String, String)],
    ) -> Option<u32>;
    /// Counts what `event` moves (the proxy's stats).
    fn record(&mut self, event: Event);
    /// The decision-table slots in use, over all workers (a gauge).
    fn set_cache_entries(&mut self, n: u64);
    /// How often `Worker::on_tick` should run from now on.
    fn set_tick_ms(&mut self, ms: u64);
    /// Lets a held request go on (from outside its own header or body callback).
    fn continue_request(&mut self, stream: u32);
    /// Answers the request locally.
    fn send_reply(&mut self, stream: u32, reply: &Reply);
    /// Sets (`Some`) or removes (`None`) a request header.
    fn set_request_header(&mut self, stream: u32, name: &str, value: Option<&str>);
    fn remove_request_trailer(&mut self, stream: u32, name: &str);
    /// The granted permissions as the stream's filter state (Envoy: `wasm.kcpep.permissions`).
    fn set_permissions(&mut self, stream: u32, value: &str);
    /// A request's verdict (what `kcpep evaluate` prints); a proxy may ignore it.
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn verdict(&mut self, stream: u32, verdict: &Verdict<'_>) {
        let _ = (stream, verdict);
    }
    /// The request's decision record, as the stream's filter state (Envoy:
    /// `wasm.kcpep.decision`, which access logs read).
    fn decision_record(&mut self, stream: u32, record: &str);
    /// The request body buffered so far, at most `max` bytes.
    fn request_body(&mut self, stream: u32, max: usize) -> Vec<u8>;
}
