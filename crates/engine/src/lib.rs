//! The run engine: commands that change sessions (under the one-writer rules), the
//! dispatcher that claims runnable runs, and the run loop `decide → execute → append`.
//! It knows nothing of HTTP; `stead-api` calls it.

mod create;
pub mod error;
pub mod fault;
pub mod held;
pub mod tools;
mod toolset;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use stead_core::agent::{AgentSpec, SpecFormat, ToolKind};
use stead_core::event::{
    Actor, AgentRef, ApprovalDecision, BrokenLink, CarriedCall, ChainVerifier, Event, EventBody, NewEvent,
};
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::message::Message;
use stead_core::run::RunStatus;
use stead_core::time::Timestamp;
use stead_model::Providers;
use stead_store::{AgentVersion, AppendRequest, ApprovalRecord, RunRecord, SessionRecord, Store};
use tokio_util::sync::CancellationToken;

pub use create::{Idempotency, MAX_IDEMPOTENCY_KEY_LEN, SessionWithRun};
pub use error::{Error, Result};
pub use tools::{Tool, ToolContext, ToolOutput, ToolRegistry};
pub use worker::DispatcherState;

/// Engine settings. Every field is a `stead serve` option.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Names this process in leases and in the `actor` of the events it writes.
    pub worker_id: String,
    /// How long a claim lasts without renewal; a dead worker's runs move after this.
    pub lease: Duration,
    /// Runs this process drives at once.
    pub max_concurrent_runs: usize,
    /// How often the dispatcher looks for runs whose lease expired.
    pub poll_interval: Duration,
    /// Largest run input, in bytes.
    pub max_input_bytes: usize,
    /// Tool output beyond this is cut, with an explicit, recorded marker.
    pub max_tool_output_bytes: usize,
    /// Fault-injection points for tests (by default from `STEAD_FAULT_*`: none unless set).
    pub faults: fault::Faults,
    /// What the operator grants tenants (providers, catalog MCP servers, exposed variables,
    /// trusted tenants). By default the `default` tenant is trusted: without API keys the
    /// local user is the operator.
    pub grants: Arc<stead_core::grants::Grants>,
    /// Checks MCP URLs that tenants choose (native specs and Responses requests) on every hop.
    /// `None`: any address (a loopback-only server, whose callers already reach it all).
    pub mcp_url_guard: Option<Arc<stead_tools_http::Guard>>,
    /// How long an `Idempotency-Key` is remembered after the create that claimed it.
    pub idempotency_ttl: Duration,
    /// The credential vault `${secret:NAME}` references are revealed from.
    pub vault: Option<Arc<stead_vault::Vault>>,
}

/// Grants for a server without API keys: the local user (tenant `default`) is the operator.
pub fn local_operator_grants() -> stead_core::grants::Grants {
    let mut g = stead_core::grants::Grants::default();
    g.trusted_tenants.insert(TenantId::default_tenant().as_str().to_owned());
    g
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            worker_id: format!("node_{}", std::process::id()),
            lease: Duration::from_secs(30),
            max_concurrent_runs: 512,
            poll_interval: Duration::from_secs(1),
            max_input_bytes: 256 * 1024,
            max_tool_output_bytes: 64 * 1024,
            faults: fault::Faults::from_env(),
            grants: Arc::new(local_operator_grants()),
            mcp_url_guard: None,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            vault: None,
        }
    }
}

/// A checked agent spec with its tools built, not stored yet (see [`Engine::prepare_agent`]).
pub struct PreparedAgent {
    spec: AgentSpec,
    tools: Arc<toolset::AgentTools>,
}

impl PreparedAgent {
    pub fn spec(&self) -> &AgentSpec {
        &self.spec
    }
    /// The tools the model would be offered.
    pub fn defs(&self) -> Vec<stead_core::message::ToolDef> {
        self.tools.defs()
    }
    /// What kept some tools from being built (e.g. an MCP server that did not answer).
    pub fn problems(&self) -> &[String] {
        &self.tools.problems
    }
}

/// A piece of model output as it streams; not stored (the recorded response is the truth).
#[derive(Clone, Debug, Serialize)]
pub struct Delta {
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub run_id: RunId,
    pub step: u32,
    /// Position of this piece in the step's text (0 for the first; a retry starts over).
    pub index: u32,
    pub text: String,
}

