//! The OpenAPI document: the committed `openapi.json` must match the one generated from the
//! code, be a valid OpenAPI 3.1 document, and declare what the server really answers.
//! Regenerate with `UPDATE_OPENAPI=1 cargo test -p stead-api --test openapi`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use stead_api::{ApiOptions, AppState, Auth};
use stead_core::ids::TenantId;
use stead_engine::{Engine, EngineOptions, ToolRegistry};
use stead_model::{ProviderDefaults, Providers};
use stead_store_sqlite::{SqliteOptions, SqliteStore};
use tower::ServiceExt;

fn document() -> Value {
    serde_json::from_str(&stead_api::openapi::document_json()).unwrap()
}

/// Every (method, path, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    out
}

#[test]
fn committed_openapi_document_is_current() {
    let generated = stead_api::openapi::document_json();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{generated}\n")).expect("write openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p stead-api --test openapi` and commit it"
    );
    let doc = document();
    for path in [
        "/v1/agents",
        "/v1/sessions/{session_id}/runs",
        "/v1/runs/{run_id}/tool_outputs",
        "/v1/sessions/{session_id}/events",
        "/v1/responses",
        "/v1/conversations/{conversation_id}/items",
        "/v1/chat/completions",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the document");
    }
}

/// Against the official OpenAPI 3.1 schema (vendored from the Apache-2.0
/// `openapi-spec-validator` package: tests/data/README.md).
#[test]
fn the_document_is_valid_openapi_3_1() {
    let schema: Value = serde_json::from_str(include_str!("data/openapi-3.1-schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the OpenAPI schema compiles");
    let doc = document();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "openapi.json is not valid OpenAPI 3.1:\n{}", errors.join("\n"));
    // The schema validator must catch what was wrong before: a parameter without `in`.
    let mut broken = doc.clone();
    broken["paths"]["/v1/agents"]["get"]["parameters"][0]["in"] = Value::from("body");
    assert!(!validator.is_valid(&broken), "the schema check must refuse an invalid `in`");
}

#[test]
fn path_parameters_are_in_the_template_and_every_template_variable_is_declared() {
    for (method, path, op) in operations(&document()) {
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        for p in &params {
            let (name, place) = (p["name"].as_str().unwrap(), p["in"].as_str().unwrap());
            let in_template = path.contains(&format!("{{{name}}}"));
            assert_eq!(place == "path", in_template, "{method} {path}: parameter `{name}` is declared `in: {place}`");
        }
        for var in path.split('{').skip(1).map(|s| &s[..s.find('}').unwrap()]) {
            assert!(
                params.iter().any(|p| p["name"] == var && p["in"] == "path"),
                "{method} {path}: `{{{var}}}` is not declared"
            );
        }
    }
}

#[test]
fn authenticated_operations_name_the_bearer_scheme_and_public_ones_none() {
    let doc = document();
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    for (method, path, op) in operations(&doc) {
        let public = ["/healthz", "/readyz", "/openapi.json"].contains(&path.as_str());
        let want = if public { serde_json::json!([{}]) } else { serde_json::json!([{"api_key": []}]) };
        assert_eq!(op["security"], want, "{method} {path}");
    }
}

const KEY: &str = "k-0123456789abcdef";
const MAX_BODY: usize = 4096;

fn app(dir: &std::path::Path) -> axum::Router {
    let store = SqliteStore::open(SqliteOptions::new(dir)).unwrap() as Arc<dyn stead_store::Store>;
    let vault = stead_vault::Vault::new(store.clone(), stead_vault::Kek::from_bytes(&[7; 32]));
    let engine = Engine::new(
        store,
        Providers::new(ProviderDefaults::default()),
        ToolRegistry::with_builtins(),
        EngineOptions { vault: Some(Arc::new(vault)), ..EngineOptions::default() },
    );
    let auth = Auth::none().with_key(KEY, TenantId::new("acme").unwrap(), "acme/key1", &[]);
    let options = ApiOptions { max_body_bytes: MAX_BODY, ..ApiOptions::default() };
    stead_api::app(AppState { engine, auth: Arc::new(auth), options })
}

/// One bad request of each kind the server refuses before doing anything.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::enum_variant_names)] // `Bad::BadLimit` reads as the case it is
enum Bad {
    NoKey,
    TwoKeys,
    InvalidIds,
    BadLimit,
    TooLarge,
    NotJson,
}

fn request(method: &str, path: &str, op: &Value, bad: Bad) -> Option<Request<Body>> {
    let has_body = op.get("requestBody").is_some();
    let has_limit = op["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == "limit"));
    let mut uri = path.split('{').map(|s| s.find('}').map_or(s, |i| &s[i + 1..])).collect::<Vec<_>>().join("x");
    let mut body = if has_body { "{}".to_owned() } else { String::new() };
    let mut content_type = "application/json";
    let mut keys = vec![KEY];
    match bad {
        Bad::NoKey => keys.clear(),
        Bad::TwoKeys => keys.push(KEY),
        Bad::InvalidIds if path.contains('{') => {}
        Bad::BadLimit if has_limit => uri.push_str("?limit=0"),
        Bad::TooLarge if has_body => body = format!("\"{}\"", "a".repeat(MAX_BODY)),
        Bad::NotJson if has_body => content_type = "text/plain",
        _ => return None,
    }
    let mut req = Request::builder().method(method).uri(uri).header("content-type", content_type);
    for k in keys {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    Some(req.body(Body::from(body)).unwrap())
}

/// Every refusal the server answers with is a status the operation documents, with its body.
#[tokio::test]
async fn every_refusal_the_server_answers_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let doc = document();
    let mut checked = 0;
    for (method, path, op) in operations(&doc) {
        let native = !op["tags"].as_array().unwrap().iter().any(|t| t == "openai");
        let public = ["/healthz", "/readyz", "/openapi.json"].contains(&path.as_str());
        if !native || public || path == "/v1/approvals/stream" {
            continue;
        }
        for bad in [Bad::NoKey, Bad::TwoKeys, Bad::InvalidIds, Bad::BadLimit, Bad::TooLarge, Bad::NotJson] {
            let Some(req) = request(&method, &path, &op, bad) else { continue };
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            assert!(status.is_client_error(), "{method} {path} {bad:?}: {status}");
            let documented = &op["responses"][status.as_str()];
            assert!(documented.is_object(), "{method} {path} {bad:?}: {status} is not documented");
            assert!(
                documented["content"]["application/json"]["schema"]["$ref"]
                    .as_str()
                    .is_some_and(|r| r.ends_with("/ErrorBody")),
                "{method} {path} {bad:?}: {status} documents no error body"
            );
            // The key is checked first; an id in the path before the query or the body.
            let ids = path.contains('{');
            let expected = match bad {
                Bad::NoKey => Some(StatusCode::UNAUTHORIZED),
                Bad::TwoKeys | Bad::BadLimit => Some(StatusCode::BAD_REQUEST),
                Bad::TooLarge if !ids => Some(StatusCode::PAYLOAD_TOO_LARGE),
                // Names (agents) are not ids: an unknown one is a 404.
                Bad::TooLarge | Bad::NotJson | Bad::InvalidIds => None,
            };
            if let Some(want) = expected {
                assert_eq!(status, want, "{method} {path} {bad:?}");
            }
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} refusals checked");
}

/// A list cursor that names nothing is a documented 404 (found by `.ci/fuzz-api.sh`: `GET /v1/approvals?after=apr_0…0` was an
/// undocumented 404).
#[tokio::test]
async fn unknown_cursors_are_documented_404s() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let doc = document();
    let zero = "0".repeat(32);
    for (path, query, code) in [("/v1/approvals", format!("after=apr_{zero}"), "approval_not_found")] {
        let req = Request::builder()
            .uri(format!("{path}?{query}"))
            .header("authorization", format!("Bearer {KEY}"))
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}?{query}");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], code, "{path}?{query}: {body}");
        assert!(doc["paths"][path]["get"]["responses"]["404"].is_object(), "GET {path}: 404 is not documented");
    }
}
