//! `make bench` (edge part): requests/s through the real Envoy driven by `wrk` on loopback,
//! for each filter path AND for Envoy's own `jwt_authn` (ES256, with and without its JWT
//! cache) measured in the same run, as ratios to Envoy without any filter in the same round;
//! Envoy's memory with and without the filter, idle and after load ([`rss`]); and callgrind
//! instructions per request.
//! Absolute figures vary between runs and machines; ratios are comparable.
//!
//! Every request is ~600 bytes: the rows without a token carry a padding header as long as
//! the `Authorization` header of the others, and the ES256 token for `jwt_authn` is padded
//! to the length of ours.
//!
//! Rounds interleave the rows (round 1: every row, round 2: every row, ...), each ratio is
//! taken against `no_filter` of the same round (and the same `--concurrency`), and the table
//! shows min / median / max over the rounds.
//!
//! Writes bench/results/latest.md (its own sections: edge, memory) and
//! bench/results/latest.json, merging by row name: rows other benches wrote (settlement) stay.
//!
//! Environment: `X402_BENCH_SECS` (per round, default 3), `X402_BENCH_ROUNDS` (default 3),
//! `X402_BENCH_PARTS` (which parts run, default all: `rps` the wrk rows, `rss` Envoy's
//! memory, `ir` callgrind), `X402_BENCH_CALLGRIND=0` skips the callgrind rows too,
//! `X402_BENCH_IR_REQUESTS` (default 400), `X402_BENCH_ONLY` (comma-separated row names),
//! `X402_BENCH_CALLGRIND_DIR` (keep the callgrind profiles there, for `callgrind_annotate`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use k256::ecdsa::SigningKey;
use serde_json::{json, Value};
use x402_protocol::token::{mint, AccessClaims, TokenAlg, TokenSigningKey};
use x402_protocol::{Address, Network, U256};
use x402_testkit::envoy::{bootstrap_yaml, EnvoyOpts};
use x402_testkit::stack::Stack;
use x402_testkit::{paths, ports};

mod rss;

/// Which HTTP filter the Envoy runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Filter {
    None,
    JwtAuthn {
        cache: bool,
    },
    X402 {
        cache_size: u64,
    },
    /// The x402 filter declared, but disabled on the route of `/free` (Envoy's per-route
    /// `FilterConfig { disabled: true }`): what an unpriced route costs when it is disabled.
    X402DisabledOnFree,
    /// "Envoy verifies the tokens" (envoy/envoy-jwt-authn.yaml): `jwt_authn` checks our
    /// EdDSA token (with its cache), the filter is skipped for verified requests.
    Native,
}

/// The harness's routes for [`Filter::Native`]: `/api/weather` pointed at its `jwt_authn`
/// requirement, the rest as usual (direct_response).
fn native_routes() -> String {
    let per_route: String = x402_testkit::envoy::jwt_per_route("api_weather")
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        "- name: api_weather\n  match: {{prefix: \"/api/weather\"}}\n  direct_response: {{status: 200, body: {{inline_string: \"no upstream\"}}}}\n  typed_per_filter_config:\n{per_route}- match: {{prefix: \"/\"}}\n  direct_response: {{status: 200, body: {{inline_string: \"no upstream\"}}}}\n"
    )
}

/// The harness's routes with the filter disabled on `/free` (direct_response, as the rest).
const DISABLED_ON_FREE_ROUTES: &str = r#"- name: free
  match: {prefix: "/free"}
  direct_response: {status: 200, body: {inline_string: "no upstream"}}
  typed_per_filter_config:
    envoy.filters.http.wasm:
      "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
      disabled: true
- match: {prefix: "/"}
  direct_response: {status: 200, body: {inline_string: "no upstream"}}
"#;

/// What each request carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Send {
    /// A padding header as long as the `Authorization` header of the others.
    Pad,
    /// Our access token, the same one every time.
    X402Token,
    /// The padded ES256 token `jwt_authn` checks.
    Es256Token,
    /// A different one of [`FIRST_USE_TOKENS`] tokens per request, cycled (wrk Lua script).
    TokenList,
    /// Our access token signed EdDSA (for [`Filter::Native`]), the same one every time.
    EdToken,
    /// [`Send::TokenList`] of EdDSA tokens.
    EdTokenList,
}

