//! The request flow driven natively through the fake host: every state transition, and
//! what the filter did (replies, header edits, callouts, resumes, counters, logs).

use std::rc::Rc;
use std::time::Duration;

use log::Level;
use serde_json::{json, Value};
use x402_protocol::Address;

use super::request::Request;
use super::worker::Worker;
use super::{revocation, tick, Action};
use crate::test_fixtures::fake_host::FakeHost;
use crate::test_fixtures::{claims, sample, token};

/// Unix time of the tests (seconds): the tokens are issued then.
const NOW: i64 = 1_800_000_000;
const NOW_MS: u64 = NOW as u64 * 1000;

/// Header (name, value) pairs.
type Pairs = Vec<(&'static str, &'static str)>;

fn host() -> FakeHost {
    let h = FakeHost::new();
    h.set_now_ms(NOW_MS);
    h
}

fn worker_for(h: &FakeHost, config: &Value) -> Rc<Worker> {
    let w = Worker::configure(h, config.to_string().as_bytes()).unwrap();
    h.clear_records();
    Rc::new(w)
}

/// The sample configuration's worker, its records cleared.
fn worker(h: &FakeHost) -> Rc<Worker> {
    worker_for(h, &sample())
}

fn allow_mode() -> Value {
    let mut v = sample();
    v["settler"]["failure_mode"] = json!("allow");
    v
}

fn payer() -> String {
    Address::repeat_byte(0x11).to_checksum(None)
}

fn bearer(route: &str, amount: u64) -> String {
    format!("Bearer {}", token(claims(route, amount), NOW))
}

/// `GET /api/weather` (priced, 0.01 USDC) with extra headers.
fn weather(h: &FakeHost, extra: &[(&str, &str)]) {
    let mut headers = vec![
        (":method", "GET"),
        (":path", "/api/weather?city=lisbon"),
        (":authority", "api.example.com"),
        (":scheme", "http"),
    ];
    headers.extend_from_slice(extra);
    h.request(&headers);
}

fn token_post(h: &FakeHost, route: &str, extra: &[(&str, &str)]) {
    let path = format!("/x402/token/{route}");
    let mut headers = vec![
        (":method", "POST"),
        (":path", path.as_str()),
        (":authority", "api.example.com"),
    ];
    headers.extend_from_slice(extra);
    h.request(&headers);
}

