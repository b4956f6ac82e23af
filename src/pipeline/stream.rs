//! One request's journey through a worker, from "headers arrived" to "verdict applied": the
//! arrival rules (`enforce::arrival`), the enforcer's flow with its callouts, waiting for
//! another request's identical call, holding the body for claims, and applying the verdict to
//! the stream (let on with the permissions, or a local reply).

use super::flow::{answer_event, Flow, Parked, Stream};
use super::host::{Go, Host, Source, Upstream, Verdict};
use super::worker::Worker;
use crate::config::{DecisionRecord, RecordSubject};
use crate::enforce::arrival::Remembered;
use crate::enforce::arrival::{header_name, Arrival, Properties, Request};
use crate::enforce::enforcer::Enforcer;
use crate::enforce::events::{Endpoint, Event};
use crate::enforce::grpc::{self, Wire};
use crate::enforce::replies::{body_too_large, cannot_continue};
use crate::enforce::step::Credential;
use crate::enforce::step::{CacheUse, Pending, Reply, Step};
use crate::keycloak::background;
use crate::keycloak::logout::MAX_BODY_BYTES;
use crate::keycloak::token::HostVerifier;
use crate::request::view::{loggable, path_only};
use crate::store::decisions::Key;
use crate::store::shared::SharedStore;
use crate::store::DecisionStore;
use crate::wire::http::{trace_context, Answer};
use crate::wire::pseudonym;
use std::rc::Rc;

/// What applying a step did to the stream.
enum Applied {
    /// Let on (or, from a callout answer, resumed).
    Continue,
    /// Answered locally.
    Replied,
    /// A callout was dispatched; its answer comes back through `on_call_answer`.
    Called,
    /// Parked until the decision table has the answer.
    Wait(Key, i64),
    /// The claims need the body: decide again when it is buffered.
    ReadBody,
}

impl Worker {
    /// A request's headers (the client's copies of the filter's own headers are removed here,
    /// from the stream and from `headers`).
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn on_request_headers(
        &mut self,
        host: &mut dyn Host,
        id: u32,
        headers: &mut Vec<(&[u8], &[u8])>,
        end_of_stream: bool,
        props: &dyn Properties,
    ) -> Go {
        // Headers the filter sets itself are never taken from the client, in any spelling an
        // upstream could read as the same header, nor seen by anything after.
        let spoofed = self.filter.spoofed(headers);
        for n in &spoofed {
            host.set_request_header(id, n, None);
        }
        headers.retain(|(k, _)| !spoofed.iter().any(|n| n.as_bytes() == *k));
        let req = Request {
            headers,
            end_of_stream,
        };
        let now = host.now_ms();
        let verify = self.verify.as_ref().map(|f| f as HostVerifier);
        let grpc = headers
            .iter()
            .find(|(k, _)| *k == b"content-type")
            .and_then(|(_, v)| Wire::of(v));
        match self.filter.arrive(&req, props, &mut *host, verify, now) {
            Arrival::Reply { reply, route_name } => {
                let reply = match grpc {
                    Some(wire) => grpc::for_grpc(reply, wire),
                    None => reply,
                };
                host.record(Event::Denied {
                    status: reply.status,
                    cache: reply.cache,
                });
                let (_, _, authority) = req.line();
                log::info!(
                    "kcpep deny status={} request={id} reason=\"{}\" route={:?} authority=\"{}\"",
                    reply.status,
                    reply.reason,
                    route_name,
                    loggable(authority.as_bytes())
                );
                self.tell(host, id, &self.reply_verdict(&reply, None));
                host.send_reply(id, &reply);
                Go::Pause
            }
            Arrival::Logout {
                enforcer,
                content_type,
                now,
            } => {
                if now {
                    self.answer_logout(host, id, enforcer, content_type.as_deref(), 0);
                } else {
                    let st = Stream::new(None);
                    let st = Stream {
                        logout: Some((enforcer, content_type)),
                        ..st
                    };
                    self.streams.insert(id, st);
                }
                Go::Pause
            }
            Arrival::Memo {
                enforcer,
                remembered,
            } => {
                // answered as the cache hit it stands for (the value written as stored)
                let e = &self.filter.enforcers[enforcer];
                let verdict = Verdict {
                    status: 200,
                    reason: "the decision this token got for this method and path (memo)",
                    cache: CacheUse::Hit,
                    enforcer: Some(enforcer),
                    enforcer_name: Some(&e.name),
                    client: Some(&e.config.client_id),
                    source: Source::Memo,
                    keycloak_ms: None,
                    matched: remembered.matched.as_ref(),
                    permissions: Some(&remembered.permissions),
                    would_deny: None,
                    subject: remembered.subject.as_deref(),
                    grpc_status: None,
                };
                self.let_on(host, id, &verdict);
                Go::Continue
            }
            Arrival::Decide {
                enforcer,
                method,
                path,
                cred,
                memo_key,
            } => {
                if let Credential::Refused(r) = &cred {
                    host.record(Event::BindingRefused(r.counter));
                }
                let claims = self.filter.routes.uses_claims();
                let flow = Flow {
                    enforcer,
                    method,
                    path,
                    cred,
                    pending: None,
                    sent_ms: 0,
                    keycloak_ms: None,
                    waited: false,
                    peer: claims.then(|| props.peer()).flatten(),
                    tls: claims && props.tls(),
                    headers: if claims {
                        let owned = headers
                            .iter()
                            .map(|(k, v)| (header_name(k).to_string(), v.to_vec()));
                        owned.collect()
                    } else {
                        Vec::new()
                    },
                    body: None,
                    memo_key,
                    trace: trace_context(headers.iter().map(|(k, v)| (*k, *v))),
                    grpc,
                };
                self.first_step(host, id, Stream::new(Some(flow)), end_of_stream)
            }
        }
    }

