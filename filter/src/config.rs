//! The filter's configuration: JSON in Envoy's plugin `configuration` (a StringValue).
//!
//! Parsing is two steps. Serde with `deny_unknown_fields` reads the raw shape (a typo is an
//! error, never a silently ignored field); then every value is checked and compiled into
//! [`FilterConfig`]. Any problem is one [`ConfigError`] naming the field path, e.g.
//! `x402 config: routes[1].price: ...`. There is no default that lets traffic through.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use x402_protocol::settler_api::PricedMethod;
use x402_protocol::token::{KeySet, TokenAlg, VerifyKey};
use x402_protocol::{parse_decimal, Address, Asset, Network, PaymentMethod, Scheme, U256};

use crate::discovery::{self, Discovery, MatchAsConfigured, RouteText};
use crate::route_challenge::RouteChallenge;
use crate::routes::{self, HostPattern, OtherMethods, PathMatch, Route, RouteTable, Selector};

const DEFAULT_TOKEN_ENDPOINT_PREFIX: &str = "/x402/token/";
const DEFAULT_SETTLER_PATH: &str = "/v1/tokens";
const DEFAULT_SETTLER_RENEW_PATH: &str = "/v1/tokens/renew";
const DEFAULT_SETTLER_TIMEOUT_MS: u64 = 3000;
const DEFAULT_CLOCK_LEEWAY_SECS: u64 = 5;
const DEFAULT_TOKEN_TTL_SECS: u64 = 300;
const DEFAULT_MAX_TIMEOUT_SECONDS: u64 = 300;
const DEFAULT_TOKEN_CACHE_SIZE: usize = 10_000;
/// Slots of the verified-token table the workers share: ~1 KB each with real tokens.
const DEFAULT_SHARED_TOKEN_SLOTS: usize = 4096;
const MAX_SHARED_TOKEN_SLOTS: usize = 65_536;
const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
const DEFAULT_BODY_TIMEOUT_MS: u64 = 5000;
const DEFAULT_REVOCATION_PATH: &str = "/v1/revocations";
const DEFAULT_JWKS_PATH: &str = "/.well-known/jwks.json";
const DEFAULT_JWKS_INTERVAL_MS: u64 = 60_000;
const MIN_JWKS_INTERVAL_MS: u64 = 100;
const MAX_JWKS_INTERVAL_MS: u64 = 86_400_000;
const DEFAULT_REVOCATION_INTERVAL_MS: u64 = 1000;
const DEFAULT_REVOCATION_MAX_ENTRIES: usize = 10_000;
const MIN_REVOCATION_INTERVAL_MS: u64 = 100;
const MAX_REVOCATION_INTERVAL_MS: u64 = 3_600_000;
const MAX_REVOCATION_ENTRIES: usize = 100_000;

const MAX_SETTLER_TIMEOUT_MS: u64 = 60_000;
const MAX_CLOCK_LEEWAY_SECS: u64 = 300;
const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;
const MAX_TIMEOUT_SECONDS_LIMIT: u64 = 7 * 24 * 3600;
const MAX_TOKEN_CACHE_SIZE: usize = 1_000_000;
const MAX_BODY_BYTES_LIMIT: usize = 1024 * 1024;
const MAX_NAME_LEN: usize = 64;
const MAX_ENVOY_ROUTE_LEN: usize = 256;
const MAX_DECIMALS: u8 = 36;
const MIN_API_SECRET_LEN: usize = 16;
const MAX_API_SECRET_LEN: usize = 256;

/// A configuration error: the JSON path of the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "x402 config: {}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) use crate::policy::FailureMode;
use crate::policy::{CacheControl, Settlement};

/// The `authorization` header value for settler callouts (`Bearer <settler.api_secret>`).
/// Its `Debug` never shows the secret, so no log line or panic message can carry it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SettlerAuth(String);

impl SettlerAuth {
    pub(crate) fn header_value(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SettlerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SettlerAuth(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SettlerConfig {
    pub(crate) cluster: String,
    pub(crate) authority: String,
    pub(crate) path: String,
    /// Token renewal (`POST <token_endpoint_prefix><route>/renew` is forwarded here).
    pub(crate) renew_path: String,
    pub(crate) timeout: Duration,
    pub(crate) failure_mode: FailureMode,
    /// `Some` when `settler.api_secret` or `settler.api_secret_env` is set: every callout
    /// carries it.
    pub(crate) auth: Option<SettlerAuth>,
    /// `Some` when `settler.jwks` is set: the settler's keys are learned from its JWKS.
    pub(crate) jwks: Option<JwksConfig>,
}

/// Key rotation without a config push: `GET <path>` on the settler cluster every
/// `interval`; the keys it lists verify tokens whose `iss` is `issuer`, and only those
/// (`token_keys` still verify any token, and win a `kid` both name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JwksConfig {
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) issuer: String,
}

/// How the filter learns revoked tokens: `GET <path>?limit=<max_entries>` on the settler
/// cluster every `interval` (one worker per interval, shared with the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RevocationConfig {
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) max_entries: usize,
}

/// The validated, compiled configuration shared (via `Rc`) by all HTTP contexts of a worker.
pub struct FilterConfig {
    pub(crate) token_endpoint_prefix: String,
    pub(crate) settler: SettlerConfig,
    pub(crate) keys: KeySet,
    pub(crate) clock_leeway_secs: i64,
    pub(crate) token_ttl_secs: u64,
    /// Only the config tests read it back: the filter uses it once, for the routes' 402s.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) max_timeout_seconds: u64,
    pub(crate) token_cache_size: usize,
    /// Slots of the verified-token table shared by the workers (`shared_tokens`); 0: off.
    pub(crate) shared_token_slots: usize,
    pub(crate) max_body_bytes: usize,
    /// How long the token endpoint waits for the whole request body.
    pub(crate) body_timeout: Duration,
    pub(crate) revocation: RevocationConfig,
    pub(crate) routes: RouteTable,
    /// `GET <discovery.path>` (default `/.well-known/x402`): `None` when disabled.
    pub(crate) discovery: Option<Discovery>,
}

impl fmt::Debug for FilterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterConfig")
            .field("token_endpoint_prefix", &self.token_endpoint_prefix)
            .field("settler", &self.settler)
            .field("keys", &self.keys.len())
            .field("routes", &self.routes.len())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Raw shape (serde)
// ---------------------------------------------------------------------------------------

/// The x402 filter configuration: the JSON of Envoy's plugin `configuration`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "FilterConfig"))]
struct RawConfig {
    /// Path prefix the filter answers itself (token requests); default `/x402/token/`.
    #[serde(default)]
    token_endpoint_prefix: Option<String>,
    /// The settler cluster (required).
    settler: RawSettler,
    /// Public keys that verify the settler's access tokens (at least one).
    token_keys: Vec<RawKey>,
    /// Tolerated clock skew on token times, 0..=300 (default 5).
    #[serde(default)]
    clock_leeway_secs: Option<u64>,
    /// Access token lifetime, 1..=604800 seconds (default 300).
    #[serde(default)]
    token_ttl_secs: Option<u64>,
    /// The 402's `maxTimeoutSeconds`, 1..=604800 (default 300).
    #[serde(default)]
    max_timeout_seconds: Option<u64>,
    /// Verified tokens cached per worker, 0..=1000000 (default 10000).
    #[serde(default)]
    token_cache_size: Option<usize>,
    /// Slots of the verified-token table all workers share, 0 (off)..=65536 (default 4096).
    #[serde(default)]
    shared_token_slots: Option<usize>,
    /// Largest token-endpoint request body, 1..=1048576 bytes (default 16384).
    #[serde(default)]
    max_body_bytes: Option<usize>,
    /// How long the token endpoint waits for the whole body, 100..=60000 ms (default 5000).
    #[serde(default)]
    body_timeout_ms: Option<u64>,
    /// Revoked-token polling (defaults apply when absent).
    #[serde(default)]
    revocation: Option<RawRevocation>,
    /// The `/.well-known/x402` discovery document (on by default).
    #[serde(default)]
    discovery: Option<RawDiscovery>,
    /// Named payment methods (at least one), referenced by `routes[].payment_methods`.
    payment_methods: UniqueMap<RawMethod>,
    /// Priced routes (at least one), tried in order; an earlier route may not shadow a later one.
    routes: Vec<RawRoute>,
}

