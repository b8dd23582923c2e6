//! Creating sessions and runs: the checks a new run must pass, the events it is recorded
//! with, and the idempotency key that makes a retried create return the first one.

use stead_core::agent::ConcurrencyPolicy;
use stead_core::event::{Actor, AgentRef, ApprovalDecision, EventBody, NewEvent};
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_core::message::Message;
use stead_core::time::Timestamp;
use stead_store::{AppendRequest, IdempotencyKey, NewSession, RunRecord, SessionRecord};

use crate::{Engine, Error, MAX_CAS_ATTEMPTS, Result, RunInput, backoff, cancel_body, message_bytes};

/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A client's idempotency key on a create, with the fingerprint of the request it came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    key: String,
    fingerprint: String,
}

impl Idempotency {
    /// Checks the key (1..=255 visible ASCII bytes, as HTTP header values allow) and
    /// fingerprints the request: `parts` are what makes two requests the same (method, path,
    /// body). The same key with another fingerprint is refused, not replayed.
    pub fn new(key: &str, parts: &[&[u8]]) -> Result<Self> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidIdempotencyKey(format!(
                "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            )));
        }
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        Ok(Self { key: key.to_owned(), fingerprint: hex::encode(h.finalize()) })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn claim(&self, engine: &Engine) -> IdempotencyKey {
        IdempotencyKey {
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            expires_at: Timestamp::now().plus(engine.inner.options.idempotency_ttl),
        }
    }
}

/// A new session, its seed history and its first run, created in one transaction.
pub struct SessionWithRun {
    pub agent: AgentRef,
    pub metadata: serde_json::Value,
    /// History the session starts with (a branch's past), recorded as `items_added` events
    /// each within the input limit.
    pub seed: Vec<Message>,
    pub run: RunInput,
}

impl Engine {
    pub async fn create_session(
        &self,
        tenant: &TenantId,
        principal: &str,
        agent: &str,
        version: Option<u32>,
        metadata: serde_json::Value,
    ) -> Result<SessionRecord> {
        let agent = self.inner.store.get_agent(tenant, agent, version).await?;
        let new = new_session(tenant, principal, AgentRef { name: agent.name, version: agent.version }, metadata);
        Ok(self.inner.store.create_session(new).await?.0)
    }

