//! What the filter's tests share: the sample configuration, the token signing key and
//! claims (real ES256K tokens, as the settler mints them), and the fake host that drives
//! the request flow natively.

pub(crate) mod fake_host;

use k256::ecdsa::SigningKey;
use serde_json::{json, Value};
use x402_protocol::token::{mint, AccessClaims};
use x402_protocol::{Address, Network, U256};

use crate::config::{self, FilterConfig};

pub(crate) const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
pub(crate) const PAY_TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
pub(crate) const SPENDER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

/// The settler's token signing key in the tests (secret [7; 32]), kid `k1` in [`sample`].
pub(crate) fn signing_key() -> SigningKey {
    SigningKey::from_slice(&[7u8; 32]).unwrap()
}

/// Public key of [`signing_key`].
pub(crate) fn key_hex() -> String {
    x402_protocol::token::verifying_key_to_hex(signing_key().verifying_key())
}

/// Claims of a token for `route` paying `amount` base units of [`USDC`] on eip155:84532,
/// paid by `0x1111…1111`, settlement `s-1`.
pub(crate) fn claims(route: &str, amount: u64) -> AccessClaims {
    AccessClaims {
        iss: "settler".into(),
        sub: Address::repeat_byte(0x11),
        route: route.into(),
        amount: U256::from(amount),
        asset: USDC.parse().unwrap(),
        network: Network::eip155(84532),
        jti: "s-1".into(),
    }
}

/// A token signed by [`signing_key`] (kid `k1`) for `claims`, issued at `iat`, valid 300 s.
pub(crate) fn token(claims: AccessClaims, iat: i64) -> String {
    mint(&signing_key(), "k1", claims, iat, 300)
}

/// The sample configuration: routes `weather` (prefix `/api/weather`, GET, 0.01, exact and
/// permit) and `report` (template `/api/users/{id}/report`, two host patterns, 1.5, exact).
pub(crate) fn sample() -> Value {
    json!({
        "token_endpoint_prefix": "/x402/token/",
        "settler": {"cluster": "x402_settler", "authority": "x402-settler", "path": "/v1/tokens", "timeout_ms": 3000, "failure_mode": "deny"},
        "token_keys": [{"kid": "k1", "public_key": key_hex()}],
        "clock_leeway_secs": 5, "token_ttl_secs": 300, "max_timeout_seconds": 300, "token_cache_size": 100, "max_body_bytes": 16384,
        "payment_methods": {
            "usdc-base": {"scheme": "exact", "network": "eip155:84532",
                "asset": {"address": USDC, "decimals": 6, "name": "USDC", "version": "2", "symbol": "USDC"},
                "pay_to": PAY_TO},
            "usdc-permit": {"scheme": "permit", "network": "eip155:84532",
                "asset": {"address": USDC, "decimals": 6, "name": "USDC", "version": "2", "symbol": "USDC"},
                "pay_to": PAY_TO, "spender": SPENDER}
        },
        "routes": [
            {"name": "weather", "match": {"prefix": "/api/weather"}, "methods": ["GET"], "price": "0.01",
             "description": "Weather", "mime_type": "application/json", "payment_methods": ["usdc-base", "usdc-permit"]},
            {"name": "report", "match": {"template": "/api/users/{id}/report"}, "hosts": ["api.example.com", "*.example.org"],
             "price": "1.5", "payment_methods": ["usdc-base"]}
        ]
    })
}

/// Parses a configuration given as JSON.
pub(crate) fn parse_config(v: &Value) -> FilterConfig {
    config::parse(serde_json::to_string(v).unwrap().as_bytes()).unwrap()
}

/// [`sample`], parsed.
pub(crate) fn sample_config() -> FilterConfig {
    parse_config(&sample())
}
