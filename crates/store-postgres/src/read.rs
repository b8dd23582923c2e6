//! Reads: one statement each where possible (a missing session is told apart from an empty
//! answer by a `LEFT JOIN LATERAL` from the session row), so each sees one snapshot.

use deadpool_postgres::GenericClient;
use stead_core::event::Event;
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::time::Timestamp;
use stead_store::project::page_limit;
use stead_store::{AgentVersion, ApprovalFilter, ApprovalRecord, Error, Page, Result, RunRecord, SessionRecord};

use crate::query;
use crate::rows::{
    AGENT_COLUMNS, APPROVAL_COLUMNS, EVENT_COLUMNS, RUN_COLUMNS, SESSION_COLUMNS, agent_from_row, approval_from_row,
    event_from_row, get, run_from_row, session_from_row, to_i64,
};

pub(crate) async fn get_agent(
    c: &impl GenericClient,
    tenant: &TenantId,
    name: &str,
    version: Option<u32>,
) -> Result<AgentVersion> {
    let rows = match version {
        Some(v) => {
            let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = $1 AND name = $2 AND version = $3");
            query(c, &sql, &[&tenant.as_str(), &name, &i64::from(v)]).await?
        }
        None => {
            let sql = format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = $1 AND name = $2 ORDER BY version DESC LIMIT 1"
            );
            query(c, &sql, &[&tenant.as_str(), &name]).await?
        }
    };
    match rows.first() {
        Some(row) => agent_from_row(row),
        None => Err(stead_store::project::agent_not_found(name, version)),
    }
}

/// The latest version of each agent, by name; the cursor is the last name seen.
pub(crate) async fn list_agents(c: &impl GenericClient, tenant: &TenantId, page: &Page) -> Result<Vec<AgentVersion>> {
    let sql = format!(
        "SELECT DISTINCT ON (name) {AGENT_COLUMNS} FROM agents WHERE tenant = $1 AND name > $2 \
         ORDER BY name, version DESC LIMIT $3"
    );
    let after = page.after.as_deref().unwrap_or("");
    query(c, &sql, &[&tenant.as_str(), &after, &page_limit(page)]).await?.iter().map(agent_from_row).collect()
}

pub(crate) async fn list_agent_versions(
    c: &impl GenericClient,
    tenant: &TenantId,
    name: &str,
) -> Result<Vec<AgentVersion>> {
    let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = $1 AND name = $2 ORDER BY version");
    let versions: Vec<AgentVersion> =
        query(c, &sql, &[&tenant.as_str(), &name]).await?.iter().map(agent_from_row).collect::<Result<_>>()?;
    if versions.is_empty() {
        return Err(Error::NotFound { what: "agent", id: name.to_owned() });
    }
    Ok(versions)
}

pub(crate) async fn get_session(c: &impl GenericClient, tenant: &TenantId, id: &SessionId) -> Result<SessionRecord> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = $1 AND s.tenant = $2");
    let rows = query(c, &sql, &[&&id.as_bytes()[..], &tenant.as_str()]).await?;
    match rows.first() {
        Some(row) => Ok(session_from_row(row, 0)?.1),
        None => Err(Error::NotFound { what: "session", id: id.to_string() }),
    }
}

/// Newest first; the cursor is the last session id seen (ids are time-ordered UUIDv7, and
/// bytea compares bytewise).
pub(crate) async fn list_sessions(
    c: &impl GenericClient,
    tenant: &TenantId,
    page: &Page,
) -> Result<Vec<SessionRecord>> {
    let limit = page_limit(page);
    let rows = match &page.after {
        Some(after) => {
            let after: SessionId =
                after.parse().map_err(|_| Error::NotFound { what: "session", id: after.chars().take(80).collect() })?;
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.tenant = $1 AND s.id < $2 ORDER BY s.id DESC LIMIT $3"
            );
            query(c, &sql, &[&tenant.as_str(), &&after.as_bytes()[..], &limit]).await?
        }
        None => {
            let sql =
                format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.tenant = $1 ORDER BY s.id DESC LIMIT $2");
            query(c, &sql, &[&tenant.as_str(), &limit]).await?
        }
    };
    rows.iter().map(|r| session_from_row(r, 0).map(|(_, s)| s)).collect()
}

