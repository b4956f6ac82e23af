//! The permission stage: the token's own permissions, the decision table, else Keycloak's UMA
//! grant (or, for user-managed access, a permission ticket), and the answer to that grant.

use super::judge::{relative_path, tag, Judge};
use crate::config::{EnforcementMode, EnforcerConfig, MethodConfig, ScopesMode, SenderConstraint};
use crate::enforce::replies::{allow, denied, forbidden, keycloak_unavailable, unauthorized};
use crate::enforce::step::{Allow, Asked, CacheUse, Call, Claim, Credential, Pending, Reply, Step};
use crate::enforce::{binding, claims};
use crate::keycloak::authzen::{self, AuthzenOutcome, Evaluation, EvaluationsRequest, Semantic};
use crate::keycloak::knowledge::Knowledge;
use crate::keycloak::resources::Entry;
use crate::keycloak::token::Token;
use crate::keycloak::uma::{self, PermissionRequest, ResponseMode, UmaGrant, UmaOutcome};
use crate::request::uri;
use crate::store::decisions;
use crate::store::DecisionStore;
use crate::wire::claims::{digest, Claims};
use crate::wire::http::Answer;
use crate::wire::permission::{permissions_header_value, Permission};
use std::rc::Rc;

/// Why a DPoP-bound token with a valid proof still gets 403 from a decision that needs Keycloak.
pub const DPOP_NOT_EVALUATED: &str =
    "Keycloak does not evaluate permissions for DPoP-bound tokens (UMA grant: Invalid identity)";

/// A token-bearing request on a matched, enforced path.
pub struct Authorize<'a> {
    pub raw: &'a str,
    pub token: &'a Token,
    pub entry: Rc<Entry>,
    pub method: MethodConfig,
}

