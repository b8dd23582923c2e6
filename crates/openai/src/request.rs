//! A `POST /v1/responses` request: its parameters, its input items turned into Stead messages
//! and decisions, and the agent version (model, instructions, tools) that runs it.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use stead_core::agent::{ModelSpec, ToolChoice};
use stead_core::ids::ApprovalId;
use stead_core::message::{Message, ToolCall};

use crate::error::{OaiError, OaiResult};
use crate::items::parse_approval_item_id;

/// The body of `POST /v1/responses`. Parameters Stead does not act on but that leave the
/// answer's meaning intact are accepted and echoed; ones that would change it are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateResponse {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Vec<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<Value>,
    pub background: Option<bool>,
    pub stream: Option<bool>,
    pub stream_options: Option<Value>,
    pub metadata: Option<Map<String, Value>>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub truncation: Option<String>,
    pub text: Option<Value>,
    pub reasoning: Option<Value>,
    pub include: Option<Vec<String>>,
    pub user: Option<String>,
    pub service_tier: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub safety_identifier: Option<String>,
    pub max_tool_calls: Option<u32>,
    pub top_logprobs: Option<u32>,
    pub prompt: Option<Value>,
}

/// Checks the parameters that need no state to judge.
pub fn validate(req: &CreateResponse) -> OaiResult<()> {
    if let Some(t) = req.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(OaiError::invalid(
            "temperature",
            "decimal_above_max_value",
            format!("Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got {t} instead."),
        ));
    }
    if let Some(p) = req.top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(OaiError::invalid("top_p", "invalid_value", "Invalid 'top_p': expected a value between 0 and 1."));
    }
    if req.max_output_tokens == Some(0) {
        return Err(OaiError::invalid("max_output_tokens", "invalid_value", "'max_output_tokens' must be at least 1."));
    }
    if let Some(t) = &req.truncation
        && t != "auto"
        && t != "disabled"
    {
        return Err(OaiError::invalid("truncation", "invalid_value", "'truncation' must be 'auto' or 'disabled'."));
    }
    if req.prompt.is_some() {
        return Err(OaiError::unsupported("prompt", "Stored prompt templates are not supported by this server."));
    }
    if let Some(text) = &req.text {
        let kind = text.pointer("/format/type").and_then(Value::as_str).unwrap_or("text");
        if kind != "text" {
            return Err(OaiError::unsupported(
                "text.format",
                format!("Structured output format '{kind}' is not supported by this server; use 'text'."),
            ));
        }
    }
    if let Some(m) = &req.metadata {
        check_metadata(m)?;
    }
    if req.background == Some(true) && req.store == Some(false) {
        return Err(OaiError::invalid("background", "invalid_value", "Background responses need 'store': true."));
    }
    if req.previous_response_id.is_some() && req.conversation.is_some() {
        return Err(OaiError::invalid(
            "previous_response_id",
            "mutually_exclusive_parameters",
            "'previous_response_id' and 'conversation' cannot be used together.",
        ));
    }
    if req.conversation.is_some() && req.store == Some(false) {
        return Err(OaiError::invalid(
            "store",
            "invalid_value",
            "A response in a conversation is stored; drop 'store': false.",
        ));
    }
    tool_choice(req)?;
    Ok(())
}

