//! Shared set-up of the settler's chain tests: a real anvil with the real test token
//! (tests/src/anvil.rs), the settler binary as a process (tests/src/settler.rs), and
//! client-side EIP-712 signing written here independently of the settler's code.
#![allow(dead_code, clippy::too_many_arguments)]

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::{eip712_domain, SolStruct};
use serde_json::{json, Value};
use x402_protocol::settler_api::{PricedMethod, Requirement, SettlementState, SettlementStatus};
use x402_protocol::{Asset, PaymentMethod, Scheme};
use x402_testkit::anvil::{dev_address, Anvil, DEV_KEYS};
use x402_testkit::settler::{SettlerOptions, SettlerProcess};

pub const SETTLER_DEV_INDEX: usize = 9;
pub const PAY_TO_DEV_INDEX: usize = 8;
pub const PRICE: u64 = 10_000; // 0.01 USDC
/// The gateway secret of every settler these tests start (`SettlerOptions::api_secret`).
pub const API_SECRET: &str = "settler-tests-gateway-secret-0123456789";

mod typed {
    alloy::sol! {
        struct Permit { address owner; address spender; uint256 value; uint256 nonce; uint256 deadline; }
        struct TransferWithAuthorization { address from; address to; uint256 value; uint256 validAfter; uint256 validBefore; bytes32 nonce; }
    }
}

pub struct Env {
    pub anvil: Anvil,
    pub token: Address,
    pub settler: SettlerProcess,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub pay_to: Address,
    pub spender: Address,
}

pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("settler.db").display())
}

/// The terms of these tests: the test token on `network`, paid to `PAY_TO_DEV_INDEX`, limits
/// out of reach (`x402_testkit::settler::usdc_terms`).
pub fn test_terms(network: x402_protocol::Network, token: Address) -> Value {
    x402_testkit::settler::usdc_terms(
        &network.to_string(),
        token,
        &[dev_address(PAY_TO_DEV_INDEX)],
    )
}

/// `Authorization` value of the gateway.
pub fn bearer() -> String {
    format!("Bearer {API_SECRET}")
}

