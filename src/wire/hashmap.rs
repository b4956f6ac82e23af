//! The hash map every table of the filter uses: hashbrown's, the copy the proxy-wasm SDK already
//! links into the module. std's `HashMap` is the same table code built a second time, with SipHash
//! and its random keys beside it; one copy keeps the module smaller.
//!
//! The hasher is hashbrown's default (foldhash), seeded once per VM from the clock and addresses:
//! not a keyed PRF, so the tables that take keys a client can choose (request paths) are bounded
//! in size by their configuration, and the others are keyed by digests of verified tokens or by
//! the host's own ids.

/// A hash map with hashbrown's default hasher.
pub type HashMap<K, V> = hashbrown::HashMap<K, V>;
