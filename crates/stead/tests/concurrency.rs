//! Concurrent input: 50 simultaneous requests at one session under each concurrency policy of
//! the agent (`reject`, `enqueue`, `interrupt`), against the real binary. One writer per
//! session is checked from the log itself: the events workers write for different runs never
//! interleave. Every session's hash chain must verify afterwards.

mod support;

use std::sync::Arc;

use reqwest::Method;
use serde_json::json;
use support::{Options, Resp, SessionLog, Stead, scripted_agent};

const N: usize = 50;

/// The input of request `i`: one slow tool call, with a duration that identifies the request.
fn input(i: usize) -> String {
    input_slower(i, 30)
}

fn input_slower(i: usize, base_ms: usize) -> String {
    format!(r#"call sleep {{"ms":{}}}"#, base_ms + i)
}

/// Starts a server with a scripted agent under `policy` and one session of it.
async fn setup(policy: &str) -> (Stead, String) {
    let stead = Options::new().start().await;
    stead.apply_agent(&scripted_agent("agent", &format!("concurrency: {policy}\n"))).await;
    let session = stead.create_session("agent").await;
    (stead, session)
}

/// Sends the `N` inputs at once (released together by a barrier); answers by request index.
async fn fire(stead: &Stead, session: &str) -> Vec<Resp> {
    fire_with(stead, session, input).await
}

async fn fire_with(stead: &Stead, session: &str, input: impl Fn(usize) -> String) -> Vec<Resp> {
    let path = format!("/v1/sessions/{session}/runs");
    burst(N, |i| stead.req(Method::POST, &path).json(&json!({"input": input(i)}))).await
}

/// The request index whose input a run carries (from its `run_created` event).
fn request_of(log: &SessionLog, run: &str) -> usize {
    let created = &log.runs[run].events[0];
    let text = created["data"]["input"][0]["content"].as_str().unwrap();
    (0..N).find(|i| input(*i) == text).unwrap_or_else(|| panic!("unknown input {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_refuses_input_while_a_run_is_active() {
    let (stead, session) = setup("reject").await;
    // Runs long enough that 50 simultaneous requests surely meet an active one.
    let answers = fire_with(&stead, &session, |i| input_slower(i, 250)).await;
    let mut accepted = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        match a.status {
            201 => accepted.push(a.body["id"].as_str().unwrap().to_owned()),
            409 => assert_eq!(a.code(), "session_busy", "request {i}: {}", a.text),
            s => panic!("request {i}: unexpected {s}: {}", a.text),
        }
    }
    assert!(!accepted.is_empty(), "every input was refused");
    assert!(accepted.len() < N, "no input was refused while a run was active");
    for run in &accepted {
        let done = stead.wait_run(run, "completed").await;
        assert!(done["output"].as_str().unwrap().starts_with("sleep returned: slept"), "{done}");
    }
    let log = stead.check_session(&session, true).await;
    assert_eq!(log.runs.len(), accepted.len(), "a refused input left a run behind");
    log.assert_one_writer();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_runs_everything_one_at_a_time_in_arrival_order() {
    let (stead, session) = setup("enqueue").await;
    let answers = fire(&stead, &session).await;
    let mut runs = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 201, "request {i}: {}", a.text);
        runs.push(a.body["id"].as_str().unwrap().to_owned());
    }
    for run in &runs {
        stead.wait_run(run, "completed").await;
    }
    let log = stead.check_session(&session, true).await;
    assert_eq!(log.runs.len(), N);
    log.assert_one_writer();
    // Arrival order is the order of `run_created`; execution must follow it.
    let order = log.runs_in_order();
    for w in order.windows(2) {
        assert!(
            w[0].worker_seqs[0] < w[1].worker_seqs[0],
            "run {} arrived before {} but started after it",
            w[0].id,
            w[1].id
        );
    }
    // Each run answered its own input, not one queued after it.
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(request_of(&log, run), i);
        let done = stead.run(run).await;
        assert_eq!(done["output"], format!("sleep returned: slept {} ms", 30 + i), "{done}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_cancels_the_active_run_and_runs_the_newest() {
    let (stead, session) = setup("interrupt").await;
    let answers = fire(&stead, &session).await;
    let mut runs = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 201, "request {i}: {}", a.text);
        runs.push(a.body["id"].as_str().unwrap().to_owned());
    }
    for run in &runs {
        stead.wait_settled(run).await;
    }
    let log = stead.check_session(&session, true).await;
    assert_eq!(log.runs.len(), N);
    log.assert_one_writer();
    let order = log.runs_in_order();
    let last = order.last().unwrap();
    let newest = stead.run(&last.id).await;
    assert_eq!(newest["status"], "completed", "the newest input must complete: {newest}");
    let mut cancelled = 0;
    for r in &order[..order.len() - 1] {
        let run = stead.run(&r.id).await;
        match run["status"].as_str().unwrap() {
            "completed" => {}
            "cancelled" => {
                cancelled += 1;
                let reason = run["error"]["message"].as_str().unwrap_or("");
                assert!(reason.contains("interrupted"), "run {} was cancelled for {reason:?}", r.id);
            }
            other => panic!("run {} ended {other}: {run}", r.id),
        }
    }
    assert!(cancelled > 0, "50 simultaneous inputs interrupted nothing");
}