/// Events of a session from a `sessions s LEFT JOIN LATERAL (…) e` query: no row means no
/// such session, a row with a null `seq` an empty answer.
fn events_of(rows: &[tokio_postgres::Row], tenant: &TenantId, session: &SessionId) -> Result<Vec<Event>> {
    if rows.is_empty() {
        return Err(Error::NotFound { what: "session", id: session.to_string() });
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        if get::<Option<i64>>(row, 0, "event sequence")?.is_none() {
            continue;
        }
        events.push(event_from_row(row, 0, tenant, *session)?);
    }
    Ok(events)
}

pub(crate) async fn read_events(
    c: &impl GenericClient,
    tenant: &TenantId,
    session: &SessionId,
    after: u64,
    limit: u32,
) -> Result<Vec<Event>> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM sessions s LEFT JOIN LATERAL \
         (SELECT * FROM events e WHERE e.session_pk = s.pk AND e.seq > $3 ORDER BY e.seq LIMIT $4) e ON true \
         WHERE s.id = $1 AND s.tenant = $2 ORDER BY e.seq"
    );
    let rows = query(c, &sql, &[&&session.as_bytes()[..], &tenant.as_str(), &to_i64(after), &i64::from(limit)]).await?;
    events_of(&rows, tenant, session)
}

/// Walks the partial index on message events backwards from `up_to`: O(limit).
pub(crate) async fn read_message_window(
    c: &impl GenericClient,
    tenant: &TenantId,
    session: &SessionId,
    up_to: u64,
    limit: u32,
) -> Result<Vec<Event>> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM sessions s LEFT JOIN LATERAL \
         (SELECT * FROM events e WHERE e.session_pk = s.pk AND e.msg AND e.seq <= $3 ORDER BY e.seq DESC LIMIT $4) e \
         ON true WHERE s.id = $1 AND s.tenant = $2 ORDER BY e.seq"
    );
    let rows = query(c, &sql, &[&&session.as_bytes()[..], &tenant.as_str(), &to_i64(up_to), &i64::from(limit)]).await?;
    events_of(&rows, tenant, session)
}

pub(crate) async fn get_run(c: &impl GenericClient, tenant: &TenantId, id: &RunId) -> Result<RunRecord> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs r JOIN sessions s ON s.pk = r.session_pk WHERE r.id = $1 AND r.tenant = $2"
    );
    let rows = query(c, &sql, &[&&id.as_bytes()[..], &tenant.as_str()]).await?;
    match rows.first() {
        Some(row) => Ok(run_from_row(row, 0)?.1),
        None => Err(Error::NotFound { what: "run", id: id.to_string() }),
    }
}

/// Runs of a session from a `sessions s LEFT JOIN LATERAL (…) r` query (see [`events_of`]).
fn runs_of(rows: &[tokio_postgres::Row], session: &SessionId) -> Result<Vec<RunRecord>> {
    if rows.is_empty() {
        return Err(Error::NotFound { what: "session", id: session.to_string() });
    }
    let mut runs = Vec::with_capacity(rows.len());
    for row in rows {
        if get::<Option<i64>>(row, 0, "run key")?.is_none() {
            continue;
        }
        runs.push(run_from_row(row, 0)?.1);
    }
    Ok(runs)
}

/// Oldest first; the cursor is the last run id seen.
pub(crate) async fn list_runs(
    c: &impl GenericClient,
    tenant: &TenantId,
    session: &SessionId,
    page: &Page,
) -> Result<Vec<RunRecord>> {
    let after_pk = match &page.after {
        None => 0,
        Some(after) => {
            let missing = || Error::NotFound { what: "run", id: after.chars().take(80).collect() };
            let run: RunId = after.parse().map_err(|_| missing())?;
            let rows = query(
                c,
                "SELECT r.pk FROM runs r JOIN sessions s ON s.pk = r.session_pk \
                 WHERE r.id = $1 AND s.id = $2 AND s.tenant = $3",
                &[&&run.as_bytes()[..], &&session.as_bytes()[..], &tenant.as_str()],
            )
            .await?;
            match rows.first() {
                Some(row) => get::<i64>(row, 0, "run key")?,
                None => {
                    // An unknown session is reported as such, before the cursor.
                    get_session(c, tenant, session).await?;
                    return Err(missing());
                }
            }
        }
    };
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM sessions s LEFT JOIN LATERAL \
         (SELECT * FROM runs r WHERE r.session_pk = s.pk AND r.pk > $3 ORDER BY r.pk LIMIT $4) r ON true \
         WHERE s.id = $1 AND s.tenant = $2 ORDER BY r.pk"
    );
    let rows = query(c, &sql, &[&&session.as_bytes()[..], &tenant.as_str(), &after_pk, &page_limit(page)]).await?;
    runs_of(&rows, session)
}

