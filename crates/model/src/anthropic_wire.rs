//! The Anthropic Messages wire format: our messages and tools into a `POST /v1/messages` body,
//! and response bodies or stream events back into a `ModelResponse`. Pure functions.
//!
//! Where our conversation model and Anthropic's differ:
//! - System messages, wherever they occur, are joined (blank line between) into the top-level
//!   `system` field.
//! - Tool results are `tool_result` blocks of a `user` message. Consecutive messages of one role
//!   are merged into one message, because Anthropic requires roles to alternate; in a merged
//!   user message the `tool_result` blocks come first, as Anthropic requires, then any text.
//! - Anthropic rejects empty text blocks, so empty (or whitespace-only) texts are left out and a
//!   message left with no blocks at all is dropped (before merging, so its neighbours merge).
//! - A tool call's `input` must be a JSON object. Arguments that are not one (cut-off or invalid
//!   JSON, which only another provider or a truncated generation can produce) go out as `{}`;
//!   the tool result that follows already tells the model why the call failed (the engine
//!   answers such calls with an "arguments are not valid JSON" error), so the history stays
//!   consistent without inventing fields the tool's schema does not have.
//! - Tool-use ids may only contain `[A-Za-z0-9_-]`; other characters (ids minted by another
//!   provider) are replaced with `_`, identically in the call and its result, so they still pair.
//! - `stop_reason` becomes the chat-completions `finish_reason` the rest of Stead knows:
//!   `end_turn`/`stop_sequence` → `stop`, `tool_use` → `tool_calls`, `max_tokens` → `length`,
//!   `refusal` → `content_filter`; anything else passes through as is.
//! - Input tokens include cache writes and cache reads (Anthropic counts them separately).
//! - A complete response's tool `input` objects become arguments by re-serialising them
//!   (compact, keys in serde_json's sorted order); streamed arguments are the `partial_json`
//!   pieces exactly as sent.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use stead_core::message::{Message, ToolCall, ToolDef, Usage};

use crate::http::{Accumulator, Wire};
use crate::wire::{bounded_index, count, error_message, quoted, response_json, str_of, temperature};
use crate::{Error, ErrorKind, ModelRequest, ModelResponse, ToolChoice};

/// The API version every request names (`anthropic-version`).
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; this is sent when the spec does not set one.
pub(crate) const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The Messages format, for the shared HTTP code.
pub(crate) const MESSAGES: Wire<StreamAccumulator> = Wire::new(request_body, parse_response);

/// The JSON body of `POST /v1/messages`.
pub(crate) fn request_body(req: &ModelRequest) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), Value::String(req.model.clone()));
    body.insert("max_tokens".into(), json!(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)));
    let system: Vec<&str> = req
        .messages
        .iter()
        .filter_map(|m| match m.as_ref() {
            Message::System { content } if !content.trim().is_empty() => Some(content.as_str()),
            _ => None,
        })
        .collect();
    if !system.is_empty() {
        body.insert("system".into(), Value::String(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages(req.messages.iter().map(|m| m.as_ref()))));
    if !req.tools.is_empty() {
        body.insert("tools".into(), Value::Array(req.tools.iter().map(tool).collect()));
        if let Some(choice) = tool_choice(req.tool_choice.as_ref(), req.parallel_tool_calls) {
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), temperature(t));
    }
    body.insert("stream".into(), Value::Bool(req.stream));
    Value::Object(body)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

