//! Counter names. Envoy shows proxy-wasm metrics under its `wasmcustom.` stats prefix, e.g.
//! `wasmcustom.x402_challenges`.
//!
//! Per-route counters ([`RouteCounter`]) carry the route in the name, as
//! `x402_route_<event>.route.<route name>`: the proxy-wasm ABI has no metric tags, and
//! Envoy turns the suffix into a tag with a `stats_config.stats_tags` regex
//! ([`ROUTE_TAG_REGEX`], in `envoy/envoy.yaml` and `envoy/observability/`); Prometheus then
//! sees `x402_route_<event>{x402_route="<name>"}`. Route names are `[A-Za-z0-9._~-]`, set by
//! the operator, so their number is bounded by the configuration, never by traffic.

use x402_protocol::challenge::Reason;

pub const CHALLENGES: &str = "x402_challenges";
pub const ACCEPTED: &str = "x402_accepted";
pub const TOKEN_CACHE_HITS: &str = "x402_token_cache_hits";
pub const TOKEN_CACHE_MISSES: &str = "x402_token_cache_misses";
pub const TOKEN_REQUESTS: &str = "x402_token_requests";
pub const SETTLER_ERRORS: &str = "x402_settler_errors";
/// Requests let through unpaid because the settler could not be reached (`failure_mode:
/// allow`): the price of availability, counted apart from other settler errors.
pub const FAIL_OPEN: &str = "x402_fail_open";
/// Token verdicts found in the table every worker shares (no signature checked).
pub const TOKEN_SHARED_HITS: &str = "x402_token_shared_hits";
/// Token signatures checked (bearer tokens and the minted tokens the filter relays).
pub const TOKEN_SIGNATURE_CHECKS: &str = "x402_token_signature_checks";
pub const REVOCATION_FETCHES: &str = "x402_revocation_fetches";
pub const REVOCATION_FETCH_FAILURES: &str = "x402_revocation_fetch_failures";

/// The Envoy `stats_tags` regex that extracts the route of a [`RouteCounter`] name (as
/// Envoy sees it, with the `wasmcustom.` prefix) into the tag [`ROUTE_TAG`]. The route is
/// last in the name, so a route name with dots is taken whole.
#[cfg_attr(not(test), allow(dead_code))]
pub const ROUTE_TAG_REGEX: &str = r"^wasmcustom\.x402_route_[a-z_]+(\.route\.(.+))$";
#[cfg_attr(not(test), allow(dead_code))]
pub const ROUTE_TAG: &str = "x402_route";

/// Events counted per priced route too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCounter {
    /// 402 answered to a request without a usable token.
    Challenges,
    /// A request let through, paid (bearer token or `PAYMENT-SIGNATURE`).
    Accepted,
    /// A request let through unpaid (`failure_mode: allow`, settler unreachable).
    FailOpen,
}

impl RouteCounter {
    /// Every per-route counter, in a fixed order (the index of the worker's id table).
    pub const ALL: [RouteCounter; 3] = [
        RouteCounter::Challenges,
        RouteCounter::Accepted,
        RouteCounter::FailOpen,
    ];

    pub fn index(self) -> usize {
        match self {
            RouteCounter::Challenges => 0,
            RouteCounter::Accepted => 1,
            RouteCounter::FailOpen => 2,
        }
    }

    /// `x402_route_<event>.route.<route>`.
    pub fn name(self, route: &str) -> String {
        let event = match self {
            RouteCounter::Challenges => "challenges",
            RouteCounter::Accepted => "accepted",
            RouteCounter::FailOpen => "fail_open",
        };
        format!("x402_route_{event}.route.{route}")
    }
}

/// `x402_rejected_<reason code>`.
pub fn rejected(reason: Reason) -> String {
    format!("x402_rejected_{}", reason.code())
}

