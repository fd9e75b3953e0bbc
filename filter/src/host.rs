//! The proxy-wasm glue: the only module that talks to Envoy. It reads headers and bodies,
//! calls the pure modules for decisions, and carries the decisions out. Host calls are used
//! through `proxy_wasm::hostcalls` (which return `Result`) rather than the trait helpers
//! (which unwrap), so no request path can panic on a host error; the request header map is
//! read through the raw `proxy_get_header_map_pairs` import, once per request.
//!
//! Per-request host calls are the filter's main cost in Envoy's V8, so the hot paths keep
//! them few: an unpriced request makes one (the header list) unless it carries `x-x402-*`
//! names; a request with a cached token makes seven (header list, clock, two counters,
//! three identity headers).

use std::borrow::Cow;
use std::cell::RefCell;
use std::ptr::null_mut;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use x402_protocol::challenge::Reason;

use crate::auth::{self, Grant};
use crate::cache::TokenCache;
use crate::challenge::{self, HttpAnswer};
use crate::config::{self, FilterConfig};
use crate::decision::{self, PaymentOutcome, PricedAction};
use crate::headers::HeaderPairs;
use crate::identity;
use crate::metrics::Counter;
use crate::pending::{self, PendingBodies};
use crate::routes::{RequestAttrs, Route};
use crate::token_endpoint::{self, Endpoint, SettlerReply};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None }) });
}}

struct Metrics {
    ids: Vec<Option<u32>>,
}