struct Scenario {
    name: &'static str,
    filter: Filter,
    path: &'static str,
    send: Send,
    expect_status: u16,
    concurrency: u32,
}

const CACHE: u64 = 10_000;
/// More distinct tokens than the cache holds: cycled in order, each is evicted before its
/// next use, so every request is a first use (and, once full, an eviction).
const FIRST_USE_TOKENS: usize = 20_000;

const fn sc(
    name: &'static str,
    filter: Filter,
    path: &'static str,
    send: Send,
    expect_status: u16,
    concurrency: u32,
) -> Scenario {
    Scenario {
        name,
        filter,
        path,
        send,
        expect_status,
        concurrency,
    }
}

const SCENARIOS: &[Scenario] = &[
    sc(
        "no_filter",
        Filter::None,
        "/api/weather",
        Send::X402Token,
        200,
        1,
    ),
    sc(
        "jwt_authn_cache",
        Filter::JwtAuthn { cache: true },
        "/api/weather",
        Send::Es256Token,
        200,
        1,
    ),
    sc(
        "jwt_authn_nocache",
        Filter::JwtAuthn { cache: false },
        "/api/weather",
        Send::Es256Token,
        200,
        1,
    ),
    sc(
        "x402_unpriced",
        Filter::X402 { cache_size: CACHE },
        "/free",
        Send::Pad,
        200,
        1,
    ),
    sc(
        "x402_unpriced_disabled",
        Filter::X402DisabledOnFree,
        "/free",
        Send::Pad,
        200,
        1,
    ),
    sc(
        "x402_challenge",
        Filter::X402 { cache_size: CACHE },
        "/api/weather",
        Send::Pad,
        402,
        1,
    ),
    sc(
        "x402_warm",
        Filter::X402 { cache_size: CACHE },
        "/api/weather",
        Send::X402Token,
        200,
        1,
    ),
    sc(
        "x402_first_use",
        Filter::X402 { cache_size: CACHE },
        "/api/weather",
        Send::TokenList,
        200,
        1,
    ),
    sc(
        "x402_cache_off",
        Filter::X402 { cache_size: 0 },
        "/api/weather",
        Send::X402Token,
        200,
        1,
    ),
    sc(
        "x402_native_warm",
        Filter::Native,
        "/api/weather",
        Send::EdToken,
        200,
        1,
    ),
    sc(
        "x402_native_first_use",
        Filter::Native,
        "/api/weather",
        Send::EdTokenList,
        200,
        1,
    ),
    sc(
        "no_filter_c2",
        Filter::None,
        "/api/weather",
        Send::X402Token,
        200,
        2,
    ),
    sc(
        "jwt_authn_cache_c2",
        Filter::JwtAuthn { cache: true },
        "/api/weather",
        Send::Es256Token,
        200,
        2,
    ),
    sc(
        "x402_warm_c2",
        Filter::X402 { cache_size: CACHE },
        "/api/weather",
        Send::X402Token,
        200,
        2,
    ),
    sc(
        "x402_native_warm_c2",
        Filter::Native,
        "/api/weather",
        Send::EdToken,
        200,
        2,
    ),
];

/// Rows measured under callgrind (instructions per request).
const IR_ROWS: &[&str] = &[
    "no_filter",
    "jwt_authn_cache",
    "x402_unpriced",
    "x402_warm",
    "x402_challenge",
    "x402_native_warm",
];

