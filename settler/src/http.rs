//! The HTTP API: `POST /v1/tokens`, `GET /v1/settlements/{id}`, the x402 facilitator endpoints
//! (`facilitator.rs`), JWKS, health, metrics, and this API's OpenAPI document.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{keccak256, Address, U256};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use k256::ecdsa::SigningKey;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::{Notify, OwnedMutexGuard};
use x402_protocol::payment::{parse_payment, ClientPayment, PaymentFormat};
use x402_protocol::settler_api::{PricedMethod, Requirement, SettlementState, TokenRequest, TokenResponse};
use x402_protocol::token::{self, AccessClaims};
use x402_protocol::{Network, Scheme};

use crate::chain::{Chain, Chains};
use crate::clock::{now_ms, now_secs};
use crate::error::{Rejection, StoreError};
use crate::metrics as m;
use crate::store::{NewPayment, OpenPayment, Store};
use crate::{facilitator, verify};

pub struct AppState {
    pub store: Store,
    pub chains: Chains,
    pub token_key: SigningKey,
    pub kid: String,
    pub issuer: String,
    pub token_ttl: u64,
    pub max_token_ttl: u64,
    pub deadline_margin: u64,
    pub api_secret: Option<String>,
    pub locks: PayerLocks,
    /// Wakes a network's settlement lane when a payment is stored.
    pub wake: HashMap<Network, Arc<Notify>>,
    pub metrics: Option<PrometheusHandle>,
    /// How long facilitator `/settle` waits for the settlement.
    pub settle_timeout: Duration,
}

pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    // `/settle` may wait for its receipt: the request timeout stays above that.
    let request_timeout = Duration::from_secs(30).max(state.settle_timeout + Duration::from_secs(10));
    ROUTES
        .iter()
        .fold(Router::new(), |r, &(method, path)| r.route(path, handler(method, path)))
        .fallback(|| async { Rejection::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, request_timeout))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Every route of the API as (method, path). The router is built from this list only, and
/// `settler/openapi.yaml` documents exactly these (`tests/openapi.rs`).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/tokens"),
    ("POST", "/verify"),
    ("POST", "/settle"),
    ("GET", "/supported"),
    ("GET", "/v1/settlements/{id}"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.yaml"),
];

/// The OpenAPI 3.1 description of this API, served at `GET /openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

fn handler(method: &str, path: &str) -> MethodRouter<Arc<AppState>> {
    match (method, path) {
        ("POST", "/v1/tokens") => post(post_token),
        ("POST", "/verify") => post(facilitator::post_verify),
        ("POST", "/settle") => post(facilitator::post_settle),
        ("GET", "/supported") => get(facilitator::get_supported),
        ("GET", "/v1/settlements/{id}") => get(get_settlement),
        ("GET", "/.well-known/jwks.json") => get(jwks),
        ("GET", "/healthz") => get(healthz),
        ("GET", "/readyz") => get(readyz),
        ("GET", "/metrics") => get(metrics),
        ("GET", "/openapi.yaml") => get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML) }),
        _ => panic!("route {method} {path} in ROUTES has no handler"),
    }
}


/// One async mutex per payer and token, so one payer's checks and insert are serialised
/// (balance minus open payments, next permit nonce). Entries are removed when unused.
#[derive(Default)]
pub struct PayerLocks {
    map: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

pub struct PayerGuard {
    key: String,
    map: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for PayerGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            // The map's Arc and the one inside our guard: nobody else waits.
            if map.get(&self.key).map(|a| Arc::strong_count(a) <= 2).unwrap_or(false) {
                map.remove(&self.key);
            }
        }
    }
}

impl PayerLocks {
    pub async fn lock(&self, key: &str) -> PayerGuard {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        PayerGuard { key: key.to_string(), map: self.map.clone(), _guard: guard }
    }
}

fn reject(code_for_metrics: &Rejection) {
    metrics::counter!(m::REJECTIONS, "code" => code_for_metrics.code).increment(1);
}

