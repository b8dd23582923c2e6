//! A run's state as a pure fold of its events, and `decide`: the pure choice of the next
//! step. Recovery, replay and the store's projections all go through these two functions.

use serde::{Deserialize, Serialize};

use crate::agent::AgentSpec;
use crate::agent::PauseMode;
use crate::event::{AgentRef, ApprovalDecision, ApprovalKind, ErrorInfo, EventBody};
use crate::ids::ApprovalId;
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
    /// Waiting for a person's decision on a tool call. Holds no worker.
    AwaitingApproval,
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
            RunStatus::AwaitingApproval => "awaiting_approval",
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
            "awaiting_approval" => RunStatus::AwaitingApproval,
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
    /// The latest approval asked about this call, and its decision once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<CallApproval>,
    /// Arguments an approver substituted; the call runs with these (also on a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_arguments: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallApproval {
    pub id: ApprovalId,
    pub kind: ApprovalKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ApprovalDecision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Arguments an approver substituted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// The result a `skip` supplied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl CallApproval {
    /// A question just asked, not yet decided.
    pub fn open(id: ApprovalId, kind: ApprovalKind) -> Self {
        Self { id, kind, decision: None, decided_by: None, reason: None, arguments: None, output: None }
    }
}

impl PendingCall {
    fn undecided_approval(&self) -> bool {
        self.approval.as_ref().is_some_and(|a| a.decision.is_none())
    }
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
    /// The agent version the run uses when it is not the session's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRef>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
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
            agent: None,
            deleted: false,
        }
    }

    /// The state right after a `run_created` event: its agent, and the calls it carries over
    /// from an earlier run (handled before the model is called again).
    pub fn created_from(seq: u64, at: Timestamp, body: &EventBody) -> Self {
        let mut state = Self::created(seq, at);
        if let EventBody::RunCreated { agent, carried, .. } = body {
            state.agent = agent.clone();
            state.pending = carried
                .iter()
                .map(|c| PendingCall {
                    call: c.call.clone(),
                    idempotency_key: None,
                    awaiting_client: false,
                    approval: Some(CallApproval::open(c.approval_id, ApprovalKind::ToolCall)),
                    approved_arguments: None,
                })
                .collect();
            if !state.pending.is_empty() {
                // Nothing to do until the carried approvals are decided.
                state.status = RunStatus::AwaitingApproval;
            }
        }
        state
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
        // An approval left open by a run that ended (cancelled, or paused into the
        // conversation and never continued) still expires, for the record; nothing else moves.
        let closing = matches!(
            body,
            EventBody::ApprovalDecided { decision: ApprovalDecision::Expire, .. } | EventBody::RunDeleted {}
        );
        if self.status.is_terminal() && !closing {
            return Err(format!("run is already {}", self.status.as_str()));
        }
        match body {
            EventBody::SessionCreated { .. }
            | EventBody::RunCreated { .. }
            | EventBody::ItemsAdded { .. }
            | EventBody::ItemRemoved { .. }
            | EventBody::SessionUpdated { .. } => {
                return Err(format!("`{}` cannot be applied to an existing run", body.kind()));
            }
            EventBody::RunDeleted {} => {
                if !self.status.is_terminal() {
                    return Err("only a finished run can be deleted; cancel it first".into());
                }
                self.deleted = true;
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
                    .map(|c| PendingCall {
                        call: c.clone(),
                        idempotency_key: None,
                        awaiting_client: false,
                        approval: None,
                        approved_arguments: None,
                    })
                    .collect();
                self.status = RunStatus::Running;
            }
            EventBody::ToolCallStarted { call_id, idempotency_key, .. } => {
                let p = self.pending_mut(call_id)?;
                if p.awaiting_client {
                    return Err(format!("tool call {call_id:?} belongs to the client"));
                }
                if let Some(a) = &p.approval
                    && a.kind == ApprovalKind::ToolCall
                    && a.decision != Some(ApprovalDecision::Approve)
                {
                    return Err(format!("tool call {call_id:?} has no approval to start"));
                }
                p.idempotency_key = Some(idempotency_key.clone());
                self.status = RunStatus::Running;
            }
            EventBody::ApprovalRequested { approval_id, kind, call_id, .. } => {
                let p = self.pending_mut(call_id)?;
                if p.awaiting_client {
                    return Err(format!("tool call {call_id:?} belongs to the client"));
                }
                match kind {
                    ApprovalKind::ToolCall if p.idempotency_key.is_some() || p.approval.is_some() => {
                        return Err(format!("tool call {call_id:?} was already started or asked about"));
                    }
                    ApprovalKind::OutcomeUnknown if p.idempotency_key.is_none() || p.undecided_approval() => {
                        return Err(format!("tool call {call_id:?} has no unknown outcome to ask about"));
                    }
                    _ => {}
                }
                p.approval = Some(CallApproval::open(*approval_id, *kind));
            }
            EventBody::ApprovalDecided { approval_id, call_id, decision, decided_by, reason, arguments, output } => {
                let p = self.pending_mut(call_id)?;
                let a = p
                    .approval
                    .as_mut()
                    .filter(|a| &a.id == approval_id)
                    .ok_or_else(|| format!("approval {approval_id} is not open for call {call_id:?}"))?;
                if a.decision.is_some() {
                    return Err(format!("approval {approval_id} is already decided"));
                }
                if !a.kind.accepts(*decision) {
                    return Err(format!("`{}` does not answer a `{}` approval", decision.as_str(), a.kind.as_str()));
                }
                a.decision = Some(*decision);
                a.decided_by = Some(decided_by.clone());
                a.reason = reason.clone();
                a.arguments = arguments.clone();
                a.output = output.clone();
                if *decision == ApprovalDecision::Approve && arguments.is_some() {
                    p.approved_arguments = arguments.clone();
                }
                if closing && self.status.is_terminal() {
                    return Ok(());
                }
                if self.status == RunStatus::AwaitingApproval
                    && !self.pending.iter().any(PendingCall::undecided_approval)
                {
                    self.status = RunStatus::Queued;
                }
            }
            EventBody::RunAwaitingApproval { approval_ids } => {
                if approval_ids.is_empty() {
                    return Err("a run awaits approval of at least one call".into());
                }
                for id in approval_ids {
                    if !self
                        .pending
                        .iter()
                        .any(|p| p.undecided_approval() && p.approval.as_ref().is_some_and(|a| &a.id == id))
                    {
                        return Err(format!("approval {id} is not open in this run"));
                    }
                }
                self.status = RunStatus::AwaitingApproval;
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

/// What the agent says about one particular call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolPolicy {
    pub class: ToolClass,
    /// Why this call needs a person's approval first, if it does.
    pub approval: Option<String>,
    /// Why these arguments can't be run at all (not JSON, or against the tool's schema): the
    /// model is told, and nothing runs or asks for approval.
    pub rejection: Option<String>,
}

/// A question for a person that `decide` wants asked.
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalRequest {
    pub call: ToolCall,
    pub kind: ApprovalKind,
    pub reason: String,
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
    /// Ask people: record these approval requests.
    RequestApprovals {
        requests: Vec<ApprovalRequest>,
    },
    /// Record results that need no execution (a denial, an expiry, a skip): (call, output, is_error).
    RecordResults {
        results: Vec<(ToolCall, String, bool)>,
    },
    /// Wait for these decisions, holding no worker.
    AwaitApproval {
        approval_ids: Vec<ApprovalId>,
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
///
/// For the pending calls of a model response, in this order: ask for every approval that is
/// needed (people see requests as early as possible), record results that need no execution,
/// run what may run, then wait for decisions, then for the client.
pub fn decide(
    agent: &AgentSpec,
    run: &RunState,
    now: Timestamp,
    policy_of: &dyn Fn(&ToolCall) -> ToolPolicy,
) -> Decision {
    if run.status.is_terminal() || matches!(run.status, RunStatus::RequiresAction | RunStatus::AwaitingApproval) {
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
        let mut requests = Vec::new();
        let mut results = Vec::new();
        let mut calls = Vec::new();
        let mut to_start = Vec::new();
        let mut waiting = Vec::new();
        let mut client = Vec::new();
        for p in &run.pending {
            let runnable = || {
                let mut c = p.call.clone();
                if let Some(args) = &p.approved_arguments {
                    c.arguments = args.clone();
                }
                c
            };
            // Judged on the arguments that would run (an approver's edit included).
            let policy = policy_of(&runnable());
            let idempotent = match policy.class {
                ToolClass::Client => {
                    client.push(p.call.clone());
                    continue;
                }
                ToolClass::Server { idempotent } => idempotent,
                // Nothing runs for an unknown tool, so "running it again" is harmless.
                ToolClass::Unknown => true,
            };
            if let (Some(why), None) = (&policy.rejection, &p.idempotency_key) {
                results.push((p.call.clone(), why.clone(), true));
                continue;
            }
            let approval = p.approval.as_ref();
            if p.idempotency_key.is_some() {
                // Started before, no result recorded: a crash in between.
                if idempotent {
                    calls.push(runnable());
                    continue;
                }
                match approval.filter(|a| a.kind == ApprovalKind::OutcomeUnknown) {
                    None => requests.push(ApprovalRequest {
                        call: p.call.clone(),
                        kind: ApprovalKind::OutcomeUnknown,
                        reason: format!(
                            "tool `{}` started but its result was not recorded, and it is not idempotent: did it take effect? retry, skip (with the result), or fail the run",
                            p.call.name
                        ),
                    }),
                    Some(a) => match a.decision {
                        None => waiting.push(a.id),
                        Some(ApprovalDecision::Retry) => calls.push(runnable()),
                        Some(ApprovalDecision::Skip) => {
                            results.push((p.call.clone(), a.output.clone().unwrap_or_default(), false))
                        }
                        Some(_) => {
                            return Decision::Fail(ErrorInfo::new(
                                "tool_outcome_unknown",
                                format!(
                                    "tool `{}` (call {}) may or may not have taken effect; {} decided to fail the run{}",
                                    p.call.name,
                                    p.call.id,
                                    a.decided_by.as_deref().unwrap_or("nobody"),
                                    a.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                                ),
                            ));
                        }
                    },
                }
                continue;
            }
            match approval {
                Some(a) if a.kind == ApprovalKind::ToolCall => match a.decision {
                    None => waiting.push(a.id),
                    Some(ApprovalDecision::Approve) => {
                        to_start.push(runnable());
                        calls.push(runnable());
                    }
                    Some(ApprovalDecision::Expire) => results.push((
                        p.call.clone(),
                        "error: this call needed approval and nobody decided in time (the approval expired); it did not run".into(),
                        true,
                    )),
                    Some(_) => results.push((
                        p.call.clone(),
                        format!(
                            "error: this call was denied by {}{}; it did not run",
                            a.decided_by.as_deref().unwrap_or("an approver"),
                            a.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                        ),
                        true,
                    )),
                },
                _ => match policy.approval {
                    Some(reason) => {
                        requests.push(ApprovalRequest { call: p.call.clone(), kind: ApprovalKind::ToolCall, reason })
                    }
                    None => {
                        to_start.push(runnable());
                        calls.push(runnable());
                    }
                },
            }
        }
        if !requests.is_empty() {
            return Decision::RequestApprovals { requests };
        }
        if !results.is_empty() {
            return Decision::RecordResults { results };
        }
        if !calls.is_empty() {
            return Decision::RunTools { calls, to_start };
        }
        let pause_ends_run = agent.pause == PauseMode::Complete;
        if !waiting.is_empty() {
            // Only a question about a call to make ends a run; an unknown outcome is settled
            // where it happened.
            let unknown = run.pending.iter().any(|p| {
                p.approval.as_ref().is_some_and(|a| a.decision.is_none() && a.kind == ApprovalKind::OutcomeUnknown)
            });
            if pause_ends_run && !unknown {
                return Decision::Finish { output: run.last_content.clone() };
            }
            return Decision::AwaitApproval { approval_ids: waiting };
        }
        if pause_ends_run {
            return Decision::Finish { output: run.last_content.clone() };
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
    use crate::ids::ApprovalId;

    fn agent() -> AgentSpec {
        AgentSpec::parse(
            "name: a\nmodel: {provider: scripted, name: s}\ntools:\n  - {name: clock, type: builtin}\n  - {name: ask, type: client}\nlimits: {max_steps: 3, max_wall_time_secs: 60}\n",
            SpecFormat::Yaml,
        )
        .unwrap()
    }

    fn classes(call: &ToolCall) -> ToolPolicy {
        let class = match call.name.as_str() {
            "clock" => ToolClass::Server { idempotent: true },
            "charge" | "pay" => ToolClass::Server { idempotent: false },
            "ask" => ToolClass::Client,
            _ => ToolClass::Unknown,
        };
        let approval = (call.name == "pay").then(|| "payments need approval".to_owned());
        let rejection = (call.arguments == "bad").then(|| "error: arguments do not match the schema".to_owned());
        ToolPolicy { class, approval, rejection }
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
            chunks: Vec::new(),
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

    fn decided(id: ApprovalId, call_id: &str, decision: ApprovalDecision) -> EventBody {
        EventBody::ApprovalDecided {
            approval_id: id,
            call_id: call_id.into(),
            decision,
            decided_by: "principal:boss".into(),
            reason: Some("because".into()),
            arguments: None,
            output: Some("it happened".into()),
        }
    }

    fn requested(id: ApprovalId, call_id: &str, kind: ApprovalKind) -> EventBody {
        EventBody::ApprovalRequested {
            approval_id: id,
            kind,
            call_id: call_id.into(),
            name: "x".into(),
            arguments: "{}".into(),
            role: "approver".into(),
            expires_at: T0,
            reason: "r".into(),
        }
    }

    fn started(call_id: &str) -> EventBody {
        EventBody::ToolCallStarted { call_id: call_id.into(), name: "x".into(), idempotency_key: "k".into() }
    }

    #[test]
    fn non_idempotent_started_call_asks_a_person_and_follows_the_decision() {
        let a = agent();
        let crashed = || {
            let mut r = RunState::created(2, T0);
            r.apply(T0, &responded(vec![call("c1", "charge")], None)).unwrap();
            r.apply(T0, &started("c1")).unwrap();
            r
        };
        let r = crashed();
        match decide(&a, &r, T0, &classes) {
            Decision::RequestApprovals { requests } => {
                assert_eq!(requests.len(), 1);
                assert_eq!(requests[0].kind, ApprovalKind::OutcomeUnknown);
            }
            d => panic!("unexpected {d:?}"),
        }
        let id = ApprovalId::new();
        for (decision, expect) in [
            (ApprovalDecision::Retry, "run"),
            (ApprovalDecision::Skip, "record"),
            (ApprovalDecision::Fail, "fail"),
            (ApprovalDecision::Expire, "fail"),
        ] {
            let mut r = crashed();
            r.apply(T0, &requested(id, "c1", ApprovalKind::OutcomeUnknown)).unwrap();
            r.apply(T0, &EventBody::RunAwaitingApproval { approval_ids: vec![id] }).unwrap();
            assert_eq!(r.status, RunStatus::AwaitingApproval);
            assert_eq!(decide(&a, &r, T0, &classes), Decision::Idle);
            assert!(
                r.apply(T0, &decided(id, "c1", ApprovalDecision::Approve)).is_err(),
                "approve does not answer this"
            );
            r.apply(T0, &decided(id, "c1", decision)).unwrap();
            assert_eq!(r.status, RunStatus::Queued, "decided: resumable by any worker");
            match (decide(&a, &r, T0, &classes), expect) {
                (Decision::RunTools { to_start, .. }, "run") => assert!(to_start.is_empty(), "same key, no new intent"),
                (Decision::RecordResults { results }, "record") => assert_eq!(results[0].1, "it happened"),
                (Decision::Fail(e), "fail") => assert_eq!(e.code, "tool_outcome_unknown"),
                (d, e) => panic!("{decision:?}: expected {e}, got {d:?}"),
            }
            assert!(r.apply(T0, &decided(id, "c1", decision)).is_err(), "decisions are single-use");
        }
    }

    #[test]
    fn rejected_arguments_are_answered_without_running_or_asking() {
        let a = agent();
        let mut r = RunState::created(2, T0);
        let bad = ToolCall { id: "c1".into(), name: "pay".into(), arguments: "bad".into() };
        r.apply(T0, &responded(vec![bad.clone(), call("c2", "clock")], None)).unwrap();
        let Decision::RecordResults { results } = decide(&a, &r, T0, &classes) else { panic!() };
        assert_eq!(results, vec![(bad, "error: arguments do not match the schema".to_owned(), true)]);
    }

    #[test]
    fn approvals_gate_calls_and_denials_reach_the_model() {
        let a = agent();
        let mut r = RunState::created(2, T0);
        r.apply(T0, &responded(vec![call("c1", "pay"), call("c2", "clock")], None)).unwrap();
        // Ask first, before anything runs.
        let Decision::RequestApprovals { requests } = decide(&a, &r, T0, &classes) else { panic!() };
        assert_eq!(requests.iter().map(|q| q.call.id.as_str()).collect::<Vec<_>>(), vec!["c1"]);
        let id = ApprovalId::new();
        r.apply(T0, &requested(id, "c1", ApprovalKind::ToolCall)).unwrap();
        assert!(r.apply(T0, &started("c1")).is_err(), "no start without approval");
        // The unrelated call runs meanwhile; then the run waits.
        let Decision::RunTools { calls, .. } = decide(&a, &r, T0, &classes) else { panic!() };
        assert_eq!(calls, vec![call("c2", "clock")]);
        r.apply(T0, &started("c2")).unwrap();
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
        assert_eq!(decide(&a, &r, T0, &classes), Decision::AwaitApproval { approval_ids: vec![id] });
        r.apply(T0, &EventBody::RunAwaitingApproval { approval_ids: vec![id] }).unwrap();
        // Approved with edited arguments: it runs with those.
        let mut approved = r.clone();
        approved
            .apply(
                T0,
                &EventBody::ApprovalDecided {
                    approval_id: id,
                    call_id: "c1".into(),
                    decision: ApprovalDecision::Approve,
                    decided_by: "principal:boss".into(),
                    reason: None,
                    arguments: Some(r#"{"amount": 5}"#.into()),
                    output: None,
                },
            )
            .unwrap();
        let Decision::RunTools { calls, to_start } = decide(&a, &approved, T0, &classes) else { panic!() };
        assert_eq!(calls[0].arguments, r#"{"amount": 5}"#);
        assert_eq!(to_start.len(), 1);
        approved.apply(T0, &started("c1")).unwrap();
        // Denied: the model is told who denied it and why; nothing runs.
        let mut denied = r.clone();
        denied.apply(T0, &decided(id, "c1", ApprovalDecision::Deny)).unwrap();
        let Decision::RecordResults { results } = decide(&a, &denied, T0, &classes) else { panic!() };
        assert!(results[0].2 && results[0].1.contains("denied by principal:boss: because"), "{results:?}");
        let mut expired = r.clone();
        expired.apply(T0, &decided(id, "c1", ApprovalDecision::Expire)).unwrap();
        let Decision::RecordResults { results } = decide(&a, &expired, T0, &classes) else { panic!() };
        assert!(results[0].1.contains("expired"));
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

    // ---- pause mode, carried calls, deletion, late expiry, session-level events ----

    fn agent_pausing(mode: &str) -> AgentSpec {
        AgentSpec::parse(
            &format!(
                "name: a\nmodel: {{provider: scripted, name: s}}\ntools:\n  - {{name: clock, type: builtin}}\n  - {{name: ask, type: client}}\nlimits: {{max_steps: 3, max_wall_time_secs: 60}}\npause: {mode}\n"
            ),
            SpecFormat::Yaml,
        )
        .unwrap()
    }

    fn completed(call_id: &str, name: &str, output: &str) -> EventBody {
        EventBody::ToolCallCompleted {
            call_id: call_id.into(),
            name: name.into(),
            output: output.into(),
            is_error: false,
        }
    }

    fn carrying(calls: &[(ToolCall, ApprovalId)], agent: Option<AgentRef>) -> EventBody {
        let from_run = crate::ids::RunId::new();
        EventBody::RunCreated {
            input: vec![Message::User { content: "go on".into() }],
            agent,
            carried: calls
                .iter()
                .map(|(call, id)| crate::event::CarriedCall { from_run, call: call.clone(), approval_id: *id })
                .collect(),
            metadata: serde_json::json!({"from": "test"}),
        }
    }

    #[test]
    fn pause_mode_parses_with_hold_as_the_default() {
        assert_eq!(agent().pause, PauseMode::Hold);
        assert_eq!(agent_pausing("hold").pause, PauseMode::Hold);
        assert_eq!(agent_pausing("complete").pause, PauseMode::Complete);
        assert!(
            AgentSpec::parse("name: a\nmodel: {provider: scripted, name: s}\npause: later\n", SpecFormat::Yaml)
                .is_err(),
            "an unknown pause mode is refused"
        );
    }

    #[test]
    fn pause_complete_finishes_where_hold_waits_for_the_client() {
        let (hold, complete) = (agent_pausing("hold"), agent_pausing("complete"));
        let mut r = RunState::created(2, T0);
        r.apply(T0, &responded(vec![call("c1", "ask"), call("c2", "clock")], Some("one moment"))).unwrap();
        // Server tools still run first in both modes.
        let run_clock = Decision::RunTools { calls: vec![call("c2", "clock")], to_start: vec![call("c2", "clock")] };
        assert_eq!(decide(&hold, &r, T0, &classes), run_clock);
        assert_eq!(decide(&complete, &r, T0, &classes), run_clock);
        r.apply(T0, &started("c2")).unwrap();
        r.apply(T0, &completed("c2", "clock", "noon")).unwrap();
        assert_eq!(decide(&hold, &r, T0, &classes), Decision::AwaitClient { calls: vec![call("c1", "ask")] });
        assert_eq!(
            decide(&complete, &r, T0, &classes),
            Decision::Finish { output: Some("one moment".into()) },
            "complete: the run ends with the client's call open"
        );
        // The run can indeed end with the call still pending; it stays in the state.
        let mut ended = r.clone();
        ended.apply(T0, &EventBody::RunCompleted { output: Some("one moment".into()) }).unwrap();
        assert_eq!(ended.status, RunStatus::Completed);
        assert_eq!(ended.pending.iter().map(|p| p.call.id.as_str()).collect::<Vec<_>>(), vec!["c1"]);
        assert_eq!(decide(&complete, &ended, T0, &classes), Decision::Idle);
    }

    #[test]
    fn pause_complete_finishes_where_hold_waits_for_a_tool_call_approval() {
        let (hold, complete) = (agent_pausing("hold"), agent_pausing("complete"));
        let mut r = RunState::created(2, T0);
        r.apply(T0, &responded(vec![call("c1", "pay")], None)).unwrap();
        // The question is asked (recorded) before anything else, in both modes.
        for a in [&hold, &complete] {
            let Decision::RequestApprovals { requests } = decide(a, &r, T0, &classes) else { panic!("must ask first") };
            assert_eq!((requests.len(), requests[0].kind), (1, ApprovalKind::ToolCall));
        }
        let id = ApprovalId::new();
        r.apply(T0, &requested(id, "c1", ApprovalKind::ToolCall)).unwrap();
        assert_eq!(decide(&hold, &r, T0, &classes), Decision::AwaitApproval { approval_ids: vec![id] });
        assert_eq!(decide(&complete, &r, T0, &classes), Decision::Finish { output: None });
        // A client call and an approval together: complete still finishes, hold waits for the person.
        let mut both = RunState::created(2, T0);
        both.apply(T0, &responded(vec![call("c1", "pay"), call("c2", "ask")], Some("both"))).unwrap();
        both.apply(T0, &requested(id, "c1", ApprovalKind::ToolCall)).unwrap();
        assert_eq!(decide(&hold, &both, T0, &classes), Decision::AwaitApproval { approval_ids: vec![id] });
        assert_eq!(decide(&complete, &both, T0, &classes), Decision::Finish { output: Some("both".into()) });
    }

    #[test]
    fn pause_complete_still_waits_on_an_unknown_outcome() {
        let complete = agent_pausing("complete");
        let mut r = RunState::created(2, T0);
        r.apply(T0, &responded(vec![call("c1", "charge")], None)).unwrap();
        r.apply(T0, &started("c1")).unwrap();
        let Decision::RequestApprovals { requests } = decide(&complete, &r, T0, &classes) else { panic!() };
        assert_eq!(requests[0].kind, ApprovalKind::OutcomeUnknown);
        let id = ApprovalId::new();
        r.apply(T0, &requested(id, "c1", ApprovalKind::OutcomeUnknown)).unwrap();
        assert_eq!(
            decide(&complete, &r, T0, &classes),
            Decision::AwaitApproval { approval_ids: vec![id] },
            "an unknown outcome is settled in its own run, never handed on"
        );
        // Even alongside a tool-call approval that alone would end the run.
        let mut mixed = RunState::created(2, T0);
        mixed.apply(T0, &responded(vec![call("c1", "charge"), call("c2", "pay")], None)).unwrap();
        mixed.apply(T0, &started("c1")).unwrap();
        let (unknown, question) = (ApprovalId::new(), ApprovalId::new());
        mixed.apply(T0, &requested(unknown, "c1", ApprovalKind::OutcomeUnknown)).unwrap();
        mixed.apply(T0, &requested(question, "c2", ApprovalKind::ToolCall)).unwrap();
        assert_eq!(
            decide(&complete, &mixed, T0, &classes),
            Decision::AwaitApproval { approval_ids: vec![unknown, question] }
        );
    }

    #[test]
    fn created_from_takes_over_carried_calls_and_the_agent() {
        let id = ApprovalId::new();
        let pay = ToolCall { id: "c1".into(), name: "pay".into(), arguments: r#"{"amount": 3}"#.into() };
        let other = AgentRef { name: "b".into(), version: 7 };
        let r = RunState::created_from(9, T0, &carrying(&[(pay.clone(), id)], Some(other.clone())));
        assert_eq!((r.created_seq, r.created_at, r.steps), (9, T0, 0));
        assert_eq!(r.status, RunStatus::AwaitingApproval, "nothing to do until the carried approval is decided");
        assert_eq!(r.agent, Some(other));
        assert!(r.needs_model && !r.deleted);
        assert_eq!(r.pending.len(), 1);
        let p = &r.pending[0];
        assert_eq!(p.call, pay);
        assert!(p.idempotency_key.is_none() && !p.awaiting_client && p.approved_arguments.is_none());
        let a = p.approval.as_ref().unwrap();
        assert_eq!((a.id, a.kind, a.decision), (id, ApprovalKind::ToolCall, None));
        for mode in ["hold", "complete"] {
            assert_eq!(
                decide(&agent_pausing(mode), &r, T0, &classes),
                Decision::Idle,
                "{mode}: waits, holds no worker"
            );
        }
        // Nothing can skip the decision.
        assert!(r.clone().apply(T0, &started("c1")).is_err(), "no start before the carried approval is decided");
        assert!(r.clone().apply(T0, &responded(vec![], Some("x"))).is_err(), "no model call while calls are pending");

        // Without carried calls: the plain created state, agent or not.
        let plain = RunState::created_from(9, T0, &EventBody::run_created(vec![Message::User { content: "x".into() }]));
        assert_eq!(plain, RunState::created(9, T0));
        let other_agent =
            RunState::created_from(9, T0, &carrying(&[], Some(AgentRef { name: "b".into(), version: 1 })));
        assert_eq!(other_agent.status, RunStatus::Queued);
        assert!(other_agent.pending.is_empty());
        assert_eq!(other_agent.agent.as_ref().map(|a| a.version), Some(1));
        assert_eq!(RunState::created_from(9, T0, &EventBody::RunDeleted {}), RunState::created(9, T0));
    }

    #[test]
    fn carried_calls_run_or_are_answered_once_decided() {
        let id = ApprovalId::new();
        let pay = call("c1", "pay");
        let carried = RunState::created_from(9, T0, &carrying(&[(pay.clone(), id)], None));
        for mode in ["hold", "complete"] {
            let a = agent_pausing(mode);
            // Approved: the call runs in this run (even where `complete` would end a waiting run).
            let mut r = carried.clone();
            r.apply(T0, &decided(id, "c1", ApprovalDecision::Approve)).unwrap();
            assert_eq!(r.status, RunStatus::Queued, "decided: claimable");
            assert_eq!(
                decide(&a, &r, T0, &classes),
                Decision::RunTools { calls: vec![pay.clone()], to_start: vec![pay.clone()] }
            );
            r.apply(T0, &started("c1")).unwrap();
            r.apply(T0, &completed("c1", "pay", "paid")).unwrap();
            assert!(r.pending.is_empty());
            assert_eq!(
                decide(&a, &r, T0, &classes),
                Decision::CallModel { step: 1 },
                "{mode}: then the model hears it"
            );

            // Denied: the model is told; nothing runs.
            let mut r = carried.clone();
            r.apply(T0, &decided(id, "c1", ApprovalDecision::Deny)).unwrap();
            assert!(r.clone().apply(T0, &started("c1")).is_err(), "a denied call never starts");
            let Decision::RecordResults { results } = decide(&a, &r, T0, &classes) else { panic!("{mode}") };
            assert_eq!(results.len(), 1);
            assert_eq!(results[0].0, pay);
            assert!(results[0].2 && results[0].1.contains("denied by principal:boss: because"), "{results:?}");
            r.apply(T0, &completed("c1", "pay", &results[0].1)).unwrap();
            assert_eq!(decide(&a, &r, T0, &classes), Decision::CallModel { step: 1 });

            // Expired: the model is told it expired.
            let mut r = carried.clone();
            r.apply(T0, &decided(id, "c1", ApprovalDecision::Expire)).unwrap();
            let Decision::RecordResults { results } = decide(&a, &r, T0, &classes) else { panic!("{mode}") };
            assert!(results[0].2 && results[0].1.contains("expired"), "{results:?}");
        }
        // Edited arguments are what runs.
        let mut r = carried.clone();
        r.apply(
            T0,
            &EventBody::ApprovalDecided {
                approval_id: id,
                call_id: "c1".into(),
                decision: ApprovalDecision::Approve,
                decided_by: "principal:boss".into(),
                reason: None,
                arguments: Some(r#"{"amount": 1}"#.into()),
                output: None,
            },
        )
        .unwrap();
        let Decision::RunTools { calls, .. } = decide(&agent(), &r, T0, &classes) else { panic!() };
        assert_eq!(calls[0].arguments, r#"{"amount": 1}"#);
        // A carried tool-call approval is not answered with an unknown-outcome decision, nor twice.
        let mut r = carried.clone();
        assert!(r.apply(T0, &decided(id, "c1", ApprovalDecision::Retry)).is_err());
        assert!(r.apply(T0, &decided(ApprovalId::new(), "c1", ApprovalDecision::Approve)).is_err(), "another id");
        r.apply(T0, &decided(id, "c1", ApprovalDecision::Approve)).unwrap();
        assert!(r.apply(T0, &decided(id, "c1", ApprovalDecision::Deny)).is_err(), "decisions are single-use");
    }

    #[test]
    fn a_run_carrying_two_calls_waits_for_both_decisions() {
        let (i1, i2) = (ApprovalId::new(), ApprovalId::new());
        let mut r = RunState::created_from(9, T0, &carrying(&[(call("c1", "pay"), i1), (call("c2", "pay"), i2)], None));
        assert_eq!(r.status, RunStatus::AwaitingApproval);
        r.apply(T0, &decided(i1, "c1", ApprovalDecision::Approve)).unwrap();
        assert_eq!(r.status, RunStatus::AwaitingApproval, "c2 is still open");
        assert_eq!(decide(&agent(), &r, T0, &classes), Decision::Idle);
        r.apply(T0, &decided(i2, "c2", ApprovalDecision::Deny)).unwrap();
        assert_eq!(r.status, RunStatus::Queued);
        // The denial is recorded before the approved call runs.
        let Decision::RecordResults { results } = decide(&agent(), &r, T0, &classes) else { panic!() };
        assert_eq!(results.iter().map(|x| x.0.id.as_str()).collect::<Vec<_>>(), vec!["c2"]);
    }

    fn finished(ending: EventBody) -> RunState {
        let mut r = RunState::created(2, T0);
        r.apply(T0, &responded(vec![], Some("hi"))).unwrap();
        r.apply(T0.plus(std::time::Duration::from_secs(1)), &ending).unwrap();
        r
    }

    fn endings() -> [EventBody; 3] {
        [
            EventBody::RunCompleted { output: Some("hi".into()) },
            EventBody::RunFailed { error: ErrorInfo::new("boom", "broke") },
            EventBody::RunCancelled { reason: "stop".into() },
        ]
    }

    #[test]
    fn only_a_finished_run_can_be_deleted() {
        let mut queued = RunState::created(2, T0);
        let mut running = RunState::created(2, T0);
        running.apply(T0, &responded(vec![call("c1", "clock")], None)).unwrap();
        let mut client = RunState::created(2, T0);
        client.apply(T0, &responded(vec![call("c1", "ask")], None)).unwrap();
        client.apply(T0, &EventBody::RunRequiresAction { tool_calls: vec![call("c1", "ask")] }).unwrap();
        let mut approval = RunState::created(2, T0);
        approval.apply(T0, &responded(vec![call("c1", "pay")], None)).unwrap();
        let id = ApprovalId::new();
        approval.apply(T0, &requested(id, "c1", ApprovalKind::ToolCall)).unwrap();
        approval.apply(T0, &EventBody::RunAwaitingApproval { approval_ids: vec![id] }).unwrap();
        let mut carried = RunState::created_from(2, T0, &carrying(&[(call("c1", "pay"), id)], None));
        for r in [&mut queued, &mut running, &mut client, &mut approval, &mut carried] {
            let before = r.clone();
            let err = r.apply(T0, &EventBody::RunDeleted {}).unwrap_err();
            assert!(err.contains("finished"), "{err}");
            assert_eq!(*r, before, "a refused delete changes nothing ({:?})", before.status);
        }
        for ending in endings() {
            let mut r = finished(ending);
            let before = r.clone();
            r.apply(T0.plus(std::time::Duration::from_secs(5)), &EventBody::RunDeleted {}).unwrap();
            assert!(r.deleted);
            assert_eq!(RunState { deleted: false, ..r.clone() }, before, "deleting changes nothing else");
            // Deleted is still finished: no events but closing ones.
            assert!(r.apply(T0, &EventBody::RunCancelRequested { reason: "x".into() }).is_err());
            assert!(r.apply(T0, &EventBody::RunCompleted { output: None }).is_err());
            assert_eq!(decide(&agent(), &r, T0, &classes), Decision::Idle);
        }
    }

    #[test]
    fn expire_closes_an_approval_a_finished_run_left_open() {
        let complete = agent_pausing("complete");
        let id = ApprovalId::new();
        let later = T0.plus(std::time::Duration::from_secs(30));
        let open_ended = |ending: EventBody| {
            let mut r = RunState::created(2, T0);
            r.apply(T0, &responded(vec![call("c1", "pay")], Some("asking"))).unwrap();
            r.apply(T0, &requested(id, "c1", ApprovalKind::ToolCall)).unwrap();
            r.apply(T0.plus(std::time::Duration::from_secs(1)), &ending).unwrap();
            r
        };
        // How `complete` ends such a run.
        let mut r = RunState::created(2, T0);
        r.apply(T0, &responded(vec![call("c1", "pay")], Some("asking"))).unwrap();
        r.apply(T0, &requested(id, "c1", ApprovalKind::ToolCall)).unwrap();
        assert_eq!(decide(&complete, &r, T0, &classes), Decision::Finish { output: Some("asking".into()) });

        for ending in endings() {
            let mut r = open_ended(ending);
            let status = r.status;
            let before = r.clone();
            for refused in [ApprovalDecision::Approve, ApprovalDecision::Deny] {
                assert!(r.apply(later, &decided(id, "c1", refused)).is_err(), "{status:?}: {refused:?} after the end");
            }
            assert!(
                r.apply(later, &decided(ApprovalId::new(), "c1", ApprovalDecision::Expire)).is_err(),
                "an approval the run never asked"
            );
            assert!(r.apply(later, &decided(id, "c9", ApprovalDecision::Expire)).is_err(), "a call the run never made");
            assert_eq!(r, before, "refused decisions change nothing");

            r.apply(later, &decided(id, "c1", ApprovalDecision::Expire)).unwrap();
            assert_eq!(r.status, status, "the run stays {status:?}");
            assert_eq!(r.finished_at, before.finished_at);
            assert_eq!((&r.output, &r.error), (&before.output, &before.error));
            let a = r.pending[0].approval.as_ref().unwrap();
            assert_eq!(a.decision, Some(ApprovalDecision::Expire));
            assert!(r.apply(later, &decided(id, "c1", ApprovalDecision::Expire)).is_err(), "expires once");

            // Everything else is still refused on the finished run.
            for late in [
                responded(vec![], Some("more")),
                started("c1"),
                completed("c1", "pay", "paid"),
                EventBody::RunRequiresAction { tool_calls: vec![call("c1", "pay")] },
                EventBody::RunAwaitingApproval { approval_ids: vec![id] },
                EventBody::RunCancelRequested { reason: "late".into() },
                EventBody::RunCompleted { output: None },
                EventBody::RunFailed { error: ErrorInfo::new("late", "late") },
                EventBody::RunCancelled { reason: "late".into() },
                requested(ApprovalId::new(), "c1", ApprovalKind::OutcomeUnknown),
            ] {
                let before = r.clone();
                assert!(r.apply(later, &late).is_err(), "{status:?} refuses {}", late.kind());
                assert_eq!(r, before);
            }
            assert_eq!(decide(&complete, &r, later, &classes), Decision::Idle);
        }
    }

    #[test]
    fn session_level_events_are_refused_by_a_run() {
        let session_level = [
            EventBody::SessionCreated { agent: "a".into(), agent_version: 1, metadata: serde_json::Value::Null },
            EventBody::ItemsAdded { items: vec![Message::User { content: "hi".into() }] },
            EventBody::ItemRemoved { seq: 2, index: 0 },
            EventBody::SessionUpdated { metadata: serde_json::json!({"k": "v"}) },
            EventBody::run_created(vec![Message::User { content: "again".into() }]),
        ];
        let mut active = RunState::created(2, T0);
        active.apply(T0, &responded(vec![call("c1", "clock")], None)).unwrap();
        let runs = [RunState::created(2, T0), active, finished(EventBody::RunCompleted { output: None })];
        for mut r in runs {
            for body in &session_level {
                let before = r.clone();
                assert!(r.apply(T0, body).is_err(), "{:?} refuses {}", before.status, body.kind());
                assert_eq!(r, before);
            }
        }
        for body in &session_level[..4] {
            assert!(body.is_session_level(), "{}", body.kind());
        }
        assert!(!session_level[4].is_session_level());
        assert!(!EventBody::RunDeleted {}.is_session_level());
    }
}
