//! An in-process engine over a fresh SQLite store (default durability), with an optional
//! observer on every model call.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use stead_core::agent::SpecFormat;
use stead_core::event::EventBody;
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_core::message::Message;
use stead_core::run::RunStatus;
use stead_engine::{Engine, EngineOptions, ToolRegistry};
use stead_model::{ModelProvider, ModelRequest, ModelResponse, ProviderDefaults, Providers, ScriptedModel};
use stead_store::{RunRecord, Store};
use stead_store_sqlite::{Durability, SqliteOptions, SqliteStore};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::timed::TimedStore;

/// The durability every measurement uses: the store's default (`full`) unless
/// `STEAD_BENCH_DURABILITY` says otherwise (for diagnosis only; the figures are promised
/// at `full`).
pub fn durability() -> Durability {
    std::env::var("STEAD_BENCH_DURABILITY")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(SqliteOptions::new(".").durability)
}

/// The scripted model, timestamping the moment each call starts.
struct Observed {
    inner: ScriptedModel,
    calls: mpsc::UnboundedSender<Instant>,
}

#[async_trait]
impl ModelProvider for Observed {
    async fn complete(
        &self,
        req: &ModelRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ModelResponse, stead_model::Error> {
        let _ = self.calls.send(Instant::now());
        self.inner.complete(req, on_delta).await
    }
}

pub struct Harness {
    pub engine: Engine,
    /// The store itself (the engine goes through `timed`).
    pub store: Arc<SqliteStore>,
    /// What the engine uses: the store, with its appends timed.
    pub timed: Arc<TimedStore>,
    pub tenant: TenantId,
    /// When each model call started (only with `observe`).
    pub calls: mpsc::UnboundedReceiver<Instant>,
    stop: CancellationToken,
    dispatcher: tokio::task::JoinHandle<()>,
    dir: TempDir,
}

impl Harness {
    /// A fresh data directory under `base`, the store with default options, the engine with
    /// the built-in tools, and its dispatcher running. With `observe`, model calls go through
    /// a wrapper of the scripted model that reports when each starts.
    pub fn start(base: &Path, observe: bool) -> anyhow::Result<Self> {
        Self::start_with(base, observe, ToolRegistry::with_builtins(), durability())
    }

    /// As `start`, with the engine's tool registry and the store's durability given.
    pub fn start_with(base: &Path, observe: bool, tools: ToolRegistry, durability: Durability) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("stead-bench-")
            .tempdir_in(base)
            .with_context(|| format!("cannot create a temporary directory in {}", base.display()))?;
        let store = SqliteStore::open(SqliteOptions::new(dir.path()).durability(durability))?;
        let (tx, calls) = mpsc::unbounded_channel();
        let providers = if observe {
            Providers::with_override(
                ProviderDefaults::default(),
                Arc::new(Observed { inner: ScriptedModel::default(), calls: tx }),
            )
        } else {
            Providers::new(ProviderDefaults::default())
        };
        let timed = Arc::new(TimedStore::new(store.clone()));
        let engine = Engine::new(
            timed.clone() as Arc<dyn Store>,
            providers,
            tools,
            EngineOptions { worker_id: "bench".into(), ..EngineOptions::default() },
        );
        let stop = CancellationToken::new();
        let dispatcher = tokio::spawn({
            let (engine, stop) = (engine.clone(), stop.clone());
            async move { engine.run(stop).await }
        });
        Ok(Self { engine, store, timed, tenant: TenantId::default_tenant(), calls, stop, dispatcher, dir })
    }

    /// Applies `spec` (YAML) and opens a session on it.
    pub async fn agent(&self, spec: &str) -> anyhow::Result<String> {
        let (agent, _) = self.engine.apply_agent(&self.tenant, spec, SpecFormat::Yaml).await?;
        Ok(agent.name)
    }

    pub async fn session(&self, agent: &str) -> anyhow::Result<SessionId> {
        Ok(self.engine.create_session(&self.tenant, "bench", agent, None, serde_json::json!({})).await?.id)
    }

    pub async fn create_run(&self, session: &SessionId, text: &str) -> anyhow::Result<RunRecord> {
        let input = vec![Message::User { content: text.to_owned() }];
        Ok(self.engine.create_run(&self.tenant, "bench", session, input).await?)
    }

    /// Waits until the run stops being queued/running; fails if it is not then in `want`.
    pub async fn settle(&self, run: &RunId, want: RunStatus) -> anyhow::Result<RunRecord> {
        let rec = self.engine.wait_for_run(&self.tenant, run, Duration::from_secs(600)).await?;
        if rec.status() != want {
            bail!(
                "run {run} ended {} (wanted {}): {:?}",
                rec.status().as_str(),
                want.as_str(),
                rec.state.error.as_ref().map(|e| &e.message)
            );
        }
        Ok(rec)
    }

    /// Stops the dispatcher and closes the store; the data directory stays until the
    /// returned guard is dropped.
    pub async fn close(self) -> TempDir {
        let Harness { engine, store, timed, stop, dispatcher, dir, calls, .. } = self;
        stop.cancel();
        let _ = dispatcher.await;
        drop(calls);
        drop(engine);
        drop(timed);
        // Joins the writer thread and closes every connection.
        drop(store);
        dir
    }
}

/// Bytes of what users, models and tools said in an event: input text, model content, tool
/// names and arguments, tool outputs. Everything else an event holds is overhead.
pub fn payload_bytes(body: &EventBody) -> usize {
    match body {
        EventBody::RunCreated { input, .. } => input
            .iter()
            .map(|m| match m {
                Message::User { content } | Message::System { content } => content.len(),
                _ => 0,
            })
            .sum(),
        EventBody::ModelResponded { content, tool_calls, .. } => {
            content.as_deref().map_or(0, str::len)
                + tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>()
        }
        EventBody::ToolCallCompleted { output, .. } => output.len(),
        _ => 0,
    }
}
