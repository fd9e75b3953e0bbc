//! The per-request flow, written against the [`Host`] trait (`crate::host_api`) so it runs
//! (and is tested) natively: the state machine of every request ([`request`]), what the worker keeps
//! between requests ([`worker`]), the root's timer ([`tick`]), the revocation list fetched on it ([`revocation`]) and the settler's keys ([`jwks`]). `host.rs` only forwards the
//! proxy-wasm callbacks here and implements [`Host`].

pub(crate) mod jwks;
pub(crate) mod request;
mod request_headers;
mod response;
pub(crate) mod revocation;
pub(crate) mod tick;
pub(crate) mod worker;

#[cfg(test)]
mod tests;

use crate::headers::HeaderPairs;
use crate::host_api::Host;
use crate::token_endpoint::SettlerReply;

/// What a request callback tells the host: go on with the request, or hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Continue,
    Pause,
}

fn now_ms(host: &impl Host) -> u64 {
    host.now().as_millis() as u64
}

/// No clock means time zero, when no token is valid yet: fail closed.
fn now_secs(host: &impl Host) -> i64 {
    host.now().as_secs() as i64
}

/// The settler's answer to a callout (status, headers as text with bytes that are not UTF-8
/// as U+FFFD, `body_size` bytes of body), read the same way for every kind of callout: token requests, revocation fetches, JWKS fetches.
fn settler_reply(host: &impl Host, body_size: usize) -> SettlerReply {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let headers: Vec<(String, String)> = HeaderPairs::parse(host.callout_response_headers())
        .map(|m| m.iter().map(|(n, v)| (text(n), text(v))).collect())
        .unwrap_or_default();
    let body = if body_size > 0 {
        host.callout_response_body(body_size)
    } else {
        Vec::new()
    };
    SettlerReply::from_headers(&headers, body)
}

/// Why a timer fetch from the settler (revocations, JWKS) did not answer 200, for the log.
fn not_ok_reason(status: Option<u32>) -> String {
    match status {
        None => "no answer from the settler (timeout or connection failure)".to_string(),
        Some(s) => format!("the settler answered HTTP {s}"),
    }
}

/// `log` through the host: `log!(host, Warn, "...", args)`.
macro_rules! log {
    ($host:expr, $level:ident, $($arg:tt)+) => {
        $host.log(log::Level::$level, format_args!($($arg)+))
    };
}
pub(crate) use log;
