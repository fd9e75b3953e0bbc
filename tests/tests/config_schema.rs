//! The filter configuration's JSON Schema (filter/config.schema.json) and `x402-filter
//! check-config`, as a user runs them: the real binary (built by `make build`), the schema
//! checked by a real validator (Python `jsonschema`, Draft 2020-12, in tools/.venv).
//!
//! - the committed schema is the one the types generate (else: the command to regenerate);
//! - the configs we ship (envoy/envoy.yaml, envoy/istio) and the harness's stack config
//!   match the schema, and check-config accepts the ones with real keys;
//! - a typo is refused by both, and a value the schema cannot judge (a price) by the
//!   parser, with the filter's own message naming the field.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use alloy::primitives::Address;
use k256::ecdsa::SigningKey;
use serde_json::Value;
use x402_protocol::token::{key_id, verifying_key_to_hex};
use x402_testkit::paths;
use x402_testkit::stack::Stack;

const SCHEMA_FILE: &str = "filter/config.schema.json";
const REGENERATE: &str = "cargo run -q -p x402-filter -- schema > filter/config.schema.json";
/// The settler secret of the shipped configs is read from this variable (`api_secret_env`).
const SECRET_ENV: &str = "X402_SETTLER_SECRET";

fn cli() -> PathBuf {
    let bin = std::env::var_os("X402_FILTER_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::root().join("target/debug/x402-filter"));
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p x402-filter` (make build)",
        bin.display()
    );
    bin
}

/// `x402-filter check-config FILE` on `config`: (success, stdout).
fn check_config(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.json");
    std::fs::write(&file, config).expect("write config");
    let out = Command::new(cli())
        .arg("check-config")
        .arg(&file)
        .env(SECRET_ENV, "schema-test-dummy-secret-0123456789abcdef")
        .output()
        .expect("run x402-filter");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// The problems the validator finds with `config` against the committed schema (empty:
/// valid). The schema itself is checked against the 2020-12 metaschema first.
fn schema_problems(config: &Value) -> Vec<String> {
    const VALIDATE: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
for e in Draft202012Validator(schema).iter_errors(json.load(sys.stdin)):
    print("/".join(str(p) for p in e.absolute_path) + ": " + e.message)
"#;
    let mut child = Command::new(paths::python_bin())
        .arg("-c")
        .arg(VALIDATE)
        .arg(paths::root().join(SCHEMA_FILE))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tools/.venv python (make setup)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(config.to_string().as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("validator");
    assert!(
        out.status.success(),
        "the validator failed (is the schema valid 2020-12?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn key() -> SigningKey {
    SigningKey::from_slice(&[0x42; 32]).expect("key")
}

/// Every filter configuration embedded in a YAML value: an Envoy / EnvoyFilter
/// `configuration` StringValue (JSON text) or an Istio WasmPlugin's `pluginConfig`.
fn embedded_configs(v: &serde_norway::Value, out: &mut Vec<String>) {
    match v {
        serde_norway::Value::Mapping(m) => {
            for (k, child) in m {
                match (k.as_str(), child) {
                    (Some("configuration"), serde_norway::Value::Mapping(c)) => {
                        if let Some(text) = c.get("value").and_then(|t| t.as_str()) {
                            out.push(text.to_string());
                        }
                    }
                    (Some("pluginConfig"), c @ serde_norway::Value::Mapping(_)) => {
                        let json: Value = serde_norway::from_value(c.clone()).expect("json");
                        out.push(json.to_string());
                    }
                    _ => embedded_configs(child, out),
                }
            }
        }
        serde_norway::Value::Sequence(s) => s.iter().for_each(|c| embedded_configs(c, out)),
        _ => {}
    }
}

fn configs_in(rel: &str) -> Vec<String> {
    let text = std::fs::read_to_string(paths::root().join(rel)).expect(rel);
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = <serde_norway::Value as serde::Deserialize>::deserialize(doc).expect(rel);
        embedded_configs(&v, &mut out);
    }
    assert!(!out.is_empty(), "{rel}: no filter configuration found");
    out
}

/// envoy/envoy.yaml's `${X402_...}` placeholders filled in as `make run` does.
fn render_envoy_yaml_config(text: &str) -> String {
    let vk = *key().verifying_key();
    x402_testkit::envoy::render_template(text, &key_id(&vk), &verifying_key_to_hex(&vk))
}

#[test]
fn committed_schema_is_the_one_the_types_generate() {
    let out = Command::new(cli())
        .arg("schema")
        .output()
        .expect("run x402-filter schema");
    assert!(out.status.success(), "x402-filter schema failed");
    let generated = String::from_utf8(out.stdout).expect("utf-8");
    let committed = std::fs::read_to_string(paths::root().join(SCHEMA_FILE)).unwrap_or_default();
    assert!(
        generated == committed,
        "{SCHEMA_FILE} is not what the config types generate; regenerate it:\n  {REGENERATE}"
    );
    let schema: Value = serde_json::from_str(&generated).expect("schema is JSON");
    // What the schema promises beyond field types: typos refused, required fields listed.
    assert_eq!(schema["additionalProperties"], Value::Bool(false));
    let required = schema["required"].as_array().expect("required");
    for field in ["settler", "token_keys", "payment_methods", "routes"] {
        assert!(
            required.contains(&Value::from(field)),
            "{field} is required"
        );
    }
}

#[test]
fn shipped_and_harness_configs_match_the_schema_and_pass_check_config() {
    let envoy_yaml = configs_in("envoy/envoy.yaml");
    let mut accepted = Vec::new();
    for text in &envoy_yaml {
        accepted.push((
            "envoy/envoy.yaml".to_string(),
            render_envoy_yaml_config(text),
        ));
    }
    let stack = Stack::filter_config(
        &key(),
        "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse::<Address>()
            .expect("address"),
        "eip155:31337".to_string(),
        Address::repeat_byte(0x11),
        Address::repeat_byte(0x22),
    );
    accepted.push(("Stack::filter_config".to_string(), stack.to_string()));

    for (name, text) in &accepted {
        let config: Value = serde_json::from_str(text).expect(name);
        let problems = schema_problems(&config);
        assert!(
            problems.is_empty(),
            "{name} does not match the schema: {problems:?}"
        );
        let (ok, out) = check_config(text);
        assert!(ok, "{name}: check-config refused it: {out}");
        assert!(out.starts_with("ok: 2 routes ("), "{name}: {out}");
    }

    // The Istio manifests ship a placeholder key (tools/check-manifests.sh fills it in):
    // their shape must still match, and check-config refuses the placeholder by name.
    for rel in [
        "envoy/istio/wasmplugin.yaml",
        "envoy/istio/envoyfilter.yaml",
    ] {
        for text in configs_in(rel) {
            let config: Value = serde_json::from_str(&text).expect(rel);
            let problems = schema_problems(&config);
            assert!(
                problems.is_empty(),
                "{rel} does not match the schema: {problems:?}"
            );
            let (ok, out) = check_config(&text);
            assert!(!ok, "{rel}: accepted with its placeholder key");
            assert!(
                out.starts_with("x402 config: token_keys[0]."),
                "{rel}: {out}"
            );
        }
    }
}

#[test]
fn typo_is_refused_by_schema_and_check_config_and_a_bad_price_by_check_config() {
    let good = Stack::filter_config(
        &key(),
        Address::repeat_byte(0x33),
        "eip155:31337".to_string(),
        Address::repeat_byte(0x11),
        Address::repeat_byte(0x22),
    );

    let mut typo = good.clone();
    let route = typo["routes"][1].as_object_mut().expect("route");
    let price = route.remove("price").expect("price");
    route.insert("prise".to_string(), price);
    let problems = schema_problems(&typo);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("routes/1: ") && p.contains("'prise'")),
        "the schema must refuse the unknown field: {problems:?}"
    );
    let (ok, out) = check_config(&typo.to_string());
    assert!(!ok);
    assert!(
        out.starts_with("x402 config: routes[1]") && out.contains("prise"),
        "check-config names the field: {out}"
    );

    // A price is a string to the schema; only the parser knows "ten" is no amount.
    let mut bad_price = good;
    bad_price["routes"][0]["price"] = Value::from("ten");
    assert!(schema_problems(&bad_price).is_empty());
    let (ok, out) = check_config(&bad_price.to_string());
    assert!(!ok);
    assert!(out.starts_with("x402 config: routes[0].price: "), "{out}");

    let (ok, out) = check_config("{\"routes\": [");
    assert!(!ok);
    assert!(out.starts_with("x402 config: "), "{out}");
}
