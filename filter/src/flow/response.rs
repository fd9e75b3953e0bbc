//! After the settler accepted an x402 v2 payment: the calls that finish it and what the
//! client's response then says.
//!
//! - Held payment (routes without `charge_on_upstream_error`): once the upstream's response
//!   headers arrive, the response waits for `POST /v1/settlements/{id}/release` (status
//!   below 400) or `/void` (400 or more); a voided payment is never broadcast, and the
//!   response says so (`PAYMENT-RESPONSE` `success: false`, `x-x402-settlement: voided`, no
//!   access token). If the settler cannot be told, the hold expires and the payment is voided:
//!   the response then says `x-x402-settlement: unknown` (follow the settlement id).
//! - `settlement: before_response`: the request waits for
//!   `GET /v1/settlements/{id}?wait_ms=` until the settlement is mined, then goes upstream
//!   with `PAYMENT-RESPONSE` carrying the transaction hash.

use serde::Deserialize;
use x402_protocol::settler_api::{ApiError, HoldOutcome, SettlementState};
use x402_protocol::x402v2::SettleResponse;

use crate::answer::HttpAnswer;
use crate::config::FilterConfig;
use crate::decision::{receipt_extra, Settled};
use crate::token_endpoint::SettlerReply;

/// How long a `before_response` request waits for its settlement (the settler's longest
/// `wait_ms`).
pub(crate) const WAIT_MS: u64 = 20_000;

/// The settler's settlements path for settlement `id`.
fn settlement_path(id: &str) -> String {
    format!("/v1/settlements/{id}")
}

/// Path and body of the call telling the settler what the upstream answered: release below
/// 400, void from 400 on.
pub(crate) fn hold_call(id: &str, upstream_status: u16) -> (String, Vec<u8>) {
    let verb = if upstream_status < 400 {
        "release"
    } else {
        "void"
    };
    let body = serde_json::to_vec(&HoldOutcome {
        upstream_status: Some(upstream_status),
    })
    .unwrap_or_default();
    (format!("{}/{verb}", settlement_path(id)), body)
}

/// Path of the wait for settlement `id` to be mined.
pub(crate) fn wait_path(id: &str) -> String {
    format!("{}?wait_ms={WAIT_MS}", settlement_path(id))
}

/// Headers of a settler call other than the token POST: `method` on `path`, with the
/// gateway's secret.
pub(crate) fn settler_call_headers<'a>(
    cfg: &'a FilterConfig,
    method: &'a str,
    path: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        (":method", method),
        (":path", path),
        (":authority", cfg.settler.authority.as_str()),
        ("accept", "application/json"),
    ];
    if method == "POST" {
        h.push(("content-type", "application/json"));
    }
    if let Some(auth) = &cfg.settler.auth {
        h.push(("authorization", auth.header_value()));
    }
    h
}

/// The part of the settler's `SettlementStatus` the edge reads.
#[derive(Debug, Deserialize)]
struct Status {
    state: SettlementState,
    #[serde(default)]
    transfer_tx: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// What became of a held payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldVerdict {
    /// Released (or released before): it is charged.
    Charged,
    /// Voided (now or before): never charged.
    Voided,
    /// No usable answer: the hold expires and voids it unless a release got through.
    Unknown,
}

/// The settler's answer to a release or void.
pub(crate) fn hold_verdict(reply: &SettlerReply) -> HoldVerdict {
    let state = match reply.status {
        Some(200) => serde_json::from_slice::<Status>(&reply.body)
            .ok()
            .map(|s| s.state),
        // Not held (any more): the state says which way it went.
        Some(409) => serde_json::from_slice::<ApiError>(&reply.body)
            .ok()
            .filter(|e| e.error == "settlement_not_held")
            .and_then(|e| e.state),
        _ => None,
    };
    match state {
        Some(SettlementState::Failed) => HoldVerdict::Voided,
        Some(_) => HoldVerdict::Charged,
        None => HoldVerdict::Unknown,
    }
}

