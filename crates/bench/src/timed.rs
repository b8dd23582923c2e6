//! A `Store` that delegates to the SQLite store and times its appends and claims, so the
//! bench can say how much of a step is spent waiting for durable commits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use stead_core::agent::AgentSpec;
use stead_core::event::Event;
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::time::Timestamp;
use stead_store::{
    AgentVersion, AppendRequest, ApprovalFilter, ApprovalRecord, Claim, Committed, NewSession, Page, Result, RunRecord,
    SessionRecord, Store,
};
use stead_store_sqlite::SqliteStore;

/// Latencies of the calls that write, as the engine sees them (queueing, the writer's work,
/// the commit and its fsync, and the hand-offs both ways).
#[derive(Default)]
pub struct Timings {
    pub appends: Vec<Duration>,
    pub claims: Vec<Duration>,
}

pub struct TimedStore {
    inner: Arc<SqliteStore>,
    timings: Mutex<Timings>,
}

impl TimedStore {
    pub fn new(inner: Arc<SqliteStore>) -> Self {
        Self { inner, timings: Mutex::new(Timings::default()) }
    }

    /// The timings so far; the record starts again empty.
    pub fn take(&self) -> Timings {
        std::mem::take(&mut *self.timings.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, f: impl FnOnce(&mut Timings)) {
        f(&mut self.timings.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

#[async_trait]
impl Store for TimedStore {
    async fn put_agent(&self, tenant: &TenantId, spec: &AgentSpec) -> Result<(AgentVersion, bool)> {
        self.inner.put_agent(tenant, spec).await
    }
    async fn get_agent(&self, tenant: &TenantId, name: &str, version: Option<u32>) -> Result<AgentVersion> {
        self.inner.get_agent(tenant, name, version).await
    }
    async fn list_agents(&self, tenant: &TenantId, page: &Page) -> Result<Vec<AgentVersion>> {
        self.inner.list_agents(tenant, page).await
    }
    async fn list_agent_versions(&self, tenant: &TenantId, name: &str) -> Result<Vec<AgentVersion>> {
        self.inner.list_agent_versions(tenant, name).await
    }
    async fn create_session(&self, new: NewSession) -> Result<(SessionRecord, Event)> {
        self.inner.create_session(new).await
    }
    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> Result<SessionRecord> {
        self.inner.get_session(tenant, id).await
    }
    async fn list_sessions(&self, tenant: &TenantId, page: &Page) -> Result<Vec<SessionRecord>> {
        self.inner.list_sessions(tenant, page).await
    }
    async fn delete_session(&self, tenant: &TenantId, id: &SessionId) -> Result<()> {
        self.inner.delete_session(tenant, id).await
    }
    async fn put_secret(&self, secret: stead_store::SealedSecret) -> Result<()> {
        self.inner.put_secret(secret).await
    }
    async fn get_secret(
        &self,
        tenant: &TenantId,
        scope: &str,
        name: &str,
    ) -> Result<Option<stead_store::SealedSecret>> {
        self.inner.get_secret(tenant, scope, name).await
    }
    async fn list_secrets(&self, tenant: &TenantId) -> Result<Vec<stead_store::SealedSecret>> {
        self.inner.list_secrets(tenant).await
    }
    async fn delete_secret(&self, tenant: &TenantId, scope: &str, name: &str) -> Result<bool> {
        self.inner.delete_secret(tenant, scope, name).await
    }
    async fn get_tenant_key(&self, tenant: &TenantId) -> Result<Option<stead_store::WrappedKey>> {
        self.inner.get_tenant_key(tenant).await
    }
    async fn put_tenant_key(&self, key: stead_store::WrappedKey) -> Result<stead_store::WrappedKey> {
        self.inner.put_tenant_key(key).await
    }
    async fn get_idempotency(&self, tenant: &TenantId, key: &str) -> Result<Option<stead_store::IdempotencyRecord>> {
        self.inner.get_idempotency(tenant, key).await
    }
    async fn append(&self, req: AppendRequest) -> Result<Vec<Event>> {
        let t = Instant::now();
        let r = self.inner.append(req).await;
        let d = t.elapsed();
        self.record(|s| s.appends.push(d));
        r
    }
    async fn read_events(&self, tenant: &TenantId, session: &SessionId, after: u64, limit: u32) -> Result<Vec<Event>> {
        self.inner.read_events(tenant, session, after, limit).await
    }
    async fn read_message_window(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        self.inner.read_message_window(tenant, session, up_to, limit).await
    }
    async fn get_run(&self, tenant: &TenantId, id: &RunId) -> Result<RunRecord> {
        self.inner.get_run(tenant, id).await
    }
    async fn list_runs(&self, tenant: &TenantId, session: &SessionId, page: &Page) -> Result<Vec<RunRecord>> {
        self.inner.list_runs(tenant, session, page).await
    }
    async fn active_runs(&self, tenant: &TenantId, session: &SessionId) -> Result<Vec<RunRecord>> {
        self.inner.active_runs(tenant, session).await
    }
    async fn claim_runs(&self, worker: &str, lease: Duration, max: usize) -> Result<Vec<Claim>> {
        let t = Instant::now();
        let r = self.inner.claim_runs(worker, lease, max).await;
        let d = t.elapsed();
        self.record(|s| s.claims.push(d));
        r
    }
    async fn renew_lease(&self, run: &RunId, token: u64, lease: Duration) -> Result<()> {
        self.inner.renew_lease(run, token, lease).await
    }
    async fn release_lease(&self, run: &RunId, token: u64) -> Result<()> {
        self.inner.release_lease(run, token).await
    }
    async fn get_approval(&self, tenant: &TenantId, id: &ApprovalId) -> Result<ApprovalRecord> {
        self.inner.get_approval(tenant, id).await
    }
    async fn list_approvals(
        &self,
        tenant: &TenantId,
        filter: &ApprovalFilter,
        page: &Page,
    ) -> Result<Vec<ApprovalRecord>> {
        self.inner.list_approvals(tenant, filter, page).await
    }
    async fn due_approvals(&self, now: Timestamp, limit: u32) -> Result<Vec<ApprovalRecord>> {
        self.inner.due_approvals(now, limit).await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Committed> {
        self.inner.subscribe()
    }
}
