//! The decision cache over proxy-wasm shared data: a fixed table of slots, CAS for claims.

use super::host;
use crate::config::EnforcerConfig;
use crate::store::decisions::{self, Entry, Key};
use crate::store::front::FrontCache;
use crate::store::DecisionStore;
use proxy_wasm::hostcalls;
use std::cell::RefCell;

pub struct SharedStore<'a> {
    cfg: &'a EnforcerConfig,
    front: &'a FrontCache,
    /// The CAS seen by the last `get`, for the claim that may follow, and whether the slot held
    /// no decision yet (the "slots in use" gauge counts such a slot when it is claimed).
    seen: Option<(Key, Option<u32>, bool)>,
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
            self.front.put(key, entry, *expires_ms, host::now_ms());
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
        if let Some(entry) = self.front.get(key, host::now_ms()) {
            return Some(entry);
        }
        let (value, cas) = host::shared_get(&self.slot(key));
        let unused = value.as_ref().is_none_or(|(_, v)| v.is_empty());
        self.seen = Some((*key, cas, unused));
        let entry = value.and_then(|(_, v)| decisions::decode(key, &v));
        if let Some(e) = &entry {
            self.remember(key, e);
        }
        entry
    }

    fn claim(&mut self, key: &Key, until_ms: i64) -> bool {
        let (cas, unused) = match self.seen {
            Some((k, cas, unused)) if k == *key => (cas, unused),
            _ => (None, true),
        };
        let slot = self.slot(key);
        let value = decisions::encode(key, &Entry::Pending { until_ms });
        if hostcalls::set_shared_data(&slot, Some(&value), cas).is_err() {
            return false;
        }
        // The slots exist from configure ([`reserve_slots`]), so the CAS is exact; a slot that
        // does not (another build's table) accepts any CAS: the writer whose value stayed wins.
        let won = cas.is_some() || matches!(host::shared_get(&slot).0, Some((_, v)) if v == value);
        let used = decisions::slots_used_key(&self.cfg.shared_table);
        if won && unused && host::shared_increment(&used).is_some() {
            // A slot taken into use for the first time: the gauge is the sum over the tables.
            let total = TABLES.with_borrow(|tables| {
                tables
                    .iter()
                    .map(|t| host::shared_counter(&decisions::slots_used_key(t)))
                    .sum()
            });
            super::metrics::set_cache_entries(total);
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

/// Envoy's shared data as the once-only tables' store (rules and races in `store::replay`).
/// Envoy's CAS is exact only for keys that exist, so the tables' keys are made at configure
/// ([`create_replay_slots`]).
pub struct SharedCas;

/// The once-only tables (DPoP proofs, logout tokens) over Envoy's shared data.
pub fn shared_replay(
    layout: crate::store::replay::Layout,
) -> crate::store::replay::Tables<SharedCas> {
    crate::store::replay::Tables {
        layout,
        store: SharedCas,
    }
}

impl crate::store::replay::Cas for SharedCas {
    fn read(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let (value, cas) = host::shared_get(key);
        (value.map(|(_, v)| v), cas)
    }

    fn write(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), version).is_ok()
    }
}

/// Makes the slots of a fixed shared table that do not exist yet, empty (each VM at configure; the
/// first one makes them, the others find them). Two reasons: Envoy's CAS is exact only for keys
/// that exist, and the host's memory for the table's keys is taken at start, not as the table
/// fills under load (the soak's RSS criterion measures growth after the first minute).
pub fn reserve_slots(keys: impl Iterator<Item = String>) {
    for key in keys {
        if let (None, None) = host::shared_get(&key) {
            host::shared_set(&key, b"");
        }
    }
}

/// The once-only tables' keys ([`reserve_slots`]).
pub fn create_replay_slots(layout: &crate::store::replay::Layout) {
    reserve_slots(layout.slot_keys());
}

thread_local! {
    /// This configuration's decision tables: the "entries in use" gauge is the sum of their
    /// counts (one gauge for all of them, so no table's count hides another's).
    static TABLES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The decision tables' slots of these enforcers ([`reserve_slots`]).
pub fn create_decision_slots<'c>(configs: impl Iterator<Item = &'c EnforcerConfig> + Clone + 'c) {
    let mut tables: Vec<String> = configs.clone().map(|c| c.shared_table.clone()).collect();
    tables.sort();
    tables.dedup();
    TABLES.set(tables);
    reserve_slots(decisions::reserved_slot_keys(configs));
}

/// Writes an ended session to the shared ring of logouts (`store::logouts`); every VM reads it
/// on its next tick.
pub fn publish_logout(ended: &crate::store::logouts::Ended, at_ms: i64, until_ms: i64) {
    use crate::store::logouts;
    if let Some(seq) = host::shared_increment(logouts::SEQ_KEY) {
        host::shared_set(
            &logouts::slot_key(seq),
            &logouts::encode(seq, ended, at_ms, until_ms),
        );
    }
}

/// Takes the ring's records this VM has not seen into its [`Logouts`]; stops at a record not
/// written yet (its sequence number taken, its slot not), to read it next time.
///
/// [`Logouts`]: crate::store::logouts::Logouts
pub fn read_logouts(logouts: &mut crate::store::logouts::Logouts, now_ms: i64) {
    use crate::store::logouts;
    let seq = match host::shared_get(logouts::SEQ_KEY).0 {
        Some((_, v)) => <[u8; 8]>::try_from(v.as_slice()).map_or(0, u64::from_le_bytes),
        None => return,
    };
    let from = logouts.seen_seq.max(seq.saturating_sub(logouts::RING)) + 1;
    for n in from..=seq {
        let record = host::shared_get(&logouts::slot_key(n))
            .0
            .and_then(|(_, v)| logouts::decode(&v));
        match record {
            Some((s, ended, at_ms, until_ms)) if s == n => {
                logouts.note(ended, at_ms, until_ms, now_ms);
                logouts.seen_seq = n;
            }
            _ => return,
        }
    }
}
