//! A run's state as a pure fold of its events, and `decide`: the pure choice of the next
//! step. Recovery, replay and the store's projections all go through these two functions.

use serde::{Deserialize, Serialize};

use crate::agent::AgentSpec;
use crate::event::{ErrorInfo, EventBody};
use crate::message::{Message, ToolCall, Usage};
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a worker (new, or resumable after a wait).
    Queued,
    /// A worker has made progress on it; it is claimable again if that worker dies.
    Running,
    /// Waiting for the client to submit tool outputs. Holds no worker.
    RequiresAction,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::RequiresAction => "requires_action",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "requires_action" => RunStatus::RequiresAction,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }

    /// A worker may pick the run up (subject to the session's arrival order).
    pub fn is_claimable(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// A tool call of the latest model response that has no result yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCall {
    pub call: ToolCall,
    /// Set once the intent to run it server-side is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Handed to the client (`requires_action`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_client: bool,
}

/// The fold of one run's events. Small and bounded (no history), so the store keeps it as
/// the run's projection and loading a run is O(1) in the length of the session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub status: RunStatus,
    /// Sequence number of the run's `run_created` event.
    pub created_seq: u64,
    pub created_at: Timestamp,
    /// Model calls recorded so far.
    pub steps: u32,
    /// The latest model response asked for tools, so the model must be called again
    /// once their results are in.
    pub needs_model: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested: Option<String>,
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

impl RunState {
    /// The state right after `run_created`.
    pub fn created(seq: u64, at: Timestamp) -> Self {
        Self {
            status: RunStatus::Queued,
            created_seq: seq,
            created_at: at,
            steps: 0,
            needs_model: true,
            pending: Vec::new(),
            cancel_requested: None,
            usage: Usage::default(),
            last_content: None,
            output: None,
            error: None,
            finished_at: None,
        }
    }

    fn pending_mut(&mut self, call_id: &str) -> Result<&mut PendingCall, String> {
        self.pending
            .iter_mut()
            .find(|p| p.call.id == call_id)
            .ok_or_else(|| format!("tool call {call_id:?} is not pending in this run"))
    }

    /// Applies one event of this run. An event that does not fit the run's state is
    /// refused (the store rejects the whole append), so the projection never diverges.
    pub fn apply(&mut self, at: Timestamp, body: &EventBody) -> Result<(), String> {
        if self.status.is_terminal() {
            return Err(format!("run is already {}", self.status.as_str()));
        }
        match body {
            EventBody::SessionCreated { .. } | EventBody::RunCreated { .. } => {
                return Err(format!("`{}` cannot be applied to an existing run", body.kind()));
            }
            EventBody::ModelResponded { content, tool_calls, usage, .. } => {
                if !self.pending.is_empty() {
                    return Err("model responded while tool calls were still pending".into());
                }
                self.steps += 1;
                self.usage.add(*usage);
                self.last_content = content.clone();
                self.needs_model = !tool_calls.is_empty();
                self.pending = tool_calls
                    .iter()
                    .map(|c| PendingCall { call: c.clone(), idempotency_key: None, awaiting_client: false })
                    .collect();
                self.status = RunStatus::Running;
            }
            EventBody::ToolCallStarted { call_id, idempotency_key, .. } => {
                let p = self.pending_mut(call_id)?;
                if p.awaiting_client {
                    return Err(format!("tool call {call_id:?} belongs to the client"));
                }
                p.idempotency_key = Some(idempotency_key.clone());
                self.status = RunStatus::Running;
            }
            EventBody::ToolCallCompleted { call_id, .. } => {
                self.pending_mut(call_id)?;
                self.pending.retain(|p| &p.call.id != call_id);
                if self.status == RunStatus::RequiresAction {
                    if self.pending.iter().all(|p| !p.awaiting_client) {
                        // Every client output is in: resumable by any worker.
                        self.status = RunStatus::Queued;
                    }
                } else {
                    self.status = RunStatus::Running;
                }
            }
            EventBody::RunRequiresAction { tool_calls } => {
                for c in tool_calls {
                    self.pending_mut(&c.id)?.awaiting_client = true;
                }
                self.status = RunStatus::RequiresAction;
            }
            EventBody::RunCancelRequested { reason } => {
                self.cancel_requested = Some(reason.clone());
            }
            EventBody::RunCompleted { output } => {
                self.output = output.clone();
                self.finish(RunStatus::Completed, at);
            }
            EventBody::RunFailed { error } => {
                self.error = Some(error.clone());
                self.finish(RunStatus::Failed, at);
            }
            EventBody::RunCancelled { reason } => {
                self.error = Some(ErrorInfo::new("run_cancelled", reason.clone()));
                self.finish(RunStatus::Cancelled, at);
            }
        }
        Ok(())
    }

