//! One worker of the proxy (a proxy-wasm VM): the configuration compiled once, the requests in
//! flight, the requests waiting for another's Keycloak call, the callouts out, and the
//! background knowledge kept fresh on every tick. Every host callback of the shell is one method
//! here; what a single request goes through is in `stream`.

use super::flow::{answer_event, Parked, Stream};
use super::host::{Host, Upstream};
use crate::config::routes::PluginConfig;
use crate::enforce::arrival::Filter;
use crate::enforce::events::{Endpoint, Event};
use crate::enforce::refresh::FetchHost;
use crate::keycloak::background::{self, Fetch};
use crate::keycloak::signature::HostCheck;
use crate::keycloak::token::{self, HostVerifier};
use crate::store::decisions::{self, Key};
use crate::store::front::FrontCache;
use crate::store::shared;
use crate::wire::hashmap::HashMap;
use crate::wire::http::{Answer, HttpRequest};
use std::rc::Rc;

/// Per-worker memo bound (entries of ~100 bytes plus the permissions header).
pub const MEMO_ENTRIES: usize = 8 * 1024;

/// The longest tick while back-channel logout is configured: every worker stops serving a
/// logged-out session within about this long.
pub const LOGOUT_TICK_MS: u64 = 250;
/// The first tick after configure, which sends the start-up fetches (realm keys, PAT, resources).
pub const FIRST_TICK_MS: u64 = 1;

/// The host's signature check (Envoy's `verify_signature`), when it has one.
pub type Verifier = fn(&HostCheck) -> Option<bool>;

/// Whose callout an answer is.
enum Caller {
    /// A request's (`via`: the context that dispatched it; the proxy drops the answer when that
    /// context ends).
    Stream { stream: u32, via: u32 },
    /// A background fetch of an enforcer, stored under `key` for the other workers.
    Fetch {
        enforcer: usize,
        fetch: Fetch,
        key: String,
        sent_ms: i64,
    },
}

/// Why a worker could not be configured (the shell logs it and refuses the configuration).
#[derive(Debug)]
pub enum ConfigureError {
    Invalid(String),
    NoSignatureCheck,
}

impl std::fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigureError::Invalid(e) => write!(f, "invalid configuration: {e}"),
            ConfigureError::NoSignatureCheck => f.write_str(
                "this build checks token signatures through the host's verify_signature, which this host does not offer (Envoy has it; other proxy-wasm hosts may not): use keycloak_pep_rust_crypto.wasm (make wasm-rust-crypto), which checks them in wasm",
            ),
        }
    }
}

/// One worker: its enforcers and everything in flight.
pub struct Worker {
    pub filter: Filter,
    pub(super) verify: Option<Verifier>,
    pub(super) front: FrontCache,
    /// Requests not decided yet (or answering a logout), by stream id.
    pub(super) streams: HashMap<u32, Stream>,
    pub(super) parked: Vec<Parked>,
    calls: HashMap<u32, Caller>,
    /// Requests whose callout was lost with the context that dispatched it: answered on the next
    /// tick as if Keycloak had not answered.
    lost: Vec<u32>,
    /// The decision tables (the "entries in use" gauge sums them).
    pub(super) tables: Vec<String>,
    settled: bool,
    /// When the worker was configured (ms): its first seconds tick faster while unsettled.
    configured_at_ms: i64,
    /// This worker's identity in fetch leases.
    nonce: u64,
    /// Some enforcer answers back-channel logouts: the shared ring is read on every tick.
    logout_endpoint: bool,
}

impl Worker {
    /// Compiles the plugin configuration, makes the shared tables' slots, and takes what other
    /// workers already fetched.
    pub fn configure(
        bytes: &[u8],
        verify: Option<Verifier>,
        nonce: u64,
        host: &mut dyn Host,
    ) -> Result<Worker, ConfigureError> {
        let config =
            PluginConfig::from_json(bytes).map_err(|e| ConfigureError::Invalid(e.to_string()))?;
        Worker::new(config, verify, nonce, host)
    }

