//! The write operations, as run by the writer thread inside one savepoint each.
//!
//! Each function either does all of its writes or returns an error; the writer rolls the
//! savepoint back on error, so nothing partial is ever committed.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Statement, params};
use sha2::{Digest, Sha256};
use stead_core::agent::AgentSpec;
use stead_core::event::{Event, EventBody, NewEvent, SerializedBody, chain_hash_serialized};
use stead_core::ids::{AgentVersionId, RunId, SessionId, TenantId};
use stead_core::run::{RunState, RunStatus};
use stead_core::time::Timestamp;
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

/// Hex SHA-256 of the spec's canonical JSON (RFC 8785), so formatting and key order
/// do not make a new version.
pub(crate) fn spec_hash(spec: &AgentSpec) -> Result<String> {
    let canonical =
        serde_jcs::to_vec(spec).map_err(|e| Error::Backend(format!("cannot canonicalize agent spec: {e}")))?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}

pub(crate) fn put_agent(conn: &Connection, tenant: &TenantId, spec: &AgentSpec) -> Written<(AgentVersion, bool)> {
    let hash = spec_hash(spec)?;
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
    if let Some(latest) = latest.as_ref().filter(|l| l.spec_hash == hash) {
        return Ok(((latest.clone(), false), Vec::new()));
    }
    let version = match &latest {
        Some(l) => l
            .version
            .checked_add(1)
            .ok_or_else(|| Error::LimitExceeded(format!("agent {} has too many versions", spec.name)))?,
        None => 1,
    };
    let agent = AgentVersion {
        id: AgentVersionId::new(),
        tenant_id: tenant.clone(),
        name: spec.name.clone(),
        version,
        spec: spec.clone(),
        spec_hash: hash,
        created_at: Timestamp::now(),
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

/// Serializes, size-checks, hashes and inserts one event.
#[allow(clippy::too_many_arguments)]
fn insert_event(
    insert: &mut Statement<'_>,
    ctx: &WriteCtx,
    session_pk: i64,
    tenant: &TenantId,
    session: SessionId,
    seq: u64,
    at: Timestamp,
    prev: &[u8; 32],
    new: NewEvent,
    serialized: SerializedBody,
) -> Result<(Event, [u8; 32])> {
    let SerializedBody { data_json: data, data_canonical } = serialized;
    if data.len() > ctx.max_event_bytes {
        return Err(Error::LimitExceeded(format!(
            "a `{}` event's payload is {} bytes, over the limit of {} bytes (max_event_bytes)",
            new.body.kind(),
            data.len(),
            ctx.max_event_bytes
        )));
    }
    let hash = chain_hash_serialized(
        prev,
        tenant,
        &session,
        seq,
        &new.run_id,
        &new.actor,
        &at,
        new.body.kind(),
        &data_canonical,
    );
    insert
        .execute(params![
            session_pk,
            to_i64(seq),
            tenant.as_str(),
            new.run_id.as_ref().map(|r| &r.as_bytes()[..]),
            new.body.kind(),
            new.actor.0,
            at.millis(),
            data,
            &hash[..],
            new.body.is_message(),
        ])
        .sql()?;
    let event = Event {
        tenant_id: tenant.clone(),
        session_id: session,
        seq,
        run_id: new.run_id,
        actor: new.actor,
        at,
        body: new.body,
        hash: hex::encode(hash),
    };
    Ok((event, hash))
}

/// An event whose shape is wrong regardless of any state: the caller built it badly.
fn malformed(event: &NewEvent, why: &str) -> Error {
    match event.run_id {
        Some(run) => Error::InvalidTransition { run, reason: format!("`{}` event {why}", event.body.kind()) },
        None => Error::Backend(format!("invalid `{}` event: {why}", event.body.kind())),
    }
}

fn check_session_limit(ctx: &WriteCtx, head: u64, adding: usize) -> Result<()> {
    let total = head.saturating_add(adding as u64);
    if total > ctx.max_events_per_session {
        return Err(Error::LimitExceeded(format!(
            "the session would hold {total} events, over the limit of {} (max_events_per_session)",
            ctx.max_events_per_session
        )));
    }
    Ok(())
}

pub(crate) fn create_session(conn: &Connection, ctx: &WriteCtx, new: NewSession) -> Written<(SessionRecord, Event)> {
    let NewSession { tenant_id, id, agent, agent_version, metadata, first_event, then, idempotency } = new;
    if let Some(key) = &idempotency {
        check_idempotency(conn, &tenant_id, key)?;
    }
    if !matches!(first_event.body, EventBody::SessionCreated { .. }) {
        return Err(malformed(&first_event, "cannot start a session (expected `session_created`)"));
    }
    if first_event.run_id.is_some() {
        return Err(malformed(&first_event, "must not name a run"));
    }
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
    check_session_limit(ctx, 0, 1)?;
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
    let (event, hash) = insert_event(
        &mut insert,
        ctx,
        pk,
        &tenant_id,
        id,
        1,
        at,
        &stead_core::event::GENESIS_HASH,
        first_event,
        serialized,
    )?;
    conn.exec("UPDATE sessions SET head_seq = 1, head_hash = ?1 WHERE pk = ?2", params![&hash[..], pk]).sql()?;
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
        let serialized = serialize_bodies(then.iter())?;
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

/// The run a batch of events creates first, if any: what an idempotency key remembers.
fn first_run_created(events: &[NewEvent]) -> Option<RunId> {
    events.iter().find(|e| matches!(e.body, EventBody::RunCreated { .. })).and_then(|e| e.run_id)
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

/// A run touched by an append: its state before (None if created here) and after.
struct RunSlot {
    id: RunId,
    /// `None` for a run created by this append.
    pk: Option<i64>,
    before: Option<RunStatus>,
    state: RunState,
}

/// Loads a run of this session for an append; anything else is an invalid transition.
fn load_run_slot(conn: &Connection, tenant: &TenantId, session_pk: i64, run: RunId) -> Result<RunSlot> {
    let row: Option<(i64, i64, String, String)> = conn
        .row("SELECT pk, session_pk, tenant, state FROM runs WHERE id = ?1", [&run.as_bytes()[..]], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
        .sql()?;
    match row {
        Some((pk, spk, t, state)) if spk == session_pk && t == tenant.as_str() => {
            let state: RunState = json(&state, "run state")?;
            Ok(RunSlot { id: run, pk: Some(pk), before: Some(state.status), state })
        }
        _ => Err(Error::InvalidTransition { run, reason: "the run does not exist in this session".into() }),
    }
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

/// Serializes every event's body (the costly, writer-independent part of hashing) on the
/// caller's thread, so the single writer only splices and hashes.
pub(crate) fn serialize_bodies<'a>(events: impl Iterator<Item = &'a NewEvent>) -> Result<Vec<SerializedBody>> {
    events.map(|e| SerializedBody::of(&e.body).map_err(Error::Backend)).collect()
}

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
    check_session_limit(ctx, head, events.len())?;

    // Time never runs backwards within a session, even if the clock does.
    let at = Timestamp::now().max(Timestamp(head_at));
    let mut prev = hash_bytes(&head_hash)?;
    let mut slots: Vec<RunSlot> = Vec::new();
    let mut committed = Vec::with_capacity(events.len());
    let mut insert = conn.prepare_cached(INSERT_EVENT).sql()?;
    for (i, (new, ser)) in events.into_iter().zip(serialized).enumerate() {
        let seq = head + 1 + i as u64;
        match (&new.body, new.run_id) {
            (EventBody::SessionCreated { .. }, _) => {
                return Err(malformed(&new, "can only be a session's first event"));
            }
            (EventBody::SessionUpdated { metadata }, None) => {
                let text = to_json(metadata, "session metadata")?;
                conn.exec("UPDATE sessions SET metadata = ?1 WHERE pk = ?2", params![text, pk]).sql()?;
            }
            (body, None) if body.is_session_level() => {}
            (_, None) => return Err(malformed(&new, "must name its run")),
            (body, Some(_)) if body.is_session_level() => {
                return Err(malformed(&new, "belongs to the session, not to a run"));
            }
            (EventBody::RunCreated { .. }, Some(run)) => {
                let taken = slots.iter().any(|s| s.id == run)
                    || conn
                        .row("SELECT 1 FROM runs WHERE id = ?1", [&run.as_bytes()[..]], |_| Ok(()))
                        .optional()
                        .sql()?
                        .is_some();
                if taken {
                    return Err(Error::InvalidTransition { run, reason: "a run with this id already exists".into() });
                }
                if let EventBody::RunCreated { carried, .. } = &new.body {
                    for c in carried {
                        take_over_approval(conn, &tenant_id, pk, run, c)?;
                    }
                }
                slots.push(RunSlot {
                    id: run,
                    pk: None,
                    before: None,
                    state: RunState::created_from(seq, at, &new.body),
                });
            }
            (body, Some(run)) => {
                let idx = match slots.iter().position(|s| s.id == run) {
                    Some(idx) => idx,
                    None => {
                        slots.push(load_run_slot(conn, &tenant_id, pk, run)?);
                        slots.len() - 1
                    }
                };
                slots[idx].state.apply(at, body).map_err(|reason| Error::InvalidTransition { run, reason })?;
                project_approval(conn, &tenant_id, pk, run, at, body)?;
            }
        }
        let (event, hash) = insert_event(&mut insert, ctx, pk, &tenant_id, session_id, seq, at, &prev, new, ser)?;
        prev = hash;
        committed.push(event);
    }

    let mut changed = Vec::new();
    for slot in &slots {
        let status = slot.state.status;
        let state = to_json(&slot.state, "run state")?;
        match slot.pk {
            None => {
                conn.exec(
                    INSERT_RUN,
                    params![&slot.id.as_bytes()[..], tenant_id.as_str(), pk, status.as_str(), state, at.millis()],
                )
                .sql()?;
            }
            Some(run_pk) => {
                conn.exec(UPDATE_RUN, params![status.as_str(), state, at.millis(), status.is_claimable(), run_pk])
                    .sql()?;
            }
        }
        if slot.before != Some(status) {
            changed.push((slot.id, status));
        }
    }
    if let Some(fence) = &fence {
        conn.exec(
            "UPDATE runs SET lease_expires = ?1 WHERE id = ?2 AND lease_owner IS NOT NULL",
            params![Timestamp::now().plus(fence.extend_lease).millis(), &fence.run_id.as_bytes()[..]],
        )
        .sql()?;
    }
    let last = committed.last().map_or(head, |e| e.seq);
    conn.exec(
        "UPDATE sessions SET head_seq = ?1, head_hash = ?2, updated_at = ?3 WHERE pk = ?4",
        params![to_i64(last), &prev[..], at.millis(), pk],
    )
    .sql()?;
    if let Some(key) = &idempotency {
        let run = committed.iter().find(|e| matches!(e.body, EventBody::RunCreated { .. })).and_then(|e| e.run_id);
        claim_idempotency(conn, &tenant_id, key, pk, session_id, run)?;
    }
    let note = Committed { tenant_id, session_id, events: Arc::from(committed.clone()), runs: changed };
    Ok((committed, vec![note]))
}

/// Moves an open approval of a completed run to the run that carries its call on. Only one
/// run can: the row must still belong to the run it came from, undecided.
fn take_over_approval(
    conn: &Connection,
    tenant: &TenantId,
    session_pk: i64,
    run: RunId,
    carried: &stead_core::event::CarriedCall,
) -> Result<()> {
    let moved = conn
        .exec(
            "UPDATE approvals SET run_id = ?1 \
             WHERE id = ?2 AND tenant = ?3 AND session_pk = ?4 AND run_id = ?5 AND call_id = ?6 \
               AND tool_name = ?7 AND arguments = ?8 \
               AND decision IS NULL AND kind = 'tool_call' \
               AND EXISTS (SELECT 1 FROM runs r WHERE r.id = ?5 AND r.status = 'completed')",
            params![
                &run.as_bytes()[..],
                &carried.approval_id.as_bytes()[..],
                tenant.as_str(),
                session_pk,
                &carried.from_run.as_bytes()[..],
                carried.call.id,
                carried.call.name,
                carried.call.arguments
            ],
        )
        .sql()?;
    if moved != 1 {
        return Err(Error::InvalidTransition {
            run,
            reason: format!(
                "approval {} is not an open question about this call of completed run {} in this session (decided, expired, already taken over, or another call)",
                carried.approval_id, carried.from_run
            ),
        });
    }
    Ok(())
}

/// Folds an approval event into the approvals table. Runs after `RunState::apply` accepted
/// the event, yet checks again on its own: the run state only knows its run, so only here can
/// an approval id reused elsewhere be caught, and the projection must never quietly diverge
/// from the log.
fn project_approval(
    conn: &Connection,
    tenant: &TenantId,
    session_pk: i64,
    run: RunId,
    at: Timestamp,
    body: &EventBody,
) -> Result<()> {
    match body {
        EventBody::ApprovalRequested { approval_id, kind, call_id, name, arguments, role, expires_at, reason } => {
            // Ids are unique across tenants (like run ids), so this lookup is not tenant-scoped.
            let taken = conn
                .row("SELECT 1 FROM approvals WHERE id = ?1", [&approval_id.as_bytes()[..]], |_| Ok(()))
                .optional()
                .sql()?
                .is_some();
            if taken {
                return Err(Error::InvalidTransition {
                    run,
                    reason: format!("an approval with id {approval_id} already exists"),
                });
            }
            conn.exec(
                "INSERT INTO approvals (id, tenant, session_pk, run_id, kind, call_id, tool_name, arguments, role, \
                 reason, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    &approval_id.as_bytes()[..],
                    tenant.as_str(),
                    session_pk,
                    &run.as_bytes()[..],
                    kind.as_str(),
                    call_id,
                    name,
                    arguments,
                    role,
                    reason,
                    at.millis(),
                    expires_at.millis()
                ],
            )
            .sql()?;
        }
        EventBody::ApprovalDecided { approval_id, call_id, decision, decided_by, reason, arguments, output } => {
            let updated = conn
                .exec(
                    "UPDATE approvals SET decision = ?1, decided_by = ?2, decided_at = ?3, decision_reason = ?4, \
                     decided_arguments = ?5, output = ?6 \
                     WHERE id = ?7 AND tenant = ?8 AND session_pk = ?9 AND run_id = ?10 AND call_id = ?11 \
                       AND decision IS NULL",
                    params![
                        decision.as_str(),
                        decided_by,
                        at.millis(),
                        reason,
                        arguments,
                        output,
                        &approval_id.as_bytes()[..],
                        tenant.as_str(),
                        session_pk,
                        &run.as_bytes()[..],
                        call_id
                    ],
                )
                .sql()?;
            if updated != 1 {
                return Err(Error::InvalidTransition {
                    run,
                    reason: format!("approval {approval_id} is not pending for call {call_id:?} of this run"),
                });
            }
        }
        _ => {}
    }
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

/// Error code of a run set aside because its row or its session's row does not decode.
pub const CORRUPT_ROW: &str = "corrupt_row";

/// Takes a run whose row (or its session's) does not decode out of the claim queue for good:
/// status `failed`, no lease. Its state says so (`corrupt_row`) when the state itself still
/// decodes. The log is not touched: `audit` still shows what is there. Logged once, here.
fn quarantine(conn: &Connection, pk: i64, why: &str, now: Timestamp) -> Result<()> {
    let (id, state): (Vec<u8>, String) =
        conn.row("SELECT id, state FROM runs WHERE pk = ?1", [pk], |r| Ok((r.get(0)?, r.get(1)?))).sql()?;
    let run =
        <[u8; 16]>::try_from(id.as_slice()).map_or_else(|_| format!("pk {pk}"), |b| RunId::from_bytes(b).to_string());
    tracing::error!(run = %run, error = why, "a run's stored row does not decode; it is marked failed and never claimed");
    let state = serde_json::from_str::<RunState>(&state).ok().map(|mut s| {
        s.status = RunStatus::Failed;
        s.error =
            Some(stead_core::event::ErrorInfo::new(CORRUPT_ROW, format!("the run's stored data is damaged: {why}")));
        s.finished_at.get_or_insert(now);
        s
    });
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