/// Keycloak's permission check for a request whose claims are known: the token's own
/// permissions, the decision cache, else the UMA grant (with the claims pushed).
pub fn authorize(j: &mut Judge, a: &Authorize, claims: Claims) -> Step {
    let (cfg, req, now_ms) = (j.cfg, j.req, j.now_ms);
    let (raw, token, entry, method) = (a.raw, a.token, &a.entry, &a.method);
    // Another resource server's RPT says nothing about this one's resources, even where a
    // resource has the same name: its permissions count only when it was issued for us.
    let own_rpt = token
        .permissions()
        .filter(|_| token.is_for_audience(&cfg.client_id));
    if let Some(perms) = &own_rpt {
        if is_authorized(entry, method, perms, false, &claims) {
            return Step::Allow(Allow {
                permissions: Some(permissions_header_value(perms)),
                reason: "the token already carries the permission",
                cache: CacheUse::None,
                would_deny: None,
                memo_until_ms: None,
                matched: None,
            });
        }
    }
    if cfg.user_managed_access {
        if method.scopes_enforcement_mode == ScopesMode::Disabled {
            return allow(None, "scopes-enforcement-mode DISABLED");
        }
        return challenge(cfg, j.known, entry, method, Some(&claims));
    }
    // The token's binding held (else the request would not be here): AuthZEN decides where the
    // configuration says so, and for a DPoP-bound token the UMA grant cannot.
    let bound = cfg.proxy.sender_constraint != SenderConstraint::Off && binding::is_bound(token);
    let asked = if cfg.proxy.decision_protocol.authzen_for(bound) {
        match authzen_question(entry, method, token, &claims) {
            Ok(asked) => asked,
            Err(why) => return tag(denied(method, &why), entry, method),
        }
    } else {
        Asked::UmaGrant
    };
    let resource = entry
        .resource
        .id
        .clone()
        .or_else(|| entry.resource.name.clone());
    let uri_form = resource.is_none();
    let permission = PermissionRequest {
        // Unresolved paths ask by URI: Keycloak matches the request path against resource URIs.
        resource: resource
            .or_else(|| relative_path(cfg, req.path).and_then(|p| uri::normalize(&p))),
        scopes: method.scopes.clone(),
    };
    let cc = &cfg.proxy.decision_cache;
    let mut cached = None;
    if cc.enabled() {
        // What is asked (resource or URI), how (scopes and their mode), for whom (token digest),
        // with what (claims digest).
        let what = format!(
            "{}{}|{}|{}",
            if asked == Asked::UmaGrant {
                ""
            } else {
                "authzen|"
            },
            u8::from(uri_form),
            method.scopes_enforcement_mode.as_str(),
            permission.resource.as_deref().unwrap_or("")
        );
        let claims_digest = (!claims.is_empty()).then(|| digest(&claims));
        let key = decisions::key(
            &cfg.client_id,
            cfg.rules_digest,
            &token.digest,
            &what,
            &method.scopes,
            claims_digest.as_ref(),
        );
        let found = j.store.get(&key);
        match decisions::lookup(found.as_ref(), now_ms) {
            decisions::Lookup::Hit(decisions::Verdict::Allow(header)) => {
                let expires = match &found {
                    Some(decisions::State::Decided { expires_ms, .. }) => Some(*expires_ms),
                    _ => None,
                };
                return Step::Allow(Allow {
                    permissions: Some(header),
                    reason: "cached decision",
                    cache: CacheUse::Hit,
                    would_deny: None,
                    memo_until_ms: expires.filter(|_| claims.is_empty()),
                    matched: None,
                });
            }
            decisions::Lookup::Hit(decisions::Verdict::Deny) => {
                return match denied(method, "denied by Keycloak policies (cached)") {
                    Step::Reply(r) => Step::Reply(Reply {
                        cache: CacheUse::Hit,
                        ..r
                    }),
                    other => other,
                };
            }
            decisions::Lookup::Wait => {
                let until_ms = match found {
                    Some(decisions::State::Pending { until_ms }) => until_ms,
                    _ => now_ms,
                };
                return Step::Wait { key, until_ms };
            }
            decisions::Lookup::Miss => {
                let stale = match found {
                    Some(decisions::State::Decided {
                        verdict: decisions::Verdict::Allow(h),
                        expires_ms,
                    }) => Some((h, expires_ms)),
                    _ => None,
                };
                let until_ms = now_ms + cc.coalesce_wait_ms;
                if !j.store.claim(&key, until_ms) {
                    return Step::Wait { key, until_ms };
                }
                cached = Some(Claim {
                    key,
                    token_exp: token.exp,
                    stale,
                });
            }
        }
    }
    let request = match &asked {
        Asked::Authzen => {
            // The subject is the verified token's own `sub`, never anything the client sent
            // beside it.
            let Some(pat) = j.known.pat.as_deref() else {
                release(j.store, cached.as_ref());
                return keycloak_unavailable(cfg, "no protection API token yet for AuthZEN");
            };
            let question = EvaluationsRequest {
                user_id: token.subject().unwrap_or_default(),
                evaluations: method
                    .scopes
                    .iter()
                    .map(|scope| Evaluation {
                        resource_type: entry.resource.kind.clone().unwrap_or_default(),
                        resource_name: entry.resource.name.clone().unwrap_or_default(),
                        action: scope.clone(),
                    })
                    .collect(),
                semantic: semantic(method),
                context: Some(&claims),
            };
            authzen::evaluations_request(cfg, pat, &question)
        }
        Asked::UmaGrant => {
            let grant = UmaGrant {
                subject_token: raw,
                permissions: vec![permission],
                response_mode: ResponseMode::Permissions,
                uri_form,
                claims: Some(&claims),
                // Keycloak merges the RPT's permissions into its answer: only ever our own.
                rpt: own_rpt.is_some().then_some(raw),
            };
            uma::uma_grant_request(cfg, &grant)
        }
    };
    Step::Call(Box::new(Call {
        request,
        service: None,
        pending: Pending::Grant {
            entry: Rc::clone(entry),
            method: method.clone(),
            cached,
            claims,
            asked,
        },
    }))
}

/// Why a token without `sub` gets no AuthZEN decision.
const NO_SUBJECT: &str = "AuthZEN names the user by the token's sub, and this token has none";

/// What AuthZEN is asked for this path and method: one evaluation per scope, under the semantic
/// of the method's scope mode. AuthZEN names a resource by name (and type) and an action by scope:
/// a path with neither gets no question.
fn authzen_question(
    entry: &Entry,
    method: &MethodConfig,
    token: &Token,
    claims: &Claims,
) -> Result<Asked, String> {
    if token.subject().is_none_or(str::is_empty) {
        return Err(NO_SUBJECT.into());
    }
    if entry.resource.name.is_none() {
        return Err(
            "AuthZEN asks by resource name: no Keycloak resource is known for this path".into(),
        );
    }
    if method.scopes.is_empty() {
        return Err("AuthZEN asks for a scope: this path and method name none".into());
    }
    // Keycloak's AuthZEN keeps one value per context entry: a claim with none or several would
    // reach the policies otherwise than the UMA grant pushes it (docs/configuration.md).
    if let Some((name, values)) = claims.iter().find(|(_, v)| v.len() != 1) {
        return Err(format!(
            "claim {name:?} has {} values: AuthZEN passes exactly one value per claim",
            values.len()
        ));
    }
    Ok(Asked::Authzen)
}

