//! The embedded SQLite implementation of [`stead_store::Store`].
//!
//! - One process per data directory, enforced by `flock` on `<dir>/LOCK`.
//! - One writer thread owns the only read-write connection and commits in groups: every
//!   write is a job run in its own savepoint, and one `COMMIT` (one fsync) covers all the
//!   jobs that queued up meanwhile. See [`writer`].
//! - Reads run on a small pool of read-only WAL connections via `spawn_blocking`.
//! - The schema is migrated on open by ordered scripts tracked in `PRAGMA user_version`.

mod lock;
mod options;
mod read;
mod rows;
mod schema;
mod vault;
mod write;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stead_core::agent::AgentSpec;
use stead_core::event::Event;
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::time::Timestamp;
use stead_store::{
    AgentVersion, AppendRequest, ApprovalFilter, ApprovalRecord, Claim, Committed, Error, IdempotencyRecord,
    NewSession, Page, Result, RunRecord, SealedSecret, SessionRecord, Store, WrappedKey,
};
use tokio::sync::broadcast;

pub use options::{Durability, ParseDurabilityError, SqliteOptions};
pub use writer::{WriterHold, WriterStats};

use lock::DirLock;
use read::ReadPool;
use writer::{WriteCtx, Writer, job};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "stead.db";

/// How many commits a slow subscriber may fall behind before it lags (and re-reads).
const COMMIT_CHANNEL_CAPACITY: usize = 4096;

/// A SQLite-backed store. Open it with [`SqliteStore::open`].
pub struct SqliteStore {
    // Field order is drop order: the writer (joined on drop) and the readers close their
    // connections before the directory lock is released.
    writer: Writer,
    reads: Arc<ReadPool>,
    commits: broadcast::Sender<Committed>,
    db_path: PathBuf,
    _lock: DirLock,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("db_path", &self.db_path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `options.path`.
    ///
    /// Fails with `Busy` if another process uses the directory, and `Corrupt` if
    /// `stead.db` is not a Stead database. Leases recorded by a previous process are
    /// dropped, so runs it was working on are claimable at once.
    pub fn open(options: SqliteOptions) -> Result<Arc<Self>> {
        let dir = &options.path;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Backend(format!("cannot create data directory {}: {e}", dir.display())))?;
        let lock = DirLock::acquire(dir)?;
        let db_path = dir.join(DB_FILE);
        let conn = schema::open_writer(&db_path, options.durability)?;
        let reset = write::reset_leases(&conn).map_err(|e| name_file(&db_path, e))?;
        if reset > 0 {
            tracing::info!(runs = reset, "released leases left by a previous process");
        }
        let reads = ReadPool::open(db_path.clone(), options.read_connections)?;
        let (commits, _) = broadcast::channel(COMMIT_CHANNEL_CAPACITY);
        let ctx = WriteCtx {
            max_events_per_session: options.max_events_per_session,
            max_event_bytes: options.max_event_bytes,
        };
        let writer = Writer::start(conn, ctx, commits.clone(), db_path.clone())?;
        Ok(Arc::new(Self { writer, reads, commits, db_path, _lock: lock }))
    }

    /// The database file (`<dir>/stead.db`).
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// How much the writer has done, and in how many commits.
    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// Parks the writer (after the group it is committing) until the guard is dropped.
    /// Writes sent meanwhile queue up and are then committed together; tests use this to
    /// observe group commit without depending on timing.
    #[doc(hidden)]
    pub async fn hold_writer(&self) -> Result<WriterHold<'_>> {
        self.writer.hold().await
    }

    async fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection, &WriteCtx) -> Result<(T, Vec<Committed>)> + Send + 'static,
    {
        let (job, rx) = job(op);
        self.writer.run(job, rx).await.map_err(|e| name_file(&self.db_path, e))
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        self.reads.run(f).await.map_err(|e| name_file(&self.db_path, e))
    }
}

