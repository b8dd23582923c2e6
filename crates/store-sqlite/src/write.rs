//! The write operations, as run by the writer thread inside one savepoint each.
//!
//! Each function either does all of its writes or returns an error; the writer rolls the
//! savepoint back on error, so nothing partial is ever committed.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Statement, params};
use stead_core::agent::AgentSpec;
use stead_core::event::{ApprovalKind, Event, SerializedBody};
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::run::RunState;
use stead_core::time::Timestamp;
use stead_store::project::{
    self, AppendPlan, DecisionRow, Loaded, References, Sealed, StoredApproval, StoredRun, check_first_event,
    check_session_limit, first_run_created, plan_append, seal,
};
use stead_store::{
    AgentVersion, AppendRequest, Claim, Committed, Error, IdempotencyKey, IdempotencyRecord, NewSession, Result,
    SessionRecord,
};

use crate::rows::{
    AGENT_COLUMNS, Cached, SESSION_COLUMNS, SqlResult, agent_from_row, corrupt, hash_bytes, json, run_by_pk,
    session_from_row, session_pk, to_i64, to_json, to_u64,
};
use crate::writer::WriteCtx;

type Written<T> = Result<(T, Vec<Committed>)>;

pub(crate) fn put_agent(conn: &Connection, tenant: &TenantId, spec: &AgentSpec) -> Written<(AgentVersion, bool)> {
    let latest = {
        let sql =
            format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ?1 AND name = ?2 ORDER BY version DESC LIMIT 1");
        let mut stmt = conn.prepare_cached(&sql).sql()?;
        let mut rows = stmt.query(params![tenant.as_str(), spec.name]).sql()?;
        match rows.next().sql()? {
            Some(row) => Some(agent_from_row(row)?),
            None => None,
        }
    };
    let agent = match project::next_agent_version(tenant, spec, latest)? {
        Ok(new) => new,
        Err(same) => return Ok(((same, false), Vec::new())),
    };
    conn.exec(
        "INSERT INTO agents (tenant, name, version, id, spec, spec_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            tenant.as_str(),
            agent.name,
            agent.version,
            &agent.id.as_bytes()[..],
            to_json(spec, "agent spec")?,
            agent.spec_hash,
            agent.created_at.millis()
        ],
    )
    .sql()?;
    Ok(((agent, true), Vec::new()))
}

const INSERT_EVENT: &str = "INSERT INTO events (session_pk, seq, tenant, run_id, kind, actor, at, data, hash, msg) \
                            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Inserts one sealed event.
fn insert_sealed(insert: &mut Statement<'_>, session_pk: i64, sealed: &Sealed) -> Result<()> {
    let e = &sealed.event;
    insert
        .execute(params![
            session_pk,
            to_i64(e.seq),
            e.tenant_id.as_str(),
            e.run_id.as_ref().map(|r| &r.as_bytes()[..]),
            e.body.kind(),
            e.actor.0,
            e.at.millis(),
            sealed.data_json,
            &sealed.hash[..],
            e.body.is_message(),
        ])
        .sql()?;
    Ok(())
}

