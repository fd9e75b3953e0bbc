//! Every way a payment reaches the edge and the settler:
//! - the token-endpoint body / decoded `PAYMENT-SIGNATURE` JSON (`payment::parse_payment`);
//! - the same bytes as a `PAYMENT-SIGNATURE` header value (`b64::decode`, then JSON, then both
//!   `parse_payment` and the typed `x402v2::PaymentPayload` + `to_client_payment`);
//! - the settler's request bodies: `settler_api::TokenRequest` (`POST /v1/tokens`, whose
//!   `payment` is parsed again) and `x402v2::FacilitatorRequest` (`/verify`, `/settle`).
//!
//! Properties besides "no panic": the typed v2 path and `parse_payment` agree whenever the
//! typed one accepts (its documented contract), and the typed bodies survive a
//! serialise/parse round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use x402_protocol::eip712::{domain, signing_hash};
use x402_protocol::payment::{parse_payment, ClientPayment, PaymentFormat};
use x402_protocol::settler_api::TokenRequest;
use x402_protocol::x402v2::{FacilitatorRequest, PaymentPayload};
use x402_protocol::{b64, Address};

/// What the settler reads of a parsed payment (keys, hashes, signature bytes).
fn exercise(p: &ClientPayment) {
    let d = domain("USDC", "2", p.network().chain_id, p.token());
    let h = signing_hash(p, &d);
    assert_eq!(h, p.signing_hash(&d));
    let _ = (p.scheme(), p.payer(), p.value(), p.nonce_key());
    let sig = match p {
        ClientPayment::Permit(x) => x.sig,
        ClientPayment::Authorization(x) => x.sig,
    };
    assert!(sig.v == 27 || sig.v == 28, "v {} escaped the parser", sig.v);
    assert_eq!(sig.to_bytes()[64], sig.v);
    assert!(p.network().chain_id > 0);
}

/// `parse_payment` on `json`, exercised when it parses.
fn untyped(json: &[u8]) -> Option<(ClientPayment, PaymentFormat)> {
    match parse_payment(json) {
        Ok(ok) => {
            exercise(&ok.0);
            Some(ok)
        }
        Err(e) => {
            let _ = (e.code(), e.to_string());
            None
        }
    }
}

/// The typed x402 v2 payload: when it converts, `parse_payment` must give the same payment,
/// and the payload must round-trip through its own serialisation.
fn typed(json: &[u8], untyped_result: &Option<(ClientPayment, PaymentFormat)>) {
    // As the settler reads it: JSON text first (its facilitator API parses a `Value`), so
    // bytes that are not UTF-8 are refused. `from_slice` into a typed struct skips an ignored
    // field's string without checking its UTF-8; this target found that as a disagreement
    // with `parse_payment` (input kept as a seed), which no production path has.
    let Ok(text) = std::str::from_utf8(json) else {
        return;
    };
    let Ok(pp) = serde_json::from_str::<PaymentPayload>(text) else {
        return;
    };
    let again: PaymentPayload = match serde_json::to_vec(&pp).map(|v| serde_json::from_slice(&v)) {
        Ok(Ok(again)) => again,
        other => panic!("PaymentPayload does not round-trip: {other:?}"),
    };
    assert_eq!(again, pp);
    if let Ok(p) = pp.to_client_payment() {
        exercise(&p);
        match untyped_result {
            Some((u, PaymentFormat::X402V2)) => assert_eq!(&p, u, "typed and untyped v2 differ"),
            other => panic!("typed v2 accepts what parse_payment does not: {p:?} vs {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The token-endpoint body, or a decoded PAYMENT-SIGNATURE.
    let u = untyped(data);
    typed(data, &u);

    // The same bytes as a PAYMENT-SIGNATURE header value.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(json) = b64::decode(text) {
            let u = untyped(&json);
            typed(&json, &u);
        }
    }

    // POST /v1/tokens: the requirement the filter adds, the payment as the client sent it.
    if let Ok(req) = serde_json::from_slice::<TokenRequest>(data) {
        let _ = untyped(req.payment.get().as_bytes());
        let text = serde_json::to_string(&req.requirement).unwrap_or_default();
        let back: Result<x402_protocol::settler_api::Requirement, _> = serde_json::from_str(&text);
        assert_eq!(back.ok().as_ref(), Some(&req.requirement), "{text}");
        for p in &req.requirement.accepts {
            let _ = x402_protocol::eip712::method_domain(&p.method);
            let _ = x402_protocol::format_base_units(p.amount, p.method.asset.decimals);
        }
    }

    // POST /verify and /settle.
    if let Ok(req) = serde_json::from_slice::<FacilitatorRequest>(data) {
        if let Ok(p) = req.payment_payload.to_client_payment() {
            exercise(&p);
        }
        let _ = req.payment_requirements.pay_to.parse::<Address>();
        let _ = x402_protocol::u256_serde::parse_str(&req.payment_requirements.amount);
        let text = serde_json::to_string(&req).unwrap_or_default();
        let back: Result<FacilitatorRequest, _> = serde_json::from_str(&text);
        assert_eq!(back.ok().as_ref(), Some(&req), "{text}");
    }
});
