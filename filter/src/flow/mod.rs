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

use crate::host_api::Host;

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

/// `log` through the host: `log!(host, Warn, "...", args)`.
macro_rules! log {
    ($host:expr, $level:ident, $($arg:tt)+) => {
        $host.log(log::Level::$level, format_args!($($arg)+))
    };
}
pub(crate) use log;
