//! The test token on a real anvil: deploy, mint, and that EIP-2612 permits and ERC-3009
//! authorizations signed with alloy are accepted (which proves the EIP-712 domain is
//! {name "USDC", version "2", chainId, token}).

use alloy::primitives::{Address, B256, U256};
use alloy::signers::{local::PrivateKeySigner, SignerSync};
use alloy::sol_types::{eip712_domain, Eip712Domain, SolStruct};
use x402_testkit::anvil::{dev_address, dev_signer, Anvil, TestUsdc, DEV_ADDRESSES};

alloy::sol! {
    struct Permit { address owner; address spender; uint256 value; uint256 nonce; uint256 deadline; }
    struct TransferWithAuthorization { address from; address to; uint256 value; uint256 validAfter; uint256 validBefore; bytes32 nonce; }
}

fn domain(chain_id: u64, token: Address) -> Eip712Domain {
    eip712_domain! { name: "USDC", version: "2", chain_id: chain_id, verifying_contract: token, }
}

#[tokio::test]
async fn dev_accounts_match_anvil() {
    let anvil = Anvil::start().unwrap();
    let accounts: Vec<Address> = alloy::providers::Provider::get_accounts(&anvil.provider())
        .await
        .unwrap();
    for i in 0..10 {
        assert_eq!(dev_signer(i).address(), dev_address(i), "key {i}");
        assert_eq!(
            accounts[i],
            DEV_ADDRESSES[i].parse::<Address>().unwrap(),
            "account {i}"
        );
    }
    assert_eq!(
        alloy::providers::Provider::get_chain_id(&anvil.provider())
            .await
            .unwrap(),
        31337
    );
}

#[tokio::test]
async fn deploy_mint_balance_and_metadata() {
    let anvil = Anvil::start().unwrap();
    let token = anvil.deploy_token().await.unwrap();
    let who = dev_address(1);
    assert_eq!(anvil.balance_of(token, who).await.unwrap(), U256::ZERO);
    anvil
        .mint(token, who, U256::from(5_000_000u64))
        .await
        .unwrap();
    assert_eq!(
        anvil.balance_of(token, who).await.unwrap(),
        U256::from(5_000_000u64)
    );
    let t = TestUsdc::new(token, anvil.provider());
    assert_eq!(t.decimals().call().await.unwrap(), 6);
    assert_eq!(t.name().call().await.unwrap(), "USDC");
    assert_eq!(t.symbol().call().await.unwrap(), "USDC");
    assert_eq!(
        t.DOMAIN_SEPARATOR().call().await.unwrap(),
        domain(31337, token).separator()
    );
}

#[tokio::test]
async fn permit_signed_with_alloy_is_accepted() {
    let anvil = Anvil::start().unwrap();
    let token = anvil.deploy_token().await.unwrap();
    let owner: PrivateKeySigner = dev_signer(1);
    let spender = dev_address(0);
    let value = U256::from(500_000u64);
    anvil
        .mint(token, owner.address(), U256::from(1_000_000u64))
        .await
        .unwrap();
    let nonce = anvil.nonces(token, owner.address()).await.unwrap();
    let deadline = U256::from(anvil.timestamp().await.unwrap() + 600);
    let permit = Permit {
        owner: owner.address(),
        spender,
        value,
        nonce,
        deadline,
    };
    let sig = owner
        .sign_hash_sync(&permit.eip712_signing_hash(&domain(anvil.chain_id(), token)))
        .unwrap();
    let t = anvil.token(token); // sends from account 0 = spender
    let v = 27 + sig.v() as u8;
    let r: B256 = sig.r().into();
    let s: B256 = sig.s().into();
    t.permit(owner.address(), spender, value, deadline, v, r, s)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert_eq!(
        anvil
            .allowance(token, owner.address(), spender)
            .await
            .unwrap(),
        value
    );
    assert_eq!(
        anvil.nonces(token, owner.address()).await.unwrap(),
        nonce + U256::from(1)
    );
    // Replaying the same permit fails (nonce consumed).
    assert!(t
        .permit(owner.address(), spender, value, deadline, v, r, s)
        .send()
        .await
        .is_err());
    // The spender pulls the funds.
    let payee = dev_address(2);
    t.transferFrom(owner.address(), payee, value)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert_eq!(anvil.balance_of(token, payee).await.unwrap(), value);
}

