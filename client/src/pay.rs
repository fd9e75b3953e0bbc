//! The paying GET: request -> 402 -> choose a method within the caps -> sign -> token endpoint
//! -> retry with `Authorization: Bearer` -> body. Tokens are cached per origin + path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use x402_protocol::challenge::PaymentRequired;
use x402_protocol::{format_base_units, Network, Scheme};

use crate::cache::{self, CachedToken, TokenCache};
use crate::caps::Caps;
use crate::scheme::{self, Choice, SeedContext, SeedError};
use crate::select::{self, SelectError};
use crate::sign::{self, SignError};

/// One step of the exchange, for `--verbose`.
#[derive(Debug, Clone)]
pub enum Step {
    Request {
        url: String,
        with_token: bool,
    },
    PaymentRequired {
        reason: String,
        methods: usize,
    },
    CachedTokenRejected {
        reason: String,
    },
    Chosen {
        scheme: Scheme,
        network: Network,
        amount: String,
        currency: String,
        token: Address,
        pay_to: Address,
        cap: String,
    },
    NonceRead {
        network: Network,
        nonce: U256,
    },
    Signed {
        scheme: Scheme,
        payer: Address,
        valid_until: u64,
    },
    TokenRequest {
        endpoint: String,
    },
    TokenObtained {
        expires_in: u64,
        settlement_id: Option<String>,
    },
    Retried {
        status: u16,
    },
    /// An x402 v2 `PAYMENT-REQUIRED` challenge (header) is being answered.
    X402V2Required {
        error: String,
        accepts: usize,
    },
    /// The same GET is retried with `PAYMENT-SIGNATURE`.
    X402V2Retry {
        url: String,
    },
    /// The v2 retry's answer: status, `PAYMENT-RESPONSE` decoded, token and settlement seen.
    X402V2Answered {
        status: u16,
        success: Option<bool>,
        transaction: Option<String>,
        token_cached: Option<u64>,
        settlement_id: Option<String>,
    },
    /// A short-lived cached token is renewed (its payment may have settled).
    Renewing {
        endpoint: String,
    },
    /// The renewal gave a new token.
    Renewed {
        expires_in: u64,
    },
    /// The renewal was refused (not settled yet, failed, ...): the old token is used while
    /// it lasts, then the resource is paid again.
    RenewRefused {
        status: u16,
        code: String,
    },
    Warning(String),
}

impl Step {
    /// The method picked from a 402, with the user's cap.
    fn chosen(choice: &Choice, cap: &str) -> Step {
        Step::Chosen {
            scheme: choice.scheme,
            network: choice.network,
            amount: choice.human_amount(),
            currency: choice.currency.clone(),
            token: choice.token(),
            pay_to: choice.pay_to,
            cap: cap.to_string(),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Request {
                url,
                with_token: true,
            } => write!(f, "GET {url} with cached token"),
            Step::Request {
                url,
                with_token: false,
            } => write!(f, "GET {url}"),
            Step::PaymentRequired { reason, methods } => write!(
                f,
                "402 Payment Required ({reason}); {methods} payment method(s) offered"
            ),
            Step::CachedTokenRejected { reason } => {
                write!(f, "cached token refused ({reason}); paying again")
            }
            Step::Chosen {
                scheme,
                network,
                amount,
                currency,
                token,
                pay_to,
                cap,
            } => write!(
                f,
                "chose {} on {network}: {amount} {currency} (token {token}) to {pay_to}; cap {cap}",
                scheme.as_str()
            ),
            Step::NonceRead { network, nonce } => {
                write!(f, "read permit nonce {nonce} on {network}")
            }
            Step::Signed {
                scheme,
                payer,
                valid_until,
            } => write!(
                f,
                "signed {} as {payer}, valid until {valid_until}",
                scheme::for_scheme(*scheme)
                    .map(|m| m.signed_what())
                    .unwrap_or(scheme.as_str())
            ),
            Step::TokenRequest { endpoint } => write!(f, "POST {endpoint}"),
            Step::TokenObtained {
                expires_in,
                settlement_id,
            } => write!(
                f,
                "token obtained, expires in {expires_in}s; settlement {}",
                settlement_id.as_deref().unwrap_or("(not reported)")
            ),
            Step::Retried { status } => write!(f, "retried with token: HTTP {status}"),
            Step::X402V2Required { error, accepts } => {
                write!(f, "402 Payment Required (x402 v2 PAYMENT-REQUIRED header; {error}); {accepts} requirement(s) offered")
            }
            Step::X402V2Retry { url } => write!(f, "GET {url} with PAYMENT-SIGNATURE"),
            Step::X402V2Answered {
                status,
                success,
                transaction,
                token_cached,
                settlement_id,
            } => {
                write!(f, "x402 v2 retry: HTTP {status}")?;
                match success {
                    Some(ok) => write!(f, "; PAYMENT-RESPONSE success={ok}")?,
                    None => write!(f, "; no PAYMENT-RESPONSE")?,
                }
                if let Some(t) = transaction.as_deref().filter(|t| !t.is_empty()) {
                    write!(f, ", transaction {t}")?;
                }
                match token_cached {
                    Some(e) => write!(f, "; access token cached, expires in {e}s")?,
                    None => write!(f, "; no access token")?,
                }
                write!(
                    f,
                    "; settlement {}",
                    settlement_id.as_deref().unwrap_or("(not reported)")
                )
            }
            Step::Renewing { endpoint } => write!(f, "renewing the cached token: POST {endpoint}"),
            Step::Renewed { expires_in } => {
                write!(f, "token renewed, expires in {expires_in}s")
            }
            Step::RenewRefused { status, code } => {
                write!(f, "renewal refused: HTTP {status} {code}")
            }
            Step::Warning(w) => write!(f, "warning: {w}"),
        }
    }
}

