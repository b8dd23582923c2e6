//! Supervision of run drivers and of the dispatcher, on a real SQLite store: a driver that
//! panics ends its run `failed` (never a zombie holding its lease), a worker whose lease was
//! taken over is fenced and stops, and the dispatcher's end is visible to readiness.
//! Faults are injected per engine (`Faults`), so each test arms only its own.

use std::sync::Arc;
use std::time::Duration;

use stead_core::agent::SpecFormat;
use stead_core::event::{Event, EventBody};
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_core::message::Message;
use stead_core::run::RunStatus;
use stead_engine::fault::{self, Faults, Gate};
use stead_engine::{DispatcherState, Engine, EngineOptions, Error, ToolRegistry};
use stead_model::{ProviderDefaults, Providers};
use stead_store::{RunRecord, Store};
use stead_store_sqlite::{SqliteOptions, SqliteStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const AGENT: &str = "name: a\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: echo, type: builtin}\n";
const LONG: Duration = Duration::from_secs(60);

fn tenant() -> TenantId {
    TenantId::default_tenant()
}

fn engine(store: &Arc<dyn Store>, worker: &str, faults: Faults) -> Engine {
    let options = EngineOptions {
        worker_id: worker.into(),
        lease: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        faults,
        ..EngineOptions::default()
    };
    Engine::new(store.clone(), Providers::new(ProviderDefaults::default()), ToolRegistry::with_builtins(), options)
}

/// A dispatcher and the means to stop it (and wait until it has).
struct Dispatcher {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Dispatcher {
    fn start(engine: &Engine) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (engine, stop) = (engine.clone(), stop.clone());
            async move { engine.run(stop).await }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the dispatcher stops cleanly");
    }
}

async fn session(engine: &Engine) -> SessionId {
    let (agent, _) = engine.apply_agent(&tenant(), AGENT, SpecFormat::Yaml).await.unwrap();
    engine.create_session(&tenant(), "test", &agent.name, None, serde_json::json!({})).await.unwrap().id
}

async fn start_run(engine: &Engine, session: &SessionId, text: &str) -> RunId {
    engine.create_run(&tenant(), "test", session, vec![Message::User { content: text.into() }]).await.unwrap().id
}

async fn finished(engine: &Engine, run: &RunId) -> RunRecord {
    let record = engine.wait_for_run(&tenant(), run, LONG).await.unwrap();
    assert!(record.status().is_terminal(), "the run did not finish: {record:?}");
    record
}

async fn events(store: &Arc<dyn Store>, session: &SessionId) -> Vec<Event> {
    store.read_events(&tenant(), session, 0, 10_000).await.unwrap()
}

/// Waits (bounded) until `engine` drives no run: its drivers have returned.
async fn no_run_in_flight(engine: &Engine) {
    tokio::time::timeout(LONG, async {
        while engine.runs_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the engine's drivers stop");
}

fn open_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    (store as Arc<dyn Store>, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_driver_fails_its_run_and_frees_its_session() {
    let (store, _dir) = open_store();
    let faults = Faults::default().panic(fault::TOOL_STARTED);
    let first = engine(&store, "first", faults.clone());
    let dispatcher = Dispatcher::start(&first);
    let session = session(&first).await;

    // The model calls `echo`; its driver panics once the call's intent is recorded.
    let panicked = start_run(&first, &session, r#"call echo {"text":"x"}"#).await;
    let run = finished(&first, &panicked).await;
    assert_eq!(run.status(), RunStatus::Failed, "{run:?}");
    let error = run.state.error.as_ref().expect("an error");
    assert_eq!(error.code, "internal", "{error:?}");
    assert!(!error.message.contains("stead-fault"), "the panic's text stays out of the log: {error:?}");
    assert!(run.lease.is_none(), "the lease is given back: {run:?}");
    no_run_in_flight(&first).await;

    // Not a zombie: cancel answers that it is over, and the session's next run starts and ends.
    match first.cancel_run(&tenant(), "test", &panicked, "stop").await {
        Err(Error::RunFinished { status: RunStatus::Failed, .. }) => {}
        other => panic!("cancel of the failed run: {other:?}"),
    }
    let next = start_run(&first, &session, "hello").await;
    assert_eq!(finished(&first, &next).await.status(), RunStatus::Completed);
    dispatcher.stop().await;

    // After a restart (same faults armed) the failed run is never claimed again.
    let second = engine(&store, "second", faults);
    let dispatcher = Dispatcher::start(&second);
    let after = start_run(&second, &session, "hello again").await;
    assert_eq!(finished(&second, &after).await.status(), RunStatus::Completed);
    let again = store.get_run(&tenant(), &panicked).await.unwrap();
    assert_eq!(again.fencing_token, run.fencing_token, "claimed again after the restart: {again:?}");
    assert_eq!(again.status(), RunStatus::Failed);
    dispatcher.stop().await;

    let log = events(&store, &session).await;
    let ends: Vec<&Event> =
        log.iter().filter(|e| e.run_id == Some(panicked) && matches!(e.body, EventBody::RunFailed { .. })).collect();
    assert_eq!(ends.len(), 1, "the run fails exactly once: {log:#?}");
    assert_eq!(ends[0].actor.0, "worker:first");
    assert!(second.verify_session(&tenant(), &session).await.unwrap().ok);
    store.delete_session(&tenant(), &session).await.expect("a session whose run failed can be deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_before_the_first_write_fails_the_run_too() {
    let (store, _dir) = open_store();
    let e = engine(&store, "w", Faults::default().panic(fault::BEFORE_MODEL_CALL));
    let dispatcher = Dispatcher::start(&e);
    let session = session(&e).await;
    let run = start_run(&e, &session, "hello").await;
    let run = finished(&e, &run).await;
    assert_eq!(
        (run.status(), run.state.error.as_ref().map(|e| e.code.as_str())),
        (RunStatus::Failed, Some("internal"))
    );
    assert!(run.lease.is_none(), "{run:?}");
    no_run_in_flight(&e).await;
    dispatcher.stop().await;
    store.delete_session(&tenant(), &session).await.expect("nothing holds the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_over_is_fenced_and_stops() {
    let (store, _dir) = open_store();
    // Worker a stalls: its lease keeper stops renewing, and its driver is held after running
    // the tool, before recording the result — as a process paused past its lease would be.
    let (gate_a, gate_b) = (Gate::new(), Gate::new());
    let a = engine(
        &store,
        "a",
        Faults::default().pause(fault::LEASE_RENEWAL).hold(fault::BEFORE_TOOL_RECORDED, gate_a.clone()),
    );
    let b = engine(&store, "b", Faults::default().hold(fault::BEFORE_TOOL_RECORDED, gate_b.clone()));
    let session = session(&a).await;
    let dispatcher_a = Dispatcher::start(&a);
    let run = start_run(&a, &session, r#"call echo {"text":"once"}"#).await;
    gate_a.arrivals(1).await;
    // Only the held driver of a stays alive; its dispatcher may not claim the run again.
    dispatcher_a.stop().await;
    let claimed_by_a = store.get_run(&tenant(), &run).await.unwrap().fencing_token;

    // Once a's lease expires, b claims the run, runs the (idempotent) tool again and is held too.
    let dispatcher_b = Dispatcher::start(&b);
    gate_b.arrivals(1).await;
    let record = store.get_run(&tenant(), &run).await.unwrap();
    assert_eq!(record.fencing_token, claimed_by_a + 1, "b holds the newer lease: {record:?}");
    assert_eq!(record.lease.as_ref().map(|l| l.owner.as_str()), Some("b"), "{record:?}");
    assert_eq!((a.runs_in_flight(), b.runs_in_flight()), (1, 1), "both workers are live");
    let before = events(&store, &session).await;

    // a wakes up and tries to record its result: fenced, so it stops and writes nothing.
    gate_a.release(1);
    no_run_in_flight(&a).await;
    assert_eq!(events(&store, &session).await, before, "a stale worker's write is refused, not merged");

    gate_b.release(1);
    let done = finished(&b, &run).await;
    assert_eq!(done.status(), RunStatus::Completed, "{done:?}");
    dispatcher_b.stop().await;

    let log = events(&store, &session).await;
    let by = |who: &str| log.iter().filter(|e| e.actor.0 == who).map(|e| e.seq).collect::<Vec<_>>();
    let (seq_a, seq_b) = (by("worker:a"), by("worker:b"));
    assert!(!seq_a.is_empty() && !seq_b.is_empty(), "{log:#?}");
    assert!(seq_a.iter().max() < seq_b.iter().min(), "no write of a after b's claim: a {seq_a:?}, b {seq_b:?}");
    let count = |f: fn(&EventBody) -> bool| log.iter().filter(|e| f(&e.body)).count();
    assert_eq!(count(|b| matches!(b, EventBody::ToolCallCompleted { .. })), 1, "{log:#?}");
    assert_eq!(count(|b| matches!(b, EventBody::RunCompleted { .. })), 1, "the run completes once: {log:#?}");
    assert!(b.verify_session(&tenant(), &session).await.unwrap().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatchers_end_is_visible_whether_it_returns_or_panics() {
    let (store, _dir) = open_store();
    let e = engine(&store, "w", Faults::default());
    assert_eq!(e.dispatcher_state(), DispatcherState::NotStarted);
    let dispatcher = Dispatcher::start(&e);
    // Running as soon as it claims: a run it executes proves it.
    let session = session(&e).await;
    let run = start_run(&e, &session, "hello").await;
    assert_eq!(finished(&e, &run).await.status(), RunStatus::Completed);
    assert_eq!(e.dispatcher_state(), DispatcherState::Running);
    dispatcher.stop().await;
    assert_eq!(e.dispatcher_state(), DispatcherState::Stopped);

    let broken = engine(&store, "w2", Faults::default().panic(fault::DISPATCHER_LOOP));
    let task = tokio::spawn({
        let broken = broken.clone();
        async move { broken.run(CancellationToken::new()).await }
    });
    assert!(task.await.expect_err("the dispatcher panics").is_panic());
    assert_eq!(broken.dispatcher_state(), DispatcherState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_the_clock_can_count_does_not_panic() {
    let (store, _dir) = open_store();
    let e = engine(&store, "w", Faults::default());
    let dispatcher = Dispatcher::start(&e);
    let session = session(&e).await;
    let run = start_run(&e, &session, "hello").await;
    assert_eq!(finished(&e, &run).await.status(), RunStatus::Completed);
    // An operator's huge --max-wait-secs reaches here as the request's bound.
    let record = e.wait_for_run(&tenant(), &run, Duration::MAX).await.unwrap();
    assert_eq!(record.status(), RunStatus::Completed);
    dispatcher.stop().await;
}