impl Metrics {
    fn define() -> Self {
        let ids = Counter::all()
            .into_iter()
            .map(|c| {
                let name = c.name();
                match hostcalls::define_metric(MetricType::Counter, &name) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        warn!("x402: cannot define metric {name}: {e:?}");
                        None
                    }
                }
            })
            .collect();
        Metrics { ids }
    }

    fn inc(&self, c: Counter) {
        if let Some(Some(id)) = self.ids.get(c.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}

/// Per-worker state shared by the root context and every HTTP context.
struct Shared {
    cfg: FilterConfig,
    metrics: Metrics,
    cache: RefCell<TokenCache>,
    /// Token-endpoint requests still reading their body (answered by `on_tick` when late).
    pending: RefCell<PendingBodies>,
}

impl Shared {
    /// Runs `f` on the worker's token cache, or on an empty scratch cache (nothing kept)
    /// in the unexpected case that the cache is already borrowed.
    fn with_cache<R>(&self, f: impl FnOnce(&mut TokenCache) -> R) -> R {
        match self.cache.try_borrow_mut() {
            Ok(mut cache) => f(&mut cache),
            Err(_) => f(&mut TokenCache::new(0)),
        }
    }
}

const TICK: Duration = Duration::from_millis(250);

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        match config::parse(&bytes) {
            Ok(cfg) => {
                info!(
                    "x402: configured {} priced route(s), {} token key(s), settler cluster {:?}",
                    cfg.routes.len(),
                    cfg.keys.len(),
                    cfg.settler.cluster
                );
                let cache = RefCell::new(TokenCache::new(cfg.token_cache_size));
                self.shared = Some(Rc::new(Shared {
                    cfg,
                    metrics: Metrics::define(),
                    cache,
                    pending: RefCell::new(PendingBodies::default()),
                }));
                if let Err(e) = hostcalls::set_tick_period(TICK) {
                    warn!("x402: no timer ({e:?}): token endpoint bodies have no deadline");
                }
                true
            }
            Err(e) => {
                error!("{e}");
                self.shared = None;
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            context_id,
            shared: self.shared.clone(),
            state: State::Idle,
        }))
    }

    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else { return };
        let expired = match shared.pending.try_borrow_mut() {
            Ok(mut p) if !p.is_empty() => p.take_expired(now_ms()),
            _ => return,
        };
        for p in expired {
            if hostcalls::set_effective_context(p.context_id).is_err() {
                continue;
            }
            if p.body_seen {
                warn!(
                    "x402: token endpoint: request body incomplete after {:?}",
                    shared.cfg.body_timeout
                );
            } else {
                error!("x402: token endpoint: the request body never reached the filter; set allow_on_headers_stop_iteration: true on the Envoy wasm plugin");
            }
            if let Err(e) = send_answer(&pending::timeout_answer(&p)) {
                warn!("x402: cannot answer a timed-out request: {e:?}");
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

enum State {
    Idle,
    /// Token endpoint: buffering the client's payment body.
    Buffering {
        route: usize,
        size: usize,
    },
    /// Token endpoint: waiting for the settler.
    AwaitToken,
    /// x402 v2 payment: request held until the settler answers.
    AwaitPayment {
        route: usize,
        url: String,
    },
    /// x402 v2 payment settled: headers to add to the upstream's response.
    Paid {
        headers: Vec<(&'static str, String)>,
    },
    /// A local answer was sent, or nothing more to do.
    Done,
}

struct Http {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    state: State,
}

#[link(wasm_import_module = "env")]
extern "C" {
    // Declared by proxy-wasm too, whose `get_map_bytes` copies every name and value into
    // its own allocation (and panics on a host error); read here in place instead.
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// All request headers in one host call (the host allocates the buffer through
/// `proxy_on_memory_allocate`, i.e. as a boxed slice of exactly `size` bytes).
fn request_header_map() -> Option<HeaderPairs> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated in this module's
    // memory (or null) and hands its ownership over, as for proxy-wasm's own `get_map`.
    let buf = unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if data.is_null() => Vec::new(),
            Status::Ok => Vec::from_raw_parts(data, size, size),
            status => {
                warn!("x402: cannot list request headers: {}", status as u32);
                return None;
            }
        }
    };
    let map = HeaderPairs::parse(buf);
    if map.is_none() {
        warn!("x402: cannot read the request header list");
    }
    map
}

/// The request headers: the whole map read once, or (if the host cannot list them) one
/// host call per header.
enum Headers {
    Map(HeaderPairs),
    Host,
}

impl Headers {
    fn fetch() -> Headers {
        request_header_map().map_or(Headers::Host, Headers::Map)
    }

    /// A request header as text. Bytes that are not UTF-8 become U+FFFD (`get_map_value`
    /// would panic on them, and a client can send them), so such a token is malformed and
    /// such a path still matches its priced prefix.
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match self {
            Headers::Map(m) => m.get_str(name),
            Headers::Host => hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
                .map(|v| Cow::Owned(String::from_utf8_lossy(&v).into_owned())),
        }
    }

    /// Unpriced requests: removes the identity headers by name (only those present when the
    /// map is known: usually no host call at all).
    fn strip_identity(&self) {
        if let Headers::Map(m) = self {
            if !m.has_reserved() {
                return;
            }
        }
        for name in identity::IDENTITY {
            if let Headers::Map(m) = self {
                if !m.contains(name) {
                    continue;
                }
            }
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
        }
    }

    /// Priced requests: removes every client-supplied `x-x402-*` request header.
    fn strip_reserved(&self) {
        let names = match self {
            Headers::Map(m) => m.reserved_names(),
            // Cannot list them: at least the identity names go.
            Headers::Host => identity::IDENTITY.iter().map(|n| n.to_string()).collect(),
        };
        for name in names {
            if let Err(e) = hostcalls::remove_map_value(MapType::HttpRequestHeaders, &name) {
                warn!("x402: cannot remove request header {name}: {e:?}");
            }
        }
    }
}

/// Adds the who-paid headers for the upstream.
fn set_identity_headers<'a>(headers: impl IntoIterator<Item = (&'static str, &'a str)>) {
    for (name, value) in headers {
        if let Err(e) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)) {
            warn!("x402: cannot add request header {name}: {e:?}");
        }
    }
}

/// Lets a request through, paid by `grant`, with the who-paid headers for the upstream.
fn allow(shared: &Shared, route: &Route, grant: &Grant) -> Action {
    shared.metrics.inc(Counter::Accepted);
    set_identity_headers(identity::grant_headers(&route.name, grant));
    Action::Continue
}

/// Sends a local answer instead of the upstream's.
fn send_answer(a: &HttpAnswer) -> Result<(), Status> {
    let headers: Vec<(&str, &str)> = a.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    hostcalls::send_http_response(a.status, headers, Some(&a.body))
}

