//! Agent definitions: a declarative spec (YAML or JSON), validated before it is stored.
//! Versions are immutable; a session pins one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::approval::ApprovalRule;

/// The declarative definition of an agent, as a user writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Unique per tenant; `[a-z0-9][a-z0-9_-]{0,62}`.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub model: ModelSpec,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instructions: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// MCP servers whose tools the agent may call (named `SERVER__TOOL` to the model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<McpServerSpec>,
    #[serde(default)]
    pub limits: Limits,
    /// What happens to input that arrives while a run is active.
    #[serde(default)]
    pub concurrency: ConcurrencyPolicy,
    #[serde(default)]
    pub context: ContextSpec,
    /// What a run does when it must wait for the client's tool outputs or for an approval.
    #[serde(default, skip_serializing_if = "PauseMode::is_hold")]
    pub pause: PauseMode,
}

/// What a run does when it must wait for someone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseMode {
    /// The run waits (`requires_action`, `awaiting_approval`) and resumes with the answer.
    #[default]
    Hold,
    /// The run completes; the calls stay open in the conversation, and the session's next run
    /// answers them (tool outputs in its input, approvals carried over). This is how the
    /// Responses API works: a response ends with `function_call` or `mcp_approval_request` items.
    Complete,
}

impl PauseMode {
    pub fn is_hold(&self) -> bool {
        *self == PauseMode::Hold
    }
}

/// Which model endpoint a spec uses: a built-in kind (with the operator's defaults) or a
/// provider the operator declared by name (`[[provider]]`, see [`crate::grants`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Any OpenAI-compatible chat-completions server (OpenAI, Ollama, vLLM, llama.cpp).
    Openai,
    /// Anthropic's Messages API (`/v1/messages`).
    Anthropic,
    /// In-process and deterministic: a pure function of the context it receives.
    Scripted,
    /// A provider the operator declared; its kind, base URL and key are the operator's.
    Named(String),
}

impl Provider {
    pub fn as_str(&self) -> &str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Scripted => "scripted",
            Provider::Named(n) => n,
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "openai" => Provider::Openai,
            "anthropic" => Provider::Anthropic,
            "scripted" => Provider::Scripted,
            n if is_slug(n) => Provider::Named(n.to_owned()),
            n => {
                return Err(format!(
                    "unknown variant `{n}`: a provider is openai, anthropic, scripted or the name of one the operator declared"
                ));
            }
        })
    }
}

impl Serialize for Provider {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Provider::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub provider: Provider,
    /// The provider's model id, e.g. `gpt-4o-mini` or `llama3.2`.
    pub name: String,
    /// Defaults to `OPENAI_BASE_URL`, then `https://api.openai.com/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The environment variable that holds the API key (default `OPENAI_API_KEY`).
    /// Keys themselves never go into a spec: specs are stored and exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Stream the model's response (deltas reach clients as they arrive).
    #[serde(default = "default_true")]
    pub stream: bool,
    /// Per-request timeout.
    #[serde(default = "default_model_timeout")]
    pub timeout_secs: u64,
    /// Retries of a failed model call when retrying is safe (timeouts, 429, 5xx).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Delay between streamed chunks of the scripted model (for demos and crash tests).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_delay_ms: u64,
    /// Whether and which tool the model must call: `auto`, `none`, `required`, or
    /// `{function: NAME}` (one of the agent's tools, or an MCP tool as `SERVER__TOOL`).
    /// Unset leaves it to the provider (`auto` when tools are offered). With `none` the tools
    /// are still offered, so the model knows them, but it may not call them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may call several tools in one turn (`false`: at most one). Unset
    /// leaves it to the provider (which allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
}

/// Whether and which tool the model must call. In YAML: `tool_choice: required`, or
/// `tool_choice: {function: get_weather}`; in JSON: `"required"` or `{"function": "get_weather"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides whether to call tools.
    Auto,
    /// The model must not call tools (they are still described to it).
    None,
    /// The model must call at least one tool.
    Required,
    /// The model must call this tool (by the name the model sees).
    Function(String),
}

