//! Serde for amounts and nonces as decimal strings, the way x402 puts them on the wire.
//! Deserializing also accepts a JSON integer (the seed SDK sends `"value": 500000`) and a
//! 0x-prefixed hex string. Never a float.

use alloy_primitives::U256;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

pub fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
    d.deserialize_any(U256Visitor)
}

/// Parses "123", "0x7b": the forms an integer takes in x402 JSON.
pub fn parse_str(v: &str) -> Option<U256> {
    let v = v.trim();
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 64 {
            return None;
        }
        U256::from_str_radix(hex, 16).ok()
    } else if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        U256::from_str_radix(v, 10).ok()
    } else {
        None
    }
}

struct U256Visitor;

impl<'de> Visitor<'de> for U256Visitor {
    type Value = U256;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer, as a JSON integer or a decimal or 0x-hex string")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<U256, E> {
        Ok(U256::from(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<U256, E> {
        Ok(U256::from(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<U256, E> {
        u64::try_from(v)
            .map(U256::from)
            .map_err(|_| E::custom(format!("{v} is negative")))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<U256, E> {
        u128::try_from(v)
            .map(U256::from)
            .map_err(|_| E::custom(format!("{v} is negative")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<U256, E> {
        Err(E::custom(format!(
            "{v} is not an integer below 2^64 (fractional, or too large for a JSON number: larger integers go as decimal strings)"
        )))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<U256, E> {
        parse_str(v).ok_or_else(|| {
            E::custom(format!(
                "{} is not an integer in 0..2^256 (decimal or 0x-hex)",
                crate::shown::shown(v)
            ))
        })
    }
}

/// Same, for `Option<U256>`.
pub mod option {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Option<U256>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<U256>, D::Error> {
        #[derive(serde::Deserialize)]
        struct W(#[serde(with = "super")] U256);
        let o: Option<W> = serde::Deserialize::deserialize(d)?;
        Ok(o.map(|w| w.0))
    }
}
