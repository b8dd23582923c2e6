//! Shared harness of the end-to-end, crash and concurrency tests: the real `stead` binary on a
//! loopback port (killed with SIGKILL and restarted on the same data directory), an HTTP
//! helper, checks of a session's log, and a mock OpenAI-compatible model server.
//!
//! Every wait is bounded and fails the test with what it was waiting for and the server's
//! recent stderr. Child processes are killed when their handle drops, panics included.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

/// How long anything may take before a test gives up: generous, because builds share the
/// machine, but bounded.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stead")
}

/// Environment variables of the test process that must not leak into a child.
fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("STEAD_") || k.starts_with("OPENAI_") || k == "RUST_LOG" {
            cmd.env_remove(&k);
        }
    }
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn http_client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client")
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// How to start `stead serve`.
#[derive(Clone, Default)]
pub struct Options {
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// `STEAD_FAULT_PAUSE` for the first process.
    pub fault: Option<String>,
    /// Sent as `Authorization: Bearer` by the HTTP helper.
    pub key: Option<String>,
}

impl Options {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }
    pub fn fault(mut self, point: &str) -> Self {
        self.fault = Some(point.to_owned());
        self
    }
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }
    pub async fn start(self) -> Stead {
        Stead::start(self).await
    }
}

/// Lines a child wrote to stderr, collected by a thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn find(&self, pred: &dyn Fn(&str) -> bool) -> Option<String> {
        self.0.lock().unwrap().iter().find(|l| pred(l)).cloned()
    }
}

/// A running `stead serve` on a data directory that outlives restarts.
pub struct Stead {
    _tmp: Option<tempfile::TempDir>,
    pub data_dir: PathBuf,
    opts: Options,
    child: Option<Child>,
    reader: Option<JoinHandle<()>>,
    lines: Lines,
    /// Stderr of the previous processes on this data dir, for failure messages.
    history: Vec<String>,
    pub url: String,
    pub http: reqwest::Client,
    /// How many processes were started so far.
    pub starts: u32,
}

impl Stead {
    pub async fn start(opts: Options) -> Stead {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        Self::start_in(Some(tmp), data_dir, opts).await
    }

    /// Starts a server on an existing data directory (owned by the caller).
    pub async fn start_on(data_dir: &Path, opts: Options) -> Stead {
        Self::start_in(None, data_dir.to_owned(), opts).await
    }

    async fn start_in(tmp: Option<tempfile::TempDir>, data_dir: PathBuf, opts: Options) -> Stead {
        let fault = opts.fault.clone();
        let mut s = Stead {
            _tmp: tmp,
            data_dir,
            opts,
            child: None,
            reader: None,
            lines: Lines::default(),
            history: Vec::new(),
            url: String::new(),
            http: http_client(),
            starts: 0,
        };
        s.spawn(fault.as_deref()).await;
        s
    }

