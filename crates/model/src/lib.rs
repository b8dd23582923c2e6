//! Model providers: one `ModelProvider` trait over OpenAI-compatible servers and the in-process
//! scripted model, plus retrying with backoff and a registry that builds providers from specs.

pub mod anthropic;
mod anthropic_wire;
mod error;
mod http;
pub mod openai;
mod openai_wire;
mod providers;
mod retry;
pub mod scripted;
mod sse;
mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use stead_core::message::{Message, ToolCall, ToolDef, Usage};

pub use stead_core::agent::ToolChoice;

pub use anthropic::AnthropicProvider;
pub use error::{Error, ErrorKind};
pub use http::http_client;
pub use openai::OpenAiProvider;
pub use providers::{DEFAULT_ANTHROPIC_BASE_URL, DEFAULT_OPENAI_BASE_URL, ProviderDefaults, Providers};
pub use retry::{RetryPolicy, complete_with_retry};
pub use scripted::ScriptedModel;

/// One model call, provider-neutral.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRequest {
    /// The provider's model id.
    pub model: String,
    /// Shared, not owned: a caller keeping its history as `Arc<Message>` builds each request's
    /// context without deep-cloning the conversation, and providers only read it.
    pub messages: Vec<Arc<Message>>,
    /// Tools offered to the model; empty means none.
    pub tools: Vec<ToolDef>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// Deliver content deltas through `on_delta` as they arrive.
    pub stream: bool,
    /// Whether and which tool the model must call; unset leaves it to the provider. Sent only
    /// when tools are offered. With `ToolChoice::None` the tools are still offered.
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may call several tools in one turn; unset leaves it to the provider.
    /// Sent only when tools are offered.
    pub parallel_tool_calls: Option<bool>,
}

/// What the model answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelResponse {
    pub content: Option<String>,
    /// Arguments are passed through raw, even when they are not valid JSON.
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    /// As the server reported it (`stop`, `tool_calls`, `length`, ...).
    pub finish_reason: String,
    /// The model that actually answered, falling back to the requested one.
    pub model: String,
}

/// A model API. Implementations must not retry themselves: `complete_with_retry` does that.
#[async_trait]
pub trait ModelProvider: Send + Sync {
    /// Runs one call. When `req.stream` is set, content pieces go to `on_delta` in order and the
    /// returned content equals their concatenation.
    ///
    /// The `for<'s>` is spelled out because `async_trait` would otherwise tie the `&str` to a
    /// lifetime of the call, and implementations could only pass strings that outlive it. It is
    /// the same type as `dyn Fn(&str) + Send + Sync`; implementations must spell it the same way.
    async fn complete(
        &self,
        req: &ModelRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ModelResponse, Error>;
}
