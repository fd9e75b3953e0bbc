//! The proxy-wasm ABI (v0.2.1) imports the filter calls directly, built for wasm only.
//!
//! The SDK's `hostcalls` return `Result` but still panic on any status they do not expect
//! (a panic aborts the whole VM, i.e. every request on the worker). These wrappers turn
//! every status but `Ok` into an error instead. Arguments and statuses are plain `u32`: a
//! status the host invents must not become an invalid Rust enum value.
//!
//! Buffers the host returns were allocated through the SDK's `proxy_on_memory_allocate`
//! (a `Vec<u8>` of exactly that capacity) and are handed over to the filter.

use std::ptr::{null, null_mut};

use crate::host_api::HostError;

// Enum values of the ABI.
pub(crate) const REQUEST_HEADERS: u32 = 0;
pub(crate) const RESPONSE_HEADERS: u32 = 2;
pub(crate) const CALLOUT_RESPONSE_HEADERS: u32 = 6;
pub(crate) const REQUEST_BODY: u32 = 0;
pub(crate) const CALLOUT_RESPONSE_BODY: u32 = 4;
pub(crate) const PLUGIN_CONFIGURATION: u32 = 7;
const STREAM_HTTP_REQUEST: u32 = 0;
const STREAM_HTTP_RESPONSE: u32 = 1;
/// The property path `xds.route_name` as the ABI takes it: segments separated by NUL.
pub(crate) const XDS_ROUTE_NAME: &[u8] = b"xds\0route_name";
const METRIC_COUNTER: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

fn ok(status: u32) -> Result<(), HostError> {
    match status {
        0 => Ok(()),
        s => Err(HostError(s)),
    }
}

/// Takes over a buffer the host allocated in this module's memory.
///
/// SAFETY: `data` is null or points to `size` bytes the host allocated through
/// `proxy_on_memory_allocate` for this call, owned by no one else.
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

pub(crate) fn log(level: u32, message: &str) {
    // SAFETY: the host only reads `message` during the call.
    unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

pub(crate) fn now_nanos() -> Result<u64, HostError> {
    let mut t = 0u64;
    // SAFETY: the host writes one u64.
    ok(unsafe { proxy_get_current_time_nanoseconds(&mut t) }).map(|_| t)
}

pub(crate) fn set_tick_period_ms(period: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// The first `max` bytes of a buffer; empty when the host has none (or cannot say).
pub(crate) fn buffer(kind: u32, max: usize) -> Vec<u8> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: see `take`; on an error status nothing was allocated.
    unsafe {
        match proxy_get_buffer_bytes(kind, 0, max, &mut data, &mut size) {
            0 => take(data, size),
            _ => Vec::new(),
        }
    }
}

/// A header map, serialized as the host lays it out (see [`crate::headers`]).
pub(crate) fn header_map(map: u32) -> Result<Vec<u8>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: see `take`.
    unsafe { ok(proxy_get_header_map_pairs(map, &mut data, &mut size)).map(|_| take(data, size)) }
}

/// A header's value; `None` when absent (or unreadable).
pub(crate) fn header(map: u32, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: see `take`; the host only reads `name` during the call.
    unsafe {
        match proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) {
            0 => Some(take(data, size)),
            _ => None,
        }
    }
}

/// A property's value (`path`: NUL-separated segments); `None` when absent (or unreadable).
pub(crate) fn property(path: &[u8]) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: see `take`; the host only reads `path` during the call.
    unsafe {
        match proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) {
            0 => Some(take(data, size)),
            _ => None,
        }
    }
}

pub(crate) fn set_header(map: u32, name: &str, value: &str) -> Result<(), HostError> {
    let (n, v) = (name.as_bytes(), value.as_bytes());
    // SAFETY: the host only reads `name` and `value` during the call.
    ok(unsafe { proxy_replace_header_map_value(map, n.as_ptr(), n.len(), v.as_ptr(), v.len()) })
}

pub(crate) fn remove_header(map: u32, name: &str) -> Result<(), HostError> {
    // SAFETY: the host only reads `name` during the call.
    ok(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

pub(crate) fn resume_request() -> Result<(), HostError> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

pub(crate) fn resume_response() -> Result<(), HostError> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_continue_stream(STREAM_HTTP_RESPONSE) })
}

/// A local reply; `headers` serialized as a header map.
pub(crate) fn send_reply(status: u32, headers: &[u8], body: &[u8]) -> Result<(), HostError> {
    // SAFETY: the host only reads the buffers during the call.
    ok(unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub(crate) fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_set_effective_context(context_id) })
}

pub(crate) fn define_counter(name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: the host reads `name` and writes one u32.
    ok(unsafe { proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) })
        .map(|_| id)
}

pub(crate) fn increment_counter(id: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_increment_metric(id, 1) })
}

/// A shared value and its compare-and-swap version; `None` when absent (or unreadable).
pub(crate) fn shared_data(key: &str) -> Option<(Vec<u8>, u32)> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: see `take`; the host only reads `key` during the call.
    unsafe {
        match proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
            0 => Some((take(data, size), cas)),
            _ => None,
        }
    }
}

/// Stores a shared value if its version is still `cas` (0: unconditionally).
pub(crate) fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: the host only reads the buffers during the call.
    ok(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}
