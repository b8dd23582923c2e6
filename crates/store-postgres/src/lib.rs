//! The PostgreSQL implementation of [`stead_store::Store`], for many Stead nodes over one
//! database.
//!
//! - A pool of `tokio-postgres` connections (deadpool); the queries of one step of a write are
//!   sent together on one connection (pipelining), so a write costs about four round trips
//!   whatever it touches.
//! - One short transaction per write: the session row is locked (`SELECT … FOR UPDATE`),
//!   the head compared, the events and every projection written, committed. Nothing holds a
//!   transaction across anything but these statements.
//! - Leases are computed on the database clock, so nodes with skewed clocks agree on expiry.
//! - The rules of a write (event shapes, run and approval projections, the hash chain) are
//!   `stead_store::project`'s, shared with SQLite: a chain verifies the same on both.
//! - The schema is migrated on open by ordered scripts tracked in `stead_schema`.

mod options;
mod read;
mod rows;
mod schema;
mod vault;
mod write;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use stead_core::agent::AgentSpec;
use stead_core::event::Event;
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::time::Timestamp;
use stead_store::project::Limits;
use stead_store::{
    AgentVersion, AppendRequest, ApprovalFilter, ApprovalRecord, Claim, Committed, Error, IdempotencyRecord,
    NewSession, Page, Result, RunRecord, SealedSecret, SessionRecord, Store, WrappedKey,
};
use tokio::sync::broadcast;

pub use options::PostgresOptions;
pub use schema::SCHEMA_VERSION;

use rows::{Attempt, Fail, Pg};

/// How many commits a slow subscriber may fall behind before it lags (and re-reads).
const COMMIT_CHANNEL_CAPACITY: usize = 4096;

/// Stripes of the commit-and-publish lock (see [`PostgresStore::commit_lock`]).
const COMMIT_STRIPES: usize = 256;

/// Attempts of a write that PostgreSQL aborted to resolve a deadlock or a serialization
/// failure, before giving up with `Busy`.
const MAX_ATTEMPTS: u32 = 5;

