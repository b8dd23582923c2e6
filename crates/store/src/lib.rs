//! The storage interface: traits, records and the error type only. Implementations live
//! beside it (`stead-store-sqlite`, `stead-store-postgres`) and pass one conformance suite.
//!
//! The store owns three guarantees the rest of Stead builds on:
//! - **compare-and-append**: an append names the session head it expects and fails with
//!   [`Error::Conflict`] if the head moved, so two writers never merge;
//! - **fencing**: an append made on behalf of a claimed run carries the lease's token and
//!   fails with [`Error::Fenced`] once another worker has claimed the run;
//! - **projections in the same transaction**: each appended event is folded into its run's
//!   [`RunState`] (with `stead_core::run::RunState::apply`) and the session head before
//!   commit, so reads never see the log and the projections disagree.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use stead_core::agent::AgentSpec;
use stead_core::event::{ApprovalDecision, ApprovalKind, Event, NewEvent};
use stead_core::ids::{AgentVersionId, ApprovalId, RunId, SessionId, TenantId};
use stead_core::run::{RunState, RunStatus};
use stead_core::time::Timestamp;

/// A store error. The API maps each variant to one stable code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The session's head moved since the caller read it.
    #[error("session head is {actual}, expected {expected}")]
    Conflict { expected: u64, actual: u64 },
    /// The caller's lease on the run was taken over; its writes are refused.
    #[error("run {run} is claimed by another worker (fencing token {token} is stale)")]
    Fenced { run: RunId, token: u64 },
    /// An event does not fit its run's state (e.g. an event after the run finished).
    #[error("event refused for run {run}: {reason}")]
    InvalidTransition { run: RunId, reason: String },
    /// The operation needs the target to be idle (e.g. deleting a session with a claimed run).
    #[error("busy: {0}")]
    Busy(String),
    /// A configured limit was hit; nothing was written.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The database is damaged or was modified outside Stead.
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
    /// The store is shutting down or its writer is gone.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Backend(String),
    /// The idempotency key is claimed (and not expired) by an earlier write: nothing was
    /// written; the record says what that write created.
    #[error("idempotency key already used")]
    IdempotencyKeyUsed(Box<IdempotencyRecord>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One immutable version of an agent definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentVersion {
    pub id: AgentVersionId,
    pub tenant_id: TenantId,
    pub name: String,
    pub version: u32,
    pub spec: AgentSpec,
    /// Hex SHA-256 of the spec's canonical JSON: applying the same spec twice is a no-op.
    pub spec_hash: String,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub tenant_id: TenantId,
    pub agent: String,
    pub agent_version: u32,
    pub metadata: serde_json::Value,
    /// Sequence number of the last event (0 before the first).
    pub head_seq: u64,
    /// Hex hash of the last event.
    pub head_hash: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: RunId,
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub state: RunState,
    /// The current lease, if a worker holds one.
    pub lease: Option<Lease>,
    /// Incremented by every claim; writes carry it and stale ones are refused.
    pub fencing_token: u64,
    pub updated_at: Timestamp,
}

impl RunRecord {
    pub fn status(&self) -> RunStatus {
        self.state.status
    }
}

pub struct NewSession {
    pub tenant_id: TenantId,
    pub id: SessionId,
    pub agent: String,
    pub agent_version: u32,
    pub metadata: serde_json::Value,
    /// The `session_created` event, appended as sequence 1.
    pub first_event: NewEvent,
    /// Events appended right after it in the same transaction (seed items, the first run):
    /// a crash leaves either all of them or no session at all.
    pub then: Vec<NewEvent>,
    /// Claims an idempotency key with the session (see [`IdempotencyKey`]).
    pub idempotency: Option<IdempotencyKey>,
}

/// A client's idempotency key for a create (`Idempotency-Key` header). The store claims it in
/// the same transaction as the write it comes with and remembers what that write created, so a
/// retried request finds the first one's result instead of creating a second.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's key, unique per tenant (1..=255 visible ASCII bytes; checked by the caller).
    pub key: String,
    /// What the request was (a hash of its method, path and body), so that reusing a key for a
    /// different request is told apart from a retry.
    pub fingerprint: String,
    /// Until when the claim holds; after that the key may be claimed anew.
    pub expires_at: Timestamp,
}

