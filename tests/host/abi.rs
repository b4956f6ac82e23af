//! The `env.proxy_*` imports (proxy-wasm ABI 0.2.1) with Envoy's semantics.
//!
//! Signatures follow proxy-wasm 0.2.5 `src/hostcalls.rs` (every pointer/size is an i32 on
//! wasm32; metric values are i64). Each import returns a status (types.rs / cpp-host
//! `WasmResult`). The SDK panics on any status it does not expect, so returning the status Envoy
//! returns is what makes the filter fail (or not) exactly as it would in Envoy.
//!
//! "Context" below is cpp-host's `contextOrEffectiveContext()`: the context of the running
//! callback, or the one chosen with `proxy_set_effective_context` (the SDK does that before
//! dispatching `on_http_call_response` to the HTTP context that issued the callout).

use super::mem::{decode_pairs, encode_pairs, give, read, write_u32, write_u64, Cx};
use super::{
    Callout, Deferred, Headers, HostState, LocalResponse, LogLevel, Status, StreamType, ROOT_ID,
};
use wasmtime::{Linker, Result};

const OK: i32 = Status::Ok as i32;
const NOT_FOUND: i32 = Status::NotFound as i32;
const BAD_ARGUMENT: i32 = Status::BadArgument as i32;
const INVALID_MEMORY: i32 = Status::InvalidMemoryAccess as i32;

/// Reads guest memory or returns `InvalidMemoryAccess` from the import.
macro_rules! mem {
    ($c:expr, $ptr:expr, $len:expr) => {
        match read($c, $ptr, $len) {
            Some(bytes) => bytes,
            None => return Ok(INVALID_MEMORY),
        }
    };
}

/// Which header map an operation targets (cpp-host `getMap` / `getConstMap`).
enum MapRef<'a> {
    /// The map exists now.
    Map(&'a mut Headers),
    /// A valid type whose map Envoy does not have at this moment (null pointer): reads of a
    /// value give `BadArgument` (or `NotFound` in the access-log phase), pairs give an empty
    /// list, writes give `BadArgument`.
    Absent { log_phase: bool },
    /// Map type out of range: `BadArgument` for everything.
    Invalid,
}

impl HostState {
    /// Map types: 0 request headers, 1 request trailers, 2 response headers, 3 response
    /// trailers, 4/5 gRPC metadata, 6 call-response headers, 7 call-response trailers.
    /// A stream's maps exist while Envoy holds them: from the callback that delivers them until
    /// the stream continues (returned Continue, or `proxy_continue_stream`). In `on_log` every
    /// map is readable but none is writable. Call-response maps exist only while
    /// `proxy_on_http_call_response` runs for a response that arrived (not for a failure).
    fn header_map(&mut self, map_type: i32, write: bool) -> MapRef<'_> {
        if !(0..=7).contains(&map_type) {
            return MapRef::Invalid;
        }
        if map_type >= 4 {
            return match (&mut self.call_response, map_type, write) {
                (Some(r), 6, false) => MapRef::Map(&mut r.headers),
                (Some(r), 7, false) => MapRef::Map(&mut r.trailers),
                _ => MapRef::Absent { log_phase: false },
            };
        }
        let Some(stream) = self.stream() else {
            return MapRef::Absent { log_phase: false };
        };
        let log_phase = stream.in_log;
        let slot = match map_type {
            0 => &mut stream.request_headers,
            1 => &mut stream.request_trailers,
            2 => &mut stream.response_headers,
            _ => &mut stream.response_trailers,
        };
        if (log_phase && !write) || (slot.open && !log_phase) {
            MapRef::Map(&mut slot.map)
        } else {
            MapRef::Absent { log_phase }
        }
    }
}

fn lower(key: &[u8]) -> String {
    String::from_utf8_lossy(key).to_ascii_lowercase()
}

