//! Reads: a small pool of read-only connections, used from `spawn_blocking`, and the queries.
//!
//! In WAL mode readers never wait for the writer, and each read sees one committed snapshot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use stead_core::event::Event;
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::time::Timestamp;
use stead_store::project::page_limit;
use stead_store::{AgentVersion, ApprovalFilter, ApprovalRecord, Error, Page, Result, RunRecord, SessionRecord};
use tokio::sync::Semaphore;

use crate::rows::{
    AGENT_COLUMNS, APPROVAL_COLUMNS, Cached, EVENT_COLUMNS, RUN_COLUMNS, SESSION_COLUMNS, SqlResult, agent_from_row,
    approval_from_row, collect, event_from_row, load_session, run_from_row, session_from_row, session_pk, to_i64,
};
use crate::schema::open_reader;

/// Read-only connections, checked out one per read.
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub(crate) fn open(path: PathBuf, size: usize) -> Result<Arc<Self>> {
        let size = size.max(1);
        let idle = (0..size).map(|_| open_reader(&path)).collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Self { path, idle: Mutex::new(idle), permits: Arc::new(Semaphore::new(size)) }))
    }

    /// Runs `f` on a pooled connection on the blocking thread pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit =
            self.permits.clone().acquire_owned().await.map_err(|_| Error::Unavailable("the store is closed".into()))?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A connection lost to a panicking read is replaced rather than shrinking the pool.
            let conn = match pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                Some(conn) => conn,
                None => open_reader(&pool.path)?,
            };
            let result = f(&conn);
            pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| Error::Backend(format!("a read task failed: {e}")))?
    }
}

/// Runs several statements against one snapshot.
fn snapshot<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.exec("BEGIN", []).sql()?;
    let result = f(conn);
    // Read-only: ending it can only fail if the connection is broken, which the next read reports.
    let _ = conn.exec(if result.is_ok() { "COMMIT" } else { "ROLLBACK" }, []);
    result
}

pub(crate) fn get_agent(
    conn: &Connection,
    tenant: &TenantId,
    name: &str,
    version: Option<u32>,
) -> Result<AgentVersion> {
    let found = match version {
        Some(v) => {
            let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ?1 AND name = ?2 AND version = ?3");
            let mut stmt = conn.prepare_cached(&sql).sql()?;
            let mut rows = stmt.query(params![tenant.as_str(), name, v]).sql()?;
            rows.next().sql()?.map(agent_from_row).transpose()?
        }
        None => {
            let sql = format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ?1 AND name = ?2 ORDER BY version DESC LIMIT 1"
            );
            let mut stmt = conn.prepare_cached(&sql).sql()?;
            let mut rows = stmt.query(params![tenant.as_str(), name]).sql()?;
            rows.next().sql()?.map(agent_from_row).transpose()?
        }
    };
    found.ok_or_else(|| stead_store::project::agent_not_found(name, version))
}

