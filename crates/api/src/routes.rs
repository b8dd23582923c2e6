//! Route table and handlers of the native API. Each handler validates its input, calls the
//! engine, and converts the result with `views`; errors go through `error::ApiError`.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use stead_core::agent::SpecFormat;
use stead_core::event::ApprovalDecision;
use stead_core::ids::{ApprovalId, RunId, SessionId};
use stead_core::message::Message;
use stead_engine::{Decider, DecisionInput, ToolOutputInput};
use stead_store::Page;
use utoipa::ToSchema;

use crate::extract::{Json, Query, parse_id};
use crate::stream::{self, StreamScope};
use crate::views::{Agent, Approval, AuditReportView, EventPage, List, Run, Session};
use crate::{ApiError, AppState, Principal};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/agents", post(apply_agent).get(list_agents))
        .route("/v1/agents/{name}", get(get_agent))
        .route("/v1/agents/{name}/versions", get(list_agent_versions))
        .route("/v1/agents/{name}/versions/{version}", get(get_agent_version))
        .route("/v1/agents/{name}/tools", get(list_agent_tools))
        .route("/v1/agents/{name}/tools/refresh", post(refresh_agent_tools))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{session_id}", get(get_session).delete(delete_session))
        .route("/v1/sessions/{session_id}/runs", post(create_run).get(list_runs))
        .route("/v1/sessions/{session_id}/events", get(session_events))
        .route("/v1/sessions/{session_id}/audit", get(audit_session))
        .route("/v1/runs/{run_id}", get(get_run))
        .route("/v1/runs/{run_id}/cancel", post(cancel_run))
        .route("/v1/runs/{run_id}/tool_outputs", post(submit_tool_outputs))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/stream", get(approvals_stream))
        .route("/v1/approvals/{approval_id}", get(get_approval))
        .route("/v1/approvals/{approval_id}/approve", post(approve))
        .route("/v1/approvals/{approval_id}/deny", post(deny))
        .route("/v1/approvals/{approval_id}/resolve", post(resolve))
        .route("/v1/secrets", post(crate::secrets::set_secret).get(crate::secrets::list_secrets))
        .route("/v1/secrets/{name}", axum::routing::delete(crate::secrets::delete_secret))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such endpoint; see /openapi.json")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that method",
            )
        })
}

// ---- system ----

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: storage answers and the dispatcher (which executes runs) has not stopped.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, description = "Ready"), (status = 503, description = "Storage unavailable (`not_ready`) or the dispatcher stopped (`dispatcher_stopped`)", body = crate::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.engine.dispatcher_state() == stead_engine::DispatcherState::Stopped {
        let why = "the dispatcher has stopped: this process no longer executes runs";
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "dispatcher_stopped", why));
    }
    let probe = stead_core::ids::TenantId::default_tenant();
    match state.engine.store().list_sessions(&probe, &Page { after: None, limit: 1 }).await {
        Ok(_) => Ok("ready"),
        Err(e) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", format!("storage is not ready: {e}")))
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "system", responses((status = 200, description = "The OpenAPI document")))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::document_json()).into_response()
}

// ---- paging ----

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Cursor from the previous page's `next_cursor`.
    pub after: Option<String>,
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

fn page(q: &ListQuery) -> Result<Page, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {MAX_PAGE}")));
    }
    // Ask for one more to learn whether there is another page.
    Ok(Page { after: q.after.clone(), limit: limit + 1 })
}

fn list<T: ToSchema, R>(
    mut items: Vec<R>,
    page: &Page,
    cursor: impl Fn(&R) -> String,
    view: impl Fn(R) -> T,
) -> List<T> {
    let want = (page.limit - 1) as usize;
    let has_more = items.len() > want;
    items.truncate(want);
    let next_cursor = if has_more { items.last().map(&cursor) } else { None };
    List { object: "list", data: items.into_iter().map(view).collect(), has_more, next_cursor }
}

// ---- agents ----