    fn command(&self, fault: Option<&str>) -> Command {
        let mut cmd = Command::new(bin());
        scrub_env(&mut cmd);
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(&self.data_dir);
        cmd.args(&self.opts.args);
        for (k, v) in &self.opts.envs {
            cmd.env(k, v);
        }
        if let Some(p) = fault {
            cmd.env("STEAD_FAULT_PAUSE", p);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    }

    async fn spawn(&mut self, fault: Option<&str>) {
        let mut child = self.command(fault).spawn().expect("cannot start the stead binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Lines::default();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(l) => sink.0.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        self.child = Some(child);
        self.reader = Some(reader);
        self.lines = lines;
        self.starts += 1;
        let line = self.wait_for_stderr("stead listening on http://", TIMEOUT).await;
        let rest = &line[line.find("http://").expect("url in the ready line")..];
        self.url = rest.split_whitespace().next().expect("url").to_owned();
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Stderr of this data dir's processes (previous ones first), for failure messages.
    pub fn stderr(&self) -> String {
        let mut all = self.history.clone();
        all.extend(self.lines.snapshot());
        let tail = all.len().saturating_sub(80);
        all[tail..].join("\n")
    }

    /// Waits until the current process writes a stderr line containing `needle`.
    pub async fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.find(&|l: &str| l.contains(needle)) {
                return l;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                // Let the reader drain what the process wrote before it exited.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                if let Some(l) = self.lines.find(&|l: &str| l.contains(needle)) {
                    return l;
                }
                panic!("stead exited ({status}) before printing {needle:?}; stderr:\n{}", self.stderr());
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {needle:?} on stderr; stderr:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for `stead-fault: paused at POINT run=RUN` and returns RUN.
    pub async fn wait_paused(&mut self, point: &str) -> String {
        let line = self.wait_for_stderr(&format!("stead-fault: paused at {point} run="), TIMEOUT).await;
        line.rsplit("run=").next().expect("run id").trim().to_owned()
    }

    /// What the current process wrote to stderr so far.
    pub fn current_stderr(&self) -> Vec<String> {
        self.lines.snapshot()
    }

    /// Every `paused at POINT` line the current process printed so far.
    pub fn paused_runs(&self, point: &str) -> Vec<String> {
        let needle = format!("stead-fault: paused at {point} run=");
        self.lines
            .snapshot()
            .iter()
            .filter(|l| l.contains(&needle))
            .map(|l| l.rsplit("run=").next().unwrap().trim().to_owned())
            .collect()
    }

    /// SIGKILL, then reap the process (the data directory's lock goes with it). The process
    /// must still be running and must die of that SIGKILL: one that crashed by itself does not
    /// pass for "killed at point X".
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(status) = c.try_wait().expect("wait") {
                panic!("stead had already exited ({status}) before the SIGKILL; stderr:\n{}", self.stderr());
            }
            c.kill().expect("SIGKILL"); // SIGKILL on unix
            let status = c.wait().expect("reap");
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(libc::SIGKILL), "stead did not die of the SIGKILL: {status}");
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.history.extend(self.lines.snapshot());
        self.history.push(format!("---- process {} ended ----", self.starts));
    }

    /// SIGTERM, then waits for a graceful exit and returns its status.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server is running");
        // SAFETY: plain kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = c.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("stead did not stop within {TIMEOUT:?} of SIGTERM; stderr:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.history.extend(self.lines.snapshot());
        self.history.push(format!("---- process {} stopped ----", self.starts));
        status
    }

    /// Kills the current process (if any) and starts a new one on the same data dir, with
    /// `fault` armed (or none).
    pub async fn restart(&mut self, fault: Option<&str>) {
        self.kill9();
        self.spawn(fault).await;
    }

