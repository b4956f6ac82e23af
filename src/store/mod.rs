//! What is remembered between requests and shared between workers: the decision table and its
//! rules (`decisions`), Keycloak's documents in shared data (`documents`), and the per-worker
//! shortcut for repeated requests (`memo`).

pub mod decisions;
pub mod documents;
pub mod memo;