    /// A worker of a configuration already parsed.
    pub fn new(
        config: PluginConfig,
        verify: Option<Verifier>,
        nonce: u64,
        host: &mut dyn Host,
    ) -> Result<Worker, ConfigureError> {
        let filter = Filter::new(config, MEMO_ENTRIES);
        for e in &filter.enforcers {
            for need in e.config.host_requirements() {
                log::info!("kcpep [{}]: {need}", e.name);
            }
        }
        if !token::can_verify(verify.is_some()) {
            return Err(ConfigureError::NoSignatureCheck);
        }
        log::info!(
            "kcpep: configured {} enforcer(s); signatures verified {}",
            filter.enforcers.len(),
            if verify.is_some() {
                "by the host (verify_signature)"
            } else {
                "in wasm"
            }
        );
        let logout_endpoint = filter
            .enforcers
            .iter()
            .any(|e| e.config.proxy.backchannel_logout.is_some());
        shared::reserve_slots(&mut *host, filter.replay.slot_keys());
        let configs = filter.enforcers.iter().map(|e| &*e.config);
        shared::reserve_slots(&mut *host, decisions::reserved_slot_keys(configs.clone()));
        let mut worker = Worker {
            tables: shared::decision_tables(configs),
            filter,
            verify,
            front: FrontCache::default(),
            streams: HashMap::new(),
            parked: Vec::new(),
            calls: HashMap::new(),
            lost: Vec::new(),
            settled: false,
            configured_at_ms: host.now_ms(),
            nonce,
            logout_endpoint,
        };
        // On a configuration change Envoy keeps the VM and its shared data and starts a new root
        // context: take the realm keys, PAT and resources other workers left in shared data at
        // once, or this one would answer 503 until its first tick.
        worker.refresh(host, true);
        // Callouts are not sent from the configure callback itself: the first tick, at once,
        // sends what shared data did not have (then the tick slows to the fetching pace).
        host.set_tick_ms(if worker.settled {
            background::tick_period_ms(false, true, true)
        } else {
            FIRST_TICK_MS
        });
        Ok(worker)
    }

    /// The host's signature check in the form the token checks take.
    pub(super) fn verifier(&self) -> Option<HostVerifier<'_>> {
        self.verify.as_ref().map(|f| f as HostVerifier)
    }

    /// The periodic tick: lost callouts answered, parked requests woken, background fetches
    /// sent, ended sessions read from the shared ring.
    pub fn on_tick(&mut self, host: &mut dyn Host) {
        for stream in std::mem::take(&mut self.lost) {
            self.answered(host, stream, Answer::NoAnswer, 0);
        }
        self.wake_parked(host, None);
        self.refresh(host, false);
        if self.logout_endpoint {
            if let Some(e) = self.filter.enforcers.first() {
                let now = host.now_ms();
                shared::read_logouts(&mut *host, &mut e.logouts().borrow_mut(), now);
            }
        }
    }

    /// A callout's answer (`token` from [`Host::dispatch`]); `via`: the context it arrived in.
    pub fn on_call_answer(&mut self, host: &mut dyn Host, token: u32, answer: Answer) {
        match self.calls.remove(&token) {
            Some(Caller::Stream { stream, via }) => self.answered(host, stream, answer, via),
            Some(Caller::Fetch {
                enforcer,
                fetch,
                key,
                sent_ms,
            }) => self.fetched(host, enforcer, fetch, &key, answer, sent_ms),
            None => {}
        }
    }

    /// The stream ended (its context is gone): forget it, and the callouts it dispatched for
    /// other requests, whose answers the proxy now drops.
    pub fn on_stream_gone(&mut self, stream: u32) {
        self.streams.remove(&stream);
        self.parked.retain(|p| p.stream != stream);
        let lost = &mut self.lost;
        self.calls.retain(|_, c| match c {
            Caller::Stream { stream: s, via } if *via == stream => {
                if *s != stream {
                    lost.push(*s);
                }
                false
            }
            _ => true,
        });
    }

    /// Records a request's callout.
    pub(super) fn calling(&mut self, token: u32, stream: u32, via: u32) {
        self.calls.insert(token, Caller::Stream { stream, via });
    }

    /// Requests waiting for a decision: parked, or with a callout out.
    fn waiting(&self) -> bool {
        !self.parked.is_empty()
            || self
                .calls
                .values()
                .any(|c| matches!(c, Caller::Stream { .. }))
    }

    /// The tick period for what is going on now.
    pub(super) fn set_tick(&self, host: &mut dyn Host) {
        let starting = host.now_ms() - self.configured_at_ms < background::STARTING_MS;
        let mut ms = background::tick_period_ms(self.waiting(), self.settled, starting);
        if self.logout_endpoint {
            ms = ms.min(LOGOUT_TICK_MS);
        }
        host.set_tick_ms(ms);
    }

    /// Sends (or takes from shared data) every background fetch due; `offline`: only take.
    fn refresh(&mut self, host: &mut dyn Host, offline: bool) {
        let now = host.now_ms();
        let mut all_settled = true;
        for (i, enforcer) in self.filter.enforcers.iter_mut().enumerate() {
            let cfg = Rc::clone(&enforcer.config);
            let mut fetcher = Fetcher {
                host: &mut *host,
                calls: &mut self.calls,
                nonce: self.nonce,
                enforcer: i,
                to: Upstream {
                    cluster: &cfg.proxy.cluster,
                    authority: &cfg.proxy.authority,
                    timeout_ms: cfg.proxy.timeout_ms,
                },
                offline,
            };
            let report = enforcer.refresh(&mut fetcher, now);
            log_notes(&cfg.client_id, &report.notes);
            all_settled &= report.settled;
        }
        if all_settled && !self.settled {
            // what start-up waits for, fetched or taken from another VM (make bench splits the
            // time to the first allow by it)
            log::info!("kcpep: ready: realm keys, PAT and resources in hand");
        }
        self.settled = all_settled;
        self.set_tick(host);
    }

    fn fetched(
        &mut self,
        host: &mut dyn Host,
        i: usize,
        fetch: Fetch,
        key: &str,
        answer: Answer,
        sent_ms: i64,
    ) {
        let now = host.now_ms();
        // Background fetches count as Keycloak calls, errors and latency too.
        host.record(answer_event(&answer, now - sent_ms));
        let Some(enforcer) = self.filter.enforcers.get_mut(i) else {
            return;
        };
        let done = enforcer.fetched(fetch, key, answer, now);
        if let Some(doc) = &done.share {
            // Shared with the other workers; only good answers are stored.
            host.write(key, doc, None);
        }
        shared::release_lease(&mut *host, &done.lease, self.nonce);
        if done.keys_loaded {
            log::info!("kcpep [{}]: realm keys loaded", enforcer.config.client_id);
        }

        log_notes(&enforcer.config.client_id, &done.report.notes);
        // Follow-up fetches (bindings need the PAT) start right away.
        self.refresh(host, false);
    }

    /// Decides again for parked requests whose answer is in the decision table, or (on the tick,
    /// `from` none) whose wait is over. From a stream's callback only answered ones wake.
    pub(super) fn wake_parked(&mut self, host: &mut dyn Host, from: Option<u32>) {
        if self.parked.is_empty() {
            return;
        }
        let now = host.now_ms();
        let parked = std::mem::take(&mut self.parked);
        let mut ready = Vec::new();
        for p in parked {
            let Some(st) = self.streams.get(&p.stream) else {
                continue; // the stream is gone
            };
            let Some(flow) = st.flow.as_ref() else {
                continue;
            };
            let enforcer = flow.enforcer;
            let found = self.decision(host, enforcer, &p.key, now);
            if decisions::wakes(found.as_ref(), now, p.until_ms, from.is_none()) {
                ready.push(p.stream);
            } else {
                self.parked.push(p);
            }
        }
        let via = from.unwrap_or(0);
        for stream in ready {
            self.redecide(host, stream, via);
        }
    }

    /// What the decision table holds for `key` now, as the request's enforcer reads it.
    fn decision(
        &mut self,
        host: &mut dyn Host,
        enforcer: usize,
        key: &Key,
        now: i64,
    ) -> Option<decisions::State> {
        let cfg = &self.filter.enforcers[enforcer].config;
        let mut store = shared::SharedStore::new(cfg, &mut self.front, &self.tables, host, now);
        crate::store::DecisionStore::get(&mut store, key)
    }
}