/// `settler`: the Envoy cluster of the x402 settler and how the filter calls it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Settler"))]
struct RawSettler {
    /// The Envoy cluster name of the settler (required).
    cluster: String,
    /// The `:authority` of settler callouts (default: the cluster name).
    #[serde(default)]
    authority: Option<String>,
    /// The token mint path (default `/v1/tokens`).
    #[serde(default)]
    path: Option<String>,
    /// The token renewal path (default `/v1/tokens/renew`).
    #[serde(default)]
    renew_path: Option<String>,
    /// Callout timeout, 1..=60000 ms (default 3000).
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// `"deny"` (default) or `"allow"`: the answer when the settler is unreachable.
    #[serde(default)]
    failure_mode: Option<String>,
    /// The settler's `--api-secret-file` content, sent as `authorization: Bearer <secret>`.
    /// Inline in the configuration: for local tests only (use `api_secret_env`).
    #[serde(default)]
    api_secret: Option<String>,
    /// The name of the wasm VM's environment variable holding the secret (Envoy
    /// `vm_config.environment_variables`), read at configure time.
    #[serde(default)]
    api_secret_env: Option<String>,
    #[serde(default)]
    jwks: Option<RawJwks>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Jwks"))]
struct RawJwks {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    interval_ms: Option<u64>,
    /// The settler's `--issuer`: the only `iss` a learned key's tokens may carry.
    issuer: String,
}

/// `revocation`: how the filter polls the settler for revoked tokens.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Revocation"))]
struct RawRevocation {
    /// The revocation list path (default `/v1/revocations`).
    #[serde(default)]
    path: Option<String>,
    /// Poll interval, 100..=3600000 ms (default 1000).
    #[serde(default)]
    interval_ms: Option<u64>,
    /// Revoked token ids kept, 1..=100000 (default 10000).
    #[serde(default)]
    max_entries: Option<usize>,
}

/// `discovery`: the document listing the priced routes (on by default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Discovery"))]
struct RawDiscovery {
    /// `false` turns the document off (default `true`).
    #[serde(default)]
    enabled: Option<bool>,
    /// Where the document is served (default `/.well-known/x402`).
    #[serde(default)]
    path: Option<String>,
}

/// A `token_keys[]` entry: a public key of the settler's token signer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "TokenKey"))]
struct RawKey {
    /// The key id tokens name in their `kid` header (unique).
    kid: String,
    /// The public key as hex: SEC1 secp256k1 (ES256K) or 32-byte Ed25519 (EdDSA).
    public_key: String,
    /// `ES256K` (the default, so older configs keep working) or `EdDSA`.
    #[serde(default)]
    alg: Option<String>,
}

/// A `payment_methods` entry: a token, a network and whom to pay.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "PaymentMethod"))]
struct RawMethod {
    /// `"exact"` (EIP-3009 transfer to `pay_to`) or `"permit"` (EIP-2612, needs `spender`).
    scheme: String,
    /// The x402 network name or CAIP-2 id (e.g. `base-sepolia`, `eip155:84532`).
    network: String,
    /// The token paid in.
    asset: RawAsset,
    /// The address that receives the payments (0x, EIP-55 checksum if mixed case).
    pay_to: String,
    /// The settler's wallet address: required for `permit`, ignored for `exact`.
    #[serde(default)]
    spender: Option<String>,
}

/// A payment method's token (its EIP-712 domain and units).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Asset"))]
struct RawAsset {
    /// The token contract address (0x, 20 bytes, not zero).
    address: String,
    /// The token's decimals, 0..=36: `price` is converted to base units with it.
    decimals: u8,
    /// The token's EIP-712 domain name (e.g. `USD Coin`).
    name: String,
    /// The token's EIP-712 domain version (e.g. `2`).
    version: String,
    /// The token's symbol (e.g. `USDC`).
    symbol: String,
}

/// A `routes[]` entry: requests it matches need a payment of `price`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Route"))]
struct RawRoute {
    /// The route's unique name, 1..=64 chars of `[A-Za-z0-9._~-]` (a URL path segment).
    name: String,
    /// The filter's own matching (path, `hosts`); exclusive with `envoy_route`.
    #[serde(default, rename = "match")]
    matcher: Option<RawMatch>,
    /// The name of the Envoy route (`routes[].name` in Envoy's route configuration) whose
    /// requests this route prices; exclusive with `match`.
    #[serde(default)]
    envoy_route: Option<String>,
    /// HTTP methods the route prices (default: every method).
    #[serde(default)]
    methods: Option<Vec<String>>,
    /// Hosts the route matches (`example.com`, `*.example.com`); not with `envoy_route`.
    #[serde(default)]
    hosts: Option<Vec<String>>,
    /// `"refuse"` (default: 405 with `Allow`) or `"pass"` for a method `methods` does not list.
    #[serde(default)]
    other_methods: Option<String>,
    /// Match the path ASCII case-insensitively (for upstreams that do).
    #[serde(default)]
    case_insensitive: Option<bool>,
    /// The price per request as a decimal string in token units (e.g. `"0.01"`).
    price: String,
    /// Lifetime of the first token while its payment is unsettled (renewed afterwards).
    #[serde(default)]
    unsettled_token_ttl_secs: Option<u64>,
    /// Shown in the 402 and the discovery document.
    #[serde(default)]
    description: Option<String>,
    /// The resource's media type, shown in the 402.
    #[serde(default)]
    mime_type: Option<String>,
    /// Names of `payment_methods` this route accepts (at least one).
    payment_methods: Vec<String>,
    /// `"deny"` / `"allow"`: this route's answer to an unreachable settler (default
    /// `settler.failure_mode`).
    #[serde(default)]
    failure_mode: Option<String>,
    /// `"private, no-store"` (default) / `"upstream"`: the `Cache-Control` of paid responses.
    #[serde(default)]
    cache_control: Option<String>,
    /// `true`: a request let through with a bearer token keeps its `Authorization` header
    /// (default: removed before the upstream, as Envoy jwt_authn's `forward: false`).
    #[serde(default)]
    forward_token: bool,
    /// `true`: an x402 v2 payment is charged whatever the upstream answers (default: held
    /// and voided when the upstream answers 400 or more).
    #[serde(default)]
    charge_on_upstream_error: bool,
    /// `"async"` (default) / `"before_response"`: when an x402 v2 payment settles.
    #[serde(default)]
    settlement: Option<String>,
}

/// `match`: exactly one of `prefix`, `exact`, `template`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Match"))]
struct RawMatch {
    /// Match paths starting with this normalised path.
    #[serde(default)]
    prefix: Option<String>,
    /// Match exactly this normalised path.
    #[serde(default)]
    exact: Option<String>,
    /// Match a path template with `{name}` segments.
    #[serde(default)]
    template: Option<String>,
}

/// A JSON object read in order that refuses duplicate keys (serde's maps keep the last one).
struct UniqueMap<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for UniqueMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = UniqueMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    let value = map.next_value::<T>()?;
                    out.push((key, value));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The JSON Schema of the raw shape above, derived from these types (`x402-filter schema`).
#[cfg(feature = "schema")]
pub mod schema;
/// What a valid configuration holds, in one line (`x402-filter check-config`).
mod summary;

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// Parses and validates the plugin configuration; `settler.api_secret_env` is read from the
/// process environment (in wasm32-wasip1, the VM's WASI environment).
pub fn parse(text: &[u8]) -> Result<FilterConfig, ConfigError> {
    parse_with_env(text, &|name| std::env::var(name).ok())
}

/// [`parse`] with the environment given as a lookup (the tests' own variables).
pub(crate) fn parse_with_env(
    text: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FilterConfig, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let raw: RawConfig = match serde_path_to_error::deserialize(&mut de) {
        Ok(raw) => raw,
        Err(e) => {
            let path = e.path().to_string();
            return Err(ConfigError::new(
                if path.is_empty() {
                    ".".to_string()
                } else {
                    path
                },
                e.into_inner().to_string(),
            ));
        }
    };
    de.end().map_err(|e| ConfigError::new(".", e.to_string()))?;
    validate(raw, env)
}

fn validate(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FilterConfig, ConfigError> {
    let prefix = raw
        .token_endpoint_prefix
        .unwrap_or_else(|| DEFAULT_TOKEN_ENDPOINT_PREFIX.to_string());
    check_endpoint_prefix(&prefix).map_err(|m| ConfigError::new("token_endpoint_prefix", m))?;

    let settler = validate_settler(raw.settler, env)?;
    let keys = validate_keys(raw.token_keys)?;

    let clock_leeway_secs = bounded(
        "clock_leeway_secs",
        raw.clock_leeway_secs.unwrap_or(DEFAULT_CLOCK_LEEWAY_SECS),
        0,
        MAX_CLOCK_LEEWAY_SECS,
    )?;
    let token_ttl_secs = bounded(
        "token_ttl_secs",
        raw.token_ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS),
        1,
        MAX_TOKEN_TTL_SECS,
    )?;
    let max_timeout_seconds = bounded(
        "max_timeout_seconds",
        raw.max_timeout_seconds
            .unwrap_or(DEFAULT_MAX_TIMEOUT_SECONDS),
        1,
        MAX_TIMEOUT_SECONDS_LIMIT,
    )?;
    let token_cache_size = bounded(
        "token_cache_size",
        raw.token_cache_size.unwrap_or(DEFAULT_TOKEN_CACHE_SIZE) as u64,
        0,
        MAX_TOKEN_CACHE_SIZE as u64,
    )? as usize;
    let shared_token_slots = bounded(
        "shared_token_slots",
        raw.shared_token_slots.unwrap_or(DEFAULT_SHARED_TOKEN_SLOTS) as u64,
        0,
        MAX_SHARED_TOKEN_SLOTS as u64,
    )? as usize;
    let max_body_bytes = bounded(
        "max_body_bytes",
        raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES) as u64,
        1,
        MAX_BODY_BYTES_LIMIT as u64,
    )? as usize;
    let body_timeout_ms = bounded(
        "body_timeout_ms",
        raw.body_timeout_ms.unwrap_or(DEFAULT_BODY_TIMEOUT_MS),
        100,
        60_000,
    )?;
    let revocation = validate_revocation(raw.revocation)?;

    if raw.payment_methods.0.is_empty() {
        return Err(ConfigError::new(
            "payment_methods",
            "at least one payment method is required",
        ));
    }
    let mut methods: Vec<(String, PaymentMethod)> = Vec::with_capacity(raw.payment_methods.0.len());
    for (name, m) in raw.payment_methods.0 {
        let path = format!("payment_methods.{name}");
        if name.is_empty() {
            return Err(ConfigError::new(
                "payment_methods",
                "a payment method name is empty",
            ));
        }
        let method = validate_method(&path, m)?;
        methods.push((name, method));
    }

    if raw.routes.is_empty() {
        return Err(ConfigError::new("routes", "at least one route is required"));
    }
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut texts = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        texts.push(route_text(&r));
        let route = validate_route(
            &path,
            r,
            &methods,
            &prefix,
            max_timeout_seconds,
            token_ttl_secs,
            settler.failure_mode,
        )?;
        if !names.insert(route.name.clone()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate route name {:?}", route.name),
            ));
        }
        check_shadowing(&path, &route, &routes, &prefix)?;
        routes.push(route);
    }
    let discovery = validate_discovery(raw.discovery, &prefix)?
        .map(|path| Discovery::build(path, &prefix, &routes, &texts));

    Ok(FilterConfig {
        token_endpoint_prefix: prefix,
        settler,
        keys,
        clock_leeway_secs: clock_leeway_secs as i64,
        token_ttl_secs,
        max_timeout_seconds,
        token_cache_size,
        shared_token_slots,
        max_body_bytes,
        body_timeout: Duration::from_millis(body_timeout_ms),
        revocation,
        routes: RouteTable::new(routes),
        discovery,
    })
}

/// A route's `match` and `price` as configured, for the discovery document (read before
/// validation takes the route apart; a route that does not validate fails the config).
fn route_text(r: &RawRoute) -> RouteText {
    let (kind, pattern) = match (&r.envoy_route, &r.matcher) {
        (Some(n), _) => ("envoy_route", n),
        (None, Some(m)) => match (&m.prefix, &m.exact, &m.template) {
            (Some(p), _, _) => ("prefix", p),
            (_, Some(e), _) => ("exact", e),
            (_, _, Some(t)) => ("template", t),
            _ => ("prefix", &r.name),
        },
        (None, None) => ("prefix", &r.name),
    };
    RouteText {
        matcher: MatchAsConfigured {
            kind,
            pattern: pattern.clone(),
        },
        price: r.price.clone(),
    }
}