fn receipt(settled: &Settled, r: SettleResponse) -> (&'static str, String) {
    let json = serde_json::to_vec(&SettleResponse {
        payer: Some(settled.receipt_payer.clone()),
        network: settled.network.clone(),
        ..r
    })
    .unwrap_or_default();
    ("payment-response", x402_protocol::b64::encode(&json))
}

fn id_headers(settled: &Settled, settlement: &str) -> Vec<(&'static str, String)> {
    let mut h = vec![("x-x402-settlement", settlement.to_string())];
    if let Some(id) = &settled.settlement_id {
        h.push(("x-x402-settlement-id", id.clone()));
    }
    h
}

/// The response headers of a request whose held payment was voided (or may have been):
/// no access token, a `PAYMENT-RESPONSE` saying nothing was charged.
pub(crate) fn uncharged_headers(
    settled: &Settled,
    verdict: HoldVerdict,
    upstream_status: u16,
) -> Vec<(&'static str, String)> {
    let (settlement, reason, message) = match verdict {
        HoldVerdict::Unknown => (
            "unknown",
            "settlement_unknown",
            format!("the upstream answered {upstream_status} and the settler could not be told: the payment is voided when its hold expires unless its release got through; follow the settlement id"),
        ),
        _ => (
            "voided",
            "upstream_error_not_charged",
            format!("the upstream answered {upstream_status}: the payment was voided and is not charged"),
        ),
    };
    let mut h = vec![receipt(
        settled,
        SettleResponse {
            success: false,
            error_reason: Some(reason.into()),
            error_message: Some(message),
            payer: None,
            transaction: String::new(),
            network: String::new(),
            extra: Some(receipt_extra(settled.settlement_id.as_deref(), settlement)),
        },
    )];
    h.extend(id_headers(settled, settlement));
    h
}

