//! What the request flow needs from the proxy, as a trait: `host.rs` implements it over
//! proxy-wasm, the tests over a fake that records every call. Methods take `&self`: the
//! real host is stateless from the filter's side, and the flow keeps a read-only view of
//! the request headers alive while it edits them.
//!
//! Calls that can fail return `Result` (a host error is logged by the flow, never a
//! panic); reads that fail return nothing, as the filter has always treated them.

use std::fmt;
use std::time::Duration;

use log::Level;

use crate::answer::HttpAnswer;

/// A host call that failed: the proxy-wasm status it returned, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostError(pub(crate) u32);

impl fmt::Display for HostError {
    /// The status's proxy-wasm name, as the filter's logs have always shown it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("NotFound"),
            2 => f.write_str("BadArgument"),
            3 => f.write_str("SerializationFailure"),
            4 => f.write_str("ParseFailure"),
            7 => f.write_str("Empty"),
            8 => f.write_str("CasMismatch"),
            10 => f.write_str("InternalFailure"),
            s => write!(f, "status {s}"),
        }
    }
}

pub(crate) trait Host {
    /// Every request header in one host call, serialized as the host lays them out (see
    /// [`crate::headers`]); `None` if the host cannot list them (the flow then falls back to
    /// [`Host::request_header`], one call per name).
    fn request_header_map(&self) -> Option<Vec<u8>>;
    /// One request header (first of that name), bytes that are not UTF-8 as U+FFFD.
    fn request_header(&self, name: &str) -> Option<String>;
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    fn remove_request_header(&self, name: &str) -> Result<(), HostError>;
    fn set_response_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    /// One response header of the upstream's answer (`:status` included).
    fn response_header(&self, name: &str) -> Option<String>;
    /// The first `size` bytes of the buffered request body (empty if unreadable).
    fn request_body(&self, size: usize) -> Vec<u8>;
    /// The name of the route Envoy chose for the request (the `xds.route_name` property);
    /// `None` when it has none or cannot be read.
    fn route_name(&self) -> Option<String>;

    /// Starts an HTTP call to `cluster`; its answer arrives through the flow's
    /// `on_callout_response`.
    fn dispatch_callout(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// The headers of the callout's answer, serialized as a header map (empty when the call
    /// failed: Envoy then answers with no headers at all).
    fn callout_response_headers(&self) -> Vec<u8>;
    /// The first `size` bytes of the callout's answer body.
    fn callout_response_body(&self, size: usize) -> Vec<u8>;

    /// Answers the request locally instead of forwarding it.
    fn send_reply(&self, answer: &HttpAnswer) -> Result<(), HostError>;
    /// Lets a held request continue to the upstream.
    fn resume_request(&self) -> Result<(), HostError>;
    /// Lets a held response continue to the client.
    fn resume_response(&self) -> Result<(), HostError>;
    /// Makes `context_id` the request the next calls act on (the root's timer answering a
    /// request that is not its own).
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError>;

    /// Time since the Unix epoch; zero when the host has no clock.
    fn now(&self) -> Duration;
    /// A value shared by every worker of the plugin, with its compare-and-swap version.
    fn shared_data_get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores a shared value if its version is still `cas` (`None`: unconditionally).
    fn shared_data_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError>;

    /// Defines a counter at configure time; its id is what [`Host::increment_counter`] takes.
    fn define_counter(&self, name: &str) -> Result<u32, HostError>;
    fn increment_counter(&self, id: u32);
    /// Asks for the root's `on_tick` every `period`.
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError>;

    fn log(&self, level: Level, message: fmt::Arguments<'_>);
}
