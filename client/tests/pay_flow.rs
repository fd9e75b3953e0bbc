//! The paying flow against an in-process fake gateway (real 402 bodies from x402-protocol, real
//! payment parsing and signature recovery) and a fake JSON-RPC node for permit nonces.

// The fake gateway's handlers and the helpers are test code outside #[test] fns: a failed
// unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::Signature;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use x402_client::caps::Caps;
use x402_client::select::SelectError;
use x402_client::sign::TokenDomain;
use x402_client::{Config, PayError, Payer, Step};
use x402_protocol::challenge::{
    payment_required_header, seed_body, ChallengeInput, Reason, Resource,
};
use x402_protocol::eip712;
use x402_protocol::method::{Asset, PaymentMethod};
use x402_protocol::payment::{parse_payment, ClientPayment};
use x402_protocol::settler_api::PricedMethod;
use x402_protocol::{Network, Scheme};

const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
const SPENDER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
const CHAIN: u64 = 31337;

#[derive(Default)]
struct Gw {
    accepts: Vec<PricedMethod>,
    endpoint: String,
    issued: Vec<String>,
    token_posts: usize,
    permit_nonce: u64,
    rpc_chain: u64,
    last_payment: Option<ClientPayment>,
    v2_paid: usize,
}

type S = Arc<Mutex<Gw>>;

fn token() -> Address {
    TOKEN.parse().unwrap()
}

fn method(scheme: Scheme, decimals: u8) -> PaymentMethod {
    PaymentMethod {
        scheme,
        network: Network::eip155(CHAIN),
        asset: Asset {
            address: token(),
            decimals,
            name: "USDC".into(),
            version: "2".into(),
            symbol: "USDC".into(),
        },
        pay_to: PAY_TO.parse().unwrap(),
        spender: (scheme == Scheme::Permit).then(|| SPENDER.parse().unwrap()),
    }
}

fn priced(scheme: Scheme, amount: u64, decimals: u8) -> PricedMethod {
    PricedMethod {
        amount: U256::from(amount),
        method: method(scheme, decimals),
    }
}

async fn resource(State(s): State<S>, headers: HeaderMap) -> Response {
    let g = s.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(t) = auth.strip_prefix("Bearer ") {
        if g.issued.iter().any(|i| i == t) {
            return (StatusCode::OK, "sunny").into_response();
        }
    }
    let body = seed_body(&ChallengeInput {
        reason: if auth.is_empty() {
            Reason::MissingToken
        } else {
            Reason::BadSignature
        },
        route: "weather",
        token_endpoint: &g.endpoint,
        renew_endpoint: None,
        resource: Resource {
            url: "http://x/api/weather".into(),
            description: "".into(),
            mime_type: "".into(),
        },
        accepts: &g.accepts,
        max_timeout_seconds: 300,
    });
    (
        StatusCode::PAYMENT_REQUIRED,
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

/// Checks the payment like a settler would: parse, recover the signer over the EIP-712 digest,
/// compare amounts and parties with what was asked.
async fn token_endpoint(State(s): State<S>, body: axum::body::Bytes) -> Response {
    let mut g = s.lock().unwrap();
    g.token_posts += 1;
    let (p, _) = match parse_payment(&body) {
        Ok(p) => p,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.code(), "message": e.to_string()})),
            )
                .into_response()
        }
    };
    let price = g.accepts[0].amount;
    // The settler's digest (x402_protocol::eip712), not the client's own signing path.
    let digest = eip712::signing_hash(&p, &TokenDomain::usdc(CHAIN, token()).eip712());
    let sig = match &p {
        ClientPayment::Permit(pm) => &pm.sig,
        ClientPayment::Authorization(a) => &a.sig,
    };
    let signed_by_payer = Signature::from_raw(&sig.to_bytes())
        .ok()
        .and_then(|s| s.recover_address_from_prehash(&digest).ok())
        == Some(p.payer());
    let ok = signed_by_payer
        && match &p {
            ClientPayment::Permit(pm) => {
                pm.value == price
                    && pm.spender == SPENDER.parse::<Address>().unwrap()
                    && pm.nonce == U256::from(g.permit_nonce)
            }
            ClientPayment::Authorization(a) => {
                a.value == price && a.to == PAY_TO.parse::<Address>().unwrap()
            }
        };
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_signature", "message": "bad payment"})),
        )
            .into_response();
    }
    let t = format!("tok-{}", g.issued.len() + 1);
    g.issued.push(t.clone());
    g.last_payment = Some(p.clone());
    Json(json!({
        "access_token": t, "token_type": "Bearer", "expires_in": 300,
        "settlement_id": format!("s-{}", g.issued.len()), "payer": p.payer(), "network": "eip155:31337",
        "route": "weather", "amount": price.to_string(), "asset": token(),
    }))
    .into_response()
}

