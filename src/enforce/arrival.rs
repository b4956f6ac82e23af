//! A request's headers arrive: everything decided before the enforcer's own flow, in one place
//! for the filter and for `kcpep evaluate`. Which of the client's headers are the filter's own
//! (removed), which enforcer the request goes to, a method override refused, the back-channel
//! logout endpoint, a repeated request answered from the per-worker memo, and the credential
//! with its binding checked. What the host knows beyond the headers (route and virtual host
//! names, the peer, TLS, the client certificate) is asked through [`Properties`], only when a
//! rule needs it.

use crate::config::routes::{Routes, Selector};
use crate::config::SenderConstraint;
use crate::enforce::enforcer::{Binding, Connection, Cred, Enforcer};
use crate::enforce::gate;
use crate::enforce::step::Reply;
use crate::keycloak::token::HostVerifier;
use crate::request::uri;
use crate::store::memo::{self, Memo};
use crate::store::replay::{Cas, Layout, Tables};
use std::rc::Rc;

/// What the host tells of a request beyond its headers (proxy-wasm properties in Envoy).
pub trait Properties {
    /// Envoy's route name (`xds.route_name`, else `route_name`).
    fn route_name(&self) -> Option<String>;
    /// Envoy's virtual host name (`xds.virtual_host_name`).
    fn virtual_host(&self) -> Option<String>;
    /// The peer's address (`source.address`).
    fn peer(&self) -> Option<String>;
    /// Whether the connection is TLS.
    fn tls(&self) -> bool;
    /// The client certificate's SHA-256 in hex (`connection.sha256_peer_certificate_digest`).
    fn certificate_sha256_hex(&self) -> Option<Vec<u8>>;
}

/// The VM's enforcers and what they share, as the filter holds them.
pub struct Filter {
    pub routes: Routes,
    pub enforcers: Vec<Enforcer>,
    /// Header names the filter sets itself; a client's copies are removed.
    pub own_headers: Vec<String>,
    /// Repeated requests straight to their cached allow (see `store::memo`).
    pub memo: std::cell::RefCell<Memo>,
    /// The once-only tables: DPoP proofs and logout tokens.
    pub replay: Layout,
}

/// What comes of a request's headers.
pub enum Arrival {
    /// Answered now: no enforcer for it, or a method override naming another method.
    Reply {
        reply: Reply,
        route_name: Option<String>,
    },
    /// The enforcer's back-channel logout endpoint: answered by the filter once the body is in
    /// (`now`: no body will come, answer at once), never forwarded.
    Logout {
        enforcer: usize,
        content_type: Option<String>,
        now: bool,
    },
    /// A token verified before, asking what it asked before: its cached allow, with the
    /// permissions header as stored.
    Memo {
        enforcer: usize,
        permissions: Rc<str>,
    },
    /// The enforcer's flow decides, with this credential (and the memo key its allow may take).
    Decide {
        enforcer: usize,
        method: String,
        path: String,
        cred: Cred,
        memo_key: Option<u128>,
    },
}

/// The request as the filter reads it: header names as received (lower case in Envoy), values
/// as bytes, pseudo-headers (`:method`, `:path`, `:authority`) among them.
pub struct Request<'a> {
    pub headers: &'a [(&'a [u8], &'a [u8])],
    pub end_of_stream: bool,
}

impl Request<'_> {
    fn get(&self, wanted: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| *k == wanted.as_bytes())
            .map(|(_, v)| *v)
    }

    /// `:method`, `:path` (a path that is not UTF-8 matches nothing, as in Keycloak) and
    /// `:authority`.
    pub fn line(&self) -> (String, String, String) {
        let text = |n: &str| String::from_utf8_lossy(self.get(n).unwrap_or_default()).into_owned();
        let path = std::str::from_utf8(self.get(":path").unwrap_or_default())
            .map_or_else(|_| "\u{0}".to_string(), str::to_string);
        (text(":method"), path, text(":authority"))
    }
}

/// Header names are tokens (Envoy's codecs refuse others); one that is not UTF-8 cannot be any
/// name the filter knows.
pub fn header_name(k: &[u8]) -> &str {
    std::str::from_utf8(k).unwrap_or("\u{fffd}")
}