#[tokio::test]
async fn transfer_with_authorization_both_overloads() {
    let anvil = Anvil::start().unwrap();
    let token = anvil.deploy_token().await.unwrap();
    let from = dev_signer(1);
    let to = dev_address(2);
    anvil
        .mint(token, from.address(), U256::from(1_000_000u64))
        .await
        .unwrap();
    let now = anvil.timestamp().await.unwrap();
    let t = anvil.token(token); // account 0 relays: anyone may submit the authorization
    for (i, nonce) in [B256::repeat_byte(7), B256::repeat_byte(8)]
        .into_iter()
        .enumerate()
    {
        let auth = TransferWithAuthorization {
            from: from.address(),
            to,
            value: U256::from(250_000u64),
            validAfter: U256::ZERO,
            validBefore: U256::from(now + 600),
            nonce,
        };
        let sig = from
            .sign_hash_sync(&auth.eip712_signing_hash(&domain(anvil.chain_id(), token)))
            .unwrap();
        assert!(!anvil
            .authorization_state(token, from.address(), nonce)
            .await
            .unwrap());
        let call = if i == 0 {
            t.transferWithAuthorization_0(
                auth.from,
                auth.to,
                auth.value,
                auth.validAfter,
                auth.validBefore,
                nonce,
                27 + sig.v() as u8,
                sig.r().into(),
                sig.s().into(),
            )
            .send()
            .await
        } else {
            t.transferWithAuthorization_1(
                auth.from,
                auth.to,
                auth.value,
                auth.validAfter,
                auth.validBefore,
                nonce,
                sig.as_bytes().into(),
            )
            .send()
            .await
        };
        let receipt = call.unwrap().get_receipt().await.unwrap();
        assert!(receipt.status());
        assert!(anvil
            .authorization_state(token, from.address(), nonce)
            .await
            .unwrap());
        // Replay is refused.
        let replay = t
            .transferWithAuthorization_1(
                auth.from,
                auth.to,
                auth.value,
                auth.validAfter,
                auth.validBefore,
                nonce,
                sig.as_bytes().into(),
            )
            .send()
            .await;
        assert!(replay.is_err(), "replay of authorization {i} must revert");
    }
    assert_eq!(
        anvil.balance_of(token, to).await.unwrap(),
        U256::from(500_000u64)
    );
    assert_eq!(
        anvil.balance_of(token, from.address()).await.unwrap(),
        U256::from(500_000u64)
    );
}

