//! The OpenAPI document, generated from the handlers' annotations. A test compares it with
//! the committed `openapi.json` at the repository root, so the published copy is never stale.
//!
//! The errors every authenticated operation can meet (400 for a malformed id, query or
//! `Authorization` header; 401; 413 for a body over `max_body_bytes`) are added by
//! [`CommonErrors`] rather than repeated on each handler. The OpenAI-compatible endpoints are
//! served by `stead-openai`, which builds on this crate, so they are described here (module
//! [`openai`]) where the document is assembled.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

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
        crate::secrets::set_secret, crate::secrets::list_secrets, crate::secrets::delete_secret,
        openai::create_response, openai::retrieve_response, openai::delete_response, openai::cancel_response,
        openai::list_input_items, openai::create_conversation, openai::retrieve_conversation,
        openai::update_conversation, openai::delete_conversation, openai::list_items, openai::create_items,
        openai::retrieve_item, openai::delete_item, openai::chat_completions, openai::list_models,
        openai::retrieve_model,
    ),
    components(schemas(OaiErrorBody)),
    modifiers(&CommonErrors),
    tags(
        (name = "agents", description = "Versioned agent definitions"),
        (name = "sessions", description = "Durable conversations"),
        (name = "runs", description = "Executions of the agent loop"),
        (name = "events", description = "The hash-chained event log"),
        (name = "approvals", description = "Durable human decisions on tool calls"),
        (name = "secrets", description = "The credential vault: values go in, never come out"),
        (name = "system", description = "Health and metadata"),
        (name = "openai", description = "OpenAI-compatible API (Responses, Conversations, Chat Completions, Models): \
            bodies and objects as in OpenAI's API reference, errors in OpenAI's shape"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON (stable across runs: utoipa keeps maps ordered).
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json().expect("the OpenAPI document always serializes")
}

/// An error of the OpenAI-compatible endpoints: `{"error": {"message", "type", "param", "code"}}`.
#[derive(ToSchema)]
pub struct OaiErrorBody {
    pub error: OaiErrorDetail,
}

#[derive(ToSchema)]
pub struct OaiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `server_error`, ...
    #[schema(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// The name of the security scheme: `Authorization: Bearer <api key>`.
const BEARER: &str = "api_key";
/// Operations anyone may call, keys or not.
const PUBLIC: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

/// Adds the bearer scheme and the errors that every authenticated operation can answer.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut Document) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key configured with `--api-key TENANT:KEY`. A server without keys (loopback only) \
                 ignores the header.",
            ))
            .build();
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(BEARER, SecurityScheme::Http(scheme));
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                describe_responses(op);
                if PUBLIC.contains(&path.as_str()) {
                    op.security = Some(vec![SecurityRequirement::default()]);
                    continue;
                }
                op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                let openai = op.tags.as_ref().is_some_and(|t| t.iter().any(|t| t == "openai"));
                let body = if openai { "OaiErrorBody" } else { "ErrorBody" };
                let mut add = |status: &str, description: &str| {
                    op.responses.responses.entry(status.to_owned()).or_insert_with(|| error(description, body));
                };
                add(
                    "400",
                    "Malformed request: an invalid id (`invalid_id`), query (`invalid_query`), body or \
                     `Authorization` header (`duplicate_authorization`)",
                );
                add("401", "Missing or unknown API key (`unauthorized`; `invalid_api_key` on OpenAI endpoints)");
                if op.request_body.is_some() {
                    add("413", "The body is larger than max_body_bytes (`payload_too_large`)");
                }
            }
        }
    }
}

/// OpenAPI requires a description on every response: the status's reason where none is given.
fn describe_responses(op: &mut utoipa::openapi::path::Operation) {
    for (status, response) in op.responses.responses.iter_mut() {
        if let RefOr::T(r) = response
            && r.description.is_empty()
        {
            let reason = status.parse::<u16>().ok().and_then(|s| axum::http::StatusCode::from_u16(s).ok());
            r.description = reason.and_then(|s| s.canonical_reason()).unwrap_or("Response").to_owned();
        }
    }
}

fn error(description: &str, schema: &str) -> RefOr<Response> {
    let content = Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(schema))));
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
}

/// Documentation of the OpenAI-compatible endpoints (served by `stead-openai`). Bodies are
/// OpenAI's; the document names them and lists the statuses Stead answers with.
#[allow(dead_code)]
pub mod openai {
    use super::OaiErrorBody;

