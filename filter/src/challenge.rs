//! The 402 challenge for a request: the route's precomputed seed JSON body (see
//! [`crate::route_challenge`]) and the x402 v2 `PAYMENT-REQUIRED` header with the request's
//! resource URL.

use x402_protocol::challenge::{PaymentRequired, Reason, Resource};
use x402_protocol::settler_api::ApiError;

use crate::answer::HttpAnswer;
use crate::routes::Route;

/// The absolute URL of the requested resource for x402 v2 `resource.url`.
/// The scheme comes from `x-forwarded-proto` (first value), else `:scheme`, else `http`.
pub fn resource_url(
    forwarded_proto: Option<&str>,
    scheme: Option<&str>,
    authority: Option<&str>,
    path: &str,
) -> String {
    let proto = forwarded_proto
        .and_then(|p| p.split(',').next())
        .map(str::trim)
        .filter(|p| *p == "http" || *p == "https")
        .or(scheme.filter(|s| *s == "http" || *s == "https"))
        .unwrap_or("http");
    format!("{proto}://{}{path}", authority.unwrap_or(""))
}

fn resource(route: &Route, url: String) -> Resource {
    Resource {
        url,
        description: route.description.clone(),
        mime_type: route.mime_type.clone(),
    }
}

fn payment_required_header(route: &Route, error: String, url: String) -> String {
    let pr = PaymentRequired {
        x402_version: 2,
        error: Some(error),
        resource: resource(route, url),
        accepts: route.challenge.v2_accepts().to_vec(),
        extensions: Default::default(),
    };
    x402_protocol::b64::encode(&serde_json::to_vec(&pr).unwrap_or_default())
}

fn answer_402(header: String, body: Vec<u8>) -> HttpAnswer {
    let mut a = HttpAnswer::json(402, body);
    a.headers.push(("payment-required", header));
    a
}

/// The 402 for a request without a usable token.
pub fn challenge(route: &Route, reason: Reason, url: String) -> HttpAnswer {
    answer_402(
        payment_required_header(route, reason.message().to_string(), url),
        route.challenge.seed_body(reason).as_bytes().to_vec(),
    )
}

/// The 402 after the settler refused an x402 v2 payment (or the payment header was unusable):
/// the challenge again, with the refusal's code and message in `error` / `message`.
pub fn payment_refused(route: &Route, code: &str, message: &str, url: String) -> HttpAnswer {
    let base = route.challenge.seed_body(Reason::MissingToken);
    let body = match serde_json::from_str::<serde_json::Value>(base) {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("error".into(), code.into());
                o.insert("message".into(), message.into());
            }
            serde_json::to_vec(&v).unwrap_or_default()
        }
        Err(_) => ApiError::new(code, message).to_json().into_bytes(),
    };
    answer_402(payment_required_header(route, code.to_string(), url), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    use crate::test_fixtures::sample_config as cfg;

    #[test]
    fn resource_url_prefers_forwarded_proto() {
        assert_eq!(
            resource_url(Some("https, http"), Some("http"), Some("a.com"), "/p?q"),
            "https://a.com/p?q"
        );
        assert_eq!(
            resource_url(None, Some("https"), Some("a.com"), "/p"),
            "https://a.com/p"
        );
        assert_eq!(
            resource_url(Some("gopher"), None, Some("a.com"), "/p"),
            "http://a.com/p"
        );
    }

    #[test]
    fn challenge_has_seed_body_and_v2_header() {
        let cfg = cfg();
        let route = cfg.routes.get(0).unwrap();
        let a = challenge(route, Reason::Expired, "http://h/api/weather".into());
        assert_eq!(a.status, 402);
        assert_eq!(a.header("content-type"), Some("application/json"));
        assert_eq!(a.header("cache-control"), Some("no-store"));
        let body: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["reason"], "Token has expired");
        assert_eq!(body["error"], "expired");
        assert_eq!(body["route"], "weather");
        assert_eq!(body["access_token_endpoint"], "/x402/token/weather");
        assert_eq!(
            body["payment_scheme"]["payment_components"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            body["payment_scheme"]["payment_components"][0]["amount"].to_string(),
            "0.01"
        );
        let pr: PaymentRequired = serde_json::from_slice(
            &x402_protocol::b64::decode(a.header("payment-required").unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(pr.x402_version, 2);
        assert_eq!(pr.resource.url, "http://h/api/weather");
        assert_eq!(pr.resource.description, "Weather");
        assert_eq!(pr.resource.mime_type, "application/json");
        assert_eq!(pr.accepts.len(), 1, "only exact methods in v2");
        assert_eq!(pr.accepts[0].amount, "10000");
        assert_eq!(pr.accepts[0].max_timeout_seconds, 300);
        // Every reason has its own precomputed body.
        for r in Reason::ALL {
            let v: Value = serde_json::from_str(route.challenge.seed_body(r)).unwrap();
            assert_eq!(v["error"], r.code());
        }
    }

    /// x402-mock 0.1.x signs an EIP-2612 permit to the `metadata.wallet_address` of the first
    /// component whose token it knows; 0.3.x signs ERC-3009 to its `pay_to`. Whatever the
    /// configured order, the first component gives both the settler's spender and pay_to.
    #[test]
    fn seed_bodies_pay_the_spender_and_pay_to_in_either_order() {
        use crate::test_fixtures::{parse_config, sample, PAY_TO, SPENDER, USDC};
        for order in [["usdc-base", "usdc-permit"], ["usdc-permit", "usdc-base"]] {
            let mut c = sample();
            c["routes"][0]["payment_methods"] = serde_json::json!(order);
            let cfg = parse_config(&c);
            let route = cfg.routes.get(0).unwrap();
            for r in Reason::ALL {
                let v: Value = serde_json::from_str(route.challenge.seed_body(r)).unwrap();
                let first = v["payment_scheme"]["payment_components"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["token"] == USDC)
                    .unwrap();
                assert_eq!(first["metadata"]["wallet_address"], SPENDER, "{order:?}");
                assert_eq!(first["pay_to"], PAY_TO, "{order:?}");
                let expected = if order[0] == "usdc-base" {
                    "exact"
                } else {
                    "permit"
                };
                assert_eq!(first["scheme"], expected, "configured order kept");
            }
            // The report route takes no permit: its component names pay_to.
            let report = cfg.routes.get(1).unwrap();
            let v: Value =
                serde_json::from_str(report.challenge.seed_body(Reason::MissingToken)).unwrap();
            assert_eq!(
                v["payment_scheme"]["payment_components"][0]["metadata"]["wallet_address"],
                PAY_TO
            );
        }
    }

    #[test]
    fn refused_payment_carries_the_settler_error() {
        let cfg = cfg();
        let route = cfg.routes.get(0).unwrap();
        let a = payment_refused(route, "invalid_signature", "bad sig", "http://h/x".into());
        assert_eq!(a.status, 402);
        let body: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["error"], "invalid_signature");
        assert_eq!(body["message"], "bad sig");
        assert!(body["payment_scheme"].is_object());
        let pr: PaymentRequired = serde_json::from_slice(
            &x402_protocol::b64::decode(a.header("payment-required").unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(pr.error.as_deref(), Some("invalid_signature"));
    }
}
