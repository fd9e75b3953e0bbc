//! What the unit tests of several modules share, in one place instead of tests importing
//! each other's `tests` modules: sample payments (here), the HTTP adapters in process
//! ([`api`]), and the lane's fake chain and store ([`lane`]).

pub(crate) mod api;
pub(crate) mod lane;

use alloy::primitives::{Address, B256, U256};
use x402_protocol::payment::Sig;
use x402_protocol::{Network, Scheme};

use crate::store::NewPayment;

/// An accepted ERC-3009 payment of 0.01 (6 decimals) on the local chain, with id `id`.
pub(crate) fn new_payment(id: &str) -> NewPayment {
    NewPayment {
        id: id.into(),
        scheme: Scheme::Exact,
        network: Network::eip155(31337),
        asset: Address::repeat_byte(0xaa),
        payer: Address::repeat_byte(0x11),
        pay_to: Address::repeat_byte(0x22),
        spender: None,
        value: U256::from(10_000u64),
        price: U256::from(10_000u64),
        nonce: B256::repeat_byte(5),
        valid_after: U256::ZERO,
        deadline: U256::from(2_000_000_000u64),
        sig: Sig {
            r: B256::repeat_byte(1),
            s: B256::repeat_byte(2),
            v: 27,
        },
        route: "weather".into(),
        resource: None,
        format: "seed".into(),
        created_ms: 1_000,
    }
}