fn payment_signature() -> String {
    x402_protocol::b64::encode(br#"{"x402Version":2,"payload":{"signature":"0xabc"}}"#)
}

/// The settler's 200 for a minted token.
fn minted(h: &FakeHost, access_token: &str) -> usize {
    let body = json!({
        "access_token": access_token, "token_type": "Bearer", "expires_in": 300,
        "payer": payer().to_lowercase(), "network": "eip155:84532", "settlement_id": "s-1"
    });
    h.callout_answers(
        &[(":status", "200"), ("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// The upstream answers `status`; the held payment's release/void call is made and
/// answered with `state` (200, the settler's status of it). Returns that call.
fn upstream_then_settler(
    h: &FakeHost,
    r: &mut Request,
    status: &str,
    state: &str,
) -> crate::test_fixtures::fake_host::Callout {
    *h.response.borrow_mut() = vec![(":status".to_string(), status.to_string())];
    let before = h.callouts.borrow().len();
    assert_eq!(
        r.on_response_headers(h),
        Action::Pause,
        "held for the settler"
    );
    assert_eq!(
        r.on_response_body_or_trailers(),
        Action::Pause,
        "the body waits too"
    );
    assert_eq!(h.callouts.borrow().len(), before + 1);
    let call = h.callouts.borrow().last().unwrap().clone();
    let size = h.callout_answers(
        &[(":status", "200"), ("content-type", "application/json")],
        json!({"state": state}).to_string().as_bytes(),
    );
    r.on_callout_response(h, size);
    assert_eq!(h.resumed_responses.get(), 1);
    call
}

fn identity(route: &str) -> Vec<(String, String)> {
    vec![
        ("x-x402-payer".into(), payer()),
        ("x-x402-route".into(), route.into()),
        ("x-x402-settlement-id".into(), "s-1".into()),
    ]
}

fn counters(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

// ---- configuration ----

#[test]
fn configure_defines_every_counter_and_the_timer() {
    let h = host();
    let w = Worker::configure(&h, sample().to_string().as_bytes());
    assert!(w.is_some());
    let names = h.counter_names();
    // 21 counters, and three per priced route (two routes).
    assert_eq!(names.len(), 21 + 3 * 2);
    assert!(names.contains(&"x402_route_challenges.route.weather".to_string()));
    assert!(names.contains(&"x402_route_fail_open.route.report".to_string()));
    assert!(names.contains(&"x402_rejected_revoked".to_string()));
    assert!(names.contains(&"x402_fail_open".to_string()));
    assert!(names.contains(&"x402_revocation_fetch_failures".to_string()));
    assert!(names.contains(&"x402_rejected_bad_signature".to_string()));
    assert_eq!(h.tick_period.get(), Some(Duration::from_millis(250)));
    assert!(h.logged(
        Level::Info,
        "x402: configured 2 priced route(s), 1 token key(s), settler cluster \"x402_settler\""
    ));
}

#[test]
fn a_worker_without_timer_or_counters_still_serves() {
    let h = host();
    h.fail("set_tick_period", 2);
    h.fail("define_counter", 2);
    let w = Rc::new(Worker::configure(&h, sample().to_string().as_bytes()).unwrap());
    assert!(h.logged(Level::Warn, "no timer (BadArgument)"));
    assert!(h.logged(Level::Warn, "cannot define metric x402_challenges"));
    weather(&h, &[]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    assert_eq!(h.reply().status(), 402);
}

#[test]
fn unconfigured_worker_fails_closed_with_503() {
    let h = host();
    assert!(Worker::configure(&h, b"{\"routes\": 1}").is_none());
    assert!(h
        .logs
        .borrow()
        .iter()
        .any(|(l, m)| *l == Level::Error && m.starts_with("x402 config:")));
    weather(&h, &[]);
    let mut r = Request::new(1, None);
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    let reply = h.reply();
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (503, "filter_unconfigured")
    );
    assert_eq!(
        h.calls.get(),
        1,
        "only the reply: the headers are not even read"
    );
    // Nothing else happens to it.
    assert_eq!(r.on_request_body(&h, 10, true), Action::Pause);
    assert_eq!(r.on_request_trailers(&h), Action::Pause);
    r.on_callout_response(&h, 0);
    assert_eq!(r.on_response_headers(&h), Action::Continue);
    assert_eq!(h.replies.borrow().len(), 1);
}

// ---- unpriced requests ----

#[test]
fn unpriced_request_costs_one_host_call() {
    let h = host();
    let w = worker(&h);
    h.request(&[
        (":method", "GET"),
        (":path", "/static/logo.png"),
        ("x-x40", "1"),
    ]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(h.calls.get(), 1, "the header list, nothing else");
    assert!(h.edits.borrow().is_empty());
    assert!(h.counters().is_empty());
    assert_eq!(r.on_request_body(&h, 3, true), Action::Continue);
    assert_eq!(r.on_request_trailers(&h), Action::Continue);
    assert_eq!(r.on_response_headers(&h), Action::Continue);
}

#[test]
fn unpriced_requests_lose_forged_identity_headers_only() {
    let h = host();
    let w = worker(&h);
    for path in [Some("/static/x"), None] {
        let mut headers = vec![
            (":method", "GET"),
            ("X-X402-Payer", "0xforged"),
            ("x-x402-settlement-id", "forged"),
            ("x-x402-other", "kept"),
        ];
        if let Some(p) = path {
            headers.push((":path", p));
        }
        h.request(&headers);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Continue);
        assert_eq!(
            h.removed(),
            ["x-x402-payer", "x-x402-settlement-id"],
            "{path:?}"
        );
        assert_eq!(h.header("x-x402-other").as_deref(), Some("kept"));
    }
}

#[test]
fn priced_path_with_an_unpriced_method_is_refused_405() {
    // Changed by the "hardened edge" issue: a route priced for GET used to let POST through
    // unpriced; it now answers 405 (routes[].other_methods: "pass" keeps the old behaviour).
    let h = host();
    let w = worker(&h);
    for m in ["POST", "PUT", "DELETE", "OPTIONS"] {
        h.request(&[
            (":method", m),
            (":path", "/api/weather"),
            ("x-x402-route", "forged"),
        ]);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Pause, "{m}");
        let reply = h.reply();
        assert_eq!(
            (reply.status(), reply.code().as_str()),
            (405, "method_not_allowed"),
            "{m}"
        );
        assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{m}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(r.on_request_body(&h, 3, true), Action::Pause);
    }
    // other_methods: "pass": the old behaviour, unpriced and forged identity stripped.
    let mut v = sample();
    v["routes"][0]["other_methods"] = json!("pass");
    let w = worker_for(&h, &v);
    h.request(&[
        (":method", "POST"),
        (":path", "/api/weather"),
        ("x-x402-route", "forged"),
    ]);
    h.clear_records();
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(h.removed(), ["x-x402-route"]);
    assert!(h.replies.borrow().is_empty());
}

// ---- routes priced by Envoy route name ----

/// [`sample`] with `report` (1.5 USDC) priced on the Envoy route `api_report` instead of
/// its path and hosts.
fn by_envoy_route() -> Value {
    let mut v = sample();
    let r = v["routes"][1].as_object_mut().unwrap();
    r.remove("match");
    r.remove("hosts");
    r.insert("envoy_route".into(), json!("api_report"));
    v
}

#[test]
fn a_route_priced_by_envoy_route_name_challenges_then_takes_its_token() {
    let h = host();
    let w = worker_for(&h, &by_envoy_route());
    h.set_route_name(Some("api_report"));
    // Whatever the path: Envoy routed it through `api_report`.
    h.request(&[
        (":method", "GET"),
        (":path", "/v2/reports/7?x=1"),
        (":authority", "api.example.com"),
        (":scheme", "https"),
        ("x-x402-payer", "0xforged"),
    ]);
    let mut r = Request::new(1, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    let reply = h.reply();
    assert_eq!(reply.status(), 402);
    assert_eq!(reply.json()["access_token_endpoint"], "/x402/token/report");
    assert_eq!(
        reply.json()["payment_scheme"]["payment_components"][0]["amount"].to_string(),
        "1.5"
    );
    assert_eq!(h.removed(), ["x-x402-payer"]);
    assert!(
        h.set_request_headers().is_empty(),
        "the path as sent: no rewrite"
    );

    // Its token (1.5 USDC for route `report`) lets it through with the identity headers.
    h.request(&[
        (":method", "GET"),
        (":path", "/v2/reports/7"),
        ("authorization", &bearer("report", 1_500_000)),
    ]);
    h.clear_records();
    let mut r = Request::new(2, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert!(h.replies.borrow().is_empty());
    assert_eq!(h.set_request_headers(), identity("report"));
    // The weather route's token is no token for it.
    h.request(&[
        (":method", "GET"),
        (":path", "/v2/reports/7"),
        ("authorization", &bearer("weather", 10_000)),
    ]);
    let mut r = Request::new(3, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    assert_eq!(h.reply().status(), 402);
}

#[test]
fn an_envoy_route_the_config_does_not_price_passes_and_paths_still_price() {
    let h = host();
    let w = worker_for(&h, &by_envoy_route());
    for name in [Some("static_files"), None] {
        h.set_route_name(name);
        h.request(&[
            (":method", "GET"),
            (":path", "/api/users/1/report"),
            (":authority", "api.example.com"),
            ("x-x402-payer", "0xforged"),
        ]);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Continue, "{name:?}");
        assert!(h.replies.borrow().is_empty());
        assert_eq!(h.removed(), ["x-x402-payer"], "still stripped");
        assert_eq!(h.calls.get(), 3, "header list, route name, one removal");
        // The filter's own table still prices its paths.
        weather(&h, &[]);
        let mut r = Request::new(2, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Pause);
        assert_eq!(
            h.reply().json()["access_token_endpoint"],
            "/x402/token/weather"
        );
    }
    // The token endpoint of a route by name works as any other (no route name read).
    h.set_route_name(Some("api_report"));
    token_post(&h, "report", &[("content-type", "application/json")]);
    h.clear_records();
    let mut r = Request::new(3, Some(w));
    assert_eq!(r.on_request_headers(&h, false), Action::Pause);
    assert!(h.replies.borrow().is_empty(), "waiting for the body");
}

#[test]
fn without_envoy_route_entries_the_route_name_is_never_read() {
    let h = host();
    let w = worker(&h);
    h.set_route_name(Some("api_report"));
    h.fail("route_name", 1);
    h.request(&[(":method", "GET"), (":path", "/static/logo.png")]);
    let mut r = Request::new(1, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(h.calls.get(), 1, "the header list only");
    weather(&h, &[]);
    let mut r = Request::new(2, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    assert_eq!(h.reply().status(), 402);
}

#[test]
fn an_unreadable_route_name_leaves_the_path_routes_in_charge() {
    let h = host();
    let w = worker_for(&h, &by_envoy_route());
    h.set_route_name(Some("api_report"));
    h.fail("route_name", 1);
    h.request(&[(":method", "GET"), (":path", "/v2/reports/7")]);
    let mut r = Request::new(1, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    weather(&h, &[]);
    let mut r = Request::new(2, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    assert_eq!(h.reply().status(), 402);
}

#[test]
fn method_override_headers_are_stripped_from_every_request() {
    let h = host();
    let mut v = sample();
    v["routes"][0]["other_methods"] = json!("pass");
    let w = worker_for(&h, &v);
    let overrides: Pairs = vec![
        ("X-HTTP-Method-Override", "GET"),
        ("x-http-method", "GET"),
        ("X-Method-Override", "GET"),
    ];
    // Unpriced (a POST on the GET route that lets other methods pass), priced, free path.
    for (method, path) in [
        ("POST", "/api/weather"),
        ("GET", "/api/weather"),
        ("POST", "/free"),
    ] {
        let mut headers: Pairs = vec![(":method", method), (":path", path)];
        headers.extend(overrides.iter().copied());
        h.request(&headers);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        r.on_request_headers(&h, true);
        assert_eq!(
            h.removed(),
            [
                "x-http-method-override",
                "x-http-method",
                "x-method-override"
            ],
            "{method} {path}"
        );
        for (n, _) in &overrides {
            assert_eq!(h.header(n), None, "{n}");
        }
    }
    // Without them: no host call for it.
    h.request(&[(":method", "POST"), (":path", "/free")]);
    h.clear_records();
    let mut r = Request::new(2, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(h.calls.get(), 1);
}

#[test]
fn bad_authorities_on_a_host_restricted_route_get_400() {
    let h = host();
    let w = worker(&h);
    for a in [
        "api.example.com:abc",
        "",
        "api.example.com:",
        "api example.com",
        "[::1",
    ] {
        h.request(&[
            (":method", "GET"),
            (":path", "/api/users/1/report"),
            (":authority", a),
        ]);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Pause, "{a:?}");
        let reply = h.reply();
        assert_eq!(
            (reply.status(), reply.code().as_str()),
            (400, "invalid_authority"),
            "{a:?}"
        );
    }
    // Case, port and a trailing dot do not matter: priced (402).
    for a in [
        "API.EXAMPLE.COM",
        "api.example.com:8443",
        "api.example.com.",
        "X.Example.Org",
    ] {
        h.request(&[
            (":method", "GET"),
            (":path", "/api/users/1/report"),
            (":authority", a),
        ]);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Pause, "{a:?}");
        assert_eq!(h.reply().status(), 402, "{a:?}");
    }
    // A parsable other host is not the route's (Envoy's virtual host domains refuse it).
    h.request(&[
        (":method", "GET"),
        (":path", "/api/users/1/report"),
        (":authority", "10.0.0.1:80"),
    ]);
    h.clear_records();
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
}

#[test]
fn path_tricks_are_priced_on_the_normalised_path_or_refused() {
    let h = host();
    let w = worker(&h);
    let get = |path: &str| -> Request {
        h.request(&[
            (":method", "GET"),
            (":path", path),
            (":authority", "api.example.com"),
        ]);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        r.on_request_headers(&h, true);
        r
    };
    // `;` parameters and escaped unreserved characters: priced, and with a token the
    // upstream gets the normalised path (the one priced).
    for (path, forwarded) in [
        ("/api;x/weather?city=1", "/api/weather?city=1"),
        ("/api/weather;x", "/api/weather"),
        ("/api/%77eather", "/api/weather"),
    ] {
        get(path);
        assert_eq!(h.reply().status(), 402, "{path}");
        assert_eq!(h.header(":path").as_deref(), Some(forwarded), "{path}");
        let auth = bearer("weather", 10_000);
        h.request(&[
            (":method", "GET"),
            (":path", path),
            (":authority", "api.example.com"),
            ("authorization", &auth),
        ]);
        h.clear_records();
        let mut r = Request::new(2, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Continue, "{path}");
        assert_eq!(h.header(":path").as_deref(), Some(forwarded), "{path}");
        assert!(h
            .set_request_headers()
            .contains(&(":path".to_string(), forwarded.to_string())));
    }
    // Escaped separators, empty and dot segments on a priced path: 400.
    for path in [
        "/api%2Fweather",
        "/api%2fweather",
        "/api%5Cweather",
        "/api//weather",
        "/x/../api/weather",
        "/api/./weather",
        "/api/weather/../../free",
    ] {
        get(path);
        let reply = h.reply();
        assert_eq!(
            (reply.status(), reply.code().as_str()),
            (400, "invalid_path"),
            "{path}"
        );
    }
    // Elsewhere they pass untouched.
    for path in ["/free%2Fx", "/free//x", "/a/../free", "/free;x"] {
        let mut r = get(path);
        assert!(h.replies.borrow().is_empty(), "{path}");
        assert_eq!(h.header(":path").as_deref(), Some(path));
        assert_eq!(r.on_request_body(&h, 1, true), Action::Continue);
    }
}

#[test]
fn a_case_insensitive_route_prices_every_spelling() {
    let h = host();
    let mut v = sample();
    v["routes"][0]["case_insensitive"] = json!(true);
    let w = worker_for(&h, &v);
    for path in ["/API/weather", "/Api/Weather?x=1", "/api/WEATHER/today"] {
        h.request(&[(":method", "GET"), (":path", path)]);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Pause, "{path}");
        assert_eq!(h.reply().status(), 402, "{path}");
    }
    // Without the option, another spelling is another path.
    let w = worker(&h);
    h.request(&[(":method", "GET"), (":path", "/API/weather")]);
    h.clear_records();
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
}

// ---- priced requests with tokens ----

#[test]
fn priced_request_without_token_gets_the_402() {
    let h = host();
    let w = worker(&h);
    weather(&h, &[("x-forwarded-proto", "https")]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    let reply = h.reply();
    assert_eq!(reply.status(), 402);
    assert_eq!(reply.code(), "missing_token");
    assert_eq!(reply.json()["access_token_endpoint"], "/x402/token/weather");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let pr: Value = serde_json::from_slice(
        &x402_protocol::b64::decode(reply.header("payment-required").unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        pr["resource"]["url"],
        "https://api.example.com/api/weather?city=lisbon"
    );
    assert_eq!(
        h.counters(),
        counters(&[("x402_challenges", 1), ("x402_rejected_missing_token", 1)])
    );
    assert!(h.callouts.borrow().is_empty());
    // Answered: the rest of the request is held.
    assert_eq!(r.on_request_body(&h, 3, true), Action::Pause);
    assert_eq!(r.on_request_trailers(&h), Action::Pause);
}

#[test]
fn priced_requests_lose_every_reserved_header() {
    let h = host();
    let w = worker(&h);
    weather(
        &h,
        &[("x-x402-payer", "0xforged"), ("X-X402-Anything", "x")],
    );
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    assert_eq!(h.removed(), ["x-x402-payer", "x-x402-anything"]);
    assert_eq!(h.reply().status(), 402);
}

#[test]
fn valid_token_goes_through_with_identity_headers_then_hits_the_cache() {
    let h = host();
    let w = worker(&h);
    let auth = bearer("weather", 10_000);
    weather(
        &h,
        &[("authorization", &auth), ("x-x402-payer", "0xforged")],
    );
    let mut r = Request::new(1, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert!(h.replies.borrow().is_empty());
    // The forged identity and, not forwarded by default, our token.
    assert_eq!(h.removed(), ["x-x402-payer", "authorization"]);
    assert_eq!(h.header("authorization"), None);
    assert_eq!(h.set_request_headers(), identity("weather"));
    assert_eq!(h.header("x-x402-payer"), Some(payer()));
    assert_eq!(
        h.counters(),
        counters(&[
            ("x402_accepted", 1),
            ("x402_token_cache_misses", 1),
            ("x402_token_signature_checks", 1)
        ])
    );
    assert_eq!(r.on_request_body(&h, 3, true), Action::Continue);

    // The same token again: served from the cache, in eight host calls.
    weather(&h, &[("authorization", &auth)]);
    h.clear_records();
    let mut r = Request::new(2, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(
        h.counters(),
        counters(&[("x402_accepted", 1), ("x402_token_cache_hits", 1)])
    );
    assert_eq!(
        h.calls.get(),
        9,
        "header list, clock, three counters (one per route), token removed, three headers"
    );
    // Its response: Cache-Control private, no-store (one more host call).
    h.clear_records();
    assert_eq!(r.on_response_headers(&h), Action::Continue);
    assert_eq!(
        h.set_response_headers(),
        [("cache-control".to_string(), "private, no-store".to_string())]
    );
    assert_eq!(h.calls.get(), 1);
}

#[test]
fn forward_token_keeps_the_bearer_header_for_the_upstream() {
    let h = host();
    let mut cfg = sample();
    cfg["routes"][0]["forward_token"] = json!(true);
    let w = worker_for(&h, &cfg);
    let auth = bearer("weather", 10_000);
    weather(&h, &[("authorization", &auth)]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert!(h.removed().is_empty());
    assert_eq!(h.header("authorization"), Some(auth));
    assert_eq!(h.set_request_headers(), identity("weather"));
}

#[test]
fn unusable_tokens_get_the_402_with_their_reason() {
    let h = host();
    let w = worker(&h);
    let forged = {
        let key = k256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        x402_protocol::token::mint(&key, "k1", claims("weather", 10_000), NOW, 300)
    };
    let cases = [
        (
            format!("Bearer {forged}"),
            "bad_signature",
            Some("x402_token_cache_misses"),
        ),
        (
            bearer("weather", 9_999),
            "wrong_route",
            Some("x402_token_cache_misses"),
        ),
        (
            bearer("report", 2_000_000),
            "wrong_route",
            Some("x402_token_cache_misses"),
        ),
        ("Basic abc".to_string(), "malformed_header", None),
        (
            "Bearer garbage".to_string(),
            "malformed_token",
            Some("x402_token_cache_misses"),
        ),
    ];
    for (auth, code, cache) in cases {
        weather(&h, &[("authorization", &auth)]);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Pause, "{code}");
        assert_eq!(
            (h.reply().status(), h.reply().code()),
            (402, code.to_string())
        );
        let rejected = format!("x402_rejected_{code}");
        let mut want = vec![("x402_challenges", 1), (rejected.as_str(), 1)];
        if let Some(c) = cache {
            want.push((c, 1));
            // Every verdict but a token that is no JWT at all checked its signature.
            if code != "malformed_token" {
                want.push(("x402_token_signature_checks", 1));
            }
        }
        let mut got = h.counters();
        got.sort();
        let mut want = counters(&want);
        want.sort();
        assert_eq!(got, want, "{code}");
        assert!(h.set_request_headers().is_empty());
    }
    // Expired, a second later than the leeway allows.
    h.set_now_ms(NOW_MS + 306_000);
    weather(&h, &[("authorization", &bearer("weather", 10_000))]);
    h.clear_records();
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    assert_eq!(h.reply().code(), "expired");
}

#[test]
fn without_a_header_list_headers_are_read_one_by_one() {
    let h = host();
    let w = worker(&h);
    h.fail("request_header_map", 10);
    let auth = bearer("weather", 10_000);
    weather(&h, &[("authorization", &auth), ("x-x402-other", "x")]);
    let mut r = Request::new(1, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    // Cannot list them: the method-override and identity names go blindly, other reserved
    // names cannot be seen.
    assert_eq!(
        h.removed(),
        [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-x402-payer",
            "x-x402-route",
            "x-x402-settlement-id",
            "authorization"
        ]
    );
    assert_eq!(h.set_request_headers(), identity("weather"));
    // Unpriced: the identity names go blindly too.
    h.request(&[(":path", "/free")]);
    h.clear_records();
    let mut r = Request::new(2, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(h.removed().len(), 6);
}

#[test]
fn a_malformed_header_list_falls_back_to_single_reads() {
    let h = host();
    let w = worker(&h);
    weather(&h, &[("authorization", &bearer("weather", 10_000))]);
    h.corrupt_header_map();
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert!(h.logged(Level::Warn, "x402: cannot read the request header list"));
    assert_eq!(h.set_request_headers(), identity("weather"));
}

#[test]
fn header_bytes_that_are_not_utf8_make_a_malformed_token() {
    let h = host();
    let w = worker(&h);
    weather(&h, &[]);
    // Bytes that are not UTF-8 in a value are fine (U+FFFD); they make the token malformed.
    h.add_raw_header("authorization", b"Bearer \xff\xfe");
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    assert_eq!(h.reply().code(), "malformed_token");
}

#[test]
fn host_failures_are_logged_not_fatal() {
    let h = host();
    let w = worker(&h);
    h.fail("set_request_header", 2);
    h.fail("remove_request_header", 2);
    weather(
        &h,
        &[
            ("authorization", &bearer("weather", 10_000)),
            ("x-x402-a", "1"),
        ],
    );
    let mut r = Request::new(1, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert!(h.logged(
        Level::Warn,
        "x402: cannot remove request header x-x402-a: BadArgument"
    ));
    assert!(h.logged(
        Level::Warn,
        "x402: cannot add request header x-x402-payer: BadArgument"
    ));
    h.fail("send_reply", 2);
    weather(&h, &[]);
    let mut r = Request::new(2, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    assert!(h.logged(
        Level::Error,
        "x402: cannot send local response: BadArgument"
    ));
}

#[test]
fn no_clock_means_no_token_is_valid_yet() {
    let h = host();
    let w = worker(&h);
    h.fail("now", 2);
    weather(&h, &[("authorization", &bearer("weather", 10_000))]);
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    assert_eq!(h.reply().code(), "not_yet_valid");
}

// ---- x402 v2 payments ----

#[test]
fn payment_signature_is_settled_then_the_request_resumes() {
    let h = host();
    let w = worker(&h);
    let sig = payment_signature();
    weather(
        &h,
        &[("payment-signature", &sig), ("x-x402-payer", "0xforged")],
    );
    let mut r = Request::new(1, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    assert!(h.replies.borrow().is_empty());
    let c = h.callout();
    assert_eq!(c.cluster, "x402_settler");
    assert_eq!(c.timeout, Duration::from_millis(3000));
    assert_eq!(c.header(":path"), Some("/v1/tokens"));
    assert_eq!(c.header(":method"), Some("POST"));
    let body = c.json();
    assert_eq!(body["requirement"]["route"], "weather");
    assert_eq!(
        body["requirement"]["resource"],
        "http://api.example.com/api/weather?city=lisbon"
    );
    assert_eq!(body["payment"]["payload"]["signature"], "0xabc");
    assert_eq!(body["hold_secs"], 300, "held for the upstream's answer");
    // No x-request-id on the request: none made up for the callout.
    assert_eq!(c.header("x-request-id"), None);
    assert_eq!(h.counter("x402_token_requests"), 1);
    // Held while the settler works.
    assert_eq!(r.on_request_body(&h, 3, false), Action::Pause);

    let t = token(claims("weather", 10_000), NOW);
    let size = minted(&h, &t);
    h.clear_records();
    r.on_callout_response(&h, size);
    assert_eq!(h.resumed.get(), 1);
    assert!(h.replies.borrow().is_empty());
    assert_eq!(h.set_request_headers(), identity("weather"));
    assert_eq!(h.removed(), ["payment-signature"]);
    // The minted token was checked once, for every worker (see the shared-table tests).
    assert_eq!(
        h.counters(),
        counters(&[("x402_accepted", 1), ("x402_token_signature_checks", 1)])
    );
    // Paid: the body goes on, and the response carries the receipt.
    assert_eq!(r.on_request_body(&h, 3, true), Action::Continue);
    assert_eq!(r.on_request_trailers(&h), Action::Continue);
    // The upstream answered 200: the held payment is released, then the receipt goes on.
    let call = upstream_then_settler(&h, &mut r, "200", "pending");
    assert_eq!(call.header(":path"), Some("/v1/settlements/s-1/release"));
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.json(), json!({"upstream_status": 200}));
    let resp = h.set_response_headers();
    let names: Vec<&str> = resp.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "payment-response",
            "x-x402-access-token",
            "x-x402-settlement-id",
            "cache-control"
        ]
    );
    assert_eq!(resp[3].1, "private, no-store", "the token is in a header");
    assert_eq!(resp[1].1, t);
    assert_eq!(resp[2].1, "s-1");
    let receipt: Value =
        serde_json::from_slice(&x402_protocol::b64::decode(&resp[0].1).unwrap()).unwrap();
    assert_eq!(receipt["payer"], payer());
    assert_eq!(receipt["transaction"], "");

    // The minted token was cached: its reuse is a cache hit, no callout.
    weather(&h, &[("authorization", &format!("Bearer {t}"))]);
    h.clear_records();
    let mut r = Request::new(2, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(h.counter("x402_token_cache_hits"), 1);
}

#[test]
fn an_upstream_error_voids_the_held_payment_and_the_response_says_so() {
    let h = host();
    let w = worker(&h);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    let size = minted(&h, &token(claims("weather", 10_000), NOW));
    r.on_callout_response(&h, size);
    assert_eq!(h.resumed.get(), 1);
    h.clear_records();
    let call = upstream_then_settler(&h, &mut r, "502", "failed");
    assert_eq!(call.header(":path"), Some("/v1/settlements/s-1/void"));
    let resp = h.set_response_headers();
    assert!(
        resp.iter().all(|(n, _)| n != "x-x402-access-token"),
        "{resp:?}"
    );
    assert!(resp.contains(&("x-x402-settlement".into(), "voided".into())));
    let pr = &resp
        .iter()
        .find(|(n, _)| n == "payment-response")
        .unwrap()
        .1;
    let receipt: Value = serde_json::from_slice(&x402_protocol::b64::decode(pr).unwrap()).unwrap();
    assert_eq!(receipt["success"], false);
    assert_eq!(receipt["extra"]["settlement"], "voided");

    // The settler cannot be told: the hold expires (voided); the response says unknown.
    let h = host();
    let w = worker(&h);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    let size = minted(&h, &token(claims("weather", 10_000), NOW));
    r.on_callout_response(&h, size);
    *h.response.borrow_mut() = vec![(":status".to_string(), "200".to_string())];
    h.fail("dispatch_callout", 2);
    assert_eq!(r.on_response_headers(&h), Action::Continue);
    assert!(h
        .set_response_headers()
        .contains(&("x-x402-settlement".into(), "unknown".into())));

    // charge_on_upstream_error: nothing held, nothing called at response time.
    let h = host();
    let mut v = sample();
    v["routes"][0]["charge_on_upstream_error"] = json!(true);
    let w = worker_for(&h, &v);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    assert!(h.callout().json().get("hold_secs").is_none());
    let size = minted(&h, &token(claims("weather", 10_000), NOW));
    r.on_callout_response(&h, size);
    *h.response.borrow_mut() = vec![(":status".to_string(), "500".to_string())];
    let n = h.callouts.borrow().len();
    assert_eq!(r.on_response_headers(&h), Action::Continue);
    assert_eq!(h.callouts.borrow().len(), n);
}

#[test]
fn before_response_waits_for_the_mined_settlement() {
    let h = host();
    let mut v = sample();
    v["routes"][0]["settlement"] = json!("before_response");
    let w = worker_for(&h, &v);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w.clone()));
    r.on_request_headers(&h, true);
    assert!(
        h.callout().json().get("hold_secs").is_none(),
        "settled before: no hold"
    );
    let size = minted(&h, &token(claims("weather", 10_000), NOW));
    r.on_callout_response(&h, size);
    assert_eq!(h.resumed.get(), 0, "still held");
    let wait = h.callouts.borrow().last().unwrap().clone();
    assert_eq!(wait.header(":method"), Some("GET"));
    assert_eq!(
        wait.header(":path"),
        Some("/v1/settlements/s-1?wait_ms=20000")
    );
    let size = h.callout_answers(
        &[(":status", "200")],
        br#"{"state":"settled","transfer_tx":"0xbeef"}"#,
    );
    r.on_callout_response(&h, size);
    assert_eq!(h.resumed.get(), 1);
    h.clear_records();
    assert_eq!(r.on_response_headers(&h), Action::Continue);
    let resp = h.set_response_headers();
    let pr = &resp
        .iter()
        .find(|(n, _)| n == "payment-response")
        .unwrap()
        .1;
    let receipt: Value = serde_json::from_slice(&x402_protocol::b64::decode(pr).unwrap()).unwrap();
    assert_eq!(receipt["transaction"], "0xbeef");
    assert_eq!(receipt["extra"]["settlementId"], "s-1");
    // A settlement that failed: 402; one not final in time: 504 naming it.
    for (body, status) in [
        (&br#"{"state":"failed","error":"reverted"}"#[..], 402),
        (&br#"{"state":"submitted"}"#[..], 504),
    ] {
        weather(&h, &[("payment-signature", &payment_signature())]);
        let mut r = Request::new(2, Some(w.clone()));
        r.on_request_headers(&h, true);
        let size = minted(&h, &token(claims("weather", 10_000), NOW));
        r.on_callout_response(&h, size);
        let size = h.callout_answers(&[(":status", "200")], body);
        h.clear_records();
        r.on_callout_response(&h, size);
        assert_eq!(h.reply().status(), status);
    }
}

#[test]
fn a_settled_token_the_edge_cannot_verify_still_lets_the_paid_request_through() {
    let h = host();
    let w = worker(&h);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    let foreign = {
        let key = crate::test_fixtures::signing_key();
        x402_protocol::token::mint(&key, "k9", claims("weather", 10_000), NOW, 300)
    };
    let size = minted(&h, &foreign);
    r.on_callout_response(&h, size);
    assert_eq!(h.resumed.get(), 1);
    assert!(h.logged(Level::Warn, "does not check out at the edge (unknown_key)"));
    // From the settler's body (the payer checksummed), not from the unverified claims.
    assert_eq!(h.set_request_headers(), identity("weather"));
}

#[test]
fn a_valid_token_wins_over_a_payment_signature() {
    let h = host();
    let w = worker(&h);
    weather(
        &h,
        &[
            ("authorization", &bearer("weather", 10_000)),
            ("payment-signature", &payment_signature()),
        ],
    );
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert!(
        h.callouts.borrow().is_empty(),
        "a payment is never taken twice"
    );
}

#[test]
fn an_unusable_payment_signature_gets_the_402() {
    let h = host();
    let w = worker(&h);
    let not_json = x402_protocol::b64::encode(b"[1]");
    for (sig, message) in [
        ("%%%", "PAYMENT-SIGNATURE is not base64"),
        (
            not_json.as_str(),
            "PAYMENT-SIGNATURE is not a base64 JSON object",
        ),
    ] {
        weather(&h, &[("payment-signature", sig)]);
        h.clear_records();
        let mut r = Request::new(1, Some(w.clone()));
        assert_eq!(r.on_request_headers(&h, true), Action::Pause);
        let reply = h.reply();
        assert_eq!(
            (reply.status(), reply.code().as_str()),
            (402, "invalid_payment_signature")
        );
        assert_eq!(reply.json()["message"], message);
        assert!(h.callouts.borrow().is_empty());
        assert_eq!(h.counters(), counters(&[("x402_challenges", 1)]));
    }
}

#[test]
fn a_refused_payment_gets_the_402_with_the_settlers_error() {
    let h = host();
    let w = worker(&h);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    let size = h.callout_answers(
        &[(":status", "402")],
        br#"{"error":"invalid_signature","message":"bad sig"}"#,
    );
    h.clear_records();
    r.on_callout_response(&h, size);
    let reply = h.reply();
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (402, "invalid_signature")
    );
    assert_eq!(reply.json()["message"], "bad sig");
    assert_eq!(h.resumed.get(), 0);
    assert_eq!(h.counters(), counters(&[("x402_challenges", 1)]));
    assert_eq!(r.on_response_headers(&h), Action::Continue);
    assert!(h.set_response_headers().is_empty());
}

/// The settler could not be reached: a reset or failed call (no headers at all), Envoy's own
/// 503/504 for a dead, overloaded or slow settler.
fn unreachable() -> Vec<(Pairs, &'static [u8])> {
    vec![
        (vec![], b""),
        (
            vec![(":status", "503"), ("content-type", "text/plain")],
            b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        ),
        (vec![(":status", "503")], b"no healthy upstream"),
        (vec![(":status", "504")], b"upstream request timeout"),
    ]
}

/// What the settler answered that is no payment: its own 5xx JSON (store or chain down,
/// internal), a 5xx without its JSON, a 2xx without a token. Never opens a route.
fn answered_failures() -> Vec<(Pairs, &'static [u8], &'static str)> {
    vec![
        (
            vec![(":status", "503"), ("content-type", "application/json")],
            br#"{"error":"store_unavailable","message":"the payment store is unavailable"}"#,
            "store_unavailable",
        ),
        (
            vec![(":status", "503"), ("content-type", "application/json")],
            br#"{"error":"chain_unavailable","message":"the chain RPC is unavailable"}"#,
            "chain_unavailable",
        ),
        (
            vec![(":status", "500"), ("content-type", "application/json")],
            br#"{"error":"internal","message":"internal error"}"#,
            "internal",
        ),
        (vec![(":status", "500")], b"", "settler_unavailable"),
        (vec![(":status", "200")], b"{}", "settler_unavailable"),
    ]
}

#[test]
fn payment_during_a_settler_outage_is_denied_by_default() {
    let h = host();
    let w = worker(&h);
    let cases = unreachable()
        .into_iter()
        .map(|(h, b)| (h, b, "settler_unavailable"))
        .chain(answered_failures());
    for (headers, body, code) in cases {
        weather(&h, &[("payment-signature", &payment_signature())]);
        let mut r = Request::new(1, Some(w.clone()));
        r.on_request_headers(&h, true);
        let size = h.callout_answers(&headers, body);
        h.clear_records();
        r.on_callout_response(&h, size);
        let reply = h.reply();
        assert_eq!(
            (reply.status(), reply.code().as_str()),
            (503, code),
            "{headers:?}"
        );
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(h.resumed.get(), 0);
        assert_eq!(h.counters(), counters(&[("x402_settler_errors", 1)]));
        assert!(h.logged(Level::Warn, "denying (503)"));
    }
}

#[test]
fn an_unreachable_settler_opens_an_allow_route_and_counts_it() {
    let h = host();
    let w = worker_for(&h, &allow_mode());
    for (headers, body) in unreachable() {
        weather(&h, &[("payment-signature", &payment_signature())]);
        let mut r = Request::new(1, Some(w.clone()));
        r.on_request_headers(&h, true);
        let size = h.callout_answers(&headers, body);
        h.clear_records();
        r.on_callout_response(&h, size);
        assert!(h.replies.borrow().is_empty());
        assert_eq!(h.resumed.get(), 1);
        assert!(h.set_request_headers().is_empty(), "unpaid: no identity");
        // The unchecked payment header does not travel to the upstream either.
        assert!(
            h.removed().iter().any(|n| n == "payment-signature"),
            "{:?}",
            h.removed()
        );
        assert_eq!(
            h.counters(),
            counters(&[("x402_settler_errors", 1), ("x402_fail_open", 1)]),
            "{headers:?}"
        );
        assert!(h.logged(
            Level::Warn,
            "failure_mode=allow lets the request through unpaid"
        ));
        // The body that arrives after the decision goes on (it used to be held until
        // Envoy's idle timeout).
        assert_eq!(r.on_request_body(&h, 1, false), Action::Continue);
        assert_eq!(r.on_request_body(&h, 2, true), Action::Continue);
        assert_eq!(r.on_request_trailers(&h), Action::Continue);
        // Unpaid: no receipt, and the upstream's Cache-Control is its own.
        assert_eq!(r.on_response_headers(&h), Action::Continue);
        assert!(h.set_response_headers().is_empty());
    }
}

#[test]
fn a_settler_answer_never_opens_an_allow_route() {
    let h = host();
    let w = worker_for(&h, &allow_mode());
    for (headers, body, code) in answered_failures() {
        weather(&h, &[("payment-signature", &payment_signature())]);
        let mut r = Request::new(1, Some(w.clone()));
        r.on_request_headers(&h, true);
        let size = h.callout_answers(&headers, body);
        h.clear_records();
        r.on_callout_response(&h, size);
        let reply = h.reply();
        assert_eq!(
            (reply.status(), reply.code().as_str()),
            (503, code),
            "{headers:?}"
        );
        assert_eq!(h.resumed.get(), 0, "{headers:?}: not let through");
        assert_eq!(h.counter("x402_fail_open"), 0);
        assert_eq!(r.on_request_body(&h, 1, true), Action::Pause, "answered");
    }
    // A refusal (4xx) stays a 402 under allow.
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w.clone()));
    r.on_request_headers(&h, true);
    let size = h.callout_answers(
        &[(":status", "400")],
        br#"{"error":"invalid_payment","message":"`v` is out of range","internal":"stack"}"#,
    );
    h.clear_records();
    r.on_callout_response(&h, size);
    let reply = h.reply();
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (402, "invalid_payment")
    );
    assert!(reply.json().get("internal").is_none());
    assert_eq!(h.resumed.get(), 0);
}

#[test]
fn a_route_overrides_the_settler_wide_failure_mode() {
    // settler.failure_mode allow, the weather route deny: an unreachable settler is a 503.
    let h = host();
    let mut v = allow_mode();
    v["routes"][0]["failure_mode"] = json!("deny");
    let w = worker_for(&h, &v);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    h.clear_records();
    r.on_callout_response(&h, 0);
    assert_eq!(h.reply().status(), 503);
    assert_eq!(h.resumed.get(), 0);
    // settler.failure_mode deny (default), the route allow: let through.
    let h = host();
    let mut v = sample();
    v["routes"][0]["failure_mode"] = json!("allow");
    let w = worker_for(&h, &v);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    h.clear_records();
    r.on_callout_response(&h, 0);
    assert!(h.replies.borrow().is_empty());
    assert_eq!(h.resumed.get(), 1);
    assert_eq!(h.counter("x402_fail_open"), 1);
}

#[test]
fn a_post_body_after_the_fail_open_decision_goes_on() {
    // A priced POST (the report route has no method list) with a body that arrives in two
    // chunks after the settler's failure let it through.
    let h = host();
    let w = worker_for(&h, &allow_mode());
    h.request(&[
        (":method", "POST"),
        (":path", "/api/users/7/report"),
        (":authority", "api.example.com"),
        ("content-length", "6"),
        ("payment-signature", &payment_signature()),
    ]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, false), Action::Pause);
    assert_eq!(h.callouts.borrow().len(), 1);
    h.clear_records();
    r.on_callout_response(&h, 0);
    assert_eq!(h.resumed.get(), 1);
    let n = h.body_chunk(b"abc");
    assert_eq!(r.on_request_body(&h, n, false), Action::Continue);
    let n = h.body_chunk(b"def");
    assert_eq!(r.on_request_body(&h, n, true), Action::Continue);
    // The same when the callout cannot even be made (decided in the headers callback).
    let h = host();
    let w = worker_for(&h, &allow_mode());
    h.fail("dispatch_callout", 10);
    h.request(&[
        (":method", "POST"),
        (":path", "/api/users/7/report"),
        (":authority", "api.example.com"),
        ("payment-signature", &payment_signature()),
    ]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, false), Action::Continue);
    assert_eq!(h.counter("x402_fail_open"), 1);
    assert_eq!(r.on_request_body(&h, 3, true), Action::Continue);
}

#[test]
fn paid_responses_are_private_no_store_unless_the_route_keeps_the_upstreams() {
    // Default: a bearer-paid response gets Cache-Control: private, no-store.
    let h = host();
    let w = worker(&h);
    weather(&h, &[("authorization", &bearer("weather", 10_000))]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    h.clear_records();
    r.on_response_headers(&h);
    assert_eq!(
        h.set_response_headers(),
        [("cache-control".to_string(), "private, no-store".to_string())]
    );
    // cache_control "upstream": the upstream's header is left alone.
    let h = host();
    let mut v = sample();
    v["routes"][0]["cache_control"] = json!("upstream");
    let w = worker_for(&h, &v);
    weather(&h, &[("authorization", &bearer("weather", 10_000))]);
    let mut r = Request::new(1, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    h.clear_records();
    r.on_response_headers(&h);
    assert!(h.set_response_headers().is_empty());
    // ... but an x402 v2 paid response carries a fresh token: private, no-store anyway.
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(2, Some(w));
    r.on_request_headers(&h, true);
    let size = minted(&h, &token(claims("weather", 10_000), NOW));
    r.on_callout_response(&h, size);
    h.clear_records();
    upstream_then_settler(&h, &mut r, "200", "pending");
    assert!(h
        .set_response_headers()
        .contains(&("cache-control".to_string(), "private, no-store".to_string())));
    // Unpriced requests: untouched.
    let h = host();
    let w = worker(&h);
    h.request(&[(":method", "GET"), (":path", "/free")]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    h.clear_records();
    r.on_response_headers(&h);
    assert!(h.set_response_headers().is_empty());
    assert_eq!(h.calls.get(), 0);
}

#[test]
fn payment_when_the_settler_cannot_be_called() {
    // Deny: 503 from the headers callback.
    let h = host();
    let w = worker(&h);
    h.fail("dispatch_callout", 2);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    let reply = h.reply();
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (503, "settler_unavailable")
    );
    assert_eq!(
        h.counters(),
        counters(&[("x402_token_requests", 1), ("x402_settler_errors", 1)])
    );
    assert!(h.logged(
        Level::Warn,
        "x402: cannot call settler cluster \"x402_settler\": BadArgument"
    ));

    // Allow: the headers callback lets it continue (no resume needed).
    let h = host();
    let w = worker_for(&h, &allow_mode());
    h.fail("dispatch_callout", 10);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert!(h.replies.borrow().is_empty());
    assert_eq!(h.resumed.get(), 0);
    assert!(h.set_request_headers().is_empty());
    assert!(h.logged(
        Level::Warn,
        "failure_mode=allow lets the request through unpaid"
    ));
}

#[test]
fn a_failed_resume_is_logged() {
    let h = host();
    let w = worker(&h);
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w));
    r.on_request_headers(&h, true);
    let size = minted(&h, &token(claims("weather", 10_000), NOW));
    h.fail("resume_request", 2);
    h.fail("set_response_header", 1);
    r.on_callout_response(&h, size);
    assert!(h.logged(Level::Error, "x402: cannot resume request: BadArgument"));
    upstream_then_settler(&h, &mut r, "204", "pending");
    assert!(h.logged(
        Level::Warn,
        "x402: cannot add response header payment-response: NotFound"
    ));
}

// ---- the token endpoint ----

const PAYMENT: &[u8] = br#"{"version":"Version 0.1","permit":{"value":"10000"}}"#;

#[test]
fn token_endpoint_body_in_one_chunk_is_relayed_to_the_settler() {
    let h = host();
    let w = worker(&h);
    token_post(
        &h,
        "weather",
        &[("content-length", "51"), ("x-x402-payer", "0xforged")],
    );
    let mut r = Request::new(7, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, false), Action::Pause);
    assert!(w.pending.borrow().contains(7));
    assert!(
        h.removed().is_empty(),
        "not a priced route: the endpoint answers itself"
    );
    let size = h.body_chunk(PAYMENT);
    assert_eq!(r.on_request_body(&h, size, true), Action::Pause);
    assert!(!w.pending.borrow().contains(7));
    let c = h.callout();
    let body = c.json();
    assert_eq!(body["requirement"]["route"], "weather");
    assert_eq!(body["requirement"]["token_ttl_secs"], 300);
    assert_eq!(body["requirement"]["accepts"].as_array().unwrap().len(), 2);
    assert!(body["requirement"]
        .get("resource")
        .is_none_or(Value::is_null));
    assert_eq!(
        body["payment"],
        serde_json::from_slice::<Value>(PAYMENT).unwrap()
    );
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(c.header("authorization"), None, "no api_secret configured");
    assert_eq!(h.counters(), counters(&[("x402_token_requests", 1)]));

    let size = h.callout_answers(
        &[(":status", "200"), ("content-type", "application/json")],
        br#"{"access_token":"t"}"#,
    );
    r.on_callout_response(&h, size);
    let reply = h.reply();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.answer.body, br#"{"access_token":"t"}"#);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(h.resumed.get(), 0);
    // A late callout answer changes nothing.
    r.on_callout_response(&h, size);
    assert_eq!(h.replies.borrow().len(), 1);
}

#[test]
fn token_endpoint_body_in_many_chunks() {
    let h = host();
    let w = worker(&h);
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, false), Action::Pause);
    for chunk in PAYMENT.chunks(10) {
        let size = h.body_chunk(chunk);
        let last = size == PAYMENT.len();
        assert_eq!(r.on_request_body(&h, size, last), Action::Pause);
        assert_eq!(h.callouts.borrow().len(), usize::from(last), "at {size}");
    }
    assert_eq!(h.callout().json()["payment"]["permit"]["value"], "10000");
}

#[test]
fn token_endpoint_body_ended_by_trailers() {
    let h = host();
    let w = worker(&h);
    token_post(&h, "report", &[]);
    let mut r = Request::new(7, Some(w.clone()));
    r.on_request_headers(&h, false);
    let size = h.body_chunk(PAYMENT);
    assert_eq!(r.on_request_body(&h, size, false), Action::Pause);
    assert!(h.callouts.borrow().is_empty());
    assert_eq!(r.on_request_trailers(&h), Action::Pause);
    assert!(!w.pending.borrow().contains(7));
    let body = h.callout().json();
    assert_eq!(body["requirement"]["route"], "report");
    assert_eq!(body["payment"]["version"], "Version 0.1");
}

#[test]
fn token_endpoint_calls_carry_the_api_secret() {
    let h = host();
    let mut v = sample();
    v["settler"]["api_secret"] = json!("0123456789abcdef-secret");
    let w = worker_for(&h, &v);
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w));
    r.on_request_headers(&h, false);
    let size = h.body_chunk(PAYMENT);
    r.on_request_body(&h, size, true);
    assert_eq!(
        h.callout().header("authorization"),
        Some("Bearer 0123456789abcdef-secret")
    );
}

#[test]
fn token_endpoint_refuses_bad_requests_at_once() {
    let h = host();
    let w = worker(&h);
    // (method, path, extra headers, end of stream, status, error code)
    let cases: [(&str, &str, Pairs, bool, u32, &str); 4] = [
        (
            "POST",
            "/x402/token/nope",
            vec![],
            false,
            404,
            "unknown_route",
        ),
        (
            "GET",
            "/x402/token/weather",
            vec![],
            false,
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/x402/token/weather",
            vec![],
            true,
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/x402/token/weather",
            vec![("content-length", "16385")],
            false,
            413,
            "payload_too_large",
        ),
    ];
    for (method, path, extra, end_of_stream, status, code) in cases {
        let mut headers = vec![(":method", method), (":path", path)];
        headers.extend_from_slice(&extra);
        h.request(&headers);
        h.clear_records();
        let mut r = Request::new(7, Some(w.clone()));
        assert_eq!(
            r.on_request_headers(&h, end_of_stream),
            Action::Pause,
            "{code}"
        );
        let reply = h.reply();
        assert_eq!((reply.status(), reply.code().as_str()), (status, code));
        assert!(
            !w.pending.borrow().contains(7),
            "{code}: nothing to wait for"
        );
        assert!(h.counters().is_empty());
        assert_eq!(r.on_request_body(&h, 3, true), Action::Pause);
        assert!(h.callouts.borrow().is_empty());
    }
    assert_eq!(
        {
            h.request(&[(":method", "GET"), (":path", "/x402/token/weather")]);
            h.clear_records();
            Request::new(1, Some(w.clone())).on_request_headers(&h, true);
            h.reply().header("allow").map(str::to_string)
        },
        Some("POST".to_string())
    );
    // Under the prefix but not a token endpoint path: not the filter's.
    h.request(&[
        (":method", "POST"),
        (":path", "/x402/tokenizer"),
        ("x-x402-route", "f"),
    ]);
    h.clear_records();
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(h.removed(), ["x-x402-route"]);
}

#[test]
fn token_endpoint_bounds_streamed_bodies() {
    let h = host();
    let w = worker(&h);
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w.clone()));
    r.on_request_headers(&h, false);
    let size = h.body_chunk(&[b' '; 16 * 1024 + 1]);
    assert_eq!(r.on_request_body(&h, size, false), Action::Pause);
    let reply = h.reply();
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (413, "payload_too_large")
    );
    assert!(!w.pending.borrow().contains(7));
    assert!(h.callouts.borrow().is_empty());
    assert_eq!(r.on_request_body(&h, size, true), Action::Pause);
    assert_eq!(h.replies.borrow().len(), 1);
}

#[test]
fn token_endpoint_refuses_a_body_that_is_not_a_json_object() {
    let h = host();
    let w = worker(&h);
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w));
    r.on_request_headers(&h, false);
    let size = h.body_chunk(b"[1, 2]");
    r.on_request_body(&h, size, true);
    let reply = h.reply();
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (400, "invalid_json")
    );
    assert!(h.callouts.borrow().is_empty());
    assert!(h.counters().is_empty());
}

