//! The proxy-wasm shell: moves bytes between Envoy and the core, decides nothing itself.
//!
//! `root` holds one VM's configuration and enforcers; on its tick `enforcer::refresh` says which
//! background fetches to take from shared data or send (root only performs them, through
//! `enforce::refresh::FetchHost`), and `enforcer::fetched` what their answers change; `http` walks one request: facts -> `enforcer::decide` -> callouts ->
//! `enforcer::resume` -> continue or local reply.
//!
//! Only byte getters are used on request data (clippy.toml forbids the String ones: they panic on
//! non-UTF-8 and a panic kills the worker's VM).

mod abi;
mod host;
mod http;
mod metrics;
mod root;
mod store;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(root::Root::default()));
}}
