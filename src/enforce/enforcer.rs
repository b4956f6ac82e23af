//! One configured enforcer as one object: its compiled configuration, and what it has learnt
//! from Keycloak (the paths bound to resources and looked up, the PAT, the realm's keys and the
//! fetch schedule, the tokens it verified). `decide`, `resume` and `explain` are its methods; each
//! call gets only the request, the store and the time.

use crate::config::{EnforcerConfig, SenderConstraint};
use crate::enforce::binding::{self, ClientView, KnownClient, Presented, Refusal};
use crate::enforce::flow::{self, Explanation};
use crate::enforce::refresh::{FetchHost, Fetched, Report};
use crate::enforce::step::{CacheUse, Reply};
use crate::enforce::step::{Credential, Pending, RequestFacts, Step};
use crate::keycloak::background::{self, Background, Fetch};
use crate::keycloak::knowledge::Knowledge;
use crate::keycloak::logout::{self, LogoutError};
use crate::keycloak::token::{self, Expectations, HostVerifier, Token, TokenError};
use crate::keycloak::verified::VerifiedTokens;
use crate::request::forwarded::ProxyTrust;
use crate::store::logouts::{self, Ended, Logouts};
use crate::store::{documents, DecisionStore};
use crate::store::{FirstUse, ReplayGuard};
use crate::wire::http::{Answer, HttpRequest};
use sha2::Digest;
use std::cell::RefCell;
use std::rc::Rc;

/// How many verified tokens an enforcer remembers (by digest, until their `exp`). Enforcers that
/// share their verified tokens (see [`Enforcer::build_all`]) share a store this many times the
/// group's size, at most [`VERIFIED_SHARED_MAX`] times.
pub const VERIFIED_TOKENS: usize = 4096;
/// The largest multiple of [`VERIFIED_TOKENS`] one shared store holds.
pub const VERIFIED_SHARED_MAX: usize = 4;

pub struct Enforcer {
    pub name: String,
    /// Shared with a decision store for the length of a step (the store reads the enforcer's table
    /// names while the step changes what the enforcer has learnt).
    pub config: Rc<EnforcerConfig>,
    /// A claim information point may read any claim: verified tokens keep them all.
    keep_all_claims: bool,
    learnt: Learnt,
    /// The sessions that ended (back-channel logout), shared by the VM's enforcers.
    logouts: Rc<RefCell<Logouts>>,
    /// The keys of the DPoP proof headers seen last (a client's proofs share one header).
    proof_keys: crate::keycloak::dpop::HeaderKeys,
}

/// What the enforcer has learnt; changes between requests.
pub struct Learnt {
    pub knowledge: Knowledge,
    pub background: Background,
    /// Shared with the VM's other enforcers of the same [`VerifyProfile`].
    pub verified: Rc<RefCell<VerifiedTokens>>,
    /// The digest of the key set this enforcer verifies with. A token it verifies is remembered
    /// only when the shared store holds tokens of the same set: one enforcer still on an older
    /// set must not put tokens signed by a withdrawn key back into the group's store.
    keys_digest: Option<u64>,
}

impl Learnt {
    /// The background fetches due now, as requests to send.
    pub fn due(&mut self, cfg: &EnforcerConfig, now_ms: i64) -> Vec<(Fetch, HttpRequest)> {
        if self.knowledge.pat_refused {
            self.background.pat_refused(&mut self.knowledge, now_ms);
        }
        self.background.due(cfg, &self.knowledge, now_ms)
    }

    /// Takes the answer to a background fetch (from Keycloak, or another VM's copy in shared
    /// data, stored at `at_ms`). Another key set than the one the remembered tokens were verified
    /// under makes every one of them be verified again (a key may have been withdrawn); the same
    /// set, fetched again or by another enforcer of the group, keeps them.
    pub fn complete(&mut self, cfg: &EnforcerConfig, fetch: Fetch, answer: Answer, at_ms: i64) {
        let keys = match (fetch, &answer) {
            (Fetch::Jwks, Answer::Http { status: 200, body }) => Some(VerifiedTokens::digest(body)),
            _ => None,
        };
        self.background
            .complete(cfg, &mut self.knowledge, fetch, answer, at_ms);
        let loaded = self.background.jwks_loaded_at_ms() == Some(at_ms);
        if let (Some(keys), true) = (keys, loaded) {
            self.keys_digest = Some(keys);
            self.verified.borrow_mut().note_keys(keys);
        }
    }
}

/// What makes a token verified for one enforcer verified for another: the same issuer,
/// audiences and clock skew, keys from the same place, and the same claims kept. Enforcers of one
/// realm and client differ in their paths and modes, never in this, so a VM with nine enforcers
/// on one realm verifies (and keeps) each token once, not nine times.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerifyProfile {
    issuer: String,
    audiences: Vec<String>,
    clock_skew_seconds: u32,
    keys_from: (String, String, String),
    all_claims: bool,
    /// Whether DPoP-typed tokens are access tokens here (they are verified differently).
    dpop: bool,
}

impl VerifyProfile {
    pub fn of(config: &EnforcerConfig) -> Self {
        VerifyProfile {
            issuer: config.proxy.issuer.clone(),
            audiences: config.proxy.audiences.clone(),
            clock_skew_seconds: config.proxy.clock_skew_seconds,
            keys_from: (
                config.proxy.cluster.clone(),
                config.proxy.authority.clone(),
                crate::keycloak::uma::jwks_request(config).path,
            ),
            all_claims: config.has_claim_providers(),
            dpop: config.proxy.sender_constraint != SenderConstraint::Off,
        }
    }
}