#[test]
fn token_endpoint_relays_settler_refusals() {
    let h = host();
    let w = worker(&h);
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w));
    r.on_request_headers(&h, false);
    let size = h.body_chunk(PAYMENT);
    r.on_request_body(&h, size, true);
    let size = h.callout_answers(&[(":status", "409")], br#"{"error":"replay"}"#);
    r.on_callout_response(&h, size);
    let reply = h.reply();
    assert_eq!((reply.status(), reply.code().as_str()), (409, "replay"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(h.counter("x402_settler_errors"), 0);
}

#[test]
fn token_endpoint_fails_closed_on_settler_outages() {
    let h = host();
    let w = worker_for(&h, &allow_mode());
    for (headers, body) in unreachable() {
        token_post(&h, "weather", &[]);
        h.clear_records();
        let mut r = Request::new(7, Some(w.clone()));
        r.on_request_headers(&h, false);
        let size = h.body_chunk(PAYMENT);
        r.on_request_body(&h, size, true);
        let size = h.callout_answers(&headers, body);
        r.on_callout_response(&h, size);
        let reply = h.reply();
        assert_eq!(
            (reply.status(), reply.code().as_str()),
            (503, "settler_unavailable"),
            "even with failure_mode allow: there is no token to give"
        );
        assert_eq!(h.counter("x402_settler_errors"), 1);
        assert!(h.logged(Level::Warn, "x402: token endpoint: the settler"));
    }
}

#[test]
fn token_endpoint_when_the_settler_cannot_be_called() {
    let h = host();
    let w = worker(&h);
    h.fail("dispatch_callout", 10);
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w));
    r.on_request_headers(&h, false);
    let size = h.body_chunk(PAYMENT);
    assert_eq!(r.on_request_body(&h, size, true), Action::Pause);
    let reply = h.reply();
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (503, "settler_unavailable")
    );
    assert_eq!(
        reply.json()["message"],
        "the settler cluster cannot be called"
    );
    assert_eq!(
        h.counters(),
        counters(&[("x402_token_requests", 1), ("x402_settler_errors", 1)])
    );
}

