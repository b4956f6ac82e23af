//! Request facts + what is known -> a verdict, as Keycloak's policy enforcer decides
//! (docs/keycloak-enforcer.md §4-5), with the deliberate changes listed in the README:
//! missing/invalid tokens get 401 (RFC 6750), Keycloak unreachable gets 503 (fail closed), server
//! lookups never happen for anonymous requests or DISABLED paths, and every token is verified.
//!
//! A verdict that needs Keycloak is data: [`step::Step::Call`] carries the exact request and a
//! [`step::Pending`] continuation that turns Keycloak's answer into the next step.
//!
//! The callers' object is the [`Enforcer`] (`enforcer.rs`, every method of it); `arrival` is what comes of a request's
//! headers; `flow` takes the first step and hands each answer to the stage whose call it was:
//! `locate` (the path's entry), `collect` (its claims), `authorize` (the permission).

pub mod arrival;
mod authorize;
pub mod binding;
pub(crate) mod claims;
mod collect;
pub mod enforcer;
pub mod events;
mod flow;
pub mod gate;
pub mod grpc;
mod judge;
mod locate;
pub mod refresh;
pub mod replies;
pub mod step;

pub use authorize::{is_authorized, method_config, DPOP_NOT_EVALUATED};
pub use enforcer::Enforcer;
pub use flow::{decide, explain, resume, Explanation};

#[cfg(test)]
mod tests;
