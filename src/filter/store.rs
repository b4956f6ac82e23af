//! The decision cache over proxy-wasm shared data: a fixed table of slots, CAS for claims.

use super::host;
use crate::cache::{self, Entry, Key};
use crate::config::EnforcerConfig;
use crate::enforcer::DecisionStore;
use proxy_wasm::hostcalls;

pub struct SharedStore<'a> {
    cfg: &'a EnforcerConfig,
    /// The CAS seen by the last `get`, for the claim that may follow.
    seen: Option<(Key, Option<u32>)>,
}

impl<'a> SharedStore<'a> {
    pub fn new(cfg: &'a EnforcerConfig) -> Self {
        SharedStore { cfg, seen: None }
    }

    fn slot(&self, key: &Key) -> String {
        cache::slot_key(
            &self.cfg.client_id,
            key,
            self.cfg.proxy.decision_cache.max_entries,
        )
    }
}

impl DecisionStore for SharedStore<'_> {
    fn get(&mut self, key: &Key) -> Option<Entry> {
        let (value, cas) = host::shared_get(&self.slot(key));
        self.seen = Some((*key, cas));
        value.and_then(|(_, v)| cache::decode(key, &v))
    }

    fn claim(&mut self, key: &Key, until_ms: i64) -> bool {
        let cas = match self.seen {
            Some((k, cas)) if k == *key => cas,
            _ => None,
        };
        let slot = self.slot(key);
        let value = cache::encode(key, &Entry::Pending { until_ms });
        if hostcalls::set_shared_data(&slot, Some(&value), cas).is_err() {
            return false;
        }
        // A new slot accepts any CAS: of two racing writers, the one whose value stayed wins.
        cas.is_some() || matches!(host::shared_get(&slot).0, Some((_, v)) if v == value)
    }

    fn put(&mut self, key: &Key, entry: Entry) {
        host::shared_set(&self.slot(key), &cache::encode(key, &entry));
    }
}
