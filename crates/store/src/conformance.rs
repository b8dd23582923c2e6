//! The conformance suite every [`Store`] backend must pass (feature `conformance`).
//!
//! Each case gets a fresh, empty store from the backend's factory and attacks one of the
//! store's guarantees — compare-and-append, fencing, projections, tenant isolation, claim
//! order, limits — checking both the answer and that a refused write left nothing behind.
//!
//! A backend runs the whole suite from its tests with
//! `stead_store::conformance_tests!(make_store);` where
//! `async fn make_store(config: Config) -> Fixture` (the calling crate needs `tokio` with
//! the `macros` and `rt-multi-thread` features), or calls [`run_all`] or single cases.
//!
//! Conventions every backend must follow, beyond the trait docs:
//! - a page with `limit: 0` is a default-sized page, and a page's cursor (`after`) is the
//!   id (sessions, runs) or name (agents) of the last item of the previous page;
//! - `list_agent_versions` of an unknown agent is `NotFound`;
//! - creating a session whose id exists is a `Conflict` with `expected: 0`;
//! - `LimitExceeded` messages name the limit (`max_events_per_session`, `max_event_bytes`);
//! - a commit is published on `subscribe` before the write that made it returns.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stead_core::agent::{AgentSpec, SpecFormat};
use stead_core::event::{Actor, ChainVerifier, ErrorInfo, Event, EventBody, NewEvent};
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_core::message::{Message, ToolCall, Usage};
use stead_core::run::{RunState, RunStatus};
use tokio::task::JoinSet;

use crate::{AppendRequest, Committed, Error, Fence, NewSession, Page, RunRecord, SessionRecord, Store};

/// The limits a case needs its store to enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub max_events_per_session: u64,
    pub max_event_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_events_per_session: 1_000_000, max_event_bytes: 1024 * 1024 }
    }
}

/// A fresh store for one case, and whatever must outlive it (a temp dir, a scratch database).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub guard: Box<dyn Any + Send>,
}

impl Fixture {
    pub fn new(store: Arc<dyn Store>, guard: impl Any + Send) -> Self {
        Self { store, guard: Box::new(guard) }
    }
}

/// A backend's factory of fresh, empty stores.
pub trait MakeStore {
    fn make(&self, config: Config) -> impl Future<Output = Fixture>;
}

impl<F, Fut> MakeStore for F
where
    F: Fn(Config) -> Fut,
    Fut: Future<Output = Fixture>,
{
    fn make(&self, config: Config) -> impl Future<Output = Fixture> {
        self(config)
    }
}

/// Lists every case; `$callback` receives `$args; case, case, ...`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ([$($callback:tt)*] $($args:tt)*) => {
        $($callback)*!($($args)*;
            sessions_are_created_read_and_listed,
            concurrent_appends_at_one_head_have_one_winner,
            retrying_writers_build_one_gapless_chain,
            appended_events_read_back_identically,
            malformed_appends_write_nothing,
            terminal_runs_refuse_events,
            results_for_unknown_calls_are_refused,
            stale_workers_are_fenced,
            claims_are_exclusive,
            later_runs_wait_for_the_oldest_unfinished_run,
            runs_waiting_on_the_client_hold_no_lease_and_resume,
            tenants_are_isolated,
            message_window_is_the_newest_messages_ascending,
            agent_versions_are_immutable_and_deduplicated,
            sessions_and_runs_paginate,
            limits_refuse_and_write_nothing,
            deleting_a_session_removes_everything_and_waits_for_leases,
            commits_are_published_in_order,
        );
    };
}

/// Generates one `#[tokio::test]` per conformance case, each with a store from `$make`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__conformance_cases!([$crate::__conformance_test_fns] $make);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::$case(&$make).await;
            }
        )*
    };
}

macro_rules! run_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $( $case($make).await; )*
    };
}

/// Runs every case in turn.
pub async fn run_all(make: &impl MakeStore) {
    __conformance_cases!([run_cases] make);
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn tenant_a() -> TenantId {
    TenantId::new("conformance-a").expect("valid tenant")
}

fn tenant_b() -> TenantId {
    TenantId::new("conformance-b").expect("valid tenant")
}

const LONG: Duration = Duration::from_secs(60);

fn session_created() -> NewEvent {
    NewEvent {
        run_id: None,
        actor: Actor::principal("alice"),
        body: EventBody::SessionCreated { agent: "helper".into(), agent_version: 1, metadata: json!({"k": "v"}) },
    }
}

async fn new_session(store: &dyn Store, tenant: &TenantId) -> SessionRecord {
    new_session_with(store, tenant, SessionId::new(), json!({"k": "v"})).await.expect("create session")
}

async fn new_session_with(
    store: &dyn Store,
    tenant: &TenantId,
    id: SessionId,
    metadata: serde_json::Value,
) -> crate::Result<SessionRecord> {
    let first_event = NewEvent {
        run_id: None,
        actor: Actor::principal("alice"),
        body: EventBody::SessionCreated { agent: "helper".into(), agent_version: 1, metadata: metadata.clone() },
    };
    let new =
        NewSession { tenant_id: tenant.clone(), id, agent: "helper".into(), agent_version: 1, metadata, first_event };
    store.create_session(new).await.map(|(s, _)| s)
}

fn on(run: RunId, body: EventBody) -> NewEvent {
    NewEvent { run_id: Some(run), actor: Actor::worker("w"), body }
}

fn run_created(run: RunId, text: &str) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::principal("alice"),
        body: EventBody::RunCreated { input: vec![Message::User { content: text.into() }] },
    }
}

fn call(id: &str, name: &str) -> ToolCall {
    ToolCall { id: id.into(), name: name.into(), arguments: "{}".into() }
}

fn responded(run: RunId, calls: Vec<ToolCall>, content: Option<&str>) -> NewEvent {
    on(
        run,
        EventBody::ModelResponded {
            step: 1,
            model: "scripted".into(),
            content: content.map(Into::into),
            tool_calls: calls,
            usage: Usage { input_tokens: 3, output_tokens: 2 },
            finish_reason: "stop".into(),
        },
    )
}