    // ---- HTTP ----

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.req_as(self.opts.key.as_deref(), method, path)
    }

    pub fn req_as(&self, key: Option<&str>, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{}", self.url, path));
        match key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let resp = req.send().await.unwrap_or_else(|e| panic!("HTTP request failed: {e}; stderr:\n{}", self.stderr()));
        Resp::read(resp).await
    }

    /// Sends and returns the response unread (for streams).
    pub async fn send_raw(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        req.send().await.unwrap_or_else(|e| panic!("HTTP request failed: {e}; stderr:\n{}", self.stderr()))
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.req(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(self.req(Method::POST, path).json(body)).await
    }

    /// GET that must answer 200.
    pub async fn get_ok(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.body
    }

    pub async fn apply_agent(&self, yaml: &str) -> Value {
        let r = self
            .send(self.req(Method::POST, "/v1/agents").header("content-type", "application/yaml").body(yaml.to_owned()))
            .await;
        assert!(r.status == 201 || r.status == 200, "apply agent: {} {}", r.status, r.text);
        r.body
    }

    pub async fn create_session(&self, agent: &str) -> String {
        let r = self.post("/v1/sessions", &json!({"agent": agent})).await;
        assert_eq!(r.status, 201, "create session: {}", r.text);
        r.body["id"].as_str().expect("session id").to_owned()
    }

    /// Queues a run and returns its id.
    pub async fn create_run(&self, session: &str, input: &str) -> String {
        let r = self.post(&format!("/v1/sessions/{session}/runs"), &json!({"input": input})).await;
        assert_eq!(r.status, 201, "create run: {}", r.text);
        r.body["id"].as_str().expect("run id").to_owned()
    }

    pub async fn run(&self, id: &str) -> Value {
        self.get_ok(&format!("/v1/runs/{id}")).await
    }

    /// Polls the run until its status is `want`; fails at once on another final status.
    pub async fn wait_run(&self, id: &str, want: &str) -> Value {
        self.wait_run_for(id, want, TIMEOUT).await
    }

    pub async fn wait_run_for(&self, id: &str, want: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.run(id).await;
            let status = run["status"].as_str().unwrap_or("?");
            if status == want {
                return run;
            }
            let settled = matches!(status, "completed" | "failed" | "cancelled");
            if settled || Instant::now() > deadline {
                panic!(
                    "run {id} is {status}, expected {want}{}:\n{}\nstderr:\n{}",
                    if settled { "" } else { " (timed out)" },
                    serde_json::to_string_pretty(&run).unwrap(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls until the run is completed, failed or cancelled.
    pub async fn wait_settled(&self, id: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let run = self.run(id).await;
            if matches!(run["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
                return run;
            }
            if Instant::now() > deadline {
                panic!("run {id} did not finish within {TIMEOUT:?}:\n{run}\nstderr:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every event of the session, in order.
    pub async fn events(&self, session: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get_ok(&format!("/v1/sessions/{session}/events?after={after}&limit=1000")).await;
            out.extend(page["data"].as_array().expect("event list").iter().cloned());
            after = page["next_after"].as_u64().expect("next_after");
            if page["has_more"] != json!(true) {
                return out;
            }
        }
    }

    pub async fn runs_of(&self, session: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.get_ok(&format!("/v1/sessions/{session}/runs?limit=100{after}")).await;
            out.extend(page["data"].as_array().expect("run list").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) if page["has_more"] == json!(true) => after = format!("&after={c}"),
                _ => return out,
            }
        }
    }

    /// Reads the session's log and checks the invariants every log must satisfy, whatever
    /// crashed or raced (see `check_log`). `finished`: every run must have ended.
    pub async fn check_session(&self, session: &str, finished: bool) -> SessionLog {
        // The audit's head bounds what is checked, so a log that is still growing can be
        // checked too.
        let audit = self.get_ok(&format!("/v1/sessions/{session}/audit")).await;
        let head = audit["head_seq"].as_u64().expect("head_seq");
        let mut events = self.events(session).await;
        events.retain(|e| e["seq"].as_u64().is_some_and(|s| s <= head));
        assert_eq!(audit["ok"], json!(true), "audit of {session} failed: {audit}\n{}", dump(&events));
        assert_eq!(audit["events_verified"].as_u64(), Some(head), "audit of {session}: {audit}");
        check_log(&events, head, finished)
    }
}

impl Drop for Stead {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An HTTP answer: status, the body as text and (if it is JSON) parsed.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, body, text }
    }

    /// The stable error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

// ---------------------------------------------------------------------------------------------
// Checking a session's log
// ---------------------------------------------------------------------------------------------

pub fn dump(events: &[Value]) -> String {
    events.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}

pub const TERMINAL: [&str; 3] = ["run_completed", "run_failed", "run_cancelled"];

/// The events of one run, by kind.
#[derive(Debug, Default, Clone)]
pub struct RunLog {
    pub id: String,
    pub created_seq: u64,
    /// Every event of the run, in order.
    pub events: Vec<Value>,
    /// (type, seq) of its terminal event.
    pub terminal: Option<(String, u64)>,
    /// Seqs of the events a worker wrote (actor `worker:…`).
    pub worker_seqs: Vec<u64>,
    /// Distinct worker actors that wrote events of this run.
    pub workers: BTreeSet<String>,
    pub steps: u32,
    pub tool_calls: usize,
}

impl RunLog {
    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
    }
}

#[derive(Debug, Clone)]
pub struct SessionLog {
    pub events: Vec<Value>,
    /// By run id.
    pub runs: BTreeMap<String, RunLog>,
}

impl SessionLog {
    /// Runs in the order of their `run_created` events.
    pub fn runs_in_order(&self) -> Vec<&RunLog> {
        let mut v: Vec<&RunLog> = self.runs.values().collect();
        v.sort_by_key(|r| r.created_seq);
        v
    }

    /// One writer per session, read from the log itself: the events workers wrote for
    /// different runs never interleave (a run's worker events all come before the next run's
    /// first one). Events a principal wrote (input, cancel requests, immediate cancels of
    /// runs no worker held, client outputs) are not execution and may fall anywhere.
    pub fn assert_one_writer(&self) {
        let mut spans: Vec<(u64, u64, &str)> = self
            .runs
            .values()
            .filter(|r| !r.worker_seqs.is_empty())
            .map(|r| (r.worker_seqs[0], *r.worker_seqs.last().unwrap(), r.id.as_str()))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].1 < w[1].0,
                "worker events of runs {} (seq {}..={}) and {} (seq {}..={}) interleave:\n{}",
                w[0].2,
                w[0].0,
                w[0].1,
                w[1].2,
                w[1].0,
                w[1].1,
                dump(&self.events)
            );
        }
    }
}

