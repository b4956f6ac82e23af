//! Keycloak, sans-IO: the requests its endpoints take and the answers they give (`uma`; `authzen`,
//! its AuthZEN decision point, for tokens the UMA grant refuses), token and signature checks, DPoP
//! proofs (`dpop`), what an enforcer has learnt from it (`knowledge`, `resources`), and when that
//! is fetched again (`background`).

pub mod authzen;
pub mod background;
pub mod dpop;
pub mod jose;
pub mod knowledge;
pub mod logout;
pub(crate) mod resources;
pub mod signature;
pub mod token;
pub mod uma;
pub(crate) mod verified;
