//! The EIP-712 messages a payer signs, hashed exactly as the token contract hashes them.
//! One definition for the client (signing) and the settler (recovering); each scheme's struct
//! lives in its [`crate::scheme`] module and is re-exported here.

use alloy_primitives::{B256, U256};
use alloy_sol_types::Eip712Domain;

use crate::method::PaymentMethod;
pub use crate::scheme::exact::typed::TransferWithAuthorization;
pub use crate::scheme::permit::typed::Permit;
use crate::scheme::ClientPayment;

/// A token's domain `{name, version, chainId, verifyingContract}` (no salt).
pub fn domain(
    name: &str,
    version: &str,
    chain_id: u64,
    token: alloy_primitives::Address,
) -> Eip712Domain {
    Eip712Domain::new(
        Some(name.to_string().into()),
        Some(version.to_string().into()),
        Some(U256::from(chain_id)),
        Some(token),
        None,
    )
}

/// The domain of a configured payment method's asset.
pub fn method_domain(method: &PaymentMethod) -> Eip712Domain {
    domain(
        &method.asset.name,
        &method.asset.version,
        method.network.chain_id,
        method.asset.address,
    )
}

/// The digest a parsed client payment was signed over, under `domain` (its scheme's message).
pub fn signing_hash(payment: &ClientPayment, domain: &Eip712Domain) -> B256 {
    payment.signing_hash(domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::keccak256;
    use alloy_sol_types::SolStruct;

    #[test]
    fn type_hashes_are_the_standard_ones() {
        assert_eq!(
            Permit::default().eip712_type_hash(),
            keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)")
        );
        assert_eq!(
            TransferWithAuthorization::default().eip712_type_hash(),
            keccak256("TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")
        );
    }
}
