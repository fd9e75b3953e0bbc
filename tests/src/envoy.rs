//! Envoy with the x402 filter, as a real process on 127.0.0.1.
//!
//! [`Envoy::start`] writes a bootstrap YAML into a temp dir (one listener with the HTTP
//! connection manager, the wasm filter loading [`paths::filter_wasm`] on the V8 runtime (or
//! downloading it over HTTP, pinned by sha256: [`EnvoyOpts::remote_wasm`]), the router; an
//! `upstream` cluster; the `x402_settler` cluster; admin), runs
//! [`paths::envoy_bin`] with `--concurrency 1 --use-dynamic-base-id` so parallel Envoys never
//! share hot-restart memory, waits for admin `/ready` and for the listener to accept, and kills
//! the process on drop. Errors carry the tail of Envoy's log.
//!
//! The module also has a tiny blocking HTTP/1.1 client ([`request`]) so tests need no runtime.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::child::{wait_started, Started};
use crate::{paths, ports};

/// Options of [`Envoy::start`].
#[derive(Debug, Clone)]
pub struct EnvoyOpts {
    /// Port of the HTTP upstream on 127.0.0.1. `None`: routes answer 200 `no upstream`
    /// directly (Envoy `direct_response`).
    pub upstream_port: Option<u16>,
    /// Port of the settler on 127.0.0.1 (`x402_settler` cluster). `None`: a port nobody
    /// listens on, so every settler call fails.
    pub settler_port: Option<u16>,
    /// Wasm plugin `allow_on_headers_stop_iteration` (Envoy >= 1.35). The token endpoint
    /// needs it: without it, pausing in the headers callback stops the body callbacks too.
    pub allow_on_headers_stop_iteration: bool,
    /// `FAIL_CLOSED` (default) or `FAIL_OPEN` etc. (Wasm `failure_policy`).
    pub failure_policy: String,
    /// The .wasm to load (default [`paths::filter_wasm`]).
    pub wasm: Option<PathBuf>,
    /// How long to wait for Envoy to become ready (or, for [`Envoy::start_expect_failure`],
    /// to exit).
    pub startup_timeout: Duration,
    /// Extra Envoy arguments (e.g. `["--component-log-level", "wasm:debug"]`).
    pub extra_args: Vec<String>,
    /// The settler's gateway secret: Envoy runs with it in `X402_SETTLER_SECRET`, and the
    /// plugin's `vm_config.environment_variables.host_env_keys` passes it to the filter
    /// (`settler.api_secret_env`). See `stack::attach_settler_secret`.
    pub settler_secret: Option<String>,
    /// Envoy `--concurrency`: worker threads, each with its own wasm VM (default 1).
    pub concurrency: u32,
    /// The connection manager's path normalisation (`normalize_path`, `merge_slashes`,
    /// `path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT`), on by default; off to
    /// test what the filter does on its own.
    pub normalize_paths: bool,
    /// The virtual host's `domains` (default `["*"]`).
    pub domains: Vec<String>,
    /// The connection manager's `strip_any_host_port` (default off).
    pub strip_any_host_port: bool,
    /// The virtual host's `routes:` list, as YAML written from column 0 (the harness indents
    /// it), e.g. named routes and `typed_per_filter_config` disabling the filter
    /// (`envoy.filters.http.wasm`). `None`: one catch-all route to the upstream (or, without
    /// one, a `direct_response`). Clusters: `upstream`, `x402_settler`.
    pub routes_yaml: Option<String>,
    /// Fetch the module over HTTP (`vm_config.code.remote`, pinned by sha256) instead of
    /// reading [`EnvoyOpts::wasm`] from disk; a `wasm_server` cluster points at the server.
    pub remote_wasm: Option<RemoteWasm>,
    /// "Envoy verifies the tokens" mode: Envoy's own `jwt_authn` checks our EdDSA tokens
    /// ahead of the filter and the filter is skipped for requests it verified (see
    /// [`NativeJwt`]). `None`: the filter alone (the default mode).
    pub native_jwt: Option<NativeJwt>,
}

