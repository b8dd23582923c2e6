//! Figure 6: how long an approved tool call takes to get going again — from just before a
//! person's `approve` is handed to the engine to the moment the model is called again (the
//! tool has then run and its result is recorded), and to the moment the tool itself starts.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use stead_core::event::{ApprovalDecision, EventBody};
use stead_core::ids::SessionId;
use stead_core::message::ToolDef;
use stead_core::run::RunStatus;
use stead_engine::{Decider, DecisionInput, Tool, ToolContext, ToolOutput, ToolRegistry};
use stead_store::Store;
use tokio::sync::mpsc;

use crate::harness::{Harness, durability};

const GATED: &str = "name: gated\nmodel: {provider: scripted, name: bench}\ntools:\n  \
                     - {name: echo, type: builtin, require_approval: always}\n";

/// A built-in tool that reports the moment each of its calls starts.
struct Stamped {
    inner: Arc<dyn Tool>,
    starts: mpsc::UnboundedSender<Instant>,
}

#[async_trait]
impl Tool for Stamped {
    fn def(&self) -> ToolDef {
        self.inner.def()
    }
    fn idempotent(&self) -> bool {
        self.inner.idempotent()
    }
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> ToolOutput {
        let _ = self.starts.send(Instant::now());
        self.inner.call(args, ctx).await
    }
}

pub struct Approval {
    /// Approve → the next model call starts.
    pub to_model: Vec<Duration>,
    /// Approve → the approved tool starts.
    pub to_tool: Vec<Duration>,
    /// Approve → `decide_approval` returned (its append is durable).
    pub to_decided: Vec<Duration>,
    /// Approve → the commit of the tool's intent (`tool_call_started`) is seen.
    pub to_intent: Vec<Duration>,
    /// Approve → the commit of the tool's result (`tool_call_completed`) is seen.
    pub to_result: Vec<Duration>,
}

struct Sample {
    decided: Duration,
    tool: Duration,
    model: Duration,
    intent: Duration,
    result: Duration,
}

pub async fn approval(base: &Path, samples: usize) -> anyhow::Result<Approval> {
    let mut tools = ToolRegistry::with_builtins();
    let echo = tools.get("echo").cloned().context("no built-in echo")?;
    let (tx, mut starts) = mpsc::unbounded_channel();
    tools.register(Arc::new(Stamped { inner: echo, starts: tx }));
    let mut h = Harness::start_with(base, true, tools, durability())?;
    let agent = h.agent(GATED).await?;
    let session = h.session(&agent).await?;
    for _ in 0..3 {
        sample(&mut h, &mut starts, &session).await?;
    }
    let mut out = Approval {
        to_model: Vec::with_capacity(samples),
        to_tool: Vec::with_capacity(samples),
        to_decided: Vec::with_capacity(samples),
        to_intent: Vec::with_capacity(samples),
        to_result: Vec::with_capacity(samples),
    };
    for _ in 0..samples {
        let s = sample(&mut h, &mut starts, &session).await?;
        out.to_decided.push(s.decided);
        out.to_tool.push(s.tool);
        out.to_model.push(s.model);
        out.to_intent.push(s.intent);
        out.to_result.push(s.result);
    }
    h.close().await;
    Ok(out)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Instant>, what: &str) -> anyhow::Result<Instant> {
    match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
        Ok(Some(at)) => Ok(at),
        Ok(None) => bail!("the {what} observer closed"),
        Err(_) => bail!("no {what} within 60 s of the approval"),
    }
}

/// One approval: a run calls the gated `echo` and waits; the call is approved and the time
/// until the tool starts and until the model is called again is taken.
async fn sample(
    h: &mut Harness,
    starts: &mut mpsc::UnboundedReceiver<Instant>,
    session: &SessionId,
) -> anyhow::Result<Sample> {
    let run = h.create_run(session, r#"call echo {"text":"x"}"#).await?;
    let waiting = h.settle(&run.id, RunStatus::AwaitingApproval).await?;
    let approval = waiting
        .state
        .pending
        .iter()
        .find_map(|p| p.approval.as_ref().filter(|a| a.decision.is_none()).map(|a| a.id))
        .context("a run awaiting approval without an open approval")?;
    while h.calls.try_recv().is_ok() {}
    while starts.try_recv().is_ok() {}
    // When the tool's intent and result commits reach the commit stream.
    let mut commits = h.store.subscribe();
    let run_id = run.id;
    let watcher = tokio::spawn(async move {
        let (mut intent, mut result) = (None, None);
        while result.is_none() {
            let Ok(c) = commits.recv().await else { break };
            let now = Instant::now();
            for e in c.events.iter().filter(|e| e.run_id == Some(run_id)) {
                match e.body {
                    EventBody::ToolCallStarted { .. } => intent = intent.or(Some(now)),
                    EventBody::ToolCallCompleted { .. } => result = result.or(Some(now)),
                    _ => {}
                }
            }
        }
        (intent, result)
    });
    let decider = Decider { id: "bench".into(), roles: vec!["*".into()] };
    let input = DecisionInput { decision: ApprovalDecision::Approve, reason: None, arguments: None, output: None };
    let t0 = Instant::now();
    h.engine.decide_approval(&h.tenant, &decider, &approval, input).await?;
    let decided = t0.elapsed();
    let tool = next(starts, "tool start").await? - t0;
    let model = next(&mut h.calls, "model call").await? - t0;
    let (intent, result) = tokio::time::timeout(Duration::from_secs(60), watcher).await??;
    let (Some(intent), Some(result)) = (intent, result) else { bail!("the tool's commits were not seen") };
    h.settle(&run.id, RunStatus::Completed).await?;
    Ok(Sample { decided, tool, model, intent: intent - t0, result: result - t0 })
}
