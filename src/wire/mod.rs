//! Plain data that crosses the core's boundaries.

pub mod claims;
pub mod http;
pub mod json;
pub mod permission;
pub mod resource;
