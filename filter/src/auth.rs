//! Token checks at the edge: the `Authorization` header, the signature (once per token and
//! worker, thanks to the cache), the time window, and whether the token pays for this route.

use std::rc::Rc;

use x402_protocol::challenge::Reason;
use x402_protocol::token::{KeySet, TokenError};

use crate::cache::{Lookup, TokenCache};
use crate::grant::Grant;
use crate::routes::Route;

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(header: Option<&str>) -> Result<&str, Reason> {
    let h = header.ok_or(Reason::MissingToken)?;
    let h = h.trim();
    if h.is_empty() {
        return Err(Reason::MissingToken);
    }
    let (scheme, rest) = h.split_once(' ').ok_or(Reason::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reason::MalformedHeader);
    }
    let token = rest.trim_start();
    // No ASCII whitespace inside (all of it is <= b' '). Branch-free over the ~600 bytes,
    // without the early exit that would cost a comparison chain per byte.
    if token.is_empty()
        || token.bytes().fold(false, |ws, b| ws | (b <= b' ')) && has_whitespace(token)
    {
        return Err(Reason::MalformedHeader);
    }
    Ok(token)
}

fn has_whitespace(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_whitespace())
}

/// Does the grant pay for `route`? Same route name, and one of the route's methods on the
/// same (network, asset) with a price not above the amount paid.
pub(crate) fn authorize(route: &Route, g: &Grant) -> Result<(), Reason> {
    if g.route != route.name {
        return Err(Reason::WrongRoute);
    }
    let paid = route.accepts.iter().any(|p| {
        p.method.network == g.network && p.method.asset.address == g.asset && g.amount >= p.amount
    });
    if paid {
        Ok(())
    } else {
        Err(Reason::WrongRoute)
    }
}

/// Where a token's verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The worker's own cache.
    Cache,
    /// The table all workers share: verified by another worker, or relayed freshly minted.
    Shared,
    /// The signature was checked here (whatever the verdict: bad signatures and time windows
    /// are found after the check).
    Signature,
    /// Refused before any signature check: not a JWT, unknown algorithm or key, oversized.
    Unverifiable,
}

/// The verified tokens the workers share (see `shared_tokens`), looked up behind the
/// worker's own cache and before any signature check.
pub(crate) trait SharedVerdicts {
    /// The grant stored for exactly this token, if any.
    fn find(&self, token: &str) -> Option<Grant>;
    /// Stores the grant of a token whose signature was just checked.
    fn publish(&self, token: &str, grant: &Grant);
}

/// No shared table: one worker on its own.
#[cfg(test)]
pub(crate) struct Unshared;

#[cfg(test)]
impl SharedVerdicts for Unshared {
    fn find(&self, _token: &str) -> Option<Grant> {
        None
    }
    fn publish(&self, _token: &str, _grant: &Grant) {}
}

/// Outcome of checking a request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCheck {
    /// The grant is shared with the cache: a hit allocates nothing.
    pub result: Result<Rc<Grant>, Reason>,
    /// `None` when no token was looked at (no or malformed header).
    pub source: Option<Source>,
}

/// Full check of the `Authorization` header for `route` at unix time `now`.
pub(crate) fn check_token(
    keys: &KeySet,
    leeway: i64,
    cache: &mut TokenCache,
    shared: &impl SharedVerdicts,
    route: &Route,
    authorization: Option<&str>,
    now: i64,
) -> TokenCheck {
    match bearer(authorization) {
        Ok(token) => check_raw_token(keys, leeway, cache, shared, route, token, now),
        Err(reason) => TokenCheck {
            result: Err(reason),
            source: None,
        },
    }
}

/// Checks a token as such (no header to parse) for `route`: see [`verdict`]; the route
/// check runs on every use (the caches hold what a token grants, whatever the route).
pub(crate) fn check_raw_token(
    keys: &KeySet,
    leeway: i64,
    cache: &mut TokenCache,
    shared: &impl SharedVerdicts,
    route: &Route,
    token: &str,
    now: i64,
) -> TokenCheck {
    let (result, source) = verdict(keys, leeway, cache, shared, token, now);
    TokenCheck {
        result: result.and_then(|g| authorize(route, &g).map(|_| g)),
        source: Some(source),
    }
}

