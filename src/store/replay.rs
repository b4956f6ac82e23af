//! The once-only tables in shared data, as pure rules: DPoP proofs (their `jti` and URL) and
//! back-channel logout tokens (their `jti`), each in a table of its own, so that filling one
//! never refuses the other. Shared by every worker of the VM, so a proof replayed on another
//! worker is caught; bounded (a fixed number of slots), and a slot is free again once its proof
//! could no longer be accepted anyway.
//!
//! Two choices of buckets of [`BUCKET`] slots, the proof going to the emptier one: a table so
//! made refuses no proof until it is two thirds full (2 in 49,152 filling to three quarters),
//! where single slots probed four times at random refuse one in a hundred filling to half
//! (`tests` below). One shared-data value per bucket also means two reads and one write per
//! proof.
//!
//! One client must not be able to fill the proof table for everyone: each proof's owner (the
//! key its token is bound to, or the token itself) may hold a bounded share of the slots, counted
//! in a small table of its own ([`share_plan`]); past it that owner alone is refused.
//!
//! [`Tables`] runs these rules over any store with compare-and-swap ([`Cas`]): the shell's is
//! Envoy's shared data, the CLI's and the tests' a map in memory.

use crate::store::lanes::lanes;
use crate::wire::hashmap::HashMap;

/// The first use of a DPoP proof or a logout token, across workers (a proof's `jti` and URL, see
/// [`crate::keycloak::dpop::Proof::replay_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    First,
    Replayed,
    /// Every slot the proof could take holds another live proof: it cannot be remembered, so it
    /// is refused (fail closed). `dpop.replay-slots` sizes the table.
    Full,
    /// The proof's owner (its key, or its token) holds its share of the table already
    /// (`dpop.replay-share-percent`): refused, and no one else is.
    OverShare,
}

/// Remembers proofs and logout tokens until they could no longer be accepted anyway, each in a
/// table of its own (below).
pub trait ReplayGuard {
    /// A DPoP proof of `owner` (see [`crate::keycloak::dpop::Proof::owner`]).
    fn first_use(
        &mut self,
        key: &[u8; 32],
        owner: &[u8; 32],
        until_ms: i64,
        now_ms: i64,
    ) -> FirstUse;
    /// A logout token's `jti`.
    fn first_logout(&mut self, key: &[u8; 32], until_ms: i64, now_ms: i64) -> FirstUse;
}

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
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn bucket_keys(table: &str, key: &[u8; 32], slots: u32) -> [String; CHOICES] {
    let n = buckets(slots);
    let hashes: [u64; CHOICES] = lanes(key);
    hashes.map(|h| bucket_name(table, h % n))
}

fn bucket_name(table: &str, n: u64) -> String {
    crate::store::names::numbered_key("kcpep.jti.", table, '.', n)
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
#[cfg_attr(kcpep_size, optimize(speed))]
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

/// What one entry of the share table holds: the first 16 bytes of the owner, the window it was
/// last counted in, its count in that window and in the one before.
const SHARE_ENTRY: usize = 32;

/// Owners one share bucket tracks; past it the least active one is forgotten.
const SHARE_BUCKET: usize = 16;

fn share_buckets(slots: u32) -> u64 {
    (buckets(slots) / 4).max(1)
}

/// The shared-data key of the share bucket counting `owner`.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn share_key(table: &str, owner: &[u8; 32], slots: u32) -> String {
    let [h]: [u64; 1] = lanes(owner);
    share_name(table, h % share_buckets(slots))
}

fn share_name(table: &str, n: u64) -> String {
    crate::store::names::numbered_key("kcpep.jkt.", table, '.', n)
}

/// One owner's count, read from a share entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    owner: [u8; 16],
    window: i64,
    current: u32,
    previous: u32,
}

