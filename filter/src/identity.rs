//! Who paid: the request headers the upstream gets with a paid request, and the rule that
//! keeps clients from forging them.
//!
//! A request let through with a valid token (a bearer token, or the token the settler minted
//! for an x402 v2 `PAYMENT-SIGNATURE`) reaches the upstream with [`PAYER`] (EIP-55 checksummed
//! address), [`ROUTE`] (the configured route name) and [`SETTLEMENT_ID`] (the token's `jti`).
//!
//! Anti-spoofing. The `x-x402-` prefix belongs to the filter. Every request's header map is
//! listed once anyway (one host call, see [`crate::headers`]); then
//! - on a request that matches a priced route, every client-supplied `x-x402-*` request
//!   header is removed (one host call per offender);
//! - on every other request (unpriced paths and methods) the three identity names
//!   ([`IDENTITY`]) are removed, those present (no host call for a request without
//!   them). An upstream that trusts `x-x402-payer` on a path the filter does not price
//!   therefore still never sees a forged one; other `x-x402-*` names pass there untouched.
//!   (If the host cannot list the headers, the three names are removed blindly.)

use x402_protocol::Address;

use crate::grant::Grant;

/// Request headers with this prefix (lower case) are the filter's.
pub const RESERVED_PREFIX: &str = "x-x402-";
pub const PAYER: &str = "x-x402-payer";
pub const ROUTE: &str = "x-x402-route";
pub const SETTLEMENT_ID: &str = "x-x402-settlement-id";
/// The identity headers, removed from every request by name.
pub const IDENTITY: [&str; 3] = [PAYER, ROUTE, SETTLEMENT_ID];
/// Method-override headers some frameworks honour (Express `method-override`, Rails, Spring's
/// `HiddenHttpMethodFilter` variants, ASP.NET): removed from every request, so the method the
/// filter priced is the method the upstream serves.
pub const METHOD_OVERRIDE: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Is `name` in the filter's `x-x402-` namespace (ASCII case-insensitive)?
pub fn is_reserved(name: &str) -> bool {
    is_reserved_bytes(name.as_bytes())
}

/// [`is_reserved`] for a raw header name.
pub fn is_reserved_bytes(name: &[u8]) -> bool {
    let prefix = RESERVED_PREFIX.as_bytes();
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The reserved names among `names`, lower-cased, each once.
pub fn reserved_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if is_reserved(n) {
            let lower = n.to_ascii_lowercase();
            if !out.contains(&lower) {
                out.push(lower);
            }
        }
    }
    out
}

/// A value safe to put in a header: visible ASCII and inner spaces only.
fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// The identity headers for a request on `route` paid by `grant`, borrowed (the payer is
/// checksummed once per token, in [`Grant::new`]).
pub fn grant_headers<'a>(
    route: &'a str,
    grant: &'a Grant,
) -> impl Iterator<Item = (&'static str, &'a str)> {
    let id = grant.settlement_id.as_str();
    [
        (PAYER, grant.payer_eip55.as_str()),
        (ROUTE, route),
        (SETTLEMENT_ID, id),
    ]
    .into_iter()
    .filter(move |(n, _)| *n != SETTLEMENT_ID || header_safe(id))
}

/// [`grant_headers`], owned.
pub fn from_grant(route: &str, grant: &Grant) -> Vec<(&'static str, String)> {
    grant_headers(route, grant)
        .map(|(n, v)| (n, v.to_string()))
        .collect()
}

/// Fallback when the settler's token cannot be verified at the edge (a key the filter does
/// not know): the settler's own `payer` and `settlement_id` fields, where usable.
pub fn from_settler_body(
    route: &str,
    payer: Option<&str>,
    settlement_id: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut h = Vec::with_capacity(3);
    if let Some(a) = payer.and_then(|p| p.trim().parse::<Address>().ok()) {
        h.push((PAYER, a.to_checksum(None)));
    }
    h.push((ROUTE, route.to_string()));
    if let Some(id) = settlement_id.filter(|s| header_safe(s)) {
        h.push((SETTLEMENT_ID, id.to_string()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use x402_protocol::{Network, U256};

    const PAYER_ADDR: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

    fn grant(jti: &str) -> Grant {
        Grant::new(
            "weather".into(),
            Network::eip155(84532),
            Address::ZERO,
            U256::from(1u64),
            PAYER_ADDR.to_lowercase().parse().unwrap(),
            0,
            jti.into(),
        )
    }

    #[test]
    fn reserved_prefix() {
        for n in ["x-x402-payer", "X-X402-Payer", "x-x402-", "x-x402-anything"] {
            assert!(is_reserved(n), "{n}");
        }
        for n in [
            "x-x402",
            "x402-payer",
            "authorization",
            "x-x40",
            "",
            "payment-signature",
        ] {
            assert!(!is_reserved(n), "{n}");
        }
        assert_eq!(
            reserved_names([
                ":path",
                "X-X402-Payer",
                "x-x402-payer",
                "host",
                "x-x402-route",
                "x-x402-other"
            ]),
            ["x-x402-payer", "x-x402-route", "x-x402-other"]
        );
        assert!(IDENTITY.iter().all(|n| is_reserved(n)));
    }

    #[test]
    fn headers_from_a_grant() {
        let h = from_grant("weather", &grant("s-42"));
        assert_eq!(
            h,
            [
                (PAYER, PAYER_ADDR.to_string()),
                (ROUTE, "weather".to_string()),
                (SETTLEMENT_ID, "s-42".to_string())
            ],
            "payer is checksummed"
        );
        // A jti that cannot be a header value is left out.
        for bad in ["", "a\nb", "é", &"x".repeat(300)] {
            let h = from_grant("weather", &grant(bad));
            assert!(!h.iter().any(|(n, _)| *n == SETTLEMENT_ID), "{bad:?}");
            assert_eq!(h.len(), 2);
        }
    }

    #[test]
    fn headers_from_the_settler_body() {
        assert_eq!(
            from_settler_body("r", Some(&PAYER_ADDR.to_lowercase()), Some("s-1")),
            [
                (PAYER, PAYER_ADDR.to_string()),
                (ROUTE, "r".to_string()),
                (SETTLEMENT_ID, "s-1".to_string())
            ]
        );
        assert_eq!(
            from_settler_body("r", Some("nope"), Some("bad\r\nx: y")),
            [(ROUTE, "r".to_string())]
        );
        assert_eq!(
            from_settler_body("r", None, None),
            [(ROUTE, "r".to_string())]
        );
    }
}
