//! Values the unit tests of several modules share: anvil's public dev keys and token addresses.

use alloy::primitives::Address;

/// Anvil dev key 0 (public test key): 0xf39F…2266.
pub(crate) const KEY0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// Anvil dev key 1 (public test key): 0x7099…79C8.
pub(crate) const KEY1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

/// Circle USDC on Sepolia.
pub(crate) fn sepolia_usdc() -> Address {
    "0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238"
        .parse()
        .unwrap()
}
