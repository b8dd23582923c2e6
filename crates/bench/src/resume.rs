//! Figure 3: how long a waiting run takes to resume — from just before the client's tool
//! outputs are submitted to the moment the next model call starts — on sessions of a given
//! length.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use stead_core::event::{Actor, EventBody, NewEvent};
use stead_core::ids::{RunId, SessionId};
use stead_core::message::{Message, ToolCall, Usage};
use stead_core::run::{RunStatus, idempotency_key};
use stead_engine::ToolOutputInput;
use stead_store::{AppendRequest, Store};

use crate::harness::Harness;

const RESUMER: &str = "name: resumer\nmodel: {provider: scripted, name: bench}\ntools:\n  \
                       - {name: echo, type: builtin}\n  - {name: ask, type: client}\n";

/// Events per history append (whole runs; one commit each).
const BATCH_EVENTS: usize = 3000;

pub struct Resume {
    /// Events in each measured session before the first sample.
    pub events: u64,
    pub sessions: usize,
    /// Submit → the next model call starts.
    pub to_model: Vec<Duration>,
    /// Submit → `submit_tool_outputs` returned (its append is durable).
    pub to_submitted: Vec<Duration>,
}

/// Nearest-rank percentile of `samples` (sorted here).
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub async fn resume(base: &Path, size: u64, samples: usize) -> anyhow::Result<Resume> {
    let mut h = Harness::start(base, true)?;
    let agent = h.agent(RESUMER).await?;
    // Samples add 6 events each; spread them so no session grows by more than ~6%.
    let per_session = ((size / 100) as usize).clamp(1, samples);
    let count = samples.div_ceil(per_session);
    let mut sessions = Vec::with_capacity(count);
    for _ in 0..count {
        let s = h.session(&agent).await?;
        fill(&h, &s, size).await?;
        sessions.push(s);
    }
    // Warm the engine's caches (agent spec, prepared statements) on a session of its own.
    let warm = h.session(&agent).await?;
    fill(&h, &warm, size.min(1000)).await?;
    for _ in 0..3 {
        sample(&mut h, &warm).await?;
    }
    let mut to_model = Vec::with_capacity(samples);
    let mut to_submitted = Vec::with_capacity(samples);
    for i in 0..samples {
        let (submitted, started) = sample(&mut h, &sessions[i / per_session]).await?;
        to_submitted.push(submitted);
        to_model.push(started);
    }
    h.close().await;
    Ok(Resume { events: size, sessions: count, to_model, to_submitted })
}

