//! Per-route policies that the flow applies around the payment check: what a settler outage
//! does to a paid request ([`FailureMode`]), and what the filter does to the `Cache-Control`
//! of a paid response ([`CacheControl`]). Set per route in the config (`routes[].failure_mode`,
//! `routes[].cache_control`); `settler.failure_mode` is the default of routes that say nothing.

/// What happens to a paid request (x402 v2 `PAYMENT-SIGNATURE`) when the settler cannot be
/// reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureMode {
    /// Answer 503 (the default; fail closed).
    Deny,
    /// Only when the settler is unreachable (the callout cannot be made, times out, is reset,
    /// or Envoy answers it for a settler it cannot reach): let the request through unpaid,
    /// log a warning, count `x402_fail_open`. Never for an answer the settler gave.
    Allow,
}

impl FailureMode {
    /// `"deny"` / `"allow"`, as the config spells them.
    pub(crate) fn parse(s: &str) -> Option<FailureMode> {
        match s {
            "deny" => Some(FailureMode::Deny),
            "allow" => Some(FailureMode::Allow),
            _ => None,
        }
    }
}

/// When an x402 v2 payment (`PAYMENT-SIGNATURE`) is settled relative to the response
/// (`routes[].settlement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// The request goes upstream once the payment is accepted (stored); it settles on chain
    /// in the background (the default). `PAYMENT-RESPONSE` names the settlement id.
    Async,
    /// The request is held until the settlement transaction is mined (the settler's
    /// `GET /v1/settlements/{id}?wait_ms=`), then forwarded; `PAYMENT-RESPONSE` carries
    /// the transaction hash. The payer is charged before the upstream answers.
    BeforeResponse,
}

impl Settlement {
    /// `"async"` / `"before_response"`, as the config spells them.
    pub(crate) fn parse(s: &str) -> Option<Settlement> {
        match s {
            "async" => Some(Settlement::Async),
            "before_response" => Some(Settlement::BeforeResponse),
            _ => None,
        }
    }
}

/// How long the settler holds an x402 v2 payment for its upstream's answer (routes without
/// `charge_on_upstream_error`): past it, unreleased, it is voided. Above any sane upstream
/// timeout, so a slow answer that succeeded is still charged.
pub(crate) const HOLD_SECS: u64 = 300;

/// The `Cache-Control` of a response to a paid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheControl {
    /// `Cache-Control: private, no-store` replaces the upstream's (the default): a shared
    /// cache in front must not serve a paid answer to someone who did not pay.
    PrivateNoStore,
    /// The upstream's `Cache-Control` is left alone (`"upstream"`). A response that carries a
    /// freshly minted access token (x402 v2) is `private, no-store` all the same.
    Upstream,
}

/// The value the filter sets on paid responses.
pub(crate) const PRIVATE_NO_STORE: &str = "private, no-store";

impl CacheControl {
    /// `"private, no-store"` / `"upstream"`, as the config spells them.
    pub(crate) fn parse(s: &str) -> Option<CacheControl> {
        match s {
            PRIVATE_NO_STORE => Some(CacheControl::PrivateNoStore),
            "upstream" => Some(CacheControl::Upstream),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(FailureMode::parse("deny"), Some(FailureMode::Deny));
        assert_eq!(FailureMode::parse("allow"), Some(FailureMode::Allow));
        assert_eq!(FailureMode::parse("open"), None);
        assert_eq!(
            CacheControl::parse("private, no-store"),
            Some(CacheControl::PrivateNoStore)
        );
        assert_eq!(
            CacheControl::parse("upstream"),
            Some(CacheControl::Upstream)
        );
        assert_eq!(CacheControl::parse("public"), None);
    }
}