/// Time since the epoch; zero when the host has no clock.
fn since_epoch() -> Duration {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// No clock means time zero, when no token is valid yet: fail closed.
fn now_secs() -> i64 {
    since_epoch().as_secs() as i64
}

/// Method and authority, read only when a route needs them.
struct Attrs<'a> {
    headers: &'a Headers,
    method: Option<Option<Cow<'a, str>>>,
    authority: Option<Option<Cow<'a, str>>>,
}

impl<'a> Attrs<'a> {
    fn new(headers: &'a Headers) -> Self {
        Attrs {
            headers,
            method: None,
            authority: None,
        }
    }
}

impl RequestAttrs for Attrs<'_> {
    fn method(&mut self) -> Option<&str> {
        let h = self.headers;
        self.method
            .get_or_insert_with(|| h.get(":method"))
            .as_deref()
    }
    fn authority(&mut self) -> Option<&str> {
        let h = self.headers;
        self.authority
            .get_or_insert_with(|| h.get(":authority"))
            .as_deref()
    }
}

impl Context for Http {
    fn on_done(&mut self) -> bool {
        self.stop_waiting_for_body();
        true
    }

    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let headers: Vec<(String, String)> =
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
                .unwrap_or_default()
                .into_iter()
                .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
                .collect();
        let body = if body_size > 0 {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let reply = SettlerReply::from_headers(&headers, body);
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitToken => {
                if reply.is_outage() {
                    shared.metrics.inc(Counter::SettlerErrors);
                    warn!(
                        "x402: token endpoint: {}",
                        token_endpoint::outage_message(&reply)
                    );
                }
                self.answer(&shared, token_endpoint::relay(&reply));
            }
            State::AwaitPayment { route, url } => {
                self.payment_answered(&shared, route, url, &reply)
            }
            other => self.state = other,
        }
    }
}

impl Http {
    /// Leaves the pending-body list; `false` if the timer already answered this request.
    fn stop_waiting_for_body(&self) -> bool {
        match &self.shared {
            Some(shared) => shared
                .pending
                .try_borrow_mut()
                .map(|mut p| p.remove(self.context_id))
                .unwrap_or(false),
            None => false,
        }
    }

    fn answer(&mut self, shared: &Shared, a: HttpAnswer) {
        if a.status == 402 {
            shared.metrics.inc(Counter::Challenges);
        }
        if let Err(e) = send_answer(&a) {
            error!("x402: cannot send local response: {e:?}");
        }
        self.state = State::Done;
    }

    fn challenge(&mut self, shared: &Shared, route: usize, reason: Reason, url: String) {
        shared.metrics.inc(Counter::Rejected(reason));
        if let Some(r) = shared.cfg.routes.get(route) {
            self.answer(shared, challenge::challenge(r, reason, url));
        }
    }

    fn resource_url(headers: &Headers, attrs: &mut Attrs, path: &str) -> String {
        let proto = headers.get("x-forwarded-proto");
        let scheme = headers.get(":scheme");
        challenge::resource_url(proto.as_deref(), scheme.as_deref(), attrs.authority(), path)
    }

    fn dispatch_settler(&self, shared: &Shared, body: &[u8]) -> bool {
        let cfg = &shared.cfg;
        shared.metrics.inc(Counter::TokenRequests);
        match hostcalls::dispatch_http_call(
            &cfg.settler.cluster,
            token_endpoint::settler_headers(cfg),
            Some(body),
            vec![],
            cfg.settler.timeout,
        ) {
            Ok(_) => true,
            Err(e) => {
                shared.metrics.inc(Counter::SettlerErrors);
                warn!(
                    "x402: cannot call settler cluster {:?}: {e:?}",
                    cfg.settler.cluster
                );
                false
            }
        }
    }