/// The request's `tool_choice` as Stead's: `"auto"`, `"none"`, `"required"`,
/// `{"type": "function", "name": N}` for one of the request's function tools, or
/// `{"type": "mcp", "server_label": L, "name": N}` for a tool of one of its MCP servers
/// (which the model sees as `SLUG__N`, see [`mcp_slug`]). Hosted tools and `allowed_tools`
/// are refused.
pub fn tool_choice(req: &CreateResponse) -> OaiResult<Option<ToolChoice>> {
    let bad = |code: &str, msg: String| OaiError::invalid("tool_choice", code, msg);
    let of_type =
        |kind: &'static str| req.tools.iter().filter(move |t| t.get("type").and_then(Value::as_str) == Some(kind));
    let choice = match &req.tool_choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    "invalid_value",
                    format!("Invalid 'tool_choice': '{other}'. Expected 'auto', 'none', 'required' or an object."),
                ));
            }
        },
        Some(Value::Object(o)) => {
            let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
            let name = || {
                o.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or_else(|| {
                    OaiError::invalid(
                        "tool_choice.name",
                        "missing_required_parameter",
                        format!("'tool_choice.name' is required for a tool_choice of type '{kind}'."),
                    )
                })
            };
            match kind {
                "function" => {
                    let name = name()?;
                    if !of_type("function").any(|t| t.get("name").and_then(Value::as_str) == Some(name)) {
                        return Err(bad(
                            "invalid_value",
                            format!(
                                "Tool choice 'function' names '{name}', but no function tool of that name is in 'tools'."
                            ),
                        ));
                    }
                    ToolChoice::Function(name.to_owned())
                }
                "mcp" => {
                    let label = o.get("server_label").and_then(Value::as_str).unwrap_or_default();
                    let server = of_type("mcp")
                        .find(|t| t.get("server_label").and_then(Value::as_str) == Some(label))
                        .ok_or_else(|| {
                            bad(
                                "invalid_value",
                                format!(
                                    "Tool choice 'mcp' names server_label '{label}', but no mcp tool in 'tools' has it."
                                ),
                            )
                        })?;
                    let Some(name) = o.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
                        return Err(OaiError::unsupported(
                            "tool_choice.name",
                            "A tool_choice of type 'mcp' without a 'name' is not supported by this server; name the tool.",
                        ));
                    };
                    let allowed = match server.get("allowed_tools") {
                        Some(Value::Array(names)) => Some(names),
                        Some(Value::Object(f)) => f.get("tool_names").and_then(Value::as_array),
                        _ => None,
                    };
                    if allowed.is_some_and(|names| !names.iter().any(|n| n.as_str() == Some(name))) {
                        return Err(bad(
                            "invalid_value",
                            format!("Tool choice 'mcp' names '{name}', which server '{label}' does not allow."),
                        ));
                    }
                    ToolChoice::Function(format!("{}__{name}", mcp_slug(label)))
                }
                other => {
                    return Err(OaiError::unsupported(
                        "tool_choice",
                        format!(
                            "A tool_choice of type '{other}' is not supported by this server; use 'auto', 'none', \
                             'required', a function or an mcp tool."
                        ),
                    ));
                }
            }
        }
        Some(_) => {
            return Err(bad("invalid_type", "'tool_choice' must be a string or an object.".into()));
        }
    };
    if choice == ToolChoice::Required && of_type("function").chain(of_type("mcp")).next().is_none() {
        return Err(bad("invalid_value", "Tool choice 'required' needs at least one tool in 'tools'.".into()));
    }
    Ok(Some(choice))
}

/// OpenAI's metadata limits: 16 pairs, keys up to 64 characters, string values up to 512.
pub fn check_metadata(m: &Map<String, Value>) -> OaiResult<()> {
    if m.len() > 16 {
        return Err(OaiError::invalid("metadata", "invalid_value", "'metadata' may hold at most 16 pairs."));
    }
    for (k, v) in m {
        if k.chars().count() > 64 {
            return Err(OaiError::invalid(
                "metadata",
                "invalid_value",
                format!("metadata key '{k}' is over 64 characters."),
            ));
        }
        match v.as_str() {
            Some(s) if s.chars().count() <= 512 => {}
            Some(_) => {
                return Err(OaiError::invalid(
                    "metadata",
                    "invalid_value",
                    format!("metadata['{k}'] is over 512 characters."),
                ));
            }
            None => {
                return Err(OaiError::invalid(
                    "metadata",
                    "invalid_type",
                    format!("metadata['{k}'] must be a string."),
                ));
            }
        }
    }
    Ok(())
}

