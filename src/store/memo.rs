//! A per-VM shortcut for repeated requests: "this verified token asked this method and path on
//! this enforcer" -> the allow it got from the decision cache, until that decision expires. A hit
//! skips path normalization, matching, method selection and decision-key hashing; it answers
//! exactly what the decision cache would (same verdict, same expiry). Requests with claims are
//! never memoized (their claims can differ with identical method and path).

use crate::store::lanes::lanes;
use crate::wire::hashmap::HashMap;
use std::rc::Rc;

/// Bounded: when full, the whole memo is dropped (it refills from the decision cache). Expired
/// entries are swept whenever the memo has doubled since the last sweep, so it holds about the
/// live allows, not `capacity` dead ones (a wasm VM's memory never shrinks).
pub struct Memo<V> {
    map: HashMap<u128, (Rc<V>, i64)>,
    capacity: usize,
    sweep_at: usize,
}

/// Below this size the memo is never swept before it is full.
const SWEEP_FLOOR: usize = 64;

/// The memo key: keyed SipHash over the token's lookup id (itself a keyed hash of the raw
/// token), the enforcer, the method and the raw `:path`.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn key(enforcer: usize, token_id: u128, method: &str, path: &str) -> u128 {
    let [a, b] = lanes::<2>(&(enforcer, token_id, method, path));
    (u128::from(a) << 64) | u128::from(b)
}

impl<V> Memo<V> {
    pub fn new(capacity: usize) -> Self {
        Memo {
            map: HashMap::new(),
            capacity,
            sweep_at: SWEEP_FLOOR.min(capacity),
        }
    }

    /// A memoized allow that is still valid.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn get(&self, key: u128, now_ms: i64) -> Option<&Rc<V>> {
        match self.map.get(&key) {
            Some((remembered, until)) if now_ms < *until => Some(remembered),
            _ => None,
        }
    }

    pub fn put(&mut self, key: u128, remembered: V, until_ms: i64, now_ms: i64) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, (_, until)| now_ms < *until);
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
            self.sweep_at = (self.map.len() * 2).max(SWEEP_FLOOR).min(self.capacity);
        }
        self.map.insert(key, (Rc::new(remembered), until_ms));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(header: &str) -> String {
        header.to_string()
    }

    #[test]
    fn hits_until_the_decision_expires() {
        let mut m = Memo::new(8);
        let k = key(0, 42, "GET", "/account/1");
        assert!(m.get(k, 0).is_none());
        m.put(k, r("[perms]"), 1000, 0);
        assert_eq!(m.get(k, 999).map(|h| h.as_str()), Some("[perms]"));
        assert!(m.get(k, 1000).is_none());
    }

    #[test]
    fn every_part_of_the_key_matters() {
        let base = key(0, 42, "GET", "/account/1");
        assert_ne!(base, key(1, 42, "GET", "/account/1"));
        assert_ne!(base, key(0, 43, "GET", "/account/1"));
        assert_ne!(base, key(0, 42, "PUT", "/account/1"));
        assert_ne!(base, key(0, 42, "GET", "/account/2"));
        assert_eq!(base, key(0, 42, "GET", "/account/1"));
    }

    #[test]
    fn bounded() {
        let mut m = Memo::new(3);
        for i in 0..10u128 {
            m.put(i, r("h"), 100, 0);
            assert!(m.len() <= 3);
        }
        let mut off = Memo::new(0);
        off.put(1, r("h"), 100, 0);
        assert!(off.is_empty());
    }

    #[test]
    fn expired_allows_are_swept_long_before_the_memo_is_full() {
        // 100 live allows (each 1 s), one new every 10 ms for 100 s: never more than twice them.
        let mut m = Memo::new(8192);
        let mut most = 0;
        for i in 0..10_000i64 {
            let now = i * 10;
            m.put(i as u128, r("h"), now + 1000, now);
            most = most.max(m.len());
        }
        assert!(most <= 2 * 100 + 1, "held {most}");
        assert!(m.len() >= 100, "live allows stay: {}", m.len());
    }
}
