//! The OpenAI-compatible API end to end: the real `stead` binary on a loopback port, real HTTP
//! (and real model servers on loopback for the Anthropic and OpenAI routes), with assertions
//! both on what a client sees and on what the native API shows was stored: background
//! responses surviving SIGKILL and resuming their event stream deterministically, `store:
//! false` leaving nothing behind (crash included), branching under concurrency, function tools,
//! the Anthropic provider behind `/v1/responses`, chat-completions passthrough and translation,
//! errors that change nothing, and conversations.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method as HttpMethod, Uri};
use axum::response::Response;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Options, Resp, Stead, TIMEOUT, sse_frames};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn route(r: &str) -> [String; 2] {
    ["--model-route".to_owned(), r.to_owned()]
}

/// A server routing `scripted*` to the scripted model and `slow*` to the scripted model with
/// 200 ms between streamed chunks, plus `extra` arguments.
async fn scripted_server(extra: &[&str]) -> Stead {
    let mut opts = Options::new();
    for a in route("scripted*=scripted").into_iter().chain(route("slow*=scripted:200")) {
        opts = opts.arg(a);
    }
    for a in extra {
        opts = opts.arg(*a);
    }
    opts.start().await
}

/// `n` distinct words.
fn words(n: usize) -> String {
    (1..=n).map(|i| format!("w{i:02}")).collect::<Vec<_>>().join(" ")
}

/// The text of a response's assistant messages, concatenated.
fn output_text(resp: &Value) -> String {
    let mut out = String::new();
    for item in resp["output"].as_array().into_iter().flatten() {
        if item["type"] == "message" {
            for part in item["content"].as_array().into_iter().flatten() {
                if part["type"] == "output_text" {
                    out.push_str(part["text"].as_str().unwrap_or_default());
                }
            }
        }
    }
    out
}

/// The output items of a response of one type.
fn items_of<'a>(resp: &'a Value, kind: &str) -> Vec<&'a Value> {
    resp["output"].as_array().into_iter().flatten().filter(|i| i["type"] == kind).collect()
}

/// `POST /v1/responses` that must answer 200 with a completed response.
async fn respond_ok(stead: &Stead, body: Value) -> Value {
    let r = stead.post("/v1/responses", &body).await;
    assert_eq!(r.status, 200, "POST /v1/responses {body}: {}\nstderr:\n{}", r.text, stead.stderr());
    assert_eq!(r.body["status"], "completed", "POST /v1/responses {body}: {}", r.text);
    assert_eq!(r.body["object"], "response", "{}", r.text);
    r.body
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_owned()
}

/// The native run behind a response id (`resp_X` is `run_X`).
fn run_id(response_id: &str) -> String {
    format!("run_{}", response_id.strip_prefix("resp_").expect("a response id"))
}

/// The native session a response ran in.
async fn session_of(stead: &Stead, response_id: &str) -> String {
    let run = stead.get_ok(&format!("/v1/runs/{}", run_id(response_id))).await;
    run["session_id"].as_str().expect("session_id").to_owned()
}

/// Every native session of the default tenant.
async fn sessions(stead: &Stead) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = stead.get_ok(&format!("/v1/sessions?limit=100{after}")).await;
        out.extend(page["data"].as_array().expect("session list").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) if page["has_more"] == json!(true) => after = format!("&after={c}"),
            _ => return out,
        }
    }
}

/// (id, head_seq) of every native session, sorted: equal snapshots mean nothing was written.
async fn snapshot(stead: &Stead) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = sessions(stead)
        .await
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["head_seq"].as_u64().unwrap()))
        .collect();
    v.sort();
    v
}

/// Fails unless `r` is an error in OpenAI's shape with exactly the four fields.
fn assert_openai_error(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    let e = r.body["error"].as_object().unwrap_or_else(|| panic!("{what}: no error object in {}", r.text));
    let keys: BTreeSet<&str> = e.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["message", "type", "param", "code"]), "{what}: {}", r.text);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {}", r.text);
    assert!(e["type"].is_string(), "{what}: {}", r.text);
    assert!(e["param"].is_string() || e["param"].is_null(), "{what}: {}", r.text);
    assert!(e["code"].is_string() || e["code"].is_null(), "{what}: {}", r.text);
    if matches!(status, 400 | 404) {
        assert_eq!(e["type"], "invalid_request_error", "{what}: {}", r.text);
    }
}

/// Polls `GET /v1/responses/{id}` until its status is `want` (failing at once on another
/// final status).
async fn wait_response(stead: &Stead, id: &str, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = stead.get(&format!("/v1/responses/{id}")).await;
        assert_eq!(r.status, 200, "GET /v1/responses/{id}: {}", r.text);
        let status = r.body["status"].as_str().unwrap_or("?").to_owned();
        if status == want {
            return r.body;
        }
        let settled = matches!(status.as_str(), "completed" | "failed" | "cancelled" | "incomplete");
        if settled || Instant::now() > deadline {
            panic!("response {id} is {status}, expected {want}:\n{}\nstderr:\n{}", r.text, stead.stderr());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The data of each SSE frame as sent (the `data:` lines), for byte comparison.
fn data_lines(text: &str) -> Vec<String> {
    text.replace("\r\n", "\n")
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_owned())
        .collect()
}

/// Checks a Responses event stream: sequence numbers (OpenAI starts at 0) ascend by one from `first`, the frame's
/// `event:` names its `type`, and the last event is `last`. Returns the frames' data.
fn check_response_stream(text: &str, first: u64, last: &str) -> Vec<Value> {
    let frames = sse_frames(text);
    assert!(!frames.is_empty(), "no events:\n{text}");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.data["sequence_number"].as_u64(), Some(first + i as u64), "event {i} of:\n{text}");
        assert_eq!(f.data["type"].as_str(), Some(f.event.as_str()), "event {i} of:\n{text}");
    }
    assert_eq!(frames.last().unwrap().event, last, "stream:\n{text}");
    frames.into_iter().map(|f| f.data).collect()
}

/// The events of one run.
struct RunEvents {
    events: Vec<Value>,
}

impl RunEvents {
    fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
    }
    fn terminal(&self) -> Option<&str> {
        self.events.last().and_then(|e| e["type"].as_str()).filter(|t| support::TERMINAL.contains(t))
    }
}