/// How Keycloak goes through the method's scopes: stopping at the first deny for ALL, at the
/// first permit for ANY.
fn semantic(method: &MethodConfig) -> Semantic {
    match method.scopes_enforcement_mode {
        ScopesMode::All => Semantic::DenyOnFirstDeny,
        ScopesMode::Any => Semantic::PermitOnFirstPermit,
        ScopesMode::Disabled => Semantic::ExecuteAll,
    }
}

/// AuthZEN's decisions as the UMA grant's outcome: the permitted scopes of this path's resource
/// as its one permission, so one rule (`is_authorized`) judges both.
fn from_authzen(entry: &Entry, scopes: &[String], outcome: AuthzenOutcome) -> UmaOutcome {
    match outcome {
        AuthzenOutcome::Decided(d) => {
            let permitted: Vec<String> = scopes
                .iter()
                .zip(&d.0)
                .filter(|(_, d)| **d == authzen::Decision::Permit)
                .map(|(s, _)| s.clone())
                .collect();
            if permitted.is_empty() {
                return UmaOutcome::Denied;
            }
            UmaOutcome::Granted(Some(vec![Permission {
                rsid: entry.resource.id.clone(),
                rsname: entry.resource.name.clone(),
                scopes: permitted,
                claims: None,
            }]))
        }
        AuthzenOutcome::Refused(e) => UmaOutcome::Refused(e),
        AuthzenOutcome::Unavailable(why) => UmaOutcome::Unavailable(why),
    }
}

/// Keycloak's answer to the UMA grant this stage asked for: the verdict, stored for the next
/// requests with the same question.
pub fn granted(
    j: &mut Judge,
    entry: Rc<Entry>,
    method: MethodConfig,
    cached: Option<Claim>,
    claims: Claims,
    asked: Asked,
    answer: Answer,
) -> Step {
    let (cfg, now_ms) = (j.cfg, j.now_ms);
    let outcome = match (answer, &asked) {
        (Answer::Http { status, body }, Asked::UmaGrant) => {
            uma::parse_uma_response(status, body, ResponseMode::Permissions)
        }
        (Answer::Http { status, body }, Asked::Authzen) => {
            if status == 401 {
                // our own token refused: the next fetch round gets a new PAT (this request is
                // answered as Keycloak unavailable, below)
                j.known.pat_refused = true;
            }
            let scopes = &method.scopes;
            let parsed = authzen::parse_evaluations(status, body, scopes.len(), semantic(&method));
            from_authzen(&entry, scopes, parsed)
        }
        (Answer::NoAnswer, Asked::UmaGrant) => {
            UmaOutcome::Unavailable("no answer from the token endpoint".into())
        }
        (Answer::NoAnswer, Asked::Authzen) => {
            UmaOutcome::Unavailable("no answer from the AuthZEN endpoint".into())
        }
    };
    // Stores the verdict; returns until when it holds.
    let remember = |store: &mut dyn DecisionStore, verdict: decisions::Verdict| {
        let c = cached.as_ref()?;
        let expires_ms =
            decisions::expiry(&verdict, now_ms, c.token_exp, &cfg.proxy.decision_cache);
        store.put(
            &c.key,
            decisions::State::Decided {
                verdict,
                expires_ms,
            },
        );
        Some(expires_ms)
    };
    let stored = if cached.is_some() {
        CacheUse::Stored
    } else {
        CacheUse::None
    };
    let step = match outcome {
        UmaOutcome::Granted(perms) => {
            let perms = perms.unwrap_or_default();
            if is_authorized(&entry, &method, &perms, true, &claims) {
                let header = permissions_header_value(&perms);
                let until = remember(j.store, decisions::Verdict::Allow(header.clone()));
                Step::Allow(Allow {
                    permissions: Some(header),
                    reason: "granted by Keycloak",
                    cache: stored,
                    would_deny: None,
                    memo_until_ms: until.filter(|_| claims.is_empty()),
                    matched: None,
                })
            } else {
                remember(j.store, decisions::Verdict::Deny);
                denied(&method, "Keycloak granted less than required")
            }
        }
        UmaOutcome::Denied => {
            remember(j.store, decisions::Verdict::Deny);
            denied(&method, "denied by Keycloak policies")
        }
        UmaOutcome::Refused(e) => {
            remember(j.store, decisions::Verdict::Deny);
            denied(
                &method,
                &format!("Keycloak refused the request: {}", e.error),
            )
        }
        UmaOutcome::InvalidSubject => {
            release(j.store, cached.as_ref());
            let dpop_bound = matches!(&j.req.credential,
                Credential::Valid(_, token) if binding::bindings(token).0.is_some());
            if dpop_bound {
                // Keycloak (26.7) evaluates no permission for a DPoP-bound access token,
                // whoever asks and with whatever proof (docs/configuration.md): the token
                // and its proof are good, so this is no 401, and nothing is granted.
                forbidden(DPOP_NOT_EVALUATED)
            } else {
                unauthorized(cfg, Some("token refused by Keycloak"))
            }
        }
        UmaOutcome::Unavailable(why) => {
            if let Some(Claim {
                key,
                stale: Some((header, expires_ms)),
                ..
            }) = &cached
            {
                if decisions::stale_usable(*expires_ms, now_ms, &cfg.proxy.decision_cache) {
                    // Put the expired ALLOW back so the next request can be served stale too.
                    j.store.put(
                        key,
                        decisions::State::Decided {
                            verdict: decisions::Verdict::Allow(header.clone()),
                            expires_ms: *expires_ms,
                        },
                    );
                    return Step::Allow(Allow {
                        permissions: Some(header.clone()),
                        reason: "stale decision, Keycloak unavailable",
                        cache: CacheUse::Stale,
                        would_deny: None,
                        memo_until_ms: None,
                        matched: None,
                    });
                }
            }
            release(j.store, cached.as_ref());
            keycloak_unavailable(cfg, &why)
        }
    };
    tag(step, &entry, &method)
}

