//! Request facts + what is known -> a verdict, as Keycloak's policy enforcer decides
//! (docs/keycloak-enforcer.md §4-5), with the deliberate changes listed in the README:
//! missing/invalid tokens get 401 (RFC 6750), Keycloak unreachable gets 503 (fail closed), server
//! lookups never happen for anonymous requests or DISABLED paths, and every token is verified.
//!
//! A verdict that needs Keycloak is data: [`Step::Call`] carries the exact request and a
//! [`Pending`] continuation that turns Keycloak's answer into the next step.

pub mod arrival;
pub mod binding;
pub(crate) mod claims;
pub mod enforcer;
pub mod events;
pub mod gate;
pub mod refresh;
pub mod replies;
pub mod step;

use crate::config::claims as cip;
use crate::config::{EnforcementMode, EnforcerConfig, MethodConfig, ScopesMode};
use crate::enforce::replies::{
    access_denied, allow, challenge_with_ticket, denied, dry_run, forbidden, keycloak_unavailable,
    redirect, reply, unauthorized, unavailable, with_reason,
};
use crate::enforce::step::{
    Allow, CacheUse, Call, Claim, Credential, Lookup, Pending, Reply, RequestFacts, Step,
};
use crate::keycloak::knowledge::Knowledge;
use crate::keycloak::resources::{Entry, PathSet};
use crate::keycloak::token::{BearerError, Token};
use crate::keycloak::uma::{
    self, PermissionRequest, ResourceQuery, ResponseMode, UmaGrant, UmaOutcome,
};
use crate::request::placeholders::Context;
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

/// The request path relative to the configured prefix (Keycloak's context path).
fn relative_path(cfg: &EnforcerConfig, raw: &str) -> Option<String> {
    match &cfg.proxy.strip_prefix {
        None => Some(raw.to_string()),
        Some(prefix) => {
            let rest = raw.strip_prefix(prefix.as_str())?;
            if rest.is_empty() || rest.starts_with(['/', '?', ';']) {
                Some(if rest.starts_with('/') {
                    rest.to_string()
                } else {
                    format!("/{rest}")
                })
            } else {
                None
            }
        }
    }
}

/// One request being judged: what every step of the flow reads (the enforcer's configuration,
/// the request, the time) and may change (what the enforcer knows, the decision store).
struct Judge<'a, 'r> {
    cfg: &'a EnforcerConfig,
    rt: &'a mut Knowledge,
    req: &'a RequestFacts<'r>,
    store: &'a mut dyn DecisionStore,
    now_ms: i64,
}

impl<'a, 'r> Judge<'a, 'r> {
    fn new(
        cfg: &'a EnforcerConfig,
        rt: &'a mut Knowledge,
        req: &'a RequestFacts<'r>,
        store: &'a mut dyn DecisionStore,
        now_ms: i64,
    ) -> Self {
        Judge {
            cfg,
            rt,
            req,
            store,
            now_ms,
        }
    }
}

/// The first step for a request.
pub fn decide(
    cfg: &EnforcerConfig,
    rt: &mut Knowledge,
    req: &RequestFacts,
    store: &mut dyn DecisionStore,
    now_ms: i64,
) -> Step {
    dry_run(
        cfg,
        decide_inner(&mut Judge::new(cfg, rt, req, store, now_ms)),
    )
}