impl Enforcer {
    /// An enforcer with a verified-token store of its own.
    pub fn new(name: String, config: EnforcerConfig) -> Self {
        let verified = Rc::new(RefCell::new(VerifiedTokens::new(VERIFIED_TOKENS)));
        Enforcer::with_verified(name, config, verified, Rc::default())
    }

    /// A VM's enforcers, those of one [`VerifyProfile`] sharing one verified-token store.
    pub fn build_all(configs: impl IntoIterator<Item = (String, EnforcerConfig)>) -> Vec<Self> {
        let configs: Vec<(String, EnforcerConfig)> = configs.into_iter().collect();
        let profiles: Vec<VerifyProfile> =
            configs.iter().map(|(_, c)| VerifyProfile::of(c)).collect();
        // one store per distinct profile, found by a scan: a VM has few profiles, and a map type
        // would be a hash table's code in the module for a configure-time question
        let mut stores: Vec<(&VerifyProfile, Rc<RefCell<VerifiedTokens>>)> = Vec::new();
        let shared: Vec<Rc<RefCell<VerifiedTokens>>> = profiles
            .iter()
            .map(|p| {
                if let Some((_, store)) = stores.iter().find(|(q, _)| *q == p) {
                    return Rc::clone(store);
                }
                let members = profiles.iter().filter(|q| *q == p).count();
                let capacity = VERIFIED_TOKENS * members.min(VERIFIED_SHARED_MAX);
                let store = Rc::new(RefCell::new(VerifiedTokens::new(capacity)));
                stores.push((p, Rc::clone(&store)));
                store
            })
            .collect();
        let logouts: Rc<RefCell<Logouts>> = Rc::default();
        configs
            .into_iter()
            .zip(shared)
            .map(|((name, config), verified)| {
                Enforcer::with_verified(name, config, verified, Rc::clone(&logouts))
            })
            .collect()
    }

    fn with_verified(
        name: String,
        config: EnforcerConfig,
        verified: Rc<RefCell<VerifiedTokens>>,
        logouts: Rc<RefCell<Logouts>>,
    ) -> Self {
        let learnt = Learnt {
            knowledge: Knowledge::new(&config),
            background: Background::new(&config),
            verified,
            keys_digest: None,
        };
        Enforcer {
            name,
            keep_all_claims: config.has_claim_providers(),
            config: Rc::new(config),
            learnt,
            logouts,
            proof_keys: Default::default(),
        }
    }

    /// What it learnt, to change it (the background fetches' answers). Never held across a call
    /// into the enforcer.
    pub fn learnt(&mut self) -> &mut Learnt {
        &mut self.learnt
    }

    /// The first (or renewed) decision for a request.
    pub fn decide(
        &mut self,
        req: &RequestFacts,
        store: &mut dyn DecisionStore,
        now_ms: i64,
    ) -> Step {
        let l = &mut self.learnt;
        flow::decide(&self.config, &mut l.knowledge, req, store, now_ms)
    }

    /// The next step once the callout `pending` was answered.
    pub fn resume(
        &mut self,
        req: &RequestFacts,
        store: &mut dyn DecisionStore,
        pending: Pending,
        answer: Answer,
        now_ms: i64,
    ) -> Step {
        let l = &mut self.learnt;
        flow::resume(
            &self.config,
            &mut l.knowledge,
            req,
            store,
            pending,
            answer,
            now_ms,
        )
    }

    /// What a request would match, without a token or a server.
    pub fn explain(&self, method: &str, path: &str) -> Explanation {
        let l = &self.learnt;
        flow::explain(&self.config, &l.knowledge.paths, method, path)
    }

    /// The lookup id of a bearer token verified before and not expired, without copying it: all
    /// a memo hit needs of the credential. `None`: anything else (ask [`Self::check_credential`]).
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn verified_id(&self, authorization: &[&[u8]], now_ms: i64) -> Option<u128> {
        let cfg = &self.config;
        let raw = token::bearer(authorization, cfg.proxy.max_token_bytes as usize).ok()??;
        let l = &self.learnt;
        let verified = l.verified.borrow();
        let id = verified.id(raw);
        let leeway = i64::from(cfg.proxy.clock_skew_seconds);
        let t = verified.get(id, now_ms / 1000, leeway)?;
        if self.logouts.borrow().ended(&cfg.proxy.issuer, t) {
            return None;
        }
        // a bound token is checked with its proof on every request
        let shortcut =
            cfg.proxy.sender_constraint == SenderConstraint::Off || !binding::is_bound(t);
        shortcut.then_some(id)
    }

