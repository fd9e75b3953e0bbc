//! What a worker keeps between requests: the configuration, the counter ids, the token
//! cache and the token-endpoint requests still reading their body. One per worker (root
//! context), shared by every request on it. Token verdicts go through three levels: the
//! worker's cache, the table all workers share (`shared_tokens`, in proxy-wasm shared
//! data), and only then a signature check.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use x402_protocol::challenge::Reason;
use x402_protocol::token::KeySet;

use super::log;
use crate::auth::{self, SharedVerdicts, Source, TokenCheck};
use crate::cache::TokenCache;
use crate::config::{self, FilterConfig};
use crate::grant::Grant;
use crate::host_api::Host;
use crate::learned_keys::{effective_keys, JwksState};
use crate::metrics::{Counter, RouteCounter};
use crate::pending::PendingBodies;
use crate::revocation::Revocations;
use crate::routes::Route;
use crate::shared_tokens::SharedTokens;

/// How often the root's timer looks for token-endpoint bodies past their deadline.
pub(crate) const TICK: Duration = Duration::from_millis(250);

pub(crate) struct Worker {
    pub(crate) cfg: FilterConfig,
    /// Host id of each counter, in [`Counter::all`] order (`None`: could not be defined).
    counters: Vec<Option<u32>>,
    /// Host ids of the per-route counters: per route (config order), in
    /// [`RouteCounter::ALL`] order.
    route_counters: Vec<Vec<Option<u32>>>,
    cache: RefCell<TokenCache>,
    /// Where this worker's verdicts meet the other workers'.
    shared: SharedTokens,
    /// Token-endpoint requests still reading their body (answered by `on_tick` when late).
    pub(crate) pending: RefCell<PendingBodies>,
    /// The revocation list this worker applies (refreshed by `on_tick`).
    pub(crate) revocations: RefCell<Revocations>,
    /// The keys tokens are verified with: `token_keys`, plus those learned from the
    /// settler's JWKS when `settler.jwks` is set (replaced whole by `jwks::on_response`).
    keys: RefCell<Rc<KeySet>>,
    /// The JWKS fetch (`settler.jwks`).
    pub(crate) jwks: RefCell<JwksState>,
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
                // The tick also picks up and fetches the revocation list and the JWKS.
                let mut tick = TICK.min(worker.cfg.revocation.interval);
                if let Some(j) = &worker.cfg.settler.jwks {
                    tick = tick.min(j.interval);
                }
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
        let define = |name: String| match host.define_counter(&name) {
            Ok(id) => Some(id),
            Err(e) => {
                log!(host, Warn, "x402: cannot define metric {name}: {e}");
                None
            }
        };
        let counters = Counter::all()
            .into_iter()
            .map(|c| define(c.name()))
            .collect();
        let route_counters = (0..cfg.routes.len())
            .filter_map(|i| cfg.routes.get(i))
            .map(|r| {
                RouteCounter::ALL
                    .iter()
                    .map(|c| define(c.name(&r.name)))
                    .collect()
            })
            .collect();
        Worker {
            route_counters,
            cache: RefCell::new(TokenCache::new(cfg.token_cache_size)),
            shared: SharedTokens::new(&cfg.settler.cluster, &cfg.keys, cfg.shared_token_slots),
            keys: RefCell::new(effective_keys(&cfg.keys, &KeySet::new())),
            jwks: RefCell::new(JwksState::default()),
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

    /// Counts `c` for the route at `route` (config order); no-op for an unknown index.
    pub(crate) fn count_route(&self, host: &impl Host, c: RouteCounter, route: usize) {
        if let Some(Some(id)) = self
            .route_counters
            .get(route)
            .and_then(|r| r.get(c.index()))
        {
            host.increment_counter(*id);
        }
    }

    /// Whether the settler revoked the token with this `jti` (its payment failed).
    /// The keys tokens are verified with now (see [`Worker::keys`]'s field).
    pub(crate) fn keys(&self) -> Rc<KeySet> {
        match self.keys.try_borrow() {
            Ok(k) => k.clone(),
            Err(_) => Rc::new(self.cfg.keys.clone()),
        }
    }

    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn set_keys(&self, keys: Rc<KeySet>) {
        if let Ok(mut k) = self.keys.try_borrow_mut() {
            *k = keys;
        }
    }

    pub(crate) fn is_revoked(&self, jti: &str) -> bool {
        self.revocations
            .try_borrow()
            .map(|r| r.list.is_revoked(jti))
            .unwrap_or(false)
    }

    /// Runs `f` on the worker's token cache, or on an empty scratch cache (nothing kept)
    /// in the unexpected case that the cache is already borrowed.
    fn with_cache<R>(&self, f: impl FnOnce(&mut TokenCache) -> R) -> R {
        match self.cache.try_borrow_mut() {
            Ok(mut cache) => f(&mut cache),
            Err(_) => f(&mut TokenCache::new(0)),
        }
    }

    /// Checks the `Authorization` header for `route` at `now` (see [`auth::check_token`]),
    /// through the worker's cache and the shared table; counts where the verdict came from.
    pub(crate) fn check_token(
        &self,
        host: &impl Host,
        route: &Route,
        authorization: Option<&str>,
        now: i64,
    ) -> TokenCheck {
        let shared = HostShared { worker: self, host };
        let keys = self.keys();
        let check = self.with_cache(|cache| {
            auth::check_token(
                &keys,
                self.cfg.clock_leeway_secs,
                cache,
                &shared,
                route,
                authorization,
                now,
            )
        });
        if let Some(source) = check.source {
            self.count_source(host, source);
        }
        check
    }

    /// What a token the settler just minted grants, checked once (see
    /// `decision::settled_identity` for why) and then kept in the worker's cache and the
    /// shared table: the client's first use, on whichever worker, checks no signature.
    pub(crate) fn minted(
        &self,
        host: &impl Host,
        token: &str,
        now: i64,
    ) -> Result<Rc<Grant>, Reason> {
        let shared = HostShared { worker: self, host };
        let keys = self.keys();
        let (verdict, source) = self.with_cache(|cache| {
            auth::verdict(
                &keys,
                self.cfg.clock_leeway_secs,
                cache,
                &shared,
                token,
                now,
            )
        });
        if source == Source::Signature {
            self.count(host, Counter::SignatureChecks);
        }
        verdict
    }

    fn count_source(&self, host: &impl Host, source: Source) {
        match source {
            Source::Cache => self.count(host, Counter::CacheHits),
            Source::Shared => {
                self.count(host, Counter::CacheMisses);
                self.count(host, Counter::SharedHits);
            }
            Source::Signature => {
                self.count(host, Counter::CacheMisses);
                self.count(host, Counter::SignatureChecks);
            }
            Source::Unverifiable => self.count(host, Counter::CacheMisses),
        }
    }
}

/// The shared table over the host's shared data: reads and writes are host calls, a write
/// is unconditional (two workers storing at once: the last one wins the slot; a reader
/// compares the whole token, so a race is at worst a miss).
struct HostShared<'a, H> {
    worker: &'a Worker,
    host: &'a H,
}

impl<H: Host> SharedVerdicts for HostShared<'_, H> {
    fn find(&self, token: &str) -> Option<Grant> {
        let key = self.worker.shared.slot_key(token)?;
        let (entry, _) = self.host.shared_data_get(&key)?;
        SharedTokens::grant_in(&entry, token)
    }

    fn publish(&self, token: &str, grant: &Grant) {
        let Some(key) = self.worker.shared.slot_key(token) else {
            return;
        };
        if let Err(e) = self
            .host
            .shared_data_set(&key, &SharedTokens::entry(token, grant), None)
        {
            log!(self.host, Warn, "x402: cannot share a verified token: {e}");
        }
    }
}
