//! A per-VM shortcut for repeated requests: "this verified token asked this method and path on
//! this enforcer" -> the allow it got from the decision cache, until that decision expires. A hit
//! skips path normalization, matching, method selection and decision-key hashing; it answers
//! exactly what the decision cache would (same verdict, same expiry). Requests with claims are
//! never memoized (their claims can differ with identical method and path).

use crate::store::lanes::lanes;
use std::collections::HashMap;
use std::rc::Rc;

/// Bounded: when full, the whole memo is dropped (it refills from the decision cache).
pub struct Memo {
    map: HashMap<u128, (Rc<str>, i64)>,
    capacity: usize,
}

/// The memo key: keyed SipHash over the token's lookup id (itself a keyed hash of the raw
/// token), the enforcer, the method and the raw `:path`.
pub fn key(enforcer: usize, token_id: u128, method: &str, path: &str) -> u128 {
    let [a, b] = lanes::<2>(&(enforcer, token_id, method, path));
    (u128::from(a) << 64) | u128::from(b)
}

impl Memo {
    pub fn new(capacity: usize) -> Self {
        Memo {
            map: HashMap::new(),
            capacity,
        }
    }

    /// The permissions header of a memoized allow that is still valid.
    pub fn get(&self, key: u128, now_ms: i64) -> Option<&Rc<str>> {
        match self.map.get(&key) {
            Some((header, until)) if now_ms < *until => Some(header),
            _ => None,
        }
    }

    pub fn put(&mut self, key: u128, header: &str, until_ms: i64) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(key, (Rc::from(header), until_ms));
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

    #[test]
    fn hits_until_the_decision_expires() {
        let mut m = Memo::new(8);
        let k = key(0, 42, "GET", "/account/1");
        assert!(m.get(k, 0).is_none());
        m.put(k, "[perms]", 1000);
        assert_eq!(m.get(k, 999).map(|h| &**h), Some("[perms]"));
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
            m.put(i, "h", 100);
            assert!(m.len() <= 3);
        }
        let mut off = Memo::new(0);
        off.put(1, "h", 100);
        assert!(off.is_empty());
    }
}
