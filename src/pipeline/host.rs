//! What the pipeline needs of the proxy, and nothing more: the clock, shared data with
//! compare-and-swap, callouts, stats, and a handful of actions on a request stream. The
//! proxy-wasm shell implements it over Envoy; `memory::MemoryHost` implements it for tests and
//! the CLI. The pipeline never names proxy-wasm.

use crate::enforce::events::Event;
use crate::enforce::step::{CacheUse, Reply};
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

/// What became of a request, told once per request: the stuff of a decision record, and what
/// `kcpep evaluate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'a> {
    /// 200 for a request let on, else the local reply's.
    pub status: u16,
    pub reason: &'a str,
    pub cache: CacheUse,
    /// The enforcer whose flow decided (`None`: answered before one was chosen).
    pub enforcer: Option<usize>,
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
    /// A request's verdict; a proxy without decision records ignores it.
    fn verdict(&mut self, stream: u32, verdict: &Verdict<'_>) {
        let _ = (stream, verdict);
    }
    /// The request body buffered so far, at most `max` bytes.
    fn request_body(&mut self, stream: u32, max: usize) -> Vec<u8>;
}
