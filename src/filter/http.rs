//! One request's journey through the core. A [`Flow`] holds what the core needs of the request;
//! it lives in the request's HTTP context, or in the root context while it waits for another
//! request's identical Keycloak call (decision-cache coalescing).

use super::abi;
use super::host;
use super::metrics::Metrics;
use super::store::SharedStore;
use crate::enforce;
use crate::enforce::arrival::{header_name, Arrival, Filter, Properties, Request};
use crate::enforce::enforcer::Cred;
use crate::enforce::events::{Endpoint, Event};
use crate::enforce::replies::{body_too_large, cannot_continue};
use crate::enforce::step::{Pending, Reply, RequestFacts, Step};
use crate::keycloak::background;
use crate::keycloak::token;
use crate::request::view::RequestView;
use crate::store::decisions;
use crate::wire::http::Answer;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// The stream property (Envoy filter state `wasm.kcpep.permissions`) with the granted permissions.
pub const PERMISSIONS_PROPERTY: &str = "kcpep.permissions";

/// The timer while requests wait for another request's answer.
pub fn tick_waiting() -> Duration {
    Duration::from_millis(background::tick_period_ms(true, false))
}

/// A request waiting for a decision another request is asking Keycloak for.
pub struct Parked {
    pub flow: Flow,
    pub key: decisions::Key,
    pub until_ms: i64,
}

/// The configuration and state shared by the root context and its requests.
pub struct Plugin {
    /// The enforcers, their routes and what they share (the core's).
    pub filter: Filter,
    /// The host offers a working `verify_signature` (Envoy): RSA checks are done there.
    pub host_verify: bool,
    pub parked: RefCell<Vec<Parked>>,
    pub front: crate::store::front::FrontCache,
    /// Some enforcer answers back-channel logouts: the VM reads the shared ring of logouts on
    /// every tick (at most [`LOGOUT_TICK_MS`] apart).
    pub logout_endpoint: bool,
}

/// The longest tick while back-channel logout is configured: every worker stops serving a
/// logged-out session within about this long.
pub const LOGOUT_TICK_MS: u64 = 250;

/// Decides again for parked requests whose answer is in the decision cache, or (from the root
/// context only) whose wait is over. From an HTTP context (`from_context`) only answered ones
/// wake: that context must not dispatch callouts for other requests. Returns the flows that
/// dispatched a callout, by token.
pub fn wake_parked(
    plugin: &Plugin,
    metrics: &Metrics,
    from_context: Option<u32>,
) -> Vec<(u32, Flow)> {
    let now = host::now_ms();
    let ready: Vec<Parked> = {
        let Ok(mut parked) = plugin.parked.try_borrow_mut() else {
            return Vec::new();
        };
        let (ready, waiting): (Vec<Parked>, Vec<Parked>) = parked.drain(..).partition(|p| {
            let cfg = &plugin.filter.enforcers[p.flow.enforcer].config;
            let mut store = super::store::SharedStore::new(cfg, &plugin.front);
            let found = crate::store::DecisionStore::get(&mut store, &p.key);
            decisions::wakes(found.as_ref(), now, p.until_ms, from_context.is_none())
        });
        *parked = waiting;
        ready
    };
    let mut called = Vec::new();
    for mut p in ready {
        if hostcalls::set_effective_context(p.flow.id).is_err() {
            continue; // the stream is gone
        }
        let step = p.flow.decide(plugin, now);
        match p.flow.apply(plugin, metrics, step, true) {
            Applied::Continue | Applied::Replied => {}
            // Only when the path changed under a waiting request (path cache expiry).
            Applied::ReadBody => p.flow.body_lost(plugin, metrics),
            Applied::Called(token) => called.push((token, p.flow)),
            Applied::Wait(key, until_ms) => plugin.parked.borrow_mut().push(Parked {
                flow: p.flow,
                key,
                until_ms,
            }),
        }
    }
    if let Some(id) = from_context {
        let _ = hostcalls::set_effective_context(id);
    }
    called
}

