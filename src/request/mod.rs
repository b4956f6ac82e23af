//! What can be said of an incoming request before any configuration applies: its path normalized
//! (and whether another reader could split it otherwise), Keycloak's path patterns, the claim
//! placeholders it resolves, and the forwarded headers of trusted proxies.

pub mod forwarded;
pub mod pattern;
pub mod placeholders;
pub mod uri;
pub mod view;