    fn finish(&mut self, status: RunStatus, at: Timestamp) {
        self.status = status;
        self.finished_at = Some(at);
    }
}

/// How the engine can run a tool, as far as `decide` needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolClass {
    /// Runs inside Stead. `idempotent`: safe to run again with the same key after a crash.
    Server { idempotent: bool },
    /// Runs in the client.
    Client,
    /// Not offered to the model: answered with a tool error without running anything.
    Unknown,
}

/// The next thing a run must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    CallModel {
        step: u32,
    },
    /// Run these calls server-side. Intent for `to_start` must be recorded first; the rest
    /// already have recorded intent (a retry after a crash, with the same idempotency key).
    RunTools {
        calls: Vec<ToolCall>,
        to_start: Vec<ToolCall>,
    },
    /// Hand these calls to the client and wait.
    AwaitClient {
        calls: Vec<ToolCall>,
    },
    Finish {
        output: Option<String>,
    },
    Fail(ErrorInfo),
    Cancel {
        reason: String,
    },
    /// Nothing to do: the run is finished or waiting on someone else.
    Idle,
}

/// Chooses the next step. Pure: same inputs, same answer — which is what makes recovery safe.
pub fn decide(agent: &AgentSpec, run: &RunState, now: Timestamp, class_of: &dyn Fn(&str) -> ToolClass) -> Decision {
    if run.status.is_terminal() || run.status == RunStatus::RequiresAction {
        return Decision::Idle;
    }
    if let Some(reason) = &run.cancel_requested {
        return Decision::Cancel { reason: reason.clone() };
    }
    let deadline = run.created_at.plus(std::time::Duration::from_secs(agent.limits.max_wall_time_secs));
    if now > deadline {
        return Decision::Fail(ErrorInfo::new(
            "max_wall_time_exceeded",
            format!(
                "the run exceeded its limit of {}s wall time (limits.max_wall_time_secs)",
                agent.limits.max_wall_time_secs
            ),
        ));
    }
    if !run.pending.is_empty() {
        let mut calls = Vec::new();
        let mut to_start = Vec::new();
        let mut client = Vec::new();
        for p in &run.pending {
            match class_of(&p.call.name) {
                ToolClass::Client => client.push(p.call.clone()),
                ToolClass::Server { idempotent } => {
                    if p.idempotency_key.is_some() && !idempotent {
                        return Decision::Fail(ErrorInfo::new(
                            "tool_outcome_unknown",
                            format!(
                                "tool `{}` (call {}) started but its result was not recorded, and it is not idempotent, so it is not run again",
                                p.call.name, p.call.id
                            ),
                        ));
                    }
                    if p.idempotency_key.is_none() {
                        to_start.push(p.call.clone());
                    }
                    calls.push(p.call.clone());
                }
                ToolClass::Unknown => {
                    if p.idempotency_key.is_none() {
                        to_start.push(p.call.clone());
                    }
                    calls.push(p.call.clone());
                }
            }
        }
        if !calls.is_empty() {
            return Decision::RunTools { calls, to_start };
        }
        return Decision::AwaitClient { calls: client };
    }
    if run.needs_model {
        if run.steps >= agent.limits.max_steps {
            return Decision::Fail(ErrorInfo::new(
                "max_steps_exceeded",
                format!("the run reached its limit of {} model calls (limits.max_steps)", agent.limits.max_steps),
            ));
        }
        return Decision::CallModel { step: run.steps + 1 };
    }
    Decision::Finish { output: run.last_content.clone() }
}

