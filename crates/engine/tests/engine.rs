//! Engine behaviour on a real SQLite store: limits, bad tool calls, cancellation, provider
//! failures. Each test drives runs through the public commands and reads the log back.

use std::sync::Arc;
use std::time::Duration;

use stead_core::agent::SpecFormat;
use stead_core::event::{Event, EventBody};
use stead_core::ids::TenantId;
use stead_core::message::Message;
use stead_core::run::RunStatus;
use stead_engine::{Engine, EngineOptions, ToolRegistry};
use stead_model::{ProviderDefaults, Providers};
use stead_store::RunRecord;
use stead_store_sqlite::{SqliteOptions, SqliteStore};
use tokio_util::sync::CancellationToken;

struct Setup {
    engine: Engine,
    tenant: TenantId,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn setup(options: EngineOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let engine = Engine::new(
        store as Arc<dyn stead_store::Store>,
        Providers::new(ProviderDefaults::default()),
        ToolRegistry::with_builtins(),
        options,
    );
    let stop = CancellationToken::new();
    tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run(stop).await }
    });
    Setup { engine, tenant: TenantId::default_tenant(), stop, _dir: dir }
}

impl Setup {
    async fn session(&self, spec: &str) -> stead_core::ids::SessionId {
        let (agent, _) = self.engine.apply_agent(&self.tenant, spec, SpecFormat::Yaml).await.unwrap();
        self.engine.create_session(&self.tenant, "test", &agent.name, None, serde_json::json!({})).await.unwrap().id
    }

    async fn run(&self, session: &stead_core::ids::SessionId, text: &str) -> RunRecord {
        let run = self
            .engine
            .create_run(&self.tenant, "test", session, vec![Message::User { content: text.into() }])
            .await
            .unwrap();
        self.engine.wait_for_run(&self.tenant, &run.id, Duration::from_secs(30)).await.unwrap()
    }

    async fn events(&self, session: &stead_core::ids::SessionId) -> Vec<Event> {
        self.engine.store().read_events(&self.tenant, session, 0, 10_000).await.unwrap()
    }
}

const BASE: &str = "name: a\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: echo, type: builtin}\n  - {name: sleep, type: builtin}\n";

