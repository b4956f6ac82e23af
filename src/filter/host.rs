//! The pipeline's [`Host`] over proxy-wasm: host calls that never panic on request-derived data.

use super::abi;
use super::metrics::{self, Metrics};
use crate::enforce::arrival::Properties;
use crate::enforce::events::Event;
use crate::enforce::step::Reply;
use crate::keycloak::signature;
use crate::pipeline::{Host, Upstream};
use crate::store::Cas;
use crate::wire::http::{Answer, HttpRequest};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::time::{Duration, UNIX_EPOCH};

/// The stream property (Envoy filter state `wasm.kcpep.permissions`) with the granted permissions.
pub const PERMISSIONS_PROPERTY: &str = "kcpep.permissions";
/// The stream property (Envoy filter state `wasm.kcpep.decision`) with the decision record.
pub const DECISION_PROPERTY: &str = "kcpep.decision";

/// The proxy as one callback sees it: `origin` is the context the callback runs in. Acting on
/// another stream switches the host's effective context to it; the origin is restored at the end.
pub struct ProxyHost<'a> {
    metrics: &'a Metrics,
    origin: u32,
    current: u32,
}

impl<'a> ProxyHost<'a> {
    pub fn new(metrics: &'a Metrics, origin: u32) -> Self {
        ProxyHost {
            metrics,
            origin,
            current: origin,
        }
    }

    /// Makes `stream` the effective context; false when it is gone.
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn on(&mut self, stream: u32) -> bool {
        if self.current != stream {
            if hostcalls::set_effective_context(stream).is_err() {
                return false;
            }
            self.current = stream;
        }
        true
    }
}

impl Drop for ProxyHost<'_> {
    fn drop(&mut self) {
        if self.current != self.origin {
            let _ = hostcalls::set_effective_context(self.origin);
        }
    }
}

impl Cas for ProxyHost<'_> {
    fn read(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn write(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), version).is_ok()
    }
}

impl Host for ProxyHost<'_> {
    #[cfg_attr(kcpep_size, optimize(speed))]
    fn now_ms(&self) -> i64 {
        now_ms()
    }

    fn dispatch(
        &mut self,
        to: Upstream<'_>,
        req: &HttpRequest,
        trace: &[(String, String)],
    ) -> Option<u32> {
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", req.method),
            (":path", req.path.as_str()),
            (":authority", to.authority),
        ];
        for (k, v) in req.headers.iter().chain(trace) {
            headers.push((k.as_str(), v.as_str()));
        }
        let body = (!req.body.is_empty()).then_some(req.body.as_slice());
        let timeout = Duration::from_millis(u64::from(to.timeout_ms.max(1)));
        hostcalls::dispatch_http_call(to.cluster, headers, body, vec![], timeout)
            .map_err(|status| log::debug!("kcpep: dispatch to {}: {status:?}", to.cluster))
            .ok()
    }

    #[cfg_attr(kcpep_size, optimize(speed))]
    fn record(&mut self, event: Event) {
        self.metrics.record(event);
    }

    fn set_cache_entries(&mut self, n: u64) {
        metrics::set_cache_entries(n);
    }

    fn set_tick_ms(&mut self, ms: u64) {
        let _ = hostcalls::set_tick_period(Duration::from_millis(ms));
    }

    #[cfg_attr(kcpep_size, optimize(speed))]
    fn continue_request(&mut self, stream: u32) {
        if self.on(stream) {
            abi::continue_request();
        }
    }

    fn send_reply(&mut self, stream: u32, r: &Reply) {
        if self.on(stream) {
            abi::send_response(
                r.wire_status(),
                &r.wire_headers(),
                r.body.as_bytes(),
                r.grpc_status,
            );
        }
    }

    #[cfg_attr(kcpep_size, optimize(speed))]
    fn set_request_header(&mut self, stream: u32, name: &str, value: Option<&str>) {
        if self.on(stream) {
            abi::set_request_header(name, value);
        }
    }

    fn remove_request_trailer(&mut self, stream: u32, name: &str) {
        if self.on(stream) {
            abi::remove_request_trailer(name);
        }
    }

    #[cfg_attr(kcpep_size, optimize(speed))]
    fn set_permissions(&mut self, stream: u32, value: &str) {
        // Envoy keeps it as filter state `wasm.kcpep.permissions` (access logs, later filters);
        // proxy-wasm has no way to write dynamic metadata itself.
        if self.on(stream) {
            abi::set_property(&[PERMISSIONS_PROPERTY], value.as_bytes());
        }
    }

    #[cfg_attr(kcpep_size, optimize(speed))]
    fn decision_record(&mut self, stream: u32, record: &str) {
        if self.on(stream) {
            abi::set_property(&[DECISION_PROPERTY], record.as_bytes());
        }
    }

    fn request_body(&mut self, stream: u32, max: usize) -> Vec<u8> {
        if !self.on(stream) {
            return Vec::new();
        }
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, max)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

/// Milliseconds since the epoch by the host's clock.
#[cfg_attr(kcpep_size, optimize(speed))]
pub fn now_ms() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads a callout's answer; the `:status` first (Envoy turns an unreachable cluster into a 503).
pub fn call_answer(num_headers: usize, body_size: usize, body: &mut Vec<u8>) -> Answer<'_> {
    if num_headers == 0 {
        return Answer::NoAnswer;
    }
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|v| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
        })
        .unwrap_or(0);
    if !Answer::readable(status, body_size) {
        return Answer::NoAnswer;
    }
    *body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    Answer::Http { status, body }
}

/// A per-VM random number (WASI random through std's hasher seeds).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.finish()
}

fn foreign_verify(args: &[u8]) -> Option<Vec<u8>> {
    hostcalls::call_foreign_function(signature::FUNCTION, Some(args))
        .ok()
        .flatten()
}

/// Is Envoy's `verify_signature` there and right about a known vector?
pub fn probe_verify_signature() -> bool {
    let (good, bad) = signature::probe_arguments();
    signature::probe_passed(
        foreign_verify(&good).as_deref(),
        foreign_verify(&bad).as_deref(),
    )
}

/// One RSA check by the host; `None` when it cannot answer.
pub fn host_verify(check: &signature::HostCheck) -> Option<bool> {
    foreign_verify(&signature::encode_arguments(check)).and_then(|r| signature::decode_result(&r))
}

/// What Envoy tells of a request beyond its headers, read as the core asks for it.
pub struct HostProperties;

impl HostProperties {
    fn get(paths: &[&[&str]]) -> Option<Vec<u8>> {
        paths
            .iter()
            .find_map(|p| hostcalls::get_property(p.to_vec()).ok().flatten())
    }

    fn text(paths: &[&[&str]]) -> Option<String> {
        Self::get(paths)
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
    }
}

impl Properties for HostProperties {
    // `xds.route_name` (Istio: the VirtualService http route name), else the older
    // `route_name`; `xds.virtual_host_name` (Envoy >= 1.33).
    fn route_name(&self) -> Option<String> {
        Self::text(&[&["xds", "route_name"], &["route_name"]])
    }

    fn virtual_host(&self) -> Option<String> {
        Self::text(&[&["xds", "virtual_host_name"]])
    }

    fn peer(&self) -> Option<String> {
        Self::text(&[&["source", "address"]])
    }

    fn tls(&self) -> bool {
        Self::get(&[&["connection", "tls_version"]]).is_some_and(|v| !v.is_empty())
    }

    fn certificate_sha256_hex(&self) -> Option<Vec<u8>> {
        Self::get(&[&["connection", "sha256_peer_certificate_digest"]])
    }
}
