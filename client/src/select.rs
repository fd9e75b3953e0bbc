//! Picks one payment component of a seed 402 body within the caps.
//!
//! A component is acceptable only if all of this holds (else it is refused with a reason):
//! `payment_type` is `evm`; its scheme is allowed; `caip2` and `chain_id` name the same chain and
//! that chain is allowed; the asset is allowed and has trusted decimals (see [`crate::caps`]);
//! the server's stated decimals equal the trusted ones; the human `amount` at those decimals
//! equals `amount_base_units` exactly; that amount is within the cap; and the scheme's own
//! checks hold (`crate::scheme`: a permit names a spender and the client can read the permit
//! nonce on that chain).
//!
//! Among acceptable components the user's scheme order wins, then the lower amount, then the
//! server's order.

use std::collections::BTreeMap;

use alloy::primitives::Address;
use serde_json::value::RawValue;
use x402_protocol::challenge::{
    parse_human_amount, PaymentRequired, PaymentRequirements, SeedComponent,
};
use x402_protocol::{format_base_units, Network, Scheme};

use crate::caps::Caps;
use crate::scheme::signing::TokenDomain;
use crate::scheme::{self, Choice};

/// Why a component was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("the 402 lists no payment components")]
    Empty,
    #[error("no payment method within your limits: {}", .0.iter().map(|r| format!("[{}] {}", r.index, r.reason)).collect::<Vec<_>>().join("; "))]
    NoneAcceptable(Vec<Refusal>),
}

/// The component list of a seed 402 body (`payment_scheme.payment_components`, else
/// `payment_methods`), as raw JSON so one odd component does not hide the others. Read from
/// the body's text, not a `Value`: a `Value` holds the human `amount` as an f64, so `0.000001`
/// came back as `1e-6` and long amounts rounded, and such components were refused.
pub(crate) fn components(body: &[u8]) -> Vec<Box<RawValue>> {
    type Object = BTreeMap<String, Box<RawValue>>;
    let list = |raw: &RawValue| serde_json::from_str::<Vec<Box<RawValue>>>(raw.get()).ok();
    let Ok(top) = serde_json::from_slice::<Object>(body) else {
        return Vec::new();
    };
    let in_scheme = top
        .get("payment_scheme")
        .and_then(|s| serde_json::from_str::<Object>(s.get()).ok())
        .and_then(|s| s.get("payment_components").map(|c| list(c)));
    in_scheme
        .or_else(|| top.get("payment_methods").map(|m| list(m)))
        .flatten()
        .unwrap_or_default()
}