/// A claimed idempotency key: what the write that claimed it created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: String,
    pub fingerprint: String,
    pub session_id: SessionId,
    /// The first run created by that write, if it created one.
    pub run_id: Option<RunId>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// One secret of the vault as stored: sealed by `stead-vault`, opaque to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedSecret {
    pub tenant_id: TenantId,
    /// `tenant`, or `user:<principal id>` for a user's own secret.
    pub scope: String,
    pub name: String,
    /// 1 for the first value; each replacement adds one.
    pub version: u32,
    /// The tenant key version that sealed it.
    pub key_version: u32,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub created_at: Timestamp,
}

/// A tenant's data key, wrapped by the key-encryption key (never stored in the clear).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub tenant_id: TenantId,
    pub version: u32,
    pub nonce: Vec<u8>,
    pub wrapped: Vec<u8>,
    pub created_at: Timestamp,
}

/// Proof that the caller holds a run's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub run_id: RunId,
    pub token: u64,
    /// Each successful fenced append extends the lease by this much.
    pub extend_lease: Duration,
}

pub struct AppendRequest {
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    /// The head sequence the caller last saw; the append fails if it moved.
    pub expected_head: u64,
    pub events: Vec<NewEvent>,
    pub fence: Option<Fence>,
    /// Claims an idempotency key with this append; checked before the head, so a retry whose
    /// first attempt moved the head still finds it.
    pub idempotency: Option<IdempotencyKey>,
}

/// A run handed to a worker.
#[derive(Clone, Debug)]
pub struct Claim {
    pub run: RunRecord,
    pub session: SessionRecord,
    /// The token the worker must carry on its appends.
    pub token: u64,
}

/// Published after every commit, in commit order per session.
#[derive(Clone, Debug)]
pub struct Committed {
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub events: Arc<[Event]>,
    /// Runs whose status changed in this commit, with the new status.
    pub runs: Vec<(RunId, RunStatus)>,
}

impl Committed {
    /// Whether this commit made some run claimable (new input, outputs submitted...).
    pub fn wakes_workers(&self) -> bool {
        self.runs.iter().any(|(_, s)| s.is_claimable())
    }
}

/// The projection of one approval: its `approval_requested` event, and its
/// `approval_decided` event once there is one. Maintained in the same transaction as the
/// append, like the run projection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub id: ApprovalId,
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub run_id: RunId,
    pub kind: ApprovalKind,
    pub call_id: String,
    pub tool_name: String,
    /// The arguments the model proposed (JSON text).
    pub arguments: String,
    /// The role a decider must hold.
    pub role: String,
    pub reason: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// `None` while pending.
    pub decision: Option<ApprovalDecision>,
    pub decided_by: Option<String>,
    pub decided_at: Option<Timestamp>,
    pub decision_reason: Option<String>,
    /// Arguments substituted by an `approve`.
    pub decided_arguments: Option<String>,
    /// The result supplied by a `skip`.
    pub output: Option<String>,
}

/// Which approvals to list.
#[derive(Clone, Debug, Default)]
pub struct ApprovalFilter {
    /// Only those without a decision.
    pub pending_only: bool,
    /// Only this session's.
    pub session: Option<SessionId>,
}

/// A page request: items strictly after `after` (a cursor the previous page returned).
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub after: Option<String>,
    pub limit: u32,
}

