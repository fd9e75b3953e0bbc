//! The root context's timer: refreshes the revocation list (see [`super::revocation`]) and
//! the settler's keys (see [`super::jwks`]), and
//! answers the token-endpoint requests whose body is past its deadline, so none hangs (see
//! [`crate::pending`]).

use super::log;
use super::worker::Worker;
use crate::host_api::Host;
use crate::pending;

/// The root's `on_tick`, for the worker's pending bodies at the host's current time.
// Natively only the tests call it (host.rs is wasm only).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn on_tick(worker: &Worker, host: &impl Host) {
    super::revocation::on_tick(worker, host);
    super::jwks::on_tick(worker, host);
    // The clock is read again only when something waits.
    let expired = match worker.pending.try_borrow_mut() {
        Ok(mut p) if !p.is_empty() => p.take_expired(super::now_ms(host)),
        _ => return,
    };
    for p in expired {
        if host.set_effective_context(p.context_id).is_err() {
            continue;
        }
        if p.body_seen {
            log!(
                host,
                Warn,
                "x402: token endpoint: request body incomplete after {:?}",
                worker.cfg.body_timeout
            );
        } else {
            log!(host, Error, "x402: token endpoint: the request body never reached the filter; set allow_on_headers_stop_iteration: true on the Envoy wasm plugin");
        }
        if let Err(e) = host.send_reply(&pending::timeout_answer(&p)) {
            log!(host, Warn, "x402: cannot answer a timed-out request: {e}");
        }
    }
}
