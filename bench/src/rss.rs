//! Envoy's memory with and without the filter (issue 10, "Memory"): VmRSS of a fresh Envoy
//! per case, once idle (started, one request, a second for the timers) and once after
//! `wrk` load, at `--concurrency 1` and 2, each Envoy alone on the machine.
//!
//! Also RssAnon / RssFile of every Envoy: V8 alone (any module) makes Envoy touch ~11 MB more
//! of its own binary (file-backed, shared between Envoys on one host), the rest is private
//! (anonymous) memory, mostly what V8 used to compile the module that the allocator keeps.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{
    get, header_for, sc, script_for, start_envoy, wrk, Filter, Scenario, Send, Tokens, CACHE,
};

/// VmRSS, RssAnon and RssFile of a process, in MB.
#[derive(Clone, Copy, Debug)]
struct Rss {
    total: f64,
    anon: f64,
    file: f64,
}

fn rss_of(pid: u32) -> Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kb / 1024.0)
    };
    Ok(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

/// Envoy's bootstrap `memory_allocator_manager`: hand the allocator's free pages back to the
/// OS every second (Envoy otherwise keeps what V8's compiler freed). For the `_release` rows.
const RELEASE_FREE_MEMORY: &str =
    "memory_allocator_manager: {bytes_to_release: 134217728, memory_release_interval: 1s}\n";

/// (row name, how the Envoy is configured and loaded). Names as in bench/results/latest.json:
/// `envoy_rss_mb_<name>` after the load, `..._idle` before it. `_release` rows run with
/// [`RELEASE_FREE_MEMORY`] and compare with `no_filter_release`.
const CASES: &[(&str, Scenario)] = &[
    (
        "no_filter",
        sc("", Filter::None, "/api/weather", Send::X402Token, 200, 1),
    ),
    (
        "x402",
        sc(
            "",
            Filter::X402 { cache_size: CACHE },
            "/api/weather",
            Send::X402Token,
            200,
            1,
        ),
    ),
    // Load with more distinct tokens than the cache holds: the cache ends full.
    (
        "x402_full_cache",
        sc(
            "",
            Filter::X402 { cache_size: CACHE },
            "/api/weather",
            Send::TokenList,
            200,
            1,
        ),
    ),
    (
        "jwt_authn",
        sc(
            "",
            Filter::JwtAuthn { cache: true },
            "/api/weather",
            Send::Es256Token,
            200,
            1,
        ),
    ),
    (
        "no_filter_c2",
        sc("", Filter::None, "/api/weather", Send::X402Token, 200, 2),
    ),
    (
        "x402_c2",
        sc(
            "",
            Filter::X402 { cache_size: CACHE },
            "/api/weather",
            Send::X402Token,
            200,
            2,
        ),
    ),
    (
        "jwt_authn_c2",
        sc(
            "",
            Filter::JwtAuthn { cache: true },
            "/api/weather",
            Send::Es256Token,
            200,
            2,
        ),
    ),
    (
        "no_filter_release",
        sc("", Filter::None, "/api/weather", Send::X402Token, 200, 1),
    ),
    (
        "x402_release",
        sc(
            "",
            Filter::X402 { cache_size: CACHE },
            "/api/weather",
            Send::X402Token,
            200,
            1,
        ),
    ),
];

pub(crate) struct Measured {
    /// `(row name, value, unit)` for latest.json / the values table.
    pub(crate) values: Vec<(String, f64, &'static str)>,
    /// The markdown section.
    pub(crate) md: String,
}

/// Measures every case, one Envoy at a time. `yaml_for` builds the bootstrap of a scenario.
pub(crate) fn measure(
    tokens: &Tokens,
    secs: u64,
    yaml_for: impl Fn(&Scenario) -> Result<String>,
    ports_of: impl Fn(&str) -> Result<(u16, u16)>,
) -> Result<Measured> {
    let mut seen: Vec<(&str, Rss, Rss)> = Vec::new();
    for (name, s) in CASES {
        let mut yaml = yaml_for(s)?;
        if name.ends_with("_release") {
            yaml.push_str(RELEASE_FREE_MEMORY);
        }
        let (port, admin) = ports_of(&yaml)?;
        let envoy = start_envoy(&yaml, port, admin, s.concurrency, None)?;
        let status = get(port, s.path, &format!("{}\r\n", header_for(s, tokens)))?;
        if status != s.expect_status {
            bail!(
                "rss {name}: expected HTTP {}, got {status}\n{}",
                s.expect_status,
                envoy.log()
            );
        }
        // The filter's first timer tick (revocation list, JWKS) runs within the second.
        std::thread::sleep(Duration::from_millis(1500));
        let idle = rss_of(envoy.child.id())?;
        let script: Option<&Path> = script_for(s, tokens);
        let header = script.is_none().then(|| header_for(s, tokens));
        wrk(
            port,
            s.path,
            header.as_deref(),
            script,
            s.concurrency,
            secs,
            true,
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let loaded = rss_of(envoy.child.id())?;
        eprintln!(
            "rss {name:<16} idle {:6.1} MB, after {secs}s of load {:6.1} MB (anon {:.1}, file {:.1})",
            idle.total, loaded.total, loaded.anon, loaded.file
        );
        seen.push((name, idle, loaded));
    }

    let base = |name: &str| {
        let b = if name.ends_with("_c2") {
            "no_filter_c2"
        } else if name.ends_with("_release") {
            "no_filter_release"
        } else {
            "no_filter"
        };
        seen.iter()
            .find(|(n, _, _)| *n == b)
            .map(|(_, i, l)| (*i, *l))
    };
    let mut values = Vec::new();
    let mut md = String::from(
        "## Envoy memory: the filter vs no filter and jwt_authn (same run)\n\n\
         VmRSS of a fresh Envoy per row: idle (started, one request, 1.5 s) and after `wrk -c32` \
         load (warm token; `x402_full_cache`: more distinct tokens than the 10,000-entry cache). \
         `over` = minus `no_filter` at the same `--concurrency` (`_release`: minus \
         `no_filter_release`; both with Envoy's `memory_allocator_manager` releasing free \
         memory every second). RssAnon is private memory; \
         RssFile is Envoy's binary (V8's code pages among it), shared between processes.\n\n\
         | envoy | idle MB | over | after load MB | over | RssAnon | RssFile |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, idle, loaded) in &seen {
        let (bi, bl) = base(name).context("no_filter row")?;
        let (oi, ol) = (idle.total - bi.total, loaded.total - bl.total);
        md.push_str(&format!(
            "| {name} | {:.1} | {oi:+.1} | {:.1} | {ol:+.1} | {:.1} | {:.1} |\n",
            idle.total, loaded.total, loaded.anon, loaded.file
        ));
        values.push((format!("envoy_rss_mb_{name}_idle"), idle.total, "MB"));
        values.push((format!("envoy_rss_mb_{name}"), loaded.total, "MB"));
        if !name.starts_with("no_filter") {
            values.push((format!("envoy_rss_mb_{name}_idle_over_no_filter"), oi, "MB"));
            values.push((format!("envoy_rss_mb_{name}_over_no_filter"), ol, "MB"));
        }
    }
    let module = std::fs::metadata(x402_testkit::paths::filter_wasm()).map_or(0, |m| m.len());
    md.push_str(&format!(
        "\nFilter module: {module} bytes. Commands: `X402_BENCH_PARTS=rss cargo run --release -p x402-bench` (part of `make bench`); `wrk -t<concurrency> -c32 -d{secs}s`; VmRSS/RssAnon/RssFile from /proc/PID/status.\n"
    ));
    Ok(Measured { values, md })
}
