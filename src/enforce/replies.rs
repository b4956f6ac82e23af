//! How each answer is written: allow, 401 with its Bearer challenge, 403, the 302 of
//! `on-deny-redirect-to`, the UMA challenge's 401 with a ticket, 413, 503 (docs/keycloak-enforcer.md
//! §4-5).

use crate::config::{EnforcerConfig, MethodConfig, OnKeycloakError, ScopesMode};
use crate::enforce::step::{Allow, CacheUse, Reply, Step};
use crate::keycloak::knowledge::Knowledge;
use crate::keycloak::uma;
use crate::wire::http::Answer;

/// 503 for a request the shell cannot carry on (a callout answer nobody waits for, a body that
/// can no longer be read): refused, never let through undecided.
pub fn cannot_continue(why: &str) -> Step {
    unavailable(why)
}

/// 503: what the filter needs to decide (Keycloak, a claim provider) did not answer (fail closed).
pub(crate) fn unavailable(why: &str) -> Step {
    reply(503, "Authorization service unavailable", why)
}

/// 413 for a request whose claims need a body larger than `kcpep.max-body-bytes`.
pub fn body_too_large(cfg: &EnforcerConfig) -> Step {
    dry_run(
        cfg,
        reply(
            413,
            "Payload Too Large",
            &format!(
                "request body over kcpep.max-body-bytes ({}) and its claims read it",
                cfg.proxy.max_body_bytes
            ),
        ),
    )
}

/// A denial after asking Keycloak; a method with scopes-enforcement-mode DISABLED still passes.
pub(crate) fn denied(m: &MethodConfig, why: &str) -> Step {
    if m.scopes_enforcement_mode == ScopesMode::Disabled {
        return allow(None, "scopes-enforcement-mode DISABLED");
    }
    forbidden(why)
}

pub(crate) fn challenge_with_ticket(
    cfg: &EnforcerConfig,
    known: &Knowledge,
    answer: Answer,
) -> Step {
    let ticket = match answer {
        Answer::Http { status, body } => uma::parse_ticket(status, body),
        Answer::NoAnswer => {
            return keycloak_unavailable(cfg, "no answer from the permission endpoint")
        }
    };
    match ticket {
        Ok(t) => Step::Reply(Reply {
            status: 401,
            headers: vec![(
                "www-authenticate".into(),
                format!(
                    "UMA realm=\"{}\",as_uri=\"{}\",ticket=\"{}\"",
                    cfg.realm, known.issuer, t
                ),
            )],
            body: "Unauthorized".into(),
            reason: "UMA challenge".into(),
            cache: CacheUse::None,
            matched: None,
            grpc_status: None,
        }),
        Err(uma::Failure::Unavailable(why)) => keycloak_unavailable(cfg, &why),
        Err(e) => forbidden(&format!("no permission ticket: {e}")),
    }
}

pub(crate) fn allow(permissions: Option<String>, reason: &'static str) -> Step {
    Step::Allow(Allow {
        permissions,
        reason,
        cache: CacheUse::None,
        would_deny: None,
        memo_until_ms: None,
        matched: None,
    })
}

pub(crate) fn reply(status: u16, body: &str, why: &str) -> Step {
    Step::Reply(Reply {
        status,
        headers: Vec::new(),
        body: body.into(),
        reason: why.to_string(),
        cache: CacheUse::None,
        matched: None,
        grpc_status: None,
    })
}

pub(crate) fn unauthorized(cfg: &EnforcerConfig, error: Option<&str>) -> Step {
    let mut value = format!("Bearer realm=\"{}\"", cfg.realm);
    if let Some(desc) = error {
        value.push_str(&format!(
            ", error=\"invalid_token\", error_description=\"{desc}\""
        ));
    }
    Step::Reply(Reply {
        status: 401,
        headers: vec![("www-authenticate".into(), value)],
        body: "Unauthorized".into(),
        reason: error.unwrap_or("no token").to_string(),
        cache: CacheUse::None,
        matched: None,
        grpc_status: None,
    })
}

/// A token whose sender constraint failed: 401 with the DPoP or Bearer challenge RFC 9449 and
/// RFC 6750 give.
pub(crate) fn binding_refused(cfg: &EnforcerConfig, r: &crate::enforce::binding::Refusal) -> Step {
    Step::Reply(Reply {
        status: 401,
        headers: vec![(
            "www-authenticate".into(),
            crate::enforce::binding::challenge(r, &cfg.realm),
        )],
        body: "Unauthorized".into(),
        reason: r.reason.to_string(),
        cache: CacheUse::None,
        matched: None,
        grpc_status: None,
    })
}

/// The same reply with another reason for the log line.
pub(crate) fn with_reason(step: Step, why: &str) -> Step {
    match step {
        Step::Reply(r) => Step::Reply(Reply {
            reason: why.to_string(),
            ..r
        }),
        other => other,
    }
}

pub(crate) fn forbidden(why: &str) -> Step {
    reply(403, "Forbidden", why)
}

pub(crate) fn redirect(to: &str, why: &str) -> Step {
    Step::Reply(Reply {
        status: 302,
        headers: vec![("location".into(), to.to_string())],
        body: String::new(),
        reason: why.to_string(),
        cache: CacheUse::None,
        matched: None,
        grpc_status: None,
    })
}

/// Keycloak's `handleAccessDenied`: 302 to on-deny-redirect-to, else 403.
pub(crate) fn access_denied(cfg: &EnforcerConfig, why: &str) -> Step {
    match &cfg.on_deny_redirect_to {
        Some(to) => redirect(to, why),
        None => forbidden(why),
    }
}

pub(crate) fn keycloak_unavailable(cfg: &EnforcerConfig, why: &str) -> Step {
    match cfg.proxy.on_keycloak_error {
        OnKeycloakError::Allow => allow(None, "Keycloak unavailable, on-keycloak-error allow"),
        OnKeycloakError::Deny => unavailable(why),
    }
}

/// Dry-run: every answer but "go on" becomes "go on", carrying what it would have been.
pub(crate) fn dry_run(cfg: &EnforcerConfig, step: Step) -> Step {
    match step {
        Step::Reply(r) if cfg.proxy.dry_run => Step::Allow(Allow {
            permissions: None,
            reason: "dry-run",
            cache: r.cache,
            would_deny: Some(Box::new(r)),
            memo_until_ms: None,
            matched: None,
        }),
        other => other,
    }
}
