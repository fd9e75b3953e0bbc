//! The discovery document: `GET /.well-known/x402` (path configurable, on by default) lists
//! what this gateway sells and at what price, so an agent can find the priced routes before
//! it meets a 402. Built and serialised once at configure time from the validated routes;
//! a request for it is one local reply of those bytes (`Cache-Control: public,
//! max-age=60`), never forwarded upstream, whatever route would match the path.
//!
//! Shape (every amount exact: decimals as strings, base units as integer strings):
//!
//! ```json
//! {"x402Version": 2, "token_endpoint_prefix": "/x402/token/",
//!  "routes": [{"name": "weather", "match": {"prefix": "/api/weather"},
//!    "methods": ["GET"], "hosts": null, "description": "...", "mime_type": "...",
//!    "price": "0.01", "token_endpoint": "/x402/token/weather",
//!    "payment_methods": [{"scheme": "exact", "network": "eip155:8453",
//!       "asset": {"address": "0x…", "symbol": "USDC", "decimals": 6, "name": "USD Coin",
//!                 "version": "2"},
//!       "pay_to": "0x…", "price": "0.01", "amount": "10000"}],
//!    "x402Version": 2, "accepts": [ /* PAYMENT-REQUIRED's accepts */ ]}]}
//! ```

use serde::Serialize;
use x402_protocol::challenge::PaymentRequirements;
use x402_protocol::format_base_units;

use crate::answer::HttpAnswer;
use crate::routes::{HostPattern, Route};

/// Where the document is served unless `discovery.path` says otherwise.
pub const DEFAULT_PATH: &str = "/.well-known/x402";
/// `Cache-Control` of the document: it changes only with the configuration.
pub const CACHE_CONTROL: &str = "public, max-age=60";

/// A route's `match`, as configured (`"prefix"`, `"exact"` or `"template"` and its text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchAsConfigured {
    pub kind: &'static str,
    pub pattern: String,
}

/// What discovery needs of a route besides the validated [`Route`]: its texts as configured.
#[derive(Debug, Clone)]
pub struct RouteText {
    pub matcher: MatchAsConfigured,
    pub price: String,
}

/// The served document, pre-serialised.
#[derive(Debug, Clone)]
pub struct Discovery {
    path: String,
    answer: HttpAnswer,
}

#[derive(Serialize)]
struct Doc<'a> {
    #[serde(rename = "x402Version")]
    x402_version: u32,
    token_endpoint_prefix: &'a str,
    routes: Vec<DocRoute<'a>>,
}

#[derive(Serialize)]
struct DocRoute<'a> {
    name: &'a str,
    #[serde(rename = "match")]
    matcher: serde_json::Map<String, serde_json::Value>,
    /// `null`: every method.
    methods: Option<&'a [String]>,
    /// `null`: every host.
    hosts: Option<Vec<String>>,
    case_insensitive: bool,
    description: &'a str,
    mime_type: &'a str,
    /// The route's price as configured, in the units of each method's asset.
    price: &'a str,
    token_endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    renew_endpoint: Option<String>,
    payment_methods: Vec<DocMethod<'a>>,
    #[serde(rename = "x402Version")]
    x402_version: u32,
    /// x402 v2 requirements, as in the route's `PAYMENT-REQUIRED` (exact methods only).
    accepts: &'a [PaymentRequirements],
}

#[derive(Serialize)]
struct DocAsset<'a> {
    address: String,
    symbol: &'a str,
    decimals: u8,
    name: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
struct DocMethod<'a> {
    scheme: x402_protocol::Scheme,
    network: String,
    asset: DocAsset<'a>,
    pay_to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    spender: Option<String>,
    /// The price in this asset, exact decimal.
    price: String,
    /// The price in this asset's base units (integer string).
    amount: String,
}

impl Discovery {
    /// The document for `routes` (with `texts[i]` the configured texts of `routes[i]`),
    /// served at `path`.
    pub fn build(
        path: String,
        token_endpoint_prefix: &str,
        routes: &[Route],
        texts: &[RouteText],
    ) -> Discovery {
        let doc = Doc {
            x402_version: 2,
            token_endpoint_prefix,
            routes: routes
                .iter()
                .zip(texts)
                .map(|(r, t)| doc_route(r, t))
                .collect(),
        };
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let mut answer = HttpAnswer::json(200, body);
        for (name, value) in answer.headers.iter_mut() {
            if *name == "cache-control" {
                *value = CACHE_CONTROL.to_string();
            }
        }
        Discovery { path, answer }
    }

    /// Whether a request for `path` (query and all) asks for the document.
    pub fn is_for(&self, path: &str) -> bool {
        path.split_once('?').map_or(path, |(p, _)| p) == self.path
    }

    /// The answer to a request for the document: the document to `GET`/`HEAD`, 405 with
    /// `Allow: GET, HEAD` to other methods.
    pub fn reply(&self, method: Option<&str>) -> Result<&HttpAnswer, HttpAnswer> {
        match method {
            Some("GET") | Some("HEAD") => Ok(&self.answer),
            _ => {
                let mut a = HttpAnswer::error(
                    405,
                    "method_not_allowed",
                    "the discovery document only accepts GET and HEAD",
                );
                a.headers.push(("allow", "GET, HEAD".to_string()));
                Err(a)
            }
        }
    }
}

/// A host pattern as it is configured (lower-cased): `api.example.com`, `*.example.org`.
fn host_text(h: &HostPattern) -> String {
    match h {
        HostPattern::Exact(e) => e.clone(),
        HostPattern::Suffix(s) => format!("*{s}"),
    }
}

fn doc_route<'a>(r: &'a Route, t: &'a RouteText) -> DocRoute<'a> {
    let mut matcher = serde_json::Map::new();
    matcher.insert(t.matcher.kind.to_string(), t.matcher.pattern.clone().into());
    DocRoute {
        name: &r.name,
        matcher,
        methods: r.methods.as_deref(),
        hosts: r.hosts.as_ref().map(|h| h.iter().map(host_text).collect()),
        case_insensitive: r.case_insensitive,
        description: &r.description,
        mime_type: &r.mime_type,
        price: &t.price,
        token_endpoint: &r.token_endpoint,
        renew_endpoint: r
            .unsettled_token_ttl_secs
            .map(|_| format!("{}/renew", r.token_endpoint)),
        payment_methods: r
            .accepts
            .iter()
            .map(|p| {
                let m = &p.method;
                DocMethod {
                    scheme: m.scheme,
                    network: m.network.to_string(),
                    asset: DocAsset {
                        address: m.asset.address.to_checksum(None),
                        symbol: &m.asset.symbol,
                        decimals: m.asset.decimals,
                        name: &m.asset.name,
                        version: &m.asset.version,
                    },
                    pay_to: m.pay_to.to_checksum(None),
                    spender: m.spender.map(|s| s.to_checksum(None)),
                    price: format_base_units(p.amount, m.asset.decimals),
                    amount: p.amount.to_string(),
                }
            })
            .collect(),
        x402_version: 2,
        accepts: r.challenge.v2_accepts(),
    }
}
