//! The tokens an enforcer has verified, remembered until their `exp`.

use crate::keycloak::token::Token;
#[cfg(test)]
use serde_json::Value;

/// Tokens already verified, until their `exp`: a token's signature is checked once, not on every
/// request. Looked up by a 128-bit keyed SipHash of the raw token (two random per-VM keys), which is
/// several times cheaper in wasm than SHA-256 of a 1 KB token and cannot be collided without the
/// keys; the token itself is not kept. Bounded; when full, expired entries go first, then everything.
/// Expired entries are also swept whenever the map has doubled since the last sweep, so it holds
/// about the live tokens (at most twice as many), not `capacity` dead ones: a wasm VM's memory
/// never shrinks, so its high-water mark is what Envoy's RSS shows.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    map: crate::wire::hashmap::HashMap<u128, std::rc::Rc<Token>>,
    capacity: usize,
    /// The size at which expired entries are swept next.
    sweep_at: usize,
    /// The digest of the key set (JWKS document) the tokens were verified under.
    keys_digest: Option<u64>,
    keys: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
}

impl VerifiedTokens {
    pub fn new(capacity: usize) -> Self {
        VerifiedTokens {
            map: crate::wire::hashmap::HashMap::new(),
            capacity,
            sweep_at: SWEEP_FLOOR.min(capacity),
            keys_digest: None,
            keys: Default::default(),
        }
    }

    /// The lookup identity of a raw token.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn id(&self, raw: &str) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.keys.0.hash_one(raw)) << 64) | u128::from(self.keys.1.hash_one(raw))
    }

    /// Shared, not copied: the claims of a verified token are read on every request.
    #[cfg_attr(kcpep_size, optimize(speed))]
    pub fn get(&self, id: u128, now: i64, leeway: i64) -> Option<&std::rc::Rc<Token>> {
        self.map
            .get(&id)
            .filter(|t| now <= t.exp.saturating_add(leeway))
    }

    pub fn insert(&mut self, id: u128, token: std::rc::Rc<Token>, now: i64) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, t| t.exp >= now);
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
            self.sweep_at = (self.map.len() * 2).max(SWEEP_FLOOR).min(self.capacity);
        }
        self.map.insert(id, token);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// The digest [`Self::note_keys`] compares, of a JWKS document as Keycloak sent it.
    pub fn digest(jwks_document: &[u8]) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        jwks_document.hash(&mut h);
        h.finish()
    }

    /// The key set the remembered tokens were verified under.
    pub fn keys_digest(&self) -> Option<u64> {
        self.keys_digest
    }

    /// The realm's key set was (re)loaded: when it is not the one the remembered tokens were
    /// verified under, forget them all (a key may have been withdrawn).
    pub fn note_keys(&mut self, digest: u64) {
        if self.keys_digest != Some(digest) {
            self.map.clear();
            self.keys_digest = Some(digest);
        }
    }
}

/// Below this size the map is never swept before it is full.
const SWEEP_FLOOR: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn tok(exp: i64) -> Rc<Token> {
        Rc::new(Token {
            claims: Value::Null,
            exp,
            digest: [0; 32],
        })
    }

    #[test]
    fn remembers_until_exp_and_stays_bounded() {
        let mut v = VerifiedTokens::new(2);
        let (a, b, c) = (v.id("token-a"), v.id("token-b"), v.id("token-c"));
        assert_ne!(a, b);
        assert_eq!(a, v.id("token-a"));
        v.insert(a, tok(100), 0);
        assert!(v.get(a, 100, 0).is_some());
        assert!(v.get(a, 101, 0).is_none());
        assert!(v.get(a, 101, 5).is_some());
        assert!(v.get(v.id("token-a."), 0, 0).is_none(), "a different token");
        v.insert(b, tok(50), 0);
        v.insert(c, tok(200), 60); // b has expired and goes first
        assert_eq!(v.len(), 2);
        assert!(v.get(b, 0, 0).is_none());
        for i in 0..100 {
            let id = v.id(&format!("t{i}"));
            v.insert(id, tok(1000), 0);
        }
        assert!(v.len() <= 2);
    }

    #[test]
    fn expired_tokens_are_swept_long_before_the_map_is_full() {
        // A steady 100 live tokens, each living 10 s, one new a tenth of a second for 1,000 s:
        // 10,000 tokens pass; the map never holds more than twice the live ones (up to 110: `exp`
        // counts in whole seconds, so a token is live 10 to 11 s).
        let mut v = VerifiedTokens::new(4096);
        let mut most = 0;
        for i in 0..10_000i64 {
            let now = i / 10;
            let id = v.id(&format!("t{i}"));
            v.insert(id, tok(now + 10), now);
            most = most.max(v.len());
        }
        assert!(most <= 2 * 110 + 1, "held {most}");
        assert!(v.len() >= 100, "live tokens stay: {}", v.len());
    }

    #[test]
    fn keys_differ_between_instances() {
        let (x, y) = (VerifiedTokens::new(1), VerifiedTokens::new(1));
        assert_ne!(x.id("same"), y.id("same"), "random per-VM keys");
    }
}