pub type StepFn = Arc<dyn Fn(&Step) + Send + Sync>;

/// What the payer may do and with which key.
#[derive(Clone)]
pub struct Config {
    pub caps: Caps,
    pub signer: PrivateKeySigner,
    /// JSON-RPC URL per network, to read EIP-2612 nonces (permit needs one; exact does not).
    pub rpc: BTreeMap<Network, String>,
    /// Mirror the token cache to this file (mode 0600). `None`: memory only.
    pub cache_file: Option<PathBuf>,
    /// EIP-2612 deadline = now + this.
    pub permit_ttl_secs: u64,
    /// ERC-3009 validBefore = now + this.
    pub authorization_ttl_secs: u64,
    pub http_timeout: Duration,
    /// Called for every step (the CLI prints them with `--verbose`).
    pub on_step: Option<StepFn>,
    /// Answer an x402 v2 `PAYMENT-REQUIRED` header even when the 402 also offers the seed
    /// token-endpoint flow (default: the seed flow is preferred).
    pub prefer_x402_v2: bool,
}

impl Config {
    pub fn new(signer: PrivateKeySigner, caps: Caps) -> Self {
        Config {
            caps,
            signer,
            rpc: BTreeMap::new(),
            cache_file: None,
            permit_ttl_secs: 600,
            authorization_ttl_secs: 600,
            http_timeout: Duration::from_secs(30),
            on_step: None,
            prefer_x402_v2: false,
        }
    }

    pub fn with_rpc(mut self, network: Network, url: impl Into<String>) -> Self {
        self.rpc.insert(network, url.into());
        self
    }

    pub fn prefer_x402_v2(mut self, yes: bool) -> Self {
        self.prefer_x402_v2 = yes;
        self
    }

    pub fn on_step(mut self, f: impl Fn(&Step) + Send + Sync + 'static) -> Self {
        self.on_step = Some(Arc::new(f));
        self
    }

    /// Reports a step to `on_step`, if set.
    pub(crate) fn emit(&self, s: &Step) {
        if let Some(f) = &self.on_step {
            f(s);
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("caps", &self.caps)
            .field("payer", &self.signer.address())
            .field("rpc", &self.rpc)
            .field("cache_file", &self.cache_file)
            .finish_non_exhaustive()
    }
}

/// What was paid for a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub scheme: Scheme,
    pub network: Network,
    pub asset: Address,
    pub currency: String,
    pub payer: Address,
    pub pay_to: Address,
    /// Base units signed.
    pub amount: U256,
    /// The same in human units (trusted decimals).
    pub amount_human: String,
    pub settlement_id: Option<String>,
    pub route: Option<String>,
    pub expires_in: u64,
    /// Origin of the gateway that took the payment (for `status`).
    pub origin: String,
}