#[derive(Default)]
struct CallSeqs {
    started: Vec<u64>,
    completed: Vec<u64>,
}

/// Checks what must hold of every session log, crash or not:
/// - sequence numbers are exactly 1..=head, the first event is `session_created`;
/// - per run: one `run_created` (first), `model_responded` steps 1..n contiguous and unique;
///   every tool event names a call of an earlier response of the run; each call has at most
///   one `tool_call_started` (before its completion) and at most one `tool_call_completed` —
///   exactly one when the run completed; at most one terminal event and nothing after it;
/// - `finished`: every run has exactly one terminal event.
pub fn check_log(events: &[Value], head: u64, finished: bool) -> SessionLog {
    let fail = |msg: String| -> ! { panic!("{msg}\nlog:\n{}", dump(events)) };
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap_or(0)).collect();
    if seqs != (1..=head).collect::<Vec<_>>() {
        fail(format!("sequence numbers are not 1..={head}: {seqs:?}"));
    }
    if events.first().map(|e| &e["type"]) != Some(&json!("session_created")) {
        fail("the first event is not session_created".into());
    }
    let mut runs: BTreeMap<String, RunLog> = BTreeMap::new();
    // (run, call id) -> (seqs of its starts, seqs of its results).
    let mut calls: BTreeMap<(String, String), CallSeqs> = BTreeMap::new();
    for e in events {
        let seq = e["seq"].as_u64().unwrap();
        let kind = e["type"].as_str().unwrap_or("?").to_owned();
        let Some(run_id) = e["run_id"].as_str() else {
            if kind != "session_created" {
                fail(format!("event {seq} ({kind}) has no run"));
            }
            continue;
        };
        if kind == "run_created" {
            if runs.contains_key(run_id) {
                fail(format!("run {run_id} is created twice (seq {seq})"));
            }
            runs.insert(run_id.to_owned(), RunLog { id: run_id.to_owned(), created_seq: seq, ..Default::default() });
        }
        let Some(run) = runs.get_mut(run_id) else { fail(format!("event {seq} ({kind}) precedes its run_created")) };
        if let Some((t, at)) = &run.terminal {
            fail(format!("event {seq} ({kind}) of run {run_id} comes after its terminal {t} at {at}"));
        }
        run.events.push(e.clone());
        let actor = e["actor"].as_str().unwrap_or("");
        if actor.starts_with("worker:") {
            run.worker_seqs.push(seq);
            run.workers.insert(actor.to_owned());
        }
        let data = &e["data"];
        match kind.as_str() {
            "model_responded" => {
                let step = data["step"].as_u64().unwrap_or(0) as u32;
                if step != run.steps + 1 {
                    fail(format!("run {run_id}: model_responded step {step} at seq {seq}, expected {}", run.steps + 1));
                }
                run.steps = step;
                for c in data["tool_calls"].as_array().into_iter().flatten() {
                    let id = c["id"].as_str().unwrap_or("").to_owned();
                    run.tool_calls += 1;
                    if calls.insert((run_id.to_owned(), id.clone()), CallSeqs::default()).is_some() {
                        fail(format!("run {run_id}: call id {id} is announced twice (seq {seq})"));
                    }
                }
            }
            "tool_call_started" | "tool_call_completed" => {
                let id = data["call_id"].as_str().unwrap_or("").to_owned();
                let Some(c) = calls.get_mut(&(run_id.to_owned(), id.clone())) else {
                    fail(format!("run {run_id}: {kind} at seq {seq} for call {id}, which no response announced"))
                };
                if kind == "tool_call_started" {
                    if !c.completed.is_empty() {
                        fail(format!("run {run_id}: call {id} started (seq {seq}) after it completed"));
                    }
                    c.started.push(seq);
                } else {
                    c.completed.push(seq);
                }
            }
            k if TERMINAL.contains(&k) => run.terminal = Some((kind.clone(), seq)),
            _ => {}
        }
    }
    for ((run_id, call), CallSeqs { started, completed }) in &calls {
        let run = &runs[run_id];
        if started.len() > 1 {
            fail(format!("run {run_id}: call {call} has {} tool_call_started events: {started:?}", started.len()));
        }
        if completed.len() > 1 {
            fail(format!(
                "run {run_id}: call {call} has {} tool_call_completed events: {completed:?}",
                completed.len()
            ));
        }
        let completed_run = run.terminal.as_ref().is_some_and(|(t, _)| t == "run_completed");
        if completed_run && completed.len() != 1 {
            fail(format!("run {run_id} completed but call {call} has no tool_call_completed"));
        }
    }
    if finished {
        for r in runs.values() {
            if r.terminal.is_none() {
                fail(format!("run {} has no terminal event", r.id));
            }
        }
    }
    SessionLog { events: events.to_vec(), runs }
}