    /// The request's credential from its `Authorization` values: the token verified against the
    /// realm's keys (or found among the tokens verified before, until their `exp`), its binding
    /// checked where `sender-constraint` asks (`binding`: what came with it; `None` is nothing,
    /// so a bound token is refused), with its lookup id when valid (the memo key's identity; a
    /// bound token's only once its binding held for this request, which is checked on every
    /// request before the memo is asked). An unknown signing key asks for the realm's keys again.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn check_credential(
        &mut self,
        authorization: &[&[u8]],
        now_ms: i64,
        host: Option<HostVerifier>,
        binding: Option<Binding<'_>>,
    ) -> (Credential, Option<u128>) {
        let cfg = Rc::clone(&self.config);
        let mode = cfg.proxy.sender_constraint;
        let max = cfg.proxy.max_token_bytes as usize;
        let (scheme, raw) =
            match token::credential(authorization, max, mode != SenderConstraint::Off) {
                Ok(None) => return (Credential::Anonymous, None),
                Err(e) => return (Credential::Malformed(e), None),
                Ok(Some((scheme, raw))) => (scheme, raw.to_string()),
            };
        let (token, id) = match self.verified_token(&raw, now_ms, host) {
            Ok(found) => found,
            Err(cred) => return (cred, None),
        };
        if self.logouts.borrow().ended(&cfg.proxy.issuer, &token) {
            return (Credential::Invalid(TokenError::LoggedOut), None);
        }
        if mode == SenderConstraint::Off {
            return (Credential::Valid(raw, token), Some(id));
        }
        let no_proofs: [&[u8]; 0] = [];
        let no_client = KnownClient {
            url: String::new(),
            certificate_sha256: None,
        };
        let (presented, replay) = match binding {
            Some(b) => (
                Presented {
                    scheme,
                    proofs: b.proofs,
                    method: b.method,
                    client: b.client,
                },
                Some(b.replay),
            ),
            None => (
                Presented {
                    scheme,
                    proofs: &no_proofs,
                    method: "",
                    client: &no_client,
                },
                None,
            ),
        };
        let checked = binding::check(
            mode,
            &cfg.proxy.dpop,
            &token,
            &presented,
            binding::Checking {
                now: now_ms / 1000,
                host,
                keys: &mut self.proof_keys,
            },
        );
        let first = match (checked, replay) {
            (Err(r), _) => return (Credential::Refused(r), None),
            (Ok(None), _) => FirstUse::First,
            (Ok(Some(proof)), Some(replay)) => replay.first_use(
                &proof.replay_key,
                &proof.owner,
                proof.usable_until.saturating_mul(1000),
                now_ms,
            ),
            (Ok(Some(_)), None) => FirstUse::Full,
        };
        match first {
            // A bound token's memo key too: its binding was checked for this very request (a
            // proof used once, the certificate of this connection), and it is checked again
            // before the memo is asked next time (the arrival's shortcut is for unbound tokens).
            FirstUse::First => (Credential::Valid(raw, token), Some(id)),
            FirstUse::Replayed => (Credential::Refused(Refusal::replayed()), None),
            FirstUse::Full => (Credential::Refused(Refusal::replay_table_full()), None),
            FirstUse::OverShare => (Credential::Refused(Refusal::over_share()), None),
        }
    }

    /// The sessions that ended, shared by the VM's enforcers (the shell adds what other workers
    /// took from the shared ring).
    pub fn logouts(&self) -> &Rc<RefCell<Logouts>> {
        &self.logouts
    }

    /// A request to this enforcer's back-channel logout endpoint: the reply (200, or 400 with
    /// the reason) and the records of what ended, already noted here, for the shell to share.
    pub fn backchannel_logout(
        &self,
        content_type: Option<&str>,
        body: &[u8],
        now_ms: i64,
        host: Option<HostVerifier>,
        replay: &mut dyn ReplayGuard,
    ) -> (Reply, Vec<(Ended, i64, i64)>) {
        let cfg = &self.config;
        let Some(settings) = &cfg.proxy.backchannel_logout else {
            return (logout_reply(Err(LogoutError::NoToken)), Vec::new());
        };
        let checked = logout::token_of(content_type, body).and_then(|raw| {
            let l = &self.learnt;
            let jwks = l
                .background
                .jwks
                .as_ref()
                .ok_or(LogoutError::NotVerifiable)?;
            let expected = logout::TokenCheck {
                issuer: &cfg.proxy.issuer,
                audiences: &settings.audiences,
                now: now_ms / 1000,
                max_age_s: i64::from(settings.max_age_s),
                leeway_s: i64::from(cfg.proxy.clock_skew_seconds),
            };
            logout::verify(&raw, jwks, &expected, host)
        });
        let done = checked.and_then(|l| {
            let key: [u8; 32] = sha2::Sha256::digest(format!("logout\n{}", l.jti)).into();
            let until_ms =
                now_ms + i64::from(settings.max_age_s + cfg.proxy.clock_skew_seconds) * 1000;
            match replay.first_logout(&key, until_ms, now_ms) {
                FirstUse::Replayed => Err(LogoutError::Replayed),
                // a logout is never refused for want of space: ending a session twice is
                // harmless, keeping a logged-out session alive is not
                FirstUse::Full => Ok((l, false)),
                _ => Ok((l, true)),
            }
        });
        let mut records = Vec::new();
        let mut remembered = true;
        if let Ok((l, kept)) = &done {
            remembered = *kept;
            let until = now_ms + i64::from(settings.remember_s) * 1000;
            for (kind, value) in [("sid", &l.sid), ("sub", &l.sub)] {
                // a logout token with a sid ends that session; one without, every session of sub
                if kind == "sub" && l.sid.is_some() {
                    continue;
                }
                if let Some(v) = value {
                    let ended = logouts::identity(&cfg.proxy.issuer, kind, v);
                    self.logouts.borrow_mut().note(ended, now_ms, until, now_ms);
                    records.push((ended, now_ms, until));
                }
            }
        }
        let mut reply = logout_reply(done.map(|_| ()));
        if !remembered {
            reply
                .reason
                .push_str(" (its jti not remembered: the logout table is full)");
        }
        (reply, records)
    }

    /// A token verified now or before, with its lookup id; else what the credential is.
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn verified_token(
        &mut self,
        raw: &str,
        now_ms: i64,
        host: Option<HostVerifier>,
    ) -> Result<(Rc<Token>, u128), Credential> {
        let cfg = &self.config;
        let now = now_ms / 1000;
        let leeway = i64::from(cfg.proxy.clock_skew_seconds);
        let l = &mut self.learnt;
        let verified = Rc::clone(&l.verified);
        let mut verified = verified.borrow_mut();
        let id = verified.id(raw);
        if let Some(t) = verified.get(id, now, leeway) {
            return Ok((Rc::clone(t), id));
        }
        let Some(jwks) = l.background.jwks.as_ref() else {
            return Err(Credential::Unverifiable);
        };
        let expect = Expectations {
            issuer: &cfg.proxy.issuer,
            audiences: &cfg.proxy.audiences,
            leeway_seconds: u64::from(cfg.proxy.clock_skew_seconds),
            dpop: cfg.proxy.sender_constraint != SenderConstraint::Off,
        };
        match token::verify_with(raw, jwks, &expect, now, host) {
            Ok(t) => {
                let t = Rc::new(if self.keep_all_claims {
                    t
                } else {
                    t.keep_decision_claims()
                });
                if verified.keys_digest() == l.keys_digest {
                    verified.insert(id, Rc::clone(&t), now);
                }
                Ok((t, id))
            }
            // nothing could check it: unverified, never an allow (503)
            Err(TokenError::NoVerifier) => Err(Credential::Unverifiable),
            Err(e) => {
                if matches!(e, TokenError::UnknownKey(_)) {
                    l.background.want_jwks();
                }
                Err(Credential::Invalid(e))
            }
        }
    }
}

