//! The tables every worker shares, over the host's shared data ([`Cas`]): the decision table's
//! slots, fetch leases, counters and the ring of ended sessions. The rules of each table live in
//! its own module (`decisions`, `documents`, `logouts`); this one says how they sit in a
//! key-value store whose compare-and-swap is exact only for keys that exist (Envoy's).

use crate::config::EnforcerConfig;
use crate::store::decisions::{self, Key, State};
use crate::store::documents;
use crate::store::front::FrontCache;
use crate::store::logouts::{self, Ended, Logouts};
use crate::store::replay::Cas;
use crate::store::DecisionStore;

/// One enforcer's decision table in shared data, read through this worker's [`FrontCache`].
pub struct SharedStore<'a, C: Cas> {
    cfg: &'a EnforcerConfig,
    front: &'a mut FrontCache,
    cas: C,
    now_ms: i64,
    /// Every decision table of the configuration: the "entries in use" gauge is their sum.
    tables: &'a [String],
    /// The CAS seen by the last `get`, for the claim that may follow, and whether the slot held
    /// no decision yet (the "slots in use" gauge counts such a slot when it is claimed).
    seen: Option<(Key, Option<u32>, bool)>,
    /// The gauge's new value, when a claim took a slot into use.
    pub entries_in_use: Option<u64>,
}

impl<'a, C: Cas> SharedStore<'a, C> {
    pub fn new(
        cfg: &'a EnforcerConfig,
        front: &'a mut FrontCache,
        tables: &'a [String],
        cas: C,
        now_ms: i64,
    ) -> Self {
        SharedStore {
            cfg,
            front,
            cas,
            now_ms,
            tables,
            seen: None,
            entries_in_use: None,
        }
    }

