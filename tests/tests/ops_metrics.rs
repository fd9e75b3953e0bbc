//! The operations kit against a running stack (anvil + test USDC, the settler binary with
//! `--log-format json`, Envoy with the filter and the shipped `stats_tags`): after an unpaid
//! request, a refused one and a paid one, every metric the Grafana dashboard and the
//! Prometheus alert rules (`envoy/observability/`) name exists in a scrape of the settler's
//! `/metrics` or Envoy's `/stats/prometheus`; the per-route counters carry their route as a
//! label, the settled revenue is counted per route, and the request id Envoy forwards is the
//! one the settler logs the token request under.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use alloy::primitives::{B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::{eip712_domain, SolStruct};
use serde_json::{json, Value};
use x402_protocol::token::signing_key_from_hex;
use x402_testkit::envoy::{bootstrap_yaml, Envoy, EnvoyOpts};
use x402_testkit::paths;
use x402_testkit::stack::{attach_settler_secret, Stack, StackOptions, WEATHER_PRICE};

alloy::sol! {
    struct TransferWithAuthorization { address from; address to; uint256 value; uint256 validAfter; uint256 validBefore; bytes32 nonce; }
}

/// Names Prometheus makes up itself (not in any scrape).
const SYNTHETIC: &[&str] = &["up"];

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_name_only_metrics_a_running_stack_exports() {
    let mut stack = Stack::start_with(StackOptions {
        settler_args: vec!["--log-format".into(), "json".into()],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack.envoy = envoy_with_shipped_stats_tags(&stack);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = stack.envoy.base_url();

    // Unpaid: 402.
    let r = http
        .get(format!("{base}/api/weather"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 402);
    // Refused by the settler (a token rejection).
    let r = http
        .post(format!("{}/v1/tokens", stack.settler.url()))
        .bearer_auth(stack.settler.api_secret().unwrap())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Paid, under a request id we chose (Envoy keeps it: preserve_external_request_id).
    let payer = stack.funded_payer(1).await.unwrap();
    let request_id = "ops-metrics-paid-1f3a";
    let r = http
        .post(format!("{base}/x402/token/weather"))
        .header("x-request-id", request_id)
        .json(&payment(&stack, &payer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .get(format!("{base}/api/weather"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The settler logged the token request under Envoy's request id.
    let logged = stack.settler.log().lines().any(|l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["span"]["request_id"] == request_id
                && v["span"]["path"] == "/v1/tokens"
                && v["message"] == "request answered"
                && v["status"] == 200
        })
    });
    assert!(
        logged,
        "no settler line under {request_id}:\n{}",
        stack.settler.log()
    );

    // Settled, and counted as revenue of the route (the gauges refresh every 5 s).
    let settler_metrics = format!("{}/metrics", stack.settler.url());
    let revenue = format!(
        "x402_revenue_base_units_total{{network=\"{}\",asset=\"{:#x}\",route=\"weather\"}}",
        stack.anvil.network(),
        stack.token
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let settler_scrape = loop {
        let text = scrape(&http, &settler_metrics).await;
        if sample(&text, &revenue) == Some(WEATHER_PRICE as f64) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no {revenue} {WEATHER_PRICE} in:\n{text}\nsettler log:\n{}",
            stack.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let queue = format!(
        "x402_unsettled_payments{{network=\"{}\"}}",
        stack.anvil.network()
    );
    assert_eq!(sample(&settler_scrape, &queue), Some(0.0));
    let balance = sample_prefix(&settler_scrape, "x402_signer_balance_wei{").unwrap();
    assert!(balance > 0.0, "the signer has ETH: {balance}");

    let envoy_scrape = scrape(
        &http,
        &format!("{}/stats/prometheus", stack.envoy.admin_url()),
    )
    .await;
    // The route is a label (stats_tags), not part of the name.
    assert_eq!(
        sample(
            &envoy_scrape,
            "x402_route_challenges{x402_route=\"weather\"}"
        ),
        Some(1.0),
        "{envoy_scrape}"
    );
    assert_eq!(
        sample(&envoy_scrape, "x402_route_accepted{x402_route=\"weather\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&envoy_scrape, "x402_route_fail_open{x402_route=\"report\"}"),
        Some(0.0)
    );

    let mut exported = metric_names(&settler_scrape);
    exported.extend(metric_names(&envoy_scrape));

    let dir = paths::root().join("envoy/observability");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap())
            .expect("the dashboard is JSON");
    let alerts: Value = serde_norway::from_str(
        &std::fs::read_to_string(dir.join("prometheus-alerts.yaml")).unwrap(),
    )
    .expect("the alert rules are YAML");

    let mut exprs: Vec<(String, String)> = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let e = t["expr"].as_str().expect("expr").to_string();
            exprs.push((format!("panel {}", p["title"]), e));
        }
    }
    let groups = alerts["groups"].as_array().expect("groups");
    let mut n_alerts = 0;
    for g in groups {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            assert!(r["labels"]["severity"].is_string(), "{name}: severity");
            assert!(r["annotations"]["summary"].is_string(), "{name}: summary");
            exprs.push((
                format!("alert {name}"),
                r["expr"].as_str().unwrap().to_string(),
            ));
            n_alerts += 1;
        }
    }
    assert!(n_alerts >= 5);

    let mut missing = Vec::new();
    for (what, expr) in &exprs {
        let names = referenced_metrics(expr);
        assert!(!names.is_empty(), "{what}: no metric in {expr:?}");
        for n in names {
            if !exported.contains(&n) && !SYNTHETIC.contains(&n.as_str()) {
                missing.push(format!("{what}: {n}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics named but not exported: {missing:#?}\nexported: {exported:?}"
    );
}

/// Envoy as the stack runs it, with `envoy/observability/envoy-stats-tags.yaml` appended to
/// the bootstrap and the client's x-request-id kept.
fn envoy_with_shipped_stats_tags(stack: &Stack) -> Envoy {
    let key_file = &stack.settler.options().token_key_file;
    let key = signing_key_from_hex(&std::fs::read_to_string(key_file).unwrap()).unwrap();
    let mut config = Stack::filter_config(
        &key,
        stack.token,
        stack.anvil.network().to_string(),
        stack.spender,
        stack.pay_to,
    );
    let mut opts = EnvoyOpts {
        upstream_port: Some(stack.upstream.port()),
        settler_port: Some(stack.settler.port()),
        ..EnvoyOpts::default()
    };
    attach_settler_secret(&mut config, &mut opts, stack.settler.api_secret());
    let tags =
        std::fs::read_to_string(paths::root().join("envoy/observability/envoy-stats-tags.yaml"))
            .unwrap();
    let settler_port = stack.settler.port();
    let filter = config.to_string();
    let make = {
        let opts = opts.clone();
        move |port, admin| {
            let yaml = bootstrap_yaml(&filter, &opts, port, admin, settler_port);
            let keep_id = yaml.replacen(
                "stat_prefix: x402_edge\n",
                "stat_prefix: x402_edge\n          preserve_external_request_id: true\n",
                1,
            );
            assert_ne!(keep_id, yaml, "the harness bootstrap changed shape");
            format!("{keep_id}\n{tags}")
        }
    };
    Envoy::start_bootstrap(make, opts).unwrap()
}

/// A seed-format ERC-3009 payment of the weather route's price.
fn payment(stack: &Stack, key: &PrivateKeySigner) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let nonce = B256::from(PrivateKeySigner::random().to_bytes().0);
    let msg = TransferWithAuthorization {
        from: key.address(),
        to: stack.pay_to,
        value: U256::from(WEATHER_PRICE),
        validAfter: U256::ZERO,
        validBefore: U256::from(now + 3600),
        nonce,
    };
    let domain = eip712_domain! { name: "USDC", version: "2", chain_id: stack.anvil.chain_id(), verifying_contract: stack.token, };
    let sig = key
        .sign_hash_sync(&msg.eip712_signing_hash(&domain))
        .unwrap();
    json!({"version": "Version 0.1", "permit": {
        "permit_type": "ERC3009",
        "signature": {"v": 27 + sig.v() as u8, "r": format!("{:#x}", sig.r()), "s": format!("{:#x}", sig.s())},
        "token": stack.token, "chain_id": stack.anvil.chain_id(),
        "authorizer": key.address(), "recipient": stack.pay_to, "value": WEATHER_PRICE,
        "validAfter": 0, "validBefore": now + 3600, "nonce": nonce}})
}

async fn scrape(http: &reqwest::Client, url: &str) -> String {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{url}");
    r.text().await.unwrap()
}

/// Metric names of a Prometheus text exposition (histogram series included as exported:
/// `_bucket`, `_sum`, `_count`).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The value of the series written exactly as `series` (name and labels in exposition order).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn sample_prefix(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The metric names a PromQL expression reads: identifiers outside label matchers (`{}`),
/// ranges (`[]`), strings and grouping lists (`by (...)`, `without`, `on`, `ignoring`,
/// `group_left`, `group_right`), that are neither functions (followed by `(`), keywords,
/// aggregations nor numbers.
fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        // Aggregations, also written `sum by (l) (expr)`: not followed by `(` then.
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < b.len() {
        let c = b[i];
        if c == '{' || c == '[' || c == '"' || (c == '(' && skip_group) {
            let close = match c {
                '{' => '}',
                '[' => ']',
                '"' => '"',
                _ => ')',
            };
            i += 1;
            while i < b.len() && b[i] != close {
                i += 1;
            }
            skip_group = false;
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == ':') {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            let mut j = i;
            while j < b.len() && b[j].is_whitespace() {
                j += 1;
            }
            let call = b.get(j) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                skip_group = true;
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                out.insert(word);
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn promql_reader_finds_metrics_not_labels_or_functions() {
    let got = referenced_metrics(
        r#"sum by (x402_route) (rate(x402_route_challenges{x402_route!="a b"}[5m] offset 1d)) / clamp_min(max without(le) (up) + 5e15, 1e-9) > bool 0.5"#,
    );
    assert_eq!(
        got,
        ["up", "x402_route_challenges"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