pub(super) fn define(linker: &mut Linker<HostState>) -> Result<()> {
    let e = "env";

    // ---- Logging. Envoy logs under "wasm log <plugin>: msg"; level 0..=5 = trace..critical.
    linker.func_wrap(
        e,
        "proxy_log",
        |mut c: Cx<'_>, level: i32, ptr: i32, len: i32| {
            let Some(level) = LogLevel::from_i32(level) else {
                return Ok(BAD_ARGUMENT);
            };
            let msg = mem!(&mut c, ptr, len);
            c.data_mut()
                .log(level, String::from_utf8_lossy(&msg).into_owned());
            Ok(OK)
        },
    )?;
    // Envoy returns its own logger's level (default info); the test host defaults to trace.
    linker.func_wrap(e, "proxy_get_log_level", |mut c: Cx<'_>, out: i32| {
        let level = c.data().log_level as u32;
        if write_u32(&mut c, out, level) {
            OK
        } else {
            INVALID_MEMORY
        }
    })?;

    // ---- Time and timers. Wall clock in ns since the epoch (test controlled). A tick period
    // is per VM (root context); 0 disables it. Envoy fires proxy_on_tick(root) per period.
    linker.func_wrap(
        e,
        "proxy_get_current_time_nanoseconds",
        |mut c: Cx<'_>, out: i32| {
            let now = c.data().now_ns;
            if write_u64(&mut c, out, now) {
                OK
            } else {
                INVALID_MEMORY
            }
        },
    )?;
    linker.func_wrap(
        e,
        "proxy_set_tick_period_milliseconds",
        |mut c: Cx<'_>, ms: i32| {
            c.data_mut().tick_period_ms = ms as u32;
            OK
        },
    )?;

    // ---- Buffers: 0 request body, 1 response body, 4 call-response body, 6 VM configuration,
    // 7 plugin configuration (only during on_vm_start / on_configure), 8 call data.
    // Reads are clamped to the buffer; an empty read returns (0, 0).
    linker.func_wrap(
        e,
        "proxy_get_buffer_bytes",
        |mut c: Cx<'_>, kind: i32, start: i32, max: i32, ptr_ptr: i32, size_ptr: i32| {
            let st = c.data_mut();
            let data: Vec<u8> = match kind {
                0 => st
                    .stream()
                    .map(|s| s.request_body.clone())
                    .unwrap_or_default(),
                4 => match &st.call_response {
                    Some(r) => r.body.clone(),
                    None => return Ok(NOT_FOUND),
                },
                6 => st.vm_config.clone(),
                7 if st.configuring => st.plugin_config.clone(),
                7 => return Ok(NOT_FOUND),
                1..=8 => Vec::new(),
                _ => return Ok(BAD_ARGUMENT),
            };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start.checked_add(max).is_none() {
                return Ok(BAD_ARGUMENT);
            }
            let from = start.min(data.len());
            let to = (start + max).min(data.len());
            give(&mut c, &data[from..to], ptr_ptr, size_ptr)
        },
    )?;
    // Only the request body is writable (while the filter holds it): start 0 replaces the first
    // `size` bytes, start >= len appends, anything else is BadArgument (Envoy Buffer::copyFrom).
    linker.func_wrap(
        e,
        "proxy_set_buffer_bytes",
        |mut c: Cx<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
            let data = mem!(&mut c, ptr, len);
            if !(0..=8).contains(&kind) {
                return Ok(BAD_ARGUMENT);
            }
            let Some(stream) = c.data_mut().stream().filter(|s| kind == 0 && s.body_open) else {
                return Ok(BAD_ARGUMENT);
            };
            let body = &mut stream.request_body;
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            if start == 0 {
                body.splice(..size.min(body.len()), data);
            } else if start >= body.len() {
                body.extend(data);
            } else {
                return Ok(BAD_ARGUMENT);
            }
            Ok(OK)
        },
    )?;

    // ---- Header maps (types: see `header_map`). Keys are lower-cased like Envoy's
    // LowerCaseString; values are bytes. get returns the first value of a repeated header.
    linker.func_wrap(
        e,
        "proxy_get_header_map_value",
        |mut c: Cx<'_>, kind: i32, kptr: i32, klen: i32, ptr_ptr: i32, size_ptr: i32| {
            let key = lower(&mem!(&mut c, kptr, klen));
            let value = match c.data_mut().header_map(kind, false) {
                MapRef::Map(map) => map.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()),
                MapRef::Absent { log_phase: true } => None,
                MapRef::Absent { .. } | MapRef::Invalid => return Ok(BAD_ARGUMENT),
            };
            match value {
                Some(value) => give(&mut c, &value, ptr_ptr, size_ptr),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        e,
        "proxy_get_header_map_pairs",
        |mut c: Cx<'_>, kind: i32, ptr_ptr: i32, size_ptr: i32| {
            let bytes = match c.data_mut().header_map(kind, false) {
                MapRef::Map(map) if !map.is_empty() => encode_pairs(map),
                MapRef::Map(_) | MapRef::Absent { .. } => Vec::new(),
                MapRef::Invalid => return Ok(BAD_ARGUMENT),
            };
            give(&mut c, &bytes, ptr_ptr, size_ptr)
        },
    )?;
    linker.func_wrap(
        e,
        "proxy_set_header_map_pairs",
        |mut c: Cx<'_>, kind: i32, ptr: i32, len: i32| {
            let pairs = decode_pairs(&mem!(&mut c, ptr, len)).unwrap_or_default();
            let MapRef::Map(map) = c.data_mut().header_map(kind, true) else {
                return Ok(BAD_ARGUMENT);
            };
            *map = pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        e,
        "proxy_add_header_map_value",
        |mut c: Cx<'_>, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            let (key, value) = (lower(&mem!(&mut c, kptr, klen)), mem!(&mut c, vptr, vlen));
            let MapRef::Map(map) = c.data_mut().header_map(kind, true) else {
                return Ok(BAD_ARGUMENT);
            };
            map.push((key, value));
            Ok(OK)
        },
    )?;
    // Envoy's setCopy: drop every value of the key, then append the new one.
    linker.func_wrap(
        e,
        "proxy_replace_header_map_value",
        |mut c: Cx<'_>, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            let (key, value) = (lower(&mem!(&mut c, kptr, klen)), mem!(&mut c, vptr, vlen));
            let MapRef::Map(map) = c.data_mut().header_map(kind, true) else {
                return Ok(BAD_ARGUMENT);
            };
            map.retain(|(k, _)| *k != key);
            map.push((key, value));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        e,
        "proxy_remove_header_map_value",
        |mut c: Cx<'_>, kind: i32, kptr: i32, klen: i32| {
            let key = lower(&mem!(&mut c, kptr, klen));
            let MapRef::Map(map) = c.data_mut().header_map(kind, true) else {
                return Ok(BAD_ARGUMENT);
            };
            map.retain(|(k, _)| *k != key);
            Ok(OK)
        },
    )?;

    // ---- Properties. The path arrives as NUL-separated parts ("request\0url_path").
    // Lookup order: values the guest set on this stream (Envoy filter state), values set by the
    // test (`Vm::set_property`), then `request.{path,url_path,host,method,scheme,id}` derived from
    // the request headers while Envoy holds them. Missing: NotFound.
    linker.func_wrap(
        e,
        "proxy_get_property",
        |mut c: Cx<'_>, ptr: i32, len: i32, ptr_ptr: i32, size_ptr: i32| {
            let path = mem!(&mut c, ptr, len);
            match c.data_mut().property(&path) {
                Some(value) => give(&mut c, &value, ptr_ptr, size_ptr),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    // Only a stream has filter state to write to; on the root context Envoy says NotFound.
    linker.func_wrap(
        e,
        "proxy_set_property",
        |mut c: Cx<'_>, ptr: i32, len: i32, vptr: i32, vlen: i32| {
            let (path, value) = (mem!(&mut c, ptr, len), mem!(&mut c, vptr, vlen));
            match c.data_mut().stream() {
                Some(stream) => {
                    stream.properties.insert(path, value);
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;

    // ---- Shared data (shared by every VM with the same vm_id, i.e. every `Vm` given the same
    // `Shared`). get: NotFound when absent, else value + cas. set: cas 0 = unconditional; else it
    // must equal the stored cas (CasMismatch) unless the key is absent. Every write bumps cas.
    linker.func_wrap(
        e,
        "proxy_get_shared_data",
        |mut c: Cx<'_>, kptr: i32, klen: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| {
            let key = mem!(&mut c, kptr, klen);
            let entry = c
                .data()
                .shared
                .lock()
                .expect("shared data lock")
                .get_bytes(&key);
            let Some((value, cas)) = entry else {
                return Ok(NOT_FOUND);
            };
            let status = give(&mut c, &value, ptr_ptr, size_ptr)?;
            if status != OK || !write_u32(&mut c, cas_ptr, cas) {
                return Ok(INVALID_MEMORY);
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        e,
        "proxy_set_shared_data",
        |mut c: Cx<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| {
            let (key, value) = (mem!(&mut c, kptr, klen), mem!(&mut c, vptr, vlen));
            let mut shared = c.data().shared.lock().expect("shared data lock");
            Ok(shared.set_bytes(&key, &value, cas as u32) as i32)
        },
    )?;

    // ---- Stream control. Envoy applies these *after* the running callback returns (the host
    // records them here and `Vm` applies them). continue_stream(request) also drops Envoy's
    // pointers to the request headers/body/trailers immediately: mutate headers before resuming.
    // Stream types: 0 request, 1 response, 2 downstream (no-op), 3 upstream (Unimplemented).
    linker.func_wrap(e, "proxy_continue_stream", |mut c: Cx<'_>, kind: i32| {
        let st = c.data_mut();
        let ctx = st.ctx();
        let kind = match kind {
            0 => StreamType::Request,
            1 => StreamType::Response,
            2 => return OK,
            3 => return Status::Unimplemented as i32,
            _ => return BAD_ARGUMENT,
        };
        if let Some(stream) = st.stream() {
            stream.close_maps(kind);
            st.deferred.push(Deferred::Continue(ctx, kind));
        }
        OK
    })?;
    // Resets the stream (Envoy: resetStream, details "wasm_close_stream").
    linker.func_wrap(e, "proxy_close_stream", |mut c: Cx<'_>, kind: i32| {
        let st = c.data_mut();
        let ctx = st.ctx();
        match kind {
            0 | 1 => st.deferred.push(Deferred::Close(ctx)),
            2 | 3 => {}
            _ => return BAD_ARGUMENT,
        }
        OK
    })?;
    // The SDK sends empty details and grpc_status -1 (= no grpc-status).
    linker.func_wrap(
        e,
        "proxy_send_local_response",
        |mut c: Cx<'_>,
         status: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         grpc_status: i32| {
            let details = String::from_utf8_lossy(&mem!(&mut c, dptr, dlen)).into_owned();
            let body = mem!(&mut c, bptr, blen);
            let headers = decode_pairs(&mem!(&mut c, hptr, hlen)).unwrap_or_default();
            let headers = headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let st = c.data_mut();
            let ctx = st.ctx();
            let reply = LocalResponse {
                status: status as u32,
                details,
                body,
                headers,
                grpc_status,
            };
            st.deferred.push(Deferred::LocalReply(ctx, reply));
            Ok(OK)
        },
    )?;

    // ---- Contexts.
    linker.func_wrap(
        e,
        "proxy_set_effective_context",
        |mut c: Cx<'_>, id: i32| {
            let st = c.data_mut();
            if !st.context_exists(id as u32) {
                return BAD_ARGUMENT;
            }
            st.effective = id as u32;
            OK
        },
    )?;
    // Only meaningful for a root context whose proxy_on_done returned false (draining).
    linker.func_wrap(e, "proxy_done", |mut c: Cx<'_>| {
        let st = c.data_mut();
        if st.ctx() == ROOT_ID && st.root_draining {
            st.root_draining = false;
            st.root_done = true;
            OK
        } else {
            NOT_FOUND
        }
    })?;
    // Status of the last callout: (11 BrokenConnection, "reset") during the callback of a
    // failed callout; otherwise (0, "").
    linker.func_wrap(
        e,
        "proxy_get_status",
        |mut c: Cx<'_>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| {
            let (code, msg) = c.data().status.clone();
            if !write_u32(&mut c, code_ptr, code) {
                return Ok(INVALID_MEMORY);
            }
            give(&mut c, msg.as_bytes(), ptr_ptr, size_ptr)
        },
    )?;

    // ---- HTTP callouts. Issued on the root context (not cancelled with the stream).
    // `upstream` is a cluster name: unknown (not in `allow_clusters`) = BadArgument; `:method`,
    // `:path` and `:authority` are required (BadArgument); a non-empty body sets content-length;
    // timeout 0 = no timeout at all. The answer comes via `Vm::respond` / `Vm::fail_callout`.
    linker.func_wrap(
        e,
        "proxy_http_call",
        |mut c: Cx<'_>,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         tptr: i32,
         tlen: i32,
         timeout: i32,
         token_ptr: i32| {
            let cluster = String::from_utf8_lossy(&mem!(&mut c, uptr, ulen)).into_owned();
            let raw_headers = mem!(&mut c, hptr, hlen);
            let body = mem!(&mut c, bptr, blen);
            let trailers = decode_pairs(&mem!(&mut c, tptr, tlen)).unwrap_or_default();
            if !write_u32(&mut c, token_ptr, 0) {
                return Ok(INVALID_MEMORY);
            }
            // cpp-host reads malformed pairs as an empty list (which then lacks :path etc.).
            let headers = decode_pairs(&raw_headers).unwrap_or_default();
            let mut headers: Headers = headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let has = |name: &str| headers.iter().any(|(k, _)| k == name);
            let st = c.data_mut();
            if timeout < 0 || !st.allowed_clusters.contains(&cluster) {
                let why = format!("host: http_call to unknown cluster {cluster:?} -> BadArgument");
                st.log(LogLevel::Debug, why);
                return Ok(BAD_ARGUMENT);
            }
            if !(has(":method") && has(":path") && has(":authority")) {
                let why = "host: http_call without :method/:path/:authority -> BadArgument";
                st.log(LogLevel::Debug, why.into());
                return Ok(BAD_ARGUMENT);
            }
            if !body.is_empty() {
                headers.retain(|(k, _)| k != "content-length");
                headers.push(("content-length".into(), body.len().to_string().into_bytes()));
            }
            st.next_token += 1;
            let token = st.next_token;
            let timeout_ms = (timeout != 0).then_some(timeout as u32);
            st.outstanding.insert(token);
            st.callouts.push(Callout {
                token,
                cluster,
                headers,
                body,
                trailers,
                timeout_ms,
            });
            Ok(if write_u32(&mut c, token_ptr, token) {
                OK
            } else {
                INVALID_MEMORY
            })
        },
    )?;

    // ---- Metrics (Envoy stats "wasmcustom.<name>"). Types 0 counter, 1 gauge, 2 histogram;
    // the id's low 2 bits hold the type. Counters only go up (increment <= 0 is BadArgument);
    // record adds to a counter, sets a gauge, adds a histogram sample; histograms can't be read.
    linker.func_wrap(
        e,
        "proxy_define_metric",
        |mut c: Cx<'_>, kind: i32, ptr: i32, len: i32, id_ptr: i32| {
            let name = String::from_utf8_lossy(&mem!(&mut c, ptr, len)).into_owned();
            let Some(id) = c.data_mut().metrics.define(kind, name) else {
                return Ok(BAD_ARGUMENT);
            };
            Ok(if write_u32(&mut c, id_ptr, id) {
                OK
            } else {
                INVALID_MEMORY
            })
        },
    )?;
    linker.func_wrap(
        e,
        "proxy_increment_metric",
        |mut c: Cx<'_>, id: i32, offset: i64| {
            c.data_mut().metrics.increment(id as u32, offset) as i32
        },
    )?;
    linker.func_wrap(
        e,
        "proxy_record_metric",
        |mut c: Cx<'_>, id: i32, value: i64| {
            c.data_mut().metrics.record(id as u32, value as u64) as i32
        },
    )?;
    linker.func_wrap(
        e,
        "proxy_get_metric",
        |mut c: Cx<'_>, id: i32, out: i32| match c.data_mut().metrics.get(id as u32) {
            Ok(value) => {
                if write_u64(&mut c, out, value) {
                    OK
                } else {
                    INVALID_MEMORY
                }
            }
            Err(status) => status as i32,
        },
    )?;

    // ---- Foreign functions (Envoy registers e.g. verify_signature, compress, ...). By default
    // none exist (NotFound); a test can install one with `Vm::foreign_function`.
    linker.func_wrap(
        e,
        "proxy_call_foreign_function",
        |mut c: Cx<'_>, nptr: i32, nlen: i32, aptr: i32, alen: i32, ptr_ptr: i32, size_ptr: i32| {
            let name = String::from_utf8_lossy(&mem!(&mut c, nptr, nlen)).into_owned();
            let args = mem!(&mut c, aptr, alen);
            let Some(f) = c.data().foreign.clone() else {
                return Ok(NOT_FOUND);
            };
            match f(&name, &args) {
                Some(result) if ptr_ptr != 0 => give(&mut c, &result, ptr_ptr, size_ptr),
                Some(_) => Ok(OK),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    Ok(())
}

/// Imports Envoy provides that this host deliberately does not implement: calling one traps
/// with this message (so an unexpected use fails the test loudly).
pub(super) fn unimplemented(name: &str) -> Option<&'static str> {
    Some(match name {
        "proxy_register_shared_queue"
        | "proxy_resolve_shared_queue"
        | "proxy_enqueue_shared_queue"
        | "proxy_dequeue_shared_queue" => "shared queues are not implemented by the test host",
        "proxy_grpc_call" | "proxy_grpc_stream" | "proxy_grpc_send" | "proxy_grpc_cancel"
        | "proxy_grpc_close" => "gRPC callouts are not implemented by the test host",
        "proxy_get_header_map_size"
        | "proxy_get_buffer_status"
        | "proxy_get_configuration"
        | "proxy_continue_request"
        | "proxy_continue_response"
        | "proxy_clear_route_cache" => "this import is not implemented by the test host",
        _ => return None,
    })
}
