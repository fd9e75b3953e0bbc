//! Checks an x402 filter configuration offline with the filter's own parser, the exact code
//! Envoy runs in `on_configure`.
//!
//! ```text
//! cargo run -q -p x402-filter --example check_config -- FILE.json
//! ```
//!
//! Prints `ok` (exit 0) or the filter's one-line error, `x402 config: <path>: <message>`
//! (exit 1). A file that cannot be read is reported as `x402 config: <file>: cannot read: ...`
//! (exit 1); a wrong command line exits 2.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file] = args.as_slice() else {
        eprintln!("usage: check_config FILE.json");
        return ExitCode::from(2);
    };
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) => {
            println!("x402 config: {file}: cannot read: {e}");
            return ExitCode::from(1);
        }
    };
    match x402_filter::config::parse(&text) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(1)
        }
    }
}
