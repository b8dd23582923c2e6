//! PostgreSQL-specific behaviour: reopening a schema, refusing newer and foreign schemas,
//! unreachable servers, the settings every connection gets, rows edited behind Stead's back,
//! and two stores (as two nodes would) sharing one schema.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stead_core::event::{Actor, ChainVerifier, EventBody, NewEvent};
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_core::message::{Message, Usage};
use stead_store::conformance::Config;
use stead_store::{AppendRequest, Error, Fence, NewSession, Store};
use stead_store_postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION};

use common::{Scratch, postgres_ready, url};

const LONG: Duration = Duration::from_secs(60);

fn tenant() -> TenantId {
    TenantId::new("acme").expect("tenant")
}

macro_rules! require_postgres {
    () => {
        if let Err(why) = postgres_ready().await {
            println!("SKIPPED: {why}");
            return;
        }
    };
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

async fn open_on(schema: &str) -> Result<Arc<PostgresStore>, Error> {
    PostgresStore::open(PostgresOptions::new(url()).schema(schema).pool_size(4)).await
}

async fn new_session(store: &dyn Store) -> SessionId {
    let id = SessionId::new();
    let body = EventBody::SessionCreated { agent: "helper".into(), agent_version: 1, metadata: json!({}) };
    store
        .create_session(NewSession {
            tenant_id: tenant(),
            id,
            agent: "helper".into(),
            agent_version: 1,
            metadata: json!({}),
            first_event: NewEvent { run_id: None, actor: Actor::principal("alice"), body },
            then: Vec::new(),
            idempotency: None,
        })
        .await
        .expect("create session");
    id
}

fn run_created(run: RunId) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::principal("alice"),
        body: EventBody::run_created(vec![Message::User { content: "go".into() }]),
    }
}

fn responded(run: RunId, step: u32) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::worker("w"),
        body: EventBody::ModelResponded {
            step,
            model: "m".into(),
            content: Some(format!("step {step}")),
            tool_calls: Vec::new(),
            usage: Usage::default(),
            finish_reason: "stop".into(),
            chunks: Vec::new(),
        },
    }
}

async fn append(
    store: &dyn Store,
    session: SessionId,
    events: Vec<NewEvent>,
    fence: Option<Fence>,
) -> stead_store::Result<Vec<stead_core::event::Event>> {
    let head = store.get_session(&tenant(), &session).await?.head_seq;
    store
        .append(AppendRequest {
            tenant_id: tenant(),
            session_id: session,
            expected_head: head,
            events,
            fence,
            idempotency: None,
        })
        .await
}

async fn verify(store: &dyn Store, session: SessionId) -> String {
    let events = store.read_events(&tenant(), &session, 0, 10_000).await.expect("read");
    let mut chain = ChainVerifier::default();
    for e in &events {
        chain.push(e).expect("the chain verifies");
    }
    let head = store.get_session(&tenant(), &session).await.expect("session");
    assert_eq!(hex::encode(chain.head_hash()), head.head_hash, "the head is the chain's last hash");
    head.head_hash
}

