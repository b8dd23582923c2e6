//! Server-side tools: the `Tool` trait, the registry agents pick built-ins from, and the
//! built-ins themselves. MCP and HTTP tools plug in here in their own issue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_core::message::ToolDef;
use stead_core::time::Timestamp;

/// What a tool call knows about where it runs.
#[derive(Clone, Debug)]
pub struct ToolContext {
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub run_id: RunId,
    /// The same for every attempt of this call, across crashes and nodes.
    pub idempotency_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: false }
    }
    pub fn error(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: true }
    }
}

#[async_trait]
pub trait Tool: Send + Sync {
    fn def(&self) -> ToolDef;
    /// Safe to run again with the same idempotency key after a crash.
    fn idempotent(&self) -> bool;
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> ToolOutput;
}

/// The tools an agent may name as `type: builtin`, and the HTTP caller (with its SSRF guard)
/// that `type: http` tools and `http_fetch` go through.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    http: Option<Arc<stead_tools_http::HttpCaller>>,
}

impl ToolRegistry {
    /// The registry with Stead's built-ins.
    pub fn with_builtins() -> Self {
        let mut r = Self::default();
        r.register(Arc::new(Clock));
        r.register(Arc::new(Echo));
        r.register(Arc::new(Sleep));
        r
    }

    /// Enables `type: http` tools and the `http_fetch` built-in, through `caller`.
    pub fn with_http(mut self, caller: stead_tools_http::HttpCaller) -> Self {
        let caller = Arc::new(caller);
        self.register(Arc::new(HttpFetch(caller.clone())));
        self.http = Some(caller);
        self
    }

    pub fn http(&self) -> Option<&stead_tools_http::HttpCaller> {
        self.http.as_deref()
    }

    pub fn register(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.def().name, tool);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.tools.keys().map(String::as_str).collect()
    }
}

fn object_schema(properties: serde_json::Value, required: &[&str]) -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// Current time. Read-only, so idempotent.
struct Clock;

#[async_trait]
impl Tool for Clock {
    fn def(&self) -> ToolDef {
        ToolDef {
            name: "clock".into(),
            description: "Returns the current UTC time in RFC 3339 format.".into(),
            parameters: object_schema(serde_json::json!({}), &[]),
        }
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, _args: serde_json::Value, _ctx: &ToolContext) -> ToolOutput {
        ToolOutput::ok(Timestamp::now().to_rfc3339())
    }
}

/// Returns its `text` argument. Useful for demos and tests.
struct Echo;

#[async_trait]
impl Tool for Echo {
    fn def(&self) -> ToolDef {
        ToolDef {
            name: "echo".into(),
            description: "Returns the given text unchanged.".into(),
            parameters: object_schema(serde_json::json!({"text": {"type": "string"}}), &[]),
        }
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, args: serde_json::Value, _ctx: &ToolContext) -> ToolOutput {
        match args.get("text") {
            Some(serde_json::Value::String(s)) => ToolOutput::ok(s.clone()),
            Some(_) => ToolOutput::error("argument `text` must be a string"),
            None => ToolOutput::ok(args.to_string()),
        }
    }
}

/// Waits `ms` milliseconds (at most 10 minutes). For demos of long-running tools.
struct Sleep;

#[async_trait]
impl Tool for Sleep {
    fn def(&self) -> ToolDef {
        ToolDef {
            name: "sleep".into(),
            description: "Waits the given number of milliseconds, then returns.".into(),
            parameters: object_schema(
                serde_json::json!({"ms": {"type": "integer", "minimum": 0, "maximum": 600000}}),
                &["ms"],
            ),
        }
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, args: serde_json::Value, _ctx: &ToolContext) -> ToolOutput {
        match args.get("ms").and_then(serde_json::Value::as_u64) {
            Some(ms) if ms <= 600_000 => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ToolOutput::ok(format!("slept {ms} ms"))
            }
            _ => ToolOutput::error("argument `ms` must be an integer between 0 and 600000"),
        }
    }
}

/// `http_fetch`: GET a URL through the SSRF guard. A GET is read-only, so idempotent.
struct HttpFetch(Arc<stead_tools_http::HttpCaller>);

#[async_trait]
impl Tool for HttpFetch {
    fn def(&self) -> ToolDef {
        ToolDef {
            name: "http_fetch".into(),
            description: "Fetches a URL with HTTP GET and returns the response body as text.".into(),
            parameters: stead_tools_http::HttpCaller::fetch_tool_schema(),
        }
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, args: serde_json::Value, ctx: &ToolContext) -> ToolOutput {
        match args.get("url").and_then(serde_json::Value::as_str) {
            Some(url) => {
                let r = self.0.fetch(url, &ctx.idempotency_key).await;
                ToolOutput { content: r.text, is_error: r.is_error }
            }
            None => ToolOutput::error("argument `url` (a string) is required"),
        }
    }
}