    /// Creates a session with its seed history and first run atomically: a crash leaves all
    /// of it or nothing (never an empty session). With an idempotency key, a retry returns
    /// the run the first attempt created.
    pub async fn create_session_with_run(
        &self,
        tenant: &TenantId,
        principal: &str,
        new: SessionWithRun,
    ) -> Result<RunRecord> {
        let SessionWithRun { agent, metadata, seed, run } = new;
        if !run.carried.is_empty() || run.expected_head.is_some() {
            return Err(Error::InvalidInput("a new session's first run carries no calls and follows no head".into()));
        }
        self.check_run_input(tenant, &run).await?;
        // The session's agent must exist.
        self.agent_spec(tenant, &agent.name, agent.version).await?;
        let actor = Actor::principal(principal);
        let mut session = new_session(tenant, principal, agent, metadata);
        for chunk in self.seed_chunks(seed) {
            session.then.push(NewEvent {
                run_id: None,
                actor: actor.clone(),
                body: EventBody::ItemsAdded { items: chunk },
            });
        }
        let run_id = RunId::new();
        session.then.extend(run_events(&actor, run_id, &run));
        session.idempotency = run.idempotency.as_ref().map(|i| i.claim(self));
        match self.inner.store.create_session(session).await {
            Ok(_) => Ok(self.inner.store.get_run(tenant, &run_id).await?),
            Err(stead_store::Error::IdempotencyKeyUsed(rec)) => {
                self.replay(tenant, run.idempotency.as_ref(), &rec).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Seed history in pieces that each fit the input limit.
    fn seed_chunks(&self, seed: Vec<Message>) -> Vec<Vec<Message>> {
        let limit = self.inner.options.max_input_bytes.max(1);
        let mut chunks = Vec::new();
        let mut chunk: Vec<Message> = Vec::new();
        let mut bytes = 0;
        for m in seed {
            let size = message_bytes(&m);
            if !chunk.is_empty() && bytes + size > limit {
                chunks.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += size;
            chunk.push(m);
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        chunks
    }

    /// Queues a run with the user's `input` on the session, under the agent's concurrency policy.
    pub async fn create_run(
        &self,
        tenant: &TenantId,
        principal: &str,
        session_id: &SessionId,
        input: Vec<Message>,
    ) -> Result<RunRecord> {
        if input.is_empty() {
            return Err(Error::InvalidInput("input must contain at least one message".into()));
        }
        if input.iter().any(|m| !matches!(m, Message::User { .. })) {
            return Err(Error::InvalidInput("input messages must have role `user`".into()));
        }
        self.create_run_with(tenant, principal, session_id, RunInput { input, ..RunInput::default() }).await
    }

    /// Queues a run with everything a run can start with: any kind of message (the client's
    /// tool outputs, system notes, earlier assistant turns it supplies), another agent version
    /// than the session's, calls carried over from the run before with decisions on them, and
    /// metadata. With `expected_head`, the run is created only if nothing else was appended
    /// since (`Error::HeadMoved` otherwise): how a caller continues "exactly after" a run.
    /// With an idempotency key, a retry returns the run the first attempt created.
    pub async fn create_run_with(
        &self,
        tenant: &TenantId,
        principal: &str,
        session_id: &SessionId,
        run: RunInput,
    ) -> Result<RunRecord> {
        self.check_run_input(tenant, &run).await?;
        let store = &self.inner.store;
        let actor = Actor::principal(principal);
        let run_id = RunId::new();
        let claim = run.idempotency.as_ref().map(|i| i.claim(self));
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let session = store.get_session(tenant, session_id).await?;
            let agent = self.agent_spec(tenant, &session.agent, session.agent_version).await?;
            let active = store.active_runs(tenant, session_id).await?;
            let mut events = Vec::new();
            match agent.concurrency {
                ConcurrencyPolicy::Reject => {
                    if let Some(r) = active.first() {
                        // A retry of a create that succeeded finds its own run active.
                        if let Some(i) = &run.idempotency
                            && let Some(rec) = store.get_idempotency(tenant, &i.key).await?
                        {
                            return self.replay(tenant, Some(i), &rec).await;
                        }
                        return Err(Error::SessionBusy { session: *session_id, run: r.id });
                    }
                }
                ConcurrencyPolicy::Enqueue => {}
                ConcurrencyPolicy::Interrupt => {
                    for r in &active {
                        if r.state.cancel_requested.is_some() && r.lease.is_some() {
                            continue; // already on its way out
                        }
                        events.push(NewEvent {
                            run_id: Some(r.id),
                            actor: actor.clone(),
                            body: cancel_body(r, &format!("interrupted by new input (run {run_id})")),
                        });
                    }
                }
            }
            events.extend(run_events(&actor, run_id, &run));
            let req = AppendRequest {
                tenant_id: tenant.clone(),
                session_id: *session_id,
                expected_head: run.expected_head.unwrap_or(session.head_seq),
                events,
                fence: None,
                idempotency: claim.clone(),
            };
            match store.append(req).await {
                Ok(_) => return Ok(store.get_run(tenant, &run_id).await?),
                Err(stead_store::Error::IdempotencyKeyUsed(rec)) => {
                    return self.replay(tenant, run.idempotency.as_ref(), &rec).await;
                }
                Err(stead_store::Error::Conflict { expected, actual }) => {
                    if run.expected_head.is_some() {
                        return Err(Error::HeadMoved { session: *session_id, expected, actual });
                    }
                }
                // A carried approval that can't move (decided, expired, taken) is the caller's
                // mistake, not a race to retry.
                Err(stead_store::Error::InvalidTransition { reason, .. }) if !run.carried.is_empty() => {
                    return Err(Error::InvalidInput(reason));
                }
                Err(stead_store::Error::InvalidTransition { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            backoff(attempt).await;
        }
        Err(Error::Contention(session_id.to_string()))
    }

    /// What a retried create answers: the first attempt's run, if the request is the same.
    async fn replay(
        &self,
        tenant: &TenantId,
        ours: Option<&Idempotency>,
        rec: &stead_store::IdempotencyRecord,
    ) -> Result<RunRecord> {
        let same = ours.is_some_and(|o| o.fingerprint == rec.fingerprint);
        match rec.run_id {
            Some(run) if same => {
                tracing::info!(key = %rec.key, %run, "idempotent retry: returning the run the first request created");
                Ok(self.inner.store.get_run(tenant, &run).await?)
            }
            _ => Err(Error::IdempotencyKeyReused(rec.key.clone())),
        }
    }

    /// The checks every new run passes before anything is written.
    async fn check_run_input(&self, tenant: &TenantId, run: &RunInput) -> Result<()> {
        if run.input.is_empty() && run.carried.is_empty() {
            return Err(Error::InvalidInput("input must contain at least one message".into()));
        }
        let bytes: usize = run.input.iter().map(message_bytes).sum();
        if bytes > self.inner.options.max_input_bytes {
            return Err(Error::LimitExceeded(format!(
                "input is {bytes} bytes; the limit is {} (max_input_bytes)",
                self.inner.options.max_input_bytes
            )));
        }
        for (approval_id, _) in &run.decisions {
            if !run.carried.iter().any(|c| &c.approval_id == approval_id) {
                return Err(Error::InvalidInput(format!("approval {approval_id} is not carried by this run")));
            }
        }
        if !run.decisions.is_empty() && run.decider.is_none() {
            return Err(Error::InvalidInput("decisions need the decider who makes them".into()));
        }
        // Decisions made with a run's creation follow the same rules as any decision.
        for c in &run.carried {
            let a = self.inner.store.get_approval(tenant, &c.approval_id).await?;
            if let Some((_, d)) = run.decisions.iter().find(|(id, _)| id == &c.approval_id)
                && let Some(decider) = &run.decider
            {
                if !decider.may_decide(&a.role) {
                    return Err(Error::Forbidden(format!(
                        "deciding approval {} needs the role `{}`, which {} does not hold",
                        c.approval_id, a.role, decider.id
                    )));
                }
                if !matches!(d.decision, ApprovalDecision::Approve | ApprovalDecision::Deny) {
                    return Err(Error::InvalidDecision("a carried call is approved or denied".into()));
                }
            }
        }
        // A run must be able to start: its agent version must exist.
        if let Some(a) = &run.agent {
            self.agent_spec(tenant, &a.name, a.version).await?;
        }
        Ok(())
    }
}

/// A `session_created` for a new session, with nothing after it yet.
fn new_session(tenant: &TenantId, principal: &str, agent: AgentRef, metadata: serde_json::Value) -> NewSession {
    let first_event = NewEvent {
        run_id: None,
        actor: Actor::principal(principal),
        body: EventBody::SessionCreated {
            agent: agent.name.clone(),
            agent_version: agent.version,
            metadata: metadata.clone(),
        },
    };
    NewSession {
        tenant_id: tenant.clone(),
        id: SessionId::new(),
        agent: agent.name,
        agent_version: agent.version,
        metadata,
        first_event,
        then: Vec::new(),
        idempotency: None,
    }
}

/// A run's `run_created` event and the decisions made with it.
fn run_events(actor: &Actor, run_id: RunId, run: &RunInput) -> Vec<NewEvent> {
    let mut events = vec![NewEvent {
        run_id: Some(run_id),
        actor: actor.clone(),
        body: EventBody::RunCreated {
            input: run.input.clone(),
            agent: run.agent.clone(),
            carried: run.carried.clone(),
            metadata: run.metadata.clone(),
        },
    }];
    for (approval_id, d) in &run.decisions {
        let Some(call) = run.carried.iter().find(|c| &c.approval_id == approval_id) else { continue };
        events.push(NewEvent {
            run_id: Some(run_id),
            actor: actor.clone(),
            body: EventBody::ApprovalDecided {
                approval_id: *approval_id,
                call_id: call.call.id.clone(),
                decision: d.decision,
                decided_by: actor.0.clone(),
                reason: d.reason.clone(),
                arguments: d.arguments.as_ref().map(|a| a.to_string()),
                output: d.output.clone(),
            },
        });
    }
    events
}