#[derive(Debug)]
pub struct PaidResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// A bearer token (cached or new) was sent on the final request.
    pub token_used: bool,
    /// Set when this call paid.
    pub paid: Option<Receipt>,
}

impl PaidResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("invalid URL {0:?}: only absolute http(s) URLs")]
    Url(String),
    #[error("HTTP request to {url} failed: {}", error_chain(.source))]
    Http { url: String, source: reqwest::Error },
    #[error("cannot set up the HTTP client: {}", error_chain(.0))]
    HttpClient(#[source] reqwest::Error),
    #[error("402 from {url} without a payment challenge this client understands: {detail}")]
    NotAChallenge { url: String, detail: String },
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error("access_token_endpoint {0:?} is not on the resource's origin: refused")]
    ForeignEndpoint(String),
    #[error("RPC {url} for {network}: {detail}")]
    Rpc {
        network: Network,
        url: String,
        detail: String,
    },
    #[error("RPC {url} serves chain {got}, not {network}: refused")]
    RpcChain {
        network: Network,
        url: String,
        got: u64,
    },
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("token endpoint answered HTTP {status}: {code}: {message}{}", .expected_nonce.as_ref().map(|n| format!(" (expected permit nonce {n})")).unwrap_or_default())]
    TokenEndpoint {
        status: u16,
        code: String,
        message: String,
        expected_nonce: Option<String>,
    },
    #[error("token endpoint answer is not a token: {0}")]
    TokenAnswer(String),
    #[error("paid {} {} (settlement {}), but the retry was refused again: HTTP {status} {reason}",
        .receipt.amount_human, .receipt.currency, .receipt.settlement_id.as_deref().unwrap_or("?"))]
    TokenRefused {
        status: u16,
        reason: String,
        receipt: Box<Receipt>,
    },
    #[error("x402 v2 payment of {} {} was refused: HTTP {status} {reason}", .receipt.amount_human, .receipt.currency)]
    X402V2Refused {
        status: u16,
        reason: String,
        receipt: Box<Receipt>,
    },
}

impl PayError {
    /// The CLI's exit code for this error: 3 = refused by the spend policy, 4 = anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            PayError::Select(_) | PayError::ForeignEndpoint(_) | PayError::RpcChain { .. } => 3,
            _ => 4,
        }
    }
}

impl From<SeedError> for PayError {
    fn from(e: SeedError) -> Self {
        match e {
            SeedError::Sign(e) => PayError::Sign(e),
            SeedError::Rpc {
                network,
                url,
                detail,
            } => PayError::Rpc {
                network,
                url,
                detail,
            },
            SeedError::RpcChain { network, url, got } => PayError::RpcChain { network, url, got },
        }
    }
}

/// An error with its causes ("error sending request: connection refused").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The token endpoint's success answer. Only the first three fields are required (the seed
/// SDK's response); the rest is the gateway's `TokenResponse`.
#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    expires_in: u64,
    #[serde(default)]
    settlement_id: Option<String>,
    #[serde(default)]
    route: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    expected_nonce: Option<String>,
}

/// Lifetime assumed for an x402 v2 access token without a readable `exp` claim.
const DEFAULT_V2_TOKEN_SECS: u64 = 60;

/// The claims of a JWT, decoded WITHOUT verifying the signature (only to read `exp`/`route`
/// for caching; the server verifies the token).
fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let mut b64: String = payload
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !b64.len().is_multiple_of(4) {
        b64.push('=');
    }
    let bytes = x402_protocol::b64::decode(&b64)?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(|v| v.is_object())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Resolves the token endpoint against the resource URL: a path replaces the resource's path
/// (its query is kept as written); an absolute URL must be on the same origin.
fn token_endpoint(resource: &Url, endpoint: &str) -> Result<Url, PayError> {
    if endpoint.starts_with('/') && !endpoint.starts_with("//") {
        return resource
            .join(endpoint)
            .map_err(|_| PayError::ForeignEndpoint(endpoint.to_string()));
    }
    match Url::parse(endpoint) {
        Ok(u) if u.origin() == resource.origin() => Ok(u),
        _ => Err(PayError::ForeignEndpoint(endpoint.to_string())),
    }
}

