//! The token endpoint the filter answers itself: `POST <prefix><route>` carries the client's
//! signed payment; the filter adds the route's price (from its own config, never the
//! client's) and forwards both to the settler, then relays the settler's answer.
//!
//! `POST <prefix><route>/renew` with `Authorization: Bearer <token>` renews a short-lived
//! token (route option `unsettled_token_ttl_secs`) once its payment has settled: the filter
//! checks the token against its own keys (valid, or expired at most
//! [`RENEW_GRACE_SECS`] ago, for this route, not revoked) and forwards it with the route's
//! requirement at the normal `token_ttl_secs` to the settler's renewal path.

use serde_json::value::RawValue;
use x402_protocol::challenge::Reason;
use x402_protocol::settler_api::{
    ApiError, RenewRequest, Requirement, TokenRequest, RENEW_GRACE_SECS,
};
use x402_protocol::token::KeySet;

use crate::answer::HttpAnswer;
use crate::config::FilterConfig;
use crate::routes::{path_only, Route};

/// A request under the token endpoint prefix: which route, or the answer to send right away.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Route(usize),
    /// `<prefix><route>/renew` of a route that mints short-lived tokens.
    Renew(usize),
    Reject(HttpAnswer),
}

/// The path suffix of the renewal action.
pub const RENEW_SUFFIX: &str = "/renew";

/// `None` when `path` is not under the token endpoint prefix (the request is not ours).
pub fn classify(cfg: &FilterConfig, method: Option<&str>, path: &str) -> Option<Endpoint> {
    let name = path_only(path).strip_prefix(cfg.token_endpoint_prefix.as_str())?;
    let renew = cfg.routes.by_name(name).is_none() && name.ends_with(RENEW_SUFFIX);
    let name = if renew {
        &name[..name.len() - RENEW_SUFFIX.len()]
    } else {
        name
    };
    let Some(idx) = cfg.routes.by_name(name) else {
        return Some(Endpoint::Reject(HttpAnswer::error(
            404,
            "unknown_route",
            "no priced route has this name",
        )));
    };
    if method != Some("POST") {
        let mut a = HttpAnswer::error(
            405,
            "method_not_allowed",
            "the token endpoint only accepts POST",
        );
        a.headers.push(("allow", "POST".to_string()));
        return Some(Endpoint::Reject(a));
    }
    if renew {
        let offers = cfg
            .routes
            .get(idx)
            .is_some_and(|r| r.unsettled_token_ttl_secs.is_some());
        if !offers {
            return Some(Endpoint::Reject(HttpAnswer::error(
                404,
                "not_renewable",
                "this route mints full-lifetime tokens: there is nothing to renew",
            )));
        }
        return Some(Endpoint::Renew(idx));
    }
    Some(Endpoint::Route(idx))
}

pub fn too_large(max: usize) -> HttpAnswer {
    HttpAnswer::error(
        413,
        "payload_too_large",
        &format!("request body exceeds {max} bytes"),
    )
}

/// Refuses early when `content-length` already announces too much.
pub fn check_declared_length(content_length: Option<&str>, max: usize) -> Result<(), HttpAnswer> {
    match content_length.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(n)) if n > max as u64 => Err(too_large(max)),
        _ => Ok(()),
    }
}

pub fn check_size(size: usize, max: usize) -> Result<(), HttpAnswer> {
    if size > max {
        Err(too_large(max))
    } else {
        Ok(())
    }
}

pub fn invalid_json(detail: &str) -> HttpAnswer {
    HttpAnswer::error(400, "invalid_json", detail)
}

/// The settler request body: the route's requirement plus the client's payment JSON as sent.
#[cfg(test)]
pub fn token_request_body(
    cfg: &FilterConfig,
    route: &Route,
    payment: &[u8],
    resource: Option<String>,
) -> Result<Vec<u8>, HttpAnswer> {
    token_request_body_with(cfg, route, payment, resource, SettlerExtras::default())
}

/// What a settler request carries besides the requirement and the payment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettlerExtras {
    /// The client's `Idempotency-Key` (token endpoint).
    pub payment_id: Option<String>,
    /// Hold the payment for the upstream's answer this long at most.
    pub hold_secs: Option<u64>,
}