pub(crate) fn create_session(conn: &Connection, ctx: &WriteCtx, new: NewSession) -> Written<(SessionRecord, Event)> {
    let NewSession { tenant_id, id, agent, agent_version, metadata, first_event, then, idempotency } = new;
    if let Some(key) = &idempotency {
        check_idempotency(conn, &tenant_id, key)?;
    }
    check_first_event(&first_event)?;
    let serialized = SerializedBody::of(&first_event.body).map_err(Error::Backend)?;
    let existing: Option<(String, i64)> = conn
        .row("SELECT tenant, head_seq FROM sessions WHERE id = ?1", [&id.as_bytes()[..]], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .sql()?;
    if let Some((owner, head)) = existing {
        // Another tenant's session is reported as merely "not empty", never its real head.
        let actual = if owner == tenant_id.as_str() { to_u64(head, "session head")? } else { 1 };
        return Err(Error::Conflict { expected: 0, actual });
    }
    check_session_limit(&ctx.limits(), 0, 1)?;
    let at = Timestamp::now();
    conn.exec(
        "INSERT INTO sessions (id, tenant, agent, agent_version, metadata, head_seq, head_hash, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?7)",
        params![
            &id.as_bytes()[..],
            tenant_id.as_str(),
            agent,
            agent_version,
            to_json(&metadata, "session metadata")?,
            &stead_core::event::GENESIS_HASH[..],
            at.millis()
        ],
    )
    .sql()?;
    let pk = conn.last_insert_rowid();
    let mut insert = conn.prepare_cached(INSERT_EVENT).sql()?;
    let sealed = seal(
        &ctx.limits(),
        &tenant_id,
        id,
        1,
        at,
        stead_core::event::GENESIS_HASH,
        vec![first_event],
        vec![serialized],
    )?;
    let Some(first) = sealed.into_iter().next() else {
        return Err(Error::Backend("sealing the first event produced nothing".into()));
    };
    insert_sealed(&mut insert, pk, &first)?;
    let event = first.event;
    conn.exec("UPDATE sessions SET head_seq = 1, head_hash = ?1 WHERE pk = ?2", params![&first.hash[..], pk]).sql()?;
    let record = SessionRecord {
        id,
        tenant_id: tenant_id.clone(),
        agent,
        agent_version,
        metadata,
        head_seq: 1,
        head_hash: event.hash.clone(),
        created_at: at,
        updated_at: at,
    };
    let note = Committed {
        tenant_id: tenant_id.clone(),
        session_id: id,
        events: Arc::from(vec![event.clone()]),
        runs: Vec::new(),
    };
    let mut notes = vec![note];
    let mut record = record;
    let first_run = first_run_created(&then);
    if !then.is_empty() {
        let serialized = project::serialize_bodies(then.iter())?;
        let req = AppendRequest {
            tenant_id: tenant_id.clone(),
            session_id: id,
            expected_head: 1,
            events: then,
            fence: None,
            idempotency: None,
        };
        let (events, more) = append(conn, ctx, req, serialized)?;
        if let Some(last) = events.last() {
            record.head_seq = last.seq;
            record.head_hash = last.hash.clone();
            record.updated_at = last.at;
        }
        notes.extend(more);
    }
    if let Some(key) = &idempotency {
        claim_idempotency(conn, &tenant_id, key, pk, id, first_run)?;
    }
    Ok(((record, event), notes))
}

/// `IdempotencyKeyUsed` when the tenant's key is claimed and has not expired.
fn check_idempotency(conn: &Connection, tenant: &TenantId, key: &IdempotencyKey) -> Result<()> {
    match idempotency_record(conn, tenant, &key.key)? {
        Some(record) => Err(Error::IdempotencyKeyUsed(Box::new(record))),
        None => Ok(()),
    }
}

/// An `idempotency_keys` row: fingerprint, session id, run id, created and expiry times.
type IdempotencyRow = (String, Vec<u8>, Option<Vec<u8>>, i64, i64);

/// The live claim of a tenant's idempotency key.
pub(crate) fn idempotency_record(conn: &Connection, tenant: &TenantId, key: &str) -> Result<Option<IdempotencyRecord>> {
    let row: Option<IdempotencyRow> = conn
        .row(
            "SELECT fingerprint, session_id, run_id, created_at, expires_at FROM idempotency_keys \
             WHERE tenant = ?1 AND key = ?2 AND expires_at > ?3",
            params![tenant.as_str(), key, Timestamp::now().millis()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .sql()?;
    let Some((fingerprint, session, run, created, expires)) = row else { return Ok(None) };
    Ok(Some(IdempotencyRecord {
        key: key.to_owned(),
        fingerprint,
        session_id: SessionId::from_bytes(crate::rows::id_bytes(&session, "session")?),
        run_id: run.map(|r| crate::rows::id_bytes(&r, "run").map(RunId::from_bytes)).transpose()?,
        created_at: crate::rows::time(created, "idempotency created_at")?,
        expires_at: crate::rows::time(expires, "idempotency expires_at")?,
    }))
}

/// Claims the key for what this write created (replacing an expired claim).
fn claim_idempotency(
    conn: &Connection,
    tenant: &TenantId,
    key: &IdempotencyKey,
    session_pk: i64,
    session: SessionId,
    run: Option<RunId>,
) -> Result<()> {
    conn.exec(
        "INSERT OR REPLACE INTO idempotency_keys \
         (tenant, key, fingerprint, session_pk, session_id, run_id, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            tenant.as_str(),
            key.key,
            key.fingerprint,
            session_pk,
            &session.as_bytes()[..],
            run.as_ref().map(|r| &r.as_bytes()[..]),
            Timestamp::now().millis(),
            key.expires_at.millis()
        ],
    )
    .sql()?;
    Ok(())
}

/// Checks that the fence's lease is still the run's current one.
fn check_fence(conn: &Connection, tenant: &TenantId, session_pk: i64, fence: &stead_store::Fence) -> Result<()> {
    let row: Option<(i64, String, Option<String>, i64)> = conn
        .row(
            "SELECT session_pk, tenant, lease_owner, lease_token FROM runs WHERE id = ?1",
            [&fence.run_id.as_bytes()[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .sql()?;
    match row {
        Some((spk, t, Some(_), token)) if spk == session_pk && t == tenant.as_str() && token == to_i64(fence.token) => {
            Ok(())
        }
        _ => Err(Error::Fenced { run: fence.run_id, token: fence.token }),
    }
}

pub(crate) const INSERT_RUN: &str = "INSERT INTO runs (id, tenant, session_pk, status, state, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)";

/// A run that no worker may hold (waiting on the client, finished) keeps no lease.
pub(crate) const UPDATE_RUN: &str = "UPDATE runs SET status = ?1, state = ?2, updated_at = ?3, \
     lease_owner = CASE WHEN ?4 THEN lease_owner END, \
     lease_expires = CASE WHEN ?4 THEN lease_expires END \
     WHERE pk = ?5";

pub(crate) fn append(
    conn: &Connection,
    ctx: &WriteCtx,
    req: AppendRequest,
    serialized: Vec<SerializedBody>,
) -> Written<Vec<Event>> {
    let AppendRequest { tenant_id, session_id, expected_head, events, fence, idempotency } = req;
    if let Some(key) = &idempotency {
        check_idempotency(conn, &tenant_id, key)?;
    }
    let (pk, head_seq, head_hash, head_at): (i64, i64, Vec<u8>, i64) = conn
        .row(
            "SELECT pk, head_seq, head_hash, updated_at FROM sessions WHERE id = ?1 AND tenant = ?2",
            params![&session_id.as_bytes()[..], tenant_id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .sql()?
        .ok_or_else(|| Error::NotFound { what: "session", id: session_id.to_string() })?;
    let head = to_u64(head_seq, "session head")?;
    if head != expected_head {
        return Err(Error::Conflict { expected: expected_head, actual: head });
    }
    if let Some(fence) = &fence {
        check_fence(conn, &tenant_id, pk, fence)?;
    }
    if events.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    check_session_limit(&ctx.limits(), head, events.len())?;

    // Time never runs backwards within a session, even if the clock does.
    let at = Timestamp::now().max(Timestamp(head_at));
    let loaded = load_references(conn, &tenant_id, pk, &project::references(&events))?;
    let plan = plan_append(&events, at, head, &loaded)?;
    let sealed =
        seal(&ctx.limits(), &tenant_id, session_id, head + 1, at, hash_bytes(&head_hash)?, events, serialized)?;
    let mut insert = conn.prepare_cached(INSERT_EVENT).sql()?;
    for s in &sealed {
        insert_sealed(&mut insert, pk, s)?;
    }
    write_plan(conn, &tenant_id, pk, at, &plan)?;
    if let Some(fence) = &fence {
        conn.exec(
            "UPDATE runs SET lease_expires = ?1 WHERE id = ?2 AND lease_owner IS NOT NULL",
            params![Timestamp::now().plus(fence.extend_lease).millis(), &fence.run_id.as_bytes()[..]],
        )
        .sql()?;
    }
    let last = sealed.last().map_or((head, head_hash.clone()), |s| (s.event.seq, s.hash.to_vec()));
    conn.exec(
        "UPDATE sessions SET head_seq = ?1, head_hash = ?2, updated_at = ?3 WHERE pk = ?4",
        params![to_i64(last.0), last.1, at.millis(), pk],
    )
    .sql()?;
    let committed: Vec<Event> = sealed.into_iter().map(|s| s.event).collect();
    if let Some(key) = &idempotency {
        claim_idempotency(conn, &tenant_id, key, pk, session_id, first_run_created_in(&committed))?;
    }
    let note = project::committed(&tenant_id, session_id, &committed, &plan);
    Ok((committed, vec![note]))
}

/// The run a committed batch created first, if any.
fn first_run_created_in(events: &[Event]) -> Option<RunId> {
    events.iter().find(|e| matches!(e.body, stead_core::event::EventBody::RunCreated { .. })).and_then(|e| e.run_id)
}

/// Loads what [`plan_append`] needs: each named run (its state if it is this session's) and
/// each named approval (by id alone: ids are unique across tenants).
fn load_references(conn: &Connection, tenant: &TenantId, session_pk: i64, refs: &References) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    for run in &refs.runs {
        let row: Option<(i64, i64, String, String)> = conn
            .row("SELECT pk, session_pk, tenant, state FROM runs WHERE id = ?1", [&run.as_bytes()[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .sql()?;
        if let Some((pk, spk, t, state)) = row {
            let stored = if spk == session_pk && t == tenant.as_str() {
                StoredRun::Here { pk, state: Box::new(json(&state, "run state")?) }
            } else {
                StoredRun::Elsewhere
            };
            loaded.runs.insert(*run, stored);
        }
    }
    for id in &refs.approvals {
        type Row = (String, i64, Vec<u8>, String, String, String, String, bool);
        let row: Option<Row> = conn
            .row(
                "SELECT tenant, session_pk, run_id, kind, call_id, tool_name, arguments, decision IS NOT NULL                  FROM approvals WHERE id = ?1",
                [&id.as_bytes()[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
            )
            .optional()
            .sql()?;
        if let Some((t, spk, run, kind, call_id, tool_name, arguments, decided)) = row {
            let kind = crate::rows::word::<ApprovalKind>(&kind, "approval kind")?;
            loaded.approvals.insert(
                *id,
                StoredApproval {
                    here: spk == session_pk && t == tenant.as_str(),
                    run_id: RunId::from_bytes(crate::rows::id_bytes(&run, "run")?),
                    kind,
                    call_id,
                    tool_name,
                    arguments,
                    decided,
                },
            );
        }
    }
    Ok(loaded)
}

/// Writes what an accepted append changes besides its events: metadata, approvals, runs.
fn write_plan(conn: &Connection, tenant: &TenantId, session_pk: i64, at: Timestamp, plan: &AppendPlan) -> Result<()> {
    if let Some(metadata) = &plan.metadata {
        let text = to_json(metadata, "session metadata")?;
        conn.exec("UPDATE sessions SET metadata = ?1 WHERE pk = ?2", params![text, session_pk]).sql()?;
    }
    for a in &plan.new_approvals {
        conn.exec(
            "INSERT INTO approvals (id, tenant, session_pk, run_id, kind, call_id, tool_name, arguments, role, \
             reason, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                &a.id.as_bytes()[..],
                tenant.as_str(),
                session_pk,
                &a.run_id.as_bytes()[..],
                a.kind.as_str(),
                a.call_id,
                a.tool_name,
                a.arguments,
                a.role,
                a.reason,
                a.created_at.millis(),
                a.expires_at.millis()
            ],
        )
        .sql()?;
        if let Some(d) = &a.decision {
            decide_approval(conn, a.id, d)?;
        }
    }
    for c in &plan.changed_approvals {
        conn.exec(
            "UPDATE approvals SET run_id = ?1 WHERE id = ?2",
            params![&c.run_id.as_bytes()[..], &c.id.as_bytes()[..]],
        )
        .sql()?;
        if let Some(d) = &c.decision {
            decide_approval(conn, c.id, d)?;
        }
    }
    for run in &plan.runs {
        let status = run.state.status;
        let state = to_json(&run.state, "run state")?;
        match run.pk {
            None => {
                conn.exec(
                    INSERT_RUN,
                    params![&run.id.as_bytes()[..], tenant.as_str(), session_pk, status.as_str(), state, at.millis()],
                )
                .sql()?;
            }
            Some(run_pk) => {
                conn.exec(UPDATE_RUN, params![status.as_str(), state, at.millis(), status.is_claimable(), run_pk])
                    .sql()?;
            }
        }
    }
    Ok(())
}

fn decide_approval(conn: &Connection, id: ApprovalId, d: &DecisionRow) -> Result<()> {
    conn.exec(
        "UPDATE approvals SET decision = ?1, decided_by = ?2, decided_at = ?3, decision_reason = ?4, \
         decided_arguments = ?5, output = ?6 WHERE id = ?7",
        params![
            d.decision.as_str(),
            d.decided_by,
            d.decided_at.millis(),
            d.reason,
            d.arguments,
            d.output,
            &id.as_bytes()[..]
        ],
    )
    .sql()?;
    Ok(())
}

pub(crate) fn delete_session(conn: &Connection, tenant: &TenantId, id: &SessionId) -> Written<()> {
    let pk = session_pk(conn, tenant, id)?;
    let leased: Option<Vec<u8>> = conn
        .row(
            "SELECT id FROM runs WHERE session_pk = ?1 AND lease_owner IS NOT NULL AND lease_expires > ?2 LIMIT 1",
            params![pk, Timestamp::now().millis()],
            |r| r.get(0),
        )
        .optional()
        .sql()?;
    if let Some(run) = leased {
        let run = RunId::from_bytes(crate::rows::id_bytes(&run, "run")?);
        return Err(Error::Busy(format!(
            "session {id} has run {run} claimed by a worker; cancel it or wait for its lease to expire"
        )));
    }
    conn.exec("DELETE FROM events WHERE session_pk = ?1", [pk]).sql()?;
    conn.exec("DELETE FROM runs WHERE session_pk = ?1", [pk]).sql()?;
    conn.exec("DELETE FROM approvals WHERE session_pk = ?1", [pk]).sql()?;
    conn.exec("DELETE FROM idempotency_keys WHERE session_pk = ?1", [pk]).sql()?;
    conn.exec("DELETE FROM sessions WHERE pk = ?1", [pk]).sql()?;
    Ok(((), Vec::new()))
}

/// Claimable runs, oldest first: queued or running, unleased or with an expired lease, and
/// the oldest unfinished run of their session (a run waiting on the client or on an approval
/// blocks later ones). The unfinished predicate is spelled exactly as `runs_unfinished`'s.
pub(crate) const CLAIMABLE: &str = "SELECT r.pk FROM runs r \
     WHERE r.status IN ('queued', 'running') \
       AND (r.lease_owner IS NULL OR r.lease_expires <= ?1) \
       AND NOT EXISTS (SELECT 1 FROM runs e \
                       WHERE e.session_pk = r.session_pk AND e.pk < r.pk \
                         AND (e.status IN ('queued', 'running') \
                              OR e.status IN ('requires_action', 'awaiting_approval'))) \
     ORDER BY r.pk LIMIT ?2";

pub(crate) fn claim_runs(conn: &Connection, worker: &str, lease: Duration, max: usize) -> Written<Vec<Claim>> {
    if max == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let now = Timestamp::now();
    let pks: Vec<i64> = {
        let mut stmt = conn.prepare_cached(CLAIMABLE).sql()?;
        let rows = stmt.query(params![now.millis(), i64::try_from(max).unwrap_or(i64::MAX)]).sql()?;
        crate::rows::collect(rows, |r| r.get(0).sql())?
    };
    let expires = now.plus(lease).millis();
    let mut claims = Vec::with_capacity(pks.len());
    for pk in pks {
        conn.exec(
            "UPDATE runs SET lease_owner = ?1, lease_expires = ?2, lease_token = lease_token + 1 WHERE pk = ?3",
            params![worker, expires, pk],
        )
        .sql()?;
        // One row written behind Stead's back must not stop every other run: set it aside.
        match claimed(conn, pk) {
            Ok(claim) => claims.push(claim),
            Err(Error::Corrupt(why)) => quarantine(conn, pk, &why, now)?,
            Err(e) => return Err(e),
        }
    }
    Ok((claims, Vec::new()))
}

/// A just-leased run and its session, decoded.
fn claimed(conn: &Connection, pk: i64) -> Result<Claim> {
    let run = run_by_pk(conn, pk)?;
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s JOIN runs r ON r.session_pk = s.pk WHERE r.pk = ?1");
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let mut rows = stmt.query([pk]).sql()?;
    let session = match rows.next().sql()? {
        Some(row) => session_from_row(row)?.1,
        None => return Err(corrupt(format!("run {} has no session", run.id))),
    };
    Ok(Claim { token: run.fencing_token, run, session })
}

/// Takes a run whose row (or its session's) does not decode out of the claim queue for good:
/// status `failed`, no lease. Its state says so (`corrupt_row`) when the state itself still
/// decodes. The log is not touched: `audit` still shows what is there. Logged once, here.
fn quarantine(conn: &Connection, pk: i64, why: &str, now: Timestamp) -> Result<()> {
    let (id, state): (Vec<u8>, String) =
        conn.row("SELECT id, state FROM runs WHERE pk = ?1", [pk], |r| Ok((r.get(0)?, r.get(1)?))).sql()?;
    let run =
        <[u8; 16]>::try_from(id.as_slice()).map_or_else(|_| format!("pk {pk}"), |b| RunId::from_bytes(b).to_string());
    tracing::error!(run = %run, error = why, "a run's stored row does not decode; it is marked failed and never claimed");
    let state = project::quarantined_state(serde_json::from_str::<RunState>(&state).ok(), why, now);
    let state = state.map(|s| to_json(&s, "run state")).transpose()?;
    conn.exec(
        "UPDATE runs SET status = 'failed', state = coalesce(?2, state), lease_owner = NULL, lease_expires = NULL \
         WHERE pk = ?1",
        params![pk, state],
    )
    .sql()?;
    Ok(())
}

/// The run's current lease holder and token; `NotFound` if there is no such run.
fn lease_of(conn: &Connection, run: &RunId) -> Result<(Option<String>, i64)> {
    conn.row("SELECT lease_owner, lease_token FROM runs WHERE id = ?1", [&run.as_bytes()[..]], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
    .sql()?
    .ok_or_else(|| Error::NotFound { what: "run", id: run.to_string() })
}

pub(crate) fn renew_lease(conn: &Connection, run: &RunId, token: u64, lease: Duration) -> Written<()> {
    match lease_of(conn, run)? {
        (Some(_), current) if current == to_i64(token) => {
            conn.exec(
                "UPDATE runs SET lease_expires = ?1 WHERE id = ?2",
                params![Timestamp::now().plus(lease).millis(), &run.as_bytes()[..]],
            )
            .sql()?;
            Ok(((), Vec::new()))
        }
        _ => Err(Error::Fenced { run: *run, token }),
    }
}

pub(crate) fn release_lease(conn: &Connection, run: &RunId, token: u64) -> Written<()> {
    let (_, current) = lease_of(conn, run)?;
    if current != to_i64(token) {
        return Err(Error::Fenced { run: *run, token });
    }
    conn.exec("UPDATE runs SET lease_owner = NULL, lease_expires = NULL WHERE id = ?1", [&run.as_bytes()[..]]).sql()?;
    Ok(((), Vec::new()))
}

/// Opening the store forgets every lease: only this process uses the database, so a lease
/// still recorded belongs to a previous process that is gone. Tokens keep counting.
pub(crate) fn reset_leases(conn: &Connection) -> Result<usize> {
    conn.exec("UPDATE runs SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner IS NOT NULL", []).sql()
}