/// One resume: a run that calls the client tool `ask` and waits; then its output is
/// submitted and the time until the model is called again is taken.
async fn sample(h: &mut Harness, session: &SessionId) -> anyhow::Result<(Duration, Duration)> {
    let run = h.create_run(session, "call ask {}").await?;
    let waiting = h.settle(&run.id, RunStatus::RequiresAction).await?;
    let call_id = waiting
        .state
        .pending
        .iter()
        .find(|p| p.awaiting_client)
        .map(|p| p.call.id.clone())
        .context("a waiting run without a client call")?;
    while h.calls.try_recv().is_ok() {}
    let output =
        ToolOutputInput { call_id, output: r#"{"approved": true, "note": "go ahead"}"#.into(), is_error: false };
    let t0 = Instant::now();
    h.engine.submit_tool_outputs(&h.tenant, "bench", &run.id, vec![output]).await?;
    let submitted = t0.elapsed();
    let started = match tokio::time::timeout(Duration::from_secs(60), h.calls.recv()).await {
        Ok(Some(at)) => at - t0,
        Ok(None) => bail!("the model observer closed"),
        Err(_) => bail!("run {} was not resumed within 60 s", run.id),
    };
    h.settle(&run.id, RunStatus::Completed).await?;
    Ok((submitted, started))
}

/// Appends completed runs to `session` until it holds exactly `size` events. Runs are
/// realistic: a question, a tool call and its result, and an answer.
async fn fill(h: &Harness, session: &SessionId, size: u64) -> anyhow::Result<()> {
    let store = h.store.as_ref();
    let mut head = store.get_session(&h.tenant, session).await?.head_seq;
    if size < head + 7 {
        bail!("a session of {size} events is too short to fill");
    }
    let mut remaining = size - head;
    let mut batch: Vec<NewEvent> = Vec::new();
    let mut n = 0usize;
    while remaining > 0 {
        let run = match remaining {
            r if r >= 8 => full_run(session, n),
            2 => cancelled_run(n),
            3 | 5 => answered_run(n),
            4 | 7 => cancelled_run(n),
            6 => full_run(session, n),
            _ => unreachable!("the loop never leaves a single event to fill"),
        };
        remaining -= run.len() as u64;
        n += 1;
        batch.extend(run);
        if batch.len() >= BATCH_EVENTS || remaining == 0 {
            let events = std::mem::take(&mut batch);
            let len = events.len() as u64;
            let req = AppendRequest {
                tenant_id: h.tenant.clone(),
                session_id: *session,
                expected_head: head,
                events,
                fence: None,
                idempotency: None,
            };
            store.append(req).await.context("appending history")?;
            head += len;
        }
    }
    Ok(())
}

fn user(n: usize) -> String {
    format!(
        "Request {n}: please look up the latest figures for account {:05}, compare them with last \
         quarter and tell me whether anything needs my attention.",
        n * 7919 % 100_000
    )
}

fn event(run: RunId, actor: &Actor, body: EventBody) -> NewEvent {
    NewEvent { run_id: Some(run), actor: actor.clone(), body }
}

/// 6 events: input, a tool call, its intent and result, the answer, completion.
fn full_run(session: &SessionId, n: usize) -> Vec<NewEvent> {
    let run = RunId::new();
    let worker = Actor::worker("history");
    let call = ToolCall {
        id: format!("call_{n}_1"),
        name: "echo".into(),
        arguments: format!(
            r#"{{"text":"account {:05}: revenue 1{:03}.{:02} k, costs 8{:02}.{:02} k, open tickets {}"}}"#,
            n * 7919 % 100_000,
            n % 1000,
            n % 100,
            n % 97,
            n % 89,
            n % 13
        ),
    };
    let output = format!(
        "account {:05}: revenue up {}.{}% on last quarter; costs flat; {} open tickets, {} of them \
         older than 30 days; no payment incidents; renewal due in {} days. Source: ledger snapshot \
         #{} taken at close of business.",
        n * 7919 % 100_000,
        n % 9,
        n % 10,
        n % 13,
        n % 5,
        30 + n % 60,
        100_000 + n
    );
    let answer = format!(
        "Nothing urgent on account {:05}. Revenue grew {}.{}% while costs held steady. Of the {} open \
         tickets, {} are older than 30 days and worth a nudge to the support lead. The renewal is \
         {} days out, so there is time to prepare the offer.",
        n * 7919 % 100_000,
        n % 9,
        n % 10,
        n % 13,
        n % 5,
        30 + n % 60
    );
    let key = idempotency_key(session, &run, 1, &call.id);
    vec![
        event(run, &Actor::principal("bench"), EventBody::run_created(vec![Message::User { content: user(n) }])),
        event(
            run,
            &worker,
            EventBody::ModelResponded {
                step: 1,
                model: "bench".into(),
                content: None,
                tool_calls: vec![call.clone()],
                usage: Usage { input_tokens: 812, output_tokens: 41 },
                finish_reason: "tool_calls".into(),
                chunks: Vec::new(),
            },
        ),
        event(
            run,
            &worker,
            EventBody::ToolCallStarted { call_id: call.id.clone(), name: call.name.clone(), idempotency_key: key },
        ),
        event(
            run,
            &worker,
            EventBody::ToolCallCompleted { call_id: call.id, name: call.name, output, is_error: false },
        ),
        event(
            run,
            &worker,
            EventBody::ModelResponded {
                step: 2,
                model: "bench".into(),
                content: Some(answer.clone()),
                tool_calls: Vec::new(),
                usage: Usage { input_tokens: 905, output_tokens: 88 },
                finish_reason: "stop".into(),
                chunks: Vec::new(),
            },
        ),
        event(run, &worker, EventBody::RunCompleted { output: Some(answer) }),
    ]
}

/// 3 events: input, a direct answer, completion.
fn answered_run(n: usize) -> Vec<NewEvent> {
    let run = RunId::new();
    let worker = Actor::worker("history");
    let answer = format!("Account {:05} looks fine; nothing needs your attention.", n * 7919 % 100_000);
    vec![
        event(run, &Actor::principal("bench"), EventBody::run_created(vec![Message::User { content: user(n) }])),
        event(
            run,
            &worker,
            EventBody::ModelResponded {
                step: 1,
                model: "bench".into(),
                content: Some(answer.clone()),
                tool_calls: Vec::new(),
                usage: Usage { input_tokens: 640, output_tokens: 19 },
                finish_reason: "stop".into(),
                chunks: Vec::new(),
            },
        ),
        event(run, &worker, EventBody::RunCompleted { output: Some(answer) }),
    ]
}

/// 2 events: input, then cancelled before any worker took it.
fn cancelled_run(n: usize) -> Vec<NewEvent> {
    let run = RunId::new();
    let user_actor = Actor::principal("bench");
    vec![
        event(run, &user_actor, EventBody::run_created(vec![Message::User { content: user(n) }])),
        event(run, &user_actor, EventBody::RunCancelled { reason: "superseded by a newer request".into() }),
    ]
}