async fn post_token(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    match token(&st, &headers, body).await {
        Ok(resp) => Json(resp).into_response(),
        Err(e) => {
            reject(&e);
            if e.status.is_server_error() {
                tracing::warn!(code = e.code, message = %e.message, "token request failed");
            } else {
                tracing::info!(code = e.code, message = %e.message, "token request refused");
            }
            e.into_response()
        }
    }
}

pub(crate) fn check_api_secret(st: &AppState, headers: &HeaderMap) -> Result<(), Rejection> {
    let Some(secret) = &st.api_secret else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    // Constant-time compare.
    let ok = given.len() == secret.len() && given.bytes().zip(secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(StatusCode::UNAUTHORIZED, "unauthorized", "this endpoint requires the gateway's bearer secret"))
    }
}

fn parse_request(body: &[u8]) -> Result<TokenRequest, Rejection> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| Rejection::bad_request("invalid_json", format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Rejection::bad_request("invalid_json", "request body must be a JSON object"));
    }
    for field in ["requirement", "payment"] {
        if v.get(field).is_none() {
            return Err(Rejection::bad_request("invalid_request", format!("request field `{field}`: missing")));
        }
    }
    let req: TokenRequest = serde_json::from_slice(body).map_err(|e| Rejection::bad_request("invalid_request", format!("request: {e}")))?;
    if req.requirement.accepts.is_empty() {
        return Err(Rejection::bad_request("invalid_request", "requirement field `accepts`: empty"));
    }
    if req.requirement.route.is_empty() {
        return Err(Rejection::bad_request("invalid_request", "requirement field `route`: empty"));
    }
    Ok(req)
}

async fn token(st: &AppState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<TokenResponse, Rejection> {
    check_api_secret(st, headers)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body exceeds the size limit")
        } else {
            Rejection::bad_request("invalid_request", e.body_text())
        }
    })?;
    let req = parse_request(&body)?;
    let (payment, format) = parse_payment(req.payment.get().as_bytes()).map_err(|e| Rejection::bad_request(e.code(), e.to_string()))?;
    let checked = check_static(st, &payment, &req.requirement)?;
    let now = checked.now;
    let new = check_chain_and_store(st, &payment, format, &req.requirement, &checked, true).await?;
    let payer = new.payer;

    let ttl = if req.requirement.token_ttl_secs > 0 { req.requirement.token_ttl_secs.min(st.max_token_ttl) } else { st.token_ttl };
    let claims = AccessClaims {
        iss: st.issuer.clone(),
        sub: payer,
        route: new.route.clone(),
        amount: new.value,
        asset: new.asset,
        network: new.network,
        jti: new.id.clone(),
    };
    let access_token = token::mint(&st.token_key, &st.kid, claims, now as i64, ttl);
    metrics::counter!(m::TOKENS_MINTED, "network" => new.network.to_string(), "route" => new.route.clone()).increment(1);
    tracing::info!(settlement_id = %new.id, payer = %payer, route = %new.route, amount = %new.value, network = %new.network, "token minted");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: ttl,
        settlement_id: new.id,
        payer,
        network: new.network,
        route: new.route,
        amount: new.value,
        asset: new.asset,
    })
}

/// Sum of the open payments whose transfer transaction is mined and moved the funds.
async fn mined_transfers(chain: &Arc<Chain>, token: Address, payer: Address, open: &[OpenPayment]) -> Result<U256, Rejection> {
    let mut reads = tokio::task::JoinSet::new();
    for o in open.iter().filter(|o| o.state == SettlementState::Submitted) {
        if let Some(h) = o.transfer_tx {
            let (chain, o) = (chain.clone(), o.clone());
            reads.spawn(async move { chain.receipt(h).await.map(|r| (o, r)) });
        }
    }
    let mut mined = U256::ZERO;
    while let Some(r) = reads.join_next().await {
        let (o, receipt) = r.map_err(|e| Rejection::internal(format!("receipt read: {e}")))??;
        if let Some(receipt) = receipt {
            if receipt.status() && crate::chain::has_transfer(&receipt, token, payer, o.pay_to, o.value) {
                mined = mined.saturating_add(o.value);
            }
        }
    }
    Ok(mined)
}

