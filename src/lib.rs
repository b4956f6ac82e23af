//! keycloak-pep: Keycloak's policy enforcer as a proxy-wasm filter for Envoy and Istio.
//!
//! The layers, each importing only those below it (`tests/layers.rs` keeps it so):
//!
//! ```text
//! filter/    the proxy-wasm shell (wasm32 only): moves bytes between Envoy and the core
//! enforce/   one request -> one step: path, claims, authorize, the reply
//! store/     what is remembered: the decision table, shared documents, the per-worker memo
//! keycloak/  Keycloak, sans-IO: the UMA and protection API, tokens and signatures, what an
//!            enforcer has learnt (keys, PAT, resources) and when to fetch it again
//! config/    JSON -> immutable compiled configuration: enforcers, plugin routes, claims
//! request/   what can be said of an incoming request: its path normalized, patterns,
//!            placeholders, forwarded headers
//! wire/      plain data crossing boundaries: HTTP requests and answers, permissions, resources
//! ```
//!
//! Everything but `filter/` is plain Rust with no proxy-wasm call, unit-tested natively. How
//! Keycloak's own enforcer decides, and where this one differs on purpose, is in
//! docs/keycloak-enforcer.md.
//!
//! Public are the modules the shell, the `kcpep` CLI and the tests outside the crate use; the
//! others are `pub(crate)` (verified tokens, the path table, lanes, refresh, claim resolution and
//! providers, the JSON reader, the wire's permission, resource and claims types).

// The module's build (scripts/build-wasm.sh) optimizes the filter's code for size and marks the
// cache hit's path `optimize(speed)`; native builds know neither.
#![cfg_attr(kcpep_size, feature(optimize_attribute))]

pub mod wire;

pub mod request;

pub mod config;

pub mod keycloak;

pub mod store;

pub mod enforce;

pub mod pipeline;

#[cfg(target_arch = "wasm32")]
mod filter;
