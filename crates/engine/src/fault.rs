//! Fault-injection points for crash and supervision tests. A point is a named place in the
//! dispatcher or a run's driver; what happens there is armed per engine ([`Faults`]):
//!
//! - `STEAD_FAULT_PAUSE=point[,point…]`: the task says so on stderr and waits there forever
//!   — so a test can SIGKILL the real process exactly at that point;
//! - `STEAD_FAULT_PANIC=point[,point…]`: the task panics there, as a bug would;
//! - in-process tests also hold a task at a point until they release it ([`Gate`]).
//!
//! Nothing is armed unless the environment (or a test) says so.

use std::fmt;
use std::sync::Arc;

use stead_core::ids::RunId;
use tokio::sync::{Semaphore, watch};

/// After `model_responded` (and the tool intents it implies) is committed.
pub const AFTER_MODEL_RECORDED: &str = "after_model_recorded";
/// After a tool's intent is committed, before the tool runs.
pub const TOOL_STARTED: &str = "tool_started";
/// After the tools ran, before their results are committed.
pub const BEFORE_TOOL_RECORDED: &str = "before_tool_recorded";
/// Before a model call.
pub const BEFORE_MODEL_CALL: &str = "before_model_call";
/// In a run's lease keeper, before each renewal (pausing it lets the lease expire).
pub const LEASE_RENEWAL: &str = "lease_renewal";
/// In the dispatcher's loop, before each claim.
pub const DISPATCHER_LOOP: &str = "dispatcher_loop";

/// What happens at an armed point.
#[derive(Clone)]
enum Action {
    Pause,
    Panic,
    Hold(Arc<Gate>),
}

/// The points armed for one engine, and what each does.
#[derive(Clone, Default)]
pub struct Faults {
    armed: Vec<(String, Action)>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .armed
            .iter()
            .map(|(p, a)| {
                let what = match a {
                    Action::Pause => "pause",
                    Action::Panic => "panic",
                    Action::Hold(_) => "hold",
                };
                format!("{what}@{p}")
            })
            .collect();
        f.debug_tuple("Faults").field(&names).finish()
    }
}

fn env_points(var: &str) -> Vec<String> {
    std::env::var(var)
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

impl Faults {
    /// `STEAD_FAULT_PAUSE` and `STEAD_FAULT_PANIC`; nothing when neither is set.
    pub fn from_env() -> Self {
        let mut faults = Self::default();
        for p in env_points("STEAD_FAULT_PAUSE") {
            faults = faults.pause(&p);
        }
        for p in env_points("STEAD_FAULT_PANIC") {
            faults = faults.panic(&p);
        }
        faults
    }

    /// Parks whoever reaches `point`, for ever.
    pub fn pause(mut self, point: &str) -> Self {
        self.armed.push((point.to_owned(), Action::Pause));
        self
    }

    /// Panics whoever reaches `point`.
    pub fn panic(mut self, point: &str) -> Self {
        self.armed.push((point.to_owned(), Action::Panic));
        self
    }

    /// Holds whoever reaches `point` until `gate` lets it pass.
    pub fn hold(mut self, point: &str, gate: Arc<Gate>) -> Self {
        self.armed.push((point.to_owned(), Action::Hold(gate)));
        self
    }

    /// Does what `point` is armed with, if anything; `run` names who reached it.
    pub async fn at(&self, point: &str, run: Option<&RunId>) {
        let Some((_, action)) = self.armed.iter().find(|(p, _)| p == point) else { return };
        let who = run.map_or_else(|| "-".to_owned(), RunId::to_string);
        match action {
            Action::Pause => {
                eprintln!("stead-fault: paused at {point} run={who}");
                std::future::pending::<()>().await;
            }
            Action::Panic => panic!("stead-fault: panic injected at {point} run={who}"),
            Action::Hold(gate) => gate.pass().await,
        }
    }
}

/// A point where tasks wait until the test lets them through, one release per task.
pub struct Gate {
    arrived: watch::Sender<usize>,
    passes: Semaphore,
}

impl Gate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { arrived: watch::Sender::new(0), passes: Semaphore::new(0) })
    }

    /// Waits until `n` tasks in all have reached the gate.
    pub async fn arrivals(&self, n: usize) {
        let mut rx = self.arrived.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|count| *count >= n).await;
    }

    /// Lets `n` more tasks through (waiting ones first, then ones still to come).
    pub fn release(&self, n: usize) {
        self.passes.add_permits(n);
    }

    async fn pass(&self) {
        self.arrived.send_modify(|count| *count += 1);
        if let Ok(permit) = self.passes.acquire().await {
            permit.forget();
        }
    }
}