/// The native `jwt_authn` mode ([`EnvoyOpts::native_jwt`]), the layout of
/// envoy/envoy-jwt-authn.yaml: a `header_mutation` filter drops client-sent `x-x402-*`
/// headers; `jwt_authn` verifies the bearer token against the settler's JWKS (fetched from
/// the `x402_settler` cluster), per Envoy route the requirement named like the route
/// (audience = the x402 route), missing or failed tokens allowed through to the filter; on
/// success it sets the identity headers from the claims (`x-x402-payer` first); the filter,
/// a `composite` filter's action behind an `ExtensionWithMatcher`, is only created for
/// requests without `x-x402-payer`.
#[derive(Debug, Clone)]
pub struct NativeJwt {
    /// The settler's `--issuer` (the tokens' `iss`).
    pub issuer: String,
    /// (Envoy route name, x402 route name): each route's `jwt_authn` requirement accepts the
    /// tokens of that x402 route only (their `aud`). The routes YAML names each Envoy route
    /// and points it at its requirement (`typed_per_filter_config` `envoy.filters.http.jwt_authn`
    /// `PerRouteConfig {requirement_name: <Envoy route name>}`), see [`jwt_per_route`].
    pub routes: Vec<(String, String)>,
    /// The JWKS inline (`local_jwks`); `None`: fetched from the settler's
    /// `/.well-known/jwks.json` (`remote_jwks` on the `x402_settler` cluster, at start).
    pub local_jwks: Option<String>,
}

/// The `typed_per_filter_config` entry (YAML, from column 0) that points an Envoy route at
/// its native `jwt_authn` requirement ([`NativeJwt`]).
pub fn jwt_per_route(envoy_route: &str) -> String {
    format!(
        "envoy.filters.http.jwt_authn:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig\n  requirement_name: {envoy_route}\n"
    )
}

/// The header `jwt_authn` sets on a request it verified (the payer, from the token's `sub`):
/// the matcher skips the filter on it; clients' copies are removed first.
pub const VERIFIED_HEADER: &str = "x-x402-payer";

/// The filters ahead of the (wrapped) wasm filter in the native `jwt_authn` mode.
fn native_jwt_filters(n: &NativeJwt) -> String {
    let mut requirements = String::new();
    for (envoy_route, aud) in &n.routes {
        requirements.push_str(&format!(
            "                {envoy_route}:\n                  requires_any:\n                    requirements:\n                    - provider_and_audiences: {{provider_name: x402, audiences: [{aud}]}}\n                    - allow_missing_or_failed: {{}}\n",
            aud = quoted(aud),
        ));
    }
    format!(
        r#"          - name: x402.strip_reserved
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
                - remove: x-x402-payer
                - remove: x-x402-route
                - remove: x-x402-settlement-id
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                x402:
                  issuer: {issuer}
                  from_headers: [{{name: authorization, value_prefix: "Bearer "}}]
                  forward: false
                  claim_to_headers:
                  - {{header_name: x-x402-payer, claim_name: sub}}
                  - {{header_name: x-x402-route, claim_name: route}}
                  - {{header_name: x-x402-settlement-id, claim_name: jti}}
{jwks}                  jwt_cache_config: {{jwt_cache_size: 10000}}
              requirement_map:
{requirements}"#,
        issuer = quoted(&n.issuer),
        jwks = match &n.local_jwks {
            Some(j) => format!("                  local_jwks: {{inline_string: {}}}\n", quoted(j)),
            None => "                  remote_jwks:\n                    http_uri: {uri: \"http://x402-settler/.well-known/jwks.json\", cluster: x402_settler, timeout: 2s}\n                    cache_duration: 300s\n                    async_fetch: {}\n".to_string(),
        },
    )
}

/// Where Envoy downloads the filter from, and the sha256 it must have.
#[derive(Debug, Clone)]
pub struct RemoteWasm {
    /// Port of the HTTP server on 127.0.0.1.
    pub port: u16,
    /// Path of the module on it (`/x402_filter.wasm`).
    pub path: String,
    /// Lower-case hex sha256 Envoy checks the download against.
    pub sha256: String,
}

impl Default for EnvoyOpts {
    fn default() -> Self {
        EnvoyOpts {
            upstream_port: None,
            settler_port: None,
            allow_on_headers_stop_iteration: true,
            failure_policy: "FAIL_CLOSED".to_string(),
            wasm: None,
            startup_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
            settler_secret: None,
            concurrency: 1,
            normalize_paths: true,
            domains: vec!["*".to_string()],
            strip_any_host_port: false,
            routes_yaml: None,
            remote_wasm: None,
            native_jwt: None,
        }
    }
}