/// Which counter an event increments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Challenges,
    Accepted,
    Rejected(Reason),
    CacheHits,
    CacheMisses,
    TokenRequests,
    SettlerErrors,
    /// Revocation list fetches started (one worker per interval).
    RevocationFetches,
    /// Revocation list fetches that failed (the last list stays).
    RevocationFetchFailures,
    /// A priced request let through unpaid: settler unreachable, route `failure_mode: allow`.
    FailOpen,
    /// A token's verdict served from the shared table (see `shared_tokens`).
    SharedHits,
    /// A token signature checked.
    SignatureChecks,
}

impl Counter {
    /// Every counter, in a fixed order (the index of the host's metric id table).
    pub fn all() -> Vec<Counter> {
        let mut v = vec![
            Counter::Challenges,
            Counter::Accepted,
            Counter::CacheHits,
            Counter::CacheMisses,
            Counter::TokenRequests,
            Counter::SettlerErrors,
            Counter::RevocationFetches,
            Counter::RevocationFetchFailures,
            Counter::FailOpen,
            Counter::SharedHits,
            Counter::SignatureChecks,
        ];
        v.extend(Reason::ALL.iter().map(|r| Counter::Rejected(*r)));
        v
    }

    pub fn index(self) -> usize {
        match self {
            Counter::Challenges => 0,
            Counter::Accepted => 1,
            Counter::CacheHits => 2,
            Counter::CacheMisses => 3,
            Counter::TokenRequests => 4,
            Counter::SettlerErrors => 5,
            Counter::RevocationFetches => 6,
            Counter::RevocationFetchFailures => 7,
            Counter::FailOpen => 8,
            Counter::SharedHits => 9,
            Counter::SignatureChecks => 10,
            Counter::Rejected(r) => 11 + Reason::ALL.iter().position(|x| *x == r).unwrap_or(0),
        }
    }

    pub fn name(self) -> String {
        match self {
            Counter::Challenges => CHALLENGES.to_string(),
            Counter::Accepted => ACCEPTED.to_string(),
            Counter::CacheHits => TOKEN_CACHE_HITS.to_string(),
            Counter::CacheMisses => TOKEN_CACHE_MISSES.to_string(),
            Counter::TokenRequests => TOKEN_REQUESTS.to_string(),
            Counter::SettlerErrors => SETTLER_ERRORS.to_string(),
            Counter::RevocationFetches => REVOCATION_FETCHES.to_string(),
            Counter::RevocationFetchFailures => REVOCATION_FETCH_FAILURES.to_string(),
            Counter::FailOpen => FAIL_OPEN.to_string(),
            Counter::SharedHits => TOKEN_SHARED_HITS.to_string(),
            Counter::SignatureChecks => TOKEN_SIGNATURE_CHECKS.to_string(),
            Counter::Rejected(r) => rejected(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_match_order_and_names_are_unique() {
        let all = Counter::all();
        assert_eq!(all.len(), 21);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        let mut names: Vec<String> = all.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 21);
        assert!(names.contains(&"x402_rejected_bad_signature".to_string()));
        assert!(names.contains(&"x402_rejected_revoked".to_string()));
        assert!(names.contains(&"x402_fail_open".to_string()));
    }

    /// The shipped Envoy configurations extract the route with this very regex.
    #[test]
    fn shipped_envoy_configs_extract_the_route_tag() {
        let quoted = format!("tag_name: {ROUTE_TAG}\n    regex: '{ROUTE_TAG_REGEX}'");
        for (file, text) in [
            ("envoy/envoy.yaml", include_str!("../../envoy/envoy.yaml")),
            (
                "envoy/observability/envoy-stats-tags.yaml",
                include_str!("../../envoy/observability/envoy-stats-tags.yaml"),
            ),
        ] {
            assert!(text.contains(&quoted), "{file} lacks:\n{quoted}");
        }
        for (i, c) in RouteCounter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert!(c.name("weather.v2").ends_with(".route.weather.v2"));
        }
    }
}