/// [`token_request_body`] with `extras`.
pub fn token_request_body_with(
    cfg: &FilterConfig,
    route: &Route,
    payment: &[u8],
    resource: Option<String>,
    extras: SettlerExtras,
) -> Result<Vec<u8>, HttpAnswer> {
    let raw: Box<RawValue> = serde_json::from_slice(payment)
        .map_err(|e| invalid_json(&format!("request body is not JSON: {e}")))?;
    if !raw.get().starts_with('{') {
        return Err(invalid_json("request body must be a JSON object"));
    }
    let req = TokenRequest {
        requirement: Requirement {
            route: route.name.clone(),
            accepts: route.accepts.clone(),
            // A fresh payment is unsettled: the route's short lifetime if it has one.
            token_ttl_secs: route.unsettled_token_ttl_secs.unwrap_or(cfg.token_ttl_secs),
            resource,
        },
        payment: raw,
        payment_id: extras.payment_id,
        hold_secs: extras.hold_secs,
    };
    serde_json::to_vec(&req)
        .map_err(|_| HttpAnswer::error(500, "internal", "could not encode the settler request"))
}

/// Checks the bearer token of a renewal on `route` at `now`: it verifies with the filter's
/// keys (expired at most [`RENEW_GRACE_SECS`] ago), pays for this route and is not revoked.
/// Returns the token, or the 401/403 to answer without calling the settler.
pub fn renewable_token<'a>(
    keys: &KeySet,
    route: &Route,
    authorization: Option<&'a str>,
    now: i64,
    is_revoked: impl Fn(&str) -> bool,
) -> Result<&'a str, HttpAnswer> {
    let refuse = |reason: Reason| {
        let mut a = HttpAnswer::error(401, "invalid_token", reason.message());
        a.headers.push(("www-authenticate", "Bearer".to_string()));
        a
    };
    let token = crate::auth::bearer(authorization).map_err(refuse)?;
    let v = keys
        .verify(token, now, RENEW_GRACE_SECS as i64)
        .map_err(|e| refuse(e.reason()))?;
    let grant = crate::grant::Grant::from_verified(&v);
    crate::auth::authorize(route, &grant).map_err(refuse)?;
    if is_revoked(&grant.settlement_id) {
        return Err(HttpAnswer::error(
            403,
            "payment_failed",
            Reason::Revoked.message(),
        ));
    }
    Ok(token)
}

/// The settler renewal body: the token and the route's requirement at the NORMAL lifetime
/// (the settler caps it by its terms).
pub fn renew_request_body(
    cfg: &FilterConfig,
    route: &Route,
    token: &str,
) -> Result<Vec<u8>, HttpAnswer> {
    let req = RenewRequest {
        token: token.to_string(),
        requirement: Requirement {
            route: route.name.clone(),
            accepts: route.accepts.clone(),
            token_ttl_secs: cfg.token_ttl_secs,
            resource: None,
        },
    };
    serde_json::to_vec(&req)
        .map_err(|_| HttpAnswer::error(500, "internal", "could not encode the settler request"))
}

/// Headers of a settler call to `path` (`settler.path`, or `settler.renew_path`);
/// `authorization: Bearer <settler.api_secret>` when set.
pub fn settler_headers<'a>(cfg: &'a FilterConfig, path: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", cfg.settler.authority.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ];
    if let Some(auth) = &cfg.settler.auth {
        h.push(("authorization", auth.header_value()));
    }
    h
}

/// What came back from the settler. `status` is `None` when the call failed (timeout,
/// connection refused, no healthy host): Envoy then answers with no headers at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettlerReply {
    pub status: Option<u32>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl SettlerReply {
    pub fn from_headers(headers: &[(String, String)], body: Vec<u8>) -> Self {
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        SettlerReply {
            status: get(":status").and_then(|s| s.trim().parse().ok()),
            content_type: get("content-type"),
            body,
        }
    }

    /// The settler could not give an answer: no status, or a 5xx that is not the settler's
    /// own JSON error. (When the settler is down, Envoy itself answers the callout with a
    /// 503 and a text body such as "upstream connect error ...".)
    pub fn is_outage(&self) -> bool {
        match self.status {
            None => true,
            Some(s) if !(100..=599).contains(&s) => true,
            Some(s) => s >= 500 && self.settler_error().is_none(),
        }
    }

    /// The settler could not be reached at all: no answer (the callout could not be made,
    /// was reset, or Envoy gave up on it), or a 502/503/504 that is not the settler's own
    /// JSON (what Envoy answers for a settler it cannot connect to, without a healthy host,
    /// or slower than `settler.timeout_ms`). The only case `failure_mode: allow` opens a
    /// route for: anything the settler itself answered, 5xx included, is not.
    pub fn is_unreachable(&self) -> bool {
        match self.status {
            None => true,
            Some(s) => (502..=504).contains(&s) && self.settler_error().is_none(),
        }
    }

    /// The settler's JSON error in the body, reduced to what the public may see.
    pub fn settler_error(&self) -> Option<ApiError> {
        public_error(&self.body)
    }
}

