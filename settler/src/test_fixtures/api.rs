//! The HTTP adapters in process (tower `oneshot`) without a chain: a settler with a
//! temporary SQLite database and no networks, and one request through it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::{router, AppState};
use crate::chain::Chains;
use crate::service::{Minter, Service};
use crate::store::Store;

pub(crate) const SECRET: &str = "s3cret";

pub(crate) async fn app(
    dir: &tempfile::TempDir,
    secret: Option<&str>,
    body_limit: usize,
) -> Router {
    router(app_state(dir, secret).await, body_limit)
}

/// The state of [`app`], for tests that look at it while requests run.
pub(crate) async fn app_state(dir: &tempfile::TempDir, secret: Option<&str>) -> Arc<AppState> {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Store::connect(&url).await.unwrap();
    let key = k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let terms = crate::terms::Terms::parse(
        r#"{"assets": [{"network": "eip155:31337", "address": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "name": "USDC", "version": "2", "decimals": 6,
            "pay_to": ["0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"], "min_price": "0.001"}]}"#,
    )
    .unwrap();
    let service = Service {
        lanes: Default::default(),
        block_secs: 86_400,
        store,
        chains: Chains::default(),
        deadline_margin: 60,
        accept_deadline: Duration::from_secs(2),
        locks: Default::default(),
        totals: Default::default(),
        wake: Default::default(),
        minter: Minter::new(key, "x402-settler".into(), 300, 86_400),
        terms: terms.clone(),
        domains: crate::service::Domains::new(&terms, |_| crate::service::DomainState::Verified),
        finals: Default::default(),
        facts: None,
    };
    let state = AppState {
        service: Arc::new(service),
        auth: crate::config::CallerAuth {
            gateway: secret.map(str::to_string),
            facilitators: Vec::new(),
        },
        metrics: None,
        settle_timeout: Duration::from_secs(1),
    };
    Arc::new(state)
}

pub(crate) async fn call(
    app: &Router,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
) -> (StatusCode, Vec<u8>) {
    let mut rq = Request::builder().method(method).uri(path);
    if let Some(b) = bearer {
        rq = rq.header("authorization", format!("Bearer {b}"));
    }
    if body.is_some() {
        rq = rq.header("content-type", "application/json");
    }
    let rq = rq
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let resp = app.clone().oneshot(rq).await.unwrap();
    let status = resp.status();
    (
        status,
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
}

pub(crate) fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}
