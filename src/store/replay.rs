//! The DPoP replay table in shared data, as pure rules: which slots a proof may take, what a slot
//! holds, and whether it is free. Shared by every worker of the VM, so a proof replayed on
//! another worker is caught; bounded (a fixed number of slots), and a slot is free again once its
//! proof could no longer be accepted anyway.

use crate::store::lanes::lanes;

/// How many slots one proof may take (open addressing): a table can be filled to about half
/// before a proof finds all of them taken.
pub const PROBES: usize = 4;

/// The shared-data keys of the slots `key` may take.
pub fn slot_keys(table: &str, key: &[u8; 32], slots: u32) -> [String; PROBES] {
    let slots = u64::from(slots.max(1));
    let hashes: [u64; PROBES] = lanes(key);
    hashes.map(|h| slot_name(table, h % slots))
}

fn slot_name(table: &str, n: u64) -> String {
    format!("kcpep.jti.{table}.{n}")
}

/// Every slot key of a table of `slots` slots (the ones [`slot_keys`] gives), to make at configure.
pub fn all_slot_keys(table: &str, slots: u32) -> impl Iterator<Item = String> + '_ {
    (0..u64::from(slots)).map(move |n| slot_name(table, n))
}

/// What a slot holds: the first 16 bytes of the key and until when (ms) the proof is usable.
pub fn encode(key: &[u8; 32], until_ms: i64) -> Vec<u8> {
    let mut v = key[..16].to_vec();
    v.extend_from_slice(&until_ms.to_be_bytes());
    v
}

/// What a slot means for `key` now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Empty, unreadable, or holding a proof that expired: may be taken.
    Free,
    /// Holds this very proof, still live: a replay.
    Same,
    /// Holds another live proof.
    Taken,
}

pub fn read(value: Option<&[u8]>, key: &[u8; 32], now_ms: i64) -> Slot {
    let Some(v) = value.filter(|v| v.len() == 24) else {
        return Slot::Free;
    };
    let mut until = [0u8; 8];
    until.copy_from_slice(&v[16..]);
    if i64::from_be_bytes(until) < now_ms {
        Slot::Free
    } else if v[..16] == key[..16] {
        Slot::Same
    } else {
        Slot::Taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_made_at_configure_holds_every_slot_a_proof_may_take() {
        let all: std::collections::HashSet<String> = all_slot_keys("vm", 64).collect();
        assert_eq!(all.len(), 64);
        for n in 0..100u8 {
            for k in slot_keys("vm", &[n; 32], 64) {
                assert!(all.contains(&k), "{k}");
            }
        }
    }

    #[test]
    fn a_slot_is_free_until_a_live_proof_takes_it() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(read(None, &a, 10), Slot::Free);
        assert_eq!(read(Some(b"short"), &a, 10), Slot::Free);
        let v = encode(&a, 100);
        assert_eq!(read(Some(&v), &a, 100), Slot::Same);
        assert_eq!(read(Some(&v), &b, 100), Slot::Taken);
        assert_eq!(read(Some(&v), &a, 101), Slot::Free);
        let keys = slot_keys("t", &a, 1000);
        assert!(keys.iter().all(|k| k.starts_with("kcpep.jti.t.")));
        assert_ne!(slot_keys("t", &a, 1 << 20), slot_keys("t", &b, 1 << 20));
    }
}