/// Create or update an agent: stores the spec as a new immutable version, or returns the
/// latest version unchanged (200) when the spec is identical.
#[utoipa::path(post, path = "/v1/agents", tag = "agents",
    request_body(content = Object, content_type = "application/json",
        description = "An agent spec as JSON; YAML is accepted with `Content-Type: application/yaml`."),
    responses(
        (status = 201, description = "A new version was stored", body = Agent),
        (status = 200, description = "Identical to the latest version; nothing stored", body = Agent),
        (status = 415, description = "Neither JSON nor YAML (`Content-Type`)", body = crate::error::ErrorBody),
        (status = 422, description = "Invalid spec (the error names the line or field)", body = crate::error::ErrorBody)))]
pub async fn apply_agent(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, axum::Json<Agent>), ApiError> {
    let body = body?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = if content_type.contains("yaml") {
        SpecFormat::Yaml
    } else if content_type.is_empty() || content_type.starts_with("application/json") {
        SpecFormat::Json
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the spec as application/json or application/yaml",
        ));
    };
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("invalid_encoding", "the body must be UTF-8"))?;
    let (version, created) = state.engine.apply_agent(&principal.tenant, text, format).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(version.into())))
}

/// List agents (latest version of each).
#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(ListQuery),
    responses((status = 200, body = List<Agent>)))]
