//! A request's headers arrive: everything decided before the enforcer's own flow, in one place
//! for the filter and for `kcpep evaluate`. Which of the client's headers are the filter's own
//! (removed), which enforcer the request goes to, a method override refused, the back-channel
//! logout endpoint, a repeated request answered from the per-worker memo, and the credential
//! with its binding checked. What the host knows beyond the headers (route and virtual host
//! names, the peer, TLS, the client certificate) is asked through [`Properties`], only when a
//! rule needs it.

use crate::config::routes::{Routes, Selector};
use crate::config::SenderConstraint;
use crate::enforce::binding::ClientView;
use crate::enforce::enforcer::{client_url, Binding, Connection, Enforcer};
use crate::enforce::step::Credential;
use crate::enforce::step::{Matched, Reply};
use crate::enforce::{binding, gate};
use crate::keycloak::token::HostVerifier;
use crate::request::forwarded::ProxyTrust;
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

/// The request's client as a binding may need it, read from the host only when asked: the
/// connection's properties are a host call each, and a token that is not bound needs none.
struct ClientOf<'a> {
    trust: &'a ProxyTrust,
    props: &'a dyn Properties,
    headers: &'a [(&'a [u8], &'a [u8])],
    authority: &'a str,
    path: &'a str,
}

impl ClientView for ClientOf<'_> {
    fn url(&self) -> String {
        let tls = self.props.tls();
        // the peer and the forwarding headers only where a trusted proxy may speak for the client
        let (peer, headers) = if self.trust.headers.is_some() {
            let headers: Vec<(String, Vec<u8>)> = self
                .headers
                .iter()
                .map(|(k, v)| (header_name(k).to_string(), v.to_vec()))
                .collect();
            (self.props.peer(), headers)
        } else {
            (None, Vec::new())
        };
        let conn = Connection {
            peer: peer.as_deref(),
            tls,
        };
        client_url(self.trust, &conn, &headers, self.authority, self.path)
    }

    fn certificate_sha256(&self) -> Option<[u8; 32]> {
        let hex = self.props.certificate_sha256_hex()?;
        binding::certificate_digest(&hex)
    }
}

/// The VM's enforcers and what they share, as the filter holds them.
pub struct Filter {
    pub routes: Routes,
    pub enforcers: Vec<Enforcer>,
    /// Header names the filter sets itself; a client's copies are removed.
    pub own_headers: Vec<String>,
    /// Repeated requests straight to their cached allow (see `store::memo`).
    pub memo: Memo<Remembered>,
    /// The once-only tables: DPoP proofs and logout tokens.
    pub replay: Layout,
}

/// What a memoized allow answers again: the permissions as stored, and what its decision record
/// names (the matched path, the token's subject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub permissions: Rc<str>,
    pub matched: Option<Matched>,
    pub subject: Option<String>,
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
        remembered: Rc<Remembered>,
    },
    /// The enforcer's flow decides, with this credential (and the memo key its allow may take).
    Decide {
        enforcer: usize,
        method: String,
        path: String,
        cred: Credential,
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
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn get(&self, wanted: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| *k == wanted.as_bytes())
            .map(|(_, v)| *v)
    }

    /// `:method`, `:path` (a path that is not UTF-8 matches nothing, as in Keycloak) and
    /// `:authority`.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn line(&self) -> (String, String, String) {
        let text = |n: &str| String::from_utf8_lossy(self.get(n).unwrap_or_default()).into_owned();
        let path = std::str::from_utf8(self.get(":path").unwrap_or_default())
            .map_or_else(|_| "\u{0}".to_string(), str::to_string);
        (text(":method"), path, text(":authority"))
    }
}