#[tokio::test]
async fn wrong_domain_or_signer_is_refused() {
    let anvil = Anvil::start().unwrap();
    let token = anvil.deploy_token().await.unwrap();
    let from = dev_signer(1);
    anvil
        .mint(token, from.address(), U256::from(1_000_000u64))
        .await
        .unwrap();
    let now = anvil.timestamp().await.unwrap();
    let auth = TransferWithAuthorization {
        from: from.address(),
        to: dev_address(2),
        value: U256::from(1u64),
        validAfter: U256::ZERO,
        validBefore: U256::from(now + 600),
        nonce: B256::repeat_byte(1),
    };
    // EIP-712 version "1" (what OZ ERC20Permit would use) must not verify.
    let wrong =
        eip712_domain! { name: "USDC", version: "1", chain_id: 31337, verifying_contract: token, };
    let sig = from
        .sign_hash_sync(&auth.eip712_signing_hash(&wrong))
        .unwrap();
    let t = anvil.token(token);
    let r = t
        .transferWithAuthorization_1(
            auth.from,
            auth.to,
            auth.value,
            auth.validAfter,
            auth.validBefore,
            auth.nonce,
            sig.as_bytes().into(),
        )
        .send()
        .await;
    assert!(r.is_err());
    // Signed by someone else.
    let sig = dev_signer(3)
        .sign_hash_sync(&auth.eip712_signing_hash(&domain(31337, token)))
        .unwrap();
    let r = t
        .transferWithAuthorization_1(
            auth.from,
            auth.to,
            auth.value,
            auth.validAfter,
            auth.validBefore,
            auth.nonce,
            sig.as_bytes().into(),
        )
        .send()
        .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn token_at_fixed_address_keeps_a_working_domain() {
    let anvil = Anvil::start().unwrap();
    let at: Address = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
        .parse()
        .unwrap();
    anvil.deploy_token_at(at).await.unwrap();
    let t = TestUsdc::new(at, anvil.provider());
    assert_eq!(t.name().call().await.unwrap(), "USDC");
    assert_eq!(
        t.DOMAIN_SEPARATOR().call().await.unwrap(),
        domain(31337, at).separator()
    );
    anvil
        .mint(at, dev_address(1), U256::from(9u64))
        .await
        .unwrap();
    assert_eq!(
        anvil.balance_of(at, dev_address(1)).await.unwrap(),
        U256::from(9u64)
    );
}

#[test]
fn start_with_block_time_works() {
    let anvil = Anvil::start_with_block_time(1).unwrap();
    assert!(anvil.rpc_url().starts_with("http://127.0.0.1:"));
}

/// Cross-check of the client's signer: bodies produced by `x402_client::sign` (anvil key 0 for
/// the permit), parsed back by the gateway's parser, are accepted by the real contract.
#[tokio::test]
async fn client_signed_payments_are_accepted_by_the_contract() {
    use x402_client::sign::{sign_authorization, sign_permit, TokenDomain};
    use x402_protocol::payment::{parse_payment_value, ClientPayment};

    let anvil = Anvil::start().unwrap();
    let token = anvil.deploy_token().await.unwrap();
    let domain = TokenDomain::usdc(anvil.chain_id(), token);
    let now = anvil.timestamp().await.unwrap();

    // Permit signed with anvil key 0, nonce read from chain; spender = account 1.
    let owner = dev_signer(0);
    let spender = dev_address(1);
    anvil
        .mint(token, owner.address(), U256::from(2_000_000u64))
        .await
        .unwrap();
    let nonce = anvil.nonces(token, owner.address()).await.unwrap();
    let body = sign_permit(
        &owner,
        &domain,
        owner.address(),
        spender,
        U256::from(500_000u64),
        nonce,
        U256::from(now + 600),
    )
    .unwrap();
    let (ClientPayment::Permit(p), _) = parse_payment_value(&body).unwrap() else {
        panic!("not a permit")
    };
    let as_spender = TestUsdc::new(token, anvil.dev_provider(1));
    let receipt = as_spender
        .permit(
            p.owner, p.spender, p.value, p.deadline, p.sig.v, p.sig.r, p.sig.s,
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(
        anvil
            .allowance(token, owner.address(), spender)
            .await
            .unwrap(),
        U256::from(500_000u64)
    );

    // ERC-3009 authorization from account 0 to account 2, relayed by account 1 (bytes overload).
    let to = dev_address(2);
    let n = x402_client::sign::random_nonce();
    let body = sign_authorization(
        &owner,
        &domain,
        owner.address(),
        to,
        U256::from(300_000u64),
        U256::ZERO,
        U256::from(now + 600),
        n,
    )
    .unwrap();
    let (ClientPayment::Authorization(a), _) = parse_payment_value(&body).unwrap() else {
        panic!("not an authorization")
    };
    let receipt = as_spender
        .transferWithAuthorization_1(
            a.from,
            a.to,
            a.value,
            a.valid_after,
            a.valid_before,
            a.nonce,
            a.sig.to_bytes().to_vec().into(),
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(
        anvil.balance_of(token, to).await.unwrap(),
        U256::from(300_000u64)
    );
    assert!(anvil
        .authorization_state(token, owner.address(), n)
        .await
        .unwrap());
}