/// A second open of the same schema (a restart, or another node) migrates nothing and sees
/// everything, with the chain intact.
#[tokio::test(flavor = "multi_thread")]
async fn reopening_a_schema_keeps_everything() {
    require_postgres!();
    let scratch = Scratch::new();
    let first = open_on(&scratch.schema).await.expect("open");
    let s = new_session(&*first).await;
    let run = RunId::new();
    append(&*first, s, vec![run_created(run), responded(run, 1)], None).await.expect("append");
    let head = verify(&*first, s).await;
    drop(first);
    let again = open_on(&scratch.schema).await.expect("reopen");
    assert_eq!(verify(&*again, s).await, head);
    assert_eq!(again.get_run(&tenant(), &run).await.expect("run").state.steps, 1);
    let versions: i64 = admin()
        .await
        .query_one(&format!("SELECT count(*) FROM {}.stead_schema", scratch.schema), &[])
        .await
        .expect("versions")
        .get(0);
    assert_eq!(versions, SCHEMA_VERSION);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_from_a_newer_stead_is_refused() {
    require_postgres!();
    let scratch = Scratch::new();
    drop(open_on(&scratch.schema).await.expect("open"));
    admin()
        .await
        .batch_execute(&format!(
            "INSERT INTO {}.stead_schema (version) VALUES ({})",
            scratch.schema,
            SCHEMA_VERSION + 1
        ))
        .await
        .expect("a newer version");
    let err = open_on(&scratch.schema).await.expect_err("refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(msg.contains("newer than this stead knows") && msg.contains("upgrade stead"), "{msg}");
}

/// A schema with Stead's table names but no `stead_schema` is someone else's: never touched.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_schema_is_refused() {
    require_postgres!();
    let scratch = Scratch::new();
    admin()
        .await
        .batch_execute(&format!("CREATE SCHEMA {0}; CREATE TABLE {0}.sessions (x int)", scratch.schema))
        .await
        .expect("a foreign schema");
    let err = open_on(&scratch.schema).await.expect_err("refused");
    assert!(matches!(err, Error::Corrupt(ref m) if m.contains("not a Stead schema")), "{err:?}");
    let tables: i64 = admin()
        .await
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = $1", &[&scratch.schema])
        .await
        .expect("count")
        .get(0);
    assert_eq!(tables, 1, "nothing was added to it");
}

/// No server on the port: `Unavailable`, naming host and port, never the password.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_unavailable_and_named_without_the_password() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let options = PostgresOptions::new(format!("postgres://root:s3cret-pw@127.0.0.1:{port}/test"))
        .connect_timeout(Duration::from_secs(2));
    let err = PostgresStore::open(options).await.expect_err("no server");
    let msg = err.to_string();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "the cause is told: {msg}");
    assert!(!msg.contains("s3cret-pw") && !format!("{err:?}").contains("s3cret-pw"), "{msg}");
}

