//! `/v1/responses`: create (blocking, streaming or in the background), retrieve (optionally
//! as a resumable stream), delete, cancel, and the input items of a response.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use stead_api::{Principal, authenticate};
use stead_core::event::{AgentRef, ApprovalDecision, CarriedCall, Event, EventBody};
use stead_core::ids::{ApprovalId, RunId, SessionId, TenantId};
use stead_core::message::{Message, ToolCall};
use stead_core::run::RunStatus;
use stead_engine::{Decider, DecisionInput, RunInput, SessionWithRun};
use stead_store::RunRecord;

use crate::error::{OaiError, OaiResult, parse_body, respond};
use crate::items::{META_KEY, Rendered, Side, render};
use crate::list::{ListQuery, page};
use crate::request::{CreateResponse, ParsedInput, parse_input, run_agent, validate};
use crate::{OaiState, SESSION_KIND};

pub(crate) fn response_id(run: &RunId) -> String {
    let s = run.to_string();
    format!("resp_{}", s.strip_prefix("run_").unwrap_or(&s))
}

pub(crate) fn parse_response_id(id: &str) -> OaiResult<RunId> {
    id.strip_prefix("resp_")
        .and_then(|hex| format!("run_{hex}").parse().ok())
        .ok_or_else(|| OaiError::not_found("Response", id))
}

pub(crate) fn conversation_id(session: &SessionId) -> String {
    let s = session.to_string();
    format!("conv_{}", s.strip_prefix("sess_").unwrap_or(&s))
}

pub(crate) fn parse_conversation_id(id: &str) -> OaiResult<SessionId> {
    id.strip_prefix("conv_")
        .and_then(|hex| format!("sess_{hex}").parse().ok())
        .ok_or_else(|| OaiError::not_found("Conversation", id))
}

/// A response's run, or 404 (also for another tenant's, and for deleted ones).
pub(crate) async fn load_run(st: &OaiState, tenant: &TenantId, id: &str) -> OaiResult<RunRecord> {
    let run_id = parse_response_id(id)?;
    match st.engine.store().get_run(tenant, &run_id).await {
        Ok(r) if !r.state.deleted => Ok(r),
        Ok(_) | Err(stead_store::Error::NotFound { .. }) => Err(OaiError::not_found("Response", id)),
        Err(e) => Err(e.into()),
    }
}

/// The run's events, from its `run_created` to its last (or the session's head).
pub(crate) async fn run_events(st: &OaiState, run: &RunRecord) -> OaiResult<Vec<Event>> {
    let store = st.engine.store();
    let mut out = Vec::new();
    let mut after = run.state.created_seq.saturating_sub(1);
    loop {
        let batch = store.read_events(&run.tenant_id, &run.session_id, after, 500).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        let mut done = false;
        for e in batch {
            if e.run_id == Some(run.id) {
                done = matches!(
                    e.body,
                    EventBody::RunCompleted { .. } | EventBody::RunFailed { .. } | EventBody::RunCancelled { .. }
                );
                out.push(e);
                if done {
                    break;
                }
            }
        }
        if done {
            break;
        }
    }
    Ok(out)
}

fn created_meta(events: &[Event]) -> Value {
    events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::RunCreated { metadata, .. } => Some(metadata[META_KEY].clone()),
            _ => None,
        })
        .unwrap_or(Value::Null)
}

