//! API tests at the HTTP boundary: the router is called with `oneshot` (no port bound), on a
//! real SQLite store in a temp dir, with the engine's dispatcher running.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use stead_api::{ApiOptions, AppState, Auth};
use stead_core::ids::TenantId;
use stead_engine::{Engine, EngineOptions, ToolRegistry};
use stead_model::{ProviderDefaults, Providers};
use stead_store_sqlite::{SqliteOptions, SqliteStore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Harness {
    app: Router,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const AGENT: &str = "name: helper\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: echo, type: builtin}\n  - {name: ask, type: client}\n";

fn harness(auth: Auth, max_body_bytes: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let engine = Engine::new(
        store as Arc<dyn stead_store::Store>,
        Providers::new(ProviderDefaults::default()),
        ToolRegistry::with_builtins(),
        EngineOptions::default(),
    );
    let stop = CancellationToken::new();
    tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run(stop).await }
    });
    let options = ApiOptions { max_body_bytes, ..ApiOptions::default() };
    let app = stead_api::app(AppState { engine, auth: Arc::new(auth), options });
    Harness { app, _dir: dir, stop }
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<(&str, &str)>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = match body {
        Some((ct, b)) => req.header("content-type", ct).body(Body::from(b.to_owned())).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn setup_session(app: &Router, key: Option<&str>) -> String {
    let (s, v) = call(app, "POST", "/v1/agents", Some(("application/yaml", AGENT)), key).await;
    assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{v}");
    let (s, v) = call(app, "POST", "/v1/sessions", Some(("application/json", r#"{"agent":"helper"}"#)), key).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Everything stored about a session, to prove a bad request changed nothing.
async fn snapshot(app: &Router, session: &str, key: Option<&str>) -> Value {
    let (_, s) = call(app, "GET", &format!("/v1/sessions/{session}"), None, key).await;
    let (_, e) = call(app, "GET", &format!("/v1/sessions/{session}/events?limit=1000"), None, key).await;
    let (_, r) = call(app, "GET", &format!("/v1/sessions/{session}/runs?limit=100"), None, key).await;
    let (_, a) = call(app, "GET", "/v1/agents/helper/versions", None, key).await;
    json!({"session": s, "events": e, "runs": r, "agents": a})
}

#[tokio::test]
async fn bad_input_gets_a_stable_code_and_changes_nothing() {
    let h = harness(Auth::none(), 4096);
    let session = setup_session(&h.app, None).await;
    let (s, run) = call(
        &h.app,
        "POST",
        &format!("/v1/sessions/{session}/runs"),
        Some(("application/json", r#"{"input":"hi","wait":true}"#)),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    assert_eq!(run["status"], "completed");
    let before = snapshot(&h.app, &session, None).await;
    let runs = format!("/v1/sessions/{session}/runs");
    let big = format!(r#"{{"input":"{}"}}"#, "x".repeat(5000));
    // (method, uri, (content type, body), expected status, expected code)
    type Case<'a> = (&'a str, String, Option<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", runs.clone(), Some(("application/json", "{\"input\": ")), StatusCode::BAD_REQUEST, "invalid_json"),
        (
            "POST",
            runs.clone(),
            Some(("application/json", r#"{"input":"hi","bogus":1}"#)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "POST",
            runs.clone(),
            Some(("application/json", r#"{"input":42}"#)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        ("POST", runs.clone(), Some(("application/json", &big)), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (
            "POST",
            runs.clone(),
            Some(("text/plain", r#"{"input":"hi"}"#)),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "POST",
            runs.clone(),
            Some(("application/json", r#"{"input":[{"role":"system","content":"x"}]}"#)),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        ("POST", runs.clone(), Some(("application/json", r#"{"input":[]}"#)), StatusCode::BAD_REQUEST, "invalid_input"),
        (
            "POST",
            runs.clone(),
            Some(("application/json", r#"{"input":"hi","wait":true,"stream":true}"#)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/sessions/sess_0192f0e0a0b07c3d8e9f000000000000/runs".into(),
            Some(("application/json", r#"{"input":"hi"}"#)),
            StatusCode::NOT_FOUND,
            "session_not_found",
        ),
        (
            "POST",
            "/v1/sessions/run_0192f0e0a0b07c3d8e9f000000000000/runs".into(),
            Some(("application/json", r#"{"input":"hi"}"#)),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        ("GET", "/v1/runs/nonsense".into(), None, StatusCode::BAD_REQUEST, "invalid_id"),
        ("GET", "/v1/runs/run_0192f0e0a0b07c3d8e9f000000000000".into(), None, StatusCode::NOT_FOUND, "run_not_found"),
        (
            "POST",
            format!("/v1/runs/{}/cancel", run["id"].as_str().unwrap()),
            None,
            StatusCode::CONFLICT,
            "run_finished",
        ),
        (
            "POST",
            format!("/v1/runs/{}/tool_outputs", run["id"].as_str().unwrap()),
            Some(("application/json", r#"{"tool_outputs":[]}"#)),
            StatusCode::CONFLICT,
            "run_not_waiting",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(("application/json", r#"{"agent":"nobody"}"#)),
            StatusCode::NOT_FOUND,
            "agent_not_found",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(("application/json", r#"{"agent":"helper","metadata":[1]}"#)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/agents".into(),
            Some((
                "application/yaml",
                "name: helper\nmodel: {provider: scripted, name: s}\ntools: [{name: nope, type: builtin}]\n",
            )),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_agent_spec",
        ),
        (
            "POST",
            "/v1/agents".into(),
            Some(("application/yaml", "name: helper\nmodel:\n  provider: scripted\n  name: s\n  colour: red\n")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_agent_spec",
        ),
        ("GET", format!("/v1/sessions/{session}/events?limit=0"), None, StatusCode::BAD_REQUEST, "invalid_query"),
        ("GET", format!("/v1/sessions/{session}/events?after=-1"), None, StatusCode::BAD_REQUEST, "invalid_query"),
        (
            "GET",
            format!("/v1/sessions/{session}/events?after=9223372036854775808"),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        ("GET", "/v1/sessions?limit=1000".into(), None, StatusCode::BAD_REQUEST, "invalid_query"),
        ("GET", "/v1/agents/helper/versions/x".into(), None, StatusCode::BAD_REQUEST, "invalid_version"),
        ("GET", "/v1/agents/helper/versions/9".into(), None, StatusCode::NOT_FOUND, "agent_not_found"),
        ("GET", "/v1/nothing-here".into(), None, StatusCode::NOT_FOUND, "route_not_found"),
        ("PUT", "/v1/sessions".into(), None, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    for (method, uri, body, status, code) in cases {
        let (s, v) = call(&h.app, method, &uri, body, None).await;
        assert_eq!((s, v["error"]["code"].as_str()), (status, Some(code)), "{method} {uri}: {v}");
        assert_eq!(v["error"]["status"], status.as_u16(), "{v}");
        assert!(!v["error"]["message"].as_str().unwrap_or("").is_empty(), "{v}");
    }
    // The spec error names the field and its line.
    let (_, v) = call(
        &h.app,
        "POST",
        "/v1/agents",
        Some(("application/yaml", "name: helper\nmodel:\n  provider: scripted\n  name: s\n  colour: red\n")),
        None,
    )
    .await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("colour") && msg.contains("line 5"), "{msg}");
    assert_eq!(snapshot(&h.app, &session, None).await, before, "a refused request changed stored state");
}

/// serde_json reads a struct from an array of its fields in order too; every body must be an
/// object, as the OpenAPI document says (found by `.ci/fuzz-api.sh`).
#[tokio::test]
async fn a_body_is_an_object_never_an_array_of_its_fields() {
    let h = harness(Auth::none(), 1 << 20);
    let session = setup_session(&h.app, None).await;
    let (s, run) = call(
        &h.app,
        "POST",
        &format!("/v1/sessions/{session}/runs"),
        Some(("application/json", r#"{"input":"call ask {}","wait":true}"#)),
        None,
    )
    .await;
    assert_eq!((s, run["status"].as_str()), (StatusCode::CREATED, Some("requires_action")), "{run}");
    let run = run["id"].as_str().unwrap().to_owned();
    let before = snapshot(&h.app, &session, None).await;
    let (_, sessions_before) = call(&h.app, "GET", "/v1/sessions", None, None).await;
    let spec = r#"["helper2", "", {"provider": "scripted", "name": "s"}, "", [], [], {}, "enqueue", {}, "hold"]"#;
    let cases = [
        ("/v1/sessions".to_owned(), r#"["helper", null, null]"#, "invalid_request", "not an array"),
        (format!("/v1/sessions/{session}/runs"), r#"["hi", false, false, null]"#, "invalid_request", "not an array"),
        (format!("/v1/runs/{run}/tool_outputs"), r#"[[], false, false, null]"#, "invalid_request", "not an array"),
        (format!("/v1/runs/{run}/cancel"), "[null]", "invalid_request", "not an array"),
        ("/v1/approvals/appr_x/approve".to_owned(), "[null, null]", "invalid_request", "not an array"),
        ("/v1/approvals/appr_x/resolve".to_owned(), r#""retry""#, "invalid_request", "not a string"),
        ("/v1/sessions".to_owned(), "42", "invalid_request", "not a number"),
        ("/v1/agents".to_owned(), spec, "invalid_agent_spec", "a JSON spec must be an object"),
    ];
    for (uri, body, code, says) in cases {
        let (s, v) = call(&h.app, "POST", &uri, Some(("application/json", body)), None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
            "{uri} {body}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{uri} {body}: {message}");
    }
    // The same bodies as objects are fine: the refusal is about the shape only.
    let (s, v) =
        call(&h.app, "POST", "/v1/sessions", Some(("application/json", r#" {"agent": "helper"}"#)), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, sessions_after) = call(&h.app, "GET", "/v1/sessions", None, None).await;
    assert_eq!(sessions_after["data"].as_array().unwrap().len(), sessions_before["data"].as_array().unwrap().len() + 1);
    assert_eq!(snapshot(&h.app, &session, None).await, before, "a refused request changed stored state");
}

/// With `--max-wait-secs` under the default wait (60 s), a `wait` that names no `timeout_secs`
/// waits up to the bound instead of being refused for a value it never sent (found by
/// `.ci/fuzz-api.sh`, whose server runs with `--max-wait-secs 5`).
#[tokio::test]
async fn the_default_wait_is_cut_to_the_servers_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let engine = Engine::new(
        store as Arc<dyn stead_store::Store>,
        Providers::new(ProviderDefaults::default()),
        ToolRegistry::with_builtins(),
        EngineOptions::default(),
    );
    let stop = CancellationToken::new();
    tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run(stop).await }
    });
    let options = ApiOptions { max_wait: Duration::from_secs(5), ..ApiOptions::default() };
    let app = stead_api::app(AppState { engine, auth: Arc::new(Auth::none()), options });
    let session = setup_session(&app, None).await;
    let runs = format!("/v1/sessions/{session}/runs");
    let (s, v) = call(&app, "POST", &runs, Some(("application/json", r#"{"input":"hi","wait":true}"#)), None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::CREATED, Some("completed")), "{v}");
    let body = r#"{"input":"hi","wait":true,"timeout_secs":6}"#;
    let (s, v) = call(&app, "POST", &runs, Some(("application/json", body)), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("between 1 and 5"), "{v}");
    stop.cancel();
}

#[tokio::test]
async fn tenants_see_only_their_own_data() {
    let auth = Auth::none().with_key("key-a-0123456789", TenantId::new("a").unwrap(), "alice", &[]).with_key(
        "key-b-0123456789",
        TenantId::new("b").unwrap(),
        "bob",
        &[],
    );
    let h = harness(auth, 1 << 20);
    let session = setup_session(&h.app, Some("key-a-0123456789")).await;
    let (s, v) = call(&h.app, "GET", &format!("/v1/sessions/{session}"), None, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (s, _) = call(&h.app, "GET", &format!("/v1/sessions/{session}"), None, Some("wrong-key")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let b = Some("key-b-0123456789");
    for uri in [
        format!("/v1/sessions/{session}"),
        format!("/v1/sessions/{session}/events"),
        format!("/v1/sessions/{session}/audit"),
    ] {
        let (s, v) = call(&h.app, "GET", &uri, None, b).await;
        assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("session_not_found")), "{uri}");
    }
    let (s, _) = call(
        &h.app,
        "POST",
        &format!("/v1/sessions/{session}/runs"),
        Some(("application/json", r#"{"input":"x"}"#)),
        b,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&h.app, "DELETE", &format!("/v1/sessions/{session}"), None, b).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = call(&h.app, "GET", "/v1/sessions", None, b).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let (_, agents) = call(&h.app, "GET", "/v1/agents", None, b).await;
    assert_eq!(agents["data"].as_array().unwrap().len(), 0, "agents are per tenant too");
    let (s, _) = call(&h.app, "GET", &format!("/v1/sessions/{session}"), None, Some("key-a-0123456789")).await;
    assert_eq!(s, StatusCode::OK, "the owner still sees it");
}

#[tokio::test]
async fn client_tools_round_trip_and_pagination() {
    let h = harness(Auth::none(), 1 << 20);
    let session = setup_session(&h.app, None).await;
    let (s, tools) = call(&h.app, "GET", "/v1/agents/helper/tools", None, None).await;
    assert_eq!(s, StatusCode::OK, "{tools}");
    let names: Vec<&str> = tools["data"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["echo", "ask"]);
    assert_eq!(tools["data"][0]["parameters"]["type"], "object", "built-ins bring their schema");
    assert!(tools["problems"].as_array().unwrap().is_empty());
    let (s, _) = call(&h.app, "POST", "/v1/agents/helper/tools/refresh", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&h.app, "GET", "/v1/agents/nobody/tools", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, run) = call(
        &h.app,
        "POST",
        &format!("/v1/sessions/{session}/runs"),
        Some(("application/json", r#"{"input":"call ask {\"q\":1}","wait":true}"#)),
        None,
    )
    .await;
    assert_eq!(run["status"], "requires_action", "{run}");
    let call_id = run["required_action"]["tool_calls"][0]["id"].as_str().unwrap().to_owned();
    let id = run["id"].as_str().unwrap();
    let outputs = |body: String| (format!("/v1/runs/{id}/tool_outputs"), body);
    // Unknown, duplicate and missing call ids are refused.
    for body in [
        r#"{"tool_outputs":[{"call_id":"nope","output":"x"}]}"#.to_owned(),
        format!(
            r#"{{"tool_outputs":[{{"call_id":"{call_id}","output":"x"}},{{"call_id":"{call_id}","output":"y"}}]}}"#
        ),
        r#"{"tool_outputs":[]}"#.to_owned(),
    ] {
        let (uri, body) = outputs(body);
        let (s, v) = call(&h.app, "POST", &uri, Some(("application/json", &body)), None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_tool_outputs")),
            "{body}: {v}"
        );
    }
    let (uri, body) = outputs(format!(r#"{{"tool_outputs":[{{"call_id":"{call_id}","output":"42"}}],"wait":true}}"#));
    let (s, v) = call(&h.app, "POST", &uri, Some(("application/json", &body)), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"], "ask returned: 42");
    // A second submission is refused: the run no longer waits.
    let (s, _) = call(&h.app, "POST", &uri, Some(("application/json", &body)), None).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Pages of events chain through `next_after` without gaps or repeats.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let (_, page) =
            call(&h.app, "GET", &format!("/v1/sessions/{session}/events?after={after}&limit=2"), None, None).await;
        seen.extend(page["data"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()));
        after = page["next_after"].as_u64().unwrap();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    let head =
        call(&h.app, "GET", &format!("/v1/sessions/{session}"), None, None).await.1["head_seq"].as_u64().unwrap();
    assert_eq!(seen, (1..=head).collect::<Vec<_>>());
    let (_, audit) = call(&h.app, "GET", &format!("/v1/sessions/{session}/audit"), None, None).await;
    assert_eq!(audit["ok"], true, "{audit}");
}

/// Reads SSE frames from a streaming body until `want` frames of the given event names arrived.
async fn read_frames(body: Body, want: usize, names: &[&str]) -> Vec<(Option<u64>, String, Value)> {
    let mut body = body;
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want {
        let frame =
            tokio::time::timeout_at(deadline, body.frame()).await.expect("SSE stream stalled").unwrap().unwrap();
        let Ok(data) = frame.into_data() else { continue };
        buf.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut name, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                    data.push_str(v);
                }
            }
            if names.contains(&name.as_str()) {
                out.push((id, name, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    out
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_and_run_streams_end_with_the_run() {
    let h = harness(Auth::none(), 1 << 20);
    let session = setup_session(&h.app, None).await;
    let (_, _) = call(
        &h.app,
        "POST",
        &format!("/v1/sessions/{session}/runs"),
        Some(("application/json", r#"{"input":"call echo {\"text\":\"hey\"}","wait":true}"#)),
        None,
    )
    .await;
    let head =
        call(&h.app, "GET", &format!("/v1/sessions/{session}"), None, None).await.1["head_seq"].as_u64().unwrap();
    assert!(head >= 6);
    let kinds = [
        "session_created",
        "run_created",
        "model_responded",
        "tool_call_started",
        "tool_call_completed",
        "run_completed",
    ];
    // Resume after event 3: exactly events 4..=head, in order, ids = sequence numbers.
    let req = Request::get(format!("/v1/sessions/{session}/events"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "3")
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let frames = read_frames(resp.into_body(), (head - 3) as usize, &kinds).await;
    let ids: Vec<u64> = frames.iter().map(|f| f.0.unwrap()).collect();
    assert_eq!(ids, (4..=head).collect::<Vec<_>>());
    assert!(frames.iter().all(|(id, name, v)| v["seq"].as_u64() == *id && v["type"] == *name.as_str()));

    // A live event arrives on an open stream after the backlog.
    let req = Request::get(format!("/v1/sessions/{session}/events?after={head}"))
        .header("accept", "text/event-stream")
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    let reader = tokio::spawn(read_frames(resp.into_body(), 1, &["run_created"]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    call(
        &h.app,
        "POST",
        &format!("/v1/sessions/{session}/runs"),
        Some(("application/json", r#"{"input":"later"}"#)),
        None,
    )
    .await;
    let live = reader.await.unwrap();
    assert_eq!(live[0].0, Some(head + 1));

    // A streamed run: its events and deltas, then a final `run` frame, then the stream ends.
    let req = Request::post(format!("/v1/sessions/{session}/runs"))
        .header("content-type", "application/json")
        .body(Body::from(r#"{"input":"streamed words here","stream":true}"#))
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let frames = read_frames(resp.into_body(), 1, &["run"]).await;
    assert_eq!(frames[0].2["status"], "completed");
    assert_eq!(frames[0].2["output"], "echo: streamed words here");
}