/// Reads a session the OpenAI API wrote and checks what must hold of it: the audit verifies
/// the hash chain over every event, seqs are 1..=head starting with `session_created`, and
/// each run starts with `run_created`, records model steps 1..n once each, starts and
/// completes each tool call at most once, and ends exactly once with nothing after.
/// (Unlike `Stead::check_session`, it allows what this API does by design: items added outside
/// runs, and runs that complete with function calls left for the next response to answer.)
async fn check_oai_session(stead: &Stead, session: &str) -> std::collections::BTreeMap<String, RunEvents> {
    let audit = stead.get_ok(&format!("/v1/sessions/{session}/audit")).await;
    let events = stead.events(session).await;
    let head = audit["head_seq"].as_u64().expect("head_seq");
    let log = || support::dump(&events);
    assert_eq!(audit["ok"], true, "audit of {session}: {audit}\n{}", log());
    assert_eq!(audit["events_verified"].as_u64(), Some(head), "audit of {session}: {audit}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "seqs of {session}:\n{}", log());
    assert_eq!(events[0]["type"], "session_created", "{}", log());
    let mut runs: std::collections::BTreeMap<String, RunEvents> = Default::default();
    for e in &events {
        let Some(run) = e["run_id"].as_str() else { continue };
        let kind = e["type"].as_str().unwrap();
        if kind == "run_created" {
            assert!(!runs.contains_key(run), "run {run} created twice:\n{}", log());
            runs.insert(run.to_owned(), RunEvents { events: Vec::new() });
        }
        let r = runs.get_mut(run).unwrap_or_else(|| panic!("event {e} before its run_created:\n{}", log()));
        assert!(r.terminal().is_none(), "event {e} after the end of its run:\n{}", log());
        r.events.push(e.clone());
    }
    for (id, r) in &runs {
        assert!(r.terminal().is_some(), "run {id} did not end:\n{}", log());
        let steps: Vec<u64> =
            r.of_type("model_responded").iter().map(|e| e["data"]["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>(), "steps of {id}:\n{}", log());
        for kind in ["tool_call_started", "tool_call_completed"] {
            let calls: Vec<&str> = r.of_type(kind).iter().map(|e| e["data"]["call_id"].as_str().unwrap()).collect();
            let unique: BTreeSet<&str> = calls.iter().copied().collect();
            assert_eq!(unique.len(), calls.len(), "run {id}: a call has two {kind} events:\n{}", log());
        }
    }
    runs
}

fn deltas_of(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// An upstream model server on loopback (OpenAI and Anthropic wire formats), per-test script
// ---------------------------------------------------------------------------------------------

/// One request the upstream received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// What the upstream answers: a status, a content type and the body in pieces (sent as
/// separate writes, a few ms apart).
struct Canned {
    status: u16,
    content_type: &'static str,
    pieces: Vec<String>,
}

impl Canned {
    fn json(status: u16, body: impl Into<String>) -> Self {
        Canned { status, content_type: "application/json", pieces: vec![body.into()] }
    }
    fn sse(pieces: Vec<String>) -> Self {
        Canned { status: 200, content_type: "text/event-stream", pieces }
    }
}

type UpScript = dyn Fn(&Seen) -> Canned + Send + Sync;

#[derive(Clone)]
struct UpState {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<UpScript>,
}

struct Upstream {
    /// `http://127.0.0.1:PORT` (no path).
    root: String,
    state: UpState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(script: impl Fn(&Seen) -> Canned + Send + Sync + 'static) -> Upstream {
        let state = UpState { seen: Arc::default(), script: Arc::new(script) };
        let app = axum::Router::new().fallback(upstream_handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { root: format!("http://{addr}"), state, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

async fn upstream_handle(
    State(s): State<UpState>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    s.seen.lock().unwrap().push(seen.clone());
    let canned = (s.script)(&seen);
    let stream = futures_util::stream::unfold(canned.pieces.into_iter(), |mut it| async move {
        let piece = it.next()?;
        tokio::time::sleep(Duration::from_millis(3)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(piece)), it))
    });
    Response::builder()
        .status(canned.status)
        .header("content-type", canned.content_type)
        .body(Body::from_stream(stream))
        .unwrap()
}

// ---- Anthropic's Messages wire format ----

const CLAUDE_HELLO: &str = "Hello from Claude! How can I help?";
const CLAUDE_TOOL_ID: &str = "toolu_01A09q90qw90lq917835lq9";
const CLAUDE_WEATHER: &str = "It is sunny in Paris, 21C.";
const ANTHROPIC_KEY: &str = "sk-ant-test-4242";

fn anthropic_message(content: Value, stop_reason: &str) -> Value {
    json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-test-20250101",
        "content": content, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 6}})
}

fn anthropic_sse(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())).collect()
}

fn anthropic_text_events(pieces: &[&str]) -> Vec<Value> {
    let mut ev = vec![
        json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
            "model": "claude-test-20250101", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
    ];
    for p in pieces {
        ev.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}));
    }
    ev
}

fn anthropic_end(ev: &mut Vec<Value>, stop_reason: &str) {
    ev.push(json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": 6}}));
    ev.push(json!({"type": "message_stop"}));
}

fn anthropic_error(status: u16, message: String) -> Canned {
    Canned::json(
        status,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}).to_string(),
    )
}

