//! What an enforcer knows of Keycloak beyond its configuration.

use crate::config::EnforcerConfig;
use crate::keycloak::resources::{PathCache, PathSet};

/// What an enforcer has learnt from Keycloak and keeps between requests: its paths bound to server
/// resources, the paths it looked up, the PAT and the issuer.
#[derive(Debug, Clone)]
pub struct Knowledge {
    pub paths: PathSet,
    pub path_cache: PathCache,
    /// The protection API token, when one is held.
    pub pat: Option<String>,
    /// Keycloak refused that PAT as a caller (AuthZEN's 401): fetch a new one now, once.
    pub pat_refused: bool,
    /// The issuer Keycloak announced (for the UMA challenge's `as_uri`).
    pub issuer: String,
}

impl Knowledge {
    pub fn new(cfg: &EnforcerConfig) -> Self {
        Knowledge {
            paths: PathSet::from_config(cfg),
            path_cache: PathCache::new(cfg.path_cache),
            pat: None,
            pat_refused: false,
            issuer: cfg.proxy.issuer.clone(),
        }
    }
}
