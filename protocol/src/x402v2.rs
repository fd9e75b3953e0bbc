//! x402 v2 wire types: the `PAYMENT-SIGNATURE` payload, the facilitator's `/verify` and
//! `/settle` bodies and answers (the settle answer is also the `PAYMENT-RESPONSE` object), and
//! the `/supported` answer. camelCase on the wire, as the x402 reference implementation.
//!
//! The 402 side (`PaymentRequired`, `PaymentRequirements`, `Resource`, `AssetExtra`) lives in
//! [`crate::challenge`] and is re-exported here, so one module names the whole v2 vocabulary.
//! Integers of an authorization deserialise leniently (JSON integer, decimal or 0x-hex string)
//! and serialise as decimal strings; the nonce may be hex without leading zeros.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};

use crate::chain::Network;
pub use crate::challenge::{AssetExtra, PaymentRequired, PaymentRequirements, Resource};
use crate::payment::{parse_sig_hex, Authorization, ClientPayment, PaymentError};

/// The only protocol version these types describe.
pub const X402_VERSION: u32 = 2;

/// The scheme name of ERC-3009 `transferWithAuthorization` payments in x402.
pub const SCHEME_EXACT: &str = "exact";

/// `PAYMENT-SIGNATURE` content (base64 of this JSON) and a facilitator's `paymentPayload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    pub x402_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// The requirement the client chose (read for scheme, network and asset).
    pub accepted: PaymentRequirements,
    pub payload: ExactEvmPayload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The `exact` EVM payload: an ERC-3009 authorization and its 65-byte signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactEvmPayload {
    /// 0x hex of r || s || v.
    pub signature: String,
    pub authorization: ExactEvmAuthorization,
}

/// ERC-3009 `transferWithAuthorization` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExactEvmAuthorization {
    /// Written checksummed, as wallets (and the reference clients) write them.
    #[serde(serialize_with = "checksummed")]
    pub from: Address,
    #[serde(serialize_with = "checksummed")]
    pub to: Address,
    #[serde(with = "crate::u256_serde")]
    pub value: U256,
    #[serde(with = "crate::u256_serde")]
    pub valid_after: U256,
    #[serde(with = "crate::u256_serde")]
    pub valid_before: U256,
    #[serde(with = "word_serde")]
    pub nonce: B256,
}

fn checksummed<S: serde::Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_checksum(None))
}

/// The x402 extension whose `info.id` is the client's idempotency key for a payment.
pub const PAYMENT_IDENTIFIER: &str = "payment-identifier";

impl PaymentPayload {
    /// `extensions["payment-identifier"].info.id`, if the client sent one (not checked:
    /// see [`crate::settler_api::check_payment_id`]). Not signed and never on chain: it
    /// proves to be the original client, where the signature alone does not once it has
    /// been broadcast.
    pub fn payment_identifier(&self) -> Option<&str> {
        payment_identifier_of(self.extensions.as_ref()?)
    }

    /// The payment model the settler checks, from the network and asset of `accepted`.
    /// Same answers as [`crate::payment::parse_payment`] on the same JSON.
    pub fn to_client_payment(&self) -> Result<ClientPayment, PaymentError> {
        if self.accepted.scheme != SCHEME_EXACT {
            return Err(PaymentError::Unsupported(self.accepted.scheme.clone()));
        }
        let network: Network =
            self.accepted
                .network
                .parse()
                .map_err(|e: crate::chain::NetworkError| PaymentError::Field {
                    field: "accepted.network",
                    problem: e.to_string(),
                })?;
        let token: Address = self
            .accepted
            .asset
            .parse()
            .map_err(|_| PaymentError::Field {
                field: "accepted.asset",
                problem: "not an address".into(),
            })?;
        let a = &self.payload.authorization;
        Ok(ClientPayment::Authorization(Authorization {
            network,
            token,
            from: a.from,
            to: a.to,
            value: a.value,
            valid_after: a.valid_after,
            valid_before: a.valid_before,
            nonce: a.nonce,
            sig: parse_sig_hex(&self.payload.signature)?,
        }))
    }
}

/// `info.id` of the `payment-identifier` entry of an x402 v2 `extensions` object; a
/// non-string `id` counts as none given (the payload is then refused by the caller's check of
/// the raw JSON, see [`raw_payment_identifier`]).
pub fn payment_identifier_of(
    extensions: &serde_json::Map<String, serde_json::Value>,
) -> Option<&str> {
    extensions
        .get(PAYMENT_IDENTIFIER)?
        .get("info")?
        .get("id")?
        .as_str()
}