/// The response object for a run, rendered from its log.
pub(crate) fn response_object(run: &RunRecord, events: &[Event]) -> Value {
    let meta = created_meta(events);
    let rendered = render(&run.session_id, events);
    let output: Vec<Value> =
        rendered.into_iter().filter(|r| r.run == Some(run.id) && r.side == Side::Output).map(|r| r.item).collect();
    let finish = events.iter().rev().find_map(|e| match &e.body {
        EventBody::ModelResponded { finish_reason, .. } => Some(finish_reason.as_str()),
        _ => None,
    });
    let s = &run.state;
    let (status, incomplete) = match s.status {
        // Queued but held by a worker (or past its first step) is under way.
        RunStatus::Queued if run.lease.is_some() || s.steps > 0 => ("in_progress", Value::Null),
        RunStatus::Queued => ("queued", Value::Null),
        RunStatus::Running | RunStatus::RequiresAction | RunStatus::AwaitingApproval => ("in_progress", Value::Null),
        RunStatus::Completed if finish == Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        RunStatus::Completed => ("completed", Value::Null),
        RunStatus::Failed => ("failed", Value::Null),
        RunStatus::Cancelled => ("cancelled", Value::Null),
    };
    let error = match (s.status, &s.error) {
        (RunStatus::Failed, Some(e)) => json!({"code": openai_error_code(&e.code), "message": e.message}),
        _ => Value::Null,
    };
    let usage = json!({
        "input_tokens": s.usage.input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": s.usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": s.usage.total(),
    });
    let or = |key: &str, default: Value| -> Value {
        match meta.get(key) {
            Some(v) if !v.is_null() => v.clone(),
            _ => default,
        }
    };
    json!({
        "id": response_id(&run.id),
        "object": "response",
        "created_at": s.created_at.millis() / 1000,
        "completed_at": s.finished_at.map(|t| t.millis() / 1000),
        "status": status,
        "background": or("background", json!(false)),
        "error": error,
        "incomplete_details": incomplete,
        "instructions": or("instructions", Value::Null),
        "max_output_tokens": or("max_output_tokens", Value::Null),
        "max_tool_calls": or("max_tool_calls", Value::Null),
        "model": or("model", Value::Null),
        "output": output,
        "parallel_tool_calls": or("parallel_tool_calls", json!(true)),
        "previous_response_id": or("previous_response_id", Value::Null),
        "conversation": or("conversation", Value::Null),
        "reasoning": or("reasoning", json!({"effort": null, "summary": null})),
        "service_tier": or("service_tier", json!("default")),
        "store": or("store", json!(true)),
        "temperature": or("temperature", json!(1.0)),
        "text": or("text", json!({"format": {"type": "text"}})),
        "tool_choice": or("tool_choice", json!("auto")),
        "tools": or("tools", json!([])),
        "top_p": or("top_p", json!(1.0)),
        "truncation": or("truncation", json!("disabled")),
        "usage": usage,
        "user": or("user", Value::Null),
        "metadata": or("metadata", json!({})),
    })
}

/// OpenAI's response error codes are a closed set; Stead's codes map onto the nearest.
fn openai_error_code(code: &str) -> &'static str {
    match code {
        "rate_limited" => "rate_limit_exceeded",
        "run_cancelled" => "server_error",
        _ => "server_error",
    }
}

/// What a new response continues from.
struct Base {
    /// The run it follows, if any (its pending calls must be answered).
    prev: Option<RunRecord>,
    prev_events: Vec<Event>,
    /// The session to run in; `None` means a new one.
    session: Option<SessionId>,
    /// Create the run only if the session's head is still this (continuing "right after").
    expected_head: Option<u64>,
    /// A new session must first get this history (a branch).
    seed: Vec<Message>,
    conversation: Option<SessionId>,
}

/// Client calls and approvals `prev` ended on without an answer.
struct Open {
    client_calls: Vec<ToolCall>,
    approvals: HashMap<ApprovalId, ToolCall>,
    names: HashMap<String, String>,
}