/// 200 with no body, or 400 `invalid_request` (OpenID Back-Channel Logout §2.8); never cached.
fn logout_reply(result: Result<(), LogoutError>) -> Reply {
    let no_store = ("cache-control".to_string(), "no-store".to_string());
    match result {
        Ok(()) => Reply {
            status: 200,
            headers: vec![no_store],
            body: String::new(),
            reason: "back-channel logout".into(),
            cache: CacheUse::None,
            matched: None,
            grpc_status: None,
        },
        Err(e) => Reply {
            status: 400,
            headers: vec![
                no_store,
                ("content-type".to_string(), "application/json".to_string()),
            ],
            body:
                serde_json::json!({"error": "invalid_request", "error_description": e.describe()})
                    .to_string(),
            reason: format!("back-channel logout refused: {}", e.describe()),
            cache: CacheUse::None,
            matched: None,
            grpc_status: None,
        },
    }
}

/// The connection a request came on, as the host reports it.
pub struct Connection<'a> {
    /// The peer's address (`source.address`).
    pub peer: Option<&'a str>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The URL a request's client used, which a DPoP proof names: the scheme from the connection,
/// or from a trusted proxy's headers; no query or fragment.
pub fn client_url(
    trust: &ProxyTrust,
    conn: &Connection,
    headers: &[(String, Vec<u8>)],
    authority: &str,
    path: &str,
) -> String {
    let secure = trust.client(conn.peer, conn.tls, headers).secure;
    binding::request_url(secure, authority, path)
}

impl Enforcer {
    /// Whether `path` (query and all, as requested) is this enforcer's back-channel logout
    /// endpoint, which the filter answers itself.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn is_backchannel_logout(&self, path: &str) -> bool {
        self.config
            .proxy
            .backchannel_logout
            .as_ref()
            .is_some_and(|b| crate::request::view::path_only(path) == b.path)
    }
}