// ---- the timer ----

/// The callouts to the token API (not the revocation list fetches).
fn token_callouts(h: &FakeHost) -> Vec<crate::test_fixtures::fake_host::Callout> {
    h.callouts
        .borrow()
        .iter()
        .filter(|c| c.header(":path") != Some("/v1/revocations?limit=10000"))
        .cloned()
        .collect()
}

#[test]
fn a_stalled_body_is_answered_408_by_the_timer() {
    let h = host();
    let w = worker(&h);
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w.clone()));
    r.on_request_headers(&h, false);
    let size = h.body_chunk(&PAYMENT[..10]);
    r.on_request_body(&h, size, false);
    // Before the deadline (5 s): nothing.
    h.set_now_ms(NOW_MS + 4_999);
    tick::on_tick(&w, &h);
    assert!(h.replies.borrow().is_empty());
    h.set_now_ms(NOW_MS + 5_000);
    tick::on_tick(&w, &h);
    let reply = h.reply();
    assert_eq!(reply.context, Some(7), "answered on the request's context");
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (408, "request_timeout")
    );
    assert!(h.logged(Level::Warn, "request body incomplete after 5s"));
    // The rest of the body arrives too late: no callout, no second answer.
    let size = h.body_chunk(&PAYMENT[10..]);
    assert_eq!(r.on_request_body(&h, size, true), Action::Pause);
    assert!(token_callouts(&h).is_empty());
    assert_eq!(h.replies.borrow().len(), 1);
}

