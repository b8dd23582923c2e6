//! Throughput of the PostgreSQL store against a real server (prints figures, asserts nothing).
//!
//! `cargo run -p stead-store-postgres --example pg_bench [-- --quick]`, URL from
//! `STEAD_TEST_POSTGRES_URL` (default `postgres://root@127.0.0.1:5432/test`). Works in a scratch
//! schema that it drops at the end.
//!
//! Figures: the server's raw commit rate (one client, one-row transactions) as the reference;
//! 1 session × N sequential steps; 100 sessions × 50 steps concurrently. A step is two commits,
//! as a run makes them: `model_responded` with the intent `tool_call_started`, then
//! `tool_call_completed`; every append is fenced by the run's lease, as a worker's are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stead_core::event::{Actor, EventBody, NewEvent};
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_core::message::{Message, ToolCall, Usage};
use stead_store::{AppendRequest, Fence, NewSession, Store};
use stead_store_postgres::{PostgresOptions, PostgresStore};

const LEASE: Duration = Duration::from_secs(60);

fn tenant() -> TenantId {
    TenantId::new("bench").expect("tenant")
}

async fn session_with_claimed_run(store: &PostgresStore, worker: &str) -> (SessionId, RunId, u64, u64) {
    let id = SessionId::new();
    let run = RunId::new();
    let body = EventBody::SessionCreated { agent: "a".into(), agent_version: 1, metadata: serde_json::json!({}) };
    let (session, _) = store
        .create_session(NewSession {
            tenant_id: tenant(),
            id,
            agent: "a".into(),
            agent_version: 1,
            metadata: serde_json::json!({}),
            first_event: NewEvent { run_id: None, actor: Actor::principal("bench"), body },
            then: vec![NewEvent {
                run_id: Some(run),
                actor: Actor::principal("bench"),
                body: EventBody::run_created(vec![Message::User { content: "go".into() }]),
            }],
            idempotency: None,
        })
        .await
        .expect("create session");
    let claims = store.claim_runs(worker, LEASE, 1000).await.expect("claim");
    let token = claims.iter().find(|c| c.run.id == run).map(|c| c.token).expect("claimed its run");
    (id, run, session.head_seq, token)
}

/// One step of a run: the model's answer with the intent to run its tool, then the result.
async fn step(store: &PostgresStore, session: SessionId, run: RunId, head: &mut u64, token: u64, n: u32) {
    let call = ToolCall { id: format!("c{n}"), name: "lookup".into(), arguments: format!("{{\"q\":{n}}}") };
    let worker = Actor::worker("bench");
    let fence = Some(Fence { run_id: run, token, extend_lease: LEASE });
    let commits = [
        vec![
            NewEvent {
                run_id: Some(run),
                actor: worker.clone(),
                body: EventBody::ModelResponded {
                    step: n,
                    model: "m".into(),
                    content: None,
                    tool_calls: vec![call.clone()],
                    usage: Usage::default(),
                    finish_reason: "tool_calls".into(),
                    chunks: Vec::new(),
                },
            },
            NewEvent {
                run_id: Some(run),
                actor: worker.clone(),
                body: EventBody::ToolCallStarted {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    idempotency_key: format!("k{n}"),
                },
            },
        ],
        vec![NewEvent {
            run_id: Some(run),
            actor: worker.clone(),
            body: EventBody::ToolCallCompleted {
                call_id: call.id.clone(),
                name: call.name.clone(),
                output: "a result of a reasonable size for a lookup tool".into(),
                is_error: false,
            },
        }],
    ];
    for events in commits {
        let written = store
            .append(AppendRequest {
                tenant_id: tenant(),
                session_id: session,
                expected_head: *head,
                events,
                fence: fence.clone(),
                idempotency: None,
            })
            .await
            .expect("append");
        *head = written.last().map_or(*head, |e| e.seq);
    }
}

/// One-row transactions, sequential on one connection: the server's raw commit rate (what one
/// client's durable commits cost), measured in `rounds` slices between the store's own slices so
/// both see the same load on a shared machine.
struct Raw {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    commits: u32,
    elapsed: Duration,
}

impl Raw {
    async fn new(url: &str, schema: &str) -> Self {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {schema}.commits (n bigint)")).await.expect("table");
        let insert = client.prepare(&format!("INSERT INTO {schema}.commits VALUES ($1)")).await.expect("prepare");
        Self { client, insert, commits: 0, elapsed: Duration::ZERO }
    }

    async fn commit(&mut self, n: u32) {
        let start = Instant::now();
        for i in 0..n {
            self.client.execute(&self.insert, &[&i64::from(i)]).await.expect("insert");
        }
        self.elapsed += start.elapsed();
        self.commits += n;
    }

    fn rate(&self) -> f64 {
        f64::from(self.commits) / self.elapsed.as_secs_f64()
    }
}

/// The raw commit rate with `clients` connections committing one-row transactions at once.
async fn raw_concurrent_rate(url: &str, schema: &str, clients: u32, each: u32) -> f64 {
    let mut tasks = tokio::task::JoinSet::new();
    let mut raws = Vec::new();
    for _ in 0..clients {
        raws.push(Raw::new(url, schema).await);
    }
    let start = Instant::now();
    for mut raw in raws {
        tasks.spawn(async move { raw.commit(each).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("raw client");
    }
    f64::from(clients * each) / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let url = std::env::var("STEAD_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let schema = format!("stead_bench_{}", uuid::Uuid::now_v7().simple());
    let store = PostgresStore::open(PostgresOptions::new(url.clone()).schema(schema.clone()).pool_size(32))
        .await
        .expect("open");
    println!("PostgreSQL store bench against {} (schema {schema})", store.target());

    let steps: u32 = if quick { 200 } else { 1000 };
    let rounds = 10;
    let mut raw = Raw::new(&url, &schema).await;
    let (s, run, mut head, token) = session_with_claimed_run(&store, "seq").await;
    let mut ours = Duration::ZERO;
    let mut n = 0;
    for _ in 0..rounds {
        raw.commit(steps / rounds).await;
        let start = Instant::now();
        for _ in 0..steps / rounds {
            n += 1;
            step(&store, s, run, &mut head, token, n).await;
        }
        ours += start.elapsed();
    }
    let raw_rate = raw.rate();
    let rate = f64::from(n) / ours.as_secs_f64();
    println!("raw commit rate, 1 client:                 {raw_rate:>8.0} commits/s (measured between the steps below)");
    println!(
        "1 session x {n} sequential steps:        {rate:>8.0} steps/s = {:.0} commits/s ({:.0} % of the raw rate at 2 commits/step)",
        2.0 * rate,
        100.0 * 2.0 * rate / raw_rate
    );

    let (sessions, per) = if quick { (20, 20) } else { (100, 50) };
    let store: Arc<PostgresStore> = store;
    let mut setup = Vec::new();
    for _ in 0..sessions {
        setup.push(session_with_claimed_run(&store, "par").await);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (s, run, mut head, token) in setup {
        let store = store.clone();
        tasks.spawn(async move {
            for n in 1..=per {
                step(&store, s, run, &mut head, token, n).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("session task");
    }
    let total = f64::from(sessions * per);
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{sessions} sessions x {per} steps, concurrent:    {:>8.0} steps/s aggregate ({:.0} commits/s, 1 node, pool 32)",
        total / elapsed,
        2.0 * total / elapsed
    );

    let raw32 = raw_concurrent_rate(&url, &schema, 32, if quick { 20 } else { 50 }).await;
    println!("raw commit rate, 32 clients:               {raw32:>8.0} commits/s");

    drop(store);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop the bench schema");
}
