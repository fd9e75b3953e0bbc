//! `x402-filter`: checks x402 filter configurations offline, with the filter's own parser
//! (the exact code Envoy runs in `on_configure`), and prints the configuration's JSON Schema.
//!
//! ```text
//! x402-filter check-config FILE.json   # `ok: <summary>` (exit 0) or the filter's error (exit 1)
//! x402-filter schema                   # the JSON Schema (filter/config.schema.json)
//! ```
//!
//! `check-config` reads the plugin configuration as JSON (the string in Envoy's
//! `configuration` StringValue, or an Istio WasmPlugin's `pluginConfig`), not a whole Envoy
//! YAML file. An error is the one line the filter logs, `x402 config: <path>: <message>`; a
//! file that cannot be read is `x402 config: <file>: cannot read: ...` (exit 1). A wrong
//! command line exits 2. `settler.api_secret_env` is read from this process's environment
//! (in Envoy: the wasm VM's).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "x402-filter",
    version,
    about = "Checks x402 filter configurations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parses and validates FILE (the filter configuration JSON) as the filter does.
    CheckConfig {
        /// The configuration file (JSON).
        file: std::path::PathBuf,
    },
    /// Prints the JSON Schema of the filter configuration.
    Schema,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Schema => match x402_filter::config::schema::json_schema_text() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("x402-filter: cannot serialise the schema: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) => {
            println!("x402 config: {}: cannot read: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    match x402_filter::config::parse(&text) {
        Ok(config) => {
            println!("ok: {}", config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(1)
        }
    }
}