/// The request facts and the state of its conversation with Keycloak.
pub struct Flow {
    pub id: u32,
    pub enforcer: usize,
    pub method: String,
    pub path: String,
    pub cred: Cred,
    pub pending: Option<Pending>,
    /// When the pending callout was dispatched (latency histogram).
    pub sent_ms: i64,
    /// What claims may read; empty unless some enforcer has a claim information point.
    pub headers: Vec<(String, Vec<u8>)>,
    pub peer: Option<String>,
    pub tls: bool,
    /// The buffered body, once read for claims.
    pub body: Option<Vec<u8>>,
    /// The pending callout goes to a claim service, not Keycloak.
    pub to_service: bool,
    /// This request's memo key (a verified token): where a memoizable allow is remembered.
    pub memo_key: Option<u128>,
    /// Set once the request is let on or answered; until then its body and trailers are held
    /// (shared with the HTTP context, which sees the body while the flow may wait in the root).
    pub decided: Rc<Cell<bool>>,
    /// The request's trace context, copied onto its callouts (`wire::http::trace_context`).
    pub trace: Vec<(String, String)>,
}

/// What applying a step did to the stream.
pub enum Applied {
    /// Continue now (header callback) / resumed (callout callback).
    Continue,
    /// Answered locally.
    Replied,
    /// A callout (this token) was dispatched by the running context; its answer comes back there.
    Called(u32),
    /// Parked until the decision cache has the answer.
    Wait(crate::store::decisions::Key, i64),
    /// The claims need the body: decide again when it is buffered.
    ReadBody,
}