/// `discovery`: the path to serve the document at, `None` when `enabled` is false.
fn validate_discovery(
    d: Option<RawDiscovery>,
    prefix: &str,
) -> Result<Option<String>, ConfigError> {
    let (enabled, path) = match d {
        None => (true, None),
        Some(d) => (d.enabled.unwrap_or(true), d.path),
    };
    if !enabled {
        return Ok(None);
    }
    let path = path.unwrap_or_else(|| discovery::DEFAULT_PATH.to_string());
    check_path(&path).map_err(|m| ConfigError::new("discovery.path", m))?;
    if path.starts_with(prefix) {
        return Err(ConfigError::new(
            "discovery.path",
            format!("{path:?} is under token_endpoint_prefix {prefix:?}"),
        ));
    }
    Ok(Some(path))
}

fn bounded(path: &str, v: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::new(
            path,
            format!("{v} is out of range {min}..={max}"),
        ));
    }
    Ok(v)
}

/// Characters safe in a URL path segment without escaping (RFC 3986 unreserved).
fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'~')
}

fn check_endpoint_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || !p.ends_with('/') || p.len() < 2 {
        return Err(format!(
            "{p:?} must start and end with '/' (e.g. \"/x402/token/\")"
        ));
    }
    if p.contains("//") {
        return Err(format!("{p:?} contains an empty segment"));
    }
    if !p[1..p.len() - 1].split('/').all(is_safe_name) {
        return Err(format!("{p:?} may only contain [A-Za-z0-9._~-] segments"));
    }
    Ok(())
}

fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
    {
        return Err(format!(
            "{p:?} contains whitespace, control characters, '?' or '#'"
        ));
    }
    Ok(())
}

fn validate_revocation(r: Option<RawRevocation>) -> Result<RevocationConfig, ConfigError> {
    let r = r.unwrap_or(RawRevocation {
        path: None,
        interval_ms: None,
        max_entries: None,
    });
    let path = r
        .path
        .unwrap_or_else(|| DEFAULT_REVOCATION_PATH.to_string());
    check_path(&path).map_err(|m| ConfigError::new("revocation.path", m))?;
    let interval_ms = bounded(
        "revocation.interval_ms",
        r.interval_ms.unwrap_or(DEFAULT_REVOCATION_INTERVAL_MS),
        MIN_REVOCATION_INTERVAL_MS,
        MAX_REVOCATION_INTERVAL_MS,
    )?;
    let max_entries = bounded(
        "revocation.max_entries",
        r.max_entries.unwrap_or(DEFAULT_REVOCATION_MAX_ENTRIES) as u64,
        1,
        MAX_REVOCATION_ENTRIES as u64,
    )? as usize;
    Ok(RevocationConfig {
        path,
        interval: Duration::from_millis(interval_ms),
        max_entries,
    })
}

fn validate_settler(
    s: RawSettler,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SettlerConfig, ConfigError> {
    if s.cluster.trim().is_empty() || s.cluster.trim() != s.cluster {
        return Err(ConfigError::new(
            "settler.cluster",
            "must be a non-empty Envoy cluster name",
        ));
    }
    let authority = s.authority.unwrap_or_else(|| s.cluster.clone());
    if authority.is_empty()
        || authority
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'/')
    {
        return Err(ConfigError::new(
            "settler.authority",
            format!("{authority:?} is not a valid authority"),
        ));
    }
    let path = s.path.unwrap_or_else(|| DEFAULT_SETTLER_PATH.to_string());
    check_path(&path).map_err(|m| ConfigError::new("settler.path", m))?;
    let renew_path = s
        .renew_path
        .unwrap_or_else(|| DEFAULT_SETTLER_RENEW_PATH.to_string());
    check_path(&renew_path).map_err(|m| ConfigError::new("settler.renew_path", m))?;
    let timeout_ms = bounded(
        "settler.timeout_ms",
        s.timeout_ms.unwrap_or(DEFAULT_SETTLER_TIMEOUT_MS),
        1,
        MAX_SETTLER_TIMEOUT_MS,
    )?;
    let failure_mode = match s.failure_mode.as_deref() {
        None => FailureMode::Deny,
        Some(m) => FailureMode::parse(m).ok_or_else(|| {
            ConfigError::new(
                "settler.failure_mode",
                format!("{m:?} is neither \"deny\" nor \"allow\""),
            )
        })?,
    };
    let auth = match (s.api_secret, s.api_secret_env) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "settler.api_secret_env",
                "settler.api_secret and settler.api_secret_env are mutually exclusive",
            ))
        }
        (Some(secret), None) => {
            Some(check_api_secret(&secret).map_err(|m| ConfigError::new("settler.api_secret", m))?)
        }
        (None, Some(name)) => {
            let path = "settler.api_secret_env";
            if name.is_empty()
                || name.len() > 128
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(ConfigError::new(
                    path,
                    format!("{name:?} is not an environment variable name ([A-Za-z0-9_], 1..=128)"),
                ));
            }
            let secret = env(&name).filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    path,
                    format!("environment variable {name} of the wasm VM is missing or empty (set it in Envoy's vm_config.environment_variables: host_env_keys or key_values)"),
                )
            })?;
            Some(
                check_api_secret(&secret).map_err(|m| {
                    ConfigError::new(path, format!("environment variable {name}: {m}"))
                })?,
            )
        }
    };
    let jwks = s.jwks.map(validate_jwks).transpose()?;
    Ok(SettlerConfig {
        cluster: s.cluster,
        authority,
        path,
        renew_path,
        timeout: Duration::from_millis(timeout_ms),
        failure_mode,
        auth,
        jwks,
    })
}

fn validate_jwks(j: RawJwks) -> Result<JwksConfig, ConfigError> {
    let path = j.path.unwrap_or_else(|| DEFAULT_JWKS_PATH.to_string());
    check_path(&path).map_err(|m| ConfigError::new("settler.jwks.path", m))?;
    let interval_ms = bounded(
        "settler.jwks.interval_ms",
        j.interval_ms.unwrap_or(DEFAULT_JWKS_INTERVAL_MS),
        MIN_JWKS_INTERVAL_MS,
        MAX_JWKS_INTERVAL_MS,
    )?;
    if j.issuer.is_empty() || j.issuer.len() > 256 || j.issuer.trim() != j.issuer {
        return Err(ConfigError::new(
            "settler.jwks.issuer",
            "must be the settler's --issuer: 1..=256 characters, no outer spaces",
        ));
    }
    Ok(JwksConfig {
        path,
        interval: Duration::from_millis(interval_ms),
        issuer: j.issuer,
    })
}

/// The settler's bearer secret: 16..=256 printable ASCII characters, no leading or trailing
/// space (the settler trims its secret file; a header value loses outer spaces too).
/// Messages never quote the secret.
/// What the shipped manifests put where a secret goes: refused, so a forgotten one fails at
/// load instead of becoming a secret anyone can read in the repository.
const PLACEHOLDER: &str = "REPLACE_ME";

fn check_api_secret(secret: &str) -> Result<SettlerAuth, String> {
    let n = secret.chars().count();
    if !(MIN_API_SECRET_LEN..=MAX_API_SECRET_LEN).contains(&n) {
        return Err(format!(
            "must be {MIN_API_SECRET_LEN}..={MAX_API_SECRET_LEN} characters long (got {n})"
        ));
    }
    if !secret.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err("must only contain printable ASCII characters".to_string());
    }
    if secret.starts_with(' ') || secret.ends_with(' ') {
        return Err("must not start or end with a space".to_string());
    }
    if secret.contains(PLACEHOLDER) {
        return Err(format!(
            "is the shipped placeholder ({PLACEHOLDER}...): put the settler's secret there"
        ));
    }
    Ok(SettlerAuth(format!("Bearer {secret}")))
}

fn validate_keys(keys: Vec<RawKey>) -> Result<KeySet, ConfigError> {
    if keys.is_empty() {
        return Err(ConfigError::new(
            "token_keys",
            "at least one token verification key is required",
        ));
    }
    let mut set = KeySet::new();
    let mut seen = HashSet::new();
    for (i, k) in keys.into_iter().enumerate() {
        let kid_ok = !k.kid.is_empty()
            && k.kid.len() <= 128
            && k.kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !kid_ok {
            return Err(ConfigError::new(
                format!("token_keys[{i}].kid"),
                format!("{:?} must be 1..=128 chars of [A-Za-z0-9._-]", k.kid),
            ));
        }
        if !seen.insert(k.kid.clone()) {
            return Err(ConfigError::new(
                format!("token_keys[{i}].kid"),
                format!("duplicate kid {:?}", k.kid),
            ));
        }
        let alg = match k.alg.as_deref() {
            None => TokenAlg::Es256k,
            Some(name) => TokenAlg::from_jws_name(name).ok_or_else(|| {
                ConfigError::new(
                    format!("token_keys[{i}].alg"),
                    format!("{name:?} is not a token algorithm: \"ES256K\" or \"EdDSA\""),
                )
            })?,
        };
        let hex = k.public_key.trim();
        let hex_ok = hex.len() > 2
            && hex
                .trim_start_matches("0x")
                .bytes()
                .all(|b| b.is_ascii_hexdigit());
        let key = if hex_ok {
            VerifyKey::from_hex(alg, hex)
        } else {
            None
        }
        .ok_or_else(|| {
            ConfigError::new(
                format!("token_keys[{i}].public_key"),
                match alg {
                    TokenAlg::Es256k => "not a secp256k1 public key as SEC1 hex (33 bytes compressed or 65 uncompressed)",
                    TokenAlg::EdDsa => "not an Ed25519 public key as hex (32 bytes, not of small order)",
                },
            )
        })?;
        set.insert(k.kid, key);
    }
    Ok(set)
}

/// A 20-byte hex address. Mixed case must be a valid EIP-55 checksum (it catches typos).
fn parse_address(path: &str, s: &str, allow_zero: bool) -> Result<Address, ConfigError> {
    let hex = s
        .strip_prefix("0x")
        .ok_or_else(|| ConfigError::new(path, format!("{s:?} is not a 0x-prefixed address")))?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ConfigError::new(
            path,
            format!("{s:?} is not a 20-byte hex address"),
        ));
    }
    let addr: Address = s
        .parse()
        .map_err(|_| ConfigError::new(path, format!("{s:?} is not an address")))?;
    let mixed =
        hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
    if mixed && addr.to_checksum(None) != s {
        return Err(ConfigError::new(
            path,
            format!("{s:?} has an invalid EIP-55 checksum"),
        ));
    }
    if !allow_zero && addr == Address::ZERO {
        return Err(ConfigError::new(path, "the zero address is not allowed"));
    }
    Ok(addr)
}

fn non_empty(path: &str, s: String) -> Result<String, ConfigError> {
    if s.trim().is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    Ok(s)
}