#[test]
fn a_body_that_never_arrives_means_the_filter_is_misconfigured() {
    let h = host();
    let w = worker(&h);
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w.clone()));
    r.on_request_headers(&h, false);
    h.set_now_ms(NOW_MS + 60_000);
    tick::on_tick(&w, &h);
    let reply = h.reply();
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (500, "filter_misconfigured")
    );
    assert!(h.logged(Level::Error, "set allow_on_headers_stop_iteration: true"));
    // Trailers after the timer answered: held, nothing sent.
    assert_eq!(r.on_request_trailers(&h), Action::Pause);
    assert!(token_callouts(&h).is_empty());
}

#[test]
fn the_timer_skips_requests_that_are_gone() {
    let h = host();
    let w = worker(&h);
    // The first tick fetches the revocation list; a tick with nothing due reads the clock
    // and the small shared revocation state only.
    tick::on_tick(&w, &h);
    h.clear_records();
    tick::on_tick(&w, &h);
    assert_eq!(h.calls.get(), 2);
    // A request that ended (client gone) leaves the list.
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w.clone()));
    r.on_request_headers(&h, false);
    r.on_done();
    assert!(w.pending.borrow().is_empty());
    // One whose context the host no longer knows is skipped.
    let mut r = Request::new(8, Some(w.clone()));
    r.on_request_headers(&h, false);
    h.fail("set_effective_context", 2);
    h.set_now_ms(NOW_MS + 60_000);
    tick::on_tick(&w, &h);
    assert!(h.replies.borrow().is_empty());
    assert!(w.pending.borrow().is_empty(), "taken out all the same");
}