    fn remember(&mut self, key: &Key, entry: &State) {
        if let State::Decided { expires_ms, .. } = entry {
            self.front.put(key, entry, *expires_ms, self.now_ms);
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

impl<C: Cas> DecisionStore for SharedStore<'_, C> {
    fn get(&mut self, key: &Key) -> Option<State> {
        if let Some(entry) = self.front.get(key, self.now_ms) {
            return Some(entry);
        }
        let (value, cas) = self.cas.read(&self.slot(key));
        let unused = value.as_ref().is_none_or(Vec::is_empty);
        self.seen = Some((*key, cas, unused));
        let entry = value.and_then(|v| decisions::decode(key, &v));
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
        let value = decisions::encode(key, &State::Pending { until_ms });
        if !self.cas.write(&slot, &value, cas) {
            return false;
        }
        // The slots exist from configure ([`reserve_slots`]), so the CAS is exact; a slot that
        // does not (another build's table) accepts any CAS: the writer whose value stayed wins.
        let won = cas.is_some() || self.cas.read(&slot).0.is_some_and(|v| v == value);
        let used = decisions::slots_used_key(&self.cfg.shared_table);
        if won && unused && increment(&mut self.cas, &used).is_some() {
            let cas = &mut self.cas;
            let total = self
                .tables
                .iter()
                .map(|t| counter(&mut *cas, &decisions::slots_used_key(t)))
                .sum();
            self.entries_in_use = Some(total);
        }
        won
    }

    fn put(&mut self, key: &Key, entry: State) {
        self.remember(key, &entry);
        let slot = self.slot(key);
        self.cas.write(&slot, &decisions::encode(key, &entry), None);
    }

    fn get_path(&mut self, path: &str, now_ms: i64) -> Option<Vec<u8>> {
        let value = self.cas.read(&self.path_slot(path)).0?;
        decisions::decode_path(path, &value, now_ms).map(<[u8]>::to_vec)
    }

    fn put_path(&mut self, path: &str, answer: &[u8], expires_ms: i64) {
        let slot = self.path_slot(path);
        let value = decisions::encode_path(path, expires_ms, answer);
        self.cas.write(&slot, &value, None);
    }
}

/// The decision tables of these enforcers, each named once (the gauge sums them).
pub fn decision_tables<'c>(configs: impl Iterator<Item = &'c EnforcerConfig>) -> Vec<String> {
    let mut tables: Vec<String> = configs.map(|c| c.shared_table.clone()).collect();
    tables.sort();
    tables.dedup();
    tables
}

/// Makes the slots of a fixed shared table that do not exist yet, empty (each worker at
/// configure; the first one makes them, the others find them). Two reasons: Envoy's CAS is exact
/// only for keys that exist, and the host's memory for the table's keys is taken at start, not as
/// the table fills under load (the soak's RSS criterion measures growth after the first minute).
pub fn reserve_slots(mut cas: impl Cas, keys: impl Iterator<Item = String>) {
    for key in keys {
        if let (None, None) = cas.read(&key) {
            cas.write(&key, b"", None);
        }
    }
}

/// A counter [`increment`] keeps (0 when absent).
pub fn counter(mut cas: impl Cas, key: &str) -> u64 {
    counter_value(cas.read(key).0)
}

fn counter_value(value: Option<Vec<u8>>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Adds one to a little-endian u64 counter (CAS, a few tries); the new value.
pub fn increment(mut cas: impl Cas, key: &str) -> Option<u64> {
    for _ in 0..4 {
        let (current, version) = cas.read(key);
        let n = counter_value(current) + 1;
        if cas.write(key, &n.to_le_bytes(), version) {
            return Some(n);
        }
    }
    None
}

/// Takes the fetch lease for `owner` (CAS). An absent key accepts any CAS in Envoy, so the value is
/// read back: of two workers racing on a new key, the one whose value stayed wins.
pub fn take_lease(mut cas: impl Cas, key: &str, owner: u64, now_ms: i64) -> bool {
    let (current, version) = cas.read(key);
    if !documents::lease_takeable(current.as_deref(), owner, now_ms) {
        return false;
    }
    let value = documents::encode_lease(owner, now_ms + documents::LEASE_MS);
    if !cas.write(key, &value, version) {
        return false;
    }
    cas.read(key).0.is_some_and(|v| v == value)
}

/// Gives the lease back, if `owner` still holds it.
pub fn release_lease(mut cas: impl Cas, key: &str, owner: u64) {
    if let (Some(v), version) = cas.read(key) {
        if documents::decode_lease(&v).is_some_and(|(o, _)| o == owner) {
            cas.write(key, &documents::encode_lease(owner, 0), version);
        }
    }
}

/// Writes an ended session to the shared ring of logouts; every worker reads it on its next tick.
pub fn publish_logout(mut cas: impl Cas, ended: &Ended, at_ms: i64, until_ms: i64) {
    if let Some(seq) = increment(&mut cas, logouts::SEQ_KEY) {
        let value = logouts::encode(seq, ended, at_ms, until_ms);
        cas.write(&logouts::slot_key(seq), &value, None);
    }
}

/// Takes the ring's records this worker has not seen into its [`Logouts`]; stops at a record not
/// written yet (its sequence number taken, its slot not), to read it next time.
pub fn read_logouts(mut cas: impl Cas, logouts: &mut Logouts, now_ms: i64) {
    let seq = match cas.read(logouts::SEQ_KEY).0 {
        Some(v) => <[u8; 8]>::try_from(v.as_slice()).map_or(0, u64::from_le_bytes),
        None => return,
    };
    let from = logouts.seen_seq.max(seq.saturating_sub(logouts::RING)) + 1;
    for n in from..=seq {
        let record = cas
            .read(&logouts::slot_key(n))
            .0
            .and_then(|v| logouts::decode(&v));
        match record {
            Some((s, ended, at_ms, until_ms)) if s == n => {
                logouts.note(ended, at_ms, until_ms, now_ms);
                logouts.seen_seq = n;
            }
            _ => return,
        }
    }
}
