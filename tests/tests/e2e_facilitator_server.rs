//! An official x402 resource server using our settler as its facilitator, end to end over real
//! processes: anvil with the test USDC, the settler binary with a facilitator credential
//! (`--facilitator-credentials-file`), the PyPI `x402` 2.25 FastAPI middleware
//! (`tests/python/facilitator_server.py`: `x402ResourceServer` over `HTTPFacilitatorClient`
//! pointed at the settler), paid by the official Python x402 client
//! (`tests/python/x402_v2_pay.py`). The server's middleware calls our `GET /supported` at
//! start, `POST /verify` before its handler and `POST /settle` after it; the paid answer
//! carries the on-chain transaction in `PAYMENT-RESPONSE`, and the same payment sent again is
//! refused by our `/verify`.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use serde_json::Value;
use x402_testkit::anvil::{dev_address, Anvil, DEV_KEYS};
use x402_testkit::settler::{random_secret, usdc_terms, SettlerOptions, SettlerProcess};
use x402_testkit::{paths, ports};

const PRICE: u64 = 10_000; // 0.01 USDC
const FUNDS: u64 = 5_000_000; // 5 USDC
const CALLER: &str = "shop";

/// The Python server as a child process, killed when dropped.
struct PyServer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl PyServer {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    anvil: Anvil,
    token: Address,
    pay_to: Address,
    settler: SettlerProcess,
    server: PyServer,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("x402-facil-")
            .tempdir()
            .unwrap();
        let anvil = Anvil::start().unwrap();
        let token = anvil.deploy_token().await.unwrap();
        let pay_to = dev_address(9);
        let network = anvil.network().to_string();

        // The server's own credential (not the gateway secret, which the settler also needs).
        let secret = random_secret();
        let creds = dir.path().join("facilitators");
        std::fs::write(&creds, format!("{CALLER}:{secret}\n")).unwrap();
        let secret_file = dir.path().join("shop.secret");
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();

        let db = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("settler.db").display()
        );
        let mut opts = SettlerOptions::new(
            db,
            &network,
            anvil.rpc_url(),
            DEV_KEYS[8],
            dir.path().join("token.key"),
        )
        .with_terms(usdc_terms(&network, token, &[pay_to]));
        opts.extra_args.extend([
            "--facilitator-credentials-file".to_string(),
            creds.to_str().unwrap().to_string(),
            "--settle-timeout-secs".to_string(),
            "30".to_string(),
        ]);
        opts.env.push(("RUST_LOG".into(), "info".into()));
        let settler = SettlerProcess::start(opts).await.unwrap();

        let server = start_server(
            dir.path(),
            &settler.url(),
            &secret_file,
            &network,
            token,
            pay_to,
        )
        .await;
        Env {
            anvil,
            token,
            pay_to,
            settler,
            server,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn funded_payer(&self) -> PrivateKeySigner {
        let signer = PrivateKeySigner::random();
        self.anvil
            .mint(self.token, signer.address(), U256::from(FUNDS))
            .await
            .unwrap();
        signer
    }

    async fn balance(&self, who: Address) -> U256 {
        self.anvil.balance_of(self.token, who).await.unwrap()
    }

    fn logs(&self) -> String {
        format!(
            "server:\n{}\nsettler:\n{}",
            self.server.log(),
            self.settler.log()
        )
    }
}