/// The conversation as alternating `user`/`assistant` messages (see the module docs).
fn messages<'a>(msgs: impl Iterator<Item = &'a Message>) -> Vec<Value> {
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in msgs {
        let (role, blocks) = match m {
            Message::System { .. } => continue,
            Message::User { content } => (Role::User, text_block(content).into_iter().collect()),
            Message::Assistant { content, tool_calls } => {
                let mut blocks: Vec<Value> = content.as_deref().and_then(text_block).into_iter().collect();
                blocks.extend(tool_calls.iter().map(tool_use_block));
                (Role::Assistant, blocks)
            }
            Message::Tool { call_id, content, is_error, .. } => {
                let mut block = json!({"type": "tool_result", "tool_use_id": wire_id(call_id)});
                if !content.is_empty() {
                    block["content"] = json!(content);
                } else if *is_error {
                    // Anthropic refuses an error result without content.
                    block["content"] = json!("error");
                }
                block["is_error"] = json!(is_error);
                (Role::User, vec![block])
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, mut blocks)| match role {
            Role::User => {
                // Stable: results keep their order, and so do texts.
                blocks.sort_by_key(|b| b["type"] != "tool_result");
                if let [only] = blocks.as_slice()
                    && only["type"] == "text"
                {
                    return json!({"role": "user", "content": only["text"]});
                }
                json!({"role": "user", "content": blocks})
            }
            Role::Assistant => json!({"role": "assistant", "content": blocks}),
        })
        .collect()
}

fn text_block(text: &str) -> Option<Value> {
    (!text.trim().is_empty()).then(|| json!({"type": "text", "text": text}))
}

fn tool_use_block(c: &ToolCall) -> Value {
    let input = match serde_json::from_str::<Value>(&c.arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    };
    json!({"type": "tool_use", "id": wire_id(&c.id), "name": c.name, "input": input})
}

/// A tool-use id in the alphabet Anthropic accepts (`^[a-zA-Z0-9_-]+$`).
fn wire_id(id: &str) -> String {
    if id.is_empty() {
        return "toolu_".to_owned();
    }
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

fn tool(t: &ToolDef) -> Value {
    let mut schema = match &t.parameters {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    // Anthropic requires the schema to say it describes an object.
    if !schema.contains_key("type") {
        schema.insert("type".into(), json!("object"));
        schema.entry("properties").or_insert_with(|| json!({}));
    }
    let mut out = json!({"name": t.name, "input_schema": schema});
    if !t.description.is_empty() {
        out["description"] = json!(t.description);
    }
    out
}

/// `{"type": "auto" | "none" | "any"}` or `{"type": "tool", "name": N}`. Parallel calls are
/// switched off inside it (`disable_parallel_tool_use`), with type `auto` when no choice is
/// given; `none` takes no such flag (no calls at all). `None` when there is nothing to say.
fn tool_choice(choice: Option<&ToolChoice>, parallel: Option<bool>) -> Option<Value> {
    let mut out = match choice {
        None if parallel != Some(false) => return None,
        None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::None) => return Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Function(name)) => json!({"type": "tool", "name": name}),
    };
    if parallel == Some(false) {
        out["disable_parallel_tool_use"] = json!(true);
    }
    Some(out)
}

/// Parses a complete (non-streamed) response body.
pub(crate) fn parse_response(body: &[u8], requested_model: &str) -> Result<ModelResponse, Error> {
    let v = response_json(body)?;
    if is_error(&v) {
        return Err(embedded_error(&v));
    }
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::new(ErrorKind::Malformed, "model response has no content"))?;
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => content.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => tool_calls.push(ToolCall {
                // A missing id stays empty: the engine names the call when it records it.
                id: str_of(b.get("id")).unwrap_or_default(),
                name: str_of(b.get("name")).unwrap_or_default(),
                arguments: match b.get("input") {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(input) => input.to_string(),
                },
            }),
            // Thinking, server tools, citations, ...: nothing Stead carries.
            _ => {}
        }
    }
    let finish_reason = finish_reason(str_of(v.get("stop_reason")).as_deref(), &tool_calls);
    let mut usage = Usage::default();
    add_usage(&mut usage, v.get("usage"));
    Ok(ModelResponse {
        content: Some(content).filter(|c| !c.is_empty()),
        tool_calls,
        usage,
        finish_reason,
        model: str_of(v.get("model")).filter(|m| !m.is_empty()).unwrap_or_else(|| requested_model.to_owned()),
    })
}

/// Builds a response from stream events, in arrival order.
#[derive(Default)]
pub(crate) struct StreamAccumulator {
    content: String,
    blocks: BTreeMap<u64, Block>,
    stop_reason: Option<String>,
    usage: Usage,
    model: Option<String>,
    done: bool,
}

enum Block {
    Text,
    ToolUse {
        id: String,
        name: String,
        /// The `input_json_delta` pieces, concatenated.
        json: String,
        /// The `input` of `content_block_start`, used when no deltas follow (normally `{}`).
        initial: Option<Value>,
    },
    /// Thinking and other blocks Stead does not carry.
    Other,
}