/// The `payment-identifier` of a raw x402 v2 payment (any JSON): `Ok(None)` when there is
/// none, `Err` when `extensions["payment-identifier"].info.id` is present but not a string.
pub fn raw_payment_identifier(payment: &serde_json::Value) -> Result<Option<String>, String> {
    let Some(id) = payment
        .get("extensions")
        .and_then(|e| e.get(PAYMENT_IDENTIFIER))
        .and_then(|e| e.get("info"))
        .and_then(|i| i.get("id"))
    else {
        return Ok(None);
    };
    match id {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        _ => Err("extensions.payment-identifier.info.id: not a string".into()),
    }
}

/// Body of a facilitator's `POST /verify` and `POST /settle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    pub x402_version: u32,
    pub payment_payload: PaymentPayload,
    /// The gateway's terms (trusted as sent).
    pub payment_requirements: PaymentRequirements,
}

/// Answer of `POST /verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    pub is_valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Human-readable; an addition to the reference's fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<Address>,
}

/// Answer of `POST /settle`, and the `PAYMENT-RESPONSE` object (base64 JSON header).
/// `transaction` is empty when nothing was mined (yet); `network` is the requirement's, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// Human-readable; an addition to the reference's fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The payer's address as text: the facilitator writes it in lower case, the edge's
    /// `PAYMENT-RESPONSE` checksummed (as wallets print it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    #[serde(default)]
    pub transaction: String,
    #[serde(default)]
    pub network: String,
    /// The reference's free-form `extra`: the edge puts `settlementId` (always) and
    /// `settlement` (`pending`, `settled` or `voided`) here, so a client can follow an
    /// asynchronous settlement at `GET /v1/settlements/{settlementId}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

/// One (version, scheme, network) a facilitator settles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    pub x402_version: u32,
    pub scheme: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

/// Answer of `GET /supported`. `signers`: CAIP-2 pattern (`eip155:*`) -> wallet addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportedResponse {
    pub kinds: Vec<SupportedKind>,
    #[serde(default)]
    pub extensions: Vec<String>,
    #[serde(default)]
    pub signers: BTreeMap<String, Vec<Address>>,
}

/// A 32-byte word: serialised as 0x + 64 hex digits; read as hex of at most 32 bytes
/// (leading zeros optional, as some clients drop them) or as a JSON integer.
pub mod word_serde {
    use std::fmt;

    use alloy_primitives::{B256, U256};
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &B256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<B256, D::Error> {
        d.deserialize_any(WordVisitor)
    }

    struct WordVisitor;

