//! The claims stage: a path's claim information point, provider by provider, a claim service's
//! answer included, then the permission check with what was gathered.

use super::authorize::{authorize, Authorize};
use super::judge::{relative_path, tag, Judge};
use crate::config::claims as cip;
use crate::config::{EnforcerConfig, MethodConfig};
use crate::enforce::claims;
use crate::enforce::replies::{keycloak_unavailable, reply, unavailable};
use crate::enforce::step::{Call, Pending, Step};
use crate::keycloak::resources::Entry;
use crate::keycloak::token::Token;
use crate::request::placeholders::Context;
use crate::wire::claims::Claims;
use crate::wire::http::Answer;
use std::rc::Rc;

/// The claim providers of a path: the global ones, then the path's.
pub fn claim_chain<'c>(cfg: &'c EnforcerConfig, entry: &'c Entry) -> Vec<&'c cip::Provider> {
    cip::chain(
        cfg.claim_information_point.as_deref(),
        entry.config.claim_information_point.as_deref(),
    )
}

/// Runs the claim providers from `done.len()` on; a provider that needs its service becomes a call.
pub fn resolve_claims(j: &mut Judge, a: Authorize, mut done: Vec<Claims>) -> Step {
    let (cfg, req) = (j.cfg, j.req);
    let providers = claim_chain(cfg, &a.entry);
    let client = cfg
        .proxy
        .proxy_trust
        .client(req.view.peer, req.view.tls, req.view.headers);
    let relative = relative_path(cfg, req.path);
    let cx = Context {
        method: req.method,
        path: req.path,
        relative_path: relative.as_deref().unwrap_or(req.path),
        view: &req.view,
        remote_addr: &client.addr,
        secure: client.secure,
        token: Some((a.raw, &a.token.claims)),
    };
    let next = claims::advance(&providers, &cx, &mut done);
    match next {
        claims::Next::Done(c) => tag(authorize(j, &a, c), &a.entry, &a.method),
        claims::Next::Call {
            request, service, ..
        } => Step::Call(Box::new(Call {
            request,
            service: Some(service),
            pending: Pending::Claims {
                entry: a.entry,
                method: a.method,
                done,
            },
        })),
        claims::Next::Failed(claims::ClaimFailure::BadRequest(why)) => {
            tag(reply(400, "Bad Request", why), &a.entry, &a.method)
        }
        claims::Next::Failed(claims::ClaimFailure::Provider(why)) => tag(
            unavailable(&format!("claim provider: {why}")),
            &a.entry,
            &a.method,
        ),
    }
}

/// A claim service's answer this stage asked for: the next provider, or the permission check.
pub fn answered(
    j: &mut Judge,
    raw: &str,
    token: &Token,
    entry: Rc<Entry>,
    method: MethodConfig,
    mut done: Vec<Claims>,
    answer: Answer,
) -> Step {
    let cfg = j.cfg;
    let providers = claim_chain(cfg, &entry);
    let Some(cip::Provider::Http(h)) = providers.get(done.len()) else {
        return keycloak_unavailable(cfg, "claim provider answer out of order");
    };
    let got = match answer {
        Answer::Http { status, body } => claims::http_answer(h, Some(status), body),
        Answer::NoAnswer => claims::http_answer(h, None, &[]),
    };
    match got {
        Ok(c) => done.push(c),
        Err(_) if h.on_error == cip::OnError::Continue => done.push(Claims::new()),
        Err(why) => {
            return tag(
                unavailable(&format!("claim provider {}: {why}", h.service.cluster)),
                &entry,
                &method,
            )
        }
    }
    let a = Authorize {
        raw,
        token,
        entry,
        method,
    };
    resolve_claims(j, a, done)
}
