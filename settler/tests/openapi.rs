//! Keeps `settler/openapi.yaml` honest: its paths are the router's (`api::routes`), every
//! `ApiError` code the settler can answer with is documented under its HTTP status
//! (`api::codes`, derived from `error::Refusal::ALL`), every facilitator reason is documented
//! (`api::reasons`, from the facilitator's reason enum), the wire types have the documented
//! fields, and the real binary serves the file byte for byte.
//!
//! YAML parser: `serde_norway`, the maintained fork of the deprecated `serde_yaml` (same API,
//! resolves anchors/aliases, which the document's examples use); `serde_yml` is archived.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{Address, U256};
use serde_json::{json, Value};
use x402_protocol::payment::PaymentError;
use x402_protocol::settler_api::{
    ApiError, PricedMethod, Requirement, SettlementState, SettlementStatus, TokenResponse,
};
use x402_protocol::{Asset, Network, PaymentMethod, Scheme};
use x402_settler::api::{codes, reasons, routes, OPENAPI_YAML};
use x402_settler::error::Refusal;

fn doc() -> Value {
    serde_norway::from_str(OPENAPI_YAML).expect("openapi.yaml parses")
}

/// Follows a local `$ref` (`#/a/b`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = doc
                .pointer(r.strip_prefix('#').expect("local $ref"))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(doc, target)
        }
        None => v,
    }
}

fn set<'a>(it: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    it.into_iter().map(str::to_string).collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[test]
fn document_paths_are_the_routers() {
    let doc = doc();
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3.1."),
        "OpenAPI 3.1"
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (key, _) in item.as_object().expect("path item") {
            assert!(
                METHODS.contains(&key.as_str()),
                "{path}: unexpected key {key}"
            );
            documented.insert((key.to_uppercase(), path.clone()));
        }
    }
    let routes = routes();
    let routed: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(routed.len(), routes.len(), "the route table has duplicates");
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routed but not documented: {missing:?}; documented but not routed: {extra:?}"
    );
}

/// `(status, codes)` of every response documented as an `ApiError` narrowed to some codes.
fn documented_codes(doc: &Value) -> Vec<(String, String, BTreeSet<String>)> {
    let api_error = "#/components/schemas/ApiError";
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, resp) in op["responses"].as_object().expect("responses") {
                let resp = resolve(doc, resp);
                let Some(schema) = resp.pointer("/content/application~1json/schema") else {
                    continue;
                };
                let Some(all_of) = schema.get("allOf").and_then(Value::as_array) else {
                    continue;
                };
                if !all_of
                    .iter()
                    .any(|s| s.get("$ref").and_then(Value::as_str) == Some(api_error))
                {
                    continue;
                }
                let codes = all_of
                    .iter()
                    .find_map(|s| s.pointer("/properties/error/enum"))
                    .unwrap_or_else(|| {
                        panic!("{method} {path} {status}: ApiError without an error enum")
                    });
                out.push((
                    format!("{} {path}", method.to_uppercase()),
                    status.clone(),
                    strings(codes),
                ));
            }
        }
    }
    out
}

#[test]
fn every_error_code_is_documented_under_its_status() {
    let doc = doc();
    let listed = codes();
    let codes: BTreeMap<&str, u16> = listed.iter().copied().collect();
    assert_eq!(
        codes.len(),
        listed.len(),
        "Refusal::ALL has duplicate codes"
    );
    let all = set(codes.keys().copied());

    // The ApiError schema lists exactly the codes.
    let enumerated =
        strings(&doc["components"]["schemas"]["ApiError"]["properties"]["error"]["enum"]);
    assert_eq!(
        enumerated, all,
        "components.schemas.ApiError.properties.error.enum vs Refusal::ALL"
    );

    // Each response lists codes of its own status; together they cover every code.
    let mut covered = BTreeSet::new();
    for (op, status, listed) in documented_codes(&doc) {
        for c in &listed {
            let expected = codes
                .get(c.as_str())
                .unwrap_or_else(|| panic!("{op} {status}: `{c}` is not a Refusal code"));
            assert_eq!(
                status,
                expected.to_string(),
                "{op}: `{c}` documented under {status}, the settler answers it with {expected}"
            );
        }
        covered.extend(listed);
    }
    let undocumented: Vec<_> = all.difference(&covered).collect();
    assert!(
        undocumented.is_empty(),
        "codes no operation documents: {undocumented:?}"
    );
}