fn completed_outputs(events: &[Event]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ToolCallCompleted { output, is_error, .. } => Some((output.clone(), *is_error)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn invalid_arguments_and_unknown_tools_go_back_to_the_model_as_errors() {
    let s = setup(EngineOptions::default());
    let session = s.session(BASE).await;
    // Against the schema: `sleep` requires `ms`. It never starts; the model is told why.
    let run = s.run(&session, "call sleep {\"ms\": \"soon\"}").await;
    assert_eq!(run.status(), RunStatus::Completed, "{run:?}");
    let events = s.events(&session).await;
    assert!(!events.iter().any(|e| matches!(e.body, EventBody::ToolCallStarted { .. })));
    let (out, is_error) = completed_outputs(&events).pop().unwrap();
    assert!(is_error && out.contains("do not match the schema of `sleep`") && out.contains("/ms"), "{out}");
    let run = s.run(&session, "badargs echo").await;
    assert_eq!(run.status(), RunStatus::Completed, "{run:?}");
    let run = s.run(&session, "call launch_rockets {}").await;
    assert_eq!(run.status(), RunStatus::Completed, "{run:?}");
    let outputs = completed_outputs(&s.events(&session).await);
    assert_eq!(outputs.len(), 3);
    assert!(outputs[1].1 && outputs[1].0.contains("not valid JSON"), "{outputs:?}");
    assert!(outputs[2].1 && outputs[2].0.contains("unknown tool `launch_rockets`"), "{outputs:?}");
    assert!(outputs[2].0.contains("echo, sleep"), "the error lists the tools that exist");
}

#[tokio::test]
async fn limits_end_runs_with_stable_codes_and_truncation_is_recorded() {
    let s = setup(EngineOptions { max_tool_output_bytes: 10, ..EngineOptions::default() });
    let spec = format!("{BASE}limits: {{max_steps: 3}}\n");
    let session = s.session(&spec).await;
    let run = s.run(&session, "repeat 5 echo {\"text\":\"x\"}").await;
    assert_eq!(run.status(), RunStatus::Failed);
    assert_eq!(run.state.error.as_ref().unwrap().code, "max_steps_exceeded");
    assert_eq!(run.state.steps, 3);
    let run = s.run(&session, "call echo {\"text\":\"a long output that does not fit\"}").await;
    assert_eq!(run.status(), RunStatus::Completed);
    let outputs = completed_outputs(&s.events(&session).await);
    let last = &outputs.last().unwrap().0;
    assert!(last.starts_with("a long out") && last.contains("output truncated: 10 of 31 bytes"), "{last}");

    let wall = s
        .session(&BASE.replace("name: a", "name: w").replace("tools:", "limits: {max_wall_time_secs: 1}\ntools:"))
        .await;
    let run = s.run(&wall, "call sleep {\"ms\": 1500}").await;
    assert_eq!(run.status(), RunStatus::Failed, "{run:?}");
    assert_eq!(run.state.error.as_ref().unwrap().code, "max_wall_time_exceeded");
}

#[tokio::test]
async fn cancel_interrupts_a_streaming_model_call() {
    let s = setup(EngineOptions::default());
    // 200 words at 200 ms each: the model call would take 40 s.
    let slow = BASE.replace("{provider: scripted, name: s}", "{provider: scripted, name: s, chunk_delay_ms: 200}");
    let session = s.session(&slow).await;
    let text = vec!["word"; 200].join(" ");
    let run = s.engine.create_run(&s.tenant, "test", &session, vec![Message::User { content: text }]).await.unwrap();
    let mut deltas = s.engine.subscribe_deltas();
    tokio::time::timeout(Duration::from_secs(10), deltas.recv()).await.expect("the model starts streaming").unwrap();
    s.engine.cancel_run(&s.tenant, "test", &run.id, "user changed their mind").await.unwrap();
    let run = s.engine.wait_for_run(&s.tenant, &run.id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(run.status(), RunStatus::Cancelled, "the model call was interrupted: {run:?}");
    let events = s.events(&session).await;
    assert!(!events.iter().any(|e| matches!(e.body, EventBody::ModelResponded { .. })), "no partial response recorded");
    assert!(
        matches!(&events.last().unwrap().body, EventBody::RunCancelled { reason } if reason == "user changed their mind")
    );
    // Cancelling again is refused with a clear error; nothing is appended.
    let err = s.engine.cancel_run(&s.tenant, "test", &run.id, "again").await.unwrap_err();
    assert!(err.to_string().contains("already cancelled"), "{err}");
    assert_eq!(s.events(&session).await.len(), events.len());
}

#[tokio::test]
async fn an_unreachable_model_fails_the_run_with_a_clear_error() {
    let s = setup(EngineOptions::default());
    // A port nothing listens on: connection refused, retried, then a failed run.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let spec = format!(
        "name: o\nmodel: {{provider: openai, name: m, base_url: \"http://127.0.0.1:{port}/v1\", max_retries: 1, timeout_secs: 5}}\n"
    );
    let session = s.session(&spec).await;
    let run = s.run(&session, "hello").await;
    assert_eq!(run.status(), RunStatus::Failed, "{run:?}");
    let err = run.state.error.unwrap();
    assert_eq!(err.code, "model_unreachable", "{err:?}");
    let audit = s.engine.verify_session(&s.tenant, &session).await.unwrap();
    assert!(audit.ok);
}

#[tokio::test]
async fn a_missing_api_key_variable_is_named() {
    let s = setup(EngineOptions::default());
    let spec = "name: k\nmodel: {provider: openai, name: m, base_url: \"http://127.0.0.1:9/v1\", api_key_env: STEAD_TEST_SURELY_UNSET_VAR}\n";
    let session = s.session(spec).await;
    let run = s.run(&session, "hello").await;
    assert_eq!(run.status(), RunStatus::Failed);
    let err = run.state.error.unwrap();
    assert!(err.message.contains("STEAD_TEST_SURELY_UNSET_VAR"), "{err:?}");
}

#[tokio::test]
async fn parallel_tool_calls_run_together_and_are_all_recorded() {
    let s = setup(EngineOptions::default());
    let session = s.session(BASE).await;
    let run = s.run(&session, "parallel echo clock echo").await;
    assert_eq!(run.status(), RunStatus::Completed, "{run:?}");
    let events = s.events(&session).await;
    let started = events.iter().filter(|e| matches!(e.body, EventBody::ToolCallStarted { .. })).count();
    assert_eq!(started, 3);
    // All intents are recorded in the same commit as the model response, before any result.
    let first_result = events.iter().position(|e| matches!(e.body, EventBody::ToolCallCompleted { .. })).unwrap();
    let last_start = events.iter().rposition(|e| matches!(e.body, EventBody::ToolCallStarted { .. })).unwrap();
    assert!(last_start < first_result);
}
