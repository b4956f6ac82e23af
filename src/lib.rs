//! keycloak-pep: Keycloak's policy enforcer as a proxy-wasm filter for Envoy and Istio.
//!
//! The sans-IO core (everything but `filter`) is plain Rust: configuration, Keycloak's path
//! semantics, decisions, the UMA protocol and token checks. `filter` is the thin proxy-wasm shell
//! that moves bytes between Envoy and the core; it only exists in the wasm32 build.

pub mod config;
pub mod enforce;
#[cfg(target_arch = "wasm32")]
mod filter;
pub mod keycloak;
pub mod request;
pub mod store;
pub mod wire;