impl ToolChoice {
    /// The tool a `function` choice names.
    pub fn function_name(&self) -> Option<&str> {
        match self {
            ToolChoice::Function(name) => Some(name),
            _ => None,
        }
    }
}

const TOOL_CHOICE_SHAPES: &str = "tool_choice must be `auto`, `none`, `required` or `{function: NAME}`";

/// A word, or a one-key map (`{function: NAME}`; checked by hand, as `deny_unknown_fields`
/// does not hold inside an untagged enum).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ToolChoiceRepr {
    Word(String),
    Map(BTreeMap<String, String>),
}

impl Serialize for ToolChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let word = |w: &str| ToolChoiceRepr::Word(w.to_owned());
        match self {
            ToolChoice::Auto => word("auto"),
            ToolChoice::None => word("none"),
            ToolChoice::Required => word("required"),
            ToolChoice::Function(name) => ToolChoiceRepr::Map(BTreeMap::from([("function".into(), name.clone())])),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ToolChoiceRepr::deserialize(d).map_err(|_| serde::de::Error::custom(TOOL_CHOICE_SHAPES))? {
            ToolChoiceRepr::Word(w) => match w.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" => Ok(ToolChoice::Required),
                _ => Err(serde::de::Error::custom(format!("{TOOL_CHOICE_SHAPES}, not {w:?}"))),
            },
            ToolChoiceRepr::Map(mut m) => match (m.remove("function"), m.is_empty()) {
                (Some(name), true) => Ok(ToolChoice::Function(name)),
                _ => Err(serde::de::Error::custom(TOOL_CHOICE_SHAPES)),
            },
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_model_timeout() -> u64 {
    120
}
fn default_retries() -> u32 {
    3
}
fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// Runs inside Stead (see the engine's built-in registry).
    Builtin,
    /// Runs in the client: the run stops in `requires_action` until outputs are submitted.
    Client,
    /// An HTTP request described by `http` (see [`HttpSpec`]).
    Http,
}

/// A `type: http` tool: one HTTP request per call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// URL template: `{name}` takes the argument `name` as a path segment; other arguments go
    /// to the query (GET, DELETE) or the JSON body.
    pub url: String,
    /// Values may contain `${env:VAR}`, read from the server's environment at call time, so
    /// credentials never enter the spec, the log or an export.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// An MCP server: one of the operator's catalog (`catalog: NAME`, or just `name` when nothing
/// else says how to reach it), a Streamable HTTP URL, or — for trusted tenants only — a
/// command speaking stdio.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// `[a-z0-9_-]`; prefixes its tools' names (`NAME__TOOL`).
    pub name: String,
    /// A server the operator declared (`[[mcp_server]]` in the server config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Values may contain `${env:VAR}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Values may contain `${env:VAR}`; never recorded in the log.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Only these tools are offered (default: all the server lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    /// Default for this server's tools.
    #[serde(default, skip_serializing_if = "ApprovalRule::is_never")]
    pub require_approval: ApprovalRule,
    /// Per-tool overrides of approval and idempotency, by the server's tool name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tool_overrides: BTreeMap<String, ToolOverride>,
    #[serde(default = "default_tool_timeout")]
    pub timeout_secs: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_approval: Option<ApprovalRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
}

/// Who decides approvals by default, and how long they have.
pub const DEFAULT_APPROVER_ROLE: &str = "approver";
pub const DEFAULT_APPROVAL_TIMEOUT_SECS: u64 = 24 * 3600;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ToolKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments (client tools; built-ins bring their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    /// Safe to run twice with the same idempotency key. Built-ins declare their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// Per-call timeout for server-side tools.
    #[serde(default = "default_tool_timeout")]
    pub timeout_secs: u64,
    /// For `type: http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// `never` (default), `always`, or `{when: CONDITION}` on the arguments.
    #[serde(default, skip_serializing_if = "ApprovalRule::is_never")]
    pub require_approval: ApprovalRule,
    /// The role a principal needs to decide this tool's approvals (default `approver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_role: Option<String>,
    /// How long an approval waits before it expires (default 24 h); the model is told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout_secs: Option<u64>,
}

