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
//! - a commit is published on `subscribe` before the write that made it returns;
//! - approval ids are unique across tenants (a reused one is `InvalidTransition`), an
//!   approval's `created_at` / `decided_at` are the `at` of its request / decision event, and
//!   `list_approvals` with a `session` filter naming a session the tenant lacks is empty.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stead_core::agent::{AgentSpec, SpecFormat};
use stead_core::event::{
    Actor, AgentRef, ApprovalDecision, ApprovalKind, CarriedCall, ChainVerifier, ErrorInfo, Event, EventBody, NewEvent,
};
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::message::{Message, ToolCall, Usage};
use stead_core::run::{RunState, RunStatus};
use stead_core::time::Timestamp;
use tokio::task::JoinSet;

use crate::{
    AppendRequest, ApprovalFilter, ApprovalRecord, Committed, Error, Fence, IdempotencyKey, NewSession, Page,
    RunRecord, SealedSecret, SessionRecord, Store, WrappedKey,
};

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
            approvals_follow_their_events,
            bad_approval_events_write_nothing,
            approvals_are_tenant_scoped_filtered_and_paged,
            due_approvals_are_pending_expired_and_soonest_first,
            runs_awaiting_approval_hold_no_lease_block_and_resume,
            deleting_a_session_removes_its_approvals,
            session_level_events_belong_to_no_run,
            runs_keep_the_agent_they_were_created_with,
            carried_approvals_move_to_the_run_that_takes_them_over,
            only_open_tool_call_approvals_of_completed_runs_move,
            only_finished_runs_are_deleted,
            added_items_are_in_the_message_window,
            sessions_are_created_with_their_first_run_atomically,
            idempotency_keys_return_what_the_first_write_created,
            idempotency_keys_expire_are_tenant_scoped_and_go_with_their_session,
            vault_rows_are_versioned_tenant_scoped_and_first_key_wins,
        );
    };
}

/// Generates one `#[tokio::test]` per conformance case, each with a store from `$make`.
///
/// With `skip_unless = $ready`, where `async fn ready() -> Result<(), String>`, each case first
/// awaits `$ready()` and, on `Err(why)`, prints `SKIPPED: why` and returns (for a backend that
/// needs a server the machine may lack; `$ready` itself decides whether that is a failure).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__conformance_cases!([$crate::__conformance_test_fns] $make);
    };
    ($make:expr, skip_unless = $ready:expr) => {
        $crate::__conformance_cases!([$crate::__conformance_test_fns_skipping] $make, $ready);
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

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns_skipping {
    ($make:expr, $ready:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if let Err(why) = $ready().await {
                    println!("SKIPPED: {why}");
                    return;
                }
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
    let new = NewSession {
        tenant_id: tenant.clone(),
        id,
        agent: "helper".into(),
        agent_version: 1,
        metadata,
        first_event,
        then: Vec::new(),
        idempotency: None,
    };
    store.create_session(new).await.map(|(s, _)| s)
}

fn on(run: RunId, body: EventBody) -> NewEvent {
    NewEvent { run_id: Some(run), actor: Actor::worker("w"), body }
}

fn run_created(run: RunId, text: &str) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::principal("alice"),
        body: EventBody::run_created(vec![Message::User { content: text.into() }]),
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
            chunks: Vec::new(),
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

fn approval_requested(
    run: RunId,
    id: ApprovalId,
    kind: ApprovalKind,
    call_id: &str,
    expires_at: Timestamp,
) -> NewEvent {
    on(
        run,
        EventBody::ApprovalRequested {
            approval_id: id,
            kind,
            call_id: call_id.into(),
            name: "pay".into(),
            arguments: format!("{{\"call\":\"{call_id}\"}}"),
            role: "approver".into(),
            expires_at,
            reason: format!("{call_id} needs a yes"),
        },
    )
}

/// A tool-call approval for `call_id` that expires in an hour.
fn ask(run: RunId, id: ApprovalId, call_id: &str) -> NewEvent {
    approval_requested(run, id, ApprovalKind::ToolCall, call_id, Timestamp::now().plus(Duration::from_secs(3600)))
}

fn decided(run: RunId, id: ApprovalId, call_id: &str, decision: ApprovalDecision) -> NewEvent {
    decided_with(run, id, call_id, decision, None, None, None)
}

fn decided_with(
    run: RunId,
    id: ApprovalId,
    call_id: &str,
    decision: ApprovalDecision,
    reason: Option<&str>,
    arguments: Option<&str>,
    output: Option<&str>,
) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::principal("bob"),
        body: EventBody::ApprovalDecided {
            approval_id: id,
            call_id: call_id.into(),
            decision,
            decided_by: "principal:bob".into(),
            reason: reason.map(Into::into),
            arguments: arguments.map(Into::into),
            output: output.map(Into::into),
        },
    }
}

/// Checks that each approval the store returns is exactly what the session's log says, and
/// that the session's listing holds them in this order; returns them.
async fn approvals_match_log(
    store: &dyn Store,
    tenant: &TenantId,
    session: SessionId,
    ids: &[ApprovalId],
) -> Vec<ApprovalRecord> {
    let log = verified_log(store, tenant, session).await;
    let mut records = Vec::new();
    for id in ids {
        let got = store.get_approval(tenant, id).await.expect("get approval");
        assert_eq!(got, approval_from_log(&log, *id), "approval {id} is what its events say");
        records.push(got);
    }
    assert_eq!(all_approvals(store, tenant, &by_session(session), 1000).await, records, "the session's approvals");
    records
}

fn awaiting(run: RunId, ids: Vec<ApprovalId>) -> NewEvent {
    on(run, EventBody::RunAwaitingApproval { approval_ids: ids })
}

fn by_session(session: SessionId) -> ApprovalFilter {
    ApprovalFilter { pending_only: false, session: Some(session) }
}

/// What the log says an approval is: its request event, and its decision event if any.
fn approval_from_log(log: &[Event], id: ApprovalId) -> ApprovalRecord {
    let (request, body) = log
        .iter()
        .find_map(|e| match &e.body {
            EventBody::ApprovalRequested { approval_id, .. } if *approval_id == id => Some((e, &e.body)),
            _ => None,
        })
        .expect("the approval's request is in the log");
    let EventBody::ApprovalRequested { kind, call_id, name, arguments, role, expires_at, reason, .. } = body else {
        unreachable!("matched above")
    };
    let mut record = ApprovalRecord {
        id,
        tenant_id: request.tenant_id.clone(),
        session_id: request.session_id,
        run_id: request.run_id.expect("an approval event names its run"),
        kind: *kind,
        call_id: call_id.clone(),
        tool_name: name.clone(),
        arguments: arguments.clone(),
        role: role.clone(),
        reason: reason.clone(),
        created_at: request.at,
        expires_at: *expires_at,
        decision: None,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        decided_arguments: None,
        output: None,
    };
    for e in log {
        if let EventBody::ApprovalDecided { approval_id, decision, decided_by, reason, arguments, output, .. } = &e.body
            && *approval_id == id
        {
            assert!(record.decision.is_none(), "the log decides {id} once");
            record.decision = Some(*decision);
            record.decided_by = Some(decided_by.clone());
            record.decided_at = Some(e.at);
            record.decision_reason = reason.clone();
            record.decided_arguments = arguments.clone();
            record.output = output.clone();
        }
    }
    record
}