fn tool_started(run: RunId, id: &str, name: &str) -> NewEvent {
    on(run, EventBody::ToolCallStarted { call_id: id.into(), name: name.into(), idempotency_key: format!("k-{id}") })
}

fn tool_completed(run: RunId, id: &str, name: &str, output: &str) -> NewEvent {
    on(
        run,
        EventBody::ToolCallCompleted { call_id: id.into(), name: name.into(), output: output.into(), is_error: false },
    )
}

fn requires_action(run: RunId, calls: Vec<ToolCall>) -> NewEvent {
    on(run, EventBody::RunRequiresAction { tool_calls: calls })
}

fn cancel_requested(run: RunId, reason: &str) -> NewEvent {
    on(run, EventBody::RunCancelRequested { reason: reason.into() })
}

fn run_completed(run: RunId, output: &str) -> NewEvent {
    on(run, EventBody::RunCompleted { output: Some(output.into()) })
}

fn append_req(
    tenant: &TenantId,
    session: SessionId,
    expected_head: u64,
    events: Vec<NewEvent>,
    fence: Option<Fence>,
) -> AppendRequest {
    AppendRequest { tenant_id: tenant.clone(), session_id: session, expected_head, events, fence }
}

async fn head(store: &dyn Store, tenant: &TenantId, session: SessionId) -> u64 {
    store.get_session(tenant, &session).await.expect("get session").head_seq
}

/// Appends at the current head, unfenced; panics on failure.
async fn push(store: &dyn Store, tenant: &TenantId, session: SessionId, events: Vec<NewEvent>) -> Vec<Event> {
    let h = head(store, tenant, session).await;
    store.append(append_req(tenant, session, h, events, None)).await.expect("append")
}

/// Appends at the current head; returns the store's answer.
async fn try_push(
    store: &dyn Store,
    tenant: &TenantId,
    session: SessionId,
    events: Vec<NewEvent>,
    fence: Option<Fence>,
) -> crate::Result<Vec<Event>> {
    let h = head(store, tenant, session).await;
    store.append(append_req(tenant, session, h, events, fence)).await
}

fn fence(run: RunId, token: u64) -> Option<Fence> {
    Some(Fence { run_id: run, token, extend_lease: LONG })
}

async fn all_events(store: &dyn Store, tenant: &TenantId, session: SessionId) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.seq);
        let page = store.read_events(tenant, &session, after, 7).await.expect("read events");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Reads the whole log and checks it: sequences 1..=head with no gap, every hash chains,
/// the head names the last event, and time never runs backwards.
async fn verified_log(store: &dyn Store, tenant: &TenantId, session: SessionId) -> Vec<Event> {
    let record = store.get_session(tenant, &session).await.expect("get session");
    let events = all_events(store, tenant, session).await;
    let mut verifier = ChainVerifier::default();
    for e in &events {
        if let Err(broken) = verifier.push(e) {
            panic!("chain of {session} broken at {}: {}", broken.seq, broken.reason);
        }
        assert_eq!(&e.tenant_id, tenant);
        assert_eq!(e.session_id, session);
    }
    assert_eq!(verifier.verified, record.head_seq, "the head must be the last event");
    assert_eq!(hex_of(verifier.head_hash()), record.head_hash, "the head hash must be the last event's");
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at), "event times must not decrease");
    assert!(matches!(events.first().map(|e| &e.body), Some(EventBody::SessionCreated { .. })));
    events
}