fn default_tool_timeout() -> u64 {
    60
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Model calls per run.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    /// Counted from the run's creation, waiting time included.
    #[serde(default = "default_wall_time")]
    pub max_wall_time_secs: u64,
}

fn default_max_steps() -> u32 {
    50
}
fn default_wall_time() -> u64 {
    3600
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_steps: default_max_steps(), max_wall_time_secs: default_wall_time() }
    }
}

/// Concurrent input policy for a session (invariant 3: one writer per session).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyPolicy {
    /// Refuse new input while a run is active (HTTP 409, `session_busy`).
    Reject,
    /// Queue it: runs execute one at a time in arrival order.
    #[default]
    Enqueue,
    /// Cancel the active run at its next safe point, then run the new input.
    Interrupt,
}

/// What goes into the model's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    /// At most this many recent messages are loaded into the context.
    #[serde(default = "default_max_messages")]
    pub max_messages: u32,
    /// Estimated token budget for the recent window (instructions not included).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u64,
}

fn default_max_messages() -> u32 {
    200
}
fn default_max_tokens() -> u64 {
    64_000
}

impl Default for ContextSpec {
    fn default() -> Self {
        Self { max_messages: default_max_messages(), max_tokens: default_max_tokens() }
    }
}

/// The syntax a spec is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecFormat {
    Json,
    Yaml,
}

/// Hard bounds on a spec, so one definition cannot exhaust the server.
pub const MAX_TOOLS: usize = 128;
pub const MAX_INSTRUCTIONS_BYTES: usize = 256 * 1024;
/// Upper bounds of a spec's durations and counts: every time computed from them stays far
/// inside what a timestamp can show, and no count can overflow what it is added to.
pub const MAX_APPROVAL_TIMEOUT_SECS: u64 = 366 * 24 * 3600;
pub const MAX_WALL_TIME_SECS: u64 = 30 * 24 * 3600;
pub const MAX_CONTEXT_TOKENS: u64 = 10_000_000;
pub const MAX_MODEL_OUTPUT_TOKENS: u32 = 1_000_000;
pub const MAX_CHUNK_DELAY_MS: u64 = 10_000;