fn decide_inner(j: &mut Judge) -> Step {
    let (cfg, req, now_ms) = (j.cfg, j.req, j.now_ms);
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
            .and_then(|n| j.rt.paths.find(n))
            .cloned()
    };
    let configured_disabled = configured
        .as_ref()
        .is_some_and(|e| e.config.enforcement_mode == EnforcementMode::Disabled);

    let (raw, token) = match &req.credential {
        Credential::Valid { raw, token } => (*raw, *token),
        _ if is_deny_page => return allow(None, "the on-deny-redirect-to page"),
        _ if configured_disabled => return allow(None, "path enforcement-mode DISABLED"),
        Credential::Anonymous => {
            if let (true, Some(entry)) = (cfg.user_managed_access, &configured) {
                let m = method_config(cfg, entry, req.method);
                return challenge(cfg, j.rt, entry, &m, None);
            }
            if let Some(to) = &cfg.on_deny_redirect_to {
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

    // Server refinement (lazy-load-paths or a configured path-cache): unmatched or wildcard paths
    // are looked up by URI, once per path while the path cache holds the answer. A template path
    // is resolved to the resource of its instance the same way (Keycloak's `resolvePathConfig`:
    // `/v1/tenants/1` is `tenant:1`, with the template's methods and scopes).
    let template = !configured_disabled
        && configured
            .as_ref()
            .is_some_and(|e| e.config.path.contains('{'));
    let refine = template
        || ((cfg.lazy_load_paths || cfg.path_cache.configured)
            && !configured_disabled
            && configured
                .as_ref()
                .is_none_or(|e| e.config.path.contains('*')));
    let entry = match (refine, normalized.as_deref()) {
        (true, Some(key)) => match j.rt.path_cache.get(key, now_ms) {
            Some(cached) => cached,
            None => {
                if let Some(answer) = j.store.get_path(key, now_ms) {
                    // Another worker asked Keycloak about this path (its final answer: an
                    // instance lookup is shared only once it found the resource or gave up).
                    let done = LazyAnswer {
                        key: key.to_string(),
                        configured,
                        lookup: if template {
                            Lookup::InstanceMatching
                        } else {
                            Lookup::Matching
                        },
                        status: 200,
                        body: &answer,
                        share: false,
                    };
                    return lazy_loaded(j, raw, token, done);
                }
                let lookup = match (&configured, template) {
                    (Some(t), true) => Lookup::Instance {
                        parent: crate::request::pattern::build_uri_from_template(
                            &t.config.path,
                            key,
                            true,
                        )
                        .filter(|p| p != key),
                    },
                    _ => Lookup::Matching,
                };
                match (j.rt.pat.as_deref(), &lookup) {
                    (Some(pat), _) => {
                        return lookup_call(cfg, pat, key, key.to_string(), configured, lookup)
                    }
                    // Without a PAT the template's own resource is asked for (by name when it
                    // is not bound: Keycloak answers for this resource server only).
                    (None, Lookup::Instance { .. } | Lookup::InstanceMatching) => configured,
                    (None, Lookup::Matching) => {
                        return keycloak_unavailable(cfg, "no protection API token")
                    }
                }
            }
        },
        _ => configured,
    };
    with_entry(j, raw, token, entry, is_deny_page)
}

/// The next step once Keycloak (or a claim provider) answered a [`Call`].
pub fn resume(
    cfg: &EnforcerConfig,
    rt: &mut Knowledge,
    req: &RequestFacts,
    store: &mut dyn DecisionStore,
    pending: Pending,
    answer: Answer,
    now_ms: i64,
) -> Step {
    let mut j = Judge::new(cfg, rt, req, store, now_ms);
    dry_run(cfg, resume_inner(&mut j, pending, answer))
}

fn resume_inner(j: &mut Judge, pending: Pending, answer: Answer) -> Step {
    let (cfg, req, now_ms) = (j.cfg, j.req, j.now_ms);
    let Credential::Valid { raw, token } = &req.credential else {
        // Only the anonymous UMA challenge asks Keycloak without a token.
        return match pending {
            Pending::Ticket => challenge_with_ticket(cfg, j.rt, answer),
            _ => unauthorized(cfg, None),
        };
    };
    match pending {
        Pending::LazyLoad {
            key,
            configured,
            lookup,
        } => match answer {
            Answer::Http { status, body } => {
                let done = LazyAnswer {
                    key,
                    configured,
                    lookup,
                    status,
                    body,
                    share: true,
                };
                lazy_loaded(j, raw, token, done)
            }
            Answer::NoAnswer => keycloak_unavailable(cfg, "no answer to the resource lookup"),
        },
        Pending::Claims {
            entry,
            method,
            mut done,
        } => {
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
        Pending::Grant {
            entry,
            method,
            cached,
            claims,
        } => {
            let outcome = match answer {
                Answer::Http { status, body } => {
                    uma::parse_uma_response(status, body, ResponseMode::Permissions)
                }
                Answer::NoAnswer => {
                    UmaOutcome::Unavailable("no answer from the token endpoint".into())
                }
            };
            // Stores the verdict; returns until when it holds.
            let remember = |store: &mut dyn DecisionStore, verdict: decisions::Verdict| {
                let c = cached.as_ref()?;
                let expires_ms =
                    decisions::expiry(&verdict, now_ms, c.token_exp, &cfg.proxy.decision_cache);
                store.put(
                    &c.key,
                    decisions::Entry::Decided {
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
                        Credential::Valid { token, .. } if binding::bindings(token).0.is_some());
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
                                decisions::Entry::Decided {
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
                            });
                        }
                    }
                    release(j.store, cached.as_ref());
                    keycloak_unavailable(cfg, &why)
                }
            };
            tag(step, &entry)
        }
        Pending::Ticket => challenge_with_ticket(cfg, j.rt, answer),
    }
}