#[test]
fn error_codes_list_is_the_refusals() {
    // The list is the enum: one entry per variant, each code once, each with one status.
    let listed = codes();
    assert_eq!(listed.len(), Refusal::ALL.len());
    assert!(listed.len() >= 20, "too few codes: {listed:?}");
    for (r, (code, _)) in Refusal::ALL.iter().zip(&listed) {
        assert_eq!(r.code(), *code);
        assert_eq!(r.to_api().error, *code);
    }
    // The payment parser's codes (`PaymentError::code`) are refusals answered as 400.
    let parser = [
        PaymentError::Json(String::new()),
        PaymentError::Unsupported(String::new()),
        PaymentError::Field {
            field: "f",
            problem: String::new(),
        },
    ];
    for e in parser {
        let code = e.code();
        let refusal = Refusal::from(e);
        assert_eq!(refusal.code(), code);
        assert_eq!(
            listed.iter().find(|(c, _)| *c == code).map(|(_, s)| *s),
            Some(400),
            "payment parser code {code}"
        );
    }
    // Facts travel with their refusal.
    let r = Refusal::NonceMismatch {
        expected_nonce: U256::from(7u8),
        message: "m".into(),
    };
    assert_eq!(r.to_api().expected_nonce.as_deref(), Some("7"));
}

#[test]
fn every_facilitator_reason_is_documented() {
    let doc = doc();
    let listed = reasons();
    let reasons = set(listed.iter().copied());
    assert_eq!(
        reasons.len(),
        listed.len(),
        "the facilitator's reasons have duplicates"
    );
    let enumerated = strings(&doc["components"]["schemas"]["FacilitatorReason"]["enum"]);
    assert_eq!(
        enumerated, reasons,
        "components.schemas.FacilitatorReason.enum vs api::reasons"
    );
    for schema in ["VerifyResponse", "SettleResponse"] {
        let props = &doc["components"]["schemas"][schema]["properties"];
        let reason = if schema == "VerifyResponse" {
            &props["invalidReason"]
        } else {
            &props["errorReason"]
        };
        assert_eq!(
            reason["$ref"], "#/components/schemas/FacilitatorReason",
            "{schema}"
        );
    }
    // x402 reasons are not settler codes except where both name the same fact.
    let codes: BTreeSet<String> = codes().iter().map(|(c, _)| c.to_string()).collect();
    let shared: Vec<_> = reasons.intersection(&codes).cloned().collect();
    assert_eq!(
        shared,
        ["network_mismatch", "settlement_pending", "unauthorized"],
        "reasons that are also ApiError codes"
    );
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

/// The wire types serialise to exactly the documented properties; `required` are the
/// fields always present.
fn assert_schema(doc: &Value, name: &str, full: &Value, minimal: &Value) {
    let schema = &doc["components"]["schemas"][name];
    assert_eq!(
        keys(&schema["properties"]),
        keys(full),
        "{name}: documented properties vs serialised fields"
    );
    assert_eq!(
        strings(&schema["required"]),
        keys(minimal),
        "{name}: documented required vs always-present fields"
    );
}

fn j<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serialises")
}