impl AgentSpec {
    /// Parses and validates a spec. Errors name the line (syntax) or the field (meaning).
    /// Nesting is bounded first, in one linear pass ([`crate::spec_depth`]): YAML parsing is
    /// quadratic in it. Parsing a large spec is CPU work: async callers run it off their runtime.
    pub fn parse(text: &str, format: SpecFormat) -> Result<Self, Error> {
        match format {
            SpecFormat::Json => crate::spec_depth::check_json(text)?,
            SpecFormat::Yaml => crate::spec_depth::check_yaml(text)?,
        }
        // serde_json would also read the spec from an array of its fields in order; YAML's
        // deserializer reads a struct from a mapping only.
        if format == SpecFormat::Json && !text.trim_start().starts_with('{') {
            return Err(Error::InvalidAgentSpec(
                "a JSON spec must be an object: {\"name\": ..., \"model\": ...}".into(),
            ));
        }
        let spec: AgentSpec = match format {
            SpecFormat::Json => serde_json::from_str(text)
                .map_err(|e| Error::InvalidAgentSpec(format!("{e} (line {}, column {})", e.line(), e.column())))?,
            SpecFormat::Yaml => serde_yaml_ng::from_str(text).map_err(|e| {
                let at =
                    e.location().map(|l| format!(" (line {}, column {})", l.line(), l.column())).unwrap_or_default();
                let msg = e.to_string();
                // serde_yaml_ng already appends "at line L column C"; avoid saying it twice.
                if msg.contains(" at line ") {
                    Error::InvalidAgentSpec(msg)
                } else {
                    Error::InvalidAgentSpec(format!("{msg}{at}"))
                }
            })?,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what serde cannot: names, ranges, uniqueness.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &str, why: &str| Err(Error::InvalidAgentSpec(format!("field `{field}`: {why}")));
        if !is_slug(&self.name) {
            return bad("name", "use 1-63 of [a-z0-9_-], starting with a letter or digit");
        }
        if self.model.name.trim().is_empty() {
            return bad("model.name", "must not be empty");
        }
        if let Some(url) = &self.model.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("model.base_url", "must start with http:// or https://");
        }
        if let Some(env) = &self.model.api_key_env
            && (env.is_empty() || !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return bad("model.api_key_env", "must be an environment variable name");
        }
        if let Some(t) = self.model.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return bad("model.temperature", "must be between 0 and 2");
        }
        if self.model.timeout_secs == 0 || self.model.timeout_secs > 3600 {
            return bad("model.timeout_secs", "must be between 1 and 3600");
        }
        if self.model.max_retries > 10 {
            return bad("model.max_retries", "must be at most 10");
        }
        if let Some(n) = self.model.max_tokens
            && !(1..=MAX_MODEL_OUTPUT_TOKENS).contains(&n)
        {
            return bad("model.max_tokens", &format!("must be between 1 and {MAX_MODEL_OUTPUT_TOKENS}"));
        }
        if self.model.chunk_delay_ms > MAX_CHUNK_DELAY_MS {
            return bad("model.chunk_delay_ms", &format!("must be at most {MAX_CHUNK_DELAY_MS} (10 s)"));
        }
        match &self.model.tool_choice {
            Some(ToolChoice::Required) if self.tools.is_empty() && self.mcp_servers.is_empty() => {
                return bad("model.tool_choice", "`required` needs at least one tool or MCP server");
            }
            Some(ToolChoice::Function(name)) if !self.offers_tool(name) => {
                return bad(
                    "model.tool_choice.function",
                    &format!("`{name}` is not one of the agent's tools (MCP tools are named `SERVER__TOOL`)"),
                );
            }
            _ => {}
        }
        if self.instructions.len() > MAX_INSTRUCTIONS_BYTES {
            return bad("instructions", "is longer than 256 KiB");
        }
        if self.tools.len() > MAX_TOOLS {
            return bad("tools", "at most 128 tools");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, tool) in self.tools.iter().enumerate() {
            let field = format!("tools[{i}].name");
            if tool.name.is_empty()
                || tool.name.len() > 64
                || !tool.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return bad(&field, "use 1-64 of [A-Za-z0-9_-]");
            }
            if !seen.insert(tool.name.as_str()) {
                return bad(&field, &format!("duplicate tool name `{}`", tool.name));
            }
            if let Some(p) = &tool.parameters
                && !p.is_object()
            {
                return bad(&format!("tools[{i}].parameters"), "must be a JSON Schema object");
            }
            if tool.timeout_secs == 0 || tool.timeout_secs > 3600 {
                return bad(&format!("tools[{i}].timeout_secs"), "must be between 1 and 3600");
            }
        }
        for (i, tool) in self.tools.iter().enumerate() {
            if let ApprovalRule::When(c) = &tool.require_approval {
                c.validate(&format!("tools[{i}].require_approval.when")).map_err(Error::InvalidAgentSpec)?;
            }
            if tool.approval_timeout_secs.is_some_and(|t| !(1..=MAX_APPROVAL_TIMEOUT_SECS).contains(&t)) {
                return bad(
                    &format!("tools[{i}].approval_timeout_secs"),
                    &format!("must be between 1 and {MAX_APPROVAL_TIMEOUT_SECS} (366 days)"),
                );
            }
            match (tool.kind, &tool.http) {
                (ToolKind::Http, None) => return bad(&format!("tools[{i}].http"), "a `type: http` tool needs `http`"),
                (ToolKind::Http, Some(h)) => {
                    let m = h.method.to_ascii_uppercase();
                    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()) {
                        return bad(&format!("tools[{i}].http.method"), "use GET, POST, PUT, PATCH or DELETE");
                    }
                    if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                        return bad(&format!("tools[{i}].http.url"), "must start with http:// or https://");
                    }
                }
                (_, Some(_)) => return bad(&format!("tools[{i}].http"), "only `type: http` tools take `http`"),
                _ => {}
            }
            if tool.kind == ToolKind::Client && !tool.require_approval.is_never() {
                return bad(&format!("tools[{i}].require_approval"), "client tools run in the client; approve there");
            }
        }
        let mut servers = std::collections::HashSet::new();
        for (i, m) in self.mcp_servers.iter().enumerate() {
            if !is_slug(&m.name) || m.name.contains("__") {
                return bad(&format!("mcp_servers[{i}].name"), "use [a-z0-9_-] (no `__`)");
            }
            if !servers.insert(m.name.as_str()) {
                return bad(&format!("mcp_servers[{i}].name"), &format!("duplicate server name `{}`", m.name));
            }
            match (&m.catalog, &m.command, &m.url) {
                (Some(c), None, None) if is_slug(c) => {}
                (None, Some(c), None) if !c.trim().is_empty() => {}
                (None, None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
                (None, None, None) => {}
                _ => {
                    return bad(
                        &format!("mcp_servers[{i}]"),
                        "give one of `catalog` (a server the operator declared), `url` (http:// or https://) or `command` (stdio)",
                    );
                }
            }
            if m.catalog_name().is_some() && !(m.args.is_empty() && m.env.is_empty() && m.headers.is_empty()) {
                return bad(
                    &format!("mcp_servers[{i}]"),
                    "a catalog server takes its args, env and headers from the operator's declaration",
                );
            }
            if let ApprovalRule::When(c) = &m.require_approval {
                c.validate(&format!("mcp_servers[{i}].require_approval.when")).map_err(Error::InvalidAgentSpec)?;
            }
            if m.timeout_secs == 0 || m.timeout_secs > 3600 {
                return bad(&format!("mcp_servers[{i}].timeout_secs"), "must be between 1 and 3600");
            }
        }
        if self.limits.max_steps == 0 || self.limits.max_steps > 10_000 {
            return bad("limits.max_steps", "must be between 1 and 10000");
        }
        if !(1..=MAX_WALL_TIME_SECS).contains(&self.limits.max_wall_time_secs) {
            return bad("limits.max_wall_time_secs", &format!("must be between 1 and {MAX_WALL_TIME_SECS} (30 days)"));
        }
        if self.context.max_messages < 2 || self.context.max_messages > 10_000 {
            return bad("context.max_messages", "must be between 2 and 10000");
        }
        if !(256..=MAX_CONTEXT_TOKENS).contains(&self.context.max_tokens) {
            return bad("context.max_tokens", &format!("must be between 256 and {MAX_CONTEXT_TOKENS}"));
        }
        Ok(())
    }

    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// Whether the model may be offered a tool of this name: one of `tools`, or `SERVER__TOOL`
    /// for one of `mcp_servers` (whose tools are only known once the server is asked).
    pub fn offers_tool(&self, name: &str) -> bool {
        self.tool(name).is_some()
            || name
                .split_once("__")
                .is_some_and(|(server, tool)| !tool.is_empty() && self.mcp_servers.iter().any(|m| m.name == server))
    }
}

