//! This VM's copy of the decisions it has read from the shared table: a decided entry never
//! changes until it expires, so reading it here saves the shared-data lock and copy on every
//! cache hit (the shell's `SharedStore` reads it first).

use crate::store::decisions::{Key, State};
use crate::wire::hashmap::HashMap;

/// This VM's copy of decisions it has seen: a decided entry never changes until it expires, so
/// reading it here saves the shared-data lock and copy on every cache hit. Expired entries are
/// swept whenever the map has doubled since the last sweep, so it holds about the live decisions
/// (at most twice as many), not `FRONT_MAX` dead ones: a VM's memory never shrinks.
#[derive(Default)]
pub struct FrontCache {
    map: HashMap<Key, (State, i64)>,
    sweep_at: usize,
}
const FRONT_MAX: usize = 16 * 1024;
const FRONT_SWEEP_FLOOR: usize = 64;

impl FrontCache {
    pub fn get(&self, key: &Key, now_ms: i64) -> Option<State> {
        self.map
            .get(key)
            .filter(|(_, expires_ms)| now_ms < *expires_ms)
            .map(|(e, _)| e.clone())
    }

    pub fn put(&mut self, key: &Key, entry: &State, expires_ms: i64, now_ms: i64) {
        let map = &mut self.map;
        if map.len() >= self.sweep_at.max(FRONT_SWEEP_FLOOR) {
            map.retain(|_, (_, e)| *e > now_ms);
            if map.len() >= FRONT_MAX {
                map.clear();
            }
            self.sweep_at = (map.len() * 2).clamp(FRONT_SWEEP_FLOOR, FRONT_MAX);
        }
        map.insert(*key, (entry.clone(), expires_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_be_bytes());
        k
    }

    fn allow() -> State {
        State::Pending { until_ms: 0 }
    }

    #[test]
    fn an_entry_serves_until_it_expires_and_dead_ones_are_swept_as_the_map_doubles() {
        let mut f = FrontCache::default();
        f.put(&key(1), &allow(), 100, 0);
        assert!(f.get(&key(1), 99).is_some());
        assert!(f.get(&key(1), 100).is_none(), "expired");
        // 64 entries dead by 1,000; the next put past the floor sweeps them
        for n in 0..64 {
            f.put(&key(n), &allow(), 1_000, 0);
        }
        f.put(&key(999), &allow(), 5_000, 2_000);
        assert_eq!(f.map.len(), 1, "only the live entry is kept");
        // live entries are never swept: the map grows to twice what it held
        for n in 0..200 {
            f.put(&key(n), &allow(), 10_000, 3_000);
        }
        assert_eq!(f.map.len(), 201);
    }
}