/// Every approval of the tenant, paging with `limit` per page.
async fn all_approvals(
    store: &dyn Store,
    tenant: &TenantId,
    filter: &ApprovalFilter,
    limit: u32,
) -> Vec<ApprovalRecord> {
    let mut out: Vec<ApprovalRecord> = Vec::new();
    loop {
        let after = out.last().map(|a| a.id.to_string());
        let page = store.list_approvals(tenant, filter, &Page { after, limit }).await.expect("list approvals");
        assert!(page.len() <= limit as usize, "a page holds at most its limit");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn append_req(
    tenant: &TenantId,
    session: SessionId,
    expected_head: u64,
    events: Vec<NewEvent>,
    fence: Option<Fence>,
) -> AppendRequest {
    AppendRequest { tenant_id: tenant.clone(), session_id: session, expected_head, events, fence, idempotency: None }
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
    approvals: Vec<ApprovalRecord>,
}

async fn snapshot(store: &dyn Store, tenant: &TenantId, session: SessionId) -> Snapshot {
    Snapshot {
        session: store.get_session(tenant, &session).await.expect("get session"),
        events: all_events(store, tenant, session).await,
        runs: store.list_runs(tenant, &session, &Page { after: None, limit: 1000 }).await.expect("list runs"),
        approvals: store
            .list_approvals(tenant, &by_session(session), &Page { after: None, limit: 1000 })
            .await
            .expect("list approvals"),
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
        EventBody::RunCreated { input, .. } => match input.first() {
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
            then: Vec::new(),
            idempotency: None,
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

/// Approval rows appear with their request and change with their decision, in the same
/// commit, and always equal what the log says.
pub async fn approvals_follow_their_events(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let run = RunId::new();
    let (a1, a2, a3) = (ApprovalId::new(), ApprovalId::new(), ApprovalId::new());
    push(store, &t, s, vec![run_created(run, "pay"), responded(run, vec![call("c1", "pay"), call("c2", "pay")], None)])
        .await;
    assert_not_found(store.get_approval(&t, &a1).await, "an approval not yet requested");
    assert!(all_approvals(store, &t, &ApprovalFilter::default(), 10).await.is_empty());

    push(store, &t, s, vec![ask(run, a1, "c1"), ask(run, a2, "c2"), awaiting(run, vec![a1, a2])]).await;
    let pending = approvals_match_log(store, &t, s, &[a1, a2]).await;
    for (a, call_id) in pending.iter().zip(["c1", "c2"]) {
        assert_eq!((a.run_id, a.session_id, &a.tenant_id, a.kind), (run, s, &t, ApprovalKind::ToolCall));
        assert_eq!((a.call_id.as_str(), a.tool_name.as_str(), a.role.as_str()), (call_id, "pay", "approver"));
        assert_eq!((a.decision, &a.decided_by, a.decided_at), (None, &None, None), "pending");
    }
    assert_eq!(store.get_run(&t, &run).await.expect("get run").status(), RunStatus::AwaitingApproval);

    push(
        store,
        &t,
        s,
        vec![decided_with(run, a1, "c1", ApprovalDecision::Approve, Some("ok"), Some("{\"amount\":1}"), None)],
    )
    .await;
    let records = approvals_match_log(store, &t, s, &[a1, a2]).await;
    assert_eq!(records[0].decision, Some(ApprovalDecision::Approve));
    assert_eq!(records[0].decided_by.as_deref(), Some("principal:bob"));
    assert_eq!(records[0].decision_reason.as_deref(), Some("ok"));
    assert_eq!(records[0].decided_arguments.as_deref(), Some("{\"amount\":1}"));
    assert!(records[0].decided_at.is_some_and(|at| at >= records[0].created_at));
    assert_eq!(records[1], pending[1], "deciding one approval leaves the other alone");
    assert_eq!(
        store.get_run(&t, &run).await.expect("get run").status(),
        RunStatus::AwaitingApproval,
        "c2 is still open"
    );

    push(store, &t, s, vec![decided_with(run, a2, "c2", ApprovalDecision::Deny, Some("no"), None, None)]).await;
    assert_eq!(store.get_run(&t, &run).await.expect("get run").status(), RunStatus::Queued);

    // The approved call starts, its result is lost: a question of another kind on the same call.
    push(store, &t, s, vec![tool_started(run, "c1", "pay")]).await;
    let past = Timestamp::now();
    push(
        store,
        &t,
        s,
        vec![approval_requested(run, a3, ApprovalKind::OutcomeUnknown, "c1", past), awaiting(run, vec![a3])],
    )
    .await;
    push(store, &t, s, vec![decided_with(run, a3, "c1", ApprovalDecision::Skip, None, None, Some("paid"))]).await;
    let records = approvals_match_log(store, &t, s, &[a1, a2, a3]).await;
    assert_eq!(
        (records[1].decision, records[1].decision_reason.as_deref()),
        (Some(ApprovalDecision::Deny), Some("no"))
    );
    assert_eq!((records[2].kind, records[2].expires_at), (ApprovalKind::OutcomeUnknown, past));
    assert_eq!((records[2].decision, records[2].output.as_deref()), (Some(ApprovalDecision::Skip), Some("paid")));
    assert_eq!(store.get_run(&t, &run).await.expect("get run").status(), RunStatus::Queued);
    assert_eq!(all_approvals(store, &t, &ApprovalFilter::default(), 2).await, records);
}

/// A decision for an unknown, another run's or an already decided approval, and a request
/// reusing an approval id, are refused whole and change no approval.
pub async fn bad_approval_events_write_nothing(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let (r1, r2) = (RunId::new(), RunId::new());
    let (a1, a2) = (ApprovalId::new(), ApprovalId::new());
    push(store, &t, s, vec![run_created(r1, "one"), responded(r1, vec![call("c1", "pay")], None), ask(r1, a1, "c1")])
        .await;
    push(
        store,
        &t,
        s,
        vec![
            run_created(r2, "two"),
            responded(r2, vec![call("c1", "pay"), call("c2", "pay"), call("c3", "pay")], None),
            ask(r2, a2, "c1"),
        ],
    )
    .await;
    let before = snapshot(store, &t, s).await;
    assert_eq!(before.approvals.len(), 2);

    let unknown = ApprovalId::new();
    assert_invalid(
        try_push(store, &t, s, vec![decided(r1, unknown, "c1", ApprovalDecision::Approve)], None).await,
        r1,
        "a decision for an unknown approval",
    );
    assert_invalid(
        try_push(store, &t, s, vec![decided(r1, a2, "c1", ApprovalDecision::Approve)], None).await,
        r1,
        "a decision naming another run's approval",
    );
    assert_invalid(
        try_push(store, &t, s, vec![decided(r2, a1, "c1", ApprovalDecision::Approve)], None).await,
        r2,
        "a decision through another run",
    );
    assert_invalid(
        try_push(store, &t, s, vec![decided(r1, a1, "c1", ApprovalDecision::Retry)], None).await,
        r1,
        "a decision that does not answer the approval's kind",
    );
    assert_invalid(try_push(store, &t, s, vec![ask(r2, a1, "c2")], None).await, r2, "a request reusing an id");
    let fresh = ApprovalId::new();
    assert_invalid(
        try_push(store, &t, s, vec![ask(r2, fresh, "c2"), ask(r2, fresh, "c3")], None).await,
        r2,
        "one id requested twice in a batch",
    );
    assert_not_found(store.get_approval(&t, &fresh).await, "the refused batch's approval");
    let b = tenant_b();
    let sb = new_session(store, &b).await.id;
    let rb = RunId::new();
    push(store, &b, sb, vec![run_created(rb, "b"), responded(rb, vec![call("c1", "pay")], None)]).await;
    assert_invalid(try_push(store, &b, sb, vec![ask(rb, a1, "c1")], None).await, rb, "another tenant's approval id");
    assert!(store.list_approvals(&b, &ApprovalFilter::default(), &Page::default()).await.expect("list").is_empty());
    assert_eq!(snapshot(store, &t, s).await, before, "refused approval events wrote nothing");

    push(store, &t, s, vec![decided(r1, a1, "c1", ApprovalDecision::Approve)]).await;
    let decided_once = snapshot(store, &t, s).await;
    assert_invalid(
        try_push(store, &t, s, vec![decided(r1, a1, "c1", ApprovalDecision::Deny)], None).await,
        r1,
        "a second decision",
    );
    assert_invalid(
        try_push(
            store,
            &t,
            s,
            vec![decided(r2, a2, "c1", ApprovalDecision::Approve), decided(r2, a2, "c1", ApprovalDecision::Deny)],
            None,
        )
        .await,
        r2,
        "two decisions in one batch",
    );
    assert_eq!(snapshot(store, &t, s).await, decided_once, "refused decisions wrote nothing");
    assert_eq!(store.get_approval(&t, &a1).await.expect("a1").decision, Some(ApprovalDecision::Approve));
    assert_eq!(store.get_approval(&t, &a2).await.expect("a2").decision, None);
    approvals_match_log(store, &t, s, &[a1, a2]).await;
}

/// Approvals are only visible to their tenant, and list oldest first, filtered by pending and
/// by session, each exactly once across pages.
pub async fn approvals_are_tenant_scoped_filtered_and_paged(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let (ta, tb) = (tenant_a(), tenant_b());
    let sessions = [new_session(store, &ta).await.id, new_session(store, &ta).await.id];
    let runs = [RunId::new(), RunId::new()];
    let calls: Vec<ToolCall> = (0..4).map(|i| call(&format!("c{i}"), "pay")).collect();
    for (s, r) in sessions.iter().zip(runs) {
        push(store, &ta, *s, vec![run_created(r, "go"), responded(r, calls.clone(), None)]).await;
    }
    // Created interleaved across the two sessions: (session index, call index).
    let order = [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1), (1, 2), (0, 3)];
    let mut created: Vec<(usize, ApprovalId, String)> = Vec::new();
    for (si, ci) in order {
        let id = ApprovalId::new();
        let call_id = format!("c{ci}");
        push(store, &ta, sessions[si], vec![ask(runs[si], id, &call_id)]).await;
        created.push((si, id, call_id));
    }
    // Decide the second and the fifth.
    let decided_ix = [1, 4];
    for &i in &decided_ix {
        let (si, id, call_id) = &created[i];
        push(store, &ta, sessions[*si], vec![decided(runs[*si], *id, call_id, ApprovalDecision::Deny)]).await;
    }
    let sb = new_session(store, &tb).await.id;
    let rb = RunId::new();
    let ab = ApprovalId::new();
    push(store, &tb, sb, vec![run_created(rb, "b"), responded(rb, vec![call("c0", "pay")], None), ask(rb, ab, "c0")])
        .await;

    let ids = |records: &[ApprovalRecord]| records.iter().map(|a| a.id).collect::<Vec<_>>();
    let all = all_approvals(store, &ta, &ApprovalFilter::default(), 2).await;
    assert_eq!(ids(&all), created.iter().map(|c| c.1).collect::<Vec<_>>(), "oldest first, each once");
    for a in &all {
        assert_eq!(a, &store.get_approval(&ta, &a.id).await.expect("get"), "listing and get agree");
        assert_eq!(a.tenant_id, ta);
    }
    let pending = all_approvals(store, &ta, &ApprovalFilter { pending_only: true, session: None }, 2).await;
    let want: Vec<ApprovalId> =
        created.iter().enumerate().filter(|(i, _)| !decided_ix.contains(i)).map(|(_, c)| c.1).collect();
    assert_eq!(ids(&pending), want, "pending only");
    assert!(pending.iter().all(|a| a.decision.is_none()));
    for (si, s) in sessions.iter().enumerate() {
        let want: Vec<ApprovalId> = created.iter().filter(|c| c.0 == si).map(|c| c.1).collect();
        assert_eq!(ids(&all_approvals(store, &ta, &by_session(*s), 1).await), want, "session {si}");
        let want: Vec<ApprovalId> = created
            .iter()
            .enumerate()
            .filter(|(i, c)| c.0 == si && !decided_ix.contains(i))
            .map(|(_, c)| c.1)
            .collect();
        let filter = ApprovalFilter { pending_only: true, session: Some(*s) };
        assert_eq!(ids(&all_approvals(store, &ta, &filter, 1).await), want, "session {si}, pending");
    }
    let default_page = store.list_approvals(&ta, &ApprovalFilter::default(), &Page::default()).await.expect("list");
    assert_eq!(default_page, all, "limit 0 is a default-sized page");

    // Tenant isolation, both ways.
    for (_, id, _) in &created {
        assert_not_found(store.get_approval(&tb, id).await, "B reading A's approval");
    }
    assert_not_found(store.get_approval(&ta, &ab).await, "A reading B's approval");
    assert_eq!(ids(&all_approvals(store, &tb, &ApprovalFilter::default(), 10).await), vec![ab]);
    assert!(all_approvals(store, &tb, &by_session(sessions[0]), 10).await.is_empty(), "B filtering on A's session");
    assert!(all_approvals(store, &ta, &by_session(sb), 10).await.is_empty(), "A filtering on B's session");
    assert_not_found(
        store
            .list_approvals(&tb, &ApprovalFilter::default(), &Page { after: Some(created[0].1.to_string()), limit: 10 })
            .await,
        "B paging after A's approval",
    );
    assert_eq!(store.get_approval(&tb, &ab).await.expect("B's own").tenant_id, tb);
}

/// `due_approvals` returns pending approvals whose deadline passed, of every tenant, soonest
/// deadline first, at most `limit`.
pub async fn due_approvals_are_pending_expired_and_soonest_first(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let (ta, tb) = (tenant_a(), tenant_b());
    let now = Timestamp::now();
    let ago = |ms: i64| Timestamp(now.millis() - ms);
    let sa = new_session(store, &ta).await.id;
    let ra = RunId::new();
    let calls: Vec<ToolCall> = (1..=4).map(|i| call(&format!("c{i}"), "pay")).collect();
    push(store, &ta, sa, vec![run_created(ra, "a"), responded(ra, calls, None)]).await;
    let a: Vec<ApprovalId> = (0..4).map(|_| ApprovalId::new()).collect();
    push(
        store,
        &ta,
        sa,
        vec![
            approval_requested(ra, a[0], ApprovalKind::ToolCall, "c1", ago(3000)),
            approval_requested(ra, a[1], ApprovalKind::ToolCall, "c2", ago(1000)),
            approval_requested(ra, a[2], ApprovalKind::ToolCall, "c3", now.plus(Duration::from_secs(3600))),
            approval_requested(ra, a[3], ApprovalKind::ToolCall, "c4", ago(2000)),
        ],
    )
    .await;
    push(store, &ta, sa, vec![decided(ra, a[3], "c4", ApprovalDecision::Expire)]).await;
    let sb = new_session(store, &tb).await.id;
    let rb = RunId::new();
    let ab = ApprovalId::new();
    push(
        store,
        &tb,
        sb,
        vec![
            run_created(rb, "b"),
            responded(rb, vec![call("c1", "pay")], None),
            approval_requested(rb, ab, ApprovalKind::ToolCall, "c1", ago(4000)),
        ],
    )
    .await;

    let due = store.due_approvals(now, 10).await.expect("due");
    assert_eq!(
        due.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![ab, a[0], a[1]],
        "pending and expired, across tenants, soonest deadline first"
    );
    for d in &due {
        assert_eq!(d, &store.get_approval(&d.tenant_id, &d.id).await.expect("get"), "the same record as get");
    }
    assert_eq!(store.due_approvals(now, 2).await.expect("due"), due[..2].to_vec(), "at most `limit`");
    assert_eq!(store.due_approvals(ago(3500), 10).await.expect("due"), due[..1].to_vec(), "only those due by `now`");
    assert_eq!(store.due_approvals(ago(1000), 10).await.expect("due"), due, "a deadline equal to `now` is due");
    assert!(store.due_approvals(ago(5000), 10).await.expect("due").is_empty());
}

/// A run awaiting approval holds no lease, is not claimable, blocks the later runs of its
/// session, and is queued (and claimable with a new token) once every approval is decided.
pub async fn runs_awaiting_approval_hold_no_lease_block_and_resume(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let (r1, r2) = (RunId::new(), RunId::new());
    push(store, &t, s, vec![run_created(r1, "first"), run_created(r2, "second")]).await;
    let claim = store.claim_runs("w", LONG, 10).await.expect("claim");
    assert_eq!(claim.iter().map(|c| c.run.id).collect::<Vec<_>>(), vec![r1]);
    let tok = claim[0].token;
    let (a1, a2) = (ApprovalId::new(), ApprovalId::new());
    try_push(
        store,
        &t,
        s,
        vec![
            responded(r1, vec![call("c1", "pay"), call("c2", "pay")], None),
            ask(r1, a1, "c1"),
            ask(r1, a2, "c2"),
            awaiting(r1, vec![a1, a2]),
        ],
        fence(r1, tok),
    )
    .await
    .expect("wait for approvals");
    let waiting = store.get_run(&t, &r1).await.expect("get run");
    assert_eq!(waiting.status(), RunStatus::AwaitingApproval);
    assert!(!waiting.status().is_terminal() && !waiting.status().is_claimable());
    assert_eq!(waiting.lease, None, "a run awaiting approval holds no worker");
    let active: Vec<RunId> = store.active_runs(&t, &s).await.expect("active").into_iter().map(|r| r.id).collect();
    assert_eq!(active, vec![r1, r2], "awaiting approval is unfinished");
    assert!(store.claim_runs("w2", LONG, 10).await.expect("claim").is_empty(), "neither it nor the run behind it");
    assert_fenced(store.renew_lease(&r1, tok, LONG).await, r1, tok, "renewing after the run started waiting");
    assert_fenced(
        try_push(store, &t, s, vec![cancel_requested(r1, "x")], fence(r1, tok)).await,
        r1,
        tok,
        "the worker's token after the run started waiting",
    );

    let mut commits = store.subscribe();
    push(store, &t, s, vec![decided(r1, a1, "c1", ApprovalDecision::Approve)]).await;
    assert_eq!(store.get_run(&t, &r1).await.expect("get").status(), RunStatus::AwaitingApproval, "a2 is open");
    assert!(store.claim_runs("w2", LONG, 10).await.expect("claim").is_empty());
    push(store, &t, s, vec![decided(r1, a2, "c2", ApprovalDecision::Deny)]).await;
    assert_eq!(store.get_run(&t, &r1).await.expect("get").status(), RunStatus::Queued);
    let last = head(store, &t, s).await;
    let mut woke = false;
    while let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(5), commits.recv()).await {
        if c.events.last().map(|e| e.seq) == Some(last) {
            assert_eq!(c.runs, vec![(r1, RunStatus::Queued)]);
            woke = c.wakes_workers();
            break;
        }
    }
    assert!(woke, "the decision that resumed the run wakes workers");
    let again = store.claim_runs("w2", LONG, 10).await.expect("claim");
    assert_eq!(again.iter().map(|c| c.run.id).collect::<Vec<_>>(), vec![r1], "r1 resumes, r2 still waits");
    assert!(again[0].token > tok);
}

/// Deleting a session deletes its approvals (a run awaiting approval holds no lease, so it
/// does not block the deletion); other sessions' approvals stay.
pub async fn deleting_a_session_removes_its_approvals(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let past = Timestamp(Timestamp::now().millis() - 1000);
    let mut made = Vec::new();
    for _ in 0..2 {
        let s = new_session(store, &t).await.id;
        let run = RunId::new();
        let id = ApprovalId::new();
        push(
            store,
            &t,
            s,
            vec![
                run_created(run, "go"),
                responded(run, vec![call("c1", "pay")], None),
                approval_requested(run, id, ApprovalKind::ToolCall, "c1", past),
                awaiting(run, vec![id]),
            ],
        )
        .await;
        made.push((s, id));
    }
    let (keep, kept) = made[0];
    let (gone, removed) = made[1];
    let kept_before = snapshot(store, &t, keep).await;
    store.delete_session(&t, &gone).await.expect("delete a session awaiting approval");
    assert_not_found(store.get_approval(&t, &removed).await, "a deleted session's approval");
    let listed = all_approvals(store, &t, &ApprovalFilter::default(), 10).await;
    assert_eq!(listed.iter().map(|a| a.id).collect::<Vec<_>>(), vec![kept]);
    assert!(all_approvals(store, &t, &by_session(gone), 10).await.is_empty());
    let due = store.due_approvals(Timestamp::now(), 10).await.expect("due");
    assert_eq!(due.iter().map(|a| a.id).collect::<Vec<_>>(), vec![kept], "nothing of it is left to expire");
    assert_eq!(snapshot(store, &t, keep).await, kept_before, "other sessions are untouched");
}

// ---------------------------------------------------------------------------------------
// Session-level events, per-run agents, calls carried from one run to the next, deletion.

/// An event of the session itself (no run).
fn session_event(body: EventBody) -> NewEvent {
    NewEvent { run_id: None, actor: Actor::principal("alice"), body }
}

/// The call `ask` asked about (same name and arguments as its approval).
fn asked_call(call_id: &str) -> ToolCall {
    ToolCall { id: call_id.into(), name: "pay".into(), arguments: format!("{{\"call\":\"{call_id}\"}}") }
}

/// A run that takes over `calls` (call id, approval id) from `from`.
fn carrying(run: RunId, from: RunId, calls: &[(&str, ApprovalId)]) -> NewEvent {
    NewEvent {
        run_id: Some(run),
        actor: Actor::principal("alice"),
        body: EventBody::RunCreated {
            input: vec![Message::User { content: "go on".into() }],
            agent: None,
            carried: calls
                .iter()
                .map(|(call_id, id)| CarriedCall { from_run: from, call: asked_call(call_id), approval_id: *id })
                .collect(),
            metadata: serde_json::Value::Null,
        },
    }
}

/// `ItemsAdded`, `ItemRemoved` and `SessionUpdated` are appended without a run: stored as
/// sent, the metadata projected into the session, no run touched. With a run id they are
/// refused, as is a run's event without one; a refused batch leaves the metadata as it was.
pub async fn session_level_events_belong_to_no_run(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let run = RunId::new();
    push(store, &t, s, vec![run_created(run, "hi"), responded(run, vec![call("c1", "clock")], None)]).await;
    let run_before = store.get_run(&t, &run).await.expect("get run");

    let mut commits = store.subscribe();
    let items = vec![
        Message::User { content: "a note".into() },
        Message::Assistant { content: Some("noted".into()), tool_calls: vec![] },
    ];
    let added = push(store, &t, s, vec![session_event(EventBody::ItemsAdded { items: items.clone() })]).await;
    assert_eq!(added.len(), 1);
    assert_eq!((added[0].run_id, &added[0].body), (None, &EventBody::ItemsAdded { items }));
    let edits = vec![
        session_event(EventBody::ItemRemoved { seq: added[0].seq, index: 1 }),
        session_event(EventBody::SessionUpdated { metadata: json!({"k": "v2", "n": [1, 2]}) }),
    ];
    let sent: Vec<EventBody> = edits.iter().map(|e| e.body.clone()).collect();
    let got = push(store, &t, s, edits).await;
    assert_eq!(
        got.iter().map(|e| (e.run_id, e.body.clone())).collect::<Vec<_>>(),
        vec![(None, sent[0].clone()), (None, sent[1].clone())]
    );
    let session = store.get_session(&t, &s).await.expect("get session");
    assert_eq!(session.metadata, json!({"k": "v2", "n": [1, 2]}), "session_updated replaces the metadata");
    assert_eq!(session.head_seq, got[1].seq);
    let log = verified_log(store, &t, s).await;
    assert_eq!(&log[log.len() - 3..], &[added[0].clone(), got[0].clone(), got[1].clone()], "read back as appended");
    assert_eq!(store.get_run(&t, &run).await.expect("get run").state, run_before.state, "no run is touched");
    for _ in 0..2 {
        let c = tokio::time::timeout(Duration::from_secs(5), commits.recv()).await.expect("published").expect("recv");
        assert!(c.runs.is_empty() && !c.wakes_workers(), "a session-level commit changes no run: {:?}", c.runs);
    }

    // Session-level events naming a run, and run events naming none, are refused.
    let before = snapshot(store, &t, s).await;
    let session_level = [
        EventBody::ItemsAdded { items: vec![Message::User { content: "x".into() }] },
        EventBody::ItemRemoved { seq: added[0].seq, index: 0 },
        EventBody::SessionUpdated { metadata: json!({"k": "hijacked"}) },
    ];
    for body in &session_level {
        assert_invalid(
            try_push(store, &t, s, vec![on(run, body.clone())], None).await,
            run,
            &format!("`{}` naming a run", body.kind()),
        );
        let fresh = RunId::new();
        assert_invalid(
            try_push(store, &t, s, vec![run_created(fresh, "new"), on(fresh, body.clone())], None).await,
            fresh,
            &format!("`{}` naming a run created in the same batch", body.kind()),
        );
        assert_not_found(store.get_run(&t, &fresh).await, "the refused batch's run");
    }
    let run_level = [
        EventBody::run_created(vec![Message::User { content: "no id".into() }]),
        EventBody::ModelResponded {
            step: 1,
            model: "m".into(),
            content: None,
            tool_calls: vec![],
            usage: Usage::default(),
            finish_reason: "stop".into(),
            chunks: Vec::new(),
        },
        EventBody::ToolCallCompleted {
            call_id: "c1".into(),
            name: "clock".into(),
            output: "x".into(),
            is_error: false,
        },
        EventBody::RunCancelRequested { reason: "x".into() },
        EventBody::RunCompleted { output: None },
        EventBody::RunDeleted {},
    ];
    for body in run_level {
        let kind = body.kind();
        let r = try_push(store, &t, s, vec![session_event(body)], None).await;
        assert!(r.is_err(), "`{kind}` without a run is refused: {r:?}");
    }
    // A refused batch undoes the metadata update it started with.
    let unknown = RunId::new();
    assert_invalid(
        try_push(
            store,
            &t,
            s,
            vec![
                session_event(EventBody::SessionUpdated { metadata: json!({"k": "lost"}) }),
                session_event(EventBody::ItemsAdded { items: vec![Message::User { content: "lost".into() }] }),
                responded(unknown, vec![], None),
            ],
            None,
        )
        .await,
        unknown,
        "a batch whose last event is bad",
    );
    assert_eq!(snapshot(store, &t, s).await, before, "refused session-level events wrote nothing");
    assert_eq!(store.get_session(&t, &s).await.expect("get").metadata, json!({"k": "v2", "n": [1, 2]}));
    // Another session's metadata is its own.
    let other = new_session(store, &t).await.id;
    push(store, &t, other, vec![session_event(EventBody::SessionUpdated { metadata: json!(null) })]).await;
    assert_eq!(store.get_session(&t, &other).await.expect("get").metadata, json!(null));
    assert_eq!(store.get_session(&t, &s).await.expect("get").metadata, json!({"k": "v2", "n": [1, 2]}));
    verified_log(store, &t, s).await;
}

/// A run created with its own agent version and metadata keeps them: the event reads back as
/// sent and the run's state names the agent.
pub async fn runs_keep_the_agent_they_were_created_with(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let (plain, other) = (RunId::new(), RunId::new());
    let agent = AgentRef { name: "reviewer".into(), version: 3 };
    let body = EventBody::RunCreated {
        input: vec![
            Message::System { content: "be brief".into() },
            Message::User { content: "hello".into() },
            Message::Tool { call_id: "c0".into(), name: "ask".into(), content: "yes".into(), is_error: false },
        ],
        agent: Some(agent.clone()),
        carried: vec![],
        metadata: json!({"temperature": 0.5, "store": true}),
    };
    let got = push(
        store,
        &t,
        s,
        vec![
            run_created(plain, "plain"),
            NewEvent { run_id: Some(other), actor: Actor::principal("alice"), body: body.clone() },
        ],
    )
    .await;
    assert_eq!(got[1].body, body, "agent, input and metadata are kept");
    let record = store.get_run(&t, &other).await.expect("get run");
    assert_eq!(record.state.agent, Some(agent));
    assert_eq!(record.status(), RunStatus::Queued);
    assert_eq!(record.state, RunState::created_from(got[1].seq, got[1].at, &body));
    assert_eq!(store.get_run(&t, &plain).await.expect("get run").state.agent, None, "the session's agent by default");
    push(store, &t, s, vec![responded(other, vec![], Some("hi"))]).await;
    assert_eq!(
        store.get_run(&t, &other).await.expect("get run").state.agent.map(|a| a.version),
        Some(3),
        "later events keep the agent"
    );
    assert_eq!(read_back(store, &t, s, got[1].seq).await.body, body);
}

async fn read_back(store: &dyn Store, tenant: &TenantId, session: SessionId, seq: u64) -> Event {
    store.read_events(tenant, &session, seq - 1, 1).await.expect("read").pop().expect("the event")
}

/// A run that ended (completed) with open tool-call approvals hands them to a later run of
/// its session: the approval row then belongs to the new run, which can decide it (also in
/// the same append). Each approval moves once; a refused batch moves nothing.
pub async fn carried_approvals_move_to_the_run_that_takes_them_over(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let a = RunId::new();
    let ids: Vec<ApprovalId> = (0..4).map(|_| ApprovalId::new()).collect();
    let calls: Vec<ToolCall> = (1..=4).map(|i| asked_call(&format!("c{i}"))).collect();
    let mut events = vec![run_created(a, "pay four"), responded(a, calls, Some("asking"))];
    events.extend(ids.iter().enumerate().map(|(i, id)| ask(a, *id, &format!("c{}", i + 1))));
    events.push(run_completed(a, "asking"));
    push(store, &t, s, events).await;
    let a_done = store.get_run(&t, &a).await.expect("get run");
    assert_eq!(a_done.status(), RunStatus::Completed);
    let asked = approvals_match_log(store, &t, s, &ids).await;
    assert!(asked.iter().all(|x| x.run_id == a && x.decision.is_none()));

    // B takes over c1 and approves it in the same append.
    let b = RunId::new();
    let got = push(
        store,
        &t,
        s,
        vec![carrying(b, a, &[("c1", ids[0])]), decided(b, ids[0], "c1", ApprovalDecision::Approve)],
    )
    .await;
    let moved = store.get_approval(&t, &ids[0]).await.expect("get approval");
    let want = ApprovalRecord {
        run_id: b,
        decision: Some(ApprovalDecision::Approve),
        decided_by: Some("principal:bob".into()),
        decided_at: Some(got[1].at),
        ..asked[0].clone()
    };
    assert_eq!(moved, want, "the approval now belongs to B, decided; the question is unchanged");
    let b_state = store.get_run(&t, &b).await.expect("get run").state;
    assert_eq!(b_state.status, RunStatus::Queued, "decided with its creation: claimable");
    assert_eq!(b_state.pending.len(), 1);
    assert_eq!(b_state.pending[0].call, asked_call("c1"));
    assert_eq!(
        b_state.pending[0].approval.as_ref().map(|x| (x.id, x.decision)),
        Some((ids[0], Some(ApprovalDecision::Approve)))
    );
    assert_eq!(store.get_run(&t, &a).await.expect("get run"), a_done, "the run it came from is unchanged");
    for (i, id) in ids.iter().enumerate().skip(1) {
        assert_eq!(store.get_approval(&t, id).await.expect("get"), asked[i], "the other approvals stay with A");
    }
    // B is the oldest unfinished run and claimable.
    let claims = store.claim_runs("w", LONG, 10).await.expect("claim");
    assert_eq!(claims.iter().map(|c| c.run.id).collect::<Vec<_>>(), vec![b]);
    try_push(
        store,
        &t,
        s,
        vec![
            tool_started(b, "c1", "pay"),
            tool_completed(b, "c1", "pay", "paid"),
            responded(b, vec![], Some("done")),
            run_completed(b, "done"),
        ],
        fence(b, claims[0].token),
    )
    .await
    .expect("B runs the call it took over");

    // Carried a second time: refused whole, even from the run that took it (B completed too).
    let before = snapshot(store, &t, s).await;
    let c = RunId::new();
    assert_invalid(try_push(store, &t, s, vec![carrying(c, a, &[("c1", ids[0])])], None).await, c, "carrying c1 again");
    assert_invalid(
        try_push(store, &t, s, vec![carrying(c, b, &[("c1", ids[0])])], None).await,
        c,
        "carrying the decided c1 on from B",
    );
    assert_not_found(store.get_run(&t, &c).await, "the refused run");
    assert_eq!(snapshot(store, &t, s).await, before, "refused carries wrote nothing");

    // D takes c2 over without deciding it: D waits for the decision, holding no worker.
    let d = RunId::new();
    push(store, &t, s, vec![carrying(d, a, &[("c2", ids[1])])]).await;
    let d_rec = store.get_run(&t, &d).await.expect("get run");
    assert_eq!(d_rec.status(), RunStatus::AwaitingApproval);
    assert_eq!(d_rec.lease, None);
    assert_eq!(store.get_approval(&t, &ids[1]).await.expect("get"), ApprovalRecord { run_id: d, ..asked[1].clone() });
    assert!(store.claim_runs("w", LONG, 10).await.expect("claim").is_empty(), "D waits for a person");
    let before = snapshot(store, &t, s).await;
    let e = RunId::new();
    assert_invalid(
        try_push(store, &t, s, vec![carrying(e, a, &[("c2", ids[1])])], None).await,
        e,
        "an undecided approval another run already took over",
    );
    assert_invalid(
        try_push(store, &t, s, vec![decided(a, ids[1], "c2", ApprovalDecision::Expire)], None).await,
        a,
        "expiring a moved approval through the run it came from",
    );
    assert_eq!(snapshot(store, &t, s).await, before);
    push(store, &t, s, vec![decided(d, ids[1], "c2", ApprovalDecision::Deny)]).await;
    assert_eq!(store.get_run(&t, &d).await.expect("get run").status(), RunStatus::Queued);
    let d_claim = store.claim_runs("w", LONG, 10).await.expect("claim");
    assert_eq!(d_claim.iter().map(|c| c.run.id).collect::<Vec<_>>(), vec![d]);
    try_push(
        store,
        &t,
        s,
        vec![
            on(
                d,
                EventBody::ToolCallCompleted {
                    call_id: "c2".into(),
                    name: "pay".into(),
                    output: "denied".into(),
                    is_error: true,
                },
            ),
            responded(d, vec![], Some("ok")),
            run_completed(d, "ok"),
        ],
        fence(d, d_claim[0].token),
    )
    .await
    .expect("D finishes");

    // c3: a refused batch moves nothing, nor does a list naming it twice or two runs taking it.
    let before = snapshot(store, &t, s).await;
    let f = RunId::new();
    let unknown = RunId::new();
    assert_invalid(
        try_push(store, &t, s, vec![carrying(f, a, &[("c3", ids[2])]), responded(unknown, vec![], None)], None).await,
        unknown,
        "a carry in a batch with a bad event",
    );
    assert_invalid(
        try_push(store, &t, s, vec![carrying(f, a, &[("c3", ids[2]), ("c3", ids[2])])], None).await,
        f,
        "one approval carried twice by one run",
    );
    let g = RunId::new();
    assert_invalid(
        try_push(store, &t, s, vec![carrying(f, a, &[("c3", ids[2])]), carrying(g, a, &[("c3", ids[2])])], None).await,
        g,
        "two runs of one batch taking one approval",
    );
    assert_invalid(
        try_push(store, &t, s, vec![carrying(f, a, &[("c4", ids[2])])], None).await,
        f,
        "an approval carried under another call's id",
    );
    assert_invalid(
        try_push(store, &t, s, vec![carrying(f, a, &[("c3", ApprovalId::new())])], None).await,
        f,
        "an approval that does not exist",
    );
    assert_invalid(
        try_push(
            store,
            &t,
            s,
            vec![carrying(f, a, &[("c3", ids[2])]), decided(f, ids[2], "c3", ApprovalDecision::Retry)],
            None,
        )
        .await,
        f,
        "a decision that does not answer a tool-call approval",
    );
    let other = new_session(store, &t).await.id;
    assert_invalid(
        try_push(store, &t, other, vec![carrying(f, a, &[("c3", ids[2])])], None).await,
        f,
        "another session's approval",
    );
    assert_eq!(snapshot(store, &t, s).await, before, "nothing moved");
    assert_eq!(store.get_approval(&t, &ids[2]).await.expect("get"), asked[2]);

    // c3 expires where it is (A finished: only the expiry is accepted); then it can't move.
    push(store, &t, s, vec![decided(a, ids[2], "c3", ApprovalDecision::Expire)]).await;
    let expired = store.get_approval(&t, &ids[2]).await.expect("get");
    assert_eq!((expired.run_id, expired.decision), (a, Some(ApprovalDecision::Expire)));
    assert_eq!(store.get_run(&t, &a).await.expect("get run").status(), RunStatus::Completed, "A stays completed");
    let before = snapshot(store, &t, s).await;
    assert_invalid(
        try_push(store, &t, s, vec![carrying(f, a, &[("c3", ids[2])])], None).await,
        f,
        "an approval that expired",
    );
    assert_invalid(
        try_push(store, &t, s, vec![decided(a, ids[3], "c4", ApprovalDecision::Approve)], None).await,
        a,
        "approving through a finished run",
    );
    assert_eq!(snapshot(store, &t, s).await, before);

    // c4, untouched by all of the above, still moves.
    push(store, &t, s, vec![carrying(f, a, &[("c4", ids[3])])]).await;
    assert_eq!(store.get_approval(&t, &ids[3]).await.expect("get").run_id, f);
    let listed = all_approvals(store, &t, &by_session(s), 2).await;
    assert_eq!(
        listed.iter().map(|x| (x.id, x.run_id)).collect::<Vec<_>>(),
        vec![(ids[0], b), (ids[1], d), (ids[2], a), (ids[3], f)]
    );
    let pending = all_approvals(store, &t, &ApprovalFilter { pending_only: true, session: Some(s) }, 10).await;
    assert_eq!(pending.iter().map(|x| x.id).collect::<Vec<_>>(), vec![ids[3]]);
    verified_log(store, &t, s).await;
}

/// Only an undecided `tool_call` approval of a *completed* run moves: not one of a run that is
/// still going (awaiting it), failed or was cancelled, not an unknown-outcome question, and
/// not through a run it does not belong to.
pub async fn only_open_tool_call_approvals_of_completed_runs_move(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    // Each run asks about c1, then ends (or not) as given.
    let endings: [(&str, Option<EventBody>); 4] = [
        ("awaiting", None),
        ("failed", Some(EventBody::RunFailed { error: ErrorInfo::new("boom", "broke") })),
        ("cancelled", Some(EventBody::RunCancelled { reason: "stop".into() })),
        ("completed", Some(EventBody::RunCompleted { output: None })),
    ];
    let mut made = Vec::new();
    for (what, ending) in endings {
        let run = RunId::new();
        let id = ApprovalId::new();
        let mut events = vec![run_created(run, what), responded(run, vec![asked_call("c1")], None), ask(run, id, "c1")];
        events.push(match ending {
            Some(body) => on(run, body),
            None => awaiting(run, vec![id]),
        });
        push(store, &t, s, events).await;
        made.push((what, run, id));
    }
    // A completed run whose open question is about an unknown outcome.
    let unknown_run = RunId::new();
    let unknown_id = ApprovalId::new();
    push(
        store,
        &t,
        s,
        vec![
            run_created(unknown_run, "charge"),
            responded(unknown_run, vec![asked_call("c1")], None),
            tool_started(unknown_run, "c1", "pay"),
            approval_requested(unknown_run, unknown_id, ApprovalKind::OutcomeUnknown, "c1", Timestamp::now()),
            run_completed(unknown_run, "gave up"),
        ],
    )
    .await;
    assert_eq!(store.get_run(&t, &unknown_run).await.expect("get").status(), RunStatus::Completed);

    let before = snapshot(store, &t, s).await;
    let taker = RunId::new();
    for (what, run, id) in &made[..3] {
        assert_invalid(
            try_push(store, &t, s, vec![carrying(taker, *run, &[("c1", *id)])], None).await,
            taker,
            &format!("an approval of a run that is {what}"),
        );
    }
    assert_invalid(
        try_push(store, &t, s, vec![carrying(taker, unknown_run, &[("c1", unknown_id)])], None).await,
        taker,
        "an unknown-outcome approval",
    );
    let (_, completed, completed_id) = made[3];
    assert_invalid(
        try_push(store, &t, s, vec![carrying(taker, unknown_run, &[("c1", completed_id)])], None).await,
        taker,
        "an approval named as coming from a run it does not belong to",
    );
    let (_, awaiting_run, awaiting_id) = made[0];
    let second = RunId::new();
    assert_invalid(
        try_push(store, &t, s, vec![carrying(taker, completed, &[("c1", awaiting_id)])], None).await,
        taker,
        "a still-waiting run's approval, claimed through a completed run",
    );
    assert_invalid(
        try_push(
            store,
            &t,
            s,
            vec![
                carrying(taker, completed, &[("c1", completed_id)]),
                carrying(second, awaiting_run, &[("c1", awaiting_id)]),
            ],
            None,
        )
        .await,
        second,
        "a batch with one good and one bad carry",
    );
    assert_not_found(store.get_run(&t, &second).await, "the refused batch's second run");
    assert_not_found(store.get_run(&t, &taker).await, "the refused run");
    assert_eq!(snapshot(store, &t, s).await, before, "no approval moved, nothing was written");
    for (_, run, id) in &made {
        assert_eq!(store.get_approval(&t, id).await.expect("get").run_id, *run);
    }
    // The completed run's one does move.
    push(store, &t, s, vec![carrying(taker, completed, &[("c1", completed_id)])]).await;
    assert_eq!(store.get_approval(&t, &completed_id).await.expect("get").run_id, taker);
}

/// `run_deleted` marks a finished run deleted and changes nothing else; an unfinished run
/// can't be deleted, and a deleted one takes no further events.
pub async fn only_finished_runs_are_deleted(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let (done, waiting, queued) = (RunId::new(), RunId::new(), RunId::new());
    let id = ApprovalId::new();
    push(store, &t, s, vec![run_created(done, "one"), responded(done, vec![], Some("hi")), run_completed(done, "hi")])
        .await;
    push(
        store,
        &t,
        s,
        vec![
            run_created(waiting, "two"),
            responded(waiting, vec![asked_call("c1")], None),
            ask(waiting, id, "c1"),
            awaiting(waiting, vec![id]),
        ],
    )
    .await;
    push(store, &t, s, vec![run_created(queued, "three")]).await;
    let before = snapshot(store, &t, s).await;
    for run in [waiting, queued] {
        assert_invalid(
            try_push(store, &t, s, vec![on(run, EventBody::RunDeleted {})], None).await,
            run,
            "deleting an unfinished run",
        );
    }
    assert_eq!(snapshot(store, &t, s).await, before);
    for r in &before.runs {
        assert!(!r.state.deleted);
    }

    let done_before = store.get_run(&t, &done).await.expect("get run");
    let mut commits = store.subscribe();
    let got = push(
        store,
        &t,
        s,
        vec![NewEvent { run_id: Some(done), actor: Actor::principal("alice"), body: EventBody::RunDeleted {} }],
    )
    .await;
    assert_eq!((got[0].run_id, &got[0].body), (Some(done), &EventBody::RunDeleted {}));
    let done_after = store.get_run(&t, &done).await.expect("a deleted run is still readable");
    assert!(done_after.state.deleted);
    assert_eq!(RunState { deleted: false, ..done_after.state.clone() }, done_before.state, "nothing else changes");
    assert_eq!(done_after.status(), RunStatus::Completed);
    let c = tokio::time::timeout(Duration::from_secs(5), commits.recv()).await.expect("published").expect("recv");
    assert!(c.runs.is_empty(), "the status did not change: {:?}", c.runs);
    let listed = store.list_runs(&t, &s, &Page { after: None, limit: 10 }).await.expect("list runs");
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![done, waiting, queued], "the log keeps it");
    let after = snapshot(store, &t, s).await;
    for late in [responded(done, vec![], Some("more")), cancel_requested(done, "late"), run_completed(done, "again")] {
        assert_invalid(try_push(store, &t, s, vec![late], None).await, done, "an event after deletion");
    }
    assert_eq!(snapshot(store, &t, s).await, after);
    verified_log(store, &t, s).await;
}

/// Messages added outside a run, and their removal, are message events: the context window
/// holds them in order among the runs' messages; metadata updates and deletions are not.
pub async fn added_items_are_in_the_message_window(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = &*fx.store;
    let t = tenant_a();
    let s = new_session(store, &t).await.id;
    let (r1, r2) = (RunId::new(), RunId::new());
    push(store, &t, s, vec![run_created(r1, "first"), responded(r1, vec![], Some("one")), run_completed(r1, "one")])
        .await;
    let added = push(
        store,
        &t,
        s,
        vec![session_event(EventBody::ItemsAdded {
            items: vec![Message::User { content: "added".into() }, Message::System { content: "note".into() }],
        })],
    )
    .await
    .remove(0);
    let edits = push(
        store,
        &t,
        s,
        vec![
            session_event(EventBody::SessionUpdated { metadata: json!({"x": 1}) }),
            on(r1, EventBody::RunDeleted {}),
            session_event(EventBody::ItemRemoved { seq: added.seq, index: 1 }),
        ],
    )
    .await;
    push(store, &t, s, vec![run_created(r2, "second")]).await;
    let log = verified_log(store, &t, s).await;
    let h = log.len() as u64;
    let window = store.read_message_window(&t, &s, h, 100).await.expect("window");
    let want: Vec<Event> = log.iter().filter(|e| e.body.is_message()).cloned().collect();
    assert_eq!(window, want);
    let kinds: Vec<&str> = window.iter().map(|e| e.body.kind()).collect();
    assert_eq!(kinds, vec!["run_created", "model_responded", "items_added", "item_removed", "run_created"]);
    assert_eq!(window[2], added);
    assert_eq!(window[3], edits[2]);
    assert!(!window.iter().any(|e| matches!(e.body, EventBody::SessionUpdated { .. } | EventBody::RunDeleted {})));
    assert_eq!(store.read_message_window(&t, &s, added.seq, 1).await.expect("window"), vec![added.clone()]);
    assert_eq!(store.read_message_window(&t, &s, h, 2).await.expect("window"), want[3..].to_vec());
}

// ---------------------------------------------------------------------------------------
// Sessions created with their first run; idempotency keys.

fn key(name: &str, fingerprint: &str, ttl: Duration) -> IdempotencyKey {
    IdempotencyKey { key: name.into(), fingerprint: fingerprint.into(), expires_at: Timestamp::now().plus(ttl) }
}

fn session_with(tenant: &TenantId, then: Vec<NewEvent>, idempotency: Option<IdempotencyKey>) -> NewSession {
    NewSession {
        tenant_id: tenant.clone(),
        id: SessionId::new(),
        agent: "helper".into(),
        agent_version: 1,
        metadata: json!({"k": "v"}),
        first_event: session_created(),
        then,
        idempotency,
    }
}

fn used(r: crate::Result<impl std::fmt::Debug>, what: &str) -> crate::IdempotencyRecord {
    match r {
        Err(Error::IdempotencyKeyUsed(rec)) => *rec,
        other => panic!("{what}: expected IdempotencyKeyUsed, got {other:?}"),
    }
}

/// A session created with seed items and its first run holds them all, the run projection
/// included; one bad event in `then` leaves no session at all (never an empty one).
pub async fn sessions_are_created_with_their_first_run_atomically(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = fx.store.as_ref();
    let t = tenant_a();
    let run = RunId::new();
    let seed = session_event(EventBody::ItemsAdded { items: vec![Message::User { content: "earlier".into() }] });
    let new = session_with(&t, vec![seed, run_created(run, "go")], None);
    let id = new.id;
    let (record, first) = store.create_session(new).await.expect("session with run");
    assert_eq!(first.seq, 1);
    assert_eq!(record.head_seq, 3, "the record reports the head after every event");
    let log = verified_log(store, &t, id).await;
    assert_eq!(log.len(), 3);
    assert_eq!(store.get_session(&t, &id).await.expect("session").head_seq, 3);
    let r = store.get_run(&t, &run).await.expect("the run's projection");
    assert_eq!(r.status(), RunStatus::Queued);
    assert_eq!(r.state.created_seq, 3);

    // A run event for a run that does not exist: nothing of it, not even the session.
    let bad = session_with(&t, vec![run_created(RunId::new(), "ok"), tool_started(RunId::new(), "c", "x")], None);
    let bad_id = bad.id;
    let refused = store.create_session(bad).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_not_found(store.get_session(&t, &bad_id).await, "a session whose later events were refused");
    let sessions = store.list_sessions(&t, &Page { after: None, limit: 100 }).await.expect("list");
    assert_eq!(sessions.len(), 1, "only the good session exists");
}

/// A key claimed by an append or a session create answers every later claim with what that
/// write created — before the head is even compared, so a retry finds it after the head moved —
/// and the refused write leaves nothing behind. `get_idempotency` reads the same record.
pub async fn idempotency_keys_return_what_the_first_write_created(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = fx.store.as_ref();
    let t = tenant_a();
    let s = new_session(store, &t).await;
    let first = RunId::new();
    let mut req = append_req(&t, s.id, 1, vec![run_created(first, "go")], None);
    req.idempotency = Some(key("k1", "fp-1", LONG));
    store.append(req).await.expect("first append claims the key");
    let rec = store.get_idempotency(&t, "k1").await.expect("read").expect("claimed");
    assert_eq!((rec.session_id, rec.run_id, rec.fingerprint.as_str()), (s.id, Some(first), "fp-1"));
    assert!(rec.expires_at > rec.created_at);

    let before = snapshot(store, &t, s.id).await;
    // The retry saw the old head: still the key's answer, not a conflict.
    let mut retry = append_req(&t, s.id, 1, vec![run_created(RunId::new(), "go")], None);
    retry.idempotency = Some(key("k1", "fp-1", LONG));
    let rec = used(store.append(retry).await, "a retry at the old head");
    assert_eq!(rec.run_id, Some(first));
    // Another request under the same key gets the same record (the caller compares fingerprints).
    let mut other = append_req(&t, s.id, head(store, &t, s.id).await, vec![run_created(RunId::new(), "x")], None);
    other.idempotency = Some(key("k1", "fp-2", LONG));
    assert_eq!(used(store.append(other).await, "another request").fingerprint, "fp-1");
    // A session create under a used key makes no session.
    let new = session_with(&t, vec![run_created(RunId::new(), "y")], Some(key("k1", "fp-3", LONG)));
    let new_id = new.id;
    used(store.create_session(new).await, "a session create under a used key");
    assert_not_found(store.get_session(&t, &new_id).await, "the refused session");
    assert_eq!(snapshot(store, &t, s.id).await, before, "refused writes left nothing");

    // A session create claims a key for its session and first run.
    let run = RunId::new();
    let new = session_with(&t, vec![run_created(run, "z")], Some(key("k2", "fp-z", LONG)));
    let sid = new.id;
    store.create_session(new).await.expect("session claims k2");
    let retry = session_with(&t, vec![run_created(RunId::new(), "z")], Some(key("k2", "fp-z", LONG)));
    let rec = used(store.create_session(retry).await, "a retried session create");
    assert_eq!((rec.session_id, rec.run_id), (sid, Some(run)));
    // A session created without a run remembers no run.
    store.create_session(session_with(&t, Vec::new(), Some(key("k3", "fp", LONG)))).await.expect("k3");
    assert_eq!(store.get_idempotency(&t, "k3").await.expect("read").expect("k3").run_id, None);
    assert!(store.get_idempotency(&t, "never").await.expect("read").is_none());
}

/// Keys are per tenant, an expired claim may be made anew, and deleting a session forgets
/// the keys that named it.
pub async fn idempotency_keys_expire_are_tenant_scoped_and_go_with_their_session(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = fx.store.as_ref();
    let (a, b) = (tenant_a(), tenant_b());
    let sa = new_session(store, &a).await;
    let sb = new_session(store, &b).await;
    let mut req = append_req(&a, sa.id, 1, vec![run_created(RunId::new(), "a")], None);
    req.idempotency = Some(key("shared", "fp", LONG));
    store.append(req).await.expect("tenant a claims");
    assert!(store.get_idempotency(&b, "shared").await.expect("read").is_none(), "keys are per tenant");
    let rb = RunId::new();
    let mut req = append_req(&b, sb.id, 1, vec![run_created(rb, "b")], None);
    req.idempotency = Some(key("shared", "fp", LONG));
    store.append(req).await.expect("tenant b claims the same key for itself");
    assert_eq!(store.get_idempotency(&b, "shared").await.expect("read").expect("b's").run_id, Some(rb));

    // A claim that has expired is neither reported nor in the way.
    let mut req = append_req(
        &a,
        sa.id,
        head(store, &a, sa.id).await,
        vec![session_event(EventBody::ItemsAdded { items: vec![Message::User { content: "x".into() }] })],
        None,
    );
    req.idempotency = Some(IdempotencyKey {
        key: "old".into(),
        fingerprint: "fp".into(),
        expires_at: Timestamp::now().plus(Duration::from_millis(50)),
    });
    store.append(req).await.expect("short claim");
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(store.get_idempotency(&a, "old").await.expect("read").is_none(), "expired");
    let renewed = RunId::new();
    let mut req = append_req(&a, sa.id, head(store, &a, sa.id).await, vec![run_created(renewed, "again")], None);
    req.idempotency = Some(key("old", "fp-new", LONG));
    store.append(req).await.expect("an expired key is claimed anew");
    assert_eq!(store.get_idempotency(&a, "old").await.expect("read").expect("new").run_id, Some(renewed));

    // Deleting tenant a's session forgets its keys, not tenant b's.
    for r in store.active_runs(&a, &sa.id).await.expect("runs") {
        push(store, &a, sa.id, vec![cancel_requested(r.id, "done")]).await;
    }
    store.delete_session(&a, &sa.id).await.expect("delete");
    assert!(store.get_idempotency(&a, "shared").await.expect("read").is_none());
    assert!(store.get_idempotency(&a, "old").await.expect("read").is_none());
    assert!(store.get_idempotency(&b, "shared").await.expect("read").is_some());
}

// ---------------------------------------------------------------------------------------
// The vault's rows.

fn sealed(tenant: &TenantId, scope: &str, name: &str, version: u32, bytes: &[u8]) -> SealedSecret {
    SealedSecret {
        tenant_id: tenant.clone(),
        scope: scope.into(),
        name: name.into(),
        version,
        key_version: 1,
        nonce: vec![7; 24],
        ciphertext: bytes.to_vec(),
        created_at: Timestamp::now(),
    }
}

/// Secrets are stored as given, only as the next version of their name (a stale writer gets
/// `Conflict` and changes nothing), listed by scope then name, per tenant; a tenant's first data
/// key is the first one stored, whoever races for it.
pub async fn vault_rows_are_versioned_tenant_scoped_and_first_key_wins(make: &impl MakeStore) {
    let fx = make.make(Config::default()).await;
    let store = fx.store.as_ref();
    let (a, b) = (tenant_a(), tenant_b());
    store.put_secret(sealed(&a, "tenant", "TOKEN", 1, b"one")).await.expect("first version");
    let stale = store.put_secret(sealed(&a, "tenant", "TOKEN", 1, b"other")).await;
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    let skip = store.put_secret(sealed(&a, "tenant", "TOKEN", 3, b"skip")).await;
    assert!(matches!(skip, Err(Error::Conflict { .. })), "{skip:?}");
    assert_eq!(store.get_secret(&a, "tenant", "TOKEN").await.expect("get").expect("stored").ciphertext, b"one");
    store.put_secret(sealed(&a, "tenant", "TOKEN", 2, b"two")).await.expect("second version");
    let got = store.get_secret(&a, "tenant", "TOKEN").await.expect("get").expect("stored");
    assert_eq!((got.version, got.ciphertext.as_slice(), got.nonce.len()), (2, &b"two"[..], 24));
    store.put_secret(sealed(&a, "user:alice", "TOKEN", 1, b"alice")).await.expect("a user's own");
    store.put_secret(sealed(&a, "tenant", "ANOTHER", 1, b"x")).await.expect("another");
    let listed: Vec<(String, String, u32)> =
        store.list_secrets(&a).await.expect("list").into_iter().map(|s| (s.scope, s.name, s.version)).collect();
    assert_eq!(
        listed,
        [
            ("tenant".into(), "ANOTHER".into(), 1),
            ("tenant".into(), "TOKEN".into(), 2),
            ("user:alice".into(), "TOKEN".into(), 1)
        ]
    );
    assert!(store.get_secret(&b, "tenant", "TOKEN").await.expect("get").is_none(), "tenants are isolated");
    assert!(store.list_secrets(&b).await.expect("list").is_empty());
    assert!(!store.delete_secret(&b, "tenant", "TOKEN").await.expect("delete"), "not b's to delete");
    assert!(store.delete_secret(&a, "tenant", "TOKEN").await.expect("delete"));
    assert!(store.get_secret(&a, "tenant", "TOKEN").await.expect("get").is_none());
    store.put_secret(sealed(&a, "tenant", "TOKEN", 1, b"anew")).await.expect("a deleted name starts again at 1");

    assert!(store.get_tenant_key(&a).await.expect("key").is_none());
    let key = |t: &TenantId, wrapped: &[u8]| WrappedKey {
        tenant_id: t.clone(),
        version: 1,
        nonce: vec![1; 24],
        wrapped: wrapped.to_vec(),
        created_at: Timestamp::now(),
    };
    let first = store.put_tenant_key(key(&a, b"first")).await.expect("first key");
    assert_eq!(first.wrapped, b"first");
    let second = store.put_tenant_key(key(&a, b"second")).await.expect("racing key");
    assert_eq!(second.wrapped, b"first", "the first key stored wins");
    assert_eq!(store.get_tenant_key(&a).await.expect("key").expect("stored").wrapped, b"first");
    assert!(store.get_tenant_key(&b).await.expect("key").is_none());
}