/// Input queued while a run is mid-way (its tool call recorded, its result not yet) must reach
/// the model after that run's conversation, not inside its tool-call exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_input_follows_the_previous_run_in_the_model_context() {
    use support::{MOCK_KEY, MOCK_KEY_ENV, MockOpenAi, echo_script, mock_agent};
    let mock = MockOpenAi::start(echo_script).await;
    let mut stead = Options::new().env(MOCK_KEY_ENV, MOCK_KEY).fault("tool_started").start().await;
    stead.apply_agent(&mock_agent("queued", &mock, true)).await;
    let session = stead.create_session("queued").await;
    let first = stead.create_run(&session, "first").await;
    assert_eq!(stead.wait_paused("tool_started").await, first);
    // The second input arrives while the first run waits for its tool's result.
    let second = stead.create_run(&session, "second").await;
    stead.restart(None).await;
    assert_eq!(stead.wait_run(&first, "completed").await["output"], "echo said: first");
    let done = stead.wait_run(&second, "completed").await;
    let requests = mock.requests();
    let log = stead.check_session(&session, true).await;
    log.assert_one_writer();
    let summary: Vec<Vec<String>> = requests
        .iter()
        .map(|r| r["messages"].as_array().unwrap().iter().map(|m| format!("{}: {}", m["role"], m["content"])).collect())
        .collect();
    assert_eq!(requests.len(), 4, "two steps per run; requests' messages: {summary:#?}");
    let messages = requests[2]["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "tool", "assistant", "user"],
        "the second run's first request must show the first run's exchange whole, then the new input:\n{messages:#?}"
    );
    assert_eq!(messages[5]["content"], "second");
    assert_eq!(done["output"], "echo said: second");
}

