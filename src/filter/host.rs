//! Small helpers over proxy-wasm host calls that never panic on request-derived data.

use crate::keycloak::signature;
use crate::store::documents;
use crate::wire::http::Answer;
use crate::wire::http::HttpRequest;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};
use std::time::{Duration, UNIX_EPOCH};

/// Milliseconds since the epoch by the host's clock.
pub fn now_ms() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Dispatches a Keycloak request through the configured cluster.
/// `trace`: the trace context of the request the call is for (none for background fetches).
pub fn dispatch(
    cluster: &str,
    authority: &str,
    req: &HttpRequest,
    timeout_ms: u32,
    trace: &[(String, String)],
) -> Result<u32, Status> {
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", req.method),
        (":path", req.path.as_str()),
        (":authority", authority),
    ];
    for (k, v) in req.headers.iter().chain(trace) {
        headers.push((k.as_str(), v.as_str()));
    }
    let body = (!req.body.is_empty()).then_some(req.body.as_slice());
    hostcalls::dispatch_http_call(
        cluster,
        headers,
        body,
        vec![],
        Duration::from_millis(u64::from(timeout_ms.max(1))),
    )
}

/// Reads a callout's answer; the `:status` first (Envoy turns an unreachable cluster into a 503).
pub fn call_answer(num_headers: usize, body_size: usize, body: &mut Vec<u8>) -> (u16, bool) {
    if num_headers == 0 {
        return (0, false);
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
    if status == 0 || body_size > crate::wire::http::MAX_ANSWER_BYTES {
        return (0, false);
    }
    *body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    (status, true)
}

pub fn answer(status: u16, ok: bool, body: &[u8]) -> Answer<'_> {
    if ok {
        Answer::Http { status, body }
    } else {
        Answer::NoAnswer
    }
}

/// A one-line description safe for logs: no quotes, no control bytes, bounded.
pub fn loggable(bytes: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() || c == '"' { '?' } else { c })
        .take(200)
        .collect();
    s
}

/// A shared-data value and its CAS.
pub fn shared_get(key: &str) -> (Option<(u32, Vec<u8>)>, Option<u32>) {
    match hostcalls::get_shared_data(key) {
        Ok((Some(v), cas)) => (Some((cas.unwrap_or(0), v)), cas),
        Ok((None, cas)) => (None, cas),
        Err(_) => (None, None),
    }
}

pub fn shared_set(key: &str, value: &[u8]) {
    let _ = hostcalls::set_shared_data(key, Some(value), None);
}

/// Takes the fetch lease for `owner` (CAS). An absent key accepts any CAS in Envoy, so the value is
/// read back: of two VMs racing on a new key, the one whose value stayed wins.
pub fn take_lease(key: &str, owner: u64, now_ms: i64) -> bool {
    let (current, cas) = shared_get(key);
    if !documents::lease_takeable(current.as_ref().map(|(_, v)| v.as_slice()), owner, now_ms) {
        return false;
    }
    let value = documents::encode_lease(owner, now_ms + documents::LEASE_MS);
    if hostcalls::set_shared_data(key, Some(&value), cas).is_err() {
        return false;
    }
    matches!(shared_get(key).0, Some((_, v)) if v == value)
}

pub fn release_lease(key: &str, owner: u64) {
    if let (Some((_, v)), cas) = shared_get(key) {
        if documents::decode_lease(&v).is_some_and(|(o, _)| o == owner) {
            let _ = hostcalls::set_shared_data(key, Some(&documents::encode_lease(owner, 0)), cas);
        }
    }
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

/// Adds one to a little-endian u64 counter in shared data (CAS, a few tries); the new value.
/// A counter [`shared_increment`] keeps (0 when absent).
pub fn shared_counter(key: &str) -> u64 {
    counter_value(shared_get(key).0)
}

fn counter_value(value: Option<(u32, Vec<u8>)>) -> u64 {
    value
        .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
}

pub fn shared_increment(key: &str) -> Option<u64> {
    for _ in 0..4 {
        let (current, cas) = shared_get(key);
        let n = counter_value(current) + 1;
        if hostcalls::set_shared_data(key, Some(&n.to_le_bytes()), cas).is_ok() {
            return Some(n);
        }
    }
    None
}