fn open_items(prev: &RunRecord, events: &[Event]) -> Open {
    let mut open = Open { client_calls: Vec::new(), approvals: HashMap::new(), names: HashMap::new() };
    if prev.state.status != RunStatus::Completed {
        return open;
    }
    let mut calls: HashMap<String, ToolCall> = HashMap::new();
    let mut last: Vec<ToolCall> = Vec::new();
    let mut asked: HashMap<String, ApprovalId> = HashMap::new();
    for e in events.iter().filter(|e| e.run_id == Some(prev.id)) {
        match &e.body {
            EventBody::RunCreated { carried, .. } => {
                for c in carried {
                    calls.insert(c.call.id.clone(), c.call.clone());
                }
            }
            EventBody::ModelResponded { tool_calls, .. } => {
                for c in tool_calls {
                    calls.insert(c.id.clone(), c.clone());
                    open.names.insert(c.id.clone(), c.name.clone());
                }
                last = tool_calls.clone();
            }
            EventBody::ApprovalRequested { approval_id, call_id, .. } => {
                asked.insert(call_id.clone(), *approval_id);
                if let Some(c) = calls.get(call_id) {
                    open.approvals.insert(*approval_id, c.clone());
                }
            }
            EventBody::ApprovalDecided { approval_id, .. } => {
                open.approvals.remove(approval_id);
            }
            EventBody::ToolCallCompleted { call_id, .. } => {
                last.retain(|c| &c.id != call_id);
            }
            _ => {}
        }
    }
    open.client_calls = last.into_iter().filter(|c| !asked.contains_key(&c.id)).collect();
    open
}

