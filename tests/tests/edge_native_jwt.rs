//! "Envoy verifies the tokens" mode, through the real Envoy, filter, settler (`--token-alg
//! eddsa`) and anvil, in the layout of envoy/envoy-jwt-authn.yaml: Envoy's own `jwt_authn`
//! checks our EdDSA tokens against the settler's JWKS, one requirement per priced Envoy
//! route (audience = the x402 route), and the filter (inside an `ExtensionWithMatcher`) is
//! skipped for requests `jwt_authn` verified. The filter still answers the 402, runs the
//! token exchange and judges every request `jwt_authn` did not verify.
//!
//! What a user notices: a paid request reaches the upstream with the payer's identity and
//! without the token, the filter not running for it at all (its counters do not move); a
//! token of another route, a tampered one, none, or a forged `x-x402-payer` header get no
//! free access.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use x402_protocol::Scheme;
use x402_testkit::envoy::{jwt_per_route, HttpRequest, NativeJwt};
use x402_testkit::stack::{Stack, StackOptions, REPORT, WEATHER};

/// Envoy's routes: the token endpoint's namespace through the filter; the two priced APIs,
/// each pointed at its `jwt_authn` requirement; everything else through the filter.
fn routes() -> String {
    let priced = |name: &str, prefix: &str| {
        let per_route: String = jwt_per_route(name)
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect();
        format!(
            "- name: {name}\n  match: {{prefix: \"{prefix}\"}}\n  route: {{cluster: upstream, timeout: 15s}}\n  typed_per_filter_config:\n{per_route}"
        )
    };
    format!(
        "- name: x402\n  match: {{prefix: \"/x402/\"}}\n  route: {{cluster: upstream, timeout: 15s}}\n{}{}- name: rest\n  match: {{prefix: \"/\"}}\n  route: {{cluster: upstream, timeout: 15s}}\n",
        priced("api_weather", "/api/weather"),
        priced("api_report", "/api/report"),
    )
}

/// The stack in the `jwt_authn` mode: the settler minting EdDSA, Envoy with the routes above.
struct Native {
    stack: Stack,
}

impl Native {
    async fn start() -> Native {
        let stack = Stack::start_with(StackOptions {
            // jwt_authn verifies EdDSA (and ES256), not ES256K.
            token_alg: Some("eddsa".into()),
            routes_yaml: Some(routes()),
            native_jwt: Some(NativeJwt {
                issuer: "x402-settler".into(),
                routes: vec![
                    ("api_weather".into(), WEATHER.into()),
                    ("api_report".into(), REPORT.into()),
                ],
                local_jwks: None,
            }),
            ..StackOptions::default()
        })
        .await
        .unwrap();
        // jwt_authn fetches the settler's JWKS at start (`async_fetch`): until it has it, it
        // verifies nothing and the filter judges every request (correct, just not native).
        let deadline = Instant::now() + Duration::from_secs(20);
        while stack
            .envoy
            .stat("http.x402_edge.jwt_authn.jwks_fetch_success")
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "jwt_authn never fetched the JWKS: {}",
                stack.envoy.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Native { stack }
    }

    /// The filter's per-request counters (`wasmcustom.x402_*`, not the timers' own).
    fn filter_counters(&self) -> BTreeMap<String, u64> {
        self.stack
            .envoy
            .stat_values()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("wasmcustom.x402_")
                    && !k.starts_with("wasmcustom.x402_revocation")
                    && !k.starts_with("wasmcustom.x402_jwks")
            })
            .collect()
    }

    fn get_with(&self, path: &str, token: &str) -> x402_testkit::envoy::HttpResponse {
        self.stack.envoy.send(
            &HttpRequest::new("GET", path).header("authorization", &format!("Bearer {token}")),
        )
    }

    fn last_upstream(&self, path: &str) -> x402_testkit::upstream::Request {
        self.stack
            .upstream
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("the upstream never got {path}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_verifies_paid_requests_itself_and_the_filter_judges_the_rest() {
    let n = Native::start().await;
    let allowed = || n.stack.envoy.stat("http.x402_edge.jwt_authn.allowed");

    // No token: jwt_authn lets it through unverified, the filter answers 402.
    let r = n.stack.envoy.get("/api/weather");
    assert_eq!(r.status, 402, "{}", r.text());

    // A real client pays through the filter's exchange and gets the resource.
    let (payer, address) = n.stack.payer(1, vec![Scheme::Exact]).await.unwrap();
    let url = format!("{}/api/weather", n.stack.envoy.base_url());
    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let token = payer.cached_token(&url).expect("cached").access_token;

    // The paid request again: verified by jwt_authn, the filter skipped (none of its
    // counters moves), the upstream sees the payer and not the token.
    let (before, verified_before) = (n.filter_counters(), allowed());
    let r = n.get_with("/api/weather", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(n.filter_counters(), before, "the filter did not run");
    assert!(allowed() > verified_before, "jwt_authn verified it");
    let seen = n.last_upstream("/api/weather");
    assert_eq!(
        seen.header("x-x402-payer").map(str::to_ascii_lowercase),
        Some(format!("{address:#x}")),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-x402-route"), Some(WEATHER));
    assert!(
        seen.header("authorization").is_none(),
        "token not forwarded"
    );

    // A forged identity beside a valid token: the upstream sees the token's payer only.
    let r = n.stack.envoy.send(
        &HttpRequest::new("GET", "/api/weather")
            .header("authorization", &format!("Bearer {token}"))
            .header("x-x402-payer", "0x000000000000000000000000000000000000dEaD"),
    );
    assert_eq!(r.status, 200);
    let seen = n.last_upstream("/api/weather");
    assert_eq!(
        seen.header("x-x402-payer").map(str::to_ascii_lowercase),
        Some(format!("{address:#x}"))
    );

    // The weather token on the report route: not its audience, so jwt_authn does not
    // verify it and the filter refuses it for its route.
    let before = n.filter_counters();
    let r = n.get_with("/api/report", &token);
    assert_eq!(r.status, 402, "{}", r.text());
    assert_ne!(n.filter_counters(), before, "the filter judged it");

    // A forged `x-x402-payer` (what makes the filter step aside) without a token: removed
    // first, so the filter runs and answers 402.
    let before = n.filter_counters();
    let r = n.stack.envoy.send(
        &HttpRequest::new("GET", "/api/weather").header("x-x402-payer", &format!("{address:#x}")),
    );
    assert_eq!(r.status, 402, "{}", r.text());
    assert_ne!(n.filter_counters(), before, "the filter judged it");

    // A tampered token: jwt_authn fails it, the filter refuses it.
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let before = n.filter_counters();
    let r = n.get_with("/api/weather", &tampered);
    assert_eq!(r.status, 402, "{}", r.text());
    assert_ne!(n.filter_counters(), before, "the filter judged it");

    // The genuine token still opens its route, natively.
    let before = n.filter_counters();
    assert_eq!(n.get_with("/api/weather", &token).status, 200);
    assert_eq!(n.filter_counters(), before);
}
