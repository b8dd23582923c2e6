//! SQLite-specific behaviour: durability across reopen, the directory lock, refusing files
//! that are not Stead databases, detecting rows edited behind Stead's back, and group commit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stead_core::agent::{AgentSpec, SpecFormat};
use stead_core::event::{Actor, ApprovalKind, ChainVerifier, Event, EventBody, NewEvent};
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::message::{Message, ToolCall, Usage};
use stead_core::time::Timestamp;
use stead_store::{AppendRequest, Error, Fence, NewSession, Store};
use stead_store_sqlite::{DB_FILE, Durability, SqliteOptions, SqliteStore};

const LONG: Duration = Duration::from_secs(60);

fn tenant() -> TenantId {
    TenantId::new("acme").expect("tenant")
}

fn open(dir: &Path) -> Arc<SqliteStore> {
    SqliteStore::open(SqliteOptions::new(dir).durability(Durability::Full)).expect("open store")
}

async fn new_session(store: &SqliteStore) -> SessionId {
    let id = SessionId::new();
    let first_event = NewEvent {
        run_id: None,
        actor: Actor::principal("alice"),
        body: EventBody::SessionCreated { agent: "helper".into(), agent_version: 1, metadata: json!({}) },
    };
    store
        .create_session(NewSession {
            tenant_id: tenant(),
            id,
            agent: "helper".into(),
            agent_version: 1,
            metadata: json!({}),
            first_event,
            then: Vec::new(),
            idempotency: None,
        })
        .await
        .expect("create session");
    id
}

fn run_created(run: RunId, text: &str) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::principal("alice"),
        body: EventBody::run_created(vec![Message::User { content: text.into() }]),
    }
}

fn responded(run: RunId, call: Option<&str>, content: Option<&str>) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::worker("w"),
        body: EventBody::ModelResponded {
            step: 1,
            model: "scripted".into(),
            content: content.map(Into::into),
            tool_calls: call
                .map(|id| ToolCall { id: id.into(), name: "clock".into(), arguments: "{}".into() })
                .into_iter()
                .collect(),
            usage: Usage { input_tokens: 12, output_tokens: 5 },
            finish_reason: "stop".into(),
            chunks: Vec::new(),
        },
    }
}

fn started(run: RunId, call: &str) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::worker("w"),
        body: EventBody::ToolCallStarted {
            call_id: call.into(),
            name: "clock".into(),
            idempotency_key: stead_core::run::idempotency_key(&SessionId::new(), &run, 1, call),
        },
    }
}

fn completed(run: RunId, call: &str, output: &str) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::worker("w"),
        body: EventBody::ToolCallCompleted {
            call_id: call.into(),
            name: "clock".into(),
            output: output.into(),
            is_error: false,
        },
    }
}

async fn append(store: &SqliteStore, session: SessionId, events: Vec<NewEvent>) -> Vec<Event> {
    let head = store.get_session(&tenant(), &session).await.expect("get session").head_seq;
    store
        .append(AppendRequest {
            tenant_id: tenant(),
            session_id: session,
            expected_head: head,
            events,
            fence: None,
            idempotency: None,
        })
        .await
        .expect("append")
}

async fn events(store: &SqliteStore, session: SessionId) -> Vec<Event> {
    store.read_events(&tenant(), &session, 0, u32::MAX).await.expect("read events")
}

/// Verifies the chain and that it ends at the session's recorded head.
async fn verify(store: &SqliteStore, session: SessionId) -> Result<u64, String> {
    let mut v = ChainVerifier::default();
    for e in events(store, session).await {
        v.push(&e).map_err(|b| format!("broken at {}: {}", b.seq, b.reason))?;
    }
    let head = store.get_session(&tenant(), &session).await.expect("get session");
    if head.head_seq != v.verified {
        return Err(format!("the head says {} events, the log has {}", head.head_seq, v.verified));
    }
    Ok(v.verified)
}

