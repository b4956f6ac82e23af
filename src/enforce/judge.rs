//! One request being judged: what every stage of the flow reads and may change, and the helpers
//! every stage shares.

use crate::config::{EnforcerConfig, MethodConfig};
use crate::enforce::step::{Matched, RequestFacts, Step};
use crate::keycloak::knowledge::Knowledge;
use crate::keycloak::resources::Entry;
use crate::store::DecisionStore;

/// One request being judged: what every step of the flow reads (the enforcer's configuration,
/// the request, the time) and may change (what the enforcer knows, the decision store).
pub struct Judge<'a, 'r> {
    pub cfg: &'a EnforcerConfig,
    pub known: &'a mut Knowledge,
    pub req: &'a RequestFacts<'r>,
    pub store: &'a mut dyn DecisionStore,
    pub now_ms: i64,
}

impl<'a, 'r> Judge<'a, 'r> {
    pub fn new(
        cfg: &'a EnforcerConfig,
        known: &'a mut Knowledge,
        req: &'a RequestFacts<'r>,
        store: &'a mut dyn DecisionStore,
        now_ms: i64,
    ) -> Self {
        Judge {
            cfg,
            known,
            req,
            store,
            now_ms,
        }
    }
}

/// The request path relative to the configured prefix (Keycloak's context path).
pub fn relative_path(cfg: &EnforcerConfig, raw: &str) -> Option<String> {
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

/// Names the matched path, its resource and the method's scopes in a step (for the denial line
/// and the decision record), where a stage closer to the answer has not.
pub fn tag(step: Step, entry: &Entry, method: &MethodConfig) -> Step {
    let matched = || Matched {
        path: entry.config.path.clone(),
        resource: entry
            .resource
            .name
            .clone()
            .or_else(|| entry.resource.id.clone()),
        scopes: method.scopes.clone(),
    };
    match step {
        Step::Reply(mut r) => {
            r.matched.get_or_insert_with(matched);
            Step::Reply(r)
        }
        Step::Allow(mut a) => {
            a.matched.get_or_insert_with(matched);
            Step::Allow(a)
        }
        other => other,
    }
}
