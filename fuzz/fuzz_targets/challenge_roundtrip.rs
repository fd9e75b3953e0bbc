//! The 402 the edge builds, read back the way the client reads it.
//!
//! Route and method data (fuzzed but valid: what the filter config can produce, i.e. a
//! non-zero chain id, decimals <= 36, any amount, addresses, names) go through protocol's
//! builders (`challenge::seed_body`, `challenge::payment_required_header`). Then:
//! - the seed body is parsed as `x402-pay` does (`client/src/select.rs`, whose functions are
//!   crate-private, so its steps are repeated here with the same public protocol calls): the
//!   components at `payment_scheme.payment_components` (else `payment_methods`) as raw JSON
//!   text, each one a `SeedComponent`, `amount_base_units` as an integer and the human
//!   `amount` through `parse_human_amount` at the component's decimals. (This target found
//!   that the client used to read the components through a `serde_json::Value`, whose f64
//!   turned `0.000001` into `1e-6`: such prices were refused.);
//! - the `PAYMENT-REQUIRED` header as `pay_v2` does: `b64::decode`, `PaymentRequired`.
//!
//! Both must give back every method's amount, asset, pay_to, network, scheme and spender.
//!
//! Input: JSON of a `settler_api::Requirement` (the filter's own wire form of a route's
//! price: seeds are real ones) when it starts with `{`, else raw bytes for `Arbitrary`.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;
use x402_protocol::challenge::{
    parse_human_amount, payment_required_header, seed_body, ChallengeInput, PaymentRequired,
    Reason, Resource, SeedChallenge, SeedComponent,
};
use x402_protocol::settler_api::{PricedMethod, Requirement};
use x402_protocol::{b64, Address, Asset, Network, PaymentMethod, Scheme, U256};

/// The filter config's bound on decimals.
const MAX_DECIMALS: u8 = 36;

#[derive(Arbitrary, Debug)]
struct Method {
    permit: bool,
    chain_id: u64,
    asset: [u8; 20],
    decimals: u8,
    name: String,
    version: String,
    symbol: String,
    pay_to: [u8; 20],
    spender: [u8; 20],
    amount: [u8; 32],
}

#[derive(Arbitrary, Debug)]
struct Route {
    name: String,
    prefix: String,
    url: String,
    description: String,
    mime_type: String,
    reason: u8,
    renew: bool,
    max_timeout_seconds: u64,
    methods: Vec<Method>,
}

fn priced(m: Method) -> PricedMethod {
    let scheme = if m.permit {
        Scheme::Permit
    } else {
        Scheme::Exact
    };
    PricedMethod {
        amount: U256::from_be_bytes(m.amount),
        method: PaymentMethod {
            scheme,
            network: Network::eip155(m.chain_id.max(1)),
            asset: Asset {
                address: Address::from(m.asset),
                decimals: m.decimals % (MAX_DECIMALS + 1),
                name: m.name,
                version: m.version,
                symbol: m.symbol,
            },
            pay_to: Address::from(m.pay_to),
            spender: m.permit.then(|| Address::from(m.spender)),
        },
    }
}

/// The permit spender a 0.1.x seed client must read from `p`'s component, whichever
/// component it picks: the method's own spender, else that of the first permit method in
/// the same asset on the same network (the client signs a permit whatever the component's
/// scheme), else `pay_to`. (This target found the first version of this oracle stale: it
/// expected `pay_to` on an exact component beside a permit sibling.)
fn expected_wallet(m: &PaymentMethod, all: &[PricedMethod]) -> Address {
    if let Some(s) = m.spender {
        return s;
    }
    for q in all.iter().map(|q| &q.method) {
        if q.scheme == Scheme::Permit && q.network == m.network && q.asset.address == m.asset.address
        {
            if let Some(s) = q.spender {
                return s;
            }
            break;
        }
    }
    m.pay_to
}