impl Accumulator for StreamAccumulator {
    fn event(&mut self, lines: &[String]) -> Result<Option<String>, Error> {
        let joined = lines.join("\n");
        if joined.trim().is_empty() {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(&joined)
            .map_err(|e| Error::new(ErrorKind::Malformed, format!("model stream event is not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::new(ErrorKind::Malformed, "model stream event is not a JSON object"));
        }
        if is_error(&v) {
            return Err(embedded_error(&v));
        }
        match v.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                let m = v.get("message");
                if let Some(model) = str_of(m.and_then(|m| m.get("model"))).filter(|s| !s.is_empty()) {
                    self.model = Some(model);
                }
                add_usage(&mut self.usage, m.and_then(|m| m.get("usage")));
                Ok(None)
            }
            "content_block_start" => {
                let index = self.index_of(&v)?;
                let b = v.get("content_block");
                match b.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("text") => {
                        self.blocks.insert(index, Block::Text);
                        // Normally empty; anything there is content all the same.
                        Ok(self.text(str_of(b.and_then(|b| b.get("text")))))
                    }
                    Some("tool_use") => {
                        let initial = b.and_then(|b| b.get("input")).filter(|i| match i {
                            Value::Object(o) => !o.is_empty(),
                            Value::Null => false,
                            _ => true,
                        });
                        self.blocks.insert(
                            index,
                            Block::ToolUse {
                                id: str_of(b.and_then(|b| b.get("id"))).unwrap_or_default(),
                                name: str_of(b.and_then(|b| b.get("name"))).unwrap_or_default(),
                                json: String::new(),
                                initial: initial.cloned(),
                            },
                        );
                        Ok(None)
                    }
                    _ => {
                        self.blocks.insert(index, Block::Other);
                        Ok(None)
                    }
                }
            }
            "content_block_delta" => {
                let index = self.index_of(&v)?;
                let d = v.get("delta");
                match d.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => {
                        self.blocks.entry(index).or_insert(Block::Text);
                        Ok(self.text(str_of(d.and_then(|d| d.get("text")))))
                    }
                    Some("input_json_delta") => {
                        let piece = d.and_then(|d| d.get("partial_json")).and_then(Value::as_str).unwrap_or_default();
                        // A delta without its start still belongs to a call, just an unnamed one.
                        let block = self.blocks.entry(index).or_insert_with(|| Block::ToolUse {
                            id: String::new(),
                            name: String::new(),
                            json: String::new(),
                            initial: None,
                        });
                        if let Block::ToolUse { json, .. } = block {
                            json.push_str(piece);
                        }
                        Ok(None)
                    }
                    _ => Ok(None),
                }
            }
            "message_delta" => {
                if let Some(r) = str_of(v.get("delta").and_then(|d| d.get("stop_reason"))).filter(|r| !r.is_empty()) {
                    self.stop_reason = Some(r);
                }
                // Counts here are cumulative: they replace what `message_start` said.
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    let mut input = None;
                    for k in ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"] {
                        if let Some(n) = u.get(k).and_then(Value::as_u64) {
                            let sum = input.get_or_insert(0u64);
                            *sum = sum.saturating_add(n);
                        }
                    }
                    if let Some(n) = input {
                        self.usage.input_tokens = n;
                    }
                    if let Some(n) = u.get("output_tokens").and_then(Value::as_u64) {
                        self.usage.output_tokens = n;
                    }
                }
                Ok(None)
            }
            "message_stop" => {
                self.done = true;
                Ok(None)
            }
            // `ping`, `content_block_stop`, and event types added after this was written.
            _ => Ok(None),
        }
    }

    /// Whether the server said the message is over (`message_stop`).
    fn done(&self) -> bool {
        self.done
    }

    /// Ends the stream. Without `message_stop` it was cut short.
    fn finish(self, requested_model: &str) -> Result<ModelResponse, Error> {
        if !self.done {
            return Err(Error::new(ErrorKind::StreamCut, "model stream ended before the response was complete"));
        }
        let tool_calls: Vec<ToolCall> = self
            .blocks
            .into_values()
            .filter_map(|b| match b {
                Block::ToolUse { id, name, json, initial } => Some(ToolCall {
                    id,
                    name,
                    // Passed on raw, like every provider's arguments, even if not valid JSON.
                    arguments: if !json.trim().is_empty() {
                        json
                    } else {
                        initial.map_or_else(|| "{}".to_owned(), |i| i.to_string())
                    },
                }),
                Block::Text | Block::Other => None,
            })
            .collect();
        let finish_reason = finish_reason(self.stop_reason.as_deref(), &tool_calls);
        Ok(ModelResponse {
            content: Some(self.content).filter(|c| !c.is_empty()),
            tool_calls,
            usage: self.usage,
            finish_reason,
            model: self.model.unwrap_or_else(|| requested_model.to_owned()),
        })
    }
}