/// Checks one component against the caps; `has_rpc` tells whether a chain can be read (a
/// permit needs it for its nonce).
fn check(
    index: usize,
    raw: &RawValue,
    caps: &Caps,
    has_rpc: &dyn Fn(Network) -> bool,
) -> Result<Choice, String> {
    let c: SeedComponent =
        serde_json::from_str(raw.get()).map_err(|e| format!("component not understood: {e}"))?;
    if !c.payment_type.eq_ignore_ascii_case("evm") {
        return Err(format!("payment_type {:?} is not evm", c.payment_type));
    }
    if !caps.allowed_schemes().contains(&c.scheme) {
        return Err(format!("scheme {} not allowed", c.scheme.as_str()));
    }
    let module = scheme::for_scheme(c.scheme).ok_or_else(|| {
        format!(
            "scheme {} is not supported by this client",
            c.scheme.as_str()
        )
    })?;
    if c.caip2.chain_id != c.chain_id {
        return Err(format!(
            "caip2 {} and chain_id {} disagree",
            c.caip2, c.chain_id
        ));
    }
    let network = c.caip2;
    if !caps.network_allowed(network) {
        return Err(format!(
            "network {network} not allowed (add --network {network})"
        ));
    }
    if !caps.asset_allowed(network, c.token) {
        return Err(format!(
            "asset {} on {network} not allowed (add --asset {})",
            c.token, c.token
        ));
    }
    let decimals = caps.trusted_decimals(network, c.token).ok_or_else(|| {
        format!(
            "asset {} has no trusted decimals (add --asset-decimals {}=N)",
            c.token, c.token
        )
    })?;
    if c.token_decimals != decimals || c.metadata.decimals != decimals {
        return Err(format!(
            "server states {} decimals for {}, the trusted value is {decimals}: refused",
            if c.token_decimals != decimals {
                c.token_decimals
            } else {
                c.metadata.decimals
            },
            c.token
        ));
    }
    let base = x402_protocol::u256_serde::parse_str(&c.amount_base_units)
        .filter(|_| c.amount_base_units.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            format!(
                "amount_base_units {:?} is not an integer",
                c.amount_base_units
            )
        })?;
    let human = parse_human_amount(&c.amount, decimals).map_err(|e| {
        format!(
            "amount {} is not exact at {decimals} decimals: {e}",
            c.amount.get()
        )
    })?;
    if human != base {
        return Err(format!(
            "amount {} at {decimals} decimals is {human} base units, but amount_base_units says {base}",
            c.amount.get()
        ));
    }
    let cap = caps
        .cap_base_units(network, c.token)
        .map_err(|e| e.to_string())?;
    if base > cap {
        return Err(format!(
            "costs {} {}, above your cap of {}",
            format_base_units(base, decimals),
            c.currency,
            caps.max_text()
        ));
    }
    let spender = module.check_seed(&c, network, has_rpc)?;
    Ok(Choice {
        index,
        scheme: c.scheme,
        network,
        domain: TokenDomain::new(
            c.token_name.clone(),
            c.token_version.clone(),
            network.chain_id,
            c.token,
        ),
        pay_to: c.pay_to,
        spender,
        amount: base,
        decimals,
        currency: c.currency,
    })
}

/// Chooses the component to pay from a seed 402 body; `has_rpc` tells whether a chain can be
/// read (for schemes that need to, like permit's nonce).
pub(crate) fn select(
    body: &[u8],
    caps: &Caps,
    has_rpc: &dyn Fn(Network) -> bool,
) -> Result<Choice, SelectError> {
    let list = components(body);
    if list.is_empty() {
        return Err(SelectError::Empty);
    }
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        match check(i, raw, caps, has_rpc) {
            Ok(c) => ok.push(c),
            Err(reason) => refused.push(Refusal { index: i, reason }),
        }
    }
    let pref = |s: Scheme| {
        caps.allowed_schemes()
            .iter()
            .position(|x| *x == s)
            .unwrap_or(usize::MAX)
    };
    ok.sort_by_key(|c| (pref(c.scheme), c.amount, c.index));
    ok.into_iter()
        .next()
        .ok_or(SelectError::NoneAcceptable(refused))
}

/// An x402 v2 `accepts` entry chosen within the caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct V2Choice {
    /// The requirement as the server sent it (echoed as `accepted`).
    pub(crate) requirements: PaymentRequirements,
    /// The same, checked: amount in base units, trusted decimals, EIP-712 domain from `extra`.
    pub(crate) choice: Choice,
    pub(crate) max_timeout_seconds: u64,
}