fn log_notes(client_id: &str, notes: &[String]) {
    for note in notes {
        log::warn!("kcpep [{client_id}]: {note}");
    }
}

/// A refresh's side: shared data, leases and callouts through the host.
struct Fetcher<'a> {
    host: &'a mut dyn Host,
    calls: &'a mut HashMap<u32, Caller>,
    nonce: u64,
    enforcer: usize,
    to: Upstream<'a>,
    offline: bool,
}

impl FetchHost for Fetcher<'_> {
    fn shared(&mut self, key: &str) -> Option<Vec<u8>> {
        self.host.read(key).0
    }

    fn in_flight(&self, key: &str) -> bool {
        self.calls
            .values()
            .any(|c| matches!(c, Caller::Fetch { key: k, .. } if k == key))
    }

    fn take_lease(&mut self, lease: &str, now_ms: i64) -> bool {
        !self.offline && shared::take_lease(&mut *self.host, lease, self.nonce, now_ms)
    }

    fn send(&mut self, fetch: Fetch, key: String, req: &HttpRequest, now_ms: i64) -> bool {
        self.host.record(Event::KeycloakCall {
            path_endpoint: Endpoint::of_path(&req.path),
            by_request: false,
        });
        match self.host.dispatch(self.to, req, &[]) {
            Some(token) => {
                let caller = Caller::Fetch {
                    enforcer: self.enforcer,
                    fetch,
                    key,
                    sent_ms: now_ms,
                };
                self.calls.insert(token, caller);
                true
            }
            None => {
                self.host.record(Event::KeycloakNotSent);
                log::debug!("kcpep: dispatch to {} refused", self.to.cluster);
                false
            }
        }
    }
}
