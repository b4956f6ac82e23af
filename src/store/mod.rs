//! What is remembered between requests and shared between workers: the decision table and its
//! rules (`decisions`), Keycloak's documents in shared data (`documents`), and the per-worker
//! shortcut for repeated requests (`memo`).

pub mod decisions;
pub mod documents;
pub mod front;
pub(crate) mod lanes;
pub mod logouts;
pub mod memo;
pub(crate) mod names;
pub mod replay;
pub mod shared;

pub use replay::{Cas, FirstUse, LocalReplay, ReplayGuard};

/// The decision cache as the enforcer sees it (`shared::SharedStore` over the host's shared data).
pub trait DecisionStore {
    fn get(&mut self, key: &decisions::Key) -> Option<decisions::State>;
    /// Marks the key as being asked (CAS); false when another request claimed it first.
    fn claim(&mut self, key: &decisions::Key, until_ms: i64) -> bool;
    fn put(&mut self, key: &decisions::Key, entry: decisions::State);
    /// Keycloak's answer to a lazy path lookup that another worker stored (shared path cache).
    fn get_path(&mut self, _path: &str, _now_ms: i64) -> Option<Vec<u8>> {
        None
    }
    fn put_path(&mut self, _path: &str, _answer: &[u8], _expires_ms: i64) {}
}

/// No decision cache.
pub struct NoStore;

impl DecisionStore for NoStore {
    fn get(&mut self, _: &decisions::Key) -> Option<decisions::State> {
        None
    }
    fn claim(&mut self, _: &decisions::Key, _: i64) -> bool {
        true
    }
    fn put(&mut self, _: &decisions::Key, _: decisions::State) {}
}
