//! The last line of defence of the HTTP API: a panic in a handler (a bug that slipped past
//! the checked conversions) becomes `500 {"error":"internal","message":"internal error"}`
//! and an error log line with the panic's message, never a dropped connection. A caller
//! such as the filter tells an answer from an outage: a dropped connection is an outage,
//! which under `failure_mode: allow` would let the request through unpaid.

use std::any::Any;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use x402_protocol::settler_api::ApiError;

/// The layer, with [`answer`] as its handler.
pub(super) fn layer() -> CatchPanicLayer<fn(Box<dyn Any + Send + 'static>) -> Response> {
    CatchPanicLayer::custom(answer as fn(Box<dyn Any + Send + 'static>) -> Response)
}

/// The text of a panic payload (`panic!("...")` carries a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// The answer to a request whose handler panicked: the message goes to the log only.
fn answer(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic_message(payload.as_ref());
    tracing::error!(panic = %message, "request handler panicked; answered 500 internal");
    metrics::counter!(crate::metrics::REJECTIONS, "code" => "internal").increment(1);
    super::no_store(
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(ApiError::new("internal", "internal error")),
        )
            .into_response(),
    )
}

/// Routes that exist in tests only, to prove the layer catches what they do.
#[cfg(test)]
pub(super) fn test_routes<S: Clone + Send + Sync + 'static>(r: axum::Router<S>) -> axum::Router<S> {
    use axum::routing::{get, post};
    r.route(
        "/__test/panic",
        get(
            |axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                // A handler bug: an `expect` on what the request did not carry.
                q.expect("test route: a handler bug")
            },
        ),
    )
    .route(
        "/__test/panic-fmt",
        post(|body: String| async move {
            if body.len() < usize::MAX {
                panic!("test route: formatted panic with {} bytes", body.len());
            }
            "never"
        }),
    )
}

#[cfg(test)]
mod tests {
    use crate::test_fixtures::api::{app, call, SECRET};
    use axum::http::StatusCode;
    use serde_json::{json, Value};

    #[tokio::test]
    async fn a_panicking_handler_answers_500_internal_json_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(&dir, Some(SECRET), 64 * 1024).await;
        for (method, path, body) in [
            ("GET", "/__test/panic", None),
            ("POST", "/__test/panic-fmt", Some(b"xyz".to_vec())),
        ] {
            let (st, body) = call(&app, method, path, None, body).await;
            assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                v,
                json!({"error": "internal", "message": "internal error"}),
                "{path}: no panic text in the answer"
            );
        }
        // The same router (and its state) still answers.
        let (st, _) = call(&app, "GET", "/healthz", None, None).await;
        assert_eq!(st, StatusCode::OK);
    }

    #[test]
    fn the_panic_message_is_read_from_either_payload() {
        assert_eq!(super::panic_message(&"static"), "static");
        assert_eq!(super::panic_message(&String::from("owned")), "owned");
        assert_eq!(super::panic_message(&42u8), "(no message)");
    }
}
