//! Reads `:path` (bytes getter) and continues: the floor any proxy-wasm filter pays.
//!
//! With a plugin configuration it is also the host-call probe of `make bench` (its "host calls"
//! part): `op:count,...` makes each request do `count` of those host calls first, so the cost
//! of one call inside Envoy is measured against the bare no-op. Ops: `map` (the whole request
//! header map), `header` (one header), `set_header`, `set_property`, `get_property`,
//! `metric` (increment a counter), `time` (the clock), `verify` (one ES256 signature checked by
//! Envoy's `verify_signature`, as a DPoP proof's is), `cas` (a shared-data read and a write with
//! its compare-and-swap token, as a DPoP proof's replay entry is), `get_shared` (a shared-data read
//! alone).
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root { ops: Rc::new(Vec::new()), metric: 0 }));
}}

#[derive(Clone, Copy)]
enum Op {
    Map,
    Header,
    SetHeader,
    SetProperty,
    GetProperty,
    Metric,
    Time,
    Verify,
    Cas,
    GetShared,
}

/// An ES256 vector (a P-256 test key's SubjectPublicKeyInfo, its DER signature over TEXT).
const SPKI_HEX: &str = "3059301306072a8648ce3d020106082a8648ce3d03010703420004471c3e758c4904285bba7e53118ed0f524adeb0757d25bd2f8e7b0d76dfa714cdd520f7aca8a8b917acc37f51de8f0c9bbe3ad858382e702dc25a12d09f7a858";
const SIG_HEX: &str = "3045022046af5bcbef373ddb9b93b7eb4defff4fc4dfe34e21bb70113b0ffee669e51fed022100bf932e1d299d8791c46031a6fb1443f283b98fca8fd30c35e671a441d30e7092";
const TEXT: &[u8] = b"eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2In0.eyJqdGkiOiJwcm9iZSJ9";

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2).filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok()).collect()
}

/// `verify_signature`'s arguments (its protobuf: hash, key, signature, text; all short).
fn verify_arguments() -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, bytes) in [(0x0au8, b"sha256".to_vec()), (0x12, unhex(SPKI_HEX)), (0x1a, unhex(SIG_HEX)), (0x22, TEXT.to_vec())] {
        out.push(tag);
        out.push(bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out
}

struct Root {
    ops: Rc<Vec<(Op, u32)>>,
    metric: u32,
}

thread_local! {
    static VERIFY_ARGS: Vec<u8> = verify_arguments();
}
impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&config);
        let mut ops = Vec::new();
        // `{}` (a JSON configuration, as the plain no-op case passes) asks for nothing
        let list = if text.trim_start().starts_with('{') { "" } else { &text };
        for item in list.split(',').filter(|s| !s.trim().is_empty()) {
            let (name, count) = item.trim().split_once(':').unwrap_or((item.trim(), "1"));
            let op = match name {
                "map" => Op::Map,
                "header" => Op::Header,
                "set_header" => Op::SetHeader,
                "set_property" => Op::SetProperty,
                "get_property" => Op::GetProperty,
                "metric" => Op::Metric,
                "time" => Op::Time,
                "verify" => Op::Verify,
                "cas" => Op::Cas,
                "get_shared" => Op::GetShared,
                _ => return false,
            };
            ops.push((op, count.parse().unwrap_or(1)));
        }
        self.ops = Rc::new(ops);
        self.metric = hostcalls::define_metric(MetricType::Counter, "probe.calls").unwrap_or(0);
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop { ops: Rc::clone(&self.ops), metric: self.metric }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop {
    ops: Rc<Vec<(Op, u32)>>,
    metric: u32,
}
impl Context for Noop {}
impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let _ = self.get_http_request_header_bytes(":path");
        const VALUE: &str = r#"[{"rsid":"4f2b8c1e-0d6a-4a51-9a3e-2f1c0b9d7e65","rsname":"View Account Resource","scopes":["account:view"]}]"#;
        for &(op, count) in self.ops.iter() {
            for _ in 0..count {
                match op {
                    Op::Map => drop(hostcalls::get_map_bytes(MapType::HttpRequestHeaders)),
                    Op::Header => drop(self.get_http_request_header_bytes("authorization")),
                    Op::SetHeader => self.set_http_request_header("x-probe", Some(VALUE)),
                    Op::SetProperty => drop(hostcalls::set_property(vec!["probe.value"], Some(VALUE.as_bytes()))),
                    Op::GetProperty => drop(hostcalls::get_property(vec!["xds", "route_name"])),
                    Op::Metric => drop(hostcalls::increment_metric(self.metric, 1)),
                    Op::Time => drop(hostcalls::get_current_time()),
                    Op::Verify => VERIFY_ARGS.with(|a| drop(hostcalls::call_foreign_function("verify_signature", Some(a)))),
                    Op::GetShared => drop(hostcalls::get_shared_data("probe.cas")),
                    Op::Cas => {
                        let (value, cas) = hostcalls::get_shared_data("probe.cas").unwrap_or((None, None));
                        let mut v = value.unwrap_or_default();
                        v.truncate(64);
                        v.push(1);
                        let _ = hostcalls::set_shared_data("probe.cas", Some(&v), cas);
                    }
                }
            }
        }
        Action::Continue
    }
}