struct RunningEnvoy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for RunningEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RunningEnvoy {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

const WASM_FILTER: &str = "          - name: envoy.filters.http.wasm";
const ROUTER_FILTER: &str = "          - name: envoy.filters.http.router";

/// Replaces the wasm filter of the harness bootstrap by `replacement` (may be empty).
fn replace_filter(yaml: &str, replacement: &str) -> Result<String> {
    let start = yaml
        .find(WASM_FILTER)
        .context("no wasm filter in bootstrap")?;
    let end = yaml.find(ROUTER_FILTER).context("no router in bootstrap")?;
    if end <= start {
        bail!("unexpected bootstrap layout");
    }
    Ok(format!("{}{replacement}{}", &yaml[..start], &yaml[end..]))
}

/// Envoy's native `jwt_authn` requiring an ES256 token from `Authorization: Bearer` on every
/// path, `forward: false` (the token is removed before the upstream), optionally with its
/// per-worker cache of verified JWTs.
fn jwt_authn_filter(jwks: &str, cache: bool) -> String {
    let cache = if cache {
        format!("                  jwt_cache_config: {{jwt_cache_size: {CACHE}}}\n")
    } else {
        String::new()
    };
    let jwks = serde_json::to_string(jwks).unwrap_or_default();
    format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: bench
                  forward: false
                  local_jwks: {{inline_string: {jwks}}}
{cache}              rules:
              - match: {{prefix: "/"}}
                requires: {{provider_name: bench}}
"#
    )
}

fn start_envoy(
    yaml: &str,
    port: u16,
    admin: u16,
    concurrency: u32,
    valgrind: Option<&Path>,
) -> Result<RunningEnvoy> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, yaml)?;
    let log = std::fs::File::create(dir.path().join("envoy.log"))?;
    let mut cmd = match valgrind {
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.args([
                "--tool=callgrind",
                "--smc-check=all-non-file",
                "--instr-atstart=no",
            ])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(paths::envoy_bin());
            c
        }
        None => Command::new(paths::envoy_bin()),
    };
    let child = cmd
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--use-dynamic-base-id", "--log-level", "warn", "-c"])
        .arg(&cfg)
        .current_dir(paths::root())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("start envoy")?;
    let envoy = RunningEnvoy { child, port, dir };
    let limit = if valgrind.is_some() { 600 } else { 30 };
    let deadline = Instant::now() + Duration::from_secs(limit);
    while get(admin, "/ready", "").map(|s| s != 200).unwrap_or(true) {
        if Instant::now() > deadline {
            bail!("Envoy not ready: {}", envoy.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(envoy)
}

/// One request on a fresh connection; its status.
fn get(port: u16, path: &str, header: &str) -> Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: bench\r\n{header}connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    status_of(&out)
}

fn status_of(line: &str) -> Result<u16> {
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")
}

/// `n` requests one after the other on one keep-alive connection; fails on another status.
fn keep_alive(port: u16, path: &str, header: &str, n: usize, expect: u16) -> Result<()> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let req = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n{header}\r\n");
    for _ in 0..n {
        w.write_all(req.as_bytes())?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status = status_of(&line)?;
        if status != expect {
            bail!("keep-alive: expected HTTP {expect}, got {status}");
        }
        let mut len = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
    }
    Ok(())
}

/// Requests/s of `wrk -t<threads> -c32 -d<secs>s`, optionally with a Lua script.
fn wrk(
    port: u16,
    path: &str,
    header: Option<&str>,
    script: Option<&Path>,
    threads: u32,
    secs: u64,
    ok_2xx: bool,
) -> Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args([&format!("-t{threads}"), "-c32", &format!("-d{secs}s")]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("run wrk (make setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The 402 row answers non-2xx by design; no other row may.
    if let Some(l) = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .filter(|_| ok_2xx)
    {
        bail!("wrk on {path}: {l}\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output has no Requests/sec:\n{text}"))
}

/// The ES256 key `jwt_authn` trusts, as a JWKS, and a token it accepts, padded to `len`.
fn es256(now: i64, len: usize) -> Result<(String, String)> {
    use p256::ecdsa::signature::Signer;
    let key = p256::ecdsa::SigningKey::from_slice(&[0x42; 32])?;
    let point = key.verifying_key().to_encoded_point(false);
    let (x, y) = (&point.x().context("x")?[..], &point.y().context("y")?[..]);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "bench",
        "x": B64.encode(x), "y": B64.encode(y)}]})
    .to_string();
    let header = B64.encode(br#"{"alg":"ES256","typ":"JWT","kid":"bench"}"#);
    let mut pad = String::new();
    let token = loop {
        let claims = json!({"iss": "bench", "sub": "0x1111111111111111111111111111111111111111",
            "iat": now, "nbf": now, "exp": now + 3600, "pad": pad});
        let input = format!("{header}.{}", B64.encode(claims.to_string()));
        let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
        let token = format!("{input}.{}", B64.encode(sig.to_bytes()));
        if token.len() >= len {
            break token;
        }
        pad.push('x');
    };
    Ok((jwks, token))
}

