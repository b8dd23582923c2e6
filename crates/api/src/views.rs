//! The API's response shapes. Domain records are converted here, so the wire format is
//! decided in one place and described in the OpenAPI document.

use serde::Serialize;
use stead_core::message::{ToolCall, Usage};
use stead_store::{AgentVersion, RunRecord, SessionRecord};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Agent {
    /// `agent`.
    pub object: &'static str,
    pub id: String,
    pub name: String,
    pub version: u32,
    /// Hex SHA-256 of the spec's canonical JSON.
    pub spec_hash: String,
    pub created_at: String,
    /// The agent spec, as stored (see the README for its fields), with literal MCP header
    /// values shown as `[redacted]` (`${env:VAR}` references are shown).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

/// Header values given literally (e.g. a bearer token a Responses API caller sent for its
/// MCP server) are secrets: they are used, never shown.
fn redact_headers(spec: &mut serde_json::Value) {
    for server in spec["mcp_servers"].as_array_mut().into_iter().flatten() {
        for (_, v) in server["headers"].as_object_mut().into_iter().flatten() {
            if v.as_str().is_some_and(|s| !s.starts_with("${env:") || !s.ends_with('}')) {
                *v = serde_json::Value::String("[redacted]".into());
            }
        }
    }
}

impl From<AgentVersion> for Agent {
    fn from(v: AgentVersion) -> Self {
        Self {
            object: "agent",
            id: v.id.to_string(),
            name: v.name,
            version: v.version,
            spec_hash: v.spec_hash,
            created_at: v.created_at.to_rfc3339(),
            spec: {
                let mut spec = serde_json::to_value(&v.spec).unwrap_or_default();
                redact_headers(&mut spec);
                spec
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Session {
    /// `session`.
    pub object: &'static str,
    pub id: String,
    pub agent: String,
    pub agent_version: u32,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Sequence number of the newest event.
    pub head_seq: u64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<SessionRecord> for Session {
    fn from(s: SessionRecord) -> Self {
        Self {
            object: "session",
            id: s.id.to_string(),
            agent: s.agent,
            agent_version: s.agent_version,
            metadata: s.metadata,
            head_seq: s.head_seq,
            created_at: s.created_at.to_rfc3339(),
            updated_at: s.updated_at.to_rfc3339(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl From<Usage> for UsageView {
    fn from(u: Usage) -> Self {
        Self { input_tokens: u.input_tokens, output_tokens: u.output_tokens }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ToolCallView {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them (a JSON text).
    pub arguments: String,
}

impl From<&ToolCall> for ToolCallView {
    fn from(c: &ToolCall) -> Self {
        Self { id: c.id.clone(), name: c.name.clone(), arguments: c.arguments.clone() }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RequiredAction {
    /// Run these client-side tools and submit every output to `/v1/runs/{id}/tool_outputs`.
    pub tool_calls: Vec<ToolCallView>,
}

#[derive(Serialize, ToSchema)]
pub struct RunError {
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct Run {
    /// `run`.
    pub object: &'static str,
    pub id: String,
    pub session_id: String,
    /// `queued`, `running`, `requires_action`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Model calls made so far.
    pub steps: u32,
    pub usage: UsageView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_action: Option<RequiredAction>,
    /// With `awaiting_approval`: the approvals the run waits for (see `/v1/approvals/{id}`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_approvals: Vec<String>,
    pub cancel_requested: bool,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub updated_at: String,
}

impl From<RunRecord> for Run {
    fn from(r: RunRecord) -> Self {
        let s = &r.state;
        // A queued run that a live worker holds is, to a client, running.
        let leased = r.lease.as_ref().is_some_and(|l| l.expires_at > stead_core::time::Timestamp::now());
        let status = match s.status {
            stead_core::run::RunStatus::Queued if leased => "running",
            other => other.as_str(),
        };
        let waiting: Vec<ToolCallView> =
            s.pending.iter().filter(|p| p.awaiting_client).map(|p| ToolCallView::from(&p.call)).collect();
        Self {
            object: "run",
            id: r.id.to_string(),
            session_id: r.session_id.to_string(),
            status: status.to_owned(),
            steps: s.steps,
            usage: s.usage.into(),
            output: s.output.clone(),
            error: s.error.as_ref().map(|e| RunError { code: e.code.clone(), message: e.message.clone() }),
            required_action: (s.status == stead_core::run::RunStatus::RequiresAction)
                .then_some(RequiredAction { tool_calls: waiting }),
            pending_approvals: s
                .pending
                .iter()
                .filter_map(|p| p.approval.as_ref().filter(|a| a.decision.is_none()).map(|a| a.id.to_string()))
                .collect(),
            cancel_requested: s.cancel_requested.is_some(),
            created_at: s.created_at.to_rfc3339(),
            finished_at: s.finished_at.map(|t| t.to_rfc3339()),
            updated_at: r.updated_at.to_rfc3339(),
        }
    }
}

/// One page of a list.
#[derive(Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    /// `list`.
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    /// Pass as `after` to get the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A page of a session's events.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    pub object: &'static str,
    /// Events in sequence order; each has `seq`, `type`, `data`, `actor`, `at`, `run_id`, `hash`.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<stead_core::event::Event>,
    pub has_more: bool,
    /// Pass as `after` for the next page.
    pub next_after: u64,
}

#[derive(Serialize, ToSchema)]
pub struct AuditReportView {
    pub session_id: String,
    pub ok: bool,
    pub events_verified: u64,
    pub head_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub first_broken: Option<stead_core::event::BrokenLink>,
}

impl From<stead_engine::AuditReport> for AuditReportView {
    fn from(r: stead_engine::AuditReport) -> Self {
        Self {
            session_id: r.session_id.to_string(),
            ok: r.ok,
            events_verified: r.events_verified,
            head_seq: r.head_seq,
            first_broken: r.first_broken,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Approval {
    /// `approval`.
    pub object: &'static str,
    pub id: String,
    pub session_id: String,
    pub run_id: String,
    /// `tool_call` (approve or deny) or `outcome_unknown` (retry, skip or fail).
    pub kind: String,
    /// `pending`, `approved`, `denied`, `expired`, `retried`, `skipped` or `failed`.
    pub status: String,
    pub call_id: String,
    pub tool_name: String,
    /// The arguments the model proposed (JSON text).
    pub arguments: String,
    /// The role a decider must hold.
    pub role: String,
    pub reason: String,
    pub created_at: String,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_arguments: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl From<stead_store::ApprovalRecord> for Approval {
    fn from(a: stead_store::ApprovalRecord) -> Self {
        use stead_core::event::ApprovalDecision as D;
        let status = match a.decision {
            None => "pending",
            Some(D::Approve) => "approved",
            Some(D::Deny) => "denied",
            Some(D::Expire) => "expired",
            Some(D::Retry) => "retried",
            Some(D::Skip) => "skipped",
            Some(D::Fail) => "failed",
        };
        Self {
            object: "approval",
            id: a.id.to_string(),
            session_id: a.session_id.to_string(),
            run_id: a.run_id.to_string(),
            kind: a.kind.as_str().to_owned(),
            status: status.to_owned(),
            call_id: a.call_id,
            tool_name: a.tool_name,
            arguments: a.arguments,
            role: a.role,
            reason: a.reason,
            created_at: a.created_at.to_rfc3339(),
            expires_at: a.expires_at.to_rfc3339(),
            decided_by: a.decided_by,
            decided_at: a.decided_at.map(|t| t.to_rfc3339()),
            decision_reason: a.decision_reason,
            decided_arguments: a.decided_arguments,
            output: a.output,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn literal_mcp_headers_are_redacted() {
        let mut spec = serde_json::json!({"mcp_servers": [
            {"name": "a", "headers": {"Authorization": "Bearer sk-secret", "X-Key": "${env:KEY}", "X-Mixed": "${env:A}-tail"}},
            {"name": "b"}
        ]});
        super::redact_headers(&mut spec);
        let h = &spec["mcp_servers"][0]["headers"];
        assert_eq!(h["Authorization"], "[redacted]");
        assert_eq!(h["X-Key"], "${env:KEY}");
        assert_eq!(h["X-Mixed"], "[redacted]");
    }
}