/// The longest settler message relayed to a client (characters).
const MAX_PUBLIC_MESSAGE: usize = 300;

/// The settler's JSON error `body` reduced to what clients need: `error` (a code of
/// `[a-z0-9_]`), `message` (control characters blanked, at most [`MAX_PUBLIC_MESSAGE`]
/// characters), and, when well-formed, `expected_nonce` (decimal), `settlement_id` and
/// `state`. Every other field is dropped. `None` if the body is not such an error.
pub fn public_error(body: &[u8]) -> Option<ApiError> {
    use serde_json::Value;
    let v: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.as_str()?;
    if code.is_empty()
        || code.len() > 64
        || !code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let message: String = match v.get("message").and_then(Value::as_str) {
        Some(m) => m
            .chars()
            .take(MAX_PUBLIC_MESSAGE)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
        None => "the settler refused the request".to_string(),
    };
    let text = |name: &str, max: usize, ok: fn(u8) -> bool| {
        v.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= max && s.bytes().all(ok))
            .map(str::to_string)
    };
    let mut e = ApiError::new(code, message);
    e.expected_nonce = text("expected_nonce", 78, |b| b.is_ascii_digit());
    e.settlement_id = text("settlement_id", 64, |b| {
        b.is_ascii_alphanumeric() || b == b'-'
    });
    e.state = v
        .get("state")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    Some(e)
}

pub fn settler_unavailable(message: &str) -> HttpAnswer {
    HttpAnswer::error(503, "settler_unavailable", message)
}

/// Why the settler call failed, for the 503 message.
pub fn outage_message(reply: &SettlerReply) -> String {
    match reply.status {
        None => "the settler did not answer (timeout or connection failure)".to_string(),
        Some(s) => {
            let text: String = String::from_utf8_lossy(&reply.body)
                .chars()
                .take(120)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let text = text.trim();
            if text.is_empty() {
                format!("the settler answered {s} without a body")
            } else {
                format!("the settler answered {s}: {text}")
            }
        }
    }
}

/// What a client is told about a failed settler call: no text from the answer's body
/// (Envoy's or a proxy's words, or internal detail), which [`outage_message`] gives the log.
pub fn public_outage_message(reply: &SettlerReply) -> String {
    match reply.status {
        None => "the settler did not answer (timeout or connection failure)".to_string(),
        Some(s) => format!("the settler answered {s}"),
    }
}