/// Pays 402 challenges within the configured caps.
pub struct Payer {
    config: Config,
    http: reqwest::Client,
    cache: Mutex<TokenCache>,
}

impl Payer {
    pub fn new(config: Config) -> Result<Payer, PayError> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .user_agent(concat!("x402-pay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(PayError::HttpClient)?;
        let cache = match &config.cache_file {
            Some(p) => TokenCache::with_file(p),
            None => TokenCache::new(),
        };
        Ok(Payer {
            config,
            http,
            cache: Mutex::new(cache),
        })
    }

    pub(crate) fn address(&self) -> Address {
        self.config.signer.address()
    }

    fn step(&self, s: Step) {
        self.config.emit(&s);
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached token for a URL, if still valid.
    pub fn cached_token(&self, url: &str) -> Option<CachedToken> {
        let u = Url::parse(url).ok()?;
        self.cache_lock().get(&cache::key(&u), unix_now()).cloned()
    }

    async fn send(&self, url: &Url, token: Option<&str>) -> Result<reqwest::Response, PayError> {
        self.step(Step::Request {
            url: url.to_string(),
            with_token: token.is_some(),
        });
        let mut req = self.http.get(url.clone());
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        req.send().await.map_err(|source| PayError::Http {
            url: url.to_string(),
            source,
        })
    }

    async fn finish(
        &self,
        url: &Url,
        resp: reqwest::Response,
        token_used: bool,
        paid: Option<Receipt>,
    ) -> Result<PaidResponse, PayError> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|source| PayError::Http {
                url: url.to_string(),
                source,
            })?
            .to_vec();
        Ok(PaidResponse {
            status,
            headers,
            body,
            token_used,
            paid,
        })
    }

    /// GET `url`, paying at most once (within the caps) if the server answers 402.
    pub async fn get(&self, url: &str) -> Result<PaidResponse, PayError> {
        let url = Url::parse(url).map_err(|_| PayError::Url(url.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(PayError::Url(url.to_string()));
        }
        let key = cache::key(&url);
        let due = self.cache_lock().renewable(&key, unix_now()).cloned();
        if let Some(t) = due {
            self.renew(&url, &key, &t).await;
        }
        let cached = self.cache_lock().get(&key, unix_now()).cloned();
        let resp = match cached {
            Some(t) => {
                let resp = self.send(&url, Some(&t.access_token)).await?;
                if resp.status() != StatusCode::PAYMENT_REQUIRED {
                    return self.finish(&url, resp, true, None).await;
                }
                if let Err(e) = self.cache_lock().remove(&key, unix_now()) {
                    self.step(Step::Warning(e.to_string()));
                }
                resp
            }
            None => {
                let resp = self.send(&url, None).await?;
                if resp.status() != StatusCode::PAYMENT_REQUIRED {
                    return self.finish(&url, resp, false, None).await;
                }
                resp
            }
        };
        self.pay_and_retry(&url, &key, resp).await
    }

    /// Renews the short-lived token `t` of `key` at its renewal endpoint; the new token
    /// replaces it in the cache. Any refusal or failure leaves the cache as it was (the old
    /// token is used while it lasts, then the resource is paid as before).
    async fn renew(&self, url: &Url, key: &str, t: &CachedToken) {
        let Some(endpoint) = t.renew_endpoint.as_deref() else {
            return;
        };
        // Stored after the same-origin check; checked again (the cache file is editable).
        let Ok(endpoint_url) = token_endpoint(url, endpoint) else {
            return;
        };
        self.step(Step::Renewing {
            endpoint: endpoint_url.to_string(),
        });
        let resp = match self
            .http
            .post(endpoint_url)
            .header(AUTHORIZATION, format!("Bearer {}", t.access_token))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.step(Step::Warning(format!("renewal failed: {e}")));
                return;
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let code = serde_json::from_str::<ErrorAnswer>(&text)
                .ok()
                .and_then(|e| e.error)
                .unwrap_or_else(|| "error".into());
            self.step(Step::RenewRefused {
                status: status.as_u16(),
                code,
            });
            return;
        }
        let answer: TokenAnswer = match serde_json::from_str(&text) {
            Ok(a) => a,
            Err(e) => {
                self.step(Step::Warning(format!("renewal answer: {e}")));
                return;
            }
        };
        self.step(Step::Renewed {
            expires_in: answer.expires_in,
        });
        let now = unix_now();
        let renewed = CachedToken {
            access_token: answer.access_token,
            expires_at: now + answer.expires_in as i64,
            route: answer.route.or_else(|| t.route.clone()),
            settlement_id: answer.settlement_id.or_else(|| t.settlement_id.clone()),
            // A renewed token has its full lifetime: it is not renewed again.
            renew_endpoint: None,
        };
        if let Err(e) = self.cache_lock().put(key, renewed, now) {
            self.step(Step::Warning(e.to_string()));
        }
    }

