//! Root context: one per VM (Envoy runs one VM per worker plus one on the main thread). Makes
//! the worker from the plugin configuration and forwards its tick and callout answers to it.

use super::host::{self, ProxyHost};
use super::http::Http;
use super::metrics::{self, Metrics};
use super::plugin::Plugin;
use crate::pipeline::worker::Verifier;
use crate::pipeline::Worker;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::rc::Rc;

pub struct Root {
    id: u32,
    plugin: Option<Rc<Plugin>>,
}

impl Root {
    pub fn new(id: u32) -> Self {
        Root { id, plugin: None }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        if let Some(plugin) = &self.plugin {
            plugin.call_answer(self.id, token, headers, body);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        // Its time in Envoy's log splits start-up into Envoy compiling and starting the module
        // and the module configuring itself (make bench's footprint part reads both lines).
        log::info!("kcpep: configuring");
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let metrics = Metrics::define();
        let verify: Option<Verifier> =
            host::probe_verify_signature().then_some(host::host_verify as Verifier);
        let configured = {
            let mut proxy = ProxyHost::new(&metrics, self.id);
            Worker::configure(&bytes, verify, host::random_u64(), &mut proxy)
        };
        match configured {
            Ok(worker) => {
                self.plugin = Some(Rc::new(Plugin::new(worker, metrics)));
                true
            }
            Err(e) => {
                log::error!("kcpep: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = &self.plugin {
            plugin.run(self.id, |w, host| w.on_tick(host));
        }
        metrics::note_memory(core::arch::wasm32::memory_size(0) as u32);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, self.plugin.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
