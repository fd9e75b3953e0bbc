//! The settler's keys, learned from its JWKS (`settler.jwks`): key rotation without a config
//! push.
//!
//! On the root's tick, each worker whose last fetch is `settler.jwks.interval_ms` old calls
//! `GET <settler.jwks.path>` on the settler cluster (a JWKS is a few hundred bytes and the
//! interval is long, so each worker fetches its own instead of coordinating). The answer
//! replaces the learned keys; each learned key verifies only tokens whose `iss` is
//! `settler.jwks.issuer`, and the configured `token_keys` win any `kid` both name. A failed
//! fetch (no answer, not 200, not a JWKS) keeps the keys learned last, and is logged at most
//! once a minute.
//!
//! Verdicts a learned key gave stay in the caches (the worker's and the shared table) until
//! the token expires, also after the key left the JWKS, as a revocation would be needed to
//! end a token early in any case.

use std::time::Duration;

use x402_protocol::token::jwks_keys;

use super::worker::Worker;
use super::{log, not_ok_reason, now_ms, settler_reply};
use crate::host_api::Host;
use crate::learned_keys::{effective_keys, JwksState};

/// Failed fetches are logged at most this often.
const FAILURE_LOG_EVERY_MS: u64 = 60_000;

/// The root's tick: fetches the JWKS when due.
pub(crate) fn on_tick(worker: &Worker, host: &impl Host) {
    let cfg = &worker.cfg;
    let Some(jwks) = &cfg.settler.jwks else {
        return;
    };
    let Ok(mut st) = worker.jwks.try_borrow_mut() else {
        return;
    };
    let now = now_ms(host);
    if let Some((_, started)) = st.in_flight {
        // The host answers every callout (a timeout too); this only guards against one lost.
        let patience = cfg.settler.timeout + Duration::from_secs(1);
        if now < started.saturating_add(patience.as_millis() as u64) {
            return;
        }
        st.in_flight = None;
    }
    let interval = jwks.interval.as_millis() as u64;
    let due = match st.last_fetch_ms {
        None => true,
        // A clock that went back more than an interval must not stop the fetches.
        Some(t) => now >= t.saturating_add(interval) || now.saturating_add(interval) < t,
    };
    if !due {
        return;
    }
    st.last_fetch_ms = Some(now);
    let mut headers = vec![
        (":method", "GET"),
        (":path", jwks.path.as_str()),
        (":authority", cfg.settler.authority.as_str()),
        ("accept", "application/json"),
    ];
    if let Some(auth) = &cfg.settler.auth {
        headers.push(("authorization", auth.header_value()));
    }
    match host.dispatch_callout(&cfg.settler.cluster, headers, &[], cfg.settler.timeout) {
        Ok(id) => st.in_flight = Some((id, now)),
        Err(e) => failed(
            worker,
            host,
            &mut st,
            now,
            &format!("cannot call the settler cluster ({e})"),
        ),
    }
}

/// Is `id` the JWKS fetch this worker has under way?
// Natively only the tests call it (host.rs is wasm only).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn owns_callout(worker: &Worker, id: u32) -> bool {
    worker
        .jwks
        .try_borrow()
        .is_ok_and(|st| st.in_flight.is_some_and(|(own, _)| own == id))
}

/// The settler's answer to the fetch: the learned keys are replaced, or kept on failure.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn on_response(worker: &Worker, host: &impl Host, body_size: usize) {
    let Some(jwks) = &worker.cfg.settler.jwks else {
        return;
    };
    let Ok(mut st) = worker.jwks.try_borrow_mut() else {
        return;
    };
    st.in_flight = None;
    let reply = settler_reply(host, body_size);
    let now = now_ms(host);
    if reply.status != Some(200) {
        let why = not_ok_reason(reply.status);
        failed(worker, host, &mut st, now, &why);
        return;
    }
    let (learned, skipped) = match jwks_keys(&reply.body, &jwks.issuer) {
        Ok(k) => k,
        Err(e) => {
            failed(worker, host, &mut st, now, e);
            return;
        }
    };
    if learned.is_empty() {
        failed(worker, host, &mut st, now, "the JWKS lists no usable key");
        return;
    }
    if learned == st.learned {
        return;
    }
    log!(
        host,
        Info,
        "x402: jwks: learned {} key(s) for issuer {:?} from {} ({} entr(y/ies) skipped)",
        learned.len(),
        jwks.issuer,
        jwks.path,
        skipped
    );
    worker.set_keys(effective_keys(&worker.cfg.keys, &learned));
    st.learned = learned;
}