/// The latest version of each agent, by name; the cursor is the last name seen.
pub(crate) fn list_agents(conn: &Connection, tenant: &TenantId, page: &Page) -> Result<Vec<AgentVersion>> {
    let sql = format!(
        "SELECT {AGENT_COLUMNS} FROM agents a WHERE a.tenant = ?1 AND a.name > ?2 \
         AND a.version = (SELECT max(b.version) FROM agents b WHERE b.tenant = a.tenant AND b.name = a.name) \
         ORDER BY a.name LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let rows = stmt.query(params![tenant.as_str(), page.after.as_deref().unwrap_or(""), page_limit(page)]).sql()?;
    collect(rows, agent_from_row)
}

pub(crate) fn list_agent_versions(conn: &Connection, tenant: &TenantId, name: &str) -> Result<Vec<AgentVersion>> {
    let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ?1 AND name = ?2 ORDER BY version");
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let versions = collect(stmt.query(params![tenant.as_str(), name]).sql()?, agent_from_row)?;
    if versions.is_empty() {
        return Err(Error::NotFound { what: "agent", id: name.to_owned() });
    }
    Ok(versions)
}

pub(crate) fn get_session(conn: &Connection, tenant: &TenantId, id: &SessionId) -> Result<SessionRecord> {
    Ok(load_session(conn, tenant, id)?.1)
}

/// Newest first; the cursor is the last session id seen (ids are time-ordered UUIDv7).
pub(crate) fn list_sessions(conn: &Connection, tenant: &TenantId, page: &Page) -> Result<Vec<SessionRecord>> {
    let limit = page_limit(page);
    let rows = match &page.after {
        Some(after) => {
            let after: SessionId =
                after.parse().map_err(|_| Error::NotFound { what: "session", id: after.chars().take(80).collect() })?;
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.tenant = ?1 AND s.id < ?2 ORDER BY s.id DESC LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql).sql()?;
            let rows = stmt.query(params![tenant.as_str(), &after.as_bytes()[..], limit]).sql()?;
            collect(rows, session_from_row)?
        }
        None => {
            let sql =
                format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.tenant = ?1 ORDER BY s.id DESC LIMIT ?2");
            let mut stmt = conn.prepare_cached(&sql).sql()?;
            let rows = stmt.query(params![tenant.as_str(), limit]).sql()?;
            collect(rows, session_from_row)?
        }
    };
    Ok(rows.into_iter().map(|(_, s)| s).collect())
}

pub(crate) fn read_events(
    conn: &Connection,
    tenant: &TenantId,
    session: &SessionId,
    after: u64,
    limit: u32,
) -> Result<Vec<Event>> {
    snapshot(conn, |conn| {
        let pk = session_pk(conn, tenant, session)?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE session_pk = ?1 AND tenant = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
        );
        let mut stmt = conn.prepare_cached(&sql).sql()?;
        let rows = stmt.query(params![pk, tenant.as_str(), to_i64(after), i64::from(limit)]).sql()?;
        collect(rows, |r| event_from_row(r, tenant, *session))
    })
}

/// Walks the partial index on message events backwards from `up_to`: O(limit). Without
/// `INDEXED BY` the planner prefers the primary key, which also steps over every
/// non-message event.
pub(crate) const MESSAGE_WINDOW: &str = "SELECT seq, run_id, kind, actor, at, data, hash \
     FROM events INDEXED BY events_messages \
     WHERE session_pk = ?1 AND msg = 1 AND seq <= ?2 AND tenant = ?3 ORDER BY seq DESC LIMIT ?4";

pub(crate) fn read_message_window(
    conn: &Connection,
    tenant: &TenantId,
    session: &SessionId,
    up_to: u64,
    limit: u32,
) -> Result<Vec<Event>> {
    snapshot(conn, |conn| {
        let pk = session_pk(conn, tenant, session)?;
        let mut stmt = conn.prepare_cached(MESSAGE_WINDOW).sql()?;
        let rows = stmt.query(params![pk, to_i64(up_to), tenant.as_str(), i64::from(limit)]).sql()?;
        let mut events = collect(rows, |r| event_from_row(r, tenant, *session))?;
        events.reverse();
        Ok(events)
    })
}

pub(crate) fn get_run(conn: &Connection, tenant: &TenantId, id: &RunId) -> Result<RunRecord> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs r JOIN sessions s ON s.pk = r.session_pk WHERE r.id = ?1 AND r.tenant = ?2"
    );
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let mut rows = stmt.query(params![&id.as_bytes()[..], tenant.as_str()]).sql()?;
    match rows.next().sql()? {
        Some(row) => Ok(run_from_row(row)?.1),
        None => Err(Error::NotFound { what: "run", id: id.to_string() }),
    }
}

