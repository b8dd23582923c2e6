//! End-to-end tests of the real binary: the CLI as a user runs it, the tamper-evident log
//! checked offline after an edit behind Stead's back, refusals at start-up (corrupt database,
//! a second server on the same directory, a public address without keys), and bad input
//! through HTTP, which must get a clear error and leave stored state untouched.

mod support;

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};
use stead_core::ids::{RunId, SessionId};
use support::{Options, Resp, Stead, cli, cli_with_stdin, scripted_agent};

fn url_env(stead: &Stead) -> Vec<(&'static str, String)> {
    vec![("STEAD_URL", stead.url.clone())]
}

/// Runs `stead ARGS` against `stead`.
async fn stead_cli(stead: &Stead, args: &[&str]) -> support::Cli {
    let env = url_env(stead);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cli(args, &env).await
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_walkthrough() {
    let stead = Options::new().start().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("helper.yaml");
    std::fs::write(&spec, scripted_agent("helper", "")).unwrap();
    let spec = spec.to_str().unwrap();

    let applied = stead_cli(&stead, &["agent", "apply", "-f", spec]).await;
    applied.assert_ok("agent apply");
    assert_eq!(applied.stdout.trim(), "helper v1");
    assert!(applied.stderr.contains("stored a new version"), "{}", applied.stderr);
    let again = stead_cli(&stead, &["agent", "apply", "-f", spec, "--json"]).await;
    again.assert_ok("agent apply --json");
    let v: Value = serde_json::from_str(&again.stdout).expect("agent apply --json prints JSON");
    assert_eq!((v["name"].as_str(), v["version"].as_u64()), (Some("helper"), Some(1)), "{v}");
    let same = stead_cli(&stead, &["agent", "apply", "-f", spec]).await;
    same.assert_ok("agent apply (unchanged)");
    assert!(same.stderr.contains("unchanged"), "{}", same.stderr);

    let created = stead_cli(&stead, &["session", "create", "--agent", "helper"]).await;
    created.assert_ok("session create");
    let session = created.stdout.trim().to_owned();
    session.parse::<SessionId>().unwrap_or_else(|e| panic!("`session create` printed {session:?}: {e}"));
    let as_json = stead_cli(&stead, &["session", "create", "--agent", "helper", "--json"]).await;
    as_json.assert_ok("session create --json");
    let v: Value = serde_json::from_str(&as_json.stdout).expect("session create --json prints JSON");
    assert_eq!(v["object"], "session");

    let run = stead_cli(&stead, &["run", &session, "hello"]).await;
    run.assert_ok("run");
    assert!(run.stdout.contains("echo: hello"), "stdout: {}", run.stdout);
    let run = stead_cli(&stead, &["run", &session, "hello again", "--json"]).await;
    run.assert_ok("run --json");
    let frames = json_lines(&run.stdout);
    let last = frames.last().expect("frames");
    assert_eq!((last["event"].as_str(), last["data"]["status"].as_str()), (Some("run"), Some("completed")), "{last}");
    assert!(frames.iter().any(|f| f["event"] == "model_responded"), "{frames:#?}");

    // Client tool round trip: the run waits; the user answers with `runs submit`.
    let waiting = stead_cli(&stead, &["run", &session, r#"call ask {"q":"name?"}"#]).await;
    waiting.assert_ok("run (client tool)");
    assert!(waiting.stderr.contains("waits for client tool outputs"), "{}", waiting.stderr);
    let run_id = waiting
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("submit with: stead runs submit "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in:\n{}", waiting.stderr))
        .to_owned();
    run_id.parse::<RunId>().unwrap();
    // The waiting calls are listed under the "waits" line as `  CALL_ID ask({...})`.
    let call_id = waiting
        .stderr
        .lines()
        .skip_while(|l| !l.contains("waits for client tool outputs"))
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no call id in:\n{}", waiting.stderr))
        .to_owned();
    assert_eq!(stead.run(&run_id).await["status"], "requires_action");
    let submitted = stead_cli(&stead, &["runs", "submit", &run_id, "--output", &format!("{call_id}=Ada")]).await;
    submitted.assert_ok("runs submit");
    assert!(submitted.stdout.contains("ask returned: Ada"), "stdout: {}", submitted.stdout);
    assert_eq!(stead.run(&run_id).await["status"], "completed");

    let head = stead.get_ok(&format!("/v1/sessions/{session}")).await["head_seq"].as_u64().unwrap();
    let events = stead_cli(&stead, &["session", "events", &session]).await;
    events.assert_ok("session events");
    assert_eq!(events.stdout.lines().count() as u64, head, "{}", events.stdout);
    assert!(events.stdout.contains("run_completed") && events.stdout.contains("run_requires_action"));
    let events = stead_cli(&stead, &["session", "events", &session, "--json"]).await;
    events.assert_ok("session events --json");
    let seqs: Vec<u64> = json_lines(&events.stdout).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>());

    let audit = stead_cli(&stead, &["audit", "verify", &session]).await;
    audit.assert_ok("audit verify");
    assert!(audit.stdout.starts_with("ok"), "{}", audit.stdout);
    let audit = stead_cli(&stead, &["audit", "verify", &session, "--json"]).await;
    audit.assert_ok("audit verify --json");
    let v: Value = serde_json::from_str(&audit.stdout).unwrap();
    assert_eq!((v["ok"].as_bool(), v["events_verified"].as_u64()), (Some(true), Some(head)), "{v}");
    stead.check_session(&session, true).await;

    // Errors: exit status 1 and the server's code on stderr.
    let missing = stead_cli(&stead, &["session", "create", "--agent", "nobody"]).await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("agent_not_found"), "{}", missing.stderr);
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\nmodel:\n  provider: scripted\n  name: s\n  colour: red\n").unwrap();
    let refused = stead_cli(&stead, &["agent", "apply", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("colour") && refused.stderr.contains("line 5"), "{}", refused.stderr);
}

/// The id of the session's only row, as SQLite stores it (16 bytes, matched by hex).
fn session_hex(session: &str) -> String {
    session.strip_prefix("sess_").unwrap().to_uppercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_event_is_named_by_audit_verify() {
    let mut stead = Options::new().start().await;
    stead.apply_agent(&scripted_agent("helper", "")).await;
    let session = stead.create_session("helper").await;
    for input in ["hello", r#"call echo {"text":"x"}"#] {
        let run = stead.create_run(&session, input).await;
        stead.wait_run(&run, "completed").await;
    }
    let events = stead.events(&session).await;
    let target = events.iter().find(|e| e["type"] == "model_responded").expect("a model response");
    let seq = target["seq"].as_u64().unwrap();
    assert_eq!(target["data"]["content"], "echo: hello");
    assert!(stead.stop().await.success(), "graceful stop; stderr:\n{}", stead.stderr());

    let dir = stead.data_dir.to_str().unwrap().to_owned();
    let offline = ["audit", "verify", session.as_str(), "--data-dir", dir.as_str()];
    cli(&offline, &[]).await.assert_ok("audit verify --data-dir (intact)");

    // Edit one event's data behind Stead's back; the JSON stays valid.
    let db = rusqlite::Connection::open(stead.data_dir.join("stead.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE events SET data = replace(data, 'echo: hello', 'echo: forged') \
             WHERE seq = ?1 AND session_pk = (SELECT pk FROM sessions WHERE hex(id) = ?2)",
            rusqlite::params![seq as i64, session_hex(&session)],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);

    let broken = cli(&offline, &[]).await;
    assert_eq!(broken.code, Some(1), "{broken:?}");
    assert!(broken.stdout.contains(&format!("BROKEN at event {seq}")), "stdout: {}", broken.stdout);
    let mut json_args = offline.to_vec();
    json_args.push("--json");
    let report = cli(&json_args, &[]).await;
    assert_eq!(report.code, Some(1), "{report:?}");
    let v: Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!((v["ok"].as_bool(), v["first_broken"]["seq"].as_u64()), (Some(false), Some(seq)), "{v}");
    assert_eq!(v["events_verified"].as_u64(), Some(seq - 1));

    // The server says the same.
    stead.restart(None).await;
    let audit = stead.get_ok(&format!("/v1/sessions/{session}/audit")).await;
    assert_eq!((audit["ok"].as_bool(), audit["first_broken"]["seq"].as_u64()), (Some(false), Some(seq)), "{audit}");
    let online = stead_cli(&stead, &["audit", "verify", &session]).await;
    assert_eq!(online.code, Some(1), "{online:?}");
    assert!(online.stdout.contains(&format!("BROKEN at event {seq}")), "{}", online.stdout);
}

/// `stead serve` on `dir` must refuse to start: non-zero exit, a message containing one of
/// `words`, and no panic.
async fn serve_refuses(args: &[&str], words: &[&str]) -> support::Cli {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let out = cli(&all, &[]).await;
    assert_eq!(out.code, Some(1), "`stead {}` should fail: {out:?}", all.join(" "));
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(!out.stderr.contains("stead listening"), "{}", out.stderr);
    let lower = out.stderr.to_lowercase();
    assert!(words.iter().any(|w| lower.contains(w)), "expected one of {words:?} in: {}", out.stderr);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_database_is_refused_clearly() {
    // Not a database at all.
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("stead.db"), b"this is not a database, just some bytes\n".repeat(2000)).unwrap();
    serve_refuses(&["--data-dir", garbage.to_str().unwrap()], &["corrupt"]).await;

    // A real Stead database whose pages were damaged.
    let damaged = tmp.path().join("damaged");
    {
        let mut stead = Stead::start_on(&damaged, Options::new()).await;
        stead.apply_agent(&scripted_agent("helper", "")).await;
        let session = stead.create_session("helper").await;
        for i in 0..5 {
            let run = stead.create_run(&session, &format!("hello {i}")).await;
            stead.wait_run(&run, "completed").await;
        }
        assert!(stead.stop().await.success());
    }
    damage_pages(&damaged.join("stead.db"));
    serve_refuses(&["--data-dir", damaged.to_str().unwrap()], &["corrupt", "damaged", "malformed"]).await;
}

/// Moves the WAL into the database file, then overwrites everything after the first two
/// pages with garbage.
fn damage_pages(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    drop(conn);
    let mut bytes = std::fs::read(db).unwrap();
    let start = 2 * page_size as usize;
    assert!(bytes.len() > start + page_size as usize, "database too small to damage: {} bytes", bytes.len());
    for (i, b) in bytes[start..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    std::fs::write(db, bytes).unwrap();
    let _ = std::fs::remove_file(db.with_extension("db-wal"));
    let _ = std::fs::remove_file(db.with_extension("db-shm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_the_same_data_dir_is_refused() {
    let stead = Options::new().start().await;
    let dir = stead.data_dir.to_str().unwrap().to_owned();
    let out = serve_refuses(&["--data-dir", &dir], &["in use by another stead process"]).await;
    assert!(out.stderr.contains(&dir), "the message names the directory: {}", out.stderr);
    // The first server is unharmed.
    assert_eq!(stead.get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_address_without_keys_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = cli(&["serve", "--listen", "0.0.0.0:0", "--data-dir", dir.to_str().unwrap()], &[]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("without authentication"), "{}", out.stderr);
    assert!(!dir.exists(), "nothing may be created when the configuration is refused");
}

// ---- bad input through HTTP ----

/// Everything a client can read about the stored state touched by the bad requests.
async fn snapshot(stead: &Stead, key: Option<&str>, session: &str, run: &str) -> Value {
    let get = |path: String| async move {
        let r = stead.send(stead.req_as(key, Method::GET, &path)).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.body
    };
    json!({
        "agents": get("/v1/agents?limit=100".into()).await,
        "versions": get("/v1/agents/helper/versions".into()).await,
        "sessions": get("/v1/sessions?limit=100".into()).await,
        "session": get(format!("/v1/sessions/{session}")).await,
        "runs": get(format!("/v1/sessions/{session}/runs?limit=100")).await,
        "run": get(format!("/v1/runs/{run}")).await,
        "events": get(format!("/v1/sessions/{session}/events?limit=1000")).await,
        "audit": get(format!("/v1/sessions/{session}/audit")).await,
    })
}

/// One bad request: what it is, and the status and code it must get.
struct Bad {
    what: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<String>,
    status: u16,
    code: &'static str,
    /// Words the message must contain (it names the field, line or limit).
    mentions: &'static [&'static str],
}

fn bad(what: &'static str, method: Method, path: String, body: Option<&str>, status: u16, code: &'static str) -> Bad {
    Bad {
        what,
        method,
        path,
        content_type: body.map(|_| "application/json"),
        body: body.map(str::to_owned),
        status,
        code,
        mentions: &[],
    }
}

async fn send_bad(stead: &Stead, key: Option<&str>, b: &Bad) -> Resp {
    let mut req = stead.req_as(key, b.method.clone(), &b.path);
    if let Some(ct) = b.content_type {
        req = req.header("content-type", ct);
    }
    if let Some(body) = &b.body {
        req = req.body(body.clone());
    }
    stead.send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let stead = Options::new().arg("--max-body-bytes").arg("1024").arg("--max-input-bytes").arg("100").start().await;
    stead.apply_agent(&scripted_agent("helper", "")).await;
    let session = stead.create_session("helper").await;
    let run = stead.create_run(&session, "hello").await;
    stead.wait_run(&run, "completed").await;
    let before = snapshot(&stead, None, &session, &run).await;

    let runs = format!("/v1/sessions/{session}/runs");
    let unknown_session = SessionId::new().to_string();
    let unknown_run = RunId::new().to_string();
    let big_input = format!(r#"{{"input": "{}"}}"#, "x".repeat(2000));
    let long_input = format!(r#"{{"input": "{}"}}"#, "y".repeat(200));
    let yaml = |body: &str, what, mentions| Bad {
        what,
        method: Method::POST,
        path: "/v1/agents".into(),
        content_type: Some("application/yaml"),
        body: Some(body.to_owned()),
        status: 422,
        code: "invalid_agent_spec",
        mentions,
    };
    let cases = vec![
        bad("malformed JSON", Method::POST, runs.clone(), Some(r#"{"input": "#), 400, "invalid_json"),
        Bad {
            mentions: &["bogus"],
            ..bad(
                "unknown field",
                Method::POST,
                runs.clone(),
                Some(r#"{"input": "x", "bogus": 1}"#),
                422,
                "invalid_request",
            )
        },
        bad("oversize body", Method::POST, runs.clone(), Some(&big_input), 413, "payload_too_large"),
        Bad {
            mentions: &["max_input_bytes"],
            ..bad("input over the limit", Method::POST, runs.clone(), Some(&long_input), 413, "limit_exceeded")
        },
        bad("empty input", Method::POST, runs.clone(), Some(r#"{"input": []}"#), 400, "invalid_input"),
        bad(
            "non-user input",
            Method::POST,
            runs.clone(),
            Some(r#"{"input": [{"role": "assistant", "content": "x"}]}"#),
            400,
            "invalid_input",
        ),
        bad(
            "wait and stream",
            Method::POST,
            runs.clone(),
            Some(r#"{"input": "x", "wait": true, "stream": true}"#),
            400,
            "invalid_request",
        ),
        Bad {
            content_type: Some("text/plain"),
            ..bad(
                "wrong content type",
                Method::POST,
                runs.clone(),
                Some(r#"{"input": "x"}"#),
                415,
                "unsupported_media_type",
            )
        },
        bad(
            "unknown session",
            Method::POST,
            format!("/v1/sessions/{unknown_session}/runs"),
            Some(r#"{"input": "x"}"#),
            404,
            "session_not_found",
        ),
        bad(
            "unknown session (get)",
            Method::GET,
            format!("/v1/sessions/{unknown_session}"),
            None,
            404,
            "session_not_found",
        ),
        bad(
            "unknown session (delete)",
            Method::DELETE,
            format!("/v1/sessions/{unknown_session}"),
            None,
            404,
            "session_not_found",
        ),
        bad("unknown run", Method::GET, format!("/v1/runs/{unknown_run}"), None, 404, "run_not_found"),
        bad("unknown run (cancel)", Method::POST, format!("/v1/runs/{unknown_run}/cancel"), None, 404, "run_not_found"),
        bad(
            "unknown run (outputs)",
            Method::POST,
            format!("/v1/runs/{unknown_run}/tool_outputs"),
            Some(r#"{"tool_outputs": [{"call_id": "c", "output": "x"}]}"#),
            404,
            "run_not_found",
        ),
        bad("malformed session id", Method::GET, "/v1/sessions/not-an-id".into(), None, 400, "invalid_id"),
        bad(
            "malformed session id (runs)",
            Method::POST,
            "/v1/sessions/sess_zz/runs".into(),
            Some(r#"{"input": "x"}"#),
            400,
            "invalid_id",
        ),
        bad("a session id as a run id", Method::GET, format!("/v1/runs/{session}"), None, 400, "invalid_id"),
        bad("a run id as a session id", Method::GET, format!("/v1/sessions/{run}/events"), None, 400, "invalid_id"),
        bad("bad page size", Method::GET, "/v1/sessions?limit=0".into(), None, 400, "invalid_query"),
        bad(
            "outputs for a finished run",
            Method::POST,
            format!("/v1/runs/{run}/tool_outputs"),
            Some(r#"{"tool_outputs": []}"#),
            409,
            "run_not_waiting",
        ),
        bad("cancel a finished run", Method::POST, format!("/v1/runs/{run}/cancel"), None, 409, "run_finished"),
        bad(
            "session of an unknown agent",
            Method::POST,
            "/v1/sessions".into(),
            Some(r#"{"agent": "nobody"}"#),
            404,
            "agent_not_found",
        ),
        bad(
            "session of an unknown agent version",
            Method::POST,
            "/v1/sessions".into(),
            Some(r#"{"agent": "helper", "version": 99}"#),
            404,
            "agent_not_found",
        ),
        bad(
            "malformed agent version",
            Method::GET,
            "/v1/agents/helper/versions/abc".into(),
            None,
            400,
            "invalid_version",
        ),
        bad("unknown route", Method::GET, "/v1/nothing".into(), None, 404, "route_not_found"),
        bad("wrong method", Method::PUT, format!("/v1/sessions/{session}"), None, 405, "method_not_allowed"),
        bad(
            "metadata not an object",
            Method::POST,
            "/v1/sessions".into(),
            Some(r#"{"agent": "helper", "metadata": [1]}"#),
            422,
            "invalid_request",
        ),
        yaml(
            "name: helper\nmodel: {provider: scripted, name: s}\nconcurrency: sometimes\n",
            "bad enum value",
            &["concurrency", "line 3"],
        ),
        yaml(
            "name: helper\nmodel:\n  provider: scripted\n  name: s\n  colour: red\n",
            "unknown spec field",
            &["colour", "line 5"],
        ),
        yaml("name: helper\nmodel: {provider: scripted, name: s\n", "YAML syntax error", &["line"]),
        yaml(
            "name: helper\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: nope, type: builtin}\n",
            "unknown builtin",
            &["tools[0].name"],
        ),
        Bad {
            content_type: Some("application/yaml"),
            mentions: &[],
            ..bad(
                "oversize spec",
                Method::POST,
                "/v1/agents".into(),
                Some(&format!(
                    "name: helper\ndescription: {}\nmodel: {{provider: scripted, name: s}}\n",
                    "d".repeat(2000)
                )),
                413,
                "payload_too_large",
            )
        },
    ];
    for case in &cases {
        let r = send_bad(&stead, None, case).await;
        assert_eq!((r.status, r.code()), (case.status, case.code), "{}: {}", case.what, r.text);
        let message = r.body["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{}: no message: {}", case.what, r.text);
        for m in case.mentions {
            assert!(message.contains(m), "{}: the message should mention {m:?}: {message}", case.what);
        }
        let after = snapshot(&stead, None, &session, &run).await;
        assert_eq!(before, after, "{} changed stored state", case.what);
    }
    stead.check_session(&session, true).await;
}

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbb";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_nothing_of_each_other() {
    let stead = Options::new()
        .arg("--api-key")
        .arg(format!("a:{KEY_A}"))
        .arg("--api-key")
        .arg(format!("b:{KEY_B}"))
        .key(KEY_A)
        .start()
        .await;
    stead.apply_agent(&scripted_agent("helper", "")).await;
    let session = stead.create_session("helper").await;
    let waiting = stead.create_run(&session, r#"call ask {"q":"?"}"#).await;
    let waiting_run = stead.wait_run(&waiting, "requires_action").await;
    let call = waiting_run["required_action"]["tool_calls"][0]["id"].as_str().unwrap().to_owned();
    let before = snapshot(&stead, Some(KEY_A), &session, &waiting).await;

    let outputs = format!(r#"{{"tool_outputs": [{{"call_id": "{call}", "output": "from b"}}]}}"#);
    let for_b = vec![
        bad("a's session", Method::GET, format!("/v1/sessions/{session}"), None, 404, "session_not_found"),
        bad("a's events", Method::GET, format!("/v1/sessions/{session}/events"), None, 404, "session_not_found"),
        bad("a's audit", Method::GET, format!("/v1/sessions/{session}/audit"), None, 404, "session_not_found"),
        bad("a's run list", Method::GET, format!("/v1/sessions/{session}/runs"), None, 404, "session_not_found"),
        bad(
            "input to a's session",
            Method::POST,
            format!("/v1/sessions/{session}/runs"),
            Some(r#"{"input": "x"}"#),
            404,
            "session_not_found",
        ),
        bad("delete a's session", Method::DELETE, format!("/v1/sessions/{session}"), None, 404, "session_not_found"),
        bad("a's run", Method::GET, format!("/v1/runs/{waiting}"), None, 404, "run_not_found"),
        bad("cancel a's run", Method::POST, format!("/v1/runs/{waiting}/cancel"), None, 404, "run_not_found"),
        bad(
            "answer a's run",
            Method::POST,
            format!("/v1/runs/{waiting}/tool_outputs"),
            Some(&outputs),
            404,
            "run_not_found",
        ),
        bad("a's agent", Method::GET, "/v1/agents/helper".into(), None, 404, "agent_not_found"),
        bad(
            "session of a's agent",
            Method::POST,
            "/v1/sessions".into(),
            Some(r#"{"agent": "helper"}"#),
            404,
            "agent_not_found",
        ),
    ];
    for case in &for_b {
        let r = send_bad(&stead, Some(KEY_B), case).await;
        assert_eq!((r.status, r.code()), (case.status, case.code), "tenant b, {}: {}", case.what, r.text);
        assert_eq!(snapshot(&stead, Some(KEY_A), &session, &waiting).await, before, "tenant b, {}", case.what);
    }
    // b's lists are empty.
    for path in ["/v1/sessions", "/v1/agents"] {
        let r = stead.send(stead.req_as(Some(KEY_B), Method::GET, path)).await;
        assert_eq!((r.status, &r.body["data"]), (200, &json!([])), "tenant b, GET {path}: {}", r.text);
    }
    // Without a valid key nobody gets anything.
    for (who, key) in [("no key", None), ("unknown key", Some("cccccccccccccccccccc"))] {
        for case in &for_b {
            let r = send_bad(&stead, key, case).await;
            assert_eq!((r.status, r.code()), (401, "unauthorized"), "{who}, {}: {}", case.what, r.text);
        }
    }
    let r = stead
        .send(stead.req_as(None, Method::GET, "/v1/sessions").header("authorization", format!("Basic {KEY_A}")))
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(snapshot(&stead, Some(KEY_A), &session, &waiting).await, before);

    // b may use the same names for its own things; a's are unaffected.
    stead
        .send(
            stead
                .req_as(Some(KEY_B), Method::POST, "/v1/agents")
                .header("content-type", "application/yaml")
                .body(scripted_agent("helper", "")),
        )
        .await;
    let r = stead.send(stead.req_as(Some(KEY_B), Method::GET, "/v1/agents/helper/versions")).await;
    assert_eq!(r.body["data"].as_array().map(Vec::len), Some(1), "{}", r.text);
    assert_eq!(snapshot(&stead, Some(KEY_A), &session, &waiting).await["versions"], before["versions"]);

    // a can still finish its run.
    let r = stead
        .post(
            &format!("/v1/runs/{waiting}/tool_outputs"),
            &json!({"tool_outputs": [{"call_id": call, "output": "from a"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(stead.wait_run(&waiting, "completed").await["output"], "ask returned: from a");
    stead.check_session(&session, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_tampering_is_named_by_audit_verify() {
    let mut stead = Options::new().start().await;
    stead.apply_agent(&scripted_agent("helper", "")).await;
    let session = stead.create_session("helper").await;
    for input in ["one", r#"call echo {"text":"two"}"#, "three"] {
        let run = stead.create_run(&session, input).await;
        stead.wait_run(&run, "completed").await;
    }
    let head = stead.events(&session).await.len() as i64;
    assert!(stead.stop().await.success());
    // Fold the WAL into the database file, so one file is the whole state.
    let pristine = stead.data_dir.join("stead.db");
    rusqlite::Connection::open(&pristine)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();

    let k = 5i64;
    // (what, SQL with ?1 = seq and ?2 = session hex, the seq the report must name, words of its reason)
    let cases: [(&str, String, i64, &str); 6] = [
        ("edited data", "UPDATE events SET data = replace(data, 'echo', 'ECHO')".into(), k, "hash does not match"),
        ("edited actor", "UPDATE events SET actor = 'principal:mallory'".into(), k, "hash does not match"),
        ("edited time", "UPDATE events SET at = at + 1".into(), k, "hash does not match"),
        ("replaced hash", "UPDATE events SET hash = zeroblob(32)".into(), k, "hash does not match"),
        ("deleted event", "DELETE FROM events".into(), k + 1, &format!("expected sequence {k}")),
        ("deleted last event", "DELETE FROM events".into(), head, "removed"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (i, (what, sql, named, reason)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(&pristine, dir.join("stead.db")).unwrap();
        let target = if *what == "deleted last event" { head } else { k };
        let db = rusqlite::Connection::open(dir.join("stead.db")).unwrap();
        let changed = db
            .execute(
                &format!("{sql} WHERE seq = ?1 AND session_pk = (SELECT pk FROM sessions WHERE hex(id) = ?2)"),
                rusqlite::params![target, session_hex(&session)],
            )
            .unwrap();
        assert_eq!(changed, 1, "{what}");
        drop(db);
        let out = cli(&["audit", "verify", &session, "--data-dir", dir.to_str().unwrap(), "--json"], &[]).await;
        assert_eq!(out.code, Some(1), "{what}: {out:?}");
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {out:?}"));
        assert_eq!(v["ok"], false, "{what}: {v}");
        assert_eq!(v["first_broken"]["seq"].as_i64(), Some(*named), "{what}: {v}");
        let said = v["first_broken"]["reason"].as_str().unwrap_or("");
        assert!(said.contains(reason), "{what}: the reason should say {reason:?}: {said}");
    }
    // The original is untouched and still verifies.
    let ok = cli(&["audit", "verify", &session, "--data-dir", stead.data_dir.to_str().unwrap()], &[]).await;
    ok.assert_ok("audit verify (pristine)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_reports_a_server_that_dies_mid_run() {
    let mut stead = Options::new().fault("tool_started").start().await;
    stead.apply_agent(&scripted_agent("helper", "")).await;
    let session = stead.create_session("helper").await;
    let child = tokio::process::Command::new(support::bin())
        .env("STEAD_URL", &stead.url)
        .args(["run", &session, r#"call echo {"text":"hi"}"#])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let run = stead.wait_paused("tool_started").await;
    stead.kill9();
    let out = tokio::time::timeout(support::TIMEOUT, child.wait_with_output())
        .await
        .expect("`stead run` must notice that the server died")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("error:") && !stderr.contains("panicked"), "{stderr}");
    // The run itself is not lost.
    stead.restart(None).await;
    assert_eq!(stead.wait_run(&run, "completed").await["output"], "echo returned: hi");
    let get = stead_cli(&stead, &["runs", "get", &run]).await;
    get.assert_ok("runs get");
    let v: Value = serde_json::from_str(&get.stdout).unwrap();
    assert_eq!(v["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_outputs_leave_the_waiting_run_untouched() {
    let stead = Options::new().arg("--max-tool-output-bytes").arg("16").start().await;
    stead.apply_agent(&scripted_agent("helper", "")).await;
    let session = stead.create_session("helper").await;
    let run = stead.create_run(&session, r#"call ask {"q":"?"}"#).await;
    let waiting = stead.wait_run(&run, "requires_action").await;
    let call = waiting["required_action"]["tool_calls"][0]["id"].as_str().unwrap().to_owned();
    let before = snapshot(&stead, None, &session, &run).await;

    let path = format!("/v1/runs/{run}/tool_outputs");
    let body = |outputs: Value| Some(json!({ "tool_outputs": outputs }).to_string());
    let cases = [
        ("unknown call", body(json!([{"call_id": "call_nope", "output": "x"}])), 400, "invalid_tool_outputs"),
        ("missing output", body(json!([])), 400, "invalid_tool_outputs"),
        (
            "two outputs for one call",
            body(json!([{"call_id": call, "output": "x"}, {"call_id": call, "output": "y"}])),
            400,
            "invalid_tool_outputs",
        ),
        ("output over the limit", body(json!([{"call_id": call, "output": "z".repeat(100)}])), 413, "limit_exceeded"),
        ("unknown field", body(json!([{"call_id": call, "output": "x", "extra": 1}])), 422, "invalid_request"),
        ("wrong type", body(json!([{"call_id": call, "output": "x", "is_error": "yes"}])), 422, "invalid_request"),
        ("not JSON", Some("{\"tool_outputs\": [".to_owned()), 400, "invalid_json"),
        (
            "wait and stream",
            Some(json!({"tool_outputs": [{"call_id": call, "output": "x"}], "wait": true, "stream": true}).to_string()),
            400,
            "invalid_request",
        ),
    ];
    for (what, body, status, code) in cases {
        let mut req = stead.req(Method::POST, &path).header("content-type", "application/json");
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = stead.send(req).await;
        assert_eq!((r.status, r.code()), (status, code), "{what}: {}", r.text);
        assert_eq!(snapshot(&stead, None, &session, &run).await, before, "{what} changed stored state");
    }
    let r = stead.post(&path, &json!({"tool_outputs": [{"call_id": call, "output": "fine"}], "wait": true})).await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("completed")), "{}", r.text);
    assert_eq!(r.body["output"], "ask returned: fine");
    stead.check_session(&session, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_api_key_never_reaches_the_log() {
    use support::{MOCK_KEY, MOCK_KEY_ENV, MockOpenAi, Reply, echo_script, mock_agent};
    // The second request is refused with an error that echoes the key, as some servers do.
    let mock = MockOpenAi::start(|n, body| {
        if n == 1 { Reply::Error(400, format!("bad request from key {MOCK_KEY}")) } else { echo_script(n, body) }
    })
    .await;
    let stead = Options::new().env(MOCK_KEY_ENV, MOCK_KEY).start().await;
    let spec = mock_agent("keyed", &mock, true);
    stead.apply_agent(&spec).await;
    let session = stead.create_session("keyed").await;
    let run = stead.create_run(&session, "hello").await;
    let failed = stead.wait_run(&run, "failed").await;
    let message = failed["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("bad request from key"), "the server's message is quoted: {failed}");
    assert!(!failed.to_string().contains(MOCK_KEY), "the key leaked into the run: {failed}");
    let log = stead.check_session(&session, true).await;
    let text = serde_json::to_string(&log.events).unwrap();
    assert!(!text.contains(MOCK_KEY), "the key leaked into the log:\n{text}");
    let agent = stead.get_ok("/v1/agents/keyed").await;
    assert!(!agent.to_string().contains(MOCK_KEY), "the key leaked into the stored spec: {agent}");
    assert!(!stead.stderr().contains(MOCK_KEY), "the key leaked into the server's output:\n{}", stead.stderr());
    assert_eq!(mock.count(), 2);
}

/// A run create retried with its `Idempotency-Key` (its answer lost) returns the first run, even
/// while that run keeps a `reject` session busy; the key for other input is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_run_create_returns_the_first_run() {
    let stead = Options::new().start().await;
    stead.apply_agent(&scripted_agent("once", "concurrency: reject\n")).await;
    let session = stead.create_session("once").await;
    let path = format!("/v1/sessions/{session}/runs");
    let create = |key: &'static str, input: &'static str| {
        stead.send(stead.req(Method::POST, &path).header("Idempotency-Key", key).json(&json!({"input": input})))
    };
    let first = create("run-key-1", "call ask").await;
    assert_eq!(first.status, 201, "{}", first.text);
    let run = first.body["id"].as_str().unwrap().to_owned();
    stead.wait_run(&run, "requires_action").await;
    let retry = create("run-key-1", "call ask").await;
    assert_eq!((retry.status, retry.body["id"].as_str()), (201, Some(run.as_str())), "{}", retry.text);
    let other = create("run-key-1", "call echo").await;
    assert_eq!((other.status, other.code()), (422, "idempotency_key_reused"), "{}", other.text);
    let bad = create("", "call ask").await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_idempotency_key"), "{}", bad.text);
    // The control: without the key, the busy session refuses a second run.
    let unkeyed = stead.post(&path, &json!({"input": "call ask"})).await;
    assert_eq!((unkeyed.status, unkeyed.code()), (409, "session_busy"), "{}", unkeyed.text);
    assert_eq!(stead.runs_of(&session).await.len(), 1, "one run for one request");
}

/// `stead secrets set|list|delete`: the value comes from stdin and is never printed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_cli_stores_lists_and_deletes_without_showing_values() {
    let stead = Options::new().start().await;
    let env = url_env(&stead);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let set = cli_with_stdin(&["secrets", "set", "TICKETS"], &env, Some("cli-canary-41b7\n")).await;
    assert_eq!(set.code, Some(0), "{} {}", set.stdout, set.stderr);
    assert_eq!(set.stdout.trim(), "TICKETS v1 (tenant)");
    let list = stead_cli(&stead, &["secrets", "list"]).await;
    assert!(list.stdout.contains("\"TICKETS\"") && !list.stdout.contains("cli-canary-41b7"), "{}", list.stdout);
    let bad = cli_with_stdin(&["secrets", "set", "bad name"], &env, Some("x")).await;
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("invalid_secret_name"), "{}", bad.stderr);
    let del = stead_cli(&stead, &["secrets", "delete", "TICKETS"]).await;
    assert_eq!(del.code, Some(0), "{}", del.stderr);
    let list = stead_cli(&stead, &["secrets", "list"]).await;
    assert!(!list.stdout.contains("TICKETS"), "{}", list.stdout);
    assert!(!stead.stderr().contains("cli-canary-41b7"));
}