/// The storage interface. Every method takes the tenant; nothing crosses tenants.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Agents.
    /// Stores `spec` as the next version of its agent, unless it equals the latest version,
    /// in which case that version is returned and `false` says nothing was created.
    async fn put_agent(&self, tenant: &TenantId, spec: &AgentSpec) -> Result<(AgentVersion, bool)>;
    /// The given version, or the latest when `version` is `None`.
    async fn get_agent(&self, tenant: &TenantId, name: &str, version: Option<u32>) -> Result<AgentVersion>;
    /// Latest version of each agent, by name.
    async fn list_agents(&self, tenant: &TenantId, page: &Page) -> Result<Vec<AgentVersion>>;
    async fn list_agent_versions(&self, tenant: &TenantId, name: &str) -> Result<Vec<AgentVersion>>;

    // Sessions.
    async fn create_session(&self, new: NewSession) -> Result<(SessionRecord, Event)>;
    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> Result<SessionRecord>;
    /// Newest first.
    async fn list_sessions(&self, tenant: &TenantId, page: &Page) -> Result<Vec<SessionRecord>>;
    /// Deletes the session, its events and runs. Refused while a run is claimed.
    async fn delete_session(&self, tenant: &TenantId, id: &SessionId) -> Result<()>;

    /// The live (unexpired) claim of a tenant's idempotency key, if any.
    async fn get_idempotency(&self, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>>;

    // The log.
    /// Compare-and-append; see the crate docs for the guarantees.
    async fn append(&self, req: AppendRequest) -> Result<Vec<Event>>;
    /// Events with `seq > after`, ascending, at most `limit`.
    async fn read_events(&self, tenant: &TenantId, session: &SessionId, after: u64, limit: u32) -> Result<Vec<Event>>;
    /// The newest `limit` message-bearing events (see `EventBody::is_message`) with
    /// `seq <= up_to`, ascending. O(limit), whatever the session's length.
    async fn read_message_window(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<Event>>;

    // Runs.
    async fn get_run(&self, tenant: &TenantId, id: &RunId) -> Result<RunRecord>;
    /// A session's runs, oldest first.
    async fn list_runs(&self, tenant: &TenantId, session: &SessionId, page: &Page) -> Result<Vec<RunRecord>>;
    /// A session's runs that are not finished, oldest first.
    async fn active_runs(&self, tenant: &TenantId, session: &SessionId) -> Result<Vec<RunRecord>>;
    /// Claims up to `max` claimable runs for `worker`: each is its session's oldest unfinished
    /// run, and unleased or with an expired lease. Each claim increments the fencing token.
    async fn claim_runs(&self, worker: &str, lease: Duration, max: usize) -> Result<Vec<Claim>>;
    /// Extends a lease; `Fenced` if it was taken over.
    async fn renew_lease(&self, run: &RunId, token: u64, lease: Duration) -> Result<()>;
    /// Gives a lease back without changing the run (a worker shutting down).
    async fn release_lease(&self, run: &RunId, token: u64) -> Result<()>;

    // Approvals (a projection of `approval_requested` / `approval_decided` events).
    async fn get_approval(&self, tenant: &TenantId, id: &ApprovalId) -> Result<ApprovalRecord>;
    /// Oldest first; the cursor is the last approval's id.
    async fn list_approvals(
        &self,
        tenant: &TenantId,
        filter: &ApprovalFilter,
        page: &Page,
    ) -> Result<Vec<ApprovalRecord>>;
    /// Pending approvals whose `expires_at <= now`, across all tenants (for the expiry sweeper),
    /// oldest expiry first.
    async fn due_approvals(&self, now: Timestamp, limit: u32) -> Result<Vec<ApprovalRecord>>;

    // The vault's rows (sealed by `stead-vault`; the store never sees a secret in the clear).
    /// Stores `secret` as the next version of its name: `secret.version` must be one more than
    /// the stored one (1 when there is none), else `Conflict` (a concurrent writer won).
    async fn put_secret(&self, secret: SealedSecret) -> Result<()>;
    async fn get_secret(&self, tenant: &TenantId, scope: &str, name: &str) -> Result<Option<SealedSecret>>;
    /// The tenant's secrets (latest versions), by scope then name.
    async fn list_secrets(&self, tenant: &TenantId) -> Result<Vec<SealedSecret>>;
    /// Whether there was such a secret.
    async fn delete_secret(&self, tenant: &TenantId, scope: &str, name: &str) -> Result<bool>;
    /// The tenant's newest data key.
    async fn get_tenant_key(&self, tenant: &TenantId) -> Result<Option<WrappedKey>>;
    /// Stores a tenant's data key unless one of that version exists; returns the stored one
    /// (so two writers racing to create a tenant's first key agree on the winner's).
    async fn put_tenant_key(&self, key: WrappedKey) -> Result<WrappedKey>;

    /// Commits as they happen. A slow receiver may lag; it then re-reads from the store.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Committed>;
}

pub mod project;
pub mod stored;

#[cfg(feature = "conformance")]
pub mod conformance;