/// Oldest first; the cursor is the last run id seen.
pub(crate) fn list_runs(
    conn: &Connection,
    tenant: &TenantId,
    session: &SessionId,
    page: &Page,
) -> Result<Vec<RunRecord>> {
    snapshot(conn, |conn| {
        let spk = session_pk(conn, tenant, session)?;
        let after_pk = match &page.after {
            None => 0,
            Some(after) => {
                let missing = || Error::NotFound { what: "run", id: after.chars().take(80).collect() };
                let run: RunId = after.parse().map_err(|_| missing())?;
                conn.row(
                    "SELECT pk FROM runs WHERE id = ?1 AND session_pk = ?2",
                    params![&run.as_bytes()[..], spk],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .sql()?
                .ok_or_else(missing)?
            }
        };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN sessions s ON s.pk = r.session_pk \
             WHERE r.session_pk = ?1 AND r.tenant = ?2 AND r.pk > ?3 ORDER BY r.pk LIMIT ?4"
        );
        let mut stmt = conn.prepare_cached(&sql).sql()?;
        let rows = stmt.query(params![spk, tenant.as_str(), after_pk, page_limit(page)]).sql()?;
        Ok(collect(rows, run_from_row)?.into_iter().map(|(_, r)| r).collect())
    })
}

pub(crate) fn active_runs(conn: &Connection, tenant: &TenantId, session: &SessionId) -> Result<Vec<RunRecord>> {
    snapshot(conn, |conn| {
        let spk = session_pk(conn, tenant, session)?;
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN sessions s ON s.pk = r.session_pk \
             WHERE r.session_pk = ?1 AND r.tenant = ?2 \
               AND (r.status IN ('queued', 'running') OR r.status IN ('requires_action', 'awaiting_approval')) \
             ORDER BY r.pk"
        );
        let mut stmt = conn.prepare_cached(&sql).sql()?;
        let rows = stmt.query(params![spk, tenant.as_str()]).sql()?;
        Ok(collect(rows, run_from_row)?.into_iter().map(|(_, r)| r).collect())
    })
}

pub(crate) fn get_approval(conn: &Connection, tenant: &TenantId, id: &ApprovalId) -> Result<ApprovalRecord> {
    let sql = format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals a JOIN sessions s ON s.pk = a.session_pk \
         WHERE a.id = ?1 AND a.tenant = ?2"
    );
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let mut rows = stmt.query(params![&id.as_bytes()[..], tenant.as_str()]).sql()?;
    match rows.next().sql()? {
        Some(row) => approval_from_row(row),
        None => Err(Error::NotFound { what: "approval", id: id.to_string() }),
    }
}

/// The listing query: `?1` is the session pk or the tenant, `?2` the tenant, `?3` the cursor's
/// pk, `?4` the limit. Four spellings rather than optional predicates (`?x IS NULL OR …`),
/// which would keep the planner from the matching index (the partial one needs the literal
/// `decision IS NULL`).
pub(crate) fn list_approvals_sql(by_session: bool, pending_only: bool) -> String {
    let scope = if by_session { "a.session_pk = ?1" } else { "a.tenant = ?1" };
    let pending = if pending_only { " AND a.decision IS NULL" } else { "" };
    format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals a JOIN sessions s ON s.pk = a.session_pk \
         WHERE {scope}{pending} AND a.tenant = ?2 AND a.pk > ?3 ORDER BY a.pk LIMIT ?4"
    )
}

