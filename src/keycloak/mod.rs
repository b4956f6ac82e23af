//! Keycloak, sans-IO.

pub mod background;
pub mod knowledge;
pub mod resources;
pub mod signature;
pub mod token;
pub mod uma;
