//! The write operations: each one short transaction, attempted again by the caller when
//! PostgreSQL aborted it to break a deadlock ([`Fail::Retry`]).
//!
//! Locks are always taken in the same order — the session row, then run rows — so appends,
//! claims (which skip locked runs) and deletions cannot deadlock one another.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use stead_core::agent::AgentSpec;
use stead_core::event::{ApprovalKind, Event, NewEvent, SerializedBody};
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_core::run::RunState;
use stead_core::time::Timestamp;
use stead_store::project::{
    self, AppendPlan, DecisionRow, Loaded, StoredApproval, StoredRun, check_first_event, check_session_limit,
    first_run_created, plan_append, seal,
};
use stead_store::{
    AgentVersion, AppendRequest, Claim, Committed, Error, Fence, IdempotencyKey, IdempotencyRecord, NewSession,
    SessionRecord,
};
use tokio_postgres::types::ToSql;

use crate::rows::{
    AGENT_COLUMNS, Attempt, Fail, Pg, RUN_COLUMNS, SESSION_COLUMNS, agent_from_row, corrupt, get, hash_bytes, id_bytes,
    json, run_from_row, session_from_row, time, to_i64, to_json, to_u64, word,
};
use crate::{PostgresStore, query};

/// The database's clock in integer milliseconds: leases are computed on it, so every node
/// agrees on when one expires.
const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;
type Pending<'a> = Pin<Box<dyn Future<Output = Attempt<u64>> + Send + 'a>>;

/// A transaction on a pooled connection whose `BEGIN` and `COMMIT` travel in the same
/// pipeline as the statements next to them, saving a round trip at each end. Dropped while
/// still open (a write whose caller gave up mid-flight, a broken connection), it closes its
/// connection instead of returning it to the pool: the server rolls the transaction back, and
/// no later user of the pool inherits it.
struct Tx {
    client: Option<deadpool_postgres::Client>,
    open: bool,
}

impl Tx {
    /// Takes a connection; nothing is sent until the first pipeline (which starts with `BEGIN`).
    async fn start(store: &PostgresStore) -> Attempt<Self> {
        Ok(Self { client: Some(store.client().await?), open: true })
    }

    fn c(&self) -> &deadpool_postgres::Client {
        self.client.as_ref().expect("the client is only taken on drop")
    }

    /// Ends the transaction with what `result` says: a refused write is rolled back (if the
    /// connection still works; otherwise dropping closes it).
    async fn end<T>(mut self, result: Attempt<T>) -> Attempt<T> {
        if result.is_err() && self.open && self.c().batch_execute("ROLLBACK").await.is_ok() {
            self.open = false;
        }
        result
    }