pub fn settler_bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_x402-settler").into()
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(None, None, &[]).await
    }

    /// `db`: database URL (default: SQLite in a temp dir); `block_time`: anvil block time.
    pub async fn start_with(db: Option<String>, block_time: Option<u64>, extra: &[&str]) -> Env {
        Self::start_with_terms(db, block_time, extra, |_| {}).await
    }

    /// Like [`Env::start_with`], with the terms (`test_terms`) changed by `terms` first.
    pub async fn start_with_terms(
        db: Option<String>,
        block_time: Option<u64>,
        extra: &[&str],
        terms: impl FnOnce(&mut Value),
    ) -> Env {
        Self::start_customised(db, block_time, extra, terms, |_| {}).await
    }

    /// Like [`Env::start_with_terms`], with the settler's options changed by `customise` last
    /// (e.g. its `--rpc` endpoints).
    pub async fn start_customised(
        db: Option<String>,
        block_time: Option<u64>,
        extra: &[&str],
        terms: impl FnOnce(&mut Value),
        customise: impl FnOnce(&mut SettlerOptions),
    ) -> Env {
        let anvil = match block_time {
            Some(s) => Anvil::start_with_block_time(s),
            None => Anvil::start(),
        }
        .expect("anvil starts");
        let token = anvil.deploy_token().await.expect("token deploys");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db.unwrap_or_else(|| sqlite_url(dir.path()));
        let mut opts = SettlerOptions::new(
            db,
            anvil.network().to_string(),
            anvil.rpc_url(),
            DEV_KEYS[SETTLER_DEV_INDEX],
            dir.path().join("token.key"),
        );
        opts.bin = Some(settler_bin());
        opts.api_secret = Some(API_SECRET.into());
        let mut t = test_terms(anvil.network(), token);
        terms(&mut t);
        opts.terms = Some(t);
        opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
        opts.env.push((
            "RUST_LOG".into(),
            "info,x402_settler=debug,sqlx=warn".into(),
        ));
        customise(&mut opts);
        let settler = SettlerProcess::start(opts).await.expect("settler starts");
        Env::assemble(anvil, token, settler, dir, dev_address(SETTLER_DEV_INDEX))
    }

    /// An [`Env`] of parts started elsewhere; `spender`: the permit spender routes advertise.
    pub fn assemble(
        anvil: Anvil,
        token: Address,
        settler: SettlerProcess,
        dir: tempfile::TempDir,
        spender: Address,
    ) -> Env {
        Env {
            anvil,
            token,
            settler,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            pay_to: dev_address(PAY_TO_DEV_INDEX),
            spender,
        }
    }

    pub fn asset(&self) -> Asset {
        Asset {
            address: self.token,
            decimals: 6,
            name: "USDC".into(),
            version: "2".into(),
            symbol: "USDC".into(),
        }
    }

    pub fn method(&self, scheme: Scheme) -> PaymentMethod {
        PaymentMethod {
            scheme,
            network: self.anvil.network(),
            asset: self.asset(),
            pay_to: self.pay_to,
            spender: if scheme == Scheme::Permit {
                Some(self.spender)
            } else {
                None
            },
        }
    }

    /// A route accepting both schemes at `PRICE`.
    pub fn requirement(&self) -> Requirement {
        Requirement {
            route: "weather".into(),
            accepts: vec![
                PricedMethod {
                    amount: U256::from(PRICE),
                    method: self.method(Scheme::Permit),
                },
                PricedMethod {
                    amount: U256::from(PRICE),
                    method: self.method(Scheme::Exact),
                },
            ],
            token_ttl_secs: 120,
            resource: Some("http://gateway/weather".into()),
        }
    }

    pub async fn funded_payer(&self, amount: u64) -> PrivateKeySigner {
        let k = PrivateKeySigner::random();
        if amount > 0 {
            self.anvil
                .mint(self.token, k.address(), U256::from(amount))
                .await
                .expect("mint");
        }
        k
    }

    pub fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    pub fn permit(&self, key: &PrivateKeySigner, value: u64, nonce: u64, deadline: u64) -> Value {
        self.permit_to(
            key,
            self.spender,
            value,
            nonce,
            deadline,
            self.token,
            self.anvil.chain_id(),
        )
    }

    pub fn permit_to(
        &self,
        key: &PrivateKeySigner,
        spender: Address,
        value: u64,
        nonce: u64,
        deadline: u64,
        token: Address,
        chain_id: u64,
    ) -> Value {
        let domain = eip712_domain! { name: "USDC", version: "2", chain_id: chain_id, verifying_contract: token, };
        let msg = typed::Permit {
            owner: key.address(),
            spender,
            value: U256::from(value),
            nonce: U256::from(nonce),
            deadline: U256::from(deadline),
        };
        let (v, r, s) = sign(key, msg.eip712_signing_hash(&domain));
        json!({"version": "Version 0.1", "permit": {
            "permit_type": "EIP2612",
            "signature": {"signature_type": "EIP2612", "v": v, "r": unpadded(r), "s": unpadded(s)},
            "owner": key.address(), "spender": spender, "token": token,
            "value": value, "nonce": nonce, "deadline": deadline, "chain_id": chain_id}})
    }

    pub fn erc3009(
        &self,
        key: &PrivateKeySigner,
        to: Address,
        value: u64,
        valid_after: u64,
        valid_before: u64,
        nonce: B256,
    ) -> Value {
        let (v, r, s) = self.sign_3009(key, to, value, valid_after, valid_before, nonce);
        json!({"version": "Version 0.1", "permit": {
            "permit_type": "ERC3009",
            "signature": {"v": v, "r": unpadded(r), "s": unpadded(s)},
            "token": self.token, "chain_id": self.anvil.chain_id(),
            "authorizer": key.address(), "recipient": to, "value": value,
            "validAfter": valid_after, "validBefore": valid_before, "nonce": nonce}})
    }

    pub fn sign_3009(
        &self,
        key: &PrivateKeySigner,
        to: Address,
        value: u64,
        valid_after: u64,
        valid_before: u64,
        nonce: B256,
    ) -> (u8, U256, U256) {
        let domain = eip712_domain! { name: "USDC", version: "2", chain_id: self.anvil.chain_id(), verifying_contract: self.token, };
        let msg = typed::TransferWithAuthorization {
            from: key.address(),
            to,
            value: U256::from(value),
            validAfter: U256::from(valid_after),
            validBefore: U256::from(valid_before),
            nonce,
        };
        sign(key, msg.eip712_signing_hash(&domain))
    }

    /// x402 v2 `PAYMENT-SIGNATURE` payload (decoded), scheme exact.
    pub fn x402v2(
        &self,
        key: &PrivateKeySigner,
        value: u64,
        valid_before: u64,
        nonce: B256,
    ) -> Value {
        let (v, r, s) = self.sign_3009(key, self.pay_to, value, 0, valid_before, nonce);
        let mut sig = Vec::with_capacity(65);
        sig.extend_from_slice(&r.to_be_bytes::<32>());
        sig.extend_from_slice(&s.to_be_bytes::<32>());
        sig.push(v);
        json!({"x402Version": 2,
            "payload": {"authorization": {"from": key.address(), "to": self.pay_to, "value": value.to_string(),
                "validAfter": "0", "validBefore": valid_before.to_string(), "nonce": nonce},
                "signature": alloy::primitives::hex::encode_prefixed(sig)},
            "accepted": {"scheme": "exact", "network": self.anvil.network().to_string(), "asset": self.token,
                "amount": value.to_string(), "payTo": self.pay_to, "maxTimeoutSeconds": 300, "extra": {"name": "USDC", "version": "2"}}})
    }

    /// The settler's `/metrics` text now.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.settler.url()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn post_token(&self, req: &Requirement, payment: &Value) -> (u16, Value) {
        post_token(&self.http, &self.settler.url(), req, payment).await
    }

    pub async fn settlement(&self, id: &str) -> SettlementStatus {
        let r = self
            .http
            .get(format!("{}/v1/settlements/{id}", self.settler.url()))
            .send()
            .await
            .expect("GET settlement");
        assert_eq!(r.status(), 200);
        r.json().await.expect("settlement JSON")
    }

    /// Polls until the settlement is final (settled or failed).
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> SettlementStatus {
        let start = Instant::now();
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/v1/settlements/{id}", self.settler.url()))
                .send()
                .await
            {
                if r.status() == 200 {
                    let s: SettlementStatus = r.json().await.expect("settlement JSON");
                    if matches!(s.state, SettlementState::Settled | SettlementState::Failed) {
                        return s;
                    }
                }
            }
            if start.elapsed() > timeout {
                panic!(
                    "settlement {id} not final within {timeout:?}; settler log:\n{}",
                    self.settler.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Switches anvil from instant mining to a block every `secs` seconds.
    pub async fn set_interval_mining(&self, secs: u64) {
        use alloy::providers::Provider;
        let p = self.anvil.provider();
        let _: serde_json::Value = p
            .raw_request("evm_setAutomine".into(), (false,))
            .await
            .expect("evm_setAutomine");
        let _: serde_json::Value = p
            .raw_request("evm_setIntervalMining".into(), (secs,))
            .await
            .expect("evm_setIntervalMining");
    }

    pub async fn balance(&self, who: Address) -> U256 {
        self.anvil
            .balance_of(self.token, who)
            .await
            .expect("balanceOf")
    }
}

pub async fn post_token(
    http: &reqwest::Client,
    base: &str,
    req: &Requirement,
    payment: &Value,
) -> (u16, Value) {
    let body = json!({"requirement": req, "payment": payment});
    let r = http
        .post(format!("{base}/v1/tokens"))
        .header("authorization", bearer())
        .json(&body)
        .send()
        .await
        .expect("POST /v1/tokens");
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

/// (v in {27, 28}, r, s) of a digest.
pub fn sign(key: &PrivateKeySigner, hash: B256) -> (u8, U256, U256) {
    let s = key.sign_hash_sync(&hash).expect("sign");
    (27 + s.v() as u8, s.r(), s.s())
}

/// Hex of an integer without zero padding, the way the seed SDK prints r and s.
pub fn unpadded(x: U256) -> String {
    format!("{x:#x}")
}

pub fn random_nonce() -> B256 {
    B256::from(rand::random::<[u8; 32]>())
}

pub fn code(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

/// The same payment posted again right after `first` was accepted: 200 with the very same
/// token while its settlement is not broadcast yet, else 409 `payment_already_used` naming
/// the settlement (the lane may already have sent it).
pub fn assert_same_or_used(first: &Value, (st, again): &(u16, Value)) {
    match *st {
        200 => {
            assert_eq!(again["settlement_id"], first["settlement_id"], "{again}");
            assert_eq!(again["access_token"], first["access_token"], "{again}");
        }
        409 => {
            assert_eq!(code(again), "payment_already_used", "{again}");
            assert_eq!(again["settlement_id"], first["settlement_id"], "{again}");
            assert!(again.get("access_token").is_none(), "{again}");
        }
        _ => panic!("same payment again: {st} {again}"),
    }
}
