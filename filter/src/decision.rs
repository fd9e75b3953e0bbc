//! What to do with a request on a priced route, and with the settler's answer to an x402 v2
//! payment. Pure functions returning actions; `host.rs` carries them out.

use std::rc::Rc;

use serde::Deserialize;
use x402_protocol::challenge::Reason;
use x402_protocol::x402v2::SettleResponse;

use crate::answer::HttpAnswer;
use crate::auth::{self, TokenCheck};
use crate::config::{FailureMode, FilterConfig};
use crate::grant::Grant;
use crate::policy::{Settlement, HOLD_SECS};
use crate::routes::Route;
use crate::token_endpoint::{
    outage_message, public_outage_message, settler_unavailable, token_request_body_with,
    SettlerExtras, SettlerReply,
};

/// The decision for a request that matched a priced route.
#[derive(Debug, PartialEq, Eq)]
pub enum PricedAction {
    /// A valid token pays for this route: forward upstream.
    Allow(Rc<Grant>),
    /// Answer 402 with this reason.
    Challenge(Reason),
    /// x402 v2: send this body to the settler, hold the request until it answers.
    Pay(Vec<u8>),
    /// x402 v2 payment header present but unusable: 402 with this error code and message.
    RefusePayment { code: String, message: String },
}

/// Decides for a priced route. A valid token always wins (a payment is never taken twice);
/// otherwise a `PAYMENT-SIGNATURE` goes to the settler; otherwise 402 with the token's reason.
pub fn decide_priced(
    cfg: &FilterConfig,
    route: &Route,
    token: TokenCheck,
    payment_signature: Option<&str>,
    resource_url: &str,
) -> PricedAction {
    let reason = match token.result {
        Ok(grant) => return PricedAction::Allow(grant),
        Err(reason) => reason,
    };
    let Some(sig) = payment_signature.map(str::trim).filter(|s| !s.is_empty()) else {
        return PricedAction::Challenge(reason);
    };
    let refuse = |message: &str| PricedAction::RefusePayment {
        code: "invalid_payment_signature".into(),
        message: message.into(),
    };
    let Some(json) = x402_protocol::b64::decode(sig) else {
        return refuse("PAYMENT-SIGNATURE is not base64");
    };
    // Held for the upstream's answer unless the route charges whatever it is, or settles
    // before the upstream is called at all.
    let hold = !route.charge_on_upstream_error && route.settlement == Settlement::Async;
    let extras = SettlerExtras {
        payment_id: None,
        hold_secs: hold.then_some(HOLD_SECS),
    };
    match token_request_body_with(cfg, route, &json, Some(resource_url.to_string()), extras) {
        Ok(body) => PricedAction::Pay(body),
        Err(_) => refuse("PAYMENT-SIGNATURE is not a base64 JSON object"),
    }
}

/// The settler's success body, as much of it as the edge needs.
#[derive(Debug, Deserialize)]
struct Minted {
    access_token: String,
    #[serde(default)]
    payer: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    transaction: Option<String>,
    #[serde(default)]
    settlement_id: Option<String>,
}

/// What the settler said about a settled x402 v2 payment, for the edge's own use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub access_token: String,
    pub payer: Option<String>,
    pub settlement_id: Option<String>,
    /// The payer, checksummed, and the network, as `PAYMENT-RESPONSE` names them.
    pub receipt_payer: String,
    pub network: String,
}

/// What to do once the settler answered an x402 v2 payment.
#[derive(Debug, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Paid: forward upstream and add these headers to the response.
    Resume {
        response_headers: Vec<(&'static str, String)>,
        settled: Settled,
    },
    /// The settler refused the payment: 402 with its error.
    Refuse { code: String, message: String },
    /// No usable answer (settler unreachable under `failure_mode: deny`, a settler 5xx, an
    /// unreadable answer): 503; the `String` says why, for the log.
    Unavailable(HttpAnswer, String),
    /// Settler unreachable, route `failure_mode: allow`: forward unpaid (log why).
    FailOpen(String),
}

