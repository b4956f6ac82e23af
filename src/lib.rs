//! keycloak-pep: Keycloak's policy enforcer as a proxy-wasm filter for Envoy and Istio.
//!
//! The sans-IO core (everything but `filter`) is plain Rust: configuration, Keycloak's path
//! semantics, decisions, the UMA protocol and token checks. `filter` is the thin proxy-wasm shell
//! that moves bytes between Envoy and the core; it only exists in the wasm32 build.

pub mod claim_providers;
pub mod claims;
pub mod config;
pub mod enforcer;
pub mod forwarded;
pub mod json;
pub mod memo;
pub mod paths;
pub mod pathset;
pub mod placeholders;
pub mod refresh;
pub mod request;
pub mod routes;
pub mod token;
pub mod uma;
pub mod uri;

pub mod cache;
#[cfg(target_arch = "wasm32")]
mod filter;
pub mod shared;
pub mod signature;
