//! The stream-changing host calls, without the SDK's panics.
//!
//! proxy-wasm's Rust SDK panics on any status it does not expect, and a panic aborts the whole VM
//! (every request on the worker then fails). Envoy refuses some of these calls in states a filter
//! reaches legitimately: request headers cannot be changed once they went on (a body read for
//! claims), a stream may be gone when a callout answers. Here a refusal is a `false`.

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

const OK: u32 = 0;
const REQUEST_HEADERS: u32 = 0;
const REQUEST_TRAILERS: u32 = 1;
const STREAM_REQUEST: u32 = 0;

/// The request's headers (or trailers) as the host serialized them (see `wire::pairs`), in one
/// buffer the guest owns; `None` when Envoy refuses (the SDK's getter panics there).
pub fn request_map(trailers: bool) -> Option<Vec<u8>> {
    let map_type = if trailers {
        REQUEST_TRAILERS
    } else {
        REQUEST_HEADERS
    };
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: the host writes a pointer and a length; the bytes were allocated through this
    // module's `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), so they are
    // this VM's to own and free, as the SDK's own getter does.
    unsafe {
        if proxy_get_header_map_pairs(map_type, &mut data, &mut size) != OK {
            return None;
        }
        if data.is_null() {
            return Some(Vec::new());
        }
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// Removes a request trailer; false when Envoy refuses.
pub fn remove_request_trailer(name: &str) -> bool {
    // SAFETY: as above.
    unsafe { proxy_remove_header_map_value(REQUEST_TRAILERS, name.as_ptr(), name.len()) == OK }
}

/// Sets (or with `None` removes) a request header; false when Envoy refuses.
pub fn set_request_header(name: &str, value: Option<&str>) -> bool {
    // SAFETY: pointers and lengths come from live slices; the host copies them.
    unsafe {
        match value {
            Some(v) => {
                proxy_replace_header_map_value(
                    REQUEST_HEADERS,
                    name.as_ptr(),
                    name.len(),
                    v.as_ptr(),
                    v.len(),
                ) == OK
            }
            None => proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len()) == OK,
        }
    }
}

/// Lets a paused request go on.
pub fn continue_request() -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_continue_stream(STREAM_REQUEST) == OK }
}

/// Sets a stream property (Envoy filter state `wasm.<name>`).
pub fn set_property(path: &[&str], value: &[u8]) -> bool {
    let serialized = path.join("\0");
    // SAFETY: as above.
    unsafe {
        proxy_set_property(
            serialized.as_ptr(),
            serialized.len(),
            value.as_ptr(),
            value.len(),
        ) == OK
    }
}

/// Answers the request locally; with a gRPC status, in gRPC's form (Envoy: HTTP 200 with
/// `grpc-status`, and `body` as `grpc-message`).
pub fn send_response(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    grpc_status: Option<u8>,
) -> bool {
    let map = crate::wire::pairs::encode(headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
    // SAFETY: as above.
    unsafe {
        proxy_send_local_response(
            u32::from(status),
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            grpc_status.map_or(-1, i32::from),
        ) == OK
    }
}
