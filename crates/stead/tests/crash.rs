//! Crash tests: the real `stead` process is SIGKILLed at chosen points (fault-injection pauses,
//! a model stream cut mid-way, an arbitrary moment under load), restarted on the same data
//! directory, and the log must show that nothing was lost and nothing happened twice: the
//! hash chain verifies, sequence numbers are contiguous, each model step is recorded once,
//! each tool call starts at most once and completes exactly once, each run ends exactly once.
//! A recorded model response is never requested again: the mock model counts requests.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::Method;
use serde_json::{Value, json};
use stead_core::ids::{RunId, SessionId};
use support::{MOCK_KEY, MOCK_KEY_ENV};
use support::{MockOpenAi, Options, Reply, SseText, Stead, echo_script, mock_agent, scripted_agent, sse_frames};

async fn mock_server(mock: &MockOpenAi, fault: Option<&str>, stream: bool) -> Stead {
    let mut opts = Options::new().env(MOCK_KEY_ENV, MOCK_KEY);
    if let Some(p) = fault {
        opts = opts.fault(p);
    }
    let stead = opts.start().await;
    stead.apply_agent(&mock_agent("mocked", mock, stream)).await;
    stead
}

/// The requests of a mock run of `hello` with `echo_script`: the first carries only the
/// instructions and the input; the second adds the tool call and its result.
fn assert_echo_conversation(requests: &[Value]) {
    assert_eq!(requests.len(), 2, "requests: {requests:#?}");
    assert_eq!(
        requests[0]["messages"],
        json!([{"role": "system", "content": "You are a test agent."}, {"role": "user", "content": "hello"}])
    );
    let second = requests[1]["messages"].as_array().expect("messages");
    assert_eq!(second.len(), 4, "{second:#?}");
    let call = &second[2]["tool_calls"][0];
    assert_eq!(call["function"], json!({"name": "echo", "arguments": "{\"text\":\"hello\"}"}), "{second:#?}");
    assert_eq!(second[3], json!({"role": "tool", "tool_call_id": call["id"], "content": "hello"}));
}

