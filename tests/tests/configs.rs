//! The configs we ship must load in the real Envoy: envoy/envoy.yaml once rendered, and never
//! with its placeholders left in.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::expect_used)]

use k256::ecdsa::SigningKey;
use x402_protocol::token::{key_id, verifying_key_to_hex};
use x402_testkit::envoy::{render_template, Envoy};
use x402_testkit::paths;

fn template() -> String {
    std::fs::read_to_string(paths::root().join("envoy/envoy.yaml")).expect("envoy/envoy.yaml")
}

#[test]
fn rendered_local_envoy_config_validates() {
    assert!(paths::filter_wasm().exists(), "run `make wasm` first");
    let key = SigningKey::from_slice(&[0x42; 32]).unwrap();
    let vk = *key.verifying_key();
    let yaml = render_template(&template(), &key_id(&vk), &verifying_key_to_hex(&vk));
    assert!(!yaml.contains("${X402_"), "every placeholder is filled");
    let (ok, out) = Envoy::validate(&yaml).unwrap();
    assert!(
        ok,
        "rendered envoy/envoy.yaml must pass --mode validate:\n{out}"
    );
}

#[test]
fn unrendered_template_is_refused_naming_the_field() {
    let (ok, out) = Envoy::validate(&template()).unwrap();
    assert!(!ok, "a template with placeholders must never load");
    assert!(
        out.contains("x402 config: token_keys[0]"),
        "log names the field:\n{out}"
    );
}

#[test]
fn rendered_jwt_authn_mode_config_validates() {
    use x402_protocol::token::{TokenAlg, TokenSigningKey};
    assert!(paths::filter_wasm().exists(), "run `make wasm` first");
    let text = std::fs::read_to_string(paths::root().join("envoy/envoy-jwt-authn.yaml"))
        .expect("envoy/envoy-jwt-authn.yaml");
    let key = TokenSigningKey::from_secret(TokenAlg::EdDsa, &[0x42; 32]).expect("Ed25519 key");
    let vk = key.verifying_key();
    let yaml = render_template(&text, &vk.key_id(), &vk.to_hex());
    assert!(!yaml.contains("${X402_"), "every placeholder is filled");
    let (ok, out) = Envoy::validate(&yaml).expect("envoy --mode validate runs");
    assert!(
        ok,
        "rendered envoy/envoy-jwt-authn.yaml must pass --mode validate:\n{out}"
    );
    // The filter is wrapped (skipped for verified requests) and keeps its name.
    assert!(yaml.contains("ExtensionWithMatcher") && yaml.contains("SkipFilter"));
}
