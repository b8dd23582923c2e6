//! Figures 1, 2 and 4: steps per second for one session and for many, and the bytes each
//! step leaves on disk.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use stead_core::event::EventBody;
use stead_core::ids::{RunId, SessionId};
use stead_core::run::RunStatus;
use stead_store::Store;
use stead_store_sqlite::{DB_FILE, WriterStats};
use tokio::sync::broadcast::error::RecvError;

use crate::harness::{Harness, payload_bytes};

/// The step every figure counts: one model call asking for `echo`, then the tool's result.
pub const STEP_INPUT_ARGS: &str = r#"{"text":"x"}"#;

/// An agent whose context holds a whole `repeat steps` run: the scripted model counts the
/// rounds it sees after the user's command, so the command must stay in the window.
pub fn stepper_spec(name: &str, steps: u32) -> String {
    format!(
        "name: {name}\nmodel: {{provider: scripted, name: bench}}\ntools:\n  - {{name: echo, type: builtin}}\n\
         limits: {{max_steps: {}, max_wall_time_secs: 3600}}\n\
         context: {{max_messages: {}, max_tokens: 10000000}}\n",
        steps + 10,
        (2 * steps + 50).min(10_000),
    )
}

pub struct Sequential {
    pub steps: usize,
    pub total: Duration,
    pub first: Duration,
    pub last: Duration,
    /// How many steps `first` and `last` cover.
    pub window: usize,
    pub writer: WriterStats,
    /// Latency of each append the engine made (model response + intent; tool result).
    pub appends: Vec<Duration>,
    pub disk: Disk,
}

impl Sequential {
    pub fn rate(&self) -> f64 {
        self.steps as f64 / self.total.as_secs_f64()
    }
    pub fn first_rate(&self) -> f64 {
        self.window as f64 / self.first.as_secs_f64()
    }
    pub fn last_rate(&self) -> f64 {
        self.window as f64 / self.last.as_secs_f64()
    }
}

/// Bytes on disk after the store is closed and its WAL checkpointed.
pub struct Disk {
    pub steps: u64,
    pub events: u64,
    pub file_bytes: u64,
    /// `length(data)` summed over events: the events' JSON.
    pub event_json_bytes: u64,
    /// What users, models and tools said (see `payload_bytes`).
    pub payload_bytes: u64,
}

impl Disk {
    pub fn per_step(&self) -> f64 {
        self.file_bytes as f64 / self.steps as f64
    }
    pub fn payload_per_step(&self) -> f64 {
        self.payload_bytes as f64 / self.steps as f64
    }
}