impl Count {
    fn decode(e: &[u8]) -> Count {
        let mut owner = [0u8; 16];
        owner.copy_from_slice(&e[..16]);
        let mut w = [0u8; 8];
        w.copy_from_slice(&e[16..24]);
        let mut c = [0u8; 4];
        c.copy_from_slice(&e[24..28]);
        let mut p = [0u8; 4];
        p.copy_from_slice(&e[28..32]);
        Count {
            owner,
            window: i64::from_be_bytes(w),
            current: u32::from_be_bytes(c),
            previous: u32::from_be_bytes(p),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.owner);
        out.extend_from_slice(&self.window.to_be_bytes());
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&self.previous.to_be_bytes());
    }

    /// The count moved to `window`: the current window's becomes the previous one's, and a count
    /// older than that is gone (`None`).
    fn at(self, window: i64) -> Option<Count> {
        match window - self.window {
            0 => Some(self),
            1 => Some(Count {
                window,
                current: 0,
                previous: self.current,
                ..self
            }),
            _ => None,
        }
    }

    /// Proofs in the last `window_ms` (a sliding window: all of this window's, and the part of
    /// the previous one's that the last `window_ms` still covers).
    fn recent(&self, elapsed_ms: i64, window_ms: i64) -> u64 {
        let rest = (window_ms - elapsed_ms).clamp(0, window_ms);
        let previous = (u64::from(self.previous) * rest as u64).div_ceil(window_ms.max(1) as u64);
        u64::from(self.current) + previous
    }
}

/// What a share bucket says about one more proof of `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharePlan {
    /// The owner already holds its share.
    Over,
    /// Write `value` (compare-and-swap with what was read): the owner counted once more.
    Write(Vec<u8>),
}

/// One more proof of `owner`, given what its share bucket holds: at most `quota` proofs in any
/// `window_ms` (about the time a proof holds its slot).
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn share_plan(
    read: Option<&[u8]>,
    owner: &[u8; 32],
    quota: u32,
    window_ms: i64,
    now_ms: i64,
) -> SharePlan {
    let window_ms = window_ms.max(1);
    let window = now_ms.div_euclid(window_ms);
    let elapsed = now_ms.rem_euclid(window_ms);
    let v = read
        .filter(|v| v.len() % SHARE_ENTRY == 0)
        .unwrap_or_default();
    let mut counts: Vec<Count> = v
        .chunks_exact(SHARE_ENTRY)
        .filter_map(|e| Count::decode(e).at(window))
        .collect();
    let mine = counts.iter().position(|c| c.owner[..] == owner[..16]);
    let i = match mine {
        Some(i) => {
            if counts[i].recent(elapsed, window_ms) >= u64::from(quota) {
                return SharePlan::Over;
            }
            i
        }
        None => {
            if counts.len() >= SHARE_BUCKET {
                // forget the least active owner: a flooding one is never the least active
                if let Some(least) =
                    (0..counts.len()).min_by_key(|&j| counts[j].recent(elapsed, window_ms))
                {
                    counts.swap_remove(least);
                }
            }
            let mut o = [0u8; 16];
            o.copy_from_slice(&owner[..16]);
            counts.push(Count {
                owner: o,
                window,
                current: 0,
                previous: 0,
            });
            counts.len() - 1
        }
    };
    counts[i].current = counts[i].current.saturating_add(1);
    let mut value = Vec::with_capacity(counts.len() * SHARE_ENTRY);
    for c in &counts {
        c.encode(&mut value);
    }
    SharePlan::Write(value)
}

/// The table of logout tokens' `jti`s: Keycloak alone can add to it (a logout token is verified
/// first), and a few thousand logouts a minute fill it.
pub const LOGOUT_SLOTS: u32 = 8192;

/// The once-only tables of a VM, as made at configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Slots of the proof table (0: no enforcer checks DPoP proofs).
    pub proof_slots: u32,
    /// The most live proofs one owner may hold.
    pub share: u32,
    /// About how long a proof holds its slot (the proof lifetime and skew).
    pub window_ms: i64,
    /// Slots of the logout table (0: no enforcer answers back-channel logouts).
    pub logout_slots: u32,
}