/// A URL whose `search_path` names no schema that exists: told so, nothing created.
#[tokio::test(flavor = "multi_thread")]
async fn a_search_path_naming_no_schema_is_refused() {
    require_postgres!();
    let sep = if url().contains('?') { '&' } else { '?' };
    let missing = format!("{}{sep}options=-csearch_path%3Dstead_missing_{}", url(), uuid::Uuid::now_v7().simple());
    let err = PostgresStore::open(PostgresOptions::new(missing)).await.expect_err("refused");
    assert!(err.to_string().contains("names no existing schema"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_urls_and_schema_names_are_refused() {
    let err = PostgresStore::open(PostgresOptions::new("postgres://root@127.0.0.1:notaport/test"))
        .await
        .expect_err("bad url");
    assert!(err.to_string().contains("invalid PostgreSQL URL"), "{err}");
    let err = PostgresStore::open(PostgresOptions::new(url()).schema("x; DROP TABLE y")).await.expect_err("bad schema");
    assert!(err.to_string().contains("invalid schema name"), "{err}");
}

/// Every pooled connection runs with the configured timeouts and the store's schema.
#[tokio::test(flavor = "multi_thread")]
async fn connections_carry_their_timeouts_and_schema() {
    require_postgres!();
    let scratch = Scratch::new();
    let options = PostgresOptions::new(url())
        .schema(scratch.schema.clone())
        .statement_timeout(Duration::from_secs(7))
        .idle_in_transaction_timeout(Duration::from_secs(3));
    let store = PostgresStore::open(options).await.expect("open");
    assert_eq!(store.connection_setting("statement_timeout").await.expect("setting"), "7s");
    assert_eq!(store.connection_setting("idle_in_transaction_session_timeout").await.expect("setting"), "3s");
    assert_eq!(store.connection_setting("search_path").await.expect("setting"), scratch.schema);
    assert_eq!(store.connection_setting("application_name").await.expect("setting"), "stead");
    let keepalive: String = admin()
        .await
        .query_one(
            "SELECT coalesce(min(client_port), 0)::text FROM pg_stat_activity WHERE application_name = 'stead'",
            &[],
        )
        .await
        .expect("activity")
        .get(0);
    assert_ne!(keepalive, "0", "the pool's connections are TCP connections named stead");
}

/// Another program's edit of one row must not stop every claim: the run is set aside (failed,
/// `corrupt_row` where its state still reads) and the other runs are claimed.
#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_run_or_session_row_is_set_aside_and_the_rest_claimed() {
    require_postgres!();
    let (store, scratch) = common::open(Config::default()).await;
    let mut runs = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let s = new_session(&*store).await;
        let run = RunId::new();
        append(&*store, s, vec![run_created(run)], None).await.expect("append");
        sessions.push(s);
        runs.push(run);
    }
    let (bad_state, bad_session_run, good) = (runs[0], runs[1], runs[2]);
    let db = admin().await;
    db.execute(
        &format!("UPDATE {}.runs SET state = '{{not json' WHERE id = $1", scratch.schema),
        &[&&bad_state.as_bytes()[..]],
    )
    .await
    .expect("edit");
    db.execute(
        &format!("UPDATE {}.sessions SET metadata = '[' WHERE id = $1", scratch.schema),
        &[&&sessions[1].as_bytes()[..]],
    )
    .await
    .expect("edit");
    let claims = store.claim_runs("w", LONG, 10).await.expect("one bad row does not fail the batch");
    assert_eq!(claims.iter().map(|c| c.run.id).collect::<Vec<_>>(), vec![good]);
    let set_aside = store.get_run(&tenant(), &bad_session_run).await.expect("its own row reads");
    assert_eq!(set_aside.state.status, stead_core::run::RunStatus::Failed);
    assert_eq!(set_aside.state.error.as_ref().map(|e| e.code.as_str()), Some("corrupt_row"));
    assert_eq!(set_aside.lease, None);
    assert!(matches!(store.get_run(&tenant(), &bad_state).await, Err(Error::Corrupt(_))));
    store.release_lease(&good, claims[0].token).await.expect("release");
    let again = store.claim_runs("w2", LONG, 10).await.expect("claim again");
    assert_eq!(again.iter().map(|c| c.run.id).collect::<Vec<_>>(), vec![good]);
}

/// Two stores on one schema, as two nodes: claims never overlap, one head has one winner, a
/// lease taken over on one fences the other, and both see one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_schema_share_heads_claims_and_fences() {
    require_postgres!();
    let (a, scratch) = common::open(Config::default()).await;
    let b = open_on(&scratch.schema).await.expect("second node");
    let mut all = Vec::new();
    for _ in 0..20 {
        let s = new_session(&*a).await;
        let run = RunId::new();
        append(&*b, s, vec![run_created(run)], None).await.expect("append");
        all.push((s, run));
    }
    // Concurrent claimers on both nodes: each run exactly once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { store.claim_runs(&format!("w{i}"), LONG, 3).await.expect("claim") });
    }
    let mut claimed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        claimed.extend(done.expect("task").into_iter().map(|c| c.run.id));
    }
    claimed.extend(a.claim_runs("rest", LONG, 100).await.expect("claim").into_iter().map(|c| c.run.id));
    claimed.sort();
    let mut expected: Vec<RunId> = all.iter().map(|(_, r)| *r).collect();
    expected.sort();
    assert_eq!(claimed, expected, "every run claimed once across both nodes");

    // The same head from both nodes: one winner.
    let (s, run) = all[0];
    let head = a.get_session(&tenant(), &s).await.expect("session").head_seq;
    let req = |step| AppendRequest {
        tenant_id: tenant(),
        session_id: s,
        expected_head: head,
        events: vec![NewEvent {
            run_id: Some(run),
            actor: Actor::worker("x"),
            body: EventBody::RunCancelRequested { reason: format!("{step}") },
        }],
        fence: None,
        idempotency: None,
    };
    let (ra, rb) = tokio::join!(a.append(req(1)), b.append(req(2)));
    assert_eq!([ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(), 1, "{ra:?} {rb:?}");
    assert!(matches!(ra.err().or(rb.err()), Some(Error::Conflict { .. })));

    // A lease taken over on node b fences node a's worker.
    let (s2, run2) = all[1];
    let old = a.get_run(&tenant(), &run2).await.expect("run").fencing_token;
    b.release_lease(&run2, old).await.expect("release");
    let taken = b.claim_runs("b-worker", LONG, 100).await.expect("claim");
    let new = taken.iter().find(|c| c.run.id == run2).expect("taken over").token;
    let stale = Some(Fence { run_id: run2, token: old, extend_lease: LONG });
    assert!(matches!(append(&*a, s2, vec![responded(run2, 1)], stale).await, Err(Error::Fenced { .. })));
    let fresh = Some(Fence { run_id: run2, token: new, extend_lease: LONG });
    append(&*a, s2, vec![responded(run2, 1)], fresh).await.expect("the new holder writes from either node");
    assert_eq!(verify(&*a, s2).await, verify(&*b, s2).await);
}