/// Starts `facilitator_server.py` and waits until its free route answers (it reads the
/// settler's `/supported` before it binds). A port taken between `free_port` and the bind
/// (the server exits with "Address already in use") is retried on another port.
async fn start_server(
    dir: &Path,
    settler_url: &str,
    secret_file: &Path,
    network: &str,
    token: Address,
    pay_to: Address,
) -> PyServer {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for attempt in 0..3 {
        let port = ports::free_port();
        let log = dir.join(format!("server-{attempt}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(paths::python_bin())
            .arg(paths::root().join("tests/python/facilitator_server.py"))
            .args(["--port", &port.to_string()])
            .args(["--facilitator-url", settler_url])
            .arg("--facilitator-secret-file")
            .arg(secret_file)
            .args(["--network", network])
            .args(["--asset", &token.to_checksum(None)])
            .args(["--pay-to", &pay_to.to_checksum(None)])
            .args(["--amount", &PRICE.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start tests/python/facilitator_server.py (make setup installs tools/.venv)");
        let mut server = PyServer { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                let log = server.log();
                if log.contains("Address already in use") {
                    break; // next attempt, another port
                }
                panic!("the x402 server exited ({status}):\n{log}");
            }
            if let Ok(r) = http.get(server.url("/free")).send().await {
                if r.status().is_success() {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the x402 server did not answer /free:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("the x402 server found no free port in 3 attempts");
}

fn decode_b64_json(header: &str) -> Value {
    let bytes = x402_protocol::b64::decode(header).expect("standard base64");
    serde_json::from_slice(&bytes).expect("base64 of JSON")
}

fn same_address(a: &Value, b: Address) -> bool {
    a.as_str().map(str::to_lowercase) == Some(b.to_checksum(None).to_lowercase())
}

/// The official Python client pays the official server; the server's facilitator is our
/// settler. Then the very same `PAYMENT-SIGNATURE` is sent again and refused.
#[tokio::test(flavor = "multi_thread")]
async fn official_x402_server_settles_through_our_facilitator() {
    let env = Env::start().await;
    let payer = env.funded_payer().await;
    let dump = env._dir.path().join("exchanges.json");

    let out = Command::new(paths::python_bin())
        .arg(paths::root().join("tests/python/x402_v2_pay.py"))
        .args(["--url", &env.server.url("/paid")])
        .args(["--asset", &env.token.to_checksum(None)])
        .args(["--network", &env.anvil.network().to_string()])
        .args(["--max-amount", "500000"])
        .arg("--dump-exchanges")
        .arg(&dump)
        .env(
            "X402_V2_PRIVATE_KEY",
            format!("0x{}", alloy::hex::encode(payer.to_bytes())),
        )
        .env("X402_V2_PAY_TRACEBACK", "1")
        .output()
        .expect("run tests/python/x402_v2_pay.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "x402 client failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.logs()
    );
    let line: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line");
    eprintln!("x402_v2_pay.py: {line}");

    // The handler's answer, reached after our /verify said valid.
    assert_eq!(line["status"], 200, "{line}");
    let body: Value = serde_json::from_str(line["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["paid"], true, "{body}");
    assert!(same_address(&body["payer"], payer.address()), "{body}");
    let reqs = line["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 2, "{line}");
    assert_eq!(reqs[0]["status"], 402);
    assert_eq!(reqs[1]["payment_signature"], true);
    assert_eq!(line["accepted"]["amount"], PRICE.to_string());

    // PAYMENT-RESPONSE from our /settle: success, the payer, and the mined transfer.
    let receipt = &line["payment_response"];
    assert_eq!(receipt["success"], true, "{line}\n{}", env.logs());
    assert_eq!(line["payment_response_sdk_ok"], true, "{line}");
    assert!(
        same_address(&receipt["payer"], payer.address()),
        "{receipt}"
    );
    assert_eq!(receipt["network"], env.anvil.network().to_string());
    let tx: B256 = receipt["transaction"]
        .as_str()
        .unwrap_or("")
        .parse()
        .unwrap_or_else(|e| panic!("a transaction hash ({e}): {receipt}"));
    let mined = env
        .anvil
        .provider()
        .get_transaction_receipt(tx)
        .await
        .unwrap()
        .expect("the transaction in PAYMENT-RESPONSE is mined");
    assert!(mined.status(), "the transfer succeeded: {mined:?}");

    // /settle answered after settlement: the funds have moved, exactly the price.
    assert_eq!(env.balance(env.pay_to).await, U256::from(PRICE));
    assert_eq!(
        env.balance(payer.address()).await,
        U256::from(FUNDS - PRICE)
    );

    // The same payment again (the header the client sent): our /verify refuses it, the
    // middleware answers 402 with the reason, the handler is not run, nothing moves.
    let exchanges: Value = serde_json::from_slice(&std::fs::read(&dump).unwrap()).unwrap();
    let header = exchanges
        .as_array()
        .unwrap()
        .iter()
        .find_map(|ex| ex["request_headers"]["payment-signature"].as_str())
        .expect("the paid request's PAYMENT-SIGNATURE")
        .to_string();
    let replay = env
        .http
        .get(env.server.url("/paid"))
        .header("payment-signature", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status().as_u16(), 402, "{}", env.logs());
    let required = decode_b64_json(
        replay
            .headers()
            .get("payment-required")
            .and_then(|v| v.to_str().ok())
            .expect("a new PAYMENT-REQUIRED"),
    );
    assert_eq!(
        required["error"], "invalid_exact_evm_nonce_already_used",
        "{required}"
    );
    assert!(replay.headers().get("payment-response").is_none());
    assert_eq!(
        env.balance(env.pay_to).await,
        U256::from(PRICE),
        "paid once"
    );

    // The settler knows who called: the server's credential name.
    let metrics = env
        .http
        .get(format!("{}/metrics", env.settler.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for endpoint in ["supported", "verify", "settle"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("x402_facilitator_requests_total")
                    && l.contains(&format!("caller=\"{CALLER}\""))
                    && l.contains(&format!("endpoint=\"{endpoint}\""))),
            "{endpoint} by {CALLER}:\n{metrics}"
        );
    }
}
