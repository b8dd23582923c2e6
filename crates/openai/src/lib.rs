//! The OpenAI-compatible API: `/v1/responses`, `/v1/conversations`, `/v1/chat/completions` and
//! `/v1/models`, so the official SDKs work against Stead unchanged.
//!
//! Mapping: a conversation is a session (`conv_X` is `sess_X`), a response is a run (`resp_X`
//! is `run_X`), items are rendered from the log (see `items`). A response runs on an agent
//! version built from its request (model route, instructions, tools), whose runs *pause into
//! the conversation*: a response ends with `function_call` or `mcp_approval_request` items and
//! the next response answers them. `previous_response_id` continues in the same session when
//! the previous response is its latest run, and otherwise branches into a new session seeded
//! with the previous response's history.

mod conversations;
pub mod error;
pub mod item_cache;
pub mod items;
mod list;
mod passthrough;
pub mod request;
mod responses;
pub mod routes;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use stead_api::Auth;
use stead_core::agent::{AgentSpec, SpecFormat};
use stead_core::event::Event;
use stead_core::ids::{SessionId, TenantId};
use stead_engine::Engine;
use stead_store::{AgentVersion, Page};
use stead_tools_http::Guard;

pub use error::{OaiError, OaiResult};
pub use item_cache::ItemCache;
pub use routes::{ModelRoute, ModelRoutes};

/// Settings of the OpenAI-compatible API. Every field is a `stead serve` option.
#[derive(Clone, Debug)]
pub struct OpenAiOptions {
    pub routes: ModelRoutes,
    /// Which `server_url`s of `mcp` tools may be connected to; `None` allows any (the default
    /// while Stead listens on loopback only).
    pub mcp_guard: Option<Arc<Guard>>,
    /// Longest a non-background, non-streaming request waits for its response.
    pub max_wait: Duration,
    pub max_body_bytes: usize,
    /// Recent messages a response's model sees (`truncation: auto`).
    pub max_messages: u32,
}

/// Rendered items the item cache holds by default, across sessions.
pub const DEFAULT_ITEM_CACHE_ITEMS: usize = 100_000;

impl Default for OpenAiOptions {
    fn default() -> Self {
        Self {
            routes: ModelRoutes::default(),
            mcp_guard: None,
            max_wait: Duration::from_secs(600),
            max_body_bytes: 1024 * 1024,
            max_messages: 200,
        }
    }
}

#[derive(Clone)]
pub struct OaiState {
    pub engine: Engine,
    pub auth: Arc<Auth>,
    pub options: Arc<OpenAiOptions>,
    /// Rendered conversation items by session (see `item_cache`).
    pub items: Arc<ItemCache>,
}

/// The session metadata key marking what a session is to this API.
pub(crate) const SESSION_KIND: &str = "stead.openai";

pub fn router(state: OaiState) -> Router {
    let limit = state.options.max_body_bytes;
    Router::new()
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::retrieve).delete(responses::delete))
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route("/v1/responses/{id}/input_items", get(responses::input_items))
        .route("/v1/conversations", post(conversations::create))
        .route(
            "/v1/conversations/{id}",
            get(conversations::retrieve).post(conversations::update).delete(conversations::delete),
        )
        .route("/v1/conversations/{id}/items", get(conversations::list_items).post(conversations::create_items))
        .route(
            "/v1/conversations/{id}/items/{item_id}",
            get(conversations::retrieve_item).delete(conversations::delete_item),
        )
        .route("/v1/chat/completions", post(passthrough::chat_completions))
        .route("/v1/models", get(passthrough::list_models))
        .route("/v1/models/{id}", get(passthrough::retrieve_model))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Every event of a session after `after`, in log order.
pub(crate) async fn events_after(
    st: &OaiState,
    tenant: &TenantId,
    session: &SessionId,
    mut after: u64,
) -> OaiResult<Vec<Event>> {
    let mut events = Vec::new();
    loop {
        let batch = st.engine.store().read_events(tenant, session, after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        events.extend(batch);
    }
    Ok(events)
}

/// The agent version for settings this API builds (named by their hash): found with a read
/// when these settings were seen before, so the single writer only sees new ones.
pub(crate) async fn ensure_agent(
    st: &OaiState,
    tenant: &TenantId,
    spec_json: &str,
) -> stead_engine::Result<AgentVersion> {
    let spec = AgentSpec::parse(spec_json, SpecFormat::Json)?;
    match st.engine.store().get_agent(tenant, &spec.name, None).await {
        Ok(v) if v.spec == spec => Ok(v),
        _ => Ok(st.engine.apply_agent(tenant, spec_json, SpecFormat::Json).await?.0),
    }
}

/// An agent version with its tools, or why its tools are not available.
pub(crate) enum WithTools {
    Ready(Box<AgentVersion>, Vec<stead_core::message::ToolDef>),
    /// Some tool could not be built (an MCP server that did not answer): nothing was stored.
    Unavailable(Vec<String>),
}

/// Like [`ensure_agent`], but the spec's tools are built (its MCP servers asked) before a new
/// version is stored: a request that fails on them leaves no agent version behind.
pub(crate) async fn ensure_agent_with_tools(
    st: &OaiState,
    tenant: &TenantId,
    spec_json: &str,
) -> stead_engine::Result<WithTools> {
    let spec = AgentSpec::parse(spec_json, SpecFormat::Json)?;
    if let Ok(v) = st.engine.store().get_agent(tenant, &spec.name, None).await
        && v.spec == spec
    {
        let (defs, problems) = st.engine.list_agent_tools(tenant, &v.name, Some(v.version)).await?;
        return Ok(if problems.is_empty() {
            WithTools::Ready(Box::new(v), defs)
        } else {
            WithTools::Unavailable(problems)
        });
    }
    let prepared = st.engine.prepare_agent(tenant, spec_json, SpecFormat::Json).await?;
    if !prepared.problems().is_empty() {
        return Ok(WithTools::Unavailable(prepared.problems().to_vec()));
    }
    let defs = prepared.defs();
    Ok(WithTools::Ready(Box::new(st.engine.store_prepared(tenant, prepared).await?.0), defs))
}

/// Deletes what `store: false` responses left behind when the process died before their
/// answer was returned. Run at startup, before serving.
pub async fn sweep_unstored(engine: &Engine, tenants: &[TenantId]) -> usize {
    let mut deleted = 0;
    for tenant in tenants {
        let mut after = None;
        loop {
            let page = Page { after: after.clone(), limit: 200 };
            let sessions = match engine.store().list_sessions(tenant, &page).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping unstored responses failed");
                    break;
                }
            };
            let Some(last) = sessions.last() else { break };
            after = Some(last.id.to_string());
            for s in &sessions {
                if s.metadata[SESSION_KIND] == "unstored" && engine.store().delete_session(tenant, &s.id).await.is_ok()
                {
                    deleted += 1;
                }
            }
        }
    }
    deleted
}
