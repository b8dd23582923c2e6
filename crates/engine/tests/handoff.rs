//! Runs that continue where an earlier run of their session stopped (`pause: complete`, tool
//! outputs as input, carried approvals), per-run agents, and conversation edits — on a real
//! SQLite store, with the scripted model behind a wrapper that records every request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use stead_core::agent::SpecFormat;
use stead_core::context::{MISSING_RESULT, is_well_formed};
use stead_core::event::{AgentRef, ApprovalDecision, CarriedCall, Event, EventBody};
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::message::{Message, ToolCall};
use stead_core::run::RunStatus;
use stead_engine::{Decider, DecisionInput, Engine, EngineOptions, Error, RunInput, ToolRegistry};
use stead_model::{ModelProvider, ModelRequest, ModelResponse, ProviderDefaults, Providers, ScriptedModel};
use stead_store::{ApprovalFilter, ApprovalRecord, Page, RunRecord};
use stead_store_sqlite::{SqliteOptions, SqliteStore};
use tokio_util::sync::CancellationToken;

/// The scripted model, keeping a copy of every request it gets.
#[derive(Default)]
struct Recording {
    inner: ScriptedModel,
    seen: Mutex<Vec<ModelRequest>>,
}

#[async_trait]
impl ModelProvider for Recording {
    async fn complete(
        &self,
        req: &ModelRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ModelResponse, stead_model::Error> {
        self.seen.lock().unwrap().push(req.clone());
        self.inner.complete(req, on_delta).await
    }
}

struct Setup {
    engine: Engine,
    tenant: TenantId,
    model: Arc<Recording>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let model = Arc::new(Recording::default());
    let engine = Engine::new(
        store as Arc<dyn stead_store::Store>,
        Providers::with_override(ProviderDefaults::default(), model.clone()),
        ToolRegistry::with_builtins(),
        EngineOptions { poll_interval: Duration::from_millis(100), ..EngineOptions::default() },
    );
    let stop = CancellationToken::new();
    tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run(stop).await }
    });
    Setup { engine, tenant: TenantId::default_tenant(), model, stop, _dir: dir }
}

const WAIT: Duration = Duration::from_secs(30);

impl Setup {
    async fn agent(&self, spec: &str) -> AgentRef {
        let (v, _) = self.engine.apply_agent(&self.tenant, spec, SpecFormat::Yaml).await.unwrap();
        AgentRef { name: v.name, version: v.version }
    }

    async fn session(&self, spec: &str) -> SessionId {
        let agent = self.agent(spec).await;
        self.engine.create_session(&self.tenant, "test", &agent.name, None, serde_json::json!({})).await.unwrap().id
    }

    async fn wait(&self, run: &RunId) -> RunRecord {
        self.engine.wait_for_run(&self.tenant, run, WAIT).await.unwrap()
    }

    async fn run(&self, session: &SessionId, text: &str) -> RunRecord {
        let run = self
            .engine
            .create_run(&self.tenant, "test", session, vec![Message::User { content: text.into() }])
            .await
            .unwrap();
        self.wait(&run.id).await
    }

    async fn run_with(&self, session: &SessionId, input: RunInput) -> Result<RunRecord, Error> {
        let run = self.engine.create_run_with(&self.tenant, "test", session, input).await?;
        Ok(self.wait(&run.id).await)
    }

    async fn events(&self, session: &SessionId) -> Vec<Event> {
        self.engine.store().read_events(&self.tenant, session, 0, 10_000).await.unwrap()
    }

    async fn run_events(&self, session: &SessionId, run: &RunId) -> Vec<EventBody> {
        self.events(session).await.into_iter().filter(|e| e.run_id == Some(*run)).map(|e| e.body).collect()
    }

    async fn runs(&self, session: &SessionId) -> Vec<RunRecord> {
        self.engine.store().list_runs(&self.tenant, session, &Page { after: None, limit: 100 }).await.unwrap()
    }

    async fn head(&self, session: &SessionId) -> u64 {
        self.engine.store().get_session(&self.tenant, session).await.unwrap().head_seq
    }