/// An `mcp_approval_response` input item.
#[derive(Clone, Debug)]
pub struct ApprovalAnswer {
    pub approval: ApprovalId,
    pub approve: bool,
    pub reason: Option<String>,
}

/// The input of a request, as Stead sees it.
#[derive(Debug, Default)]
pub struct ParsedInput {
    pub messages: Vec<Message>,
    pub approvals: Vec<ApprovalAnswer>,
    /// Call ids the input gives outputs for.
    pub outputs_for: Vec<String>,
}

/// Parses `input` (a string or a list of items). `known_calls` names calls made earlier, so
/// a `function_call_output` can carry its tool's name.
pub fn parse_input(input: Option<&Value>, known_calls: &HashMap<String, String>) -> OaiResult<ParsedInput> {
    let mut parsed = ParsedInput::default();
    let items = match input {
        None | Some(Value::Null) => return Ok(parsed),
        Some(Value::String(s)) => {
            parsed.messages.push(Message::User { content: s.clone() });
            return Ok(parsed);
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(OaiError::invalid("input", "invalid_type", "'input' must be a string or a list of items."));
        }
    };
    let mut names: HashMap<String, String> = known_calls.clone();
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let bad = |msg: String| OaiError::invalid(&param, "invalid_value", msg);
        let obj = item.as_object().ok_or_else(|| bad(format!("'{param}' must be an object.")))?;
        let kind = obj.get("type").and_then(Value::as_str).unwrap_or("message");
        match kind {
            "message" => {
                let role = obj
                    .get("role")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("'{param}.role' is required.")))?;
                let text = content_text(obj.get("content"), &param)?;
                let m = match role {
                    "user" => Message::User { content: text },
                    "system" | "developer" => Message::System { content: text },
                    "assistant" => Message::Assistant { content: Some(text), tool_calls: Vec::new() },
                    other => {
                        return Err(bad(format!(
                            "'{param}.role' {other:?} is not one of user, system, developer, assistant."
                        )));
                    }
                };
                parsed.messages.push(m);
            }
            "function_call" => {
                let call_id = str_field(obj, "call_id", &param)?;
                let name = str_field(obj, "name", &param)?;
                let arguments = obj.get("arguments").and_then(Value::as_str).unwrap_or("{}").to_owned();
                names.insert(call_id.clone(), name.clone());
                push_call(&mut parsed.messages, ToolCall { id: call_id, name, arguments });
            }
            "function_call_output" => {
                let call_id = str_field(obj, "call_id", &param)?;
                let output = match obj.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => content_text(Some(v), &param)?,
                    _ => return Err(bad(format!("'{param}.output' must be a string."))),
                };
                let name = names.get(&call_id).cloned().unwrap_or_default();
                parsed.outputs_for.push(call_id.clone());
                parsed.messages.push(Message::Tool { call_id, name, content: output, is_error: false });
            }
            "mcp_approval_response" => {
                let id = str_field(obj, "approval_request_id", &param)?;
                let approval = parse_approval_item_id(&id)
                    .ok_or_else(|| OaiError::not_found("MCP approval request", &id).with_param(&param))?;
                let approve = obj
                    .get("approve")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| bad(format!("'{param}.approve' must be a boolean.")))?;
                let reason = obj.get("reason").and_then(Value::as_str).map(str::to_owned);
                parsed.approvals.push(ApprovalAnswer { approval, approve, reason });
            }
            // Output items a client sends back as history (stateless use): keep what the
            // model needs, drop what only described the exchange.
            "mcp_call" => {
                let call_id = obj.get("id").and_then(Value::as_str).unwrap_or("mcp_call").to_owned();
                let label = obj.get("server_label").and_then(Value::as_str).unwrap_or_default();
                let tool = obj.get("name").and_then(Value::as_str).unwrap_or_default();
                let name = format!("{}__{tool}", mcp_slug(label));
                let arguments = obj.get("arguments").and_then(Value::as_str).unwrap_or("{}").to_owned();
                let (content, is_error) = match (obj.get("output").and_then(Value::as_str), obj.get("error")) {
                    (Some(o), _) => (o.to_owned(), false),
                    (None, Some(e)) if !e.is_null() => {
                        (e.as_str().map(str::to_owned).unwrap_or_else(|| e.to_string()), true)
                    }
                    _ => (String::new(), false),
                };
                push_call(&mut parsed.messages, ToolCall { id: call_id.clone(), name: name.clone(), arguments });
                parsed.messages.push(Message::Tool { call_id, name, content, is_error });
            }
            "reasoning" | "mcp_list_tools" | "mcp_approval_request" => {}
            "item_reference" => {
                return Err(OaiError::unsupported(
                    &param,
                    "Item references are not supported by this server; send the item itself.",
                ));
            }
            other => {
                return Err(OaiError::unsupported(
                    &param,
                    format!("Input items of type '{other}' are not supported by this server."),
                ));
            }
        }
    }
    Ok(parsed)
}