async fn resolve_base(st: &OaiState, p: &Principal, req: &CreateResponse, store_it: bool) -> OaiResult<Base> {
    let store = st.engine.store();
    if let Some(conv) = &req.conversation {
        let id = match conv {
            Value::String(s) => s.clone(),
            Value::Object(o) => o.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        let session_id = parse_conversation_id(&id).map_err(|e| e.with_param("conversation"))?;
        let session = match store.get_session(&p.tenant, &session_id).await {
            Ok(s) => s,
            Err(stead_store::Error::NotFound { .. }) => {
                return Err(OaiError::not_found("Conversation", &id).with_param("conversation"));
            }
            Err(e) => return Err(e.into()),
        };
        // The conversation's latest run, if it finished, may have left calls to answer.
        let window = store.read_message_window(&p.tenant, &session_id, session.head_seq, 20).await?;
        let latest = window.iter().rev().find_map(|e| e.run_id);
        let mut prev = None;
        let mut prev_events = Vec::new();
        if let Some(r) = latest {
            let run = store.get_run(&p.tenant, &r).await?;
            if run.status().is_terminal() {
                prev_events = run_events(st, &run).await?;
                prev = Some(run);
            }
        }
        return Ok(Base {
            prev,
            prev_events,
            session: Some(session_id),
            expected_head: None,
            seed: Vec::new(),
            conversation: Some(session_id),
        });
    }
    let Some(prev_id) = &req.previous_response_id else {
        return Ok(Base {
            prev: None,
            prev_events: Vec::new(),
            session: None,
            expected_head: None,
            seed: Vec::new(),
            conversation: None,
        });
    };
    let prev = load_run(st, &p.tenant, prev_id).await.map_err(|e| e.with_param("previous_response_id"))?;
    if !prev.status().is_terminal() {
        return Err(OaiError::invalid(
            "previous_response_id",
            "previous_response_not_finished",
            format!("Previous response '{prev_id}' is still {}; wait for it to finish.", prev.status().as_str()),
        ));
    }
    let session = store.get_session(&p.tenant, &prev.session_id).await?;
    // Everything after the previous response's run_created, to see whether the session moved on.
    let tail = crate::events_after(st, &p.tenant, &prev.session_id, prev.state.created_seq.saturating_sub(1)).await?;
    let moved_on = tail.iter().any(|e| e.run_id != Some(prev.id));
    let is_conversation = session.metadata[SESSION_KIND] == "conversation";
    let prev_events: Vec<Event> = tail.iter().filter(|e| e.run_id == Some(prev.id)).cloned().collect();
    if store_it && !moved_on && !is_conversation {
        return Ok(Base {
            prev: Some(prev),
            prev_events,
            session: Some(session.id),
            expected_head: Some(session.head_seq),
            seed: Vec::new(),
            conversation: None,
        });
    }
    let seed = history_until(st, &prev).await?;
    Ok(Base { prev: Some(prev), prev_events, session: None, expected_head: None, seed, conversation: None })
}

/// The conversation as `run` saw it when it finished: every message before and of it, without
/// runs that came later, with removed items taken out.
async fn history_until(st: &OaiState, run: &RunRecord) -> OaiResult<Vec<Message>> {
    let events = crate::events_after(st, &run.tenant_id, &run.session_id, 0).await?;
    let mut created: HashMap<RunId, u64> = HashMap::new();
    for e in &events {
        if let (EventBody::RunCreated { .. }, Some(r)) = (&e.body, e.run_id) {
            created.insert(r, e.seq);
        }
    }
    let last_of_run = events.iter().rev().find(|e| e.run_id == Some(run.id)).map_or(0, |e| e.seq);
    let mut kept: Vec<(u64, u64, u32, Message)> = Vec::new();
    for e in events.iter().filter(|e| e.seq <= last_of_run) {
        let order = match e.run_id {
            Some(r) => match created.get(&r) {
                Some(c) if *c > run.state.created_seq => continue, // a later run
                Some(c) => *c,
                None => 0,
            },
            None => e.seq,
        };
        if let EventBody::ItemRemoved { seq, index } = e.body {
            kept.retain(|k| !(k.1 == seq && k.2 == index));
            continue;
        }
        for (i, m) in e.body.messages().into_iter().enumerate() {
            kept.push((order, e.seq, i as u32, m));
        }
    }
    kept.sort_by_key(|k| (k.0, k.1, k.2));
    Ok(kept.into_iter().map(|k| k.3).collect())
}

fn echo_meta(req: &CreateResponse, model: &str, mcp_labels: &std::collections::BTreeMap<String, String>) -> Value {
    json!({ META_KEY: {
        "model": model,
        "instructions": req.instructions,
        "tools": crate::request::redacted_tools(&req.tools),
        "tool_choice": req.tool_choice.clone().unwrap_or(json!("auto")),
        "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls,
        "truncation": req.truncation.clone().unwrap_or_else(|| "disabled".into()),
        "metadata": req.metadata.clone().unwrap_or_default(),
        "store": req.store.unwrap_or(true),
        "background": req.background.unwrap_or(false),
        "previous_response_id": req.previous_response_id,
        "text": req.text,
        "reasoning": req.reasoning,
        "user": req.user,
        "service_tier": req.service_tier,
        "mcp_labels": mcp_labels,
    }})
}

pub async fn create(State(st): State<OaiState>, headers: HeaderMap, body: Bytes) -> Response {
    respond(create_inner(st, headers, body)).await
}

async fn create_inner(st: OaiState, headers: HeaderMap, body: Bytes) -> OaiResult<Response> {
    let p = authenticate(&st.auth, &headers).await?;
    let req: CreateResponse = parse_body(&body)?;
    validate(&req)?;
    let model = req.model.clone().unwrap_or_default();
    let spec = st.options.routes.spec(&model)?;
    let mut agent = run_agent(&req, spec, st.options.max_messages)?;
    if agent.mcp.len() > crate::request::MAX_MCP_SERVERS {
        return Err(OaiError::invalid(
            "tools",
            "too_many_mcp_servers",
            format!("At most {} mcp tools per request.", crate::request::MAX_MCP_SERVERS),
        ));
    }
    // Credentials live in memory for the response's lifetime, never in the agent version.
    let held = crate::request::hold_credentials(&st.engine, &p.tenant, &mut agent.spec);
    if let Some(guard) = &st.options.mcp_guard {
        for m in &agent.mcp {
            let url = reqwest::Url::parse(&m.url)
                .map_err(|e| OaiError::invalid("tools", "invalid_value", format!("server_url '{}': {e}", m.url)))?;
            guard.check_destination(&url).await.map_err(|why| {
                OaiError::invalid(
                    "tools",
                    "server_url_not_allowed",
                    format!("server_url '{}' is not allowed: {why}", m.url),
                )
            })?;
        }
    }
    let store_it = req.store.unwrap_or(true);
    let background = req.background.unwrap_or(false);
    let stream = req.stream.unwrap_or(false);

    let mut base = resolve_base(&st, &p, &req, store_it).await?;
    let open = base.prev.as_ref().map(|prev| open_items(prev, &base.prev_events));
    let names = open.as_ref().map(|o| o.names.clone()).unwrap_or_default();
    let parsed: ParsedInput = parse_input(req.input.as_ref(), &names)?;

    // Every call the previous response ended on needs its answer, as OpenAI requires.
    let mut carried = Vec::new();
    let mut decisions = Vec::new();
    if let Some(open) = &open {
        for c in &open.client_calls {
            if !parsed.outputs_for.contains(&c.id) {
                return Err(OaiError::invalid(
                    "input",
                    "missing_tool_output",
                    format!("No tool output found for function call {}.", c.id),
                ));
            }
        }
        for (id, call) in &open.approvals {
            let Some(answer) = parsed.approvals.iter().find(|a| &a.approval == id) else {
                return Err(OaiError::invalid(
                    "input",
                    "missing_approval_response",
                    format!(
                        "No mcp_approval_response found for mcp_approval_request {}.",
                        crate::items::approval_item_id(id)
                    ),
                ));
            };
            if base.session.is_none() {
                return Err(OaiError::invalid(
                    "previous_response_id",
                    "approval_already_continued",
                    "This response's approval requests were already answered from another response; a branch cannot answer them again.",
                ));
            }
            let prev = base.prev.as_ref().expect("open items come from a previous run");
            carried.push(CarriedCall { from_run: prev.id, call: call.clone(), approval_id: *id });
            decisions.push((
                *id,
                DecisionInput {
                    decision: if answer.approve { ApprovalDecision::Approve } else { ApprovalDecision::Deny },
                    reason: answer.reason.clone(),
                    arguments: None,
                    output: None,
                },
            ));
        }
    }
    for a in &parsed.approvals {
        if !open.as_ref().is_some_and(|o| o.approvals.contains_key(&a.approval)) {
            return Err(OaiError::invalid(
                "input",
                "invalid_approval_response",
                format!(
                    "mcp_approval_request {} is not open in the response this one continues (answered already, expired, or unknown).",
                    crate::items::approval_item_id(&a.approval)
                ),
            ));
        }
    }
    if parsed.messages.is_empty() && carried.is_empty() {
        return Err(OaiError::invalid("input", "missing_required_parameter", "Missing required parameter: 'input'."));
    }

    // The MCP servers are asked for their tools now, before anything is stored: one that can't
    // be reached fails the request (as OpenAI's 424), rather than a model that silently lacks
    // its tools.
    let spec_json = agent.spec.to_string();
    let (version, defs) = if agent.mcp.is_empty() {
        let v =
            crate::ensure_agent(&st, &p.tenant, &spec_json).await.map_err(|e| OaiError::from(e).with_param("tools"))?;
        (v, Vec::new())
    } else {
        match crate::ensure_agent_with_tools(&st, &p.tenant, &spec_json)
            .await
            .map_err(|e| OaiError::from(e).with_param("tools"))?
        {
            crate::WithTools::Ready(v, defs) => (*v, defs),
            crate::WithTools::Unavailable(problems) => {
                let labels: Vec<&str> = agent.mcp.iter().map(|m| m.label.as_str()).collect();
                return Err(OaiError::new(
                    axum::http::StatusCode::FAILED_DEPENDENCY,
                    "mcp_list_tools_failed",
                    format!(
                        "Error retrieving tool list from MCP server(s) {}: {}",
                        labels.join(", "),
                        problems.join("; ")
                    ),
                )
                .with_param("tools"));
            }
        }
    };
    let agent_ref = AgentRef { name: version.name.clone(), version: version.version };
    let mut list_tools = Vec::new();
    if !agent.mcp.is_empty() {
        // Listed once per chain of responses, like OpenAI: not again when the response this
        // one continues already listed that server.
        let listed = created_meta(&base.prev_events)["mcp_labels"].clone();
        for m in &agent.mcp {
            if listed.as_object().is_some_and(|l| l.values().any(|v| v == m.label.as_str())) {
                continue;
            }
            let prefix = format!("{}__", m.slug);
            let tools: Vec<Value> = defs
                .iter()
                .filter_map(|d| {
                    let name = d.name.strip_prefix(&prefix)?;
                    Some(json!({"name": name, "description": d.description, "input_schema": d.parameters, "annotations": null}))
                })
                .collect();
            list_tools.push(json!({"server_label": m.label, "tools": tools}));
        }
    }
    let mut meta = echo_meta(&req, &model, &agent.mcp_labels);
    if let Some(c) = &base.conversation {
        meta[META_KEY]["conversation"] = json!({"id": conversation_id(c)});
    }
    if !list_tools.is_empty() {
        meta[META_KEY]["mcp_list_tools"] = Value::Array(list_tools);
    }

    let mut run_input = RunInput {
        input: parsed.messages,
        agent: Some(agent_ref.clone()),
        carried,
        decisions,
        metadata: meta,
        expected_head: base.expected_head,
        decider: Some(Decider { id: p.id.clone(), roles: p.roles.clone() }),
        idempotency: stead_api::idempotency(&headers, "POST /v1/responses", &body)?,
    };
    // Subscribe before the run exists, so a stream misses nothing.
    let commits = st.engine.store().subscribe();
    let deltas = st.engine.subscribe_deltas();
    let kind = if store_it { "responses" } else { "unstored" };
    let new_session = |seed: Vec<Message>, run: RunInput| SessionWithRun {
        agent: agent_ref.clone(),
        metadata: json!({ SESSION_KIND: kind }),
        seed,
        run,
    };
    let run = match base.session {
        None => {
            let seed = std::mem::take(&mut base.seed);
            st.engine.create_session_with_run(&p.tenant, &p.id, new_session(seed, run_input)).await?
        }
        Some(session_id) => match st.engine.create_run_with(&p.tenant, &p.id, &session_id, run_input.clone()).await {
            Ok(r) => r,
            // The previous response's session moved on between our look and our write: branch.
            Err(stead_engine::Error::HeadMoved { .. }) => {
                let prev = base.prev.as_ref().expect("expected_head is set only when continuing a run");
                if !run_input.carried.is_empty() {
                    return Err(OaiError::invalid(
                        "previous_response_id",
                        "approval_already_continued",
                        "Another response continued this one at the same time; its approval requests were answered there.",
                    ));
                }
                let seed = history_until(&st, prev).await?;
                run_input.expected_head = None;
                st.engine.create_session_with_run(&p.tenant, &p.id, new_session(seed, run_input)).await?
            }
            Err(e) => return Err(e.into()),
        },
    };
    let cleanup = (!store_it).then_some(run.session_id);
    if !held.is_empty() {
        // Held until the run settles (or its wall time passes), then forgotten.
        let (engine, tenant, run_id) = (st.engine.clone(), p.tenant.clone(), run.id);
        tokio::spawn(async move {
            let _held = held;
            let _ = engine.wait_for_run(&tenant, &run_id, std::time::Duration::from_secs(24 * 3600)).await;
        });
    }

    if stream {
        return Ok(crate::stream::sse(st, p.tenant, run, None, commits, deltas, cleanup).into_response());
    }
    if background {
        let events = run_events(&st, &run).await?;
        return Ok(Json(response_object(&run, &events)).into_response());
    }
    let done = st.engine.wait_for_run(&p.tenant, &run.id, st.options.max_wait).await?;
    let events = run_events(&st, &done).await?;
    let obj = response_object(&done, &events);
    if let Some(s) = cleanup {
        delete_unstored(&st, &p.tenant, &s).await;
    }
    Ok(Json(obj).into_response())
}

/// Erases an unstored response's session, waiting out the worker's lease if it still holds it.
pub(crate) async fn delete_unstored(st: &OaiState, tenant: &TenantId, session: &SessionId) {
    for _ in 0..100 {
        match st.engine.store().delete_session(tenant, session).await {
            Ok(()) | Err(stead_store::Error::NotFound { .. }) => return,
            Err(stead_store::Error::Busy(_)) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => {
                tracing::warn!(%session, error = %e, "could not erase an unstored response; it is swept at the next start");
                return;
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RetrieveQuery {
    pub stream: Option<bool>,
    pub starting_after: Option<u64>,
}

pub async fn retrieve(
    State(st): State<OaiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<RetrieveQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    respond(async {
        let p = authenticate(&st.auth, &headers).await?;
        let Query(q) = q.map_err(|e| OaiError::invalid("query", "invalid_value", e.body_text()))?;
        let run = load_run(&st, &p.tenant, &id).await?;
        if q.stream.unwrap_or(false) {
            let commits = st.engine.store().subscribe();
            let deltas = st.engine.subscribe_deltas();
            let after = q.starting_after;
            return Ok(crate::stream::sse(st.clone(), p.tenant, run, after, commits, deltas, None).into_response());
        }
        let events = run_events(&st, &run).await?;
        Ok(Json(response_object(&run, &events)).into_response())
    })
    .await
}

pub async fn delete(State(st): State<OaiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond(async {
        let p = authenticate(&st.auth, &headers).await?;
        let run = load_run(&st, &p.tenant, &id).await?;
        if !run.status().is_terminal() {
            st.engine.cancel_run(&p.tenant, &p.id, &run.id, "the response was deleted").await.ok();
            st.engine.wait_for_run(&p.tenant, &run.id, std::time::Duration::from_secs(30)).await?;
        }
        st.engine.delete_run(&p.tenant, &p.id, &run.id).await?;
        Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
    })
    .await
}

pub async fn cancel(State(st): State<OaiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond(async {
        let p = authenticate(&st.auth, &headers).await?;
        let run = load_run(&st, &p.tenant, &id).await?;
        let events = run_events(&st, &run).await?;
        if created_meta(&events)["background"] != json!(true) {
            return Err(OaiError::invalid(
                "response_id",
                "invalid_request",
                "Only background responses can be cancelled.",
            ));
        }
        if run.status().is_terminal() {
            return Ok(Json(response_object(&run, &events)).into_response());
        }
        match st.engine.cancel_run(&p.tenant, &p.id, &run.id, "cancelled by the client").await {
            Ok(_) | Err(stead_engine::Error::RunFinished { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let done = st.engine.wait_for_run(&p.tenant, &run.id, std::time::Duration::from_secs(30)).await?;
        let events = run_events(&st, &done).await?;
        Ok(Json(response_object(&done, &events)).into_response())
    })
    .await
}

pub async fn input_items(
    State(st): State<OaiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    respond(async {
        let p = authenticate(&st.auth, &headers).await?;
        let Query(q) = q.map_err(|e| OaiError::invalid("query", "invalid_value", e.body_text()))?;
        let run = load_run(&st, &p.tenant, &id).await?;
        let events = run_events(&st, &run).await?;
        let items: Vec<Value> = render(&run.session_id, &events)
            .into_iter()
            .filter(|r: &Rendered| r.run == Some(run.id) && r.side == Side::Input)
            .map(|r| r.item)
            .collect();
        Ok(Json(page(items, &q, "desc")?).into_response())
    })
    .await
}
