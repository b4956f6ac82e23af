//! Wide keys without a cryptographic hash: `N` independent 64-bit SipHash lanes over the same
//! parts (lane `i` hashes `i` first). `DefaultHasher`'s keys are fixed, so every VM of a process
//! computes the same key for the same parts, which the shared tables need; what must not be
//! guessable from outside (a token's identity) is hashed with per-VM keys before it gets here.

use std::hash::{DefaultHasher, Hash, Hasher};

#[cfg_attr(kcpep_size, optimize(speed))]
pub fn lanes<const N: usize>(parts: &impl Hash) -> [u64; N] {
    std::array::from_fn(|i| {
        let mut h = DefaultHasher::new();
        (i as u8).hash(&mut h);
        parts.hash(&mut h);
        h.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_differ_and_repeat() {
        let [a, b] = lanes::<2>(&("x", 1));
        assert_ne!(a, b);
        assert_eq!(lanes::<2>(&("x", 1)), [a, b]);
        assert_ne!(lanes::<2>(&("x", 2)), [a, b]);
    }
}