/// A session with one run through a few tool steps (3 events a step).
async fn busy_session(store: &SqliteStore, steps: u32) -> (SessionId, RunId) {
    let s = new_session(store).await;
    let run = RunId::new();
    append(store, s, vec![run_created(run, "what time is it? the secret is 42")]).await;
    for i in 0..steps {
        let call = format!("call_{i}");
        append(store, s, vec![responded(run, Some(&call), None), started(run, &call)]).await;
        append(store, s, vec![completed(run, &call, "12:00")]).await;
    }
    (s, run)
}

#[tokio::test(flavor = "multi_thread")]
async fn reopening_keeps_everything_and_frees_leases() {
    let dir = tempfile::tempdir().expect("dir");
    let spec =
        AgentSpec::parse("name: helper\nmodel: {provider: scripted, name: echo}\n", SpecFormat::Yaml).expect("spec");
    let (agent, session, run, log, token) = {
        let store = open(dir.path());
        let (agent, _) = store.put_agent(&tenant(), &spec).await.expect("put agent");
        let (session, run) = busy_session(&store, 5).await;
        let claims = store.claim_runs("worker-a", LONG, 10).await.expect("claim");
        assert_eq!(claims.len(), 1);
        let session_record = store.get_session(&tenant(), &session).await.expect("get session");
        (agent, session_record, run, events(&store, session).await, claims[0].token)
    };
    let store = open(dir.path());
    assert_eq!(store.get_agent(&tenant(), "helper", None).await.expect("agent"), agent);
    assert_eq!(store.get_session(&tenant(), &session.id).await.expect("session"), session);
    assert_eq!(events(&store, session.id).await, log);
    assert_eq!(verify(&store, session.id).await, Ok(log.len() as u64));
    let record = store.get_run(&tenant(), &run).await.expect("run");
    assert_eq!(record.lease, None, "the previous process's lease is gone");
    assert_eq!(record.fencing_token, token, "but its token is remembered");
    let claims = store.claim_runs("worker-b", LONG, 10).await.expect("claim");
    assert_eq!(claims.len(), 1, "the interrupted run is claimable at once");
    assert_eq!(claims[0].token, token + 1);
    let stale = store
        .append(AppendRequest {
            tenant_id: tenant(),
            session_id: session.id,
            expected_head: session.head_seq,
            events: vec![completed(run, "call_9", "x")],
            fence: Some(Fence { run_id: run, token, extend_lease: LONG }),
            idempotency: None,
        })
        .await;
    assert!(matches!(stale, Err(Error::Fenced { .. })), "{stale:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let first = open(dir.path());
    match SqliteStore::open(SqliteOptions::new(dir.path())) {
        Err(Error::Busy(m)) => {
            assert!(m.contains("in use by another stead process"), "{m}");
            assert!(m.contains(&*dir.path().to_string_lossy()), "{m}");
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    let s = new_session(&first).await;
    drop(first);
    let second = open(dir.path());
    assert_eq!(verify(&second, s).await, Ok(1), "the lock is released when the store is dropped");
}

#[tokio::test(flavor = "multi_thread")]
async fn files_that_are_not_stead_databases_are_refused() {
    type Writer = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Writer)> = vec![
        ("text", Box::new(|p: &Path| std::fs::write(p, "this is not a database\n".repeat(400)).expect("write"))),
        ("short", Box::new(|p: &Path| std::fs::write(p, b"hello").expect("write"))),
        (
            "binary",
            Box::new(|p: &Path| {
                std::fs::write(p, (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).expect("write")
            }),
        ),
        (
            "foreign",
            Box::new(|p: &Path| {
                let conn = rusqlite::Connection::open(p).expect("sqlite");
                conn.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)").expect("create");
            }),
        ),
    ];
    for (name, write) in cases {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(DB_FILE);
        write(&path);
        match SqliteStore::open(SqliteOptions::new(dir.path())) {
            Err(Error::Corrupt(m)) => assert!(m.contains(&*path.to_string_lossy()), "{name}: {m}"),
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_a_newer_stead_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    drop(open(dir.path()));
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).expect("sqlite");
    conn.execute_batch("PRAGMA user_version = 999").expect("bump");
    drop(conn);
    match SqliteStore::open(SqliteOptions::new(dir.path())) {
        Err(Error::Backend(m)) => assert!(m.contains("newer") && m.contains("999"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_pages_are_reported_as_corrupt_not_panics() {
    let dir = tempfile::tempdir().expect("dir");
    let session = {
        let store = open(dir.path());
        busy_session(&store, 200).await.0
    };
    // Dropping the store checkpointed the WAL into the file; smash every page but the first.
    let path = dir.path().join(DB_FILE);
    let mut bytes = std::fs::read(&path).expect("read db");
    assert!(bytes.len() > 3 * 4096, "the database spans several pages");
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i % 253) as u8;
    }
    std::fs::write(&path, bytes).expect("write db");
    match SqliteStore::open(SqliteOptions::new(dir.path())) {
        Err(Error::Corrupt(m)) => assert!(m.contains(&*path.to_string_lossy()), "{m}"),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(store) => match store.read_events(&tenant(), &session, 0, 10_000).await {
            Err(Error::Corrupt(m)) => assert!(m.contains(&*path.to_string_lossy()), "{m}"),
            other => panic!("expected Corrupt, got {other:?}"),
        },
    }
}

/// Reads join the session, so an approval row left behind by a delete would be invisible
/// through the `Store` API; only the tables themselves show that nothing is.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_session_leaves_no_rows_behind() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path());
    let (s, run) = busy_session(&store, 2).await;
    let approval = ApprovalId::new();
    append(
        &store,
        s,
        vec![
            responded(run, Some("pay"), None),
            NewEvent {
                run_id: Some(run),
                actor: Actor::worker("w"),
                body: EventBody::ApprovalRequested {
                    approval_id: approval,
                    kind: ApprovalKind::ToolCall,
                    call_id: "pay".into(),
                    name: "clock".into(),
                    arguments: "{}".into(),
                    role: "approver".into(),
                    expires_at: Timestamp::now(),
                    reason: "always".into(),
                },
            },
            NewEvent {
                run_id: Some(run),
                actor: Actor::worker("w"),
                body: EventBody::RunAwaitingApproval { approval_ids: vec![approval] },
            },
        ],
    )
    .await;
    let conn = rusqlite::Connection::open(store.db_path()).expect("sqlite");
    let pk: i64 =
        conn.query_row("SELECT pk FROM sessions WHERE id = ?1", [&s.as_bytes()[..]], |r| r.get(0)).expect("pk");
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table} WHERE session_pk = ?1"), [pk], |r| r.get(0))
            .expect("count")
    };
    assert_eq!((count("runs"), count("approvals")), (1, 1));
    store.delete_session(&tenant(), &s).await.expect("delete");
    for table in ["events", "runs", "approvals"] {
        assert_eq!(count(table), 0, "{table} rows of the deleted session");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_edited_behind_steads_back_break_the_chain() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path());
    // Each case edits one session of 11 events (seq 3-5, 6-8, 9-11: a tool step each) with
    // ?1 = the session's pk, and must break the chain at `seq`. Every column the hash covers
    // is edited (the session's tenant and id come from its own row, not the event's).
    let cases: [(&str, &[&str], u64); 12] = [
        (
            "body, in every row",
            &["UPDATE events SET data = replace(data, 'secret is 42', 'secret is 43') WHERE session_pk = ?1"],
            2,
        ),
        (
            "body, one field",
            &["UPDATE events SET data = replace(data, '12:00', '12:01') WHERE session_pk = ?1 AND seq = 8"],
            8,
        ),
        ("kind", &["UPDATE events SET kind = 'run_completed' WHERE session_pk = ?1 AND seq = 5"], 5),
        ("actor", &["UPDATE events SET actor = 'principal:mallory' WHERE session_pk = ?1 AND seq = 4"], 4),
        ("time", &["UPDATE events SET at = at + 1 WHERE session_pk = ?1 AND seq = 7"], 7),
        ("run id", &["UPDATE events SET run_id = randomblob(16) WHERE session_pk = ?1 AND seq = 3"], 3),
        ("run id removed", &["UPDATE events SET run_id = NULL WHERE session_pk = ?1 AND seq = 9"], 9),
        ("hash", &["UPDATE events SET hash = zeroblob(32) WHERE session_pk = ?1 AND seq = 10"], 10),
        ("deleted row", &["DELETE FROM events WHERE session_pk = ?1 AND seq = 6"], 7),
        (
            "swapped rows",
            &[
                "UPDATE events SET seq = 1000 WHERE session_pk = ?1 AND seq = 4",
                "UPDATE events SET seq = 4 WHERE session_pk = ?1 AND seq = 5",
                "UPDATE events SET seq = 5 WHERE session_pk = ?1 AND seq = 1000",
            ],
            4,
        ),
        (
            "row inserted in the middle",
            &[
                "UPDATE events SET seq = seq + 1000 WHERE session_pk = ?1 AND seq > 5",
                "UPDATE events SET seq = seq - 999 WHERE session_pk = ?1 AND seq > 1000",
                "INSERT INTO events SELECT session_pk, 6, tenant, run_id, kind, actor, at, data, hash, msg \
                 FROM events WHERE session_pk = ?1 AND seq = 5",
            ],
            6,
        ),
        (
            "row appended",
            &["INSERT INTO events SELECT session_pk, 12, tenant, run_id, kind, actor, at, data, hash, msg \
               FROM events WHERE session_pk = ?1 AND seq = 11"],
            12,
        ),
    ];
    let mut sessions = Vec::new();
    for _ in cases.iter() {
        let (s, _) = busy_session(&store, 3).await;
        assert_eq!(verify(&store, s).await, Ok(11));
        sessions.push(s);
    }
    let (truncated, _) = busy_session(&store, 3).await;
    let (garbled, _) = busy_session(&store, 3).await;
    let (garbled_run, run) = busy_session(&store, 3).await;

    // Another program edits the database while Stead runs.
    let conn = rusqlite::Connection::open(store.db_path()).expect("sqlite");
    let pk = |s: SessionId| -> i64 {
        conn.query_row("SELECT pk FROM sessions WHERE id = ?1", [&s.as_bytes()[..]], |r| r.get(0)).expect("pk")
    };
    for ((what, statements, _), s) in cases.iter().zip(&sessions) {
        for sql in statements.iter() {
            let changed = conn.execute(sql, [pk(*s)]).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(changed > 0, "{what}: {sql} changed nothing");
        }
    }
    conn.execute("DELETE FROM events WHERE session_pk = ?1 AND seq = 11", [pk(truncated)]).expect("delete");
    conn.execute("UPDATE events SET data = '{not json' WHERE session_pk = ?1 AND seq = 3", [pk(garbled)])
        .expect("edit");
    conn.execute("UPDATE runs SET state = 'null' WHERE id = ?1", [&run.as_bytes()[..]]).expect("edit");

    for ((what, _, seq), s) in cases.iter().zip(&sessions) {
        let broken = verify(&store, *s).await.expect_err(what);
        assert!(broken.starts_with(&format!("broken at {seq}:")), "{what}: {broken}");
    }
    let cut = verify(&store, truncated).await.expect_err("a missing tail is caught by the head");
    assert!(cut.contains("head says 11"), "{cut}");
    match store.read_events(&tenant(), &garbled, 0, 100).await {
        Err(Error::Corrupt(m)) => assert!(m.contains(DB_FILE) && m.contains("model_responded"), "{m}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match store.get_run(&tenant(), &run).await {
        Err(Error::Corrupt(m)) => assert!(m.contains("run state"), "{m}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Appending on a run whose projection was damaged is refused too, and writes nothing.
    let head = store.get_session(&tenant(), &garbled_run).await.expect("session").head_seq;
    let refused = store
        .append(AppendRequest {
            tenant_id: tenant(),
            session_id: garbled_run,
            expected_head: head,
            events: vec![responded(run, None, Some("x"))],
            fence: None,
            idempotency: None,
        })
        .await;
    assert!(matches!(refused, Err(Error::Corrupt(_))), "{refused:?}");
    assert_eq!(store.get_session(&tenant(), &garbled_run).await.expect("session").head_seq, head);
}

/// Writes queued while the writer is busy are committed together: one fsync for many.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path());
    let mut sessions = Vec::new();
    for _ in 0..200 {
        sessions.push(new_session(&store).await);
    }
    let before = store.writer_stats();
    let hold = store.hold_writer().await.expect("hold");
    let mut tasks = tokio::task::JoinSet::new();
    for s in sessions.iter().copied() {
        let store = store.clone();
        tasks.spawn(async move {
            let run = RunId::new();
            store
                .append(AppendRequest {
                    tenant_id: tenant(),
                    session_id: s,
                    expected_head: 1,
                    events: vec![run_created(run, "go")],
                    fence: None,
                    idempotency: None,
                })
                .await
        });
    }
    wait_for_queue(&store, 200).await;
    drop(hold);
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task").expect("append");
    }
    let after = store.writer_stats();
    let (ops, commits) = (after.ops - before.ops, after.commits - before.commits);
    assert_eq!(ops, 200);
    assert_eq!(commits, 1, "200 queued appends are one commit group");
    for s in sessions {
        assert_eq!(verify(&store, s).await, Ok(2));
    }
}

/// A failing write in a group is rolled back alone; the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_does_not_spoil_its_group() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path());
    let contested = new_session(&store).await;
    let mut others = Vec::new();
    for _ in 0..10 {
        others.push(new_session(&store).await);
    }
    let before = store.writer_stats();
    let hold = store.hold_writer().await.expect("hold");
    let mut tasks = tokio::task::JoinSet::new();
    let targets = std::iter::repeat_n(contested, 10).chain(others.iter().copied());
    for (i, s) in targets.enumerate() {
        let store = store.clone();
        tasks.spawn(async move {
            let run = RunId::new();
            // One write of the group is invalid on its own: a result for a call never made.
            let mut events = vec![run_created(run, &format!("{i}"))];
            if i == 12 {
                events.push(completed(run, "nope", "x"));
            }
            let req = AppendRequest {
                tenant_id: tenant(),
                session_id: s,
                expected_head: 1,
                events,
                fence: None,
                idempotency: None,
            };
            (s, store.append(req).await)
        });
    }
    wait_for_queue(&store, 20).await;
    drop(hold);
    let (mut won, mut conflicts, mut invalid, mut ok) = (0, 0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task") {
            (s, Ok(_)) if s == contested => won += 1,
            (_, Ok(_)) => ok += 1,
            (_, Err(Error::Conflict { expected: 1, actual: 2 })) => conflicts += 1,
            (_, Err(Error::InvalidTransition { .. })) => invalid += 1,
            (_, Err(e)) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((won, conflicts, invalid, ok), (1, 9, 1, 9));
    assert_eq!(store.writer_stats().commits - before.commits, 1);
    for s in others.into_iter().chain([contested]) {
        verify(&store, s).await.expect("chain");
    }
}

async fn wait_for_queue(store: &SqliteStore, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.writer_stats().queued < n {
        assert!(tokio::time::Instant::now() < deadline, "writes never queued: {:?}", store.writer_stats());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The schema keeps the log compact: a tool step (3 events) costs well under 1 KB on disk.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_costs_less_than_a_kilobyte_on_disk() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(SqliteOptions::new(dir.path()).durability(Durability::Off)).expect("open");
    const SESSIONS: u32 = 10;
    const STEPS: u32 = 100;
    for _ in 0..SESSIONS {
        busy_session(&store, STEPS).await;
    }
    let path = store.db_path().to_owned();
    drop(store);
    let bytes = std::fs::metadata(&path).expect("db").len();
    let per_step = bytes / u64::from(SESSIONS * STEPS);
    println!("{bytes} bytes for {} steps: {per_step} bytes per step", SESSIONS * STEPS);
    assert!(per_step <= 1024, "{per_step} bytes per step");
}

/// Another program's edit of one row must not stop every claim: the run is set aside (failed,
/// `corrupt_row` where its state still reads) and the other runs are claimed.
#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_run_or_session_row_is_set_aside_and_the_rest_claimed() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path());
    let (_, bad_state) = busy_session(&store, 1).await;
    let (bad_session, bad_session_run) = busy_session(&store, 1).await;
    let (_, good) = busy_session(&store, 1).await;
    let conn = rusqlite::Connection::open(store.db_path()).expect("sqlite");
    conn.execute("UPDATE runs SET state = '{not json' WHERE id = ?1", [&bad_state.as_bytes()[..]]).expect("edit");
    conn.execute("UPDATE sessions SET metadata = '[' WHERE id = ?1", [&bad_session.as_bytes()[..]]).expect("edit");

    let claims = store.claim_runs("w", LONG, 10).await.expect("one bad row does not fail the batch");
    assert_eq!(claims.iter().map(|c| c.run.id).collect::<Vec<_>>(), vec![good]);
    let status = |run: RunId| -> String {
        conn.query_row("SELECT status FROM runs WHERE id = ?1", [&run.as_bytes()[..]], |r| r.get(0)).expect("status")
    };
    assert_eq!((status(bad_state), status(bad_session_run)), ("failed".into(), "failed".into()));
    // The run whose state still decodes says why; the other cannot be read at all.
    let set_aside = store.get_run(&tenant(), &bad_session_run).await.expect("its own row reads");
    assert_eq!(set_aside.state.status, stead_core::run::RunStatus::Failed);
    assert_eq!(set_aside.state.error.as_ref().map(|e| e.code.as_str()), Some("corrupt_row"));
    assert_eq!(set_aside.lease, None);
    assert!(matches!(store.get_run(&tenant(), &bad_state).await, Err(Error::Corrupt(_))));
    // Set aside for good: later claims neither see nor fail on them.
    store.release_lease(&good, claims[0].token).await.expect("release");
    let again = store.claim_runs("w2", LONG, 10).await.expect("claim again");
    assert_eq!(again.iter().map(|c| c.run.id).collect::<Vec<_>>(), vec![good]);
}

/// Times outside 1970..=9999 in a row cannot be rendered as RFC 3339: they are reported as
/// corrupt, naming the row, never rendered (which used to panic) or passed on.
#[tokio::test(flavor = "multi_thread")]
async fn far_future_and_negative_times_in_rows_are_reported_as_corrupt() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path());
    let (far_event, _) = busy_session(&store, 1).await;
    let (far_session, _) = busy_session(&store, 1).await;
    let (_, negative_run) = busy_session(&store, 1).await;
    let conn = rusqlite::Connection::open(store.db_path()).expect("sqlite");
    let pk = |s: SessionId| -> i64 {
        conn.query_row("SELECT pk FROM sessions WHERE id = ?1", [&s.as_bytes()[..]], |r| r.get(0)).expect("pk")
    };
    conn.execute("UPDATE events SET at = ?2 WHERE session_pk = ?1 AND seq = 3", [pk(far_event), i64::MAX])
        .expect("edit");
    conn.execute("UPDATE sessions SET created_at = ?2 WHERE pk = ?1", [pk(far_session), 253_402_300_800_000])
        .expect("edit");
    conn.execute("UPDATE runs SET updated_at = -1 WHERE id = ?1", [&negative_run.as_bytes()[..]]).expect("edit");

    let corrupt = |r: Result<String, Error>| match r {
        Err(Error::Corrupt(m)) => m,
        other => panic!("expected Corrupt, got {other:?}"),
    };
    let m = corrupt(store.read_events(&tenant(), &far_event, 0, 100).await.map(|e| format!("{e:?}")));
    assert!(m.contains("event 3: stored time 9223372036854775807 ms"), "{m}");
    // The events before it still read, so a verifier can say exactly where the log breaks.
    assert_eq!(store.read_events(&tenant(), &far_event, 0, 2).await.expect("before it").len(), 2);
    let m = corrupt(store.get_session(&tenant(), &far_session).await.map(|s| format!("{s:?}")));
    assert!(m.contains("session creation time"), "{m}");
    let m = corrupt(store.get_run(&tenant(), &negative_run).await.map(|r| format!("{r:?}")));
    assert!(m.contains("run update time -1 ms"), "{m}");
}