impl McpServerSpec {
    /// The catalog entry this server refers to: `catalog`, or the server's own name when it
    /// gives neither a command nor a URL.
    pub fn catalog_name(&self) -> Option<&str> {
        match (&self.catalog, &self.command, &self.url) {
            (Some(c), _, _) => Some(c),
            (None, None, None) => Some(&self.name),
            _ => None,
        }
    }
}

pub fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str =
        "name: helper\nmodel:\n  provider: scripted\n  name: echo\ntools:\n  - name: clock\n    type: builtin\n";

    #[test]
    fn a_spec_is_a_mapping_never_a_list_of_its_fields_in_order() {
        // name, description, model, instructions, tools, mcp_servers, limits, concurrency, context, pause
        let fields =
            r#"["helper", "", {"provider": "scripted", "name": "echo"}, "", [], [], {}, "enqueue", {}, "hold"]"#;
        let err = AgentSpec::parse(fields, SpecFormat::Json).unwrap_err().to_string();
        assert!(err.contains("a JSON spec must be an object"), "{err}");
        let yaml = "- helper\n- null\n- {provider: scripted, name: echo}\n";
        let err = AgentSpec::parse(yaml, SpecFormat::Yaml).unwrap_err().to_string();
        assert!(err.contains("invalid type: sequence"), "{err}");
        AgentSpec::parse(r#" {"name": "helper", "model": {"provider": "scripted", "name": "echo"}}"#, SpecFormat::Json)
            .unwrap();
    }

    #[test]
    fn minimal_yaml_parses_with_defaults() {
        let spec = AgentSpec::parse(YAML, SpecFormat::Yaml).unwrap();
        assert_eq!(spec.name, "helper");
        assert_eq!(spec.concurrency, ConcurrencyPolicy::Enqueue);
        assert_eq!(spec.limits.max_steps, 50);
        assert!(spec.model.stream);
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let text = "name: helper\nmodel:\n  provider: scripted\n  name: echo\n  temprature: 0.2\n";
        let err = AgentSpec::parse(text, SpecFormat::Yaml).unwrap_err().to_string();
        assert!(err.contains("temprature"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn json_syntax_error_names_line() {
        let err = AgentSpec::parse("{\n\"name\": \"x\",\n}", SpecFormat::Json).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn huge_durations_and_counts_are_refused_naming_the_field() {
        let huge = u64::MAX;
        let model = "model: {provider: scripted, name: e";
        for (rest, field) in [
            (format!("{model}}}\nlimits: {{max_wall_time_secs: {huge}}}\n"), "limits.max_wall_time_secs"),
            (format!("{model}}}\nlimits: {{max_wall_time_secs: 2592001}}\n"), "limits.max_wall_time_secs"),
            (
                format!("{model}}}\ntools: [{{name: t, type: builtin, approval_timeout_secs: {huge}}}]\n"),
                "tools[0].approval_timeout_secs",
            ),
            (
                format!("{model}}}\ntools: [{{name: t, type: builtin, approval_timeout_secs: 31622401}}]\n"),
                "tools[0].approval_timeout_secs",
            ),
            (format!("{model}}}\ncontext: {{max_tokens: {huge}}}\n"), "context.max_tokens"),
            (format!("{model}, chunk_delay_ms: {huge}}}\n"), "model.chunk_delay_ms"),
            (format!("{model}, max_tokens: 4294967295}}\n"), "model.max_tokens"),
            (format!("{model}, max_tokens: 0}}\n"), "model.max_tokens"),
        ] {
            let err = AgentSpec::parse(&format!("name: a\n{rest}"), SpecFormat::Yaml).unwrap_err().to_string();
            assert!(err.contains(&format!("field `{field}`")), "{rest:?} -> {err}");
        }
        let at_bounds = format!(
            "name: a\n{model}, chunk_delay_ms: 10000, max_tokens: 1000000}}\nlimits: {{max_wall_time_secs: 2592000}}\n\
             context: {{max_tokens: 10000000}}\ntools: [{{name: t, type: builtin, approval_timeout_secs: 31622400}}]\n"
        );
        AgentSpec::parse(&at_bounds, SpecFormat::Yaml).unwrap();
    }

    #[test]
    fn deeply_nested_specs_are_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = AgentSpec::parse(&format!("name: a\ntools: {deep}\n"), SpecFormat::Yaml).unwrap_err();
        assert_eq!(err.to_string(), "invalid agent spec: nested deeper than 64 levels (line 2)");
        let err = AgentSpec::parse(&format!("{{\"name\": \"a\", \"tools\": {deep}}}"), SpecFormat::Json).unwrap_err();
        assert_eq!(err.to_string(), "invalid agent spec: nested deeper than 64 levels (line 1)");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            ("name: Bad Name\nmodel: {provider: scripted, name: e}\n", "field `name`"),
            ("name: a\nmodel: {provider: scripted, name: e, temperature: 9}\n", "model.temperature"),
            (
                "name: a\nmodel: {provider: scripted, name: e}\ntools: [{name: t, type: client}, {name: t, type: client}]\n",
                "tools[1].name",
            ),
            ("name: a\nmodel: {provider: scripted, name: e}\nlimits: {max_steps: 0}\n", "limits.max_steps"),
            ("name: a\nmodel: {provider: \"Not A Name\", name: e}\n", "unknown variant"),
        ];
        for (text, needle) in cases {
            let err = AgentSpec::parse(text, SpecFormat::Yaml).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} -> {err}");
        }
    }

    #[test]
    fn tool_choice_and_parallel_tool_calls_parse() {
        let tools = "tools: [{name: get_weather, type: client}]\nmcp_servers: [{name: docs, url: \"http://x\"}]\n";
        let model = |extra: &str| format!("name: a\nmodel: {{provider: scripted, name: e{extra}}}\n{tools}");
        let spec = AgentSpec::parse(&model(""), SpecFormat::Yaml).unwrap();
        assert_eq!((spec.model.tool_choice.clone(), spec.model.parallel_tool_calls), (None, None));
        // Unset fields stay out of the serialized spec (so existing agent versions keep their form).
        let json = serde_json::to_value(&spec.model).unwrap();
        assert!(json.get("tool_choice").is_none() && json.get("parallel_tool_calls").is_none(), "{json}");
        for (text, want) in [
            ("auto", ToolChoice::Auto),
            ("none", ToolChoice::None),
            ("required", ToolChoice::Required),
            ("{function: get_weather}", ToolChoice::Function("get_weather".into())),
            ("{function: docs__search}", ToolChoice::Function("docs__search".into())),
        ] {
            let spec = AgentSpec::parse(&model(&format!(", tool_choice: {text}")), SpecFormat::Yaml).unwrap();
            assert_eq!(spec.model.tool_choice, Some(want), "{text}");
        }
        let spec =
            AgentSpec::parse(&model(", tool_choice: required, parallel_tool_calls: false"), SpecFormat::Yaml).unwrap();
        assert_eq!(spec.model.parallel_tool_calls, Some(false));
        // JSON: the same shape, and it round-trips.
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["model"]["tool_choice"], serde_json::json!("required"));
        assert_eq!(json["model"]["parallel_tool_calls"], serde_json::json!(false));
        assert_eq!(AgentSpec::parse(&json.to_string(), SpecFormat::Json).unwrap(), spec);
        let f = serde_json::to_value(ToolChoice::Function("get_weather".into())).unwrap();
        assert_eq!(f, serde_json::json!({"function": "get_weather"}));
        assert_eq!(serde_json::from_value::<ToolChoice>(f).unwrap().function_name(), Some("get_weather"));
    }

    #[test]
    fn tool_choice_is_validated() {
        let ok = |text: &str| AgentSpec::parse(text, SpecFormat::Yaml).unwrap();
        let err = |text: &str| AgentSpec::parse(text, SpecFormat::Yaml).unwrap_err().to_string();
        let with = "tools: [{name: get_weather, type: client}, {name: clock, type: builtin}]\n\
                    mcp_servers: [{name: docs, command: srv}]\n";
        let agent = |choice: &str, tools: &str| {
            format!("name: a\nmodel: {{provider: scripted, name: e, tool_choice: {choice}}}\n{tools}")
        };
        ok(&agent("{function: clock}", with));
        ok(&agent("{function: docs__anything}", with));
        ok(&agent("none", ""));
        ok(&agent("auto", ""));
        for (choice, tools, needle) in [
            ("{function: nope}", with, "model.tool_choice.function"),
            ("{function: other__search}", with, "`other__search` is not one of the agent's tools"),
            ("{function: docs__}", with, "model.tool_choice.function"),
            ("{function: clock}", "", "model.tool_choice.function"),
            ("required", "", "model.tool_choice"),
            (
                "sometimes",
                with,
                "tool_choice must be `auto`, `none`, `required` or `{function: NAME}`, not \"sometimes\"",
            ),
            ("{tool: clock}", with, "tool_choice must be"),
            ("{function: clock, extra: 1}", with, "tool_choice must be"),
            ("[clock]", with, "tool_choice must be"),
        ] {
            let e = err(&agent(choice, tools));
            assert!(e.contains(needle), "{choice} -> {e}");
        }
        let e = err("name: a\nmodel: {provider: scripted, name: e, parallel_tool_calls: maybe}\n");
        assert!(e.contains("parallel_tool_calls") || e.contains("invalid type"), "{e}");
    }
}
