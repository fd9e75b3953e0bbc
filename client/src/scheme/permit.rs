//! `permit`: an EIP-2612 `permit` letting the settler's wallet (the spender) pull the price,
//! which it then moves to `pay_to`. The permit nonce is the token's `nonces(owner)`, read over
//! the network's RPC after checking that RPC serves that chain. No x402 v2 form.

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::Signature;
use alloy::sol_types::SolStruct;
use reqwest::Url;
use serde_json::{json, Value};
use x402_protocol::challenge::{SeedComponent, SEED_PROTOCOL_VERSION};
use x402_protocol::eip712::Permit as PermitMessage;
use x402_protocol::{Network, Scheme};

use super::signing::{
    check_signer, json_uint, now_naive, seed_signature, sign_digest, SignError, TokenDomain,
};
use super::{BoxFuture, Choice, PaymentScheme, SeedContext, SeedError, Signed};

alloy::sol! {
    #[sol(rpc)]
    interface IErc2612 {
        function nonces(address owner) external view returns (uint256);
    }
}

/// The `permit` scheme module.
pub(crate) struct Permit;

impl PaymentScheme for Permit {
    fn scheme(&self) -> Scheme {
        Scheme::Permit
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["eip2612"]
    }

    fn signed_what(&self) -> &'static str {
        "EIP-2612 permit"
    }

    fn check_seed(
        &self,
        c: &SeedComponent,
        network: Network,
        has_rpc: &dyn Fn(Network) -> bool,
    ) -> Result<Option<Address>, String> {
        let spender = c.spender.unwrap_or(c.metadata.wallet_address);
        if spender == Address::ZERO {
            return Err("permit without a spender".into());
        }
        if !has_rpc(network) {
            return Err(format!(
                "permit needs an RPC for {network} to read the nonce (add --rpc {network}=URL)"
            ));
        }
        Ok(Some(spender))
    }

    fn sign_seed<'a>(
        &'a self,
        ctx: &'a SeedContext<'a>,
        c: &'a Choice,
        now: u64,
    ) -> BoxFuture<'a, Result<Signed, SeedError>> {
        Box::pin(async move {
            let signer = ctx.signer;
            let spender = c
                .spender
                .ok_or_else(|| SignError::Signer("permit without spender".into()))?;
            let nonce = read_nonce(ctx, c.network, &c.domain).await?;
            (ctx.on_nonce)(c.network, nonce);
            let deadline = now + ctx.permit_ttl_secs;
            let body = sign_permit(
                signer,
                &c.domain,
                signer.address(),
                spender,
                c.amount,
                nonce,
                U256::from(deadline),
            )?;
            Ok(Signed {
                body,
                valid_until: deadline,
            })
        })
    }
}

/// Reads `nonces(owner)` on the component's chain, after checking the RPC is that chain.
async fn read_nonce(
    ctx: &SeedContext<'_>,
    network: Network,
    domain: &TokenDomain,
) -> Result<U256, SeedError> {
    let url = ctx.rpc.get(&network).cloned().unwrap_or_default();
    let rpc_err = |detail: String| SeedError::Rpc {
        network,
        url: url.clone(),
        detail,
    };
    let parsed: Url = url.parse().map_err(|_| rpc_err("not a URL".into()))?;
    let provider = ProviderBuilder::new().connect_http(parsed);
    let got = provider
        .get_chain_id()
        .await
        .map_err(|e| rpc_err(e.to_string()))?;
    if got != network.chain_id {
        return Err(SeedError::RpcChain { network, url, got });
    }
    let token = IErc2612::new(domain.verifying_contract, &provider);
    token
        .nonces(ctx.signer.address())
        .call()
        .await
        .map_err(|e| rpc_err(format!("nonces(): {e}")))
}

/// The EIP-712 digest the token checks for a permit.
pub(crate) fn permit_signing_hash(domain: &TokenDomain, permit: &PermitMessage) -> B256 {
    permit.eip712_signing_hash(&domain.eip712())
}

/// Signs a permit, refusing if the key is not its owner (v is 27/28 via `v_byte()`).
fn permit_signature(
    signer: &PrivateKeySigner,
    domain: &TokenDomain,
    permit: &PermitMessage,
) -> Result<Signature, SignError> {
    check_signer(signer, permit.owner, "owner")?;
    sign_digest(signer, &permit_signing_hash(domain, permit))
}