/// Adds a call to the assistant turn it belongs to (a `function_call` right after an
/// assistant message or another call is part of the same turn).
fn push_call(messages: &mut Vec<Message>, call: ToolCall) {
    if let Some(Message::Assistant { tool_calls, .. }) = messages.last_mut() {
        tool_calls.push(call);
    } else {
        messages.push(Message::Assistant { content: None, tool_calls: vec![call] });
    }
}

fn str_field(obj: &Map<String, Value>, key: &str, param: &str) -> OaiResult<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| {
        OaiError::invalid(
            &format!("{param}.{key}"),
            "missing_required_parameter",
            format!("'{param}.{key}' is required."),
        )
    })
}

/// The text of a message's `content`: a string, or text parts (joined). Images, files and
/// audio are refused rather than silently dropped.
pub fn content_text(content: Option<&Value>, param: &str) -> OaiResult<String> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "input_text" | "output_text" | "text" | "refusal" => {
                        let t = p.get("text").or_else(|| p.get("refusal")).and_then(Value::as_str).unwrap_or_default();
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    other => {
                        return Err(OaiError::unsupported(
                            &format!("{param}.content[{j}]"),
                            format!("Content of type '{other}' is not supported by this server (text only)."),
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(OaiError::invalid(
            &format!("{param}.content"),
            "invalid_type",
            format!("'{param}.content' must be a string or a list of parts."),
        )),
    }
}

/// An MCP server a request names.
#[derive(Clone, Debug)]
pub struct McpTool {
    pub label: String,
    pub slug: String,
    pub url: String,
}

/// The agent spec (JSON) that runs a request, its MCP servers, and the model-facing prefix
/// → `server_label` map the renderer needs.
pub struct RunAgent {
    pub spec: Value,
    pub mcp: Vec<McpTool>,
    pub mcp_labels: BTreeMap<String, String>,
}

/// Builds the agent: the routed model with the request's sampling settings, the
/// instructions, `function` tools as client tools and `mcp` tools as MCP servers; runs
/// pause into the conversation (a response ends where the client or a person must act).
pub fn run_agent(req: &CreateResponse, model: ModelSpec, max_messages: u32) -> OaiResult<RunAgent> {
    let mut tools = Vec::new();
    let mut servers = Vec::new();
    let mut mcp = Vec::new();
    let mut mcp_labels = BTreeMap::new();
    for (i, t) in req.tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "function" => {
                let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
                    OaiError::invalid(
                        &format!("{param}.name"),
                        "missing_required_parameter",
                        format!("'{param}.name' is required."),
                    )
                })?;
                let mut spec = json!({"name": name, "type": "client"});
                if let Some(d) = t.get("description").and_then(Value::as_str) {
                    spec["description"] = json!(d);
                }
                if let Some(p) = t.get("parameters").filter(|p| !p.is_null()) {
                    spec["parameters"] = p.clone();
                }
                tools.push(spec);
            }
            "mcp" => {
                let (server, tool) = mcp_server(t, &param)?;
                mcp_labels.insert(tool.slug.clone(), tool.label.clone());
                servers.push(server);
                mcp.push(tool);
            }
            other => {
                return Err(OaiError::unsupported(
                    &format!("{param}.type"),
                    format!("Tool type '{other}' is not supported by this server; use 'function' or 'mcp'."),
                ));
            }
        }
    }
    let mut model_json = serde_json::to_value(&model).expect("a model spec serializes");
    if let Some(t) = req.temperature {
        model_json["temperature"] = json!(t);
    }
    if let Some(m) = req.max_output_tokens {
        model_json["max_tokens"] = json!(m);
    }
    // With `none` the tools stay offered (the model knows them but may not call them), as OpenAI does.
    if let Some(c) = tool_choice(req)? {
        model_json["tool_choice"] = serde_json::to_value(c).expect("a tool choice serializes");
    }
    if let Some(p) = req.parallel_tool_calls {
        model_json["parallel_tool_calls"] = json!(p);
    }
    let max_messages = if req.truncation.as_deref() == Some("disabled") { 10_000 } else { max_messages };
    let mut spec = json!({
        "model": model_json,
        "concurrency": "enqueue",
        "pause": "complete",
        "context": {"max_messages": max_messages, "max_tokens": stead_core::agent::MAX_CONTEXT_TOKENS},
    });
    if let Some(i) = req.instructions.as_deref().filter(|i| !i.is_empty()) {
        spec["instructions"] = json!(i);
    }
    if !tools.is_empty() {
        spec["tools"] = Value::Array(tools);
    }
    if !servers.is_empty() {
        spec["mcp_servers"] = Value::Array(servers);
    }
    // Same settings, same agent version: the name is the settings' hash.
    let digest = Sha256::digest(spec.to_string().as_bytes());
    spec["name"] = json!(format!("resp-{}", hex::encode(&digest[..8])));
    Ok(RunAgent { spec, mcp, mcp_labels })
}