impl StreamAccumulator {
    fn index_of(&self, v: &Value) -> Result<u64, Error> {
        bounded_index(
            v.get("index")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| self.blocks.keys().next_back().map_or(0, |k| k.saturating_add(1))),
        )
    }

    fn text(&mut self, piece: Option<String>) -> Option<String> {
        let piece = piece.filter(|p| !p.is_empty())?;
        self.content.push_str(&piece);
        Some(piece)
    }
}

/// `stop_reason` in chat-completions terms (see the module docs).
fn finish_reason(stop_reason: Option<&str>, calls: &[ToolCall]) -> String {
    match stop_reason {
        Some("end_turn" | "stop_sequence") => "stop".to_owned(),
        Some("tool_use") => "tool_calls".to_owned(),
        Some("max_tokens") => "length".to_owned(),
        Some("refusal") => "content_filter".to_owned(),
        Some(other) if !other.is_empty() => other.to_owned(),
        _ if calls.is_empty() => "stop".to_owned(),
        _ => "tool_calls".to_owned(),
    }
}

/// Adds a `usage` object's counts; input counts cache writes and reads too.
fn add_usage(usage: &mut Usage, v: Option<&Value>) {
    let Some(u) = v.filter(|u| u.is_object()) else { return };
    let input = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
        .iter()
        .fold(0u64, |sum, k| sum.saturating_add(count(u, k)));
    usage.add(Usage { input_tokens: input, output_tokens: count(u, "output_tokens") });
}

fn is_error(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("error") || v.get("error").is_some_and(|e| !e.is_null())
}

/// `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`, in a 200 body
/// or as a stream event, as an error of the matching kind.
pub(crate) fn embedded_error(v: &Value) -> Error {
    let e = v.get("error").filter(|e| !e.is_null()).unwrap_or(v);
    let ty = e.get("type").and_then(Value::as_str).unwrap_or_default();
    let kind = error_kind(ty);
    let text = quoted(&error_message(e));
    let message = if ty.is_empty() {
        format!("model server reported an error: {text}")
    } else {
        format!("model server reported an error ({ty}): {text}")
    };
    Error::new(kind, message)
}

