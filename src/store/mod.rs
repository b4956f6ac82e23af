//! What is remembered between requests and shared between workers: the decision table and its
//! rules (`decisions`), Keycloak's documents in shared data (`documents`), and the per-worker
//! shortcut for repeated requests (`memo`).

pub mod decisions;
pub mod documents;
pub(crate) mod lanes;
pub mod logouts;
pub mod memo;
pub mod replay;

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
/// table of its own (`replay`).
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

pub use replay::LocalReplay;

/// The decision cache as the enforcer sees it; the shell implements it over shared data.
pub trait DecisionStore {
    fn get(&mut self, key: &decisions::Key) -> Option<decisions::Entry>;
    /// Marks the key as being asked (CAS); false when another request claimed it first.
    fn claim(&mut self, key: &decisions::Key, until_ms: i64) -> bool;
    fn put(&mut self, key: &decisions::Key, entry: decisions::Entry);
    /// Keycloak's answer to a lazy path lookup that another worker stored (shared path cache).
    fn get_path(&mut self, _path: &str, _now_ms: i64) -> Option<Vec<u8>> {
        None
    }
    fn put_path(&mut self, _path: &str, _answer: &[u8], _expires_ms: i64) {}
}

/// No decision cache.
pub struct NoStore;

impl DecisionStore for NoStore {
    fn get(&mut self, _: &decisions::Key) -> Option<decisions::Entry> {
        None
    }
    fn claim(&mut self, _: &decisions::Key, _: i64) -> bool {
        true
    }
    fn put(&mut self, _: &decisions::Key, _: decisions::Entry) {}
}