struct Tokens {
    x402: String,
    /// The first of the first-use list.
    first: String,
    es256: String,
    list: PathBuf,
    script: PathBuf,
    /// The EdDSA token, the first of the EdDSA list, the script cycling that list.
    ed: String,
    ed_first: String,
    ed_script: PathBuf,
}

/// The EdDSA token key of the native rows: its filter `token_keys` entry and its JWKS.
struct EdKey {
    entry: Value,
    jwks: String,
}

/// Writes `n` tokens from `mint_one(i)` to `list` and a wrk script cycling them to `script`;
/// returns the first token.
fn token_list(
    list: &Path,
    script: &Path,
    n: usize,
    mint_one: impl Fn(usize) -> String,
) -> Result<String> {
    let mut first = String::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(list)?);
        for i in 0..n {
            let t = mint_one(i);
            writeln!(f, "{t}")?;
            if i == 0 {
                first = t;
            }
        }
    }
    std::fs::write(
        script,
        format!(
            r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, {{["Authorization"] = "Bearer " .. tokens[i]}})
end
"#,
            list.display()
        ),
    )?;
    Ok(first)
}

fn header_for(s: &Scenario, t: &Tokens) -> String {
    match s.send {
        Send::Pad => format!("x-bench-pad: {}", "p".repeat(t.x402.len())),
        // For the status check and callgrind only: wrk cycles the list.
        Send::TokenList => format!("authorization: Bearer {}", t.first),
        Send::X402Token => format!("authorization: Bearer {}", t.x402),
        Send::Es256Token => format!("authorization: Bearer {}", t.es256),
        Send::EdToken => format!("authorization: Bearer {}", t.ed),
        Send::EdTokenList => format!("authorization: Bearer {}", t.ed_first),
    }
}

/// The wrk script of a row that cycles a token list.
fn script_for<'a>(s: &Scenario, t: &'a Tokens) -> Option<&'a Path> {
    match s.send {
        Send::TokenList => Some(t.script.as_path()),
        Send::EdTokenList => Some(t.ed_script.as_path()),
        _ => None,
    }
}

fn yaml_for(
    s: &Scenario,
    key: &SigningKey,
    asset: Address,
    jwks: &str,
    ed: &EdKey,
) -> Result<String> {
    let network = Network::eip155(31337);
    let mut cfg = Stack::filter_config(
        key,
        asset,
        network.to_string(),
        Address::repeat_byte(0x33),
        Address::repeat_byte(0x44),
    );
    if let Filter::X402 { cache_size } = s.filter {
        cfg["token_cache_size"] = json!(cache_size);
    }
    let (port, admin) = (ports::free_port(), ports::free_port());
    let mut opts = EnvoyOpts {
        routes_yaml: (s.filter == Filter::X402DisabledOnFree)
            .then(|| DISABLED_ON_FREE_ROUTES.to_string()),
        ..EnvoyOpts::default()
    };
    if s.filter == Filter::Native {
        cfg["token_keys"] = json!([ed.entry]);
        cfg["token_cache_size"] = json!(CACHE);
        opts.routes_yaml = Some(native_routes());
        opts.native_jwt = Some(x402_testkit::envoy::NativeJwt {
            issuer: "bench".into(),
            routes: vec![("api_weather".into(), "weather".into())],
            local_jwks: Some(ed.jwks.clone()),
        });
    }
    let yaml = bootstrap_yaml(&cfg.to_string(), &opts, port, admin, ports::free_port());
    let yaml = match s.filter {
        Filter::X402 { .. } | Filter::X402DisabledOnFree | Filter::Native => yaml,
        Filter::None => replace_filter(&yaml, "")?,
        Filter::JwtAuthn { cache } => replace_filter(&yaml, &jwt_authn_filter(jwks, cache))?,
    };
    // Ports travel with the YAML: parse them back.
    Ok(format!("# ports {port} {admin}\n{yaml}"))
}

