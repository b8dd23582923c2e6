//! Conversions between rows and records, and from PostgreSQL errors to store errors.
//!
//! Anything read back that does not decode (a bad id, invalid JSON, a negative sequence, a
//! time no RFC 3339 date can show, a column of the wrong type) was written outside Stead and
//! is reported as `Corrupt`, never a panic.

use stead_core::agent::AgentSpec;
use stead_core::event::{Actor, ApprovalDecision, ApprovalKind, Event};
use stead_core::ids::{AgentVersionId, ApprovalId, RunId, SessionId, TenantId};
use stead_core::run::RunState;
use stead_store::{AgentVersion, ApprovalRecord, Error, Lease, Result, RunRecord, SessionRecord};

pub(crate) use stead_store::stored::{
    body_from, corrupt, hash_bytes, id_bytes, json, tenant, time, to_i64, to_json, to_u64, word,
};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;

/// Why an attempt at a write failed: for good, or in a way worth trying again (a
/// serialization failure or a deadlock, which PostgreSQL resolves by aborting one side).
#[derive(Debug)]
pub(crate) enum Fail {
    Store(Error),
    Retry(String),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Store(e)
    }
}

impl From<Fail> for Error {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Store(e) => e,
            Fail::Retry(m) => Error::Backend(m),
        }
    }
}

pub(crate) type Attempt<T> = std::result::Result<T, Fail>;

/// Maps a driver error. Connection trouble is `Unavailable` (the caller adds host:port; the
/// driver's messages never carry the password), corruption reported by the server `Corrupt`.
pub(crate) fn classify(e: &tokio_postgres::Error) -> Fail {
    let Some(db) = e.as_db_error() else {
        return Fail::Store(Error::Unavailable(format!("the connection failed: {}", with_causes(e))));
    };
    let code = db.code();
    let text = format!("{} (SQLSTATE {})", db.message(), code.code());
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return Fail::Retry(text);
    }
    let class = &code.code()[..2];
    Fail::Store(match class {
        // Connection exceptions, insufficient resources, operator intervention (shutdown,
        // timeouts: statement, lock, idle in transaction), authorization.
        "08" | "53" | "57" | "28" => Error::Unavailable(text),
        "25" if *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT => Error::Unavailable(text),
        "XX" if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED => Error::Corrupt(text),
        _ => Error::Backend(text),
    })
}

/// An error and its causes (`error connecting to server: Connection refused (os error 111)`):
/// the driver's `Display` shows only the first.
pub(crate) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// `?`-friendly mapping of driver results (the orphan rule forbids a `From` impl).
pub(crate) trait Pg<T> {
    fn pg(self) -> Attempt<T>;
}

impl<T> Pg<T> for std::result::Result<T, tokio_postgres::Error> {
    fn pg(self) -> Attempt<T> {
        self.map_err(|e| classify(&e))
    }
}

/// Whether the error is a unique violation (of any constraint).
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// One column, of the expected type; anything else is corruption.
pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize, what: &str) -> Result<T> {
    row.try_get(idx).map_err(|e| corrupt(format!("stored {what} does not decode: {e}")))
}

/// The event columns [`event_from_row`] reads, starting at column `at` of a row.
pub(crate) const EVENT_COLUMNS: &str = "e.seq, e.run_id, e.kind, e.actor, e.at, e.data, e.hash";

pub(crate) fn event_from_row(row: &Row, at: usize, tenant_id: &TenantId, session_id: SessionId) -> Result<Event> {
    let seq: i64 = get(row, at, "event sequence")?;
    let run: Option<&[u8]> = get(row, at + 1, "event run")?;
    let kind: &str = get(row, at + 2, "event kind")?;
    let actor: String = get(row, at + 3, "event actor")?;
    let ms: i64 = get(row, at + 4, "event time")?;
    let data: &str = get(row, at + 5, "event data")?;
    let hash: &[u8] = get(row, at + 6, "event hash")?;
    let seq = to_u64(seq, "event sequence")?;
    Ok(Event {
        tenant_id: tenant_id.clone(),
        session_id,
        seq,
        run_id: run.map(|b| id_bytes(b, "run").map(RunId::from_bytes)).transpose()?,
        actor: Actor(actor),
        at: time(ms, &format!("event {seq}: stored time"))?,
        body: body_from(kind, data)?,
        hash: hex::encode(hash_bytes(hash)?),
    })
}

/// The session columns [`session_from_row`] reads, for a table aliased `s`.
pub(crate) const SESSION_COLUMNS: &str =
    "s.pk, s.id, s.tenant, s.agent, s.agent_version, s.metadata, s.head_seq, s.head_hash, s.created_at, s.updated_at";