fn validate_method(path: &str, m: RawMethod) -> Result<PaymentMethod, ConfigError> {
    let scheme = match m.scheme.as_str() {
        "exact" => Scheme::Exact,
        "permit" => Scheme::Permit,
        other => {
            return Err(ConfigError::new(
                format!("{path}.scheme"),
                format!("{other:?} is neither \"exact\" nor \"permit\""),
            ))
        }
    };
    let network: Network = m
        .network
        .parse()
        .map_err(|e: x402_protocol::chain::NetworkError| {
            ConfigError::new(format!("{path}.network"), e.to_string())
        })?;
    let address = parse_address(&format!("{path}.asset.address"), &m.asset.address, false)?;
    if m.asset.decimals > MAX_DECIMALS {
        return Err(ConfigError::new(
            format!("{path}.asset.decimals"),
            format!("{} is more than {MAX_DECIMALS}", m.asset.decimals),
        ));
    }
    let asset = Asset {
        address,
        decimals: m.asset.decimals,
        name: non_empty(&format!("{path}.asset.name"), m.asset.name)?,
        version: non_empty(&format!("{path}.asset.version"), m.asset.version)?,
        symbol: non_empty(&format!("{path}.asset.symbol"), m.asset.symbol)?,
    };
    let pay_to = parse_address(&format!("{path}.pay_to"), &m.pay_to, false)?;
    let spender = match (scheme, m.spender) {
        (Scheme::Permit, Some(s)) => Some(parse_address(&format!("{path}.spender"), &s, false)?),
        (Scheme::Permit, None) => {
            return Err(ConfigError::new(
                format!("{path}.spender"),
                "required for scheme \"permit\" (the settler's wallet)",
            ))
        }
        // `exact` pays `pay_to` directly: a spender has no meaning and is ignored, but it must
        // still be well-formed so a typo does not go unnoticed.
        (Scheme::Exact, Some(s)) => {
            parse_address(&format!("{path}.spender"), &s, true)?;
            None
        }
        (Scheme::Exact, None) => None,
    };
    Ok(PaymentMethod {
        scheme,
        network,
        asset,
        pay_to,
        spender,
    })
}

/// A route's path as the filter matches requests: normalised (see
/// `routes::normalize_path`), so a pattern with `;`, `\`, `//`, dot segments or an escape
/// the filter decodes or refuses could never match.
fn check_match_path(p: &str) -> Result<(), String> {
    check_path(p)?;
    if p.contains(';') || p.contains('\\') {
        return Err(format!(
            "{p:?} contains ';' or '\\' (request paths are matched with ';' parameters cut)"
        ));
    }
    if routes::normalize_path(p).is_some() {
        return Err(format!(
            "{p:?} is not a normalised path (no '//', '.' or '..' segments, no escaped '/', '\\' or unreserved character)"
        ));
    }
    Ok(())
}

/// Refuses a route that an earlier one shadows (every request it matches, for some shared
/// method and host, matches the earlier first), or that lies in the token endpoint's
/// namespace (the filter answers every path under `token_endpoint_prefix` itself).
fn check_shadowing(
    path: &str,
    route: &Route,
    earlier: &[Route],
    token_prefix: &str,
) -> Result<(), ConfigError> {
    if let Some((i, e)) = earlier
        .iter()
        .enumerate()
        .find(|(_, e)| routes::shadows(e, route))
    {
        if let Selector::EnvoyRoute(name) = &route.selector {
            return Err(ConfigError::new(
                format!("{path}.envoy_route"),
                format!(
                    "duplicate envoy_route {name:?}: routes[{i}] ({:?}) already prices it for a shared method (give each route on one Envoy route its own methods)",
                    e.name
                ),
            ));
        }
        return Err(ConfigError::new(
            path,
            format!(
                "shadowed by routes[{i}] ({:?}): every request {:?} matches (for a shared method and host) matches {:?} first; put the more specific route first",
                e.name, route.name, e.name
            ),
        ));
    }
    let Some(matcher) = route.path_match() else {
        // A route by Envoy route name: Envoy's routing is not known here (the token endpoint
        // is answered before any route is looked up anyway).
        return Ok(());
    };
    let tp = if route.case_insensitive {
        token_prefix.to_ascii_lowercase()
    } else {
        token_prefix.to_string()
    };
    if matcher.overlaps_prefix(&tp) && !matcher.covers_prefix(&tp) {
        return Err(ConfigError::new(
            format!("{path}.match"),
            format!("falls under token_endpoint_prefix {token_prefix:?}: the filter answers those paths itself, so the route would never price them"),
        ));
    }
    Ok(())
}

fn validate_match(path: &str, m: RawMatch) -> Result<PathMatch, ConfigError> {
    let path = format!("{path}.match");
    match (m.prefix, m.exact, m.template) {
        (Some(p), None, None) => {
            check_match_path(&p).map_err(|e| ConfigError::new(format!("{path}.prefix"), e))?;
            Ok(PathMatch::Prefix(p))
        }
        (None, Some(e), None) => {
            check_match_path(&e).map_err(|m| ConfigError::new(format!("{path}.exact"), m))?;
            Ok(PathMatch::Exact(e))
        }
        (None, None, Some(t)) => {
            check_match_path(&t).map_err(|m| ConfigError::new(format!("{path}.template"), m))?;
            PathMatch::template(&t).map_err(|m| ConfigError::new(format!("{path}.template"), m))
        }
        _ => Err(ConfigError::new(
            path,
            "exactly one of \"prefix\", \"exact\", \"template\" is required",
        )),
    }
}

/// `match` or `envoy_route`, exactly one. An Envoy route name is 1..=256 visible ASCII
/// characters (what `xds.route_name` can be compared with; Envoy itself allows any string).
fn validate_selector(
    path: &str,
    matcher: Option<RawMatch>,
    envoy_route: Option<String>,
    case_insensitive: bool,
) -> Result<Selector, ConfigError> {
    match (matcher, envoy_route) {
        (Some(m), None) => {
            let m = validate_match(path, m)?;
            // A case-insensitive route matches lower-cased request paths.
            Ok(Selector::Path(if case_insensitive { m.to_lower() } else { m }))
        }
        (None, Some(name)) => {
            let field = format!("{path}.envoy_route");
            if name.is_empty()
                || name.len() > MAX_ENVOY_ROUTE_LEN
                || !name.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ConfigError::new(
                    field,
                    format!("{name:?} must be 1..={MAX_ENVOY_ROUTE_LEN} visible ASCII characters (the Envoy route's name)"),
                ));
            }
            if case_insensitive {
                return Err(ConfigError::new(
                    format!("{path}.case_insensitive"),
                    "not with \"envoy_route\": Envoy's route match decides",
                ));
            }
            Ok(Selector::EnvoyRoute(name))
        }
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("{path}.envoy_route"),
            "\"match\" and \"envoy_route\" are mutually exclusive (a route is matched by the filter or by Envoy)",
        )),
        (None, None) => Err(ConfigError::new(
            format!("{path}.match"),
            "one of \"match\" (the filter matches the path) or \"envoy_route\" (the name of the Envoy route) is required",
        )),
    }
}

