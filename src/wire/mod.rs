//! Plain data that crosses the core's boundaries: what is sent to Keycloak and what comes back,
//! the permissions passed upstream, the claims pushed with a decision request, the subjects of
//! decision records made pseudonyms, and the JSON reader that names the path of a bad field.

pub mod claims;
pub mod hashmap;
pub mod http;
pub(crate) mod json;
pub mod pairs;
pub(crate) mod permission;
pub(crate) mod pseudonym;
pub mod resource;
