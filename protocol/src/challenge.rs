//! The 402 answer: the seed SDK's JSON body and the x402 v2 `PAYMENT-REQUIRED` header.

use alloy_primitives::{Address, U256};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::amount::format_base_units;
use crate::chain::Network;
use crate::method::{PaymentMethod, Scheme};
use crate::settler_api::PricedMethod;

pub const SEED_PROTOCOL_VERSION: &str = "Version 0.1";
pub const PAYMENT_INSTRUCTION: &str = "Payment required to access this resource. Submit payment to the access_token_endpoint using methods specified in payment_scheme.";

/// Why a request got 402. The texts of the first five are the seed SDK's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingToken,
    MalformedHeader,
    MalformedToken,
    BadSignature,
    Expired,
    NotYetValid,
    WrongRoute,
    UnknownKey,
    UnsupportedAlgorithm,
    /// The token's payment failed to settle (cancelled, funds moved, nonce spent): the
    /// settler revoked its id and the edge learned it from the revocation list.
    Revoked,
}

impl Reason {
    pub fn message(self) -> &'static str {
        match self {
            Reason::MissingToken => "Missing authorization token",
            Reason::MalformedHeader => "Invalid authorization header format",
            Reason::MalformedToken => "Invalid token format",
            Reason::BadSignature => "Signature verification failed",
            Reason::Expired => "Token has expired",
            Reason::NotYetValid => "Token is not yet valid",
            Reason::WrongRoute => "Token was issued for another route",
            Reason::UnknownKey => "Token signed with an unknown key",
            Reason::UnsupportedAlgorithm => "Token algorithm is not accepted",
            Reason::Revoked => "Token was revoked: its payment did not settle",
        }
    }
    /// Stable machine code, used as metric label and in `error` fields.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::MalformedHeader => "malformed_header",
            Reason::MalformedToken => "malformed_token",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongRoute => "wrong_route",
            Reason::UnknownKey => "unknown_key",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::Revoked => "revoked",
        }
    }
    pub const ALL: [Reason; 10] = [
        Reason::MissingToken,
        Reason::MalformedHeader,
        Reason::MalformedToken,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongRoute,
        Reason::UnknownKey,
        Reason::UnsupportedAlgorithm,
        Reason::Revoked,
    ];
}

/// Seed SDK component metadata (0.1.x reads `wallet_address` as the permit spender, of
/// whichever component it picks: see [`seed_wallet`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedMetadata {
    pub symbol: String,
    pub name: String,
    pub decimals: u8,
    pub version: String,
    #[serde(serialize_with = "crate::addr::checksum")]
    pub wallet_address: Address,
}

/// One payment component of the seed 402 body. `amount` is a JSON number in human units
/// written from the exact decimal (never via f64); `amount_base_units` is the same as an
/// integer string for clients that want exactness.
#[derive(Debug, Serialize, Deserialize)]
pub struct SeedComponent {
    pub payment_type: String,
    pub amount: Box<RawValue>,
    pub amount_base_units: String,
    pub currency: String,
    pub scheme: Scheme,
    pub caip2: Network,
    pub chain_id: u64,
    #[serde(serialize_with = "crate::addr::checksum")]
    pub pay_to: Address,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::addr::checksum_opt"
    )]
    pub spender: Option<Address>,
    #[serde(serialize_with = "crate::addr::checksum")]
    pub token: Address,
    pub token_name: String,
    pub token_decimals: u8,
    pub token_version: String,
    pub metadata: SeedMetadata,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SeedPaymentScheme {
    pub payment_components: Vec<SeedComponent>,
    pub protocol_version: String,
}

