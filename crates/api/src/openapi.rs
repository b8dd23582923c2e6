//! The OpenAPI document, generated from the handlers' annotations. A test compares it with
//! the committed `openapi.json` at the repository root, so the published copy is never stale.

use utoipa::OpenApi;

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Stead", description = "Stateful runtime for AI agents: durable sessions, runs and events."),
    paths(
        routes::healthz, routes::readyz, routes::openapi_json,
        routes::apply_agent, routes::list_agents, routes::get_agent, routes::list_agent_versions, routes::get_agent_version,
        routes::list_agent_tools, routes::refresh_agent_tools,
        routes::create_session, routes::list_sessions, routes::get_session, routes::delete_session,
        routes::create_run, routes::list_runs, routes::get_run, routes::cancel_run, routes::submit_tool_outputs,
        routes::session_events, routes::audit_session,
        routes::list_approvals, routes::get_approval, routes::approve, routes::deny, routes::resolve,
        routes::approvals_stream,
    ),
    tags(
        (name = "agents", description = "Versioned agent definitions"),
        (name = "sessions", description = "Durable conversations"),
        (name = "runs", description = "Executions of the agent loop"),
        (name = "events", description = "The hash-chained event log"),
        (name = "approvals", description = "Durable human decisions on tool calls"),
        (name = "system", description = "Health and metadata"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON (stable across runs: utoipa keeps maps ordered).
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json().expect("the OpenAPI document always serializes")
}