/// The client's view of one seed component must be the method it was built from.
fn check_seed_component(raw: &RawValue, p: &PricedMethod, all: &[PricedMethod]) {
    let m = &p.method;
    let c: SeedComponent = match serde_json::from_str(raw.get()) {
        Ok(c) => c,
        Err(e) => panic!("component not understood: {e}: {raw}"),
    };
    assert!(c.payment_type.eq_ignore_ascii_case("evm"));
    assert_eq!(c.scheme, m.scheme);
    assert_eq!(c.caip2, m.network);
    assert_eq!(c.chain_id, m.network.chain_id);
    assert_eq!(c.token, m.asset.address);
    assert_eq!(c.pay_to, m.pay_to);
    assert_eq!(c.spender, m.spender);
    assert_eq!(c.metadata.wallet_address, expected_wallet(m, all));
    assert_eq!(c.token_decimals, m.asset.decimals);
    assert_eq!(c.metadata.decimals, m.asset.decimals);
    assert_eq!(
        (c.token_name.as_str(), c.token_version.as_str()),
        (m.asset.name.as_str(), m.asset.version.as_str())
    );
    assert_eq!(c.currency, m.asset.symbol);
    assert!(c.amount_base_units.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(
        x402_protocol::u256_serde::parse_str(&c.amount_base_units),
        Some(p.amount)
    );
    match parse_human_amount(&c.amount, m.asset.decimals) {
        Ok(human) => assert_eq!(
            human,
            p.amount,
            "amount {} at {} decimals reads back as {human}, built from {}",
            c.amount.get(),
            m.asset.decimals,
            p.amount
        ),
        Err(e) => panic!(
            "amount {} of {} base units at {} decimals does not parse back: {e}",
            c.amount.get(),
            p.amount,
            m.asset.decimals
        ),
    }
}

fn round_trip(
    route: &str,
    prefix: &str,
    renew: bool,
    resource: Resource,
    reason: Reason,
    max_timeout_seconds: u64,
    accepts: &[PricedMethod],
) {
    let token_endpoint = format!("{prefix}{route}");
    let renew_endpoint = format!("{token_endpoint}/renew");
    let renew_endpoint = renew.then_some(renew_endpoint.as_str());
    let input = ChallengeInput {
        reason,
        route,
        token_endpoint: &token_endpoint,
        renew_endpoint,
        resource: resource.clone(),
        accepts,
        max_timeout_seconds,
    };

    // The seed body, read as the client reads it.
    let body = seed_body(&input);
    let typed: SeedChallenge = match serde_json::from_str(&body) {
        Ok(t) => t,
        Err(e) => panic!("seed body is not a SeedChallenge: {e}: {body}"),
    };
    assert_eq!(typed.access_token_endpoint, token_endpoint);
    assert_eq!(typed.access_token_renew_endpoint.as_deref(), renew_endpoint);
    assert_eq!(typed.route.as_deref(), Some(route));
    assert_eq!(typed.reason, reason.message());
    let v: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => panic!("seed body is not JSON: {e}: {body}"),
    };
    assert_eq!(
        v.get("access_token_endpoint").and_then(Value::as_str),
        Some(token_endpoint.as_str())
    );
    // client/src/select.rs `components`: both lists, as raw text.
    type Object = BTreeMap<String, Box<RawValue>>;
    let top: Object = serde_json::from_str(&body).unwrap_or_default();
    let scheme: Object = top
        .get("payment_scheme")
        .and_then(|s| serde_json::from_str(s.get()).ok())
        .unwrap_or_default();
    for list in [scheme.get("payment_components"), top.get("payment_methods")] {
        let comps: Vec<Box<RawValue>> = list
            .and_then(|l| serde_json::from_str(l.get()).ok())
            .unwrap_or_default();
        assert_eq!(comps.len(), accepts.len(), "{body}");
        for (raw, p) in comps.iter().zip(accepts) {
            check_seed_component(raw, p, accepts);
        }
    }

    // PAYMENT-REQUIRED, read as the client reads it: only exact methods, in order.
    let header = payment_required_header(&input);
    assert!(
        !header.is_empty() && header.bytes().all(|b| b.is_ascii_graphic()),
        "{header}"
    );
    let raw = match b64::decode(header.trim()) {
        Some(r) => r,
        None => panic!("PAYMENT-REQUIRED is not base64: {header}"),
    };
    let pr: PaymentRequired = match serde_json::from_slice(&raw) {
        Ok(pr) => pr,
        Err(e) => panic!("PAYMENT-REQUIRED is not x402 v2 JSON: {e}"),
    };
    assert_eq!(pr.x402_version, 2);
    assert_eq!(pr.resource, resource);
    assert_eq!(pr.error.as_deref(), Some(reason.message()));
    let exact: Vec<&PricedMethod> = accepts
        .iter()
        .filter(|p| p.method.scheme == Scheme::Exact)
        .collect();
    assert_eq!(pr.accepts.len(), exact.len());
    for (r, p) in pr.accepts.iter().zip(exact) {
        let m = &p.method;
        assert_eq!(r.scheme, "exact");
        assert_eq!(r.network.parse::<Network>().ok(), Some(m.network));
        assert!(r.amount.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(
            x402_protocol::u256_serde::parse_str(&r.amount),
            Some(p.amount)
        );
        assert_eq!(r.asset.parse::<Address>().ok(), Some(m.asset.address));
        assert_eq!(r.pay_to.parse::<Address>().ok(), Some(m.pay_to));
        assert_eq!(r.max_timeout_seconds, max_timeout_seconds);
        let extra = r
            .extra
            .as_ref()
            .map(|e| (e.name.as_str(), e.version.as_str()));
        assert_eq!(
            extra,
            Some((m.asset.name.as_str(), m.asset.version.as_str()))
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        // The filter's wire form of a route's price; valid ones only (what a config yields).
        let Ok(req) = serde_json::from_slice::<Requirement>(data) else {
            return;
        };
        if req
            .accepts
            .iter()
            .any(|p| p.method.asset.decimals > MAX_DECIMALS)
        {
            return;
        }
        let resource = Resource {
            url: req.resource.clone().unwrap_or_default(),
            description: String::new(),
            mime_type: String::new(),
        };
        round_trip(
            &req.route,
            "/x402/token/",
            false,
            resource,
            Reason::MissingToken,
            300,
            &req.accepts,
        );
        return;
    }
    let Ok(r) = Route::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let accepts: Vec<PricedMethod> = r.methods.into_iter().take(8).map(priced).collect();
    let resource = Resource {
        url: r.url,
        description: r.description,
        mime_type: r.mime_type,
    };
    let reason = Reason::ALL[usize::from(r.reason) % Reason::ALL.len()];
    round_trip(
        &r.name,
        &r.prefix,
        r.renew,
        resource,
        reason,
        r.max_timeout_seconds,
        &accepts,
    );
});