/// Oldest first (pk is insertion order); the cursor is the last approval id seen. A session
/// filter naming a session the tenant does not have matches nothing.
pub(crate) fn list_approvals(
    conn: &Connection,
    tenant: &TenantId,
    filter: &ApprovalFilter,
    page: &Page,
) -> Result<Vec<ApprovalRecord>> {
    snapshot(conn, |conn| {
        let after_pk = match &page.after {
            None => 0,
            Some(after) => {
                let missing = || Error::NotFound { what: "approval", id: after.chars().take(80).collect() };
                let id: ApprovalId = after.parse().map_err(|_| missing())?;
                conn.row(
                    "SELECT pk FROM approvals WHERE id = ?1 AND tenant = ?2",
                    params![&id.as_bytes()[..], tenant.as_str()],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .sql()?
                .ok_or_else(missing)?
            }
        };
        let session_pk = match &filter.session {
            None => None,
            Some(session) => match session_pk(conn, tenant, session) {
                Ok(pk) => Some(pk),
                Err(Error::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            },
        };
        let key = match session_pk {
            Some(pk) => rusqlite::types::Value::Integer(pk),
            None => rusqlite::types::Value::Text(tenant.as_str().to_owned()),
        };
        let sql = list_approvals_sql(session_pk.is_some(), filter.pending_only);
        let mut stmt = conn.prepare_cached(&sql).sql()?;
        let rows = stmt.query(params![key, tenant.as_str(), after_pk, page_limit(page)]).sql()?;
        collect(rows, approval_from_row)
    })
}

/// Pending approvals due by `?1`, soonest deadline first, at most `?2`: walks `approvals_due`.
pub(crate) fn due_approvals_sql() -> String {
    format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals a JOIN sessions s ON s.pk = a.session_pk \
         WHERE a.decision IS NULL AND a.expires_at <= ?1 ORDER BY a.expires_at, a.pk LIMIT ?2"
    )
}

pub(crate) fn due_approvals(conn: &Connection, now: Timestamp, limit: u32) -> Result<Vec<ApprovalRecord>> {
    let sql = due_approvals_sql();
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let rows = stmt.query(params![now.millis(), i64::from(limit)]).sql()?;
    collect(rows, approval_from_row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("explain");
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let rows = stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3)).expect("plan");
        rows.map(|r| r.expect("row")).collect::<Vec<_>>().join("\n")
    }

    /// The two hot queries must walk their partial indexes, not the tables: the window is
    /// O(limit) whatever the session's length, and claiming only visits unfinished runs.
    #[test]
    fn hot_queries_use_their_indexes() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = crate::schema::open_writer(&dir.path().join("x.db"), crate::Durability::Off).expect("open");
        let window = plan(&conn, MESSAGE_WINDOW);
        assert!(window.contains("USING INDEX events_messages"), "{window}");
        let claim = plan(&conn, crate::write::CLAIMABLE);
        assert!(claim.contains("USING INDEX runs_claimable"), "{claim}");
        assert!(claim.contains("USING INDEX runs_unfinished"), "{claim}");
        let sessions =
            plan(&conn, "SELECT * FROM sessions s WHERE s.tenant = ?1 AND s.id < ?2 ORDER BY s.id DESC LIMIT ?3");
        assert!(sessions.contains("sessions_by_tenant") && !sessions.contains("TEMP B-TREE"), "{sessions}");
        let active = plan(
            &conn,
            "SELECT r.pk FROM runs r WHERE r.session_pk = ?1 AND r.tenant = ?2 \
             AND (r.status IN ('queued', 'running') OR r.status IN ('requires_action', 'awaiting_approval')) \
             ORDER BY r.pk",
        );
        assert!(active.contains("USING INDEX runs_unfinished"), "{active}");
        for (by_session, pending, index) in [
            (false, false, "approvals_by_tenant"),
            (false, true, "approvals_pending"),
            (true, false, "approvals_by_session"),
        ] {
            let list = plan(&conn, &list_approvals_sql(by_session, pending));
            assert!(list.contains(index) && !list.contains("TEMP B-TREE"), "{list}");
        }
        let list = plan(&conn, &list_approvals_sql(true, true));
        assert!(list.contains("approvals_by_session") && !list.contains("TEMP B-TREE"), "{list}");
        let due = plan(&conn, &due_approvals_sql());
        assert!(due.contains("USING INDEX approvals_due") && !due.contains("TEMP B-TREE"), "{due}");
    }

    /// Writing a run evaluates the partial indexes' predicates; none may need a temporary
    /// B-tree (SQLite builds one for `IN` lists of three or more values), which would be
    /// built and freed on every step.
    #[test]
    fn run_writes_need_no_temporary_btree() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = crate::schema::open_writer(&dir.path().join("x.db"), crate::Durability::Off).expect("open");
        for sql in [crate::write::INSERT_RUN, crate::write::UPDATE_RUN, crate::write::CLAIMABLE] {
            let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).expect("explain");
            let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
            let ops: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(1))
                .expect("ops")
                .map(|r| r.expect("op"))
                .collect();
            assert!(!ops.iter().any(|op| op == "OpenEphemeral"), "{sql}");
        }
    }
}
