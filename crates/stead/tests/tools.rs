//! Tools on the real binary, against servers Stead did not write:
//!
//! - a third-party MCP server (`@modelcontextprotocol/server-everything`) over stdio and over
//!   Streamable HTTP: its answer is recorded, the intent carries an idempotency key,
//!   `allowed_tools` hides the rest, a `tool_overrides` approval gates a call (API and CLI);
//! - `type: http` tools and the `http_fetch` built-in against an HTTP server in this test: the
//!   path argument, the JSON body, the `Idempotency-Key` and an `${env:…}` credential arrive;
//!   the credential never reaches the log; the SSRF guard refuses loopback unless allowed;
//! - SIGKILL while an HTTP tool call is held by the server: an idempotent tool is sent again
//!   under the same key (one effect), a non-idempotent one asks a person (`outcome_unknown`),
//!   who retries it (same key) or fails the run.
//!
//! The MCP tests print `SKIPPED …` and pass when `STEAD_MCP_EVERYTHING` is unset (run
//! `eval "$(bash .ci/mcp-servers.sh)"` first), and fail instead under `STEAD_REQUIRE_ALL_TESTS=1`
//! (`scripts/test`, the README's test command, sets both).

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::{Value, json};
use stead_core::ids::{RunId, SessionId};
use support::{Options, Stead, TIMEOUT, bin, cli, dump};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The approvals a run waits for, as `GET /v1/approvals/{id}` shows them.
async fn pending_for(stead: &Stead, run: &str) -> Vec<Value> {
    let view = stead.run(run).await;
    let mut out = Vec::new();
    for id in view["pending_approvals"].as_array().cloned().unwrap_or_default() {
        out.push(stead.get_ok(&format!("/v1/approvals/{}", id.as_str().expect("approval id"))).await);
    }
    out
}

/// The one approval a run waits for.
async fn the_approval(stead: &Stead, run: &str) -> Value {
    let pending = pending_for(stead, run).await;
    assert_eq!(pending.len(), 1, "run {run} should wait for exactly one approval: {pending:#?}");
    pending.into_iter().next().unwrap()
}

/// The key Stead derives for a call (session, run, step, call id): a retry can only reuse it.
fn expected_key(session: &str, run: &str, step: u32, call: &str) -> String {
    stead_core::run::idempotency_key(
        &session.parse::<SessionId>().expect("session id"),
        &run.parse::<RunId>().expect("run id"),
        step,
        call,
    )
}

// ---------------------------------------------------------------------------------------------
// The MCP reference server
// ---------------------------------------------------------------------------------------------

const EVERYTHING: &str = "STEAD_MCP_EVERYTHING";

/// The entry point of server-everything, or `None` after saying why the test is skipped (a
/// panic instead when `STEAD_REQUIRE_ALL_TESTS=1`).
fn everything(test: &str) -> Option<PathBuf> {
    match std::env::var_os(EVERYTHING) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            // `scripts/test` (the README's test command) sets this: there, a missing server is
            // a broken setup, not a reason to pass.
            if std::env::var_os("STEAD_REQUIRE_ALL_TESTS").is_some_and(|v| v == "1") {
                panic!(
                    "{test}: {EVERYTHING} is not set but STEAD_REQUIRE_ALL_TESTS=1 forbids skipping; run \
                     `eval \"$(bash .ci/mcp-servers.sh)\"` (scripts/test does)"
                );
            }
            // Straight to stderr: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {EVERYTHING} is not set; run `eval \"$(bash .ci/mcp-servers.sh)\"` to install the \
                 reference MCP servers (scripts/test always does)"
            );
            None
        }
    }
}

/// `node ENTRY streamableHttp` on a free loopback port; killed when dropped.
struct EverythingHttp {
    _child: tokio::process::Child,
    url: String,
}