/// Header names are tokens (Envoy's codecs refuse others); one that is not UTF-8 cannot be any
/// name the filter knows.
#[cfg_attr(kcpep_size, optimize(speed))]
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
        let replay = Layout::of(enforcers.iter().map(|e| &*e.config));
        Filter {
            routes,
            enforcers,
            own_headers,
            memo: Memo::new(memo_entries),
            replay,
        }
    }

    /// The client's headers that the filter sets itself, in every spelling an upstream could
    /// read as the same: the shell removes them before anything reads the request.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn spoofed(&self, headers: &[(&[u8], &[u8])]) -> Vec<String> {
        gate::spoofed(
            &self.own_headers,
            headers.iter().map(|(k, _)| header_name(k)),
        )
    }

    /// What comes of a request's headers (the filter's own headers already removed from them).
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn arrive<C: Cas>(
        &mut self,
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
        let e = &mut self.enforcers[enforcer];
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
            if let Some(remembered) = self.memo.get(k, now_ms) {
                return Arrival::Memo {
                    enforcer,
                    remembered: Rc::clone(remembered),
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
            let cfg = Rc::clone(&e.config);
            let client = ClientOf {
                trust: &cfg.proxy.proxy_trust,
                props,
                headers: req.headers,
                authority: &authority,
                path: &path,
            };
            let mut replay = Tables {
                layout: self.replay,
                store: shared,
            };
            let binding = Binding {
                proofs: &proofs,
                method: &method,
                client: &client,
                replay: &mut replay,
            };
            e.check_credential(&auth, now_ms, host, Some(binding))
        };
        let memo_key = token_id.map(memo_key);
        // A bound token, its binding checked just now: its repeated question from the memo.
        if let (Some(k), Credential::Valid(_, token)) = (memo_key, &cred) {
            if binding::is_bound(token) {
                if let Some(remembered) = self.memo.get(k, now_ms) {
                    return Arrival::Memo {
                        enforcer,
                        remembered: Rc::clone(remembered),
                    };
                }
            }
        }
        Arrival::Decide {
            enforcer,
            method,
            path,
            cred,
            memo_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routes::PluginConfig;
    use crate::keycloak::token::tests::{claims, jwks, sign_rs256, ISSUER, NOW};
    use crate::store::replay::Memory;
    use serde_json::json;

    /// Two enforcers of the bank realm: `bank` on host bank.local (with a back-channel logout
    /// endpoint and the method-override check), `other` as the default.
    fn filter() -> Filter {
        let kc = |logout: bool| {
            let mut v = json!({"realm": "bank", "auth-server-url": "http://kc",
                "resource": "bank-api", "credentials": {"secret": "s"},
                "policy-enforcer": {"paths": [{"path": "/account/*"}]}});
            if logout {
                v["kcpep"] = json!({"backchannel-logout": {"path": "/logout"}});
            }
            v
        };
        let text = json!({"enforcers": {"bank": kc(true), "other": kc(false)},
            "routes": [{"host": "bank.local", "enforcer": "bank"}], "default": "other",
            "ignore-port-in-host-matching": true});
        let mut f = Filter::new(
            PluginConfig::from_json(text.to_string().as_bytes()).unwrap(),
            64,
        );
        for e in &mut f.enforcers {
            let mut c = (*e.config).clone();
            c.proxy.issuer = ISSUER.to_string();
            *e = Enforcer::new(e.name.clone(), c);
            e.learnt().background.jwks = Some(jwks());
        }
        f
    }

    struct Plain;

    impl Properties for Plain {
        fn route_name(&self) -> Option<String> {
            None
        }
        fn virtual_host(&self) -> Option<String> {
            None
        }
        fn peer(&self) -> Option<String> {
            Some("10.0.0.1:5".into())
        }
        fn tls(&self) -> bool {
            false
        }
        fn certificate_sha256_hex(&self) -> Option<Vec<u8>> {
            None
        }
    }

    fn arrive(f: &mut Filter, headers: &[(&str, &str)], end_of_stream: bool) -> Arrival {
        arrive_on(f, headers, end_of_stream, &Plain, Memory::default())
    }

    /// As [`arrive`], on a connection of `props` with the replay table `shared`.
    fn arrive_on<C: Cas>(
        f: &mut Filter,
        headers: &[(&str, &str)],
        end_of_stream: bool,
        props: &dyn Properties,
        shared: C,
    ) -> Arrival {
        let pairs: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        let req = Request {
            headers: &pairs,
            end_of_stream,
        };
        f.arrive(&req, props, shared, None, NOW * 1000)
    }

    /// `GET bank.local/account/1` with `authorization` and, when given, one DPoP proof.
    fn account_request<'a>(auth: &'a str, proof: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
        let mut h = vec![
            (":method", "GET"),
            (":path", "/account/1"),
            (":authority", "bank.local"),
            ("authorization", auth),
        ];
        h.extend(proof.map(|p| ("dpop", p)));
        h
    }

    #[test]
    fn the_route_the_gate_and_the_logout_endpoint_answer_before_any_flow() {
        let mut f = filter();
        let on =
            |host, method, path| vec![(":method", method), (":path", path), (":authority", host)];
        // the host rule, with the port ignored; anything else goes to the default
        let Arrival::Decide { enforcer, cred, .. } =
            arrive(&mut f, &on("bank.local:8443", "GET", "/account/1"), true)
        else {
            panic!("decided by the flow")
        };
        assert_eq!((enforcer, matches!(cred, Credential::Anonymous)), (0, true));
        assert!(matches!(
            arrive(&mut f, &on("elsewhere", "GET", "/account/1"), true),
            Arrival::Decide { enforcer: 1, .. }
        ));
        // a method override naming another method
        let mut h = on("bank.local", "GET", "/account/1");
        h.push(("x-http-method-override", "DELETE"));
        let Arrival::Reply { reply, .. } = arrive(&mut f, &h, true) else {
            panic!("answered")
        };
        assert_eq!(reply.status, 400);
        // the logout endpoint: at once without a body to come, else once it is in
        let mut post = on("bank.local", "POST", "/logout?x=1");
        post.push(("content-type", "application/x-www-form-urlencoded"));
        assert!(matches!(
            arrive(&mut f, &post, false),
            Arrival::Logout {
                enforcer: 0,
                now: false,
                content_type: Some(_)
            }
        ));
        assert!(matches!(
            arrive(&mut f, &on("bank.local", "GET", "/logout"), true),
            Arrival::Logout { now: true, .. }
        ));
        // not the other enforcer's
        assert!(matches!(
            arrive(&mut f, &on("elsewhere", "POST", "/logout"), true),
            Arrival::Decide { enforcer: 1, .. }
        ));
        // the filter's own header, in another spelling, is the client's copy
        let mut spoof: Vec<(&[u8], &[u8])> =
            vec![(b":path", b"/"), (b"X_Kcpep_Permissions", b"[]")];
        spoof.push((b"x-kcpep-permissions", b"[]"));
        assert_eq!(
            f.spoofed(&spoof),
            ["X_Kcpep_Permissions", "x-kcpep-permissions"]
        );
    }

    #[test]
    fn a_repeated_request_of_a_verified_token_is_answered_from_the_memo() {
        let mut f = filter();
        let raw = sign_rs256(&claims());
        let auth = format!("Bearer {raw}");
        let h = vec![
            (":method", "GET"),
            (":path", "/account/1"),
            (":authority", "bank.local"),
            ("authorization", auth.as_str()),
        ];
        // first: the flow decides, and names the memo key its allow may take
        let Arrival::Decide { cred, memo_key, .. } = arrive(&mut f, &h, true) else {
            panic!("decided by the flow")
        };
        assert!(matches!(cred, Credential::Valid(..)));
        let key = memo_key.expect("a verified, unbound token has a memo key");
        let remembered = Remembered {
            permissions: Rc::from("[granted]"),
            matched: None,
            subject: Some("u1".into()),
        };
        f.memo
            .put(key, remembered.clone(), NOW * 1000 + 60_000, NOW * 1000);
        // again: the memo answers, with the permissions as stored
        let Arrival::Memo {
            enforcer,
            remembered: got,
        } = arrive(&mut f, &h, true)
        else {
            panic!("answered from the memo")
        };
        assert_eq!((enforcer, &*got), (0, &remembered));
        // another method or path is another question
        let mut other = h.clone();
        other[0] = (":method", "DELETE");
        assert!(matches!(
            arrive(&mut f, &other, true),
            Arrival::Decide { .. }
        ));
        // and a token bound to a key never takes the shortcut
        let mut c = claims();
        c["cnf"] = json!({"jkt": "abc"});
        let bound = format!("Bearer {}", sign_rs256(&c));
        let mut b = h.clone();
        b[3] = ("authorization", bound.as_str());
        let Arrival::Decide { cred, memo_key, .. } = arrive(&mut f, &b, true) else {
            panic!("decided by the flow")
        };
        assert!(
            matches!(cred, Credential::Refused(_)),
            "as Bearer without a proof"
        );
        assert_eq!(memo_key, None);
    }

    #[test]
    fn a_bound_token_takes_the_memo_only_after_its_proof_is_checked() {
        use crate::keycloak::dpop::tests::{client_thumbprint, proof_for};
        let mut f = filter();
        let mut c = claims();
        c["cnf"] = json!({"jkt": client_thumbprint()});
        let raw = sign_rs256(&c);
        let auth = format!("DPoP {raw}");
        let url = "http://bank.local/account/1";
        let mut replay = Memory::default();
        let as_bearer = format!("Bearer {raw}");
        let mut presented = |f: &mut Filter, auth: &str, proof: Option<&str>| {
            arrive_on(f, &account_request(auth, proof), true, &Plain, &mut replay)
        };
        let mut at = |f: &mut Filter, proof: Option<&str>| presented(f, &auth, proof);
        // its first proof: the flow decides, and names the memo key its allow may take
        let first = proof_for(&raw, "GET", url, "j1", NOW);
        let Arrival::Decide { cred, memo_key, .. } = at(&mut f, Some(&first)) else {
            panic!("decided by the flow")
        };
        assert!(matches!(cred, Credential::Valid(..)));
        let key = memo_key.expect("a bound token whose proof passed has a memo key");
        let remembered = Remembered {
            permissions: Rc::from("[granted]"),
            matched: None,
            subject: Some("u1".into()),
        };
        f.memo.put(key, remembered, NOW * 1000 + 60_000, NOW * 1000);
        // a new proof: the allow from the memo
        let second = proof_for(&raw, "GET", url, "j2", NOW);
        assert!(matches!(at(&mut f, Some(&second)), Arrival::Memo { .. }));
        // the memo never stands in for the proof: replayed, missing, for another URL, refused
        let other_url = proof_for(&raw, "GET", "http://bank.local/account/2", "j3", NOW);
        for proof in [Some(second.as_str()), None, Some(other_url.as_str())] {
            let Arrival::Decide { cred, memo_key, .. } = at(&mut f, proof) else {
                panic!("refused by the flow, not answered from the memo")
            };
            assert!(matches!(cred, Credential::Refused(_)), "{proof:?}");
            assert_eq!(memo_key, None);
        }
        // nor does the Bearer scheme, which the memo's shortcut reads
        let Arrival::Decide { cred, .. } = presented(&mut f, &as_bearer, None) else {
            panic!("refused by the flow, not answered from the memo")
        };
        assert!(matches!(cred, Credential::Refused(_)));
    }

    #[test]
    fn the_connection_is_read_only_as_far_as_a_binding_needs() {
        use crate::keycloak::dpop::tests::{client_thumbprint, proof_for};
        use std::cell::RefCell;
        /// Properties that note which of the connection's were read.
        struct Noted(RefCell<Vec<&'static str>>);
        impl Properties for Noted {
            fn route_name(&self) -> Option<String> {
                None
            }
            fn virtual_host(&self) -> Option<String> {
                None
            }
            fn peer(&self) -> Option<String> {
                self.0.borrow_mut().push("peer");
                Some("10.0.0.1:5".into())
            }
            fn tls(&self) -> bool {
                self.0.borrow_mut().push("tls");
                false
            }
            fn certificate_sha256_hex(&self) -> Option<Vec<u8>> {
                self.0.borrow_mut().push("certificate");
                None
            }
        }
        let mut f = filter();
        let mut read = |auth: &str, proof: Option<&str>| {
            let noted = Noted(RefCell::new(Vec::new()));
            let h = account_request(auth, proof);
            let got = arrive_on(&mut f, &h, true, &noted, Memory::default());
            let Arrival::Decide { cred, .. } = got else {
                panic!("decided by the flow")
            };
            (noted.0.into_inner(), matches!(cred, Credential::Valid(..)))
        };
        // an unbound token: nothing of the connection
        let bearer = format!("Bearer {}", sign_rs256(&claims()));
        assert_eq!(read(&bearer, None), (vec![], true));
        // a DPoP-bound one: the scheme its proof's URL has (no trusted proxy: not the peer)
        let mut c = claims();
        c["cnf"] = json!({"jkt": client_thumbprint()});
        let raw = sign_rs256(&c);
        let proof = proof_for(&raw, "GET", "http://bank.local/account/1", "j1", NOW);
        assert_eq!(
            read(&format!("DPoP {raw}"), Some(&proof)),
            (vec!["tls"], true)
        );
        // a certificate-bound one: the certificate (none here: refused)
        let mut c = claims();
        c["cnf"] = json!({"x5t#S256": "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA"});
        let bound = format!("Bearer {}", sign_rs256(&c));
        assert_eq!(read(&bound, None), (vec!["certificate"], false));
    }
}