#[test]
fn wire_types_match_the_schemas() {
    let doc = doc();
    let a = Address::repeat_byte(0x11);
    let asset = Asset {
        address: a,
        decimals: 6,
        name: "USDC".into(),
        version: "2".into(),
        symbol: "USDC".into(),
    };
    let method = |spender| PaymentMethod {
        scheme: Scheme::Permit,
        network: Network::eip155(31337),
        asset: asset.clone(),
        pay_to: a,
        spender,
    };
    let req = |resource| Requirement {
        route: "r".into(),
        accepts: vec![PricedMethod {
            amount: U256::from(1u8),
            method: method(None),
        }],
        token_ttl_secs: 0,
        resource,
    };

    let v = j(&asset);
    assert_schema(&doc, "Asset", &v, &v);
    assert_schema(
        &doc,
        "PaymentMethod",
        &j(&method(Some(a))),
        &j(&method(None)),
    );
    let pm = j(&PricedMethod {
        amount: U256::from(1u8),
        method: method(None),
    });
    assert_schema(&doc, "PricedMethod", &pm, &pm);
    assert_schema(
        &doc,
        "Requirement",
        &j(&req(Some("u".into()))),
        &j(&req(None)),
    );
    let tr = json!({"requirement": j(&req(None)), "payment": {}});
    let tr_full = json!({"requirement": j(&req(None)), "payment": {}, "payment_id": "pay_0123456789abcdef", "hold_secs": 60});
    assert_schema(&doc, "TokenRequest", &tr_full, &tr);

    let resp = j(&TokenResponse {
        access_token: "t".into(),
        token_type: "Bearer".into(),
        expires_in: 1,
        settlement_id: "s".into(),
        payer: a,
        network: Network::eip155(1),
        route: "r".into(),
        amount: U256::from(1u8),
        asset: a,
        transaction: None,
    });
    let mut resp_full = resp.clone();
    resp_full["transaction"] = json!("0x01");
    assert_schema(&doc, "TokenResponse", &resp_full, &resp);

    let status = |some: bool| SettlementStatus {
        settlement_id: "s".into(),
        state: SettlementState::Pending,
        scheme: Scheme::Exact,
        network: Network::eip155(1),
        asset: a,
        payer: a,
        pay_to: a,
        amount: U256::from(1u8),
        route: "r".into(),
        permit_tx: some.then(|| "0x".into()),
        transfer_tx: some.then(|| "0x".into()),
        block_number: some.then_some(1),
        error: some.then(|| "e".into()),
        created_at: 0,
        updated_at: 0,
        held: some,
    };
    assert_schema(
        &doc,
        "SettlementStatus",
        &j(&status(true)),
        &j(&status(false)),
    );
    let states: BTreeSet<String> = [
        SettlementState::Pending,
        SettlementState::Submitted,
        SettlementState::Settled,
        SettlementState::Failed,
    ]
    .iter()
    .map(|s| {
        serde_json::to_value(s)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    })
    .collect();
    assert_eq!(
        strings(&doc["components"]["schemas"]["SettlementState"]["enum"]),
        states
    );

    let mut err = ApiError::new("c", "m");
    let minimal = j(&err);
    err.expected_nonce = Some("1".into());
    err.settlement_id = Some("0190-id".into());
    err.state = Some(SettlementState::Submitted);
    assert_schema(&doc, "ApiError", &j(&err), &minimal);
}

#[tokio::test]
async fn the_settler_serves_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("api-secret");
    std::fs::write(&secret, "s3cret-s3cret-s3cret-s3cret-s3cret\n").unwrap();
    let env =
        common::Env::start_with(None, None, &["--api-secret-file", secret.to_str().unwrap()]).await;
    let base = env.settler.url();
    let on_disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    assert_eq!(OPENAPI_YAML, on_disk);

    // Served without the bearer, byte for byte.
    let r = env
        .http
        .get(format!("{base}/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/yaml");
    assert_eq!(r.text().await.unwrap(), on_disk);

    // A few real answers against the document.
    let doc = doc();
    let schema = |n: &str| doc["components"]["schemas"][n].clone();
    let get = |path: &str, bearer: bool| {
        let mut rq = env.http.get(format!("{base}{path}"));
        if bearer {
            rq = rq.bearer_auth("s3cret-s3cret-s3cret-s3cret-s3cret");
        }
        async move {
            let r = rq.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (s, body) = get("/supported", false).await;
    assert_eq!((s, body["error"].as_str()), (401, Some("unauthorized")));
    let (s, body) = get("/supported", true).await;
    assert_eq!(s, 200);
    assert_eq!(
        body["kinds"][0],
        json!({"x402Version": 2, "scheme": "exact", "network": env.anvil.network().to_string()})
    );
    assert_eq!(keys(&body), set(["kinds", "extensions", "signers"]));
    let (s, body) = get("/readyz", false).await;
    assert_eq!(s, 200);
    assert_eq!(keys(&body), strings(&schema("Readiness")["required"]));
    let (s, body) = get("/v1/settlements/nope", false).await;
    assert_eq!((s, body["error"].as_str()), (404, Some("not_found")));
    let (s, body) = get("/no/such/path", false).await;
    assert_eq!((s, body["error"].as_str()), (404, Some("not_found")));
    let r = env
        .http
        .post(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        405,
        "a method the path does not serve: 405, empty body"
    );
    assert!(r.bytes().await.unwrap().is_empty());
    let (s, body) = get("/.well-known/jwks.json", false).await;
    assert_eq!(s, 200);
    // The default --token-alg es256k: the first of the documented key shapes (EC, then OKP).
    let documented = strings(doc.pointer("/paths/~1.well-known~1jwks.json/get/responses/200/content/application~1json/schema/properties/keys/items/oneOf/0/required").unwrap());
    assert_eq!(keys(&body["keys"][0]), documented);
}