/// What came with a request's token, for its binding: the `DPoP` header values, the request's
/// method and URL as the client used them, the connection's client certificate, and the table
/// that remembers proofs across workers.
pub struct Binding<'a> {
    pub proofs: &'a [&'a [u8]],
    pub method: &'a str,
    /// The URL the client used and its certificate, read when the token's binding needs them.
    pub client: &'a dyn ClientView,
    pub replay: &'a mut dyn ReplayGuard,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keycloak::token::tests::{claims, jwks, sign_rs256, ISSUER, NOW};
    use serde_json::{json, Value};

    fn enforcer(cip: bool) -> Enforcer {
        let mut v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
            "credentials": {"secret": "s"},
            "policy-enforcer": {"paths": [{"path": "/account/*"}]}});
        if cip {
            v["policy-enforcer"]["paths"][0]["claim-information-point"] =
                json!({"claims": {"roles": "{keycloak.access_token['/realm_access/roles']}"}});
        }
        let mut cfg = EnforcerConfig::from_value(&v, "").unwrap();
        cfg.proxy.issuer = ISSUER.to_string();
        let mut e = Enforcer::new("e".into(), cfg);
        e.learnt().background.jwks = Some(jwks());
        e
    }

    fn roles_seen(e: &mut Enforcer, raw: &str) -> Option<Value> {
        let header = format!("Bearer {raw}");
        let (cred, _) = e.check_credential(&[header.as_bytes()], NOW * 1000, None, None);
        let Credential::Valid(_, t) = cred else {
            panic!("not valid")
        };
        t.claim("/realm_access/roles").cloned()
    }

    #[test]
    fn the_url_a_binding_names_is_the_clients_own() {
        let direct = enforcer(false);
        let conn = |peer, tls| Connection {
            peer: Some(peer),
            tls,
        };
        let url = |e: &Enforcer, c: &Connection, headers: &[(String, Vec<u8>)], path| {
            client_url(&e.config.proxy.proxy_trust, c, headers, "h", path)
        };
        let fwd = vec![("x-forwarded-proto".to_string(), b"https".to_vec())];
        // the connection's scheme, no query; a forwarding header from an untrusted peer is
        // nobody's word
        assert_eq!(
            url(&direct, &conn("10.0.0.1:5", false), &fwd, "/a?q=1#f"),
            "http://h/a"
        );
        assert_eq!(
            url(&direct, &conn("10.0.0.1:5", true), &[], "/a"),
            "https://h/a"
        );
        let mut cfg = (*direct.config).clone();
        let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
            "credentials": {"secret": "s"}, "policy-enforcer": {},
            "kcpep": {"proxy-headers": "xforwarded", "trusted-proxies": ["10.0.0.0/8"],
                      "backchannel-logout": {"path": "/kcpep/logout"}}});
        let parsed = EnforcerConfig::from_value(&v, "").unwrap();
        cfg.proxy.proxy_trust = parsed.proxy.proxy_trust.clone();
        cfg.proxy.backchannel_logout = parsed.proxy.backchannel_logout.clone();
        let behind = Enforcer::new("b".into(), cfg);
        // a trusted proxy's X-Forwarded-Proto is the client's scheme; another peer's is not
        let plain = conn("10.1.2.3:80", false);
        assert_eq!(url(&behind, &plain, &fwd, "/a"), "https://h/a");
        let outside = conn("192.0.2.1:80", false);
        assert_eq!(url(&behind, &outside, &fwd, "/a"), "http://h/a");
        // the logout endpoint, whatever the query; no endpoint unless configured
        assert!(behind.is_backchannel_logout("/kcpep/logout?x=1"));
        assert!(!behind.is_backchannel_logout("/kcpep/logout/more"));
        assert!(!direct.is_backchannel_logout("/kcpep/logout"));
    }

    #[test]
    fn remembered_tokens_keep_every_claim_only_where_a_claim_provider_may_read_it() {
        let raw = sign_rs256(&claims());
        let (mut with, mut without) = (enforcer(true), enforcer(false));
        for round in ["verified", "remembered"] {
            assert!(roles_seen(&mut with, &raw).is_some(), "{round}");
            assert_eq!(roles_seen(&mut without, &raw), None, "{round}");
        }
        assert_eq!(without.learnt().verified.borrow().len(), 1);
    }

    /// A token verified by one enforcer is known to another only when a verification there could
    /// not have had another outcome: same issuer, audiences, skew, keys and claims kept.
    #[test]
    fn enforcers_share_verified_tokens_only_within_one_verify_profile() {
        let raw = sign_rs256(&claims());
        let header = format!("Bearer {raw}");
        let cfg = |cip: bool, audiences: &[&str]| {
            let mut c = (*enforcer(cip).config).clone();
            c.proxy.audiences = audiences.iter().map(|a| a.to_string()).collect();
            c
        };
        let mut all = Enforcer::build_all([
            ("a".to_string(), cfg(false, &[])),
            ("same".to_string(), cfg(false, &[])),
            ("other-audience".to_string(), cfg(false, &["bank-api"])),
            ("claims".to_string(), cfg(true, &[])),
        ]);
        for e in &mut all {
            e.learnt().background.jwks = Some(jwks());
        }
        let (cred, id) = all[0].check_credential(&[header.as_bytes()], NOW * 1000, None, None);
        assert!(matches!(cred, Credential::Valid(..)) && id.is_some());
        let known: Vec<bool> = all
            .iter()
            .map(|e| e.verified_id(&[header.as_bytes()], NOW * 1000).is_some())
            .collect();
        assert_eq!(known, [true, true, false, false]);
        assert_eq!(all[1].learnt().verified.borrow().len(), 1);
        // A new key set seen by one of them makes the group verify again.
        let answer = Answer::Http {
            status: 200,
            body: include_bytes!("../../tests/fixtures/jwks.json"),
        };
        let load = |e: &mut Enforcer| {
            let cfg = (*e.config).clone();
            e.learnt().complete(&cfg, Fetch::Jwks, answer, NOW * 1000);
        };
        load(&mut all[1]);
        assert_eq!(all[0].verified_id(&[header.as_bytes()], NOW * 1000), None);
        // The other one, still on the keys it had, verifies but does not remember for the group.
        let (cred, _) = all[0].check_credential(&[header.as_bytes()], NOW * 1000, None, None);
        assert!(matches!(cred, Credential::Valid(..)));
        assert_eq!(all[1].verified_id(&[header.as_bytes()], NOW * 1000), None);
        // Once it loads the same set, the group's store is kept and shared again.
        load(&mut all[1]);
        load(&mut all[0]);
        all[0].check_credential(&[header.as_bytes()], NOW * 1000, None, None);
        load(&mut all[0]);
        assert!(all[1]
            .verified_id(&[header.as_bytes()], NOW * 1000)
            .is_some());
    }

    fn bound_enforcer(mode: &str, accept_unbound: bool) -> Enforcer {
        let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
            "credentials": {"secret": "s"},
            "kcpep": {"sender-constraint": mode, "issuer": ISSUER,
                      "dpop": {"accept-unbound-tokens": accept_unbound}},
            "policy-enforcer": {"paths": [{"path": "/account/*"}]}});
        let mut e = Enforcer::new("e".into(), EnforcerConfig::from_value(&v, "").unwrap());
        e.learnt().background.jwks = Some(jwks());
        e
    }

    const URL: &str = "https://bank.example/account/1";

    /// A token bound to the test client's key (`cnf.jkt`), and a proof for `url` with `jti`.
    fn dpop_token() -> String {
        let mut c = claims();
        c["typ"] = json!("DPoP");
        c["cnf"] = json!({"jkt": crate::keycloak::dpop::tests::client_thumbprint()});
        sign_rs256(&c)
    }

    fn proof(token: &str, jti: &str, url: &str) -> String {
        crate::keycloak::dpop::tests::proof_for(token, "GET", url, jti, NOW)
    }

    fn presented(
        e: &mut Enforcer,
        scheme: &str,
        token: &str,
        proofs: &[&str],
        replay: &mut crate::store::LocalReplay,
    ) -> (Credential, Option<u128>) {
        let header = format!("{scheme} {token}");
        let proofs: Vec<&[u8]> = proofs.iter().map(|p| p.as_bytes()).collect();
        let client = KnownClient {
            url: URL.into(),
            certificate_sha256: None,
        };
        let binding = Binding {
            proofs: &proofs,
            method: "GET",
            client: &client,
            replay,
        };
        e.check_credential(&[header.as_bytes()], NOW * 1000, None, Some(binding))
    }

    fn refusal(c: &Credential) -> Option<&'static str> {
        match c {
            Credential::Refused(r) => Some(r.counter),
            Credential::Valid(..) => None,
            _ => Some("not a binding refusal"),
        }
    }

    #[test]
    fn a_dpop_bound_token_passes_only_with_a_fresh_proof_every_time() {
        let mut e = bound_enforcer("if-bound", false);
        let mut replay = crate::store::LocalReplay::default();
        let tok = dpop_token();
        for round in ["verified", "remembered"] {
            let jti = format!("jti-{round}");
            let (cred, memo) = presented(
                &mut e,
                "DPoP",
                &tok,
                &[&proof(&tok, &jti, URL)],
                &mut replay,
            );
            assert_eq!(refusal(&cred), None, "{round}");
            assert!(memo.is_some(), "its memo key, the proof checked");
            // the memo's shortcut (before any proof is read) refuses it
            assert_eq!(
                e.verified_id(&[format!("Bearer {tok}").as_bytes()], NOW * 1000),
                None
            );
            let (cred, _) = presented(
                &mut e,
                "DPoP",
                &tok,
                &[&proof(&tok, &jti, URL)],
                &mut replay,
            );
            assert_eq!(refusal(&cred), Some("replay"), "{round}");
        }
        let cases: [(&str, Vec<String>, &str); 5] = [
            (
                "Bearer",
                vec![proof(&tok, "b", URL)],
                "dpop_token_as_bearer",
            ),
            ("DPoP", vec![], "missing"),
            (
                "DPoP",
                vec![proof(&tok, "c", "https://bank.example/other")],
                "htu",
            ),
            ("DPoP", vec![proof("another token", "d", URL)], "ath"),
            (
                "DPoP",
                vec![proof(&tok, "e", URL), proof(&tok, "f", URL)],
                "multiple",
            ),
        ];
        for (scheme, proofs, why) in cases {
            let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
            let (cred, _) = presented(&mut e, scheme, &tok, &proofs, &mut replay);
            assert_eq!(refusal(&cred), Some(why), "{scheme} {why}");
        }
        // off: the binding is not checked and a DPoP-typed token is no access token
        let mut off = bound_enforcer("off", false);
        let (cred, _) = presented(&mut off, "Bearer", &tok, &[], &mut replay);
        assert!(matches!(cred, Credential::Invalid(TokenError::WrongType)));
    }

    #[test]
    fn unbound_tokens_follow_the_mode() {
        let plain = sign_rs256(&claims());
        let mut replay = crate::store::LocalReplay::default();
        let mut if_bound = bound_enforcer("if-bound", false);
        let (cred, memo) = presented(&mut if_bound, "Bearer", &plain, &[], &mut replay);
        assert_eq!(refusal(&cred), None);
        assert!(memo.is_some(), "an unbound token keeps the memo");
        let (cred, _) = presented(
            &mut if_bound,
            "DPoP",
            &plain,
            &[&proof(&plain, "u1", URL)],
            &mut replay,
        );
        assert_eq!(refusal(&cred), Some("unbound_token_as_dpop"));
        let mut accepting = bound_enforcer("if-bound", true);
        let (cred, _) = presented(
            &mut accepting,
            "DPoP",
            &plain,
            &[&proof(&plain, "u2", URL)],
            &mut replay,
        );
        assert_eq!(refusal(&cred), None);
        let (cred, _) = presented(&mut accepting, "DPoP", &plain, &[], &mut replay);
        assert_eq!(
            refusal(&cred),
            Some("missing"),
            "the DPoP scheme still needs its proof"
        );
        let mut required = bound_enforcer("required", false);
        let (cred, _) = presented(&mut required, "Bearer", &plain, &[], &mut replay);
        assert_eq!(refusal(&cred), Some("unbound"));
    }

    #[test]
    fn a_certificate_bound_token_needs_its_certificate() {
        use base64::Engine;
        let cert = [9u8; 32];
        let mut c = claims();
        c["cnf"] =
            json!({"x5t#S256": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cert)});
        let tok = sign_rs256(&c);
        let mut e = bound_enforcer("if-bound", false);
        let header = format!("Bearer {tok}");
        let mut with = |digest: Option<[u8; 32]>| {
            let mut replay = crate::store::LocalReplay::default();
            let client = KnownClient {
                url: URL.into(),
                certificate_sha256: digest,
            };
            let binding = Binding {
                proofs: &[],
                method: "GET",
                client: &client,
                replay: &mut replay,
            };
            let (cred, _) =
                e.check_credential(&[header.as_bytes()], NOW * 1000, None, Some(binding));
            refusal(&cred)
        };
        assert_eq!(with(Some(cert)), None);
        assert_eq!(with(Some([8u8; 32])), Some("certificate_mismatch"));
        assert_eq!(with(None), Some("certificate_missing"));
        // Off: taken as a bearer token (the behaviour before sender constraints)
        let mut off = bound_enforcer("off", false);
        let (cred, _) = off.check_credential(&[header.as_bytes()], NOW * 1000, None, None);
        assert_eq!(refusal(&cred), None);
    }

    #[test]
    fn a_backchannel_logout_ends_the_sessions_tokens_for_every_enforcer_of_the_vm() {
        let v = json!({"realm": "bank", "auth-server-url": "http://kc", "resource": "bank-api",
            "credentials": {"secret": "s"},
            "kcpep": {"issuer": ISSUER, "backchannel-logout": {"path": "/logout"}},
            "policy-enforcer": {"paths": [{"path": "/account/*"}]}});
        let cfg = EnforcerConfig::from_value(&v, "").unwrap();
        let mut other = cfg.clone();
        other.proxy.backchannel_logout = None;
        let mut all = Enforcer::build_all([("a".to_string(), cfg), ("b".to_string(), other)]);
        for e in &mut all {
            e.learnt().background.jwks = Some(jwks());
        }
        let mut c = claims();
        c["sid"] = json!("session-1");
        let access = sign_rs256(&c);
        let header = format!("Bearer {access}");
        let valid = |e: &mut Enforcer| {
            matches!(
                e.check_credential(&[header.as_bytes()], NOW * 1000, None, None)
                    .0,
                Credential::Valid(..)
            )
        };
        assert!(valid(&mut all[0]) && valid(&mut all[1]));
        assert!(all[1]
            .verified_id(&[header.as_bytes()], NOW * 1000)
            .is_some());
        let logout = |e: &Enforcer, claims: &Value, replay: &mut crate::store::LocalReplay| {
            let body = format!("logout_token={}", sign_rs256(claims));
            e.backchannel_logout(
                Some("application/x-www-form-urlencoded"),
                body.as_bytes(),
                NOW * 1000 + 1000,
                None,
                replay,
            )
        };
        let mut replay = crate::store::LocalReplay::default();
        let lt = json!({"iss": ISSUER, "aud": "bank-api", "iat": NOW, "jti": "lt-1",
                        "sid": "session-1", "sub": "u1",
                        "events": {crate::keycloak::logout::EVENT: {}}});
        // for another client: refused, nothing ends
        let mut foreign = lt.clone();
        foreign["aud"] = json!("demo-cli");
        let (reply, ended) = logout(&all[0], &foreign, &mut replay);
        assert_eq!((reply.status, ended.len()), (400, 0), "{}", reply.body);
        assert!(valid(&mut all[1]));
        let (reply, ended) = logout(&all[0], &lt, &mut replay);
        assert_eq!((reply.status, ended.len()), (200, 1), "{}", reply.body);
        for e in &mut all {
            let (cred, _) = e.check_credential(&[header.as_bytes()], NOW * 1000, None, None);
            assert!(
                matches!(cred, Credential::Invalid(TokenError::LoggedOut)),
                "{}",
                e.name
            );
            assert_eq!(
                e.verified_id(&[header.as_bytes()], NOW * 1000),
                None,
                "no memo shortcut"
            );
        }
        // the same logout token again: 400
        assert_eq!(logout(&all[0], &lt, &mut replay).0.status, 400);
        // a token of a new session of the same user still works
        let mut newer = claims();
        newer["sid"] = json!("session-2");
        let fresh = format!("Bearer {}", sign_rs256(&newer));
        let (cred, _) = all[1].check_credential(&[fresh.as_bytes()], NOW * 1000, None, None);
        assert!(matches!(cred, Credential::Valid(..)));
    }
}