/// The protection API lookup for `uri`, on behalf of the request path `key`.
fn lookup_call(
    cfg: &EnforcerConfig,
    pat: &str,
    key: &str,
    uri: String,
    configured: Option<Rc<Entry>>,
    lookup: Lookup,
) -> Step {
    let q = ResourceQuery {
        uri: Some(uri),
        matching_uri: matches!(lookup, Lookup::Matching | Lookup::InstanceMatching),
        ..Default::default()
    };
    Step::Call(Box::new(Call {
        request: uma::resource_query_request(cfg, pat, &q),
        service: None,
        pending: Pending::LazyLoad {
            key: key.to_string(),
            configured,
            lookup,
        },
    }))
}

/// Keycloak's answer to a path lookup, and what it was for.
struct LazyAnswer<'a> {
    /// The (normalized) request path the answer is cached under.
    key: String,
    configured: Option<Rc<Entry>>,
    lookup: Lookup,
    status: u16,
    body: &'a [u8],
    /// It came from Keycloak (not from another worker): share it.
    share: bool,
}

/// Keycloak's answer to a path lookup: cache it (per worker, and for the other workers when it
/// came from Keycloak) and go on with the path it names.
fn lazy_loaded(j: &mut Judge, raw: &str, token: &Token, a: LazyAnswer) -> Step {
    let (cfg, now_ms) = (j.cfg, j.now_ms);
    let LazyAnswer {
        key,
        configured,
        lookup,
        status,
        body,
        share,
    } = a;
    let resources = match uma::parse_resources(status, body) {
        Ok(r) => r,
        Err(e) => return keycloak_unavailable(cfg, &e.to_string()),
    };
    if resources.is_empty() {
        // No resource for the instance itself: its parent's (`/resource/1` for `/resource/1/test`
        // under `/resource/{id}/*`) grants its sub-resources; else the server's match.
        let next = match &lookup {
            Lookup::Instance {
                parent: Some(parent),
            } => Some((parent.clone(), Lookup::Instance { parent: None })),
            Lookup::Instance { parent: None } => Some((key.clone(), Lookup::InstanceMatching)),
            Lookup::InstanceMatching | Lookup::Matching => None,
        };
        if let (Some((uri, next)), Some(pat)) = (next, j.rt.pat.as_deref()) {
            return lookup_call(cfg, pat, &key, uri, configured, next);
        }
        // nothing found (or no PAT any more): the template's own resource, as below
    }
    if share && cfg.path_cache.enabled() && cfg.path_cache.max_entries > 0 {
        let expires = match cfg.path_cache.lifespan_ms {
            -1 => i64::MAX,
            l => now_ms.saturating_add(l),
        };
        j.store.put_path(&key, body, expires);
    }
    let entry = match resources.first() {
        None => configured,
        Some(r) => {
            if configured.is_none() && j.rt.paths.binds_resource_elsewhere(&r.id) {
                // A resource bound by name to another path is not reachable by its URIs.
                return with_entry(j, raw, token, None, false);
            }
            let uri = r.uris.first().cloned().unwrap_or_else(|| key.clone());
            let mut e = Entry::from_resource(r, &uri, configured.as_deref());
            if let (Lookup::Instance { .. } | Lookup::InstanceMatching, Some(t)) =
                (&lookup, &configured)
            {
                // an instance keeps its template's scopes, not its resource's
                e.config.scopes = t.config.scopes.clone();
            }
            Some(Rc::new(e))
        }
    };
    j.rt.path_cache.put(&key, entry.clone(), now_ms);
    with_entry(j, raw, token, entry, false)
}

