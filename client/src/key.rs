//! The payer's key: `--key-file PATH`, else env `X402_PRIVATE_KEY`, else `EVM_PRIVATE_KEY`.
//! Hex of 32 bytes, `0x` optional, surrounding whitespace ignored. The key never appears in
//! messages, logs or `Debug` output.

use std::path::{Path, PathBuf};

use alloy::signers::local::PrivateKeySigner;

const KEY_ENV_VARS: [&str; 2] = ["X402_PRIVATE_KEY", "EVM_PRIVATE_KEY"];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key: pass --key-file PATH or set X402_PRIVATE_KEY (or EVM_PRIVATE_KEY)")]
    Missing,
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key from {0} is not a 32-byte hex secp256k1 private key")]
    Invalid(String),
}

/// Parses a hex private key; the error names only `origin`.
fn parse_key(text: &str, origin: &str) -> Result<PrivateKeySigner, KeyError> {
    let t = text.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError::Invalid(origin.to_string()));
    }
    hex.parse::<PrivateKeySigner>()
        .map_err(|_| KeyError::Invalid(origin.to_string()))
}

/// Loads the key from the file if given, else from the environment.
pub fn load_key(key_file: Option<&Path>) -> Result<PrivateKeySigner, KeyError> {
    if let Some(p) = key_file {
        let text = std::fs::read_to_string(p).map_err(|source| KeyError::Read {
            path: p.to_path_buf(),
            source,
        })?;
        return parse_key(&text, &p.display().to_string());
    }
    for var in KEY_ENV_VARS {
        if let Ok(v) = std::env::var(var) {
            if !v.trim().is_empty() {
                return parse_key(&v, var);
            }
        }
    }
    Err(KeyError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_never_echoes() {
        let k = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        assert_eq!(
            parse_key(&format!("  {k}\n"), "f").unwrap().address(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
                .parse::<alloy::primitives::Address>()
                .unwrap()
        );
        let bad = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ffzz";
        let e = parse_key(bad, "X402_PRIVATE_KEY").unwrap_err().to_string();
        assert!(!e.contains("ac0974"), "{e}");
        assert!(parse_key("0x00", "x").is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, k).unwrap();
        assert!(load_key(Some(&f)).is_ok());
        assert!(matches!(
            load_key(Some(&dir.path().join("none"))),
            Err(KeyError::Read { .. })
        ));
    }
}