/// Keeping what the enforcer knows of Keycloak fresh across every VM of the proxy: before a fetch
/// is sent, another VM's copy in shared data is used when still good, and only the VM holding
/// the fetch's lease asks Keycloak.
impl Enforcer {
    /// Sends (or takes from shared data) every fetch due now. An answer found in shared data
    /// can make more fetches due (path bindings need the PAT), so up to
    /// [`background::ROUNDS_PER_TICK`] rounds run.
    pub fn refresh(&mut self, host: &mut dyn FetchHost, now_ms: i64) -> Report {
        let cfg = &self.config;
        let st = &mut self.learnt;
        let mut due = st.due(cfg, now_ms);
        let mut rounds = 0;
        while !due.is_empty() && rounds < background::ROUNDS_PER_TICK {
            rounds += 1;
            let mut from_shared = false;
            for (fetch, req) in std::mem::take(&mut due) {
                let key = documents::doc_key(cfg, fetch, &req);
                // Another VM (or enforcer of the same realm) may have fetched it already.
                if let Some(stored) = host.shared(&key) {
                    // a PAT Keycloak refused is not taken again from another VM's copy
                    let refused = |at: i64| {
                        fetch == Fetch::Pat
                            && st.background.pat_refused_at_ms.is_some_and(|r| at <= r)
                    };
                    if let Some((stored_at, doc)) =
                        documents::usable(&stored, fetch, now_ms, st.background.jwks_forced)
                            .filter(|(at, _)| !refused(*at))
                    {
                        let answer = Answer::Http {
                            status: 200,
                            body: doc,
                        };
                        st.complete(cfg, fetch, answer, stored_at);
                        from_shared = true;
                        continue;
                    }
                }
                if host.in_flight(&key) || !host.take_lease(&documents::lease_key(&key), now_ms) {
                    st.background.skip(fetch);
                    continue;
                }
                if !host.send(fetch, key, &req, now_ms) {
                    st.background.notes.push(format!(
                        "cannot call cluster {} for {}",
                        cfg.proxy.cluster,
                        fetch.name()
                    ));
                    st.complete(cfg, fetch, Answer::NoAnswer, now_ms);
                }
            }
            if from_shared {
                due = st.due(cfg, now_ms);
            }
        }
        Report {
            notes: st.background.notes.drain(..).collect(),
            settled: st.background.settled(),
        }
    }