    fn token_endpoint_request(
        &mut self,
        shared: &Shared,
        headers: &Headers,
        path: &str,
        end_of_stream: bool,
    ) -> Action {
        let cfg = &shared.cfg;
        let method = headers.get(":method");
        match token_endpoint::classify(cfg, method.as_deref(), path) {
            None => {
                headers.strip_identity();
                Action::Continue
            }
            Some(Endpoint::Reject(a)) => {
                self.answer(shared, a);
                Action::Pause
            }
            Some(Endpoint::Route(route)) => {
                if end_of_stream {
                    self.answer(
                        shared,
                        token_endpoint::invalid_json("request body is empty"),
                    );
                    return Action::Pause;
                }
                let declared = headers.get("content-length");
                if let Err(a) =
                    token_endpoint::check_declared_length(declared.as_deref(), cfg.max_body_bytes)
                {
                    self.answer(shared, a);
                    return Action::Pause;
                }
                self.state = State::Buffering { route, size: 0 };
                let deadline = now_ms().saturating_add(cfg.body_timeout.as_millis() as u64);
                if let Ok(mut p) = shared.pending.try_borrow_mut() {
                    p.add(self.context_id, deadline);
                }
                Action::Pause
            }
        }
    }

    fn finish_token_request(&mut self, shared: &Shared, route: usize, size: usize) -> Action {
        let cfg = &shared.cfg;
        let Some(r) = cfg.routes.get(route) else {
            self.answer(shared, HttpAnswer::error(500, "internal", "route vanished"));
            return Action::Pause;
        };
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match token_endpoint::token_request_body(cfg, r, &body, None) {
            Err(a) => self.answer(shared, a),
            Ok(req) => {
                if self.dispatch_settler(shared, &req) {
                    self.state = State::AwaitToken;
                } else {
                    self.answer(
                        shared,
                        token_endpoint::settler_unavailable("the settler cluster cannot be called"),
                    );
                }
            }
        }
        Action::Pause
    }

    fn payment_answered(
        &mut self,
        shared: &Shared,
        route: usize,
        url: String,
        reply: &SettlerReply,
    ) {
        match decision::payment_outcome(reply, shared.cfg.settler.failure_mode) {
            PaymentOutcome::Resume {
                response_headers,
                settled,
            } => {
                shared.metrics.inc(Counter::Accepted);
                if let Some(r) = shared.cfg.routes.get(route) {
                    let now = now_secs();
                    let (ids, why) = shared.with_cache(|cache| {
                        decision::settled_identity(&shared.cfg, cache, r, &settled, now)
                    });
                    if let Some(why) = why {
                        warn!(
                            "x402: payment on {url}: the settler's token does not check out at the edge ({}); request let through (paid), token not cached; check token_keys",
                            why.code()
                        );
                    }
                    set_identity_headers(ids.iter().map(|(n, v)| (*n, v.as_str())));
                }
                // The signed payment is spent: the API behind has no use for it, and it
                // should not end up in its logs.
                if let Err(e) =
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, "payment-signature", None)
                {
                    warn!("x402: cannot remove payment-signature: {e:?}");
                }
                self.state = State::Paid {
                    headers: response_headers,
                };
                if let Err(e) = hostcalls::resume_http_request() {
                    error!("x402: cannot resume request: {e:?}");
                }
            }
            PaymentOutcome::Refuse { code, message } => {
                if let Some(r) = shared.cfg.routes.get(route) {
                    self.answer(shared, challenge::payment_refused(r, &code, &message, url));
                }
            }
            PaymentOutcome::Unavailable(a) => {
                shared.metrics.inc(Counter::SettlerErrors);
                warn!("x402: payment on {url}: settler unavailable, denying");
                self.answer(shared, a);
            }
            PaymentOutcome::FailOpen(why) => {
                shared.metrics.inc(Counter::SettlerErrors);
                warn!("x402: payment on {url}: {why}; failure_mode=allow lets the request through unpaid");
                self.state = State::Done;
                if let Err(e) = hostcalls::resume_http_request() {
                    error!("x402: cannot resume request: {e:?}");
                }
            }
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            // No valid configuration on this worker: fail closed.
            self.state = State::Done;
            let _ = send_answer(&HttpAnswer::error(
                503,
                "filter_unconfigured",
                "the x402 filter has no valid configuration",
            ));
            return Action::Pause;
        };
        let headers = Headers::fetch();
        let Some(path) = headers.get(":path") else {
            headers.strip_identity();
            return Action::Continue;
        };
        let cfg = &shared.cfg;

