//! The per-route pieces of the 402 challenge that do not depend on the request (the seed
//! body for each reason, the x402 v2 `accepts` list), computed once at configure time.

use x402_protocol::challenge::{
    seed_body, v2_requirements, ChallengeInput, PaymentRequirements, Reason, Resource,
};
use x402_protocol::settler_api::PricedMethod;

/// Per-route 402 pieces computed at configure time.
#[derive(Debug, Clone)]
pub struct RouteChallenge {
    /// Seed JSON body for each reason, in `Reason::ALL` order.
    seed_bodies: Vec<String>,
    /// x402 v2 `accepts` (only `exact` methods).
    v2_accepts: Vec<PaymentRequirements>,
}

fn reason_index(r: Reason) -> usize {
    Reason::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

impl RouteChallenge {
    pub fn precompute(
        route: &str,
        token_endpoint: &str,
        renew_endpoint: Option<&str>,
        accepts: &[PricedMethod],
        max_timeout_seconds: u64,
    ) -> Self {
        let seed_bodies = Reason::ALL
            .iter()
            .map(|&reason| {
                seed_body(&ChallengeInput {
                    reason,
                    route,
                    token_endpoint,
                    renew_endpoint,
                    resource: Resource {
                        url: String::new(),
                        description: String::new(),
                        mime_type: String::new(),
                    },
                    accepts,
                    max_timeout_seconds,
                })
            })
            .collect();
        let v2_accepts = accepts
            .iter()
            .filter(|p| p.method.scheme == x402_protocol::Scheme::Exact)
            .map(|p| v2_requirements(p, max_timeout_seconds))
            .collect();
        RouteChallenge {
            seed_bodies,
            v2_accepts,
        }
    }

    pub fn seed_body(&self, reason: Reason) -> &str {
        self.seed_bodies
            .get(reason_index(reason))
            .map(String::as_str)
            .unwrap_or("{}")
    }

    pub fn v2_accepts(&self) -> &[PaymentRequirements] {
        &self.v2_accepts
    }
}
