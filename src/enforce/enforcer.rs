//! One configured enforcer as one object: its compiled configuration, and what it has learnt
//! from Keycloak (the paths bound to resources and looked up, the PAT, the realm's keys and the
//! fetch schedule, the tokens it verified). `decide`, `resume` and `explain` are its methods; each
//! call gets only the request, the store and the time.

use crate::config::EnforcerConfig;
use crate::enforce::step::{Credential, Pending, RequestFacts, Step};
use crate::enforce::{self, Explanation};
use crate::keycloak::background::{Background, Fetch};
use crate::keycloak::knowledge::Knowledge;
use crate::keycloak::token::{self, BearerError, Expectations, HostVerifier, Token, TokenError};
use crate::keycloak::verified::VerifiedTokens;
use crate::store::DecisionStore;
use crate::wire::http::{Answer, HttpRequest};
use std::cell::{RefCell, RefMut};
use std::rc::Rc;

/// How many verified tokens an enforcer remembers (by digest, until their `exp`). Enforcers that
/// share their verified tokens (see [`Enforcer::build_all`]) share a store this many times the
/// group's size, at most [`VERIFIED_SHARED_MAX`] times.
pub const VERIFIED_TOKENS: usize = 4096;
/// The largest multiple of [`VERIFIED_TOKENS`] one shared store holds.
pub const VERIFIED_SHARED_MAX: usize = 4;

pub struct Enforcer {
    pub name: String,
    pub config: EnforcerConfig,
    /// A claim information point may read any claim: verified tokens keep them all.
    keep_all_claims: bool,
    learnt: RefCell<Learnt>,
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

/// What was learnt of a request's credential, owned by the request (a decision borrows it as a
/// [`Credential`]).
pub enum Cred {
    Anonymous,
    Malformed(BearerError),
    Invalid(TokenError),
    Unverifiable,
    Valid(String, Rc<Token>),
}

impl Cred {
    pub fn credential(&self) -> Credential<'_> {
        match self {
            Cred::Anonymous => Credential::Anonymous,
            Cred::Malformed(e) => Credential::Malformed(*e),
            Cred::Invalid(e) => Credential::Invalid(e.clone()),
            Cred::Unverifiable => Credential::Unverifiable,
            Cred::Valid(raw, token) => Credential::Valid { raw, token },
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
        }
    }
}

impl Enforcer {
    /// An enforcer with a verified-token store of its own.
    pub fn new(name: String, config: EnforcerConfig) -> Self {
        let verified = Rc::new(RefCell::new(VerifiedTokens::new(VERIFIED_TOKENS)));
        Enforcer::with_verified(name, config, verified)
    }

    /// A VM's enforcers, those of one [`VerifyProfile`] sharing one verified-token store.
    pub fn build_all(configs: impl IntoIterator<Item = (String, EnforcerConfig)>) -> Vec<Self> {
        let configs: Vec<(String, EnforcerConfig)> = configs.into_iter().collect();
        let profiles: Vec<VerifyProfile> =
            configs.iter().map(|(_, c)| VerifyProfile::of(c)).collect();
        let mut stores: std::collections::HashMap<&VerifyProfile, Rc<RefCell<VerifiedTokens>>> =
            std::collections::HashMap::new();
        for p in &profiles {
            if !stores.contains_key(p) {
                let members = profiles.iter().filter(|q| *q == p).count();
                let capacity = VERIFIED_TOKENS * members.min(VERIFIED_SHARED_MAX);
                stores.insert(p, Rc::new(RefCell::new(VerifiedTokens::new(capacity))));
            }
        }
        let shared: Vec<Rc<RefCell<VerifiedTokens>>> = profiles
            .iter()
            .filter_map(|p| stores.get(p).map(Rc::clone))
            .collect();
        configs
            .into_iter()
            .zip(shared)
            .map(|((name, config), verified)| Enforcer::with_verified(name, config, verified))
            .collect()
    }

