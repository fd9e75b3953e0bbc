//! Prices on Envoy's own routes, through the real Envoy + filter, settler and anvil: a filter
//! route with `envoy_route` prices the requests Envoy sends through the route of that name
//! (`xds.route_name`), whatever their path; an Envoy route with the filter disabled per route
//! (`typed_per_filter_config` `envoy.config.route.v3.FilterConfig {disabled: true}`) is
//! proxied without the filter running at all; an Envoy route the config does not price
//! passes (the filter still strips forged identity headers there), and the filter's own
//! path table keeps pricing its paths.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use alloy::primitives::U256;
use serde_json::{json, Value};
use x402_protocol::Scheme;
use x402_testkit::envoy::HttpRequest;
use x402_testkit::stack::{Stack, StackOptions, REPORT, REPORT_PRICE};

/// Envoy's routes: the token endpoint's namespace and the priced API through the filter; the
/// static files with the filter disabled on their route; everything else through the filter.
/// `api_report` is priced by name in the filter config, `/api/weather` by the filter's own
/// path table (on the catch-all `rest`).
const ROUTES: &str = r#"- name: x402
  match: {prefix: "/x402/"}
  route: {cluster: upstream, timeout: 15s}
- name: api_report
  match: {prefix: "/v2/reports/"}
  route: {cluster: upstream, timeout: 15s}
- name: static_files
  match: {prefix: "/static/"}
  route: {cluster: upstream, timeout: 15s}
  typed_per_filter_config:
    envoy.filters.http.wasm:
      "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
      disabled: true
- name: rest
  match: {prefix: "/"}
  route: {cluster: upstream, timeout: 15s}
"#;

/// The stack ([`Stack`]) with the routes above; `report` priced by Envoy route name.
struct Edge {
    stack: Stack,
}

impl std::ops::Deref for Edge {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl Edge {
    async fn start() -> Edge {
        let opts = StackOptions {
            routes_yaml: Some(ROUTES.to_string()),
            ..StackOptions::default()
        };
        let stack = Stack::start_with_filter(opts, |config| {
            // `report` priced on Envoy's route `api_report` instead of the path /api/report.
            let report = config["routes"][1].as_object_mut().unwrap();
            assert_eq!(report["name"], REPORT);
            report.remove("match");
            report.insert("envoy_route".into(), json!("api_report"));
        })
        .await
        .unwrap();
        Edge { stack }
    }

    /// The filter's per-request counters (`wasmcustom.x402_*`; not the revocation list's,
    /// which its timer moves).
    fn filter_counters(&self) -> BTreeMap<String, u64> {
        self.envoy
            .stat_values()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("wasmcustom.x402_") && !k.starts_with("wasmcustom.x402_revocation")
            })
            .collect()
    }

    /// What the upstream received for the last request to `path`.
    fn upstream_saw(&self, path: &str) -> x402_testkit::upstream::Request {
        self.upstream
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("the upstream never got {path}"))
    }
}