    /// Commits and publishes `notes`, under the session's commit lock (see
    /// `PostgresStore::commit_locks`) so commits of one session are published in order.
    async fn commit(&mut self, store: &PostgresStore, session: &SessionId, notes: Vec<Committed>) -> Attempt<()> {
        let _order = store.commit_lock(session).lock().await;
        self.c().batch_execute("COMMIT").await.map_err(|e| unknown_outcome(&e))?;
        self.open = false;
        store.publish(notes);
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.open
            && let Some(client) = self.client.take()
        {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// A `COMMIT` that failed: on a lost connection nobody knows whether it took effect.
fn unknown_outcome(e: &tokio_postgres::Error) -> Fail {
    match crate::rows::classify(e) {
        Fail::Store(Error::Unavailable(m)) => {
            Fail::Store(Error::Unavailable(format!("the commit's outcome is unknown (connection lost): {m}")))
        }
        other => other,
    }
}

pub(crate) async fn put_agent(
    store: &PostgresStore,
    tenant: &TenantId,
    spec: &AgentSpec,
) -> Attempt<(AgentVersion, bool)> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.pg()?;
    let sql =
        format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = $1 AND name = $2 ORDER BY version DESC LIMIT 1");
    let latest = match query(&tx, &sql, &[&tenant.as_str(), &spec.name]).await?.first() {
        Some(row) => Some(agent_from_row(row)?),
        None => None,
    };
    let agent = match project::next_agent_version(tenant, spec, latest)? {
        Ok(new) => new,
        Err(same) => return Ok((same, false)),
    };
    let inserted = query(
        &tx,
        "INSERT INTO agents (tenant, name, version, id, spec, spec_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING version",
        &[
            &tenant.as_str(),
            &agent.name,
            &i64::from(agent.version),
            &&agent.id.as_bytes()[..],
            &to_json(spec, "agent spec")?,
            &agent.spec_hash,
            &agent.created_at.millis(),
        ],
    )
    .await?;
    if inserted.is_empty() {
        // Another writer stored this version first: look again.
        return Err(Fail::Retry(format!("agent {} version {} was stored concurrently", spec.name, agent.version)));
    }
    tx.commit().await.pg()?;
    Ok((agent, true))
}

pub(crate) async fn create_session(
    store: &PostgresStore,
    new: &NewSession,
    first: &[SerializedBody],
    then: &[SerializedBody],
) -> Attempt<(SessionRecord, Event)> {
    check_first_event(&new.first_event)?;
    check_session_limit(&store.limits, 0, 1)?;
    let mut tx = Tx::start(store).await?;
    let result = create_session_in(store, &mut tx, new, first, then).await;
    tx.end(result).await
}

async fn create_session_in(
    store: &PostgresStore,
    tx: &mut Tx,
    new: &NewSession,
    first: &[SerializedBody],
    then: &[SerializedBody],
) -> Attempt<(SessionRecord, Event)> {
    let NewSession { tenant_id, id, agent, agent_version, metadata, first_event, then: then_events, idempotency } = new;
    let c = tx.c();
    let insert_sql = format!(
        "INSERT INTO sessions (id, tenant, agent, agent_version, metadata, head_seq, head_hash, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, {DB_NOW}, {DB_NOW}) \
         ON CONFLICT (id) DO NOTHING RETURNING pk, created_at"
    );
    let (idem_stmt, insert_stmt) =
        tokio::try_join!(c.prepare_cached(IDEMPOTENCY_RECORD), c.prepare_cached(&insert_sql)).pg()?;
    let metadata_json = to_json(metadata, "session metadata")?;
    let now = Timestamp::now().millis();
    let key = idempotency.as_ref().map(|k| k.key.as_str());
    let idem_params: [&(dyn ToSql + Sync); 3] = [&tenant_id.as_str(), &key, &now];
    let insert_params: [&(dyn ToSql + Sync); 6] = [
        &&id.as_bytes()[..],
        &tenant_id.as_str(),
        agent,
        &i64::from(*agent_version),
        &metadata_json,
        &&stead_core::event::GENESIS_HASH[..],
    ];
    // One pipeline: BEGIN, the idempotency check, the insert (skipped if the check finds a claim:
    // the transaction is rolled back then).
    let (_, idem_rows, inserted) = tokio::try_join!(
        c.batch_execute("BEGIN"),
        async { if key.is_some() { c.query(&idem_stmt, &idem_params).await } else { Ok(Vec::new()) } },
        c.query(&insert_stmt, &insert_params),
    )
    .pg()?;
    if let (Some(row), Some(key)) = (idem_rows.first(), key) {
        return Err(Error::IdempotencyKeyUsed(Box::new(idempotency_from_row(row, key)?)).into());
    }
    let Some(row) = inserted.first() else {
        let rows = query(c, "SELECT tenant, head_seq FROM sessions WHERE id = $1", &[&&id.as_bytes()[..]]).await?;
        let actual = match rows.first() {
            // Another tenant's session is reported as merely "not empty", never its real head.
            Some(row) if get::<&str>(row, 0, "session tenant")? == tenant_id.as_str() => {
                to_u64(get(row, 1, "session head")?, "session head")?
            }
            _ => 1,
        };
        return Err(Error::Conflict { expected: 0, actual }.into());
    };
    let pk: i64 = get(row, 0, "session key")?;
    let at = time(get(row, 1, "session creation time")?, "session creation time")?;
    let sealed = seal(
        &store.limits,
        tenant_id,
        *id,
        1,
        at,
        stead_core::event::GENESIS_HASH,
        vec![first_event.clone()],
        first.to_vec(),
    )?;
    let first = sealed.into_iter().next().ok_or_else(|| Error::Backend("sealing produced no event".into()))?;
    let stmt = c.prepare_cached(INSERT_EVENTS).await.pg()?;
    insert_events(c, &stmt, pk, tenant_id, at, std::slice::from_ref(&first)).await?;
    let event = first.event;
    let mut record = SessionRecord {
        id: *id,
        tenant_id: tenant_id.clone(),
        agent: agent.clone(),
        agent_version: *agent_version,
        metadata: metadata.clone(),
        head_seq: 1,
        head_hash: event.hash.clone(),
        created_at: at,
        updated_at: at,
    };
    let mut notes = vec![Committed {
        tenant_id: tenant_id.clone(),
        session_id: *id,
        events: std::sync::Arc::from(vec![event.clone()]),
        runs: Vec::new(),
    }];
    if !then_events.is_empty() {
        let batch = Batch { tenant: tenant_id, session: *id, expected_head: 1, events: then_events, fence: None };
        if let Some(appended) = append_in(store, tx, &batch, then, Pipeline::Inside).await? {
            if let Some(last) = appended.events.last() {
                record.head_seq = last.seq;
                record.head_hash = last.hash.clone();
                record.updated_at = last.at;
            }
            notes.push(appended.note);
        }
    }
    if let Some(key) = idempotency {
        claim_idempotency(tx.c(), tenant_id, key, pk, *id, first_run_created(then_events)).await?;
    }
    tx.commit(store, id, notes).await?;
    Ok((record, event))
}

pub(crate) async fn append(
    store: &PostgresStore,
    req: &AppendRequest,
    serialized: &[SerializedBody],
) -> Attempt<Vec<Event>> {
    let mut tx = Tx::start(store).await?;
    let result = append_tx(store, &mut tx, req, serialized).await;
    tx.end(result).await
}

async fn append_tx(
    store: &PostgresStore,
    tx: &mut Tx,
    req: &AppendRequest,
    serialized: &[SerializedBody],
) -> Attempt<Vec<Event>> {
    let batch = Batch {
        tenant: &req.tenant_id,
        session: req.session_id,
        expected_head: req.expected_head,
        events: &req.events,
        fence: req.fence.as_ref(),
    };
    let Some(key) = &req.idempotency else {
        // The common case: BEGIN … COMMIT in two round trips.
        return match append_in(store, tx, &batch, serialized, Pipeline::Whole).await? {
            Some(appended) => Ok(appended.events),
            None => {
                tx.c().batch_execute("ROLLBACK").await.pg()?;
                tx.open = false;
                Ok(Vec::new())
            }
        };
    };
    let Some(appended) = append_in(store, tx, &batch, serialized, Pipeline::Begin(&key.key)).await? else {
        tx.c().batch_execute("ROLLBACK").await.pg()?;
        tx.open = false;
        return Ok(Vec::new());
    };
    let run = first_run_created_in(&appended.events);
    claim_idempotency(tx.c(), &req.tenant_id, key, appended.session_pk, req.session_id, run).await?;
    tx.commit(store, &req.session_id, vec![appended.note]).await?;
    Ok(appended.events)
}

/// The run a committed batch created first, if any.
fn first_run_created_in(events: &[Event]) -> Option<RunId> {
    events.iter().find(|e| matches!(e.body, stead_core::event::EventBody::RunCreated { .. })).and_then(|e| e.run_id)
}

/// What to append, borrowed from an [`AppendRequest`] or a [`NewSession`].
struct Batch<'a> {
    tenant: &'a TenantId,
    session: SessionId,
    expected_head: u64,
    events: &'a [NewEvent],
    fence: Option<&'a Fence>,
}

/// How an append sits in its transaction.
enum Pipeline<'a> {
    /// The whole transaction: `BEGIN` goes with the reads, `COMMIT` with the writes (and the
    /// commit is published before returning).
    Whole,
    /// Begins the transaction, checks this idempotency key after locking the session, and
    /// leaves the transaction open for the caller to claim the key and commit.
    Begin(&'a str),
    /// Inside a transaction the caller began and will commit.
    Inside,
}

/// An accepted append.
struct Appended {
    events: Vec<Event>,
    note: Committed,
    session_pk: i64,
}

/// Compare-and-append in `tx`: locks the session row, checks head and fence, folds the events
/// with `stead_store::project` and writes them with every projection — one pipeline of reads,
/// one of writes. `None` when there was nothing to append (the checks passed; the transaction
/// is left open).
async fn append_in(
    store: &PostgresStore,
    tx: &mut Tx,
    batch: &Batch<'_>,
    serialized: &[SerializedBody],
    pipeline: Pipeline<'_>,
) -> Attempt<Option<Appended>> {
    let c = tx.c();
    let refs = project::references(batch.events);
    let session_id = &batch.session.as_bytes()[..];
    // The fenced run is read (and locked) with the runs the events name.
    let mut run_ids: Vec<&[u8]> = refs.runs.iter().map(|r| &r.as_bytes()[..]).collect();
    if let Some(f) = batch.fence
        && !refs.runs.contains(&f.run_id)
    {
        run_ids.push(&f.run_id.as_bytes()[..]);
    }
    let approval_ids: Vec<&[u8]> = refs.approvals.iter().map(|a| &a.as_bytes()[..]).collect();
    let (begin, key) = match pipeline {
        Pipeline::Whole => (true, None),
        Pipeline::Begin(key) => (true, Some(key)),
        Pipeline::Inside => (false, None),
    };

    // Prepared first, then sent together: the statements reach the server in this order, so
    // the session row is locked before the runs', and the key is checked under the lock (a
    // claim committed by a writer we waited for is seen).
    let lock_sql = format!(
        "SELECT pk, head_seq, head_hash, updated_at, {DB_NOW} FROM sessions WHERE id = $1 AND tenant = $2 FOR UPDATE"
    );
    let tenant = batch.tenant.as_str();
    let (lock, idem_stmt, runs_stmt, approvals_stmt) = tokio::try_join!(
        c.prepare_cached(&lock_sql),
        c.prepare_cached(IDEMPOTENCY_RECORD),
        c.prepare_cached(
            "SELECT id, pk, session_pk, tenant, state, lease_owner IS NOT NULL, lease_token FROM runs \
             WHERE id = ANY($1) ORDER BY pk FOR UPDATE"
        ),
        c.prepare_cached(
            "SELECT id, tenant, session_pk, run_id, kind, call_id, tool_name, arguments, decision IS NOT NULL \
             FROM approvals WHERE id = ANY($1)"
        ),
    )
    .pg()?;
    let now = Timestamp::now().millis();
    let lock_params: [&(dyn ToSql + Sync); 2] = [&session_id, &tenant];
    let idem_params: [&(dyn ToSql + Sync); 3] = [&tenant, &key, &now];
    // All awaited, then looked at in order: after a failed statement the later ones only say
    // "transaction aborted", so the first error in order is the cause.
    let (begun, session_rows, idem_rows, run_rows, approval_rows) = tokio::join!(
        async { if begin { c.batch_execute("BEGIN").await } else { Ok(()) } },
        c.query(&lock, &lock_params),
        async { if key.is_some() { c.query(&idem_stmt, &idem_params).await } else { Ok(Vec::new()) } },
        async { if run_ids.is_empty() { Ok(Vec::new()) } else { c.query(&runs_stmt, &[&run_ids]).await } },
        async {
            if approval_ids.is_empty() { Ok(Vec::new()) } else { c.query(&approvals_stmt, &[&approval_ids]).await }
        },
    );
    begun.pg()?;
    let (session_rows, idem_rows, run_rows, approval_rows) =
        (session_rows.pg()?, idem_rows.pg()?, run_rows.pg()?, approval_rows.pg()?);

    let row = session_rows.first().ok_or_else(|| Error::NotFound { what: "session", id: batch.session.to_string() })?;
    if let (Some(idem), Some(key)) = (idem_rows.first(), key) {
        // Checked before the head, so a retry whose first attempt moved the head still finds it.
        return Err(Error::IdempotencyKeyUsed(Box::new(idempotency_from_row(idem, key)?)).into());
    }
    let pk: i64 = get(row, 0, "session key")?;
    let head = to_u64(get(row, 1, "session head")?, "session head")?;
    let head_hash = hash_bytes(get(row, 2, "session head hash")?)?;
    let head_at: i64 = get(row, 3, "session update time")?;
    let db_now: i64 = get(row, 4, "database clock")?;
    if head != batch.expected_head {
        return Err(Error::Conflict { expected: batch.expected_head, actual: head }.into());
    }
    if let Some(fence) = batch.fence {
        let fenced = &fence.run_id.as_bytes()[..];
        let mut valid = false;
        for r in &run_rows {
            if get::<&[u8]>(r, 0, "run id")? == fenced {
                valid = get::<i64>(r, 2, "run session")? == pk
                    && get::<&str>(r, 3, "run tenant")? == tenant
                    && get::<bool>(r, 5, "run lease")?
                    && get::<i64>(r, 6, "fencing token")? == to_i64(fence.token);
            }
        }
        if !valid {
            return Err(Error::Fenced { run: fence.run_id, token: fence.token }.into());
        }
    }
    if batch.events.is_empty() {
        return Ok(None);
    }
    check_session_limit(&store.limits, head, batch.events.len())?;

    // Time never runs backwards within a session, even if the clock does.
    let at = Timestamp(db_now).max(Timestamp(head_at));
    let loaded = loaded(batch.tenant, pk, &run_rows, &approval_rows)?;
    let plan = plan_append(batch.events, at, head, &loaded)?;
    let sealed = seal(
        &store.limits,
        batch.tenant,
        batch.session,
        head + 1,
        at,
        head_hash,
        batch.events.to_vec(),
        serialized.to_vec(),
    )?;
    let events: Vec<Event> = sealed.iter().map(|s| s.event.clone()).collect();
    let note = project::committed(batch.tenant, batch.session, &events, &plan);

    let (insert_events_stmt, insert_run, update_run, insert_approval, move_approval, decide, extend, set_metadata) =
        tokio::try_join!(
            c.prepare_cached(INSERT_EVENTS),
            c.prepare_cached(
                "INSERT INTO runs (id, tenant, session_pk, status, state, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)"
            ),
            // A run that no worker may hold (waiting on the client, finished) keeps no lease; the
            // fenced run's lease is extended to $6 (if it still has one).
            c.prepare_cached(
                "UPDATE runs SET status = $1, state = $2, updated_at = $3, \
             lease_owner = CASE WHEN $4 THEN lease_owner END, \
             lease_expires = CASE WHEN NOT $4 THEN NULL \
               WHEN $6::bigint IS NOT NULL AND lease_owner IS NOT NULL THEN $6::bigint ELSE lease_expires END \
             WHERE pk = $5"
            ),
            c.prepare_cached(
                "INSERT INTO approvals (id, tenant, session_pk, run_id, kind, call_id, tool_name, arguments, role, \
             reason, created_at, expires_at, decision, decided_by, decided_at, decision_reason, decided_arguments, \
             output) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
            ),
            c.prepare_cached("UPDATE approvals SET run_id = $1 WHERE id = $2"),
            c.prepare_cached(
                "UPDATE approvals SET decision = $1, decided_by = $2, decided_at = $3, decision_reason = $4, \
             decided_arguments = $5, output = $6 WHERE id = $7"
            ),
            c.prepare_cached("UPDATE runs SET lease_expires = $1 WHERE id = $2 AND lease_owner IS NOT NULL"),
            c.prepare_cached("UPDATE sessions SET metadata = $1 WHERE pk = $2"),
        )
        .pg()?;

    // Owned parameter values, alive while the statements below are in flight.
    let run_values: Vec<(Vec<u8>, &'static str, String)> = plan
        .runs
        .iter()
        .map(|r| Ok((r.id.as_bytes().to_vec(), r.state.status.as_str(), to_json(&r.state, "run state")?)))
        .collect::<stead_store::Result<_>>()?;
    let approval_values = ApprovalValues::of(&plan);
    let metadata = plan.metadata.as_ref().map(|m| to_json(m, "session metadata")).transpose()?;
    let extend_to = batch.fence.map(|f| Timestamp(db_now).plus(f.extend_lease).millis());
    let at_ms = at.millis();
    let no_extension: Option<i64> = None;
    let fenced_id = batch.fence.map(|f| f.run_id.as_bytes().to_vec());

    let mut writes: Vec<Pending<'_>> =
        vec![Box::pin(insert_events(c, &insert_events_stmt, pk, batch.tenant, at, &sealed))];
    if let Some(m) = &metadata {
        writes.push(Box::pin(exec(c, &set_metadata, vec![m, &pk])));
    }
    for a in &approval_values.new {
        let mut params: Params<'_> = vec![&a.id, &tenant, &pk, &a.run_id, &a.kind, &a.call_id, &a.tool_name];
        params.extend([&a.arguments as &(dyn ToSql + Sync), &a.role, &a.reason, &a.created_at, &a.expires_at]);
        params.extend(a.decision.params());
        writes.push(Box::pin(exec(c, &insert_approval, params)));
    }
    for ch in &approval_values.changed {
        writes.push(Box::pin(exec(c, &move_approval, vec![&ch.run_id, &ch.id])));
        if ch.decision.decision.is_some() {
            let mut params = ch.decision.params();
            params.push(&ch.id);
            writes.push(Box::pin(exec(c, &decide, params)));
        }
    }
    let mut extended = false;
    for (r, (id, status, state)) in plan.runs.iter().zip(&run_values) {
        writes.push(match &r.pk {
            None => Box::pin(exec(c, &insert_run, vec![id, &tenant, &pk, status, state, &at_ms])),
            Some(run_pk) => {
                let claimable: &(dyn ToSql + Sync) = if r.state.status.is_claimable() { &true } else { &false };
                let fenced = batch.fence.is_some_and(|f| f.run_id == r.id);
                extended |= fenced;
                let until: &(dyn ToSql + Sync) = if fenced { &extend_to } else { &no_extension };
                Box::pin(exec(c, &update_run, vec![status, state, &at_ms, claimable, run_pk, until]))
            }
        });
    }
    if let (false, Some(until), Some(id)) = (extended, &extend_to, &fenced_id) {
        writes.push(Box::pin(exec(c, &extend, vec![until, id])));
    }

    if !matches!(pipeline, Pipeline::Whole) {
        if let Some(failed) = futures_util::future::join_all(writes).await.into_iter().find_map(Result::err) {
            return Err(failed);
        }
        return Ok(Some(Appended { events, note, session_pk: pk }));
    }
    // COMMIT rides in the same pipeline. Statements run in order, so if a write fails the
    // transaction is aborted and this COMMIT only ends it (PostgreSQL answers ROLLBACK); the
    // first error in order is the cause.
    let order = store.commit_lock(&batch.session).lock().await;
    let (results, committed) =
        tokio::join!(futures_util::future::join_all(writes), async { c.batch_execute("COMMIT").await });
    if let Some(failed) = results.into_iter().find_map(Result::err) {
        if committed.is_ok() {
            tx.open = false;
        }
        return Err(failed);
    }
    committed.map_err(|e| unknown_outcome(&e))?;
    tx.open = false;
    store.publish(vec![note.clone()]);
    drop(order);
    Ok(Some(Appended { events, note, session_pk: pk }))
}

async fn exec(c: &deadpool_postgres::Client, stmt: &tokio_postgres::Statement, params: Params<'_>) -> Attempt<u64> {
    c.execute(stmt, &params).await.pg()
}

/// Inserts sealed events and moves the session's head to the last of them, in one statement
/// (the events' arrays unnested server-side; a data-modifying `WITH` runs once, unreferenced).
const INSERT_EVENTS: &str = "WITH inserted AS (INSERT INTO events \
     (session_pk, seq, tenant, run_id, kind, actor, at, data, hash, msg) \
     SELECT $1, u.seq, $2, u.run_id, u.kind, u.actor, $3, u.data, u.hash, u.msg \
     FROM unnest($4::bigint[], $5::bytea[], $6::text[], $7::text[], $8::text[], $9::bytea[], $10::bool[]) \
     AS u(seq, run_id, kind, actor, data, hash, msg)) \
     UPDATE sessions SET head_seq = $11, head_hash = $12, updated_at = $3 WHERE pk = $1";

/// Runs [`INSERT_EVENTS`], prepared by the caller: a pipelined statement must be sent on the
/// future's first poll, in order, never after a prepare's round trip (it would then reach the
/// server after the pipeline's `COMMIT`, outside the transaction).
async fn insert_events(
    c: &deadpool_postgres::Client,
    stmt: &tokio_postgres::Statement,
    session_pk: i64,
    tenant: &TenantId,
    at: Timestamp,
    sealed: &[project::Sealed],
) -> Attempt<u64> {
    let Some(last) = sealed.last() else { return Ok(0) };
    let seqs: Vec<i64> = sealed.iter().map(|s| to_i64(s.event.seq)).collect();
    let runs: Vec<Option<&[u8]>> = sealed.iter().map(|s| s.event.run_id.as_ref().map(|r| &r.as_bytes()[..])).collect();
    let kinds: Vec<&str> = sealed.iter().map(|s| s.event.body.kind()).collect();
    let actors: Vec<&str> = sealed.iter().map(|s| s.event.actor.0.as_str()).collect();
    let data: Vec<&str> = sealed.iter().map(|s| s.data_json.as_str()).collect();
    let hashes: Vec<&[u8]> = sealed.iter().map(|s| &s.hash[..]).collect();
    let msgs: Vec<bool> = sealed.iter().map(|s| s.event.body.is_message()).collect();
    let (head_seq, head_hash) = (to_i64(last.event.seq), &last.hash[..]);
    c.execute(
        stmt,
        &[
            &session_pk,
            &tenant.as_str(),
            &at.millis(),
            &seqs,
            &runs,
            &kinds,
            &actors,
            &data,
            &hashes,
            &msgs,
            &head_seq,
            &head_hash,
        ],
    )
    .await
    .pg()
}

/// The decision columns of an approval row as statement parameters (all null when undecided).
struct DecisionValues {
    decision: Option<&'static str>,
    decided_by: Option<String>,
    decided_at: Option<i64>,
    reason: Option<String>,
    arguments: Option<String>,
    output: Option<String>,
}

impl DecisionValues {
    fn of(d: Option<&DecisionRow>) -> Self {
        Self {
            decision: d.map(|d| d.decision.as_str()),
            decided_by: d.map(|d| d.decided_by.clone()),
            decided_at: d.map(|d| d.decided_at.millis()),
            reason: d.and_then(|d| d.reason.clone()),
            arguments: d.and_then(|d| d.arguments.clone()),
            output: d.and_then(|d| d.output.clone()),
        }
    }

    fn params(&self) -> Params<'_> {
        vec![&self.decision, &self.decided_by, &self.decided_at, &self.reason, &self.arguments, &self.output]
    }
}

struct NewApprovalValues {
    id: Vec<u8>,
    run_id: Vec<u8>,
    kind: &'static str,
    call_id: String,
    tool_name: String,
    arguments: String,
    role: String,
    reason: String,
    created_at: i64,
    expires_at: i64,
    decision: DecisionValues,
}

struct ChangedApprovalValues {
    id: Vec<u8>,
    run_id: Vec<u8>,
    decision: DecisionValues,
}

/// The approval rows of a plan as owned statement parameters.
struct ApprovalValues {
    new: Vec<NewApprovalValues>,
    changed: Vec<ChangedApprovalValues>,
}

impl ApprovalValues {
    fn of(plan: &AppendPlan) -> Self {
        Self {
            new: plan
                .new_approvals
                .iter()
                .map(|a| NewApprovalValues {
                    id: a.id.as_bytes().to_vec(),
                    run_id: a.run_id.as_bytes().to_vec(),
                    kind: a.kind.as_str(),
                    call_id: a.call_id.clone(),
                    tool_name: a.tool_name.clone(),
                    arguments: a.arguments.clone(),
                    role: a.role.clone(),
                    reason: a.reason.clone(),
                    created_at: a.created_at.millis(),
                    expires_at: a.expires_at.millis(),
                    decision: DecisionValues::of(a.decision.as_ref()),
                })
                .collect(),
            changed: plan
                .changed_approvals
                .iter()
                .map(|c| ChangedApprovalValues {
                    id: c.id.as_bytes().to_vec(),
                    run_id: c.run_id.as_bytes().to_vec(),
                    decision: DecisionValues::of(c.decision.as_ref()),
                })
                .collect(),
        }
    }
}

/// What [`plan_append`] needs, from the rows of the referenced runs and approvals.
fn loaded(
    tenant: &TenantId,
    session_pk: i64,
    runs: &[tokio_postgres::Row],
    approvals: &[tokio_postgres::Row],
) -> stead_store::Result<Loaded> {
    let mut loaded = Loaded::default();
    for row in runs {
        let id = RunId::from_bytes(id_bytes(get(row, 0, "run id")?, "run")?);
        let here =
            get::<i64>(row, 2, "run session")? == session_pk && get::<&str>(row, 3, "run tenant")? == tenant.as_str();
        let stored = if here {
            StoredRun::Here {
                pk: get(row, 1, "run key")?,
                state: Box::new(json::<RunState>(get(row, 4, "run state")?, "run state")?),
            }
        } else {
            StoredRun::Elsewhere
        };
        loaded.runs.insert(id, stored);
    }
    for row in approvals {
        let id = stead_core::ids::ApprovalId::from_bytes(id_bytes(get(row, 0, "approval id")?, "approval")?);
        loaded.approvals.insert(
            id,
            StoredApproval {
                here: get::<&str>(row, 1, "approval tenant")? == tenant.as_str()
                    && get::<i64>(row, 2, "approval session")? == session_pk,
                run_id: RunId::from_bytes(id_bytes(get(row, 3, "approval run")?, "run")?),
                kind: word::<ApprovalKind>(get(row, 4, "approval kind")?, "approval kind")?,
                call_id: get(row, 5, "approval call id")?,
                tool_name: get(row, 6, "approval tool name")?,
                arguments: get(row, 7, "approval arguments")?,
                decided: get(row, 8, "approval decision")?,
            },
        );
    }
    Ok(loaded)
}

/// The live (unexpired) claim of a tenant's idempotency key: `$1` tenant, `$2` key, `$3` now.
const IDEMPOTENCY_RECORD: &str = "SELECT fingerprint, session_id, run_id, created_at, expires_at \
     FROM idempotency_keys WHERE tenant = $1 AND key = $2 AND expires_at > $3";

/// The live (unexpired) claim of a tenant's idempotency key.
pub(crate) async fn idempotency_record(
    c: &impl GenericClient,
    tenant: &TenantId,
    key: &str,
) -> Attempt<Option<IdempotencyRecord>> {
    let rows = query(c, IDEMPOTENCY_RECORD, &[&tenant.as_str(), &key, &Timestamp::now().millis()]).await?;
    rows.first().map(|row| idempotency_from_row(row, key)).transpose().map_err(Fail::from)
}

fn idempotency_from_row(row: &tokio_postgres::Row, key: &str) -> stead_store::Result<IdempotencyRecord> {
    let run: Option<&[u8]> = get(row, 2, "idempotency run")?;
    Ok(IdempotencyRecord {
        key: key.to_owned(),
        fingerprint: get(row, 0, "idempotency fingerprint")?,
        session_id: SessionId::from_bytes(id_bytes(get(row, 1, "idempotency session")?, "session")?),
        run_id: run.map(|r| id_bytes(r, "run").map(RunId::from_bytes)).transpose()?,
        created_at: time(get(row, 3, "idempotency created_at")?, "idempotency created_at")?,
        expires_at: time(get(row, 4, "idempotency expires_at")?, "idempotency expires_at")?,
    })
}

/// Claims the key for what this write created, replacing an expired claim. A live claim made
/// meanwhile by a concurrent write (committed after our check) wins: this write is refused.
async fn claim_idempotency(
    tx: &impl GenericClient,
    tenant: &TenantId,
    key: &IdempotencyKey,
    session_pk: i64,
    session: SessionId,
    run: Option<RunId>,
) -> Attempt<()> {
    let now = Timestamp::now().millis();
    let claimed = query(
        tx,
        "INSERT INTO idempotency_keys (tenant, key, fingerprint, session_pk, session_id, run_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (tenant, key) DO UPDATE SET fingerprint = excluded.fingerprint, session_pk = excluded.session_pk, \
           session_id = excluded.session_id, run_id = excluded.run_id, created_at = excluded.created_at, \
           expires_at = excluded.expires_at \
         WHERE idempotency_keys.expires_at <= $7 RETURNING 1",
        &[
            &tenant.as_str(),
            &key.key,
            &key.fingerprint,
            &session_pk,
            &&session.as_bytes()[..],
            &run.as_ref().map(|r| &r.as_bytes()[..]),
            &now,
            &key.expires_at.millis(),
        ],
    )
    .await?;
    if claimed.is_empty() {
        return match idempotency_record(tx, tenant, &key.key).await? {
            Some(record) => Err(Error::IdempotencyKeyUsed(Box::new(record)).into()),
            None => Err(Fail::Retry(format!("idempotency key {:?} changed hands concurrently", key.key))),
        };
    }
    Ok(())
}

pub(crate) async fn delete_session(store: &PostgresStore, tenant: &TenantId, id: &SessionId) -> Attempt<()> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.pg()?;
    let rows = query(
        &tx,
        "SELECT pk FROM sessions WHERE id = $1 AND tenant = $2 FOR UPDATE",
        &[&&id.as_bytes()[..], &tenant.as_str()],
    )
    .await?;
    let pk: i64 =
        get(rows.first().ok_or_else(|| Error::NotFound { what: "session", id: id.to_string() })?, 0, "session key")?;
    // Locking every run of the session keeps claims (which skip locked rows) off them.
    let runs = query(
        &tx,
        &format!(
            "SELECT id, lease_owner IS NOT NULL AND lease_expires > {DB_NOW} FROM runs WHERE session_pk = $1 \
             ORDER BY pk FOR UPDATE"
        ),
        &[&pk],
    )
    .await?;
    for row in &runs {
        if get::<bool>(row, 1, "run lease")? {
            let run = RunId::from_bytes(id_bytes(get(row, 0, "run id")?, "run")?);
            return Err(Error::Busy(format!(
                "session {id} has run {run} claimed by a worker; cancel it or wait for its lease to expire"
            ))
            .into());
        }
    }
    for sql in [
        "DELETE FROM events WHERE session_pk = $1",
        "DELETE FROM runs WHERE session_pk = $1",
        "DELETE FROM approvals WHERE session_pk = $1",
        "DELETE FROM idempotency_keys WHERE session_pk = $1",
        "DELETE FROM sessions WHERE pk = $1",
    ] {
        let stmt = tx.prepare_cached(sql).await.pg()?;
        tx.execute(&stmt, &[&pk]).await.pg()?;
    }
    tx.commit().await.pg()?;
    Ok(())
}