/// Figure 1: one session, one run of `steps` sequential steps. Each step is timed at the
/// commit of its `tool_call_completed`, as seen on the store's commit stream.
pub async fn sequential(base: &Path, steps: usize) -> anyhow::Result<Sequential> {
    let h = Harness::start(base, false)?;
    let agent = h.agent(&stepper_spec("stepper", steps as u32)).await?;
    let session = h.session(&agent).await?;
    let before = h.store.writer_stats();
    let mut commits = h.store.subscribe();
    let t0 = Instant::now();
    let run = h.create_run(&session, &format!("repeat {steps} echo {STEP_INPUT_ARGS}")).await?;
    h.timed.take();
    let mut done = Vec::with_capacity(steps);
    'watch: loop {
        match tokio::time::timeout(Duration::from_secs(120), commits.recv()).await {
            Err(_) => bail!("no commit for 120 s after {} steps", done.len()),
            Ok(Err(RecvError::Lagged(n))) => bail!("the bench fell {n} commits behind the commit stream"),
            Ok(Err(RecvError::Closed)) => bail!("the commit stream closed"),
            Ok(Ok(c)) => {
                let now = Instant::now();
                for e in c.events.iter().filter(|e| e.run_id == Some(run.id)) {
                    match e.body {
                        EventBody::ToolCallCompleted { .. } => done.push(now),
                        EventBody::RunCompleted { .. }
                        | EventBody::RunFailed { .. }
                        | EventBody::RunCancelled { .. } => {
                            break 'watch;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let writer = diff(h.store.writer_stats(), before);
    let appends = h.timed.take().appends;
    let rec = h.settle(&run.id, RunStatus::Completed).await?;
    if done.len() != steps || rec.state.steps as usize != steps + 1 {
        bail!("expected {steps} tool steps, saw {} ({} model calls)", done.len(), rec.state.steps);
    }
    let window = (steps / 10).clamp(1, 100);
    let first = done[window - 1] - t0;
    let last = done[steps - 1] - done[steps - 1 - window];
    let total = done[steps - 1] - t0;
    let disk = disk_usage(h, &[session], steps as u64).await?;
    Ok(Sequential { steps, total, first, last, window, writer, appends, disk })
}

pub struct Concurrent {
    pub sessions: usize,
    pub steps_each: usize,
    pub total: Duration,
    pub writer: WriterStats,
    pub appends: Vec<Duration>,
    /// On-CPU time per thread name during the measurement.
    pub cpu: std::collections::BTreeMap<String, crate::cpu::Usage>,
    pub disk: Disk,
}

impl Concurrent {
    pub fn rate(&self) -> f64 {
        (self.sessions * self.steps_each) as f64 / self.total.as_secs_f64()
    }
}

/// Figure 2: `sessions` sessions, each with one run of `steps_each` steps, all at once.
/// Timed from the first run's creation to the last run's completion.
pub async fn concurrent(base: &Path, sessions: usize, steps_each: usize) -> anyhow::Result<Concurrent> {
    let h = Harness::start(base, false)?;
    let agent = h.agent(&stepper_spec("fanout", steps_each as u32)).await?;
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        ids.push(h.session(&agent).await?);
    }
    let before = h.store.writer_stats();
    let mut commits = h.store.subscribe();
    let input = format!("repeat {steps_each} echo {STEP_INPUT_ARGS}");
    h.timed.take();
    let cpu_before = crate::cpu::by_thread();
    let t0 = Instant::now();
    let mut creating = tokio::task::JoinSet::new();
    for s in &ids {
        let (engine, tenant, s, input) = (h.engine.clone(), h.tenant.clone(), *s, input.clone());
        creating.spawn(async move {
            let msg = vec![stead_core::message::Message::User { content: input }];
            engine.create_run(&tenant, "bench", &s, msg).await.map(|r| r.id)
        });
    }
    let mut runs: HashSet<RunId> = HashSet::with_capacity(sessions);
    while let Some(r) = creating.join_next().await {
        runs.insert(r.context("create_run task")??);
    }
    // A run may finish before all are created; the stream holds its commit until read.
    let mut open = runs.clone();
    while !open.is_empty() {
        match tokio::time::timeout(Duration::from_secs(120), commits.recv()).await {
            Err(_) => bail!("no commit for 120 s with {} runs unfinished", open.len()),
            Ok(Err(RecvError::Lagged(_))) => {
                // Fell behind: ask the store instead.
                let mut still = HashSet::new();
                for r in &open {
                    if !h.store.get_run(&h.tenant, r).await?.status().is_terminal() {
                        still.insert(*r);
                    }
                }
                open = still;
            }
            Ok(Err(RecvError::Closed)) => bail!("the commit stream closed"),
            Ok(Ok(c)) => {
                for (id, status) in &c.runs {
                    if status.is_terminal() {
                        open.remove(id);
                    }
                }
            }
        }
    }
    let total = t0.elapsed();
    let cpu = crate::cpu::since(&cpu_before);
    let writer = diff(h.store.writer_stats(), before);
    let appends = h.timed.take().appends;
    for r in &runs {
        let rec = h.settle(r, RunStatus::Completed).await?;
        if rec.state.steps as usize != steps_each + 1 {
            bail!("run {r} made {} model calls, expected {}", rec.state.steps, steps_each + 1);
        }
    }
    let disk = disk_usage(h, &ids, (sessions * steps_each) as u64).await?;
    Ok(Concurrent { sessions, steps_each, total, writer, appends, cpu, disk })
}

fn diff(after: WriterStats, before: WriterStats) -> WriterStats {
    WriterStats { ops: after.ops - before.ops, commits: after.commits - before.commits, queued: after.queued }
}

/// Figure 4: closes the store, checkpoints its WAL into the database file and measures it.
async fn disk_usage(h: Harness, sessions: &[SessionId], steps: u64) -> anyhow::Result<Disk> {
    let mut payload = 0u64;
    let mut events = 0u64;
    for s in sessions {
        let mut after = 0;
        loop {
            let page = h.store.read_events(&h.tenant, s, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            events += page.len() as u64;
            payload += page.iter().map(|e| payload_bytes(&e.body) as u64).sum::<u64>();
        }
    }
    let dir = h.close().await;
    let db = dir.path().join(DB_FILE);
    let (file_bytes, event_json_bytes) = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64)> {
        let conn = rusqlite::Connection::open(&db)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let json: i64 =
            conn.query_row("SELECT coalesce(sum(length(CAST(data AS BLOB))), 0) FROM events", [], |r| r.get(0))?;
        drop(conn);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let wal = db.with_file_name(format!("{DB_FILE}-wal"));
        Ok((size(&db) + size(&wal), json as u64))
    })
    .await??;
    Ok(Disk { steps, events, file_bytes, event_json_bytes, payload_bytes: payload })
}

pub struct Growth {
    /// Steps per second of each run, in order.
    pub rates: Vec<f64>,
    /// Events in the session at the end.
    pub events: u64,
}

impl Growth {
    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    /// Median rate of the first three runs.
    pub fn first(&self) -> f64 {
        Self::median(&self.rates[..3.min(self.rates.len())])
    }
    /// Median rate of the last three runs.
    pub fn last(&self) -> f64 {
        Self::median(&self.rates[self.rates.len().saturating_sub(3)..])
    }
}

/// Figure 1, the session-length part: `runs` runs of `steps_each` steps, one after the other
/// in one session, with a context window that holds one run. The model's context stays the
/// same size while the session grows, so a slowdown here is the runtime's, not the context's.
pub async fn session_growth(base: &Path, runs: usize, steps_each: usize) -> anyhow::Result<Growth> {
    let h = Harness::start(base, false)?;
    let agent = h.agent(&stepper_spec("grower", steps_each as u32)).await?;
    let session = h.session(&agent).await?;
    let mut rates = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let run = h.create_run(&session, &format!("repeat {steps_each} echo {STEP_INPUT_ARGS}")).await?;
        let rec = h.settle(&run.id, RunStatus::Completed).await?;
        if rec.state.steps as usize != steps_each + 1 {
            bail!("run {} made {} model calls, expected {}", run.id, rec.state.steps, steps_each + 1);
        }
        rates.push(steps_each as f64 / t0.elapsed().as_secs_f64());
    }
    let events = h.store.get_session(&h.tenant, &session).await?.head_seq;
    h.close().await;
    Ok(Growth { rates, events })
}