/// What a new run starts with (see [`Engine::create_run_with`]).
#[derive(Clone, Debug, Default)]
pub struct RunInput {
    pub input: Vec<Message>,
    pub agent: Option<AgentRef>,
    pub carried: Vec<CarriedCall>,
    /// Decisions on carried approvals, recorded with the run's creation.
    pub decisions: Vec<(ApprovalId, DecisionInput)>,
    pub metadata: serde_json::Value,
    pub expected_head: Option<u64>,
    /// Who makes `decisions` (required with them); each is checked against its approval's role.
    pub decider: Option<Decider>,
    /// The client's idempotency key: a retry with the same key returns the first run.
    pub idempotency: Option<Idempotency>,
}

/// The bytes of text a message carries, for the input limit.
fn message_bytes(m: &Message) -> usize {
    match m {
        Message::System { content } | Message::User { content } => content.len(),
        Message::Assistant { content, tool_calls } => {
            content.as_deref().map_or(0, str::len)
                + tool_calls.iter().map(|c| c.id.len() + c.name.len() + c.arguments.len()).sum::<usize>()
        }
        Message::Tool { call_id, name, content, .. } => call_id.len() + name.len() + content.len(),
    }
}

/// A tool result submitted by the client for a `requires_action` run.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolOutputInput {
    pub call_id: String,
    pub output: String,
    #[serde(default)]
    pub is_error: bool,
}

/// Who decides an approval: a principal and the roles it holds (`*` holds every role).
#[derive(Clone, Debug)]
pub struct Decider {
    pub id: String,
    pub roles: Vec<String>,
}

impl Decider {
    pub fn may_decide(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == "*" || r == role)
    }
}

/// A person's decision on an approval.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionInput {
    pub decision: ApprovalDecision,
    #[serde(default)]
    pub reason: Option<String>,
    /// With `approve`: arguments to run the call with instead (a JSON object).
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
    /// With `skip`: the result to report to the model.
    #[serde(default)]
    pub output: Option<String>,
}

/// The result of re-verifying a session's hash chain.
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub session_id: SessionId,
    pub ok: bool,
    pub events_verified: u64,
    pub head_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<BrokenLink>,
}

/// A cheap-to-clone handle on the engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    providers: Providers,
    tools: ToolRegistry,
    options: EngineOptions,
    deltas: tokio::sync::broadcast::Sender<Delta>,
    /// Versions are immutable, so a cache entry never goes stale.
    agents: Mutex<HashMap<(TenantId, String, u32), Arc<AgentSpec>>>,
    /// Runs this process is driving, so a cancel request can interrupt a model call.
    active: Mutex<HashMap<RunId, CancellationToken>>,
    /// Each agent version's tools, MCP discovery included; only complete builds are kept.
    toolsets: Mutex<HashMap<(TenantId, String, u32), Arc<toolset::AgentTools>>>,
    /// Whether the dispatcher runs, for readiness.
    dispatcher: worker::DispatcherFlag,
    /// Credentials requests hold in memory only (never stored).
    held: held::HeldCredentials,
}

/// How many times a command re-reads and retries after a compare-and-append conflict.
const MAX_CAS_ATTEMPTS: u32 = 500;