fn with_entry(
    j: &mut Judge,
    raw: &str,
    token: &Token,
    entry: Option<Rc<Entry>>,
    is_deny_page: bool,
) -> Step {
    let (cfg, req) = (j.cfg, j.req);
    let Some(entry) = entry else {
        if cfg.enforcement_mode == EnforcementMode::Permissive {
            return allow(None, "no path matched, enforcement-mode PERMISSIVE");
        }
        if is_deny_page {
            return allow(None, "the on-deny-redirect-to page");
        }
        return access_denied(cfg, "no path matched");
    };
    if entry.config.enforcement_mode == EnforcementMode::Disabled {
        return allow(None, "path enforcement-mode DISABLED");
    }
    let method = method_config(cfg, &entry, req.method);
    let a = Authorize {
        raw,
        token,
        entry,
        method,
    };
    let providers = claim_chain(cfg, &a.entry);
    if providers.is_empty() {
        return tag(authorize(j, &a, Claims::new()), &a.entry);
    }
    // Claims are resolved on every request that reaches the permission check, as in Keycloak;
    // the body is read only when this path's claims use it.
    if req.view.body.is_none() && cip::needs_body(&providers, req.view.is_form()) {
        return Step::ReadBody;
    }
    resolve_claims(j, a, Vec::new())
}

/// A token-bearing request on a matched, enforced path.
struct Authorize<'a> {
    raw: &'a str,
    token: &'a Token,
    entry: Rc<Entry>,
    method: MethodConfig,
}

/// The claim providers of a path: the global ones, then the path's.
fn claim_chain<'c>(cfg: &'c EnforcerConfig, entry: &'c Entry) -> Vec<&'c cip::Provider> {
    cip::chain(
        cfg.claim_information_point.as_deref(),
        entry.config.claim_information_point.as_deref(),
    )
}

/// Runs the claim providers from `done.len()` on; a provider that needs its service becomes a call.
fn resolve_claims(j: &mut Judge, a: Authorize, mut done: Vec<Claims>) -> Step {
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
        claims::Next::Done(c) => tag(authorize(j, &a, c), &a.entry),
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
            tag(reply(400, "Bad Request", why), &a.entry)
        }
        claims::Next::Failed(claims::ClaimFailure::Provider(why)) => {
            tag(unavailable(&format!("claim provider: {why}")), &a.entry)
        }
    }
}

/// Keycloak's permission check for a request whose claims are known: the token's own
/// permissions, the decision cache, else the UMA grant (with the claims pushed).
fn authorize(j: &mut Judge, a: &Authorize, claims: Claims) -> Step {
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
            });
        }
    }
    if cfg.user_managed_access {
        if method.scopes_enforcement_mode == ScopesMode::Disabled {
            return allow(None, "scopes-enforcement-mode DISABLED");
        }
        return challenge(cfg, j.rt, entry, method, Some(&claims));
    }
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
            "{}|{}|{}",
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
                    Some(decisions::Entry::Decided { expires_ms, .. }) => Some(*expires_ms),
                    _ => None,
                };
                return Step::Allow(Allow {
                    permissions: Some(header),
                    reason: "cached decision",
                    cache: CacheUse::Hit,
                    would_deny: None,
                    memo_until_ms: expires.filter(|_| claims.is_empty()),
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
                    Some(decisions::Entry::Pending { until_ms }) => until_ms,
                    _ => now_ms,
                };
                return Step::Wait { key, until_ms };
            }
            decisions::Lookup::Miss => {
                let stale = match found {
                    Some(decisions::Entry::Decided {
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
    let grant = UmaGrant {
        subject_token: raw,
        permissions: vec![permission],
        response_mode: ResponseMode::Permissions,
        uri_form,
        claims: Some(&claims),
        // Keycloak merges the RPT's permissions into its answer: only ever our own.
        rpt: own_rpt.is_some().then_some(raw),
    };
    Step::Call(Box::new(Call {
        request: uma::uma_grant_request(cfg, &grant),
        service: None,
        pending: Pending::Grant {
            entry: Rc::clone(entry),
            method: method.clone(),
            cached,
            claims,
        },
    }))
}

/// Names the matched path and resource in a denial (for the log line).
fn tag(step: Step, entry: &Entry) -> Step {
    match step {
        Step::Reply(mut r) => {
            r.path.get_or_insert_with(|| entry.config.path.clone());
            if r.resource.is_none() {
                r.resource = entry
                    .resource
                    .name
                    .clone()
                    .or_else(|| entry.resource.id.clone());
            }
            Step::Reply(r)
        }
        other => other,
    }
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
fn challenge(
    cfg: &EnforcerConfig,
    rt: &Knowledge,
    entry: &Entry,
    m: &MethodConfig,
    claims: Option<&Claims>,
) -> Step {
    let (Some(pat), Some(id)) = (rt.pat.as_deref(), entry.resource.id.as_deref()) else {
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
        store.put(&c.key, decisions::Entry::Pending { until_ms: 0 });
    }
}

#[cfg(test)]
mod tests;
