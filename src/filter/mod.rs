//! The proxy-wasm shell: moves bytes between Envoy and the pipeline (`crate::pipeline`), decides
//! nothing itself.
//!
//! `root` makes the worker from the plugin configuration and forwards the tick; `http` forwards
//! one stream's callbacks; `plugin` is what they share; `host` implements the pipeline's `Host`
//! over proxy-wasm; `abi` the host calls the SDK would panic on; `metrics` counts the core's
//! events as Envoy stats.
//!
//! Only byte getters are used on request data (clippy.toml forbids the String ones: they panic on
//! non-UTF-8 and a panic kills the worker's VM).

mod abi;
mod host;
mod http;
mod metrics;
mod plugin;
mod root;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| Box::new(root::Root::new(id)));
}}
