//! Operational endpoints: JWKS, health, readiness, metrics, the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{AppError, AppState, OPENAPI_YAML};
use crate::error::Refusal;

pub(super) async fn jwks(State(st): State<Arc<AppState>>) -> Response {
    let mut resp = Json(json!({ "keys": [st.service.minter.jwk()] })).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    resp
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn readyz(State(st): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let r = st.service.readiness().await;
    let chains: serde_json::Map<String, Value> = r
        .chains
        .iter()
        .map(|(n, c)| {
            let v = match c {
                Ok(b) => json!({"ok": true, "block": b}),
                Err(e) => json!({"ok": false, "error": e}),
            };
            (n.to_string(), v)
        })
        .collect();
    let ready = r.ready();
    let lanes: serde_json::Map<String, Value> = r
        .stalled
        .iter()
        .map(|(n, why)| (n.to_string(), json!({"stalled": true, "reason": why})))
        .collect();
    let body = json!({
        "ready": ready,
        "database": match &r.database { Ok(()) => json!({"ok": true}), Err(e) => json!({"ok": false, "error": e}) },
        "chains": chains,
        "stalled_lanes": lanes,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

pub(super) async fn metrics(State(st): State<Arc<AppState>>) -> Result<Response, AppError> {
    match &st.metrics {
        Some(h) => Ok((
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response()),
        None => Err(AppError(Refusal::Internal(
            "metrics recorder unavailable".into(),
        ))),
    }
}

pub(super) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}