/// A config template of `envoy/` (`${X402_*}` placeholders, see tools/render.py) filled as
/// `make demo` would: the token key's `kid` and public key, local-chain addresses for the
/// token, the recipient and the permit spender.
pub fn render_template(text: &str, kid: &str, public_key: &str) -> String {
    [
        ("X402_KID", kid),
        ("X402_PUBLIC_KEY", public_key),
        (
            "X402_TOKEN_ADDRESS",
            "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        ),
        ("X402_PAY_TO", "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"),
        ("X402_SPENDER", "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
    ]
    .iter()
    .fold(text.to_string(), |t, (k, v)| {
        t.replace(&format!("${{{k}}}"), v)
    })
}

/// The environment variable the settler secret reaches the filter through.
pub const SETTLER_SECRET_ENV: &str = "X402_SETTLER_SECRET";

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    admin_port: u16,
}

/// What happened to an Envoy that was expected not to start.
#[derive(Debug)]
pub struct FailedStart {
    /// Exit code, or `None` if Envoy had to be killed.
    pub exit_code: Option<i32>,
    /// `true` when Envoy did become ready after all (with the listener serving).
    pub became_ready: bool,
    pub log: String,
}

/// YAML/JSON double-quoted string literal (JSON escapes are valid YAML escapes).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn endpoint(cluster: &str, port: u16) -> String {
    format!(
        "load_assignment: {{cluster_name: {cluster}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}"
    )
}

/// The bootstrap Envoy runs with. Public so other harnesses can reuse or inspect it.
pub fn bootstrap_yaml(
    filter_config_json: &str,
    opts: &EnvoyOpts,
    listen_port: u16,
    admin_port: u16,
    settler_port: u16,
) -> String {
    let wasm = opts.wasm.clone().unwrap_or_else(paths::filter_wasm);
    let route_action = match opts.upstream_port {
        Some(_) => "route: {cluster: upstream, timeout: 15s}".to_string(),
        None => {
            "direct_response: {status: 200, body: {inline_string: \"no upstream\"}}".to_string()
        }
    };
    let upstream_cluster = match opts.upstream_port {
        Some(p) => format!(
            "  - name: upstream\n    type: STATIC\n    connect_timeout: 1s\n    {}\n",
            endpoint("upstream", p)
        ),
        None => String::new(),
    };
    format!(
        r#"# Generated by x402-testkit (tests/src/envoy.rs).
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: x402_edge
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: x402_edge
{normalization}          common_http_protocol_options: {{headers_with_underscores_action: REJECT_REQUEST}}
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: {domains}
              routes:
{routes}
          http_filters:
{wasm_filter}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{upstream_cluster}{wasm_cluster}  - name: x402_settler
    type: STATIC
    connect_timeout: 0.5s
    {settler_endpoint}
"#,
        wasm_filter = {
            let wasm = format!(
                r#""@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
config:
  name: x402
  root_id: x402
  failure_policy: {failure_policy}
  allow_on_headers_stop_iteration: {allow}
  configuration:
    "@type": type.googleapis.com/google.protobuf.StringValue
    value: {config}
  vm_config:
    vm_id: x402
    runtime: envoy.wasm.runtime.v8
    code: {code}
{vm_env}"#,
                failure_policy = opts.failure_policy,
                allow = opts.allow_on_headers_stop_iteration,
                config = quoted(filter_config_json),
                code = match &opts.remote_wasm {
                    // One retry only: a module that fails its hash fails it again.
                    Some(r) => format!(
                        "{{remote: {{http_uri: {{uri: {uri}, cluster: wasm_server, timeout: 10s}}, sha256: {sha}, retry_policy: {{num_retries: 1}}}}}}",
                        uri = quoted(&format!("http://127.0.0.1:{}{}", r.port, r.path)),
                        sha = quoted(&r.sha256),
                    ),
                    None => format!("{{local: {{filename: {}}}}}", quoted(&wasm.to_string_lossy())),
                },
                vm_env = match opts.settler_secret {
                    Some(_) => format!(
                        "    environment_variables: {{host_env_keys: [{SETTLER_SECRET_ENV}]}}\n"
                    ),
                    None => String::new(),
                },
            );
            match &opts.native_jwt {
                // The entry keeps the wasm filter's name: per-route `FilterConfig {disabled}`
                // keyed `envoy.filters.http.wasm` still turns it off.
                // The filter is created only for requests jwt_authn did not verify: a
                // composite filter behind a matcher (a filter merely skipped would still
                // have its VM context created and logged on every request).
                Some(n) => format!(
                    "{}          - name: envoy.filters.http.wasm\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher\n              extension_config:\n                name: x402.composite\n                typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite}}\n              xds_matcher:\n                matcher_list:\n                  matchers:\n                  - predicate:\n                      single_predicate:\n                        input:\n                          name: verified\n                          typed_config: {{\"@type\": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: {VERIFIED_HEADER}}}\n                        value_match: {{prefix: \"0x\"}}\n                    on_match:\n                      action:\n                        name: skip\n                        typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter}}\n                on_no_match:\n                  action:\n                    name: x402\n                    typed_config:\n                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction\n                      typed_config:\n                        name: envoy.filters.http.wasm\n                        typed_config:\n{}",
                    native_jwt_filters(n),
                    indent(&wasm, 26)
                ),
                None => format!(
                    "          - name: envoy.filters.http.wasm\n            typed_config:\n{}",
                    indent(&wasm, 14)
                ),
            }
        },
        routes = match &opts.routes_yaml {
            Some(yaml) => yaml
                .lines()
                .map(|l| format!("              {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
            None =>
                format!("              - match: {{prefix: \"/\"}}\n                {route_action}"),
        },
        normalization = {
            let mut n = String::new();
            if opts.normalize_paths {
                n.push_str("          normalize_path: true\n          merge_slashes: true\n          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT\n");
            }
            if opts.strip_any_host_port {
                n.push_str("          strip_any_host_port: true\n");
            }
            n
        },
        domains = serde_json::to_string(&opts.domains).unwrap_or_else(|_| "[\"*\"]".to_string()),
        wasm_cluster = match &opts.remote_wasm {
            Some(r) => format!(
                "  - name: wasm_server\n    type: STATIC\n    connect_timeout: 1s\n    {}\n",
                endpoint("wasm_server", r.port)
            ),
            None => String::new(),
        },
        settler_endpoint = endpoint("x402_settler", settler_port),
    )
}

/// `text` with every non-empty line indented by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("{pad}{l}\n")
            }
        })
        .collect()
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn check_binaries(opts: &EnvoyOpts) -> anyhow::Result<()> {
    let bin = paths::envoy_bin();
    if !bin.exists() {
        bail!(
            "Envoy binary not found at {} (run `make setup`)",
            bin.display()
        );
    }
    let wasm = opts.wasm.clone().unwrap_or_else(paths::filter_wasm);
    let meta = std::fs::metadata(&wasm)
        .with_context(|| format!("filter {} missing (run `make wasm`)", wasm.display()))?;
    if meta.len() < 1024 {
        bail!(
            "filter {} is only {} bytes: a placeholder, not the filter (run `make wasm`)",
            wasm.display(),
            meta.len()
        );
    }
    Ok(())
}

