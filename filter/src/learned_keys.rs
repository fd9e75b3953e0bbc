//! What a worker keeps of the settler's JWKS (`settler.jwks`): the keys learned last and the
//! fetch's state. The fetching itself is `flow::jwks`; the worker verifies with
//! [`effective_keys`].

use std::rc::Rc;

use x402_protocol::token::KeySet;

/// A worker's JWKS fetching state.
#[derive(Debug, Default)]
pub(crate) struct JwksState {
    /// The fetch under way: (callout id, when it started, ms).
    pub(crate) in_flight: Option<(u32, u64)>,
    pub(crate) last_fetch_ms: Option<u64>,
    /// The keys of the last JWKS that could be read.
    pub(crate) learned: KeySet,
    pub(crate) failures_unlogged: u64,
    pub(crate) last_failure_log_ms: Option<u64>,
}

/// The keys a worker verifies with: `token_keys`, plus the learned ones under them.
pub(crate) fn effective_keys(configured: &KeySet, learned: &KeySet) -> Rc<KeySet> {
    Rc::new(configured.merged_under(learned))
}