/// A payment that passed the static checks: the accepted method it pays with, its chain.
pub(crate) struct Checked<'a> {
    pub priced: &'a PricedMethod,
    pub chain: Arc<Chain>,
    pub now: u64,
}

/// Static checks (no I/O): match, signature, parties, value, time.
pub(crate) fn check_static<'a>(st: &AppState, payment: &ClientPayment, requirement: &'a Requirement) -> Result<Checked<'a>, Rejection> {
    let priced = verify::match_method(payment, requirement)?;
    let method = &priced.method;
    let chain = st.chains.get(method.network)?.clone();
    verify::check_signature(payment, method)?;
    let now = now_secs();
    verify::check_terms(payment, priced, chain.signer(), now, st.deadline_margin)?;
    Ok(Checked { priced, chain, now })
}

/// Chain and store checks (single use, permit nonce / authorization state, balance); with
/// `store` the payment is then stored (durable, single use) and its lane woken. Without, it
/// is only checked (`/verify`).
pub(crate) async fn check_chain_and_store(st: &AppState, payment: &ClientPayment, format: PaymentFormat, requirement: &Requirement, checked: &Checked<'_>, store: bool) -> Result<NewPayment, Rejection> {
    let priced = checked.priced;
    let method = &priced.method;
    let chain = checked.chain.clone();

    // One payer at a time from here to the insert.
    let payer = payment.payer();
    let payer_key = format!("{}:{:#x}:{:#x}", method.network.chain_id, method.asset.address, payer);
    let _guard = st.locks.lock(&payer_key).await;
    let lock_id = i64::from_be_bytes(keccak256(payer_key.as_bytes()).0[..8].try_into().unwrap_or([0u8; 8]));
    let mut session = st.store.session(lock_id).await?;
    let new = NewPayment {
        id: uuid::Uuid::now_v7().to_string(),
        scheme: payment.scheme(),
        network: method.network,
        asset: method.asset.address,
        payer,
        pay_to: method.pay_to,
        // The permit's own spender (checked to be this settler's wallet): the lane of that
        // wallet, and no other, can settle it.
        spender: match &payment {
            ClientPayment::Permit(p) => Some(p.spender),
            ClientPayment::Authorization(_) => None,
        },
        value: payment.value(),
        price: priced.amount,
        nonce: payment.nonce_key(),
        valid_after: match &payment {
            ClientPayment::Permit(_) => U256::ZERO,
            ClientPayment::Authorization(a) => a.valid_after,
        },
        deadline: match &payment {
            ClientPayment::Permit(p) => p.deadline,
            ClientPayment::Authorization(a) => a.valid_before,
        },
        sig: match &payment {
            ClientPayment::Permit(p) => p.sig,
            ClientPayment::Authorization(a) => a.sig,
        },
        route: requirement.route.clone(),
        resource: requirement.resource.clone(),
        format: match format {
            PaymentFormat::Seed => "seed".into(),
            PaymentFormat::X402V2 => "x402v2".into(),
        },
        created_ms: now_ms(),
    };

    // Single use, before anything else that depends on state.
    if session.use_key_exists(&new.use_key()).await? {
        return Err(StoreError::Duplicate.into());
    }

    // Chain state, read concurrently with the payer's open payments.
    let token_addr = method.asset.address;
    let (balance, open) = tokio::join!(chain.balance_of(token_addr, payer), session.open_payments(method.network, token_addr, payer));
    let open = open?;
    match &payment {
        ClientPayment::Permit(p) => {
            let onchain = chain.permit_nonce(token_addr, payer).await?;
            let pending: HashSet<U256> = open.iter().filter(|o| o.scheme == Scheme::Permit).map(|o| U256::from_be_bytes(o.nonce.0)).collect();
            let mut expected = onchain;
            while pending.contains(&expected) {
                expected += U256::from(1u8);
            }
            if p.nonce != expected {
                return Err(Rejection::conflict(
                    "nonce_mismatch",
                    format!("permit nonce {} is not the next one: expected {expected} (on chain {onchain}, {} unsettled)", p.nonce, expected - onchain),
                )
                .with_expected_nonce(expected));
            }
        }
        ClientPayment::Authorization(a) => {
            if chain.authorization_used(token_addr, a.from, a.nonce).await? {
                return Err(Rejection::conflict("nonce_already_used", format!("authorization nonce {} of {} is already used on chain", a.nonce, a.from)));
            }
        }
    }
    let mut balance = balance?;
    let mut committed = open.iter().fold(U256::ZERO, |acc, o| acc.saturating_add(o.value));
    let mut available = balance.saturating_sub(committed);
    if available < new.value {
        // A submitted payment whose transfer is mined but not yet marked settled is out of
        // the balance already: do not subtract it twice. Receipts first, then the balance
        // again, so a transfer mined in between is in the balance read.
        let mined = mined_transfers(&chain, token_addr, payer, &open).await?;
        if !mined.is_zero() {
            balance = chain.balance_of(token_addr, payer).await?;
            committed = committed.saturating_sub(mined);
            available = balance.saturating_sub(committed);
        }
    }
    if available < new.value {
        return Err(Rejection::payment(
            "insufficient_balance",
            format!("balance {balance} minus {committed} in unsettled payments leaves {available}, below the payment's {}", new.value),
        ));
    }

    if !store {
        return Ok(new);
    }
    // Durable before the token (or the facilitator's answer) exists.
    session.insert(&new).await?;
    session.commit().await?;
    drop(_guard);
    metrics::counter!(m::SETTLEMENTS, "state" => "pending").increment(1);
    if let Some(w) = st.wake.get(&method.network) {
        w.notify_one();
    }
    Ok(new)
}


