//! A [`Host`] in this process's memory: the pipeline tests' and `kcpep evaluate`'s proxy.
//! Workers made over one [`Shared`] share their data as Envoy's workers do; callouts wait in
//! [`MemoryHost::calls`] until the driver answers them; time is what the driver sets.

use super::host::{Host, Upstream, Verdict};
use crate::enforce::arrival::Properties;
use crate::enforce::events::Event;
use crate::enforce::step::{CacheUse, Reply};
use crate::store::replay::{Cas, Memory};
use crate::wire::http::HttpRequest;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// The data and the clock several workers share.
#[derive(Clone, Default)]
pub struct Shared {
    pub data: Rc<RefCell<Memory>>,
    pub clock: Rc<Cell<i64>>,
    tokens: Rc<Cell<u32>>,
}

impl Shared {
    /// A store and a clock at `now_ms`.
    pub fn at(now_ms: i64) -> Shared {
        let s = Shared::default();
        s.clock.set(now_ms);
        s
    }

    /// Moves the clock on.
    pub fn advance(&self, ms: i64) {
        self.clock.set(self.clock.get() + ms);
    }
}

/// A callout waiting for its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Callout {
    pub token: u32,
    pub cluster: String,
    pub authority: String,
    pub request: HttpRequest,
    pub trace: Vec<(String, String)>,
}

/// What the pipeline did to one stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamLog {
    /// Let on from outside its own callbacks.
    pub continued: bool,
    pub reply: Option<Reply>,
    /// Request headers set (`Some`) or removed (`None`), in order.
    pub headers: Vec<(String, Option<String>)>,
    pub trailers_removed: Vec<String>,
    pub permissions: Option<String>,
    pub verdict: Option<Decided>,
    /// The decision record (JSON), as Envoy's filter state would hold it.
    pub record: Option<String>,
}

/// A request's [`Verdict`], kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub status: u16,
    pub reason: String,
    pub cache: CacheUse,
    pub enforcer: Option<usize>,
}

/// One worker's proxy.
#[derive(Default)]
pub struct MemoryHost {
    pub shared: Shared,
    /// Callouts sent and not answered yet.
    pub calls: Vec<Callout>,
    /// Clusters that refuse callouts (Envoy: no such cluster).
    pub refused_clusters: Vec<String>,
    pub streams: HashMap<u32, StreamLog>,
    /// Request bodies the proxy holds, by stream.
    pub bodies: HashMap<u32, Vec<u8>>,
    pub events: Vec<Event>,
    pub cache_entries: u64,
    pub tick_ms: u64,
}

impl MemoryHost {
    pub fn new(shared: &Shared) -> MemoryHost {
        MemoryHost {
            shared: shared.clone(),
            ..MemoryHost::default()
        }
    }

    /// What happened to `stream` so far.
    pub fn stream(&self, stream: u32) -> StreamLog {
        self.streams.get(&stream).cloned().unwrap_or_default()
    }

    /// Takes the callouts sent so far.
    pub fn take_calls(&mut self) -> Vec<Callout> {
        std::mem::take(&mut self.calls)
    }

    fn log(&mut self, stream: u32) -> &mut StreamLog {
        self.streams.entry(stream).or_default()
    }
}

impl Cas for MemoryHost {
    fn read(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared.data.borrow_mut().read(key)
    }

    fn write(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
        self.shared.data.borrow_mut().write(key, value, version)
    }
}

impl Host for MemoryHost {
    fn now_ms(&self) -> i64 {
        self.shared.clock.get()
    }

    fn dispatch(
        &mut self,
        to: Upstream<'_>,
        req: &HttpRequest,
        trace: &[(String, String)],
    ) -> Option<u32> {
        if self.refused_clusters.iter().any(|c| c == to.cluster) {
            return None;
        }
        let token = self.shared.tokens.get() + 1;
        self.shared.tokens.set(token);
        self.calls.push(Callout {
            token,
            cluster: to.cluster.to_string(),
            authority: to.authority.to_string(),
            request: req.clone(),
            trace: trace.to_vec(),
        });
        Some(token)
    }

    fn record(&mut self, event: Event) {
        self.events.push(event);
    }

    fn set_cache_entries(&mut self, n: u64) {
        self.cache_entries = n;
    }

    fn set_tick_ms(&mut self, ms: u64) {
        self.tick_ms = ms;
    }

    fn continue_request(&mut self, stream: u32) {
        self.log(stream).continued = true;
    }

    fn send_reply(&mut self, stream: u32, reply: &Reply) {
        self.log(stream).reply = Some(reply.clone());
    }

    fn set_request_header(&mut self, stream: u32, name: &str, value: Option<&str>) {
        let set = (name.to_string(), value.map(str::to_string));
        self.log(stream).headers.push(set);
    }

    fn remove_request_trailer(&mut self, stream: u32, name: &str) {
        self.log(stream).trailers_removed.push(name.to_string());
    }

    fn set_permissions(&mut self, stream: u32, value: &str) {
        self.log(stream).permissions = Some(value.to_string());
    }

    fn verdict(&mut self, stream: u32, v: &Verdict<'_>) {
        self.log(stream).verdict = Some(Decided {
            status: v.status,
            reason: v.reason.to_string(),
            cache: v.cache,
            enforcer: v.enforcer,
        });
    }

    fn decision_record(&mut self, stream: u32, record: &str) {
        self.log(stream).record = Some(record.to_string());
    }

    fn request_body(&mut self, stream: u32, max: usize) -> Vec<u8> {
        let body = self.bodies.get(&stream).map(Vec::as_slice).unwrap_or(&[]);
        body[..body.len().min(max)].to_vec()
    }
}

/// What a test or the CLI tells of a request's connection (Envoy's properties).
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub route_name: Option<String>,
    pub virtual_host: Option<String>,
    pub peer: Option<String>,
    pub tls: bool,
    /// The client certificate's SHA-256, in hex.
    pub certificate_sha256_hex: Option<String>,
}

impl Properties for Connection {
    fn route_name(&self) -> Option<String> {
        self.route_name.clone()
    }

    fn virtual_host(&self) -> Option<String> {
        self.virtual_host.clone()
    }

    fn peer(&self) -> Option<String> {
        self.peer.clone()
    }

    fn tls(&self) -> bool {
        self.tls
    }

    fn certificate_sha256_hex(&self) -> Option<Vec<u8>> {
        self.certificate_sha256_hex.clone().map(String::into_bytes)
    }
}