/// What the wait for a `before_response` settlement came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Mined {
    /// Mined: forward, and answer with these response headers.
    Settled(Vec<(&'static str, String)>),
    /// It failed: 402 with this code and message.
    Failed { code: String, message: String },
    /// Not final in time, or no usable answer: answer this (the payment may still settle).
    NotYet(HttpAnswer, String),
}

/// The settler's answer to the wait for settlement of `settled`.
pub(crate) fn mined(reply: &SettlerReply, settled: &Settled) -> Mined {
    let status = match reply.status {
        Some(200) => serde_json::from_slice::<Status>(&reply.body).ok(),
        _ => None,
    };
    let id = settled.settlement_id.clone().unwrap_or_default();
    match status {
        Some(Status {
            state: SettlementState::Settled,
            transfer_tx,
            ..
        }) => {
            let mut h = vec![
                receipt(
                    settled,
                    SettleResponse {
                        success: true,
                        error_reason: None,
                        error_message: None,
                        payer: None,
                        transaction: transfer_tx.unwrap_or_default(),
                        network: String::new(),
                        extra: Some(receipt_extra(settled.settlement_id.as_deref(), "settled")),
                    },
                ),
                ("x-x402-access-token", settled.access_token.clone()),
            ];
            h.extend(id_headers(settled, "settled"));
            Mined::Settled(h)
        }
        Some(Status {
            state: SettlementState::Failed,
            error,
            ..
        }) => Mined::Failed {
            code: "payment_failed".into(),
            message: format!(
                "settlement {id} failed: {}",
                error.as_deref().unwrap_or("no reason given")
            ),
        },
        other => {
            let why = match other {
                Some(s) => format!("settlement {id} still {:?} after {WAIT_MS} ms", s.state),
                None => format!(
                    "waiting for settlement {id}: the settler answered {:?}",
                    reply.status
                ),
            };
            let mut a = HttpAnswer::error(
                504,
                "settlement_timeout",
                &format!("the payment was accepted but its settlement was not mined in time; it may still settle: follow GET /v1/settlements/{id}"),
            );
            if settled.settlement_id.is_some() {
                a.headers.push(("x-x402-settlement-id", id));
            }
            Mined::NotYet(a, why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled() -> Settled {
        Settled {
            access_token: "tok".into(),
            payer: Some("0xabc".into()),
            settlement_id: Some("s-1".into()),
            receipt_payer: "0xAbC".into(),
            network: "eip155:31337".into(),
        }
    }

    fn reply(status: u32, body: &str) -> SettlerReply {
        SettlerReply {
            status: Some(status),
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec(),
        }
    }

    fn decode(h: &[(&'static str, String)]) -> serde_json::Value {
        let v = &h.iter().find(|(n, _)| *n == "payment-response").unwrap().1;
        serde_json::from_slice(&x402_protocol::b64::decode(v).unwrap()).unwrap()
    }

    #[test]
    fn release_below_400_void_from_400() {
        assert_eq!(hold_call("s-1", 204).0, "/v1/settlements/s-1/release");
        assert_eq!(hold_call("s-1", 399).0, "/v1/settlements/s-1/release");
        let (path, body) = hold_call("s-1", 500);
        assert_eq!(path, "/v1/settlements/s-1/void");
        assert_eq!(body, br#"{"upstream_status":500}"#);
    }

    #[test]
    fn verdicts_follow_the_settlers_state() {
        assert_eq!(
            hold_verdict(&reply(200, r#"{"state":"pending"}"#)),
            HoldVerdict::Charged
        );
        assert_eq!(
            hold_verdict(&reply(200, r#"{"state":"failed"}"#)),
            HoldVerdict::Voided
        );
        let not_held = |state: &str| {
            reply(
                409,
                &format!(r#"{{"error":"settlement_not_held","message":"m","state":"{state}"}}"#),
            )
        };
        assert_eq!(hold_verdict(&not_held("failed")), HoldVerdict::Voided);
        assert_eq!(hold_verdict(&not_held("settled")), HoldVerdict::Charged);
        assert_eq!(hold_verdict(&reply(503, "{}")), HoldVerdict::Unknown);
        assert_eq!(hold_verdict(&SettlerReply::default()), HoldVerdict::Unknown);
    }

    #[test]
    fn a_voided_response_says_so_without_a_token() {
        let h = uncharged_headers(&settled(), HoldVerdict::Voided, 500);
        assert!(h.iter().all(|(n, _)| *n != "x-x402-access-token"));
        assert!(h.contains(&("x-x402-settlement", "voided".into())));
        let r = decode(&h);
        assert_eq!(r["success"], false);
        assert_eq!(r["errorReason"], "upstream_error_not_charged");
        assert_eq!(r["extra"]["settlementId"], "s-1");
        assert_eq!(r["payer"], "0xAbC");
        assert_eq!(r["network"], "eip155:31337");
    }

    #[test]
    fn mined_settlements_carry_the_transaction() {
        let m = mined(
            &reply(200, r#"{"state":"settled","transfer_tx":"0xfeed"}"#),
            &settled(),
        );
        let Mined::Settled(h) = m else {
            panic!("{m:?}")
        };
        let r = decode(&h);
        assert_eq!(
            (r["success"].clone(), r["transaction"].clone()),
            (true.into(), "0xfeed".into())
        );
        assert!(h.contains(&("x-x402-access-token", "tok".into())));
        assert!(matches!(
            mined(
                &reply(200, r#"{"state":"failed","error":"reverted"}"#),
                &settled()
            ),
            Mined::Failed { .. }
        ));
        let Mined::NotYet(a, _) = mined(&reply(200, r#"{"state":"submitted"}"#), &settled()) else {
            panic!()
        };
        assert_eq!(a.status, 504);
        assert_eq!(a.header("x-x402-settlement-id"), Some("s-1"));
    }
}