fn hex_of(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything a refused write could have touched in a session.
#[derive(Debug, PartialEq)]
struct Snapshot {
    session: SessionRecord,
    events: Vec<Event>,
    runs: Vec<RunRecord>,
}

async fn snapshot(store: &dyn Store, tenant: &TenantId, session: SessionId) -> Snapshot {
    Snapshot {
        session: store.get_session(tenant, &session).await.expect("get session"),
        events: all_events(store, tenant, session).await,
        runs: store.list_runs(tenant, &session, &Page { after: None, limit: 1000 }).await.expect("list runs"),
    }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(r: crate::Result<T>, what: &str) {
    match r {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: crate::Result<T>, run: RunId, what: &str) {
    match r {
        Err(Error::InvalidTransition { run: r, .. }) if r == run => {}
        other => panic!("{what}: expected InvalidTransition for {run}, got {other:?}"),
    }
}

#[track_caller]
fn assert_fenced<T: std::fmt::Debug>(r: crate::Result<T>, run: RunId, token: u64, what: &str) {
    match r {
        Err(Error::Fenced { run: r, token: t }) if r == run && t == token => {}
        other => panic!("{what}: expected Fenced({run}, {token}), got {other:?}"),
    }
}

fn spec(name: &str, instructions: &str) -> AgentSpec {
    let yaml = format!(
        "name: {name}\nmodel: {{provider: scripted, name: echo}}\ninstructions: {instructions:?}\ntools:\n  - {{name: clock, type: builtin}}\n"
    );
    AgentSpec::parse(&yaml, SpecFormat::Yaml).expect("valid spec")
}

fn label(e: &Event) -> Option<&str> {
    match &e.body {
        EventBody::RunCreated { input } => match input.first() {
            Some(Message::User { content }) => Some(content),
            _ => None,
        },
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Cases.

/// Sessions: create, get, list; the first event is sequence 1; a taken id is refused.
pub async fn sessions_are_created_read_and_listed(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let id = SessionId::new();
    let first = session_created();
    let (record, event) = store
        .create_session(NewSession {
            tenant_id: t.clone(),
            id,
            agent: "helper".into(),
            agent_version: 1,
            metadata: json!({"k": "v"}),
            first_event: first.clone(),
        })
        .await
        .expect("create session");
    assert_eq!(record.id, id);
    assert_eq!(record.tenant_id, t);
    assert_eq!((record.agent.as_str(), record.agent_version), ("helper", 1));
    assert_eq!(record.metadata, json!({"k": "v"}));
    assert_eq!(record.head_seq, 1);
    assert_eq!(record.head_hash, event.hash);
    assert_eq!((event.seq, event.run_id, &event.actor, &event.body), (1, None, &first.actor, &first.body));
    assert_eq!(store.get_session(&t, &id).await.expect("get session"), record);
    assert_eq!(verified_log(store, &t, id).await, vec![event]);

    let taken = new_session_with(store, &t, id, json!({"other": true})).await;
    assert!(matches!(taken, Err(Error::Conflict { expected: 0, .. })), "a taken id is a conflict: {taken:?}");
    assert_eq!(store.get_session(&t, &id).await.expect("get session"), record, "the first session is untouched");

    let listed = store.list_sessions(&t, &Page { after: None, limit: 10 }).await.expect("list sessions");
    assert_eq!(listed, vec![record]);
    assert_not_found(store.get_session(&t, &SessionId::new()).await, "unknown session");
}

/// Many writers append at the same expected head: exactly one wins each round, the losers
/// get `Conflict` naming the new head, and nothing of theirs is written.
pub async fn concurrent_appends_at_one_head_have_one_winner(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let t = tenant_a();
    let s = new_session(&*fx.store, &t).await.id;
    for round in 0..12u32 {
        let h = head(&*fx.store, &t, s).await;
        let mut tasks = JoinSet::new();
        for i in 0..8u32 {
            let store = fx.store.clone();
            let t = t.clone();
            tasks.spawn(async move {
                let run = RunId::new();
                let events = vec![run_created(run, &format!("{round}/{i}")), responded(run, vec![], Some("hi"))];
                (run, store.append(append_req(&t, s, h, events, None)).await)
            });
        }
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (run, result) = joined.expect("task");
            match result {
                Ok(events) => {
                    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![h + 1, h + 2]);
                    winners.push(run);
                }
                Err(Error::Conflict { expected, actual }) => {
                    assert_eq!((expected, actual), (h, h + 2), "a loser sees the winner's head");
                    losers.push(run);
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one append wins");
        for run in losers {
            assert_not_found(fx.store.get_run(&t, &run).await, "a losing append's run");
        }
        let winner = fx.store.get_run(&t, &winners[0]).await.expect("winner's run");
        assert_eq!(winner.status(), RunStatus::Running);
    }
    let log = verified_log(&*fx.store, &t, s).await;
    assert_eq!(log.len(), 1 + 12 * 2);
}

/// Writers that re-read the head and retry on conflict all get through, and the log is
/// one chain with every write exactly once.
pub async fn retrying_writers_build_one_gapless_chain(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let t = tenant_a();
    let s = new_session(&*fx.store, &t).await.id;
    const WRITERS: u32 = 8;
    const EACH: u32 = 12;
    let mut tasks = JoinSet::new();
    for w in 0..WRITERS {
        let store = fx.store.clone();
        let t = t.clone();
        tasks.spawn(async move {
            let mut done = 0;
            while done < EACH {
                let h = store.get_session(&t, &s).await.expect("get session").head_seq;
                let events = vec![run_created(RunId::new(), &format!("w{w}-{done}"))];
                match store.append(append_req(&t, s, h, events, None)).await {
                    Ok(_) => done += 1,
                    Err(Error::Conflict { expected, actual }) => assert!(actual > expected),
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("writer task");
    }
    let log = verified_log(&*fx.store, &t, s).await;
    assert_eq!(log.len() as u32, 1 + WRITERS * EACH);
    let labels: Vec<&str> = log.iter().filter_map(label).collect();
    let unique: HashSet<&str> = labels.iter().copied().collect();
    assert_eq!(labels.len(), unique.len(), "no write is duplicated");
    assert_eq!(unique.len() as u32, WRITERS * EACH, "no write is lost");
}

/// What `append` returns is exactly what reads return, the hashes chain, and the run's
/// projection equals the fold of its events.
pub async fn appended_events_read_back_identically(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let run = RunId::new();
    let mut returned = all_events(store, &t, s).await;
    let batches = vec![
        vec![run_created(run, "what time is it? ünïcødé \u{1F600} \"quoted\"")],
        vec![responded(run, vec![call("c1", "clock"), call("c2", "ask")], Some("let me check"))],
        vec![tool_started(run, "c1", "clock")],
        vec![
            on(
                run,
                EventBody::ToolCallCompleted {
                    call_id: "c1".into(),
                    name: "clock".into(),
                    output: "boom".into(),
                    is_error: true,
                },
            ),
            requires_action(run, vec![call("c2", "ask")]),
        ],
        vec![NewEvent {
            run_id: Some(run),
            actor: Actor::principal("alice"),
            body: EventBody::ToolCallCompleted {
                call_id: "c2".into(),
                name: "ask".into(),
                output: "yes".into(),
                is_error: false,
            },
        }],
        vec![cancel_requested(run, "user asked"), responded(run, vec![], Some("done"))],
        vec![on(run, EventBody::RunFailed { error: ErrorInfo::new("x", "gave up") })],
    ];
    for batch in batches {
        let sent: Vec<(Option<RunId>, Actor, EventBody)> =
            batch.iter().map(|e| (e.run_id, e.actor.clone(), e.body.clone())).collect();
        let got = push(store, &t, s, batch).await;
        assert_eq!(got.len(), sent.len());
        for (e, (run_id, actor, body)) in got.iter().zip(&sent) {
            assert_eq!((&e.run_id, &e.actor, &e.body), (run_id, actor, body), "the store keeps what was sent");
        }
        returned.extend(got);
    }
    let read = verified_log(store, &t, s).await;
    assert_eq!(read, returned, "reads return exactly what append returned");

    let mut state: Option<RunState> = None;
    for e in read.iter().filter(|e| e.run_id == Some(run)) {
        match &mut state {
            None => state = Some(RunState::created(e.seq, e.at)),
            Some(st) => st.apply(e.at, &e.body).expect("the log folds"),
        }
    }
    let record = store.get_run(&t, &run).await.expect("get run");
    assert_eq!(Some(&record.state), state.as_ref(), "the projection is the fold of the log");
    assert_eq!(record.status(), RunStatus::Failed);
    assert_eq!(record.session_id, s);
    assert_eq!(record.tenant_id, t);
}

/// Appends that cannot apply are refused whole: nothing of the batch is written.
pub async fn malformed_appends_write_nothing(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let other = new_session(store, &t).await.id;
    let run = RunId::new();
    let foreign_run = RunId::new();
    push(store, &t, s, vec![run_created(run, "hi")]).await;
    push(store, &t, other, vec![run_created(foreign_run, "hello")]).await;
    let before = snapshot(store, &t, s).await;
    let other_before = snapshot(store, &t, other).await;

    assert_invalid(try_push(store, &t, s, vec![run_created(run, "again")], None).await, run, "a reused run id");
    let unknown = RunId::new();
    assert_invalid(
        try_push(store, &t, s, vec![responded(unknown, vec![], None)], None).await,
        unknown,
        "an event for an unknown run",
    );
    assert_invalid(
        try_push(store, &t, s, vec![responded(foreign_run, vec![], None)], None).await,
        foreign_run,
        "an event for another session's run",
    );
    assert!(
        try_push(store, &t, s, vec![session_created()], None).await.is_err(),
        "session_created is only a session's first event"
    );
    let no_run = NewEvent { run_id: None, ..responded(run, vec![], None) };
    assert!(try_push(store, &t, s, vec![no_run], None).await.is_err(), "a run event must name its run");
    let fresh = RunId::new();
    let batch = vec![
        run_created(fresh, "new"),
        responded(fresh, vec![call("c1", "clock")], None),
        responded(run, vec![], Some("fine on its own")),
        tool_completed(fresh, "nope", "clock", "x"),
    ];
    assert_invalid(try_push(store, &t, s, batch, None).await, fresh, "a batch with one bad event");
    assert_not_found(store.get_run(&t, &fresh).await, "the refused batch's new run");

    let h = head(store, &t, s).await;
    for expected in [0, h - 1, h + 1, u64::MAX] {
        match store.append(append_req(&t, s, expected, vec![cancel_requested(run, "x")], None)).await {
            Err(Error::Conflict { expected: e, actual }) => assert_eq!((e, actual), (expected, h)),
            other => panic!("a stale head {expected} must conflict, got {other:?}"),
        }
    }
    assert_not_found(
        store.append(append_req(&t, SessionId::new(), 1, vec![cancel_requested(run, "x")], None)).await,
        "an append to an unknown session",
    );
    assert_eq!(snapshot(store, &t, s).await, before, "refused appends wrote nothing");
    assert_eq!(snapshot(store, &t, other).await, other_before, "nor in the other session");
    verified_log(store, &t, s).await;
}

/// A finished run takes no more events, whatever way it finished.
pub async fn terminal_runs_refuse_events(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let endings = [
        EventBody::RunCompleted { output: Some("ok".into()) },
        EventBody::RunFailed { error: ErrorInfo::new("boom", "it broke") },
        EventBody::RunCancelled { reason: "stop".into() },
    ];
    for ending in endings {
        let run = RunId::new();
        push(store, &t, s, vec![run_created(run, "go"), responded(run, vec![], Some("x")), on(run, ending)]).await;
        let record = store.get_run(&t, &run).await.expect("get run");
        assert!(record.status().is_terminal());
        assert!(record.state.finished_at.is_some());
        let before = snapshot(store, &t, s).await;
        for late in [
            responded(run, vec![], Some("more")),
            cancel_requested(run, "late"),
            run_completed(run, "again"),
            on(run, EventBody::RunFailed { error: ErrorInfo::new("late", "late") }),
        ] {
            assert_invalid(try_push(store, &t, s, vec![late], None).await, run, "an event after the end");
        }
        assert_eq!(snapshot(store, &t, s).await, before, "nothing was written after the end");
    }
    assert!(store.active_runs(&t, &s).await.expect("active runs").is_empty());
}

/// Tool results must answer a pending call of the run, once.
pub async fn results_for_unknown_calls_are_refused(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let run = RunId::new();
    push(store, &t, s, vec![run_created(run, "go"), responded(run, vec![call("c1", "clock")], None)]).await;
    let before = snapshot(store, &t, s).await;
    assert_invalid(
        try_push(store, &t, s, vec![tool_completed(run, "nope", "clock", "x")], None).await,
        run,
        "a result for a call never made",
    );
    assert_invalid(
        try_push(store, &t, s, vec![tool_started(run, "nope", "clock")], None).await,
        run,
        "a start for a call never made",
    );
    assert_invalid(
        try_push(store, &t, s, vec![responded(run, vec![], Some("skip the tool"))], None).await,
        run,
        "a model response while calls are pending",
    );
    assert_eq!(snapshot(store, &t, s).await, before);
    push(store, &t, s, vec![tool_completed(run, "c1", "clock", "noon")]).await;
    let before = snapshot(store, &t, s).await;
    assert_invalid(
        try_push(store, &t, s, vec![tool_completed(run, "c1", "clock", "noon again")], None).await,
        run,
        "a second result for the same call",
    );
    assert_eq!(snapshot(store, &t, s).await, before);
}

/// A worker whose lease expired and was taken over can no longer write, renew or release,
/// and its refused writes leave nothing behind.
pub async fn stale_workers_are_fenced(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let run = RunId::new();
    push(store, &t, s, vec![run_created(run, "go")]).await;

    let short = Duration::from_millis(150);
    let a = store.claim_runs("worker-a", short, 10).await.expect("claim");
    assert_eq!(a.len(), 1);
    let (ta, claimed) = (a[0].token, &a[0].run);
    assert_eq!(claimed.id, run);
    assert_eq!(a[0].session.id, s);
    assert_eq!(claimed.fencing_token, ta);
    assert_eq!(claimed.lease.as_ref().map(|l| l.owner.as_str()), Some("worker-a"));
    assert!(store.claim_runs("worker-b", LONG, 10).await.expect("claim").is_empty(), "a live lease is exclusive");

    let short_fence = Some(Fence { run_id: run, token: ta, extend_lease: short });
    try_push(store, &t, s, vec![responded(run, vec![], Some("step"))], short_fence.clone())
        .await
        .expect("the lease holder writes");
    store.renew_lease(&run, ta, short).await.expect("the lease holder renews");
    tokio::time::sleep(short * 4).await;

    let b = store.claim_runs("worker-b", LONG, 10).await.expect("claim");
    assert_eq!(b.len(), 1, "an expired lease is claimable");
    let tb = b[0].token;
    assert!(tb > ta, "each claim increments the fencing token");
    let before = snapshot(store, &t, s).await;
    assert_fenced(
        try_push(store, &t, s, vec![run_completed(run, "stale")], short_fence).await,
        run,
        ta,
        "the stale worker's append",
    );
    assert_fenced(store.renew_lease(&run, ta, LONG).await, run, ta, "the stale worker's renewal");
    assert_fenced(store.release_lease(&run, ta).await, run, ta, "the stale worker's release");
    assert_eq!(snapshot(store, &t, s).await, before, "the stale worker wrote nothing");

    let lease_before = store.get_run(&t, &run).await.expect("get run").lease.expect("leased");
    assert_eq!(lease_before.owner, "worker-b");
    try_push(store, &t, s, vec![cancel_requested(run, "noted")], fence(run, tb)).await.expect("b writes");
    let lease_after = store.get_run(&t, &run).await.expect("get run").lease.expect("still leased");
    assert!(lease_after.expires_at >= lease_before.expires_at, "a fenced append extends the lease");

    // A token for another session's run proves nothing here.
    let s2 = new_session(store, &t).await.id;
    assert_fenced(try_push(store, &t, s2, vec![], fence(run, tb)).await, run, tb, "a fence from another session");

    store.release_lease(&run, tb).await.expect("b releases");
    assert_eq!(store.get_run(&t, &run).await.expect("get run").lease, None);
    assert_fenced(store.renew_lease(&run, tb, LONG).await, run, tb, "renewing a released lease");
    let c = store.claim_runs("worker-c", LONG, 10).await.expect("claim");
    assert_eq!(c.len(), 1, "a released run is claimable at once");
    assert!(c[0].token > tb);
    assert_fenced(
        try_push(store, &t, s, vec![run_completed(run, "b again")], fence(run, tb)).await,
        run,
        tb,
        "a released lease's token",
    );
    assert_not_found(store.renew_lease(&RunId::new(), 1, LONG).await, "renewing an unknown run");
    verified_log(store, &t, s).await;
}

/// Concurrent claimers never get the same run while its lease is live.
pub async fn claims_are_exclusive(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let t = tenant_a();
    let mut runs = HashSet::new();
    for _ in 0..30 {
        let s = new_session(&*fx.store, &t).await.id;
        let run = RunId::new();
        push(&*fx.store, &t, s, vec![run_created(run, "go")]).await;
        runs.insert(run);
    }
    let mut tasks = JoinSet::new();
    for w in 0..10 {
        let store = fx.store.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            loop {
                let claims = store.claim_runs(&format!("worker-{w}"), LONG, 3).await.expect("claim");
                if claims.is_empty() {
                    return got;
                }
                for c in claims {
                    assert_eq!(c.run.lease.as_ref().map(|l| l.owner.clone()), Some(format!("worker-{w}")));
                    assert_eq!(c.run.fencing_token, c.token);
                    got.push(c.run.id);
                }
            }
        });
    }
    let mut claimed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        claimed.extend(joined.expect("claimer"));
    }
    let unique: HashSet<RunId> = claimed.iter().copied().collect();
    assert_eq!(unique.len(), claimed.len(), "no run was claimed twice");
    assert_eq!(unique, runs, "every run was claimed");
}

/// Runs of one session execute in arrival order: a later run is not claimable while an
/// earlier one is unfinished, even when that one waits on the client.
pub async fn later_runs_wait_for_the_oldest_unfinished_run(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s1 = new_session(store, &t).await.id;
    let s2 = new_session(store, &t).await.id;
    let (r1, r2, r3) = (RunId::new(), RunId::new(), RunId::new());
    push(store, &t, s1, vec![run_created(r1, "first")]).await;
    push(store, &t, s1, vec![run_created(r2, "second")]).await;
    push(store, &t, s2, vec![run_created(r3, "other session")]).await;

    let ids = |claims: &[crate::Claim]| claims.iter().map(|c| c.run.id).collect::<HashSet<_>>();
    let first = store.claim_runs("w", LONG, 10).await.expect("claim");
    assert_eq!(ids(&first), HashSet::from([r1, r3]), "one run per session, the oldest");
    let token = |claims: &[crate::Claim], run: RunId| {
        claims.iter().find(|c| c.run.id == run).map(|c| c.token).expect("claimed")
    };
    let t1 = token(&first, r1);
    let t3 = token(&first, r3);
    try_push(store, &t, s2, vec![responded(r3, vec![], Some("x")), run_completed(r3, "x")], fence(r3, t3))
        .await
        .expect("finish r3");

    try_push(store, &t, s1, vec![responded(r1, vec![call("c1", "ask")], None)], fence(r1, t1)).await.expect("r1");
    try_push(store, &t, s1, vec![requires_action(r1, vec![call("c1", "ask")])], fence(r1, t1)).await.expect("r1");
    assert!(
        store.claim_runs("w", LONG, 10).await.expect("claim").is_empty(),
        "a run waiting on the client blocks the later runs of its session"
    );

    let out = NewEvent { actor: Actor::principal("alice"), ..tool_completed(r1, "c1", "ask", "yes") };
    push(store, &t, s1, vec![out]).await;
    let resumed = store.claim_runs("w", LONG, 10).await.expect("claim");
    assert_eq!(ids(&resumed), HashSet::from([r1]), "the resumed run comes first, r2 still waits");
    let t1b = token(&resumed, r1);
    assert!(t1b > t1);
    try_push(store, &t, s1, vec![responded(r1, vec![], Some("done")), run_completed(r1, "done")], fence(r1, t1b))
        .await
        .expect("finish r1");
    let next = store.claim_runs("w", LONG, 10).await.expect("claim");
    assert_eq!(ids(&next), HashSet::from([r2]), "the next run of the session once the first finished");
}

/// A run waiting on the client holds no lease and is not claimable; submitting the outputs
/// makes it queued and claimable with a new token.
pub async fn runs_waiting_on_the_client_hold_no_lease_and_resume(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let run = RunId::new();
    push(store, &t, s, vec![run_created(run, "go")]).await;
    let claim = store.claim_runs("w", LONG, 1).await.expect("claim");
    let tok = claim[0].token;
    try_push(
        store,
        &t,
        s,
        vec![
            responded(run, vec![call("c1", "ask"), call("c2", "ask")], None),
            requires_action(run, vec![call("c1", "ask"), call("c2", "ask")]),
        ],
        fence(run, tok),
    )
    .await
    .expect("wait for the client");
    let waiting = store.get_run(&t, &run).await.expect("get run");
    assert_eq!(waiting.status(), RunStatus::RequiresAction);
    assert_eq!(waiting.lease, None, "a waiting run holds no worker");
    assert_eq!(store.active_runs(&t, &s).await.expect("active").iter().map(|r| r.id).collect::<Vec<_>>(), vec![run]);
    assert!(store.claim_runs("w2", LONG, 10).await.expect("claim").is_empty());
    assert_fenced(store.renew_lease(&run, tok, LONG).await, run, tok, "renewing after handing over to the client");

    let mut commits = store.subscribe();
    push(store, &t, s, vec![tool_completed(run, "c1", "ask", "one")]).await;
    assert_eq!(store.get_run(&t, &run).await.expect("get run").status(), RunStatus::RequiresAction, "c2 is missing");
    assert!(store.claim_runs("w2", LONG, 10).await.expect("claim").is_empty());
    push(store, &t, s, vec![tool_completed(run, "c2", "ask", "two")]).await;
    assert_eq!(store.get_run(&t, &run).await.expect("get run").status(), RunStatus::Queued);
    let mut woke = false;
    while let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(5), commits.recv()).await {
        if c.events.last().map(|e| e.seq) == Some(head(store, &t, s).await) {
            assert_eq!(c.runs, vec![(run, RunStatus::Queued)]);
            woke = c.wakes_workers();
            break;
        }
    }
    assert!(woke, "the commit that resumed the run wakes workers");
    let again = store.claim_runs("w2", LONG, 10).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert!(again[0].token > tok);
}

/// Another tenant sees nothing and changes nothing: every read and write is `NotFound`.
pub async fn tenants_are_isolated(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let (a, b) = (tenant_a(), tenant_b());
    let agent = spec("helper", "be brief");
    store.put_agent(&a, &agent).await.expect("put agent");
    let s = new_session(store, &a).await.id;
    let run = RunId::new();
    push(store, &a, s, vec![run_created(run, "secret"), responded(run, vec![call("c1", "ask")], None)]).await;
    let claim = store.claim_runs("w", LONG, 1).await.expect("claim");
    let tok = claim[0].token;
    let before = snapshot(store, &a, s).await;
    let page = Page { after: None, limit: 100 };

    assert_not_found(store.get_session(&b, &s).await, "get_session");
    assert_not_found(store.read_events(&b, &s, 0, 100).await, "read_events");
    assert_not_found(store.read_message_window(&b, &s, u64::MAX, 100).await, "read_message_window");
    assert_not_found(store.list_runs(&b, &s, &page).await, "list_runs");
    assert_not_found(store.active_runs(&b, &s).await, "active_runs");
    assert_not_found(store.get_run(&b, &run).await, "get_run");
    assert_not_found(
        store.append(append_req(&b, s, before.session.head_seq, vec![cancel_requested(run, "x")], None)).await,
        "append",
    );
    assert_not_found(
        store.append(append_req(&b, s, before.session.head_seq, vec![], fence(run, tok))).await,
        "fenced append",
    );
    assert_not_found(store.delete_session(&b, &s).await, "delete_session");
    assert!(store.list_sessions(&b, &page).await.expect("list").is_empty(), "list_sessions");
    assert_not_found(store.get_agent(&b, "helper", None).await, "get_agent");
    assert_not_found(store.get_agent(&b, "helper", Some(1)).await, "get_agent version");
    assert_not_found(store.list_agent_versions(&b, "helper").await, "list_agent_versions");
    assert!(store.list_agents(&b, &page).await.expect("list").is_empty(), "list_agents");

    // B's own session cannot reach A's run, nor take A's session id.
    let sb = new_session(store, &b).await.id;
    assert_invalid(
        try_push(store, &b, sb, vec![tool_completed(run, "c1", "ask", "forged")], None).await,
        run,
        "B's event on A's run",
    );
    assert_fenced(try_push(store, &b, sb, vec![], fence(run, tok)).await, run, tok, "B carrying A's token");
    assert!(new_session_with(store, &b, s, json!({})).await.is_err(), "B cannot take A's session id");
    let (b_agent, created) = store.put_agent(&b, &agent).await.expect("B's agent");
    assert!(created);
    assert_eq!((b_agent.version, &b_agent.tenant_id), (1, &b));

    assert_eq!(snapshot(store, &a, s).await, before, "A's session is untouched");
    assert_eq!(store.list_sessions(&a, &page).await.expect("list").len(), 1);
    assert_eq!(store.list_agent_versions(&a, "helper").await.expect("versions").len(), 1);
    let listed_b = store.list_sessions(&b, &page).await.expect("list");
    assert_eq!(listed_b.iter().map(|s| s.id).collect::<Vec<_>>(), vec![sb]);
    assert!(listed_b.iter().all(|s| s.tenant_id == b));
}

/// The context window: the newest `limit` message events up to `up_to`, ascending.
pub async fn message_window_is_the_newest_messages_ascending(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    for i in 0..4 {
        let run = RunId::new();
        push(store, &t, s, vec![run_created(run, &format!("q{i}"))]).await;
        push(store, &t, s, vec![responded(run, vec![call("c1", "clock")], None), tool_started(run, "c1", "clock")])
            .await;
        push(store, &t, s, vec![tool_completed(run, "c1", "clock", "noon")]).await;
        push(
            store,
            &t,
            s,
            vec![cancel_requested(run, "meh"), responded(run, vec![], Some("a")), run_completed(run, "a")],
        )
        .await;
    }
    let log = verified_log(store, &t, s).await;
    let messages: Vec<&Event> = log.iter().filter(|e| e.body.is_message()).collect();
    let h = log.len() as u64;
    for up_to in [0, 1, 2, 5, 9, h / 2, h - 1, h, h + 10] {
        for limit in [0u32, 1, 2, 3, 7, 100] {
            let mut want: Vec<Event> = messages.iter().filter(|e| e.seq <= up_to).map(|e| (*e).clone()).collect();
            let skip = want.len().saturating_sub(limit as usize);
            want.drain(..skip);
            let got = store.read_message_window(&t, &s, up_to, limit).await.expect("window");
            assert_eq!(got, want, "up_to {up_to}, limit {limit}");
        }
    }
    assert_not_found(store.read_message_window(&t, &SessionId::new(), 10, 10).await, "unknown session");
}

/// Agent versions: the same spec is the same version, a change is the next one, and old
/// versions never change.
pub async fn agent_versions_are_immutable_and_deduplicated(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let v1_spec = spec("helper", "be brief");
    let (v1, created) = store.put_agent(&t, &v1_spec).await.expect("put");
    assert!(created);
    assert_eq!((v1.version, v1.name.as_str(), &v1.spec, &v1.tenant_id), (1, "helper", &v1_spec, &t));
    assert_eq!(v1.spec_hash.len(), 64);
    // Same spec, written differently: still version 1.
    let reformatted = AgentSpec::parse(
        "{\"model\": {\"name\": \"echo\", \"provider\": \"scripted\"}, \"name\": \"helper\", \
         \"tools\": [{\"type\": \"builtin\", \"name\": \"clock\"}], \"instructions\": \"be brief\"}",
        SpecFormat::Json,
    )
    .expect("valid spec");
    let (same, created) = store.put_agent(&t, &reformatted).await.expect("put");
    assert!(!created, "an identical spec creates nothing");
    assert_eq!(same, v1);
    let v2_spec = spec("helper", "be thorough");
    let (v2, created) = store.put_agent(&t, &v2_spec).await.expect("put");
    assert!(created);
    assert_eq!(v2.version, 2);
    assert_ne!(v2.spec_hash, v1.spec_hash);
    assert_ne!(v2.id, v1.id);
    let (v3, created) = store.put_agent(&t, &v1_spec).await.expect("put");
    assert!(created, "going back to an older spec is a new version");
    assert_eq!((v3.version, &v3.spec_hash), (3, &v1.spec_hash));

    assert_eq!(store.get_agent(&t, "helper", None).await.expect("latest"), v3);
    assert_eq!(store.get_agent(&t, "helper", Some(1)).await.expect("v1"), v1, "versions are immutable");
    assert_eq!(store.get_agent(&t, "helper", Some(2)).await.expect("v2"), v2);
    assert_not_found(store.get_agent(&t, "helper", Some(4)).await, "a version not yet made");
    assert_not_found(store.get_agent(&t, "nobody", None).await, "an unknown agent");
    assert_eq!(store.list_agent_versions(&t, "helper").await.expect("versions"), vec![v1, v2, v3.clone()]);

    let mut latest = BTreeMap::new();
    latest.insert("helper".to_owned(), v3);
    for name in ["zeta", "alpha", "mid"] {
        let (a, _) = store.put_agent(&t, &spec(name, "x")).await.expect("put");
        latest.insert(name.to_owned(), a);
    }
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_agents(&t, &Page { after: after.clone(), limit: 3 }).await.expect("list agents");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        paged.extend(page);
    }
    assert_eq!(paged, latest.into_values().collect::<Vec<_>>(), "latest of each agent, by name");
}

/// Sessions page newest first and runs oldest first, each item exactly once.
pub async fn sessions_and_runs_paginate(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(new_session(store, &t).await.id);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_sessions(&t, &Page { after: after.clone(), limit: 3 }).await.expect("list sessions");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.id.to_string());
        seen.extend(page.into_iter().map(|s| s.id));
    }
    created.reverse();
    assert_eq!(seen, created, "sessions page newest first, each once");

    let s = created[0];
    let mut runs = Vec::new();
    for i in 0..5 {
        let run = RunId::new();
        push(store, &t, s, vec![run_created(run, &format!("r{i}"))]).await;
        runs.push(run);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_runs(&t, &s, &Page { after: after.clone(), limit: 2 }).await.expect("list runs");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id.to_string());
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen, runs, "runs page oldest first, each once");
    push(store, &t, s, vec![run_completed(runs[1], "early")]).await;
    let active: Vec<RunId> = store.active_runs(&t, &s).await.expect("active").into_iter().map(|r| r.id).collect();
    assert_eq!(active, vec![runs[0], runs[2], runs[3], runs[4]], "active runs, oldest first");
    assert_eq!(store.list_runs(&t, &s, &Page::default()).await.expect("default page").len(), 5);
}

/// Configured limits refuse the write with `LimitExceeded`, naming the limit, and write nothing.
pub async fn limits_refuse_and_write_nothing(make: &impl MakeStore) {
    let fx = make.make(Config { max_events_per_session: 6, max_event_bytes: 2048 }).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let run = RunId::new();
    push(store, &t, s, vec![run_created(run, "go")]).await;
    let before = snapshot(store, &t, s).await;
    let five: Vec<NewEvent> = (0..5).map(|i| cancel_requested(run, &format!("{i}"))).collect();
    match try_push(store, &t, s, five, None).await {
        Err(Error::LimitExceeded(m)) => assert!(m.contains("max_events_per_session"), "{m}"),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    assert_eq!(snapshot(store, &t, s).await, before, "a refused batch writes nothing");
    push(store, &t, s, (0..4).map(|i| cancel_requested(run, &format!("{i}"))).collect()).await;
    assert_eq!(head(store, &t, s).await, 6, "up to the limit is fine");
    let full = snapshot(store, &t, s).await;
    assert!(matches!(
        try_push(store, &t, s, vec![cancel_requested(run, "7")], None).await,
        Err(Error::LimitExceeded(_))
    ));
    assert_eq!(snapshot(store, &t, s).await, full);

    let s2 = new_session(store, &t).await.id;
    let r2 = RunId::new();
    push(store, &t, s2, vec![run_created(r2, &"x".repeat(1000))]).await;
    let before = snapshot(store, &t, s2).await;
    match try_push(store, &t, s2, vec![responded(r2, vec![], Some(&"y".repeat(4096)))], None).await {
        Err(Error::LimitExceeded(m)) => assert!(m.contains("max_event_bytes"), "{m}"),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    assert_eq!(snapshot(store, &t, s2).await, before);
    let big = SessionId::new();
    match new_session_with(store, &t, big, json!({"blob": "z".repeat(4096)})).await {
        Err(Error::LimitExceeded(m)) => assert!(m.contains("max_event_bytes"), "{m}"),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    assert_not_found(store.get_session(&t, &big).await, "a refused session");
}

/// Deleting a session removes its events and runs, and is refused while a run is leased.
pub async fn deleting_a_session_removes_everything_and_waits_for_leases(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let keep = new_session(store, &t).await.id;
    let keep_run = RunId::new();
    push(store, &t, keep, vec![run_created(keep_run, "stay")]).await;
    let kept_claim = store.claim_runs("w", LONG, 10).await.expect("claim");
    assert_eq!(kept_claim.len(), 1);
    let kept = snapshot(store, &t, keep).await;

    let s = new_session(store, &t).await.id;
    let run = RunId::new();
    push(store, &t, s, vec![run_created(run, "go"), responded(run, vec![], Some("x"))]).await;
    let claim = store.claim_runs("w", LONG, 10).await.expect("claim");
    assert_eq!(claim.len(), 1);
    let before = snapshot(store, &t, s).await;
    assert!(matches!(store.delete_session(&t, &s).await, Err(Error::Busy(_))), "a claimed run blocks deletion");
    assert_eq!(snapshot(store, &t, s).await, before);
    store.release_lease(&run, claim[0].token).await.expect("release");
    store.delete_session(&t, &s).await.expect("delete");
    assert_not_found(store.get_session(&t, &s).await, "deleted session");
    assert_not_found(store.read_events(&t, &s, 0, 100).await, "deleted session's events");
    assert_not_found(store.get_run(&t, &run).await, "deleted session's run");
    assert_not_found(store.delete_session(&t, &s).await, "deleting twice");
    assert!(store.claim_runs("w2", LONG, 10).await.expect("claim").is_empty(), "deleted runs are not claimable");
    let listed = store.list_sessions(&t, &Page { after: None, limit: 100 }).await.expect("list");
    assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![keep]);

    // An expired lease does not block.
    let s3 = new_session(store, &t).await.id;
    let r3 = RunId::new();
    push(store, &t, s3, vec![run_created(r3, "go")]).await;
    assert_eq!(store.claim_runs("w", Duration::from_millis(100), 10).await.expect("claim").len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    store.delete_session(&t, &s3).await.expect("delete after the lease expired");
    assert_not_found(store.get_run(&t, &r3).await, "deleted run");

    assert_eq!(snapshot(store, &t, keep).await, kept, "other sessions are untouched");
    verified_log(store, &t, keep).await;
}

/// Every commit is published once, in order per session, with the runs whose status changed.
pub async fn commits_are_published_in_order(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let t = tenant_a();
    let mut rx = fx.store.subscribe();
    let sessions = [new_session(&*fx.store, &t).await.id, new_session(&*fx.store, &t).await.id];
    let mut tasks = JoinSet::new();
    for s in sessions {
        let store = fx.store.clone();
        let t = t.clone();
        tasks.spawn(async move {
            for _ in 0..6 {
                let run = RunId::new();
                push(&*store, &t, s, vec![run_created(run, "go")]).await;
                push(&*store, &t, s, vec![cancel_requested(run, "noted")]).await;
                push(&*store, &t, s, vec![responded(run, vec![call("c1", "ask")], None)]).await;
                push(&*store, &t, s, vec![requires_action(run, vec![call("c1", "ask")])]).await;
                push(&*store, &t, s, vec![tool_completed(run, "c1", "ask", "ok")]).await;
                push(&*store, &t, s, vec![run_completed(run, "done")]).await;
                // A refused write publishes nothing.
                let h = store.get_session(&t, &s).await.expect("get").head_seq;
                assert!(store.append(append_req(&t, s, h - 1, vec![cancel_requested(run, "x")], None)).await.is_err());
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("writer task");
    }
    let mut heads = HashMap::new();
    for s in sessions {
        heads.insert(s, head(&*fx.store, &t, s).await);
    }
    let mut published: HashMap<SessionId, Vec<Committed>> = HashMap::new();
    let done = |p: &HashMap<SessionId, Vec<Committed>>| {
        sessions.iter().all(|s| {
            p.get(s).and_then(|c| c.last()).and_then(|c| c.events.last()).map(|e| e.seq) == heads.get(s).copied()
        })
    };
    while !done(&published) {
        let c = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("commits arrive")
            .expect("no lag in this test");
        assert_eq!(c.tenant_id, t);
        published.entry(c.session_id).or_default().push(c);
    }
    for s in sessions {
        let commits = &published[&s];
        let events: Vec<Event> = commits.iter().flat_map(|c| c.events.iter().cloned()).collect();
        assert_eq!(events, all_events(&*fx.store, &t, s).await, "published once each, in order");
        for c in commits {
            let first = c.events.first().expect("a commit has events");
            let expected: Vec<(RunId, RunStatus)> = match (&first.body, first.run_id) {
                (EventBody::RunCreated { .. }, Some(r)) => vec![(r, RunStatus::Queued)],
                (EventBody::ModelResponded { .. }, Some(r)) => vec![(r, RunStatus::Running)],
                (EventBody::RunRequiresAction { .. }, Some(r)) => vec![(r, RunStatus::RequiresAction)],
                (EventBody::ToolCallCompleted { .. }, Some(r)) => vec![(r, RunStatus::Queued)],
                (EventBody::RunCompleted { .. }, Some(r)) => vec![(r, RunStatus::Completed)],
                _ => vec![],
            };
            assert_eq!(c.runs, expected, "status changes of the commit starting at {}", first.seq);
            let wakes = expected.iter().any(|(_, status)| status.is_claimable());
            assert_eq!(c.wakes_workers(), wakes);
        }
    }
}