    /// Takes Keycloak's answer to a fetch this VM sent under `key`.
    pub fn fetched(&mut self, fetch: Fetch, key: &str, answer: Answer, now_ms: i64) -> Fetched {
        let cfg = &self.config;
        let st = &mut self.learnt;
        let had_keys = st.background.ready();
        let share = match answer {
            Answer::Http { status: 200, body } => Some(documents::encode_doc(now_ms, body)),
            _ => None,
        };
        st.complete(cfg, fetch, answer, now_ms);
        Fetched {
            share,
            lease: documents::lease_key(key),
            keys_loaded: !had_keys && st.background.ready(),
            report: Report {
                notes: st.background.notes.drain(..).collect(),
                settled: st.background.settled(),
            },
        }
    }
}

#[cfg(test)]
mod refresh_tests {
    use super::*;
    use crate::config::EnforcerConfig;
    use crate::enforce::refresh::FetchHost;
    use crate::keycloak::background::Fetch;
    use crate::wire::http::HttpRequest;
    use std::collections::HashMap;

    /// A proxy of one VM: shared data, leases held by others, what it sent.
    #[derive(Default)]
    struct Proxy {
        shared: HashMap<String, Vec<u8>>,
        leased_elsewhere: bool,
        refuse_sends: bool,
        sent: Vec<(Fetch, String)>,
    }