// ---- revocations ----

/// The settler's revocation list answer, `(jti, exp)` pairs.
fn revoked(h: &FakeHost, entries: &[(&str, i64)]) -> usize {
    let list: Vec<Value> = entries
        .iter()
        .map(|(jti, exp)| json!({"jti": jti, "exp": exp}))
        .collect();
    let body = json!({"revoked": list, "as_of": NOW, "truncated": false});
    h.callout_answers(
        &[(":status", "200"), ("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// A request for `weather` with `auth` on worker `w`: its action, the reply's code if any.
fn weather_with(h: &FakeHost, w: &Rc<Worker>, auth: &str) -> (Action, Option<String>) {
    weather(h, &[("authorization", auth)]);
    h.replies.borrow_mut().clear();
    let mut r = Request::new(1, Some(w.clone()));
    let a = r.on_request_headers(h, true);
    let code = h.replies.borrow().first().map(|r| r.code());
    (a, code)
}

fn revocation_fetches(h: &FakeHost) -> Vec<crate::test_fixtures::fake_host::Callout> {
    h.callouts
        .borrow()
        .iter()
        .filter(|c| {
            c.header(":path")
                .is_some_and(|p| p.starts_with("/v1/revocations"))
        })
        .cloned()
        .collect()
}

#[test]
fn the_revocation_list_is_fetched_on_the_tick_and_refuses_a_cached_token() {
    let h = host();
    let mut v = sample();
    v["settler"]["api_secret"] = json!("0123456789abcdef-secret");
    let w = worker_for(&h, &v);
    let auth = bearer("weather", 10_000);
    // Accepted, and now in the worker's token cache.
    assert_eq!(weather_with(&h, &w, &auth), (Action::Continue, None));
    assert_eq!(weather_with(&h, &w, &auth), (Action::Continue, None));
    assert_eq!(h.counter("x402_token_cache_hits"), 1);

    h.clear_records();
    tick::on_tick(&w, &h);
    let c = h.callout();
    assert_eq!(c.cluster, "x402_settler");
    assert_eq!(c.header(":method"), Some("GET"));
    assert_eq!(c.header(":path"), Some("/v1/revocations?limit=10000"));
    assert_eq!(c.header(":authority"), Some("x402-settler"));
    assert_eq!(
        c.header("authorization"),
        Some("Bearer 0123456789abcdef-secret")
    );
    assert!(c.body.is_empty());
    assert_eq!(h.counter("x402_revocation_fetches"), 1);
    // Nothing else is fetched while the answer is awaited.
    h.set_now_ms(NOW_MS + 1_500);
    tick::on_tick(&w, &h);
    assert_eq!(h.callouts.borrow().len(), 1);

    let size = revoked(&h, &[("s-1", NOW + 86_400), ("other", NOW + 60)]);
    revocation::on_response(&w, &h, size);
    assert_eq!(w.revocations.borrow().list.len(), 2);
    // The cached token is refused, with its reason and counter.
    h.clear_records();
    let (a, code) = weather_with(&h, &w, &auth);
    assert_eq!((a, code.as_deref()), (Action::Pause, Some("revoked")));
    assert_eq!(h.reply().status(), 402);
    assert_eq!(
        h.reply().json()["reason"],
        "Token was revoked: its payment did not settle"
    );
    let mut got = h.counters();
    got.sort();
    assert_eq!(
        got,
        counters(&[
            ("x402_challenges", 1),
            ("x402_rejected_revoked", 1),
            ("x402_token_cache_hits", 1)
        ])
    );
    assert!(h.set_request_headers().is_empty(), "no identity headers");
    // Another settlement's token still works.
    let mut other = claims("weather", 10_000);
    other.jti = "s-2".into();
    let ok = format!("Bearer {}", token(other, NOW));
    assert_eq!(weather_with(&h, &w, &ok), (Action::Continue, None));
}

#[test]
fn one_worker_fetches_per_interval_and_the_others_pick_the_list_up() {
    let h = host();
    let w1 = worker(&h);
    let w2 = worker(&h);
    let auth = bearer("weather", 10_000);
    assert_eq!(weather_with(&h, &w2, &auth), (Action::Continue, None));
    h.clear_records();
    // Both tick at once: one fetch.
    tick::on_tick(&w1, &h);
    tick::on_tick(&w2, &h);
    assert_eq!(revocation_fetches(&h).len(), 1);
    let size = revoked(&h, &[("s-1", NOW + 300)]);
    revocation::on_response(&w1, &h, size);
    assert!(w1.is_revoked("s-1"));
    assert!(!w2.is_revoked("s-1"), "not yet: w2 learns it on its tick");
    // w2's next tick reads the shared list, without fetching.
    h.set_now_ms(NOW_MS + 250);
    tick::on_tick(&w2, &h);
    assert_eq!(revocation_fetches(&h).len(), 1);
    assert!(w2.is_revoked("s-1"));
    let (a, code) = weather_with(&h, &w2, &auth);
    assert_eq!((a, code.as_deref()), (Action::Pause, Some("revoked")));
    // A tick with an unchanged generation does not read the list again.
    h.clear_records();
    tick::on_tick(&w2, &h);
    assert_eq!(h.calls.get(), 2, "clock and the shared state");
    // The next interval: again one fetch, by whichever worker ticks first.
    h.set_now_ms(NOW_MS + 1_000);
    tick::on_tick(&w2, &h);
    tick::on_tick(&w1, &h);
    assert_eq!(revocation_fetches(&h).len(), 1);
    // An unchanged list is not written again (no generation bump).
    let size = revoked(&h, &[("s-1", NOW + 300)]);
    let generation = w1.revocations.borrow().generation;
    revocation::on_response(&w2, &h, size);
    assert_eq!(w2.revocations.borrow().generation, generation);
}

#[test]
fn a_failed_fetch_keeps_the_last_list_counted_and_logged_once_a_minute() {
    let h = host();
    let w = worker(&h);
    tick::on_tick(&w, &h);
    let size = revoked(&h, &[("s-1", NOW + 3_600)]);
    revocation::on_response(&w, &h, size);
    let answers: Vec<(Pairs, &[u8])> = vec![
        (vec![], b""),
        (vec![(":status", "503")], b"upstream connect error"),
        (
            vec![(":status", "401")],
            br#"{"error":"unauthorized","message":"x"}"#,
        ),
        (vec![(":status", "200")], b"<html>"),
    ];
    for (i, (headers, body)) in answers.iter().enumerate() {
        h.clear_records();
        h.set_now_ms(NOW_MS + 1_000 * (i as u64 + 1));
        tick::on_tick(&w, &h);
        assert_eq!(revocation_fetches(&h).len(), 1, "fetch {i}");
        let size = h.callout_answers(headers, body);
        revocation::on_response(&w, &h, size);
        assert!(w.is_revoked("s-1"), "the last list stays ({i})");
        assert_eq!(h.counter("x402_revocation_fetch_failures"), 1);
        let logged = h.logged(Level::Warn, "x402: revocations: fetching /v1/revocations");
        assert_eq!(logged, i == 0, "logged once a minute ({i})");
    }
    // A minute later: logged again, with the count of failures meanwhile.
    h.clear_records();
    h.set_now_ms(NOW_MS + 61_000);
    tick::on_tick(&w, &h);
    revocation::on_response(&w, &h, h.callout_answers(&[], b""));
    assert!(h.logged(Level::Warn, "(4 failure(s) since the last report)"));
    // A fetch that cannot even be dispatched counts too.
    h.clear_records();
    h.fail("dispatch_callout", 2);
    h.set_now_ms(NOW_MS + 62_000);
    tick::on_tick(&w, &h);
    assert_eq!(h.counter("x402_revocation_fetch_failures"), 1);
    assert!(w.is_revoked("s-1"));
}

#[test]
fn the_revocation_list_is_bounded_and_drops_what_expired() {
    let h = host();
    let mut v = sample();
    v["revocation"] = json!({"max_entries": 2, "interval_ms": 500});
    let w = worker_for(&h, &v);
    assert_eq!(
        Worker::configure(&h, v.to_string().as_bytes()).map(|_| h.tick_period.get()),
        Some(Some(Duration::from_millis(250)))
    );
    tick::on_tick(&w, &h);
    assert_eq!(h.callout().header(":path"), Some("/v1/revocations?limit=2"));
    let size = revoked(
        &h,
        &[
            ("a", NOW + 10),
            ("b", NOW + 100),
            ("c", NOW + 200),
            ("gone", NOW - 60),
        ],
    );
    revocation::on_response(&w, &h, size);
    {
        let r = w.revocations.borrow();
        assert_eq!(r.list.len(), 2, "bounded: the ones expiring last");
    }
    assert!(w.is_revoked("b") && w.is_revoked("c") && !w.is_revoked("a"));
    // Past exp + leeway (5 s), an entry goes, even while fetches fail.
    h.set_now_ms(NOW_MS + 106_000);
    tick::on_tick(&w, &h);
    revocation::on_response(&w, &h, h.callout_answers(&[], b""));
    assert!(!w.is_revoked("b") && w.is_revoked("c"));
    // A second worker picking up the shared list drops the expired entries too.
    let w2 = worker_for(&h, &v);
    h.set_now_ms(NOW_MS + 206_000);
    tick::on_tick(&w2, &h);
    assert_eq!(w2.revocations.borrow().list.len(), 0);
}

#[test]
fn a_short_revocation_interval_shortens_the_tick() {
    let h = host();
    let mut v = sample();
    v["revocation"] = json!({"interval_ms": 100});
    assert!(Worker::configure(&h, v.to_string().as_bytes()).is_some());
    assert_eq!(h.tick_period.get(), Some(Duration::from_millis(100)));
}

// ---- short-lived tokens while unsettled, and their renewal ----

/// [`sample`] with `weather` minting 5 s tokens while its payment is unsettled.
fn short_lived() -> Value {
    let mut v = sample();
    v["routes"][0]["unsettled_token_ttl_secs"] = json!(5);
    v["settler"]["api_secret"] = json!("0123456789abcdef-secret");
    v
}

/// A token of the test key for `claims` issued at `iat` living `ttl` seconds.
fn token_for(claims: x402_protocol::token::AccessClaims, iat: i64, ttl: u64) -> String {
    x402_protocol::token::mint(&crate::test_fixtures::signing_key(), "k1", claims, iat, ttl)
}

/// `POST /x402/token/<route>/renew` with `extra` headers on worker `w`.
fn renew_post(h: &FakeHost, w: &Rc<Worker>, route: &str, extra: &[(&str, &str)]) -> Request {
    let path = format!("/x402/token/{route}/renew");
    let mut headers = vec![
        (":method", "POST"),
        (":path", path.as_str()),
        (":authority", "api.example.com"),
    ];
    headers.extend_from_slice(extra);
    h.request(&headers);
    h.clear_records();
    let mut r = Request::new(9, Some(w.clone()));
    assert_eq!(r.on_request_headers(h, true), Action::Pause);
    r
}

#[test]
fn a_short_lived_route_asks_the_settler_for_its_unsettled_lifetime() {
    let h = host();
    let w = worker_for(&h, &short_lived());
    // The token endpoint.
    token_post(&h, "weather", &[]);
    let mut r = Request::new(7, Some(w.clone()));
    r.on_request_headers(&h, false);
    let size = h.body_chunk(PAYMENT);
    r.on_request_body(&h, size, true);
    let c = h.callout();
    assert_eq!(c.header(":path"), Some("/v1/tokens"));
    assert_eq!(c.json()["requirement"]["token_ttl_secs"], 5);
    // A route without the option keeps the normal lifetime.
    h.clear_records();
    token_post(&h, "report", &[]);
    let mut r = Request::new(8, Some(w.clone()));
    r.on_request_headers(&h, false);
    let size = h.body_chunk(PAYMENT);
    r.on_request_body(&h, size, true);
    assert_eq!(h.callout().json()["requirement"]["token_ttl_secs"], 300);
    // An x402 v2 payment is a fresh payment too.
    h.clear_records();
    let sig = payment_signature();
    weather(&h, &[("payment-signature", sig.as_str())]);
    let mut r = Request::new(9, Some(w.clone()));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    assert_eq!(h.callout().json()["requirement"]["token_ttl_secs"], 5);
    // The 402 advertises the renewal endpoint on that route only.
    h.clear_records();
    weather(&h, &[]);
    Request::new(10, Some(w.clone())).on_request_headers(&h, true);
    assert_eq!(
        h.reply().json()["access_token_renew_endpoint"],
        "/x402/token/weather/renew"
    );
    h.clear_records();
    h.request(&[
        (":method", "GET"),
        (":path", "/api/users/7/report"),
        (":authority", "api.example.com"),
    ]);
    Request::new(11, Some(w)).on_request_headers(&h, true);
    assert_eq!(h.reply().status(), 402);
    assert!(h
        .reply()
        .json()
        .get("access_token_renew_endpoint")
        .is_none());
}

#[test]
fn renewal_is_forwarded_with_the_normal_lifetime_and_the_answer_relayed() {
    let h = host();
    let w = worker_for(&h, &short_lived());
    let short = token_for(claims("weather", 10_000), NOW - 8, 5);
    let auth = format!("Bearer {short}");
    // Expired 3 s ago: still within the renewal grace.
    let mut r = renew_post(&h, &w, "weather", &[("authorization", auth.as_str())]);
    let c = h.callout();
    assert_eq!(c.cluster, "x402_settler");
    assert_eq!(c.header(":method"), Some("POST"));
    assert_eq!(c.header(":path"), Some("/v1/tokens/renew"));
    assert_eq!(
        c.header("authorization"),
        Some("Bearer 0123456789abcdef-secret"),
        "the gateway's secret, not the client's token"
    );
    let body = c.json();
    assert_eq!(body["token"], short.as_str());
    assert_eq!(body["requirement"]["route"], "weather");
    assert_eq!(
        body["requirement"]["token_ttl_secs"], 300,
        "the normal lifetime"
    );
    assert_eq!(body["requirement"]["accepts"].as_array().unwrap().len(), 2);
    assert!(body.get("payment").is_none());
    assert_eq!(h.counters(), counters(&[("x402_token_requests", 1)]));
    // The settler's new token is relayed as is.
    let size = minted(&h, "renewed-token");
    r.on_callout_response(&h, size);
    let reply = h.reply();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.json()["access_token"], "renewed-token");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    // Its refusals too: still pending (409, with the state), failed (403).
    for (status, answer) in [
        (
            "409",
            br#"{"error":"settlement_pending","message":"m","settlement_id":"s-1","state":"pending"}"#
                .as_slice(),
        ),
        (
            "403",
            br#"{"error":"payment_failed","message":"m","settlement_id":"s-1","state":"failed"}"#
                .as_slice(),
        ),
    ] {
        let mut r = renew_post(&h, &w, "weather", &[("authorization", auth.as_str())]);
        let size = h.callout_answers(
            &[(":status", status), ("content-type", "application/json")],
            answer,
        );
        r.on_callout_response(&h, size);
        let reply = h.reply();
        assert_eq!(reply.status().to_string(), status);
        assert_eq!(reply.answer.body, answer);
    }
    // A settler outage is a 503, as for the token endpoint.
    let mut r = renew_post(&h, &w, "weather", &[("authorization", auth.as_str())]);
    let size = h.callout_answers(&[(":status", "503")], b"upstream connect error");
    r.on_callout_response(&h, size);
    assert_eq!(
        (h.reply().status(), h.reply().code().as_str()),
        (503, "settler_unavailable")
    );
}

#[test]
fn renewal_refuses_unusable_tokens_without_calling_the_settler() {
    let h = host();
    let w = worker_for(&h, &short_lived());
    let forged = x402_protocol::token::mint(
        &k256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap(),
        "k1",
        claims("weather", 10_000),
        NOW,
        5,
    );
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "Missing authorization token"),
        ("Basic abc".into(), "Invalid authorization header format"),
        (format!("Bearer {forged}"), "Signature verification failed"),
        (
            format!("Bearer {}", token_for(claims("report", 1_500_000), NOW, 5)),
            "Token was issued for another route",
        ),
        (
            format!("Bearer {}", token_for(claims("weather", 9_999), NOW, 5)),
            "Token was issued for another route",
        ),
        (
            // Expired more than the 600 s grace ago.
            format!(
                "Bearer {}",
                token_for(claims("weather", 10_000), NOW - 700, 5)
            ),
            "Token has expired",
        ),
    ];
    for (auth, message) in &cases {
        let extra: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth.as_str())]
        };
        renew_post(&h, &w, "weather", &extra);
        let reply = h.reply();
        assert_eq!(
            (reply.status(), reply.code().as_str()),
            (401, "invalid_token"),
            "{message}"
        );
        assert_eq!(reply.json()["message"], *message);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert!(h.callouts.borrow().is_empty(), "{message}: no callout");
    }
    // A revoked token's payment failed: nothing to renew.
    tick::on_tick(&w, &h);
    let size = revoked(&h, &[("s-1", NOW + 300)]);
    revocation::on_response(&w, &h, size);
    let auth = format!("Bearer {}", token_for(claims("weather", 10_000), NOW, 5));
    renew_post(&h, &w, "weather", &[("authorization", auth.as_str())]);
    assert_eq!(
        (h.reply().status(), h.reply().code().as_str()),
        (403, "payment_failed")
    );
    assert!(h.callouts.borrow().is_empty());
    // A route without short-lived tokens has nothing to renew; GET is not the action.
    let auth = format!("Bearer {}", token_for(claims("report", 1_500_000), NOW, 5));
    renew_post(&h, &w, "report", &[("authorization", auth.as_str())]);
    assert_eq!(
        (h.reply().status(), h.reply().code().as_str()),
        (404, "not_renewable")
    );
    h.request(&[(":method", "GET"), (":path", "/x402/token/weather/renew")]);
    h.clear_records();
    Request::new(1, Some(w.clone())).on_request_headers(&h, true);
    assert_eq!(h.reply().status(), 405);
    h.request(&[(":method", "POST"), (":path", "/x402/token/nope/renew")]);
    h.clear_records();
    Request::new(1, Some(w)).on_request_headers(&h, true);
    assert_eq!(
        (h.reply().status(), h.reply().code().as_str()),
        (404, "unknown_route")
    );
    assert!(h.callouts.borrow().is_empty());
}