async fn get_settlement(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id.len() > 64 {
        return Rejection::not_found("no such settlement").into_response();
    }
    match st.store.get(&id).await {
        Ok(Some(row)) => Json(row.status()).into_response(),
        Ok(None) => Rejection::not_found(format!("no settlement {id}")).into_response(),
        Err(e) => Rejection::from(e).into_response(),
    }
}

async fn jwks(State(st): State<Arc<AppState>>) -> Response {
    let key = token::jwk(&st.kid, st.token_key.verifying_key());
    let mut resp = Json(json!({ "keys": [key] })).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("max-age=300"));
    resp
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(3), st.store.ping()).await;
    let db_ok = matches!(db, Ok(Ok(())));
    let mut chains = serde_json::Map::new();
    let mut all_ok = db_ok;
    let mut set = tokio::task::JoinSet::new();
    for (n, c) in &st.chains.by_network {
        let c = c.clone();
        let n = *n;
        set.spawn(async move { (n, c.block_number().await) });
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok((n, Ok(b))) => {
                chains.insert(n.to_string(), json!({"ok": true, "block": b}));
            }
            Ok((n, Err(e))) => {
                all_ok = false;
                chains.insert(n.to_string(), json!({"ok": false, "error": e.to_string()}));
            }
            Err(_) => all_ok = false,
        }
    }
    let body = json!({
        "ready": all_ok,
        "database": if db_ok { json!({"ok": true}) } else { json!({"ok": false, "error": match db { Ok(Err(e)) => e.to_string(), _ => "timed out".into() }}) },
        "chains": chains,
    });
    let status = if all_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    match &st.metrics {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
        None => Rejection::internal("metrics recorder unavailable").into_response(),
    }
}