impl Flow {
    /// This request's facts, as the core reads them.
    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: &self.method,
            path: &self.path,
            credential: self.cred.credential(),
            view: RequestView {
                headers: &self.headers,
                peer: self.peer.as_deref(),
                tls: self.tls,
                body: self.body.as_deref(),
            },
        }
    }

    /// First (or renewed, after waiting) decision.
    pub fn decide(&mut self, plugin: &Plugin, now_ms: i64) -> Step {
        let e = &plugin.filter.enforcers[self.enforcer];
        let mut store = SharedStore::new(&e.config, &plugin.front);
        e.decide(&self.facts(), &mut store, now_ms)
    }

    /// The next step once Keycloak answered.
    pub fn resume(&mut self, plugin: &Plugin, answer: Answer, now_ms: i64) -> Step {
        let Some(pending) = self.pending.take() else {
            return cannot_continue("unexpected callout answer");
        };
        let e = &plugin.filter.enforcers[self.enforcer];
        let mut store = SharedStore::new(&e.config, &plugin.front);
        e.resume(&self.facts(), &mut store, pending, answer, now_ms)
    }

    /// Applies a step to this flow's stream, which must be the effective context.
    pub fn apply(
        &mut self,
        plugin: &Plugin,
        metrics: &Metrics,
        step: Step,
        in_callback: bool,
    ) -> Applied {
        let cfg = &plugin.filter.enforcers[self.enforcer].config;
        match step {
            Step::Allow(a) => {
                if let (Some(key), Some(until), Some(header)) =
                    (self.memo_key, a.memo_until_ms, &a.permissions)
                {
                    plugin
                        .filter
                        .memo
                        .borrow_mut()
                        .put(key, header, until, host::now_ms());
                }
                if let Some(r) = &a.would_deny {
                    metrics.record(Event::DryRunDenied);
                    self.log_denial(cfg, r, "kcpep dry-run would deny");
                }
                let_on(
                    cfg,
                    metrics,
                    a.cache,
                    a.permissions.as_deref(),
                    &self.decided,
                );
                log::debug!(
                    "kcpep allow [{}] {} {}: {}",
                    cfg.client_id,
                    host::loggable(self.method.as_bytes()),
                    host::loggable(crate::request::view::path_only(&self.path).as_bytes()),
                    a.reason
                );
                if in_callback {
                    abi::continue_request();
                }
                Applied::Continue
            }
            Step::Reply(r) => {
                self.decided.set(true);
                metrics.record(Event::Denied {
                    status: r.status,
                    cache: r.cache,
                });
                self.log_denial(cfg, &r, "kcpep deny");
                send(&r);
                Applied::Replied
            }
            Step::Wait { key, until_ms } => {
                metrics.record(Event::Coalesced);
                Applied::Wait(key, until_ms)
            }
            Step::ReadBody => Applied::ReadBody,
            Step::Call(call) => {
                if let Pending::Grant {
                    cached: Some(_), ..
                } = &call.pending
                {
                    metrics.record(Event::CacheMiss);
                }
                let (cluster, authority, timeout_ms) = match &call.service {
                    None => (
                        cfg.proxy.cluster.as_str(),
                        cfg.proxy.authority.as_str(),
                        cfg.proxy.timeout_ms,
                    ),
                    Some(s) => (
                        s.cluster.as_str(),
                        s.authority.as_str(),
                        s.timeout_ms.unwrap_or(cfg.proxy.timeout_ms),
                    ),
                };
                self.to_service = call.service.is_some();
                metrics.record(if self.to_service {
                    Event::ClaimCall
                } else {
                    Event::KeycloakCall {
                        path_endpoint: Endpoint::of_path(&call.request.path),
                        by_request: true,
                    }
                });
                match host::dispatch(cluster, authority, &call.request, timeout_ms, &self.trace) {
                    Ok(token) => {
                        self.pending = Some(call.pending);
                        self.sent_ms = host::now_ms();
                        Applied::Called(token)
                    }
                    Err(status) => {
                        metrics.record(if self.to_service {
                            Event::ClaimAnswer {
                                ok: false,
                                status: 0,
                            }
                        } else {
                            Event::KeycloakNotSent
                        });
                        log::warn!("kcpep: cannot call cluster {cluster}: {status:?}");
                        self.pending = Some(call.pending);
                        let next = self.resume(plugin, Answer::NoAnswer, host::now_ms());
                        self.apply(plugin, metrics, next, in_callback)
                    }
                }
            }
        }
    }

    /// Reads a callout's answer and goes on.
    pub fn on_answer(
        &mut self,
        plugin: &Plugin,
        metrics: &Metrics,
        num_headers: usize,
        body_size: usize,
    ) -> Applied {
        let mut body = Vec::new();
        let (status, ok) = host::call_answer(num_headers, body_size, &mut body);
        let now = host::now_ms();
        metrics.record(if self.to_service {
            Event::ClaimAnswer { ok, status }
        } else {
            Event::KeycloakAnswer {
                ok,
                status,
                latency_ms: now - self.sent_ms,
            }
        });
        let step = self.resume(plugin, host::answer(status, ok, &body), now);
        self.apply(plugin, metrics, step, true)
    }

    /// One structured line per denial: status, reason, matched path and resource, never a token.
    fn log_denial(&self, cfg: &crate::config::EnforcerConfig, r: &Reply, what: &str) {
        log::info!(
            "{what} status={} request={} client={} method={} path=\"{}\" matched=\"{}\" resource=\"{}\" reason=\"{}\"",
            r.status,
            self.id,
            cfg.client_id,
            host::loggable(self.method.as_bytes()),
            // without the query: it may carry credentials (`?access_token=`)
            host::loggable(crate::request::view::path_only(&self.path).as_bytes()),
            host::loggable(r.path.as_deref().unwrap_or("").as_bytes()),
            host::loggable(r.resource.as_deref().unwrap_or("").as_bytes()),
            host::loggable(r.reason.as_bytes())
        );
    }

    /// A request that waited elsewhere and now needs a body it can no longer read: refused,
    /// never let through unevaluated.
    pub fn body_lost(&mut self, plugin: &Plugin, metrics: &Metrics) {
        let step = cannot_continue(
            "the matched path changed while the request waited and now needs its body",
        );
        self.apply(plugin, metrics, step, true);
    }
}