fn forged(path: &str) -> HttpRequest {
    HttpRequest::new("GET", path)
        .header("x-x402-payer", "0x000000000000000000000000000000000000dEaD")
        .header("x-http-method-override", "DELETE")
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_routes_priced_by_name_disabled_per_route_or_unpriced() {
    let edge = Edge::start().await;

    // Priced by Envoy route name: a 402 for the route `report`, whatever the path.
    let before = edge.filter_counters();
    let r = edge.envoy.get("/v2/reports/7");
    assert_eq!(r.status, 402, "{}", r.text());
    let body = r.json();
    assert_eq!(body["access_token_endpoint"], "/x402/token/report");
    assert!(r.header("payment-required").is_some());
    let after = edge.filter_counters();
    assert_eq!(
        after["wasmcustom.x402_challenges"],
        before["wasmcustom.x402_challenges"] + 1
    );

    // ... and paid through the token endpoint (its own Envoy route, filter on).
    let (payer, payer_addr) = edge.payer(1, vec![Scheme::Exact]).await.unwrap();
    let url = format!("{}/v2/reports/7?format=csv", edge.envoy.base_url());
    let paid = payer.get(&url).await.unwrap();
    assert_eq!(
        paid.status,
        200,
        "{}\nenvoy:\n{}\nsettler:\n{}",
        paid.text(),
        edge.envoy.log_tail(30),
        edge.settler.log()
    );
    let receipt = paid.paid.expect("this call paid");
    assert_eq!(receipt.amount, U256::from(REPORT_PRICE));
    assert_eq!(receipt.payer, payer_addr);
    let seen = edge.upstream_saw("/v2/reports/7?format=csv");
    assert_eq!(seen.header("x-x402-route"), Some(REPORT));
    assert_eq!(
        seen.header("x-x402-payer"),
        Some(payer_addr.to_checksum(None).as_str())
    );
    assert_eq!(receipt.pay_to, edge.pay_to);

    // Filter disabled on the Envoy route: proxied as sent, the filter never ran (it strips
    // forged identity and method-override headers from every request it sees, and no
    // counter moves).
    let before = edge.filter_counters();
    for path in ["/static/logo.png", "/static/app.js"] {
        let r = edge.envoy.send(&forged(path));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = edge.upstream_saw(path);
        assert_eq!(
            seen.header("x-x402-payer"),
            Some("0x000000000000000000000000000000000000dEaD"),
            "{path}: the filter did not run"
        );
        assert_eq!(seen.header("x-http-method-override"), Some("DELETE"));
    }
    assert_eq!(edge.filter_counters(), before);

    // An Envoy route the config does not price: passes, through the filter (forged
    // identity and method override stripped).
    for path in ["/free/x", "/v2/other"] {
        let r = edge.envoy.send(&forged(path));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = edge.upstream_saw(path);
        assert_eq!(seen.header("x-x402-payer"), None, "{path}");
        assert_eq!(seen.header("x-http-method-override"), None, "{path}");
    }
    assert_eq!(edge.filter_counters(), before);

    // The filter's own table still prices /api/weather (on Envoy's catch-all route), and
    // the report's path route is gone: /api/report is the `rest` route's, unpriced.
    let r = edge.envoy.get("/api/weather");
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(r.json()["access_token_endpoint"], "/x402/token/weather");
    let r = edge.envoy.get("/api/report");
    assert_eq!(r.status, 200, "{}", r.text());

    // The discovery document lists the route by its Envoy route name.
    let doc: Value = edge.envoy.get("/.well-known/x402").json();
    let report = doc["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == REPORT)
        .unwrap();
    assert_eq!(report["match"], json!({"envoy_route": "api_report"}));
}

/// The filter cannot see Envoy's route table, so a misspelled `envoy_route` would silently
/// price nothing: every `envoy_route` of the shipped envoy/envoy.yaml names one of its
/// routes, and that route keeps the filter (no `disabled: true` under it).
#[test]
fn the_shipped_envoy_routes_exist_and_keep_the_filter() {
    let yaml =
        std::fs::read_to_string(x402_testkit::paths::root().join("envoy/envoy.yaml")).unwrap();
    let priced: Vec<&str> = yaml
        .split("\"envoy_route\": \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(!priced.is_empty(), "envoy/envoy.yaml prices no Envoy route");
    // Each route entry: from its `- name:` line to the next one.
    let entries: Vec<&str> = yaml.split("              - name: ").skip(1).collect();
    for name in priced {
        let entry = entries
            .iter()
            .find(|e| e.lines().next() == Some(name))
            .unwrap_or_else(|| panic!("envoy_route {name:?} names no route of envoy/envoy.yaml"));
        let entry = entry.split("\n          http_filters:").next().unwrap();
        assert!(
            !entry.contains("disabled: true"),
            "the route {name:?} disables the filter that prices it"
        );
    }
}