/// The model-facing prefix for a `server_label`: Stead names MCP tools `SERVER__TOOL` with
/// SERVER in `[a-z0-9_-]`.
pub fn mcp_slug(label: &str) -> String {
    let slug: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .take(48)
        .collect();
    if slug.is_empty() { "mcp".into() } else { slug }
}

fn mcp_server(t: &Value, param: &str) -> OaiResult<(Value, McpTool)> {
    let label = t.get("server_label").and_then(Value::as_str).filter(|l| !l.is_empty()).ok_or_else(|| {
        OaiError::invalid(
            &format!("{param}.server_label"),
            "missing_required_parameter",
            format!("'{param}.server_label' is required."),
        )
    })?;
    if t.get("connector_id").is_some_and(|c| !c.is_null()) {
        return Err(OaiError::unsupported(
            &format!("{param}.connector_id"),
            "Connectors are not supported by this server; give a server_url.",
        ));
    }
    let url = t.get("server_url").and_then(Value::as_str).ok_or_else(|| {
        OaiError::invalid(
            &format!("{param}.server_url"),
            "missing_required_parameter",
            format!("'{param}.server_url' is required."),
        )
    })?;
    let mut headers = BTreeMap::new();
    if let Some(h) = t.get("headers").filter(|h| !h.is_null()) {
        let h = h.as_object().ok_or_else(|| {
            OaiError::invalid(&format!("{param}.headers"), "invalid_type", "'headers' must be an object of strings.")
        })?;
        for (k, v) in h {
            let v = v.as_str().ok_or_else(|| {
                OaiError::invalid(
                    &format!("{param}.headers"),
                    "invalid_type",
                    format!("header '{k}' must be a string."),
                )
            })?;
            headers.insert(k.clone(), v.to_owned());
        }
    }
    if let Some(a) = t.get("authorization").and_then(Value::as_str) {
        headers.insert("Authorization".into(), format!("Bearer {a}"));
    }
    // Server-side `${env:VAR}` expansion is for operators' agent specs; a caller must not be
    // able to make Stead send its own secrets to a URL the caller chose.
    if headers.values().any(|v| v.contains("${")) {
        return Err(OaiError::invalid(
            &format!("{param}.headers"),
            "invalid_value",
            "Header values may not contain '${'.",
        ));
    }
    let slug = mcp_slug(label);
    let mut server = json!({"name": slug, "url": url});
    if !headers.is_empty() {
        server["headers"] = json!(headers);
    }
    match t.get("allowed_tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(names)) => server["allowed_tools"] = Value::Array(names.clone()),
        Some(Value::Object(f)) => {
            if let Some(names) = f.get("tool_names") {
                server["allowed_tools"] = names.clone();
            }
        }
        Some(_) => {
            return Err(OaiError::invalid(
                &format!("{param}.allowed_tools"),
                "invalid_type",
                "'allowed_tools' must be a list of tool names.",
            ));
        }
    }
    // OpenAI asks before sharing data with a remote server unless told not to.
    match t.get("require_approval") {
        None | Some(Value::Null) => server["require_approval"] = json!("always"),
        Some(Value::String(s)) if s == "always" || s == "never" => server["require_approval"] = json!(s),
        Some(Value::Object(f)) => {
            let names = |key: &str| -> Vec<String> {
                f.get(key)
                    .and_then(|v| v.get("tool_names"))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default()
            };
            let (always, never) = (names("always"), names("never"));
            // Tools named in neither list need approval (the safe default).
            server["require_approval"] = json!("always");
            let mut overrides = Map::new();
            for n in never {
                overrides.insert(n, json!({"require_approval": "never"}));
            }
            for n in always {
                overrides.insert(n, json!({"require_approval": "always"}));
            }
            if !overrides.is_empty() {
                server["tool_overrides"] = Value::Object(overrides);
            }
        }
        Some(_) => {
            return Err(OaiError::invalid(
                &format!("{param}.require_approval"),
                "invalid_value",
                "'require_approval' must be 'always', 'never' or {always: {tool_names}, never: {tool_names}}.",
            ));
        }
    }
    Ok((server, McpTool { label: label.to_owned(), slug, url: url.to_owned() }))
}