/// What the settler's `reply` to an x402 v2 payment means on a route with `failure_mode`.
/// `allow` opens the route only when the settler could not be reached
/// ([`SettlerReply::is_unreachable`]); whatever the settler answered is never a reason to
/// let a request through unpaid: a refusal (4xx) is a 402, a 5xx (its store or chain
/// unavailable, an internal error) or an unreadable answer is a 503.
pub fn payment_outcome(reply: &SettlerReply, failure_mode: FailureMode) -> PaymentOutcome {
    if reply.is_unreachable() {
        let why = outage_message(reply);
        return match failure_mode {
            FailureMode::Deny => {
                PaymentOutcome::Unavailable(settler_unavailable(&public_outage_message(reply)), why)
            }
            FailureMode::Allow => PaymentOutcome::FailOpen(why),
        };
    }
    let deny = |why: String| {
        PaymentOutcome::Unavailable(settler_unavailable(&public_outage_message(reply)), why)
    };
    let status = reply.status.unwrap_or(0);
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<Minted>(&reply.body) {
            Ok(m)
                if !m.access_token.is_empty()
                    && !m.access_token.bytes().any(|b| b < b' ' || b == 0x7f) =>
            {
                // Checksummed, as wallets print it and as `x-x402-payer` carries it.
                let payer = m.payer.as_deref().map(|p| {
                    p.parse::<x402_protocol::Address>()
                        .map(|a| a.to_checksum(None))
                        .unwrap_or_else(|_| p.to_string())
                });
                let settlement_id = m.settlement_id.as_deref().filter(|id| {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                let transaction = m.transaction.clone().unwrap_or_default();
                let receipt = SettleResponse {
                    success: true,
                    error_reason: None,
                    error_message: None,
                    payer: Some(payer.clone().unwrap_or_default()),
                    network: m.network.clone().unwrap_or_default(),
                    extra: Some(receipt_extra(
                        settlement_id,
                        if transaction.is_empty() {
                            "pending"
                        } else {
                            "submitted"
                        },
                    )),
                    transaction,
                };
                // Serialising plain strings and bools cannot fail; an empty header if it did.
                let json = serde_json::to_vec(&receipt).unwrap_or_default();
                let encoded = x402_protocol::b64::encode(&json);
                let mut response_headers = vec![
                    ("payment-response", encoded),
                    ("x-x402-access-token", m.access_token.clone()),
                ];
                // Settlement is asynchronous (`transaction` is empty until broadcast): this id
                // lets the client follow it.
                if let Some(id) = settlement_id {
                    response_headers.push(("x-x402-settlement-id", id.to_string()));
                }
                PaymentOutcome::Resume {
                    response_headers,
                    settled: Settled {
                        access_token: m.access_token,
                        payer: m.payer,
                        settlement_id: settlement_id.map(str::to_string),
                        receipt_payer: payer.unwrap_or_default(),
                        network: m.network.unwrap_or_default(),
                    },
                }
            }
            _ => deny(format!(
                "the settler answered {status} with an unreadable body"
            )),
        };
    }
    if (400..500).contains(&status) {
        let (code, message) = match reply.settler_error() {
            Some(e) => (e.error, e.message),
            None => (
                "payment_rejected".to_string(),
                format!("the settler refused the payment ({status})"),
            ),
        };
        return PaymentOutcome::Refuse { code, message };
    }
    if (500..600).contains(&status) {
        if let Some(e) = reply.settler_error() {
            // The settler's own error (store or chain unavailable, ...): its code and
            // message, reduced, with 503.
            let why = format!("the settler answered {status} {}", e.error);
            return PaymentOutcome::Unavailable(HttpAnswer::error(503, &e.error, &e.message), why);
        }
    }
    // 1xx, 3xx, a 5xx that is neither the settler's JSON nor a gateway error: the
    // payment's fate is unknown.
    deny(outage_message(reply))
}

/// `PAYMENT-RESPONSE`'s `extra`: the settlement id to follow at the settler's
/// `GET /v1/settlements/{id}` and where the settlement stands (`pending`, `submitted`,
/// `settled`, `voided`, `unknown`).
pub fn receipt_extra(settlement_id: Option<&str>, settlement: &str) -> serde_json::Value {
    let mut extra = serde_json::Map::new();
    if let Some(id) = settlement_id {
        extra.insert("settlementId".into(), id.into());
    }
    extra.insert("settlement".into(), settlement.into());
    serde_json::Value::Object(extra)
}

/// The upstream's identity headers for a payment the settler settled, given the
/// [`auth::verdict`] on the minted token (the flow takes it through the worker's cache and
/// the shared table, which it seeds).
///
/// The token is verified like any bearer token (signature, time window, route) even though
/// it came over the trusted settler cluster: a settler signing with a key the edge does not
/// list (rotation half done, the wrong settler behind the cluster) must not seed the caches
/// with a token every other edge would refuse. It costs one signature check during the
/// exchange, which waits for the settler anyway; the client's reuse as `Authorization:
/// Bearer`, on any worker, then checks no signature. The headers then come from its claims.
/// If it does not check out, the payment is settled all the same: the request goes
/// through, the reason is returned for a warning, nothing is cached, and the headers come
/// from the settler's `payer` and `settlement_id` fields.
pub fn settled_identity(
    route: &Route,
    settled: &Settled,
    verdict: Result<Rc<Grant>, Reason>,
) -> (Vec<(&'static str, String)>, Option<Reason>) {
    match verdict.and_then(|g| auth::authorize(route, &g).map(|_| g)) {
        Ok(grant) => (crate::identity::from_grant(&route.name, &grant), None),
        Err(reason) => (
            crate::identity::from_settler_body(
                &route.name,
                settled.payer.as_deref(),
                settled.settlement_id.as_deref(),
            ),
            Some(reason),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use x402_protocol::settler_api::TokenRequest;

    use crate::test_fixtures::sample_config as cfg;

    fn grant() -> Rc<Grant> {
        Rc::new(Grant::new(
            "weather".into(),
            x402_protocol::Network::eip155(84532),
            x402_protocol::Address::ZERO,
            x402_protocol::U256::from(1u64),
            x402_protocol::Address::ZERO,
            0,
            "s-1".into(),
        ))
    }

    #[test]
    fn valid_token_wins_over_payment() {
        let cfg = cfg();
        let route = cfg.routes.get(0).unwrap();
        let sig = x402_protocol::b64::encode(b"{\"x402Version\":2}");
        let t = TokenCheck {
            result: Ok(grant()),
            source: Some(auth::Source::Cache),
        };
        assert_eq!(
            decide_priced(&cfg, route, t, Some(&sig), "u"),
            PricedAction::Allow(grant())
        );
    }

    #[test]
    fn no_token_no_payment_is_a_challenge() {
        let cfg = cfg();
        let route = cfg.routes.get(0).unwrap();
        let t = TokenCheck {
            result: Err(Reason::Expired),
            source: Some(auth::Source::Cache),
        };
        assert_eq!(
            decide_priced(&cfg, route, t.clone(), None, "u"),
            PricedAction::Challenge(Reason::Expired)
        );
        assert_eq!(
            decide_priced(&cfg, route, t, Some("  "), "u"),
            PricedAction::Challenge(Reason::Expired)
        );
    }

    #[test]
    fn payment_signature_goes_to_the_settler() {
        let cfg = cfg();
        let route = cfg.routes.get(0).unwrap();
        let sig = x402_protocol::b64::encode(br#"{"x402Version":2,"payload":{}}"#);
        let t = TokenCheck {
            result: Err(Reason::MissingToken),
            source: None,
        };
        match decide_priced(&cfg, route, t, Some(&sig), "http://h/api/weather") {
            PricedAction::Pay(body) => {
                let req: TokenRequest = serde_json::from_slice(&body).unwrap();
                assert_eq!(req.requirement.route, "weather");
                assert_eq!(
                    req.requirement.resource.as_deref(),
                    Some("http://h/api/weather")
                );
                assert_eq!(req.payment.get(), r#"{"x402Version":2,"payload":{}}"#);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "%%%".to_string(),
            x402_protocol::b64::encode(b"not json"),
            x402_protocol::b64::encode(b"[1]"),
        ] {
            let t = TokenCheck {
                result: Err(Reason::MissingToken),
                source: None,
            };
            assert!(
                matches!(
                    decide_priced(&cfg, route, t, Some(&bad), "u"),
                    PricedAction::RefusePayment { .. }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn settled_tokens_are_checked_once_and_cached() {
        use crate::auth::{verdict, Source, Unshared};
        use crate::cache::TokenCache;
        use crate::identity::{PAYER, ROUTE, SETTLEMENT_ID};
        use crate::test_fixtures::{claims, signing_key};
        use x402_protocol::token::mint;
        let cfg = cfg();
        let route = cfg.routes.get(0).unwrap();
        let now = 1_800_000_000;
        let mut cache = TokenCache::new(10);
        let token = mint(&signing_key(), "k1", claims("weather", 10_000), now, 300);
        let settled = Settled {
            access_token: token.clone(),
            payer: Some("0x0000000000000000000000000000000000000001".into()),
            settlement_id: Some("from-body".into()),
            receipt_payer: String::new(),
            network: String::new(),
        };
        let check =
            |cache: &mut TokenCache, t: &str| verdict(&cfg.keys, 5, cache, &Unshared, t, now);
        let (v, source) = check(&mut cache, &token);
        assert_eq!(source, Source::Signature);
        let (h, why) = settled_identity(route, &settled, v);
        assert_eq!(why, None);
        let payer = x402_protocol::Address::repeat_byte(0x11).to_checksum(None);
        assert_eq!(
            h,
            [
                (PAYER, payer),
                (ROUTE, "weather".to_string()),
                (SETTLEMENT_ID, "s-1".to_string())
            ],
            "from the verified claims, not the body"
        );
        assert_eq!(cache.len(), 1);
        // The client's reuse is a cache hit.
        let c = auth::check_token(
            &cfg.keys,
            5,
            &mut cache,
            &Unshared,
            route,
            Some(&format!("Bearer {token}")),
            now + 1,
        );
        assert_eq!(c.source, Some(Source::Cache));
        assert!(c.result.is_ok());

        // A token the edge cannot verify: headers from the body, nothing cached.
        let mut cache = TokenCache::new(10);
        let foreign = mint(&signing_key(), "k9", claims("weather", 10_000), now, 300);
        let settled = Settled {
            access_token: foreign.clone(),
            ..settled
        };
        let (h, why) = settled_identity(route, &settled, check(&mut cache, &foreign).0);
        assert_eq!(why, Some(Reason::UnknownKey));
        assert_eq!(
            h,
            [
                (
                    PAYER,
                    "0x0000000000000000000000000000000000000001".to_string()
                ),
                (ROUTE, "weather".to_string()),
                (SETTLEMENT_ID, "from-body".to_string())
            ]
        );
        assert!(cache.is_empty());
        // A verified token for another route is cached but refused for this one.
        let other = mint(&signing_key(), "k1", claims("report", 2_000_000), now, 300);
        let settled = Settled {
            access_token: other.clone(),
            ..settled
        };
        let (_, why) = settled_identity(route, &settled, check(&mut cache, &other).0);
        assert_eq!(why, Some(Reason::WrongRoute));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn settler_answers_to_a_payment() {
        let ok = SettlerReply {
            status: Some(200),
            content_type: None,
            body: br#"{"access_token":"tok","token_type":"Bearer","expires_in":300,"payer":"0xabc","network":"eip155:84532","settlement_id":"s-9"}"#.to_vec(),
        };
        match payment_outcome(&ok, FailureMode::Deny) {
            PaymentOutcome::Resume {
                response_headers,
                settled,
            } => {
                assert_eq!(
                    settled,
                    Settled {
                        access_token: "tok".into(),
                        payer: Some("0xabc".into()),
                        settlement_id: Some("s-9".into()),
                        receipt_payer: "0xabc".into(),
                        network: "eip155:84532".into(),
                    }
                );
                let pr = &response_headers
                    .iter()
                    .find(|(n, _)| *n == "payment-response")
                    .unwrap()
                    .1;
                let v: Value =
                    serde_json::from_slice(&x402_protocol::b64::decode(pr).unwrap()).unwrap();
                assert_eq!(
                    v,
                    serde_json::json!({"success": true, "transaction": "", "network": "eip155:84532", "payer": "0xabc",
                        "extra": {"settlementId": "s-9", "settlement": "pending"}})
                );
                assert!(response_headers.contains(&("x-x402-access-token", "tok".to_string())));
            }
            other => panic!("{other:?}"),
        }
        let refused = SettlerReply {
            status: Some(402),
            content_type: None,
            body: br#"{"error":"invalid_signature","message":"no"}"#.to_vec(),
        };
        assert_eq!(
            payment_outcome(&refused, FailureMode::Allow),
            PaymentOutcome::Refuse {
                code: "invalid_signature".into(),
                message: "no".into()
            }
        );
        let refused_plain = SettlerReply {
            status: Some(409),
            content_type: None,
            body: b"replay".to_vec(),
        };
        assert!(
            matches!(payment_outcome(&refused_plain, FailureMode::Deny), PaymentOutcome::Refuse { code, .. } if code == "payment_rejected")
        );
        // Unreachable: no answer, or Envoy's own gateway answer for a settler it cannot
        // reach. Only these open an `allow` route.
        let reply = |status: u32, body: &[u8]| SettlerReply {
            status: Some(status),
            content_type: None,
            body: body.to_vec(),
        };
        for unreachable in [
            SettlerReply::default(),
            reply(503, b""),
            reply(503, b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"),
            reply(503, b"no healthy upstream"),
            reply(504, b"upstream request timeout"),
            reply(502, b"<html>bad gateway</html>"),
        ] {
            match payment_outcome(&unreachable, FailureMode::Deny) {
                PaymentOutcome::Unavailable(a, _) => {
                    assert_eq!(a.status, 503);
                    let v: Value = serde_json::from_slice(&a.body).unwrap();
                    assert_eq!(v["error"], "settler_unavailable");
                    assert!(
                        !v["message"].as_str().unwrap().contains("upstream"),
                        "no gateway text for the public: {v}"
                    );
                }
                other => panic!("{unreachable:?}: {other:?}"),
            }
            assert!(
                matches!(
                    payment_outcome(&unreachable, FailureMode::Allow),
                    PaymentOutcome::FailOpen(_)
                ),
                "{unreachable:?}"
            );
        }
        // Answered by the settler (or unreadable): 503 under both modes, never open.
        for answered in [
            reply(503, br#"{"error":"store_unavailable","message":"the payment store is unavailable","detail":"pg: connection refused"}"#),
            reply(500, br#"{"error":"internal","message":"internal error"}"#),
            reply(504, br#"{"error":"accept_deadline_exceeded","message":"try again"}"#),
            reply(500, b""),
            reply(500, b"{\"error\":\"db\"}"),
            reply(501, b"not implemented"),
            reply(200, b"{}"),
            reply(302, b""),
            reply(0, b"x"),
        ] {
            for mode in [FailureMode::Deny, FailureMode::Allow] {
                match payment_outcome(&answered, mode) {
                    PaymentOutcome::Unavailable(a, _) => {
                        assert_eq!(a.status, 503, "{answered:?}");
                        let v: Value = serde_json::from_slice(&a.body).unwrap();
                        assert!(v.get("detail").is_none(), "reduced: {v}");
                    }
                    other => panic!("{answered:?} {mode:?}: {other:?}"),
                }
            }
        }
        // The settler's own 5xx code reaches the client, without its other fields.
        match payment_outcome(
            &reply(503, br#"{"error":"store_unavailable","message":"the payment store is unavailable","detail":"pg"}"#),
            FailureMode::Allow,
        ) {
            PaymentOutcome::Unavailable(a, _) => {
                let v: Value = serde_json::from_slice(&a.body).unwrap();
                assert_eq!(
                    v,
                    serde_json::json!({"error": "store_unavailable", "message": "the payment store is unavailable"})
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
