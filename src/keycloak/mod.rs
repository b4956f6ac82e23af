//! Keycloak, sans-IO: the requests its endpoints take and the answers they give (`uma`), token
//! and signature checks, DPoP proofs (`dpop`), what an enforcer has learnt from it (`knowledge`, `resources`), and when
//! that is fetched again (`background`).

pub mod background;
pub mod dpop;
pub mod knowledge;
pub mod logout;
pub(crate) mod resources;
pub mod signature;
pub mod token;
pub mod uma;
pub(crate) mod verified;