/// Most `mcp` tools one request may name (each is an outbound connection).
pub const MAX_MCP_SERVERS: usize = 16;

/// Replaces the credentials of the spec's MCP servers — header values and URL query strings —
/// by references to values the engine holds in memory (`stead_engine::held`), so the stored
/// agent version holds none of them; renames the spec by the hash of what remains. The guards
/// keep the values alive: hold them until the response is over.
pub fn hold_credentials(
    engine: &stead_engine::Engine,
    tenant: &stead_core::ids::TenantId,
    spec: &mut Value,
) -> Vec<stead_engine::held::HeldGuard> {
    let mut guards = Vec::new();
    let mut hold = |value: &str| {
        let g = engine.hold_credential(tenant, value);
        let r = g.reference();
        guards.push(g);
        r
    };
    if let Some(servers) = spec.get_mut("mcp_servers").and_then(Value::as_array_mut) {
        for server in servers {
            if let Some(h) = server.get_mut("headers").and_then(Value::as_object_mut) {
                for v in h.values_mut() {
                    if let Some(text) = v.as_str() {
                        *v = json!(hold(text));
                    }
                }
            }
            if let Some((base, query)) = server["url"].as_str().and_then(|u| u.split_once('?')) {
                let url = format!("{base}?{}", hold(query));
                server["url"] = json!(url);
            }
        }
    }
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("name");
    }
    let digest = Sha256::digest(spec.to_string().as_bytes());
    spec["name"] = json!(format!("resp-{}", hex::encode(&digest[..8])));
    guards
}