pub async fn list_agents(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<List<Agent>>, ApiError> {
    let page = page(&q)?;
    let items = state.engine.store().list_agents(&principal.tenant, &page).await?;
    Ok(axum::Json(list(items, &page, |a| a.name.clone(), Agent::from)))
}

/// Get an agent's latest version.
#[utoipa::path(get, path = "/v1/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "Agent name")),
    responses((status = 200, body = Agent), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<axum::Json<Agent>, ApiError> {
    Ok(axum::Json(state.engine.store().get_agent(&principal.tenant, &name, None).await?.into()))
}

/// List every version of an agent, oldest first.
#[utoipa::path(get, path = "/v1/agents/{name}/versions", tag = "agents",
    params(("name" = String, Path, description = "Agent name")),
    responses((status = 200, body = List<Agent>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list_agent_versions(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<axum::Json<List<Agent>>, ApiError> {
    let versions = state.engine.store().list_agent_versions(&principal.tenant, &name).await?;
    Ok(axum::Json(List {
        object: "list",
        data: versions.into_iter().map(Agent::from).collect(),
        has_more: false,
        next_cursor: None,
    }))
}

/// Get one version of an agent.
#[utoipa::path(get, path = "/v1/agents/{name}/versions/{version}", tag = "agents",
    params(("name" = String, Path), ("version" = u32, Path)),
    responses((status = 200, body = Agent), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_agent_version(
    State(state): State<AppState>,
    principal: Principal,
    Path((name, version)): Path<(String, String)>,
) -> Result<axum::Json<Agent>, ApiError> {
    let version: u32 = version
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_version", "the version must be a positive integer"))?;
    Ok(axum::Json(state.engine.store().get_agent(&principal.tenant, &name, Some(version)).await?.into()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ToolsQuery {
    /// Agent version (default: latest).
    pub version: Option<u32>,
}

#[derive(serde::Serialize, ToSchema)]
pub struct AgentTools {
    pub object: &'static str,
    /// What the model is offered: name, description, JSON Schema of the arguments.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<stead_core::message::ToolDef>,
    /// Problems met discovering tools (e.g. an MCP server that did not answer); retried on the next run.
    pub problems: Vec<String>,
}

/// The tools an agent version offers the model, MCP servers' discovered tools included
/// (cached per version).
#[utoipa::path(get, path = "/v1/agents/{name}/tools", tag = "agents",
    params(("name" = String, Path), ToolsQuery),
    responses((status = 200, body = AgentTools), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list_agent_tools(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Query(q): Query<ToolsQuery>,
) -> Result<axum::Json<AgentTools>, ApiError> {
    let (data, problems) = state.engine.list_agent_tools(&principal.tenant, &name, q.version).await?;
    Ok(axum::Json(AgentTools { object: "list", data, problems }))
}

/// Forget an agent version's discovered tools and discover them again.
#[utoipa::path(post, path = "/v1/agents/{name}/tools/refresh", tag = "agents",
    params(("name" = String, Path), ToolsQuery),
    responses((status = 200, body = AgentTools), (status = 404, body = crate::error::ErrorBody)))]
pub async fn refresh_agent_tools(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Query(q): Query<ToolsQuery>,
) -> Result<axum::Json<AgentTools>, ApiError> {
    let v = state.engine.store().get_agent(&principal.tenant, &name, q.version).await?;
    state.engine.refresh_tools(&principal.tenant, &v.name, v.version);
    let (data, problems) = state.engine.list_agent_tools(&principal.tenant, &name, Some(v.version)).await?;
    Ok(axum::Json(AgentTools { object: "list", data, problems }))
}

// ---- sessions ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Agent name.
    pub agent: String,
    /// Pin this version (default: the latest).
    pub version: Option<u32>,
    /// Free-form JSON object stored with the session.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// Create a session pinned to an agent version.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession,
    responses((status = 201, body = Session), (status = 404, description = "Unknown agent", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = crate::error::ErrorBody), (status = 422, description = "The JSON does not have the expected shape", body = crate::error::ErrorBody)))]
pub async fn create_session(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateSession>,
) -> Result<(StatusCode, axum::Json<Session>), ApiError> {
    let metadata = req.metadata.unwrap_or_else(|| serde_json::json!({}));
    if !metadata.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "`metadata` must be a JSON object",
        ));
    }
    let session =
        state.engine.create_session(&principal.tenant, &principal.id, &req.agent, req.version, metadata).await?;
    Ok((StatusCode::CREATED, axum::Json(session.into())))
}

/// List sessions, newest first.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(ListQuery),
    responses((status = 200, body = List<Session>)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<List<Session>>, ApiError> {
    let page = page(&q)?;
    if let Some(after) = &page.after {
        parse_id::<SessionId>(after)?;
    }
    let items = state.engine.store().list_sessions(&principal.tenant, &page).await?;
    Ok(axum::Json(list(items, &page, |s| s.id.to_string(), Session::from)))
}

/// Get a session.
#[utoipa::path(get, path = "/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = String, Path, pattern = "^sess_[0-9a-fA-F]{32}$")),
    responses((status = 200, body = Session), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_session(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Session>, ApiError> {
    let id: SessionId = parse_id(&id)?;
    Ok(axum::Json(state.engine.store().get_session(&principal.tenant, &id).await?.into()))
}

/// Delete a session with its events and runs. Refused while a worker holds one of its runs.
#[utoipa::path(delete, path = "/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = String, Path, pattern = "^sess_[0-9a-fA-F]{32}$")),
    responses((status = 204, description = "Deleted"), (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "A run is being executed", body = crate::error::ErrorBody)))]
pub async fn delete_session(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: SessionId = parse_id(&id)?;
    state.engine.store().delete_session(&principal.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- runs ----

/// A run's input: a text, or a list of user messages.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RunInput {
    Text(String),
    Messages(Vec<InputMessage>),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputMessage {
    /// Must be `user`.
    pub role: String,
    pub content: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    pub input: RunInput,
    /// Block until the run finishes or waits for the client (bounded by `timeout_secs`).
    #[serde(default)]
    pub wait: bool,
    /// Answer with a server-sent event stream of the run (events, deltas, then `run`).
    #[serde(default)]
    pub stream: bool,
    /// For `wait`: the longest to block, 1 to the server's `--max-wait-secs` (default 60, or
    /// that bound if it is lower).
    pub timeout_secs: Option<u64>,
}

/// How long a `wait` blocks when the request does not say.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How the caller wants the answer to a run-changing request.
struct Delivery {
    wait: bool,
    stream: bool,
    timeout_secs: Option<u64>,
}

impl Delivery {
    fn check(&self, state: &AppState) -> Result<Duration, ApiError> {
        if self.wait && self.stream {
            return Err(ApiError::bad_request("invalid_request", "`wait` and `stream` cannot both be true"));
        }
        let max = state.options.max_wait;
        // Unsaid, it is the default, cut to the server's bound (a request that does not name
        // `timeout_secs` cannot be refused for it).
        let t = self.timeout_secs.map_or(DEFAULT_WAIT.min(max), Duration::from_secs);
        if t > max || t.is_zero() {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("`timeout_secs` must be between 1 and {}", max.as_secs()),
            ));
        }
        Ok(t)
    }

    async fn respond(
        &self,
        state: &AppState,
        principal: &Principal,
        run: stead_store::RunRecord,
        created: StatusCode,
        timeout: Duration,
    ) -> Result<Response, ApiError> {
        if self.stream {
            let scope = StreamScope::run(run.id, run.state.created_seq.saturating_sub(1));
            return Ok(
                stream::sse(state.engine.clone(), principal.tenant.clone(), run.session_id, scope).into_response()
            );
        }
        let run = if self.wait { state.engine.wait_for_run(&principal.tenant, &run.id, timeout).await? } else { run };
        Ok((created, axum::Json(Run::from(run))).into_response())
    }
}

/// Start a run on a session with the given input. Concurrent input follows the agent's
/// `concurrency` policy: `reject` answers 409 `session_busy`, `enqueue` queues the run,
/// `interrupt` cancels the active run first.
#[utoipa::path(post, path = "/v1/sessions/{session_id}/runs", tag = "runs",
    params(("session_id" = String, Path, pattern = "^sess_[0-9a-fA-F]{32}$")), request_body = CreateRun,
    responses(
        (status = 201, description = "Run created (or finished/waiting, with `wait`)", body = Run),
        (status = 200, description = "With `stream`: text/event-stream of the run", content_type = "text/event-stream"),
        (status = 409, description = "session_busy", body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 413, description = "Input (or body) over max_input_bytes (max_body_bytes)", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = crate::error::ErrorBody), (status = 422, description = "The JSON does not have the expected shape", body = crate::error::ErrorBody)))]
pub async fn create_run(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<CreateRun>,
) -> Result<Response, ApiError> {
    let session: SessionId = parse_id(&id)?;
    let delivery = Delivery { wait: req.wait, stream: req.stream, timeout_secs: req.timeout_secs };
    let timeout = delivery.check(&state)?;
    let input = match req.input {
        RunInput::Text(t) => vec![Message::User { content: t }],
        RunInput::Messages(ms) => ms
            .into_iter()
            .map(|m| {
                if m.role == "user" {
                    Ok(Message::User { content: m.content })
                } else {
                    Err(ApiError::bad_request(
                        "invalid_input",
                        format!("input role {:?} is not allowed; use `user`", m.role),
                    ))
                }
            })
            .collect::<Result<_, _>>()?,
    };
    let fingerprint = serde_json::to_vec(&input).unwrap_or_default();
    let idempotency = crate::idempotency(&headers, &format!("POST /v1/sessions/{session}/runs"), &fingerprint)?;
    let run = stead_engine::RunInput { input, idempotency, ..Default::default() };
    let run = state.engine.create_run_with(&principal.tenant, &principal.id, &session, run).await?;
    delivery.respond(&state, &principal, run, StatusCode::CREATED, timeout).await
}

/// List a session's runs, oldest first.
#[utoipa::path(get, path = "/v1/sessions/{session_id}/runs", tag = "runs",
    params(("session_id" = String, Path, pattern = "^sess_[0-9a-fA-F]{32}$"), ListQuery),
    responses((status = 200, body = List<Run>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list_runs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<List<Run>>, ApiError> {
    let session: SessionId = parse_id(&id)?;
    let page = page(&q)?;
    if let Some(after) = &page.after {
        parse_id::<RunId>(after)?;
    }
    // Unknown session: 404, not an empty list.
    state.engine.store().get_session(&principal.tenant, &session).await?;
    let items = state.engine.store().list_runs(&principal.tenant, &session, &page).await?;
    Ok(axum::Json(list(items, &page, |r| r.id.to_string(), Run::from)))
}

/// Get a run.
#[utoipa::path(get, path = "/v1/runs/{run_id}", tag = "runs", params(("run_id" = String, Path, pattern = "^run_[0-9a-fA-F]{32}$")),
    responses((status = 200, body = Run), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Run>, ApiError> {
    let id: RunId = parse_id(&id)?;
    Ok(axum::Json(state.engine.store().get_run(&principal.tenant, &id).await?.into()))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    pub reason: Option<String>,
}

/// Cancel a run: at once if no worker holds it, else at its next safe point (a model call
/// in flight is interrupted).
#[utoipa::path(post, path = "/v1/runs/{run_id}/cancel", tag = "runs", params(("run_id" = String, Path, pattern = "^run_[0-9a-fA-F]{32}$")),
    request_body(content = Option<CancelRun>, content_type = "application/json"),
    responses((status = 200, body = Run), (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "run_finished", body = crate::error::ErrorBody),
        (status = 422, description = "The JSON does not have the expected shape", body = crate::error::ErrorBody)))]
pub async fn cancel_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::Json<Run>, ApiError> {
    let id: RunId = parse_id(&id)?;
    let req: CancelRun = optional_body(body)?;
    let reason = req.reason.unwrap_or_else(|| "cancelled by request".into());
    Ok(axum::Json(state.engine.cancel_run(&principal.tenant, &principal.id, &id, &reason).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitToolOutputs {
    /// One output for every call in the run's `required_action`.
    #[schema(value_type = Vec<Object>)]
    pub tool_outputs: Vec<ToolOutputInput>,
    #[serde(default)]
    pub wait: bool,
    #[serde(default)]
    pub stream: bool,
    /// For `wait`: as in `CreateRun`.
    pub timeout_secs: Option<u64>,
}

/// Submit the outputs of client-side tool calls; the run resumes on any free worker.
#[utoipa::path(post, path = "/v1/runs/{run_id}/tool_outputs", tag = "runs", params(("run_id" = String, Path, pattern = "^run_[0-9a-fA-F]{32}$")),
    request_body = SubmitToolOutputs,
    responses((status = 200, body = Run),
        (status = 400, description = "Unknown, duplicate or missing call ids", body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "run_not_waiting", body = crate::error::ErrorBody), (status = 415, description = "The body is not JSON (`Content-Type`)", body = crate::error::ErrorBody), (status = 422, description = "The JSON does not have the expected shape", body = crate::error::ErrorBody)))]
pub async fn submit_tool_outputs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(req): Json<SubmitToolOutputs>,
) -> Result<Response, ApiError> {
    let id: RunId = parse_id(&id)?;
    let delivery = Delivery { wait: req.wait, stream: req.stream, timeout_secs: req.timeout_secs };
    let timeout = delivery.check(&state)?;
    // The stream starts at the session's head before the outputs are recorded: the run waits
    // for them, so nothing of this run can be appended in between.
    let before = state.engine.store().get_run(&principal.tenant, &id).await?;
    let head = state.engine.store().get_session(&principal.tenant, &before.session_id).await?.head_seq;
    let run = state.engine.submit_tool_outputs(&principal.tenant, &principal.id, &id, req.tool_outputs).await?;
    if delivery.stream {
        let scope = StreamScope::run(run.id, head);
        return Ok(stream::sse(state.engine.clone(), principal.tenant.clone(), run.session_id, scope).into_response());
    }
    delivery.respond(&state, &principal, run, StatusCode::OK, timeout).await
}

// ---- events ----

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Return events with a sequence number greater than this (default 0).
    #[param(maximum = 9_223_372_036_854_775_807_u64)]
    pub after: Option<u64>,
    /// 1 to 1000 (default 100). JSON only.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// SSE only: also send model output deltas as `delta` events (not stored, no id).
    pub deltas: Option<bool>,
}

/// A session's events: a JSON page, or — with `Accept: text/event-stream` — a live SSE stream
/// whose event ids are sequence numbers, so `Last-Event-ID` resumes exactly where it broke.
#[utoipa::path(get, path = "/v1/sessions/{session_id}/events", tag = "events",
    params(("session_id" = String, Path, pattern = "^sess_[0-9a-fA-F]{32}$"), EventsQuery),
    responses((status = 200, body = EventPage), (status = 404, body = crate::error::ErrorBody)))]
