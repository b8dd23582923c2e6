//! Tool-call ids a model gets wrong (issue 8): an id repeated from an earlier turn, and no ids
//! at all. Each call must still get an id of its own when recorded, so every result pairs with
//! its own call, nothing is refused or re-run, and the run finishes — on a real SQLite store,
//! with a model server stand-in that answers like such a provider.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use stead_core::agent::SpecFormat;
use stead_core::event::EventBody;
use stead_core::ids::TenantId;
use stead_core::message::{Message, ToolCall, Usage};
use stead_core::run::RunStatus;
use stead_engine::{Engine, EngineOptions, ToolRegistry};
use stead_model::{ModelProvider, ModelRequest, ModelResponse, ProviderDefaults, Providers};
use stead_store::Store;
use stead_store_sqlite::{SqliteOptions, SqliteStore};
use tokio_util::sync::CancellationToken;

const AGENT: &str = "name: a\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: echo, type: builtin}\n";

/// Calls `echo` with the given id until it has seen `calls_per_run` results since the last
/// user message, then answers; records every request it gets.
struct Careless {
    id: &'static str,
    calls_per_run: usize,
    seen: Mutex<Vec<Vec<Message>>>,
}

#[async_trait]
impl ModelProvider for Careless {
    async fn complete(
        &self,
        req: &ModelRequest,
        _on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ModelResponse, stead_model::Error> {
        let messages: Vec<Message> = req.messages.iter().map(|m| (**m).clone()).collect();
        let last_user = messages.iter().rposition(|m| matches!(m, Message::User { .. })).unwrap_or(0);
        let results = messages[last_user..].iter().filter(|m| matches!(m, Message::Tool { .. })).count();
        self.seen.lock().unwrap().push(messages);
        let (content, tool_calls) = if results < self.calls_per_run {
            let call = ToolCall {
                id: self.id.into(),
                name: "echo".into(),
                arguments: format!(r#"{{"text": "result {results}"}}"#),
            };
            (None, vec![call])
        } else {
            (Some("done".to_owned()), Vec::new())
        };
        Ok(ModelResponse {
            content,
            tool_calls,
            usage: Usage::default(),
            finish_reason: "stop".into(),
            model: "careless".into(),
        })
    }
}

async fn run_with(id: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let model = Arc::new(Careless { id, calls_per_run: 3, seen: Mutex::new(Vec::new()) });
    let providers = Providers::with_override(ProviderDefaults::default(), model.clone());
    let options = EngineOptions { poll_interval: Duration::from_millis(20), ..EngineOptions::default() };
    let engine = Engine::new(store.clone(), providers, ToolRegistry::with_builtins(), options);
    let stop = CancellationToken::new();
    let dispatcher = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run(stop).await }
    });
    let tenant = TenantId::default_tenant();
    let (agent, _) = engine.apply_agent(&tenant, AGENT, SpecFormat::Yaml).await.unwrap();
    let session = engine.create_session(&tenant, "t", &agent.name, None, serde_json::json!({})).await.unwrap().id;
    // Two runs in one session: the second's calls must not reuse the first's ids either.
    for text in ["first", "second"] {
        let run =
            engine.create_run(&tenant, "t", &session, vec![Message::User { content: text.into() }]).await.unwrap();
        let done = engine.wait_for_run(&tenant, &run.id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(done.status(), RunStatus::Completed, "id {id:?}: {done:?}");
        assert_eq!(done.state.output.as_deref(), Some("done"));
    }
    stop.cancel();
    dispatcher.await.unwrap();

    let events = store.read_events(&tenant, &session, 0, 1000).await.unwrap();
    let mut call_ids = Vec::new();
    let mut started = Vec::new();
    let mut completed = Vec::new();
    for e in &events {
        match &e.body {
            EventBody::ModelResponded { tool_calls, .. } => call_ids.extend(tool_calls.iter().map(|c| c.id.clone())),
            EventBody::ToolCallStarted { call_id, .. } => started.push(call_id.clone()),
            EventBody::ToolCallCompleted { call_id, .. } => completed.push(call_id.clone()),
            _ => {}
        }
    }
    assert_eq!(call_ids.len(), 6, "three calls per run, recorded once each (none re-run): {call_ids:?}");
    let unique: std::collections::HashSet<&String> = call_ids.iter().collect();
    assert_eq!(unique.len(), 6, "every recorded call has an id of its own: {call_ids:?}");
    assert_eq!(started, call_ids, "each call started once, under its recorded id");
    assert_eq!(completed, call_ids, "each result pairs with its own call");
    if !id.is_empty() {
        assert_eq!(call_ids[0], id, "a usable provider id is kept the first time");
    }
    // What the model was sent last: every result right after its own call, in order.
    let last = model.seen.lock().unwrap().last().cloned().unwrap();
    let mut expected_results = Vec::new();
    for m in &last {
        match m {
            Message::Assistant { tool_calls, .. } => expected_results.extend(tool_calls.iter().map(|c| c.id.clone())),
            Message::Tool { call_id, content, .. } => {
                assert_eq!(Some(call_id), expected_results.first(), "a result out of place: {last:#?}");
                expected_results.remove(0);
                assert!(content.starts_with("result "), "{content}");
            }
            _ => {}
        }
    }
    assert!(expected_results.is_empty(), "calls without results in the context: {expected_results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_repeated_across_turns_and_runs_gets_a_new_one() {
    run_with("dup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_ids_get_distinct_ids_on_every_turn() {
    run_with("").await;
}