/// A session from the [`SESSION_COLUMNS`] starting at column `at`.
pub(crate) fn session_from_row(row: &Row, at: usize) -> Result<(i64, SessionRecord)> {
    let pk: i64 = get(row, at, "session key")?;
    let id: &[u8] = get(row, at + 1, "session id")?;
    let tenant_s: &str = get(row, at + 2, "session tenant")?;
    let agent: String = get(row, at + 3, "session agent")?;
    let agent_version: i64 = get(row, at + 4, "session agent version")?;
    let metadata: &str = get(row, at + 5, "session metadata")?;
    let head_seq: i64 = get(row, at + 6, "session head")?;
    let head_hash: &[u8] = get(row, at + 7, "session head hash")?;
    let created_at: i64 = get(row, at + 8, "session creation time")?;
    let updated_at: i64 = get(row, at + 9, "session update time")?;
    Ok((
        pk,
        SessionRecord {
            id: SessionId::from_bytes(id_bytes(id, "session")?),
            tenant_id: tenant(tenant_s)?,
            agent,
            agent_version: u32::try_from(agent_version)
                .map_err(|_| corrupt(format!("session agent version {agent_version} is out of range")))?,
            metadata: json(metadata, "session metadata")?,
            head_seq: to_u64(head_seq, "session head")?,
            head_hash: hex::encode(hash_bytes(head_hash)?),
            created_at: time(created_at, "session creation time")?,
            updated_at: time(updated_at, "session update time")?,
        },
    ))
}

/// The run columns [`run_from_row`] reads, for `runs r JOIN sessions s`.
pub(crate) const RUN_COLUMNS: &str =
    "r.pk, r.id, r.tenant, s.id, r.state, r.lease_owner, r.lease_expires, r.lease_token, r.updated_at";

/// A run from the [`RUN_COLUMNS`] starting at column `at`.
pub(crate) fn run_from_row(row: &Row, at: usize) -> Result<(i64, RunRecord)> {
    let pk: i64 = get(row, at, "run key")?;
    let id: &[u8] = get(row, at + 1, "run id")?;
    let tenant_s: &str = get(row, at + 2, "run tenant")?;
    let session: &[u8] = get(row, at + 3, "run session")?;
    let state: &str = get(row, at + 4, "run state")?;
    let owner: Option<String> = get(row, at + 5, "run lease owner")?;
    let expires: Option<i64> = get(row, at + 6, "run lease expiry")?;
    let token: i64 = get(row, at + 7, "fencing token")?;
    let updated_at: i64 = get(row, at + 8, "run update time")?;
    let state: RunState = json(state, "run state")?;
    Ok((
        pk,
        RunRecord {
            id: RunId::from_bytes(id_bytes(id, "run")?),
            tenant_id: tenant(tenant_s)?,
            session_id: SessionId::from_bytes(id_bytes(session, "session")?),
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

pub(crate) const AGENT_COLUMNS: &str = "id, tenant, name, version, spec, spec_hash, created_at";

pub(crate) fn agent_from_row(row: &Row) -> Result<AgentVersion> {
    let id: &[u8] = get(row, 0, "agent version id")?;
    let tenant_s: &str = get(row, 1, "agent tenant")?;
    let name: String = get(row, 2, "agent name")?;
    let version: i64 = get(row, 3, "agent version")?;
    let spec: &str = get(row, 4, "agent spec")?;
    let spec_hash: String = get(row, 5, "agent spec hash")?;
    let created_at: i64 = get(row, 6, "agent creation time")?;
    let spec: AgentSpec = json(spec, "agent spec")?;
    Ok(AgentVersion {
        id: AgentVersionId::from_bytes(id_bytes(id, "agent version")?),
        tenant_id: tenant(tenant_s)?,
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

pub(crate) fn approval_from_row(row: &Row) -> Result<ApprovalRecord> {
    let id: &[u8] = get(row, 0, "approval id")?;
    let tenant_s: &str = get(row, 1, "approval tenant")?;
    let session: &[u8] = get(row, 2, "approval session")?;
    let run: &[u8] = get(row, 3, "approval run")?;
    let kind: &str = get(row, 4, "approval kind")?;
    let decision: Option<&str> = get(row, 12, "approval decision")?;
    let decided_at: Option<i64> = get(row, 14, "approval decision time")?;
    Ok(ApprovalRecord {
        id: ApprovalId::from_bytes(id_bytes(id, "approval")?),
        tenant_id: tenant(tenant_s)?,
        session_id: SessionId::from_bytes(id_bytes(session, "session")?),
        run_id: RunId::from_bytes(id_bytes(run, "run")?),
        kind: word::<ApprovalKind>(kind, "approval kind")?,
        call_id: get(row, 5, "approval call id")?,
        tool_name: get(row, 6, "approval tool name")?,
        arguments: get(row, 7, "approval arguments")?,
        role: get(row, 8, "approval role")?,
        reason: get(row, 9, "approval reason")?,
        created_at: time(get(row, 10, "approval creation time")?, "approval creation time")?,
        expires_at: time(get(row, 11, "approval expiry")?, "approval expiry")?,
        decision: decision.map(|d| word::<ApprovalDecision>(d, "approval decision")).transpose()?,
        decided_by: get(row, 13, "approval decider")?,
        decided_at: decided_at.map(|t| time(t, "approval decision time")).transpose()?,
        decision_reason: get(row, 15, "approval decision reason")?,
        decided_arguments: get(row, 16, "approval decided arguments")?,
        output: get(row, 17, "approval output")?,
    })
}