fn spawn(dir: &Path, yaml: &str, opts: &EnvoyOpts) -> anyhow::Result<Child> {
    let cfg = dir.join("envoy.yaml");
    std::fs::write(&cfg, yaml)?;
    let log = std::fs::File::create(dir.join("envoy.log"))?;
    let log2 = log.try_clone()?;
    Command::new(paths::envoy_bin())
        .arg("-c")
        .arg(&cfg)
        .arg("--concurrency")
        .arg(opts.concurrency.max(1).to_string())
        .args([
            "--use-dynamic-base-id",
            "--log-format",
            "[%Y-%m-%d %T.%e][%l][%n] %v",
        ])
        .args(&opts.extra_args)
        .env_remove(SETTLER_SECRET_ENV)
        .envs(
            opts.settler_secret
                .iter()
                .map(|s| (SETTLER_SECRET_ENV, s.as_str())),
        )
        .current_dir(paths::root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .with_context(|| format!("cannot run {}", paths::envoy_bin().display()))
}

impl Envoy {
    /// Starts Envoy with `filter_config_json` as the plugin configuration and waits until it
    /// serves. Retries twice on a port collision.
    pub fn start(filter_config_json: &str, opts: EnvoyOpts) -> anyhow::Result<Envoy> {
        check_binaries(&opts)?;
        let mut last_err = anyhow!("not started");
        for _attempt in 0..3 {
            let mut envoy = Self::launch(filter_config_json, &opts)?;
            match envoy.wait_ready(opts.startup_timeout) {
                Ok(()) => return Ok(envoy),
                Err(e) => {
                    let log = envoy.log();
                    let port_clash =
                        log.contains("Address already in use") || log.contains("cannot bind");
                    last_err = e.context(format!(
                        "Envoy did not start; log tail:\n{}",
                        tail(&log, 40)
                    ));
                    if !port_clash {
                        break;
                    }
                }
            }
        }
        Err(last_err)
    }

    /// Starts Envoy from a whole bootstrap YAML (a shipped config, say) instead of the
    /// harness's: `make_yaml` gets the listener and admin ports to put in it. Waits until it
    /// serves; retries twice on a port collision. `opts` gives the environment
    /// (`settler_secret`), `concurrency`, `extra_args` and `startup_timeout`.
    pub fn start_bootstrap(
        make_yaml: impl Fn(u16, u16) -> String,
        opts: EnvoyOpts,
    ) -> anyhow::Result<Envoy> {
        check_binaries(&opts)?;
        let mut last_err = anyhow!("not started");
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new().prefix("x402-envoy-").tempdir()?;
            let (port, admin_port) = (ports::free_port(), ports::free_port());
            let child = spawn(dir.path(), &make_yaml(port, admin_port), &opts)?;
            let mut envoy = Envoy {
                child,
                dir,
                port,
                admin_port,
            };
            match envoy.wait_ready(opts.startup_timeout) {
                Ok(()) => return Ok(envoy),
                Err(e) => {
                    let log = envoy.log();
                    let port_clash =
                        log.contains("Address already in use") || log.contains("cannot bind");
                    last_err = e.context(format!(
                        "Envoy did not start; log tail:\n{}",
                        tail(&log, 40)
                    ));
                    if !port_clash {
                        break;
                    }
                }
            }
        }
        Err(last_err)
    }

    /// Starts Envoy with a configuration that must be refused, and reports what happened:
    /// waits until Envoy exits, or until it is ready (then kills it and says so).
    pub fn start_expect_failure(
        filter_config_json: &str,
        opts: EnvoyOpts,
    ) -> anyhow::Result<FailedStart> {
        check_binaries(&opts)?;
        let mut envoy = Self::launch(filter_config_json, &opts)?;
        let admin_port = envoy.admin_port;
        let outcome = wait_started(&mut envoy.child, opts.startup_timeout, || {
            admin_get(admin_port, "/ready").is_ok_and(|(s, _)| s == 200)
        })?;
        let (exit_code, became_ready) = match outcome {
            Started::Exited(status) => (status.code(), false),
            Started::Ready | Started::TimedOut => {
                let _ = envoy.child.kill();
                let _ = envoy.child.wait();
                (None, matches!(outcome, Started::Ready))
            }
        };
        Ok(FailedStart {
            exit_code,
            became_ready,
            log: envoy.log(),
        })
    }

    /// Writes the bootstrap into a fresh temp dir, on free ports, and runs Envoy (not yet
    /// ready: the caller waits).
    fn launch(filter_config_json: &str, opts: &EnvoyOpts) -> anyhow::Result<Envoy> {
        let dir = tempfile::Builder::new().prefix("x402-envoy-").tempdir()?;
        let (port, admin_port) = (ports::free_port(), ports::free_port());
        let settler_port = opts.settler_port.unwrap_or_else(ports::free_port);
        let yaml = bootstrap_yaml(filter_config_json, opts, port, admin_port, settler_port);
        let child = spawn(dir.path(), &yaml, opts)?;
        Ok(Envoy {
            child,
            dir,
            port,
            admin_port,
        })
    }

    /// `envoy --mode validate` on a YAML text. Returns whether it passed and Envoy's output.
    /// Relative paths in the YAML resolve from the repository root.
    pub fn validate(yaml: &str) -> anyhow::Result<(bool, String)> {
        let dir = tempfile::Builder::new()
            .prefix("x402-envoy-validate-")
            .tempdir()?;
        let cfg = dir.path().join("envoy.yaml");
        std::fs::write(&cfg, yaml)?;
        Self::validate_file(&cfg)
    }

    /// `envoy --mode validate -c <file>`, run from the repository root, with a placeholder
    /// settler secret in [`SETTLER_SECRET_ENV`] (as a deployment provides one: manifests pass
    /// it to the filter with `host_env_keys`, and the filter refuses to start without it).
    pub fn validate_file(file: &Path) -> anyhow::Result<(bool, String)> {
        let out = Command::new(paths::envoy_bin())
            .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
            .arg(file)
            .env(SETTLER_SECRET_ENV, "validate-placeholder-settler-secret")
            .current_dir(paths::root())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", paths::envoy_bin().display()))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let (admin_port, addr) = (self.admin_port, self.addr());
        let ready = || {
            admin_get(admin_port, "/ready").is_ok_and(|(s, _)| s == 200)
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        };
        match wait_started(&mut self.child, timeout, ready)? {
            Started::Ready => Ok(()),
            Started::Exited(status) => bail!("Envoy exited during start-up with {status}"),
            Started::TimedOut => bail!("Envoy not ready after {timeout:?}"),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Envoy's log so far (stdout + stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The bootstrap YAML this Envoy runs with.
    pub fn bootstrap(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.yaml")).unwrap_or_default()
    }

    /// Admin `/stats` as text (`name: value` lines).
    pub fn stats(&self) -> anyhow::Result<String> {
        let (status, body) = admin_get(self.admin_port, "/stats")?;
        if status != 200 {
            bail!("admin /stats answered {status}");
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// All counters and gauges from `/stats`, by name.
    pub fn stat_values(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        Ok(self
            .stats()?
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
            .collect())
    }

    /// One stat by its full name (e.g. `wasmcustom.x402_challenges`); 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        self.stat_values()
            .ok()
            .and_then(|m| m.get(name).copied())
            .unwrap_or(0)
    }

    /// A request to the listener. Panics with Envoy's log tail if the request fails at the
    /// transport level (a hang, a reset), which is never an acceptable answer in these tests.
    pub fn send(&self, req: &HttpRequest) -> HttpResponse {
        match request(self.addr(), req) {
            Ok(r) => r,
            Err(e) => panic!(
                "{} {} failed: {e:#}\nEnvoy log tail:\n{}",
                req.method,
                req.path,
                tail(&self.log(), 60)
            ),
        }
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.send(&HttpRequest::new("GET", path))
    }

    /// The last `lines` lines of Envoy's log, for assertions' messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- Envoy log tail ({}) ----\n{}",
                self.dir.path().display(),
                tail(&self.log(), 80)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A small blocking HTTP/1.1 client
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Send the body with `transfer-encoding: chunked` instead of `content-length`.
    pub chunked: bool,
    pub timeout: Duration,
}

impl HttpRequest {
    pub fn new(method: &str, path: &str) -> Self {
        HttpRequest {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: None,
            chunked: false,
            timeout: Duration::from_secs(20),
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-cased names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

/// Sends one request on a fresh connection (`connection: close`) and reads the answer.
pub fn request(addr: SocketAddr, req: &HttpRequest) -> anyhow::Result<HttpResponse> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, req.timeout)?;
    stream.set_read_timeout(Some(req.timeout))?;
    stream.set_write_timeout(Some(req.timeout))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    let has = |n: &str| req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        head.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("connection: close\r\n");
    match (&req.body, req.chunked) {
        (Some(_), true) => head.push_str("transfer-encoding: chunked\r\n"),
        (Some(b), false) => head.push_str(&format!("content-length: {}\r\n", b.len())),
        (None, _) => {}
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = &req.body {
        // A server may answer (413) and close before the whole body is written: ignore
        // write errors and read whatever answer arrived.
        let _ = if req.chunked {
            let mut buf = Vec::new();
            for chunk in body.chunks(4096) {
                buf.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                buf.extend_from_slice(chunk);
                buf.extend_from_slice(b"\r\n");
            }
            buf.extend_from_slice(b"0\r\n\r\n");
            stream.write_all(&buf)
        } else {
            stream.write_all(body)
        };
    }
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .context("reading the status line")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = crate::upstream::read_headers(&mut reader)?.unwrap_or_default();
    // A HEAD answer has the GET's content-length but no body.
    let body = if req.method.eq_ignore_ascii_case("HEAD") {
        Vec::new()
    } else if headers.contains_key("content-length") || headers.contains_key("transfer-encoding") {
        crate::upstream::read_body(&mut reader, &headers)?
    } else {
        let mut b = Vec::new();
        reader.read_to_end(&mut b)?;
        b
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    })
}

/// GET on the admin port: (status, body).
fn admin_get(admin_port: u16, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let r = request(
        addr,
        &HttpRequest::new("GET", path).timeout(Duration::from_secs(5)),
    )?;
    Ok((r.status, r.body))
}