/// Anthropic's error types, by what retrying can do about them.
fn error_kind(ty: &str) -> ErrorKind {
    match ty {
        "rate_limit_error" => ErrorKind::RateLimited,
        "timeout_error" => ErrorKind::Timeout,
        "authentication_error" | "permission_error" => ErrorKind::Auth,
        "invalid_request_error" | "not_found_error" | "request_too_large" => ErrorKind::BadRequest,
        // `overloaded_error`, `api_error` and anything new: the server's problem, worth a retry.
        _ => ErrorKind::Server,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::wire::MAX_STREAM_INDEX;

    fn req(messages: Vec<Message>) -> ModelRequest {
        ModelRequest {
            model: "claude-test".into(),
            messages: messages.into_iter().map(Arc::new).collect(),
            tools: vec![],
            temperature: None,
            max_tokens: None,
            stream: false,
            tool_choice: None,
            parallel_tool_calls: None,
        }
    }

    fn call(id: &str, args: &str) -> ToolCall {
        ToolCall { id: id.into(), name: "clock".into(), arguments: args.into() }
    }

    fn result(id: &str, content: &str, is_error: bool) -> Message {
        Message::Tool { call_id: id.into(), name: "clock".into(), content: content.into(), is_error }
    }

    #[test]
    fn roles_alternate_and_results_come_first() {
        let body = request_body(&req(vec![
            Message::User { content: "a".into() },
            Message::User { content: "b".into() },
            Message::Assistant { content: Some("  ".into()), tool_calls: vec![call("c.1", "[1]"), call("c2", "")] },
            Message::User { content: "interjection".into() },
            result("c.1", "", true),
            result("c2", "", false),
            Message::Assistant { content: None, tool_calls: vec![] },
            Message::Assistant { content: Some("done".into()), tool_calls: vec![] },
        ]));
        assert_eq!(body.get("system"), None);
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "c_1", "name": "clock", "input": {}},
                    {"type": "tool_use", "id": "c2", "name": "clock", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "c_1", "content": "error", "is_error": true},
                    {"type": "tool_result", "tool_use_id": "c2", "is_error": false},
                    {"type": "text", "text": "interjection"},
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
            ])
        );
    }

    #[test]
    fn tool_schemas_become_objects() {
        let mut r = req(vec![Message::User { content: "hi".into() }]);
        r.tools = vec![
            ToolDef { name: "a".into(), description: String::new(), parameters: Value::Null },
            ToolDef { name: "b".into(), description: "d".into(), parameters: json!({"properties": {"x": {}}}) },
        ];
        r.temperature = Some(0.2);
        let body = request_body(&r);
        assert_eq!(
            body["tools"],
            json!([
                {"name": "a", "input_schema": {"type": "object", "properties": {}}},
                {"name": "b", "description": "d", "input_schema": {"type": "object", "properties": {"x": {}}}},
            ])
        );
        assert_eq!(body["temperature"], json!(0.2));
        assert_eq!(body["max_tokens"], json!(DEFAULT_MAX_TOKENS));
    }

    #[test]
    fn tool_choice_shapes() {
        let mut r = req(vec![Message::User { content: "hi".into() }]);
        r.tool_choice = Some(ToolChoice::Required);
        r.parallel_tool_calls = Some(false);
        // Without tools there is nothing to choose: Anthropic refuses a tool_choice then.
        assert_eq!(request_body(&r).get("tool_choice"), None);
        r.tools = vec![ToolDef { name: "clock".into(), description: String::new(), parameters: Value::Null }];
        let cases = [
            (None, None, None),
            (None, Some(true), None),
            (None, Some(false), Some(json!({"type": "auto", "disable_parallel_tool_use": true}))),
            (Some(ToolChoice::Auto), None, Some(json!({"type": "auto"}))),
            (Some(ToolChoice::None), None, Some(json!({"type": "none"}))),
            (Some(ToolChoice::None), Some(false), Some(json!({"type": "none"}))),
            (Some(ToolChoice::Required), Some(true), Some(json!({"type": "any"}))),
            (Some(ToolChoice::Required), Some(false), Some(json!({"type": "any", "disable_parallel_tool_use": true}))),
            (Some(ToolChoice::Function("clock".into())), None, Some(json!({"type": "tool", "name": "clock"}))),
            (
                Some(ToolChoice::Function("clock".into())),
                Some(false),
                Some(json!({"type": "tool", "name": "clock", "disable_parallel_tool_use": true})),
            ),
        ];
        for (choice, parallel, want) in cases {
            r.tool_choice = choice.clone();
            r.parallel_tool_calls = parallel;
            let body = request_body(&r);
            assert_eq!(body.get("tool_choice"), want.as_ref(), "{choice:?} {parallel:?}");
            assert_eq!(body.get("parallel_tool_calls"), None);
        }
    }

    #[test]
    fn never_panics_on_odd_bodies() {
        for body in [
            "null",
            "[]",
            "{}",
            "7",
            "\"x\"",
            "{\"content\": 3}",
            "{\"content\": [null, 1, {\"type\": 2}, {\"type\": \"tool_use\", \"input\": 5}]}",
            "{\"type\": \"error\"}",
            "{\"type\": \"error\", \"error\": 5}",
            "{\"type\": \"content_block_delta\", \"index\": \"x\", \"delta\": 1}",
            "{\"type\": \"content_block_start\", \"index\": 0, \"content_block\": null}",
            "{\"type\": \"message_delta\", \"usage\": {\"output_tokens\": -1}}",
            "{\"type\": \"message_start\", \"message\": []}",
        ] {
            MESSAGES.feed(body);
        }
        for body in ["null", "[]", "{}", "7", "\"x\"", "{\"content\": 3}"] {
            assert_eq!(parse_response(body.as_bytes(), "m").unwrap_err().kind, ErrorKind::Malformed, "{body}");
        }
        let odd = "{\"content\": [null, 1, {\"type\": 2}, {\"type\": \"tool_use\", \"input\": 5}]}";
        let r = parse_response(odd.as_bytes(), "m").unwrap();
        assert_eq!(r.tool_calls, vec![ToolCall { id: String::new(), name: String::new(), arguments: "5".into() }]);
    }

    #[test]
    fn huge_block_index_is_refused_and_counts_saturate() {
        let mut acc = StreamAccumulator::default();
        let max = u64::MAX;
        let start = format!(
            r#"{{"type":"content_block_start","index":{max},"content_block":{{"type":"tool_use","id":"a","name":"f"}}}}"#
        );
        let e = acc.event(&[start]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
        assert!(e.message.contains("index 18446744073709551615"), "{}", e.message);
        let body = format!(
            r#"{{"content":[],"usage":{{"input_tokens":{max},"cache_creation_input_tokens":{max},"cache_read_input_tokens":1,"output_tokens":{max}}}}}"#
        );
        let r = parse_response(body.as_bytes(), "m").unwrap();
        assert_eq!(r.usage, Usage { input_tokens: max, output_tokens: max });
    }

    fn odd_number() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0u64..8).prop_map(Value::from),
            Just(json!(MAX_STREAM_INDEX + 1)),
            Just(json!(u64::MAX)),
            proptest::num::u64::ANY.prop_map(Value::from),
            proptest::num::i64::ANY.prop_map(Value::from),
            Just(json!(0.5)),
            Just(Value::Null),
        ]
    }

    /// One stream event of a kind that carries numbers, with odd ones in it.
    fn odd_event() -> impl Strategy<Value = Value> {
        (0usize..4, odd_number(), odd_number(), odd_number()).prop_map(|(kind, a, b, c)| match kind {
            0 => json!({"type": "message_start", "message": {"usage": {"input_tokens": a, "cache_read_input_tokens": b, "output_tokens": c}}}),
            1 => json!({"type": "content_block_start", "index": a, "content_block": {"type": "tool_use", "id": "t", "name": "f"}}),
            2 => json!({"type": "content_block_delta", "index": a, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            _ => json!({"type": "message_delta", "delta": {}, "usage": {"input_tokens": a, "cache_creation_input_tokens": b, "output_tokens": c}}),
        })
    }

    proptest! {
        /// Any stream of events with odd numbers ends in a response or a malformed-response
        /// error naming the index; never a panic or a wrapped count.
        #[test]
        fn odd_numbers_in_streams(events in proptest::collection::vec(odd_event(), 1..10)) {
            let mut acc = StreamAccumulator::default();
            for e in &events {
                let huge = e["index"].as_u64().is_some_and(|i| i > MAX_STREAM_INDEX);
                match acc.event(&[e.to_string()]) {
                    Ok(_) => prop_assert!(!huge),
                    Err(err) => {
                        prop_assert_eq!(err.kind, ErrorKind::Malformed);
                        prop_assert!(err.message.contains("index"), "{}", err.message);
                        return Ok(());
                    }
                }
            }
            acc.event(&[r#"{"type":"message_stop"}"#.to_owned()]).unwrap();
            let r = acc.finish("m").unwrap();
            prop_assert!(r.tool_calls.len() <= events.len());
        }

        #[test]
        fn odd_usage_in_whole_responses(a in odd_number(), b in odd_number(), c in odd_number()) {
            let body = json!({"content": [], "usage": {"input_tokens": a, "cache_read_input_tokens": b, "output_tokens": c}});
            let r = parse_response(body.to_string().as_bytes(), "m").unwrap();
            let n = |v: &Value| v.as_u64().unwrap_or(0);
            prop_assert_eq!(r.usage.input_tokens, n(&a).saturating_add(n(&b)));
            prop_assert_eq!(r.usage.output_tokens, n(&c));
        }
    }

    #[test]
    fn error_types_map_to_kinds() {
        for (ty, kind) in [
            ("overloaded_error", ErrorKind::Server),
            ("api_error", ErrorKind::Server),
            ("rate_limit_error", ErrorKind::RateLimited),
            ("authentication_error", ErrorKind::Auth),
            ("permission_error", ErrorKind::Auth),
            ("invalid_request_error", ErrorKind::BadRequest),
            ("not_found_error", ErrorKind::BadRequest),
            ("request_too_large", ErrorKind::BadRequest),
            ("timeout_error", ErrorKind::Timeout),
            ("brand_new_error", ErrorKind::Server),
        ] {
            let e = embedded_error(&json!({"type": "error", "error": {"type": ty, "message": "m"}}));
            assert_eq!(e.kind, kind, "{ty}");
            assert_eq!(e.message, format!("model server reported an error ({ty}): m"));
        }
    }

    #[test]
    fn stop_reasons() {
        for (stop, want) in [
            (Some("end_turn"), "stop"),
            (Some("stop_sequence"), "stop"),
            (Some("tool_use"), "tool_calls"),
            (Some("max_tokens"), "length"),
            (Some("refusal"), "content_filter"),
            (Some("pause_turn"), "pause_turn"),
            (None, "stop"),
        ] {
            assert_eq!(finish_reason(stop, &[]), want);
        }
        assert_eq!(finish_reason(None, &[call("a", "{}")]), "tool_calls");
    }
}