/// A PostgreSQL-backed store. Open it with [`PostgresStore::open`].
pub struct PostgresStore {
    pool: Pool,
    limits: Limits,
    commits: broadcast::Sender<Committed>,
    /// Held from just before a write's `COMMIT` until its notice is published: two commits of
    /// one session are published in commit order (the second cannot reach its `COMMIT` before
    /// the first's, as it waits for the session's row lock).
    commit_locks: Box<[tokio::sync::Mutex<()>]>,
    /// `host:port` of the server, for messages (never the password).
    target: String,
    schema: Option<String>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// `host:port[,host:port…]` of a connection config.
fn target_of(cfg: &tokio_postgres::Config) -> String {
    let ports = cfg.get_ports();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    if hosts.is_empty() { "localhost:5432".into() } else { hosts.join(",") }
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

impl PostgresStore {
    /// Connects, creates the schema if one is configured and missing, and migrates it.
    ///
    /// Fails with `Unavailable` (naming host and port) if the server cannot be reached, and
    /// `Backend` if the schema was written by a newer Stead.
    pub async fn open(options: PostgresOptions) -> Result<Arc<Self>> {
        let mut cfg: tokio_postgres::Config = options.url.parse().map_err(|e| {
            Error::Backend(format!("invalid PostgreSQL URL (expected postgres://USER@HOST:PORT/DB): {e}"))
        })?;
        let target = target_of(&cfg);
        if let Some(schema) = &options.schema
            && !PostgresOptions::valid_schema_name(schema)
        {
            return Err(Error::Backend(format!(
                "invalid schema name {:?}: use lowercase letters, digits and _",
                schema.chars().take(80).collect::<String>()
            )));
        }
        let mut startup = cfg.get_options().map(str::to_owned).unwrap_or_default();
        startup.push_str(&format!(
            " -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            millis(options.statement_timeout),
            millis(options.idle_in_transaction_timeout)
        ));
        if let Some(schema) = &options.schema {
            startup.push_str(&format!(" -c search_path={schema}"));
        }
        cfg.options(startup.trim_start())
            .application_name(&options.application_name)
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(options.keepalive_idle)
            .keepalives_interval(options.keepalive_interval)
            .keepalives_retries(3)
            .tcp_user_timeout(options.keepalive_idle + options.keepalive_interval * 3);
        let manager =
            Manager::from_config(cfg, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.pool_wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Backend(format!("cannot build the PostgreSQL pool: {e}")))?;
        let (commits, _) = broadcast::channel(COMMIT_CHANNEL_CAPACITY);
        let store = Self {
            pool,
            limits: Limits {
                max_events_per_session: options.max_events_per_session,
                max_event_bytes: options.max_event_bytes,
            },
            commits,
            commit_locks: (0..COMMIT_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            target,
            schema: options.schema.clone(),
        };
        {
            let mut client = store.client().await?;
            if let Some(schema) = &options.schema {
                match client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await {
                    Ok(()) => {}
                    // Another node created it at the same moment.
                    Err(e) if rows::is_unique_violation(&e) => {}
                    Err(e) => return Err(store.named(rows::classify(&e).into())),
                }
            }
            schema::migrate(&mut client).await.map_err(|e| store.named(e))?;
        }
        Ok(Arc::new(store))
    }

    /// `host:port` of the server this store talks to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A setting (`current_setting(name)`) as a pooled connection sees it; tests use it to
    /// check what every connection is opened with.
    #[doc(hidden)]
    pub async fn connection_setting(&self, name: &str) -> Result<String> {
        let client = self.client().await?;
        let rows = query(&client, "SELECT current_setting($1)", &[&name]).await.map_err(|e| self.named(e.into()))?;
        rows.first().map(|r| r.get::<_, String>(0)).ok_or_else(|| Error::Backend(format!("no setting {name}")))
    }

    /// A pooled connection; `Unavailable` (naming the server) when none can be had.
    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| {
            let why = match e {
                PoolError::Timeout(_) => "timed out waiting for a connection".to_owned(),
                PoolError::Backend(e) => match e.as_db_error() {
                    Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                    None => rows::with_causes(&e),
                },
                PoolError::Closed => "the pool is closed".to_owned(),
                other => other.to_string(),
            };
            Error::Unavailable(format!("cannot reach PostgreSQL at {}: {why}", self.target))
        })
    }

    /// Connection trouble names the server, so an operator knows which one.
    fn named(&self, e: Error) -> Error {
        match e {
            Error::Unavailable(m) if !m.contains(&self.target) => {
                Error::Unavailable(format!("PostgreSQL at {}: {m}", self.target))
            }
            other => other,
        }
    }

    fn commit_lock(&self, session: &SessionId) -> &tokio::sync::Mutex<()> {
        let b = session.as_bytes();
        let stripe = usize::from(b[15]) | (usize::from(b[14]) << 8);
        &self.commit_locks[stripe % self.commit_locks.len()]
    }

    /// Publishes notices of a committed write, in order.
    fn publish(&self, notes: Vec<Committed>) {
        for note in notes {
            let _ = self.commits.send(note);
        }
    }

    /// Runs `op` until it succeeds, fails for good, or was aborted by the database (deadlock,
    /// serialization failure) `MAX_ATTEMPTS` times.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(Fail::Store(e)) => return Err(self.named(e)),
                Err(Fail::Retry(why)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(what, attempt, why, "PostgreSQL aborted a write; trying again");
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    attempt += 1;
                }
                Err(Fail::Retry(why)) => {
                    return Err(Error::Busy(format!("{what}: aborted by PostgreSQL {attempt} times ({why})")));
                }
            }
        }
    }

    async fn read<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(deadpool_postgres::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let client = self.client().await?;
        op(client).await.map_err(|e| self.named(e))
    }
}

