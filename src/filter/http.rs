//! One HTTP stream's context: hands each callback's bytes to the worker, and the worker's answer
//! (go on or hold) back to Envoy.

use super::abi;
use super::host::HostProperties;
use super::plugin::Plugin;
use crate::enforce::gate;
use crate::pipeline::Go;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct Http {
    id: u32,
    /// `None`: the root context has no valid configuration.
    plugin: Option<Rc<Plugin>>,
}

impl Http {
    pub fn new(id: u32, plugin: Option<Rc<Plugin>>) -> Self {
        Http { id, plugin }
    }
}

fn action(go: Go) -> Action {
    match go {
        Go::Continue => Action::Continue,
        Go::Pause => Action::Pause,
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(plugin) = &self.plugin {
            plugin.stream_gone(self.id);
        }
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        if let Some(plugin) = &self.plugin {
            plugin.call_answer(self.id, token, headers, body);
        }
    }
}

impl HttpContext for Http {
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(plugin) = &self.plugin else {
            let r = gate::not_configured();
            // no configuration to read a request by: Envoy maps 503 for a gRPC client itself
            abi::send_response(r.status, &r.wire_headers(), r.body.as_bytes(), None);
            return Action::Pause;
        };
        // One host call for the whole map, read in place (`wire::pairs`): each value fetched on
        // its own costs a call back into the VM's allocator.
        let raw = abi::request_map(false).unwrap_or_default();
        let mut headers = crate::wire::pairs::parse(&raw).unwrap_or_default();
        let id = self.id;
        let go = plugin.run(id, |w, host| {
            w.on_request_headers(host, id, &mut headers, end_of_stream, &HostProperties)
        });
        action(go.unwrap_or(Go::Pause))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(plugin) = &self.plugin else {
            return Action::Pause;
        };
        let id = self.id;
        let go = plugin.run(id, |w, host| {
            w.on_request_body(host, id, body_size, end_of_stream)
        });
        // busy: re-entered from this stream's own continue, after its decision
        action(go.unwrap_or(Go::Continue))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(plugin) = &self.plugin else {
            return Action::Pause;
        };
        let raw = abi::request_map(true).unwrap_or_default();
        let trailers = crate::wire::pairs::parse(&raw).unwrap_or_default();
        let names: Vec<&str> = trailers
            .iter()
            .filter_map(|(k, _)| std::str::from_utf8(k).ok())
            .collect();
        let id = self.id;
        let go = plugin.run(id, |w, host| w.on_request_trailers(host, id, &names));
        action(go.unwrap_or(Go::Continue))
    }
}