    /// A part of the request body has arrived (`body_size`: all of it so far).
    pub fn on_request_body(
        &mut self,
        host: &mut dyn Host,
        id: u32,
        body_size: usize,
        end_of_stream: bool,
    ) -> Go {
        let Some(mut st) = self.streams.remove(&id) else {
            return Go::Continue; // decided
        };
        if let Some((enforcer, content_type)) = st.logout.clone() {
            if end_of_stream || body_size > MAX_BODY_BYTES {
                self.answer_logout(host, id, enforcer, content_type.as_deref(), body_size);
            } else {
                self.streams.insert(id, st);
            }
            return Go::Pause;
        }
        // Undecided: hold the body (the proxy buffers it). Going on would release the held
        // headers.
        st.body_len = body_size;
        st.body_ended |= end_of_stream;
        let over = st.flow.as_ref().is_some_and(|f| {
            self.filter.enforcers[f.enforcer]
                .config
                .body_over_bound(body_size)
        });
        if !st.reading_body {
            self.streams.insert(id, st);
            Go::Pause
        } else if over {
            self.body_too_large(host, id, st, false)
        } else if !end_of_stream {
            self.streams.insert(id, st);
            Go::Pause // buffer
        } else {
            self.body_ready(host, id, st, body_size, None)
        }
    }

    /// A body followed by trailers (HTTP/2, gRPC) ends here, not with an end-of-stream data
    /// frame: decide now. Going on without deciding would forward the buffered request unchecked.
    pub fn on_request_trailers(&mut self, host: &mut dyn Host, id: u32, names: &[&str]) -> Go {
        // Trailers are headers too for some upstreams (they merge them): the filter's own names
        // are removed here as from the headers.
        let own = &self.filter.own_headers;
        for name in crate::enforce::gate::spoofed(own, names.iter().copied()) {
            host.remove_request_trailer(id, &name);
        }
        let Some(mut st) = self.streams.remove(&id) else {
            return Go::Continue;
        };
        st.body_ended = true;
        if let Some((enforcer, content_type)) = st.logout.clone() {
            let size = st.body_len.max(MAX_BODY_BYTES + 1);
            self.answer_logout(host, id, enforcer, content_type.as_deref(), size);
            return Go::Pause;
        }
        if !st.reading_body {
            self.streams.insert(id, st);
            return Go::Pause;
        }
        self.body_ready(host, id, st, usize::MAX, None)
    }

