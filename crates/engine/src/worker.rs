//! The dispatcher, which claims runnable runs, and the run driver, which loops
//! `decide → execute → append` for one claimed run until it finishes or must wait.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use stead_core::agent::AgentSpec;
use stead_core::agent::{DEFAULT_APPROVAL_TIMEOUT_SECS, DEFAULT_APPROVER_ROLE};
use stead_core::context::build_context;
use stead_core::event::{Actor, ErrorInfo, Event, EventBody, NewEvent};
use stead_core::ids::ApprovalId;
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_core::message::{Message, ToolCall};
use stead_core::run::{ApprovalRequest, Decision, RunState, RunStatus, ToolClass, ToolPolicy, decide, idempotency_key};
use stead_core::time::Timestamp;
use stead_model::{ErrorKind, ModelRequest, RetryPolicy, complete_with_retry};
use stead_store::{AppendRequest, Claim, Committed, Fence};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::tools::{ToolContext, ToolOutput};
use crate::toolset::{AgentTools, Outcome};
use crate::{Delta, Engine, backoff, fault};

/// Whether a commit may have made a run claimable: new or resumed input (`queued`), or a
/// finished run that was blocking the next one in its session.
fn wakes_workers(c: &Committed) -> bool {
    c.runs.iter().any(|(_, s)| *s == RunStatus::Queued || s.is_terminal())
}

/// A cancel request for a run this process drives interrupts its current model call.
fn forward_cancel_requests(engine: &Engine, c: &Committed) {
    for e in c.events.iter() {
        if let (EventBody::RunCancelRequested { .. }, Some(run)) = (&e.body, &e.run_id) {
            engine.interrupt_active(run);
        }
    }
}

/// Where the dispatcher is in its life, for readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatcherState {
    /// [`Engine::run`] was not called (yet).
    NotStarted,
    Running,
    /// It returned (shutdown) or panicked: nothing claims runs in this process any more.
    Stopped,
}

#[derive(Debug, Default)]
pub(crate) struct DispatcherFlag(AtomicU8);

impl DispatcherFlag {
    /// Marks the dispatcher running until the guard drops — on return or while unwinding.
    pub(crate) fn running(&self) -> impl Drop + '_ {
        struct Running<'a>(&'a DispatcherFlag);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                (self.0).0.store(2, Ordering::SeqCst);
            }
        }
        self.0.store(1, Ordering::SeqCst);
        Running(self)
    }

    pub(crate) fn state(&self) -> DispatcherState {
        match self.0.load(Ordering::SeqCst) {
            0 => DispatcherState::NotStarted,
            1 => DispatcherState::Running,
            _ => DispatcherState::Stopped,
        }
    }
}

pub(crate) async fn dispatch(engine: Engine, cancel: CancellationToken) {
    let (store, _, _, options) = engine.inner_parts();
    let (store, options) = (store.clone(), options.clone());
    let mut commits = store.subscribe();
    // A semaphore panics beyond MAX_PERMITS; the server bounds the option far below that.
    let slots = Arc::new(Semaphore::new(options.max_concurrent_runs.min(Semaphore::MAX_PERMITS)));
    let freed = Arc::new(Notify::new());
    tracing::info!(worker = %options.worker_id, "dispatcher started");
    let mut last_sweep = tokio::time::Instant::now() - options.poll_interval;
    'outer: loop {
        options.faults.at(fault::DISPATCHER_LOOP, None).await;
        let free = slots.available_permits();
        // Expiry is checked at the poll rate, not on every wake-up (those come per commit).
        if last_sweep.elapsed() >= options.poll_interval {
            last_sweep = tokio::time::Instant::now();
            match engine.expire_due_approvals().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "approvals expired"),
                Err(e) => tracing::warn!(error = %e, "expiring approvals failed; will retry"),
            }
        }
        if free > 0 {
            match store.claim_runs(&options.worker_id, options.lease, free).await {
                Ok(claims) => {
                    let full = claims.len() == free;
                    for claim in claims {
                        let Ok(permit) = slots.clone().try_acquire_owned() else { break };
                        let (engine, freed) = (engine.clone(), freed.clone());
                        tokio::spawn(async move {
                            drive(engine, claim).await;
                            drop(permit);
                            freed.notify_one();
                        });
                    }
                    if full {
                        continue; // there may be more waiting
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming runs failed; retrying after the poll interval"),
            }
        }
        // Sleep until something may have become claimable.
        let poll_at = tokio::time::Instant::now() + options.poll_interval;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break 'outer,
                _ = tokio::time::sleep_until(poll_at) => break,
                _ = freed.notified() => break,
                r = commits.recv() => match r {
                    Ok(c) => {
                        forward_cancel_requests(&engine, &c);
                        if wakes_workers(&c) { break }
                    }
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => break 'outer,
                }
            }
        }
        // Coalesce a burst of commits into one claim.
        loop {
            match commits.try_recv() {
                Ok(c) => forward_cancel_requests(&engine, &c),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    }
    tracing::info!("dispatcher stopped");
}