/// The 402 JSON body.
#[derive(Debug, Serialize, Deserialize)]
pub struct SeedChallenge {
    pub reason: String,
    #[serde(default)]
    pub error: Option<String>,
    pub access_token_endpoint: String,
    /// Where a short-lived token (the route mints one while its payment is unsettled) is
    /// exchanged for a longer-lived one once the payment has settled: `POST` with
    /// `Authorization: Bearer <token>`. Only on such routes; an addition to the seed shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_renew_endpoint: Option<String>,
    pub payment_scheme: SeedPaymentScheme,
    /// The same components under the name the seed README uses.
    #[serde(default)]
    pub payment_methods: Option<Vec<SeedComponent>>,
    pub payment_instruction: String,
    #[serde(default)]
    pub route: Option<String>,
}

/// x402 v2 `resource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Defaults to empty: a facilitator reads the URL for its logs only.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub mime_type: String,
}

/// x402 v2 `extra` of an EVM `exact` requirement: the EIP-712 domain of the asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetExtra {
    pub name: String,
    pub version: String,
}

/// One x402 v2 `accepts` entry. All fields compare as strings on the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    pub scheme: String,
    pub network: String,
    /// Defaults to empty (then not a valid amount): the `accepted` echo inside a payment
    /// payload is read for scheme, network and asset only, so it need not repeat the rest.
    #[serde(default)]
    pub amount: String,
    pub asset: String,
    #[serde(default)]
    pub pay_to: String,
    #[serde(default)]
    pub max_timeout_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<AssetExtra>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    pub x402_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resource: Resource,
    pub accepts: Vec<PaymentRequirements>,
    #[serde(default)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

/// Everything that describes a 402 for one route.
pub struct ChallengeInput<'a> {
    pub reason: Reason,
    pub route: &'a str,
    pub token_endpoint: &'a str,
    /// The renewal endpoint, when the route mints short-lived tokens while unsettled.
    pub renew_endpoint: Option<&'a str>,
    pub resource: Resource,
    pub accepts: &'a [PricedMethod],
    /// How long an x402 v2 authorization must stay valid (`maxTimeoutSeconds`).
    pub max_timeout_seconds: u64,
}

/// The address a seed client signs a permit to, whichever component it picked.
///
/// x402-mock 0.1.x takes the FIRST component whose token it knows and signs an EIP-2612
/// permit whose spender is that component's `metadata.wallet_address`, whatever its
/// `scheme`; 0.3.x signs ERC-3009 to `pay_to` and never reads it. So every component names
/// the settler's spender here when the route takes permits in that asset on that network
/// (a permit method's own spender, else the first such sibling's): a 0.1.x client pays
/// whatever the configured order. Only without any such permit method is it `pay_to`.
fn seed_wallet(p: &PricedMethod, all: &[PricedMethod]) -> Address {
    let m = &p.method;
    m.spender
        .or_else(|| {
            all.iter()
                .map(|q| &q.method)
                .find(|q| {
                    q.scheme == Scheme::Permit
                        && q.network == m.network
                        && q.asset.address == m.asset.address
                })
                .and_then(|q| q.spender)
        })
        .unwrap_or(m.pay_to)
}

/// `None` only if the amount did not render as a JSON number, which `format_base_units`
/// (digits with at most one dot) rules out; such a component is left out, never guessed.
fn seed_component(p: &PricedMethod, all: &[PricedMethod]) -> Option<SeedComponent> {
    let m: &PaymentMethod = &p.method;
    let human = format_base_units(p.amount, m.asset.decimals);
    let amount = RawValue::from_string(human).ok()?;
    Some(SeedComponent {
        payment_type: "evm".to_string(),
        amount,
        amount_base_units: p.amount.to_string(),
        currency: m.asset.symbol.clone(),
        scheme: m.scheme,
        caip2: m.network,
        chain_id: m.network.chain_id,
        pay_to: m.pay_to,
        spender: m.spender,
        token: m.asset.address,
        token_name: m.asset.name.clone(),
        token_decimals: m.asset.decimals,
        token_version: m.asset.version.clone(),
        metadata: SeedMetadata {
            symbol: m.asset.symbol.clone(),
            name: m.asset.name.clone(),
            decimals: m.asset.decimals,
            version: m.asset.version.clone(),
            wallet_address: seed_wallet(p, all),
        },
    })
}

