//! What a worker keeps between requests: the configuration, the counter ids, the token
//! cache and the token-endpoint requests still reading their body. One per worker (root
//! context), shared by every request on it.

use std::cell::RefCell;
use std::time::Duration;

use super::log;
use crate::cache::TokenCache;
use crate::config::{self, FilterConfig};
use crate::host_api::Host;
use crate::metrics::Counter;
use crate::pending::PendingBodies;
use crate::revocation::Revocations;

/// How often the root's timer looks for token-endpoint bodies past their deadline.
pub(crate) const TICK: Duration = Duration::from_millis(250);

pub(crate) struct Worker {
    pub(crate) cfg: FilterConfig,
    /// Host id of each counter, in [`Counter::all`] order (`None`: could not be defined).
    counters: Vec<Option<u32>>,
    cache: RefCell<TokenCache>,
    /// Token-endpoint requests still reading their body (answered by `on_tick` when late).
    pub(crate) pending: RefCell<PendingBodies>,
    /// The revocation list this worker applies (refreshed by `on_tick`).
    pub(crate) revocations: RefCell<Revocations>,
}

impl Worker {
    /// The root's `on_configure`: `None` (and the error logged) when the configuration is
    /// invalid; the worker's requests are then refused with 503.
    // Natively only the tests call it (host.rs is wasm only).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn configure(host: &impl Host, config: &[u8]) -> Option<Worker> {
        match config::parse(config) {
            Ok(cfg) => {
                log!(
                    host,
                    Info,
                    "x402: configured {} priced route(s), {} token key(s), settler cluster {:?}",
                    cfg.routes.len(),
                    cfg.keys.len(),
                    cfg.settler.cluster
                );
                let worker = Worker::new(host, cfg);
                // The tick also picks up and fetches the revocation list.
                let tick = TICK.min(worker.cfg.revocation.interval);
                if let Err(e) = host.set_tick_period(tick) {
                    log!(
                        host,
                        Warn,
                        "x402: no timer ({e}): token endpoint bodies have no deadline, revoked tokens are not learned"
                    );
                }
                Some(worker)
            }
            Err(e) => {
                log!(host, Error, "{e}");
                None
            }
        }
    }

    /// A worker for `cfg`, with its counters defined on `host`.
    pub(crate) fn new(host: &impl Host, cfg: FilterConfig) -> Worker {
        let counters = Counter::all()
            .into_iter()
            .map(|c| {
                let name = c.name();
                match host.define_counter(&name) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        log!(host, Warn, "x402: cannot define metric {name}: {e}");
                        None
                    }
                }
            })
            .collect();
        Worker {
            cache: RefCell::new(TokenCache::new(cfg.token_cache_size)),
            cfg,
            counters,
            pending: RefCell::new(PendingBodies::default()),
            revocations: RefCell::new(Revocations::default()),
        }
    }

    pub(crate) fn count(&self, host: &impl Host, c: Counter) {
        if let Some(Some(id)) = self.counters.get(c.index()) {
            host.increment_counter(*id);
        }
    }

    /// Whether the settler revoked the token with this `jti` (its payment failed).
    pub(crate) fn is_revoked(&self, jti: &str) -> bool {
        self.revocations
            .try_borrow()
            .map(|r| r.list.is_revoked(jti))
            .unwrap_or(false)
    }

    /// Runs `f` on the worker's token cache, or on an empty scratch cache (nothing kept)
    /// in the unexpected case that the cache is already borrowed.
    pub(crate) fn with_cache<R>(&self, f: impl FnOnce(&mut TokenCache) -> R) -> R {
        match self.cache.try_borrow_mut() {
            Ok(mut cache) => f(&mut cache),
            Err(_) => f(&mut TokenCache::new(0)),
        }
    }
}