// ---------------------------------------------------------------------------------------------
// Agent specs
// ---------------------------------------------------------------------------------------------

/// A scripted agent (in-process model driven by the input text) with the `echo` and `sleep`
/// built-ins and a client tool `ask`; `extra` is appended to the YAML (e.g. `concurrency: …`).
pub fn scripted_agent(name: &str, extra: &str) -> String {
    format!(
        "name: {name}\nmodel: {{provider: scripted, name: scripted-1}}\ntools:\n  - {{name: echo, type: builtin}}\n  - {{name: sleep, type: builtin}}\n  - {{name: ask, type: client}}\n{extra}"
    )
}

/// The env var holding the mock's API key in the child.
pub const MOCK_KEY_ENV: &str = "STEAD_TEST_MOCK_KEY";
pub const MOCK_KEY: &str = "sk-test-0123456789";

/// An agent whose model is the mock server, with the `echo` built-in.
pub fn mock_agent(name: &str, mock: &MockOpenAi, stream: bool) -> String {
    format!(
        "name: {name}\ninstructions: You are a test agent.\nmodel:\n  provider: openai\n  name: mock\n  base_url: {}\n  api_key_env: {MOCK_KEY_ENV}\n  stream: {stream}\n  max_retries: 0\ntools:\n  - {{name: echo, type: builtin}}\n",
        mock.base_url
    )
}

// ---------------------------------------------------------------------------------------------
// The mock OpenAI-compatible server
// ---------------------------------------------------------------------------------------------

/// What the mock answers one request with. JSON or SSE follows the request's `stream`.
#[derive(Clone, Debug)]
pub enum Reply {
    Text(String),
    /// (name, arguments) of each call; ids are `call_<request>_<i>`.
    ToolCalls(Vec<(String, String)>),
    /// Streams these content pieces, then holds the connection open forever.
    Stall(Vec<String>),
    /// An error status with an OpenAI-shaped error body carrying this message.
    Error(u16, String),
}

type Script = dyn Fn(usize, &Value) -> Reply + Send + Sync;

struct MockState {
    requests: Mutex<Vec<Value>>,
    script: Box<Script>,
    stalls: AtomicUsize,
}

