//! One request being judged: what every stage of the flow reads and may change, and the helpers
//! every stage shares.

use crate::config::EnforcerConfig;
use crate::enforce::step::{RequestFacts, Step};
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

/// Names the matched path and resource in a denial (for the log line).
pub fn tag(step: Step, entry: &Entry) -> Step {
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
