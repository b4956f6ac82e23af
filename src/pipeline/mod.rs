//! The request pipeline: a worker of the proxy, from "request headers arrived" to "verdict
//! applied", and its background fetches, over a [`Host`] trait. The proxy-wasm shell
//! (`filter/`) is one driver, implementing [`Host`] over Envoy; `kcpep evaluate` and the
//! pipeline tests are the other, over [`memory::MemoryHost`]. Every rule lives here or below.

mod flow;
pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod memory;
mod stream;
pub mod worker;

pub use host::{Go, Host, Upstream, Verdict};
pub use worker::Worker;