/// The token endpoint's answer: the settler's own status, its minted token as sent, its
/// error reduced to [`public_error`]; 503 on an outage or an answer that is no answer
/// (1xx, 3xx).
pub fn relay(reply: &SettlerReply) -> HttpAnswer {
    if reply.is_outage() {
        return settler_unavailable(&public_outage_message(reply));
    }
    let status = reply.status.unwrap_or(503);
    if (200..300).contains(&status) {
        let content_type = reply
            .content_type
            .clone()
            .unwrap_or_else(|| "application/json".to_string());
        return HttpAnswer {
            status,
            headers: vec![
                ("content-type", content_type),
                ("cache-control", "no-store".to_string()),
            ],
            body: reply.body.clone(),
        };
    }
    if !(400..600).contains(&status) {
        return settler_unavailable(&public_outage_message(reply));
    }
    let e = reply.settler_error().unwrap_or_else(|| {
        ApiError::new(
            "payment_rejected",
            format!("the settler refused the request ({status})"),
        )
    });
    HttpAnswer::json(status, e.to_json().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    use crate::test_fixtures::sample_config as cfg;

    fn code(a: &HttpAnswer) -> String {
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        v["error"].as_str().unwrap().to_string()
    }

    #[test]
    fn classify_paths() {
        let cfg = cfg();
        assert_eq!(classify(&cfg, Some("POST"), "/api/weather"), None);
        assert_eq!(classify(&cfg, Some("POST"), "/x402/token"), None);
        assert_eq!(
            classify(&cfg, Some("POST"), "/x402/token/weather"),
            Some(Endpoint::Route(0))
        );
        assert_eq!(
            classify(&cfg, Some("POST"), "/x402/token/report?x=1"),
            Some(Endpoint::Route(1))
        );
        match classify(&cfg, Some("GET"), "/x402/token/weather") {
            Some(Endpoint::Reject(a)) => {
                assert_eq!(a.status, 405);
                assert_eq!(a.header("allow"), Some("POST"));
                assert_eq!(code(&a), "method_not_allowed");
            }
            other => panic!("{other:?}"),
        }
        for p in ["/x402/token/nope", "/x402/token/", "/x402/token/weather/x"] {
            match classify(&cfg, Some("POST"), p) {
                Some(Endpoint::Reject(a)) => {
                    assert_eq!(a.status, 404, "{p}");
                    assert_eq!(code(&a), "unknown_route");
                }
                other => panic!("{p}: {other:?}"),
            }
        }
    }

    #[test]
    fn sizes() {
        assert!(check_declared_length(Some("100"), 100).is_ok());
        assert!(check_declared_length(None, 100).is_ok());
        let a = check_declared_length(Some("101"), 100).unwrap_err();
        assert_eq!((a.status, code(&a)), (413, "payload_too_large".to_string()));
        assert!(check_size(100, 100).is_ok());
        assert_eq!(check_size(101, 100).unwrap_err().status, 413);
    }

    #[test]
    fn builds_the_settler_request_from_config_prices() {
        let cfg = cfg();
        let route = cfg.routes.get(0).unwrap();
        let body = token_request_body(
            &cfg,
            route,
            br#"{"version":"Version 0.1","permit":{"value":1}}"#,
            None,
        )
        .unwrap();
        let req: TokenRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(req.requirement.route, "weather");
        assert_eq!(req.requirement.accepts, route.accepts);
        assert_eq!(req.requirement.token_ttl_secs, 300);
        assert_eq!(
            req.payment.get(),
            r#"{"version":"Version 0.1","permit":{"value":1}}"#
        );
        for bad in [&b"not json"[..], b"", b"[1]", b"\"s\"", b"{\"a\":1} x"] {
            let a = token_request_body(&cfg, route, bad, None).unwrap_err();
            assert_eq!(
                (a.status, code(&a)),
                (400, "invalid_json".to_string()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let h = settler_headers(&cfg, &cfg.settler.path);
        assert!(h.contains(&(":path", "/v1/tokens")));
        assert!(h.contains(&(":authority", "x402-settler")));
        assert!(!h.iter().any(|(n, _)| *n == "authorization"));
    }

    #[test]
    fn settler_calls_carry_the_api_secret() {
        let mut v = crate::test_fixtures::sample();
        v["settler"]["api_secret"] = serde_json::json!("0123456789abcdef-secret");
        let cfg = crate::config::parse(serde_json::to_string(&v).unwrap().as_bytes()).unwrap();
        let h = settler_headers(&cfg, &cfg.settler.path);
        let auth: Vec<_> = h.iter().filter(|(n, _)| *n == "authorization").collect();
        assert_eq!(auth, [&("authorization", "Bearer 0123456789abcdef-secret")]);
    }

    #[test]
    fn relays_the_settler_or_fails_closed() {
        let ok = SettlerReply {
            status: Some(200),
            content_type: Some("application/json".into()),
            body: b"{\"access_token\":\"t\"}".to_vec(),
        };
        let a = relay(&ok);
        assert_eq!(a.status, 200);
        assert_eq!(a.body, ok.body);
        assert_eq!(a.header("cache-control"), Some("no-store"));
        let refused = SettlerReply {
            status: Some(409),
            content_type: None,
            body: b"{\"error\":\"replay\"}".to_vec(),
        };
        assert_eq!(relay(&refused).status, 409);
        assert_eq!(
            relay(&refused).header("content-type"),
            Some("application/json")
        );
        let err_with_body = SettlerReply {
            status: Some(500),
            content_type: None,
            body: br#"{"error":"internal","message":"db down"}"#.to_vec(),
        };
        assert_eq!(
            relay(&err_with_body).status,
            500,
            "the settler's own JSON error is relayed"
        );
        for outage in [
            SettlerReply::default(),
            SettlerReply { status: Some(503), content_type: None, body: vec![] },
            SettlerReply { status: Some(502), content_type: None, body: b" \n".to_vec() },
            SettlerReply { status: Some(0), content_type: None, body: b"x".to_vec() },
            // What Envoy answers for a dead settler.
            SettlerReply {
                status: Some(503),
                content_type: Some("text/plain".into()),
                body: b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure".to_vec(),
            },
            SettlerReply { status: Some(504), content_type: None, body: b"upstream request timeout".to_vec() },
        ] {
            let a = relay(&outage);
            assert_eq!((a.status, code(&a)), (503, "settler_unavailable".to_string()), "{outage:?}");
        }
        // No gateway or settler text in a public outage message.
        let a = relay(&SettlerReply {
            status: Some(503),
            content_type: Some("text/plain".into()),
            body: b"upstream connect error: 10.0.3.7:8402 connection refused".to_vec(),
        });
        assert!(!String::from_utf8_lossy(&a.body).contains("10.0.3.7"));
        // A redirect is no answer.
        let a = relay(&SettlerReply {
            status: Some(302),
            content_type: None,
            body: vec![],
        });
        assert_eq!(
            (a.status, code(&a)),
            (503, "settler_unavailable".to_string())
        );
        let r = SettlerReply::from_headers(
            &[
                (":status".into(), "201".into()),
                ("Content-Type".into(), "text/plain".into()),
            ],
            vec![],
        );
        assert_eq!(r.status, Some(201));
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn settler_errors_are_reduced_to_what_clients_need() {
        let reply = |status: u32, body: &str| SettlerReply {
            status: Some(status),
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec(),
        };
        // Only error, message, expected_nonce, settlement_id, state survive.
        let a = relay(&reply(
            409,
            r#"{"error":"nonce_mismatch","message":"sign nonce 3","expected_nonce":"3","db":"postgres://x402@db","trace":["a"]}"#,
        ));
        assert_eq!(a.status, 409);
        assert_eq!(a.header("content-type"), Some("application/json"));
        assert_eq!(a.header("cache-control"), Some("no-store"));
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "nonce_mismatch", "message": "sign nonce 3", "expected_nonce": "3"})
        );
        let a = relay(&reply(
            409,
            r#"{"error":"payment_already_used","message":"m","settlement_id":"0a1b-2c","state":"pending","extra":1}"#,
        ));
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "payment_already_used", "message": "m", "settlement_id": "0a1b-2c", "state": "pending"})
        );
        // Malformed extras are dropped, control characters blanked, long messages cut.
        let long = "x".repeat(5000);
        let a = relay(&reply(
            400,
            &format!(
                r#"{{"error":"invalid_payment","message":"a\u0007b{long}","expected_nonce":"0x3","settlement_id":"a b","state":"weird"}}"#
            ),
        ));
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        let m = v["message"].as_str().unwrap();
        assert!(
            m.starts_with("a b") && m.chars().count() == MAX_PUBLIC_MESSAGE,
            "{m:?}"
        );
        // Not the settler's error shape: a generic refusal with the status.
        for body in [
            "plain text",
            r#"{"error":"Bad Code!"}"#,
            r#"{"message":"no code"}"#,
            "[]",
        ] {
            let a = relay(&reply(422, body));
            assert_eq!(
                (a.status, code(&a)),
                (422, "payment_rejected".to_string()),
                "{body}"
            );
            assert!(!String::from_utf8_lossy(&a.body).contains("no code"));
        }
        // A 5xx in the settler's shape is relayed (reduced), one without it is an outage.
        let a = relay(&reply(
            503,
            r#"{"error":"store_unavailable","message":"the payment store is unavailable","cause":"sqlite locked"}"#,
        ));
        assert_eq!(a.status, 503);
        assert!(!String::from_utf8_lossy(&a.body).contains("sqlite"));
        assert_eq!(code(&a), "store_unavailable");
        assert!(!reply(503, r#"{"error":"store_unavailable","message":"m"}"#).is_unreachable());
        assert!(reply(503, "no healthy upstream").is_unreachable());
        assert!(reply(504, "upstream request timeout").is_unreachable());
        assert!(SettlerReply::default().is_unreachable());
        assert!(
            !reply(500, "").is_unreachable(),
            "Envoy does not answer 500 for a dead settler"
        );
    }
}