    /// Answers a back-channel logout whose body is complete (`size` bytes), and shares what
    /// ended with the other workers.
    fn answer_logout(
        &mut self,
        host: &mut dyn Host,
        id: u32,
        enforcer: usize,
        content_type: Option<&str>,
        size: usize,
    ) {
        let body = if size == 0 {
            Vec::new()
        } else {
            host.request_body(id, size.min(MAX_BODY_BYTES + 1))
        };
        let now = host.now_ms();
        let verify = self.verifier();
        let mut replay = crate::store::replay::Tables {
            layout: self.filter.replay,
            store: &mut *host,
        };
        let e = &self.filter.enforcers[enforcer];
        let (reply, ended) = e.backchannel_logout(content_type, &body, now, verify, &mut replay);
        for (ended, at_ms, until_ms) in &ended {
            crate::store::shared::publish_logout(&mut *host, ended, *at_ms, *until_ms);
        }
        log::info!(
            "kcpep [{}] back-channel logout status={} request={id} reason=\"{}\" ended={}",
            e.name,
            reply.status,
            reply.reason,
            ended.len()
        );
        self.tell(
            host,
            id,
            &self.reply_verdict(&reply, Some((enforcer, None))),
        );
        host.send_reply(id, &reply);
    }

    /// The first decision of a request, from its header or body callback.
    fn first_step(&mut self, host: &mut dyn Host, id: u32, mut st: Stream, eos: bool) -> Go {
        let now = host.now_ms();
        let Some(flow) = st.flow.as_mut() else {
            return Go::Pause;
        };
        let mut step = self.decide(host, flow, now);
        if matches!(step, Step::ReadBody) && eos && flow.body.is_none() {
            // No body will come: decide with an empty one.
            flow.body = Some(Vec::new());
            step = self.decide(host, flow, now);
        }
        match self.apply(host, id, &mut st, step, false, id) {
            Applied::Continue => Go::Continue,
            Applied::Replied => Go::Pause,
            Applied::Called => {
                self.streams.insert(id, st);
                Go::Pause
            }
            Applied::Wait(key, until) => {
                self.park(host, id, st, key, until);
                Go::Pause
            }
            Applied::ReadBody => {
                // The headers are held (StopIteration, which Envoy honours with the Wasm
                // filter's allow_on_headers_stop_iteration) until the whole body is decided on:
                // a denied request never reaches the upstream, whatever the route.
                st.reading_body = true;
                self.streams.insert(id, st);
                Go::Pause
            }
        }
    }

    /// The answer to a request's callout (`NoAnswer` when it was lost).
    pub(super) fn answered(&mut self, host: &mut dyn Host, id: u32, answer: Answer, via: u32) {
        let Some(mut st) = self.streams.remove(&id) else {
            return;
        };
        let now = host.now_ms();
        let Some(flow) = st.flow.as_mut() else {
            return;
        };
        host.record(if flow.to_service() {
            let (ok, status) = answer.outcome();
            Event::ClaimAnswer { ok, status }
        } else {
            flow.keycloak_ms = Some(flow.keycloak_ms.unwrap_or(0) + now - flow.sent_ms);
            answer_event(&answer, now - flow.sent_ms)
        });
        let step = self.resume(host, flow, answer, now);
        let applied = self.apply(host, id, &mut st, step, true, via);
        self.after_callback(host, id, st, applied, via);
    }

    /// A parked request decides again (its answer is in, or its wait is over).
    pub(super) fn redecide(&mut self, host: &mut dyn Host, id: u32, via: u32) {
        let Some(mut st) = self.streams.remove(&id) else {
            return;
        };
        let now = host.now_ms();
        let Some(flow) = st.flow.as_mut() else {
            return;
        };
        let step = self.decide(host, flow, now);
        let applied = self.apply(host, id, &mut st, step, true, via);
        match applied {
            // woken by another's answer: no need to wake others again
            Applied::Continue | Applied::Replied => {}
            Applied::Called => {
                self.streams.insert(id, st);
            }
            Applied::Wait(key, until) => self.park(host, id, st, key, until),
            Applied::ReadBody => self.read_body_later(host, id, st, via),
        }
    }

    /// What a step applied outside the request's own callbacks (a callout answer) leaves to do.
    fn after_callback(
        &mut self,
        host: &mut dyn Host,
        id: u32,
        st: Stream,
        applied: Applied,
        via: u32,
    ) {
        match applied {
            Applied::Wait(key, until) => self.park(host, id, st, key, until),
            Applied::Continue | Applied::Replied => {
                // Requests on this worker that waited for this very answer go on now.
                self.wake_parked(host, Some(via));
            }
            Applied::Called => {
                self.streams.insert(id, st);
            }
            Applied::ReadBody => self.read_body_later(host, id, st, via),
        }
    }

