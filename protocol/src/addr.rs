//! Addresses go out EIP-55 checksummed, as wallets and explorers print them.

use alloy_primitives::Address;
use serde::Serializer;

pub fn checksum<S: Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_checksum(None))
}

pub fn checksum_opt<S: Serializer>(a: &Option<Address>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.serialize_str(&a.to_checksum(None)),
        None => s.serialize_none(),
    }
}