async fn recorded_response_is_not_requested_again(stream: bool) {
    let mock = MockOpenAi::start(echo_script).await;
    let mut stead = mock_server(&mock, Some("after_model_recorded"), stream).await;
    let session = stead.create_session("mocked").await;
    let run = stead.create_run(&session, "hello").await;

    // Process 1 records step 1 (a call to `echo`, with its intent) and dies.
    assert_eq!(stead.wait_paused("after_model_recorded").await, run);
    assert_eq!(mock.count(), 1);
    stead.kill9();

    // Process 2 must run the tool and ask for step 2 only; it records it and dies.
    stead.restart(Some("after_model_recorded")).await;
    assert_eq!(stead.wait_paused("after_model_recorded").await, run);
    assert_eq!(mock.count(), 2, "step 1 was recorded, so it must not be requested again");
    stead.kill9();

    // Process 3 only has to finish the run: no model call at all.
    stead.restart(None).await;
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "echo said: hello");
    assert_eq!(done["steps"], 2);
    // The mock reports 10 prompt tokens per message and 7 completion tokens per answer
    // (in the last stream chunk, or the JSON body): both recorded steps are counted once.
    assert_eq!(done["usage"], json!({"input_tokens": 20 + 40, "output_tokens": 14}), "{done}");
    assert_eq!(mock.count(), 2, "a recorded model response is never requested again");
    assert_echo_conversation(&mock.requests());

    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    assert_eq!((r.steps, r.tool_calls), (2, 1));
    assert_eq!(r.workers.len(), 3, "three processes each wrote part of the run: {:?}", r.workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_model_recorded_streaming() {
    recorded_response_is_not_requested_again(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_model_recorded_non_streaming() {
    recorded_response_is_not_requested_again(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_in_the_middle_of_a_streamed_model_response() {
    // The first request streams part of an answer and then hangs, holding the connection.
    let mock = MockOpenAi::start(|n, body| {
        if n == 0 { Reply::Stall(vec!["PARTIAL-ONE ".into(), "PARTIAL-TWO ".into()]) } else { echo_script(n, body) }
    })
    .await;
    let mut stead = mock_server(&mock, None, true).await;
    let session = stead.create_session("mocked").await;

    // Watch the session's live stream, deltas included, to see the partial text arrive.
    let resp = stead
        .send_raw(
            stead
                .req(Method::GET, &format!("/v1/sessions/{session}/events?deltas=true"))
                .header("accept", "text/event-stream"),
        )
        .await;
    let mut live = SseText::new(resp);
    live.read_until("session_created").await; // subscribed: no delta can be missed now

    let run = stead.create_run(&session, "hello").await;
    mock.wait_stalls(1).await;
    live.read_until("PARTIAL-TWO").await;
    drop(live);
    kill_mid_call_and_finish(&mut stead, &mock, &session, &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_while_waiting_for_a_non_streamed_model_response() {
    let mock = MockOpenAi::start(|n, body| if n == 0 { Reply::Stall(vec![]) } else { echo_script(n, body) }).await;
    let mut stead = mock_server(&mock, None, false).await;
    let session = stead.create_session("mocked").await;
    let run = stead.create_run(&session, "hello").await;
    mock.wait_stalls(1).await;
    kill_mid_call_and_finish(&mut stead, &mock, &session, &run).await;
}

/// The model call of step 1 is in flight: kill, restart, and check that the step was asked
/// again exactly once, recorded exactly once, and that nothing partial reached the log.
async fn kill_mid_call_and_finish(stead: &mut Stead, mock: &MockOpenAi, session: &str, run: &str) {
    let before = stead.events(session).await;
    assert!(
        before.iter().all(|e| e["type"] != "model_responded"),
        "nothing of the interrupted step may be recorded: {before:#?}"
    );
    stead.kill9();

    stead.restart(None).await;
    let done = stead.wait_run(run, "completed").await;
    assert_eq!(done["output"], "echo said: hello");
    let requests = mock.requests();
    assert_eq!(requests.len(), 3, "step 1 twice (interrupted, then again), step 2 once: {requests:#?}");
    assert_eq!(requests[0], requests[1], "the interrupted step is requested again, identically");
    assert_echo_conversation(&requests[1..]);

    let log = stead.check_session(session, true).await;
    let r = &log.runs[run];
    assert_eq!((r.steps, r.tool_calls), (2, 1), "each step recorded exactly once");
    let text = serde_json::to_string(&log.events).unwrap();
    assert!(!text.contains("PARTIAL"), "partial model output leaked into the log:\n{text}");
}

/// Crash between a tool's recorded intent and its recorded result: the idempotent built-in
/// runs again under the same idempotency key, and the log shows one start and one result.
async fn kill_around_tool(point: &str) {
    let mut stead = Options::new().fault(point).start().await;
    stead.apply_agent(&scripted_agent("tools", "")).await;
    let session = stead.create_session("tools").await;
    let run = stead.create_run(&session, r#"call echo {"text":"hi"}"#).await;
    assert_eq!(stead.wait_paused(point).await, run);
    // The server still answers while the run is parked: intent recorded, result not.
    let before = stead.events(&session).await;
    let kinds: Vec<&str> = before.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session_created", "run_created", "model_responded", "tool_call_started"], "{before:#?}");
    stead.kill9();

    stead.restart(None).await;
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "echo returned: hi");
    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    let started = r.of_type("tool_call_started");
    let completed = r.of_type("tool_call_completed");
    assert_eq!((started.len(), completed.len()), (1, 1), "{:#?}", r.events);
    let call = started[0]["data"]["call_id"].as_str().unwrap();
    assert_eq!(completed[0]["data"]["call_id"], call);
    assert_eq!(completed[0]["data"]["output"], "hi");
    // The key is the deterministic one, recorded once, so the retry could only use it.
    let key = stead_core::run::idempotency_key(
        &session.parse::<SessionId>().unwrap(),
        &run.parse::<RunId>().unwrap(),
        1,
        call,
    );
    assert_eq!(started[0]["data"]["idempotency_key"], key);
    assert_ne!(started[0]["actor"], completed[0]["actor"], "the restarted process ran the tool again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_tool_started() {
    kill_around_tool("tool_started").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_before_tool_result_recorded() {
    kill_around_tool("before_tool_recorded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_tool_runs_once_and_is_not_run_again_after_a_crash() {
    let spec = "name: once\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: echo, type: builtin, idempotent: false}\n";
    // Without a crash the tool simply runs.
    let mut stead = Options::new().start().await;
    stead.apply_agent(spec).await;
    let session = stead.create_session("once").await;
    let run = stead.create_run(&session, r#"call echo {"text":"charge"}"#).await;
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "echo returned: charge");

    // Killed after its intent was recorded: its outcome is unknown, so it is not run again.
    stead.restart(Some("tool_started")).await;
    let run = stead.create_run(&session, r#"call echo {"text":"charge again"}"#).await;
    assert_eq!(stead.wait_paused("tool_started").await, run);
    stead.kill9();
    stead.restart(None).await;
    // A person is asked whether it took effect; nothing runs meanwhile.
    stead.wait_run(&run, "awaiting_approval").await;
    let log = stead.check_session(&session, false).await;
    let r = &log.runs[&run];
    assert_eq!(r.of_type("tool_call_started").len(), 1);
    assert_eq!(r.of_type("tool_call_completed").len(), 0, "a started non-idempotent call is never re-run");
    assert_eq!(r.of_type("approval_requested").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_point_in_turn() {
    // One run, seven processes: each stops at the next point of the loop and is killed.
    let mock = MockOpenAi::start(echo_script).await;
    let mut stead = mock_server(&mock, Some("before_model_call"), true).await;
    let session = stead.create_session("mocked").await;
    let run = stead.create_run(&session, "hello").await;
    let plan = [
        ("before_model_call", 0), // step 1 not asked yet
        ("after_model_recorded", 1),
        ("tool_started", 1),
        ("before_tool_recorded", 1),
        ("before_model_call", 1), // step 2 not asked yet
        ("after_model_recorded", 2),
    ];
    for (i, (point, requests)) in plan.iter().enumerate() {
        if i > 0 {
            stead.restart(Some(point)).await;
        }
        assert_eq!(stead.wait_paused(point).await, run, "process {} at {point}", i + 1);
        assert_eq!(mock.count(), *requests, "model requests when paused at {point} (process {})", i + 1);
        stead.check_session(&session, false).await;
        stead.kill9();
    }
    stead.restart(None).await;
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "echo said: hello");
    assert_eq!(mock.count(), 2);
    assert_echo_conversation(&mock.requests());
    let log = stead.check_session(&session, true).await;
    assert_eq!((log.runs[&run].steps, log.runs[&run].tool_calls), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_while_waiting_for_client_tool_outputs() {
    let mut stead = Options::new().start().await;
    stead.apply_agent(&scripted_agent("client", "")).await;
    let session = stead.create_session("client").await;
    let run = stead.create_run(&session, r#"call ask {"q":"meaning?"}"#).await;
    let waiting = stead.wait_run(&run, "requires_action").await;
    let calls = waiting["required_action"]["tool_calls"].clone();
    assert_eq!(calls.as_array().map(Vec::len), Some(1), "{waiting}");
    stead.kill9();

    // The wait is rows in the store: after a restart the run still waits for the same call.
    stead.restart(Some("before_model_call")).await;
    let after = stead.run(&run).await;
    assert_eq!(after["status"], "requires_action");
    assert_eq!(after["required_action"]["tool_calls"], calls);
    let call = calls[0]["id"].as_str().unwrap();
    let r = stead
        .post(&format!("/v1/runs/{run}/tool_outputs"), &json!({"tool_outputs": [{"call_id": call, "output": "42"}]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Kill again once the submitted output is recorded and the run is about to resume.
    assert_eq!(stead.wait_paused("before_model_call").await, run);
    stead.kill9();
    stead.restart(None).await;
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], "ask returned: 42");
    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    assert_eq!(r.of_type("run_requires_action").len(), 1);
    assert_eq!(r.of_type("tool_call_started").len(), 0, "a client's call is never started server-side");
    let completed = r.of_type("tool_call_completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["data"]["output"], "42");
    assert!(completed[0]["actor"].as_str().unwrap().starts_with("principal:"), "{}", completed[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_in_flight_killed_at_arbitrary_moments() {
    const SESSIONS: usize = 20;
    const REPEAT: u64 = 30;
    // Per session: session_created, run_created, REPEAT × (response, start, result), the
    // final response and run_completed.
    const EVENTS_PER_SESSION: u64 = 2 + 3 * REPEAT + 2;
    let total = SESSIONS as u64 * EVENTS_PER_SESSION;

    let mut stead = Options::new().start().await;
    stead.apply_agent(&scripted_agent("busy", "")).await;
    let mut work = Vec::new();
    for i in 0..SESSIONS {
        let session = stead.create_session("busy").await;
        // Half the sessions call a tool that takes a little time, so the kill finds tools
        // in flight as well as model steps and commits.
        let input = if i % 2 == 0 {
            format!(r#"repeat {REPEAT} echo {{"text":"x"}}"#)
        } else {
            format!(r#"repeat {REPEAT} sleep {{"ms":5}}"#)
        };
        work.push((session, input));
    }
    let mut runs = Vec::new();
    for (session, input) in &work {
        runs.push(stead.create_run(session, input).await);
    }

    // Kill twice, at a third and at two thirds of the expected events.
    for threshold in [total / 3, total * 2 / 3] {
        wait_for_progress(&stead, threshold, total).await;
        stead.kill9();
        stead.restart(None).await;
    }

    let mut crossed = 0;
    for ((session, input), run) in work.iter().zip(&runs) {
        let done = stead.wait_run(run, "completed").await;
        let tool = if input.contains("echo") { "echo" } else { "sleep" };
        assert_eq!(done["output"], format!("done: {REPEAT} calls to {tool}"));
        let log = stead.check_session(session, true).await;
        assert_eq!(log.events.len() as u64, EVENTS_PER_SESSION, "{session}");
        let r = &log.runs[run];
        assert_eq!((r.steps, r.tool_calls as u64), (REPEAT as u32 + 1, REPEAT));
        if r.workers.len() > 1 {
            crossed += 1;
        }
    }
    assert!(crossed > 0, "no run was in flight at a kill, so the test proved nothing; make the runs slower");
}

/// Waits until the sessions together hold at least `threshold` events (and not all of them).
async fn wait_for_progress(stead: &Stead, threshold: u64, total: u64) {
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let page = stead.get_ok("/v1/sessions?limit=100").await;
        let sum: u64 = page["data"].as_array().unwrap().iter().map(|s| s["head_seq"].as_u64().unwrap()).sum();
        if sum >= threshold {
            assert!(sum < total, "everything finished before the kill ({sum} of {total} events)");
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("only {sum} of {threshold} events after {:?}; stderr:\n{}", support::TIMEOUT, stead.stderr());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_input_survives_a_kill_during_a_burst() {
    const SESSIONS: usize = 10;
    const REQUESTS: usize = 200;
    let mut stead = Options::new().start().await;
    stead.apply_agent(&scripted_agent("burst", "")).await;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(stead.create_session("burst").await);
    }
    // 200 simultaneous inputs; the server is killed as soon as the 20th is acknowledged.
    let acked = Arc::new(AtomicUsize::new(0));
    let twentieth = Arc::new(tokio::sync::Notify::new());
    let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let session = sessions[i % SESSIONS].clone();
            let req = stead
                .req(Method::POST, &format!("/v1/sessions/{session}/runs"))
                .json(&json!({"input": format!("hello {i}")}));
            let (acked, twentieth, barrier) = (acked.clone(), twentieth.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let resp = req.send().await.ok()?;
                if resp.status().as_u16() != 201 {
                    return None; // refused or cut: not acknowledged
                }
                let body: Value = resp.json().await.ok()?;
                if acked.fetch_add(1, Ordering::SeqCst) + 1 == 20 {
                    twentieth.notify_one();
                }
                Some((session, body["id"].as_str()?.to_owned()))
            })
        })
        .collect();
    tokio::time::timeout(support::TIMEOUT, twentieth.notified()).await.expect("20 inputs acknowledged");
    stead.kill9();
    let mut acknowledged = Vec::new();
    for t in tasks {
        if let Some(a) = t.await.unwrap() {
            acknowledged.push(a);
        }
    }
    assert!(acknowledged.len() < REQUESTS, "every request finished before the kill; the test proved nothing");

    stead.restart(None).await;
    for (session, run) in &acknowledged {
        let done = stead.wait_run(run, "completed").await;
        assert_eq!(done["session_id"], json!(session));
    }
    // Inputs whose answer the kill cut off may have been recorded too: they run as well.
    let mut runs = 0;
    for session in &sessions {
        for run in stead.runs_of(session).await {
            stead.wait_run(run["id"].as_str().unwrap(), "completed").await;
        }
        let log = stead.check_session(session, true).await;
        log.assert_one_writer();
        runs += log.runs.len();
    }
    assert!(runs >= acknowledged.len(), "{runs} runs in the logs, {} acknowledged", acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_resumes_across_a_kill_without_gaps_or_duplicates() {
    let mut stead = Options::new().start().await;
    stead.apply_agent(&scripted_agent("streamed", "")).await;
    let session = stead.create_session("streamed").await;
    let stream = |stead: &Stead, after: Option<u64>| {
        let mut req =
            stead.req(Method::GET, &format!("/v1/sessions/{session}/events")).header("accept", "text/event-stream");
        if let Some(a) = after {
            req = req.header("last-event-id", a.to_string());
        }
        req
    };
    let mut live = SseText::new(stead.send_raw(stream(&stead, None)).await);
    live.read_until("session_created").await;
    let run = stead.create_run(&session, r#"repeat 20 sleep {"ms":10}"#).await;
    // Let a few steps through, then kill mid-run.
    live.read_until_frame("tool_call_started").await;
    live.read_until("\"step\":3").await;
    stead.kill9();
    let mut frames = sse_frames(&live.text);
    drop(live);
    let last = frames.last().and_then(|f| f.id).expect("some events before the kill");

    stead.restart(None).await;
    let mut resumed = SseText::new(stead.send_raw(stream(&stead, Some(last))).await);
    resumed.read_until_frame("run_completed").await;
    frames.extend(sse_frames(&resumed.text));
    stead.wait_run(&run, "completed").await;

    let events = stead.events(&session).await;
    let ids: Vec<u64> = frames.iter().map(|f| f.id.expect("stored events carry their seq as id")).collect();
    let head = events.len() as u64;
    assert_eq!(ids, (1..=head).collect::<Vec<_>>(), "the resumed stream must continue exactly where it broke");
    let streamed: Vec<&Value> = frames.iter().map(|f| &f.data).collect();
    assert_eq!(streamed, events.iter().collect::<Vec<_>>(), "streamed events equal the stored ones");
    stead.check_session(&session, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requested_before_a_kill_is_honoured_after_restart() {
    let mut stead = Options::new().fault("tool_started").start().await;
    stead.apply_agent(&scripted_agent("cancelled", "")).await;
    let session = stead.create_session("cancelled").await;
    let run = stead.create_run(&session, r#"call sleep {"ms":1}"#).await;
    assert_eq!(stead.wait_paused("tool_started").await, run);
    let r = stead.post(&format!("/v1/runs/{run}/cancel"), &json!({"reason": "user changed their mind"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["cancel_requested"], true, "{}", r.text);
    stead.kill9();
    stead.restart(None).await;
    let cancelled = stead.wait_run(&run, "cancelled").await;
    assert_eq!(cancelled["error"]["message"], "user changed their mind", "{cancelled}");
    let log = stead.check_session(&session, true).await;
    let r = &log.runs[&run];
    assert_eq!(r.of_type("run_cancel_requested").len(), 1);
    assert_eq!(r.of_type("tool_call_completed").len(), 0, "a cancelled run does not go on with its tools");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_with_runs_in_flight_resumes_after_restart() {
    let mut stead = Options::new().start().await;
    stead.apply_agent(&scripted_agent("stopped", "")).await;
    let mut work = Vec::new();
    for _ in 0..5 {
        let session = stead.create_session("stopped").await;
        let run = stead.create_run(&session, r#"repeat 10 sleep {"ms":40}"#).await;
        work.push((session, run));
    }
    // Stop once every run has made some progress but none can have finished.
    for (session, _) in &work {
        let deadline = tokio::time::Instant::now() + support::TIMEOUT;
        while stead.events(session).await.len() < 5 {
            assert!(tokio::time::Instant::now() < deadline, "no progress; stderr:\n{}", stead.stderr());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let status = stead.stop().await;
    assert!(status.success(), "SIGTERM must stop the server cleanly ({status}); stderr:\n{}", stead.stderr());
    stead.restart(None).await;
    let mut resumed = 0;
    for (session, run) in &work {
        assert_eq!(stead.wait_run(run, "completed").await["output"], "done: 10 calls to sleep");
        let log = stead.check_session(session, true).await;
        if log.runs[run].workers.len() > 1 {
            resumed += 1;
        }
    }
    assert!(resumed > 0, "every run finished before the stop; the test proved nothing");
}

/// Waits until our child `pid` has exited (a zombie not yet reaped), from /proc.
async fn wait_exited(pid: u32) {
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("a child is visible until reaped");
        // The state follows the parenthesised command name.
        if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "process {pid} did not exit");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_died_by_itself_does_not_pass_for_killed() {
    let mut stead = Options::new().start().await;
    let pid = stead.pid();
    // SAFETY: plain kill(2) on the pid of our own child, which has not been reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    wait_exited(pid).await;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stead.kill9()));
    let message = caught.expect_err("kill9 of a server that already exited must fail the test");
    let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("already exited"), "{text}");
}

/// A panic injected in a run's driver on the real binary: the run fails with `internal`, the
/// session stays usable (cancel answers, the next runs start, it can be deleted), and after a
/// restart with the same fault armed the failed run is not picked up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_driver_fails_the_run_and_never_wedges_the_session() {
    let mut stead = Options::new().env("STEAD_FAULT_PANIC", "tool_started").start().await;
    stead.apply_agent(&scripted_agent("fragile", "")).await;
    let session = stead.create_session("fragile").await;
    let run = stead.create_run(&session, r#"call echo {"text":"boom"}"#).await;
    let failed = stead.wait_run(&run, "failed").await;
    assert_eq!(failed["error"]["code"], "internal", "{failed}");
    stead.wait_for_stderr("the run's driver panicked", support::TIMEOUT).await;

    let r = stead.post(&format!("/v1/runs/{run}/cancel"), &json!({"reason": "stop"})).await;
    assert_eq!((r.status, r.code()), (409, "run_finished"), "{}", r.text);
    let next = stead.create_run(&session, "hello").await;
    stead.wait_run(&next, "completed").await;

    stead.kill9();
    stead.restart(None).await; // the environment (and so the fault) is kept
    let after = stead.create_run(&session, "hello again").await;
    stead.wait_run(&after, "completed").await;
    assert_eq!(stead.run(&run).await["status"], "failed");
    let restarted = stead.current_stderr();
    assert!(!restarted.iter().any(|l| l.contains("panic injected")), "panicked again: {restarted:#?}");
    let log = stead.check_session(&session, true).await;
    assert_eq!(log.runs[&run].of_type("run_failed").len(), 1, "{:#?}", log.runs[&run].events);
    let r = stead.send(stead.req(Method::DELETE, &format!("/v1/sessions/{session}"))).await;
    assert!(r.status < 300, "a session whose run failed can be deleted: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_dispatcher_dies() {
    let stead = Options::new().env("STEAD_FAULT_PANIC", "dispatcher_loop").start().await;
    assert_eq!(stead.get("/healthz").await.status, 200);
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    let r = loop {
        let r = stead.get("/readyz").await;
        if r.status != 200 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!((r.status, r.code()), (503, "dispatcher_stopped"), "{}", r.text);
    assert_eq!(stead.get("/healthz").await.status, 200, "the process itself is alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_operator_options_are_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (flag, value) in
        [("--max-concurrent-runs", "18446744073709551615"), ("--max-wait-secs", "18446744073709551615")]
    {
        let out = support::cli(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data, flag, value], &[]).await;
        assert_eq!(out.code, Some(1), "{flag} {value}: {out:?}");
        assert!(out.stderr.contains(flag) && out.stderr.contains("must be between"), "{}", out.stderr);
    }
}