    impl FetchHost for Proxy {
        fn shared(&mut self, key: &str) -> Option<Vec<u8>> {
            self.shared.get(key).cloned()
        }
        fn in_flight(&self, key: &str) -> bool {
            self.sent.iter().any(|(_, k)| k == key)
        }
        fn take_lease(&mut self, _: &str, _: i64) -> bool {
            !self.leased_elsewhere
        }
        fn send(&mut self, fetch: Fetch, key: String, _: &HttpRequest, _: i64) -> bool {
            if self.refuse_sends {
                return false;
            }
            self.sent.push((fetch, key));
            true
        }
    }

    fn enforcer() -> Enforcer {
        let v = serde_json::json!({"realm": "bank", "auth-server-url": "http://kc",
            "resource": "api", "credentials": {"secret": "s"},
            "policy-enforcer": {"paths": [{"path": "/a", "enforcement-mode": "DISABLED"}]}});
        Enforcer::new(
            "e".into(),
            EnforcerConfig::from_value(&v, "").expect("config"),
        )
    }

    /// The realm keys of tests/fixtures.
    fn jwks() -> Vec<u8> {
        include_bytes!("../../tests/fixtures/jwks.json").to_vec()
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn the_first_refresh_sends_each_due_fetch_once_and_waits_for_it() {
        let mut e = enforcer();
        let mut proxy = Proxy::default();
        let report = e.refresh(&mut proxy, NOW);
        assert!(!proxy.sent.is_empty());
        assert!(!report.settled);
        let first = proxy.sent.len();
        // nothing new is due while those are in flight
        e.refresh(&mut proxy, NOW + 1);
        assert_eq!(proxy.sent.len(), first);
    }

    #[test]
    fn another_vms_copy_is_used_instead_of_a_call() {
        let mut e = enforcer();
        let mut probe = Proxy::default();
        enforcer().refresh(&mut probe, NOW);
        let (fetch, key) = probe
            .sent
            .iter()
            .find(|(f, _)| matches!(f, Fetch::Jwks))
            .cloned()
            .expect("keys are fetched first");
        let mut proxy = Proxy::default();
        proxy
            .shared
            .insert(key.clone(), documents::encode_doc(NOW - 10, &jwks()));
        e.refresh(&mut proxy, NOW);
        assert!(
            !proxy.sent.iter().any(|(f, _)| *f == fetch),
            "sent {:?} although another VM had it",
            fetch.name()
        );
        assert!(e.learnt().background.jwks.is_some());
    }

    #[test]
    fn a_lease_held_by_another_vm_skips_the_fetch_without_backoff() {
        let mut e = enforcer();
        let mut proxy = Proxy {
            leased_elsewhere: true,
            ..Default::default()
        };
        e.refresh(&mut proxy, NOW);
        assert!(proxy.sent.is_empty());
        // the other VM's answer never came: the next tick asks again, at once
        proxy.leased_elsewhere = false;
        e.refresh(&mut proxy, NOW + 1);
        assert!(!proxy.sent.is_empty());
    }

    #[test]
    fn a_refused_send_is_an_unanswered_fetch_and_is_reported() {
        let mut e = enforcer();
        let mut proxy = Proxy {
            refuse_sends: true,
            ..Default::default()
        };
        let report = e.refresh(&mut proxy, NOW);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("cannot call cluster")),
            "{:?}",
            report.notes
        );
        // backed off: not asked again in the same millisecond
        proxy.refuse_sends = false;
        e.refresh(&mut proxy, NOW);
        assert!(proxy.sent.is_empty(), "{:?}", proxy.sent);
    }

    #[test]
    fn only_good_answers_are_shared_and_every_answer_releases_the_lease() {
        let mut e = enforcer();
        let mut proxy = Proxy::default();
        e.refresh(&mut proxy, NOW);
        let (fetch, key) = proxy.sent[0].clone();
        let bad = e.fetched(
            fetch,
            &key,
            Answer::Http {
                status: 500,
                body: b"oops",
            },
            NOW,
        );
        assert_eq!(bad.share, None);
        assert_eq!(bad.lease, documents::lease_key(&key));
        let none = e.fetched(fetch, &key, Answer::NoAnswer, NOW);
        assert_eq!(none.share, None);
    }

    #[test]
    fn the_first_key_set_is_reported_once() {
        let mut e = enforcer();
        let mut proxy = Proxy::default();
        e.refresh(&mut proxy, NOW);
        let (fetch, key) = proxy
            .sent
            .iter()
            .find(|(f, _)| matches!(f, Fetch::Jwks))
            .cloned()
            .expect("keys are fetched");
        let body = &jwks();
        let first = e.fetched(fetch, &key, Answer::Http { status: 200, body }, NOW);
        assert!(first.keys_loaded);
        assert_eq!(first.share, Some(documents::encode_doc(NOW, body)));
        let again = e.fetched(fetch, &key, Answer::Http { status: 200, body }, NOW + 5);
        assert!(!again.keys_loaded);
    }
}