impl Engine {
    pub fn new(store: Arc<dyn Store>, providers: Providers, tools: ToolRegistry, options: EngineOptions) -> Self {
        let (deltas, _) = tokio::sync::broadcast::channel(4096);
        Self {
            inner: Arc::new(Inner {
                store,
                providers,
                tools,
                options,
                deltas,
                agents: Mutex::new(HashMap::new()),
                active: Mutex::new(HashMap::new()),
                toolsets: Mutex::new(HashMap::new()),
                dispatcher: worker::DispatcherFlag::default(),
                held: held::HeldCredentials::default(),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    pub fn providers(&self) -> &Providers {
        &self.inner.providers
    }

    pub fn tools(&self) -> &ToolRegistry {
        &self.inner.tools
    }

    pub fn grants(&self) -> &stead_core::grants::Grants {
        &self.inner.options.grants
    }

    /// Holds a credential of a request in memory (see [`held`]); a spec names it by
    /// [`held::HeldGuard::reference`] while the guard lives.
    pub fn hold_credential(&self, tenant: &TenantId, value: &str) -> held::HeldGuard {
        self.inner.held.hold(tenant, value)
    }

    /// Model output as it streams, for every run this process drives.
    pub fn subscribe_deltas(&self) -> tokio::sync::broadcast::Receiver<Delta> {
        self.inner.deltas.subscribe()
    }

    /// Runs the dispatcher until `cancel` fires. Runs in flight keep their leases, which
    /// expire, so another process (or this one, restarted) picks them up.
    pub async fn run(&self, cancel: CancellationToken) {
        let _running = self.inner.dispatcher.running();
        worker::dispatch(self.clone(), cancel).await
    }

    /// Whether the dispatcher claims runs: `Stopped` once [`Engine::run`] returned or panicked.
    pub fn dispatcher_state(&self) -> DispatcherState {
        self.inner.dispatcher.state()
    }

    /// How many runs this process is driving now.
    pub fn runs_in_flight(&self) -> usize {
        self.inner.active.lock().expect("active lock").len()
    }

    // ---- agents ----

    /// Parses, validates and stores an agent spec as a new version (or returns the latest
    /// version unchanged when the spec is identical).
    pub async fn apply_agent(&self, tenant: &TenantId, text: &str, format: SpecFormat) -> Result<(AgentVersion, bool)> {
        let spec = self.checked_spec(tenant, text, format).await?;
        Ok(self.inner.store.put_agent(tenant, &spec).await?)
    }

    /// Parses and checks a spec (tools, grants) and builds its tools — connecting to its MCP
    /// servers — without storing anything, so a caller can refuse a spec whose tools are not
    /// available before it becomes a version ([`Engine::store_prepared`] stores it).
    pub async fn prepare_agent(&self, tenant: &TenantId, text: &str, format: SpecFormat) -> Result<PreparedAgent> {
        let spec = self.checked_spec(tenant, text, format).await?;
        let resolver = self.resolver(tenant, &spec).await;
        let tools = Arc::new(toolset::AgentTools::build(&spec, &self.inner.tools, &resolver).await);
        Ok(PreparedAgent { spec, tools })
    }

    /// Stores a prepared spec as the agent's next version (or finds it equal to the latest),
    /// keeping its tools for the version when they are complete.
    pub async fn store_prepared(&self, tenant: &TenantId, prepared: PreparedAgent) -> Result<(AgentVersion, bool)> {
        let PreparedAgent { spec, tools } = prepared;
        self.grants().check_spec(tenant, &spec)?;
        let (version, created) = self.inner.store.put_agent(tenant, &spec).await?;
        if tools.problems.is_empty() {
            let key = (tenant.clone(), version.name.clone(), version.version);
            self.inner.toolsets.lock().expect("toolset cache lock").entry(key).or_insert(tools);
        }
        Ok((version, created))
    }

    /// A spec parsed (off the async threads: the cost grows with the text) and checked
    /// against the registered tools and the tenant's grants.
    async fn checked_spec(&self, tenant: &TenantId, text: &str, format: SpecFormat) -> Result<AgentSpec> {
        let owned = text.to_owned();
        let spec = match tokio::task::spawn_blocking(move || AgentSpec::parse(&owned, format)).await {
            Ok(parsed) => parsed?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        self.check_tools(&spec)?;
        self.grants().check_spec(tenant, &spec)?;
        Ok(spec)
    }

    /// Where a spec's references resolve from, with the vault secrets its MCP servers name
    /// revealed (one the vault lacks, or can't open, is left out: building then names it).
    async fn resolver<'a>(&'a self, tenant: &'a TenantId, spec: &AgentSpec) -> toolset::Resolver<'a> {
        let mut secrets = HashMap::new();
        if let Some(vault) = &self.inner.options.vault {
            let values = spec.mcp_servers.iter().flat_map(|m| m.headers.values().chain(m.url.as_ref()));
            for name in toolset::secret_names(values) {
                match vault.reveal(tenant, &stead_vault::Scope::Tenant, &name).await {
                    Ok(Some(v)) => {
                        secrets.insert(name, v);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(secret = %name, error = %e, "a vault secret could not be opened"),
                }
            }
        }
        toolset::Resolver {
            tenant,
            grants: &self.inner.options.grants,
            held: &self.inner.held,
            mcp_guard: self.inner.options.mcp_url_guard.clone(),
            secrets,
        }
    }

    fn check_tools(&self, spec: &AgentSpec) -> Result<()> {
        let invalid = |msg: String| Err(stead_core::Error::InvalidAgentSpec(msg).into());
        for (i, tool) in spec.tools.iter().enumerate() {
            if tool.kind == ToolKind::Builtin && self.inner.tools.get(&tool.name).is_none() {
                return invalid(format!(
                    "field `tools[{i}].name`: unknown builtin `{}`; available: {}",
                    tool.name,
                    self.inner.tools.names().join(", ")
                ));
            }
            if let (ToolKind::Http, Some(h)) = (tool.kind, &tool.http) {
                if self.inner.tools.http().is_none() {
                    return invalid(format!("field `tools[{i}]`: HTTP tools are not enabled on this server"));
                }
                let spec = stead_tools_http::HttpToolSpec {
                    method: h.method.clone(),
                    url: h.url.clone(),
                    headers: h.headers.clone(),
                };
                if let Err(e) = spec.validate() {
                    return invalid(format!("field `tools[{i}].http`: {e}"));
                }
            }
        }
        Ok(())
    }

    /// The tools of an agent version, building (and, if complete, caching) them on first use.
    pub(crate) async fn agent_tools(
        &self,
        tenant: &TenantId,
        name: &str,
        version: u32,
        spec: &AgentSpec,
    ) -> Arc<toolset::AgentTools> {
        let key = (tenant.clone(), name.to_owned(), version);
        if let Some(t) = self.inner.toolsets.lock().expect("toolset cache lock").get(&key) {
            return t.clone();
        }
        let resolver = self.resolver(tenant, spec).await;
        let built = Arc::new(toolset::AgentTools::build(spec, &self.inner.tools, &resolver).await);
        if built.problems.is_empty() {
            self.inner.toolsets.lock().expect("toolset cache lock").insert(key, built.clone());
        } else {
            for p in &built.problems {
                tracing::warn!(agent = name, version, problem = %p, "agent tools incomplete; will retry on the next run");
            }
        }
        built
    }

    /// The tools an agent version offers the model (MCP servers are asked on first use, then
    /// cached), and any problem met building them (e.g. an MCP server that did not answer).
    pub async fn list_agent_tools(
        &self,
        tenant: &TenantId,
        name: &str,
        version: Option<u32>,
    ) -> Result<(Vec<stead_core::message::ToolDef>, Vec<String>)> {
        let v = self.inner.store.get_agent(tenant, name, version).await?;
        let tools = self.agent_tools(tenant, &v.name, v.version, &v.spec).await;
        Ok((tools.defs(), tools.problems.clone()))
    }

    /// Forgets an agent version's discovered tools (e.g. after its MCP servers changed).
    pub fn refresh_tools(&self, tenant: &TenantId, name: &str, version: u32) {
        self.inner.toolsets.lock().expect("toolset cache lock").remove(&(tenant.clone(), name.to_owned(), version));
    }

    pub(crate) async fn agent_spec(&self, tenant: &TenantId, name: &str, version: u32) -> Result<Arc<AgentSpec>> {
        let key = (tenant.clone(), name.to_owned(), version);
        if let Some(spec) = self.inner.agents.lock().expect("agent cache lock").get(&key) {
            return Ok(spec.clone());
        }
        let v = self.inner.store.get_agent(tenant, name, Some(version)).await?;
        let spec = Arc::new(v.spec);
        self.inner.agents.lock().expect("agent cache lock").insert(key, spec.clone());
        Ok(spec)
    }

    /// Adds messages to a session's conversation outside any run (e.g. conversation items);
    /// returns the committed event.
    pub async fn add_items(
        &self,
        tenant: &TenantId,
        principal: &str,
        session_id: &SessionId,
        items: Vec<Message>,
    ) -> Result<Event> {
        if items.is_empty() {
            return Err(Error::InvalidInput("add at least one item".into()));
        }
        let bytes: usize = items.iter().map(message_bytes).sum();
        if bytes > self.inner.options.max_input_bytes {
            return Err(Error::LimitExceeded(format!(
                "items are {bytes} bytes; the limit is {} (max_input_bytes)",
                self.inner.options.max_input_bytes
            )));
        }
        self.append_session_event(tenant, principal, session_id, EventBody::ItemsAdded { items }).await
    }

    /// Takes message `index` of the event at `seq` out of the conversation the model sees.
    pub async fn remove_item(
        &self,
        tenant: &TenantId,
        principal: &str,
        session_id: &SessionId,
        seq: u64,
        index: u32,
    ) -> Result<Event> {
        let target = self.inner.store.read_events(tenant, session_id, seq.saturating_sub(1), 1).await?;
        let exists = target.first().is_some_and(|e| {
            e.seq == seq
                && match &e.body {
                    EventBody::ModelResponded { .. } | EventBody::ToolCallCompleted { .. } => index == 0,
                    EventBody::RunCreated { input: items, .. } | EventBody::ItemsAdded { items } => {
                        (index as usize) < items.len()
                    }
                    _ => false,
                }
        });
        if !exists {
            return Err(Error::InvalidInput(format!("event {seq} of session {session_id} has no message {index}")));
        }
        self.append_session_event(tenant, principal, session_id, EventBody::ItemRemoved { seq, index }).await
    }

    /// Replaces a session's metadata (recorded in its log).
    pub async fn update_session_metadata(
        &self,
        tenant: &TenantId,
        principal: &str,
        session_id: &SessionId,
        metadata: serde_json::Value,
    ) -> Result<SessionRecord> {
        self.append_session_event(tenant, principal, session_id, EventBody::SessionUpdated { metadata }).await?;
        Ok(self.inner.store.get_session(tenant, session_id).await?)
    }

    /// Marks a finished run deleted (see `EventBody::RunDeleted`).
    pub async fn delete_run(&self, tenant: &TenantId, principal: &str, run_id: &RunId) -> Result<()> {
        let store = &self.inner.store;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let run = store.get_run(tenant, run_id).await?;
            if run.state.deleted {
                return Ok(());
            }
            if !run.status().is_terminal() {
                return Err(Error::InvalidInput(format!("run {run_id} is {}; cancel it first", run.status().as_str())));
            }
            let body = EventBody::RunDeleted {};
            if self.append_at_head(tenant, &run.session_id, Some(*run_id), principal, body).await?.is_some() {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(Error::Contention(run_id.to_string()))
    }

    async fn append_session_event(
        &self,
        tenant: &TenantId,
        principal: &str,
        session_id: &SessionId,
        body: EventBody,
    ) -> Result<Event> {
        for attempt in 0..MAX_CAS_ATTEMPTS {
            if let Some(e) = self.append_at_head(tenant, session_id, None, principal, body.clone()).await? {
                return Ok(e);
            }
            backoff(attempt).await;
        }
        Err(Error::Contention(session_id.to_string()))
    }

    /// A command's one event, appended at the session's current head: `None` when the head
    /// moved or the run's state no longer fits (the caller re-reads and decides again).
    async fn append_at_head(
        &self,
        tenant: &TenantId,
        session_id: &SessionId,
        run_id: Option<RunId>,
        principal: &str,
        body: EventBody,
    ) -> Result<Option<Event>> {
        let session = self.inner.store.get_session(tenant, session_id).await?;
        let req = AppendRequest {
            tenant_id: tenant.clone(),
            session_id: *session_id,
            expected_head: session.head_seq,
            events: vec![NewEvent { run_id, actor: Actor::principal(principal), body }],
            fence: None,
            idempotency: None,
        };
        match self.inner.store.append(req).await {
            Ok(mut events) => Ok(Some(events.remove(0))),
            Err(stead_store::Error::Conflict { .. } | stead_store::Error::InvalidTransition { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels a run: at once if no worker holds it, otherwise at the worker's next safe point.
    pub async fn cancel_run(
        &self,
        tenant: &TenantId,
        principal: &str,
        run_id: &RunId,
        reason: &str,
    ) -> Result<RunRecord> {
        let store = &self.inner.store;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let run = store.get_run(tenant, run_id).await?;
            if run.status().is_terminal() {
                return Err(Error::RunFinished { run: *run_id, status: run.status() });
            }
            if run.state.cancel_requested.is_some() && run.lease.is_some() {
                return Ok(run); // already requested; the worker will act on it
            }
            let body = cancel_body(&run, reason);
            if self.append_at_head(tenant, &run.session_id, Some(*run_id), principal, body).await?.is_some() {
                return Ok(store.get_run(tenant, run_id).await?);
            }
            backoff(attempt).await;
        }
        Err(Error::Contention(run_id.to_string()))
    }

    /// Records the client's outputs for a `requires_action` run; the run then resumes on
    /// whichever worker is free. All pending client calls must be answered at once.
    pub async fn submit_tool_outputs(
        &self,
        tenant: &TenantId,
        principal: &str,
        run_id: &RunId,
        outputs: Vec<ToolOutputInput>,
    ) -> Result<RunRecord> {
        let store = &self.inner.store;
        let limit = self.inner.options.max_tool_output_bytes;
        for o in &outputs {
            if o.output.len() > limit {
                return Err(Error::LimitExceeded(format!(
                    "output for call {:?} is {} bytes; the limit is {limit} (max_tool_output_bytes)",
                    o.call_id,
                    o.output.len()
                )));
            }
        }
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let run = store.get_run(tenant, run_id).await?;
            if run.status() != RunStatus::RequiresAction {
                return Err(Error::RunNotWaiting { run: *run_id, status: run.status() });
            }
            let waiting: Vec<_> = run.state.pending.iter().filter(|p| p.awaiting_client).collect();
            let mut seen = HashSet::new();
            let mut events = Vec::new();
            for o in &outputs {
                let Some(p) = waiting.iter().find(|p| p.call.id == o.call_id) else {
                    return Err(Error::InvalidToolOutputs(format!(
                        "call {:?} is not waiting for an output; waiting: {}",
                        o.call_id,
                        waiting.iter().map(|p| p.call.id.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                };
                if !seen.insert(o.call_id.as_str()) {
                    return Err(Error::InvalidToolOutputs(format!("call {:?} has two outputs", o.call_id)));
                }
                events.push(NewEvent {
                    run_id: Some(*run_id),
                    actor: Actor::principal(principal),
                    body: EventBody::ToolCallCompleted {
                        call_id: o.call_id.clone(),
                        name: p.call.name.clone(),
                        output: o.output.clone(),
                        is_error: o.is_error,
                    },
                });
            }
            let missing: Vec<_> =
                waiting.iter().filter(|p| !seen.contains(p.call.id.as_str())).map(|p| p.call.id.as_str()).collect();
            if !missing.is_empty() {
                return Err(Error::InvalidToolOutputs(format!("missing outputs for calls: {}", missing.join(", "))));
            }
            let session = store.get_session(tenant, &run.session_id).await?;
            let req = AppendRequest {
                tenant_id: tenant.clone(),
                session_id: run.session_id,
                expected_head: session.head_seq,
                events,
                fence: None,
                idempotency: None,
            };
            if self.append_unfenced(req).await? {
                return Ok(store.get_run(tenant, run_id).await?);
            }
            backoff(attempt).await;
        }
        Err(Error::Contention(run_id.to_string()))
    }

    /// Waits until the run is no longer queued or running (finished, or waiting for the
    /// client), or until `timeout`; returns its latest record either way.
    pub async fn wait_for_run(&self, tenant: &TenantId, run_id: &RunId, timeout: Duration) -> Result<RunRecord> {
        let mut rx = self.inner.store.subscribe();
        // A timeout too far off for the clock waits as long as it can, never panics.
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        loop {
            let run = self.inner.store.get_run(tenant, run_id).await?;
            if !run.status().is_claimable() {
                return Ok(run);
            }
            // Wait for a commit that touches this run (or a lag, or the deadline), then re-read.
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => return Ok(self.inner.store.get_run(tenant, run_id).await?),
                    Ok(Ok(c)) if c.runs.iter().any(|(id, s)| id == run_id && !s.is_claimable()) => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                        return Ok(self.inner.store.get_run(tenant, run_id).await?);
                    }
                }
            }
        }
    }

    // ---- approvals ----

    /// Records a person's decision. Single-use: a second, different decision is refused;
    /// the same decision by the same decider again returns the approval unchanged.
    pub async fn decide_approval(
        &self,
        tenant: &TenantId,
        decider: &Decider,
        id: &ApprovalId,
        input: DecisionInput,
    ) -> Result<ApprovalRecord> {
        let store = &self.inner.store;
        let by = Actor::principal(&decider.id);
        if input.decision == ApprovalDecision::Expire {
            return Err(Error::InvalidDecision(
                "approvals expire by themselves; decide approve, deny, retry, skip or fail".into(),
            ));
        }
        let arguments = match (&input.arguments, input.decision) {
            (None, _) => None,
            (Some(v @ serde_json::Value::Object(_)), ApprovalDecision::Approve) => Some(v.to_string()),
            (Some(_), ApprovalDecision::Approve) => {
                return Err(Error::InvalidDecision("`arguments` must be a JSON object".into()));
            }
            (Some(_), _) => return Err(Error::InvalidDecision("`arguments` go with `approve` only".into())),
        };
        match (input.decision, &input.output) {
            (ApprovalDecision::Skip, None) => {
                return Err(Error::InvalidDecision("`skip` needs the `output` to report to the model".into()));
            }
            (d, Some(_)) if d != ApprovalDecision::Skip => {
                return Err(Error::InvalidDecision("`output` goes with `skip` only".into()));
            }
            _ => {}
        }
        if let Some(o) = &input.output
            && o.len() > self.inner.options.max_tool_output_bytes
        {
            return Err(Error::LimitExceeded(format!(
                "`output` is {} bytes; the limit is {} (max_tool_output_bytes)",
                o.len(),
                self.inner.options.max_tool_output_bytes
            )));
        }
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let a = store.get_approval(tenant, id).await?;
            if !decider.may_decide(&a.role) {
                return Err(Error::Forbidden(format!(
                    "deciding approval {id} needs the role `{}`, which {} does not hold",
                    a.role, decider.id
                )));
            }
            if !a.kind.accepts(input.decision) {
                let valid = match a.kind {
                    stead_core::event::ApprovalKind::ToolCall => "approve or deny",
                    stead_core::event::ApprovalKind::OutcomeUnknown => "retry, skip or fail",
                };
                return Err(Error::InvalidDecision(format!(
                    "`{}` does not answer a `{}` approval; decide {valid}",
                    input.decision.as_str(),
                    a.kind.as_str()
                )));
            }
            if let Some(d) = a.decision {
                if d == input.decision && a.decided_by.as_deref() == Some(by.0.as_str()) {
                    return Ok(a); // the same decider repeating itself: idempotent
                }
                return Err(Error::AlreadyDecided {
                    id: id.to_string(),
                    decision: d.as_str().to_owned(),
                    by: a.decided_by.unwrap_or_default(),
                });
            }
            let session = store.get_session(tenant, &a.session_id).await?;
            let req = AppendRequest {
                tenant_id: tenant.clone(),
                session_id: a.session_id,
                expected_head: session.head_seq,
                events: vec![NewEvent {
                    run_id: Some(a.run_id),
                    actor: by.clone(),
                    body: EventBody::ApprovalDecided {
                        approval_id: *id,
                        call_id: a.call_id.clone(),
                        decision: input.decision,
                        decided_by: by.0.clone(),
                        reason: input.reason.clone(),
                        arguments: arguments.clone(),
                        output: input.output.clone(),
                    },
                }],
                fence: None,
                idempotency: None,
            };
            // Someone appended first (maybe a decision): read again and re-check.
            if self.append_unfenced(req).await? {
                return Ok(store.get_approval(tenant, id).await?);
            }
            backoff(attempt).await;
        }
        Err(Error::Contention(id.to_string()))
    }

    /// Expires approvals whose time is up; the run then tells the model. Returns how many.
    pub async fn expire_due_approvals(&self) -> Result<usize> {
        let store = &self.inner.store;
        let due = store.due_approvals(Timestamp::now(), 100).await?;
        let mut expired = 0;
        for a in due {
            for attempt in 0..20 {
                let session = store.get_session(&a.tenant_id, &a.session_id).await?;
                let req = AppendRequest {
                    tenant_id: a.tenant_id.clone(),
                    session_id: a.session_id,
                    expected_head: session.head_seq,
                    events: vec![NewEvent {
                        run_id: Some(a.run_id),
                        actor: Actor::system(),
                        body: EventBody::ApprovalDecided {
                            approval_id: a.id,
                            call_id: a.call_id.clone(),
                            decision: ApprovalDecision::Expire,
                            decided_by: Actor::system().0,
                            reason: Some(format!("nobody decided before {}", a.expires_at.to_rfc3339())),
                            arguments: None,
                            output: None,
                        },
                    }],
                    fence: None,
                    idempotency: None,
                };
                match store.append(req).await {
                    Ok(_) => {
                        expired += 1;
                        break;
                    }
                    Err(stead_store::Error::Conflict { .. }) => backoff(attempt).await,
                    // Decided (or the run ended) meanwhile: nothing to expire.
                    Err(stead_store::Error::InvalidTransition { .. }) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(expired)
    }

    // ---- audit ----

    /// Recomputes the session's hash chain from its first event and names the first broken
    /// link; also checks that the chain ends where the session's recorded head says.
    pub async fn verify_session(&self, tenant: &TenantId, session_id: &SessionId) -> Result<AuditReport> {
        verify_session(self.inner.store.as_ref(), tenant, session_id).await
    }

    /// A command's append (no lease, no fence): `false` when the session moved on or the
    /// run's state no longer fits (the caller re-reads and decides again), an error otherwise.
    async fn append_unfenced(&self, req: AppendRequest) -> Result<bool> {
        match self.inner.store.append(req).await {
            Ok(_) => Ok(true),
            Err(stead_store::Error::Conflict { .. } | stead_store::Error::InvalidTransition { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn register_active(&self, run: RunId, token: CancellationToken) {
        self.inner.active.lock().expect("active lock").insert(run, token);
    }

    pub(crate) fn unregister_active(&self, run: &RunId) {
        self.inner.active.lock().expect("active lock").remove(run);
    }

    pub(crate) fn interrupt_active(&self, run: &RunId) {
        if let Some(t) = self.inner.active.lock().expect("active lock").get(run) {
            t.cancel();
        }
    }

    pub(crate) fn inner_parts(&self) -> (&Arc<dyn Store>, &Providers, &ToolRegistry, &EngineOptions) {
        (&self.inner.store, &self.inner.providers, &self.inner.tools, &self.inner.options)
    }

    pub(crate) fn publish_delta(&self, d: Delta) {
        let _ = self.inner.deltas.send(d);
    }
}

/// Re-verifies a session's chain against any store (the CLI uses this offline too).
pub async fn verify_session(store: &dyn Store, tenant: &TenantId, session_id: &SessionId) -> Result<AuditReport> {
    let session = store.get_session(tenant, session_id).await?;
    let mut verifier = ChainVerifier::default();
    let mut after = 0;
    let mut first_broken = None;
    'pages: loop {
        let page = match store.read_events(tenant, session_id, after, 1000).await {
            Ok(page) => page,
            // A row that does not even decode is a broken link too: find it and name it.
            Err(stead_store::Error::Corrupt(_)) if after < session.head_seq => {
                match store.read_events(tenant, session_id, after, 1).await {
                    Ok(one) => one,
                    Err(stead_store::Error::Corrupt(reason)) => {
                        first_broken = Some(BrokenLink { seq: after + 1, reason });
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            if let Err(b) = verifier.push(e) {
                first_broken = Some(b);
                break 'pages;
            }
        }
    }
    if first_broken.is_none() {
        let head = hex_encode(&verifier.head_hash());
        if verifier.verified != session.head_seq || head != session.head_hash {
            first_broken = Some(BrokenLink {
                seq: verifier.verified + 1,
                reason: format!(
                    "the session's recorded head is event {} but the log ends at event {} (events were removed)",
                    session.head_seq, verifier.verified
                ),
            });
        }
    }
    Ok(AuditReport {
        session_id: *session_id,
        ok: first_broken.is_none(),
        events_verified: verifier.verified,
        head_seq: session.head_seq,
        first_broken,
    })
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Cancel at once when no live worker holds the run; otherwise ask the worker.
fn cancel_body(run: &RunRecord, reason: &str) -> EventBody {
    let held = run.lease.as_ref().is_some_and(|l| l.expires_at > Timestamp::now());
    if held {
        EventBody::RunCancelRequested { reason: reason.to_owned() }
    } else {
        EventBody::RunCancelled { reason: reason.to_owned() }
    }
}

/// Small, growing, jittered pause between compare-and-append attempts.
pub(crate) async fn backoff(attempt: u32) {
    let base = 1u64 << attempt.min(5);
    let jitter = (uuid::Uuid::now_v7().as_u128() % 1000) as u64;
    tokio::time::sleep(Duration::from_micros(base * 200 + jitter)).await;
}