    async fn approvals(&self, session: &SessionId) -> Vec<ApprovalRecord> {
        let filter = ApprovalFilter { pending_only: false, session: Some(*session) };
        self.engine.store().list_approvals(&self.tenant, &filter, &Page { after: None, limit: 100 }).await.unwrap()
    }

    fn requests(&self) -> Vec<ModelRequest> {
        self.model.seen.lock().unwrap().clone()
    }

    fn last_messages(&self) -> Vec<Message> {
        self.requests().last().expect("the model was called").messages.iter().map(|m| (**m).clone()).collect()
    }
}

fn kinds(bodies: &[EventBody]) -> Vec<&'static str> {
    bodies.iter().map(EventBody::kind).collect()
}

fn user(text: &str) -> Message {
    Message::User { content: text.into() }
}

fn decision(decision: ApprovalDecision, reason: &str) -> DecisionInput {
    DecisionInput { decision, reason: Some(reason.into()), arguments: None, output: None }
}

/// Every tool call in `messages` is answered right after its call's turn, and nothing is
/// answered with the placeholder for a missing result.
fn answered_in_place(messages: &[Message]) -> bool {
    is_well_formed(messages)
        && !messages.iter().any(|m| matches!(m, Message::Tool { content, .. } if content == MISSING_RESULT))
}

const CLIENT: &str = "name: handoff\nmodel: {provider: scripted, name: s}\ninstructions: You hand off.\ntools:\n  - {name: lookup, type: client}\npause: complete\n";

const GATED: &str = "name: gated\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: echo, type: builtin, require_approval: always}\npause: complete\n";

/// The call a completed run ended on, and its open approval if it has one.
fn open_call(run: &RunRecord) -> (ToolCall, Option<ApprovalId>) {
    assert_eq!(run.state.pending.len(), 1, "{run:?}");
    let p = &run.state.pending[0];
    (p.call.clone(), p.approval.as_ref().filter(|a| a.decision.is_none()).map(|a| a.id))
}

#[tokio::test]
async fn a_client_call_left_open_is_answered_by_the_next_runs_input() {
    let s = setup();
    let session = s.session(CLIENT).await;
    let first = s.run(&session, "call lookup {\"q\": \"apples\"}").await;
    assert_eq!(first.status(), RunStatus::Completed, "pause: complete ends the run instead of waiting: {first:?}");
    let (call, approval) = open_call(&first);
    assert_eq!((call.name.as_str(), call.arguments.as_str(), approval), ("lookup", "{\"q\": \"apples\"}", None));
    assert_eq!(
        kinds(&s.run_events(&session, &first.id).await),
        vec!["run_created", "model_responded", "run_completed"],
        "no requires_action: the call stays open in the conversation"
    );

    let answer =
        Message::Tool { call_id: call.id.clone(), name: "lookup".into(), content: "42 apples".into(), is_error: false };
    let second = s.run_with(&session, RunInput { input: vec![answer.clone()], ..RunInput::default() }).await.unwrap();
    assert_eq!(second.status(), RunStatus::Completed, "{second:?}");
    assert_eq!(second.state.output.as_deref(), Some("lookup returned: 42 apples"), "the model used the answer");
    let messages = s.last_messages();
    assert_eq!(
        messages,
        vec![
            Message::System { content: "You hand off.".into() },
            user("call lookup {\"q\": \"apples\"}"),
            Message::Assistant { content: None, tool_calls: vec![call] },
            answer,
        ],
        "the output answers the call right where it was made"
    );
    assert_eq!(s.requests().len(), 2, "one model call per run");
    assert!(s.engine.verify_session(&s.tenant, &session).await.unwrap().ok);
}