/// Keycloak's method selection: the first configured method equal to the request's, else one
/// synthesized from the path's scopes (or the method name with http-method-as-scope), mode ANY.
pub fn method_config(cfg: &EnforcerConfig, entry: &Entry, method: &str) -> MethodConfig {
    if let Some(m) = entry.config.methods.iter().find(|m| m.method == method) {
        return m.clone();
    }
    let scopes = if cfg.http_method_as_scope {
        vec![method.to_string()]
    } else {
        entry.config.scopes.clone()
    };
    MethodConfig {
        method: method.to_string(),
        scopes,
        scopes_enforcement_mode: ScopesMode::Any,
    }
}

/// Keycloak's `isAuthorized` over a list of permissions. `from_server`: the permissions are
/// Keycloak's answer to our single-resource request, so an unresolved path accepts its resource
/// (by name when it was asked by name). A token's own permissions need the path bound to a
/// resource id: Keycloak compares ids, and a name is not unique across resource servers.
pub fn is_authorized(
    entry: &Entry,
    m: &MethodConfig,
    perms: &[Permission],
    from_server: bool,
    claims: &Claims,
) -> bool {
    let mut has_permission = false;
    for p in perms {
        match p.rsid.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(rsid) => {
                let same = match (&entry.resource.id, &entry.resource.name) {
                    (Some(id), _) => id == rsid,
                    (None, Some(name)) => from_server && p.rsname.as_deref() == Some(name.as_str()),
                    (None, None) => from_server,
                };
                if same {
                    has_permission = true;
                    if scope_ok(m, p) {
                        return claims::permission_claims_hold(p.claims.as_ref(), claims);
                    }
                }
            }
            None => {
                if scope_ok(m, p) {
                    return true;
                }
            }
        }
    }
    !has_permission && entry.config.enforcement_mode == EnforcementMode::Permissive
}

fn scope_ok(m: &MethodConfig, p: &Permission) -> bool {
    let allowed = &p.scopes;
    let required = &m.scopes;
    if allowed.is_empty() {
        return true;
    }
    match m.scopes_enforcement_mode {
        ScopesMode::All => required.iter().all(|s| allowed.contains(s)),
        ScopesMode::Any if required.iter().any(|s| allowed.contains(s)) => true,
        _ => required.is_empty(),
    }
}

/// The UMA challenge: a permission ticket, then 401 `WWW-Authenticate: UMA ...`.
pub fn challenge(
    cfg: &EnforcerConfig,
    known: &Knowledge,
    entry: &Entry,
    m: &MethodConfig,
    claims: Option<&Claims>,
) -> Step {
    let (Some(pat), Some(id)) = (known.pat.as_deref(), entry.resource.id.as_deref()) else {
        return forbidden("no permission ticket (resource unresolved or no PAT)");
    };
    Step::Call(Box::new(Call {
        request: uma::permission_ticket_request(cfg, pat, id, &m.scopes, claims),
        service: None,
        pending: Pending::Ticket,
    }))
}

/// Gives up a claim without a decision, so the next request asks Keycloak at once.
fn release(store: &mut dyn DecisionStore, claim: Option<&Claim>) {
    if let Some(c) = claim {
        store.put(&c.key, decisions::State::Pending { until_ms: 0 });
    }
}