/// Checks one x402 v2 requirement against the caps. Only schemes with an x402 v2 form are
/// answered (today `exact`); the amount is in base units and compared with the cap at the
/// client's trusted decimals (the server states none, and any it might state elsewhere is
/// ignored).
fn check_v2(index: usize, r: &PaymentRequirements, caps: &Caps) -> Result<Choice, String> {
    let module = scheme::for_x402_v2(&r.scheme).ok_or_else(|| {
        format!(
            "x402 v2 scheme {:?} is not supported (only {})",
            r.scheme,
            scheme::x402_v2_names()
        )
    })?;
    let scheme = module.scheme();
    if !caps.allowed_schemes().contains(&scheme) {
        return Err(format!("scheme {} not allowed", scheme.as_str()));
    }
    let network: Network = r
        .network
        .parse()
        .map_err(|_| format!("network {:?} is not an EVM CAIP-2 network", r.network))?;
    if !caps.network_allowed(network) {
        return Err(format!(
            "network {network} not allowed (add --network {network})"
        ));
    }
    let asset: Address = r
        .asset
        .parse()
        .map_err(|_| format!("asset {:?} is not an address", r.asset))?;
    if !caps.asset_allowed(network, asset) {
        return Err(format!(
            "asset {asset} on {network} not allowed (add --asset {asset})"
        ));
    }
    let decimals = caps.trusted_decimals(network, asset).ok_or_else(|| {
        format!("asset {asset} has no trusted decimals (add --asset-decimals {asset}=N)")
    })?;
    let amount = x402_protocol::u256_serde::parse_str(&r.amount)
        .filter(|_| !r.amount.is_empty() && r.amount.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("amount {:?} is not an integer in base units", r.amount))?;
    let cap = caps
        .cap_base_units(network, asset)
        .map_err(|e| e.to_string())?;
    // For display only (like the seed body's `currency`): the table's symbol, else the
    // EIP-712 name the server gives, else the address.
    let currency = caps
        .symbol(network, asset)
        .map(String::from)
        .or_else(|| {
            r.extra
                .as_ref()
                .map(|e| e.name.clone())
                .filter(|n| !n.is_empty() && n.len() <= 32)
        })
        .unwrap_or_else(|| asset.to_checksum(None));
    if amount > cap {
        return Err(format!(
            "costs {} {currency}, above your cap of {}",
            format_base_units(amount, decimals),
            caps.max_text()
        ));
    }
    let pay_to: Address = r
        .pay_to
        .parse()
        .map_err(|_| format!("payTo {:?} is not an address", r.pay_to))?;
    if pay_to == Address::ZERO {
        return Err("payTo is the zero address".into());
    }
    if r.max_timeout_seconds == 0 {
        return Err("maxTimeoutSeconds is 0".into());
    }
    let domain = module.x402_v2_domain(r, network, asset)?;
    Ok(Choice {
        index,
        scheme,
        network,
        domain,
        pay_to,
        spender: None,
        amount,
        decimals,
        currency,
    })
}