pub async fn session_events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session: SessionId = parse_id(&id)?;
    // Sequence numbers are int64, as the document says: a larger `after` names none.
    if q.after.is_some_and(|a| i64::try_from(a).is_err()) {
        return Err(ApiError::bad_request("invalid_query", format!("after must be between 0 and {}", i64::MAX)));
    }
    let store = state.engine.store();
    store.get_session(&principal.tenant, &session).await?;
    let wants_sse =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be a sequence number"))
        });
        let after = match resume {
            Some(r) => r?,
            None => q.after.unwrap_or(0),
        };
        let scope = StreamScope::session(after, q.deltas.unwrap_or(false));
        return Ok(stream::sse(state.engine.clone(), principal.tenant.clone(), session, scope).into_response());
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000"));
    }
    let after = q.after.unwrap_or(0);
    let mut events = store.read_events(&principal.tenant, &session, after, limit + 1).await?;
    let has_more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let next_after = events.last().map_or(after, |e| e.seq);
    Ok(axum::Json(EventPage { object: "list", data: events, has_more, next_after }).into_response())
}

/// Recompute the session's hash chain and name the first broken link, if any.
#[utoipa::path(get, path = "/v1/sessions/{session_id}/audit", tag = "events",
    params(("session_id" = String, Path, pattern = "^sess_[0-9a-fA-F]{32}$")),
    responses((status = 200, body = AuditReportView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn audit_session(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<AuditReportView>, ApiError> {
    let session: SessionId = parse_id(&id)?;
    Ok(axum::Json(state.engine.verify_session(&principal.tenant, &session).await?.into()))
}

// ---- approvals ----

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsQuery {
    /// `pending` (default) or `all`.
    #[param(pattern = "^(pending|all)$")]
    pub status: Option<String>,
    /// Only this session's approvals.
    #[param(pattern = "^sess_[0-9a-fA-F]{32}$")]
    pub session_id: Option<String>,
    /// Cursor from the previous page's `next_cursor` (an approval id).
    #[param(pattern = "^apr_[0-9a-fA-F]{32}$")]
    pub after: Option<String>,
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// List approvals, oldest first (by default only those waiting for a decision).
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", params(ApprovalsQuery),
    responses((status = 200, body = List<Approval>),
        (status = 404, description = "The `after` cursor names no approval of yours (`approval_not_found`)",
            body = crate::error::ErrorBody)))]
pub async fn list_approvals(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ApprovalsQuery>,
) -> Result<axum::Json<List<Approval>>, ApiError> {
    let pending_only = match q.status.as_deref() {
        None | Some("pending") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("status must be `pending` or `all`, not {other:?}"),
            ));
        }
    };
    let session = q.session_id.as_deref().map(parse_id::<SessionId>).transpose()?;
    let page = page(&ListQuery { after: q.after.clone(), limit: q.limit })?;
    if let Some(after) = &page.after {
        parse_id::<ApprovalId>(after)?;
    }
    let filter = stead_store::ApprovalFilter { pending_only, session };
    let items = state.engine.store().list_approvals(&principal.tenant, &filter, &page).await?;
    Ok(axum::Json(list(items, &page, |a| a.id.to_string(), Approval::from)))
}