fn challenge_input<'a>(g: &'a Gw, reason: Reason) -> ChallengeInput<'a> {
    ChallengeInput {
        reason,
        route: "weather",
        token_endpoint: &g.endpoint,
        renew_endpoint: None,
        resource: Resource {
            url: "http://x/api/weather".into(),
            description: "".into(),
            mime_type: "".into(),
        },
        accepts: &g.accepts,
        max_timeout_seconds: 300,
    }
}

fn b64url(bytes: &[u8]) -> String {
    x402_protocol::b64::encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// An x402 v2 server: 402 with only a `PAYMENT-REQUIRED` header (unless `seed_too`), accepts a
/// `PAYMENT-SIGNATURE` (checked like a settler would) and answers 200 with `PAYMENT-RESPONSE`,
/// `x-x402-access-token` (a JWT-shaped token with `exp`) and `x-x402-settlement-id`.
async fn v2_resource(s: S, headers: HeaderMap, seed_too: bool) -> Response {
    let mut g = s.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(t) = auth.strip_prefix("Bearer ") {
        if g.issued.iter().any(|i| i == t) {
            return (StatusCode::OK, "sunny").into_response();
        }
    }
    if let Some(sig) = headers
        .get("payment-signature")
        .and_then(|v| v.to_str().ok())
    {
        let raw = x402_protocol::b64::decode(sig).expect("base64 PAYMENT-SIGNATURE");
        let (p, fmt) = parse_payment(&raw).expect("a payment");
        assert_eq!(fmt, x402_protocol::payment::PaymentFormat::X402V2);
        let ClientPayment::Authorization(a) = &p else {
            panic!("v2 is ERC-3009 only")
        };
        let digest = eip712::signing_hash(&p, &TokenDomain::usdc(CHAIN, token()).eip712());
        let signer_ok = Signature::from_raw(&a.sig.to_bytes())
            .ok()
            .and_then(|s| s.recover_address_from_prehash(&digest).ok())
            == Some(a.from);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let vb: u64 = a.valid_before.to();
        assert!(
            vb > now && vb <= now + 301,
            "validBefore within maxTimeoutSeconds: {vb} vs {now}"
        );
        if !(signer_ok
            && a.value == g.accepts[0].amount
            && a.to == PAY_TO.parse::<Address>().unwrap())
        {
            return (
                StatusCode::PAYMENT_REQUIRED,
                [(
                    "payment-required",
                    payment_required_header(&challenge_input(&g, Reason::BadSignature)),
                )],
                "",
            )
                .into_response();
        }
        let claims = json!({"exp": now + 120, "route": "weather"}).to_string();
        let t = format!("eyJhbGciOiJFZERTQSJ9.{}.c2ln", b64url(claims.as_bytes()));
        g.issued.push(t.clone());
        g.v2_paid += 1;
        g.last_payment = Some(p.clone());
        let receipt =
            json!({"success": true, "transaction": "", "network": "eip155:31337", "payer": a.from})
                .to_string();
        return (
            StatusCode::OK,
            [
                (
                    "payment-response",
                    x402_protocol::b64::encode(receipt.as_bytes()),
                ),
                ("x-x402-access-token", t),
                ("x-x402-settlement-id", format!("v2-{}", g.v2_paid)),
            ],
            "sunny v2",
        )
            .into_response();
    }
    let input = challenge_input(&g, Reason::MissingToken);
    let header = payment_required_header(&input);
    let body = if seed_too {
        seed_body(&input)
    } else {
        "{}".to_string()
    };
    (
        StatusCode::PAYMENT_REQUIRED,
        [
            ("payment-required", header),
            ("content-type", "application/json".into()),
        ],
        body,
    )
        .into_response()
}

async fn v2_only(State(s): State<S>, headers: HeaderMap) -> Response {
    v2_resource(s, headers, false).await
}

async fn v2_and_seed(State(s): State<S>, headers: HeaderMap) -> Response {
    v2_resource(s, headers, true).await
}

async fn rpc(State(s): State<S>, Json(req): Json<Value>) -> Json<Value> {
    let g = s.lock().unwrap();
    let result = match req["method"].as_str().unwrap_or("") {
        "eth_chainId" => json!(format!("0x{:x}", g.rpc_chain)),
        "eth_call" => json!(format!("0x{:064x}", g.permit_nonce)),
        _ => Value::Null,
    };
    Json(json!({"jsonrpc": "2.0", "id": req["id"], "result": result}))
}

async fn serve(gw: Gw) -> (SocketAddr, S) {
    let state: S = Arc::new(Mutex::new(gw));
    let app = Router::new()
        .route("/api/weather", get(resource))
        .route("/api/v2", get(v2_only))
        .route("/api/both", get(v2_and_seed))
        .route("/x402/token/weather", post(token_endpoint))
        .route("/rpc", post(rpc))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

fn gw(accepts: Vec<PricedMethod>) -> Gw {
    Gw {
        accepts,
        endpoint: "/x402/token/weather".into(),
        permit_nonce: 7,
        rpc_chain: CHAIN,
        ..Default::default()
    }
}

fn caps(max: &str) -> Caps {
    Caps::default()
        .with_max(max)
        .unwrap()
        .allow_network(Network::eip155(CHAIN))
        .allow_asset(token())
        .asset_decimals(token(), 6)
}

fn signer() -> PrivateKeySigner {
    KEY.parse().unwrap()
}

fn recorder(c: Config) -> (Config, Arc<Mutex<Vec<String>>>) {
    let steps = Arc::new(Mutex::new(Vec::new()));
    let s2 = steps.clone();
    (
        c.on_step(move |s: &Step| s2.lock().unwrap().push(s.to_string())),
        steps,
    )
}

#[tokio::test]
async fn exact_pays_once_then_uses_the_cached_token() {
    let (addr, state) = serve(gw(vec![priced(Scheme::Exact, 500_000, 6)])).await;
    let (config, steps) = recorder(Config::new(signer(), caps("0.5")));
    let payer = Payer::new(config).unwrap();
    let url = format!("http://{addr}/api/weather?city=x");
    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "sunny");
    let paid = r.paid.expect("paid");
    assert_eq!(paid.amount, U256::from(500_000u64));
    assert_eq!(paid.amount_human, "0.5");
    assert_eq!(paid.scheme, Scheme::Exact);
    assert_eq!(paid.settlement_id.as_deref(), Some("s-1"));
    assert_eq!(paid.payer, signer().address());
    let text = steps.lock().unwrap().join("\n");
    assert!(
        text.contains("402 Payment Required (Missing authorization token)"),
        "{text}"
    );
    assert!(
        text.contains("chose exact on eip155:31337: 0.5 USDC"),
        "{text}"
    );
    assert!(text.contains("settlement s-1"), "{text}");
    assert!(text.contains("retried with token: HTTP 200"), "{text}");

    let r2 = payer.get(&url).await.unwrap();
    assert_eq!(r2.status, 200);
    assert!(r2.paid.is_none());
    assert!(r2.token_used);
    assert_eq!(
        state.lock().unwrap().token_posts,
        1,
        "the second call must pay nothing"
    );
}

#[tokio::test]
async fn permit_reads_the_nonce_over_rpc() {
    let (addr, state) = serve(gw(vec![priced(Scheme::Permit, 250_000, 6)])).await;
    let config = Config::new(signer(), caps("0.5"))
        .with_rpc(Network::eip155(CHAIN), format!("http://{addr}/rpc"));
    let payer = Payer::new(config).unwrap();
    let r = payer
        .get(&format!("http://{addr}/api/weather"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let Some(ClientPayment::Permit(p)) = state.lock().unwrap().last_payment.clone() else {
        panic!("no permit")
    };
    assert_eq!(p.nonce, U256::from(7u64));
    assert_eq!(p.owner, signer().address());
}

#[tokio::test]
async fn permit_without_rpc_or_on_a_wrong_chain_is_refused() {
    let (addr, state) = serve(gw(vec![priced(Scheme::Permit, 250_000, 6)])).await;
    let payer = Payer::new(Config::new(signer(), caps("0.5"))).unwrap();
    let e = payer
        .get(&format!("http://{addr}/api/weather"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs an RPC"), "{e}");
    state.lock().unwrap().rpc_chain = 1;
    let config = Config::new(signer(), caps("0.5"))
        .with_rpc(Network::eip155(CHAIN), format!("http://{addr}/rpc"));
    let e = Payer::new(config)
        .unwrap()
        .get(&format!("http://{addr}/api/weather"))
        .await
        .unwrap_err();
    assert!(matches!(e, PayError::RpcChain { got: 1, .. }), "{e}");
    assert_eq!(state.lock().unwrap().token_posts, 0);
}

#[tokio::test]
async fn never_signs_above_the_cap() {
    let (addr, state) = serve(gw(vec![priced(Scheme::Exact, 500_001, 6)])).await;
    let payer = Payer::new(Config::new(signer(), caps("0.5"))).unwrap();
    let e = payer
        .get(&format!("http://{addr}/api/weather"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, PayError::Select(SelectError::NoneAcceptable(_))),
        "{e}"
    );
    assert_eq!(e.exit_code(), 3);
    assert_eq!(state.lock().unwrap().token_posts, 0);
}

#[tokio::test]
async fn a_server_lying_about_decimals_gets_nothing() {
    // The server says the token has 18 decimals and asks "0.5" = 5e17 base units. The user's cap
    // is 1 (USDC, 6 decimals). Trusting the server would sign 500 billion USDC.
    let (addr, state) = serve(gw(vec![priced(Scheme::Exact, 500_000_000_000_000_000, 18)])).await;
    let payer = Payer::new(Config::new(signer(), caps("1"))).unwrap();
    let e = payer
        .get(&format!("http://{addr}/api/weather"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("server states 18 decimals"), "{e}");
    assert_eq!(state.lock().unwrap().token_posts, 0);
}

#[tokio::test]
async fn foreign_token_endpoint_is_refused() {
    let mut g = gw(vec![priced(Scheme::Exact, 1, 6)]);
    g.endpoint = "http://evil.example/steal".into();
    let (addr, _state) = serve(g).await;
    let payer = Payer::new(Config::new(signer(), caps("1"))).unwrap();
    let e = payer
        .get(&format!("http://{addr}/api/weather"))
        .await
        .unwrap_err();
    assert!(matches!(e, PayError::ForeignEndpoint(_)), "{e}");
}

#[tokio::test]
async fn disk_cache_survives_a_new_payer() {
    let (addr, state) = serve(gw(vec![priced(Scheme::Exact, 100_000, 6)])).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.json");
    let url = format!("http://{addr}/api/weather");
    for i in 0..2 {
        let mut c = Config::new(signer(), caps("0.1"));
        c.cache_file = Some(file.clone());
        let r = Payer::new(c).unwrap().get(&url).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.paid.is_some(), i == 0);
    }
    assert_eq!(state.lock().unwrap().token_posts, 1);
    // A token the server no longer accepts is dropped and the call pays again.
    state.lock().unwrap().issued.clear();
    let mut c = Config::new(signer(), caps("0.1"));
    c.cache_file = Some(file.clone());
    let r = Payer::new(c).unwrap().get(&url).await.unwrap();
    assert!(r.paid.is_some());
    assert_eq!(state.lock().unwrap().token_posts, 2);
}

async fn settlements(
    State(_s): State<S>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if id != "s-1" {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "message": "no such settlement"})),
        )
            .into_response();
    }
    Json(json!({
        "settlement_id": "s-1", "state": "settled", "scheme": "exact", "network": "eip155:31337",
        "asset": TOKEN, "payer": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "pay_to": PAY_TO,
        "amount": "100000", "route": "weather",
        "transfer_tx": "0x4f1c8e0d6a2c1f3e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e",
        "block_number": 5, "created_at": 1, "updated_at": 2
    }))
    .into_response()
}

async fn serve_with_status(g: Gw) -> (SocketAddr, S) {
    let state: S = Arc::new(Mutex::new(g));
    let app = Router::new()
        .route("/api/weather", get(resource))
        .route("/x402/token/weather", post(token_endpoint))
        .route("/x402/settlements/{id}", get(settlements))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

fn cli() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402-pay"));
    c.env_remove("EVM_PRIVATE_KEY")
        .env_remove("X402_RPC")
        .env("X402_PRIVATE_KEY", KEY);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pays_once_caches_on_disk_and_follows_the_settlement() {
    let (addr, state) = serve_with_status(gw(vec![priced(Scheme::Exact, 100_000, 6)])).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tokens.json");
    let url = format!("http://{addr}/api/weather");
    let args = [
        "--max",
        "0.1",
        "--network",
        "eip155:31337",
        "--asset",
        TOKEN,
        "--asset-decimals",
        &format!("{TOKEN}=6"),
    ];
    let out = cli()
        .args(args)
        .args(["-v", "--cache-file", cache.to_str().unwrap(), &url])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sunny");
    assert!(stderr.contains("402 Payment Required"), "{stderr}");
    assert!(
        stderr.contains("signed ERC-3009 transferWithAuthorization"),
        "{stderr}"
    );
    assert!(stderr.contains("settlement s-1"), "{stderr}");
    assert!(!stderr.contains(&KEY[2..]), "the key must never be printed");
    // Second process: the disk cache means nothing is paid.
    let out = cli()
        .args(args)
        .args(["-v", "--cache-file", cache.to_str().unwrap(), &url])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing paid"));
    assert_eq!(state.lock().unwrap().token_posts, 1);
    // Over the cap: exit code 3, nothing posted.
    let out = cli()
        .args([
            "--max",
            "0.05",
            "--network",
            "eip155:31337",
            "--asset",
            TOKEN,
            "--asset-decimals",
            &format!("{TOKEN}=6"),
            "--no-cache",
            &url,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state.lock().unwrap().token_posts, 1);
    // status follows to the tx hash.
    let out = cli()
        .args(["status", "s-1", "--origin", &format!("http://{addr}"), "-q"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("state: settled"), "{stdout}");
    assert!(stdout.contains("transfer_tx: 0x4f1c8e0d"), "{stdout}");
    let out = cli()
        .args([
            "status",
            "nope",
            "--origin",
            &format!("http://{addr}"),
            "-q",
            "--timeout",
            "5",
            "--interval-ms",
            "200",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
}

#[tokio::test]
async fn x402_v2_only_server_is_paid_once_then_the_token_is_reused() {
    let (addr, state) = serve(gw(vec![
        priced(Scheme::Exact, 400_000, 6),
        priced(Scheme::Permit, 100_000, 6),
    ]))
    .await;
    let (config, steps) = recorder(Config::new(signer(), caps("0.5")));
    let payer = Payer::new(config).unwrap();
    let url = format!("http://{addr}/api/v2");
    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "sunny v2");
    let paid = r.paid.expect("paid");
    assert_eq!(paid.amount, U256::from(400_000u64));
    assert_eq!(paid.amount_human, "0.4");
    assert_eq!(paid.scheme, Scheme::Exact);
    assert_eq!(paid.settlement_id.as_deref(), Some("v2-1"));
    assert_eq!(paid.route.as_deref(), Some("weather"));
    assert!(
        paid.expires_in > 100 && paid.expires_in <= 120,
        "{}",
        paid.expires_in
    );
    let text = steps.lock().unwrap().join("\n");
    assert!(text.contains("x402 v2 PAYMENT-REQUIRED"), "{text}");
    assert!(
        text.contains("chose exact on eip155:31337: 0.4 USDC"),
        "{text}"
    );
    assert!(text.contains("with PAYMENT-SIGNATURE"), "{text}");
    assert!(text.contains("PAYMENT-RESPONSE success=true"), "{text}");
    assert!(text.contains("settlement v2-1"), "{text}");
    let Some(ClientPayment::Authorization(a)) = state.lock().unwrap().last_payment.clone() else {
        panic!()
    };
    assert_eq!(a.from, signer().address());

    let r2 = payer.get(&url).await.unwrap();
    assert_eq!(r2.status, 200);
    assert!(r2.paid.is_none() && r2.token_used);
    assert_eq!(
        state.lock().unwrap().v2_paid,
        1,
        "the second call must pay nothing"
    );
}

#[tokio::test]
async fn x402_v2_never_signs_above_the_cap_or_an_unknown_asset() {
    let (addr, state) = serve(gw(vec![priced(Scheme::Exact, 500_001, 6)])).await;
    let payer = Payer::new(Config::new(signer(), caps("0.5"))).unwrap();
    let e = payer
        .get(&format!("http://{addr}/api/v2"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, PayError::Select(SelectError::NoneAcceptable(_))),
        "{e}"
    );
    assert!(e.to_string().contains("above your cap of 0.5"), "{e}");
    assert_eq!(e.exit_code(), 3);
    // Known USDC only by default: the test token is refused.
    let (addr2, _) = serve(gw(vec![priced(Scheme::Exact, 1, 6)])).await;
    let caps = Caps::default()
        .with_max("1")
        .unwrap()
        .allow_network(Network::eip155(CHAIN));
    let e = Payer::new(Config::new(signer(), caps))
        .unwrap()
        .get(&format!("http://{addr2}/api/v2"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not allowed"), "{e}");
    assert_eq!(state.lock().unwrap().v2_paid, 0);
}

#[tokio::test]
async fn seed_flow_is_preferred_unless_x402_v2_is_asked_for() {
    let (addr, state) = serve(gw(vec![priced(Scheme::Exact, 300_000, 6)])).await;
    let url = format!("http://{addr}/api/both");
    let r = Payer::new(Config::new(signer(), caps("0.5")))
        .unwrap()
        .get(&url)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.paid.unwrap().settlement_id.as_deref(), Some("s-1"));
    {
        let g = state.lock().unwrap();
        assert_eq!((g.token_posts, g.v2_paid), (1, 0));
    }

    let r = Payer::new(Config::new(signer(), caps("0.5")).prefer_x402_v2(true))
        .unwrap()
        .get(&url)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "sunny v2");
    assert_eq!(r.paid.unwrap().settlement_id.as_deref(), Some("v2-1"));
    let g = state.lock().unwrap();
    assert_eq!((g.token_posts, g.v2_paid), (1, 1));
}
