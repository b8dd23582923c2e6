//! The committed `openapi.json` must match the document generated from the code.
//! Regenerate with `UPDATE_OPENAPI=1 cargo test -p stead-api --test openapi`.

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
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/v1/agents",
        "/v1/sessions/{session_id}/runs",
        "/v1/runs/{run_id}/tool_outputs",
        "/v1/sessions/{session_id}/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the document");
    }
}
