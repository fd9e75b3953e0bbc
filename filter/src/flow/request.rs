//! One request's way through the filter, as a state machine:
//!
//! ```text
//! Idle ──unpriced──▶ (forwarded untouched)
//!   │ ──priced, token ok──▶ Forwarded (Cache-Control: private, no-store on the response)
//!   │ ──no usable token──▶ 402 ──▶ Done
//!   │ ──PAYMENT-SIGNATURE──▶ AwaitPayment ──settler──▶ Forwarded (response headers added)
//!   │                                   │  held: response headers ──▶ AwaitRelease
//!   │                                   │        ──release/void──▶ response resumed
//!   │                                   └─before_response──▶ AwaitMined ──mined──▶ Forwarded
//!   │                                   └─settler unreachable, failure_mode allow──▶ Forwarded
//!   │                                   └─refused / 5xx / unreachable under deny──▶ Done
//!   │ ──POST token endpoint──▶ Buffering ──body──▶ AwaitToken ──settler──▶ Done (relayed)
//!   └ ──POST token endpoint /renew (bearer checked)──▶ AwaitToken ──settler──▶ Done (relayed)
//! ```
//!
//! Every callback takes the [`Host`] to act on; the per-request host calls are the filter's
//! main cost in Envoy's V8, so the hot paths keep them few: an unpriced request makes one
//! (the header list) unless it carries `x-x402-*` names; a request with a cached token
//! makes eight (header list, clock, two counters, three identity headers, and its
//! response's `Cache-Control`).
//!
//! A request that goes on (`Idle`, `Forwarded`) lets its body and trailers through as they
//! come, also when they arrive after the decision (a POST held for the settler, then let
//! through): only a request answered locally, or still waiting, holds them.

use std::rc::Rc;

use x402_protocol::challenge::Reason;

