//! The settler served in process: `x402_settler::run(listener, settler, shutdown)` on a
//! listener the test binds, against a real anvil, until the test's shutdown future ends.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use clap::Parser;
use x402_settler::config::Cli;
use x402_testkit::anvil::{Anvil, DEV_KEYS};

#[tokio::test]
async fn run_serves_on_the_given_listener_until_shutdown() {
    let anvil = Anvil::start().expect("anvil starts");
    let token = anvil.deploy_token().await.expect("token deploys");
    let dir = tempfile::tempdir().unwrap();
    let terms = dir.path().join("terms.json");
    std::fs::write(
        &terms,
        common::test_terms(anvil.network(), token).to_string(),
    )
    .unwrap();
    let keys = dir.path().join("signer.keys");
    std::fs::write(&keys, DEV_KEYS[common::SETTLER_DEV_INDEX]).unwrap();
    let rpc = format!("{}={}", anvil.network(), anvil.rpc_url());
    let db = common::sqlite_url(dir.path());
    let token_key = dir.path().join("token.key");
    let cli = Cli::try_parse_from([
        "x402-settler",
        "--database-url",
        &db,
        "--rpc",
        &rpc,
        "--signer-key-file",
        keys.to_str().unwrap(),
        "--token-key-file",
        token_key.to_str().unwrap(),
        "--terms-file",
        terms.to_str().unwrap(),
    ])
    .unwrap();
    let settler = x402_settler::Settler::new(&cli.serve).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(x402_settler::run(listener, settler, async {
        let _ = stopped.await;
    }));

    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("run returns after the shutdown future")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed once run returns"
    );
}
