//! `make bench`: requests/s through the real Envoy (`--concurrency 1`) driven by `wrk` on
//! loopback, for each filter path, reported as a ratio to Envoy without the filter measured
//! in the same run. Absolute figures vary between runs and machines; ratios are comparable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k256::ecdsa::SigningKey;
use x402_protocol::token::{mint, AccessClaims};
use x402_protocol::{Address, Network, U256};
use x402_testkit::envoy::{bootstrap_yaml, EnvoyOpts};
use x402_testkit::stack::Stack;
use x402_testkit::{paths, ports};

struct Scenario {
    name: &'static str,
    filter: bool,
    cache_size: u64,
    path: &'static str,
    bearer: bool,
    expect_status: u16,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "no filter (baseline)",
        filter: false,
        cache_size: 0,
        path: "/api/weather",
        bearer: false,
        expect_status: 200,
    },
    Scenario {
        name: "filter, unpriced route",
        filter: true,
        cache_size: 10_000,
        path: "/free",
        bearer: false,
        expect_status: 200,
    },
    Scenario {
        name: "filter, paid route, token cached",
        filter: true,
        cache_size: 10_000,
        path: "/api/weather",
        bearer: true,
        expect_status: 200,
    },
    Scenario {
        name: "filter, paid route, cache off (ES256K verify per request)",
        filter: true,
        cache_size: 0,
        path: "/api/weather",
        bearer: true,
        expect_status: 200,
    },
    Scenario {
        name: "filter, paid route, no token (402 challenge)",
        filter: true,
        cache_size: 10_000,
        path: "/api/weather",
        bearer: false,
        expect_status: 402,
    },
];

struct RunningEnvoy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RunningEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the wasm filter from the harness bootstrap, leaving only the router.
fn without_filter(yaml: &str) -> String {
    let start = yaml
        .find("          - name: envoy.filters.http.wasm")
        .unwrap_or(0);
    let end = yaml
        .find("          - name: envoy.filters.http.router")
        .unwrap_or(0);
    if start == 0 || end <= start {
        return yaml.to_string();
    }
    format!("{}{}", &yaml[..start], &yaml[end..])
}

fn start_envoy(yaml: &str, port: u16, admin: u16) -> Result<RunningEnvoy> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, yaml)?;
    let log = std::fs::File::create(dir.path().join("envoy.log"))?;
    let child = Command::new(paths::envoy_bin())
        .args([
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "-c",
        ])
        .arg(&cfg)
        .current_dir(paths::root())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("start envoy")?;
    let envoy = RunningEnvoy {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(admin, "/ready", None).map(|s| s != 200).unwrap_or(true) {
        if Instant::now() > deadline {
            bail!(
                "Envoy not ready: {}",
                std::fs::read_to_string(envoy._dir.path().join("envoy.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(envoy)
}

fn get(port: u16, path: &str, bearer: Option<&str>) -> Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = bearer
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: bench\r\n{auth}connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")
}

fn wrk(port: u16, path: &str, bearer: Option<&str>, secs: u64) -> Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c32", &format!("-d{secs}s")]);
    if let Some(t) = bearer {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("run wrk (make setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output has no Requests/sec:\n{text}"))?;
    Ok(rps)
}

fn main() -> Result<()> {
    let secs: u64 = std::env::var("X402_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    if !Path::new(&paths::filter_wasm()).exists() {
        bail!("{} missing: run make wasm", paths::filter_wasm().display());
    }
    let key = SigningKey::from_slice(&[0x5a; 32])?;
    let token_addr: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3".parse()?;
    let network = Network::eip155(31337);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let claims = AccessClaims {
        iss: "bench".into(),
        sub: Address::repeat_byte(0x11),
        route: "weather".into(),
        amount: U256::from(10_000u64),
        asset: token_addr,
        network,
        jti: "bench".into(),
    };
    let kid = x402_protocol::token::key_id(key.verifying_key());
    let token = mint(&key, &kid, claims, now, 3600);

    println!("x402 edge bench: Envoy --concurrency 1, wrk -t1 -c32 -d{secs}s, direct_response upstream\n");
    println!("{:<60} {:>12} {:>8}", "scenario", "requests/s", "ratio");
    let mut baseline = None;
    for s in SCENARIOS {
        let mut cfg = Stack::filter_config(
            &key,
            token_addr,
            network.to_string(),
            Address::repeat_byte(0x33),
            Address::repeat_byte(0x44),
        );
        cfg["token_cache_size"] = serde_json::json!(s.cache_size);
        let (port, admin) = (ports::free_port(), ports::free_port());
        let mut yaml = bootstrap_yaml(
            &cfg.to_string(),
            &EnvoyOpts::default(),
            port,
            admin,
            ports::free_port(),
        );
        if !s.filter {
            yaml = without_filter(&yaml);
        }
        let envoy = start_envoy(&yaml, port, admin)?;
        let bearer = s.bearer.then_some(token.as_str());
        let status = get(envoy.port, s.path, bearer)?;
        if status != s.expect_status {
            bail!(
                "{}: expected HTTP {}, got {status}",
                s.name,
                s.expect_status
            );
        }
        let rps = wrk(envoy.port, s.path, bearer, secs)?;
        let base = *baseline.get_or_insert(rps);
        println!("{:<60} {:>12.0} {:>8.2}", s.name, rps, rps / base);
        drop(envoy);
    }
    Ok(())
}
