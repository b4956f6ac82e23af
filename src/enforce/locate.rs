//! The path stage: the request path to its entry (a configured path, or the server's resource
//! for it), asking Keycloak's protection API where the configuration says so.

use super::authorize::{authorize, method_config, Authorize};
use super::collect::{claim_chain, resolve_claims};
use super::judge::{tag, Judge};
use crate::config::claims as cip;
use crate::config::{EnforcementMode, EnforcerConfig};
use crate::enforce::replies::{access_denied, allow, keycloak_unavailable};
use crate::enforce::step::{Call, Pending, ResourceSearch, Step};
use crate::keycloak::resources::Entry;
use crate::keycloak::token::Token;
use crate::keycloak::uma::{self, ResourceQuery};
use crate::wire::claims::Claims;
use crate::wire::http::Answer;
use std::rc::Rc;

/// The path's entry: the configured one, or (a template path, and with `lazy-load-paths` or a
/// configured path cache an unmatched or wildcard path) the server's resource for it, from the
/// worker's path cache, the shared path table, or a protection API lookup.
pub fn locate(
    j: &mut Judge,
    raw: &str,
    token: &Token,
    normalized: Option<String>,
    configured: Option<Rc<Entry>>,
    configured_disabled: bool,
    is_deny_page: bool,
) -> Step {
    let (cfg, now_ms) = (j.cfg, j.now_ms);
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
        (true, Some(key)) => match j.known.path_cache.get(key, now_ms) {
            Some(cached) => cached,
            None => {
                if let Some(answer) = j.store.get_path(key, now_ms) {
                    // Another worker asked Keycloak about this path (its final answer: an
                    // instance lookup is shared only once it found the resource or gave up).
                    let done = LazyAnswer {
                        key: key.to_string(),
                        configured,
                        lookup: if template {
                            ResourceSearch::InstanceMatching
                        } else {
                            ResourceSearch::Matching
                        },
                        status: 200,
                        body: &answer,
                        share: false,
                    };
                    return lazy_loaded(j, raw, token, done);
                }
                let lookup = match (&configured, template) {
                    (Some(t), true) => ResourceSearch::Instance {
                        parent: crate::request::pattern::build_uri_from_template(
                            &t.config.path,
                            key,
                            true,
                        )
                        .filter(|p| p != key),
                    },
                    _ => ResourceSearch::Matching,
                };
                match (j.known.pat.as_deref(), &lookup) {
                    (Some(pat), _) => {
                        return lookup_call(cfg, pat, key, key.to_string(), configured, lookup)
                    }
                    // Without a PAT the template's own resource is asked for (by name when it
                    // is not bound: Keycloak answers for this resource server only).
                    (None, ResourceSearch::Instance { .. } | ResourceSearch::InstanceMatching) => {
                        configured
                    }
                    (None, ResourceSearch::Matching) => {
                        return keycloak_unavailable(cfg, "no protection API token")
                    }
                }
            }
        },
        _ => configured,
    };
    with_entry(j, raw, token, entry, is_deny_page)
}

/// The answer to a path lookup this stage asked for.
pub fn looked_up(
    j: &mut Judge,
    raw: &str,
    token: &Token,
    key: String,
    configured: Option<Rc<Entry>>,
    lookup: ResourceSearch,
    answer: Answer,
) -> Step {
    let cfg = j.cfg;
    match answer {
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
    }
}

/// The protection API lookup for `uri`, on behalf of the request path `key`.
fn lookup_call(
    cfg: &EnforcerConfig,
    pat: &str,
    key: &str,
    uri: String,
    configured: Option<Rc<Entry>>,
    lookup: ResourceSearch,
) -> Step {
    let q = ResourceQuery {
        uri: Some(uri),
        matching_uri: matches!(
            lookup,
            ResourceSearch::Matching | ResourceSearch::InstanceMatching
        ),
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
    lookup: ResourceSearch,
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
            ResourceSearch::Instance {
                parent: Some(parent),
            } => Some((parent.clone(), ResourceSearch::Instance { parent: None })),
            ResourceSearch::Instance { parent: None } => {
                Some((key.clone(), ResourceSearch::InstanceMatching))
            }
            ResourceSearch::InstanceMatching | ResourceSearch::Matching => None,
        };
        if let (Some((uri, next)), Some(pat)) = (next, j.known.pat.as_deref()) {
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
            if configured.is_none() && j.known.paths.binds_resource_elsewhere(&r.id) {
                // A resource bound by name to another path is not reachable by its URIs.
                return with_entry(j, raw, token, None, false);
            }
            let uri = r.uris.first().cloned().unwrap_or_else(|| key.clone());
            let mut e = Entry::from_resource(r, &uri, configured.as_deref());
            if let (ResourceSearch::Instance { .. } | ResourceSearch::InstanceMatching, Some(t)) =
                (&lookup, &configured)
            {
                // an instance keeps its template's scopes, not its resource's
                e.config.scopes = t.config.scopes.clone();
            }
            Some(Rc::new(e))
        }
    };
    j.known.path_cache.put(&key, entry.clone(), now_ms);
    with_entry(j, raw, token, entry, false)
}

pub fn with_entry(
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
        return tag(authorize(j, &a, Claims::new()), &a.entry, &a.method);
    }
    // Claims are resolved on every request that reaches the permission check, as in Keycloak;
    // the body is read only when this path's claims use it.
    if req.view.body.is_none() && cip::needs_body(&providers, req.view.is_form()) {
        return Step::ReadBody;
    }
    resolve_claims(j, a, Vec::new())
}