impl Layout {
    /// The tables these enforcers need: the proof table as large as the largest
    /// `dpop.replay-slots` of those checking bindings, each owner's share and window the largest
    /// they set; the logout table where one answers back-channel logouts.
    pub fn of<'c>(configs: impl Iterator<Item = &'c crate::config::EnforcerConfig>) -> Layout {
        let mut l = Layout {
            proof_slots: 0,
            share: 0,
            window_ms: 0,
            logout_slots: 0,
        };
        for c in configs {
            let p = &c.proxy;
            if p.backchannel_logout.is_some() {
                l.logout_slots = LOGOUT_SLOTS;
            }
            if p.sender_constraint == crate::config::SenderConstraint::Off {
                continue;
            }
            let d = &p.dpop;
            l.proof_slots = l.proof_slots.max(d.replay_slots);
            let share =
                (u64::from(d.replay_slots) * u64::from(d.replay_share_percent) / 100).max(1);
            l.share = l.share.max(u32::try_from(share).unwrap_or(u32::MAX));
            l.window_ms = l
                .window_ms
                .max(i64::from(d.proof_lifetime_s + d.clock_skew_s) * 1000);
        }
        l
    }

    /// Every shared-data key of these tables, to make at configure.
    pub fn slot_keys(&self) -> impl Iterator<Item = String> + '_ {
        let proofs = (self.proof_slots > 0)
            .then(|| {
                all_bucket_keys(PROOFS, self.proof_slots)
                    .chain((0..share_buckets(self.proof_slots)).map(|n| share_name(PROOFS, n)))
            })
            .into_iter()
            .flatten();
        let logouts = (self.logout_slots > 0)
            .then(|| all_bucket_keys(LOGOUTS, self.logout_slots))
            .into_iter()
            .flatten();
        proofs.chain(logouts)
    }
}

/// The proof table's name in shared data keys.
const PROOFS: &str = "vm";
/// The logout table's.
const LOGOUTS: &str = "logout";