impl Filter {
    /// The VM's filter from its configuration: the enforcers built (sharing verified tokens
    /// where they verify alike), the headers the filter owns, the once-only tables' layout, and
    /// a memo of `memo_entries`.
    pub fn new(config: crate::config::routes::PluginConfig, memo_entries: usize) -> Filter {
        let own_headers = gate::own_headers(&config);
        let crate::config::routes::PluginConfig { enforcers, routes } = config;
        let enforcers = Enforcer::build_all(enforcers);
        let replay = Layout::of(enforcers.iter().map(|e| &e.config));
        Filter {
            routes,
            enforcers,
            own_headers,
            memo: std::cell::RefCell::new(Memo::new(memo_entries)),
            replay,
        }
    }

    /// The client's headers that the filter sets itself, in every spelling an upstream could
    /// read as the same: the shell removes them before anything reads the request.
    pub fn spoofed(&self, headers: &[(&[u8], &[u8])]) -> Vec<String> {
        gate::spoofed(
            &self.own_headers,
            headers.iter().map(|(k, _)| header_name(k)),
        )
    }

    /// What comes of a request's headers (the filter's own headers already removed from them).
    pub fn arrive<C: Cas>(
        &self,
        req: &Request,
        props: &dyn Properties,
        shared: C,
        host: Option<HostVerifier>,
        now_ms: i64,
    ) -> Arrival {
        let (method, path, authority) = req.line();
        let routes = &self.routes;
        let route_name = routes
            .uses_route_names()
            .then(|| props.route_name())
            .flatten();
        let virtual_host = routes
            .uses_virtual_hosts()
            .then(|| props.virtual_host())
            .flatten();
        let normalized = routes
            .uses_path_prefixes()
            .then(|| uri::normalize(&path))
            .flatten();
        let selected = routes.select(&Selector {
            route_name: route_name.as_deref(),
            virtual_host: virtual_host.as_deref(),
            authority: &authority,
            path: normalized.as_deref(),
        });
        let Some(enforcer) = selected else {
            return Arrival::Reply {
                reply: gate::no_enforcer(),
                route_name,
            };
        };
        let e = &self.enforcers[enforcer];
        let pairs = req.headers.iter().map(|(k, v)| (header_name(k), *v));
        if let Some(reply) =
            gate::method_override(&e.config.proxy.method_override_headers, &method, pairs)
        {
            return Arrival::Reply { reply, route_name };
        }
        if e.is_backchannel_logout(&path) {
            let content_type = req
                .get("content-type")
                .map(|v| String::from_utf8_lossy(v).into_owned());
            return Arrival::Logout {
                enforcer,
                content_type,
                now: method != "POST" || req.end_of_stream,
            };
        }
        let auth: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(b"authorization"))
            .map(|(_, v)| *v)
            .collect();
        let memo_key = |id| memo::key(enforcer, id, &method, &path);
        if let Some(k) = e.verified_id(&auth, now_ms).map(memo_key) {
            if let Some(permissions) = self.memo.borrow().get(k, now_ms) {
                return Arrival::Memo {
                    enforcer,
                    permissions: Rc::clone(permissions),
                };
            }
        }
        let (cred, token_id) = if e.config.proxy.sender_constraint == SenderConstraint::Off {
            e.check_credential(&auth, now_ms, host, None)
        } else {
            // What a binding is checked against: the DPoP proofs, the URL as the client used
            // it (the scheme from the connection or a trusted proxy), the client certificate.
            let proofs: Vec<&[u8]> = req
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(b"dpop"))
                .map(|(_, v)| *v)
                .collect();
            let peer = props.peer();
            let cert_hex = props.certificate_sha256_hex();
            let conn = Connection {
                peer: peer.as_deref(),
                tls: props.tls(),
                certificate_sha256_hex: cert_hex.as_deref(),
            };
            let owned: Vec<(String, Vec<u8>)> = if e.reads_forwarding_headers() {
                req.headers
                    .iter()
                    .map(|(k, v)| (header_name(k).to_string(), v.to_vec()))
                    .collect()
            } else {
                Vec::new()
            };
            let (url, cert) = e.client_view(&conn, &owned, &authority, &path);
            let mut replay = Tables {
                layout: self.replay,
                store: shared,
            };
            let binding = Binding {
                proofs: &proofs,
                method: &method,
                url: &url,
                client_cert_sha256: cert,
                replay: &mut replay,
            };
            e.check_credential(&auth, now_ms, host, Some(binding))
        };
        let memo_key = token_id.map(memo_key);
        Arrival::Decide {
            enforcer,
            method,
            path,
            cred,
            memo_key,
        }
    }
}