/// Get an approval.
#[utoipa::path(get, path = "/v1/approvals/{approval_id}", tag = "approvals", params(("approval_id" = String, Path, pattern = "^apr_[0-9a-fA-F]{32}$")),
    responses((status = 200, body = Approval), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_approval(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Approval>, ApiError> {
    let id: ApprovalId = parse_id(&id)?;
    Ok(axum::Json(state.engine.store().get_approval(&principal.tenant, &id).await?.into()))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    pub reason: Option<String>,
    /// Run the call with these arguments instead of the model's.
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<serde_json::Value>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DenyRequest {
    /// Told to the model with the denial.
    pub reason: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// `retry` (run it again, same idempotency key), `skip` (report `output` as its result) or `fail` (fail the run).
    pub action: String,
    pub output: Option<String>,
    pub reason: Option<String>,
}

/// An optional JSON body: empty means the default.
fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    crate::extract::json_body(&body)
}

async fn decide(
    state: &AppState,
    principal: &Principal,
    id: &str,
    input: DecisionInput,
) -> Result<axum::Json<Approval>, ApiError> {
    let id: ApprovalId = parse_id(id)?;
    let decider = Decider { id: principal.id.clone(), roles: principal.roles.clone() };
    Ok(axum::Json(state.engine.decide_approval(&principal.tenant, &decider, &id, input).await?.into()))
}

/// Approve a tool call (optionally with edited arguments). The run resumes on any free worker.
#[utoipa::path(post, path = "/v1/approvals/{approval_id}/approve", tag = "approvals", params(("approval_id" = String, Path, pattern = "^apr_[0-9a-fA-F]{32}$")),
    request_body(content = Option<ApproveRequest>, content_type = "application/json"),
    responses((status = 200, body = Approval), (status = 403, description = "Missing role", body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "approval_already_decided", body = crate::error::ErrorBody), (status = 422, description = "The JSON does not have the expected shape", body = crate::error::ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::Json<Approval>, ApiError> {
    let req: ApproveRequest = optional_body(body)?;
    let input = DecisionInput {
        decision: ApprovalDecision::Approve,
        reason: req.reason,
        arguments: req.arguments,
        output: None,
    };
    decide(&state, &principal, &id, input).await
}

/// Deny a tool call; the model is told, with the reason, and carries on.
#[utoipa::path(post, path = "/v1/approvals/{approval_id}/deny", tag = "approvals", params(("approval_id" = String, Path, pattern = "^apr_[0-9a-fA-F]{32}$")),
    request_body(content = Option<DenyRequest>, content_type = "application/json"),
    responses((status = 200, body = Approval), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody), (status = 422, description = "The JSON does not have the expected shape", body = crate::error::ErrorBody)))]
pub async fn deny(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::Json<Approval>, ApiError> {
    let req: DenyRequest = optional_body(body)?;
    let input = DecisionInput { decision: ApprovalDecision::Deny, reason: req.reason, arguments: None, output: None };
    decide(&state, &principal, &id, input).await
}

/// Settle a call whose outcome is unknown (it started, then the process crashed).
#[utoipa::path(post, path = "/v1/approvals/{approval_id}/resolve", tag = "approvals", params(("approval_id" = String, Path, pattern = "^apr_[0-9a-fA-F]{32}$")),
    request_body = ResolveRequest,
    responses((status = 200, body = Approval), (status = 400, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 415, description = "The body is not JSON (`Content-Type`)", body = crate::error::ErrorBody), (status = 422, description = "The JSON does not have the expected shape", body = crate::error::ErrorBody)))]
pub async fn resolve(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(req): Json<ResolveRequest>,
) -> Result<axum::Json<Approval>, ApiError> {
    let decision = match req.action.as_str() {
        "retry" => ApprovalDecision::Retry,
        "skip" => ApprovalDecision::Skip,
        "fail" => ApprovalDecision::Fail,
        other => {
            return Err(ApiError::bad_request(
                "invalid_decision",
                format!("action must be retry, skip or fail, not {other:?}"),
            ));
        }
    };
    let input = DecisionInput { decision, reason: req.reason, arguments: None, output: req.output };
    decide(&state, &principal, &id, input).await
}

/// A live SSE stream of the tenant's approvals: an `approval` event each time one is
/// requested or decided (list pending ones first with `GET /v1/approvals`).
#[utoipa::path(get, path = "/v1/approvals/stream", tag = "approvals",
    responses((status = 200, description = "text/event-stream of `approval` events", content_type = "text/event-stream")))]
pub async fn approvals_stream(State(state): State<AppState>, principal: Principal) -> Response {
    stream::approvals_sse(state.engine.clone(), principal.tenant.clone()).into_response()
}