/// What `token` grants at `now`: from the worker's cache; else from the shared table (then
/// cached); else its signature and time window are verified, and a token that checks out
/// is cached and published to the shared table. Failures are never cached.
pub(crate) fn verdict(
    keys: &KeySet,
    leeway: i64,
    cache: &mut TokenCache,
    shared: &impl SharedVerdicts,
    token: &str,
    now: i64,
) -> (Result<Rc<Grant>, Reason>, Source) {
    match cache.get(token, now, leeway) {
        Lookup::Hit(g) => return (Ok(g), Source::Cache),
        Lookup::Expired => return (Err(Reason::Expired), Source::Cache),
        Lookup::Miss => {}
    }
    if let Some(g) = shared.find(token) {
        if g.expired(now, leeway) {
            return (Err(Reason::Expired), Source::Shared);
        }
        let g = Rc::new(g);
        cache.insert(token, g.clone());
        return (Ok(g), Source::Shared);
    }
    match keys.verify(token, now, leeway) {
        Ok(v) => {
            let g = Rc::new(Grant::from_verified(&v));
            cache.insert(token, g.clone());
            shared.publish(token, &g);
            (Ok(g), Source::Signature)
        }
        Err(e) => {
            let source = match e {
                TokenError::BadSignature | TokenError::Expired | TokenError::NotYetValid => {
                    Source::Signature
                }
                TokenError::Oversized
                | TokenError::Malformed
                | TokenError::UnsupportedAlgorithm
                | TokenError::UnknownKey => Source::Unverifiable,
            };
            (Err(e.reason()), source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;
    use x402_protocol::token::mint;
    use x402_protocol::{Address, Network};

    use crate::test_fixtures::{claims, sample_config as cfg, signing_key};

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(Reason::MissingToken));
        assert_eq!(bearer(Some("")), Err(Reason::MissingToken));
        assert_eq!(bearer(Some("Basic abc")), Err(Reason::MalformedHeader));
        assert_eq!(bearer(Some("Bearer")), Err(Reason::MalformedHeader));
        assert_eq!(bearer(Some("Bearer ")), Err(Reason::MalformedHeader));
        assert_eq!(bearer(Some("abc")), Err(Reason::MalformedHeader));
        assert_eq!(bearer(Some("Bearer a b")), Err(Reason::MalformedHeader));
        for ws in ["\t", "\n", "\r", "\x0c"] {
            let h = format!("Bearer a{ws}b");
            assert_eq!(bearer(Some(&h)), Err(Reason::MalformedHeader), "{h:?}");
        }
        // Other control bytes are not whitespace: the token is then malformed, not the header.
        assert_eq!(bearer(Some("Bearer a\x0bb\x01")), Ok("a\x0bb\x01"));
    }

    #[test]
    fn token_checks_and_cache() {
        let cfg = cfg();
        let route = cfg.routes.get(0).unwrap();
        let other = cfg.routes.get(1).unwrap();
        let mut cache = TokenCache::new(10);
        let now = 1_800_000_000;
        let t = mint(&signing_key(), "k1", claims("weather", 10_000), now, 300);
        let h = format!("Bearer {t}");
        let c = check_token(&cfg.keys, 5, &mut cache, &Unshared, route, Some(&h), now);
        assert_eq!(c.source, Some(Source::Signature));
        assert!(c.result.is_ok());
        let c = check_token(
            &cfg.keys,
            5,
            &mut cache,
            &Unshared,
            route,
            Some(&h),
            now + 1,
        );
        assert_eq!(c.source, Some(Source::Cache));
        let g = c.result.unwrap();
        assert_eq!(g.payer, Address::repeat_byte(0x11));
        assert_eq!(
            g.payer_eip55,
            Address::repeat_byte(0x11).to_checksum(None),
            "checksummed once, when verified"
        );
        // Cached, but for another route.
        let c = check_token(
            &cfg.keys,
            5,
            &mut cache,
            &Unshared,
            other,
            Some(&h),
            now + 1,
        );
        assert_eq!(
            (c.result, c.source),
            (Err(Reason::WrongRoute), Some(Source::Cache))
        );
        // Cached, then expired.
        let c = check_token(
            &cfg.keys,
            5,
            &mut cache,
            &Unshared,
            route,
            Some(&h),
            now + 306,
        );
        assert_eq!(c.result, Err(Reason::Expired));
        // Checks `token` as a bearer header on `route` at `now`.
        let check = |cache: &mut TokenCache, token: &str| {
            check_token(
                &cfg.keys,
                5,
                cache,
                &Unshared,
                route,
                Some(&format!("Bearer {token}")),
                now,
            )
        };
        // Too little paid.
        let cheap = mint(&signing_key(), "k1", claims("weather", 9_999), now, 300);
        let c = check(&mut cache, &cheap);
        assert_eq!(c.result, Err(Reason::WrongRoute));
        // Wrong asset.
        let mut cl = claims("weather", 10_000);
        cl.asset = Address::repeat_byte(0x33);
        let t2 = mint(&signing_key(), "k1", cl, now, 300);
        assert_eq!(check(&mut cache, &t2).result, Err(Reason::WrongRoute));
        // Wrong network.
        let mut cl = claims("weather", 10_000);
        cl.network = Network::eip155(1);
        let t3 = mint(&signing_key(), "k1", cl, now, 300);
        assert_eq!(check(&mut cache, &t3).result, Err(Reason::WrongRoute));
        // Verification failures map to reasons.
        let forged = mint(
            &SigningKey::from_slice(&[9u8; 32]).unwrap(),
            "k1",
            claims("weather", 10_000),
            now,
            300,
        );
        assert_eq!(check(&mut cache, &forged).result, Err(Reason::BadSignature));
        let unknown = mint(&signing_key(), "k9", claims("weather", 10_000), now, 300);
        assert_eq!(check(&mut cache, &unknown).result, Err(Reason::UnknownKey));
        let future = mint(
            &signing_key(),
            "k1",
            claims("weather", 10_000),
            now + 600,
            300,
        );
        assert_eq!(check(&mut cache, &future).result, Err(Reason::NotYetValid));
        let old = mint(
            &signing_key(),
            "k1",
            claims("weather", 10_000),
            now - 600,
            300,
        );
        assert_eq!(check(&mut cache, &old).result, Err(Reason::Expired));
        assert_eq!(
            check_token(
                &cfg.keys,
                5,
                &mut cache,
                &Unshared,
                route,
                Some("Bearer garbage"),
                now
            )
            .result,
            Err(Reason::MalformedToken)
        );
        assert_eq!(
            check_token(
                &cfg.keys,
                5,
                &mut cache,
                &Unshared,
                route,
                Some("Token x"),
                now
            )
            .result,
            Err(Reason::MalformedHeader)
        );
        assert_eq!(
            check_token(&cfg.keys, 5, &mut cache, &Unshared, route, None, now).result,
            Err(Reason::MissingToken)
        );
        // Failures are never cached; the expired token left the cache; three valid JWTs remain.
        assert_eq!(cache.len(), 3);
    }
}