pub struct Http {
    plugin: Option<Rc<Plugin>>,
    metrics: Rc<Metrics>,
    flow: Option<Flow>,
    id: u32,
    /// The claims need the body: it is being buffered, headers held, to decide at its end.
    reading_body: bool,
    /// The whole body has arrived (held while the decision was pending).
    body_ended: bool,
    /// How much body Envoy holds so far.
    body_len: usize,
    /// See [`Flow::decided`].
    decided: Rc<Cell<bool>>,
    /// A back-channel logout request to this enforcer's endpoint: its body is read and answered
    /// here (never forwarded); the `content-type` it came with.
    logout: Option<(usize, Option<String>)>,
}

impl Http {
    pub fn new(id: u32, plugin: Option<Rc<Plugin>>, metrics: Rc<Metrics>) -> Self {
        Http {
            plugin,
            metrics,
            flow: None,
            id,
            reading_body: false,
            body_ended: false,
            body_len: 0,
            decided: Rc::new(Cell::new(false)),
            logout: None,
        }
    }

    /// Answers a back-channel logout request whose body is complete, and shares what ended.
    fn answer_logout(
        &mut self,
        plugin: &Plugin,
        enforcer: usize,
        content_type: Option<&str>,
        size: usize,
    ) {
        let body = hostcalls::get_buffer(
            BufferType::HttpRequestBody,
            0,
            size.min(crate::keycloak::logout::MAX_BODY_BYTES + 1),
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let host: Option<token::HostVerifier> = plugin.host_verify.then_some(&host::host_verify);
        let mut replay = super::store::shared_replay(plugin.filter.replay);
        let e = &plugin.filter.enforcers[enforcer];
        let (reply, ended) =
            e.backchannel_logout(content_type, &body, host::now_ms(), host, &mut replay);
        for (id, at_ms, until_ms) in &ended {
            super::store::publish_logout(id, *at_ms, *until_ms);
        }
        log::info!(
            "kcpep [{}] back-channel logout status={} request={} reason=\"{}\" ended={}",
            e.name,
            reply.status,
            self.id,
            reply.reason,
            ended.len()
        );
        self.decided.set(true);
        send(&reply);
    }

    /// Hands a waiting flow to the root context, which decides again when the answer is cached.
    fn park(&mut self, plugin: &Plugin, key: crate::store::decisions::Key, until_ms: i64) {
        if let Some(flow) = self.flow.take() {
            plugin.parked.borrow_mut().push(Parked {
                flow,
                key,
                until_ms,
            });
            let _ = hostcalls::set_tick_period(tick_waiting());
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        // A parked request whose stream is gone must not be resumed.
        if let Some(plugin) = &self.plugin {
            if let Ok(mut parked) = plugin.parked.try_borrow_mut() {
                parked.retain(|p| p.flow.id != self.id);
            }
        }
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let (Some(plugin), Some(mut flow)) = (self.plugin.clone(), self.flow.take()) else {
            return;
        };
        let applied = flow.on_answer(&plugin, &self.metrics, num_headers, body_size);
        self.flow = Some(flow);
        self.applied_in_callback(&plugin, applied);
    }
}

impl Http {
    /// 413 for a body over `max-body-bytes` (or, in dry-run, go on).
    fn body_too_large(&mut self, plugin: &Plugin, mut flow: Flow, in_callback: bool) -> Action {
        self.reading_body = false;
        let cfg = &plugin.filter.enforcers[flow.enforcer].config;
        let step = body_too_large(cfg);
        let applied = flow.apply(plugin, &self.metrics, step, in_callback);
        self.flow = Some(flow);
        match applied {
            Applied::Continue => Action::Continue,
            _ => Action::Pause,
        }
    }

    /// Applies the first step of a request from a filter callback (headers or body).
    fn first_step(&mut self, plugin: &Plugin, mut flow: Flow, end_of_stream: bool) -> Action {
        let now = host::now_ms();
        let mut step = flow.decide(plugin, now);
        if matches!(step, Step::ReadBody) && end_of_stream && flow.body.is_none() {
            // No body will come: decide with an empty one.
            flow.body = Some(Vec::new());
            step = flow.decide(plugin, now);
        }
        let applied = flow.apply(plugin, &self.metrics, step, false);
        self.flow = Some(flow);
        match applied {
            Applied::Continue => Action::Continue,
            Applied::Replied | Applied::Called(_) => Action::Pause,
            Applied::Wait(key, until) => {
                self.park(plugin, key, until);
                Action::Pause
            }
            Applied::ReadBody => {
                // The headers are held (StopIteration, which Envoy honours with the Wasm
                // filter's allow_on_headers_stop_iteration) until the whole body is decided on:
                // a denied request never reaches the upstream, whatever the route.
                self.reading_body = true;
                Action::Pause
            }
        }
    }

    /// The body is complete (`size` bytes at most, read from Envoy's buffer): decide.
    /// `in_callback`: called from a callout answer, not a stream callback.
    fn body_ready(
        &mut self,
        plugin: &Plugin,
        mut flow: Flow,
        size: usize,
        in_callback: bool,
    ) -> Action {
        self.reading_body = false;
        let cfg = &plugin.filter.enforcers[flow.enforcer].config;
        // one byte past the bound is enough to know it is too large
        let limit = (cfg.proxy.max_body_bytes as usize).saturating_add(1);
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size.min(limit))
            .ok()
            .flatten()
            .unwrap_or_default();
        if cfg.body_over_bound(body.len()) {
            return self.body_too_large(plugin, flow, in_callback);
        }
        flow.body = Some(body);
        if !in_callback {
            return self.first_step(plugin, flow, true);
        }
        let step = flow.decide(plugin, host::now_ms());
        let applied = flow.apply(plugin, &self.metrics, step, true);
        self.flow = Some(flow);
        self.applied_in_callback(plugin, applied);
        Action::Pause
    }

    /// What a step applied outside a stream callback (a callout answer) leaves to do.
    fn applied_in_callback(&mut self, plugin: &Plugin, applied: Applied) {
        match applied {
            Applied::Wait(key, until) => self.park(plugin, key, until),
            Applied::Continue | Applied::Replied => {
                // Requests on this worker that waited for this very answer go on now.
                wake_parked(plugin, &self.metrics, Some(self.id));
            }
            Applied::Called(_) => {}
            Applied::ReadBody => {
                // A path resolved by Keycloak whose claims read the body; the headers stay held.
                let too_much = self.flow.as_ref().is_some_and(|f| {
                    plugin.filter.enforcers[f.enforcer]
                        .config
                        .body_over_bound(self.body_len)
                });
                if self.body_ended || too_much {
                    // It came (or too much of it) while Keycloak was asked: read it now.
                    if let Some(flow) = self.flow.take() {
                        self.body_ready(plugin, flow, usize::MAX, true);
                    }
                } else {
                    self.reading_body = true;
                }
            }
        }
    }
}

/// Lets an allowed request on with its permissions: the one way out for a decision, a cache hit
/// and a memo hit.
fn let_on(
    cfg: &crate::config::EnforcerConfig,
    metrics: &Metrics,
    cache: enforce::step::CacheUse,
    permissions: Option<&str>,
    decided: &Cell<bool>,
) {
    decided.set(true);
    metrics.record(Event::Allowed(cache));
    if let Some(value) = permissions {
        // Refused once the headers went on (a body read for claims): then only the filter state
        // carries the permissions.
        if cfg.proxy.send_permissions_header {
            abi::set_request_header(&cfg.proxy.permissions_header, Some(value));
        }
        // Envoy keeps it as filter state `wasm.kcpep.permissions` (access logs, later filters);
        // proxy-wasm has no way to write dynamic metadata itself.
        abi::set_property(&[PERMISSIONS_PROPERTY], value.as_bytes());
    }
}

/// Sends a local reply.
fn send(r: &Reply) {
    abi::send_response(r.status, &r.wire_headers(), r.body.as_bytes());
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            send(&enforce::gate::not_configured());
            return Action::Pause;
        };
        // One host call for the whole map, read in place (`wire::pairs`): each value fetched on
        // its own costs a call back into the VM's allocator, and the SDK's getter copies every
        // name and value into allocations of their own.
        let raw = abi::request_map(false).unwrap_or_default();
        let mut headers = crate::wire::pairs::parse(&raw).unwrap_or_default();
        // Headers the filter sets itself are never taken from the client, in any spelling an
        // upstream could read as the same header, nor seen by anything after.
        let spoofed = plugin.filter.spoofed(&headers);
        if !spoofed.is_empty() {
            for n in &spoofed {
                abi::set_request_header(n, None);
            }
            headers.retain(|(k, _)| !spoofed.iter().any(|n| n.as_bytes() == *k));
        }
        let req = Request {
            headers: &headers,
            end_of_stream,
        };
        let host: Option<token::HostVerifier> = plugin.host_verify.then_some(&host::host_verify);
        let now = host::now_ms();
        match plugin
            .filter
            .arrive(&req, &HostProperties, super::store::SharedCas, host, now)
        {
            Arrival::Reply { reply, route_name } => {
                self.metrics.record(Event::Denied {
                    status: reply.status,
                    cache: reply.cache,
                });
                let (_, _, authority) = req.line();
                log::info!(
                    "kcpep deny status={} request={} reason=\"{}\" route={:?} authority=\"{}\"",
                    reply.status,
                    self.id,
                    reply.reason,
                    route_name,
                    host::loggable(authority.as_bytes())
                );
                send(&reply);
                Action::Pause
            }
            Arrival::Logout {
                enforcer,
                content_type,
                now,
            } => {
                if now {
                    self.answer_logout(&plugin, enforcer, content_type.as_deref(), 0);
                } else {
                    self.logout = Some((enforcer, content_type));
                }
                Action::Pause
            }
            Arrival::Memo {
                enforcer,
                permissions,
            } => {
                // answered as the cache hit it stands for (the value written as stored)
                let cfg = &plugin.filter.enforcers[enforcer].config;
                let hit = enforce::step::CacheUse::Hit;
                let_on(cfg, &self.metrics, hit, Some(&permissions), &self.decided);
                Action::Continue
            }
            Arrival::Decide {
                enforcer,
                method,
                path,
                cred,
                memo_key,
            } => {
                if let Cred::Refused(r) = &cred {
                    self.metrics.record(Event::BindingRefused(r.counter));
                }
                let claims = plugin.filter.routes.uses_claims();
                let prop = |p: &str| {
                    hostcalls::get_property(p.split('.').collect())
                        .ok()
                        .flatten()
                };
                let flow = Flow {
                    id: self.id,
                    enforcer,
                    method,
                    path,
                    cred,
                    pending: None,
                    sent_ms: 0,
                    peer: claims
                        .then(|| prop("source.address"))
                        .flatten()
                        .and_then(|b| String::from_utf8(b).ok()),
                    tls: claims && prop("connection.tls_version").is_some_and(|v| !v.is_empty()),
                    headers: if claims {
                        let owned = headers
                            .iter()
                            .map(|(k, v)| (header_name(k).to_string(), v.to_vec()));
                        owned.collect()
                    } else {
                        Vec::new()
                    },
                    body: None,
                    to_service: false,
                    memo_key,
                    decided: Rc::clone(&self.decided),
                    trace: crate::wire::http::trace_context(headers.iter().map(|(k, v)| (*k, *v))),
                };
                self.first_step(&plugin, flow, end_of_stream)
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.decided.get() {
            return Action::Continue;
        }
        if let Some((enforcer, content_type)) = self.logout.clone() {
            if end_of_stream || body_size > crate::keycloak::logout::MAX_BODY_BYTES {
                if let Some(plugin) = self.plugin.clone() {
                    self.answer_logout(&plugin, enforcer, content_type.as_deref(), body_size);
                }
            }
            return Action::Pause;
        }
        // Undecided: hold the body (Envoy buffers it). Going on would release the held headers.
        self.body_len = body_size;
        if end_of_stream {
            self.body_ended = true;
        }
        if !self.reading_body {
            return Action::Pause;
        }
        let (Some(plugin), Some(flow)) = (self.plugin.clone(), self.flow.take()) else {
            return Action::Pause; // never let an undecided body through
        };
        if plugin.filter.enforcers[flow.enforcer]
            .config
            .body_over_bound(body_size)
        {
            return self.body_too_large(&plugin, flow, false);
        }
        if !end_of_stream {
            self.flow = Some(flow);
            return Action::Pause; // buffer
        }
        self.body_ready(&plugin, flow, body_size, false)
    }

    /// A body followed by trailers (HTTP/2, gRPC) ends here, not with an end-of-stream data
    /// frame: decide now. Going on without deciding would forward the buffered request unchecked.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers are headers too for some upstreams (they merge them): the filter's own names
        // are removed here as from the headers.
        if let Some(plugin) = &self.plugin {
            let raw = abi::request_map(true).unwrap_or_default();
            let trailers = crate::wire::pairs::parse(&raw).unwrap_or_default();
            let names = trailers
                .iter()
                .filter_map(|(k, _)| std::str::from_utf8(k).ok());
            for name in enforce::gate::spoofed(&plugin.filter.own_headers, names) {
                abi::remove_request_trailer(&name);
            }
        }
        if self.decided.get() {
            return Action::Continue;
        }
        self.body_ended = true;
        if let Some((enforcer, content_type)) = self.logout.clone() {
            if let Some(plugin) = self.plugin.clone() {
                let size = self
                    .body_len
                    .max(crate::keycloak::logout::MAX_BODY_BYTES + 1);
                self.answer_logout(&plugin, enforcer, content_type.as_deref(), size);
            }
            return Action::Pause;
        }
        if !self.reading_body {
            return Action::Pause;
        }
        let (Some(plugin), Some(flow)) = (self.plugin.clone(), self.flow.take()) else {
            return Action::Pause;
        };
        self.body_ready(&plugin, flow, usize::MAX, false)
    }
}

/// What Envoy tells of a request beyond its headers, read as the core asks for it.
struct HostProperties;

impl HostProperties {
    fn get(paths: &[&[&str]]) -> Option<Vec<u8>> {
        paths
            .iter()
            .find_map(|p| hostcalls::get_property(p.to_vec()).ok().flatten())
    }

    fn text(paths: &[&[&str]]) -> Option<String> {
        Self::get(paths)
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
    }
}

impl Properties for HostProperties {
    // `xds.route_name` (Istio: the VirtualService http route name), else the older
    // `route_name`; `xds.virtual_host_name` (Envoy >= 1.33).
    fn route_name(&self) -> Option<String> {
        Self::text(&[&["xds", "route_name"], &["route_name"]])
    }

    fn virtual_host(&self) -> Option<String> {
        Self::text(&[&["xds", "virtual_host_name"]])
    }

    fn peer(&self) -> Option<String> {
        Self::text(&[&["source", "address"]])
    }

    fn tls(&self) -> bool {
        Self::get(&[&["connection", "tls_version"]]).is_some_and(|v| !v.is_empty())
    }

    fn certificate_sha256_hex(&self) -> Option<Vec<u8>> {
        Self::get(&[&["connection", "sha256_peer_certificate_digest"]])
    }
}
