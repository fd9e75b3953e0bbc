//! The EIP-712 messages a payer signs, hashed exactly as the token contract hashes them.
//! One definition for the client (signing) and the settler (recovering).

use alloy_primitives::{B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};

use crate::method::PaymentMethod;
use crate::payment::ClientPayment;

alloy_sol_types::sol! {
    /// EIP-2612 `Permit`. The struct names are part of the type hash: keep them.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Permit {
        address owner;
        address spender;
        uint256 value;
        uint256 nonce;
        uint256 deadline;
    }

    /// ERC-3009 `TransferWithAuthorization`.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

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

/// The digest a parsed client payment was signed over, under `domain`.
pub fn signing_hash(payment: &ClientPayment, domain: &Eip712Domain) -> B256 {
    match payment {
        ClientPayment::Permit(p) => Permit {
            owner: p.owner,
            spender: p.spender,
            value: p.value,
            nonce: p.nonce,
            deadline: p.deadline,
        }
        .eip712_signing_hash(domain),
        ClientPayment::Authorization(a) => TransferWithAuthorization {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: a.valid_after,
            validBefore: a.valid_before,
            nonce: a.nonce,
        }
        .eip712_signing_hash(domain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::keccak256;

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