    /// Create a model response (`stream`, `background`, `previous_response_id`, `conversation`,
    /// `store`, function and `mcp` tools). The model name is routed by `--model-route`.
    #[utoipa::path(post, path = "/v1/responses", tag = "openai",
        request_body(content = Object, content_type = "application/json", description = "OpenAI's response create body"),
        responses(
            (status = 200, description = "A `response` object, or with `stream: true` a text/event-stream of response events",
                content((Object = "application/json"), (String = "text/event-stream"))),
            (status = 404, description = "Unknown previous response, conversation or model", body = OaiErrorBody),
            (status = 409, description = "The conversation is busy", body = OaiErrorBody),
            (status = 422, body = OaiErrorBody),
            (status = 424, description = "An `mcp` tool's server could not be listed", body = OaiErrorBody)))]
    pub fn create_response() {}

    /// Retrieve a response; with `stream=true`, replay (and follow) its events.
    #[utoipa::path(get, path = "/v1/responses/{response_id}", tag = "openai",
        params(("response_id" = String, Path),
            ("stream" = Option<bool>, Query), ("starting_after" = Option<u64>, Query, description = "Sequence number")),
        responses(
            (status = 200, description = "A `response` object, or a text/event-stream",
                content((Object = "application/json"), (String = "text/event-stream"))),
            (status = 404, body = OaiErrorBody)))]
    pub fn retrieve_response() {}

    /// Delete a response.
    #[utoipa::path(delete, path = "/v1/responses/{response_id}", tag = "openai", params(("response_id" = String, Path)),
        responses((status = 200, description = "`response.deleted`", body = Object), (status = 404, body = OaiErrorBody),
            (status = 409, body = OaiErrorBody)))]
    pub fn delete_response() {}

    /// Cancel a background response.
    #[utoipa::path(post, path = "/v1/responses/{response_id}/cancel", tag = "openai",
        params(("response_id" = String, Path)),
        responses((status = 200, description = "The `response`", body = Object), (status = 404, body = OaiErrorBody),
            (status = 409, body = OaiErrorBody)))]
    pub fn cancel_response() {}

    /// The input items of a response.
    #[utoipa::path(get, path = "/v1/responses/{response_id}/input_items", tag = "openai",
        params(("response_id" = String, Path), ListParams),
        responses((status = 200, description = "A list of items", body = Object), (status = 404, body = OaiErrorBody)))]
    pub fn list_input_items() {}

    /// Create a conversation (optionally with items and metadata).
    #[utoipa::path(post, path = "/v1/conversations", tag = "openai",
        request_body(content = Option<Object>, content_type = "application/json"),
        responses((status = 200, description = "A `conversation`", body = Object), (status = 422, body = OaiErrorBody)))]
    pub fn create_conversation() {}

    /// Retrieve a conversation.
    #[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "openai",
        params(("conversation_id" = String, Path)),
        responses((status = 200, description = "A `conversation`", body = Object), (status = 404, body = OaiErrorBody)))]
    pub fn retrieve_conversation() {}

    /// Update a conversation's metadata.
    #[utoipa::path(post, path = "/v1/conversations/{conversation_id}", tag = "openai",
        params(("conversation_id" = String, Path)), request_body(content = Object, content_type = "application/json"),
        responses((status = 200, description = "A `conversation`", body = Object), (status = 404, body = OaiErrorBody),
            (status = 409, body = OaiErrorBody), (status = 422, body = OaiErrorBody)))]
    pub fn update_conversation() {}

    /// Delete a conversation.
    #[utoipa::path(delete, path = "/v1/conversations/{conversation_id}", tag = "openai",
        params(("conversation_id" = String, Path)),
        responses((status = 200, description = "`conversation.deleted`", body = Object), (status = 404, body = OaiErrorBody),
            (status = 409, body = OaiErrorBody)))]
    pub fn delete_conversation() {}

    /// A conversation's items.
    #[utoipa::path(get, path = "/v1/conversations/{conversation_id}/items", tag = "openai",
        params(("conversation_id" = String, Path), ListParams),
        responses((status = 200, description = "A list of items", body = Object), (status = 404, body = OaiErrorBody)))]
    pub fn list_items() {}

    /// Add items to a conversation.
    #[utoipa::path(post, path = "/v1/conversations/{conversation_id}/items", tag = "openai",
        params(("conversation_id" = String, Path)), request_body(content = Object, content_type = "application/json"),
        responses((status = 200, description = "A list of the added items", body = Object),
            (status = 404, body = OaiErrorBody), (status = 409, body = OaiErrorBody), (status = 422, body = OaiErrorBody)))]
    pub fn create_items() {}

    /// One item of a conversation.
    #[utoipa::path(get, path = "/v1/conversations/{conversation_id}/items/{item_id}", tag = "openai",
        params(("conversation_id" = String, Path), ("item_id" = String, Path)),
        responses((status = 200, description = "An item", body = Object), (status = 404, body = OaiErrorBody)))]
    pub fn retrieve_item() {}

    /// Remove an item from a conversation.
    #[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/items/{item_id}", tag = "openai",
        params(("conversation_id" = String, Path), ("item_id" = String, Path)),
        responses((status = 200, description = "The `conversation`", body = Object), (status = 404, body = OaiErrorBody),
            (status = 409, body = OaiErrorBody)))]
    pub fn delete_item() {}

    /// Chat completions, stateless: forwarded to an OpenAI-compatible route or translated.
    #[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
        request_body(content = Object, content_type = "application/json", description = "OpenAI's chat completion body"),
        responses(
            (status = 200, description = "A `chat.completion`, or with `stream: true` a text/event-stream of chunks",
                content((Object = "application/json"), (String = "text/event-stream"))),
            (status = 404, description = "No route serves the model", body = OaiErrorBody),
            (status = 429, description = "The upstream model API is rate limiting", body = OaiErrorBody),
            (status = 502, description = "The upstream model API failed", body = OaiErrorBody)))]
    pub fn chat_completions() {}

    /// The models the configured routes serve.
    #[utoipa::path(get, path = "/v1/models", tag = "openai",
        responses((status = 200, description = "A list of `model` objects", body = Object),
            (status = 502, description = "The upstream model API failed", body = OaiErrorBody)))]
    pub fn list_models() {}

    /// One model.
    #[utoipa::path(get, path = "/v1/models/{model}", tag = "openai", params(("model" = String, Path)),
        responses((status = 200, description = "A `model` object", body = Object), (status = 404, body = OaiErrorBody),
            (status = 502, description = "The upstream model API failed", body = OaiErrorBody)))]
    pub fn retrieve_model() {}

    /// OpenAI's cursor pagination.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct ListParams {
        /// An item id: the page starts after it.
        pub after: Option<String>,
        /// 1 to 100 (default 20).
        pub limit: Option<u32>,
        /// `asc` or `desc`.
        pub order: Option<String>,
    }
}
