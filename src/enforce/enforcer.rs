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

/// How many verified tokens an enforcer remembers (by digest, until their `exp`).
pub const VERIFIED_TOKENS: usize = 4096;

pub struct Enforcer {
    pub name: String,
    pub config: EnforcerConfig,
    learnt: RefCell<Learnt>,
}

/// What the enforcer has learnt; changes between requests.
pub struct Learnt {
    pub knowledge: Knowledge,
    pub background: Background,
    pub verified: VerifiedTokens,
}

impl Learnt {
    /// The background fetches due now, as requests to send.
    pub fn due(&mut self, cfg: &EnforcerConfig, now_ms: i64) -> Vec<(Fetch, HttpRequest)> {
        self.background.due(cfg, &self.knowledge, now_ms)
    }

    /// Takes the answer to a background fetch (from Keycloak, or another VM's copy in shared
    /// data, stored at `at_ms`). A new key set makes every remembered token be verified again.
    pub fn complete(&mut self, cfg: &EnforcerConfig, fetch: Fetch, answer: Answer, at_ms: i64) {
        let new_keys =
            matches!(fetch, Fetch::Jwks) && matches!(answer, Answer::Http { status: 200, .. });
        self.background
            .complete(cfg, &mut self.knowledge, fetch, answer, at_ms);
        if new_keys {
            self.verified.clear();
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

impl Enforcer {
    pub fn new(name: String, config: EnforcerConfig) -> Self {
        let learnt = Learnt {
            knowledge: Knowledge::new(&config),
            background: Background::new(&config),
            verified: VerifiedTokens::new(VERIFIED_TOKENS),
        };
        Enforcer {
            name,
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
        let id = l.verified.id(raw);
        let leeway = i64::from(cfg.proxy.clock_skew_seconds);
        l.verified.get(id, now_ms / 1000, leeway).map(|_| id)
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
        let id = l.verified.id(&raw);
        if let Some(t) = l.verified.get(id, now, leeway) {
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
                let t = Rc::new(if cfg.has_claim_providers() {
                    t
                } else {
                    t.keep_decision_claims()
                });
                l.verified.insert(id, Rc::clone(&t), now);
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
        assert_eq!(without.learnt().verified.len(), 1);
    }
}