    /// A path resolved by Keycloak whose claims read the body; the headers stay held.
    fn read_body_later(&mut self, host: &mut dyn Host, id: u32, mut st: Stream, via: u32) {
        let too_much = st.flow.as_ref().is_some_and(|f| {
            self.filter.enforcers[f.enforcer]
                .config
                .body_over_bound(st.body_len)
        });
        if st.body_ended || too_much {
            // It came (or too much of it) while Keycloak was asked: read it now.
            self.body_ready(host, id, st, usize::MAX, Some(via));
        } else {
            st.reading_body = true;
            self.streams.insert(id, st);
        }
    }

    /// The body is complete (`size` bytes at most, read from the proxy's buffer): decide.
    /// `callback`: the context a callout answer arrived in, when not the stream's own callback.
    fn body_ready(
        &mut self,
        host: &mut dyn Host,
        id: u32,
        mut st: Stream,
        size: usize,
        callback: Option<u32>,
    ) -> Go {
        st.reading_body = false;
        let Some(flow) = st.flow.as_mut() else {
            return Go::Pause;
        };
        let cfg = &self.filter.enforcers[flow.enforcer].config;
        // one byte past the bound is enough to know it is too large
        let limit = (cfg.proxy.max_body_bytes as usize).saturating_add(1);
        let body = host.request_body(id, size.min(limit));
        if cfg.body_over_bound(body.len()) {
            return self.body_too_large(host, id, st, callback.is_some());
        }
        flow.body = Some(body);
        let Some(via) = callback else {
            return self.first_step(host, id, st, true);
        };
        let now = host.now_ms();
        let step = self.decide(host, flow, now);
        let applied = self.apply(host, id, &mut st, step, true, via);
        self.after_callback(host, id, st, applied, via);
        Go::Pause
    }

    /// 413 for a body over `max-body-bytes` (or, in dry-run, go on).
    fn body_too_large(&mut self, host: &mut dyn Host, id: u32, mut st: Stream, cb: bool) -> Go {
        st.reading_body = false;
        let Some(flow) = st.flow.as_ref() else {
            return Go::Pause;
        };
        let step = body_too_large(&self.filter.enforcers[flow.enforcer].config);
        match self.apply(host, id, &mut st, step, cb, id) {
            Applied::Continue => Go::Continue,
            _ => Go::Pause,
        }
    }

    /// Holds a waiting request until the decision table has its answer (or its wait ends).
    fn park(&mut self, host: &mut dyn Host, id: u32, st: Stream, key: Key, until_ms: i64) {
        self.streams.insert(id, st);
        self.parked.push(Parked {
            stream: id,
            key,
            until_ms,
        });
        host.set_tick_ms(background::tick_period_ms(true, false, false));
    }

    /// The enforcer's decision for this flow now.
    fn decide(&mut self, host: &mut dyn Host, flow: &Flow, now: i64) -> Step {
        self.judged(host, flow, now, |e, store| {
            e.decide(&flow.facts(), store, now)
        })
    }

    /// The enforcer's next step once its callout answered.
    fn resume(&mut self, host: &mut dyn Host, flow: &mut Flow, answer: Answer, now: i64) -> Step {
        let Some(pending) = flow.pending.take() else {
            return cannot_continue("unexpected callout answer");
        };
        let facts = flow.facts();
        self.judged(host, flow, now, |e, store| {
            e.resume(&facts, store, pending, answer, now)
        })
    }

    /// A step of the flow's enforcer over the shared decision table; a slot it took into use
    /// moves the "entries in use" gauge.
    fn judged(
        &mut self,
        host: &mut dyn Host,
        flow: &Flow,
        now: i64,
        step: impl FnOnce(&mut Enforcer, &mut dyn DecisionStore) -> Step,
    ) -> Step {
        let e = &mut self.filter.enforcers[flow.enforcer];
        let cfg = Rc::clone(&e.config);
        let mut store = SharedStore::new(&cfg, &mut self.front, &self.tables, &mut *host, now);
        let step = step(e, &mut store);
        if let Some(n) = store.entries_in_use {
            host.set_cache_entries(n);
        }
        step
    }