/// Prepares (through the connection's statement cache) and runs one statement.
pub(crate) async fn query(
    c: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Attempt<Vec<tokio_postgres::Row>> {
    let stmt = c.prepare_cached(sql).await.pg()?;
    c.query(&stmt, params).await.pg()
}

#[async_trait]
impl Store for PostgresStore {
    async fn put_agent(&self, tenant: &TenantId, spec: &AgentSpec) -> Result<(AgentVersion, bool)> {
        self.retrying("storing an agent version", || write::put_agent(self, tenant, spec)).await
    }

    async fn get_agent(&self, tenant: &TenantId, name: &str, version: Option<u32>) -> Result<AgentVersion> {
        self.read(|c| async move { read::get_agent(&c, tenant, name, version).await }).await
    }

    async fn list_agents(&self, tenant: &TenantId, page: &Page) -> Result<Vec<AgentVersion>> {
        self.read(|c| async move { read::list_agents(&c, tenant, page).await }).await
    }

    async fn list_agent_versions(&self, tenant: &TenantId, name: &str) -> Result<Vec<AgentVersion>> {
        self.read(|c| async move { read::list_agent_versions(&c, tenant, name).await }).await
    }

    async fn create_session(&self, new: NewSession) -> Result<(SessionRecord, Event)> {
        let first = stead_store::project::serialize_bodies(std::iter::once(&new.first_event))?;
        let then = stead_store::project::serialize_bodies(new.then.iter())?;
        self.retrying("creating a session", || write::create_session(self, &new, &first, &then)).await
    }

    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> Result<SessionRecord> {
        self.read(|c| async move { read::get_session(&c, tenant, id).await }).await
    }

    async fn list_sessions(&self, tenant: &TenantId, page: &Page) -> Result<Vec<SessionRecord>> {
        self.read(|c| async move { read::list_sessions(&c, tenant, page).await }).await
    }

    async fn delete_session(&self, tenant: &TenantId, id: &SessionId) -> Result<()> {
        self.retrying("deleting a session", || write::delete_session(self, tenant, id)).await
    }

    async fn put_secret(&self, secret: SealedSecret) -> Result<()> {
        self.retrying("storing a secret", || async {
            let c = self.client().await?;
            vault::put_secret(&c, &secret).await
        })
        .await
    }

    async fn get_secret(&self, tenant: &TenantId, scope: &str, name: &str) -> Result<Option<SealedSecret>> {
        self.read(|c| async move { vault::get_secret(&c, tenant, scope, name).await }).await
    }

    async fn list_secrets(&self, tenant: &TenantId) -> Result<Vec<SealedSecret>> {
        self.read(|c| async move { vault::list_secrets(&c, tenant).await }).await
    }

    async fn delete_secret(&self, tenant: &TenantId, scope: &str, name: &str) -> Result<bool> {
        self.retrying("deleting a secret", || async {
            let c = self.client().await?;
            vault::delete_secret(&c, tenant, scope, name).await
        })
        .await
    }

    async fn get_tenant_key(&self, tenant: &TenantId) -> Result<Option<WrappedKey>> {
        self.read(|c| async move { vault::get_tenant_key(&c, tenant).await }).await
    }

    async fn put_tenant_key(&self, key: WrappedKey) -> Result<WrappedKey> {
        self.retrying("storing a tenant key", || async {
            let c = self.client().await?;
            vault::put_tenant_key(&c, &key).await
        })
        .await
    }

    async fn get_idempotency(&self, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>> {
        self.read(|c| async move { Ok(write::idempotency_record(&c, tenant, key).await?) }).await
    }

    async fn append(&self, req: AppendRequest) -> Result<Vec<Event>> {
        let serialized = stead_store::project::serialize_bodies(req.events.iter())?;
        self.retrying("appending events", || write::append(self, &req, &serialized)).await
    }

    async fn read_events(&self, tenant: &TenantId, session: &SessionId, after: u64, limit: u32) -> Result<Vec<Event>> {
        self.read(|c| async move { read::read_events(&c, tenant, session, after, limit).await }).await
    }

    async fn read_message_window(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        self.read(|c| async move { read::read_message_window(&c, tenant, session, up_to, limit).await }).await
    }

    async fn get_run(&self, tenant: &TenantId, id: &RunId) -> Result<RunRecord> {
        self.read(|c| async move { read::get_run(&c, tenant, id).await }).await
    }

    async fn list_runs(&self, tenant: &TenantId, session: &SessionId, page: &Page) -> Result<Vec<RunRecord>> {
        self.read(|c| async move { read::list_runs(&c, tenant, session, page).await }).await
    }

    async fn active_runs(&self, tenant: &TenantId, session: &SessionId) -> Result<Vec<RunRecord>> {
        self.read(|c| async move { read::active_runs(&c, tenant, session).await }).await
    }

    async fn claim_runs(&self, worker: &str, lease: Duration, max: usize) -> Result<Vec<Claim>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.retrying("claiming runs", || write::claim_runs(self, worker, lease, max)).await
    }

    async fn renew_lease(&self, run: &RunId, token: u64, lease: Duration) -> Result<()> {
        self.retrying("renewing a lease", || write::renew_lease(self, run, token, lease)).await
    }

    async fn release_lease(&self, run: &RunId, token: u64) -> Result<()> {
        self.retrying("releasing a lease", || write::release_lease(self, run, token)).await
    }

    async fn get_approval(&self, tenant: &TenantId, id: &ApprovalId) -> Result<ApprovalRecord> {
        self.read(|c| async move { read::get_approval(&c, tenant, id).await }).await
    }

    async fn list_approvals(
        &self,
        tenant: &TenantId,
        filter: &ApprovalFilter,
        page: &Page,
    ) -> Result<Vec<ApprovalRecord>> {
        self.read(|c| async move { read::list_approvals(&c, tenant, filter, page).await }).await
    }

    async fn due_approvals(&self, now: Timestamp, limit: u32) -> Result<Vec<ApprovalRecord>> {
        self.read(|c| async move { read::due_approvals(&c, now, limit).await }).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.commits.subscribe()
    }
}
