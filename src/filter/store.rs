//! The decision cache over proxy-wasm shared data: a fixed table of slots, CAS for claims.

use super::host;
use crate::config::EnforcerConfig;
use crate::store::decisions::{self, Entry, Key};
use crate::store::DecisionStore;
use proxy_wasm::hostcalls;
use std::cell::RefCell;
use std::collections::HashMap;

/// This VM's copy of decisions it has seen: a decided entry never changes until it expires, so
/// reading it here saves the shared-data lock and copy on every cache hit.
pub type FrontCache = RefCell<HashMap<Key, (Entry, i64)>>;
const FRONT_MAX: usize = 16 * 1024;

pub struct SharedStore<'a> {
    cfg: &'a EnforcerConfig,
    front: &'a FrontCache,
    /// The CAS seen by the last `get`, for the claim that may follow.
    seen: Option<(Key, Option<u32>)>,
}

impl<'a> SharedStore<'a> {
    pub fn new(cfg: &'a EnforcerConfig, front: &'a FrontCache) -> Self {
        SharedStore {
            cfg,
            front,
            seen: None,
        }
    }

    fn remember(&self, key: &Key, entry: &Entry) {
        if let Entry::Decided { expires_ms, .. } = entry {
            let mut front = self.front.borrow_mut();
            if front.len() >= FRONT_MAX {
                front.clear();
            }
            front.insert(*key, (entry.clone(), *expires_ms));
        }
    }

    fn path_slot(&self, path: &str) -> String {
        decisions::path_slot_key(
            &self.cfg.shared_table,
            path,
            self.cfg.path_cache.max_entries,
        )
    }

    fn slot(&self, key: &Key) -> String {
        decisions::slot_key(
            &self.cfg.shared_table,
            key,
            self.cfg.proxy.decision_cache.max_entries,
        )
    }
}

impl DecisionStore for SharedStore<'_> {
    fn get(&mut self, key: &Key) -> Option<Entry> {
        if let Some((entry, expires_ms)) = self.front.borrow().get(key) {
            if host::now_ms() < *expires_ms {
                return Some(entry.clone());
            }
        }
        let (value, cas) = host::shared_get(&self.slot(key));
        self.seen = Some((*key, cas));
        let entry = value.and_then(|(_, v)| decisions::decode(key, &v));
        if let Some(e) = &entry {
            self.remember(key, e);
        }
        entry
    }

    fn claim(&mut self, key: &Key, until_ms: i64) -> bool {
        let cas = match self.seen {
            Some((k, cas)) if k == *key => cas,
            _ => None,
        };
        let slot = self.slot(key);
        let value = decisions::encode(key, &Entry::Pending { until_ms });
        if hostcalls::set_shared_data(&slot, Some(&value), cas).is_err() {
            return false;
        }
        // A new slot accepts any CAS: of two racing writers, the one whose value stayed wins.
        let won = cas.is_some() || matches!(host::shared_get(&slot).0, Some((_, v)) if v == value);
        if won && cas.is_none() {
            // A slot taken into use for the first time.
            if let Some(n) =
                host::shared_increment(&decisions::slots_used_key(&self.cfg.shared_table))
            {
                super::metrics::set_cache_entries(n);
            }
        }
        won
    }

    fn put(&mut self, key: &Key, entry: Entry) {
        self.remember(key, &entry);
        host::shared_set(&self.slot(key), &decisions::encode(key, &entry));
    }

    fn get_path(&mut self, path: &str, now_ms: i64) -> Option<Vec<u8>> {
        let value = host::shared_get(&self.path_slot(path)).0?.1;
        decisions::decode_path(path, &value, now_ms).map(<[u8]>::to_vec)
    }

    fn put_path(&mut self, path: &str, answer: &[u8], expires_ms: i64) {
        host::shared_set(
            &self.path_slot(path),
            &decisions::encode_path(path, expires_ms, answer),
        );
    }
}
