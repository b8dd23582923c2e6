//! Conversions between rows and records, and from SQLite errors to store errors.
//!
//! Anything read back that does not decode (a bad id blob, invalid JSON, a negative
//! sequence, a time no RFC 3339 date can show) was written outside Stead and is reported as
//! `Corrupt`, never a panic.

use rusqlite::{Connection, ErrorCode, OptionalExtension, Params, Row, params};
use stead_core::agent::AgentSpec;
use stead_core::event::{Actor, ApprovalDecision, ApprovalKind, Event};
use stead_core::ids::{AgentVersionId, ApprovalId, RunId, SessionId, TenantId};
use stead_core::run::RunState;
use stead_store::{AgentVersion, ApprovalRecord, Error, Lease, Result, RunRecord, SessionRecord};

pub(crate) use stead_store::stored::{
    body_from, corrupt, hash_bytes, id_bytes, json, tenant, time, to_i64, to_json, to_u64, word,
};

/// Maps a SQLite error: damaged files become `Corrupt`, everything else `Backend`.
pub(crate) fn sql_error(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Error::Corrupt(e.to_string()),
        _ => Error::Backend(e.to_string()),
    }
}

/// `?`-friendly mapping of rusqlite results (the orphan rule forbids a `From` impl).
pub(crate) trait SqlResult<T> {
    fn sql(self) -> Result<T>;
}

impl<T> SqlResult<T> for rusqlite::Result<T> {
    fn sql(self) -> Result<T> {
        self.map_err(sql_error)
    }
}

/// Statements through the connection's prepared-statement cache: the hot paths run the same
/// few statements over and over, and parsing and planning them again each time costs more
/// than running them.
pub(crate) trait Cached {
    /// Like `Connection::execute`, with the statement cached.
    fn exec<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    /// Like `Connection::query_row`, with the statement cached.
    fn row<T, P: Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P: Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Prepared statements each connection keeps (the writer runs about 30 distinct ones).
pub(crate) const STATEMENT_CACHE: usize = 64;

/// Columns of an event row, in the order [`EVENT_COLUMNS`] selects them.
pub(crate) const EVENT_COLUMNS: &str = "seq, run_id, kind, actor, at, data, hash";

pub(crate) fn event_from_row(row: &Row<'_>, tenant_id: &TenantId, session_id: SessionId) -> Result<Event> {
    let seq: i64 = row.get(0).sql()?;
    let run: Option<Vec<u8>> = row.get(1).sql()?;
    let kind: String = row.get(2).sql()?;
    let actor: String = row.get(3).sql()?;
    let at: i64 = row.get(4).sql()?;
    let data: String = row.get(5).sql()?;
    let hash: Vec<u8> = row.get(6).sql()?;
    let seq = to_u64(seq, "event sequence")?;
    Ok(Event {
        tenant_id: tenant_id.clone(),
        session_id,
        seq,
        run_id: run.map(|b| id_bytes(&b, "run").map(RunId::from_bytes)).transpose()?,
        actor: Actor(actor),
        at: time(at, &format!("event {seq}: stored time"))?,
        body: body_from(&kind, &data)?,
        hash: hex::encode(hash_bytes(&hash)?),
    })
}

/// The session columns [`session_from_row`] reads, for a table aliased `s`.
pub(crate) const SESSION_COLUMNS: &str =
    "s.pk, s.id, s.tenant, s.agent, s.agent_version, s.metadata, s.head_seq, s.head_hash, s.created_at, s.updated_at";

pub(crate) fn session_from_row(row: &Row<'_>) -> Result<(i64, SessionRecord)> {
    let pk: i64 = row.get(0).sql()?;
    let id: Vec<u8> = row.get(1).sql()?;
    let tenant_s: String = row.get(2).sql()?;
    let agent: String = row.get(3).sql()?;
    let agent_version: i64 = row.get(4).sql()?;
    let metadata: String = row.get(5).sql()?;
    let head_seq: i64 = row.get(6).sql()?;
    let head_hash: Vec<u8> = row.get(7).sql()?;
    let created_at: i64 = row.get(8).sql()?;
    let updated_at: i64 = row.get(9).sql()?;
    Ok((
        pk,
        SessionRecord {
            id: SessionId::from_bytes(id_bytes(&id, "session")?),
            tenant_id: tenant(&tenant_s)?,
            agent,
            agent_version: u32::try_from(agent_version)
                .map_err(|_| corrupt(format!("session agent version {agent_version} is out of range")))?,
            metadata: json(&metadata, "session metadata")?,
            head_seq: to_u64(head_seq, "session head")?,
            head_hash: hex::encode(hash_bytes(&head_hash)?),
            created_at: time(created_at, "session creation time")?,
            updated_at: time(updated_at, "session update time")?,
        },
    ))
}

/// The session (with its internal key) by tenant and id; `NotFound` otherwise.
pub(crate) fn load_session(conn: &Connection, tenant: &TenantId, id: &SessionId) -> Result<(i64, SessionRecord)> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?1 AND s.tenant = ?2");
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let mut rows = stmt.query(params![&id.as_bytes()[..], tenant.as_str()]).sql()?;
    match rows.next().sql()? {
        Some(row) => session_from_row(row),
        None => Err(Error::NotFound { what: "session", id: id.to_string() }),
    }
}

/// The session's internal key by tenant and id; `NotFound` otherwise.
pub(crate) fn session_pk(conn: &Connection, tenant: &TenantId, id: &SessionId) -> Result<i64> {
    conn.row(
        "SELECT pk FROM sessions WHERE id = ?1 AND tenant = ?2",
        params![&id.as_bytes()[..], tenant.as_str()],
        |r| r.get(0),
    )
    .optional()
    .sql()?
    .ok_or_else(|| Error::NotFound { what: "session", id: id.to_string() })
}