    impl<'de> Visitor<'de> for WordVisitor {
        type Value = B256;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("hex of at most 32 bytes, or a non-negative integer")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<B256, E> {
            Ok(B256::from(U256::from(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<B256, E> {
            u64::try_from(v)
                .map(|v| B256::from(U256::from(v)))
                .map_err(|_| E::custom("negative integer"))
        }
        fn visit_u128<E: de::Error>(self, v: u128) -> Result<B256, E> {
            Ok(B256::from(U256::from(v)))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<B256, E> {
            Err(E::custom(format!(
                "{v} is not hex of at most 32 bytes nor an integer below 2^64"
            )))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<B256, E> {
            crate::payment::parse_word_str(v).ok_or_else(|| {
                E::custom(format!(
                    "{} is not hex of at most 32 bytes",
                    crate::shown::shown(v)
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::{parse_payment, PaymentFormat};
    use serde_json::{json, Value};

    /// A payload as the x402 reference client sends it (camelCase, integers as strings,
    /// the authorization's addresses checksummed, as they serialise back).
    const PAYLOAD: &str = r#"{"x402Version":2,"resource":{"url":"https://api.example.com/weather","description":"Weather","mimeType":"application/json"},"accepted":{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","maxTimeoutSeconds":300,"extra":{"name":"USDC","version":"2"}},"payload":{"signature":"0x02dd9f1c0e0d6a2c1f3e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e1f2e3d4c5b6a79880716253443526170819a8b7c6d5e4f3a2b1c0d9e8f7a1c","authorization":{"from":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","to":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","value":"10000","validAfter":"0","validBefore":"1795497581","nonce":"0xc2c1e4f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4e698"}}}"#;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        json: &str,
    ) -> T {
        let v: T = serde_json::from_str(json).unwrap();
        let again: Value = serde_json::to_value(&v).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<Value>(json).unwrap(),
            "serialises back to the same JSON"
        );
        assert_eq!(serde_json::from_value::<T>(again).unwrap(), v);
        v
    }

    #[test]
    fn payment_payload_round_trips_and_matches_the_parser() {
        let p: PaymentPayload = round_trip(PAYLOAD);
        assert_eq!(p.x402_version, X402_VERSION);
        assert_eq!(
            p.accepted.pay_to,
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        );
        assert_eq!(p.accepted.extra.as_ref().unwrap().name, "USDC");
        assert_eq!(p.resource.as_ref().unwrap().mime_type, "application/json");
        assert_eq!(
            p.payload.authorization.valid_before,
            U256::from(1795497581u64)
        );
        let typed = p.to_client_payment().unwrap();
        let (parsed, format) = parse_payment(PAYLOAD.as_bytes()).unwrap();
        assert_eq!((typed, format), (parsed, PaymentFormat::X402V2));
    }

    #[test]
    fn payload_integers_and_nonce_are_read_leniently() {
        let mut v: Value = serde_json::from_str(PAYLOAD).unwrap();
        v["payload"]["authorization"]["value"] = json!(10000);
        v["payload"]["authorization"]["validAfter"] = json!("0x0");
        v["payload"]["authorization"]["nonce"] = json!("0x01");
        // The echo of the requirement needs only scheme, network and asset.
        v["accepted"] = json!({"scheme": "exact", "network": "eip155:84532", "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e"});
        v.as_object_mut().unwrap().remove("resource");
        let p: PaymentPayload = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(p.payload.authorization.value, U256::from(10000u64));
        assert_eq!(p.payload.authorization.nonce, B256::from(U256::from(1u8)));
        assert_eq!(
            p.to_client_payment().unwrap(),
            parse_payment(v.to_string().as_bytes()).unwrap().0
        );
        let out = serde_json::to_value(&p).unwrap();
        assert_eq!(out["payload"]["authorization"]["value"], "10000");
        assert_eq!(
            out["payload"]["authorization"]["nonce"],
            format!("0x{}1", "0".repeat(63))
        );
        assert!(out.get("resource").is_none());
    }

    #[test]
    fn payload_errors() {
        let mut v: Value = serde_json::from_str(PAYLOAD).unwrap();
        v["accepted"]["scheme"] = json!("upto");
        let p: PaymentPayload = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            p.to_client_payment(),
            Err(PaymentError::Unsupported("upto".into()))
        );
        v["accepted"]["scheme"] = json!("exact");
        v["payload"]["signature"] = json!("0x1234");
        let p: PaymentPayload = serde_json::from_value(v.clone()).unwrap();
        assert!(matches!(
            p.to_client_payment(),
            Err(PaymentError::Field {
                field: "signature",
                ..
            })
        ));
        v["payload"]["authorization"]["value"] = json!(0.5);
        assert!(serde_json::from_value::<PaymentPayload>(v).is_err());
    }

    #[test]
    fn facilitator_request_round_trips() {
        let body = format!(
            r#"{{"x402Version":2,"paymentPayload":{PAYLOAD},"paymentRequirements":{{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","maxTimeoutSeconds":300,"extra":{{"name":"USDC","version":"2"}}}}}}"#
        );
        let r: FacilitatorRequest = round_trip(&body);
        assert_eq!(r.payment_requirements.amount, "10000");
        assert_eq!(r.payment_payload.accepted, r.payment_requirements);
    }

    #[test]
    fn verify_responses_round_trip() {
        let ok: VerifyResponse =
            round_trip(r#"{"isValid":true,"payer":"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"}"#);
        assert!(ok.is_valid && ok.invalid_reason.is_none());
        let bad: VerifyResponse = round_trip(
            r#"{"isValid":false,"invalidReason":"invalid_exact_evm_payload_signature","invalidMessage":"no","payer":"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"}"#,
        );
        assert_eq!(
            bad.invalid_reason.as_deref(),
            Some("invalid_exact_evm_payload_signature")
        );
        let anonymous: VerifyResponse = round_trip(
            r#"{"isValid":false,"invalidReason":"invalid_payload","invalidMessage":"x"}"#,
        );
        assert_eq!(anonymous.payer, None);
    }

    #[test]
    fn settle_responses_round_trip() {
        let ok: SettleResponse = round_trip(
            r#"{"success":true,"payer":"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266","transaction":"0xa817000000000000000000000000000000000000000000000000000000000000","network":"eip155:84532"}"#,
        );
        assert!(ok.success && ok.error_reason.is_none());
        // The edge's PAYMENT-RESPONSE: settlement is asynchronous, `transaction` is empty.
        let edge: SettleResponse = round_trip(
            r#"{"success":true,"transaction":"","network":"eip155:84532","payer":"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"}"#,
        );
        assert_eq!(edge.transaction, "");
        let refused: SettleResponse = round_trip(
            r#"{"success":false,"errorReason":"settlement_pending","errorMessage":"later","transaction":"","network":""}"#,
        );
        assert_eq!(refused.error_reason.as_deref(), Some("settlement_pending"));
    }

    #[test]
    fn supported_round_trips() {
        let s: SupportedResponse = round_trip(
            r#"{"kinds":[{"x402Version":2,"scheme":"exact","network":"eip155:31337"}],"extensions":[],"signers":{"eip155:*":["0xa0ee7a142d267c1f36714e4a8f75612f20a79720"]}}"#,
        );
        assert_eq!(s.kinds[0].network, "eip155:31337");
        assert_eq!(s.signers["eip155:*"].len(), 1);
    }
}