        if path.starts_with(cfg.token_endpoint_prefix.as_str()) {
            return self.token_endpoint_request(&shared, &headers, &path, end_of_stream);
        }

        let mut attrs = Attrs::new(&headers);
        let Some((idx, route)) = cfg
            .routes
            .find(&path, &mut attrs)
            .and_then(|i| cfg.routes.get(i).map(|r| (i, r)))
        else {
            headers.strip_identity();
            return Action::Continue;
        };
        headers.strip_reserved();

        let authorization = headers.get("authorization");
        let now = now_secs();
        let check = shared.with_cache(|cache| {
            auth::check_token(
                &cfg.keys,
                cfg.clock_leeway_secs,
                cache,
                route,
                authorization.as_deref(),
                now,
            )
        });
        match check.cache_hit {
            Some(true) => shared.metrics.inc(Counter::CacheHits),
            Some(false) => shared.metrics.inc(Counter::CacheMisses),
            None => {}
        }
        // The common case first: no resource URL or payment header needed.
        if let Ok(grant) = &check.result {
            return allow(&shared, route, grant);
        }

        let url = Self::resource_url(&headers, &mut attrs, &path);
        let payment = headers.get("payment-signature");
        match decision::decide_priced(cfg, route, check, payment.as_deref(), &url) {
            PricedAction::Allow(grant) => allow(&shared, route, &grant),
            PricedAction::Challenge(reason) => {
                self.challenge(&shared, idx, reason, url);
                Action::Pause
            }
            PricedAction::RefusePayment { code, message } => {
                self.answer(
                    &shared,
                    challenge::payment_refused(route, &code, &message, url),
                );
                Action::Pause
            }
            PricedAction::Pay(body) => {
                if self.dispatch_settler(&shared, &body) {
                    self.state = State::AwaitPayment { route: idx, url };
                    return Action::Pause;
                }
                // Still inside the headers callback: continue or answer directly.
                match decision::payment_outcome(&SettlerReply::default(), cfg.settler.failure_mode)
                {
                    PaymentOutcome::FailOpen(why) => {
                        warn!("x402: payment on {url}: {why}; failure_mode=allow lets the request through unpaid");
                        Action::Continue
                    }
                    PaymentOutcome::Unavailable(a) => {
                        self.answer(&shared, a);
                        Action::Pause
                    }
                    _ => {
                        self.answer(
                            &shared,
                            token_endpoint::settler_unavailable(
                                "the settler cluster cannot be called",
                            ),
                        );
                        Action::Pause
                    }
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let State::Buffering { route, .. } = self.state else {
            return match self.state {
                State::Idle | State::Paid { .. } => Action::Continue,
                _ => Action::Pause,
            };
        };
        let Some(shared) = self.shared.clone() else {
            return Action::Pause;
        };
        let still_waiting = shared
            .pending
            .try_borrow_mut()
            .map(|mut p| p.saw_body(self.context_id))
            .unwrap_or(false);
        if !still_waiting {
            // The timer already answered this request.
            self.state = State::Done;
            return Action::Pause;
        }
        if let Err(a) = token_endpoint::check_size(body_size, shared.cfg.max_body_bytes) {
            self.stop_waiting_for_body();
            self.answer(&shared, a);
            return Action::Pause;
        }
        if !end_of_stream {
            self.state = State::Buffering {
                route,
                size: body_size,
            };
            return Action::Pause;
        }
        self.stop_waiting_for_body();
        self.finish_token_request(&shared, route, body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.state {
            State::Buffering { route, size } => {
                let Some(shared) = self.shared.clone() else {
                    return Action::Pause;
                };
                if !self.stop_waiting_for_body() {
                    self.state = State::Done;
                    return Action::Pause;
                }
                self.finish_token_request(&shared, route, size)
            }
            State::Idle | State::Paid { .. } => Action::Continue,
            _ => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let State::Paid { headers } = &self.state {
            for (name, value) in headers {
                if let Err(e) =
                    hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value))
                {
                    warn!("x402: cannot add response header {name}: {e:?}");
                }
            }
        }
        Action::Continue
    }
}