    fn with_verified(
        name: String,
        config: EnforcerConfig,
        verified: Rc<RefCell<VerifiedTokens>>,
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
            config,
            learnt: RefCell::new(learnt),
        }
    }

    /// What it learnt, to change it (the background fetches' answers). Never held across a call
    /// into the enforcer.
    pub fn learnt(&self) -> RefMut<'_, Learnt> {
        self.learnt.borrow_mut()
    }

    /// The first (or renewed) decision for a request.
    pub fn decide(&self, req: &RequestFacts, store: &mut dyn DecisionStore, now_ms: i64) -> Step {
        let mut l = self.learnt.borrow_mut();
        enforce::decide(&self.config, &mut l.knowledge, req, store, now_ms)
    }

    /// The next step once the callout `pending` was answered.
    pub fn resume(
        &self,
        req: &RequestFacts,
        store: &mut dyn DecisionStore,
        pending: Pending,
        answer: Answer,
        now_ms: i64,
    ) -> Step {
        let mut l = self.learnt.borrow_mut();
        enforce::resume(
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
        let l = self.learnt.borrow();
        enforce::explain(&self.config, &l.knowledge.paths, method, path)
    }

    /// The lookup id of a bearer token verified before and not expired, without copying it: all
    /// a memo hit needs of the credential. `None`: anything else (ask [`Self::check_credential`]).
    pub fn verified_id(&self, authorization: &[&[u8]], now_ms: i64) -> Option<u128> {
        let cfg = &self.config;
        let raw = token::bearer(authorization, cfg.proxy.max_token_bytes as usize).ok()??;
        let l = self.learnt.borrow();
        let verified = l.verified.borrow();
        let id = verified.id(raw);
        let leeway = i64::from(cfg.proxy.clock_skew_seconds);
        verified.get(id, now_ms / 1000, leeway).map(|_| id)
    }

    /// The request's credential from its `Authorization` values: the bearer token verified
    /// against the realm's keys (or found among the tokens verified before, until their `exp`),
    /// with its lookup id when valid (the memo key's identity). An unknown signing key asks for
    /// the realm's keys again.
    pub fn check_credential(
        &self,
        authorization: &[&[u8]],
        now_ms: i64,
        host: Option<HostVerifier>,
    ) -> (Cred, Option<u128>) {
        let cfg = &self.config;
        let raw = match token::bearer(authorization, cfg.proxy.max_token_bytes as usize) {
            Ok(None) => return (Cred::Anonymous, None),
            Err(e) => return (Cred::Malformed(e), None),
            Ok(Some(raw)) => raw.to_string(),
        };
        let now = now_ms / 1000;
        let leeway = i64::from(cfg.proxy.clock_skew_seconds);
        let mut l = self.learnt.borrow_mut();
        let verified = Rc::clone(&l.verified);
        let mut verified = verified.borrow_mut();
        let id = verified.id(&raw);
        if let Some(t) = verified.get(id, now, leeway) {
            return (Cred::Valid(raw, Rc::clone(t)), Some(id));
        }
        let Some(jwks) = l.background.jwks.as_ref() else {
            return (Cred::Unverifiable, None);
        };
        let expect = Expectations {
            issuer: &cfg.proxy.issuer,
            audiences: &cfg.proxy.audiences,
            leeway_seconds: u64::from(cfg.proxy.clock_skew_seconds),
        };
        match token::verify_with(&raw, jwks, &expect, now, host) {
            Ok(t) => {
                let t = Rc::new(if self.keep_all_claims {
                    t
                } else {
                    t.keep_decision_claims()
                });
                if verified.keys_digest() == l.keys_digest {
                    verified.insert(id, Rc::clone(&t), now);
                }
                (Cred::Valid(raw, t), Some(id))
            }
            // nothing could check it: unverified, never an allow (503)
            Err(TokenError::NoVerifier) => (Cred::Unverifiable, None),
            Err(e) => {
                if matches!(e, TokenError::UnknownKey(_)) {
                    l.background.want_jwks();
                }
                (Cred::Invalid(e), None)
            }
        }
    }
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
        let e = Enforcer::new("e".into(), cfg);
        e.learnt().background.jwks = Some(jwks());
        e
    }

    fn roles_seen(e: &Enforcer, raw: &str) -> Option<Value> {
        let header = format!("Bearer {raw}");
        let (cred, _) = e.check_credential(&[header.as_bytes()], NOW * 1000, None);
        let Cred::Valid(_, t) = cred else {
            panic!("not valid")
        };
        t.claim("/realm_access/roles").cloned()
    }

    #[test]
    fn remembered_tokens_keep_every_claim_only_where_a_claim_provider_may_read_it() {
        let raw = sign_rs256(&claims());
        let (with, without) = (enforcer(true), enforcer(false));
        for round in ["verified", "remembered"] {
            assert!(roles_seen(&with, &raw).is_some(), "{round}");
            assert_eq!(roles_seen(&without, &raw), None, "{round}");
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
            let mut c = enforcer(cip).config;
            c.proxy.audiences = audiences.iter().map(|a| a.to_string()).collect();
            c
        };
        let all = Enforcer::build_all([
            ("a".to_string(), cfg(false, &[])),
            ("same".to_string(), cfg(false, &[])),
            ("other-audience".to_string(), cfg(false, &["bank-api"])),
            ("claims".to_string(), cfg(true, &[])),
        ]);
        for e in &all {
            e.learnt().background.jwks = Some(jwks());
        }
        let (cred, id) = all[0].check_credential(&[header.as_bytes()], NOW * 1000, None);
        assert!(matches!(cred, Cred::Valid(..)) && id.is_some());
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
        let load = |e: &Enforcer| {
            let cfg = e.config.clone();
            e.learnt().complete(&cfg, Fetch::Jwks, answer, NOW * 1000);
        };
        load(&all[1]);
        assert_eq!(all[0].verified_id(&[header.as_bytes()], NOW * 1000), None);
        // The other one, still on the keys it had, verifies but does not remember for the group.
        let (cred, _) = all[0].check_credential(&[header.as_bytes()], NOW * 1000, None);
        assert!(matches!(cred, Cred::Valid(..)));
        assert_eq!(all[1].verified_id(&[header.as_bytes()], NOW * 1000), None);
        // Once it loads the same set, the group's store is kept and shared again.
        load(&all[1]);
        load(&all[0]);
        all[0].check_credential(&[header.as_bytes()], NOW * 1000, None);
        load(&all[0]);
        assert!(all[1]
            .verified_id(&[header.as_bytes()], NOW * 1000)
            .is_some());
    }
}
