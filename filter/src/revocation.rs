//! The revocation list: ids (`jti` = settlement id) of tokens whose payment failed to
//! settle, each with the time after which no token of that id is valid any more.
//!
//! Read from the settler's `GET /v1/revocations` answer, kept in every worker, and passed
//! between workers through proxy-wasm shared data in a compact text form (`jti exp` lines).
//! Bounded: at most `max_entries`, the ones expiring last kept; entries past their `exp`
//! (plus the clock leeway) are dropped, as no token they name can be accepted anyway.

use std::collections::HashMap;

use serde::Deserialize;

/// Longest `jti` kept (the settler's ids are UUIDs, 36 characters).
const MAX_JTI_LEN: usize = 128;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RevocationList {
    /// jti -> exp (unix seconds).
    entries: HashMap<String, i64>,
}

/// What a worker knows of the revocation list (kept by `flow::revocation`).
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    pub(crate) list: RevocationList,
    /// Generation of the shared list held (0: none loaded).
    pub(crate) generation: u64,
    /// When this worker's fetch started, while it waits for the answer (ms).
    pub(crate) in_flight: Option<u64>,
    pub(crate) last_failure_log_ms: Option<u64>,
    pub(crate) failures_unlogged: u64,
}

#[derive(Deserialize)]
struct Answer {
    revoked: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    jti: String,
    exp: i64,
}

/// A `jti` the list can hold: printable ASCII, no spaces, 1..=128 characters.
fn valid_jti(jti: &str) -> bool {
    !jti.is_empty() && jti.len() <= MAX_JTI_LEN && jti.bytes().all(|b| b.is_ascii_graphic())
}

impl RevocationList {
    /// From entries, dropping the invalid and the expired (`now > exp + leeway`) and keeping
    /// the `max` that expire last.
    fn from_entries(
        entries: impl IntoIterator<Item = (String, i64)>,
        now: i64,
        leeway: i64,
        max: usize,
    ) -> Self {
        let mut live: Vec<(String, i64)> = entries
            .into_iter()
            .filter(|(jti, exp)| valid_jti(jti) && now <= exp.saturating_add(leeway))
            .collect();
        if live.len() > max {
            live.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
            live.truncate(max);
        }
        let mut map = HashMap::with_capacity(live.len());
        for (jti, exp) in live {
            let e = map.entry(jti).or_insert(exp);
            *e = (*e).max(exp);
        }
        RevocationList { entries: map }
    }

    /// The settler's answer (`{"revoked": [{"jti", "exp"}], ...}`).
    pub(crate) fn from_settler(
        body: &[u8],
        now: i64,
        leeway: i64,
        max: usize,
    ) -> Result<Self, String> {
        let a: Answer = serde_json::from_slice(body)
            .map_err(|e| format!("the revocation list is not the expected JSON: {e}"))?;
        Ok(Self::from_entries(
            a.revoked.into_iter().map(|e| (e.jti, e.exp)),
            now,
            leeway,
            max,
        ))
    }

    /// The shared-data form: one `jti exp` line per entry, sorted (equal lists encode equal).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v: Vec<(&String, &i64)> = self.entries.iter().collect();
        v.sort_unstable();
        let mut out = Vec::with_capacity(v.len() * 48);
        for (jti, exp) in v {
            out.extend_from_slice(jti.as_bytes());
            out.push(b' ');
            out.extend_from_slice(exp.to_string().as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Reads [`RevocationList::encode`]'s form; malformed lines are skipped.
    pub(crate) fn decode(bytes: &[u8], now: i64, leeway: i64, max: usize) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let entries = text.lines().filter_map(|line| {
            let (jti, exp) = line.split_once(' ')?;
            Some((jti.to_string(), exp.parse::<i64>().ok()?))
        });
        Self::from_entries(entries, now, leeway, max)
    }

    /// Drops the entries past their `exp` (+ leeway).
    pub(crate) fn prune(&mut self, now: i64, leeway: i64) {
        self.entries
            .retain(|_, exp| now <= exp.saturating_add(leeway));
    }

    pub(crate) fn is_revoked(&self, jti: &str) -> bool {
        self.entries.contains_key(jti)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settler_answer_bounded_and_expiring() {
        let body = br#"{"revoked": [{"jti": "a", "exp": 1000}, {"jti": "b", "exp": 2000},
            {"jti": "c", "exp": 3000}, {"jti": "old", "exp": 10}, {"jti": "has space", "exp": 5000}],
            "as_of": 100, "truncated": false}"#;
        let l = RevocationList::from_settler(body, 100, 5, 10).unwrap();
        assert_eq!(l.len(), 3);
        assert!(l.is_revoked("a") && l.is_revoked("b") && l.is_revoked("c"));
        assert!(!l.is_revoked("old"), "expired");
        assert!(!l.is_revoked("has space"), "invalid id");
        // Bounded: the entries expiring last are kept.
        let l2 = RevocationList::from_settler(body, 100, 5, 2).unwrap();
        assert_eq!(l2.len(), 2);
        assert!(l2.is_revoked("b") && l2.is_revoked("c"));
        // Expiry with leeway.
        let mut l3 = l.clone();
        l3.prune(1005, 5);
        assert_eq!(l3.len(), 3);
        l3.prune(1006, 5);
        assert_eq!(l3.len(), 2);
        assert!(!l3.is_revoked("a"));
        assert!(RevocationList::from_settler(b"{}", 0, 0, 1).is_err());
        assert!(RevocationList::from_settler(b"<html>", 0, 0, 1).is_err());
    }

    #[test]
    fn shared_form_round_trips() {
        let body = br#"{"revoked": [{"jti": "b", "exp": 2000}, {"jti": "a", "exp": 1000}]}"#;
        let l = RevocationList::from_settler(body, 0, 0, 10).unwrap();
        let enc = l.encode();
        assert_eq!(enc, b"a 1000\nb 2000\n");
        assert_eq!(RevocationList::decode(&enc, 0, 0, 10), l);
        assert_eq!(RevocationList::decode(&enc, 1500, 0, 10).len(), 1);
        assert_eq!(
            RevocationList::decode(b"junk\nx y\nc 5\n", 0, 0, 10).len(),
            1
        );
    }
}