/// A store with compare-and-swap: what the tables need of Envoy's shared data.
pub trait Cas {
    /// The value and its version (`None`: no such key).
    fn read(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` if the key is still at `version`; false when another writer came first.
    fn write(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool;
}

impl<C: Cas + ?Sized> Cas for &mut C {
    fn read(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        (**self).read(key)
    }

    fn write(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
        (**self).write(key, value, version)
    }
}

/// A [`Cas`] in this process's memory: the CLI's and the tests'.
#[derive(Debug, Default)]
pub struct Memory {
    values: HashMap<String, (Vec<u8>, u32)>,
}

impl Memory {
    /// The keys written so far.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

impl Cas for Memory {
    fn read(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.values.get(key) {
            Some((v, n)) => (Some(v.clone()), Some(*n)),
            None => (None, None),
        }
    }

    fn write(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
        let current = self.values.get(key).map(|(_, n)| *n);
        if version.is_some() && version != current {
            return false;
        }
        let next = current.unwrap_or(0).wrapping_add(1);
        self.values.insert(key.to_string(), (value.to_vec(), next));
        true
    }
}

/// Rounds of compare-and-swap races lost to other workers before giving up.
const RACES: usize = 4;

/// The once-only tables over a [`Cas`] store.
#[derive(Debug)]
pub struct Tables<C: Cas> {
    pub layout: Layout,
    pub store: C,
}

impl<C: Cas> Tables<C> {
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn remember(
        &mut self,
        table: &str,
        slots: u32,
        key: &[u8; 32],
        until_ms: i64,
        now_ms: i64,
    ) -> FirstUse {
        let names = bucket_keys(table, key, slots);
        for _ in 0..RACES {
            let read = names.clone().map(|n| self.store.read(&n));
            let values = [0, 1].map(|i| read[i].0.as_deref());
            match plan(values, key, until_ms, now_ms) {
                Plan::Replayed => return FirstUse::Replayed,
                Plan::Full => return FirstUse::Full,
                Plan::Write { bucket, value } => {
                    if self.store.write(&names[bucket], &value, read[bucket].1) {
                        return FirstUse::First;
                    }
                }
            }
        }
        // lost every race: fail closed
        FirstUse::Full
    }

    /// The owner's share bucket with one more proof counted, to write once the proof is taken
    /// (with the version read); `None` when the owner holds its share already.
    fn share_counted(
        &mut self,
        name: &str,
        owner: &[u8; 32],
        now_ms: i64,
    ) -> Option<(Vec<u8>, Option<u32>)> {
        let l = self.layout;
        let (value, version) = self.store.read(name);
        match share_plan(value.as_deref(), owner, l.share, l.window_ms, now_ms) {
            SharePlan::Over => None,
            SharePlan::Write(v) => Some((v, version)),
        }
    }
}

impl<C: Cas> ReplayGuard for Tables<C> {
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn first_use(
        &mut self,
        key: &[u8; 32],
        owner: &[u8; 32],
        until_ms: i64,
        now_ms: i64,
    ) -> FirstUse {
        if self.layout.proof_slots == 0 {
            return FirstUse::Full;
        }
        // only proofs the table takes count against their owner's share: the share is of slots
        let name = share_key(PROOFS, owner, self.layout.proof_slots);
        let Some(mut counted) = self.share_counted(&name, owner, now_ms) else {
            // refused either way; a replay is reported as one
            let names = bucket_keys(PROOFS, key, self.layout.proof_slots);
            let read = names.map(|n| self.store.read(&n).0);
            let values = [0, 1].map(|i| read[i].as_deref());
            return match plan(values, key, until_ms, now_ms) {
                Plan::Replayed => FirstUse::Replayed,
                _ => FirstUse::OverShare,
            };
        };
        let slots = self.layout.proof_slots;
        let first = self.remember(PROOFS, slots, key, until_ms, now_ms);
        if first == FirstUse::First {
            for _ in 0..RACES {
                if self.store.write(&name, &counted.0, counted.1) {
                    break;
                }
                // another worker counted meanwhile: count this proof on top of it (it is taken)
                let (value, version) = self.store.read(&name);
                let l = self.layout;
                match share_plan(value.as_deref(), owner, u32::MAX, l.window_ms, now_ms) {
                    SharePlan::Write(v) => counted = (v, version),
                    SharePlan::Over => break,
                }
            }
        }
        first
    }

    fn first_logout(&mut self, key: &[u8; 32], until_ms: i64, now_ms: i64) -> FirstUse {
        if self.layout.logout_slots == 0 {
            return FirstUse::Full;
        }
        let slots = self.layout.logout_slots;
        self.remember(LOGOUTS, slots, key, until_ms, now_ms)
    }
}

/// One process's tables in memory (the CLI, tests): a worker-local guard is no guard in Envoy,
/// where the shell's shared-data tables are used.
pub type LocalReplay = Tables<Memory>;

impl Default for LocalReplay {
    fn default() -> Self {
        let d = crate::config::DpopSettings::default();
        Tables {
            layout: Layout {
                proof_slots: d.replay_slots,
                share: d.replay_slots * d.replay_share_percent / 100,
                window_ms: i64::from(d.proof_lifetime_s + d.clock_skew_s) * 1000,
                logout_slots: LOGOUT_SLOTS,
            },
            store: Memory::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A table in a map, as the shell keeps it in shared data (without the CAS races).
    #[cfg_attr(kcpep_size, optimize(speed))]
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

    fn tables(slots: u32, share: u32) -> LocalReplay {
        Tables {
            layout: Layout {
                proof_slots: slots,
                share,
                window_ms: 25_000,
                logout_slots: 64,
            },
            store: Memory::default(),
        }
    }

    #[test]
    fn one_owner_flooding_is_refused_alone_and_logouts_never_share_its_fate() {
        // 64 slots, one owner may hold 6 live proofs
        let mut t = tables(64, 6);
        let (flooder, other) = (key(1_000), key(2_000));
        let mut refused = 0;
        for n in 0..200 {
            match t.first_use(&key(n), &flooder, 20_000, 1_000) {
                FirstUse::First => {}
                FirstUse::OverShare => refused += 1,
                e => panic!("proof {n}: {e:?}"),
            }
        }
        assert_eq!(refused, 200 - 6, "the flooder holds its share and no more");
        // another client's proofs, and Keycloak's logouts, still go through (a replay takes no
        // slot, so it does not count against its owner's share)
        for n in 0..6 {
            let k = key(10_000 + n);
            assert_eq!(t.first_use(&k, &other, 20_000, 1_001), FirstUse::First);
            assert_eq!(t.first_use(&k, &other, 20_000, 1_002), FirstUse::Replayed);
        }
        let logout = key(99);
        assert_eq!(t.first_logout(&logout, 60_000, 1_003), FirstUse::First);
        assert_eq!(t.first_logout(&logout, 60_000, 1_004), FirstUse::Replayed);
        // a proof table full of other owners' proofs does not touch the logout table
        let mut full = tables(64, 64);
        for n in 0..64 {
            full.first_use(&key(n), &key(5_000 + n), 20_000, 1_000);
        }
        assert_eq!(
            full.first_use(&key(7_777), &key(7_777), 20_000, 1_000),
            FirstUse::Full
        );
        assert_eq!(full.first_logout(&key(3), 60_000, 1_000), FirstUse::First);
    }

    #[test]
    fn an_owners_share_frees_as_its_proofs_age() {
        let owner = key(1);
        let mut bucket: Option<Vec<u8>> = None;
        let mut take = |now: i64| match share_plan(bucket.as_deref(), &owner, 4, 10_000, now) {
            SharePlan::Over => false,
            SharePlan::Write(v) => {
                bucket = Some(v);
                true
            }
        };
        assert!((0..4).all(|i| take(20_000 + i)));
        assert!(!take(20_010), "4 in the last 10 s");
        // half a window later half of the previous window's proofs still count
        assert!(!take(30_000));
        assert!(take(35_000) && take(35_001));
        assert!(!take(35_002));
        // two windows later nothing counts
        assert!((0..4).all(|i| take(60_000 + i)));
    }

    #[test]
    fn a_share_bucket_forgets_the_least_active_owner_first() {
        let mut bucket: Vec<u8> = Vec::new();
        let heavy = key(0);
        for _ in 0..10 {
            let SharePlan::Write(v) = share_plan(Some(&bucket), &heavy, 100, 10_000, 5) else {
                panic!()
            };
            bucket = v;
        }
        for n in 1..=40 {
            let SharePlan::Write(v) = share_plan(Some(&bucket), &key(n), 100, 10_000, 5) else {
                panic!()
            };
            bucket = v;
            assert!(bucket.len() <= SHARE_BUCKET * SHARE_ENTRY);
        }
        // the heavy owner is still counted: 90 more and it is over
        for _ in 0..90 {
            let SharePlan::Write(v) = share_plan(Some(&bucket), &heavy, 100, 10_000, 6) else {
                panic!("heavy owner forgotten")
            };
            bucket = v;
        }
        assert_eq!(
            share_plan(Some(&bucket), &heavy, 100, 10_000, 7),
            SharePlan::Over
        );
    }

    #[test]
    fn the_layout_makes_every_key_the_tables_use() {
        let d = crate::config::DpopSettings::default();
        let l = Layout {
            proof_slots: 1024,
            share: 100,
            window_ms: i64::from(d.proof_lifetime_s + d.clock_skew_s) * 1000,
            logout_slots: 64,
        };
        let all: std::collections::HashSet<String> = l.slot_keys().collect();
        for n in 0..500 {
            assert!(all.contains(&share_key(PROOFS, &key(n), 1024)));
            for k in bucket_keys(PROOFS, &key(n), 1024) {
                assert!(all.contains(&k));
            }
            for k in bucket_keys(LOGOUTS, &key(n), 64) {
                assert!(all.contains(&k));
            }
        }
        let none = Layout {
            proof_slots: 0,
            logout_slots: 0,
            ..l
        };
        assert_eq!(none.slot_keys().count(), 0);
    }
}