/// Signs an EIP-2612 permit and returns the seed token-request body
/// (shape of `seed-0.1-eip2612-token-request.json`).
pub fn sign_permit(
    signer: &PrivateKeySigner,
    domain: &TokenDomain,
    owner: Address,
    spender: Address,
    value: U256,
    nonce: U256,
    deadline: U256,
) -> Result<Value, SignError> {
    let permit = PermitMessage {
        owner,
        spender,
        value,
        nonce,
        deadline,
    };
    let sig = permit_signature(signer, domain, &permit)?;
    Ok(json!({
        "version": SEED_PROTOCOL_VERSION,
        "permit": {
            "permit_type": "EIP2612",
            "signature": seed_signature("EIP2612", &sig),
            "created_at": now_naive(),
            "owner": owner.to_checksum(None),
            "spender": spender.to_checksum(None),
            "token": domain.verifying_contract.to_checksum(None),
            "value": json_uint(value),
            "nonce": json_uint(nonce),
            "deadline": json_uint(deadline),
            "chain_id": domain.chain_id,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{sepolia_usdc as token, KEY0, KEY1};
    use x402_protocol::payment::{parse_payment_value, ClientPayment, PaymentFormat};

    #[test]
    fn permit_body_has_seed_shape_and_recovers_to_owner() {
        let signer: PrivateKeySigner = KEY1.parse().unwrap();
        let domain = TokenDomain::usdc(11155111, token());
        let spender: Address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            .parse()
            .unwrap();
        let body = sign_permit(
            &signer,
            &domain,
            signer.address(),
            spender,
            U256::from(500_000u64),
            U256::from(3u64),
            U256::from(1795497709u64),
        )
        .unwrap();
        assert_eq!(body["version"], "Version 0.1");
        let p = &body["permit"];
        assert_eq!(p["permit_type"], "EIP2612");
        assert_eq!(p["owner"], "0x70997970C51812dc3A010C7d01b50e0d17dc79C8");
        assert_eq!(p["value"], 500000);
        assert_eq!(p["nonce"], 3);
        assert_eq!(p["chain_id"], 11155111);
        assert_eq!(p["signature"]["r"].as_str().unwrap().len(), 66);
        assert_eq!(p["signature"]["s"].as_str().unwrap().len(), 66);
        // The gateway's own parser accepts it, and the signature recovers to the owner over
        // the EIP-712 digest computed independently.
        let (parsed, fmt) = parse_payment_value(&body).unwrap();
        assert_eq!(fmt, PaymentFormat::Seed);
        let ClientPayment::Permit(pp) = parsed else {
            panic!("not a permit")
        };
        let digest = permit_signing_hash(
            &domain,
            &PermitMessage {
                owner: pp.owner,
                spender: pp.spender,
                value: pp.value,
                nonce: pp.nonce,
                deadline: pp.deadline,
            },
        );
        let sig = Signature::from_raw(&pp.sig.to_bytes()).unwrap();
        assert_eq!(
            sig.recover_address_from_prehash(&digest).unwrap(),
            signer.address()
        );
        // A different domain (version "1") does not recover to the owner.
        let other = permit_signing_hash(
            &TokenDomain::new("USDC", "1", 11155111, token()),
            &PermitMessage {
                owner: pp.owner,
                spender: pp.spender,
                value: pp.value,
                nonce: pp.nonce,
                deadline: pp.deadline,
            },
        );
        assert_ne!(
            sig.recover_address_from_prehash(&other).unwrap(),
            signer.address()
        );
    }

    #[test]
    fn refuses_to_sign_for_someone_else() {
        let signer: PrivateKeySigner = KEY0.parse().unwrap();
        let other: Address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
            .parse()
            .unwrap();
        let r = sign_permit(
            &signer,
            &TokenDomain::usdc(1, token()),
            other,
            other,
            U256::from(1u8),
            U256::ZERO,
            U256::from(1u8),
        );
        assert!(matches!(r, Err(SignError::WrongSigner { .. })));
    }
}