fn validate_route(
    path: &str,
    r: RawRoute,
    methods: &[(String, PaymentMethod)],
    prefix: &str,
    max_timeout_seconds: u64,
    token_ttl_secs: u64,
    default_failure_mode: FailureMode,
) -> Result<Route, ConfigError> {
    if !is_safe_name(&r.name) {
        return Err(ConfigError::new(
            format!("{path}.name"),
            format!("{:?} must be 1..={MAX_NAME_LEN} chars of [A-Za-z0-9._~-] (it becomes a URL path segment)", r.name),
        ));
    }
    let case_insensitive = r.case_insensitive.unwrap_or(false);
    let selector = validate_selector(path, r.matcher, r.envoy_route, case_insensitive)?;

    let http_methods = match r.methods {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.methods"),
                    "must not be empty (omit it to match every method)",
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for (j, m) in list.into_iter().enumerate() {
                if m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(ConfigError::new(
                        format!("{path}.methods[{j}]"),
                        format!("{m:?} is not an HTTP method"),
                    ));
                }
                out.push(m.to_ascii_uppercase());
            }
            // HEAD is GET without the body (RFC 9110): a priced GET must not be reachable
            // unpriced through HEAD.
            if out.iter().any(|m| m == "GET") && !out.iter().any(|m| m == "HEAD") {
                out.push("HEAD".to_string());
            }
            Some(out)
        }
    };
    let other_methods = match (r.other_methods.as_deref(), &http_methods) {
        (None | Some("refuse"), _) => OtherMethods::Refuse,
        (Some("pass"), Some(_)) => OtherMethods::Pass,
        (Some("pass"), None) => {
            return Err(ConfigError::new(
                format!("{path}.other_methods"),
                "needs \"methods\" (without it the route prices every method)",
            ))
        }
        (Some(other), _) => {
            return Err(ConfigError::new(
                format!("{path}.other_methods"),
                format!("{other:?} is neither \"refuse\" nor \"pass\""),
            ))
        }
    };

    let hosts = match r.hosts {
        None => None,
        Some(_) if matches!(selector, Selector::EnvoyRoute(_)) => {
            return Err(ConfigError::new(
                format!("{path}.hosts"),
                "not with \"envoy_route\": the Envoy virtual host's domains choose the hosts",
            ))
        }
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.hosts"),
                    "must not be empty (omit it to match every host)",
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for (j, h) in list.iter().enumerate() {
                out.push(
                    HostPattern::parse(h)
                        .map_err(|m| ConfigError::new(format!("{path}.hosts[{j}]"), m))?,
                );
            }
            Some(out)
        }
    };

    if r.payment_methods.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.payment_methods"),
            "at least one payment method is required",
        ));
    }
    let mut accepts: Vec<PricedMethod> = Vec::with_capacity(r.payment_methods.len());
    for (j, name) in r.payment_methods.iter().enumerate() {
        let mpath = format!("{path}.payment_methods[{j}]");
        if r.payment_methods[..j].contains(name) {
            return Err(ConfigError::new(mpath, format!("{name:?} is listed twice")));
        }
        let method = methods
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.clone())
            .ok_or_else(|| ConfigError::new(mpath, format!("unknown payment method {name:?}")))?;
        let amount = parse_decimal(&r.price, method.asset.decimals).map_err(|e| {
            ConfigError::new(
                format!("{path}.price"),
                format!(
                    "{e} (payment method {name:?}, {} decimals)",
                    method.asset.decimals
                ),
            )
        })?;
        if amount == U256::ZERO {
            return Err(ConfigError::new(
                format!("{path}.price"),
                "must be greater than zero",
            ));
        }
        accepts.push(PricedMethod { amount, method });
    }

    let description = r.description.unwrap_or_default();
    let mime_type = r.mime_type.unwrap_or_default();
    if mime_type.bytes().any(|b| b < b' ' || b == 0x7f) {
        return Err(ConfigError::new(
            format!("{path}.mime_type"),
            "contains control characters",
        ));
    }
    let unsettled_token_ttl_secs = match r.unsettled_token_ttl_secs {
        None => None,
        Some(t) if t == 0 || t > token_ttl_secs => {
            return Err(ConfigError::new(
                format!("{path}.unsettled_token_ttl_secs"),
                format!("{t} is out of range 1..={token_ttl_secs} (at most token_ttl_secs, the lifetime of a renewed token)"),
            ))
        }
        Some(t) => Some(t),
    };
    let failure_mode = match r.failure_mode.as_deref() {
        None => default_failure_mode,
        Some(m) => FailureMode::parse(m).ok_or_else(|| {
            ConfigError::new(
                format!("{path}.failure_mode"),
                format!("{m:?} is neither \"deny\" nor \"allow\""),
            )
        })?,
    };
    let cache_control = match r.cache_control.as_deref() {
        None => CacheControl::PrivateNoStore,
        Some(c) => CacheControl::parse(c).ok_or_else(|| {
            ConfigError::new(
                format!("{path}.cache_control"),
                format!("{c:?} is neither \"private, no-store\" nor \"upstream\""),
            )
        })?,
    };
    let settlement = match r.settlement.as_deref() {
        None => Settlement::Async,
        Some(s) => Settlement::parse(s).ok_or_else(|| {
            ConfigError::new(
                format!("{path}.settlement"),
                format!("{s:?} is neither \"async\" nor \"before_response\""),
            )
        })?,
    };
    let token_endpoint = format!("{prefix}{}", r.name);
    let renew_endpoint = unsettled_token_ttl_secs.map(|_| format!("{token_endpoint}/renew"));
    let challenge = RouteChallenge::precompute(
        &r.name,
        &token_endpoint,
        renew_endpoint.as_deref(),
        &accepts,
        max_timeout_seconds,
    );
    Ok(Route {
        name: r.name,
        selector,
        case_insensitive,
        methods: http_methods,
        other_methods,
        hosts,
        description,
        mime_type,
        accepts,
        unsettled_token_ttl_secs,
        token_endpoint,
        challenge,
        failure_mode,
        cache_control,
        forward_token: r.forward_token,
        charge_on_upstream_error: r.charge_on_upstream_error,
        settlement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    use crate::test_fixtures::{key_hex, sample, sample_config, PAY_TO, SPENDER};

    fn parse_value(v: &Value) -> Result<FilterConfig, ConfigError> {
        parse(serde_json::to_string(v).unwrap().as_bytes())
    }

    #[test]
    fn failure_mode_and_cache_control_are_per_route() {
        use crate::policy::CacheControl;
        let cfg = parse_value(&sample()).unwrap();
        let r0 = cfg.routes.get(0).unwrap();
        assert_eq!(r0.failure_mode, FailureMode::Deny, "fail closed by default");
        assert_eq!(r0.cache_control, CacheControl::PrivateNoStore);
        // settler.failure_mode is the default of routes that say nothing; a route overrides it.
        let mut v = sample();
        v["settler"]["failure_mode"] = json!("allow");
        v["routes"][1]["failure_mode"] = json!("deny");
        v["routes"][1]["cache_control"] = json!("upstream");
        let cfg = parse_value(&v).unwrap();
        assert_eq!(cfg.routes.get(0).unwrap().failure_mode, FailureMode::Allow);
        assert_eq!(cfg.routes.get(1).unwrap().failure_mode, FailureMode::Deny);
        assert_eq!(
            cfg.routes.get(1).unwrap().cache_control,
            CacheControl::Upstream
        );
        let mut v = sample();
        v["routes"][0]["failure_mode"] = json!("allow");
        v["routes"][0]["cache_control"] = json!("private, no-store");
        let cfg = parse_value(&v).unwrap();
        assert_eq!(cfg.routes.get(0).unwrap().failure_mode, FailureMode::Allow);
        assert_eq!(cfg.routes.get(1).unwrap().failure_mode, FailureMode::Deny);
        for (field, bad, path) in [
            ("failure_mode", json!("open"), "routes[0].failure_mode"),
            ("failure_mode", json!(true), "routes[0].failure_mode"),
            ("cache_control", json!("public"), "routes[0].cache_control"),
            (
                "cache_control",
                json!("no-store"),
                "routes[0].cache_control",
            ),
        ] {
            let mut v = sample();
            v["routes"][0][field] = bad.clone();
            let e = parse_value(&v).unwrap_err();
            assert_eq!(e.path, path, "{bad}: {e}");
        }
    }

    /// Applies `edit` to the sample config and expects an error at `path`.
    #[test]
    fn unsettled_token_ttl_is_per_route_and_at_most_the_normal_ttl() {
        let cfg = parse_value(&sample()).unwrap();
        assert_eq!(cfg.routes.get(0).unwrap().unsettled_token_ttl_secs, None);
        assert_eq!(cfg.settler.renew_path, "/v1/tokens/renew");
        let mut v = sample();
        v["routes"][1]["unsettled_token_ttl_secs"] = json!(300);
        v["settler"]["renew_path"] = json!("/renew");
        let cfg = parse_value(&v).unwrap();
        assert_eq!(
            cfg.routes.get(1).unwrap().unsettled_token_ttl_secs,
            Some(300)
        );
        assert_eq!(cfg.routes.get(0).unwrap().unsettled_token_ttl_secs, None);
        assert_eq!(cfg.settler.renew_path, "/renew");
        for bad in [json!(0), json!(301), json!(-1), json!("5")] {
            let e = expect_err(
                |v| v["routes"][0]["unsettled_token_ttl_secs"] = bad.clone(),
                "routes[0].unsettled_token_ttl_secs",
            );
            assert!(!e.message.is_empty());
        }
        let e = expect_err(
            |v| v["routes"][1]["unsettled_token_ttl_secs"] = json!(301),
            "routes[1].unsettled_token_ttl_secs",
        );
        assert!(e.message.contains("1..=300"), "{e}");
        expect_err(
            |v| v["settler"]["renew_path"] = json!("renew"),
            "settler.renew_path",
        );
    }

    fn expect_err(edit: impl FnOnce(&mut Value), path: &str) -> ConfigError {
        let mut v = sample();
        edit(&mut v);
        match parse_value(&v) {
            Ok(_) => panic!("config must be rejected at {path}"),
            Err(e) => {
                assert_eq!(e.path, path, "wrong path for error: {e}");
                assert!(
                    e.to_string().starts_with(&format!("x402 config: {path}: ")),
                    "{e}"
                );
                e
            }
        }
    }

    #[test]
    fn sample_parses_with_prices_in_base_units() {
        let cfg = sample_config();
        assert_eq!(cfg.routes.len(), 2);
        let r = cfg.routes.get(0).unwrap();
        assert_eq!(r.token_endpoint, "/x402/token/weather");
        assert_eq!(r.accepts[0].amount, U256::from(10_000u64));
        assert_eq!(r.accepts[1].method.spender, Some(SPENDER.parse().unwrap()));
        assert_eq!(
            cfg.routes.get(1).unwrap().accepts[0].amount,
            U256::from(1_500_000u64)
        );
        assert_eq!(cfg.settler.timeout, Duration::from_millis(3000));
        assert_eq!(cfg.keys.len(), 1);
    }

    #[test]
    fn defaults_for_optional_numbers() {
        let mut v = sample();
        let o = v.as_object_mut().unwrap();
        for k in [
            "token_endpoint_prefix",
            "clock_leeway_secs",
            "token_ttl_secs",
            "max_timeout_seconds",
            "token_cache_size",
            "max_body_bytes",
        ] {
            o.remove(k);
        }
        v["settler"] = json!({"cluster": "x402_settler"});
        let cfg = parse_value(&v).unwrap();
        assert_eq!(cfg.token_endpoint_prefix, DEFAULT_TOKEN_ENDPOINT_PREFIX);
        assert_eq!(cfg.clock_leeway_secs, 5);
        assert_eq!(cfg.token_ttl_secs, 300);
        assert_eq!(cfg.max_timeout_seconds, 300);
        assert_eq!(cfg.token_cache_size, 10_000);
        assert_eq!(cfg.shared_token_slots, 4096);
        assert_eq!(cfg.max_body_bytes, 16384);
        assert_eq!(cfg.body_timeout, Duration::from_millis(5000));
        assert_eq!(cfg.settler.authority, "x402_settler");
        assert_eq!(cfg.settler.path, "/v1/tokens");
        assert_eq!(cfg.settler.failure_mode, FailureMode::Deny);
        assert_eq!(cfg.settler.timeout, Duration::from_millis(3000));
    }

    #[test]
    fn syntax_and_unknown_fields() {
        assert_eq!(parse(b"not json").unwrap_err().path, ".");
        assert_eq!(parse(b"").unwrap_err().path, ".");
        let trailing = format!("{} trailing", serde_json::to_string(&sample()).unwrap());
        assert_eq!(parse(trailing.as_bytes()).unwrap_err().path, ".");
        let e = parse(br#"{"settler":{"cluster":"a"}}"#).unwrap_err();
        assert!(e.message.contains("token_keys"), "{e}");
        expect_err(|v| v["extra"] = json!(1), "extra");
        expect_err(|v| v["settler"]["retries"] = json!(1), "settler.retries");
        expect_err(
            |v| v["token_keys"][0]["use"] = json!("sig"),
            "token_keys[0].use",
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["fee"] = json!(1),
            "payment_methods.usdc-base.fee",
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["asset"]["chain"] = json!(1),
            "payment_methods.usdc-base.asset.chain",
        );
        expect_err(|v| v["routes"][1]["prise"] = json!("1"), "routes[1].prise");
        expect_err(
            |v| v["routes"][0]["match"]["regex"] = json!(".*"),
            "routes[0].match.regex",
        );
        expect_err(|v| v["routes"][0]["price"] = json!(0.01), "routes[0].price");
        expect_err(|v| v["clock_leeway_secs"] = json!(-1), "clock_leeway_secs");
        expect_err(
            |v| {
                v.as_object_mut().unwrap().remove("settler");
            },
            ".",
        );
        expect_err(
            |v| {
                v["routes"][0].as_object_mut().unwrap().remove("price");
            },
            "routes[0]",
        );
    }

    #[test]
    fn duplicate_payment_method_key_is_rejected() {
        let text = serde_json::to_string(&sample()).unwrap().replacen(
            "\"payment_methods\":{",
            "\"payment_methods\":{\"usdc-base\":{},",
            1,
        );
        // The first occurrence is an invalid method; make it valid to hit the duplicate check.
        let m = serde_json::to_string(&sample()["payment_methods"]["usdc-base"]).unwrap();
        let text = text.replacen("\"usdc-base\":{}", &format!("\"usdc-base\":{m}"), 1);
        let e = parse(text.as_bytes()).unwrap_err();
        assert_eq!(e.path, "payment_methods");
        assert!(e.message.contains("duplicate"), "{e}");
    }

    #[test]
    fn settler_errors() {
        expect_err(|v| v["settler"]["cluster"] = json!(""), "settler.cluster");
        expect_err(
            |v| v["settler"]["authority"] = json!("a b"),
            "settler.authority",
        );
        expect_err(
            |v| v["settler"]["path"] = json!("v1/tokens"),
            "settler.path",
        );
        expect_err(
            |v| v["settler"]["timeout_ms"] = json!(0),
            "settler.timeout_ms",
        );
        expect_err(
            |v| v["settler"]["timeout_ms"] = json!(600_000),
            "settler.timeout_ms",
        );
        expect_err(
            |v| v["settler"]["failure_mode"] = json!("open"),
            "settler.failure_mode",
        );
    }

    #[test]
    fn settler_api_secret() {
        assert_eq!(sample_config().settler.auth, None);
        let secret = "s3cr3t-0123456789 with ~ symbols!";
        let mut v = sample();
        v["settler"]["api_secret"] = json!(secret);
        let cfg = parse_value(&v).unwrap();
        let auth = cfg.settler.auth.clone().unwrap();
        assert_eq!(auth.header_value(), format!("Bearer {secret}"));
        // Never in Debug output (the config is logged and may end up in panics).
        let dbg = format!("{cfg:?} {:?} {auth:?}", cfg.settler);
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        // Bounds: 16 and 256 are fine.
        for ok in ["a".repeat(16), "b".repeat(256)] {
            let mut v = sample();
            v["settler"]["api_secret"] = json!(ok);
            assert!(parse_value(&v).is_ok());
        }
        for bad in [
            "short-secret".to_string(),
            "".to_string(),
            "c".repeat(257),
            "0123456789abcdef\n".to_string(),
            "0123456789abcdef\u{7f}".to_string(),
            "0123456789abcdéf".to_string(),
            " 0123456789abcdef".to_string(),
            "0123456789abcdef ".to_string(),
            "0123456789abc\tdef".to_string(),
        ] {
            let e = expect_err(
                |v| v["settler"]["api_secret"] = json!(bad.clone()),
                "settler.api_secret",
            );
            if bad.len() > 4 {
                assert!(!e.to_string().contains(&bad[1..bad.len() - 1]), "{e}");
            }
        }
        expect_err(
            |v| v["settler"]["api_secret"] = json!(12345678901234567u64),
            "settler.api_secret",
        );
    }

    #[test]
    fn settler_api_secret_from_the_vm_environment() {
        let secret = "from-the-env-0123456789";
        let env = |name: &str| match name {
            "X402_SETTLER_SECRET" => Some(secret.to_string()),
            "EMPTY" => Some(String::new()),
            "SHORT" => Some("short".to_string()),
            "PLACEHOLDER" => Some("REPLACE_ME_WITH_THE_SETTLER_API_SECRET".to_string()),
            _ => None,
        };
        let parse_env =
            |v: &Value| parse_with_env(serde_json::to_string(v).unwrap().as_bytes(), &env);
        let mut v = sample();
        v["settler"]["api_secret_env"] = json!("X402_SETTLER_SECRET");
        let cfg = parse_env(&v).unwrap();
        assert_eq!(
            cfg.settler.auth.as_ref().unwrap().header_value(),
            format!("Bearer {secret}")
        );
        assert!(!format!("{cfg:?}").contains(secret));
        let err = |v: &Value| parse_env(v).err().unwrap();
        for (name, what) in [
            ("MISSING", "missing or empty"),
            ("EMPTY", "missing or empty"),
            ("SHORT", "characters long"),
            ("", "not an environment variable name"),
            ("A-B", "not an environment variable name"),
        ] {
            let mut v = sample();
            v["settler"]["api_secret_env"] = json!(name);
            let e = err(&v);
            assert_eq!(e.path, "settler.api_secret_env", "{e}");
            assert!(e.message.contains(what), "{name}: {e}");
            assert!(!e.to_string().contains("short"), "{e}");
        }
        // The shipped manifests' placeholder is no secret.
        let mut v = sample();
        v["settler"]["api_secret_env"] = json!("PLACEHOLDER");
        let e = err(&v);
        assert_eq!(e.path, "settler.api_secret_env");
        assert!(e.message.contains("placeholder"), "{e}");
        // Exclusive with the inline secret.
        let mut v = sample();
        v["settler"]["api_secret_env"] = json!("X402_SETTLER_SECRET");
        v["settler"]["api_secret"] = json!("0123456789abcdef");
        let e = err(&v);
        assert_eq!(e.path, "settler.api_secret_env");
        assert!(e.message.contains("mutually exclusive"), "{e}");
        // `parse` reads the process environment (the WASI environ in Envoy).
        std::env::set_var("X402_FILTER_CONFIG_TEST_SECRET", secret);
        let mut v = sample();
        v["settler"]["api_secret_env"] = json!("X402_FILTER_CONFIG_TEST_SECRET");
        assert!(parse_value(&v).unwrap().settler.auth.is_some());
    }

    #[test]
    fn revocation_defaults_and_bounds() {
        let cfg = sample_config();
        assert_eq!(
            cfg.revocation,
            RevocationConfig {
                path: "/v1/revocations".into(),
                interval: Duration::from_millis(1000),
                max_entries: 10_000
            }
        );
        let mut v = sample();
        v["revocation"] = json!({"path": "/rev", "interval_ms": 250, "max_entries": 5});
        let cfg = parse_value(&v).unwrap();
        assert_eq!(cfg.revocation.path, "/rev");
        assert_eq!(cfg.revocation.interval, Duration::from_millis(250));
        assert_eq!(cfg.revocation.max_entries, 5);
        expect_err(
            |v| v["revocation"] = json!({"path": "rev"}),
            "revocation.path",
        );
        expect_err(
            |v| v["revocation"] = json!({"interval_ms": 99}),
            "revocation.interval_ms",
        );
        expect_err(
            |v| v["revocation"] = json!({"interval_ms": 3_600_001}),
            "revocation.interval_ms",
        );
        expect_err(
            |v| v["revocation"] = json!({"max_entries": 0}),
            "revocation.max_entries",
        );
        expect_err(
            |v| v["revocation"] = json!({"max_entries": 100_001}),
            "revocation.max_entries",
        );
        expect_err(
            |v| v["revocation"] = json!({"every": 1}),
            "revocation.every",
        );
    }

    #[test]
    fn discovery_defaults_and_errors() {
        let d = sample_config().discovery.unwrap();
        assert!(d.is_for("/.well-known/x402") && d.is_for("/.well-known/x402?x=1"));
        assert!(!d.is_for("/.well-known/x402/") && !d.is_for("/.well-known/x4020"));
        let mut v = sample();
        v["discovery"] = json!({"path": "/x402.json"});
        let d = parse_value(&v).unwrap().discovery.unwrap();
        assert!(d.is_for("/x402.json"));
        v["discovery"] = json!({"enabled": false, "path": "/x402.json"});
        assert!(parse_value(&v).unwrap().discovery.is_none());
        expect_err(|v| v["discovery"] = json!({"path": "x"}), "discovery.path");
        expect_err(
            |v| v["discovery"] = json!({"path": "/a?b"}),
            "discovery.path",
        );
        expect_err(
            |v| v["discovery"] = json!({"path": "/x402/token/list"}),
            "discovery.path",
        );
        expect_err(|v| v["discovery"] = json!({"on": true}), "discovery.on");
    }

    #[test]
    fn key_errors() {
        expect_err(|v| v["token_keys"] = json!([]), "token_keys");
        expect_err(
            |v| v["token_keys"][0]["public_key"] = json!("0x02zz"),
            "token_keys[0].public_key",
        );
        expect_err(
            |v| v["token_keys"][0]["public_key"] = json!("0x02"),
            "token_keys[0].public_key",
        );
        expect_err(
            |v| v["token_keys"][0]["public_key"] = json!(format!("0x04{}", "00".repeat(64))),
            "token_keys[0].public_key",
        );
        expect_err(
            |v| v["token_keys"][0]["kid"] = json!(""),
            "token_keys[0].kid",
        );
        expect_err(
            |v| v["token_keys"][0]["kid"] = json!("a/b"),
            "token_keys[0].kid",
        );
        expect_err(
            |v| v["token_keys"] = json!([{"kid": "k1", "public_key": key_hex()}, {"kid": "k1", "public_key": key_hex()}]),
            "token_keys[1].kid",
        );
        // Several keys for rotation are fine, uncompressed too.
        let mut v = sample();
        let k = x402_protocol::token::verifying_key_from_hex(&key_hex()).unwrap();
        let uncompressed = format!("0x{}", hex_encode(k.to_encoded_point(false).as_bytes()));
        v["token_keys"] = json!([{"kid": "k1", "public_key": key_hex()}, {"kid": "k2", "public_key": uncompressed}]);
        assert_eq!(parse_value(&v).unwrap().keys.len(), 2);
    }

    #[test]
    fn jwks_refresh_config() {
        assert_eq!(parse_value(&sample()).unwrap().settler.jwks, None);
        let mut v = sample();
        v["settler"]["jwks"] = json!({"issuer": "x402-settler"});
        assert_eq!(
            parse_value(&v).unwrap().settler.jwks,
            Some(JwksConfig {
                path: "/.well-known/jwks.json".into(),
                interval: Duration::from_millis(60_000),
                issuer: "x402-settler".into()
            })
        );
        v["settler"]["jwks"] = json!({"issuer": "s", "path": "/keys", "interval_ms": 500});
        let j = parse_value(&v).unwrap().settler.jwks.unwrap();
        assert_eq!(
            (j.path.as_str(), j.interval),
            ("/keys", Duration::from_millis(500))
        );
        expect_err(|v| v["settler"]["jwks"] = json!({}), "settler.jwks");
        expect_err(
            |v| v["settler"]["jwks"] = json!({"issuer": ""}),
            "settler.jwks.issuer",
        );
        expect_err(
            |v| v["settler"]["jwks"] = json!({"issuer": "s", "interval_ms": 5}),
            "settler.jwks.interval_ms",
        );
        expect_err(
            |v| v["settler"]["jwks"] = json!({"issuer": "s", "path": "keys"}),
            "settler.jwks.path",
        );
        expect_err(
            |v| v["settler"]["jwks"] = json!({"issuer": "s", "url": "x"}),
            "settler.jwks.url",
        );
    }

    #[test]
    fn eddsa_keys_carry_their_alg() {
        let ed = x402_protocol::token::TokenSigningKey::from_secret(TokenAlg::EdDsa, &[5; 32])
            .unwrap()
            .verifying_key();
        let ed_hex = ed.to_hex();
        let mut v = sample();
        v["token_keys"] = json!([{"kid": "k1", "public_key": key_hex()}, {"kid": "e1", "alg": "EdDSA", "public_key": ed_hex}]);
        let keys = parse_value(&v).unwrap().keys;
        assert_eq!(keys.get("e1"), Some(&ed));
        assert_eq!(keys.get("k1").map(|k| k.alg()), Some(TokenAlg::Es256k));
        // An explicit ES256K is the default spelled out.
        v["token_keys"] = json!([{"kid": "k1", "alg": "ES256K", "public_key": key_hex()}]);
        assert!(parse_value(&v).is_ok());
        let e = expect_err(
            |v| v["token_keys"][0]["alg"] = json!("ES256"),
            "token_keys[0].alg",
        );
        assert!(e.message.contains("EdDSA"), "{e}");
        // A secp256k1 key labelled EdDSA, an Ed25519 key without its label, a weak point.
        expect_err(
            |v| v["token_keys"][0]["alg"] = json!("EdDSA"),
            "token_keys[0].public_key",
        );
        let ed_hex2 = ed_hex.clone();
        expect_err(
            move |v| v["token_keys"][0]["public_key"] = json!(ed_hex2),
            "token_keys[0].public_key",
        );
        let mut identity = "01".to_string();
        identity.push_str(&"00".repeat(31));
        let e = expect_err(
            move |v| {
                v["token_keys"][0]["alg"] = json!("EdDSA");
                v["token_keys"][0]["public_key"] = json!(identity);
            },
            "token_keys[0].public_key",
        );
        assert!(e.message.contains("Ed25519"), "{e}");
    }

    fn hex_encode(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn numbers_out_of_range() {
        expect_err(
            |v| v["clock_leeway_secs"] = json!(100_000),
            "clock_leeway_secs",
        );
        expect_err(|v| v["token_ttl_secs"] = json!(0), "token_ttl_secs");
        expect_err(
            |v| v["max_timeout_seconds"] = json!(0),
            "max_timeout_seconds",
        );
        expect_err(|v| v["max_body_bytes"] = json!(0), "max_body_bytes");
        expect_err(|v| v["body_timeout_ms"] = json!(50), "body_timeout_ms");
        expect_err(|v| v["body_timeout_ms"] = json!(120_000), "body_timeout_ms");
        expect_err(
            |v| v["max_body_bytes"] = json!(100_000_000),
            "max_body_bytes",
        );
        expect_err(
            |v| v["token_cache_size"] = json!(10_000_000),
            "token_cache_size",
        );
        expect_err(
            |v| v["token_endpoint_prefix"] = json!("/x402/token"),
            "token_endpoint_prefix",
        );
        expect_err(
            |v| v["token_endpoint_prefix"] = json!("x402/"),
            "token_endpoint_prefix",
        );
        expect_err(
            |v| v["token_endpoint_prefix"] = json!("/x 402/"),
            "token_endpoint_prefix",
        );
        expect_err(
            |v| v["token_endpoint_prefix"] = json!("//"),
            "token_endpoint_prefix",
        );
    }

    #[test]
    fn payment_method_errors() {
        let m = "payment_methods.usdc-base";
        expect_err(|v| v["payment_methods"] = json!({}), "payment_methods");
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["scheme"] = json!("upto"),
            &format!("{m}.scheme"),
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["network"] = json!("base"),
            &format!("{m}.network"),
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["network"] = json!("eip155:0"),
            &format!("{m}.network"),
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["asset"]["address"] = json!("0x1234"),
            &format!("{m}.asset.address"),
        );
        expect_err(
            |v| {
                v["payment_methods"]["usdc-base"]["asset"]["address"] =
                    json!("036CbD53842c5426634e7929541eC2318f3dCF7e")
            },
            &format!("{m}.asset.address"),
        );
        // Bad EIP-55 checksum (one letter's case flipped).
        expect_err(
            |v| {
                v["payment_methods"]["usdc-base"]["asset"]["address"] =
                    json!("0x036cbD53842c5426634e7929541eC2318f3dCF7e")
            },
            &format!("{m}.asset.address"),
        );
        expect_err(
            |v| {
                v["payment_methods"]["usdc-base"]["asset"]["address"] =
                    json!(format!("0x{}", "0".repeat(40)))
            },
            &format!("{m}.asset.address"),
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["asset"]["decimals"] = json!(77),
            &format!("{m}.asset.decimals"),
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["asset"]["decimals"] = json!(300),
            &format!("{m}.asset.decimals"),
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["asset"]["name"] = json!(""),
            &format!("{m}.asset.name"),
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["asset"]["version"] = json!(" "),
            &format!("{m}.asset.version"),
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["asset"]["symbol"] = json!(""),
            &format!("{m}.asset.symbol"),
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["pay_to"] = json!("0xnothex"),
            &format!("{m}.pay_to"),
        );
        expect_err(
            |v| {
                v["payment_methods"]["usdc-permit"]
                    .as_object_mut()
                    .unwrap()
                    .remove("spender");
            },
            "payment_methods.usdc-permit.spender",
        );
        expect_err(
            |v| v["payment_methods"]["usdc-permit"]["spender"] = json!("0x12"),
            "payment_methods.usdc-permit.spender",
        );
        expect_err(
            |v| v["payment_methods"]["usdc-base"]["spender"] = json!("bad"),
            &format!("{m}.spender"),
        );
        // A well-formed spender on an exact method is ignored.
        let mut v = sample();
        v["payment_methods"]["usdc-base"]["spender"] = json!(SPENDER);
        let cfg = parse_value(&v).unwrap();
        assert_eq!(cfg.routes.get(0).unwrap().accepts[0].method.spender, None);
        // Lower-case (non-checksummed) addresses are accepted.
        let mut v = sample();
        v["payment_methods"]["usdc-base"]["pay_to"] = json!(PAY_TO.to_lowercase());
        assert!(parse_value(&v).is_ok());
    }

    #[test]
    fn route_errors() {
        expect_err(|v| v["routes"] = json!([]), "routes");
        expect_err(
            |v| v["routes"][1]["name"] = json!("weather"),
            "routes[1].name",
        );
        expect_err(|v| v["routes"][1]["name"] = json!("a/b"), "routes[1].name");
        expect_err(|v| v["routes"][1]["name"] = json!("a b"), "routes[1].name");
        expect_err(|v| v["routes"][1]["name"] = json!(".."), "routes[1].name");
        expect_err(|v| v["routes"][1]["name"] = json!("a?b"), "routes[1].name");
        expect_err(|v| v["routes"][1]["name"] = json!(""), "routes[1].name");
        expect_err(
            |v| v["routes"][1]["name"] = json!("x".repeat(65)),
            "routes[1].name",
        );
        expect_err(
            |v| v["routes"][1]["price"] = json!("0.0000001"),
            "routes[1].price",
        );
        expect_err(
            |v| v["routes"][1]["price"] = json!("1e3"),
            "routes[1].price",
        );
        expect_err(|v| v["routes"][1]["price"] = json!("-1"), "routes[1].price");
        expect_err(|v| v["routes"][1]["price"] = json!("0"), "routes[1].price");
        expect_err(|v| v["routes"][1]["price"] = json!(""), "routes[1].price");
        expect_err(
            |v| v["routes"][0]["methods"] = json!([]),
            "routes[0].methods",
        );
        expect_err(
            |v| v["routes"][0]["methods"] = json!(["GET", "P OST"]),
            "routes[0].methods[1]",
        );
        expect_err(|v| v["routes"][1]["hosts"] = json!([]), "routes[1].hosts");
        expect_err(
            |v| v["routes"][1]["hosts"] = json!(["a.com", "*"]),
            "routes[1].hosts[1]",
        );
        expect_err(
            |v| v["routes"][1]["hosts"] = json!(["a.*.com"]),
            "routes[1].hosts[0]",
        );
        expect_err(
            |v| v["routes"][1]["hosts"] = json!(["a.com:80"]),
            "routes[1].hosts[0]",
        );
        expect_err(
            |v| v["routes"][1]["payment_methods"] = json!([]),
            "routes[1].payment_methods",
        );
        expect_err(
            |v| v["routes"][1]["payment_methods"] = json!(["usdc-eth"]),
            "routes[1].payment_methods[0]",
        );
        expect_err(
            |v| v["routes"][1]["payment_methods"] = json!(["usdc-base", "usdc-base"]),
            "routes[1].payment_methods[1]",
        );
        expect_err(|v| v["routes"][0]["match"] = json!({}), "routes[0].match");
        expect_err(
            |v| v["routes"][0]["match"] = json!({"prefix": "/a", "exact": "/a"}),
            "routes[0].match",
        );
        expect_err(
            |v| v["routes"][0]["match"] = json!({"prefix": "api"}),
            "routes[0].match.prefix",
        );
        expect_err(
            |v| v["routes"][0]["match"] = json!({"exact": "/a b"}),
            "routes[0].match.exact",
        );
        expect_err(
            |v| v["routes"][0]["match"] = json!({"exact": "/a?b=1"}),
            "routes[0].match.exact",
        );
        expect_err(
            |v| v["routes"][0]["match"] = json!({"template": "/a/{id"}),
            "routes[0].match.template",
        );
        expect_err(
            |v| v["routes"][0]["match"] = json!({"template": "/a/**/b"}),
            "routes[0].match.template",
        );
        expect_err(
            |v| v["routes"][0]["match"] = json!({"template": "/a/{x}/{x}"}),
            "routes[0].match.template",
        );
        expect_err(
            |v| v["routes"][0]["mime_type"] = json!("a\nb"),
            "routes[0].mime_type",
        );
    }

    /// Routes priced by Envoy route name: compiled, listed in discovery, refused when
    /// malformed, mixed with `match`, given `hosts`, or repeated for a shared method.
    #[test]
    fn envoy_route_entries() {
        let named = |v: &mut Value, i: usize, name: &str| {
            let r = v["routes"][i].as_object_mut().unwrap();
            r.remove("match");
            r.remove("hosts");
            r.insert("envoy_route".into(), json!(name));
        };
        let mut v = sample();
        named(&mut v, 1, "api_report");
        let cfg = parse_value(&v).unwrap();
        let r = cfg.routes.get(1).unwrap();
        assert_eq!(r.selector, Selector::EnvoyRoute("api_report".into()));
        assert_eq!(r.path_match(), None);
        // The token endpoint keeps the filter's route name.
        assert_eq!(r.token_endpoint, "/x402/token/report");
        let doc = cfg.discovery.as_ref().unwrap();
        let body: Value = serde_json::from_slice(&doc.reply(Some("GET")).unwrap().body).unwrap();
        assert_eq!(
            body["routes"][1]["match"],
            json!({"envoy_route": "api_report"})
        );

        for bad in ["", "a b", "r\u{e9}", "x\n"] {
            expect_err(|v| named(v, 1, bad), "routes[1].envoy_route");
        }
        expect_err(|v| named(v, 1, &"r".repeat(257)), "routes[1].envoy_route");
        let e = expect_err(
            |v| v["routes"][1]["envoy_route"] = json!("api_report"),
            "routes[1].envoy_route",
        );
        assert!(e.message.contains("mutually exclusive"), "{e}");
        let e = expect_err(
            |v| {
                v["routes"][1].as_object_mut().unwrap().remove("match");
            },
            "routes[1].match",
        );
        assert!(e.message.contains("envoy_route"), "{e}");
        expect_err(
            |v| {
                named(v, 1, "api_report");
                v["routes"][1]["hosts"] = json!(["api.example.com"]);
            },
            "routes[1].hosts",
        );
        expect_err(
            |v| {
                named(v, 1, "api_report");
                v["routes"][1]["case_insensitive"] = json!(true);
            },
            "routes[1].case_insensitive",
        );
        // The same Envoy route twice: refused for a shared method, fine for disjoint ones.
        let e = expect_err(
            |v| {
                named(v, 0, "api");
                named(v, 1, "api");
            },
            "routes[1].envoy_route",
        );
        assert!(e.message.contains("duplicate envoy_route \"api\""), "{e}");
        assert!(e.message.contains("routes[0] (\"weather\")"), "{e}");
        let mut v = sample();
        named(&mut v, 0, "api");
        named(&mut v, 1, "api");
        v["routes"][1]["methods"] = json!(["POST"]);
        assert!(parse_value(&v).is_ok());
        // A name is never shadowed by a path route, nor under the token endpoint's namespace.
        let mut v = sample();
        v["routes"][0]["match"] = json!({"prefix": "/"});
        named(&mut v, 1, "x402_token");
        assert!(parse_value(&v).is_ok());
    }

    #[test]
    fn shadowed_routes_are_refused_naming_both() {
        let route = |name: &str, m: Value, extra: Value| {
            let mut r = json!({"name": name, "match": m, "price": "0.01", "payment_methods": ["usdc-base"]});
            if let (Some(r), Some(e)) = (r.as_object_mut(), extra.as_object()) {
                r.extend(e.clone());
            }
            r
        };
        let with = |routes: Vec<Value>| {
            let mut v = sample();
            v["routes"] = json!(routes);
            parse_value(&v)
        };
        let none = json!({});
        let e = with(vec![
            route("a", json!({"exact": "/a"}), none.clone()),
            route("cheap", json!({"prefix": "/api"}), none.clone()),
            route("b", json!({"exact": "/b"}), none.clone()),
            route("dear", json!({"prefix": "/api/premium"}), none.clone()),
        ])
        .unwrap_err();
        assert_eq!(e.path, "routes[3]");
        assert!(
            e.to_string()
                .starts_with("x402 config: routes[3]: shadowed by routes[1] (\"cheap\")"),
            "{e}"
        );
        assert!(e.message.contains("\"dear\""), "{e}");
        // Exact and template under an earlier prefix, a repeated template.
        for later in [
            json!({"exact": "/api/x"}),
            json!({"template": "/api/{id}/x"}),
            json!({"prefix": "/api"}),
        ] {
            let e = with(vec![
                route("cheap", json!({"prefix": "/api"}), none.clone()),
                route("dear", later.clone(), none.clone()),
            ])
            .unwrap_err();
            assert_eq!(e.path, "routes[1]", "{later}");
        }
        // Overlapping methods (GET also means HEAD) and hosts shadow; disjoint ones do not.
        let get = json!({"methods": ["GET"]});
        assert!(with(vec![
            route("g", json!({"prefix": "/api"}), get.clone()),
            route(
                "p",
                json!({"prefix": "/api/x"}),
                json!({"methods": ["POST"]})
            ),
        ])
        .is_ok());
        assert_eq!(
            with(vec![
                route("g", json!({"prefix": "/api"}), get.clone()),
                route(
                    "h",
                    json!({"prefix": "/api/x"}),
                    json!({"methods": ["HEAD"]})
                ),
            ])
            .unwrap_err()
            .path,
            "routes[1]"
        );
        assert!(with(vec![
            route(
                "a",
                json!({"prefix": "/api"}),
                json!({"hosts": ["a.example.com"]})
            ),
            route(
                "b",
                json!({"prefix": "/api/x"}),
                json!({"hosts": ["b.example.com"]})
            ),
        ])
        .is_ok());
        assert_eq!(
            with(vec![
                route(
                    "a",
                    json!({"prefix": "/api"}),
                    json!({"hosts": ["*.example.com"]})
                ),
                route(
                    "b",
                    json!({"prefix": "/api/x"}),
                    json!({"hosts": ["b.example.com"]})
                ),
            ])
            .unwrap_err()
            .path,
            "routes[1]"
        );
        // The specific route first is the fix.
        assert!(with(vec![
            route("dear", json!({"prefix": "/api/premium"}), none.clone()),
            route("cheap", json!({"prefix": "/api"}), none.clone()),
        ])
        .is_ok());
        // A case-insensitive earlier route shadows every spelling.
        assert_eq!(
            with(vec![
                route(
                    "ci",
                    json!({"prefix": "/API"}),
                    json!({"case_insensitive": true})
                ),
                route("x", json!({"prefix": "/api/X"}), none.clone()),
            ])
            .unwrap_err()
            .path,
            "routes[1]"
        );
    }

    #[test]
    fn routes_under_the_token_endpoint_are_refused() {
        for m in [
            json!({"prefix": "/x402/token/"}),
            json!({"prefix": "/x402/token/weather"}),
            json!({"exact": "/x402/token/weather"}),
            json!({"template": "/x402/token/{name}"}),
            json!({"template": "/x402/{x}/weather"}),
        ] {
            let e = expect_err(|v| v["routes"][1]["match"] = m.clone(), "routes[1].match");
            assert!(e.message.contains("token_endpoint_prefix"), "{e}");
        }
        let e = expect_err(
            |v| {
                v["routes"][1]["match"] = json!({"prefix": "/X402/TOKEN/"});
                v["routes"][1]["case_insensitive"] = json!(true);
            },
            "routes[1].match",
        );
        assert!(e.message.contains("token_endpoint_prefix"), "{e}");
        // A catch-all is fine: the token endpoint answers its own namespace first.
        for m in [json!({"prefix": "/"}), json!({"template": "/**"})] {
            let mut v = sample();
            v["routes"][1]["match"] = m.clone();
            assert!(parse_value(&v).is_ok(), "{m}");
        }
    }

    #[test]
    fn route_paths_must_be_normalised() {
        for (kind, p) in [
            ("prefix", "/api;x"),
            ("prefix", "/api\\x"),
            ("exact", "/api//x"),
            ("exact", "/api/./x"),
            ("prefix", "/api/../x"),
            ("prefix", "/api%2Fx"),
            ("prefix", "/%61pi"),
            ("template", "/api/{id};x"),
        ] {
            expect_err(
                |v| v["routes"][0]["match"] = json!({ kind: p }),
                &format!("routes[0].match.{kind}"),
            );
        }
        // Escapes the filter keeps as they are are fine.
        let mut v = sample();
        v["routes"][0]["match"] = json!({"prefix": "/caf%C3%A9"});
        assert!(parse_value(&v).is_ok());
    }

    #[test]
    fn other_methods_and_case_insensitive() {
        let cfg = sample_config();
        let r = cfg.routes.get(0).unwrap();
        assert_eq!(r.other_methods, OtherMethods::Refuse, "refused by default");
        assert!(!r.case_insensitive);
        let mut v = sample();
        v["routes"][0]["other_methods"] = json!("pass");
        v["routes"][0]["case_insensitive"] = json!(true);
        v["routes"][0]["match"] = json!({"prefix": "/API/Weather"});
        let cfg = parse_value(&v).unwrap();
        let r = cfg.routes.get(0).unwrap();
        assert_eq!(r.other_methods, OtherMethods::Pass);
        assert_eq!(
            r.selector,
            Selector::Path(PathMatch::Prefix("/api/weather".into()))
        );
        let e = expect_err(
            |v| v["routes"][0]["other_methods"] = json!("allow"),
            "routes[0].other_methods",
        );
        assert!(e.message.contains("\"refuse\""), "{e}");
        let e = expect_err(
            |v| v["routes"][1]["other_methods"] = json!("pass"),
            "routes[1].other_methods",
        );
        assert!(e.message.contains("methods"), "{e}");
        expect_err(
            |v| v["routes"][0]["case_insensitive"] = json!("yes"),
            "routes[0].case_insensitive",
        );
    }

    #[test]
    fn price_must_be_exact_in_every_method() {
        // 0.0000001 fits an 18-decimals asset but not USDC's 6: refused, naming the price.
        let mut v = sample();
        v["payment_methods"]["eth-ish"] = json!({"scheme": "exact", "network": "eip155:1",
            "asset": {"address": SPENDER, "decimals": 18, "name": "T", "version": "1", "symbol": "T"}, "pay_to": PAY_TO});
        v["routes"][1]["payment_methods"] = json!(["eth-ish"]);
        v["routes"][1]["price"] = json!("0.0000001");
        assert!(parse_value(&v).is_ok());
        v["routes"][1]["payment_methods"] = json!(["eth-ish", "usdc-base"]);
        let e = parse_value(&v).unwrap_err();
        assert_eq!(e.path, "routes[1].price");
        assert!(e.message.contains("usdc-base"), "{e}");
    }

    #[test]
    fn a_priced_get_also_prices_head() {
        struct M(&'static str);
        impl crate::routes::RequestAttrs for M {
            fn method(&mut self) -> Option<&str> {
                Some(self.0)
            }
            fn authority(&mut self) -> Option<&str> {
                None
            }
            fn envoy_route(&mut self) -> Option<&str> {
                None
            }
        }
        let cfg = sample_config();
        assert_eq!(cfg.routes.find("/api/weather", &mut M("GET")), Some(0));
        assert_eq!(
            cfg.routes.find("/api/weather", &mut M("HEAD")),
            Some(0),
            "HEAD of a priced GET is priced"
        );
        assert_eq!(cfg.routes.find("/api/weather", &mut M("POST")), None);
    }
}