/// A real HTTP server on 127.0.0.1 speaking `POST /v1/chat/completions`, answering from a
/// per-test script and recording every request body.
pub struct MockOpenAi {
    pub base_url: String,
    state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The usual conversation: a user message is answered with a call to `echo` carrying the
/// user's text; a tool result is answered with text quoting it.
pub fn echo_script(_n: usize, body: &Value) -> Reply {
    let last = body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or(Value::Null);
    match last["role"].as_str() {
        Some("tool") => Reply::Text(format!("echo said: {}", last["content"].as_str().unwrap_or(""))),
        Some("user") => {
            let text = last["content"].as_str().unwrap_or("");
            Reply::ToolCalls(vec![("echo".into(), json!({"text": text}).to_string())])
        }
        _ => Reply::Text("?".into()),
    }
}

impl MockOpenAi {
    pub async fn start(script: impl Fn(usize, &Value) -> Reply + Send + Sync + 'static) -> MockOpenAi {
        let state = Arc::new(MockState {
            requests: Mutex::new(Vec::new()),
            script: Box::new(script),
            stalls: AtomicUsize::new(0),
        });
        let app =
            axum::Router::new().route("/v1/chat/completions", axum::routing::post(handle)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockOpenAi { base_url: format!("http://{addr}/v1"), state, task }
    }

    /// Request bodies received so far, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// How many responses stalled so far (after sending their partial content).
    pub fn stalls(&self) -> usize {
        self.state.stalls.load(Ordering::SeqCst)
    }

    pub async fn wait_stalls(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.stalls() < n {
            if Instant::now() > deadline {
                panic!("the mock model did not stall {n} time(s) within {TIMEOUT:?}; requests: {:?}", self.requests());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn handle(State(s): State<Arc<MockState>>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return json_response(400, json!({"error": {"message": format!("bad JSON: {e}")}})),
    };
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth != format!("Bearer {MOCK_KEY}") {
        return json_response(401, json!({"error": {"message": "wrong API key"}}));
    }
    let n = {
        let mut r = s.requests.lock().unwrap();
        r.push(body.clone());
        r.len() - 1
    };
    let reply = (s.script)(n, &body);
    if let Reply::Error(status, message) = &reply {
        return json_response(*status, json!({"error": {"message": message, "type": "invalid_request_error"}}));
    }
    let model = body["model"].as_str().unwrap_or("mock").to_owned();
    let id = format!("chatcmpl-{n}");
    let prompt_tokens = body["messages"].as_array().map_or(0, Vec::len) * 10;
    if body["stream"] != json!(true) {
        let message = match &reply {
            Reply::Text(t) => json!({"role": "assistant", "content": t}),
            Reply::ToolCalls(calls) => json!({"role": "assistant", "content": null, "tool_calls": calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| json!({"id": format!("call_{n}_{i}"), "type": "function",
                    "function": {"name": name, "arguments": args}}))
                .collect::<Vec<_>>()}),
            Reply::Error(..) => unreachable!("answered above"),
            Reply::Stall(_) => {
                s.stalls.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        let finish = if matches!(reply, Reply::ToolCalls(_)) { "tool_calls" } else { "stop" };
        return json_response(
            200,
            json!({"id": id, "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7}}),
        );
    }
    // Streaming: chunks in the real format, one `data:` line each.
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let stall = match &reply {
        Reply::Text(t) => {
            // Split into a few pieces so the client sees several deltas.
            let words: Vec<&str> = t.split_inclusive(' ').collect();
            for w in words {
                chunks.push(chunk(json!({"content": w}), Value::Null));
            }
            chunks.push(chunk(json!({}), json!("stop")));
            false
        }
        Reply::ToolCalls(calls) => {
            for (i, (name, args)) in calls.iter().enumerate() {
                chunks.push(chunk(
                    json!({"tool_calls": [{"index": i, "id": format!("call_{n}_{i}"), "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                ));
                // Arguments arrive in pieces, as real servers send them.
                let mid = args.char_indices().nth(args.chars().count() / 2).map_or(args.len(), |(b, _)| b);
                for piece in [&args[..mid], &args[mid..]] {
                    chunks.push(chunk(
                        json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                        Value::Null,
                    ));
                }
            }
            chunks.push(chunk(json!({}), json!("tool_calls")));
            false
        }
        Reply::Error(..) => unreachable!("answered above"),
        Reply::Stall(pieces) => {
            for p in pieces {
                chunks.push(chunk(json!({"content": p}), Value::Null));
            }
            true
        }
    };
    let mut lines: Vec<String> = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    if !stall {
        lines.push(format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7}})
        ));
        lines.push("data: [DONE]\n\n".to_owned());
    }
    let state = s.clone();
    let stream = futures_util::stream::unfold((lines.into_iter(), stall, state), |(mut it, stall, state)| async move {
        match it.next() {
            Some(line) => {
                // A pause so the pieces reach the client as separate reads.
                tokio::time::sleep(Duration::from_millis(2)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from(line)), (it, stall, state)))
            }
            None if stall => {
                // Everything before was handed to the connection; hold it open forever.
                state.stalls.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                None
            }
            None => None,
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn json_response(status: u16, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------------

/// The result of one CLI invocation.
#[derive(Debug)]
pub struct Cli {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Fails the test unless the command exited 0.
    pub fn assert_ok(&self, what: &str) -> &Self {
        assert!(
            self.ok(),
            "`stead {what}` failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `stead ARGS` with `env`, bounded by `TIMEOUT` (the process is killed past it).
pub async fn cli(args: &[&str], env: &[(&str, &str)]) -> Cli {
    cli_with_stdin(args, env, None).await
}

/// [`cli`] with `stdin` written to the command's standard input.
pub async fn cli_with_stdin(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Cli {
    let mut cmd = tokio::process::Command::new(bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("STEAD_") || k.starts_with("OPENAI_") {
            cmd.env_remove(&k);
        }
    }
    let input = if stdin.is_some() { Stdio::piped() } else { Stdio::null() };
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("cannot run the stead binary");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt as _;
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
    }
    let out = match tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.expect("cannot run the stead binary"),
        Err(_) => panic!("`stead {}` did not finish within {TIMEOUT:?}", args.join(" ")),
    };
    Cli {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a server-sent event stream
// ---------------------------------------------------------------------------------------------

/// The raw text of an SSE response, read as it arrives.
pub struct SseText {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    pub text: String,
}

impl SseText {
    pub fn new(resp: reqwest::Response) -> Self {
        assert_eq!(resp.status().as_u16(), 200, "event stream refused");
        SseText { stream: Box::pin(resp.bytes_stream()), text: String::new() }
    }

    /// Reads until the text received so far contains `needle`.
    pub async fn read_until(&mut self, needle: &str) {
        self.read_until_cond(needle, |t| t.contains(needle)).await
    }

    /// Reads until a complete frame of type `event` has arrived.
    pub async fn read_until_frame(&mut self, event: &str) {
        self.read_until_cond(event, |t| sse_frames(t).iter().any(|f| f.event == event)).await
    }

    async fn read_until_cond(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        use futures_util::StreamExt;
        let deadline = Instant::now() + TIMEOUT;
        while !done(&self.text) {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(b))) => self.text.push_str(&String::from_utf8_lossy(&b)),
                Ok(Some(Err(e))) => panic!("event stream broke waiting for {what:?}: {e}\nreceived:\n{}", self.text),
                Ok(None) => panic!("event stream ended before {what:?}\nreceived:\n{}", self.text),
                Err(_) => panic!("no {what:?} on the event stream within {TIMEOUT:?}\nreceived:\n{}", self.text),
            }
        }
    }
}

/// One complete server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseFrame {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Parses the complete frames of an SSE text (a trailing partial frame is ignored).
pub fn sse_frames(text: &str) -> Vec<SseFrame> {
    let text = text.replace("\r\n", "\n");
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    blocks.pop(); // whatever follows the last blank line is not complete
    blocks
        .into_iter()
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = value.parse().ok(),
                    "event" => event = value.to_owned(),
                    "data" => data.push_str(value),
                    _ => {}
                }
            }
            (!data.is_empty()).then(|| SseFrame {
                id,
                event,
                data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
            })
        })
        .collect()
}
