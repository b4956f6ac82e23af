//! Root context: one per VM (Envoy runs one VM per worker plus one on the main thread).
//! Parses the plugin configuration once, keeps each enforcer's background knowledge fresh, and
//! carries the requests that wait for another request's identical Keycloak call.

use super::host;
use super::http::{wake_parked, Applied, Flow, Http, Parked, Plugin, LOGOUT_TICK_MS};
use super::metrics::Metrics;
use crate::config::routes::PluginConfig;
use crate::enforce::arrival::Filter;
use crate::enforce::enforcer::Enforcer;
use crate::enforce::events::{Endpoint, Event};
use crate::enforce::refresh::FetchHost;
use crate::keycloak::background::{self, Fetch};
use crate::wire::http::HttpRequest;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Per-VM memo bound (entries of ~100 bytes plus the permissions header).
const MEMO_ENTRIES: usize = 8 * 1024;

pub struct Root {
    plugin: Option<Rc<Plugin>>,
    metrics: Rc<Metrics>,
    /// Background callouts: token -> (enforcer, what was fetched, shared-data key, sent at).
    pending: HashMap<u32, (usize, Fetch, String, i64)>,
    /// Callouts of parked requests that had to ask Keycloak themselves.
    flows: HashMap<u32, Flow>,
    settled: bool,
    /// This VM's identity in fetch leases.
    nonce: u64,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            plugin: None,
            metrics: Rc::new(Metrics::default()),
            pending: HashMap::new(),
            flows: HashMap::new(),
            settled: false,
            nonce: host::random_u64(),
        }
    }
}

/// The shell's side of a refresh: shared data, leases and callouts through the host.
struct Callouts<'a> {
    pending: &'a mut HashMap<u32, (usize, Fetch, String, i64)>,
    metrics: &'a Metrics,
    nonce: u64,
    enforcer: usize,
    cluster: &'a str,
    authority: &'a str,
    timeout_ms: u32,
    /// Only take what shared data holds; send nothing (see [`Root::adopt_shared`]).
    offline: bool,
}

impl FetchHost for Callouts<'_> {
    fn shared(&mut self, key: &str) -> Option<Vec<u8>> {
        host::shared_get(key).0.map(|(_, v)| v)
    }

    fn in_flight(&self, key: &str) -> bool {
        self.pending.values().any(|(_, _, k, _)| k == key)
    }

    fn take_lease(&mut self, lease: &str, now_ms: i64) -> bool {
        !self.offline && host::take_lease(lease, self.nonce, now_ms)
    }

    fn send(&mut self, fetch: Fetch, key: String, req: &HttpRequest, now_ms: i64) -> bool {
        self.metrics.record(Event::KeycloakCall {
            path_endpoint: Endpoint::of_path(&req.path),
            by_request: false,
        });
        match host::dispatch(self.cluster, self.authority, req, self.timeout_ms, &[]) {
            Ok(token) => {
                self.pending
                    .insert(token, (self.enforcer, fetch, key, now_ms));
                true
            }
            Err(status) => {
                self.metrics.record(Event::KeycloakNotSent);
                log::debug!("kcpep: dispatch to {} refused: {status:?}", self.cluster);
                false
            }
        }
    }
}

fn log_notes(client_id: &str, notes: &[String]) {
    for note in notes {
        log::warn!("kcpep [{client_id}]: {note}");
    }
}

impl Root {
    fn refresh(&mut self) {
        self.refresh_with(false);
    }

    /// On a configuration change Envoy keeps the VM and its shared data, and starts a new root
    /// context: it takes the realm keys, PAT and resources other root contexts left in shared
    /// data at once, or it would answer 503 until its first tick.
    fn adopt_shared(&mut self) {
        self.refresh_with(true);
    }

