//! What keeping an enforcer's knowledge of Keycloak fresh (discovery, realm keys, PAT, path
//! bindings) across every VM asks of the proxy ([`FetchHost`]) and reports back. The rules (a
//! copy in shared data before a call, the fetch's lease, the rounds per tick) are
//! `Enforcer::refresh` and `Enforcer::fetched` (`enforcer.rs`).

use crate::keycloak::background::Fetch;
use crate::wire::http::HttpRequest;

/// What a refresh needs from the proxy.
pub trait FetchHost {
    /// The value another VM stored under `key`, if any.
    fn shared(&mut self, key: &str) -> Option<Vec<u8>>;
    /// This VM already waits for the answer to the fetch stored under `key`.
    fn in_flight(&self, key: &str) -> bool;
    /// Takes the fetch's cross-VM lease; false while another VM holds it.
    fn take_lease(&mut self, lease: &str, now_ms: i64) -> bool;
    /// Sends the fetch to Keycloak; the answer comes back through `Enforcer::fetched` with
    /// `key`. False when the proxy refused to send it.
    fn send(&mut self, fetch: Fetch, key: String, req: &HttpRequest, now_ms: i64) -> bool;
}

/// What a refresh or an answer left for the shell to report.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// Problems worth a warning (each said once).
    pub notes: Vec<String>,
    /// Nothing is due or in flight any more: the tick may slow down.
    pub settled: bool,
}

/// What to do with a fetch's answer.
#[derive(Debug, Default, PartialEq)]
pub struct Fetched {
    /// The value to store under the fetch's key for the other VMs (good answers only).
    pub share: Option<Vec<u8>>,
    /// The lease to release: the fetch is over, answered or not.
    pub lease: String,
    /// The realm's keys arrived for the first time (tokens can be verified now).
    pub keys_loaded: bool,
    pub report: Report,
}