/// Writes whose callers give up mid-flight (a timeout, a dropped request) leave no
/// transaction open on a pooled connection: the next writes to the same session go through,
/// and no connection of the store sits idle in a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_cancelled_mid_flight_leave_no_open_transaction() {
    require_postgres!();
    let scratch = Scratch::new();
    let mut options = PostgresOptions::new(url()).schema(scratch.schema.clone()).pool_size(2);
    options.application_name = scratch.schema.clone();
    let store = PostgresStore::open(options).await.expect("open");
    let s = new_session(&*store).await;
    let run = RunId::new();
    append(&*store, s, vec![run_created(run)], None).await.expect("append");
    let db = admin().await;
    let stuck = || async {
        // Let the server finish what was already sent.
        tokio::time::sleep(Duration::from_millis(30)).await;
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
            &[&scratch.schema],
        )
        .await
        .expect("activity")
        .get::<_, i64>(0)
    };
    let mut cancelled = 0;
    for i in 0..40u32 {
        let head = store.get_session(&tenant(), &s).await.expect("session").head_seq;
        let req = AppendRequest {
            tenant_id: tenant(),
            session_id: s,
            expected_head: head,
            events: vec![responded(run, i + 1)],
            fence: None,
            idempotency: None,
        };
        // Give up after a varying sliver of time: somewhere before, inside or after the round trips.
        let wait = Duration::from_micros(u64::from(i % 12) * 150);
        if tokio::time::timeout(wait, store.append(req)).await.is_err() {
            cancelled += 1;
            assert_eq!(stuck().await, 0, "a cancelled write left its connection inside a transaction");
        }
    }
    assert!(cancelled > 0, "some writes were cancelled mid-flight");
    append(&*store, s, vec![responded(run, 1000)], None).await.expect("the session is not left locked");
    verify(&*store, s).await;
    assert_eq!(stuck().await, 0, "no pooled connection is left inside a transaction");
}

/// A write the database refuses half-way (here: an event row planted behind Stead's back at
/// the next sequence) leaves nothing: not the run's new state, not a moved head — also on a
/// fresh connection, whose statements are prepared during that very write.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_refused_by_the_database_leaves_nothing() {
    require_postgres!();
    let scratch = Scratch::new();
    let first = open_on(&scratch.schema).await.expect("open");
    let s = new_session(&*first).await;
    let run = RunId::new();
    append(&*first, s, vec![run_created(run)], None).await.expect("append");
    drop(first);
    let head: i64 = 2;
    admin()
        .await
        .execute(
            &format!(
                "INSERT INTO {0}.events (session_pk, seq, at, msg, tenant, kind, actor, data, hash) \
                 SELECT pk, $1, 0, false, tenant, 'run_deleted', 'x', '{{}}', '\\x00' FROM {0}.sessions WHERE id = $2",
                scratch.schema
            ),
            &[&(head + 1), &&s.as_bytes()[..]],
        )
        .await
        .expect("plant a row");
    let fresh = PostgresStore::open(PostgresOptions::new(url()).schema(scratch.schema.clone()).pool_size(1))
        .await
        .expect("open");
    let err = append(&*fresh, s, vec![responded(run, 1)], None).await.expect_err("the database refuses");
    assert!(matches!(err, Error::Backend(ref m) if m.contains("23505")), "{err:?}");
    let session = fresh.get_session(&tenant(), &s).await.expect("session");
    assert_eq!(session.head_seq, head as u64, "the head did not move");
    let state = fresh.get_run(&tenant(), &run).await.expect("run").state;
    assert_eq!((state.steps, state.status), (0, stead_core::run::RunStatus::Queued), "the run did not change");
}