fn ports_of(yaml: &str) -> Result<(u16, u16)> {
    let line = yaml.lines().next().context("empty yaml")?;
    let mut it = line.split_whitespace().skip(2);
    let p = it.next().and_then(|v| v.parse().ok()).context("port")?;
    let a = it.next().and_then(|v| v.parse().ok()).context("admin")?;
    Ok((p, a))
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let med = if s.is_empty() {
        0.0
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (
        s.first().copied().unwrap_or(0.0),
        med,
        s.last().copied().unwrap_or(0.0),
    )
}

/// Instructions per request under callgrind: warm up, count `n` sequential keep-alive
/// requests, divide.
fn instructions_per_request(s: &Scenario, yaml: &str, t: &Tokens, n: usize) -> Result<f64> {
    let (port, admin) = ports_of(yaml)?;
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("callgrind.out");
    let envoy = start_envoy(yaml, port, admin, 1, Some(&out))?;
    let header = format!("{}\r\n", header_for(s, t));
    // Warm-up: V8 tiers the hot functions up, caches fill.
    keep_alive(port, s.path, &header, 2 * n, s.expect_status)?;
    let pid = envoy.child.id().to_string();
    let ctl = |arg: &[&str]| -> Result<()> {
        let st = Command::new("callgrind_control")
            .args(arg)
            .arg(&pid)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("callgrind_control {arg:?} failed");
        }
        Ok(())
    };
    ctl(&["-i", "on"])?;
    keep_alive(port, s.path, &header, n, s.expect_status)?;
    ctl(&["-i", "off"])?;
    ctl(&["-d"])?;
    // The dump is written after callgrind_control returns: wait for its `totals:` line.
    let deadline = Instant::now() + Duration::from_secs(120);
    let total = loop {
        let mut found = None;
        for e in std::fs::read_dir(out_dir.path())? {
            let text = std::fs::read_to_string(e?.path()).unwrap_or_default();
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("totals:")) {
                found = v
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<u64>().ok());
            }
        }
        match found {
            Some(t) => break t,
            None if Instant::now() > deadline => bail!("{}: callgrind wrote no totals", s.name),
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    drop(envoy);
    // X402_BENCH_CALLGRIND_DIR: keep the profiles (callgrind_annotate) as <row>.callgrind.
    if let Ok(keep) = std::env::var("X402_BENCH_CALLGRIND_DIR") {
        std::fs::create_dir_all(&keep)?;
        for (i, e) in std::fs::read_dir(out_dir.path())?.enumerate() {
            let to = Path::new(&keep).join(format!("{}.{i}.callgrind", s.name));
            std::fs::copy(e?.path(), to)?;
        }
    }
    Ok(total as f64 / n as f64)
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let started = Instant::now();
    let secs = env_num("X402_BENCH_SECS", 3);
    let rounds = env_num("X402_BENCH_ROUNDS", 3).max(1) as usize;
    let ir_requests = env_num("X402_BENCH_IR_REQUESTS", 400) as usize;
    let parts = std::env::var("X402_BENCH_PARTS").unwrap_or_else(|_| "rps,rss,ir".into());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let callgrind = part("ir") && std::env::var("X402_BENCH_CALLGRIND").map_or(true, |v| v != "0");
    let only: Option<Vec<String>> = std::env::var("X402_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    if !Path::new(&paths::filter_wasm()).exists() {
        bail!("{} missing: run make wasm", paths::filter_wasm().display());
    }
    let key = SigningKey::from_slice(&[0x5a; 32])?;
    let asset: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3".parse()?;
    let network = Network::eip155(31337);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let kid = x402_protocol::token::key_id(key.verifying_key());
    let claims = |jti: String| AccessClaims {
        iss: "bench".into(),
        sub: Address::repeat_byte(0x11),
        route: "weather".into(),
        amount: U256::from(10_000u64),
        asset,
        network,
        jti,
    };
    let work = tempfile::tempdir()?;
    let x402 = mint(&key, &kid, claims("bench".into()), now, 3600);
    let (jwks, es256_token) = es256(now, x402.len())?;

    // The first-use list: distinct valid tokens, same length as the warm one.
    let list = work.path().join("tokens.txt");
    let script = work.path().join("cycle.lua");
    let first = token_list(&list, &script, FIRST_USE_TOKENS, |i| {
        mint(&key, &kid, claims(format!("bnch{i:06}")), now, 3600)
    })?;
    // The native rows' EdDSA key, token and list.
    let ed_key =
        TokenSigningKey::from_secret(TokenAlg::EdDsa, &[0x5b; 32]).context("Ed25519 bench key")?;
    let ed_kid = ed_key.verifying_key().key_id();
    let ed = EdKey {
        entry: json!({"kid": ed_kid, "alg": "EdDSA", "public_key": ed_key.verifying_key().to_hex()}),
        jwks: json!({"keys": [ed_key.verifying_key().jwk(&ed_kid)]}).to_string(),
    };
    let ed_script = work.path().join("cycle_ed.lua");
    let ed_first = token_list(
        &work.path().join("tokens_ed.txt"),
        &ed_script,
        FIRST_USE_TOKENS,
        |i| mint(&ed_key, &ed_kid, claims(format!("bnch{i:06}")), now, 3600),
    )?;
    let tokens = Tokens {
        x402: x402.clone(),
        first,
        es256: es256_token,
        list,
        script,
        ed: mint(&ed_key, &ed_kid, claims("bench".into()), now, 3600),
        ed_first,
        ed_script,
    };

    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| {
            s.name.starts_with("no_filter")
                || only.as_ref().is_none_or(|o| o.iter().any(|n| n == s.name))
        })
        .collect();

    // Start every Envoy once (for the wrk rows); check each answers as expected.
    let mut envoys = Vec::new();
    let mut yamls = Vec::new();
    for s in &scenarios {
        let yaml = yaml_for(s, &key, asset, &jwks, &ed)?;
        yamls.push(yaml);
    }
    for (s, yaml) in scenarios.iter().zip(&yamls).filter(|_| part("rps")) {
        let (port, admin) = ports_of(yaml)?;
        let envoy = start_envoy(yaml, port, admin, s.concurrency, None)?;
        let status = get(port, s.path, &format!("{}\r\n", header_for(s, &tokens)))?;
        if status != s.expect_status {
            bail!(
                "{}: expected HTTP {}, got {status}\n{}",
                s.name,
                s.expect_status,
                envoy.log()
            );
        }
        envoys.push(envoy);
    }

    if part("rps") {
        eprintln!(
            "x402 edge bench: {} rows x {rounds} rounds of {secs}s, wrk -c32",
            scenarios.len()
        );
    }
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    for round in 0..rounds {
        for (e, (i, s)) in envoys.iter().zip(scenarios.iter().enumerate()) {
            let script = script_for(s, &tokens);
            let header = script.is_none().then(|| header_for(s, &tokens));
            let r = wrk(
                e.port,
                s.path,
                header.as_deref(),
                script,
                s.concurrency,
                secs,
                s.expect_status < 300,
            )?;
            eprintln!("round {}: {:<22} {:>9.0} req/s", round + 1, s.name, r);
            rps[i].push(r);
        }
    }
    let _ = &tokens.list;

    let mut rows: Vec<Value> = Vec::new();
    let mut table = Vec::new();
    for (i, s) in scenarios.iter().enumerate().filter(|_| part("rps")) {
        let base_name = if s.concurrency == 2 {
            "no_filter_c2"
        } else {
            "no_filter"
        };
        let b = scenarios
            .iter()
            .position(|x| x.name == base_name)
            .context("baseline row")?;
        let ratios: Vec<f64> = rps[i]
            .iter()
            .zip(&rps[b])
            .map(|(r, base)| r / base)
            .collect();
        let (rmin, rmed, rmax) = stats(&ratios);
        let (_, rps_med, _) = stats(&rps[i]);
        rows.push(
            json!({"name": s.name, "ratio_median": round3(rmed), "ratio_min": round3(rmin),
            "ratio_max": round3(rmax), "rps_median": rps_med.round()}),
        );
        table.push(format!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} |",
            s.name, rps_med, rmin, rmed, rmax
        ));
    }

    drop(envoys);

    // Envoy's memory: fresh Envoys, one at a time, after the wrk rows are done.
    if part("rss") {
        let memory = rss::measure(
            &tokens,
            secs,
            |s| yaml_for(s, &key, asset, &jwks, &ed),
            ports_of,
        )?;
        print!("{}", memory.md);
        let rows: Vec<Value> = memory
            .values
            .iter()
            .map(|(name, v, _)| json!({"name": name, "value": round3(*v)}))
            .collect();
        write_results(MEM_MD, &memory.md, rows)?;
    }

    let mut values: Vec<(String, f64, &str)> = Vec::new();

    if callgrind {
        for name in IR_ROWS {
            let Some(i) = scenarios.iter().position(|s| s.name == *name) else {
                continue;
            };
            let t = Instant::now();
            let ir = instructions_per_request(scenarios[i], &yamls[i], &tokens, ir_requests)?;
            eprintln!(
                "callgrind {name}: {ir:.0} instructions/request ({:.0}s)",
                t.elapsed().as_secs_f64()
            );
            values.push((format!("ir_{name}"), ir.round(), "instructions/request"));
        }
        if let Some(base) = values
            .iter()
            .find(|(n, _, _)| n == "ir_no_filter")
            .map(|v| v.1)
        {
            let over: Vec<(String, f64, &str)> = values
                .iter()
                .filter(|(n, _, _)| n.starts_with("ir_") && n != "ir_no_filter")
                .map(|(n, v, _)| {
                    (
                        format!("{n}_over_no_filter"),
                        (v - base).round(),
                        "instructions/request",
                    )
                })
                .collect();
            values.extend(over);
        }
    }
    for (name, v, _) in &values {
        rows.push(json!({"name": name, "value": round3(*v)}));
    }

    let envoy_version = Command::new(paths::envoy_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut md = String::new();
    md.push_str("## Edge: the filter inside Envoy vs Envoy's native jwt_authn (same run)\n\n");
    md.push_str(&format!(
        "Ratios to `no_filter` of the same round and `--concurrency` (requests/s), {rounds} rounds of {secs}s, wrk -c32 (`-t1`, `-t2` for `_c2`), ~{}-byte requests, direct_response upstream.\n\n",
        header_for(scenarios[0], &tokens).len() + 60
    ));
    md.push_str("| row | req/s (median) | ratio min | ratio median | ratio max |\n|---|---:|---:|---:|---:|\n");
    for l in &table {
        md.push_str(l);
        md.push('\n');
    }
    md.push_str("\n| value | |\n|---|---:|\n");
    for (name, v, unit) in &values {
        md.push_str(&format!("| {name} | {v:.1} {unit} |\n"));
    }
    md.push_str(&format!(
        "\nMachine: {cpu}, {cores} cores (shared), {envoy_version}.\n\nCommands: `make bench` (= `bash bench/run.sh` = `cargo run --release -p x402-bench`); Envoy `--concurrency 1` (2 for `_c2`); `wrk -t1 -c32 -d{secs}s -H '<~600-byte header>' URL` (first use: `-s cycle.lua` over {FIRST_USE_TOKENS} distinct tokens, cache {CACHE}); callgrind: `valgrind --tool=callgrind --smc-check=all-non-file --instr-atstart=no envoy -c CFG --concurrency 1`, {} warm-up requests, `callgrind_control -i on`, {ir_requests} sequential requests on one keep-alive connection, `-i off`, total Ir / {ir_requests}. Whole edge bench: {:.0}s.\n",
        2 * ir_requests,
        started.elapsed().as_secs_f64()
    ));
    if part("rps") || callgrind {
        print!("{md}");
        write_results(EDGE_MD, &md, rows)?;
    }
    Ok(())
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Our sections of bench/results/latest.md (merged by `bench_results::merge_into_latest`).
const EDGE_MD: &str = "edge bench";
const MEM_MD: &str = "edge memory";

fn write_results(section: &str, md: &str, rows: Vec<Value>) -> Result<()> {
    x402_testkit::bench_results::merge_into_latest(section, md, rows, &[])
}