/// The seed-compatible 402 body as JSON text.
pub fn seed_body(input: &ChallengeInput<'_>) -> String {
    let component = |p: &PricedMethod| seed_component(p, input.accepts);
    let components: Vec<SeedComponent> = input.accepts.iter().filter_map(component).collect();
    let methods: Vec<SeedComponent> = input.accepts.iter().filter_map(component).collect();
    let body = SeedChallenge {
        reason: input.reason.message().to_string(),
        error: Some(input.reason.code().to_string()),
        access_token_endpoint: input.token_endpoint.to_string(),
        access_token_renew_endpoint: input.renew_endpoint.map(str::to_string),
        payment_scheme: SeedPaymentScheme {
            payment_components: components,
            protocol_version: SEED_PROTOCOL_VERSION.to_string(),
        },
        payment_methods: Some(methods),
        payment_instruction: PAYMENT_INSTRUCTION.to_string(),
        route: Some(input.route.to_string()),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// x402 v2 requirements: only `exact` (ERC-3009) methods exist in x402 v2.
pub fn payment_required(input: &ChallengeInput<'_>) -> PaymentRequired {
    PaymentRequired {
        x402_version: 2,
        error: Some(input.reason.message().to_string()),
        resource: input.resource.clone(),
        accepts: input
            .accepts
            .iter()
            .filter(|p| p.method.scheme == Scheme::Exact)
            .map(|p| v2_requirements(p, input.max_timeout_seconds))
            .collect(),
        extensions: Default::default(),
    }
}

pub fn v2_requirements(p: &PricedMethod, max_timeout_seconds: u64) -> PaymentRequirements {
    PaymentRequirements {
        scheme: "exact".to_string(),
        network: p.method.network.to_string(),
        amount: p.amount.to_string(),
        asset: p.method.asset.address.to_checksum(None),
        pay_to: p.method.pay_to.to_checksum(None),
        max_timeout_seconds,
        extra: Some(AssetExtra {
            name: p.method.asset.name.clone(),
            version: p.method.asset.version.clone(),
        }),
    }
}

/// Value of the `PAYMENT-REQUIRED` header: standard base64 (padded) of the v2 JSON.
pub fn payment_required_header(input: &ChallengeInput<'_>) -> String {
    let json = serde_json::to_vec(&payment_required(input)).unwrap_or_default();
    crate::b64::encode(&json)
}

/// Parses an amount the way the 402 body carries it (a JSON number in human units) into
/// base units, exactly: the number's text is used, never an f64.
pub fn parse_human_amount(
    raw: &RawValue,
    decimals: u8,
) -> Result<U256, crate::amount::AmountError> {
    crate::amount::parse_decimal(raw.get().trim().trim_matches('"'), decimals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::Asset;

    fn priced(scheme: Scheme) -> PricedMethod {
        PricedMethod {
            amount: U256::from(500_000u64),
            method: PaymentMethod {
                scheme,
                network: Network::eip155(84532),
                asset: Asset {
                    address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
                        .parse()
                        .unwrap(),
                    decimals: 6,
                    name: "USDC".into(),
                    version: "2".into(),
                    symbol: "USDC".into(),
                },
                pay_to: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
                    .parse()
                    .unwrap(),
                spender: (scheme == Scheme::Permit).then(|| {
                    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
                        .parse()
                        .unwrap()
                }),
            },
        }
    }

    fn input<'a>(accepts: &'a [PricedMethod]) -> ChallengeInput<'a> {
        ChallengeInput {
            reason: Reason::MissingToken,
            route: "weather",
            token_endpoint: "/x402/token/weather",
            renew_endpoint: None,
            resource: Resource {
                url: "http://h/api/weather".into(),
                description: "w".into(),
                mime_type: "".into(),
            },
            accepts,
            max_timeout_seconds: 300,
        }
    }

    #[test]
    fn seed_body_has_the_seed_shape() {
        let accepts = [priced(Scheme::Exact), priced(Scheme::Permit)];
        let v: serde_json::Value = serde_json::from_str(&seed_body(&input(&accepts))).unwrap();
        assert_eq!(v["reason"], "Missing authorization token");
        assert_eq!(v["access_token_endpoint"], "/x402/token/weather");
        let c = &v["payment_scheme"]["payment_components"][0];
        assert_eq!(c["payment_type"], "evm");
        assert_eq!(c["amount"].to_string(), "0.5");
        assert_eq!(c["caip2"], "eip155:84532");
        assert_eq!(c["token_decimals"], 6);
        assert_eq!(c["chain_id"], 84532);
        let p = &v["payment_methods"][1];
        assert_eq!(
            p["metadata"]["wallet_address"],
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        assert_eq!(p["scheme"], "permit");
    }

    const SPENDER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
    const PAY_TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

    /// What x402-mock 0.1.x signs from a body: the first component whose token it knows,
    /// an EIP-2612 permit to that component's `metadata.wallet_address`.
    fn seed01_spender(body: &str, token: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let c = v["payment_scheme"]["payment_components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["token"].as_str().unwrap().eq_ignore_ascii_case(token))
            .unwrap()
            .clone();
        c["metadata"]["wallet_address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn every_component_names_the_permit_spender_whatever_the_order() {
        let token = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
        for accepts in [
            [priced(Scheme::Exact), priced(Scheme::Permit)],
            [priced(Scheme::Permit), priced(Scheme::Exact)],
        ] {
            let body = seed_body(&input(&accepts));
            assert_eq!(seed01_spender(&body, token), SPENDER, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            for list in [
                &v["payment_scheme"]["payment_components"],
                &v["payment_methods"],
            ] {
                for c in list.as_array().unwrap() {
                    assert_eq!(c["metadata"]["wallet_address"], SPENDER, "{c}");
                    // 0.3.x signs ERC-3009 to pay_to, which stays the recipient.
                    assert_eq!(c["pay_to"], PAY_TO, "{c}");
                }
            }
            // The configured order is kept.
            assert_eq!(
                v["payment_scheme"]["payment_components"][0]["scheme"],
                serde_json::to_value(accepts[0].method.scheme).unwrap()
            );
        }
    }

    #[test]
    fn without_a_permit_in_that_asset_the_wallet_is_pay_to() {
        let exact = priced(Scheme::Exact);
        let body = seed_body(&input(std::slice::from_ref(&exact)));
        assert_eq!(
            seed01_spender(&body, "0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
            PAY_TO
        );
        // A permit in another asset (or on another network) is not this component's.
        let mut other_asset = priced(Scheme::Permit);
        other_asset.method.asset.address = Address::repeat_byte(0x42);
        let mut other_network = priced(Scheme::Permit);
        other_network.method.network = Network::eip155(8453);
        let accepts = [exact, other_asset, other_network];
        let v: serde_json::Value = serde_json::from_str(&seed_body(&input(&accepts))).unwrap();
        let c = &v["payment_scheme"]["payment_components"];
        assert_eq!(c[0]["metadata"]["wallet_address"], PAY_TO);
        assert_eq!(c[1]["metadata"]["wallet_address"], SPENDER);
        assert_eq!(c[2]["metadata"]["wallet_address"], SPENDER);
    }

    #[test]
    fn v2_header_round_trips_and_lists_only_exact() {
        let accepts = [priced(Scheme::Exact), priced(Scheme::Permit)];
        let h = payment_required_header(&input(&accepts));
        let pr: PaymentRequired = serde_json::from_slice(&crate::b64::decode(&h).unwrap()).unwrap();
        assert_eq!(pr.x402_version, 2);
        assert_eq!(pr.accepts.len(), 1);
        assert_eq!(pr.accepts[0].amount, "500000");
        assert_eq!(
            pr.accepts[0].asset,
            "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
        );
        assert_eq!(pr.accepts[0].extra.as_ref().unwrap().version, "2");
    }
}