impl EverythingHttp {
    async fn start(entry: &std::path::Path) -> EverythingHttp {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = tokio::process::Command::new("node")
            .arg(entry)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start node (server-everything over streamable HTTP)");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return EverythingHttp { _child: child, url: format!("http://127.0.0.1:{port}/mcp") };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server-everything (streamableHttp) exited before listening on {port}: {status}");
            }
            if Instant::now() > deadline {
                panic!("server-everything (streamableHttp) did not listen on port {port} within {TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// An agent with the same MCP server twice: `everything` offers only `echo` and `get-sum`;
/// `gated` offers only `echo`, behind an approval. `transport` is the YAML of one server's
/// `command`/`args` or `url`, indented for a list item.
fn mcp_agent(name: &str, transport: &str) -> String {
    format!(
        "name: {name}
model: {{provider: scripted, name: s}}
mcp_servers:
  - name: everything
{transport}
    allowed_tools: [echo, get-sum]
    timeout_secs: 60
  - name: gated
{transport}
    allowed_tools: [echo]
    tool_overrides: {{echo: {{require_approval: always}}}}
    timeout_secs: 60
"
    )
}

fn stdio_transport(entry: &std::path::Path) -> String {
    let entry = serde_json::to_string(entry.to_str().expect("UTF-8 path")).unwrap();
    format!("    command: node\n    args: [{entry}, stdio]")
}

/// What every MCP transport must do, on a fresh session of `agent`.
async fn mcp_round_trip(stead: &Stead, agent: &str) -> String {
    // What the model is offered: only the allowed tools, named `SERVER__TOOL`.
    let tools = stead.get_ok(&format!("/v1/agents/{agent}/tools")).await;
    assert_eq!(tools["problems"], json!([]), "{tools}");
    let names: Vec<&str> = tools["data"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["everything__echo", "everything__get-sum", "gated__echo"], "{tools}");
    let echo = &tools["data"][0];
    assert_eq!(echo["parameters"]["properties"]["message"]["type"], "string", "the server's schema: {echo}");

    let session = stead.create_session(agent).await;

    // The server's answer is the tool's result.
    let run = stead.create_run(&session, r#"call everything__echo {"message":"hi"}"#).await;
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "everything__echo returned: Echo: hi", "{done}");
    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    let (started, completed) = (r.of_type("tool_call_started"), r.of_type("tool_call_completed"));
    assert_eq!((started.len(), completed.len()), (1, 1), "{}", dump(&r.events));
    let call = started[0]["data"]["call_id"].as_str().expect("call id");
    assert_eq!(started[0]["data"]["name"], "everything__echo");
    let key = started[0]["data"]["idempotency_key"].as_str().expect("the intent carries an idempotency key");
    assert_eq!(key, expected_key(&session, &run, 1, call), "the key is the deterministic one");
    assert_eq!(completed[0]["data"]["call_id"], call);
    assert_eq!(completed[0]["data"]["output"], "Echo: hi");
    assert_eq!(completed[0]["data"].get("is_error"), None, "{}", completed[0]);

    // A second allowed tool of the same server.
    let run = stead.create_run(&session, r#"call everything__get-sum {"a":2,"b":3}"#).await;
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "everything__get-sum returned: The sum of 2 and 3 is 5.", "{done}");

    // A tool the server has but `allowed_tools` leaves out is not this agent's tool.
    let run = stead.create_run(&session, r#"call everything__get-env {}"#).await;
    stead.wait_run(&run, "completed").await;
    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    let completed = r.of_type("tool_call_completed");
    assert_eq!(completed.len(), 1, "{}", dump(&r.events));
    let data = &completed[0]["data"];
    assert_eq!(data["is_error"], true, "{data}");
    let output = data["output"].as_str().unwrap();
    assert!(output.contains("unknown tool `everything__get-env`"), "{output}");
    assert!(
        output.ends_with("this agent's tools are: everything__echo, everything__get-sum, gated__echo"),
        "only the allowed tools are offered: {output}"
    );

    // `tool_overrides: {echo: {require_approval: always}}` on `gated`: nothing runs until a
    // person approves.
    let run = stead.create_run(&session, r#"call gated__echo {"message":"needs a yes"}"#).await;
    stead.wait_run(&run, "awaiting_approval").await;
    let approval = the_approval(stead, &run).await;
    assert_eq!(approval["kind"], "tool_call", "{approval}");
    assert_eq!(approval["status"], "pending", "{approval}");
    assert_eq!(approval["tool_name"], "gated__echo", "{approval}");
    assert_eq!(approval["arguments"], r#"{"message":"needs a yes"}"#, "{approval}");
    let log = stead.check_session(&session, false).await;
    assert!(log.runs[&run].of_type("tool_call_started").is_empty(), "nothing may start before the approval");
    let id = approval["id"].as_str().unwrap();
    let r = stead.post(&format!("/v1/approvals/{id}/approve"), &json!({"reason": "fine"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "approved", "{}", r.text);
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "gated__echo returned: Echo: needs a yes", "{done}");
    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    assert_eq!(r.of_type("approval_requested").len(), 1);
    assert_eq!(r.of_type("approval_decided").len(), 1);
    assert_eq!(r.of_type("tool_call_started").len(), 1);
    assert_eq!(r.of_type("tool_call_completed")[0]["data"]["output"], "Echo: needs a yes");
    session
}

/// `stead ARGS --url URL` in the background (its output read when it ends); killed on drop.
fn spawn_cli(stead: &Stead, args: &[&str]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("STEAD_") || k.starts_with("OPENAI_") {
            cmd.env_remove(&k);
        }
    }
    cmd.args(args)
        .arg("--url")
        .arg(&stead.url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run the stead binary")
}

/// `stead run` waits while a person decides; `stead approvals list` shows the call and
/// `stead approve` lets it run, and the waiting `stead run` prints the answer.
async fn mcp_approval_through_the_cli(stead: &Stead, session: &str) {
    let input = r#"call gated__echo {"message":"from the cli"}"#;
    let running = spawn_cli(stead, &["run", session, input]);
    let deadline = Instant::now() + TIMEOUT;
    let approval = loop {
        let listed = cli(&["approvals", "list", "--url", &stead.url], &[]).await;
        listed.assert_ok("approvals list");
        if let Some(line) = listed.stdout.lines().find(|l| l.contains("gated__echo") && l.contains("from the cli")) {
            assert!(line.contains("pending"), "{line}");
            break line.split_whitespace().next().expect("approval id").to_owned();
        }
        if Instant::now() > deadline {
            panic!(
                "`stead approvals list` never showed the call within {TIMEOUT:?}:\n{}\n{}\nstderr:\n{}",
                listed.stdout,
                listed.stderr,
                stead.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(approval.starts_with("apr_"), "{approval}");
    let approved = cli(&["approve", &approval, "--url", &stead.url], &[]).await;
    approved.assert_ok("approve");
    assert_eq!(approved.stdout.trim(), format!("{approval} approved"));
    let out = match tokio::time::timeout(TIMEOUT, running.wait_with_output()).await {
        Ok(out) => out.expect("stead run"),
        Err(_) => panic!("`stead run` did not end within {TIMEOUT:?} of the approval; stderr:\n{}", stead.stderr()),
    };
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "`stead run` failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("gated__echo returned: Echo: from the cli"), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("← gated__echo: Echo: from the cli"), "stderr:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_over_stdio() {
    let Some(entry) = everything("mcp_server_over_stdio") else { return };
    let mut stead = Options::new().start().await;
    stead.apply_agent(&mcp_agent("mcp-stdio", &stdio_transport(&entry))).await;
    let session = mcp_round_trip(&stead, "mcp-stdio").await;
    mcp_approval_through_the_cli(&stead, &session).await;
    stead.check_session(&session, true).await;
    // A graceful stop ends the MCP server processes with it.
    let status = stead.stop().await;
    assert!(status.success(), "stead stopped with {status}; stderr:\n{}", stead.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_over_streamable_http() {
    let Some(entry) = everything("mcp_server_over_streamable_http") else { return };
    let server = EverythingHttp::start(&entry).await;
    // The allowance keeps this test independent of whether MCP URLs go through the SSRF guard.
    let stead = Options::new().arg("--http-allow").arg("127.0.0.1/32").start().await;
    stead.apply_agent(&mcp_agent("mcp-http", &format!("    url: {}", server.url))).await;
    mcp_round_trip(&stead, "mcp-http").await;
}

// ---------------------------------------------------------------------------------------------
// The HTTP test server behind `type: http` tools
// ---------------------------------------------------------------------------------------------

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// The `{id}` path segment, decoded.
    id: String,
    key: Option<String>,
    authorization: Option<String>,
    body: Value,
}

#[derive(Default)]
struct ThingState {
    requests: Mutex<Vec<Seen>>,
    /// Effects by `Idempotency-Key`: the answer the key's first request produced. A request
    /// with a known key gets that answer again and has no new effect.
    effects: Mutex<BTreeMap<String, String>>,
    /// Hold the first request of every new key forever (after its effect took place).
    stall_new_keys: AtomicBool,
    stalled: AtomicUsize,
}

/// An idempotent HTTP API on 127.0.0.1 (`/things/{id}`, any method) that records every request.
struct ThingServer {
    port: u16,
    state: Arc<ThingState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ThingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ThingServer {
    async fn start(stall_new_keys: bool) -> ThingServer {
        let state = Arc::new(ThingState::default());
        state.stall_new_keys.store(stall_new_keys, Ordering::SeqCst);
        let app = axum::Router::new().route("/things/{id}", axum::routing::any(thing)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the thing server");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ThingServer { port, state, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/things/{{id}}", self.port)
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap().clone()
    }

    fn effects(&self) -> usize {
        self.state.effects.lock().unwrap().len()
    }

    fn requests_with_key(&self, key: &str) -> usize {
        self.requests().iter().filter(|r| r.key.as_deref() == Some(key)).count()
    }

    /// Waits until `n` requests arrived and `stalled` of them are being held.
    async fn wait_requests(&self, n: usize, stalled: usize, stead: &Stead) {
        let deadline = Instant::now() + TIMEOUT;
        while self.requests().len() < n || self.state.stalled.load(Ordering::SeqCst) < stalled {
            if Instant::now() > deadline {
                panic!(
                    "the thing server did not get {n} request(s) ({stalled} held) within {TIMEOUT:?}: {:#?}\nstderr:\n{}",
                    self.requests(),
                    stead.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn thing(
    State(s): State<Arc<ThingState>>,
    method: Method,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let seen = Seen {
        method: method.to_string(),
        id: id.clone(),
        key: header("idempotency-key"),
        authorization: header("authorization"),
        body: if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) },
    };
    s.requests.lock().unwrap().push(seen.clone());
    let Some(key) = seen.key.clone() else {
        return reply(400, json!({"error": "Idempotency-Key is required"}).to_string());
    };
    let (answer, new) = {
        let mut effects = s.effects.lock().unwrap();
        match effects.get(&key) {
            Some(answer) => (answer.clone(), false),
            None => {
                // The effect: a thing is made. The answer echoes the credential, which Stead
                // must redact before the model (and the log) see it.
                let answer = json!({"made": id, "effect": effects.len() + 1, "with": seen.body,
                    "authorization": seen.authorization})
                .to_string();
                effects.insert(key, answer.clone());
                (answer, true)
            }
        }
    };
    if new && s.stall_new_keys.load(Ordering::SeqCst) {
        // The effect took place; the answer never leaves.
        s.stalled.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    reply(200, answer)
}

fn reply(status: u16, body: String) -> Response {
    Response::builder().status(status).header("content-type", "application/json").body(Body::from(body)).unwrap()
}

const TOKEN: &str = "tok-9f8e7d6c5b4a-never-log-me";

fn thing_agent(server: &ThingServer, idempotent: bool) -> String {
    format!(
        "name: things
model: {{provider: scripted, name: s}}
tools:
  - name: make_thing
    type: http
    idempotent: {idempotent}
    http:
      method: POST
      url: {url}
      headers: {{Authorization: \"Bearer ${{env:THING_TOKEN}}\"}}
  - {{name: http_fetch, type: builtin}}
",
        url = server.url()
    )
}

fn allowed() -> Options {
    Options::new().arg("--http-allow").arg("127.0.0.1/32").env("THING_TOKEN", TOKEN)
}

/// The recorded intent of the run's only call: (call id, idempotency key).
fn only_intent(log: &support::SessionLog, run: &str) -> (String, String) {
    let r = &log.runs[run];
    let started = r.of_type("tool_call_started");
    assert_eq!(started.len(), 1, "{}", dump(&r.events));
    let d = &started[0]["data"];
    (d["call_id"].as_str().unwrap().to_owned(), d["idempotency_key"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tool_sends_path_body_key_and_credential_and_keeps_the_credential_out_of_the_log() {
    let server = ThingServer::start(false).await;
    let stead = allowed().start().await;
    stead.apply_agent(&thing_agent(&server, false)).await;
    let session = stead.create_session("things").await;
    let run = stead.create_run(&session, r#"call make_thing {"id":"t-42","color":"blue","count":3}"#).await;
    let done = stead.wait_run(&run, "completed").await;

    let log = stead.check_session(&session, true).await;
    let (call, key) = only_intent(&log, &run);
    assert_eq!(key, expected_key(&session, &run, 1, &call));
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let req = &requests[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.id, "t-42", "the path argument fills the URL template");
    assert_eq!(req.body, json!({"color": "blue", "count": 3}), "the other arguments are the JSON body");
    assert_eq!(req.key.as_deref(), Some(key.as_str()), "Idempotency-Key is the recorded key");
    assert_eq!(req.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()), "${{env:…}} is substituted");

    // The model sees the server's answer, with the echoed credential redacted.
    let completed = log.runs[&run].of_type("tool_call_completed");
    let output: Value = serde_json::from_str(completed[0]["data"]["output"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("the output is the server's JSON ({e}): {}", completed[0]));
    assert_eq!(output["made"], "t-42");
    assert_eq!(output["effect"], 1);
    assert_eq!(output["authorization"], "Bearer [redacted]");
    assert!(done["output"].as_str().unwrap().starts_with("make_thing returned: {"), "{done}");

    // The credential is nowhere a client or an operator can read it.
    let raw_events = stead.get(&format!("/v1/sessions/{session}/events?limit=1000")).await.text;
    assert!(!raw_events.contains(TOKEN), "the token reached the event log:\n{raw_events}");
    let raw_run = stead.get(&format!("/v1/runs/{run}")).await.text;
    assert!(!raw_run.contains(TOKEN), "the token reached the run:\n{raw_run}");
    let raw_agent = stead.get("/v1/agents/things").await.text;
    assert!(!raw_agent.contains(TOKEN), "the token reached the agent:\n{raw_agent}");
    assert!(!stead.stderr().contains(TOKEN), "the token reached the server's log:\n{}", stead.stderr());

    // `http_fetch` goes through the same guard, with the same allowance.
    let fetch = format!(r#"call http_fetch {{"url":"http://127.0.0.1:{}/things/fetched"}}"#, server.port);
    let run = stead.create_run(&session, &fetch).await;
    let done = stead.wait_run(&run, "completed").await;
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!((requests[1].method.as_str(), requests[1].id.as_str()), ("GET", "fetched"));
    assert_eq!(requests[1].authorization, None, "http_fetch sends no spec headers");
    let log = stead.check_session(&session, true).await;
    let (_, key) = only_intent(&log, &run);
    assert_eq!(requests[1].key.as_deref(), Some(key.as_str()));
    let output = log.runs[&run].of_type("tool_call_completed")[0]["data"].clone();
    assert_eq!(output.get("is_error"), None, "{output}");
    assert!(output["output"].as_str().unwrap().contains(r#""made":"fetched""#), "{output}");
    assert!(done["output"].as_str().unwrap().starts_with("http_fetch returned: {"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_guard_refuses_loopback_without_an_allowance() {
    let server = ThingServer::start(false).await;
    let stead = Options::new().env("THING_TOKEN", TOKEN).start().await;
    stead.apply_agent(&thing_agent(&server, false)).await;
    let session = stead.create_session("things").await;
    let fetch = format!(r#"call http_fetch {{"url":"http://127.0.0.1:{}/things/x"}}"#, server.port);
    for input in [r#"call make_thing {"id":"t-1","color":"red"}"#, fetch.as_str()] {
        let run = stead.create_run(&session, input).await;
        stead.wait_run(&run, "completed").await;
        let log = stead.check_session(&session, true).await;
        let completed = log.runs[&run].of_type("tool_call_completed");
        assert_eq!(completed.len(), 1, "{}", dump(&log.runs[&run].events));
        let data = &completed[0]["data"];
        assert_eq!(data["is_error"], true, "{input}: {data}");
        let output = data["output"].as_str().unwrap();
        assert!(output.contains("refused") && output.contains("loopback"), "{input}: {output}");
    }
    assert!(server.requests().is_empty(), "the guard let a request through: {:#?}", server.requests());
}

// ---------------------------------------------------------------------------------------------
// SIGKILL while the server holds an HTTP tool call
// ---------------------------------------------------------------------------------------------

/// Starts `call make_thing …` and kills Stead while the server holds the request (whose effect
/// took place), then restarts it. Returns the run and the key recorded for the call.
async fn kill_during_call(stead: &mut Stead, server: &ThingServer, session: &str, id: &str) -> (String, String) {
    let before = server.requests().len();
    let held = server.state.stalled.load(Ordering::SeqCst);
    let run = stead.create_run(session, &format!(r#"call make_thing {{"id":"{id}","size":7}}"#)).await;
    server.wait_requests(before + 1, held + 1, stead).await;
    // Intent recorded, result not.
    let log = stead.check_session(session, false).await;
    let (_, key) = only_intent(&log, &run);
    assert!(log.runs[&run].of_type("tool_call_completed").is_empty(), "{}", dump(&log.runs[&run].events));
    assert_eq!(server.requests_with_key(&key), 1);
    stead.kill9();
    stead.restart(None).await;
    (run, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_an_idempotent_http_call_has_exactly_one_effect() {
    let server = ThingServer::start(true).await;
    let mut stead = allowed().start().await;
    stead.apply_agent(&thing_agent(&server, true)).await;
    let session = stead.create_session("things").await;
    let (run, key) = kill_during_call(&mut stead, &server, &session, "t-7").await;

    // The restarted process sends the call again, under the same key; the server recognises it.
    let done = stead.wait_run(&run, "completed").await;
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(requests.iter().all(|r| r.key.as_deref() == Some(key.as_str())), "one key for both: {requests:#?}");
    assert!(requests.iter().all(|r| r.body == json!({"size": 7}) && r.id == "t-7"), "{requests:#?}");
    assert_eq!(server.effects(), 1, "exactly one effect");
    assert!(done["output"].as_str().unwrap().contains(r#""effect":1"#), "{done}");

    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    let (started, completed) = (r.of_type("tool_call_started"), r.of_type("tool_call_completed"));
    assert_eq!((started.len(), completed.len()), (1, 1), "{}", dump(&r.events));
    assert_eq!(completed[0]["data"].get("is_error"), None, "{}", completed[0]);
    assert_ne!(started[0]["actor"], completed[0]["actor"], "the restarted process finished the call");
    assert!(r.of_type("approval_requested").is_empty(), "an idempotent call needs nobody: {}", dump(&r.events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_a_non_idempotent_http_call_asks_a_person() {
    let server = ThingServer::start(true).await;
    let mut stead = allowed().start().await;
    stead.apply_agent(&thing_agent(&server, false)).await;
    let session = stead.create_session("things").await;

    // Retry: sent once more, with the same key, and the run goes on.
    let (run, key) = kill_during_call(&mut stead, &server, &session, "t-8").await;
    stead.wait_run(&run, "awaiting_approval").await;
    let approval = the_approval(&stead, &run).await;
    assert_eq!(approval["kind"], "outcome_unknown", "{approval}");
    assert_eq!(approval["status"], "pending", "{approval}");
    assert_eq!(approval["tool_name"], "make_thing", "{approval}");
    assert_eq!(server.requests().len(), 1, "not sent again without a decision: {:#?}", server.requests());
    let id = approval["id"].as_str().unwrap();
    let r = stead.post(&format!("/v1/approvals/{id}/resolve"), &json!({"action": "retry"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let done = stead.wait_run(&run, "completed").await;
    assert!(done["output"].as_str().unwrap().contains(r#""effect":1"#), "{done}");
    assert_eq!(server.requests_with_key(&key), 2, "{:#?}", server.requests());
    assert_eq!(server.requests().len(), 2, "{:#?}", server.requests());
    assert_eq!(server.effects(), 1);
    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    assert_eq!(r.of_type("tool_call_started").len(), 1, "{}", dump(&r.events));
    assert_eq!(r.of_type("tool_call_completed").len(), 1, "{}", dump(&r.events));
    assert_eq!(stead.get_ok(&format!("/v1/approvals/{id}")).await["status"], "retried");

    // Fail: nothing is sent again and the run fails with the stable code.
    let (run, key) = kill_during_call(&mut stead, &server, &session, "t-9").await;
    stead.wait_run(&run, "awaiting_approval").await;
    let approval = the_approval(&stead, &run).await;
    assert_eq!(approval["kind"], "outcome_unknown", "{approval}");
    let id = approval["id"].as_str().unwrap();
    let r = stead.post(&format!("/v1/approvals/{id}/resolve"), &json!({"action": "fail"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let failed = stead.wait_run(&run, "failed").await;
    assert_eq!(failed["error"]["code"], "tool_outcome_unknown", "{failed}");
    assert_eq!(server.requests_with_key(&key), 1, "a failed call is not sent again: {:#?}", server.requests());
    assert_eq!(server.requests().len(), 3, "{:#?}", server.requests());
    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    assert_eq!(r.of_type("tool_call_started").len(), 1, "{}", dump(&r.events));
    assert!(r.of_type("tool_call_completed").is_empty(), "{}", dump(&r.events));
}
/// A non-idempotent HTTP call whose connection breaks after the server read the request may
/// have taken effect: a person must decide, as for an MCP call or a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_call_cut_after_the_request_was_read_has_an_unknown_outcome() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(AtomicUsize::new(0));
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let mut text = String::new();
            while !text.contains("\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            seen.fetch_add(1, Ordering::SeqCst);
            drop(sock); // the effect happened; the answer never comes
        }
    });
    let stead = allowed().start().await;
    let spec = format!(
        "name: t\nmodel: {{provider: scripted, name: s}}\ntools:\n  - name: pay\n    type: http\n    idempotent: false\n    http: {{method: POST, url: \"http://127.0.0.1:{port}/pay\"}}\n"
    );
    stead.apply_agent(&spec).await;
    let session = stead.create_session("t").await;
    let run = stead.create_run(&session, r#"call pay {"amount":5}"#).await;
    stead.wait_run(&run, "awaiting_approval").await; // today: run completes → panics here
    assert_eq!(the_approval(&stead, &run).await["kind"], "outcome_unknown");
    assert_eq!(got.load(Ordering::SeqCst), 1);
}

/// The whole of it in one agent: a third-party MCP server, an HTTP tool and a tool behind
/// approval, driven through the CLI and the API, across a SIGKILL while the approval waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_with_mcp_http_and_an_approval_end_to_end() {
    let Some(entry) = everything("one_agent_with_mcp_http_and_an_approval_end_to_end") else { return };
    let server = ThingServer::start(false).await;
    let mut stead = allowed().start().await;
    let spec = format!(
        "{}mcp_servers:\n  - name: gated\n{}\n    allowed_tools: [echo]\n    tool_overrides: {{echo: {{require_approval: always}}}}\n    timeout_secs: 60\n",
        thing_agent(&server, true).replace("name: things", "name: all"),
        stdio_transport(&entry)
    );
    stead.apply_agent(&spec).await;
    let created = cli(&["session", "create", "--agent", "all", "--url", &stead.url], &[]).await;
    created.assert_ok("session create");
    let session = created.stdout.trim().to_owned();

    // The HTTP tool, through the CLI.
    let ran = cli(&["run", &session, r#"call make_thing {"id":"t-7","color":"red"}"#, "--url", &stead.url], &[]).await;
    ran.assert_ok("run make_thing");
    assert!(ran.stdout.contains("make_thing returned:"), "{}\n{}", ran.stdout, ran.stderr);

    // The MCP tool behind approval, through the API; the approval outlives a SIGKILL.
    let run = stead.create_run(&session, r#"call gated__echo {"message":"all together"}"#).await;
    stead.wait_run(&run, "awaiting_approval").await;
    stead.kill9();
    stead.restart(None).await;
    let approval = the_approval(&stead, &run).await;
    assert_eq!(approval["tool_name"], "gated__echo");
    let id = approval["id"].as_str().unwrap();
    cli(&["approve", id, "--reason", "fine", "--url", &stead.url], &[]).await.assert_ok("approve");
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "gated__echo returned: Echo: all together");
    let log = stead.check_session(&session, true).await;
    assert_eq!(log.runs[&run].of_type("tool_call_started").len(), 1);
    let audit = cli(&["audit", "verify", &session, "--url", &stead.url], &[]).await;
    audit.assert_ok("audit verify");
}
