//! How a PostgreSQL store connects: the URL, the schema, the pool, the timeouts and limits.

use std::time::Duration;

/// Options of [`crate::PostgresStore::open`]. [`PostgresOptions::new`] gives the defaults.
///
/// Every connection of the pool is opened with these settings, as session parameters sent in
/// the startup packet (so a pooler or a reconnect cannot lose them):
/// - `statement_timeout`: no statement runs longer; Stead's statements take milliseconds, so
///   this only fires on a database in trouble (lock pile-up, I/O stall), and the write fails
///   with `Unavailable` instead of hanging a worker;
/// - `idle_in_transaction_session_timeout`: a connection that stops talking inside a
///   transaction (its node froze, or was cut off) is closed by the server, so it cannot keep
///   a session's row lock (or the vacuum horizon) pinned;
/// - TCP keepalive and `TCP_USER_TIMEOUT` on the client socket: a half-open connection (the
///   database host vanished) is noticed within about `keepalive_idle + 3 × keepalive_interval`
///   instead of the kernel's two hours.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]` (libpq URL or key=value form).
    pub url: String,
    /// The schema Stead's tables live in (created if missing); `None`: the URL's default
    /// `search_path` (normally `public`). Letters, digits and `_` only.
    pub schema: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Opening one connection (TCP + startup + authentication) gives up after this long.
    pub connect_timeout: Duration,
    /// Waiting for a free pooled connection gives up after this long.
    pub pool_wait_timeout: Duration,
    pub statement_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    /// Idle time before the first keepalive probe.
    pub keepalive_idle: Duration,
    /// Time between probes; after 3 unanswered ones the connection is dead.
    pub keepalive_interval: Duration,
    /// A session's log may hold at most this many events.
    pub max_events_per_session: u64,
    /// An event's JSON payload (its `data`) may be at most this many bytes.
    pub max_event_bytes: usize,
    /// Shown in `pg_stat_activity.application_name`.
    pub application_name: String,
}

impl PostgresOptions {
    pub const DEFAULT_POOL_SIZE: usize = 16;
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15);
    pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
    pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_MAX_EVENTS_PER_SESSION: u64 = 1_000_000;
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            pool_size: Self::DEFAULT_POOL_SIZE,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            pool_wait_timeout: Self::DEFAULT_POOL_WAIT_TIMEOUT,
            statement_timeout: Self::DEFAULT_STATEMENT_TIMEOUT,
            idle_in_transaction_timeout: Self::DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
            keepalive_idle: Self::DEFAULT_KEEPALIVE_IDLE,
            keepalive_interval: Self::DEFAULT_KEEPALIVE_INTERVAL,
            max_events_per_session: Self::DEFAULT_MAX_EVENTS_PER_SESSION,
            max_event_bytes: Self::DEFAULT_MAX_EVENT_BYTES,
            application_name: "stead".into(),
        }
    }

    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    pub fn max_events_per_session(mut self, max: u64) -> Self {
        self.max_events_per_session = max;
        self
    }

    pub fn max_event_bytes(mut self, max: usize) -> Self {
        self.max_event_bytes = max;
        self
    }

    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = d;
        self
    }

    pub fn idle_in_transaction_timeout(mut self, d: Duration) -> Self {
        self.idle_in_transaction_timeout = d;
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Whether `name` may be used as a schema (it is spliced into SQL and startup options).
    pub fn valid_schema_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit()
    }
}