#[tokio::test]
async fn a_carried_approval_approved_with_the_next_run_runs_the_call_there() {
    let s = setup();
    let session = s.session(GATED).await;
    let first = s.run(&session, "call echo {\"text\": \"approved text\"}").await;
    assert_eq!(first.status(), RunStatus::Completed, "pause: complete ends the run on the question: {first:?}");
    let (call, approval) = open_call(&first);
    let approval = approval.expect("an open approval");
    assert_eq!(
        kinds(&s.run_events(&session, &first.id).await),
        vec!["run_created", "model_responded", "approval_requested", "run_completed"]
    );
    let asked = s.approvals(&session).await;
    assert_eq!(asked.len(), 1);
    assert_eq!((asked[0].id, asked[0].run_id, asked[0].decision), (approval, first.id, None));

    let second = s
        .run_with(
            &session,
            RunInput {
                carried: vec![CarriedCall { from_run: first.id, call: call.clone(), approval_id: approval }],
                decisions: vec![(approval, decision(ApprovalDecision::Approve, "fine"))],
                decider: Some(tester()),
                ..RunInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(second.status(), RunStatus::Completed, "{second:?}");
    assert_eq!(second.state.output.as_deref(), Some("echo returned: approved text"));
    let record = s.engine.store().get_approval(&s.tenant, &approval).await.unwrap();
    assert_eq!(record.run_id, second.id, "the approval moved to the run that took the call over");
    assert_eq!(record.decision, Some(ApprovalDecision::Approve));
    assert_eq!(record.decided_by.as_deref(), Some("principal:test"));
    assert_eq!(record.decision_reason.as_deref(), Some("fine"));
    let bodies = s.run_events(&session, &second.id).await;
    assert_eq!(
        kinds(&bodies),
        vec![
            "run_created",
            "approval_decided",
            "tool_call_started",
            "tool_call_completed",
            "model_responded",
            "run_completed"
        ],
        "the call runs in the second run"
    );
    assert!(
        matches!(&bodies[3], EventBody::ToolCallCompleted { call_id, output, is_error: false, .. } if *call_id == call.id && output == "approved text")
    );
    assert_eq!(s.run_events(&session, &first.id).await.len(), 4, "nothing more is written to the first run");
    assert!(answered_in_place(&s.last_messages()), "{:?}", s.last_messages());

    // It moved once: carrying it again is the caller's mistake, and creates nothing.
    let (runs, head) = (s.runs(&session).await.len(), s.head(&session).await);
    let again = s
        .engine
        .create_run_with(
            &s.tenant,
            "test",
            &session,
            RunInput {
                carried: vec![CarriedCall { from_run: first.id, call, approval_id: approval }],
                ..RunInput::default()
            },
        )
        .await;
    assert!(matches!(again, Err(Error::InvalidInput(_))), "{again:?}");
    assert_eq!((s.runs(&session).await.len(), s.head(&session).await), (runs, head));
}

#[tokio::test]
async fn a_carried_approval_denied_with_the_next_run_tells_the_model() {
    let s = setup();
    let session = s.session(GATED).await;
    let first = s.run(&session, "call echo {\"text\": \"secret\"}").await;
    let (call, approval) = open_call(&first);
    let approval = approval.expect("an open approval");
    let second = s
        .run_with(
            &session,
            RunInput {
                carried: vec![CarriedCall { from_run: first.id, call: call.clone(), approval_id: approval }],
                decisions: vec![(approval, decision(ApprovalDecision::Deny, "not today"))],
                decider: Some(tester()),
                ..RunInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(second.status(), RunStatus::Completed, "{second:?}");
    let bodies = s.run_events(&session, &second.id).await;
    assert!(!bodies.iter().any(|b| matches!(b, EventBody::ToolCallStarted { .. })), "a denied call never runs");
    let told = bodies
        .iter()
        .find_map(|b| match b {
            EventBody::ToolCallCompleted { call_id, output, is_error: true, .. } if *call_id == call.id => Some(output),
            _ => None,
        })
        .expect("the denial is recorded as the call's result");
    assert!(told.contains("denied by principal:test: not today"), "{told}");
    assert_eq!(second.state.output.as_deref(), Some(format!("echo returned: {told}").as_str()));
    let record = s.engine.store().get_approval(&s.tenant, &approval).await.unwrap();
    assert_eq!((record.run_id, record.decision), (second.id, Some(ApprovalDecision::Deny)));
}

#[tokio::test]
async fn a_carried_approval_can_be_decided_later_by_an_approver() {
    let s = setup();
    let session = s.session(GATED).await;
    let first = s.run(&session, "call echo {\"text\": \"later\"}").await;
    let (call, approval) = open_call(&first);
    let approval = approval.expect("an open approval");
    // A decision for an approval the run does not carry is refused before anything is written.
    let head = s.head(&session).await;
    let stray = s
        .engine
        .create_run_with(
            &s.tenant,
            "test",
            &session,
            RunInput {
                input: vec![user("hi")],
                decisions: vec![(approval, decision(ApprovalDecision::Approve, "sneaky"))],
                decider: Some(tester()),
                ..RunInput::default()
            },
        )
        .await;
    assert!(matches!(stray, Err(Error::InvalidInput(_))), "{stray:?}");
    assert_eq!(s.head(&session).await, head);

    let second = s
        .run_with(
            &session,
            RunInput {
                carried: vec![CarriedCall { from_run: first.id, call, approval_id: approval }],
                ..RunInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(second.status(), RunStatus::AwaitingApproval, "undecided: the run waits, holding no worker");
    assert_eq!(second.lease, None);
    let boss = Decider { id: "boss".into(), roles: vec!["approver".into()] };
    let decided =
        s.engine.decide_approval(&s.tenant, &boss, &approval, decision(ApprovalDecision::Approve, "ok")).await;
    assert_eq!(decided.unwrap().run_id, second.id);
    let second = s.wait(&second.id).await;
    assert_eq!(second.status(), RunStatus::Completed, "{second:?}");
    assert_eq!(second.state.output.as_deref(), Some("echo returned: later"));
    assert_eq!(s.run_events(&session, &first.id).await.last().map(EventBody::kind), Some("run_completed"));
}

/// A carried call answered together with new user input: the model must still see the result
/// right after the call (providers reject a tool result that does not follow its call), and
/// not the placeholder for a result that was never recorded.
#[tokio::test]
async fn a_carried_call_with_new_input_keeps_the_conversation_well_formed() {
    let s = setup();
    let session = s.session(GATED).await;
    let first = s.run(&session, "call echo {\"text\": \"hello\"}").await;
    let (call, approval) = open_call(&first);
    let approval = approval.expect("an open approval");
    let second = s
        .run_with(
            &session,
            RunInput {
                input: vec![user("and then say thanks")],
                carried: vec![CarriedCall { from_run: first.id, call, approval_id: approval }],
                decisions: vec![(approval, decision(ApprovalDecision::Approve, "fine"))],
                decider: Some(tester()),
                ..RunInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(second.status(), RunStatus::Completed, "{second:?}");
    let messages = s.last_messages();
    assert!(answered_in_place(&messages), "the call's result is out of place or replaced: {messages:#?}");
}

/// The approver saw (and approved) one call; what runs must be that call, not another one the
/// caller put in `CarriedCall::call` under the same call id.
#[tokio::test]
async fn a_carried_call_must_be_the_call_that_was_asked_about() {
    let s = setup();
    let session = s.session(GATED).await;
    let first = s.run(&session, "call echo {\"text\": \"one\"}").await;
    let (call, approval) = open_call(&first);
    let approval = approval.expect("an open approval");
    let swapped = ToolCall { arguments: "{\"text\": \"something else entirely\"}".into(), ..call };
    let head = s.head(&session).await;
    let result = s
        .engine
        .create_run_with(
            &s.tenant,
            "test",
            &session,
            RunInput {
                carried: vec![CarriedCall { from_run: first.id, call: swapped, approval_id: approval }],
                decisions: vec![(approval, decision(ApprovalDecision::Approve, "looks fine"))],
                decider: Some(tester()),
                ..RunInput::default()
            },
        )
        .await;
    if let Ok(run) = &result {
        let run = s.wait(&run.id).await;
        let ran: Vec<String> = s
            .run_events(&session, &run.id)
            .await
            .into_iter()
            .filter_map(|b| match b {
                EventBody::ToolCallCompleted { output, .. } => Some(output),
                _ => None,
            })
            .collect();
        panic!("a call other than the approved one was accepted; it ran with output {ran:?}");
    }
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
    assert_eq!(s.head(&session).await, head, "nothing was written");
    assert_eq!(s.engine.store().get_approval(&s.tenant, &approval).await.unwrap().run_id, first.id);
}

#[tokio::test]
async fn a_stale_expected_head_creates_no_run() {
    let s = setup();
    let session = s.session(CLIENT).await;
    let first = s.run(&session, "hello").await;
    assert_eq!(first.status(), RunStatus::Completed);
    let seen = s.head(&session).await;
    s.engine.add_items(&s.tenant, "test", &session, vec![user("meanwhile")]).await.unwrap();
    let moved = s.head(&session).await;
    assert_eq!(moved, seen + 1);
    let runs = s.runs(&session).await.len();
    let stale = s
        .engine
        .create_run_with(
            &s.tenant,
            "test",
            &session,
            RunInput { input: vec![user("continue")], expected_head: Some(seen), ..RunInput::default() },
        )
        .await;
    match stale {
        Err(Error::HeadMoved { session: sid, expected, actual }) => {
            assert_eq!((sid, expected, actual), (session, seen, moved));
        }
        other => panic!("expected HeadMoved, got {other:?}"),
    }
    assert_eq!((s.runs(&session).await.len(), s.head(&session).await), (runs, moved), "no run was created");
    let fresh = s
        .run_with(
            &session,
            RunInput { input: vec![user("continue")], expected_head: Some(moved), ..RunInput::default() },
        )
        .await
        .unwrap();
    assert_eq!(fresh.status(), RunStatus::Completed);
    assert_eq!(fresh.state.created_seq, moved + 1, "created exactly after the head it named");
}

#[tokio::test]
async fn added_items_reach_the_model_and_removed_ones_do_not() {
    let s = setup();
    let session = s.session(CLIENT).await;
    s.run(&session, "first question").await;
    let added = s
        .engine
        .add_items(
            &s.tenant,
            "test",
            &session,
            vec![
                user("remember: the code is 7"),
                Message::Assistant { content: Some("noted".into()), tool_calls: vec![] },
            ],
        )
        .await
        .unwrap();
    assert_eq!((added.run_id, added.body.kind()), (None, "items_added"));
    let run = s.run(&session, "what is the code?").await;
    assert_eq!(run.status(), RunStatus::Completed);
    assert_eq!(run.state.output.as_deref(), Some("echo: what is the code?"));
    assert_eq!(
        s.last_messages(),
        vec![
            Message::System { content: "You hand off.".into() },
            user("first question"),
            Message::Assistant { content: Some("echo: first question".into()), tool_calls: vec![] },
            user("remember: the code is 7"),
            Message::Assistant { content: Some("noted".into()), tool_calls: vec![] },
            user("what is the code?"),
        ],
        "the added items sit where they were added"
    );

    let removed = s.engine.remove_item(&s.tenant, "test", &session, added.seq, 0).await.unwrap();
    assert_eq!(removed.body, EventBody::ItemRemoved { seq: added.seq, index: 0 });
    // An item of a run's input can be removed too.
    let first_input =
        s.events(&session).await.into_iter().find(|e| matches!(e.body, EventBody::RunCreated { .. })).unwrap();
    s.engine.remove_item(&s.tenant, "test", &session, first_input.seq, 0).await.unwrap();
    s.run(&session, "again").await;
    let messages = s.last_messages();
    assert!(!messages.contains(&user("remember: the code is 7")), "a removed item is gone: {messages:#?}");
    assert!(!messages.contains(&user("first question")), "a removed input is gone: {messages:#?}");
    assert!(messages.contains(&Message::Assistant { content: Some("noted".into()), tool_calls: vec![] }));
    assert!(messages.contains(&user("what is the code?")));
    assert_eq!(messages.last(), Some(&user("again")));
    let log = s.events(&session).await;
    assert!(log.iter().any(|e| e.seq == added.seq && e.body == added.body), "the log keeps the removed item");
}

#[tokio::test]
async fn a_run_with_another_agent_version_uses_its_model_and_instructions() {
    let s = setup();
    let base = "name: base\nmodel: {provider: scripted, name: base-model}\ninstructions: BASE\ntools:\n  - {name: clock, type: builtin}\n";
    let session = s.session(base).await;
    let alt = s
        .agent("name: alt\nmodel: {provider: scripted, name: alt-model}\ninstructions: ALT\ntools:\n  - {name: echo, type: builtin}\n")
        .await;
    // A second version of `base`, to pin the first explicitly.
    let base2 = s.agent(&base.replace("BASE", "BASE TWO")).await;
    assert_eq!((base2.name.as_str(), base2.version), ("base", 2));

    let run = s
        .run_with(&session, RunInput { input: vec![user("hi")], agent: Some(alt.clone()), ..RunInput::default() })
        .await
        .unwrap();
    assert_eq!(run.status(), RunStatus::Completed, "{run:?}");
    assert_eq!(run.state.agent, Some(alt));
    let req = s.requests().pop().unwrap();
    assert_eq!(req.model, "alt-model");
    assert_eq!(*req.messages[0], Message::System { content: "ALT".into() });
    assert_eq!(req.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["echo"]);
    let responded = s.run_events(&session, &run.id).await.into_iter().find_map(|b| match b {
        EventBody::ModelResponded { model, .. } => Some(model),
        _ => None,
    });
    assert_eq!(responded.as_deref(), Some("alt-model"));
    // The alt agent's tools are the ones that run.
    let run = s
        .run_with(
            &session,
            RunInput {
                input: vec![user("call echo {\"text\": \"via alt\"}")],
                agent: Some(AgentRef { name: "alt".into(), version: 1 }),
                ..RunInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(run.state.output.as_deref(), Some("echo returned: via alt"), "{run:?}");

    // Without `agent`, the session's own version (1, not the newer 2).
    let plain = s.run(&session, "hi").await;
    assert_eq!(plain.state.agent, None);
    let req = s.requests().pop().unwrap();
    assert_eq!((req.model.as_str(), &*req.messages[0]), ("base-model", &Message::System { content: "BASE".into() }));
    let pinned = s
        .run_with(&session, RunInput { input: vec![user("hi")], agent: Some(base2), ..RunInput::default() })
        .await
        .unwrap();
    assert_eq!(pinned.status(), RunStatus::Completed);
    assert_eq!(*s.requests().pop().unwrap().messages[0], Message::System { content: "BASE TWO".into() });
}

/// A run naming an agent version that does not exist can never run: it must be refused up
/// front rather than queued (a queued run that can't start blocks every later run).
#[tokio::test]
async fn a_run_naming_an_unknown_agent_is_refused() {
    let s = setup();
    let session = s.session(CLIENT).await;
    let runs = s.runs(&session).await.len();
    let head = s.head(&session).await;
    let result = s
        .engine
        .create_run_with(
            &s.tenant,
            "test",
            &session,
            RunInput {
                input: vec![user("hi")],
                agent: Some(AgentRef { name: "nobody".into(), version: 9 }),
                ..RunInput::default()
            },
        )
        .await;
    if let Ok(run) = &result {
        let after = s.engine.wait_for_run(&s.tenant, &run.id, Duration::from_secs(3)).await.unwrap();
        let next = s.engine.create_run(&s.tenant, "test", &session, vec![user("next")]).await.unwrap();
        let next = s.engine.wait_for_run(&s.tenant, &next.id, Duration::from_secs(3)).await.unwrap();
        panic!(
            "a run with an unknown agent was created ({}), and the session's next run is {}",
            after.status().as_str(),
            next.status().as_str()
        );
    }
    assert!(result.is_err());
    assert_eq!((s.runs(&session).await.len(), s.head(&session).await), (runs, head));
}

#[tokio::test]
async fn session_metadata_updates_and_run_deletion_are_logged() {
    let s = setup();
    let session = s.session(GATED).await;
    let updated =
        s.engine.update_session_metadata(&s.tenant, "test", &session, serde_json::json!({"title": "t"})).await.unwrap();
    assert_eq!(updated.metadata, serde_json::json!({"title": "t"}));
    let last = s.events(&session).await.pop().unwrap();
    assert_eq!(
        (last.run_id, last.body),
        (None, EventBody::SessionUpdated { metadata: serde_json::json!({"title": "t"}) })
    );

    // An unfinished run (here: a carried approval nobody decided yet) can't be deleted.
    let first = s.run(&session, "call echo {\"text\": \"x\"}").await;
    let (call, approval) = open_call(&first);
    let waiting = s
        .run_with(
            &session,
            RunInput {
                carried: vec![CarriedCall { from_run: first.id, call, approval_id: approval.unwrap() }],
                ..RunInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(waiting.status(), RunStatus::AwaitingApproval);
    let head = s.head(&session).await;
    let refused = s.engine.delete_run(&s.tenant, "test", &waiting.id).await;
    assert!(matches!(refused, Err(Error::InvalidInput(_))), "{refused:?}");
    assert_eq!(s.head(&session).await, head);
    assert!(!s.engine.store().get_run(&s.tenant, &waiting.id).await.unwrap().state.deleted);

    s.engine.delete_run(&s.tenant, "test", &first.id).await.unwrap();
    let deleted = s.engine.store().get_run(&s.tenant, &first.id).await.unwrap();
    assert!(deleted.state.deleted);
    assert_eq!(deleted.status(), RunStatus::Completed);
    let head = s.head(&session).await;
    s.engine.delete_run(&s.tenant, "test", &first.id).await.unwrap();
    assert_eq!(s.head(&session).await, head, "deleting twice writes nothing more");
    assert!(s.engine.verify_session(&s.tenant, &session).await.unwrap().ok);
}

/// Items added while a run is between a tool call and its result: the run's next model call
/// must still see the result right after the call (and a run restarted from the log must see
/// the same conversation as the one that kept running).
#[tokio::test]
async fn items_added_during_a_tool_call_keep_the_conversation_well_formed() {
    let s = setup();
    let session =
        s.session("name: slow\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: sleep, type: builtin}\n").await;
    let run = s.engine.create_run(&s.tenant, "test", &session, vec![user("call sleep {\"ms\": 1500}")]).await.unwrap();
    let started = async {
        loop {
            if s.run_events(&session, &run.id).await.iter().any(|b| matches!(b, EventBody::ToolCallStarted { .. })) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, started).await.expect("the tool starts");
    s.engine.add_items(&s.tenant, "test", &session, vec![user("a side note")]).await.unwrap();
    let run = s.wait(&run.id).await;
    assert_eq!(run.status(), RunStatus::Completed, "{run:?}");
    let messages = s.last_messages();
    assert!(answered_in_place(&messages), "the sleep result is out of place or replaced: {messages:#?}");
    assert!(messages.contains(&user("a side note")), "the item is in the conversation");
}

/// The caller acting on the test's behalf, holding every role.
fn tester() -> Decider {
    Decider { id: "test".into(), roles: vec!["*".into()] }
}

/// A decision carried with a new run is held to the approval's role like any other, and a
/// refused one writes nothing.
#[tokio::test]
async fn carried_decisions_need_the_approvals_role() {
    let s = setup();
    let session = s.session(GATED).await;
    let first = s.run(&session, "call echo {\"text\": \"one\"}").await;
    let (call, approval) = open_call(&first);
    let approval = approval.expect("an open approval");
    let head = s.head(&session).await;
    let carried = vec![CarriedCall { from_run: first.id, call, approval_id: approval }];
    let nobody = Decider { id: "intern".into(), roles: vec!["reader".into()] };
    let result = s
        .engine
        .create_run_with(
            &s.tenant,
            "intern",
            &session,
            RunInput {
                carried: carried.clone(),
                decisions: vec![(approval, decision(ApprovalDecision::Approve, "sure"))],
                decider: Some(nobody),
                ..RunInput::default()
            },
        )
        .await;
    assert!(matches!(result, Err(Error::Forbidden(_))), "{result:?}");
    let missing = s
        .engine
        .create_run_with(
            &s.tenant,
            "intern",
            &session,
            RunInput {
                carried,
                decisions: vec![(approval, decision(ApprovalDecision::Approve, "sure"))],
                ..RunInput::default()
            },
        )
        .await;
    assert!(matches!(missing, Err(Error::InvalidInput(_))), "{missing:?}");
    assert_eq!(s.head(&session).await, head, "nothing was written");
    let record = s.engine.store().get_approval(&s.tenant, &approval).await.unwrap();
    assert_eq!((record.run_id, record.decision), (first.id, None));
}