/// A Claude stand-in: asked about the weather it calls `get_weather` (after a sentence);
/// given a `tool_result` it answers with the weather, but only if the result names the call it
/// made; anything else gets a greeting. JSON or SSE, as the request's `stream` says.
fn claude_script(seen: &Seen) -> Canned {
    if seen.path != "/v1/messages" {
        return anthropic_error(404, format!("no route {}", seen.path));
    }
    let b = &seen.body;
    let stream = b["stream"] == json!(true);
    let last = b["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or(Value::Null);
    let blocks = last["content"].as_array().cloned().unwrap_or_default();
    let results: Vec<&Value> = blocks.iter().filter(|c| c["type"] == "tool_result").collect();
    let text = match &last["content"] {
        Value::String(s) => s.clone(),
        _ => blocks.iter().filter_map(|c| c["text"].as_str()).collect::<Vec<_>>().join(""),
    };
    if !results.is_empty() {
        // The answer to our call, or a refusal the test will see as a failed response.
        if results.len() != 1 || results[0]["tool_use_id"] != CLAUDE_TOOL_ID || results[0]["content"] != "sunny, 21C" {
            return anthropic_error(400, format!("unexpected tool_result blocks: {}", last["content"]));
        }
        if !stream {
            return Canned::json(
                200,
                anthropic_message(json!([{"type": "text", "text": CLAUDE_WEATHER}]), "end_turn").to_string(),
            );
        }
        let mut ev = anthropic_text_events(&["It is sunny", " in Paris,", " 21C."]);
        ev.push(json!({"type": "content_block_stop", "index": 0}));
        anthropic_end(&mut ev, "end_turn");
        return Canned::sse(anthropic_sse(&ev));
    }
    if text.contains("weather") {
        if !stream {
            return Canned::json(
                200,
                anthropic_message(
                    json!([{"type": "text", "text": "Let me check."},
                           {"type": "tool_use", "id": CLAUDE_TOOL_ID, "name": "get_weather", "input": {"city": "Paris"}}]),
                    "tool_use",
                )
                .to_string(),
            );
        }
        let mut ev = anthropic_text_events(&["Let me", " check."]);
        ev.push(json!({"type": "content_block_stop", "index": 0}));
        ev.push(json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": CLAUDE_TOOL_ID, "name": "get_weather", "input": {}}}));
        for piece in ["{\"city\":", " \"Paris\"}"] {
            ev.push(json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": piece}}));
        }
        ev.push(json!({"type": "content_block_stop", "index": 1}));
        anthropic_end(&mut ev, "tool_use");
        return Canned::sse(anthropic_sse(&ev));
    }
    if !stream {
        return Canned::json(
            200,
            anthropic_message(json!([{"type": "text", "text": CLAUDE_HELLO}]), "end_turn").to_string(),
        );
    }
    let mut ev = anthropic_text_events(&["Hello", " from Claude!", " How can", " I help?"]);
    ev.push(json!({"type": "content_block_stop", "index": 0}));
    anthropic_end(&mut ev, "end_turn");
    Canned::sse(anthropic_sse(&ev))
}

// ---- OpenAI's chat-completions wire format, canned byte for byte ----

const OPENAI_KEY: &str = "sk-upstream-openai-77";

/// A JSON body with odd spacing and a field Stead knows nothing about: relayed, it must arrive
/// byte for byte.
const CANNED_COMPLETION: &str = "{\"id\":\"chatcmpl-canned\",  \"object\":\"chat.completion\",\"created\":1700000000,\n \"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_canned\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hi there!\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}";

const RATE_LIMITED: &str = "{\"error\":{\"message\":\"Rate limit reached for gpt-4o-mini.\",\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}";

fn canned_stream() -> Vec<String> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-canned\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_canned\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    vec![
        chunk("{\"role\":\"assistant\",\"content\":\"\"}", "null"),
        ": keep-alive comment\n\n".to_owned(),
        chunk("{\"content\":\"Hi\"}", "null"),
        chunk("{\"content\":\" there!\"}", "null"),
        chunk("{}", "\"stop\""),
        "data: [DONE]\n\n".to_owned(),
    ]
}

fn openai_script(seen: &Seen) -> Canned {
    let auth = seen.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth != format!("Bearer {OPENAI_KEY}") {
        return Canned::json(
            401,
            json!({"error": {"message": "bad key", "type": "invalid_request_error"}}).to_string(),
        );
    }
    match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/v1/models") => Canned::json(
            200,
            json!({"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "created": 1, "owned_by": "system"},
                {"id": "text-embedding-3-small", "object": "model", "created": 2, "owned_by": "system"},
                {"id": "gpt-4o", "object": "model", "created": 3, "owned_by": "system"},
            ]})
            .to_string(),
        ),
        ("POST", "/v1/chat/completions") => {
            let last = &seen.body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
            if last["content"] == "please fail" {
                return Canned::json(429, RATE_LIMITED);
            }
            if seen.body["stream"] == json!(true) {
                Canned::sse(canned_stream())
            } else {
                Canned::json(200, CANNED_COMPLETION)
            }
        }
        _ => Canned::json(404, "{\"error\":{\"message\":\"no such route\"}}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Background responses survive SIGKILL; their event stream resumes deterministically
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_response_survives_sigkill_and_resumes_its_stream() {
    let mut stead = scripted_server(&[]).await;
    let input = words(40);
    let started = Instant::now();
    let r = stead.post("/v1/responses", &json!({"model": "slow", "input": input, "background": true})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // 41 chunks 200 ms apart take 8 s: a background create must not wait for them.
    assert!(started.elapsed() < Duration::from_secs(5), "background create took {:?}", started.elapsed());
    let status = r.body["status"].as_str().unwrap_or("?");
    assert!(status == "queued" || status == "in_progress", "{}", r.text);
    assert_eq!(r.body["background"], true, "{}", r.text);
    assert_eq!(r.body["output"], json!([]), "{}", r.text);
    let id = id_of(&r.body);
    let session = session_of(&stead, &id).await;

    // Killed while the model streams: a worker holds the run and nothing is recorded yet.
    // (Waiting on the native run: see `in_flight_background_response_is_in_progress`.)
    stead.wait_run(&run_id(&id), "running").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = stead.get_ok(&format!("/v1/responses/{id}")).await;
    let status = before["status"].as_str().unwrap_or("?");
    assert!(status == "queued" || status == "in_progress", "the stream should still be going: {before}");
    assert_eq!(before["output"], json!([]), "{before}");
    assert_eq!(stead.run(&run_id(&id)).await["status"], "running");
    stead.kill9();

    stead.restart(None).await;
    // A stream opened while the new process works on it follows it to the end.
    let live = stead.send_raw(stead.req(Method::GET, &format!("/v1/responses/{id}?stream=true"))).await;
    assert_eq!(live.status().as_u16(), 200);
    let live = live.text().await.unwrap();
    let done = wait_response(&stead, &id, "completed", TIMEOUT).await;
    let want = format!("echo: {input}");
    assert_eq!(output_text(&done), want, "{done}");
    assert_eq!(done["background"], true);
    assert_eq!(done["model"], "slow");

    // Stored: the model's answer is recorded once, the run ended once, the chain verifies.
    let runs = check_oai_session(&stead, &session).await;
    let run = &runs[&run_id(&id)];
    assert_eq!(run.of_type("model_responded").len(), 1, "{:#?}", run.events);
    assert_eq!(run.terminal(), Some("run_completed"));

    // The stream of the finished response, resumed after event 3.
    let path = format!("/v1/responses/{id}?stream=true&starting_after=3");
    let first = stead.get(&path).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let events = check_response_stream(&first.text, 4, "response.completed");
    assert_eq!(output_text(&events.last().unwrap()["response"]), want);
    assert_eq!(deltas_of(&events), want, "the deltas after event 3 carry the whole text");
    let done_text: Vec<&Value> = events.iter().filter(|e| e["type"] == "response.output_text.done").collect();
    assert_eq!(done_text.len(), 1);
    assert_eq!(done_text[0]["text"], want.as_str());

    // The same request again: the same bytes.
    let again = stead.get(&path).await;
    assert_eq!(again.status, 200);
    assert_eq!(data_lines(&again.text), data_lines(&first.text), "a resumed stream must be deterministic");

    // And from the start: events 0..=3 come first, then the same as above.
    let whole = stead.get(&format!("/v1/responses/{id}?stream=true")).await;
    let all = check_response_stream(&whole.text, 0, "response.completed");
    assert_eq!(all[0]["type"], "response.created");
    assert_eq!(all[1]["type"], "response.in_progress");
    assert_eq!(data_lines(&whole.text)[4..], data_lines(&first.text)[..]);
    // The stream that watched the run finish is the same as the one of the finished run.
    check_response_stream(&live, 0, "response.completed");
    assert_eq!(data_lines(&live), data_lines(&whole.text), "a stream is the same whenever it is read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn in_flight_background_response_is_in_progress() {
    let stead = scripted_server(&[]).await;
    let r = stead.post("/v1/responses", &json!({"model": "slow", "input": words(20), "background": true})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = id_of(&r.body);
    // The native API says a worker is executing it (the model is streaming) ...
    stead.wait_run(&run_id(&id), "running").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // ... so to OpenAI's API it is `in_progress`, not `queued`.
    let got = stead.get_ok(&format!("/v1/responses/{id}")).await;
    assert_eq!(got["status"], "in_progress", "{got}");
    assert_eq!(got["output"], json!([]), "{got}");
    wait_response(&stead, &id, "completed", TIMEOUT).await;
}

// ---------------------------------------------------------------------------------------------
// 2. store: false keeps nothing, even across a crash
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstored_responses_leave_nothing_behind() {
    let stead = scripted_server(&[]).await;
    assert!(snapshot(&stead).await.is_empty());

    let r = respond_ok(&stead, json!({"model": "scripted", "input": "keep nothing", "store": false})).await;
    assert_eq!(output_text(&r), "echo: keep nothing");
    assert_eq!(r["store"], false, "{r}");
    let id = id_of(&r);

    let got = stead.get(&format!("/v1/responses/{id}")).await;
    assert_openai_error(&got, 404, "GET an unstored response");
    assert!(got.body["error"]["message"].as_str().unwrap().contains(&id), "{}", got.text);
    assert_eq!(stead.get(&format!("/v1/responses/{id}/input_items")).await.status, 404);
    assert_eq!(stead.get(&format!("/v1/runs/{}", run_id(&id))).await.status, 404, "the run is gone too");
    assert!(sessions(&stead).await.is_empty(), "no session may remain: {:?}", sessions(&stead).await);

    // Streamed, it is erased once the stream has ended.
    let raw = stead
        .send_raw(stead.req(Method::POST, "/v1/responses").json(&json!({
            "model": "scripted", "input": "streamed and forgotten", "store": false, "stream": true})))
        .await;
    let text = raw.text().await.unwrap();
    let events = check_response_stream(&text, 0, "response.completed");
    assert_eq!(output_text(&events.last().unwrap()["response"]), "echo: streamed and forgotten");
    let streamed_id = events[0]["response"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + TIMEOUT;
    while !sessions(&stead).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the streamed unstored session was not erased: {:?}",
            sessions(&stead).await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(stead.get(&format!("/v1/responses/{streamed_id}")).await.status, 404);

    // A stored one next to them stays.
    let kept = respond_ok(&stead, json!({"model": "scripted", "input": "keep me"})).await;
    let listed = sessions(&stead).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], session_of(&stead, &id_of(&kept)).await.as_str());

    // Continuing a stored response without storing: the answer sees its history, and neither
    // the stored session nor anything else changes.
    let snap = snapshot(&stead).await;
    let r = respond_ok(
        &stead,
        json!({"model": "scripted", "input": "history", "previous_response_id": id_of(&kept), "store": false}),
    )
    .await;
    assert_eq!(output_text(&r), "history: keep me");
    assert_eq!(snapshot(&stead).await, snap);
    assert_openai_error(&stead.get(&format!("/v1/responses/{}", id_of(&r))).await, 404, "GET an unstored continuation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstored_response_in_flight_at_a_crash_is_swept_at_startup() {
    let mut stead = scripted_server(&[]).await;
    let kept = respond_ok(&stead, json!({"model": "scripted", "input": "stored"})).await;
    let kept_session = session_of(&stead, &id_of(&kept)).await;

    // A blocking store:false response on the slow model, in flight.
    let (http, url) = (stead.http.clone(), stead.url.clone());
    let pending = tokio::spawn(async move {
        http.post(format!("{url}/v1/responses"))
            .json(&json!({"model": "slow", "input": words(40), "store": false}))
            .send()
            .await
    });
    // Its session exists while it runs (marked unstored) ...
    let deadline = Instant::now() + TIMEOUT;
    let unstored = loop {
        let found = sessions(&stead).await.into_iter().find(|s| s["metadata"]["stead.openai"] == "unstored");
        if let Some(s) = found {
            let runs = stead.runs_of(s["id"].as_str().unwrap()).await;
            if runs.first().is_some_and(|r| r["status"] == "running") {
                break s["id"].as_str().unwrap().to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no running unstored response; stderr:\n{}", stead.stderr());
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(stead.get(&format!("/v1/sessions/{unstored}")).await.status, 200);
    stead.kill9();
    let answer = pending.await.unwrap();
    assert!(answer.is_err() || !answer.unwrap().status().is_success(), "the request died with the server");

    // ... and after the restart it is gone; the stored one is untouched.
    stead.restart(None).await;
    stead.wait_for_stderr("erased unstored responses left by a crash", Duration::from_secs(5)).await;
    assert_eq!(stead.get(&format!("/v1/sessions/{unstored}")).await.status, 404);
    let left: Vec<String> = sessions(&stead).await.iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(left, vec![kept_session.clone()]);
    check_oai_session(&stead, &kept_session).await;
    assert_eq!(stead.get_ok(&format!("/v1/responses/{}", id_of(&kept))).await["status"], "completed");
}

// ---------------------------------------------------------------------------------------------
// 3. Branching from one response, eight times at once
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_continuations_branch_without_seeing_each_other() {
    const N: usize = 8;
    let stead = scripted_server(&[]).await;
    let r1 = respond_ok(&stead, json!({"model": "scripted", "input": "root"})).await;
    let r1_id = id_of(&r1);

    let bodies: Vec<Value> =
        (0..N).map(|i| json!({"model": "scripted", "input": format!("x{i}"), "previous_response_id": r1_id})).collect();
    let answers = futures_util::future::join_all(bodies.iter().map(|b| stead.post("/v1/responses", b))).await;
    let mut ids = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 200, "continuation {i}: {}", a.text);
        assert_eq!(a.body["status"], "completed", "continuation {i}: {}", a.text);
        assert_eq!(output_text(&a.body), format!("echo: x{i}"));
        assert_eq!(a.body["previous_response_id"], r1_id.as_str());
        ids.push(id_of(&a.body));
    }
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), N, "distinct responses: {ids:?}");

    // One continued r1's session; the others branched into sessions of their own.
    let session_ids: BTreeSet<String> =
        sessions(&stead).await.iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(session_ids.len(), N, "one original session and {} branches: {session_ids:?}", N - 1);
    let mut of_branch = BTreeSet::new();
    for id in &ids {
        of_branch.insert(session_of(&stead, id).await);
    }
    assert_eq!(of_branch, session_ids, "each continuation in a session of its own");

    // Continuing each branch: its history is r1's input and its own, nobody else's.
    let stead_ref = &stead;
    let histories = futures_util::future::join_all(ids.iter().map(|id| {
        let body = json!({"model": "scripted", "input": "history", "previous_response_id": id});
        async move { stead_ref.post("/v1/responses", &body).await }
    }))
    .await;
    for (i, h) in histories.iter().enumerate() {
        assert_eq!(h.status, 200, "{}", h.text);
        assert_eq!(output_text(&h.body), format!("history: root | x{i}"), "branch {i}: {}", h.text);
        // Continuing the latest response of a session stays in it.
        assert_eq!(session_of(&stead, &id_of(&h.body)).await, session_of(&stead, &ids[i]).await);
    }
    assert_eq!(sessions(&stead).await.len(), N, "continuing a branch's latest response makes no new session");
    for s in &session_ids {
        let runs = check_oai_session(&stead, s).await;
        assert!(runs.values().all(|r| r.terminal() == Some("run_completed")), "session {s}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Function tools round trip
// ---------------------------------------------------------------------------------------------

fn weather_tool() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_tool_round_trip_and_a_missing_output_stores_nothing() {
    let stead = scripted_server(&[]).await;
    let r1 = respond_ok(
        &stead,
        json!({"model": "scripted", "input": "call get_weather {\"city\":\"Paris\"}", "tools": [weather_tool()]}),
    )
    .await;
    let calls = items_of(&r1, "function_call");
    assert_eq!(calls.len(), 1, "{r1}");
    assert_eq!(r1["output"].as_array().unwrap().len(), 1, "only the call: {r1}");
    assert_eq!(calls[0]["name"], "get_weather");
    let args: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let call_id = calls[0]["call_id"].as_str().unwrap().to_owned();
    assert_eq!(r1["tools"][0]["name"], "get_weather", "the tools are echoed");
    let r1_id = id_of(&r1);
    let session = session_of(&stead, &r1_id).await;
    let events_before = stead.events(&session).await.len();
    let snap = snapshot(&stead).await;

    // Continuing without the call's output: refused, and nothing is written.
    for input in [json!("what now?"), json!([{"type": "message", "role": "user", "content": "what now?"}])] {
        let r = stead
            .post(
                "/v1/responses",
                &json!({"model": "scripted", "previous_response_id": r1_id, "input": input, "tools": [weather_tool()]}),
            )
            .await;
        assert_openai_error(&r, 400, "continuing without the tool output");
        assert_eq!(r.code(), "missing_tool_output", "{}", r.text);
        assert_eq!(r.body["error"]["param"], "input");
        assert!(r.body["error"]["message"].as_str().unwrap().contains(&call_id), "{}", r.text);
    }
    assert_eq!(stead.events(&session).await.len(), events_before, "a refused continuation writes nothing");
    assert_eq!(snapshot(&stead).await, snap);

    // With it: the model sees the result.
    let r2 = respond_ok(
        &stead,
        json!({"model": "scripted", "previous_response_id": r1_id, "tools": [weather_tool()],
            "input": [{"type": "function_call_output", "call_id": call_id, "output": "sunny, 21C"}]}),
    )
    .await;
    assert_eq!(output_text(&r2), "get_weather returned: sunny, 21C");
    assert!(items_of(&r2, "function_call").is_empty(), "{r2}");
    assert_eq!(session_of(&stead, &id_of(&r2)).await, session, "continued in the same session");
    let inputs = stead.get_ok(&format!("/v1/responses/{}/input_items", id_of(&r2))).await;
    let data = inputs["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{inputs}");
    assert_eq!(data[0]["type"], "function_call_output");
    assert_eq!(data[0]["call_id"], call_id.as_str());
    assert_eq!(data[0]["output"], "sunny, 21C");

    // The log: the client's output is recorded once, by the principal, never started server-side.
    let runs = check_oai_session(&stead, &session).await;
    assert_eq!(runs.len(), 2);
    let run2 = &runs[&run_id(&id_of(&r2))];
    assert_eq!(run2.of_type("tool_call_started").len(), 0);
    let created = run2.of_type("run_created")[0];
    assert!(created["actor"].as_str().unwrap().starts_with("principal:"), "{created}");
    assert_eq!(created["data"]["input"][0]["role"], "tool", "{created}");
    assert_eq!(created["data"]["input"][0]["call_id"], call_id.as_str(), "{created}");
    assert_eq!(created["data"]["input"][0]["content"], "sunny, 21C", "{created}");
    let r1_run = &runs[&run_id(&r1_id)];
    assert_eq!(r1_run.of_type("tool_call_started").len(), 0, "a function tool never runs on the server");
}

// ---------------------------------------------------------------------------------------------
// 5. The Anthropic provider behind /v1/responses
// ---------------------------------------------------------------------------------------------

async fn claude_server() -> (Stead, Upstream) {
    let up = Upstream::start(claude_script).await;
    let mut opts = Options::new().env("ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    for a in route(&format!("claude*=anthropic:{}", up.root)).into_iter().chain(route("scripted*=scripted")) {
        opts = opts.arg(a);
    }
    (opts.start().await, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_route_streams_text_through_responses() {
    let (stead, up) = claude_server().await;
    let raw = stead
        .send_raw(stead.req(Method::POST, "/v1/responses").json(&json!({
            "model": "claude-test", "input": "Say hello.", "instructions": "Be friendly.", "stream": true})))
        .await;
    assert_eq!(raw.status().as_u16(), 200);
    assert!(raw.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"), "{:?}", raw.headers());
    let text = raw.text().await.unwrap();
    let events = check_response_stream(&text, 0, "response.completed");
    assert_eq!(events[0]["type"], "response.created");
    let deltas = deltas_of(&events);
    assert_eq!(deltas, CLAUDE_HELLO, "deltas concatenate to the text:\n{text}");
    let n_deltas = events.iter().filter(|e| e["type"] == "response.output_text.delta").count();
    assert!(n_deltas >= 2, "the model's pieces are relayed as they come ({n_deltas} deltas):\n{text}");
    let done: Vec<&Value> = events.iter().filter(|e| e["type"] == "response.output_text.done").collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["text"], CLAUDE_HELLO);
    let completed = &events.last().unwrap()["response"];
    assert_eq!(output_text(completed), CLAUDE_HELLO);
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["model"], "claude-test");
    assert_eq!(completed["usage"]["output_tokens"], 6, "{completed}");

    // Stored: retrieving gives the same response.
    let id = id_of(completed);
    let got = stead.get_ok(&format!("/v1/responses/{id}")).await;
    assert_eq!(output_text(&got), CLAUDE_HELLO);

    // What Claude was sent: Anthropic's shape, key and version headers, the instructions as system.
    let seen = up.seen_at("/v1/messages");
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let s = &seen[0];
    assert_eq!(s.headers.get("x-api-key").unwrap(), ANTHROPIC_KEY);
    assert_eq!(s.headers.get("anthropic-version").unwrap(), "2023-06-01");
    assert!(s.headers.get("authorization").is_none());
    assert_eq!(s.body["model"], "claude-test");
    assert_eq!(s.body["stream"], true);
    assert_eq!(s.body["system"], "Be friendly.");
    assert_eq!(s.body["messages"], json!([{"role": "user", "content": "Say hello."}]));
    assert!(s.body["max_tokens"].as_u64().is_some_and(|m| m > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_tool_use_round_trips_as_function_call() {
    let (stead, up) = claude_server().await;
    let r1 = respond_ok(
        &stead,
        json!({"model": "claude-test", "input": "What's the weather in Paris?", "tools": [weather_tool()]}),
    )
    .await;
    let calls = items_of(&r1, "function_call");
    assert_eq!(calls.len(), 1, "{r1}");
    assert_eq!(calls[0]["call_id"], CLAUDE_TOOL_ID);
    assert_eq!(calls[0]["name"], "get_weather");
    let args: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(output_text(&r1), "Let me check.");

    // The tool was offered in Anthropic's shape.
    let first = &up.seen_at("/v1/messages")[0];
    assert_eq!(first.body["tools"][0]["name"], "get_weather");
    assert_eq!(first.body["tools"][0]["input_schema"], weather_tool()["parameters"]);

    let r2 = respond_ok(
        &stead,
        json!({"model": "claude-test", "previous_response_id": id_of(&r1), "tools": [weather_tool()],
            "input": [{"type": "function_call_output", "call_id": CLAUDE_TOOL_ID, "output": "sunny, 21C"}]}),
    )
    .await;
    assert_eq!(output_text(&r2), CLAUDE_WEATHER, "{r2}");

    // The second request carried the whole exchange, the result as a tool_result block.
    let seen = up.seen_at("/v1/messages");
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        seen[1].body["messages"],
        json!([
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": CLAUDE_TOOL_ID, "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": CLAUDE_TOOL_ID, "content": "sunny, 21C", "is_error": false},
            ]},
        ]),
        "{:#}",
        seen[1].body
    );
    let runs = check_oai_session(&stead, &session_of(&stead, &id_of(&r2)).await).await;
    assert_eq!(runs.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 6. Chat completions: passthrough to an OpenAI-compatible route, translation for the others
// ---------------------------------------------------------------------------------------------

async fn chat_server() -> (Stead, Upstream, Upstream) {
    let openai = Upstream::start(openai_script).await;
    let claude = Upstream::start(claude_script).await;
    let mut opts = Options::new().env("OPENAI_API_KEY", OPENAI_KEY).env("ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    for r in [
        format!("gpt*=openai:{}/v1", openai.root),
        format!("claude*=anthropic:{}", claude.root),
        "scripted*=scripted".to_owned(),
        "echo-exact=scripted".to_owned(),
    ] {
        opts = opts.arg("--model-route").arg(r);
    }
    (opts.start().await, openai, claude)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_pass_through_unchanged() {
    let (stead, openai, _claude) = chat_server().await;
    let body = json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "temperature": 0.3, "max_tokens": 50, "user": "u-1", "logit_bias": {"50256": -100},
        "some_future_parameter": {"x": [1, 2]}});
    let r = stead.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, CANNED_COMPLETION, "the upstream's answer is relayed byte for byte");
    let seen = openai.seen_at("/v1/chat/completions");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body, "the request arrives unchanged");

    // An upstream error keeps its status and body.
    let failing = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "please fail"}]});
    let r = stead.post("/v1/chat/completions", &failing).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.text, RATE_LIMITED);
    assert_eq!(openai.seen_at("/v1/chat/completions")[1].body, failing);

    // Streaming: the SSE bytes arrive as sent, `[DONE]` included.
    let streaming = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let raw = stead.send_raw(stead.req(Method::POST, "/v1/chat/completions").json(&streaming)).await;
    assert_eq!(raw.status().as_u16(), 200);
    assert!(raw.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = raw.text().await.unwrap();
    assert_eq!(text, canned_stream().concat());
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(openai.seen_at("/v1/chat/completions")[2].body, streaming);

    // Nothing of this is stored: chat completions are stateless.
    assert!(sessions(&stead).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_are_translated_for_other_providers() {
    let (stead, openai, claude) = chat_server().await;
    let r = stead
        .post("/v1/chat/completions", &json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["object"], "chat.completion");
    assert_eq!(r.body["model"], "scripted");
    assert!(r.body["id"].as_str().is_some_and(|i| i.starts_with("chatcmpl-")), "{}", r.text);
    assert_eq!(r.body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r.body["choices"][0]["message"]["content"], "echo: hi");
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    let u = &r.body["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    let raw = stead
        .send_raw(stead.req(Method::POST, "/v1/chat/completions").json(
            &json!({"model": "scripted", "stream": true, "messages": [{"role": "user", "content": "hi there you"}]}),
        ))
        .await;
    assert_eq!(raw.status().as_u16(), 200);
    let text = raw.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks: Vec<Value> = data_lines(&text)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d}: {e}")))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "echo: hi there you");
    assert!(
        chunks.iter().filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|s| !s.is_empty())).count()
            >= 2
    );
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));

    // Claude, not streamed: Anthropic's JSON reply becomes a chat completion.
    let r = stead
        .post(
            "/v1/chat/completions",
            &json!({"model": "claude-test", "messages": [
                {"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["choices"][0]["message"]["content"], CLAUDE_HELLO);
    let sent = &claude.seen_at("/v1/messages")[0].body;
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["system"], "Be terse.");
    assert_eq!(sent["messages"], json!([{"role": "user", "content": "hi"}]));
    assert!(openai.seen_at("/v1/chat/completions").is_empty(), "no route sent these to the OpenAI upstream");
    assert!(sessions(&stead).await.is_empty(), "translated completions are not stored either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_the_routes() {
    let (stead, openai, _claude) = chat_server().await;
    let list = stead.get_ok("/v1/models").await;
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no duplicates: {ids:?}");
    assert_eq!(unique, BTreeSet::from(["gpt-4o-mini", "gpt-4o", "claude", "scripted", "echo-exact"]), "{list}");
    let owner = |id: &str| data.iter().find(|m| m["id"] == id).unwrap()["owned_by"].clone();
    assert_eq!(owner("claude"), "anthropic");
    assert_eq!(owner("echo-exact"), "stead");
    assert!(data.iter().all(|m| m["object"] == "model"), "{list}");
    // The upstream's list was asked for with the key.
    assert_eq!(openai.seen_at("/v1/models").len(), 1);

    let one = stead.get_ok("/v1/models/claude-3-haiku").await;
    assert_eq!((one["id"].as_str(), one["owned_by"].as_str()), (Some("claude-3-haiku"), Some("anthropic")));
    let nope = stead.get("/v1/models/nope").await;
    assert_openai_error(&nope, 404, "GET /v1/models/nope");
    assert_eq!(nope.code(), "model_not_found");
    // And a response for it is refused the same way, storing nothing.
    let r = stead.post("/v1/responses", &json!({"model": "nope", "input": "hi"})).await;
    assert_openai_error(&r, 404, "a response for an unrouted model");
    assert_eq!(r.code(), "model_not_found");
    assert_eq!(r.body["error"]["param"], "model");
    assert!(sessions(&stead).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 7. Refused requests change nothing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_leave_state_untouched() {
    let stead = scripted_server(&["--mcp-url-allow", "10.0.0.0/8"]).await;
    let r0 = respond_ok(&stead, json!({"model": "scripted", "input": "before"})).await;
    let r0_id = id_of(&r0);
    let snap = snapshot(&stead).await;
    assert_eq!(snap.len(), 1);
    let agents = stead.get_ok("/v1/agents").await;

    let mcp = |url: &str, headers: Value| json!({"type": "mcp", "server_label": "docs", "server_url": url, "headers": headers, "require_approval": "never"});
    let missing = format!("resp_{}", "0".repeat(32));
    // (what, body, status, param, code)
    type Case = (&'static str, Value, u16, Option<&'static str>, Option<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "unknown parameter",
            json!({"model": "scripted", "input": "hi", "frobnicate": true}),
            400,
            Some("frobnicate"),
            Some("unknown_parameter"),
        ),
        (
            "temperature 5",
            json!({"model": "scripted", "input": "hi", "temperature": 5}),
            400,
            Some("temperature"),
            None,
        ),
        (
            "unknown tool type",
            json!({"model": "scripted", "input": "hi", "tools": [{"type": "web_search_preview"}]}),
            400,
            Some("tools[0].type"),
            None,
        ),
        (
            "unknown previous_response_id",
            json!({"model": "scripted", "input": "hi", "previous_response_id": missing}),
            404,
            Some("previous_response_id"),
            None,
        ),
        (
            "malformed previous_response_id",
            json!({"model": "scripted", "input": "hi", "previous_response_id": "resp_nope"}),
            404,
            Some("previous_response_id"),
            None,
        ),
        (
            "mcp server_url outside the allow-list",
            json!({"model": "scripted", "input": "hi", "tools": [mcp("http://127.0.0.1:1/mcp", json!({}))]}),
            400,
            None,
            Some("server_url_not_allowed"),
        ),
        (
            "server-side env expansion in mcp headers",
            json!({"model": "scripted", "input": "hi",
                "tools": [mcp("http://10.1.2.3/mcp", json!({"Authorization": "Bearer ${env:HOME}"}))]}),
            400,
            Some("tools[0].headers"),
            None,
        ),
        (
            "continuing with a bad parameter",
            json!({"model": "scripted", "input": "hi", "previous_response_id": r0_id, "top_p": 3}),
            400,
            Some("top_p"),
            None,
        ),
    ];
    for (what, body, status, param, code) in cases {
        let r = stead.post("/v1/responses", &body).await;
        assert_openai_error(&r, status, what);
        if let Some(p) = param {
            assert_eq!(r.body["error"]["param"], p, "{what}: {}", r.text);
        }
        if let Some(c) = code {
            assert_eq!(r.code(), c, "{what}: {}", r.text);
        }
        assert_eq!(snapshot(&stead).await, snap, "{what} changed the sessions");
    }

    // Not JSON at all.
    for raw in ["{\"model\": \"scripted\", \"input\": ", "[1, 2]", ""] {
        let r = stead
            .send(stead.req(Method::POST, "/v1/responses").header("content-type", "application/json").body(raw))
            .await;
        assert_openai_error(&r, 400, &format!("body {raw:?}"));
        assert_eq!(snapshot(&stead).await, snap, "body {raw:?} changed the sessions");
    }
    // A body is an object, never an array of the fields in order (serde would read one; found
    // by .ci/fuzz-api.sh, which made a conversation of `[null, null]`).
    for (path, raw) in [("/v1/conversations", "[null, null]"), ("/v1/responses", r#"["scripted", "hi"]"#)] {
        let r = stead.send(stead.req(Method::POST, path).header("content-type", "application/json").body(raw)).await;
        assert_openai_error(&r, 400, &format!("{path} {raw}"));
        assert_eq!(r.body["error"]["message"], "The body must be a JSON object.", "{path} {raw}: {}", r.text);
        assert_eq!(snapshot(&stead).await, snap, "{path} {raw} changed the sessions");
    }
    assert_eq!(stead.get_ok("/v1/agents").await, agents, "no agent version was made for a refused request");
    // The response refused requests pointed at is as it was.
    let again = stead.get_ok(&format!("/v1/responses/{r0_id}")).await;
    assert_eq!(output_text(&again), "echo: before");
}

// ---------------------------------------------------------------------------------------------
// 8. Conversations
// ---------------------------------------------------------------------------------------------

fn user_item(text: &str) -> Value {
    json!({"type": "message", "role": "user", "content": text})
}

/// The text of a message item.
fn item_text(item: &Value) -> String {
    item["content"].as_array().into_iter().flatten().filter_map(|p| p["text"].as_str()).collect()
}

/// Every item of a conversation, walking pages of `limit` in `order`.
async fn walk_items(stead: &Stead, conv: &str, order: &str, limit: u32) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let page = stead.get_ok(&format!("/v1/conversations/{conv}/items?order={order}&limit={limit}{after}")).await;
        pages += 1;
        assert!(pages < 100, "pagination does not end");
        let data = page["data"].as_array().unwrap().clone();
        assert!(data.len() <= limit as usize, "{page}");
        assert_eq!(page["object"], "list");
        if let (Some(first), Some(last)) = (data.first(), data.last()) {
            assert_eq!(page["first_id"], first["id"]);
            assert_eq!(page["last_id"], last["id"]);
        }
        out.extend(data);
        if page["has_more"] != json!(true) {
            return out;
        }
        after = format!("&after={}", page["last_id"].as_str().expect("last_id of a page with more"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_items_pages_and_deletion() {
    let stead = scripted_server(&[]).await;
    let created = stead
        .post(
            "/v1/conversations",
            &json!({"items": [user_item("alpha"),
                {"type": "message", "role": "assistant", "content": "noted alpha"},
                user_item("beta")],
                "metadata": {"topic": "demo"}}),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text);
    assert_eq!(created.body["object"], "conversation");
    assert_eq!(created.body["metadata"], json!({"topic": "demo"}));
    let conv = id_of(&created.body);
    assert!(conv.starts_with("conv_"), "{conv}");
    let session = format!("sess_{}", conv.strip_prefix("conv_").unwrap());
    assert_eq!(
        stead.get_ok(&format!("/v1/sessions/{session}")).await["id"],
        session.as_str(),
        "a conversation is a session"
    );

    // Metadata is replaced by an update and kept.
    let updated =
        stead.post(&format!("/v1/conversations/{conv}"), &json!({"metadata": {"topic": "changed", "k": "v"}})).await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(updated.body["metadata"], json!({"topic": "changed", "k": "v"}));
    assert_eq!(
        stead.get_ok(&format!("/v1/conversations/{conv}")).await["metadata"],
        json!({"topic": "changed", "k": "v"})
    );

    // Items added in two batches.
    let added = stead
        .post(&format!("/v1/conversations/{conv}/items"), &json!({"items": [user_item("gamma"), user_item("delta")]}))
        .await;
    assert_eq!(added.status, 200, "{}", added.text);
    assert_eq!(added.body["data"].as_array().unwrap().iter().map(item_text).collect::<Vec<_>>(), ["gamma", "delta"]);
    let added = stead
        .post(
            &format!("/v1/conversations/{conv}/items"),
            &json!({"items": [user_item("epsilon"), user_item("zeta"), user_item("eta")]}),
        )
        .await;
    assert_eq!(added.status, 200, "{}", added.text);

    let want = ["alpha", "noted alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"];
    for limit in [1, 2, 3, 100] {
        let asc = walk_items(&stead, &conv, "asc", limit).await;
        assert_eq!(asc.iter().map(item_text).collect::<Vec<_>>(), want, "asc, limit {limit}");
        let ids: BTreeSet<&str> = asc.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), want.len(), "every item once, ids unique (limit {limit})");
        let desc = walk_items(&stead, &conv, "desc", limit).await;
        let mut rev: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        rev.reverse();
        assert_eq!(desc.iter().map(item_text).collect::<Vec<_>>(), rev, "desc, limit {limit}");
        assert_eq!(
            desc.iter().rev().map(|i| i["id"].clone()).collect::<Vec<_>>(),
            asc.iter().map(|i| i["id"].clone()).collect::<Vec<_>>()
        );
    }
    let all = walk_items(&stead, &conv, "asc", 100).await;
    assert_eq!(all[1]["role"], "assistant");

    // Retrieve one item, delete it: gone from the list and from what the model sees.
    let beta = all.iter().find(|i| item_text(i) == "beta").unwrap().clone();
    let beta_id = beta["id"].as_str().unwrap();
    let got = stead.get_ok(&format!("/v1/conversations/{conv}/items/{beta_id}")).await;
    assert_eq!(got, beta);
    let del = stead.send(stead.req(Method::DELETE, &format!("/v1/conversations/{conv}/items/{beta_id}"))).await;
    assert_eq!(del.status, 200, "{}", del.text);
    assert_eq!(del.body["id"], conv.as_str());
    assert_openai_error(&stead.get(&format!("/v1/conversations/{conv}/items/{beta_id}")).await, 404, "a deleted item");
    let after_delete = walk_items(&stead, &conv, "asc", 3).await;
    assert_eq!(
        after_delete.iter().map(item_text).collect::<Vec<_>>(),
        ["alpha", "noted alpha", "gamma", "delta", "epsilon", "zeta", "eta"]
    );

    let r = respond_ok(&stead, json!({"model": "scripted", "conversation": conv, "input": "history"})).await;
    assert_eq!(output_text(&r), "history: alpha | gamma | delta | epsilon | zeta | eta");
    assert_eq!(r["conversation"]["id"], conv.as_str());
    assert_eq!(session_of(&stead, &id_of(&r)).await, session, "the response ran in the conversation's session");
    let items = walk_items(&stead, &conv, "asc", 100).await;
    let texts: Vec<String> = items.iter().map(item_text).collect();
    assert_eq!(&texts[texts.len() - 2..], ["history", "history: alpha | gamma | delta | epsilon | zeta | eta"]);
    let runs = check_oai_session(&stead, &session).await;
    assert_eq!(runs.len(), 1);

    // Deleting the conversation deletes everything.
    let del = stead.send(stead.req(Method::DELETE, &format!("/v1/conversations/{conv}"))).await;
    assert_eq!(del.status, 200, "{}", del.text);
    assert_eq!(del.body, json!({"id": conv, "object": "conversation.deleted", "deleted": true}));
    assert_openai_error(&stead.get(&format!("/v1/conversations/{conv}")).await, 404, "a deleted conversation");
    assert_openai_error(
        &stead.get(&format!("/v1/conversations/{conv}/items")).await,
        404,
        "a deleted conversation's items",
    );
    let r = stead.post("/v1/responses", &json!({"model": "scripted", "conversation": conv, "input": "hi"})).await;
    assert_openai_error(&r, 404, "a response in a deleted conversation");
    assert_eq!(stead.get(&format!("/v1/sessions/{session}")).await.status, 404);
    assert!(sessions(&stead).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Streamed deltas add up to the text, however fast the model is
// ---------------------------------------------------------------------------------------------

/// A user message the scripted model echoes in `n` + 1 streamed pieces, with no pause between
/// them (as fast as a local model can be).
fn long_input(n: usize) -> String {
    (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn streamed_response_deltas_add_up_to_the_text() {
    let stead = scripted_server(&[]).await;
    let input = long_input(300);
    let want = format!("echo: {input}");
    let raw = stead
        .send_raw(
            stead
                .req(Method::POST, "/v1/responses")
                .json(&json!({"model": "scripted", "stream": true, "input": input})),
        )
        .await;
    assert_eq!(raw.status().as_u16(), 200);
    let text = raw.text().await.unwrap();
    let events = check_response_stream(&text, 0, "response.completed");
    assert_eq!(output_text(&events.last().unwrap()["response"]), want);
    let done: Vec<&Value> = events.iter().filter(|e| e["type"] == "response.output_text.done").collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["text"], want.as_str());
    let deltas = deltas_of(&events);
    assert_eq!(deltas.len(), want.len(), "the deltas carry {} of {} bytes", deltas.len(), want.len());
    assert_eq!(deltas, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn streamed_chat_completion_deltas_add_up_to_the_text() {
    let stead = scripted_server(&[]).await;
    let input = long_input(300);
    let want = format!("echo: {input}");
    let raw = stead
        .send_raw(
            stead
                .req(Method::POST, "/v1/chat/completions")
                .json(&json!({"model": "scripted", "stream": true, "messages": [{"role": "user", "content": input}]})),
        )
        .await;
    assert_eq!(raw.status().as_u16(), 200);
    let text = raw.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let content: String = data_lines(&text)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap_or_else(|e| panic!("chunk {d}: {e}")))
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(content.len(), want.len(), "the deltas carry {} of {} bytes", content.len(), want.len());
    assert_eq!(content, want);
}

// ---------------------------------------------------------------------------------------------
// Idempotency-Key: a retried create whose answer was lost returns the first response
// ---------------------------------------------------------------------------------------------

/// `POST /v1/responses` with an `Idempotency-Key` header.
async fn respond_with_key(stead: &Stead, key: &str, body: &Value) -> Resp {
    stead.send(stead.req(Method::POST, "/v1/responses").header("Idempotency-Key", key).json(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_answer_returns_the_first_response() {
    let mut opts = Options::new().fault("before_model_call");
    for a in route("scripted*=scripted") {
        opts = opts.arg(a);
    }
    let mut stead = opts.start().await;
    let body = json!({"model": "scripted", "input": "hello once"});
    // The first attempt: the server dies with the run created and claimed, before its answer.
    let first = {
        let req = stead.req(Method::POST, "/v1/responses").header("Idempotency-Key", "retry-1").json(&body);
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    let paused = stead.wait_paused("before_model_call").await;
    stead.kill9();
    assert!(first.await.unwrap().is_err(), "the client never got the first answer");
    stead.restart(None).await;

    // The SDK retries with the same key and body: the same response, finished by the new process.
    let r = respond_with_key(&stead, "retry-1", &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(run_id(&id_of(&r.body)), paused, "the retry answers with the first run");
    let done = wait_response(&stead, &id_of(&r.body), "completed", TIMEOUT).await;
    assert_eq!(output_text(&done), "echo: hello once");
    let again = respond_with_key(&stead, "retry-1", &body).await;
    assert_eq!((again.status, id_of(&again.body)), (200, id_of(&r.body)), "{}", again.text);
    let all = sessions(&stead).await;
    assert_eq!(all.len(), 1, "one session for one request however often it is sent: {all:?}");
    let runs = check_oai_session(&stead, all[0]["id"].as_str().unwrap()).await;
    assert_eq!(runs.len(), 1, "one run");
    assert_eq!(runs[&paused].of_type("model_responded").len(), 1, "the model answered once");

    // The same key for another request is refused and stores nothing; so is a bad key.
    let before = snapshot(&stead).await;
    let other = respond_with_key(&stead, "retry-1", &json!({"model": "scripted", "input": "something else"})).await;
    assert_openai_error(&other, 422, "a reused key");
    assert_eq!(other.body["error"]["code"], "idempotency_key_reused", "{}", other.text);
    let long = "k".repeat(256);
    for bad in [long.as_str(), "with space"] {
        let r = respond_with_key(&stead, bad, &body).await;
        assert_openai_error(&r, 400, "a bad key");
        assert_eq!(r.body["error"]["code"], "invalid_idempotency_key", "{}", r.text);
    }
    let twice = stead
        .send(
            stead
                .req(Method::POST, "/v1/responses")
                .header("Idempotency-Key", "a")
                .header("Idempotency-Key", "b")
                .json(&body),
        )
        .await;
    assert_openai_error(&twice, 400, "two keys");
    assert_eq!(snapshot(&stead).await, before, "refused requests stored nothing");

    // Without a key, a resend is a new request (what happened to every retry before).
    respond_ok(&stead, body.clone()).await;
    assert_eq!(sessions(&stead).await.len(), 2);
    // Continuing a response is idempotent too.
    let cont = json!({"model": "scripted", "input": "and again", "previous_response_id": id_of(&r.body)});
    let c1 = respond_with_key(&stead, "cont-1", &cont).await;
    let c2 = respond_with_key(&stead, "cont-1", &cont).await;
    assert_eq!((c1.status, c2.status), (200, 200), "{} {}", c1.text, c2.text);
    assert_eq!(id_of(&c1.body), id_of(&c2.body));
    assert_eq!(check_oai_session(&stead, all[0]["id"].as_str().unwrap()).await.len(), 2);
}

/// Issue 8 item 11: a request whose MCP server can't be reached fails with 424 and stores
/// nothing — no agent version, no session — however often it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_mcp_server_fails_the_request_and_stores_no_agent() {
    let stead = scripted_server(&[]).await;
    let agents_before = stead.get_ok("/v1/agents").await;
    let before = snapshot(&stead).await;
    let body = json!({
        "model": "scripted", "input": "hi",
        "tools": [{"type": "mcp", "server_label": "gone", "server_url": "http://127.0.0.1:1/mcp", "require_approval": "never"}]
    });
    for _ in 0..2 {
        let r = stead.post("/v1/responses", &body).await;
        assert_openai_error(&r, 424, "unreachable MCP server");
        assert_eq!(r.body["error"]["code"], "mcp_list_tools_failed", "{}", r.text);
    }
    assert_eq!(stead.get_ok("/v1/agents").await, agents_before, "a failed request stored an agent version");
    assert_eq!(snapshot(&stead).await, before);
}

/// Item pages come from a bounded cache of rendered items (issue 8: a page must not cost the
/// whole conversation). With a cache smaller than the conversations, pages stay exactly what
/// the log says through additions, deletions, a run, eviction by another conversation, and a
/// restart; `before`/`after` cursors agree with the walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_pages_follow_the_log_through_a_small_cache() {
    let mut stead = scripted_server(&["--item-cache-items", "25"]).await;
    let texts: Vec<String> = (0..45).map(|i| format!("item {i}")).collect();
    let conv = stead
        .post("/v1/conversations", &json!({"items": texts[..20].iter().map(|t| user_item(t)).collect::<Vec<_>>()}))
        .await;
    assert_eq!(conv.status, 200, "{}", conv.text);
    let conv = id_of(&conv.body);
    for chunk in texts[20..].chunks(20) {
        let items: Vec<Value> = chunk.iter().map(|t| user_item(t)).collect();
        let r = stead.post(&format!("/v1/conversations/{conv}/items"), &json!({"items": items})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let texts_of = |items: &[Value]| items.iter().map(item_text).collect::<Vec<_>>();
    let asc = walk_items(&stead, &conv, "asc", 7).await;
    assert_eq!(texts_of(&asc), texts);
    let desc = walk_items(&stead, &conv, "desc", 6).await;
    assert_eq!(desc.iter().rev().cloned().collect::<Vec<_>>(), asc, "desc is asc reversed");

    // `before` and `after` together: the items strictly between, in order.
    let (a, b) = (asc[10]["id"].as_str().unwrap(), asc[16]["id"].as_str().unwrap());
    let mid = stead.get_ok(&format!("/v1/conversations/{conv}/items?order=asc&after={a}&before={b}&limit=100")).await;
    assert_eq!(texts_of(mid["data"].as_array().unwrap()), texts[11..16]);
    assert_eq!(mid["has_more"], false);

    // A deletion and an addition are seen by the next page.
    let gone = asc[3]["id"].as_str().unwrap();
    let del = stead.send(stead.req(Method::DELETE, &format!("/v1/conversations/{conv}/items/{gone}"))).await;
    assert_eq!(del.status, 200, "{}", del.text);
    stead.post(&format!("/v1/conversations/{conv}/items"), &json!({"items": [user_item("newest")]})).await;
    let first = stead.get_ok(&format!("/v1/conversations/{conv}/items?limit=2")).await;
    assert_eq!(texts_of(first["data"].as_array().unwrap()), ["newest", "item 44"]);
    let mut want: Vec<String> = texts.clone();
    want.remove(3);
    want.push("newest".into());
    assert_eq!(texts_of(&walk_items(&stead, &conv, "asc", 9).await), want);

    // A response in the conversation adds its input and output.
    let r = respond_ok(&stead, json!({"model": "scripted", "input": "ping", "conversation": conv})).await;
    let after_run = walk_items(&stead, &conv, "asc", 50).await;
    assert_eq!(texts_of(&after_run[after_run.len() - 2..]), ["ping".to_owned(), output_text(&r)]);

    // Another conversation pushes this one out of the cache; its pages are still right.
    let other = stead
        .post("/v1/conversations", &json!({"items": (0..20).map(|i| user_item(&format!("o{i}"))).collect::<Vec<_>>()}))
        .await;
    let other = id_of(&other.body);
    assert_eq!(walk_items(&stead, &other, "asc", 100).await.len(), 20);
    assert_eq!(walk_items(&stead, &conv, "asc", 8).await, after_run);
    // A deleted item's id is not a cursor.
    let bad = stead.get(&format!("/v1/conversations/{conv}/items?after={gone}")).await;
    assert_openai_error(&bad, 400, "a removed item as cursor");

    stead.kill9();
    stead.restart(None).await;
    assert_eq!(walk_items(&stead, &conv, "asc", 13).await, after_run, "the same after a restart");
}
