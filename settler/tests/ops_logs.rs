//! `--log-format json` and request ids, against the real settler binary: every log line is
//! one JSON object; the lines of a request carry its `x-request-id` (Envoy's, passed on by
//! the filter) and the answer echoes it; a request without a usable id gets a fresh one.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The settler's log lines so far, each parsed (a line that is not JSON fails the test).
fn json_lines(env: &Env) -> Vec<Value> {
    env.settler
        .log()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The lines logged under request id `id`, waiting (bounded) until `want` of them are in.
async fn lines_of(env: &Env, id: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<Value> = json_lines(env)
            .into_iter()
            .filter(|l| l["span"]["request_id"] == id)
            .collect();
        if got.len() >= want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn json_log_lines_carry_the_request_id_and_the_answer_echoes_it() {
    let env = Env::start_with(None, None, &["--log-format", "json"]).await;
    let url = format!("{}/v1/tokens", env.settler.url());

    // A refused token request: the refusal and the answer are logged under its id.
    let id = "0b4f2d7e-ops-logs-refused";
    let resp = env
        .http
        .post(&url)
        .header("authorization", bearer())
        .header("x-request-id", id)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.headers()["x-request-id"], id);

    let lines = lines_of(&env, id, 2).await;
    let answered = lines
        .iter()
        .find(|l| l["message"] == "request answered")
        .unwrap_or_else(|| panic!("no 'request answered' line for {id}: {lines:?}"));
    assert_eq!(answered["status"], 400);
    assert_eq!(answered["span"]["method"], "POST");
    assert_eq!(answered["span"]["path"], "/v1/tokens");
    assert!(
        lines
            .iter()
            .any(|l| l["code"] == "invalid_json" && l["level"] == "INFO"),
        "the refusal is logged under the request id: {lines:?}"
    );
    // Nothing else was logged under this id.
    assert!(json_lines(&env)
        .iter()
        .filter(|l| l["span"]["request_id"] == id)
        .all(|l| l["span"]["path"] == "/v1/tokens"));

    // No id, or one unfit for a log line: a fresh UUID, echoed and logged.
    for sent in [None, Some("x".repeat(200)), Some("has space".to_string())] {
        let mut req = env
            .http
            .get(format!("{}/v1/settlements/no-such-id", env.settler.url()))
            .header("authorization", bearer());
        if let Some(s) = &sent {
            req = req.header("x-request-id", s);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        let got = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(
            uuid_like(&got),
            "sent {sent:?}: answered with request id {got:?}"
        );
        let lines = lines_of(&env, &got, 1).await;
        assert!(
            lines.iter().any(|l| l["message"] == "request answered"
                && l["status"] == 404
                && l["span"]["path"] == "/v1/settlements/no-such-id"),
            "sent {sent:?}: no line under {got}"
        );
    }

    // Start-up lines are JSON too (no request span).
    let all = json_lines(&env);
    assert!(all
        .iter()
        .any(|l| l["message"] == "x402 settler listening" && l.get("span").is_none()));
}

#[tokio::test]
async fn text_logs_stay_the_default() {
    let env = Env::start().await;
    let resp = env
        .http
        .get(format!("{}/healthz", env.settler.url()))
        .header("x-request-id", "text-logs-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "text-logs-1");
    let log = env.settler.log();
    assert!(log.contains("x402 settler listening"));
    assert!(log
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).is_err()));
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}