/// Sends `n` requests built by `make` at once; answers by index.
async fn burst(n: usize, make: impl Fn(usize) -> reqwest::RequestBuilder) -> Vec<Resp> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = make(i);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                Resp::read(req.send().await.expect("HTTP request")).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tool_outputs_for_one_call_are_accepted_once() {
    let (stead, session) = setup("enqueue").await;
    let run = stead.create_run(&session, r#"call ask {"q":"?"}"#).await;
    let waiting = stead.wait_run(&run, "requires_action").await;
    let call = waiting["required_action"]["tool_calls"][0]["id"].as_str().unwrap().to_owned();
    let answers = burst(20, |i| {
        stead
            .req(Method::POST, &format!("/v1/runs/{run}/tool_outputs"))
            .json(&json!({"tool_outputs": [{"call_id": call, "output": format!("answer {i}")}]}))
    })
    .await;
    let winners: Vec<usize> = (0..answers.len()).filter(|i| answers[*i].status == 200).collect();
    assert_eq!(winners.len(), 1, "exactly one submission may win: {answers:#?}");
    for (i, a) in answers.iter().enumerate() {
        if a.status != 200 {
            assert_eq!((a.status, a.code()), (409, "run_not_waiting"), "request {i}: {}", a.text);
        }
    }
    let done = stead.wait_run(&run, "completed").await;
    assert_eq!(done["output"], format!("ask returned: answer {}", winners[0]));
    let log = stead.check_session(&session, true).await;
    assert_eq!(log.runs[&run].of_type("tool_call_completed").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cancels_end_each_run_exactly_once() {
    let (stead, session) = setup("enqueue").await;
    let mut runs = Vec::new();
    for i in 0..10 {
        runs.push(stead.create_run(&session, &input_slower(i, 20)).await);
    }
    // Five cancels per run, all at once, while the first run works and the rest wait.
    let answers = burst(runs.len() * 5, |i| {
        stead.req(Method::POST, &format!("/v1/runs/{}/cancel", runs[i % runs.len()])).json(&json!({"reason": "stop"}))
    })
    .await;
    for (i, a) in answers.iter().enumerate() {
        assert!(
            a.status == 200 || (a.status == 409 && a.code() == "run_finished"),
            "cancel {i} of {}: {}",
            runs[i % runs.len()],
            a.text
        );
    }
    for run in &runs {
        stead.wait_settled(run).await;
    }
    let log = stead.check_session(&session, true).await;
    log.assert_one_writer();
    for (k, run) in runs.iter().enumerate() {
        let r = stead.run(run).await;
        let accepted = answers.iter().skip(k).step_by(runs.len()).filter(|a| a.status == 200).count();
        match r["status"].as_str().unwrap() {
            // A cancel that was refused saw the run finished; one accepted may still lose the
            // race with the run's own completion.
            "completed" => {}
            "cancelled" => assert!(accepted > 0, "run {run} was cancelled but every cancel was refused"),
            other => panic!("run {run} ended {other}: {r}"),
        }
        if accepted == 0 {
            assert_eq!(r["status"], "completed", "every cancel of {run} said it was finished: {r}");
        }
        let terminal =
            log.runs[run].events.iter().filter(|e| support::TERMINAL.contains(&e["type"].as_str().unwrap())).count();
        assert_eq!(terminal, 1, "{run}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_agent_applies_store_each_distinct_spec_once() {
    let stead = Options::new().start().await;
    // The same spec 20 times at once: one version.
    let same = scripted_agent("same", "");
    let answers = burst(20, |_| {
        stead.req(Method::POST, "/v1/agents").header("content-type", "application/yaml").body(same.clone())
    })
    .await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    assert!(answers.iter().all(|a| a.status == 201 || a.status == 200), "{answers:#?}");
    assert_eq!(created, 1, "one new version, the rest unchanged: {answers:#?}");
    let versions = stead.get_ok("/v1/agents/same/versions").await;
    assert_eq!(versions["data"].as_array().unwrap().len(), 1, "{versions}");

    // 20 different specs at once: 20 versions, numbered 1..=20 without gaps or repeats.
    let answers = burst(20, |i| {
        let spec = scripted_agent("many", &format!("description: variant {i}\n"));
        stead.req(Method::POST, "/v1/agents").header("content-type", "application/yaml").body(spec)
    })
    .await;
    assert!(answers.iter().all(|a| a.status == 201), "{answers:#?}");
    let mut numbers: Vec<u64> = answers.iter().map(|a| a.body["version"].as_u64().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, (1..=20).collect::<Vec<_>>());
    let versions = stead.get_ok("/v1/agents/many/versions").await;
    let descriptions: std::collections::BTreeSet<&str> =
        versions["data"].as_array().unwrap().iter().map(|v| v["spec"]["description"].as_str().unwrap()).collect();
    assert_eq!(descriptions.len(), 20, "{versions}");
}
