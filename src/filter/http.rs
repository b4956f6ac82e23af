//! HTTP context: one request's journey through the core.

use super::host;
use super::root::Plugin;
use crate::enforcer::{self, Credential, Pending, RequestFacts, Step};
use crate::token::{self, BearerError, Expectations, Token, TokenError};
use crate::uma::permissions_header_value;
use crate::uri;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::rc::Rc;

/// What was learnt of the credential, owned by the request (the core borrows it).
enum Cred {
    Anonymous,
    Malformed(BearerError),
    Invalid(TokenError),
    Unverifiable,
    Valid(String, Token),
}

pub struct Http {
    id: u32,
    plugin: Option<Rc<Plugin>>,
    enforcer: usize,
    method: String,
    path: String,
    cred: Cred,
    pending: Option<Pending>,
}

impl Http {
    pub fn new(id: u32, plugin: Option<Rc<Plugin>>) -> Self {
        Http {
            id,
            plugin,
            enforcer: 0,
            method: String::new(),
            path: String::new(),
            cred: Cred::Anonymous,
            pending: None,
        }
    }

    fn credential(&self) -> Credential<'_> {
        match &self.cred {
            Cred::Anonymous => Credential::Anonymous,
            Cred::Malformed(e) => Credential::Malformed(*e),
            Cred::Invalid(e) => Credential::Invalid(e.clone()),
            Cred::Unverifiable => Credential::Unverifiable,
            Cred::Valid(raw, token) => Credential::Valid { raw, token },
        }
    }

    /// Verifies the bearer token, remembering verified tokens by digest until their exp.
    fn check_token(&mut self, plugin: &Plugin, values: &[&[u8]], now_ms: i64) {
        let cfg = &plugin.config.enforcers[self.enforcer].1;
        let raw = match token::bearer(values, cfg.proxy.max_token_bytes as usize) {
            Ok(None) => {
                self.cred = Cred::Anonymous;
                return;
            }
            Err(e) => {
                self.cred = Cred::Malformed(e);
                return;
            }
            Ok(Some(raw)) => raw.to_string(),
        };
        let now = now_ms / 1000;
        let leeway = i64::from(cfg.proxy.clock_skew_seconds);
        let mut st = plugin.enforcers[self.enforcer].borrow_mut();
        let digest = token::digest(&raw);
        if let Some(t) = st.verified.get(&digest, now, leeway) {
            self.cred = Cred::Valid(raw, t.clone());
            return;
        }
        let Some(jwks) = st.bg.jwks.as_ref() else {
            self.cred = Cred::Unverifiable;
            return;
        };
        let expect = Expectations {
            issuer: &cfg.proxy.issuer,
            audiences: &cfg.proxy.audiences,
            leeway_seconds: u64::from(cfg.proxy.clock_skew_seconds),
        };
        let host: Option<token::HostVerifier> = plugin.host_verify.then_some(&host::host_verify);
        match token::verify_with(&raw, jwks, &expect, now, host) {
            Ok(t) => {
                st.verified.insert(t.clone(), now);
                self.cred = Cred::Valid(raw, t);
            }
            Err(e) => {
                if matches!(e, TokenError::UnknownKey(_)) {
                    st.bg.want_jwks();
                }
                self.cred = Cred::Invalid(e);
            }
        }
    }

    /// Applies a step; returns the action for a header callback.
    fn apply(&mut self, plugin: &Plugin, step: Step, in_callback: bool) -> Action {
        let cfg = &plugin.config.enforcers[self.enforcer].1;
        match step {
            Step::Allow(a) => {
                if let Some(perms) = &a.permissions {
                    let value = permissions_header_value(perms);
                    let _ = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        &cfg.proxy.permissions_header,
                        Some(&value),
                    );
                }
                log::debug!(
                    "kcpep allow [{}] {} {}: {}",
                    cfg.client_id,
                    self.method,
                    self.path,
                    a.reason
                );
                if in_callback {
                    let _ = hostcalls::resume_http_request();
                }
                Action::Continue
            }
            Step::Reply(r) => {
                log::info!(
                    "kcpep deny status={} request={} client={} method={} path=\"{}\" reason=\"{}\"",
                    r.status,
                    self.id,
                    cfg.client_id,
                    self.method,
                    host::loggable(self.path.as_bytes()),
                    host::loggable(r.reason.as_bytes())
                );
                let mut headers: Vec<(&str, &str)> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                if !r.body.is_empty() {
                    headers.push(("content-type", "text/plain"));
                }
                let _ = hostcalls::send_http_response(
                    u32::from(r.status),
                    headers,
                    Some(r.body.as_bytes()),
                );
                Action::Pause
            }
            Step::Call(call) => {
                match host::dispatch(
                    &cfg.proxy.cluster,
                    &cfg.proxy.authority,
                    &call.request,
                    cfg.proxy.timeout_ms,
                ) {
                    Ok(_token) => {
                        self.pending = Some(call.pending);
                        Action::Pause
                    }
                    Err(status) => {
                        log::warn!(
                            "kcpep: cannot call cluster {}: {:?}",
                            cfg.proxy.cluster,
                            status
                        );
                        let now = host::now_ms();
                        let next = {
                            let mut st = plugin.enforcers[self.enforcer].borrow_mut();
                            let req = RequestFacts {
                                method: &self.method,
                                path: &self.path,
                                credential: self.credential(),
                            };
                            enforcer::resume(
                                cfg,
                                &mut st.rt,
                                &req,
                                call.pending,
                                enforcer::Answer::NoAnswer,
                                now,
                            )
                        };
                        self.apply(plugin, next, in_callback)
                    }
                }
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
        let (Some(plugin), Some(pending)) = (self.plugin.clone(), self.pending.take()) else {
            return;
        };
        let mut body = Vec::new();
        let (status, ok) = host::call_answer(num_headers, body_size, &mut body);
        let now = host::now_ms();
        let cfg = &plugin.config.enforcers[self.enforcer].1;
        let step = {
            let mut st = plugin.enforcers[self.enforcer].borrow_mut();
            let req = RequestFacts {
                method: &self.method,
                path: &self.path,
                credential: self.credential(),
            };
            enforcer::resume(
                cfg,
                &mut st.rt,
                &req,
                pending,
                host::answer(status, ok, &body),
                now,
            )
        };
        self.apply(&plugin, step, true);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            let _ = hostcalls::send_http_response(
                503,
                vec![],
                Some(b"Authorization filter not configured"),
            );
            return Action::Pause;
        };
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        // Headers the filter sets itself are never taken from the client.
        for name in &plugin.own_headers {
            if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
            }
        }
        let get = |name: &str| -> Option<&[u8]> {
            headers
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v.as_slice())
        };
        self.method = String::from_utf8_lossy(get(":method").unwrap_or_default()).into_owned();
        let raw_path = get(":path").unwrap_or_default();
        // A path that is not UTF-8 cannot be a valid URI: it matches nothing (as in Keycloak).
        self.path =
            std::str::from_utf8(raw_path).map_or_else(|_| "\u{0}".to_string(), str::to_string);
        let authority = String::from_utf8_lossy(get(":authority").unwrap_or_default()).into_owned();
        // `xds.route_name` (Envoy >= 1.2x; Istio: the VirtualService http route name), else the
        // older wasm-only `route_name`.
        let route_name = [vec!["xds", "route_name"], vec!["route_name"]]
            .into_iter()
            .find_map(|p| hostcalls::get_property(p).ok().flatten())
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty());
        let normalized = uri::normalize(&self.path);
        let Some(enforcer) =
            plugin
                .config
                .select(route_name.as_deref(), &authority, normalized.as_deref())
        else {
            log::info!(
                "kcpep deny status=403 reason=\"no enforcer for this route\" route={:?} authority=\"{}\"",
                route_name,
                host::loggable(authority.as_bytes())
            );
            let _ = hostcalls::send_http_response(
                403,
                vec![("content-type", "text/plain")],
                Some(b"Forbidden"),
            );
            return Action::Pause;
        };
        self.enforcer = enforcer;
        let auth: Vec<&[u8]> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_slice())
            .collect();
        let now = host::now_ms();
        self.check_token(&plugin, &auth, now);
        let step = {
            let cfg = &plugin.config.enforcers[self.enforcer].1;
            let mut st = plugin.enforcers[self.enforcer].borrow_mut();
            let req = RequestFacts {
                method: &self.method,
                path: &self.path,
                credential: self.credential(),
            };
            enforcer::decide(cfg, &mut st.rt, &req, now)
        };
        self.apply(&plugin, step, false)
    }
}