// ---- discovery ----

fn discovery_get(h: &FakeHost, w: &Rc<Worker>, method: &str, path: &str) -> Action {
    h.request(&[
        (":method", method),
        (":path", path),
        (":authority", "api.example.com"),
    ]);
    h.clear_records();
    Request::new(1, Some(w.clone())).on_request_headers(h, true)
}

#[test]
fn discovery_document_lists_the_priced_routes_with_their_402_accepts() {
    let h = host();
    let w = worker(&h);
    // The 402 of the weather route, to compare the document's accepts with.
    weather(&h, &[]);
    Request::new(1, Some(w.clone())).on_request_headers(&h, true);
    let pr: Value = serde_json::from_slice(
        &x402_protocol::b64::decode(h.reply().header("payment-required").unwrap()).unwrap(),
    )
    .unwrap();
    h.replies.borrow_mut().clear();

    for path in ["/.well-known/x402", "/.well-known/x402?agent=1"] {
        for method in ["GET", "HEAD"] {
            assert_eq!(discovery_get(&h, &w, method, path), Action::Pause);
            let reply = h.reply();
            assert_eq!(reply.status(), 200, "{method} {path}");
            assert_eq!(reply.header("content-type"), Some("application/json"));
            assert_eq!(reply.header("cache-control"), Some("public, max-age=60"));
            assert!(h.callouts.borrow().is_empty(), "no settler call");
            assert!(h.counters().is_empty());
            h.replies.borrow_mut().clear();
        }
    }
    discovery_get(&h, &w, "GET", "/.well-known/x402");
    let doc = h.reply().json();
    assert_eq!(doc["x402Version"], 2);
    assert_eq!(doc["token_endpoint_prefix"], "/x402/token/");
    let weather = &doc["routes"][0];
    assert_eq!(weather["name"], "weather");
    assert_eq!(weather["match"], json!({"prefix": "/api/weather"}));
    assert_eq!(
        weather["methods"],
        json!(["GET", "HEAD"]),
        "GET prices HEAD too"
    );
    assert_eq!(weather["hosts"], Value::Null);
    assert_eq!(weather["description"], "Weather");
    assert_eq!(weather["mime_type"], "application/json");
    assert_eq!(weather["price"], "0.01");
    assert_eq!(weather["token_endpoint"], "/x402/token/weather");
    let methods = weather["payment_methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2);
    assert_eq!(methods[0]["scheme"], "exact");
    assert_eq!(methods[0]["network"], "eip155:84532");
    assert_eq!(
        methods[0]["asset"],
        json!({"address": crate::test_fixtures::USDC, "symbol": "USDC", "decimals": 6,
               "name": "USDC", "version": "2"})
    );
    assert_eq!(methods[0]["pay_to"], crate::test_fixtures::PAY_TO);
    assert_eq!(methods[0]["price"], "0.01");
    assert_eq!(methods[0]["amount"], "10000");
    assert_eq!(methods[1]["scheme"], "permit");
    assert_eq!(methods[1]["spender"], crate::test_fixtures::SPENDER);
    assert_eq!(weather["x402Version"], 2);
    assert_eq!(weather["accepts"], pr["accepts"], "as in PAYMENT-REQUIRED");
    let report = &doc["routes"][1];
    assert_eq!(
        report["match"],
        json!({"template": "/api/users/{id}/report"})
    );
    assert_eq!(report["hosts"], json!(["api.example.com", "*.example.org"]));
    assert_eq!(report["methods"], Value::Null, "every method");
    assert_eq!(report["price"], "1.5");
    assert_eq!(report["payment_methods"][0]["amount"], "1500000");

    // Other methods: 405 naming GET and HEAD.
    assert_eq!(
        discovery_get(&h, &w, "POST", "/.well-known/x402"),
        Action::Pause
    );
    let reply = h.reply();
    assert_eq!(
        (reply.status(), reply.code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
}

#[test]
fn discovery_path_is_configurable_and_can_be_turned_off() {
    let h = host();
    let mut v = sample();
    v["discovery"] = json!({"path": "/x402.json"});
    let w = worker_for(&h, &v);
    assert_eq!(discovery_get(&h, &w, "GET", "/x402.json"), Action::Pause);
    assert_eq!(h.reply().status(), 200);
    assert_eq!(h.reply().json()["routes"][0]["name"], "weather");
    h.replies.borrow_mut().clear();
    assert_eq!(
        discovery_get(&h, &w, "GET", "/.well-known/x402"),
        Action::Continue
    );
    assert!(
        h.replies.borrow().is_empty(),
        "the default path is the upstream's now"
    );

    v["discovery"] = json!({"enabled": false});
    let w = worker_for(&h, &v);
    assert_eq!(
        discovery_get(&h, &w, "GET", "/.well-known/x402"),
        Action::Continue
    );
    assert!(h.replies.borrow().is_empty());
}

#[test]
fn discovery_is_answered_even_under_a_priced_catch_all() {
    let h = host();
    let mut v = sample();
    let all = json!({"name": "all", "match": {"prefix": "/"}, "price": "0.001",
                     "payment_methods": ["usdc-base"]});
    v["routes"].as_array_mut().unwrap().push(all);
    let w = worker_for(&h, &v);
    assert_eq!(
        discovery_get(&h, &w, "GET", "/.well-known/x402"),
        Action::Pause
    );
    let reply = h.reply();
    assert_eq!(reply.status(), 200, "the document, not a 402");
    assert_eq!(reply.json()["routes"][2]["price"], "0.001");
    // Anything else under the catch-all is priced as before.
    h.replies.borrow_mut().clear();
    assert_eq!(
        discovery_get(&h, &w, "GET", "/.well-known/other"),
        Action::Pause
    );
    assert_eq!(h.reply().status(), 402);
}

// ---- the verified-token table the workers share ----

/// `x402_token_signature_checks` and `x402_token_shared_hits` as they stand.
fn verdict_counters(h: &FakeHost) -> (u64, u64) {
    (
        h.counter("x402_token_signature_checks"),
        h.counter("x402_token_shared_hits"),
    )
}

/// A token-endpoint exchange on worker `w` whose settler answer carries `minted_token`.
fn exchange(h: &FakeHost, w: &Rc<Worker>, minted_token: &str) -> u32 {
    token_post(h, "weather", &[("content-length", "51")]);
    let mut r = Request::new(7, Some(w.clone()));
    assert_eq!(r.on_request_headers(h, false), Action::Pause);
    let size = h.body_chunk(PAYMENT);
    assert_eq!(r.on_request_body(h, size, true), Action::Pause);
    let size = minted(h, minted_token);
    h.replies.borrow_mut().clear();
    r.on_callout_response(h, size);
    h.reply().status()
}

#[test]
fn a_token_one_worker_verified_costs_the_other_workers_no_signature_check() {
    let h = host();
    let (w1, w2) = (worker(&h), worker(&h));
    let auth = bearer("weather", 10_000);
    assert_eq!(weather_with(&h, &w1, &auth), (Action::Continue, None));
    assert_eq!(verdict_counters(&h), (1, 0));
    // The other worker: from the shared table, then from its own cache.
    h.clear_records();
    assert_eq!(weather_with(&h, &w2, &auth), (Action::Continue, None));
    assert_eq!(h.set_request_headers(), identity("weather"));
    let mut got = h.counters();
    got.sort();
    assert_eq!(
        got,
        counters(&[
            ("x402_accepted", 1),
            ("x402_token_cache_misses", 1),
            ("x402_token_shared_hits", 1)
        ])
    );
    h.clear_records();
    assert_eq!(weather_with(&h, &w2, &auth), (Action::Continue, None));
    assert_eq!(h.counter("x402_token_cache_hits"), 1);
    assert_eq!(verdict_counters(&h), (0, 0));
    // What the shared table grants is still checked against the route.
    h.clear_records();
    let w3 = worker(&h);
    let cheap = format!("Bearer {}", token(claims("weather", 9_999), NOW));
    for w in [&w1, &w3] {
        let (a, code) = weather_with(&h, w, &cheap);
        assert_eq!((a, code.as_deref()), (Action::Pause, Some("wrong_route")));
    }
    assert_eq!(verdict_counters(&h), (1, 1));
    assert_eq!(h.counter("x402_rejected_wrong_route"), 2);
}

#[test]
fn a_token_relayed_by_the_token_endpoint_is_shared_before_its_first_use() {
    let h = host();
    let (w1, w2) = (worker(&h), worker(&h));
    let t = token(claims("weather", 10_000), NOW);
    assert_eq!(exchange(&h, &w1, &t), 200);
    assert_eq!(
        h.reply().json()["access_token"],
        t.as_str(),
        "relayed as is"
    );
    // Checked once, during the exchange.
    assert_eq!(verdict_counters(&h), (1, 0));
    // The first use, on either worker, checks no signature.
    for w in [&w2, &w1] {
        h.clear_records();
        let auth = format!("Bearer {t}");
        assert_eq!(weather_with(&h, w, &auth), (Action::Continue, None));
        assert_eq!(h.set_request_headers(), identity("weather"));
        assert_eq!(h.counter("x402_token_signature_checks"), 0);
    }
}

#[test]
fn a_token_settled_from_a_payment_signature_is_shared_before_its_first_use() {
    let h = host();
    let (w1, w2) = (worker(&h), worker(&h));
    weather(&h, &[("payment-signature", &payment_signature())]);
    let mut r = Request::new(1, Some(w1));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    let t = token(claims("weather", 10_000), NOW);
    let size = minted(&h, &t);
    r.on_callout_response(&h, size);
    assert_eq!(h.resumed.get(), 1);
    assert_eq!(verdict_counters(&h), (1, 0));
    h.clear_records();
    let auth = format!("Bearer {t}");
    assert_eq!(weather_with(&h, &w2, &auth), (Action::Continue, None));
    assert_eq!(verdict_counters(&h), (0, 1));
}

#[test]
fn a_revoked_token_found_in_the_shared_table_is_refused() {
    let h = host();
    let (w1, w2) = (worker(&h), worker(&h));
    let t = token(claims("weather", 10_000), NOW);
    assert_eq!(exchange(&h, &w1, &t), 200);
    // The settler revokes it; w2 learns the list on its tick.
    tick::on_tick(&w2, &h);
    let size = revoked(&h, &[("s-1", NOW + 300)]);
    revocation::on_response(&w2, &h, size);
    h.clear_records();
    let auth = format!("Bearer {t}");
    let (a, code) = weather_with(&h, &w2, &auth);
    assert_eq!((a, code.as_deref()), (Action::Pause, Some("revoked")));
    assert_eq!(
        verdict_counters(&h),
        (0, 1),
        "the verdict came from the table"
    );
    assert!(h.set_request_headers().is_empty(), "no identity headers");
}

#[test]
fn shared_entries_expire_with_their_token_and_stay_within_their_key_set() {
    let h = host();
    let (w1, w2) = (worker(&h), worker(&h));
    let t = token(claims("weather", 10_000), NOW);
    assert_eq!(exchange(&h, &w1, &t), 200);
    // Past exp + leeway: refused as expired, straight from the table.
    h.set_now_ms(NOW_MS + 306_000);
    h.clear_records();
    let auth = format!("Bearer {t}");
    let (_, code) = weather_with(&h, &w2, &auth);
    assert_eq!(code.as_deref(), Some("expired"));
    assert_eq!(verdict_counters(&h), (0, 1));

    // A configuration trusting other keys never reads this table.
    h.set_now_ms(NOW_MS);
    let mut more_keys = sample();
    more_keys["token_keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kid": "k2", "public_key": crate::test_fixtures::key_hex()}));
    let w3 = worker_for(&h, &more_keys);
    h.clear_records();
    assert_eq!(weather_with(&h, &w3, &auth), (Action::Continue, None));
    assert_eq!(verdict_counters(&h), (1, 0));
    // Nor does one with the table turned off.
    let mut off = sample();
    off["shared_token_slots"] = json!(0);
    let w4 = worker_for(&h, &off);
    assert_eq!(weather_with(&h, &w4, &auth), (Action::Continue, None));
    assert_eq!(verdict_counters(&h), (1, 0));
}

#[test]
fn a_minted_token_the_edge_cannot_verify_is_relayed_not_shared() {
    let h = host();
    let (w1, w2) = (worker(&h), worker(&h));
    let foreign = {
        let key = crate::test_fixtures::signing_key();
        x402_protocol::token::mint(&key, "k9", claims("weather", 10_000), NOW, 300)
    };
    assert_eq!(exchange(&h, &w1, &foreign), 200);
    assert!(h.logged(Level::Warn, "does not check out at the edge (unknown_key)"));
    assert_eq!(verdict_counters(&h), (0, 0));
    let (_, code) = weather_with(&h, &w2, &format!("Bearer {foreign}"));
    assert_eq!(code.as_deref(), Some("unknown_key"));
}

#[test]
fn a_failing_shared_write_is_logged_and_the_token_still_serves() {
    let h = host();
    let w = worker(&h);
    h.fail("shared_data_set", 10);
    let auth = bearer("weather", 10_000);
    assert_eq!(weather_with(&h, &w, &auth), (Action::Continue, None));
    assert!(h.logged(
        Level::Warn,
        "cannot share a verified token: InternalFailure"
    ));
    assert_eq!(weather_with(&h, &w, &auth), (Action::Continue, None));
    assert_eq!(h.counter("x402_token_cache_hits"), 1);
}

// ---- operations: per-route counters, request ids ----

#[test]
fn per_route_counters_count_challenges_and_paid_requests_of_their_route() {
    let h = host();
    let w = worker(&h);
    weather(&h, &[]);
    Request::new(1, Some(w.clone())).on_request_headers(&h, true);
    assert_eq!(h.reply().status(), 402);
    let auth = bearer("weather", 10_000);
    weather(&h, &[("authorization", &auth)]);
    let mut r = Request::new(2, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(
        h.route_counters(),
        counters(&[
            ("x402_route_challenges.route.weather", 1),
            ("x402_route_accepted.route.weather", 1)
        ])
    );
}

#[test]
fn fail_open_is_counted_for_its_route() {
    let h = host();
    let w = worker_for(&h, &allow_mode());
    h.fail("dispatch_callout", 10);
    let sig = payment_signature();
    weather(&h, &[("payment-signature", &sig)]);
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Continue);
    assert_eq!(h.counter("x402_fail_open"), 1);
    assert_eq!(
        h.route_counters(),
        counters(&[("x402_route_fail_open.route.weather", 1)])
    );
}

#[test]
fn the_settler_callout_carries_the_request_id() {
    let h = host();
    let w = worker(&h);
    let sig = payment_signature();
    weather(
        &h,
        &[("payment-signature", &sig), ("x-request-id", "5d1c-req-7")],
    );
    let mut r = Request::new(1, Some(w));
    assert_eq!(r.on_request_headers(&h, true), Action::Pause);
    assert_eq!(h.callout().header("x-request-id"), Some("5d1c-req-7"));
}