    /// Applies a step to the stream. `in_callback`: outside the stream's own header or body
    /// callback, so letting it on needs an explicit continue; `via`: the running context.
    fn apply(
        &mut self,
        host: &mut dyn Host,
        id: u32,
        st: &mut Stream,
        step: Step,
        in_callback: bool,
        via: u32,
    ) -> Applied {
        let Some(flow) = st.flow.as_mut() else {
            return Applied::Replied;
        };
        let cfg = &self.filter.enforcers[flow.enforcer].config;
        match step {
            Step::Allow(a) => {
                if let (Some(key), Some(until), Some(header)) =
                    (flow.memo_key, a.memo_until_ms, &a.permissions)
                {
                    let now = host.now_ms();
                    let remembered = Remembered {
                        permissions: Rc::from(header.as_str()),
                        matched: a.matched.clone(),
                        subject: subject(&flow.cred).map(str::to_string),
                    };
                    self.filter.memo.put(key, remembered, until, now);
                }
                if let Some(r) = &a.would_deny {
                    host.record(Event::DryRunDenied);
                    log_denial(id, &cfg.client_id, flow, r, "kcpep dry-run would deny");
                }
                log::debug!(
                    "kcpep allow [{}] {} {}: {}",
                    cfg.client_id,
                    loggable(flow.method.as_bytes()),
                    loggable(path_only(&flow.path).as_bytes()),
                    a.reason
                );
                let e = &self.filter.enforcers[flow.enforcer];
                let verdict = Verdict {
                    status: 200,
                    reason: a.reason,
                    cache: a.cache,
                    enforcer: Some(flow.enforcer),
                    enforcer_name: Some(&e.name),
                    client: Some(&e.config.client_id),
                    source: source(a.cache, flow),
                    keycloak_ms: flow.keycloak_ms,
                    matched: a
                        .matched
                        .as_ref()
                        .or(a.would_deny.as_ref().and_then(|r| r.matched.as_ref())),
                    permissions: a.permissions.as_deref(),
                    would_deny: a.would_deny.as_ref().map(|r| (r.status, r.reason.as_str())),
                    subject: subject(&flow.cred),
                    grpc_status: None,
                };
                self.let_on(host, id, &verdict);
                if in_callback {
                    host.continue_request(id);
                }
                Applied::Continue
            }
            Step::Reply(r) => {
                let r = match flow.grpc {
                    Some(wire) => grpc::for_grpc(r, wire),
                    None => r,
                };
                host.record(Event::Denied {
                    status: r.status,
                    cache: r.cache,
                });
                log_denial(id, &cfg.client_id, flow, &r, "kcpep deny");
                let verdict = self.reply_verdict(&r, Some((flow.enforcer, Some(&*flow))));
                self.tell(host, id, &verdict);
                host.send_reply(id, &r);
                Applied::Replied
            }
            Step::Wait { key, until_ms } => {
                flow.waited = true;
                host.record(Event::Coalesced);
                Applied::Wait(key, until_ms)
            }
            Step::ReadBody => Applied::ReadBody,
            Step::Call(call) => {
                if let Pending::Grant {
                    cached: Some(_), ..
                } = &call.pending
                {
                    host.record(Event::CacheMiss);
                }
                let to = match &call.service {
                    None => Upstream {
                        cluster: &cfg.proxy.cluster,
                        authority: &cfg.proxy.authority,
                        timeout_ms: cfg.proxy.timeout_ms,
                    },
                    Some(s) => Upstream {
                        cluster: &s.cluster,
                        authority: &s.authority,
                        timeout_ms: s.timeout_ms.unwrap_or(cfg.proxy.timeout_ms),
                    },
                };
                let to_service = call.service.is_some();
                host.record(if to_service {
                    Event::ClaimCall
                } else {
                    Event::KeycloakCall {
                        path_endpoint: Endpoint::of_path(&call.request.path),
                        by_request: true,
                    }
                });
                flow.pending = Some(call.pending);
                if let Some(token) = host.dispatch(to, &call.request, &flow.trace) {
                    flow.sent_ms = host.now_ms();
                    self.calling(token, id, via);
                    return Applied::Called;
                }
                host.record(if to_service {
                    Event::ClaimAnswer {
                        ok: false,
                        status: 0,
                    }
                } else {
                    Event::KeycloakNotSent
                });
                log::warn!("kcpep: cannot call cluster {}", to.cluster);
                let now = host.now_ms();
                let next = self.resume(host, flow, Answer::NoAnswer, now);
                self.apply(host, id, st, next, in_callback, via)
            }
        }
    }

