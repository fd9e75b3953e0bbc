//! Follows a settlement to its transaction hash: `GET <gateway origin>/x402/settlements/<id>`
//! or `GET <settler>/v1/settlements/<id>`, polled until `settled` or `failed`.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Url;
use x402_protocol::settler_api::{SettlementState, SettlementStatus};

#[derive(Debug, Clone)]
pub enum Source {
    /// The gateway (Envoy) origin, e.g. `http://127.0.0.1:10000`.
    Gateway(Url),
    /// The settler's base URL, e.g. `http://127.0.0.1:8080`.
    Settler(Url),
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("invalid base URL {0:?}")]
    Url(String),
    #[error("settlement id {0:?} is empty or contains '/'")]
    Id(String),
    #[error("GET {url} failed: {}", crate::pay::error_chain(.source))]
    Http { url: String, source: reqwest::Error },
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url}: not a settlement status: {detail}")]
    Body { url: String, detail: String },
    #[error("settlement {id}: no final state after {}s (last: {last})", .waited.as_secs())]
    Timeout {
        id: String,
        state: Option<SettlementState>,
        last: String,
        waited: Duration,
    },
}

/// The status URL of a settlement.
fn status_url(source: &Source, id: &str) -> Result<Url, StatusError> {
    if id.is_empty() || id.contains('/') {
        return Err(StatusError::Id(id.to_string()));
    }
    let (base, segments): (&Url, [&str; 3]) = match source {
        Source::Gateway(u) => (u, ["x402", "settlements", id]),
        Source::Settler(u) => (u, ["v1", "settlements", id]),
    };
    let mut u = base.clone();
    {
        let mut p = u
            .path_segments_mut()
            .map_err(|_| StatusError::Url(base.to_string()))?;
        p.pop_if_empty();
        p.extend(segments);
    }
    u.set_query(None);
    Ok(u)
}

/// One status read.
async fn fetch(http: &reqwest::Client, url: &Url) -> Result<SettlementStatus, StatusError> {
    let resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(|source| StatusError::Http {
            url: url.to_string(),
            source,
        })?;
    let status = resp.status();
    let text = resp.text().await.map_err(|source| StatusError::Http {
        url: url.to_string(),
        source,
    })?;
    if !status.is_success() {
        return Err(StatusError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body: text.chars().take(300).collect(),
        });
    }
    serde_json::from_str(&text).map_err(|e| StatusError::Body {
        url: url.to_string(),
        detail: e.to_string(),
    })
}

#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub interval: Duration,
    pub timeout: Duration,
    /// Show a spinner on stderr.
    pub progress: bool,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(120),
            progress: true,
        }
    }
}

fn describe(s: &SettlementStatus) -> String {
    let mut m = format!("settlement {}: {}", s.settlement_id, state_name(s.state));
    if let Some(tx) = &s.permit_tx {
        m.push_str(&format!(", permit tx {tx}"));
    }
    if let Some(tx) = &s.transfer_tx {
        m.push_str(&format!(", transfer tx {tx}"));
    }
    m
}

pub fn state_name(s: SettlementState) -> &'static str {
    match s {
        SettlementState::Pending => "pending",
        SettlementState::Submitted => "submitted",
        SettlementState::Settled => "settled",
        SettlementState::Failed => "failed",
    }
}

/// Polls until the settlement is `settled` or `failed` (both returned as `Ok`), or the timeout.
/// Transient HTTP errors are retried until the timeout; a 404 is retried too for a few
/// seconds (the gateway may answer before the settler stored it), then returned.
pub async fn follow(
    http: &reqwest::Client,
    source: &Source,
    id: &str,
    opts: &FollowOptions,
) -> Result<SettlementStatus, StatusError> {
    let url = status_url(source, id)?;
    let bar = if opts.progress {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(100));
        b.set_message(format!("settlement {id}: asking {url}"));
        b
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let mut last_state = None;
    let mut last: String;
    loop {
        match fetch(http, &url).await {
            Ok(s) => {
                last = describe(&s);
                bar.set_message(last.clone());
                last_state = Some(s.state);
                if matches!(s.state, SettlementState::Settled | SettlementState::Failed) {
                    bar.finish_and_clear();
                    return Ok(s);
                }
            }
            Err(e @ StatusError::Status { status: 404, .. })
                if start.elapsed() < Duration::from_secs(3) =>
            {
                last = e.to_string()
            }
            Err(
                e @ (StatusError::Status { .. }
                | StatusError::Body { .. }
                | StatusError::Id(_)
                | StatusError::Url(_)),
            ) => {
                bar.finish_and_clear();
                return Err(e);
            }
            Err(e) => {
                last = e.to_string();
                bar.set_message(format!("settlement {id}: {e} (retrying)"));
            }
        }
        if start.elapsed() >= opts.timeout {
            bar.finish_and_clear();
            return Err(StatusError::Timeout {
                id: id.to_string(),
                state: last_state,
                last,
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(opts.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let g = Source::Gateway("http://127.0.0.1:10000".parse().unwrap());
        assert_eq!(
            status_url(&g, "abc-1").unwrap().as_str(),
            "http://127.0.0.1:10000/x402/settlements/abc-1"
        );
        let s = Source::Settler("http://127.0.0.1:8080/base/".parse().unwrap());
        assert_eq!(
            status_url(&s, "x").unwrap().as_str(),
            "http://127.0.0.1:8080/base/v1/settlements/x"
        );
        assert!(status_url(&g, "a/b").is_err());
        assert!(status_url(&g, "").is_err());
        // Odd characters are percent-encoded, never interpreted.
        assert_eq!(
            status_url(&g, "a?b").unwrap().as_str(),
            "http://127.0.0.1:10000/x402/settlements/a%3Fb"
        );
    }
}
