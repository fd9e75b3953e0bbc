//! `GET /v1/revocations`: the revocation list the edge filter fetches on a timer.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;

use super::{check_api_secret, AppError, AppState};
use crate::clock;
use crate::error::Refusal;
use crate::service::Revocations;

/// Entries answered when the query names no `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 10_000;
/// The largest `limit` accepted.
pub(crate) const MAX_LIMIT: usize = 100_000;

pub(super) async fn get_revocations(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Revocations>, AppError> {
    check_api_secret(&st, &headers)?;
    let limit = parse_limit(query.as_deref())?;
    Ok(Json(st.service.revocations(limit, clock::now_ms()).await?))
}

/// `limit=N` (1..=100000), the only query parameter.
fn parse_limit(query: Option<&str>) -> Result<usize, Refusal> {
    let mut limit = DEFAULT_LIMIT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "limit" {
            return Err(Refusal::InvalidRequest(format!(
                "query parameter `{name}`: unknown (only `limit`)"
            )));
        }
        limit = match value.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(Refusal::InvalidRequest(format!(
                    "query parameter `limit`: {value:?} is not an integer in 1..={MAX_LIMIT}"
                )))
            }
        };
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_bounded_and_the_only_parameter() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("")).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("limit=5")).unwrap(), 5);
        assert_eq!(parse_limit(Some("limit=100000")).unwrap(), MAX_LIMIT);
        for bad in [
            "limit=0",
            "limit=100001",
            "limit=x",
            "limit=",
            "limit=-1",
            "since=1",
        ] {
            assert!(
                matches!(parse_limit(Some(bad)), Err(Refusal::InvalidRequest(_))),
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod list_tests {
    use alloy::primitives::{Address, B256, U256};
    use axum::http::StatusCode;
    use x402_protocol::payment::Sig;
    use x402_protocol::{Network, Scheme};

    use crate::clock;
    use crate::store::{NewPayment, Store};
    use crate::test_fixtures::api::{app, call, json_of, SECRET};

    fn payment(id: &str, nonce: u64, created_ms: i64) -> NewPayment {
        NewPayment {
            id: id.into(),
            scheme: Scheme::Exact,
            network: Network::eip155(31337),
            asset: Address::repeat_byte(0xaa),
            payer: Address::repeat_byte(0x11),
            pay_to: Address::repeat_byte(0x22),
            spender: None,
            value: U256::from(10_000u64),
            price: U256::from(10_000u64),
            nonce: B256::from(U256::from(nonce)),
            valid_after: U256::ZERO,
            deadline: U256::from(4_000_000_000u64),
            sig: Sig {
                r: B256::repeat_byte(1),
                s: B256::repeat_byte(2),
                v: 27,
            },
            route: "weather".into(),
            resource: None,
            format: "seed".into(),
            created_ms,
        }
    }

    async fn store_payment(store: &Store, p: &NewPayment, failed: bool) {
        let mut session = store.session(1).await.unwrap();
        session.insert(p).await.unwrap();
        session.commit().await.unwrap();
        if failed {
            assert!(store
                .fail_pending(&p.id, "authorization cancelled", false, clock::now_ms())
                .await
                .unwrap());
        }
    }

    #[tokio::test]
    async fn lists_recent_failed_payments_newest_first_bounded_and_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(&dir, Some(SECRET), 1024).await;
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let now = clock::now_ms();
        // max token TTL of the test app: 86400 s.
        let day_ms = 86_400_000;
        store_payment(
            &store,
            &payment("old-failed", 1, now - day_ms - 60_000),
            true,
        )
        .await;
        store_payment(&store, &payment("failed-a", 2, now - 120_000), true).await;
        store_payment(&store, &payment("failed-b", 3, now - 60_000), true).await;
        store_payment(&store, &payment("pending", 4, now - 30_000), false).await;

        // Authenticated like the token API.
        let (s, b) = call(&app, "GET", "/v1/revocations", None, None).await;
        assert_eq!(
            (s, json_of(&b)["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
        let (s, _) = call(&app, "GET", "/v1/revocations", Some("wrong"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        let (s, b) = call(&app, "GET", "/v1/revocations", Some(SECRET), None).await;
        assert_eq!(s, StatusCode::OK);
        let v = json_of(&b);
        let ids: Vec<&str> = v["revoked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["jti"].as_str().unwrap())
            .collect();
        // The pending payment is not revoked; the failure of a day ago has no live token.
        assert_eq!(ids, ["failed-b", "failed-a"]);
        assert_eq!(
            v["revoked"][0]["exp"].as_i64().unwrap(),
            (now - 60_000) / 1000 + 86_400
        );
        assert_eq!(v["truncated"], false);
        let as_of = v["as_of"].as_i64().unwrap();
        assert!((as_of - now / 1000).abs() <= 5, "{v}");

        // Bounded: newest first.
        let (s, b) = call(&app, "GET", "/v1/revocations?limit=1", Some(SECRET), None).await;
        assert_eq!(s, StatusCode::OK);
        let v = json_of(&b);
        assert_eq!(v["revoked"].as_array().unwrap().len(), 1);
        assert_eq!(v["revoked"][0]["jti"], "failed-b");
        assert_eq!(v["truncated"], true);

        let (s, b) = call(&app, "GET", "/v1/revocations?limit=0", Some(SECRET), None).await;
        assert_eq!(
            (s, json_of(&b)["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request"))
        );
    }
}
