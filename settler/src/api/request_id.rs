//! Request ids: every request is served inside a `request` span carrying its `request_id`,
//! and the id is echoed in the `x-request-id` response header. Envoy sets `x-request-id` on
//! the requests it forwards and the filter passes it on its callouts, so a settler log line
//! (`--log-format json`) joins Envoy's access log on that id; a request without one (or with
//! one unfit for a log line) gets a fresh UUID.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

const HEADER: &str = "x-request-id";

/// Longer ids are replaced: Envoy's are 36-character UUIDs, and an id is copied into every
/// log line of its request.
const MAX_LEN: usize = 128;

/// `routes` with request ids and one log line per answered request (the layers wrap every
/// route, the fallback included).
pub(super) fn layer<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .layer(axum::middleware::from_fn(in_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unusable))
}

/// Removes an `x-request-id` that is empty, too long or not printable ASCII, so that
/// `SetRequestIdLayer` puts a fresh one in its place.
async fn drop_unusable(mut req: Request) -> Request {
    if !req.headers().get(HEADER).is_some_and(usable) {
        req.headers_mut().remove(HEADER);
    }
    req
}

fn usable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

/// Serves the request inside its `request` span and logs its status and latency when
/// answered (at debug for the probes and scrapes, which would drown the rest).
async fn in_span(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let probe = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    async move {
        let started = Instant::now();
        let resp = next.run(req).await;
        let status = resp.status().as_u16();
        let latency_ms = started.elapsed().as_millis() as u64;
        if probe {
            tracing::debug!(status, latency_ms, "request answered");
        } else {
            tracing::info!(status, latency_ms, "request answered");
        }
        resp
    }
    .instrument(span)
    .await
}
