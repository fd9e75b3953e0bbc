//! The proxy-wasm glue, built for wasm only: implements [`Host`] and forwards the
//! proxy-wasm callbacks to [`crate::flow`], which holds every decision. The only module
//! that names `proxy_wasm` (the SDK: entry point, context traits, callout dispatch).
//!
//! Host calls go through [`crate::abi`], whose wrappers turn every host status into a
//! `Result` (the SDK's `hostcalls` panic on a status they do not expect, and the SDK's
//! trait helpers unwrap), so no host error makes a request path panic. Two SDK paths are
//! left as they are, because the SDK must route callout answers back to their request:
//! `dispatch_http_call` (it panics only on a status other than the two failures Envoy's
//! `httpCall` can return, which it maps to `Err`) and the SDK's dispatch of a callout answer
//! (it expects the token id it registered itself). The request header map is read raw, once
//! per request, and looked up in place by the flow.

use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use log::Level;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::abi;
use crate::answer::HttpAnswer;
use crate::flow::request::Request;
use crate::flow::worker::Worker;
use crate::flow::{self, jwks, revocation, tick};
use crate::headers;
use crate::host_api::{Host, HostError};

proxy_wasm::main! {{
    // Installs the SDK's logger and its panic hook (which logs a panic before the abort).
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { worker: None }) });
}}

/// The proxy-wasm host: stateless on the filter's side, every call is an import.
struct ProxyWasm;

impl Host for ProxyWasm {
    fn request_header_map(&self) -> Option<Vec<u8>> {
        match abi::header_map(abi::REQUEST_HEADERS) {
            Ok(buf) => Some(buf),
            Err(e) => {
                flow::log!(self, Warn, "x402: cannot list request headers: {}", e.0);
                None
            }
        }
    }
    fn request_header(&self, name: &str) -> Option<String> {
        abi::header(abi::REQUEST_HEADERS, name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        abi::set_header(abi::REQUEST_HEADERS, name, value)
    }
    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        abi::remove_header(abi::REQUEST_HEADERS, name)
    }
    fn set_response_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        abi::set_header(abi::RESPONSE_HEADERS, name, value)
    }
    fn response_header(&self, name: &str) -> Option<String> {
        abi::header(abi::RESPONSE_HEADERS, name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }
    fn request_body(&self, size: usize) -> Vec<u8> {
        abi::buffer(abi::REQUEST_BODY, size)
    }
    fn route_name(&self) -> Option<String> {
        // A plain string property (not a serialized protobuf): one host call, no decoding.
        abi::property(abi::XDS_ROUTE_NAME)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
    fn dispatch_callout(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        // Through the SDK, which must register the callout to route its answer back to this
        // request. It returns an error for what Envoy reports (`BadArgument` for an unknown
        // cluster, `InternalFailure`); Envoy's `httpCall` has no other failure status.
        hostcalls::dispatch_http_call(cluster, headers, Some(body), vec![], timeout)
            .map_err(|s| HostError(s as u32))
    }
    fn callout_response_headers(&self) -> Vec<u8> {
        abi::header_map(abi::CALLOUT_RESPONSE_HEADERS).unwrap_or_default()
    }
    fn callout_response_body(&self, size: usize) -> Vec<u8> {
        abi::buffer(abi::CALLOUT_RESPONSE_BODY, size)
    }
    fn send_reply(&self, a: &HttpAnswer) -> Result<(), HostError> {
        let headers = headers::serialize(a.headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        abi::send_reply(a.status, &headers, &a.body)
    }
    fn resume_request(&self) -> Result<(), HostError> {
        abi::resume_request()
    }
    fn resume_response(&self) -> Result<(), HostError> {
        abi::resume_response()
    }
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        abi::set_effective_context(context_id)
    }
    fn now(&self) -> Duration {
        abi::now_nanos()
            .map(Duration::from_nanos)
            .unwrap_or_default()
    }
    fn shared_data_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        abi::shared_data(key)
    }
    fn shared_data_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        abi::set_shared_data(key, value, cas.unwrap_or(0))
    }
    fn define_counter(&self, name: &str) -> Result<u32, HostError> {
        abi::define_counter(name)
    }
    fn increment_counter(&self, id: u32) {
        let _ = abi::increment_counter(id);
    }
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        abi::set_tick_period_ms(u32::try_from(period.as_millis()).unwrap_or(u32::MAX))
    }
    fn log(&self, level: Level, message: fmt::Arguments<'_>) {
        // The SDK's logger would unwrap the host's status; the levels are the ABI's.
        let level = match level {
            Level::Error => 4,
            Level::Warn => 3,
            Level::Info => 2,
            Level::Debug | Level::Trace => return,
        };
        abi::log(level, &message.to_string());
    }
}

/// The root context: one per worker.
struct Root {
    worker: Option<Rc<Worker>>,
}

impl Context for Root {
    /// The answer to one of the root's fetches (dispatched from `on_tick`): the JWKS, or
    /// the revocation list.
    fn on_http_call_response(&mut self, id: u32, _headers: usize, body: usize, _trailers: usize) {
        if let Some(worker) = &self.worker {
            if jwks::owns_callout(worker, id) {
                jwks::on_response(worker, &ProxyWasm, body);
            } else {
                revocation::on_response(worker, &ProxyWasm, body);
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let config = abi::buffer(abi::PLUGIN_CONFIGURATION, plugin_configuration_size);
        self.worker = Worker::configure(&ProxyWasm, &config).map(Rc::new);
        self.worker.is_some()
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http(Request::new(
            context_id,
            self.worker.clone(),
        ))))
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            tick::on_tick(worker, &ProxyWasm);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// An HTTP context: one per request.
struct Http(Request);

fn action(a: flow::Action) -> Action {
    match a {
        flow::Action::Continue => Action::Continue,
        flow::Action::Pause => Action::Pause,
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, _id: u32, _headers: usize, body: usize, _trailers: usize) {
        self.0.on_callout_response(&ProxyWasm, body);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done();
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_headers(&ProxyWasm, end_of_stream))
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_body(&ProxyWasm, size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        action(self.0.on_request_trailers(&ProxyWasm))
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(&ProxyWasm))
    }

    fn on_http_response_body(&mut self, _size: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_response_body_or_trailers())
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        action(self.0.on_response_body_or_trailers())
    }
}