    /// Lets an allowed request on with its permissions: the one way out for a decision, a cache
    /// hit and a memo hit.
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn let_on(&self, host: &mut dyn Host, id: u32, verdict: &Verdict<'_>) {
        host.record(Event::Allowed(verdict.cache));
        self.tell(host, id, verdict);
        let Some(enforcer) = verdict.enforcer else {
            return;
        };
        let cfg = &self.filter.enforcers[enforcer].config;
        if let Some(value) = verdict.permissions {
            // Refused once the headers went on (a body read for claims): then only the filter
            // state carries the permissions.
            if cfg.proxy.send_permissions_header {
                host.set_request_header(id, &cfg.proxy.permissions_header, Some(value));
            }
            host.set_permissions(id, value);
        }
    }

    /// Tells the proxy a request's verdict, and writes its decision record unless the enforcer
    /// turned records off.
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn tell(&self, host: &mut dyn Host, id: u32, verdict: &Verdict<'_>) {
        host.verdict(id, verdict);
        let settings = verdict
            .enforcer
            .map(|e| &self.filter.enforcers[e].config.proxy.decision_record);
        let mut recorded = *verdict;
        let pseudonym;
        match settings {
            Some(s) if !s.enabled => return,
            Some(DecisionRecord {
                subject: RecordSubject::Hashed(key),
                ..
            }) => {
                pseudonym = verdict.subject.map(|sub| pseudonym::pseudonym(&key.0, sub));
                recorded.subject = pseudonym.as_deref();
            }
            Some(DecisionRecord {
                subject: RecordSubject::Omitted,
                ..
            }) => recorded.subject = None,
            _ => {}
        }
        host.decision_record(id, &recorded.record());
    }

    /// The verdict of a local reply: before an enforcer was chosen (`who` none), for a request
    /// of no flow (a logout: no flow), or at the end of a flow.
    fn reply_verdict<'a>(
        &'a self,
        r: &'a Reply,
        who: Option<(usize, Option<&'a Flow>)>,
    ) -> Verdict<'a> {
        let e = who.map(|(i, _)| &self.filter.enforcers[i]);
        let flow = who.and_then(|(_, f)| f);
        Verdict {
            status: r.status,
            reason: &r.reason,
            cache: r.cache,
            enforcer: who.map(|(i, _)| i),
            enforcer_name: e.map(|e| e.name.as_str()),
            client: e.map(|e| e.config.client_id.as_str()),
            source: flow.map_or(Source::Rule, |f| source(r.cache, f)),
            keycloak_ms: flow.and_then(|f| f.keycloak_ms),
            matched: r.matched.as_ref(),
            permissions: None,
            would_deny: None,
            subject: flow.and_then(|f| subject(&f.cred)),
            grpc_status: r.grpc_status,
        }
    }
}

/// Where a verdict came from: the decision table (after a wait on another request's call, or
/// not), a stale allow, Keycloak asked for this request, or a rule of the filter.
fn source(cache: CacheUse, flow: &Flow) -> Source {
    match cache {
        CacheUse::Hit if flow.waited => Source::Coalesced,
        CacheUse::Hit => Source::Table,
        CacheUse::Stale => Source::Stale,
        CacheUse::Stored => Source::Keycloak,
        CacheUse::None if flow.keycloak_ms.is_some() => Source::Keycloak,
        CacheUse::None => Source::Rule,
    }
}

/// The verified token's `sub`.
fn subject(cred: &Credential) -> Option<&str> {
    match cred {
        Credential::Valid(_, token) => token.subject(),
        _ => None,
    }
}

/// One structured line per denial: status, reason, matched path and resource, never a token.
fn log_denial(id: u32, client_id: &str, flow: &Flow, r: &Reply, what: &str) {
    log::info!(
        "{what} status={} request={id} client={client_id} method={} path=\"{}\" matched=\"{}\" resource=\"{}\" reason=\"{}\"",
        r.status,
        loggable(flow.method.as_bytes()),
        // without the query: it may carry credentials (`?access_token=`)
        loggable(path_only(&flow.path).as_bytes()),
        loggable(r.matched.as_ref().map_or("", |m| m.path.as_str()).as_bytes()),
        loggable(
            r.matched
                .as_ref()
                .and_then(|m| m.resource.as_deref())
                .unwrap_or("")
                .as_bytes()
        ),
        loggable(r.reason.as_bytes())
    );
}