/// Chooses the `accepts` entry to pay from an x402 v2 `PAYMENT-REQUIRED`: the cheapest
/// acceptable one, then the server's order.
pub(crate) fn select_v2(pr: &PaymentRequired, caps: &Caps) -> Result<V2Choice, SelectError> {
    if pr.accepts.is_empty() {
        return Err(SelectError::Empty);
    }
    if pr.x402_version != 2 {
        return Err(SelectError::NoneAcceptable(vec![Refusal {
            index: 0,
            reason: format!("x402Version {} is not 2", pr.x402_version),
        }]));
    }
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for (i, r) in pr.accepts.iter().enumerate() {
        match check_v2(i, r, caps) {
            Ok(c) => ok.push(c),
            Err(reason) => refused.push(Refusal { index: i, reason }),
        }
    }
    ok.sort_by_key(|c| (c.amount, c.index));
    let choice = ok
        .into_iter()
        .next()
        .ok_or(SelectError::NoneAcceptable(refused))?;
    let requirements = pr.accepts[choice.index].clone();
    Ok(V2Choice {
        max_timeout_seconds: requirements.max_timeout_seconds,
        requirements,
        choice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::U256;
    use serde_json::{json, Value};

    /// [`super::select`] on the body's JSON text, as the client receives it.
    fn select(
        body: &Value,
        caps: &Caps,
        has_rpc: &dyn Fn(Network) -> bool,
    ) -> Result<Choice, SelectError> {
        super::select(&serde_json::to_vec(body).unwrap(), caps, has_rpc)
    }

    const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

    fn comp(scheme: &str, amount: &str, base: &str, decimals: u8) -> Value {
        let amount: Value = serde_json::from_str(amount).unwrap();
        json!({
            "payment_type": "evm", "amount": amount, "amount_base_units": base, "currency": "USDC",
            "scheme": scheme, "caip2": "eip155:31337", "chain_id": 31337,
            "pay_to": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            "spender": if scheme == "permit" { json!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266") } else { Value::Null },
            "token": TOKEN, "token_name": "USDC", "token_decimals": decimals, "token_version": "2",
            "metadata": {"symbol": "USDC", "name": "USDC", "decimals": decimals, "version": "2",
                         "wallet_address": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"}
        })
    }

    fn body(cs: Vec<Value>) -> Value {
        json!({"reason": "Missing authorization token", "access_token_endpoint": "/x402/token/r",
               "payment_scheme": {"payment_components": cs, "protocol_version": "Version 0.1"},
               "payment_instruction": "pay"})
    }

    fn caps(max: &str) -> Caps {
        let t: Address = TOKEN.parse().unwrap();
        Caps::default()
            .with_max(max)
            .unwrap()
            .allow_network(Network::eip155(31337))
            .allow_asset(t)
            .asset_decimals(t, 6)
    }

    fn yes(_: Network) -> bool {
        true
    }

    #[test]
    fn picks_within_cap_with_preference() {
        let b = body(vec![
            comp("permit", "0.5", "500000", 6),
            comp("exact", "0.5", "500000", 6),
        ]);
        let c = select(&b, &caps("0.5"), &yes).unwrap();
        assert_eq!(c.scheme, Scheme::Exact);
        assert_eq!(c.amount, U256::from(500_000u64));
        assert_eq!(c.human_amount(), "0.5");
        let c = select(
            &b,
            &caps("0.5").schemes(vec![Scheme::Permit, Scheme::Exact]),
            &yes,
        )
        .unwrap();
        assert_eq!(c.scheme, Scheme::Permit);
        assert_eq!(
            c.spender,
            Some(
                "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
                    .parse()
                    .unwrap()
            )
        );
        // Permit impossible without an RPC: falls back to exact, or refuses if only permit.
        let c = select(
            &b,
            &caps("0.5").schemes(vec![Scheme::Permit, Scheme::Exact]),
            &|_| false,
        )
        .unwrap();
        assert_eq!(c.scheme, Scheme::Exact);
    }

    #[test]
    fn refuses_above_cap() {
        let b = body(vec![comp("exact", "0.500001", "500001", 6)]);
        let e = select(&b, &caps("0.5"), &yes).unwrap_err();
        assert!(e.to_string().contains("above your cap of 0.5"), "{e}");
        assert!(select(&b, &caps("0.500001"), &yes).is_ok());
    }

    #[test]
    fn a_server_lying_about_decimals_cannot_move_the_cap() {
        // The real token has 6 decimals. The server claims 18 and "0.5": that is 5e17 base units,
        // a fortune in a 6-decimals token. A naive client comparing 0.5 <= 0.5 would sign it.
        let b = body(vec![comp("exact", "0.5", "500000000000000000", 18)]);
        let e = select(&b, &caps("1"), &yes).unwrap_err();
        assert!(e.to_string().contains("server states 18 decimals"), "{e}");
        // Claiming 2 decimals with matching numbers: also refused (amount would be misread).
        let b = body(vec![comp("exact", "0.5", "50", 2)]);
        assert!(select(&b, &caps("1"), &yes).is_err());
        // Right decimals in token_decimals but a lie in metadata: refused.
        let mut c = comp("exact", "0.5", "500000", 6);
        c["metadata"]["decimals"] = json!(18);
        assert!(select(&body(vec![c]), &caps("1"), &yes).is_err());
    }

    #[test]
    fn human_and_base_amounts_must_agree() {
        // Human amount says 0.5, base units say 5 USDC: refused whatever the cap.
        let b = body(vec![comp("exact", "0.5", "5000000", 6)]);
        let e = select(&b, &caps("100"), &yes).unwrap_err();
        assert!(
            e.to_string().contains("amount_base_units says 5000000"),
            "{e}"
        );
        // Too precise for the trusted decimals.
        let b = body(vec![comp("exact", "0.0000005", "0", 6)]);
        assert!(select(&b, &caps("100"), &yes).is_err());
        // Not an integer.
        let b = body(vec![comp("exact", "0.5", "0x7a120", 6)]);
        assert!(select(&b, &caps("100"), &yes).is_err());
    }

    #[test]
    fn chain_network_and_asset_are_checked() {
        let mut c = comp("exact", "0.5", "500000", 6);
        c["chain_id"] = json!(1);
        assert!(select(&body(vec![c]), &caps("1"), &yes)
            .unwrap_err()
            .to_string()
            .contains("disagree"));
        let mut c = comp("exact", "0.5", "500000", 6);
        c["caip2"] = json!("eip155:8453");
        c["chain_id"] = json!(8453);
        assert!(select(&body(vec![c]), &caps("1"), &yes)
            .unwrap_err()
            .to_string()
            .contains("not allowed"));
        let mut c = comp("exact", "0.5", "500000", 6);
        c["token"] = json!("0x0000000000000000000000000000000000000001");
        assert!(select(&body(vec![c]), &caps("1"), &yes)
            .unwrap_err()
            .to_string()
            .contains("not allowed"));
        let mut c = comp("exact", "0.5", "500000", 6);
        c["payment_type"] = json!("solana");
        assert!(select(&body(vec![c]), &caps("1"), &yes).is_err());
        assert_eq!(
            select(&body(vec![]), &caps("1"), &yes),
            Err(SelectError::Empty)
        );
    }

    #[test]
    fn cheapest_of_same_scheme_and_odd_components_do_not_hide_others() {
        let b = body(vec![
            json!({"payment_type": "evm"}),
            comp("exact", "0.3", "300000", 6),
            comp("exact", "0.2", "200000", 6),
        ]);
        let c = select(&b, &caps("1"), &yes).unwrap();
        assert_eq!(c.index, 2);
        assert_eq!(c.amount, U256::from(200_000u64));
    }

    /// Found by fuzz/challenge_roundtrip: amounts an f64 cannot hold exactly (or prints in
    /// exponent form) were refused as not matching `amount_base_units`.
    #[test]
    fn amounts_are_read_from_the_body_text_exactly() {
        let t: Address = TOKEN.parse().unwrap();
        for (amount, base, decimals) in [
            ("0.000001", "1", 6),
            ("123456789012.123456", "123456789012123456", 6),
            ("0.123456789012345678", "123456789012345678", 18),
            ("100000000000000000000", "100000000000000000000", 0),
        ] {
            let text = serde_json::to_string(&body(vec![comp("exact", "0", base, decimals)]))
                .unwrap()
                .replacen("\"amount\":0,", &format!("\"amount\":{amount},"), 1);
            assert!(text.contains(amount), "{text}");
            let caps = Caps::default()
                .with_max("1000000000000000000000")
                .unwrap()
                .allow_network(Network::eip155(31337))
                .allow_asset(t)
                .asset_decimals(t, decimals);
            let c = super::select(text.as_bytes(), &caps, &yes).unwrap();
            assert_eq!(c.amount, base.parse::<U256>().unwrap(), "{amount}");
            assert_eq!(components(text.as_bytes()).len(), 1);
        }
    }

    fn req(amount: &str) -> PaymentRequirements {
        PaymentRequirements {
            scheme: "exact".into(),
            network: "eip155:31337".into(),
            amount: amount.into(),
            asset: TOKEN.into(),
            pay_to: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into(),
            max_timeout_seconds: 300,
            extra: Some(x402_protocol::challenge::AssetExtra {
                name: "USDC".into(),
                version: "2".into(),
            }),
        }
    }

    fn pr(accepts: Vec<PaymentRequirements>) -> PaymentRequired {
        PaymentRequired {
            x402_version: 2,
            error: None,
            resource: x402_protocol::challenge::Resource {
                url: "http://h/r".into(),
                description: "".into(),
                mime_type: "".into(),
            },
            accepts,
            extensions: Default::default(),
        }
    }

    #[test]
    fn v2_picks_the_cheapest_exact_within_cap() {
        let c = select_v2(
            &pr(vec![req("400000"), req("300000"), req("300000")]),
            &caps("0.5"),
        )
        .unwrap();
        assert_eq!(c.choice.index, 1);
        assert_eq!(c.choice.amount, U256::from(300_000u64));
        assert_eq!(c.choice.human_amount(), "0.3");
        assert_eq!(
            c.choice.domain,
            TokenDomain::new("USDC", "2", 31337, TOKEN.parse().unwrap())
        );
        assert_eq!(c.requirements, req("300000"));
        // Exactly the cap is fine.
        assert!(select_v2(&pr(vec![req("500000")]), &caps("0.5")).is_ok());
    }

    #[test]
    fn v2_refuses_over_cap_unknown_asset_network_and_odd_entries() {
        let e = select_v2(&pr(vec![req("500001")]), &caps("0.5")).unwrap_err();
        assert!(e.to_string().contains("above your cap of 0.5"), "{e}");
        // 18-decimal reading of the same cap would allow it; trusted decimals are 6.
        let e = select_v2(&pr(vec![req("500000000000000000")]), &caps("1")).unwrap_err();
        assert!(e.to_string().contains("above your cap"), "{e}");
        // Unknown asset (not allowed, and no trusted decimals).
        let mut r = req("1");
        r.asset = "0x0000000000000000000000000000000000000001".into();
        assert!(select_v2(&pr(vec![r.clone()]), &caps("1"))
            .unwrap_err()
            .to_string()
            .contains("not allowed"));
        // Allowed but without trusted decimals: refused too.
        let a: Address = "0x0000000000000000000000000000000000000001"
            .parse()
            .unwrap();
        let e = select_v2(&pr(vec![r]), &caps("1").allow_asset(a)).unwrap_err();
        assert!(e.to_string().contains("no trusted decimals"), "{e}");
        // Default caps: an unknown chain is not allowed.
        let e = select_v2(&pr(vec![req("1")]), &Caps::default()).unwrap_err();
        assert!(
            e.to_string().contains("network eip155:31337 not allowed"),
            "{e}"
        );
        let mut r = req("1");
        r.network = "eip155:8453".into();
        assert!(select_v2(&pr(vec![r]), &caps("1"))
            .unwrap_err()
            .to_string()
            .contains("not allowed"));
        // Scheme, amount syntax, extra, timeout, version.
        let mut r = req("1");
        r.scheme = "upto".into();
        assert!(select_v2(&pr(vec![r]), &caps("1")).is_err());
        for bad in ["0x10", "-1", "1.5", ""] {
            assert!(select_v2(&pr(vec![req(bad)]), &caps("1")).is_err(), "{bad}");
        }
        let mut r = req("1");
        r.extra = None;
        assert!(select_v2(&pr(vec![r]), &caps("1")).is_err());
        let mut r = req("1");
        r.max_timeout_seconds = 0;
        assert!(select_v2(&pr(vec![r]), &caps("1")).is_err());
        let mut p = pr(vec![req("1")]);
        p.x402_version = 1;
        assert!(select_v2(&p, &caps("1")).is_err());
        assert!(select_v2(
            &pr(vec![req("1")]),
            &caps("1").schemes(vec![Scheme::Permit])
        )
        .is_err());
        assert_eq!(select_v2(&pr(vec![]), &caps("1")), Err(SelectError::Empty));
        // One bad entry does not hide a good one.
        let c = select_v2(&pr(vec![req("9999999"), req("1")]), &caps("1")).unwrap();
        assert_eq!(c.choice.index, 1);
    }
}