/// Corruption reports name the file, so an operator knows what to restore.
fn name_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Corrupt(m) if !m.contains(&*path.to_string_lossy()) => {
            Error::Corrupt(format!("{}: {m}", path.display()))
        }
        other => other,
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_agent(&self, tenant: &TenantId, spec: &AgentSpec) -> Result<(AgentVersion, bool)> {
        let (tenant, spec) = (tenant.clone(), spec.clone());
        self.write(move |conn, _| write::put_agent(conn, &tenant, &spec)).await
    }

    async fn get_agent(&self, tenant: &TenantId, name: &str, version: Option<u32>) -> Result<AgentVersion> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        self.read(move |conn| read::get_agent(conn, &tenant, &name, version)).await
    }

    async fn list_agents(&self, tenant: &TenantId, page: &Page) -> Result<Vec<AgentVersion>> {
        let (tenant, page) = (tenant.clone(), page.clone());
        self.read(move |conn| read::list_agents(conn, &tenant, &page)).await
    }

    async fn list_agent_versions(&self, tenant: &TenantId, name: &str) -> Result<Vec<AgentVersion>> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        self.read(move |conn| read::list_agent_versions(conn, &tenant, &name)).await
    }

    async fn create_session(&self, new: NewSession) -> Result<(SessionRecord, Event)> {
        self.write(move |conn, ctx| write::create_session(conn, ctx, new)).await
    }

    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> Result<SessionRecord> {
        let (tenant, id) = (tenant.clone(), *id);
        self.read(move |conn| read::get_session(conn, &tenant, &id)).await
    }

    async fn list_sessions(&self, tenant: &TenantId, page: &Page) -> Result<Vec<SessionRecord>> {
        let (tenant, page) = (tenant.clone(), page.clone());
        self.read(move |conn| read::list_sessions(conn, &tenant, &page)).await
    }

    async fn delete_session(&self, tenant: &TenantId, id: &SessionId) -> Result<()> {
        let (tenant, id) = (tenant.clone(), *id);
        self.write(move |conn, _| write::delete_session(conn, &tenant, &id)).await
    }

    async fn put_secret(&self, secret: SealedSecret) -> Result<()> {
        self.write(move |conn, _| vault::put_secret(conn, secret)).await
    }

    async fn get_secret(&self, tenant: &TenantId, scope: &str, name: &str) -> Result<Option<SealedSecret>> {
        let (tenant, scope, name) = (tenant.clone(), scope.to_owned(), name.to_owned());
        self.read(move |conn| vault::get_secret(conn, &tenant, &scope, &name)).await
    }

    async fn list_secrets(&self, tenant: &TenantId) -> Result<Vec<SealedSecret>> {
        let tenant = tenant.clone();
        self.read(move |conn| vault::list_secrets(conn, &tenant)).await
    }

    async fn delete_secret(&self, tenant: &TenantId, scope: &str, name: &str) -> Result<bool> {
        let (tenant, scope, name) = (tenant.clone(), scope.to_owned(), name.to_owned());
        self.write(move |conn, _| vault::delete_secret(conn, &tenant, &scope, &name)).await
    }

    async fn get_tenant_key(&self, tenant: &TenantId) -> Result<Option<WrappedKey>> {
        let tenant = tenant.clone();
        self.read(move |conn| vault::get_tenant_key(conn, &tenant)).await
    }

    async fn put_tenant_key(&self, key: WrappedKey) -> Result<WrappedKey> {
        self.write(move |conn, _| vault::put_tenant_key(conn, key)).await
    }

    async fn get_idempotency(&self, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>> {
        let (tenant, key) = (tenant.clone(), key.to_owned());
        self.read(move |conn| write::idempotency_record(conn, &tenant, &key)).await
    }

    async fn append(&self, req: AppendRequest) -> Result<Vec<Event>> {
        let serialized = stead_store::project::serialize_bodies(req.events.iter())?;
        self.write(move |conn, ctx| write::append(conn, ctx, req, serialized)).await
    }

    async fn read_events(&self, tenant: &TenantId, session: &SessionId, after: u64, limit: u32) -> Result<Vec<Event>> {
        let (tenant, session) = (tenant.clone(), *session);
        self.read(move |conn| read::read_events(conn, &tenant, &session, after, limit)).await
    }

    async fn read_message_window(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let (tenant, session) = (tenant.clone(), *session);
        self.read(move |conn| read::read_message_window(conn, &tenant, &session, up_to, limit)).await
    }

    async fn get_run(&self, tenant: &TenantId, id: &RunId) -> Result<RunRecord> {
        let (tenant, id) = (tenant.clone(), *id);
        self.read(move |conn| read::get_run(conn, &tenant, &id)).await
    }

    async fn list_runs(&self, tenant: &TenantId, session: &SessionId, page: &Page) -> Result<Vec<RunRecord>> {
        let (tenant, session, page) = (tenant.clone(), *session, page.clone());
        self.read(move |conn| read::list_runs(conn, &tenant, &session, &page)).await
    }

    async fn active_runs(&self, tenant: &TenantId, session: &SessionId) -> Result<Vec<RunRecord>> {
        let (tenant, session) = (tenant.clone(), *session);
        self.read(move |conn| read::active_runs(conn, &tenant, &session)).await
    }

    async fn claim_runs(&self, worker: &str, lease: Duration, max: usize) -> Result<Vec<Claim>> {
        let worker = worker.to_owned();
        self.write(move |conn, _| write::claim_runs(conn, &worker, lease, max)).await
    }

    async fn renew_lease(&self, run: &RunId, token: u64, lease: Duration) -> Result<()> {
        let run = *run;
        self.write(move |conn, _| write::renew_lease(conn, &run, token, lease)).await
    }

    async fn release_lease(&self, run: &RunId, token: u64) -> Result<()> {
        let run = *run;
        self.write(move |conn, _| write::release_lease(conn, &run, token)).await
    }

    async fn get_approval(&self, tenant: &TenantId, id: &ApprovalId) -> Result<ApprovalRecord> {
        let (tenant, id) = (tenant.clone(), *id);
        self.read(move |conn| read::get_approval(conn, &tenant, &id)).await
    }

    async fn list_approvals(
        &self,
        tenant: &TenantId,
        filter: &ApprovalFilter,
        page: &Page,
    ) -> Result<Vec<ApprovalRecord>> {
        let (tenant, filter, page) = (tenant.clone(), filter.clone(), page.clone());
        self.read(move |conn| read::list_approvals(conn, &tenant, &filter, &page)).await
    }

    async fn due_approvals(&self, now: Timestamp, limit: u32) -> Result<Vec<ApprovalRecord>> {
        self.read(move |conn| read::due_approvals(conn, now, limit)).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.commits.subscribe()
    }
}