pub(crate) async fn active_runs(
    c: &impl GenericClient,
    tenant: &TenantId,
    session: &SessionId,
) -> Result<Vec<RunRecord>> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM sessions s LEFT JOIN LATERAL \
         (SELECT * FROM runs r WHERE r.session_pk = s.pk \
            AND r.status IN ('queued', 'running', 'requires_action', 'awaiting_approval') ORDER BY r.pk) r ON true \
         WHERE s.id = $1 AND s.tenant = $2 ORDER BY r.pk"
    );
    let rows = query(c, &sql, &[&&session.as_bytes()[..], &tenant.as_str()]).await?;
    runs_of(&rows, session)
}

pub(crate) async fn get_approval(c: &impl GenericClient, tenant: &TenantId, id: &ApprovalId) -> Result<ApprovalRecord> {
    let sql = format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals a JOIN sessions s ON s.pk = a.session_pk \
         WHERE a.id = $1 AND a.tenant = $2"
    );
    let rows = query(c, &sql, &[&&id.as_bytes()[..], &tenant.as_str()]).await?;
    match rows.first() {
        Some(row) => approval_from_row(row),
        None => Err(Error::NotFound { what: "approval", id: id.to_string() }),
    }
}

/// Oldest first (pk is insertion order); the cursor is the last approval id seen. A session
/// filter naming a session the tenant does not have matches nothing.
pub(crate) async fn list_approvals(
    c: &impl GenericClient,
    tenant: &TenantId,
    filter: &ApprovalFilter,
    page: &Page,
) -> Result<Vec<ApprovalRecord>> {
    let after_pk: i64 = match &page.after {
        None => 0,
        Some(after) => {
            let missing = || Error::NotFound { what: "approval", id: after.chars().take(80).collect() };
            let id: ApprovalId = after.parse().map_err(|_| missing())?;
            let rows = query(
                c,
                "SELECT pk FROM approvals WHERE id = $1 AND tenant = $2",
                &[&&id.as_bytes()[..], &tenant.as_str()],
            )
            .await?;
            get(rows.first().ok_or_else(missing)?, 0, "approval key")?
        }
    };
    let pending = if filter.pending_only { " AND a.decision IS NULL" } else { "" };
    let rows = match &filter.session {
        Some(session) => {
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals a JOIN sessions s ON s.pk = a.session_pk \
                 WHERE s.id = $1 AND s.tenant = $2{pending} AND a.tenant = $2 AND a.pk > $3 ORDER BY a.pk LIMIT $4"
            );
            query(c, &sql, &[&&session.as_bytes()[..], &tenant.as_str(), &after_pk, &page_limit(page)]).await?
        }
        None => {
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals a JOIN sessions s ON s.pk = a.session_pk \
                 WHERE a.tenant = $1{pending} AND a.pk > $2 ORDER BY a.pk LIMIT $3"
            );
            query(c, &sql, &[&tenant.as_str(), &after_pk, &page_limit(page)]).await?
        }
    };
    rows.iter().map(approval_from_row).collect()
}

/// Pending approvals due by `now`, soonest deadline first, across tenants: walks `approvals_due`.
pub(crate) async fn due_approvals(c: &impl GenericClient, now: Timestamp, limit: u32) -> Result<Vec<ApprovalRecord>> {
    let sql = format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals a JOIN sessions s ON s.pk = a.session_pk \
         WHERE a.decision IS NULL AND a.expires_at <= $1 ORDER BY a.expires_at, a.pk LIMIT $2"
    );
    query(c, &sql, &[&now.millis(), &i64::from(limit)]).await?.iter().map(approval_from_row).collect()
}
