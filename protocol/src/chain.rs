//! CAIP-2 network identifiers. Only EVM chains (`eip155:<chain id>`) are supported.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    pub chain_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network {0:?} is not a CAIP-2 EVM chain id like \"eip155:8453\"")]
pub struct NetworkError(pub String);

impl Network {
    pub const fn eip155(chain_id: u64) -> Self {
        Network { chain_id }
    }
}

impl FromStr for Network {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = s
            .strip_prefix("eip155:")
            .ok_or_else(|| NetworkError(s.to_string()))?;
        if id.is_empty()
            || !id.bytes().all(|b| b.is_ascii_digit())
            || (id.len() > 1 && id.starts_with('0'))
        {
            return Err(NetworkError(s.to_string()));
        }
        let chain_id: u64 = id.parse().map_err(|_| NetworkError(s.to_string()))?;
        if chain_id == 0 {
            return Err(NetworkError(s.to_string()));
        }
        Ok(Network { chain_id })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "eip155:{}", self.chain_id)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_caip2() {
        assert_eq!("eip155:8453".parse::<Network>().unwrap().chain_id, 8453);
        assert_eq!(Network::eip155(31337).to_string(), "eip155:31337");
        for bad in [
            "8453",
            "eip155:",
            "eip155:0",
            "eip155:08",
            "solana:abc",
            "eip155:-1",
            "eip155:1 ",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }
}
