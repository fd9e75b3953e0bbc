//! In-process tests of the HTTP adapters (tower `oneshot`) for what needs no chain
//! (the settler of `test_fixtures::api`).

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::{routes, OPENAPI_YAML};
use crate::test_fixtures::api::{app, call, json_of, SECRET};

fn token_body() -> Value {
    json!({"requirement": {"route": "weather", "token_ttl_secs": 300, "accepts": [{"amount": "10000", "method": {
        "scheme": "exact", "network": "eip155:31337",
        "asset": {"address": "0x5FbDB2315678afecb367f032d93F642f64180aa3", "decimals": 6, "name": "USDC", "version": "2", "symbol": "USDC"},
        "pay_to": "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"}}]},
        "payment": {"version": "Version 0.1", "permit": {"permit_type": "ERC3009"}}})
}

#[tokio::test]
async fn token_api_refusals_without_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, Some(SECRET), 1024).await;
    let body = serde_json::to_vec(&token_body()).unwrap();

    let (s, b) = call(&app, "POST", "/v1/tokens", None, Some(body.clone())).await;
    assert_eq!(
        (s, json_of(&b)["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (s, b) = call(
        &app,
        "POST",
        "/v1/tokens",
        Some("wrong"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (s, json_of(&b)["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );

    let (s, b) = call(
        &app,
        "POST",
        "/v1/tokens",
        Some(SECRET),
        Some(b"{not json".to_vec()),
    )
    .await;
    assert_eq!(
        (s, json_of(&b)["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let (s, b) = call(
        &app,
        "POST",
        "/v1/tokens",
        Some(SECRET),
        Some(b"[1]".to_vec()),
    )
    .await;
    assert_eq!(
        (s, json_of(&b)["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );

    let mut missing = token_body();
    missing.as_object_mut().unwrap().remove("payment");
    let (s, b) = call(
        &app,
        "POST",
        "/v1/tokens",
        Some(SECRET),
        Some(serde_json::to_vec(&missing).unwrap()),
    )
    .await;
    let v = json_of(&b);
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert_eq!(v["message"], "request field `payment`: missing");

    // The payment parser's refusal names the field.
    let (s, b) = call(&app, "POST", "/v1/tokens", Some(SECRET), Some(body)).await;
    let v = json_of(&b);
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_payment")),
        "{v}"
    );

    let (s, b) = call(
        &app,
        "POST",
        "/v1/tokens",
        Some(SECRET),
        Some(vec![b' '; 4096]),
    )
    .await;
    assert_eq!(
        (s, json_of(&b)["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn facilitator_and_ops_without_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, Some(SECRET), 64 * 1024).await;

    let (s, b) = call(&app, "POST", "/verify", None, Some(b"{}".to_vec())).await;
    let v = json_of(&b);
    assert_eq!(
        (s, v["isValid"].as_bool(), v["invalidReason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some(false), Some("unauthorized"))
    );
    let (s, b) = call(
        &app,
        "POST",
        "/settle",
        Some(SECRET),
        Some(b"\"nope\"".to_vec()),
    )
    .await;
    let v = json_of(&b);
    assert_eq!(
        (s, v["errorReason"].as_str(), v["network"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_payload"), Some(""))
    );
    let (s, b) = call(&app, "GET", "/supported", None, None).await;
    assert_eq!(
        (s, json_of(&b)["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (s, b) = call(&app, "GET", "/supported", Some(SECRET), None).await;
    assert_eq!(
        (s, json_of(&b)),
        (
            StatusCode::OK,
            json!({"kinds": [], "extensions": ["payment-identifier"], "signers": {"eip155:*": []}})
        )
    );

    let (s, b) = call(
        &app,
        "GET",
        "/v1/settlements/0190aaaa-0000-7000-8000-000000000000",
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, json_of(&b)["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, b) = call(
        &app,
        "GET",
        &format!("/v1/settlements/{}", "x".repeat(65)),
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, json_of(&b)["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("no such settlement"))
    );
    let (s, b) = call(&app, "GET", "/no/such/path", None, None).await;
    assert_eq!(
        (s, json_of(&b)["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let (s, b) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!((s, json_of(&b)), (StatusCode::OK, json!({"status": "ok"})));
    let (s, b) = call(&app, "GET", "/openapi.yaml", None, None).await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, OPENAPI_YAML.as_bytes()));
    let (s, b) = call(&app, "GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(json_of(&b)["keys"][0]["x402_public_key"].is_string());
    // No chains: ready means the database answers.
    let (s, b) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(
        (s, json_of(&b)["ready"].as_bool()),
        (StatusCode::OK, Some(true))
    );
}

#[tokio::test]
async fn every_route_answers_its_method() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir, None, 64 * 1024).await;
    for (method, path) in routes() {
        let path = path.replace("{id}", "nope");
        let body = (method == "POST").then(|| b"{}".to_vec());
        let (s, b) = call(&app, method, &path, None, body).await;
        assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if s == StatusCode::NOT_FOUND {
            // Only the settlement routes answer 404 (no settlement `nope`).
            assert!(
                path.starts_with("/v1/settlements/nope"),
                "{method} {path}: {}",
                String::from_utf8_lossy(&b)
            );
            assert_eq!(json_of(&b)["error"], "not_found");
        }
    }
}
