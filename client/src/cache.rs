//! Access tokens per origin + resource path, kept until they expire, so a second call to the
//! same route pays nothing. In memory; optionally mirrored to a JSON file (mode 0600, directory
//! 0700), by default `~/.cache/x402-pay/tokens.json` for the CLI.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Seconds before `exp` at which a token is no longer used (clock skew, request time).
pub(crate) const EXPIRY_MARGIN_SECS: i64 = 5;
/// A renewable token is renewed when it has expired or expires within this many seconds.
pub(crate) const RENEW_AHEAD_SECS: i64 = 10;
/// How long after `exp` a renewable token may still be renewed (the server's grace).
pub(crate) const RENEW_GRACE_SECS: i64 = x402_protocol::settler_api::RENEW_GRACE_SECS as i64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedToken {
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: i64,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub settlement_id: Option<String>,
    /// Where this short-lived token is renewed once its payment has settled (the 402's
    /// `access_token_renew_endpoint`, resolved); `None` when it is not renewable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_endpoint: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    tokens: BTreeMap<String, CachedToken>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error("token cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    tokens: BTreeMap<String, CachedToken>,
    file: Option<PathBuf>,
}

/// The cache key of a URL: `scheme://host:port/path` (query and fragment dropped).
pub(crate) fn key(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// `$XDG_CACHE_HOME/x402-pay/tokens.json`, else `$HOME/.cache/x402-pay/tokens.json`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("x402-pay").join("tokens.json"))
}

impl TokenCache {
    /// An in-memory cache.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A cache mirrored to `path`. A missing file is an empty cache; an unreadable or corrupt
    /// one is ignored (and overwritten on the next save): a cache never blocks a payment.
    pub(crate) fn with_file(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let tokens = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<FileFormat>(&b).ok())
            .map(|f| f.tokens)
            .unwrap_or_default();
        TokenCache {
            tokens,
            file: Some(path),
        }
    }

    /// A token for `key` still valid at `now` (with [`EXPIRY_MARGIN_SECS`]).
    pub(crate) fn get(&self, key: &str, now: i64) -> Option<&CachedToken> {
        self.tokens
            .get(key)
            .filter(|t| t.expires_at - EXPIRY_MARGIN_SECS > now)
    }

    /// A renewable token for `key` due for renewal at `now`: expired, or expiring within
    /// [`RENEW_AHEAD_SECS`], but not more than [`RENEW_GRACE_SECS`] ago.
    pub(crate) fn renewable(&self, key: &str, now: i64) -> Option<&CachedToken> {
        self.tokens.get(key).filter(|t| {
            t.renew_endpoint.is_some()
                && t.expires_at - RENEW_AHEAD_SECS <= now
                && now <= t.expires_at + RENEW_GRACE_SECS
        })
    }

    pub(crate) fn put(
        &mut self,
        key: &str,
        token: CachedToken,
        now: i64,
    ) -> Result<(), CacheError> {
        self.tokens.insert(key.to_string(), token);
        self.save(now)
    }

    pub(crate) fn remove(&mut self, key: &str, now: i64) -> Result<(), CacheError> {
        if self.tokens.remove(key).is_some() {
            self.save(now)?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Writes the file (if any) atomically with mode 0600; drops expired tokens first (a
    /// renewable one once its renewal grace is over too).
    fn save(&mut self, now: i64) -> Result<(), CacheError> {
        self.tokens.retain(|_, t| {
            t.expires_at > now
                || (t.renew_endpoint.is_some() && t.expires_at + RENEW_GRACE_SECS >= now)
        });
        let Some(path) = self.file.clone() else {
            return Ok(());
        };
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(io)?;
        }
        let body = serde_json::to_vec_pretty(&FileFormat {
            version: 1,
            tokens: self.tokens.clone(),
        })
        .unwrap_or_default();
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        {
            let mut f = open_private(&tmp).map_err(io)?;
            f.write_all(&body).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(exp: i64) -> CachedToken {
        CachedToken {
            access_token: "t".into(),
            expires_at: exp,
            route: Some("r".into()),
            settlement_id: None,
            renew_endpoint: None,
        }
    }

    #[test]
    fn renewable_tokens_are_due_near_expiry_and_kept_through_the_grace() {
        let mut c = TokenCache::new();
        let mut t = tok(1000);
        t.renew_endpoint = Some("http://h/x402/token/r/renew".into());
        c.put("k", t.clone(), 900).unwrap();
        c.put("plain", tok(1000), 900).unwrap();
        assert!(c.renewable("k", 900).is_none(), "not due yet");
        assert_eq!(c.renewable("k", 990), Some(&t));
        assert_eq!(c.renewable("k", 1000 + 600), Some(&t));
        assert!(c.renewable("k", 1000 + 601).is_none(), "past the grace");
        assert!(c.renewable("plain", 990).is_none(), "not renewable");
        // Saving after expiry keeps it (the grace), not the plain one.
        c.put("x", tok(5000), 1100).unwrap();
        assert!(c.renewable("k", 1100).is_some());
        assert!(!c.tokens.contains_key("plain"));
        c.put("x", tok(5000), 1700).unwrap();
        assert!(!c.tokens.contains_key("k"));
    }

    #[test]
    fn key_drops_query() {
        let u: reqwest::Url = "http://h:8080/api/weather?city=x#f".parse().unwrap();
        assert_eq!(key(&u), "http://h:8080/api/weather");
    }

    #[test]
    fn expiry_with_margin() {
        let mut c = TokenCache::new();
        c.put("k", tok(1000), 900).unwrap();
        assert!(c.get("k", 900).is_some());
        assert!(c.get("k", 995).is_none());
        assert!(c.get("other", 900).is_none());
        c.remove("k", 900).unwrap();
        assert!(c.get("k", 900).is_none());
    }

    #[test]
    fn file_round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("tokens.json");
        let mut c = TokenCache::with_file(&path);
        c.put("k", tok(2000), 1000).unwrap();
        c.put("old", tok(500), 1000).unwrap(); // already expired: not written
        let c2 = TokenCache::with_file(&path);
        assert_eq!(c2.get("k", 1000), Some(&tok(2000)));
        assert!(c2.get("old", 0).is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(path.parent().unwrap())
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o700
            );
        }
        // A corrupt file is an empty cache.
        std::fs::write(&path, b"not json").unwrap();
        assert!(TokenCache::with_file(&path).is_empty());
    }
}
