//! Root context: one per VM (Envoy runs one VM per worker plus one on the main thread).
//! Parses the plugin configuration once and keeps each enforcer's background knowledge fresh.

use super::host;
use super::http::Http;
use crate::enforcer::{Answer, Runtime};
use crate::refresh::{Background, Fetch};
use crate::routes::PluginConfig;
use crate::shared;
use crate::token::VerifiedTokens;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Verified tokens remembered per enforcer and VM.
const VERIFIED_TOKENS: usize = 4096;
const TICK_STARTING: Duration = Duration::from_millis(100);
const TICK_SETTLED: Duration = Duration::from_millis(1000);

/// One enforcer's changing state in this VM.
pub struct EnforcerState {
    pub rt: Runtime,
    pub bg: Background,
    pub verified: VerifiedTokens,
}

/// The configuration and state shared by the root context and its requests.
pub struct Plugin {
    pub config: PluginConfig,
    pub enforcers: Vec<RefCell<EnforcerState>>,
    /// Header names the filter sets itself; a client's copies are removed.
    pub own_headers: Vec<String>,
    /// The host offers a working `verify_signature` (Envoy): RSA checks are done there.
    pub host_verify: bool,
}

pub struct Root {
    plugin: Option<Rc<Plugin>>,
    /// Callout token -> (enforcer, what was fetched).
    pending: HashMap<u32, (usize, Fetch, String)>,
    settled: bool,
    /// This VM's identity in fetch leases.
    nonce: u64,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            plugin: None,
            pending: HashMap::new(),
            settled: false,
            nonce: host::random_u64(),
        }
    }
}

impl Root {
    fn refresh(&mut self) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let now = host::now_ms();
        let mut all_settled = true;
        for (i, (_, cfg)) in plugin.config.enforcers.iter().enumerate() {
            let mut st = plugin.enforcers[i].borrow_mut();
            let EnforcerState { rt, bg, verified } = &mut *st;
            for (fetch, req) in bg.due(cfg, rt, now) {
                let key = shared::doc_key(cfg, fetch, &req);
                // Another VM (or enforcer of the same realm) may have fetched it already.
                if let Some((_, body)) = host::shared_get(&key).0 {
                    if let Some((stored_at, doc)) = shared::decode_doc(&body) {
                        if shared::fresh(fetch, stored_at, doc, now, bg.jwks_forced) {
                            bg.complete(
                                cfg,
                                rt,
                                fetch,
                                Answer::Http {
                                    status: 200,
                                    body: doc,
                                },
                                stored_at,
                            );
                            if matches!(fetch, Fetch::Jwks) {
                                verified.clear();
                            }
                            continue;
                        }
                    }
                }
                let in_flight_here = self.pending.values().any(|(_, _, k)| *k == key);
                if in_flight_here || !host::take_lease(&shared::lease_key(&key), self.nonce, now) {
                    bg.skip(fetch);
                    continue;
                }
                match host::dispatch(
                    &cfg.proxy.cluster,
                    &cfg.proxy.authority,
                    &req,
                    cfg.proxy.timeout_ms,
                ) {
                    Ok(token) => {
                        self.pending.insert(token, (i, fetch, key));
                    }
                    Err(status) => {
                        log::warn!(
                            "kcpep: cannot call cluster {} for {}: {:?}",
                            cfg.proxy.cluster,
                            fetch.name(),
                            status
                        );
                        bg.complete(cfg, rt, fetch, Answer::NoAnswer, now);
                    }
                }
            }
            for note in bg.notes.drain(..) {
                log::warn!("kcpep [{}]: {note}", cfg.client_id);
            }
            all_settled &= bg.settled();
        }
        if all_settled != self.settled {
            self.settled = all_settled;
            let period = if all_settled {
                TICK_SETTLED
            } else {
                TICK_STARTING
            };
            let _ = hostcalls::set_tick_period(period);
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
        let Some((i, fetch, key)) = self.pending.remove(&token) else {
            return;
        };
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let mut body = Vec::new();
        let (status, ok) = host::call_answer(num_headers, body_size, &mut body);
        let now = host::now_ms();
        let cfg = &plugin.config.enforcers[i].1;
        let mut st = plugin.enforcers[i].borrow_mut();
        let EnforcerState { rt, bg, verified } = &mut *st;
        let had_keys = bg.ready();
        bg.complete(cfg, rt, fetch, host::answer(status, ok, &body), now);
        if ok && status == 200 {
            // Shared with the other VMs; only good answers are stored.
            host::shared_set(&key, &shared::encode_doc(now, &body));
        }
        host::release_lease(&shared::lease_key(&key), self.nonce);
        if matches!(fetch, Fetch::Jwks) && ok && status == 200 {
            // New key set: tokens verified under the old one are checked again.
            verified.clear();
            if !had_keys {
                log::info!("kcpep [{}]: realm keys loaded", cfg.client_id);
            }
        }
        for note in bg.notes.drain(..) {
            log::warn!("kcpep [{}]: {note}", cfg.client_id);
        }
        drop(st);
        // Follow-up fetches (bindings need the PAT) start right away.
        self.refresh();
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
        let enforcers = config
            .enforcers
            .iter()
            .map(|(_, cfg)| {
                RefCell::new(EnforcerState {
                    rt: Runtime::new(cfg),
                    bg: Background::new(cfg),
                    verified: VerifiedTokens::new(VERIFIED_TOKENS),
                })
            })
            .collect();
        let mut own_headers: Vec<String> = config
            .enforcers
            .iter()
            .map(|(_, c)| c.proxy.permissions_header.clone())
            .collect();
        own_headers.sort();
        own_headers.dedup();
        let host_verify = host::probe_verify_signature();
        log::info!(
            "kcpep: configured {} enforcer(s); RSA signatures verified {}",
            config.enforcers.len(),
            if host_verify {
                "by the host (verify_signature)"
            } else {
                "in wasm"
            }
        );
        self.plugin = Some(Rc::new(Plugin {
            config,
            enforcers,
            own_headers,
            host_verify,
        }));
        self.settled = false;
        let _ = hostcalls::set_tick_period(TICK_STARTING);
        true
    }

    fn on_tick(&mut self) {
        self.refresh();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, self.plugin.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