/// The request's tools as kept in the log and echoed in responses: an `mcp` tool's header
/// values and `authorization` are credentials, which never reach the log.
pub fn redacted_tools(tools: &[Value]) -> Vec<Value> {
    tools
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if t["type"] == "mcp" {
                if let Some(h) = t.get_mut("headers").and_then(Value::as_object_mut) {
                    for v in h.values_mut() {
                        *v = json!("[redacted]");
                    }
                }
                if t.get("authorization").is_some_and(|a| !a.is_null()) {
                    t["authorization"] = json!("[redacted]");
                }
                // A query string (`?token=…`) is a credential as often as not.
                if let Some(url) = t.get("server_url").and_then(Value::as_str)
                    && let Some((base, _)) = url.split_once('?')
                {
                    t["server_url"] = json!(format!("{base}?[redacted]"));
                }
            }
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use stead_core::agent::{AgentSpec, Provider, SpecFormat};

    use super::*;

    fn req(body: Value) -> CreateResponse {
        serde_json::from_value(body).unwrap()
    }

    fn tools() -> Value {
        json!([
            {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}},
            {"type": "mcp", "server_label": "Docs_Server", "server_url": "https://mcp.example/sse"},
            {"type": "mcp", "server_label": "git", "server_url": "https://git.example/mcp",
             "allowed_tools": {"tool_names": ["log"]}},
        ])
    }

    fn model() -> ModelSpec {
        ModelSpec {
            provider: Provider::Scripted,
            name: "echo".into(),
            base_url: None,
            api_key_env: None,
            temperature: None,
            max_tokens: None,
            stream: true,
            timeout_secs: 120,
            max_retries: 2,
            chunk_delay_ms: 0,
            tool_choice: None,
            parallel_tool_calls: None,
        }
    }

    /// The agent a request runs, checked the way the engine checks it.
    fn agent(body: Value) -> AgentSpec {
        let run = run_agent(&req(body), model(), 200).unwrap();
        AgentSpec::parse(&run.spec.to_string(), SpecFormat::Json).unwrap()
    }

    #[test]
    fn tool_choice_values_are_accepted() {
        for (choice, want) in [
            (json!(null), None),
            (json!("auto"), Some(ToolChoice::Auto)),
            (json!("none"), Some(ToolChoice::None)),
            (json!("required"), Some(ToolChoice::Required)),
            (json!({"type": "function", "name": "get_weather"}), Some(ToolChoice::Function("get_weather".into()))),
            (
                json!({"type": "mcp", "server_label": "Docs_Server", "name": "search"}),
                Some(ToolChoice::Function("docs-server__search".into())),
            ),
            (
                json!({"type": "mcp", "server_label": "git", "name": "log"}),
                Some(ToolChoice::Function("git__log".into())),
            ),
        ] {
            let r = req(json!({"input": "hi", "tools": tools(), "tool_choice": choice}));
            validate(&r).unwrap_or_else(|e| panic!("{choice}: {}", e.message));
            assert_eq!(tool_choice(&r).unwrap(), want, "{choice}");
        }
    }

    #[test]
    fn bad_tool_choices_are_refused() {
        for (tools, choice, param, code) in [
            (tools(), json!({"type": "function", "name": "nope"}), "tool_choice", "invalid_value"),
            (json!([]), json!({"type": "function", "name": "get_weather"}), "tool_choice", "invalid_value"),
            (tools(), json!({"type": "function"}), "tool_choice.name", "missing_required_parameter"),
            (tools(), json!({"type": "mcp", "server_label": "other", "name": "x"}), "tool_choice", "invalid_value"),
            (tools(), json!({"type": "mcp", "server_label": "git", "name": "push"}), "tool_choice", "invalid_value"),
            (tools(), json!({"type": "mcp", "server_label": "git"}), "tool_choice.name", "unsupported_parameter"),
            (json!([]), json!("required"), "tool_choice", "invalid_value"),
            (tools(), json!("sometimes"), "tool_choice", "invalid_value"),
            (tools(), json!(7), "tool_choice", "invalid_type"),
            (
                tools(),
                json!({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]}),
                "tool_choice",
                "unsupported_parameter",
            ),
            (tools(), json!({"type": "file_search"}), "tool_choice", "unsupported_parameter"),
            (tools(), json!({"type": "web_search_preview"}), "tool_choice", "unsupported_parameter"),
        ] {
            let e = validate(&req(json!({"input": "hi", "tools": tools, "tool_choice": choice}))).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{choice}");
            assert_eq!((e.param.as_deref(), e.code.as_deref()), (Some(param), Some(code)), "{choice}: {}", e.message);
        }
    }

    #[test]
    fn run_agent_carries_tool_choice_and_parallel_tool_calls() {
        // Unset: nothing in the model, tools offered.
        let a = agent(json!({"input": "hi", "tools": tools()}));
        assert_eq!((a.model.tool_choice, a.model.parallel_tool_calls), (None, None));
        assert_eq!(a.tools.len(), 1);
        assert_eq!(a.mcp_servers.len(), 2);

        // `none` keeps the tools offered and says so in the model.
        let run =
            run_agent(&req(json!({"input": "hi", "tools": tools(), "tool_choice": "none"})), model(), 200).unwrap();
        assert_eq!(run.spec["model"]["tool_choice"], json!("none"));
        let a = agent(json!({"input": "hi", "tools": tools(), "tool_choice": "none", "parallel_tool_calls": false}));
        assert_eq!(a.model.tool_choice, Some(ToolChoice::None));
        assert_eq!(a.model.parallel_tool_calls, Some(false));
        assert_eq!((a.tools.len(), a.mcp_servers.len()), (1, 2));

        let a = agent(json!({"input": "hi", "tools": tools(), "tool_choice": "required", "parallel_tool_calls": true}));
        assert_eq!((a.model.tool_choice, a.model.parallel_tool_calls), (Some(ToolChoice::Required), Some(true)));

        let run = run_agent(
            &req(json!({"input": "hi", "tools": tools(), "tool_choice": {"type": "function", "name": "get_weather"}})),
            model(),
            200,
        )
        .unwrap();
        assert_eq!(run.spec["model"]["tool_choice"], json!({"function": "get_weather"}));

        // An MCP choice names the tool as the model sees it, and the agent accepts it.
        let a = agent(json!({"input": "hi", "tools": tools(),
                             "tool_choice": {"type": "mcp", "server_label": "Docs_Server", "name": "search"}}));
        assert_eq!(a.model.tool_choice, Some(ToolChoice::Function("docs-server__search".into())));

        // Different choices, different agent versions.
        let name = |choice: Value| {
            run_agent(&req(json!({"input": "hi", "tools": tools(), "tool_choice": choice})), model(), 200).unwrap().spec
                ["name"]
                .clone()
        };
        assert_ne!(name(json!("auto")), name(json!("none")));
    }

    #[test]
    fn mcp_credentials_are_redacted_in_what_is_kept() {
        let tools = vec![
            json!({"type": "mcp", "server_label": "a", "server_url": "http://x/mcp",
                   "headers": {"Authorization": "Bearer sk-secret"}, "authorization": "tok-secret"}),
            json!({"type": "function", "name": "f", "parameters": {"type": "object"}}),
        ];
        let kept = redacted_tools(&tools);
        let text = serde_json::to_string(&kept).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(kept[0]["headers"]["Authorization"], "[redacted]");
        assert_eq!(kept[0]["server_url"], "http://x/mcp");
        assert_eq!(kept[1], tools[1]);
    }
}
