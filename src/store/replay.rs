//! The DPoP replay table in shared data, as pure rules: which buckets a proof may go to, what a
//! bucket holds, and which write remembers a proof. Shared by every worker of the VM, so a proof
//! replayed on another worker is caught; bounded (a fixed number of slots), and a slot is free
//! again once its proof could no longer be accepted anyway.
//!
//! Two choices of buckets of [`BUCKET`] slots, the proof going to the emptier one: a table so
//! made refuses no proof until it is two thirds full (2 in 49,152 filling to three quarters),
//! where single slots probed four times at random refuse one in a hundred filling to half
//! (`tests` below). One shared-data value per
//! bucket also means two reads and one write per proof.

use crate::store::lanes::lanes;

/// Slots of one bucket, one shared-data value.
pub const BUCKET: usize = 8;

/// Buckets a proof may go to.
pub const CHOICES: usize = 2;

/// What one slot holds: the first 16 bytes of the key and until when (ms) the proof is usable.
const ENTRY: usize = 24;

fn buckets(slots: u32) -> u64 {
    (u64::from(slots) / BUCKET as u64).max(1)
}

/// The shared-data keys of the buckets `key` may go to (the same one twice in a tiny table).
pub fn bucket_keys(table: &str, key: &[u8; 32], slots: u32) -> [String; CHOICES] {
    let n = buckets(slots);
    let hashes: [u64; CHOICES] = lanes(key);
    hashes.map(|h| bucket_name(table, h % n))
}

fn bucket_name(table: &str, n: u64) -> String {
    format!("kcpep.jti.{table}.{n}")
}

/// Every bucket key of a table of `slots` slots (the ones [`bucket_keys`] gives), to make at
/// configure.
pub fn all_bucket_keys(table: &str, slots: u32) -> impl Iterator<Item = String> + '_ {
    (0..buckets(slots)).map(move |n| bucket_name(table, n))
}

/// The live entries of a bucket's value (a value of another shape holds none).
fn live(value: Option<&[u8]>, now_ms: i64) -> impl Iterator<Item = &[u8]> {
    let v = value.filter(|v| v.len() % ENTRY == 0).unwrap_or_default();
    v.chunks_exact(ENTRY).filter(move |e| {
        let mut until = [0u8; 8];
        until.copy_from_slice(&e[16..]);
        i64::from_be_bytes(until) >= now_ms
    })
}

/// What the buckets read say about a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A live slot holds this very proof.
    Replayed,
    /// Every slot of both buckets holds another live proof.
    Full,
    /// Write `value` to bucket `bucket` (compare-and-swap with what was read): its live proofs
    /// and this one.
    Write { bucket: usize, value: Vec<u8> },
}

/// The step for `key` given what its buckets ([`bucket_keys`]) hold now.
pub fn plan(read: [Option<&[u8]>; CHOICES], key: &[u8; 32], until_ms: i64, now_ms: i64) -> Plan {
    if read
        .iter()
        .any(|v| live(*v, now_ms).any(|e| e[..16] == key[..16]))
    {
        return Plan::Replayed;
    }
    let counts = read.map(|v| live(v, now_ms).count());
    let bucket = if counts[1] < counts[0] { 1 } else { 0 };
    if counts[bucket] >= BUCKET {
        return Plan::Full;
    }
    let mut value: Vec<u8> = live(read[bucket], now_ms).flatten().copied().collect();
    value.extend_from_slice(&key[..16]);
    value.extend_from_slice(&until_ms.to_be_bytes());
    Plan::Write { bucket, value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A table in a map, as the shell keeps it in shared data (without the CAS races).
    fn remember(
        table: &mut HashMap<String, Vec<u8>>,
        slots: u32,
        key: &[u8; 32],
        until: i64,
        now: i64,
    ) -> Plan {
        let names = bucket_keys("t", key, slots);
        let read = names.clone().map(|n| table.get(&n).cloned());
        let plan = plan([read[0].as_deref(), read[1].as_deref()], key, until, now);
        if let Plan::Write { bucket, value } = &plan {
            table.insert(names[*bucket].clone(), value.clone());
        }
        plan
    }

    fn key(n: u32) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(n.to_be_bytes()).into()
    }

    #[test]
    fn the_table_made_at_configure_holds_every_bucket_a_proof_may_take() {
        let all: std::collections::HashSet<String> = all_bucket_keys("vm", 64).collect();
        assert_eq!(all.len(), 64 / BUCKET);
        for n in 0..100 {
            for k in bucket_keys("vm", &key(n), 64) {
                assert!(all.contains(&k), "{k}");
            }
        }
        assert!(bucket_keys("t", &key(1), 1000)
            .iter()
            .all(|k| k.starts_with("kcpep.jti.t.")));
        assert_ne!(
            bucket_keys("t", &key(1), 1 << 20),
            bucket_keys("t", &key(2), 1 << 20)
        );
    }

    #[test]
    fn a_proof_is_remembered_until_it_expires() {
        let mut t = HashMap::new();
        let a = key(1);
        assert!(matches!(
            remember(&mut t, 64, &a, 100, 10),
            Plan::Write { .. }
        ));
        assert_eq!(remember(&mut t, 64, &a, 100, 50), Plan::Replayed);
        assert_eq!(remember(&mut t, 64, &a, 100, 100), Plan::Replayed);
        // expired: taken again, and the expired entry is dropped from the bucket
        let Plan::Write { value, .. } = remember(&mut t, 64, &a, 200, 101) else {
            panic!("an expired proof's slot is free");
        };
        assert_eq!(value.len(), ENTRY);
        // a value of another shape (the empty one made at configure, a torn one) holds nothing
        assert!(matches!(
            plan([Some(b"short"), Some(b"")], &a, 1, 0),
            Plan::Write { .. }
        ));
    }

    #[test]
    fn two_thirds_full_every_new_proof_is_remembered() {
        // docs/configuration.md's sizing (slots >= 2 x live proofs) with a margin: up to two
        // thirds full no proof may be refused as `replay_table_full`. Single slots probed four
        // times at random (session 10's table) refuse 1.3% of proofs filling to half.
        let slots = 1 << 16;
        let mut t = HashMap::new();
        for n in 0..slots * 2 / 3 {
            let plan = remember(&mut t, slots, &key(n), 1_000, 0);
            assert!(matches!(plan, Plan::Write { .. }), "proof {n}: {plan:?}");
        }
    }

    #[test]
    fn a_full_table_refuses_rather_than_forgets() {
        // 8 buckets of 8: past 64 live proofs none can be remembered, and none is dropped
        let mut t = HashMap::new();
        let mut full = 0;
        for n in 0..200 {
            match remember(&mut t, 64, &key(n), 1_000, 0) {
                Plan::Full => full += 1,
                Plan::Write { .. } => {}
                Plan::Replayed => panic!("a new proof taken for a replay"),
            }
        }
        assert!(full >= 200 - 64, "{full}");
        for n in 0..200 {
            let again = remember(&mut t, 64, &key(n), 1_000, 1);
            assert!(
                matches!(again, Plan::Replayed | Plan::Full),
                "proof {n} forgotten: {again:?}"
            );
        }
        // once they expire, the table takes new proofs again
        assert!(matches!(
            remember(&mut t, 64, &key(500), 2_000, 1_001),
            Plan::Write { .. }
        ));
    }
}