    fn refresh_with(&mut self, offline: bool) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let now = host::now_ms();
        let mut all_settled = true;
        for (i, enforcer) in plugin.filter.enforcers.iter().enumerate() {
            let cfg = &enforcer.config;
            let mut callouts = Callouts {
                pending: &mut self.pending,
                metrics: &self.metrics,
                nonce: self.nonce,
                enforcer: i,
                cluster: &cfg.proxy.cluster,
                authority: &cfg.proxy.authority,
                timeout_ms: cfg.proxy.timeout_ms,
                offline,
            };
            let report = enforcer.refresh(&mut callouts, now);
            log_notes(&cfg.client_id, &report.notes);
            all_settled &= report.settled;
        }
        self.settled = all_settled;
        self.set_tick(&plugin);
    }

    fn set_tick(&self, plugin: &Plugin) {
        let waiting = !plugin.parked.borrow().is_empty() || !self.flows.is_empty();
        let mut ms = background::tick_period_ms(waiting, self.settled);
        if plugin.logout_endpoint {
            ms = ms.min(LOGOUT_TICK_MS);
        }
        let _ = hostcalls::set_tick_period(Duration::from_millis(ms));
    }

    fn wake(&mut self) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        if plugin.parked.borrow().is_empty() {
            return;
        }
        for (token, flow) in wake_parked(&plugin, &self.metrics, None) {
            // Dispatched while the root context ran: the answer comes to the root context.
            self.flows.insert(token, flow);
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let Some((i, fetch, key, sent_ms)) = self.pending.remove(&token) else {
            if let Some(flow) = self.flows.remove(&token) {
                self.flow_answer(&plugin, flow, num_headers, body_size);
            }
            return;
        };
        let mut body = Vec::new();
        let (status, ok) = host::call_answer(num_headers, body_size, &mut body);
        let now = host::now_ms();
        // Background fetches count as Keycloak calls, errors and latency too.
        self.metrics.record(Event::KeycloakAnswer {
            ok,
            status,
            latency_ms: now - sent_ms,
        });
        let enforcer = &plugin.filter.enforcers[i];
        let done = enforcer.fetched(fetch, &key, host::answer(status, ok, &body), now);
        if let Some(doc) = &done.share {
            // Shared with the other VMs; only good answers are stored.
            host::shared_set(&key, doc);
        }
        host::release_lease(&done.lease, self.nonce);
        if done.keys_loaded {
            log::info!("kcpep [{}]: realm keys loaded", enforcer.config.client_id);
        }
        log_notes(&enforcer.config.client_id, &done.report.notes);
        // Follow-up fetches (bindings need the PAT) start right away.
        self.refresh();
    }
}

impl Root {
    /// The answer to a callout a parked request made from the root context.
    fn flow_answer(
        &mut self,
        plugin: &Plugin,
        mut flow: Flow,
        num_headers: usize,
        body_size: usize,
    ) {
        if hostcalls::set_effective_context(flow.id).is_err() {
            return;
        }
        match flow.on_answer(plugin, &self.metrics, num_headers, body_size) {
            Applied::Called(token) => {
                self.flows.insert(token, flow);
            }
            Applied::Wait(key, until_ms) => plugin.parked.borrow_mut().push(Parked {
                flow,
                key,
                until_ms,
            }),
            Applied::Continue | Applied::Replied => {}
            Applied::ReadBody => flow.body_lost(plugin, &self.metrics),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match PluginConfig::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("kcpep: invalid configuration: {e}");
                return false;
            }
        };
        let filter = Filter::new(config, MEMO_ENTRIES);
        for Enforcer {
            name, config: cfg, ..
        } in &filter.enforcers
        {
            for need in cfg.host_requirements() {
                log::info!("kcpep [{name}]: {need}");
            }
        }
        let host_verify = host::probe_verify_signature();
        if !crate::keycloak::token::can_verify(host_verify) {
            log::error!(
                "kcpep: this build checks token signatures through the host's verify_signature, which this host does not offer (Envoy has it; other proxy-wasm hosts may not): use keycloak_pep_rust_crypto.wasm (make wasm-rust-crypto), which checks them in wasm"
            );
            return false;
        }
        log::info!(
            "kcpep: configured {} enforcer(s); signatures verified {}",
            filter.enforcers.len(),
            if host_verify {
                "by the host (verify_signature)"
            } else {
                "in wasm"
            }
        );
        let logout_endpoint = filter
            .enforcers
            .iter()
            .any(|e| e.config.proxy.backchannel_logout.is_some());
        super::store::create_replay_slots(&filter.replay);
        super::store::create_decision_slots(filter.enforcers.iter().map(|e| &e.config));
        self.metrics = Rc::new(Metrics::define());
        self.plugin = Some(Rc::new(Plugin {
            filter,
            host_verify,
            parked: RefCell::new(Vec::new()),
            front: Default::default(),
            logout_endpoint,
        }));
        self.settled = false;
        self.adopt_shared();
        let _ = hostcalls::set_tick_period(Duration::from_millis(background::tick_period_ms(
            false, false,
        )));
        true
    }

    fn on_tick(&mut self) {
        self.wake();
        self.refresh();
        if let Some(e) = self
            .plugin
            .as_ref()
            .filter(|p| p.logout_endpoint)
            .and_then(|p| p.filter.enforcers.first())
        {
            super::store::read_logouts(&mut e.logouts().borrow_mut(), host::now_ms());
        }
        super::metrics::note_memory(core::arch::wasm32::memory_size(0) as u32);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(
            context_id,
            self.plugin.clone(),
            self.metrics.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