/// Leases claimable runs on the database clock: queued or running, unleased or with an expired
/// lease, and the oldest unfinished run of their session. Rows another claimer (or an append)
/// holds are skipped, not waited for.
const CLAIM: &str = "WITH now AS MATERIALIZED (SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS ms), \
     c AS (SELECT r.pk, r.session_pk FROM runs r, now \
           WHERE r.status IN ('queued', 'running') \
             AND (r.lease_owner IS NULL OR r.lease_expires <= now.ms) \
             AND NOT EXISTS (SELECT 1 FROM runs e WHERE e.session_pk = r.session_pk AND e.pk < r.pk \
                             AND e.status IN ('queued', 'running', 'requires_action', 'awaiting_approval')) \
           ORDER BY r.pk LIMIT $2 FOR UPDATE OF r SKIP LOCKED) \
     UPDATE runs r SET lease_owner = $1, lease_expires = now.ms + $3, lease_token = r.lease_token + 1 \
     FROM now, c LEFT JOIN sessions s ON s.pk = c.session_pk \
     WHERE r.pk = c.pk";

pub(crate) async fn claim_runs(
    store: &PostgresStore,
    worker: &str,
    lease: Duration,
    max: usize,
) -> Attempt<Vec<Claim>> {
    // One statement, so no transaction around it: claiming is one round trip. Setting a bad
    // row aside afterwards needs no atomicity with the claim (a crash in between leaves a lease
    // that expires, and the next claim sets the row aside).
    let client = store.client().await?;
    let sql = format!("{CLAIM} RETURNING {RUN_COLUMNS}, {SESSION_COLUMNS}, now.ms");
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
    let max = i64::try_from(max).unwrap_or(i64::MAX);
    let mut rows = query(&client, &sql, &[&worker, &max, &lease_ms]).await?;
    rows.sort_by_key(|r| r.try_get::<_, i64>(0).unwrap_or(i64::MAX));
    let mut claims = Vec::with_capacity(rows.len());
    for row in &rows {
        let decoded = run_from_row(row, 0).and_then(|(_, run)| {
            let (_, session) = session_from_row(row, 9).map_err(|e| match e {
                // A run whose session row is gone has nulls there.
                Error::Corrupt(m) if get::<Option<i64>>(row, 9, "session key").ok().flatten().is_none() => {
                    corrupt(format!("run {} has no session ({m})", run.id))
                }
                other => other,
            })?;
            Ok(Claim { token: run.fencing_token, run, session })
        });
        match decoded {
            Ok(claim) => claims.push(claim),
            // One row written behind Stead's back must not stop every other run: set it aside.
            Err(Error::Corrupt(why)) => {
                let pk: i64 = get(row, 0, "run key")?;
                let now = Timestamp(get(row, 19, "database clock")?);
                quarantine(&client, pk, &why, now).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(claims)
}

/// Takes a run whose row (or its session's) does not decode out of the claim queue for good:
/// status `failed`, no lease; its state says so (`corrupt_row`) when the state itself still
/// decodes. The log is not touched. Logged once, here.
async fn quarantine(tx: &impl GenericClient, pk: i64, why: &str, now: Timestamp) -> Attempt<()> {
    let rows = query(tx, "SELECT id, state FROM runs WHERE pk = $1", &[&pk]).await?;
    let Some(row) = rows.first() else { return Ok(()) };
    let id: Option<&[u8]> = row.try_get(0).ok();
    let run = id
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map_or_else(|| format!("pk {pk}"), |b| RunId::from_bytes(b).to_string());
    tracing::error!(run = %run, error = why, "a run's stored row does not decode; it is marked failed and never claimed");
    let state: Option<&str> = row.try_get(1).ok();
    let state = project::quarantined_state(state.and_then(|s| serde_json::from_str::<RunState>(s).ok()), why, now);
    let state = state.map(|s| to_json(&s, "run state")).transpose()?;
    query(
        tx,
        "UPDATE runs SET status = 'failed', state = coalesce($2, state), lease_owner = NULL, lease_expires = NULL \
         WHERE pk = $1",
        &[&pk, &state],
    )
    .await?;
    Ok(())
}

/// `NotFound` for an unknown run, else `Fenced`: what a lease operation that matched no row means.
async fn not_leased(c: &impl GenericClient, run: &RunId, token: u64) -> Attempt<()> {
    let rows = query(c, "SELECT 1 FROM runs WHERE id = $1", &[&&run.as_bytes()[..]]).await?;
    if rows.is_empty() {
        return Err(Error::NotFound { what: "run", id: run.to_string() }.into());
    }
    Err(Error::Fenced { run: *run, token }.into())
}

pub(crate) async fn renew_lease(store: &PostgresStore, run: &RunId, token: u64, lease: Duration) -> Attempt<()> {
    let client = store.client().await?;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
    let updated = query(
        &client,
        &format!(
            "UPDATE runs SET lease_expires = {DB_NOW} + $3 \
             WHERE id = $1 AND lease_owner IS NOT NULL AND lease_token = $2 RETURNING 1"
        ),
        &[&&run.as_bytes()[..], &to_i64(token), &lease_ms],
    )
    .await?;
    if updated.is_empty() {
        return not_leased(&client, run, token).await;
    }
    Ok(())
}

pub(crate) async fn release_lease(store: &PostgresStore, run: &RunId, token: u64) -> Attempt<()> {
    let client = store.client().await?;
    let updated = query(
        &client,
        "UPDATE runs SET lease_owner = NULL, lease_expires = NULL WHERE id = $1 AND lease_token = $2 RETURNING 1",
        &[&&run.as_bytes()[..], &to_i64(token)],
    )
    .await?;
    if updated.is_empty() {
        return not_leased(&client, run, token).await;
    }
    Ok(())
}
