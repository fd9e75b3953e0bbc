//! Revoked tokens, learned from the settler without a callout per request.
//!
//! On the root's tick, each worker:
//! 1. reads the small shared `state` value (`<last fetch ms> <generation>`) and, when the
//!    generation is not the one it holds, loads the shared list (`list` key) — so a list one
//!    worker fetched reaches every worker within a tick;
//! 2. when the last fetch is `revocation.interval_ms` old, claims the next fetch by writing
//!    `state` with the compare-and-swap version it read: of the workers ticking at once, one
//!    wins and calls `GET <revocation.path>?limit=<max_entries>` on the settler cluster.
//!
//! The answer (root context `on_http_call_response`) replaces the worker's list; a list that
//! changed is written to `list` and the generation bumped. A failed fetch keeps the last
//! list, is counted (`x402_revocation_fetch_failures`) and logged at most once a minute.
//! Requests then refuse a revoked token's id with the 402 reason `revoked`, whether the
//! token's verdict comes from the cache or not (see `request.rs`).

use std::time::Duration;

use super::worker::Worker;
use super::{log, not_ok_reason, now_ms, now_secs, settler_reply};
use crate::config::FilterConfig;
use crate::host_api::Host;
use crate::metrics::Counter;
use crate::revocation::{RevocationList, Revocations};

/// Failed fetches are logged at most this often (the count says how many there were).
const FAILURE_LOG_EVERY_MS: u64 = 60_000;
/// Tries at bumping the shared generation when other workers write `state` meanwhile.
const CAS_TRIES: usize = 4;

/// The shared-data keys of one filter configuration (settler cluster and path), so two
/// plugins sharing a VM id keep their lists apart.
struct Keys {
    state: String,
    list: String,
}

impl Keys {
    fn of(cfg: &FilterConfig) -> Keys {
        let base = format!(
            "x402.revocations.{}.{}",
            cfg.settler.cluster, cfg.revocation.path
        );
        Keys {
            state: format!("{base}.state"),
            list: format!("{base}.list"),
        }
    }
}

/// `<last fetch ms> <generation>`; `None` when malformed.
fn parse_state(v: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (t, g) = s.split_once(' ')?;
    Some((t.parse().ok()?, g.parse().ok()?))
}

/// The root's tick: picks up a newer shared list, then fetches when due and no other
/// worker claimed the fetch.
pub(crate) fn on_tick(worker: &Worker, host: &impl Host) {
    let Ok(mut r) = worker.revocations.try_borrow_mut() else {
        return;
    };
    let cfg = &worker.cfg;
    let keys = Keys::of(cfg);
    let now = now_ms(host);
    let (last_fetch, generation, cas) = match host.shared_data_get(&keys.state) {
        Some((v, cas)) => match parse_state(&v) {
            Some((t, g)) => (Some(t), g, Some(cas)),
            None => (None, 0, Some(cas)),
        },
        None => (None, 0, None),
    };
    if generation != r.generation {
        if let Some((bytes, _)) = host.shared_data_get(&keys.list) {
            r.list = RevocationList::decode(
                &bytes,
                now_secs(host),
                cfg.clock_leeway_secs,
                cfg.revocation.max_entries,
            );
            r.generation = generation;
        }
    }
    if let Some(started) = r.in_flight {
        // The host answers every callout (a timeout too); this only guards against one lost.
        let patience = cfg.settler.timeout + Duration::from_secs(1);
        if now < started.saturating_add(patience.as_millis() as u64) {
            return;
        }
        r.in_flight = None;
    }
    let interval = cfg.revocation.interval.as_millis() as u64;
    let due = match last_fetch {
        None => true,
        // A clock that went back more than an interval must not stop the fetches.
        Some(t) => now >= t.saturating_add(interval) || now.saturating_add(interval) < t,
    };
    if !due {
        return;
    }
    // Once an interval: entries past their exp go even while fetches fail.
    r.list.prune(now_secs(host), cfg.clock_leeway_secs);
    let claim = format!("{now} {generation}");
    if host
        .shared_data_set(&keys.state, claim.as_bytes(), cas)
        .is_err()
    {
        // Another worker claimed this fetch.
        return;
    }
    let path = format!(
        "{}?limit={}",
        cfg.revocation.path, cfg.revocation.max_entries
    );
    let mut headers = vec![
        (":method", "GET"),
        (":path", path.as_str()),
        (":authority", cfg.settler.authority.as_str()),
        ("accept", "application/json"),
    ];
    if let Some(auth) = &cfg.settler.auth {
        headers.push(("authorization", auth.header_value()));
    }
    worker.count(host, Counter::RevocationFetches);
    match host.dispatch_callout(&cfg.settler.cluster, headers, &[], cfg.settler.timeout) {
        Ok(_) => r.in_flight = Some(now),
        Err(e) => failed(
            worker,
            host,
            &mut r,
            now,
            &format!("cannot call the settler cluster ({e})"),
        ),
    }
}

/// The settler's answer to the root's fetch.
pub(crate) fn on_response(worker: &Worker, host: &impl Host, body_size: usize) {
    let Ok(mut r) = worker.revocations.try_borrow_mut() else {
        return;
    };
    r.in_flight = None;
    let cfg = &worker.cfg;
    let reply = settler_reply(host, body_size);
    let now = now_ms(host);
    if reply.status != Some(200) {
        let why = not_ok_reason(reply.status);
        failed(worker, host, &mut r, now, &why);
        return;
    }
    let list = match RevocationList::from_settler(
        &reply.body,
        (now / 1000) as i64,
        cfg.clock_leeway_secs,
        cfg.revocation.max_entries,
    ) {
        Ok(l) => l,
        Err(e) => {
            failed(worker, host, &mut r, now, &e);
            return;
        }
    };
    if list == r.list {
        return;
    }
    let keys = Keys::of(cfg);
    if let Err(e) = host.shared_data_set(&keys.list, &list.encode(), None) {
        log!(
            host,
            Warn,
            "x402: revocations: cannot share the list with the other workers ({e}); this worker applies it"
        );
        r.list = list;
        return;
    }
    r.list = list;
    for _ in 0..CAS_TRIES {
        let (cas, (last, generation)) = match host.shared_data_get(&keys.state) {
            Some((v, cas)) => (Some(cas), parse_state(&v).unwrap_or((now, 0))),
            None => (None, (now, 0)),
        };
        let next = generation.wrapping_add(1).max(1);
        let state = format!("{last} {next}");
        if host
            .shared_data_set(&keys.state, state.as_bytes(), cas)
            .is_ok()
        {
            r.generation = next;
            return;
        }
    }
    log!(
        host,
        Warn,
        "x402: revocations: the shared list's generation could not be bumped; other workers pick it up after the next fetch"
    );
}

/// A fetch that failed: the last list stays; counted, logged at most once a minute.
fn failed(worker: &Worker, host: &impl Host, r: &mut Revocations, now: u64, why: &str) {
    worker.count(host, Counter::RevocationFetchFailures);
    r.failures_unlogged += 1;
    let quiet = r
        .last_failure_log_ms
        .is_some_and(|t| now < t.saturating_add(FAILURE_LOG_EVERY_MS));
    if quiet {
        return;
    }
    log!(
        host,
        Warn,
        "x402: revocations: fetching {} from cluster {:?} failed: {why} ({} failure(s) since the last report); keeping the last list of {} id(s)",
        worker.cfg.revocation.path,
        worker.cfg.settler.cluster,
        r.failures_unlogged,
        r.list.len()
    );
    r.failures_unlogged = 0;
    r.last_failure_log_ms = Some(now);
}