/// The run columns [`run_from_row`] reads, for `runs r JOIN sessions s`.
pub(crate) const RUN_COLUMNS: &str =
    "r.pk, r.id, r.tenant, s.id, r.state, r.lease_owner, r.lease_expires, r.lease_token, r.updated_at";

pub(crate) fn run_from_row(row: &Row<'_>) -> Result<(i64, RunRecord)> {
    let pk: i64 = row.get(0).sql()?;
    let id: Vec<u8> = row.get(1).sql()?;
    let tenant_s: String = row.get(2).sql()?;
    let session: Vec<u8> = row.get(3).sql()?;
    let state: String = row.get(4).sql()?;
    let owner: Option<String> = row.get(5).sql()?;
    let expires: Option<i64> = row.get(6).sql()?;
    let token: i64 = row.get(7).sql()?;
    let updated_at: i64 = row.get(8).sql()?;
    let state: RunState = json(&state, "run state")?;
    Ok((
        pk,
        RunRecord {
            id: RunId::from_bytes(id_bytes(&id, "run")?),
            tenant_id: tenant(&tenant_s)?,
            session_id: SessionId::from_bytes(id_bytes(&session, "session")?),
            state,
            lease: match (owner, expires) {
                (Some(owner), Some(at)) => Some(Lease { owner, expires_at: time(at, "run lease expiry")? }),
                _ => None,
            },
            fencing_token: to_u64(token, "fencing token")?,
            updated_at: time(updated_at, "run update time")?,
        },
    ))
}

/// A run by internal key, whatever its tenant (callers have already scoped the key).
pub(crate) fn run_by_pk(conn: &Connection, pk: i64) -> Result<RunRecord> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs r JOIN sessions s ON s.pk = r.session_pk WHERE r.pk = ?1");
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let mut rows = stmt.query([pk]).sql()?;
    match rows.next().sql()? {
        Some(row) => Ok(run_from_row(row)?.1),
        None => Err(corrupt(format!("run {pk} has no session"))),
    }
}

pub(crate) const AGENT_COLUMNS: &str = "id, tenant, name, version, spec, spec_hash, created_at";

pub(crate) fn agent_from_row(row: &Row<'_>) -> Result<AgentVersion> {
    let id: Vec<u8> = row.get(0).sql()?;
    let tenant_s: String = row.get(1).sql()?;
    let name: String = row.get(2).sql()?;
    let version: i64 = row.get(3).sql()?;
    let spec: String = row.get(4).sql()?;
    let spec_hash: String = row.get(5).sql()?;
    let created_at: i64 = row.get(6).sql()?;
    let spec: AgentSpec = json(&spec, "agent spec")?;
    Ok(AgentVersion {
        id: AgentVersionId::from_bytes(id_bytes(&id, "agent version")?),
        tenant_id: tenant(&tenant_s)?,
        name,
        version: u32::try_from(version).map_err(|_| corrupt(format!("agent version {version} is out of range")))?,
        spec,
        spec_hash,
        created_at: time(created_at, "agent version creation time")?,
    })
}

/// The approval columns [`approval_from_row`] reads, for `approvals a JOIN sessions s`.
pub(crate) const APPROVAL_COLUMNS: &str = "a.id, a.tenant, s.id, a.run_id, a.kind, a.call_id, a.tool_name, \
     a.arguments, a.role, a.reason, a.created_at, a.expires_at, a.decision, a.decided_by, a.decided_at, \
     a.decision_reason, a.decided_arguments, a.output";

pub(crate) fn approval_from_row(row: &Row<'_>) -> Result<ApprovalRecord> {
    let id: Vec<u8> = row.get(0).sql()?;
    let tenant_s: String = row.get(1).sql()?;
    let session: Vec<u8> = row.get(2).sql()?;
    let run: Vec<u8> = row.get(3).sql()?;
    let kind: String = row.get(4).sql()?;
    let decision: Option<String> = row.get(12).sql()?;
    Ok(ApprovalRecord {
        id: ApprovalId::from_bytes(id_bytes(&id, "approval")?),
        tenant_id: tenant(&tenant_s)?,
        session_id: SessionId::from_bytes(id_bytes(&session, "session")?),
        run_id: RunId::from_bytes(id_bytes(&run, "run")?),
        kind: word::<ApprovalKind>(&kind, "approval kind")?,
        call_id: row.get(5).sql()?,
        tool_name: row.get(6).sql()?,
        arguments: row.get(7).sql()?,
        role: row.get(8).sql()?,
        reason: row.get(9).sql()?,
        created_at: time(row.get(10).sql()?, "approval creation time")?,
        expires_at: time(row.get(11).sql()?, "approval expiry")?,
        decision: decision.as_deref().map(|d| word::<ApprovalDecision>(d, "approval decision")).transpose()?,
        decided_by: row.get(13).sql()?,
        decided_at: row.get::<_, Option<i64>>(14).sql()?.map(|t| time(t, "approval decision time")).transpose()?,
        decision_reason: row.get(15).sql()?,
        decided_arguments: row.get(16).sql()?,
        output: row.get(17).sql()?,
    })
}

/// Collects every row of a query through a fallible row mapper.
pub(crate) fn collect<T>(mut rows: rusqlite::Rows<'_>, mut f: impl FnMut(&Row<'_>) -> Result<T>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next().sql()? {
        out.push(f(row)?);
    }
    Ok(out)
}