    async fn pay_and_retry(
        &self,
        url: &Url,
        key: &str,
        resp: reqwest::Response,
    ) -> Result<PaidResponse, PayError> {
        let v2_header = resp
            .headers()
            .get("payment-required")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.map_err(|source| PayError::Http {
            url: url.to_string(),
            source,
        })?;
        let body: Result<Value, String> =
            serde_json::from_slice(&bytes).map_err(|e| format!("body is not JSON: {e}"));
        let seed_endpoint = body
            .as_ref()
            .ok()
            .and_then(|b| b.get("access_token_endpoint"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        // The seed token-endpoint flow is preferred when both are offered, unless configured
        // otherwise; x402 v2 is used when it is the only usable challenge.
        if let Some(h) = &v2_header {
            if seed_endpoint.is_none() || self.config.prefer_x402_v2 {
                return self.pay_v2(url, key, h).await;
            }
        }
        let not_challenge = |detail: String| PayError::NotAChallenge {
            url: url.to_string(),
            detail,
        };
        let body = body.map_err(not_challenge)?;
        let endpoint =
            seed_endpoint.ok_or_else(|| not_challenge("no access_token_endpoint".into()))?;
        let reason = body
            .get("reason")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        self.step(Step::PaymentRequired {
            reason: reason.clone(),
            methods: select::components(&bytes).len(),
        });
        let endpoint_url = token_endpoint(url, &endpoint)?;
        // A route minting short-lived tokens while unsettled says where to renew them; an
        // endpoint off the resource's origin is ignored (never sent the token).
        let renew_endpoint = body
            .get("access_token_renew_endpoint")
            .and_then(|v| v.as_str())
            .and_then(|e| token_endpoint(url, e).ok())
            .map(|u| u.to_string());

        let rpc = &self.config.rpc;
        let choice = select::select(&bytes, &self.config.caps, &|n| rpc.contains_key(&n))?;
        self.step(Step::chosen(&choice, self.config.caps.max_text()));

        let payload = self.sign_choice(&choice).await?;

        self.step(Step::TokenRequest {
            endpoint: endpoint_url.to_string(),
        });
        let resp = self
            .http
            .post(endpoint_url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(payload.to_string())
            .send()
            .await
            .map_err(|source| PayError::Http {
                url: endpoint_url.to_string(),
                source,
            })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| PayError::Http {
            url: endpoint_url.to_string(),
            source,
        })?;
        if !status.is_success() {
            let e: Option<ErrorAnswer> = serde_json::from_str(&text).ok();
            let short: String = text.chars().take(300).collect();
            return Err(PayError::TokenEndpoint {
                status: status.as_u16(),
                code: e
                    .as_ref()
                    .and_then(|e| e.error.clone())
                    .unwrap_or_else(|| "error".into()),
                message: e.as_ref().and_then(|e| e.message.clone()).unwrap_or(short),
                expected_nonce: e.and_then(|e| e.expected_nonce),
            });
        }
        let answer: TokenAnswer =
            serde_json::from_str(&text).map_err(|e| PayError::TokenAnswer(e.to_string()))?;
        if let Some(tt) = &answer.token_type {
            if !tt.eq_ignore_ascii_case("bearer") {
                return Err(PayError::TokenAnswer(format!(
                    "token_type {tt:?} is not Bearer"
                )));
            }
        }
        self.step(Step::TokenObtained {
            expires_in: answer.expires_in,
            settlement_id: answer.settlement_id.clone(),
        });
        let receipt = Receipt {
            scheme: choice.scheme,
            network: choice.network,
            asset: choice.token(),
            currency: choice.currency.clone(),
            payer: self.address(),
            pay_to: choice.pay_to,
            amount: choice.amount,
            amount_human: format_base_units(choice.amount, choice.decimals),
            settlement_id: answer.settlement_id.clone(),
            route: answer
                .route
                .clone()
                .or_else(|| body.get("route").and_then(|v| v.as_str()).map(String::from)),
            expires_in: answer.expires_in,
            origin: origin_of(url),
        };
        let now = unix_now();
        let cached = CachedToken {
            access_token: answer.access_token.clone(),
            expires_at: now + answer.expires_in as i64,
            route: receipt.route.clone(),
            settlement_id: answer.settlement_id.clone(),
            renew_endpoint,
        };
        if let Err(e) = self.cache_lock().put(key, cached, now) {
            self.step(Step::Warning(e.to_string()));
        }

        let resp = self.send(url, Some(&answer.access_token)).await?;
        self.step(Step::Retried {
            status: resp.status().as_u16(),
        });
        if resp.status() == StatusCode::PAYMENT_REQUIRED {
            let _ = self.cache_lock().remove(key, unix_now());
            let text = resp.text().await.unwrap_or_default();
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(String::from))
                .unwrap_or_default();
            return Err(PayError::TokenRefused {
                status: 402,
                reason,
                receipt: Box::new(receipt),
            });
        }
        self.finish(url, resp, true, Some(receipt)).await
    }

    /// x402 v2: pick an `accepts` entry within the caps, sign it, retry the same GET with
    /// `PAYMENT-SIGNATURE`, read `PAYMENT-RESPONSE` and cache `x-x402-access-token` if given.
    async fn pay_v2(&self, url: &Url, key: &str, header: &str) -> Result<PaidResponse, PayError> {
        let not_challenge = |detail: String| PayError::NotAChallenge {
            url: url.to_string(),
            detail,
        };
        let raw = x402_protocol::b64::decode(header.trim())
            .ok_or_else(|| not_challenge("PAYMENT-REQUIRED header is not base64".into()))?;
        let pr: PaymentRequired = serde_json::from_slice(&raw).map_err(|e| {
            not_challenge(format!("PAYMENT-REQUIRED header is not x402 v2 JSON: {e}"))
        })?;
        self.step(Step::X402V2Required {
            error: pr.error.clone().unwrap_or_default(),
            accepts: pr.accepts.len(),
        });
        let v2 = select::select_v2(&pr, &self.config.caps)?;
        let choice = &v2.choice;
        self.step(Step::chosen(choice, self.config.caps.max_text()));
        let signer = &self.config.signer;
        let valid_before = unix_now().max(0) as u64
            + v2.max_timeout_seconds
                .min(self.config.authorization_ttl_secs);
        // select_v2 only chooses requirements a registered module answers.
        let module = scheme::for_x402_v2(&v2.requirements.scheme).ok_or_else(|| {
            SignError::Signer(format!(
                "x402 v2 scheme {:?} is not supported",
                v2.requirements.scheme
            ))
        })?;
        let payload = module
            .sign_x402_v2(signer, &v2.requirements, Some(&pr.resource), valid_before)
            .map_err(|e| match e {
                sign::V2Error::Sign(s) => PayError::Sign(s),
                other => PayError::Sign(SignError::Signer(other.to_string())),
            })?;
        self.step(Step::Signed {
            scheme: choice.scheme,
            payer: signer.address(),
            valid_until: valid_before,
        });

        self.step(Step::X402V2Retry {
            url: url.to_string(),
        });
        let resp = self
            .http
            .get(url.clone())
            .header("PAYMENT-SIGNATURE", sign::x402_v2_header(&payload))
            .send()
            .await
            .map_err(|source| PayError::Http {
                url: url.to_string(),
                source,
            })?;
        let status = resp.status().as_u16();
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let payment_response: Option<x402_protocol::x402v2::SettleResponse> = h("payment-response")
            .and_then(|v| x402_protocol::b64::decode(v.trim()))
            .and_then(|b| serde_json::from_slice(&b).ok());
        let success = payment_response.as_ref().map(|r| r.success);
        let transaction = payment_response.as_ref().map(|r| r.transaction.clone());
        let settlement_id = h("x-x402-settlement-id").filter(|s| !s.is_empty());
        let access_token = h("x-x402-access-token").filter(|t| !t.is_empty());
        let now = unix_now();
        let claims = access_token.as_deref().and_then(jwt_claims);
        let expires_in = claims
            .as_ref()
            .and_then(|c| c.get("exp"))
            .and_then(|e| e.as_i64())
            .map(|exp| (exp - now).max(0) as u64)
            .unwrap_or(DEFAULT_V2_TOKEN_SECS);
        let route = claims
            .as_ref()
            .and_then(|c| c.get("route"))
            .and_then(|r| r.as_str())
            .map(String::from);
        let receipt = Receipt {
            scheme: choice.scheme,
            network: choice.network,
            asset: choice.token(),
            currency: choice.currency.clone(),
            payer: self.address(),
            pay_to: choice.pay_to,
            amount: choice.amount,
            amount_human: choice.human_amount(),
            settlement_id: settlement_id.clone(),
            route,
            expires_in: if access_token.is_some() {
                expires_in
            } else {
                0
            },
            origin: origin_of(url),
        };
        let refused = status == StatusCode::PAYMENT_REQUIRED.as_u16() || success == Some(false);
        let mut token_cached = None;
        if let (Some(t), false) = (&access_token, refused) {
            if expires_in > 0 {
                let cached = CachedToken {
                    access_token: t.clone(),
                    expires_at: now + expires_in as i64,
                    route: receipt.route.clone(),
                    settlement_id: settlement_id.clone(),
                    renew_endpoint: None,
                };
                match self.cache_lock().put(key, cached, now) {
                    Ok(()) => token_cached = Some(expires_in),
                    Err(e) => self.step(Step::Warning(e.to_string())),
                }
            }
        }
        self.step(Step::X402V2Answered {
            status,
            success,
            transaction,
            token_cached,
            settlement_id,
        });
        if refused {
            let again = h("payment-required")
                .and_then(|v| x402_protocol::b64::decode(v.trim()))
                .and_then(|b| serde_json::from_slice::<PaymentRequired>(&b).ok())
                .and_then(|p| p.error);
            let from_response = payment_response
                .as_ref()
                .and_then(|r| r.error_reason.clone().or_else(|| r.error_message.clone()));
            let text = resp.text().await.unwrap_or_default();
            let from_body = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("reason"))
                    .or_else(|| v.get("error"))
                    .and_then(|r| r.as_str())
                    .map(String::from)
            });
            let reason = from_response.or(again).or(from_body).unwrap_or_default();
            return Err(PayError::X402V2Refused {
                status,
                reason,
                receipt: Box::new(receipt),
            });
        }
        // Paid only if the server says so: a 2xx, or a PAYMENT-RESPONSE reporting success.
        let paid = ((200..300).contains(&status) || success == Some(true)).then_some(receipt);
        self.finish(url, resp, false, paid).await
    }

    /// Signs the chosen component with its scheme's module (which may read the chain).
    async fn sign_choice(&self, c: &Choice) -> Result<Value, PayError> {
        let now = unix_now().max(0) as u64;
        let module = scheme::for_scheme(c.scheme).ok_or_else(|| {
            SignError::Signer(format!("scheme {} is not supported", c.scheme.as_str()))
        })?;
        let config = &self.config;
        let on_nonce = |network, nonce| config.emit(&Step::NonceRead { network, nonce });
        let ctx = SeedContext {
            signer: &config.signer,
            rpc: &config.rpc,
            permit_ttl_secs: config.permit_ttl_secs,
            authorization_ttl_secs: config.authorization_ttl_secs,
            on_nonce: &on_nonce,
        };
        let signed = module.sign_seed(&ctx, c, now).await?;
        self.step(Step::Signed {
            scheme: c.scheme,
            payer: self.address(),
            valid_until: signed.valid_until,
        });
        Ok(signed.body)
    }
}
