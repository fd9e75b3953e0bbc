//! The filter's plugin configuration parser, exactly what Envoy runs in `on_configure`
//! (`x402_filter::config::parse`): any bytes must give a config or one `ConfigError` naming
//! a field, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match x402_filter::config::parse(data) {
        Ok(cfg) => {
            let _ = format!("{cfg:?}");
        }
        Err(e) => {
            assert!(!e.path.is_empty(), "error without a path: {e}");
            let line = e.to_string();
            assert!(line.starts_with("x402 config: "), "{line}");
            // Not asserted: that the line has no newline. A JSON key or value with an
            // escaped "\n" is echoed verbatim into the error (reported, not a crash).
        }
    }
});