use super::request_headers::{Attrs, RequestHeaders};
use super::response::{self as finish, HoldVerdict, Mined};
use super::worker::Worker;
use super::{log, now_ms, now_secs, settler_reply, Action};
use crate::answer::HttpAnswer;
use crate::challenge;
use crate::decision::{self, PaymentOutcome, PricedAction, Settled};
use crate::grant::Grant;
use crate::host_api::Host;
use crate::identity;
use crate::metrics::{Counter, RouteCounter};
use crate::policy::{CacheControl, FailureMode, Settlement, PRIVATE_NO_STORE};
use crate::routes::{Lookup, RequestAttrs, Route};
use crate::token_endpoint::{self, Endpoint, SettlerExtras, SettlerReply};

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    /// Token endpoint: buffering the client's payment body.
    Buffering {
        route: usize,
        size: usize,
        /// The client's `Idempotency-Key`, passed on to the settler.
        idempotency_key: Option<String>,
    },
    /// Token endpoint: waiting for the settler.
    AwaitToken,
    /// x402 v2 payment: request held until the settler answers.
    AwaitPayment {
        route: usize,
        url: String,
    },
    /// Let through to the upstream on a priced route: paid (bearer token, x402 v2) or,
    /// settler unreachable under `failure_mode: allow`, unpaid. `headers` go on the
    /// upstream's response; `no_store` replaces its `Cache-Control` with
    /// `private, no-store`.
    Forwarded {
        headers: Vec<(&'static str, String)>,
        no_store: bool,
        /// An x402 v2 payment held for the upstream's answer: released or voided when the
        /// response headers arrive; `headers` go on only if it is charged.
        hold: Option<Settled>,
    },
    /// x402 v2, `settlement: before_response`: request held until the settlement is mined.
    AwaitMined {
        route: usize,
        url: String,
        settled: Settled,
    },
    /// Held payment: response held until the settler released or voided it.
    AwaitRelease {
        headers: Vec<(&'static str, String)>,
        settled: Settled,
        upstream_status: u16,
    },
    /// A local answer was sent, or nothing more to do.
    Done,
}

/// One HTTP request (proxy-wasm HTTP context).
pub(crate) struct Request {
    context_id: u32,
    /// `None`: the worker has no valid configuration.
    worker: Option<Rc<Worker>>,
    state: State,
}

// Natively only the tests call these (host.rs is wasm only): they are the flow's roots.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
impl Request {
    pub(crate) fn new(context_id: u32, worker: Option<Rc<Worker>>) -> Self {
        Request {
            context_id,
            worker,
            state: State::Idle,
        }
    }

    pub(crate) fn on_request_headers(&mut self, host: &impl Host, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            // No valid configuration on this worker: fail closed.
            self.state = State::Done;
            let _ = host.send_reply(&HttpAnswer::error(
                503,
                "filter_unconfigured",
                "the x402 filter has no valid configuration",
            ));
            return Action::Pause;
        };
        let headers = RequestHeaders::fetch(host);
        // Every request: an upstream must not read a method other than the one priced.
        headers.strip_method_override();
        let Some(path) = headers.get(":path") else {
            headers.strip_identity();
            return Action::Continue;
        };
        let cfg = &worker.cfg;

        if path.starts_with(cfg.token_endpoint_prefix.as_str()) {
            return self.token_endpoint_request(&worker, host, &headers, &path, end_of_stream);
        }
        // The discovery document, answered here whatever route would match its path.
        if let Some(d) = cfg.discovery.as_ref().filter(|d| d.is_for(&path)) {
            let method = headers.get(":method");
            match d.reply(method.as_deref()) {
                Ok(doc) => {
                    if let Err(e) = host.send_reply(doc) {
                        log!(host, Error, "x402: cannot send the discovery document: {e}");
                    }
                    self.state = State::Done;
                }
                Err(refused) => self.answer(&worker, host, refused),
            }
            return Action::Pause;
        }

        let mut attrs = Attrs::new(&headers);
        let (idx, rewrite) = match cfg.routes.lookup(&path, &mut attrs) {
            Lookup::Priced { index, rewrite } => (index, rewrite),
            Lookup::Unpriced => {
                headers.strip_identity();
                return Action::Continue;
            }
            refused => {
                self.answer(&worker, host, route_refusal(refused));
                return Action::Pause;
            }
        };
        let Some(route) = cfg.routes.get(idx) else {
            headers.strip_identity();
            return Action::Continue;
        };
        headers.strip_reserved();
        // Priced on its normalised path: the upstream gets that path, never another spelling.
        let path = match rewrite {
            None => path,
            Some(p) => {
                if let Err(e) = host.set_request_header(":path", &p) {
                    log!(
                        host,
                        Error,
                        "x402: cannot forward the normalised path {p}: {e}"
                    );
                    let a =
                        HttpAnswer::error(500, "internal", "cannot forward the normalised path");
                    self.answer(&worker, host, a);
                    return Action::Pause;
                }
                std::borrow::Cow::Owned(p)
            }
        };

        let authorization = headers.get("authorization");
        let now = now_secs(host);
        let mut check = worker.check_token(host, route, authorization.as_deref(), now);
        // A revoked token is refused even when its verdict came from a cache.
        if matches!(&check.result, Ok(g) if worker.is_revoked(&g.settlement_id)) {
            check.result = Err(Reason::Revoked);
        }
        // The common case first: no resource URL or payment header needed.
        if let Ok(grant) = &check.result {
            return self.allow(&worker, host, route, grant);
        }

        let url = {
            let proto = headers.get("x-forwarded-proto");
            let scheme = headers.get(":scheme");
            challenge::resource_url(
                proto.as_deref(),
                scheme.as_deref(),
                attrs.authority(),
                &path,
            )
        };
        let payment = headers.get("payment-signature");
        match decision::decide_priced(cfg, route, check, payment.as_deref(), &url) {
            PricedAction::Allow(grant) => self.allow(&worker, host, route, &grant),
            PricedAction::Challenge(reason) => {
                self.challenge(&worker, host, idx, reason, url);
                Action::Pause
            }
            PricedAction::RefusePayment { code, message } => {
                let a = challenge::payment_refused(route, &code, &message, url);
                self.answer(&worker, host, a);
                Action::Pause
            }
            PricedAction::Pay(body) => {
                if dispatch_settler(&worker, host, &body) {
                    self.state = State::AwaitPayment { route: idx, url };
                    return Action::Pause;
                }
                // Still inside the headers callback: continue or answer directly.
                match decision::payment_outcome(&SettlerReply::default(), route.failure_mode) {
                    PaymentOutcome::FailOpen(why) => {
                        worker.count(host, Counter::FailOpen);
                        worker.count_route(host, RouteCounter::FailOpen, idx);
                        log!(host, Warn, "x402: payment on {url}: {why}; failure_mode=allow lets the request through unpaid");
                        drop_payment_header(host);
                        self.state = State::Forwarded {
                            headers: Vec::new(),
                            no_store: false,
                            hold: None,
                        };
                        Action::Continue
                    }
                    PaymentOutcome::Unavailable(a, _) => {
                        self.answer(&worker, host, a);
                        Action::Pause
                    }
                    _ => {
                        self.answer(
                            &worker,
                            host,
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

    pub(crate) fn on_request_body(
        &mut self,
        host: &impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let State::Buffering { route, .. } = self.state else {
            return self.pass_or_hold();
        };
        let Some(worker) = self.worker.clone() else {
            return Action::Pause;
        };
        let still_waiting = worker
            .pending
            .try_borrow_mut()
            .map(|mut p| p.saw_body(self.context_id))
            .unwrap_or(false);
        if !still_waiting {
            // The timer already answered this request.
            self.state = State::Done;
            return Action::Pause;
        }
        if let Err(a) = token_endpoint::check_size(body_size, worker.cfg.max_body_bytes) {
            self.stop_waiting_for_body();
            self.answer(&worker, host, a);
            return Action::Pause;
        }
        if !end_of_stream {
            if let State::Buffering { size, .. } = &mut self.state {
                *size = body_size;
            }
            return Action::Pause;
        }
        self.stop_waiting_for_body();
        self.finish_token_request(&worker, host, route, body_size)
    }

    pub(crate) fn on_request_trailers(&mut self, host: &impl Host) -> Action {
        let State::Buffering { route, size, .. } = self.state else {
            return self.pass_or_hold();
        };
        let Some(worker) = self.worker.clone() else {
            return Action::Pause;
        };
        if !self.stop_waiting_for_body() {
            // The timer already answered this request.
            self.state = State::Done;
            return Action::Pause;
        }
        self.finish_token_request(&worker, host, route, size)
    }

    /// The settler's answer to this request's callout.
    pub(crate) fn on_callout_response(&mut self, host: &impl Host, body_size: usize) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let reply = settler_reply(host, body_size);
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitToken => {
                if reply.is_outage() {
                    worker.count(host, Counter::SettlerErrors);
                    log!(
                        host,
                        Warn,
                        "x402: token endpoint: {}",
                        token_endpoint::outage_message(&reply)
                    );
                }
                remember_minted(&worker, host, &reply);
                self.answer(&worker, host, token_endpoint::relay(&reply));
            }
            State::AwaitPayment { route, url } => {
                self.payment_answered(&worker, host, route, url, &reply)
            }
            State::AwaitMined {
                route,
                url,
                settled,
            } => self.mined(&worker, host, route, url, &settled, &reply),
            State::AwaitRelease {
                headers,
                settled,
                upstream_status,
            } => {
                let verdict = finish::hold_verdict(&reply);
                let headers = match verdict {
                    HoldVerdict::Charged => headers,
                    _ => {
                        if verdict == HoldVerdict::Unknown {
                            worker.count(host, Counter::SettlerErrors);
                            log!(
                                host,
                                Warn,
                                "x402: cannot tell the settler what the upstream answered ({upstream_status}) for held settlement {:?}: {}; its hold expires",
                                settled.settlement_id,
                                token_endpoint::outage_message(&reply)
                            );
                        }
                        finish::uncharged_headers(&settled, verdict, upstream_status)
                    }
                };
                set_response_headers(host, &headers, true);
                if let Err(e) = host.resume_response() {
                    log!(host, Error, "x402: cannot resume response: {e}");
                }
            }
            other => self.state = other,
        }
    }

    pub(crate) fn on_response_headers(&mut self, host: &impl Host) -> Action {
        match &mut self.state {
            State::Forwarded {
                headers,
                no_store,
                hold: None,
            } => set_response_headers(host, headers, *no_store),
            State::Forwarded {
                headers,
                hold: Some(settled),
                ..
            } => {
                let (headers, settled) = (std::mem::take(headers), settled.clone());
                return self.upstream_answered(host, headers, settled);
            }
            _ => {}
        }
        Action::Continue
    }

    /// Response body and trailers: held while the settler is told what the upstream
    /// answered (Envoy resumes paused response headers when a body callback continues).
    pub(crate) fn on_response_body_or_trailers(&self) -> Action {
        match self.state {
            State::AwaitRelease { .. } => Action::Pause,
            _ => Action::Continue,
        }
    }

    /// The upstream answered a request paid by a held payment: tell the settler to release
    /// it (below 400) or void it, and hold the response until it has answered.
    fn upstream_answered(
        &mut self,
        host: &impl Host,
        headers: Vec<(&'static str, String)>,
        settled: Settled,
    ) -> Action {
        self.state = State::Done;
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        // No readable status is no success: void.
        let upstream_status = host
            .response_header(":status")
            .and_then(|s| s.trim().parse::<u16>().ok())
            .unwrap_or(500);
        let Some(id) = settled.settlement_id.as_deref() else {
            // The settler named no settlement to release: the hold will void it.
            let h = finish::uncharged_headers(&settled, HoldVerdict::Unknown, upstream_status);
            set_response_headers(host, &h, true);
            return Action::Continue;
        };
        let (path, body) = finish::hold_call(id, upstream_status);
        let cfg = &worker.cfg;
        worker.count(host, Counter::TokenRequests);
        let call = host.dispatch_callout(
            &cfg.settler.cluster,
            finish::settler_call_headers(cfg, "POST", &path),
            &body,
            cfg.settler.timeout,
        );
        if let Err(e) = call {
            worker.count(host, Counter::SettlerErrors);
            log!(
                host,
                Warn,
                "x402: cannot call settler cluster {:?} to settle held {id}: {e}; its hold expires",
                cfg.settler.cluster
            );
            let h = finish::uncharged_headers(&settled, HoldVerdict::Unknown, upstream_status);
            set_response_headers(host, &h, true);
            return Action::Continue;
        }
        self.state = State::AwaitRelease {
            headers,
            settled,
            upstream_status,
        };
        Action::Pause
    }

    /// `settlement: before_response`: the accepted payment's request waits for its
    /// settlement to be mined.
    fn wait_mined(
        &mut self,
        worker: &Worker,
        host: &impl Host,
        route: usize,
        url: String,
        settled: Settled,
    ) {
        let cfg = &worker.cfg;
        let Some(id) = settled.settlement_id.clone() else {
            let a = token_endpoint::settler_unavailable("the settler named no settlement");
            self.answer(worker, host, a);
            return;
        };
        let path = finish::wait_path(&id);
        worker.count(host, Counter::TokenRequests);
        let call = host.dispatch_callout(
            &cfg.settler.cluster,
            finish::settler_call_headers(cfg, "GET", &path),
            &[],
            std::time::Duration::from_millis(finish::WAIT_MS + 3_000),
        );
        match call {
            Ok(_) => {
                self.state = State::AwaitMined {
                    route,
                    url,
                    settled,
                }
            }
            Err(e) => {
                worker.count(host, Counter::SettlerErrors);
                log!(
                    host,
                    Warn,
                    "x402: cannot call settler cluster {:?} to wait for {id}: {e}",
                    cfg.settler.cluster
                );
                let a = token_endpoint::settler_unavailable("the settler cluster cannot be called");
                self.answer(worker, host, a);
            }
        }
    }

    /// The settler's answer to the wait for a `before_response` settlement.
    fn mined(
        &mut self,
        worker: &Worker,
        host: &impl Host,
        route: usize,
        url: String,
        settled: &Settled,
        reply: &SettlerReply,
    ) {
        match finish::mined(reply, settled) {
            Mined::Settled(headers) => {
                self.state = State::Forwarded {
                    headers,
                    no_store: true,
                    hold: None,
                };
                if let Err(e) = host.resume_request() {
                    log!(host, Error, "x402: cannot resume request: {e}");
                }
            }
            Mined::Failed { code, message } => {
                if let Some(r) = worker.cfg.routes.get(route) {
                    let a = challenge::payment_refused(r, &code, &message, url);
                    self.answer(worker, host, a);
                }
            }
            Mined::NotYet(a, why) => {
                worker.count(host, Counter::SettlerErrors);
                log!(host, Warn, "x402: payment on {url}: {why}; answering 504");
                self.answer(worker, host, a);
            }
        }
    }

    pub(crate) fn on_done(&mut self) {
        self.stop_waiting_for_body();
    }

    /// Body and trailers outside the token endpoint: a request that was let through goes
    /// on; one that was answered (or is waiting for the settler) stays held.
    fn pass_or_hold(&self) -> Action {
        match self.state {
            State::Idle | State::Forwarded { .. } => Action::Continue,
            _ => Action::Pause,
        }
    }

    /// Leaves the pending-body list; `false` if the timer already answered this request.
    fn stop_waiting_for_body(&self) -> bool {
        match &self.worker {
            Some(worker) => worker
                .pending
                .try_borrow_mut()
                .map(|mut p| p.remove(self.context_id))
                .unwrap_or(false),
            None => false,
        }
    }

    /// Lets a request through, paid by the bearer token `grant` came from, with the who-paid
    /// headers for the upstream and without the token (unless the route's `forward_token`);
    /// its response gets `Cache-Control: private, no-store` unless the route keeps the
    /// upstream's.
    fn allow(&mut self, worker: &Worker, host: &impl Host, route: &Route, grant: &Grant) -> Action {
        worker.count(host, Counter::Accepted);
        if let Some(i) = worker.cfg.routes.by_name(&route.name) {
            worker.count_route(host, RouteCounter::Accepted, i);
        }
        if !route.forward_token {
            if let Err(e) = host.remove_request_header("authorization") {
                log!(host, Warn, "x402: cannot remove the access token: {e}");
            }
        }
        set_identity_headers(host, identity::grant_headers(&route.name, grant));
        self.state = State::Forwarded {
            headers: Vec::new(),
            no_store: route.cache_control == CacheControl::PrivateNoStore,
            hold: None,
        };
        Action::Continue
    }

    fn answer(&mut self, worker: &Worker, host: &impl Host, a: HttpAnswer) {
        if a.status == 402 {
            worker.count(host, Counter::Challenges);
        }
        if let Err(e) = host.send_reply(&a) {
            log!(host, Error, "x402: cannot send local response: {e}");
        }
        self.state = State::Done;
    }

    fn challenge(
        &mut self,
        worker: &Worker,
        host: &impl Host,
        route: usize,
        reason: Reason,
        url: String,
    ) {
        worker.count(host, Counter::Rejected(reason));
        worker.count_route(host, RouteCounter::Challenges, route);
        if let Some(r) = worker.cfg.routes.get(route) {
            self.answer(worker, host, challenge::challenge(r, reason, url));
        }
    }

    fn token_endpoint_request<H: Host>(
        &mut self,
        worker: &Worker,
        host: &H,
        headers: &RequestHeaders<'_, H>,
        path: &str,
        end_of_stream: bool,
    ) -> Action {
        let cfg = &worker.cfg;
        let method = headers.get(":method");
        match token_endpoint::classify(cfg, method.as_deref(), path) {
            None => {
                headers.strip_identity();
                Action::Continue
            }
            Some(Endpoint::Reject(a)) => {
                self.answer(worker, host, a);
                Action::Pause
            }
            Some(Endpoint::Renew(route)) => {
                self.renew_request(worker, host, headers, route);
                Action::Pause
            }
            Some(Endpoint::Route(route)) => {
                if end_of_stream {
                    let a = token_endpoint::invalid_json("request body is empty");
                    self.answer(worker, host, a);
                    return Action::Pause;
                }
                let declared = headers.get("content-length");
                if let Err(a) =
                    token_endpoint::check_declared_length(declared.as_deref(), cfg.max_body_bytes)
                {
                    self.answer(worker, host, a);
                    return Action::Pause;
                }
                // Passed on as sent; the settler checks it (x402 `payment-identifier` rules).
                let idempotency_key = headers
                    .get("idempotency-key")
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty());
                self.state = State::Buffering {
                    route,
                    size: 0,
                    idempotency_key,
                };
                let deadline = now_ms(host).saturating_add(cfg.body_timeout.as_millis() as u64);
                if let Ok(mut p) = worker.pending.try_borrow_mut() {
                    p.add(self.context_id, deadline);
                }
                Action::Pause
            }
        }
    }

    /// `POST <prefix><route>/renew`: the bearer token checked at the edge, then forwarded
    /// to the settler's renewal path; its answer is relayed like the token endpoint's.
    fn renew_request<H: Host>(
        &mut self,
        worker: &Worker,
        host: &H,
        headers: &RequestHeaders<'_, H>,
        route: usize,
    ) {
        let cfg = &worker.cfg;
        let Some(r) = cfg.routes.get(route) else {
            self.answer(
                worker,
                host,
                HttpAnswer::error(500, "internal", "route vanished"),
            );
            return;
        };
        let authorization = headers.get("authorization");
        let checked = token_endpoint::renewable_token(
            &worker.keys(),
            r,
            authorization.as_deref(),
            now_secs(host),
            |id| worker.is_revoked(id),
        )
        .and_then(|token| token_endpoint::renew_request_body(cfg, r, token));
        match checked {
            Err(a) => self.answer(worker, host, a),
            Ok(body) => {
                if dispatch_settler_to(worker, host, &cfg.settler.renew_path, &body) {
                    self.state = State::AwaitToken;
                } else {
                    let a =
                        token_endpoint::settler_unavailable("the settler cluster cannot be called");
                    self.answer(worker, host, a);
                }
            }
        }
    }

    fn finish_token_request(
        &mut self,
        worker: &Worker,
        host: &impl Host,
        route: usize,
        size: usize,
    ) -> Action {
        let cfg = &worker.cfg;
        let Some(r) = cfg.routes.get(route) else {
            self.answer(
                worker,
                host,
                HttpAnswer::error(500, "internal", "route vanished"),
            );
            return Action::Pause;
        };
        let body = host.request_body(size);
        let payment_id = match &self.state {
            State::Buffering {
                idempotency_key, ..
            } => idempotency_key.clone(),
            _ => None,
        };
        let extras = SettlerExtras {
            payment_id,
            hold_secs: None,
        };
        match token_endpoint::token_request_body_with(cfg, r, &body, None, extras) {
            Err(a) => self.answer(worker, host, a),
            Ok(req) => {
                if dispatch_settler(worker, host, &req) {
                    self.state = State::AwaitToken;
                } else {
                    let a =
                        token_endpoint::settler_unavailable("the settler cluster cannot be called");
                    self.answer(worker, host, a);
                }
            }
        }
        Action::Pause
    }

    fn payment_answered(
        &mut self,
        worker: &Worker,
        host: &impl Host,
        route: usize,
        url: String,
        reply: &SettlerReply,
    ) {
        let failure_mode = worker
            .cfg
            .routes
            .get(route)
            .map_or(FailureMode::Deny, |r| r.failure_mode);
        match decision::payment_outcome(reply, failure_mode) {
            PaymentOutcome::Resume {
                response_headers,
                settled,
            } => {
                worker.count(host, Counter::Accepted);
                worker.count_route(host, RouteCounter::Accepted, route);
                if let Some(r) = worker.cfg.routes.get(route) {
                    let verdict = worker.minted(host, &settled.access_token, now_secs(host));
                    let (ids, why) = decision::settled_identity(r, &settled, verdict);
                    if let Some(why) = why {
                        log!(
                            host,
                            Warn,
                            "x402: payment on {url}: the settler's token does not check out at the edge ({}); request let through (paid), token not cached; check token_keys",
                            why.code()
                        );
                    }
                    set_identity_headers(host, ids.iter().map(|(n, v)| (*n, v.as_str())));
                }
                drop_payment_header(host);
                let r = worker.cfg.routes.get(route);
                if r.is_some_and(|r| r.settlement == Settlement::BeforeResponse) {
                    self.wait_mined(worker, host, route, url, settled);
                    return;
                }
                let held = r.is_some_and(|r| !r.charge_on_upstream_error);
                // The response carries a fresh access token: never stored by a cache,
                // whatever the route's cache_control.
                self.state = State::Forwarded {
                    headers: response_headers,
                    no_store: true,
                    hold: held.then_some(settled),
                };
                if let Err(e) = host.resume_request() {
                    log!(host, Error, "x402: cannot resume request: {e}");
                }
            }
            PaymentOutcome::Refuse { code, message } => {
                if let Some(r) = worker.cfg.routes.get(route) {
                    let a = challenge::payment_refused(r, &code, &message, url);
                    self.answer(worker, host, a);
                }
            }
            PaymentOutcome::Unavailable(a, why) => {
                worker.count(host, Counter::SettlerErrors);
                log!(host, Warn, "x402: payment on {url}: {why}; denying (503)");
                self.answer(worker, host, a);
            }
            PaymentOutcome::FailOpen(why) => {
                worker.count(host, Counter::SettlerErrors);
                worker.count(host, Counter::FailOpen);
                worker.count_route(host, RouteCounter::FailOpen, route);
                log!(host, Warn, "x402: payment on {url}: {why}; failure_mode=allow lets the request through unpaid");
                drop_payment_header(host);
                self.state = State::Forwarded {
                    headers: Vec::new(),
                    no_store: false,
                    hold: None,
                };
                if let Err(e) = host.resume_request() {
                    log!(host, Error, "x402: cannot resume request: {e}");
                }
            }
        }
    }
}

/// The token endpoint relays a freshly minted token: checked once here, while the client
/// waits for the settler anyway, and shared with every worker, so the client's first use
/// checks no signature (see [`Worker::minted`]). A token that does not check out is relayed
/// all the same (the settler took the payment) and cached nowhere.
fn remember_minted(worker: &Worker, host: &impl Host, reply: &SettlerReply) {
    if !reply.status.is_some_and(|s| (200..300).contains(&s)) {
        return;
    }
    let Some(token) = crate::shared_tokens::minted_token(&reply.body) else {
        return;
    };
    if let Err(why) = worker.minted(host, &token, now_secs(host)) {
        log!(
            host,
            Warn,
            "x402: token endpoint: the settler's token does not check out at the edge ({}); relayed, not cached; check token_keys",
            why.code()
        );
    }
}

/// Removes `PAYMENT-SIGNATURE` before the request goes upstream: once paid, the signed
/// payment is spent, and on fail-open it is unchecked; either way the API behind has no
/// use for it, and it should not end up in its logs.
fn drop_payment_header(host: &impl Host) {
    if let Err(e) = host.remove_request_header("payment-signature") {
        log!(host, Warn, "x402: cannot remove payment-signature: {e}");
    }
}

/// The local answer to a request the routes refuse (see [`Lookup`]).
fn route_refusal(l: Lookup) -> HttpAnswer {
    match l {
        Lookup::MethodNotAllowed { allow } => {
            let allow = allow.join(", ");
            let mut a = HttpAnswer::error(
                405,
                "method_not_allowed",
                &format!("this priced path only accepts {allow}"),
            );
            a.headers.push(("allow", allow));
            a
        }
        Lookup::InvalidAuthority => HttpAnswer::error(
            400,
            "invalid_authority",
            "the Host (:authority) is not host[:port] with a numeric port",
        ),
        Lookup::AmbiguousPath => HttpAnswer::error(
            400,
            "invalid_path",
            "a priced path spelled with an escaped slash or backslash, '//', '/./' or '/../': send it normalised",
        ),
        // Not refusals: the caller handles them.
        Lookup::Unpriced | Lookup::Priced { .. } => {
            HttpAnswer::error(500, "internal", "route lookup")
        }
    }
}

/// Calls the settler with `body`; `false` (counted as a settler error) if the call cannot
/// be made at all.
fn dispatch_settler(worker: &Worker, host: &impl Host, body: &[u8]) -> bool {
    dispatch_settler_to(worker, host, &worker.cfg.settler.path, body)
}

/// [`dispatch_settler`] to another settler path (renewal).
fn dispatch_settler_to(worker: &Worker, host: &impl Host, path: &str, body: &[u8]) -> bool {
    let cfg = &worker.cfg;
    worker.count(host, Counter::TokenRequests);
    // The request's id (Envoy's x-request-id) goes along, so the settler logs under it.
    let request_id = host.request_header("x-request-id");
    let mut headers = token_endpoint::settler_headers(cfg, path);
    if let Some(id) = request_id.as_deref() {
        headers.push(("x-request-id", id));
    }
    match host.dispatch_callout(&cfg.settler.cluster, headers, body, cfg.settler.timeout) {
        Ok(_) => true,
        Err(e) => {
            worker.count(host, Counter::SettlerErrors);
            log!(
                host,
                Warn,
                "x402: cannot call settler cluster {:?}: {e}",
                cfg.settler.cluster
            );
            false
        }
    }
}

/// Adds `headers` (and, with `no_store`, `Cache-Control: private, no-store`) to the
/// response.
fn set_response_headers(host: &impl Host, headers: &[(&'static str, String)], no_store: bool) {
    let no_store = no_store.then_some(("cache-control", PRIVATE_NO_STORE));
    let headers = headers.iter().map(|(n, v)| (*n, v.as_str()));
    for (name, value) in headers.chain(no_store) {
        if let Err(e) = host.set_response_header(name, value) {
            log!(host, Warn, "x402: cannot add response header {name}: {e}");
        }
    }
}

/// Adds the who-paid headers for the upstream.
fn set_identity_headers<'a>(
    host: &impl Host,
    headers: impl IntoIterator<Item = (&'static str, &'a str)>,
) {
    for (name, value) in headers {
        if let Err(e) = host.set_request_header(name, value) {
            log!(host, Warn, "x402: cannot add request header {name}: {e}");
        }
    }
}