/// A fetch that failed: the learned keys stay; logged at most once a minute.
fn failed(worker: &Worker, host: &impl Host, st: &mut JwksState, now: u64, why: &str) {
    st.failures_unlogged += 1;
    let quiet = st
        .last_failure_log_ms
        .is_some_and(|t| now < t.saturating_add(FAILURE_LOG_EVERY_MS));
    if quiet {
        return;
    }
    log!(
        host,
        Warn,
        "x402: jwks: fetching the settler's keys from cluster {:?} failed: {why} ({} failure(s) since the last report); keeping the {} key(s) learned last",
        worker.cfg.settler.cluster,
        st.failures_unlogged,
        st.learned.len()
    );
    st.failures_unlogged = 0;
    st.last_failure_log_ms = Some(now);
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use x402_protocol::token::{mint, TokenAlg, TokenSigningKey};

    use super::*;
    use crate::flow::tick;
    use crate::test_fixtures::fake_host::FakeHost;
    use crate::test_fixtures::{claims, sample};

    const NOW: i64 = 1_800_000_000;

    fn jwks_callouts(h: &FakeHost) -> Vec<u32> {
        h.callouts
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, c)| c.header(":path") == Some("/.well-known/jwks.json"))
            .map(|(i, _)| i as u32 + 1)
            .collect()
    }

    #[test]
    fn keys_are_learned_for_the_issuer_and_kept_when_a_fetch_fails() {
        let h = FakeHost::new();
        h.set_now_ms(NOW as u64 * 1000);
        let mut cfg = sample();
        cfg["settler"]["jwks"] = json!({"issuer": "x402-settler", "interval_ms": 1000});
        let w = Worker::configure(&h, cfg.to_string().as_bytes()).unwrap();
        let ed = TokenSigningKey::from_secret(TokenAlg::EdDsa, &[3; 32]).unwrap();
        let kid = ed.verifying_key().key_id();
        let mut c = claims("weather", 10_000);
        c.iss = "x402-settler".into();
        let t = mint(&ed, &kid, c.clone(), NOW, 300);
        assert!(w.keys().verify(&t, NOW, 5).is_err(), "not known yet");

        tick::on_tick(&w, &h);
        let ids = jwks_callouts(&h);
        assert_eq!(ids.len(), 1, "one fetch");
        assert!(owns_callout(&w, ids[0]));
        assert!(!owns_callout(&w, ids[0] + 100));
        // Not again while it is under way.
        tick::on_tick(&w, &h);
        assert_eq!(jwks_callouts(&h).len(), 1);

        let doc = json!({"keys": [ed.verifying_key().jwk(&kid), {"kty": "RSA", "kid": "r"}]});
        let size = h.callout_answers(&[(":status", "200")], doc.to_string().as_bytes());
        on_response(&w, &h, size);
        assert!(w.keys().verify(&t, NOW, 5).is_ok(), "learned");
        assert!(w.keys().get("k1").is_some(), "token_keys stay");
        c.iss = "someone-else".into();
        let foreign = mint(&ed, &kid, c, NOW, 300);
        assert!(w.keys().verify(&foreign, NOW, 5).is_err(), "issuer bound");

        // Due again after the interval; a 500 and a non-JWKS keep the learned key.
        h.set_now_ms(NOW as u64 * 1000 + 1000);
        tick::on_tick(&w, &h);
        assert_eq!(jwks_callouts(&h).len(), 2);
        on_response(&w, &h, h.callout_answers(&[(":status", "500")], b"{}"));
        assert!(w.keys().verify(&t, NOW, 5).is_ok());
        assert!(h.logged(log::Level::Warn, "x402: jwks: fetching"));
        h.set_now_ms(NOW as u64 * 1000 + 2000);
        tick::on_tick(&w, &h);
        on_response(&w, &h, h.callout_answers(&[(":status", "200")], b"[1]"));
        assert!(w.keys().verify(&t, NOW, 5).is_ok());
    }

    #[test]
    fn no_jwks_config_no_fetch() {
        let h = FakeHost::new();
        h.set_now_ms(NOW as u64 * 1000);
        let w = Worker::configure(&h, sample().to_string().as_bytes()).unwrap();
        tick::on_tick(&w, &h);
        assert!(jwks_callouts(&h).is_empty());
    }
}