/// The deterministic idempotency key of a tool call: the same call always gets the same key,
/// across retries, restarts and nodes.
pub fn idempotency_key(session: &crate::ids::SessionId, run: &crate::ids::RunId, step: u32, call_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{session}/{run}/{step}/{call_id}").as_bytes());
    format!("idem_{}", hex::encode(&h.finalize()[..16]))
}

/// The user-visible messages a run's input adds.
pub fn input_messages(text: &str) -> Vec<Message> {
    vec![Message::User { content: text.to_owned() }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{AgentSpec, SpecFormat};

    fn agent() -> AgentSpec {
        AgentSpec::parse(
            "name: a\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: clock, type: builtin}\n  - {name: ask, type: client}\nlimits: {max_steps: 3, max_wall_time_secs: 60}\n",
            SpecFormat::Yaml,
        )
        .unwrap()
    }

    fn classes(name: &str) -> ToolClass {
        match name {
            "clock" => ToolClass::Server { idempotent: true },
            "charge" => ToolClass::Server { idempotent: false },
            "ask" => ToolClass::Client,
            _ => ToolClass::Unknown,
        }
    }

    fn call(id: &str, name: &str) -> ToolCall {
        ToolCall { id: id.into(), name: name.into(), arguments: "{}".into() }
    }

    fn responded(calls: Vec<ToolCall>, text: Option<&str>) -> EventBody {
        EventBody::ModelResponded {
            step: 0,
            model: "s".into(),
            content: text.map(Into::into),
            tool_calls: calls,
            usage: Usage { input_tokens: 1, output_tokens: 1 },
            finish_reason: "stop".into(),
        }
    }

    const T0: Timestamp = Timestamp(1_000_000);

    #[test]
    fn a_run_walks_model_tools_model_finish() {
        let a = agent();
        let mut r = RunState::created(2, T0);
        assert_eq!(decide(&a, &r, T0, &classes), Decision::CallModel { step: 1 });
        r.apply(T0, &responded(vec![call("c1", "clock")], None)).unwrap();
        assert_eq!(
            decide(&a, &r, T0, &classes),
            Decision::RunTools { calls: vec![call("c1", "clock")], to_start: vec![call("c1", "clock")] }
        );
        r.apply(
            T0,
            &EventBody::ToolCallStarted { call_id: "c1".into(), name: "clock".into(), idempotency_key: "k".into() },
        )
        .unwrap();
        // Crash here: the idempotent call is retried, not started again.
        assert_eq!(
            decide(&a, &r, T0, &classes),
            Decision::RunTools { calls: vec![call("c1", "clock")], to_start: vec![] }
        );
        r.apply(
            T0,
            &EventBody::ToolCallCompleted {
                call_id: "c1".into(),
                name: "clock".into(),
                output: "t".into(),
                is_error: false,
            },
        )
        .unwrap();
        assert_eq!(decide(&a, &r, T0, &classes), Decision::CallModel { step: 2 });
        r.apply(T0, &responded(vec![], Some("done"))).unwrap();
        assert_eq!(decide(&a, &r, T0, &classes), Decision::Finish { output: Some("done".into()) });
        r.apply(T0, &EventBody::RunCompleted { output: Some("done".into()) }).unwrap();
        assert_eq!(r.status, RunStatus::Completed);
        assert_eq!(decide(&a, &r, T0, &classes), Decision::Idle);
        assert!(
            r.apply(T0, &EventBody::RunCancelRequested { reason: "x".into() }).is_err(),
            "terminal runs take no events"
        );
    }

    #[test]
    fn client_tools_wait_and_resume() {
        let a = agent();
        let mut r = RunState::created(2, T0);
        r.apply(T0, &responded(vec![call("c1", "ask"), call("c2", "clock")], None)).unwrap();
        // Server tools first, then the client's.
        let d = decide(&a, &r, T0, &classes);
        assert_eq!(d, Decision::RunTools { calls: vec![call("c2", "clock")], to_start: vec![call("c2", "clock")] });
        r.apply(
            T0,
            &EventBody::ToolCallStarted { call_id: "c2".into(), name: "clock".into(), idempotency_key: "k".into() },
        )
        .unwrap();
        r.apply(
            T0,
            &EventBody::ToolCallCompleted {
                call_id: "c2".into(),
                name: "clock".into(),
                output: "t".into(),
                is_error: false,
            },
        )
        .unwrap();
        assert_eq!(decide(&a, &r, T0, &classes), Decision::AwaitClient { calls: vec![call("c1", "ask")] });
        r.apply(T0, &EventBody::RunRequiresAction { tool_calls: vec![call("c1", "ask")] }).unwrap();
        assert_eq!(r.status, RunStatus::RequiresAction);
        assert_eq!(decide(&a, &r, T0, &classes), Decision::Idle);
        assert!(
            r.apply(
                T0,
                &EventBody::ToolCallStarted { call_id: "c1".into(), name: "ask".into(), idempotency_key: "k".into() }
            )
            .is_err(),
            "a client's call is never run server-side"
        );
        r.apply(
            T0,
            &EventBody::ToolCallCompleted {
                call_id: "c1".into(),
                name: "ask".into(),
                output: "yes".into(),
                is_error: false,
            },
        )
        .unwrap();
        assert_eq!(r.status, RunStatus::Queued);
        assert_eq!(decide(&a, &r, T0, &classes), Decision::CallModel { step: 2 });
    }

    #[test]
    fn non_idempotent_started_call_is_not_retried() {
        let a = agent();
        let mut r = RunState::created(2, T0);
        r.apply(T0, &responded(vec![call("c1", "charge")], None)).unwrap();
        r.apply(
            T0,
            &EventBody::ToolCallStarted { call_id: "c1".into(), name: "charge".into(), idempotency_key: "k".into() },
        )
        .unwrap();
        match decide(&a, &r, T0, &classes) {
            Decision::Fail(e) => assert_eq!(e.code, "tool_outcome_unknown"),
            d => panic!("unexpected {d:?}"),
        }
    }

    #[test]
    fn limits_cancel_and_unknown_results() {
        let a = agent();
        let mut r = RunState::created(2, T0);
        for i in 0..3 {
            r.apply(T0, &responded(vec![call(&format!("c{i}"), "clock")], None)).unwrap();
            r.apply(
                T0,
                &EventBody::ToolCallCompleted {
                    call_id: format!("c{i}"),
                    name: "clock".into(),
                    output: "t".into(),
                    is_error: false,
                },
            )
            .unwrap();
        }
        match decide(&a, &r, T0, &classes) {
            Decision::Fail(e) => assert_eq!(e.code, "max_steps_exceeded"),
            d => panic!("unexpected {d:?}"),
        }
        let late = T0.plus(std::time::Duration::from_secs(61));
        match decide(&a, &RunState::created(2, T0), late, &classes) {
            Decision::Fail(e) => assert_eq!(e.code, "max_wall_time_exceeded"),
            d => panic!("unexpected {d:?}"),
        }
        let mut c = RunState::created(2, T0);
        c.apply(T0, &EventBody::RunCancelRequested { reason: "user".into() }).unwrap();
        assert_eq!(decide(&a, &c, T0, &classes), Decision::Cancel { reason: "user".into() });
        assert!(
            c.apply(
                T0,
                &EventBody::ToolCallCompleted {
                    call_id: "nope".into(),
                    name: "x".into(),
                    output: "".into(),
                    is_error: false
                }
            )
            .is_err(),
            "results for calls that were never made are refused"
        );
    }
}
