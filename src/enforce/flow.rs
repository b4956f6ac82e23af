//! The flow of one request through an enforcer, as Keycloak's policy enforcer decides
//! (docs/keycloak-enforcer.md §4-5): the first step (ambiguous paths, enforcement modes, the
//! credential), then the stages, each in its file with the answer to its own call: the path
//! located (`locate`), its claims collected (`collect`), the permission checked (`authorize`).

use super::authorize::{self, challenge, method_config};
use super::collect;
use super::judge::{relative_path, Judge};
use super::locate;
use crate::config::{EnforcementMode, EnforcerConfig, MethodConfig};
use crate::enforce::replies::{
    self, allow, challenge_with_ticket, dry_run, forbidden, keycloak_unavailable, redirect, reply,
    unauthorized, with_reason,
};
use crate::enforce::step::{Credential, Pending, RequestFacts, Step};
use crate::keycloak::knowledge::Knowledge;
use crate::keycloak::resources::{Entry, PathSet};
use crate::keycloak::token::BearerError;
use crate::request::uri;
use crate::store::DecisionStore;
use crate::wire::http::Answer;
use std::rc::Rc;

/// What `explain` reports: the path match alone, without any token or server.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub normalized_path: Option<String>,
    pub entry: Option<Rc<Entry>>,
    pub enforcement_mode: EnforcementMode,
    pub method: Option<MethodConfig>,
}

pub fn explain(cfg: &EnforcerConfig, paths: &PathSet, method: &str, raw_path: &str) -> Explanation {
    let normalized = relative_path(cfg, raw_path).and_then(|p| uri::normalize(&p));
    let entry = normalized.as_deref().and_then(|n| paths.find(n)).cloned();
    let enforcement_mode = match (&entry, cfg.enforcement_mode) {
        (_, EnforcementMode::Disabled) => EnforcementMode::Disabled,
        (Some(e), _) => e.config.enforcement_mode,
        (None, global) => global,
    };
    let method = entry.as_ref().map(|e| method_config(cfg, e, method));
    Explanation {
        normalized_path: normalized,
        entry,
        enforcement_mode,
        method,
    }
}

/// The first step for a request.
pub fn decide(
    cfg: &EnforcerConfig,
    known: &mut Knowledge,
    req: &RequestFacts,
    store: &mut dyn DecisionStore,
    now_ms: i64,
) -> Step {
    dry_run(
        cfg,
        decide_inner(&mut Judge::new(cfg, known, req, store, now_ms)),
    )
}

fn decide_inner(j: &mut Judge) -> Step {
    let (cfg, req) = (j.cfg, j.req);
    // Before anything else, DISABLED included: what is judged must be what the upstream gets.
    if let Some(why) = uri::segmentation_hazard(req.path) {
        return reply(400, "Bad Request", &format!("ambiguous path: {why}"));
    }
    if cfg.enforcement_mode == EnforcementMode::Disabled {
        return match req.credential {
            Credential::Anonymous => unauthorized(cfg, None),
            _ => allow(None, "enforcement-mode DISABLED"),
        };
    }
    let normalized = relative_path(cfg, req.path).and_then(|p| uri::normalize(&p));
    let is_deny_page = match (&normalized, &cfg.on_deny_normalized) {
        (Some(n), Some(deny)) => n == deny,
        _ => false,
    };
    let configured: Option<Rc<Entry>> = if is_deny_page {
        None
    } else {
        normalized
            .as_deref()
            .and_then(|n| j.known.paths.find(n))
            .cloned()
    };
    let configured_disabled = configured
        .as_ref()
        .is_some_and(|e| e.config.enforcement_mode == EnforcementMode::Disabled);

    let (raw, token) = match &req.credential {
        Credential::Valid(raw, token) => (raw.as_str(), &**token),
        _ if is_deny_page => return allow(None, "the on-deny-redirect-to page"),
        _ if configured_disabled => return allow(None, "path enforcement-mode DISABLED"),
        Credential::Anonymous => {
            if let (true, Some(entry)) = (cfg.user_managed_access, &configured) {
                let m = method_config(cfg, entry, req.method);
                return challenge(cfg, j.known, entry, &m, None);
            }
            // a gRPC client cannot follow the redirect: it is told to authenticate
            if let (Some(to), false) = (&cfg.on_deny_redirect_to, req.grpc) {
                return redirect(to, "no token");
            }
            if cfg.proxy.no_token_status == 403 {
                return forbidden("no token");
            }
            return unauthorized(cfg, None);
        }
        // RFC 6750 §3.1: no bearer credential offered (Basic, Digest...), no error code.
        Credential::Malformed(BearerError::NotBearer) => {
            return with_reason(unauthorized(cfg, None), BearerError::NotBearer.describe())
        }
        Credential::Malformed(e) => return unauthorized(cfg, Some(e.describe())),
        Credential::Invalid(e) => return unauthorized(cfg, Some(e.describe())),
        Credential::Refused(r) => return replies::binding_refused(cfg, r),
        Credential::Unverifiable => {
            return keycloak_unavailable(
                cfg,
                "token not verifiable yet (realm keys not loaded, or no signature check)",
            )
        }
    };

    locate::locate(
        j,
        raw,
        token,
        normalized,
        configured,
        configured_disabled,
        is_deny_page,
    )
}

/// The next step once Keycloak (or a claim provider) answered a `Call`.
pub fn resume(
    cfg: &EnforcerConfig,
    known: &mut Knowledge,
    req: &RequestFacts,
    store: &mut dyn DecisionStore,
    pending: Pending,
    answer: Answer,
    now_ms: i64,
) -> Step {
    let mut j = Judge::new(cfg, known, req, store, now_ms);
    dry_run(cfg, resume_inner(&mut j, pending, answer))
}

fn resume_inner(j: &mut Judge, pending: Pending, answer: Answer) -> Step {
    let (cfg, req) = (j.cfg, j.req);
    let Credential::Valid(raw, token) = req.credential else {
        // Only the anonymous UMA challenge asks Keycloak without a token.
        return match pending {
            Pending::Ticket => challenge_with_ticket(cfg, j.known, answer),
            _ => unauthorized(cfg, None),
        };
    };
    match pending {
        Pending::LazyLoad {
            key,
            configured,
            lookup,
        } => locate::looked_up(j, raw, token, key, configured, lookup, answer),
        Pending::Claims {
            entry,
            method,
            done,
        } => collect::answered(j, raw, token, entry, method, done, answer),
        Pending::Grant {
            entry,
            method,
            cached,
            claims,
            asked,
        } => authorize::granted(j, entry, method, cached, claims, asked, answer),
        Pending::Ticket => challenge_with_ticket(cfg, j.known, answer),
    }
}