/// Why a driver stopped before its run finished or started waiting.
#[derive(Debug)]
enum Stop {
    /// Another worker holds the run now.
    LeaseLost,
    /// Someone else finished the run (e.g. cancelled it while nobody held it).
    Finished,
    Store(stead_store::Error),
}

/// While a run is driven: registered as active (so a cancel interrupts it) and its lease
/// renewed. Dropping this — on any path out of [`drive`], a panic included — undoes both.
struct Supervision {
    engine: Engine,
    run: RunId,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Supervision {
    fn drop(&mut self) {
        self.keeper.abort();
        self.engine.unregister_active(&self.run);
    }
}

/// Drives one claimed run. A panic anywhere in its driver is contained here: the run ends
/// `failed` with an `internal` error (which also frees its lease), never a zombie whose
/// lease is renewed for ever.
async fn drive(engine: Engine, claim: Claim) {
    let (run_id, token) = (claim.run.id, claim.token);
    let (tenant, session_id) = (claim.session.tenant_id.clone(), claim.session.id);
    let cancel = CancellationToken::new();
    let lost = Arc::new(AtomicBool::new(false));
    engine.register_active(run_id, cancel.clone());
    let keeper = tokio::spawn(keep_lease(engine.clone(), run_id, token, cancel.clone(), lost.clone()));
    let _supervision = Supervision { engine: engine.clone(), run: run_id, keeper };
    let driven = AssertUnwindSafe(async {
        let mut driver = RunDriver::start(engine.clone(), claim, cancel, lost).await?;
        driver.drive().await
    })
    .catch_unwind()
    .await;
    match driven {
        Ok(Ok(()) | Err(Stop::Finished)) => {}
        Ok(Err(Stop::LeaseLost)) => tracing::warn!(run = %run_id, "lease lost; another worker continues this run"),
        Ok(Err(Stop::Store(e))) => {
            tracing::error!(run = %run_id, error = %e, "run stopped on a storage error; it resumes when its lease expires")
        }
        Err(panic) => {
            let why = panic_message(panic.as_ref());
            tracing::error!(run = %run_id, panic = %why, "the run's driver panicked; failing the run");
            fail_panicked_run(&engine, &tenant, session_id, run_id, token).await;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_owned(),
    }
}

/// Records `run_failed` (`internal`) for a run whose driver panicked, under its fence: a run
/// another worker took over meanwhile is left alone. The panic's text stays in the server's
/// log — it may quote anything, so it is not put in the session's. If the failure cannot be
/// recorded the lease is given back, so the run is retried rather than wedged.
async fn fail_panicked_run(engine: &Engine, tenant: &TenantId, session_id: SessionId, run_id: RunId, token: u64) {
    let (store, _, _, options) = engine.inner_parts();
    let error = ErrorInfo::new("internal", "the run stopped on an internal error (details are in the server log)");
    for attempt in 0..50u32 {
        let head = match store.get_session(tenant, &session_id).await {
            Ok(s) => s.head_seq,
            Err(e) => {
                tracing::error!(run = %run_id, error = %e, "cannot read the session to fail the run");
                break;
            }
        };
        let req = AppendRequest {
            tenant_id: tenant.clone(),
            session_id,
            expected_head: head,
            events: vec![NewEvent {
                run_id: Some(run_id),
                actor: Actor::worker(&options.worker_id),
                body: EventBody::RunFailed { error: error.clone() },
            }],
            fence: Some(Fence { run_id, token, extend_lease: options.lease }),
            idempotency: None,
        };
        match store.append(req).await {
            // A finished run keeps no lease.
            Ok(_) => return,
            Err(stead_store::Error::Conflict { .. }) => backoff(attempt.min(8)).await,
            // Another worker holds the run, or it ended meanwhile: not ours to fail.
            Err(stead_store::Error::Fenced { .. }) => return,
            Err(e) => {
                tracing::error!(run = %run_id, error = %e, "cannot record the run's failure");
                break;
            }
        }
    }
    if let Err(e) = store.release_lease(&run_id, token).await {
        tracing::warn!(run = %run_id, error = %e, "cannot release the lease; it expires on its own");
    }
}

/// Renews the lease while the run is driven; a refused renewal means another worker took
/// the run over, so this one must stop writing.
async fn keep_lease(engine: Engine, run: RunId, token: u64, cancel: CancellationToken, lost: Arc<AtomicBool>) {
    let (store, _, _, options) = engine.inner_parts();
    let every = options.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        options.faults.at(fault::LEASE_RENEWAL, Some(&run)).await;
        match store.renew_lease(&run, token, options.lease).await {
            Ok(()) => {}
            Err(stead_store::Error::Fenced { .. } | stead_store::Error::NotFound { .. }) => {
                lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            Err(e) => tracing::warn!(run = %run, error = %e, "lease renewal failed; will retry"),
        }
    }
}

struct RunDriver {
    engine: Engine,
    tenant: TenantId,
    session_id: SessionId,
    run_id: RunId,
    token: u64,
    agent: Arc<AgentSpec>,
    tools: Arc<AgentTools>,
    state: RunState,
    head: u64,
    /// The recent conversation as the model may see it (bounded). Shared with each model
    /// request's context, so building one does not deep-clone the conversation.
    history: Vec<Arc<Message>>,
    /// Where each message of `history` was added: (event seq, index in the event), so a
    /// conversation edit (`item_removed`) can take it out.
    history_keys: Vec<(u64, u32)>,
    /// Calls of the history without a result yet, and messages held until they have one.
    open_calls: Vec<String>,
    held: Vec<Event>,
    /// Calls whose results appear further on in the window loaded at start.
    results_ahead: std::collections::HashSet<String>,
    actor: Actor,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
}

impl RunDriver {
    async fn start(
        engine: Engine,
        claim: Claim,
        cancel: CancellationToken,
        lost: Arc<AtomicBool>,
    ) -> Result<Self, Stop> {
        let tenant = claim.session.tenant_id.clone();
        let session_id = claim.session.id;
        // A run may use another agent version than its session's (per-run settings).
        let (agent_name, agent_version) = match &claim.run.state.agent {
            Some(a) => (a.name.clone(), a.version),
            None => (claim.session.agent.clone(), claim.session.agent_version),
        };
        let agent = engine
            .agent_spec(&tenant, &agent_name, agent_version)
            .await
            .map_err(|e| Stop::Store(stead_store::Error::Backend(e.to_string())))?;
        let (store, _, _, options) = engine.inner_parts();
        let window = store
            .read_message_window(&tenant, &session_id, claim.session.head_seq, agent.context.max_messages)
            .await
            .map_err(Stop::Store)?;
        let tools = engine.agent_tools(&tenant, &agent_name, agent_version, &agent).await;
        let actor = Actor::worker(&options.worker_id);
        let mut driver = RunDriver {
            tenant,
            session_id,
            run_id: claim.run.id,
            token: claim.token,
            tools,
            state: claim.run.state,
            head: claim.session.head_seq,
            history: Vec::new(),
            history_keys: Vec::new(),
            open_calls: Vec::new(),
            held: Vec::new(),
            results_ahead: std::collections::HashSet::new(),
            actor,
            cancel,
            lost,
            agent,
            engine,
        };
        let ordered = conversation_order(window, driver.run_id, driver.state.created_seq);
        driver.results_ahead = ordered
            .iter()
            .flat_map(|e| match &e.body {
                EventBody::ToolCallCompleted { call_id, .. } => vec![call_id.clone()],
                body => answered_calls(body).into_iter().map(str::to_owned).collect(),
            })
            .collect();
        for e in &ordered {
            driver.remember(e);
        }
        Ok(driver)
    }

    /// What the agent says about this call: where it runs and whether it needs approval.
    fn policy(&self, call: &ToolCall) -> ToolPolicy {
        self.tools.policy(call)
    }

    fn decide(&self, state: &RunState) -> Decision {
        decide(&self.agent, state, Timestamp::now(), &|c| self.policy(c))
    }

    /// The `approval_requested` events for `requests`, with the role and expiry the tool's
    /// spec sets.
    fn approval_bodies(&self, requests: Vec<ApprovalRequest>) -> Vec<EventBody> {
        let now = Timestamp::now();
        requests
            .into_iter()
            .map(|q| {
                let spec = self.agent.tool(&q.call.name);
                let role = spec.and_then(|t| t.approver_role.clone()).unwrap_or_else(|| DEFAULT_APPROVER_ROLE.into());
                let timeout = spec.and_then(|t| t.approval_timeout_secs).unwrap_or(DEFAULT_APPROVAL_TIMEOUT_SECS);
                EventBody::ApprovalRequested {
                    approval_id: ApprovalId::new(),
                    kind: q.kind,
                    call_id: q.call.id,
                    name: q.call.name,
                    arguments: q.call.arguments,
                    role,
                    expires_at: now.plus(Duration::from_secs(timeout)),
                    reason: q.reason,
                }
            })
            .collect()
    }

    async fn drive(&mut self) -> Result<(), Stop> {
        loop {
            if self.lost.load(Ordering::SeqCst) {
                return Err(Stop::LeaseLost);
            }
            match self.decide(&self.state) {
                Decision::Idle => return Ok(()),
                Decision::CallModel { step } => self.call_model(step).await?,
                Decision::RunTools { calls, to_start } => self.run_tools(calls, to_start).await?,
                Decision::RequestApprovals { requests } => {
                    let bodies = self.approval_bodies(requests);
                    self.commit(bodies).await?
                }
                Decision::RecordResults { results } => {
                    let bodies = results
                        .into_iter()
                        .map(|(call, output, is_error)| EventBody::ToolCallCompleted {
                            call_id: call.id,
                            name: call.name,
                            output,
                            is_error,
                        })
                        .collect();
                    self.commit(bodies).await?
                }
                Decision::AwaitApproval { approval_ids } => {
                    self.commit(vec![EventBody::RunAwaitingApproval { approval_ids }]).await?
                }
                Decision::AwaitClient { calls } => {
                    self.commit(vec![EventBody::RunRequiresAction { tool_calls: calls }]).await?
                }
                Decision::Finish { output } => self.commit(vec![EventBody::RunCompleted { output }]).await?,
                Decision::Fail(error) => self.commit(vec![EventBody::RunFailed { error }]).await?,
                Decision::Cancel { reason } => self.commit(vec![EventBody::RunCancelled { reason }]).await?,
            }
        }
    }

    async fn call_model(&mut self, step: u32) -> Result<(), Stop> {
        self.engine.options().faults.at(fault::BEFORE_MODEL_CALL, Some(&self.run_id)).await;
        if let Err(e) = self.engine.grants().check_spec(&self.tenant, &self.agent) {
            // A grant withdrawn since the spec was applied: nothing of it runs.
            let error = ErrorInfo::new("not_granted", e.to_string());
            return self.commit(vec![EventBody::RunFailed { error }]).await;
        }
        let (_, providers, _, _) = self.engine.inner_parts();
        let provider = match providers.for_spec(&self.agent.model) {
            Ok(p) => p,
            Err(e) => {
                let error = ErrorInfo::new(e.code(), format!("model provider is misconfigured: {e}"));
                return self.commit(vec![EventBody::RunFailed { error }]).await;
            }
        };
        let model = &self.agent.model;
        let request = ModelRequest {
            model: model.name.clone(),
            messages: build_context(&self.agent.instructions, &self.history, &self.agent.context),
            tools: self.tools.defs(),
            temperature: model.temperature,
            max_tokens: model.max_tokens,
            stream: model.stream,
            // With `none` the tools are still offered: the provider keeps the model from calling them.
            tool_choice: model.tool_choice.clone(),
            parallel_tool_calls: model.parallel_tool_calls,
        };
        let policy = RetryPolicy {
            max_retries: model.max_retries,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(20),
        };
        let engine = self.engine.clone();
        let (tenant, session_id, run_id) = (self.tenant.clone(), self.session_id, self.run_id);
        // The pieces' sizes are recorded with the answer, so its stream can be replayed as it
        // went out. A retry starts the text over.
        let chunks = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
        let on_delta = {
            let chunks = chunks.clone();
            move |text: &str| {
                let index = {
                    let mut c = chunks.lock().expect("chunks lock");
                    c.push(text.len() as u32);
                    c.len() as u32 - 1
                };
                let tenant_id = tenant.clone();
                engine.publish_delta(Delta { tenant_id, session_id, run_id, step, index, text: text.to_owned() })
            }
        };
        let on_retry = |attempt: u32, e: &stead_model::Error| {
            chunks.lock().expect("chunks lock").clear();
            tracing::warn!(run = %run_id, attempt, error = %e, "model call failed; retrying");
        };
        let deadline = self.state.created_at.plus(Duration::from_secs(self.agent.limits.max_wall_time_secs));
        let remaining = Duration::from_millis((deadline.millis() - Timestamp::now().millis()).max(0) as u64);
        let result = tokio::select! {
            r = complete_with_retry(provider.as_ref(), &request, &policy, &self.cancel, &on_delta, &on_retry) => r,
            // `decide` turns an exceeded deadline into a failed run on the next turn.
            _ = tokio::time::sleep(remaining) => return Ok(()),
        };
        match result {
            Ok(resp) => {
                let chunks = std::mem::take(&mut *chunks.lock().expect("chunks lock"));
                let streamed: u64 = chunks.iter().map(|&c| u64::from(c)).sum();
                let chunks =
                    if streamed == resp.content.as_deref().map_or(0, str::len) as u64 { chunks } else { Vec::new() };
                let body = EventBody::ModelResponded {
                    step,
                    model: resp.model,
                    content: resp.content,
                    tool_calls: stead_core::message::with_unique_ids(
                        resp.tool_calls,
                        &self.run_id,
                        step,
                        stead_core::message::call_ids(&request.messages),
                    ),
                    usage: resp.usage,
                    finish_reason: resp.finish_reason,
                    chunks,
                };
                // Record the intent for the tools this response asks for in the same commit:
                // intent is durable before the effect, at the cost of no extra fsync.
                let mut tentative = self.state.clone();
                let mut bodies = vec![body.clone()];
                let mut to_run = Vec::new();
                if tentative.apply(Timestamp::now(), &body).is_ok()
                    && let Decision::RunTools { calls, to_start } = self.decide(&tentative)
                {
                    bodies.extend(self.start_bodies(step, &to_start));
                    to_run = calls;
                }
                self.commit(bodies).await?;
                self.engine.options().faults.at(fault::AFTER_MODEL_RECORDED, Some(&self.run_id)).await;
                // Run what this process just recorded the intent for, without going back
                // through `decide`: to `decide`, a started call without a result means "started
                // before a crash", which for a non-idempotent tool is an unknown outcome.
                if !to_run.is_empty() && self.state.cancel_requested.is_none() {
                    return self.run_tools(to_run, Vec::new()).await;
                }
                Ok(())
            }
            Err(e) if e.kind == ErrorKind::Cancelled => {
                if self.lost.load(Ordering::SeqCst) {
                    return Err(Stop::LeaseLost);
                }
                // A cancel request was committed; read it so `decide` sees it.
                self.refresh().await
            }
            Err(e) => {
                let error = ErrorInfo::new(e.code(), format!("model call failed: {e}"));
                self.commit(vec![EventBody::RunFailed { error }]).await
            }
        }
    }

    fn start_bodies(&self, step: u32, calls: &[ToolCall]) -> Vec<EventBody> {
        calls
            .iter()
            .map(|c| EventBody::ToolCallStarted {
                call_id: c.id.clone(),
                name: c.name.clone(),
                idempotency_key: idempotency_key(&self.session_id, &self.run_id, step, &c.id),
            })
            .collect()
    }

    async fn run_tools(&mut self, calls: Vec<ToolCall>, to_start: Vec<ToolCall>) -> Result<(), Stop> {
        if !to_start.is_empty() {
            let bodies = self.start_bodies(self.state.steps, &to_start);
            self.commit(bodies).await?;
        }
        self.engine.options().faults.at(fault::TOOL_STARTED, Some(&self.run_id)).await;
        let runs = calls.iter().map(|call| {
            let key = self
                .state
                .pending
                .iter()
                .find(|p| p.call.id == call.id)
                .and_then(|p| p.idempotency_key.clone())
                .unwrap_or_default();
            self.execute_tool(call, key)
        });
        let outcomes = futures_util::future::join_all(runs).await;
        self.engine.options().faults.at(fault::BEFORE_TOOL_RECORDED, Some(&self.run_id)).await;
        let mut bodies = Vec::new();
        for (call, outcome) in calls.into_iter().zip(outcomes) {
            let out = match outcome {
                Outcome::Known(out) => out,
                // Safe to repeat, but don't loop on a tool that keeps breaking: the model is
                // told, and may call it again.
                Outcome::Unknown(why) if matches!(self.policy(&call).class, ToolClass::Server { idempotent: true }) => {
                    ToolOutput::error(format!("the call's outcome is unknown ({why}); it may be retried"))
                }
                // No result is recorded: `decide` asks a person whether it took effect.
                Outcome::Unknown(why) => {
                    tracing::warn!(run = %self.run_id, call = %call.id, %why, "tool outcome unknown");
                    continue;
                }
            };
            let (_, _, _, options) = self.engine.inner_parts();
            let out = truncate_output(out, options.max_tool_output_bytes);
            bodies.push(EventBody::ToolCallCompleted {
                call_id: call.id,
                name: call.name,
                output: out.content,
                is_error: out.is_error,
            });
        }
        if bodies.is_empty() {
            return Ok(());
        }
        self.commit(bodies).await
    }

    async fn execute_tool(&self, call: &ToolCall, idempotency_key: String) -> Outcome {
        let (_, _, registry, _) = self.engine.inner_parts();
        let ctx = ToolContext {
            tenant_id: self.tenant.clone(),
            session_id: self.session_id,
            run_id: self.run_id,
            idempotency_key,
        };
        let vault = self.engine.options().vault.as_deref();
        self.tools.execute(call, &ctx, registry.http(), vault).await
    }

    /// Compare-and-append with the run's fence. A conflict (someone else appended to the
    /// session, e.g. new input or a cancel request) is read and folded, then the same events
    /// are tried again: what was done must be recorded, never dropped.
    async fn commit(&mut self, bodies: Vec<EventBody>) -> Result<(), Stop> {
        let (store, _, _, options) = self.engine.inner_parts();
        let store = store.clone();
        let lease = options.lease;
        let mut transient = 0u32;
        for attempt in 0u32.. {
            let req = AppendRequest {
                tenant_id: self.tenant.clone(),
                session_id: self.session_id,
                expected_head: self.head,
                events: bodies
                    .iter()
                    .map(|b| NewEvent { run_id: Some(self.run_id), actor: self.actor.clone(), body: b.clone() })
                    .collect(),
                fence: Some(Fence { run_id: self.run_id, token: self.token, extend_lease: lease }),
                idempotency: None,
            };
            match store.append(req).await {
                Ok(events) => {
                    for e in &events {
                        self.absorb(e);
                    }
                    return Ok(());
                }
                Err(stead_store::Error::Conflict { .. }) => {
                    self.refresh().await?;
                    if self.state.status.is_terminal() {
                        return Err(Stop::Finished);
                    }
                    if attempt > 0 {
                        backoff(attempt.min(8)).await;
                    }
                }
                Err(stead_store::Error::Fenced { .. }) => return Err(Stop::LeaseLost),
                Err(e @ stead_store::Error::InvalidTransition { .. }) => {
                    self.refresh().await?;
                    return Err(if self.state.status.is_terminal() { Stop::Finished } else { Stop::Store(e) });
                }
                Err(e @ (stead_store::Error::Unavailable(_) | stead_store::Error::Backend(_))) if transient < 5 => {
                    transient += 1;
                    tracing::warn!(run = %self.run_id, error = %e, "append failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << transient)).await;
                }
                Err(stead_store::Error::LimitExceeded(msg)) if !bodies.iter().any(is_terminal_body) => {
                    // Nothing was written; end the run with the reason instead of looping.
                    let error = ErrorInfo::new("limit_exceeded", msg);
                    return Box::pin(self.commit(vec![EventBody::RunFailed { error }])).await;
                }
                Err(e) => return Err(Stop::Store(e)),
            }
        }
        unreachable!("the loop above only exits by returning")
    }

    /// Reads what others appended since our head and folds it in.
    async fn refresh(&mut self) -> Result<(), Stop> {
        let (store, _, _, _) = self.engine.inner_parts();
        let store = store.clone();
        loop {
            let page = store.read_events(&self.tenant, &self.session_id, self.head, 500).await.map_err(Stop::Store)?;
            if page.is_empty() {
                return Ok(());
            }
            for e in &page {
                self.absorb(e);
            }
        }
    }

    /// Folds one committed event into the driver's view.
    fn absorb(&mut self, e: &Event) {
        if e.run_id == Some(self.run_id)
            && !matches!(e.body, EventBody::RunCreated { .. })
            && let Err(reason) = self.state.apply(e.at, &e.body)
        {
            tracing::error!(run = %self.run_id, seq = e.seq, %reason, "committed event does not fit the run state");
        }
        self.remember(e);
        self.head = self.head.max(e.seq);
    }

    /// Adds an event's messages to the history the model sees. Input of runs queued after
    /// this one is not part of this run's conversation.
    ///
    /// A tool exchange stays together: messages that arrive while calls still wait for
    /// results that are coming (conversation items added mid-run, the input of a run that
    /// carries calls over) are held and join after the results, so the model never sees a
    /// message between a call and its result.
    fn remember(&mut self, e: &Event) {
        if !e.body.is_message() {
            return;
        }
        if matches!(e.body, EventBody::RunCreated { .. })
            && e.run_id != Some(self.run_id)
            && e.seq > self.state.created_seq
        {
            return;
        }
        let answers = answered_calls(&e.body);
        let holdable = matches!(
            e.body,
            EventBody::RunCreated { .. } | EventBody::ItemsAdded { .. } | EventBody::ItemRemoved { .. }
        );
        let waiting = self.open_calls.iter().any(|c| !answers.contains(&c.as_str()) && self.result_coming(c));
        if holdable && waiting {
            self.held.push(e.clone());
            return;
        }
        self.add_messages(e);
        match &e.body {
            EventBody::ModelResponded { tool_calls, .. } => {
                self.open_calls.extend(tool_calls.iter().map(|c| c.id.clone()));
            }
            EventBody::ToolCallCompleted { call_id, .. } => self.open_calls.retain(|c| c != call_id),
            EventBody::RunCreated { .. } => self.open_calls.retain(|c| !answers.contains(&c.as_str())),
            _ => {}
        }
        if !self.held.is_empty() && !self.open_calls.iter().any(|c| self.result_coming(c)) {
            for h in std::mem::take(&mut self.held) {
                self.remember(&h);
            }
        }
    }

    /// Whether a result for this call is on its way: recorded later in the log this driver
    /// loaded, or still to be produced by this run.
    fn result_coming(&self, call_id: &str) -> bool {
        self.results_ahead.contains(call_id) || self.state.pending.iter().any(|p| p.call.id == call_id)
    }

    fn add_messages(&mut self, e: &Event) {
        if let EventBody::ItemRemoved { seq, index } = e.body {
            if let Some(at) = self.history_keys.iter().position(|k| *k == (seq, index)) {
                self.history.remove(at);
                self.history_keys.remove(at);
            }
            return;
        }
        for (i, m) in e.body.messages().into_iter().enumerate() {
            self.history.push(Arc::new(m));
            self.history_keys.push((e.seq, i as u32));
        }
        let cap = 2 * self.agent.context.max_messages as usize;
        if self.history.len() > cap {
            let cut = self.history.len() - cap / 2;
            self.history.drain(..cut);
            self.history_keys.drain(..cut);
        }
    }
}

/// Orders a window of the log as a conversation. Runs of a session execute one after the
/// other, but input for a queued run is logged when it arrives — possibly in the middle of an
/// earlier run's tool exchange. The conversation puts each run's events after every earlier
/// run's, i.e. orders by (the run's `run_created` seq, seq). Runs whose `run_created` is
/// before the window are the earliest; `me` is known even if its input is cut off.
fn conversation_order(mut window: Vec<Event>, me: RunId, my_created_seq: u64) -> Vec<Event> {
    let created: std::collections::HashMap<RunId, u64> = window
        .iter()
        .filter(|e| matches!(e.body, EventBody::RunCreated { .. }))
        .filter_map(|e| e.run_id.map(|r| (r, e.seq)))
        .collect();
    let run_order = |e: &Event| match e.run_id {
        Some(r) if r == me => my_created_seq,
        Some(r) => created.get(&r).copied().unwrap_or(0),
        // Conversation edits (items added or removed) take effect where they were made.
        None => e.seq,
    };
    window.sort_by_key(|e| (run_order(e), e.seq));
    window
}

/// The calls a run's input answers with tool results (the client's outputs for calls an
/// earlier run ended on).
fn answered_calls(body: &EventBody) -> Vec<&str> {
    match body {
        EventBody::RunCreated { input, .. } => input
            .iter()
            .filter_map(|m| match m {
                Message::Tool { call_id, .. } => Some(call_id.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn is_terminal_body(b: &EventBody) -> bool {
    matches!(b, EventBody::RunCompleted { .. } | EventBody::RunFailed { .. } | EventBody::RunCancelled { .. })
}

/// Cuts output over the limit at a character boundary and says so in the output itself.
fn truncate_output(mut out: ToolOutput, max: usize) -> ToolOutput {
    if out.content.len() > max {
        let total = out.content.len();
        let mut cut = max;
        while !out.content.is_char_boundary(cut) {
            cut -= 1;
        }
        out.content.truncate(cut);
        out.content.push_str(&format!(
            "\n[stead: output truncated: {cut} of {total} bytes shown (max_tool_output_bytes = {max})]"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_input_follows_the_earlier_runs_exchange() {
        use stead_core::event::Actor;
        use stead_core::message::Usage;
        let (a, b) = (RunId::new(), RunId::new());
        let ev = |seq: u64, run: RunId, body: EventBody| Event {
            tenant_id: TenantId::default_tenant(),
            session_id: SessionId::new(),
            seq,
            run_id: Some(run),
            actor: Actor::system(),
            at: Timestamp(0),
            body,
            hash: String::new(),
        };
        let input = |t: &str| EventBody::run_created(vec![Message::User { content: t.into() }]);
        let call = ToolCall { id: "c".into(), name: "t".into(), arguments: "{}".into() };
        let log = vec![
            ev(2, a, input("A")),
            ev(
                3,
                a,
                EventBody::ModelResponded {
                    step: 1,
                    model: "m".into(),
                    content: None,
                    tool_calls: vec![call],
                    usage: Usage::default(),
                    finish_reason: "tool_calls".into(),
                    chunks: Vec::new(),
                },
            ),
            ev(4, b, input("B")), // arrived while A was waiting for its tool
            ev(
                5,
                a,
                EventBody::ToolCallCompleted {
                    call_id: "c".into(),
                    name: "t".into(),
                    output: "r".into(),
                    is_error: false,
                },
            ),
        ];
        let order: Vec<u64> = conversation_order(log, b, 4).iter().map(|e| e.seq).collect();
        assert_eq!(order, vec![2, 3, 5, 4]);
    }

    #[test]
    fn truncation_is_explicit_and_respects_utf8() {
        let out = truncate_output(ToolOutput::ok("héllo wörld".repeat(10)), 7);
        assert!(out.content.starts_with("héllo"));
        assert!(out.content.contains("output truncated"), "{}", out.content);
        let small = truncate_output(ToolOutput::ok("fine"), 7);
        assert_eq!(small.content, "fine");
    }
}
