//! The chat-completions wire format: our messages and tools into a request body, and response
//! bodies or stream chunks back into a `ModelResponse`. Pure functions, tolerant of server quirks.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use stead_core::message::{Message, ToolCall, ToolDef, Usage};

use crate::http::{Accumulator, Wire};
use crate::wire::{bounded_index, count, error_message, response_json, str_of, temperature};
use crate::{Error, ErrorKind, ModelRequest, ModelResponse, ToolChoice};

/// The chat-completions format, for the shared HTTP code.
pub(crate) const CHAT_COMPLETIONS: Wire<StreamAccumulator> = Wire::new(request_body, parse_response);

/// The JSON body of `POST /chat/completions`.
pub(crate) fn request_body(req: &ModelRequest) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), Value::String(req.model.clone()));
    body.insert("messages".into(), Value::Array(req.messages.iter().map(|m| message(m)).collect()));
    if !req.tools.is_empty() {
        body.insert("tools".into(), Value::Array(req.tools.iter().map(tool).collect()));
        if let Some(c) = &req.tool_choice {
            body.insert("tool_choice".into(), tool_choice(c));
        }
        if let Some(p) = req.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), Value::Bool(p));
        }
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), temperature(t));
    }
    if let Some(m) = req.max_tokens {
        body.insert("max_tokens".into(), json!(m));
    }
    body.insert("stream".into(), Value::Bool(req.stream));
    if req.stream {
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn message(m: &Message) -> Value {
    match m {
        Message::System { content } => json!({"role": "system", "content": content}),
        Message::User { content } => json!({"role": "user", "content": content}),
        Message::Assistant { content, tool_calls } => {
            let mut out = Map::new();
            out.insert("role".into(), "assistant".into());
            // Servers reject an assistant message with neither content nor tool calls.
            let content = match content {
                Some(c) => Value::String(c.clone()),
                None if tool_calls.is_empty() => Value::String(String::new()),
                None => Value::Null,
            };
            out.insert("content".into(), content);
            if !tool_calls.is_empty() {
                let calls = tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
                    })
                    .collect();
                out.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(out)
        }
        Message::Tool { call_id, content, is_error, .. } => {
            // The wire format has no error flag: say it in the content so the model notices.
            let content = if *is_error && !content.trim_start().to_ascii_lowercase().starts_with("error") {
                format!("error: {content}")
            } else {
                content.clone()
            };
            json!({"role": "tool", "tool_call_id": call_id, "content": content})
        }
    }
}

fn tool(t: &ToolDef) -> Value {
    let parameters =
        if t.parameters.is_object() { t.parameters.clone() } else { json!({"type": "object", "properties": {}}) };
    json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": parameters}})
}

/// `"auto"`, `"none"`, `"required"`, or `{"type": "function", "function": {"name": N}}`.
fn tool_choice(c: &ToolChoice) -> Value {
    match c {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

/// Parses a complete (non-streamed) response body.
pub(crate) fn parse_response(body: &[u8], requested_model: &str) -> Result<ModelResponse, Error> {
    let v = response_json(body)?;
    if let Some(err) = embedded_error(&v) {
        return Err(err);
    }
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| Error::new(ErrorKind::Malformed, "model response has no choices"))?;
    let msg = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| Error::new(ErrorKind::Malformed, "model response choice has no message"))?;
    let content = text_of(msg.get("content")).filter(|c| !c.is_empty());
    let tool_calls: Vec<ToolCall> = msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    let f = c.get("function");
                    ToolCall {
                        // A missing id stays empty: the engine names the call when it records it.
                        id: str_of(c.get("id")).unwrap_or_default(),
                        name: str_of(f.and_then(|f| f.get("name"))).unwrap_or_default(),
                        arguments: arguments_of(f.and_then(|f| f.get("arguments"))),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let finish_reason = str_of(choice.get("finish_reason"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default_finish(&tool_calls).to_owned());
    Ok(ModelResponse {
        content,
        tool_calls,
        usage: usage_of(v.get("usage")).unwrap_or_default(),
        finish_reason,
        model: str_of(v.get("model")).filter(|m| !m.is_empty()).unwrap_or_else(|| requested_model.to_owned()),
    })
}

/// Builds a response from stream chunks, in arrival order.
#[derive(Default)]
pub(crate) struct StreamAccumulator {
    content: String,
    calls: BTreeMap<u64, PartialCall>,
    /// Arrival order of call indices, for servers that omit `index`.
    last_index: Option<u64>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    done: bool,
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

impl Accumulator for StreamAccumulator {
    fn event(&mut self, lines: &[String]) -> Result<Option<String>, Error> {
        let joined = lines.join("\n");
        if joined.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        if joined.trim().is_empty() {
            return Ok(None);
        }
        match serde_json::from_str::<Value>(&joined) {
            Ok(v) => self.chunk(&v),
            // Lenient servers put several JSON chunks in one event without blank lines between.
            Err(e) if lines.len() > 1 => {
                let mut delta = String::new();
                for line in lines {
                    if line.trim() == "[DONE]" {
                        self.done = true;
                        continue;
                    }
                    let v: Value = serde_json::from_str(line).map_err(|_| malformed_chunk(&e))?;
                    delta.extend(self.chunk(&v)?);
                }
                Ok(Some(delta).filter(|d| !d.is_empty()))
            }
            Err(e) => Err(malformed_chunk(&e)),
        }
    }

    /// Whether the server said the stream is over (`[DONE]`).
    fn done(&self) -> bool {
        self.done
    }

    /// Ends the stream. Without `[DONE]` and without a finish reason it was cut short.
    fn finish(self, requested_model: &str) -> Result<ModelResponse, Error> {
        if !self.done && self.finish_reason.is_none() {
            return Err(Error::new(ErrorKind::StreamCut, "model stream ended before the response was complete"));
        }
        let tool_calls: Vec<ToolCall> = self
            .calls
            .into_values()
            .map(|p| ToolCall {
                id: p.id,
                name: p.name,
                arguments: if p.arguments.trim().is_empty() { "{}".to_owned() } else { p.arguments },
            })
            .collect();
        let finish_reason = self.finish_reason.unwrap_or_else(|| default_finish(&tool_calls).to_owned());
        Ok(ModelResponse {
            content: Some(self.content).filter(|c| !c.is_empty()),
            tool_calls,
            usage: self.usage.unwrap_or_default(),
            finish_reason,
            model: self.model.unwrap_or_else(|| requested_model.to_owned()),
        })
    }
}

impl StreamAccumulator {
    fn chunk(&mut self, v: &Value) -> Result<Option<String>, Error> {
        if let Some(err) = embedded_error(v) {
            return Err(err);
        }
        if let Some(m) = str_of(v.get("model")).filter(|m| !m.is_empty()) {
            self.model = Some(m);
        }
        if let Some(u) = usage_of(v.get("usage")) {
            self.usage = Some(u);
        }
        let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else {
            return Ok(None);
        };
        if let Some(r) = str_of(choice.get("finish_reason")).filter(|r| !r.is_empty()) {
            self.finish_reason = Some(r);
        }
        let Some(delta) = choice.get("delta") else { return Ok(None) };
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                self.tool_call_delta(c)?;
            }
        }
        let piece = text_of(delta.get("content")).filter(|p| !p.is_empty());
        if let Some(p) = &piece {
            self.content.push_str(p);
        }
        Ok(piece)
    }

    fn tool_call_delta(&mut self, c: &Value) -> Result<(), Error> {
        let id = str_of(c.get("id")).filter(|s| !s.is_empty());
        let index = bounded_index(match c.get("index").and_then(Value::as_u64) {
            Some(i) => i,
            // Without an index, a new id starts a new call and anything else continues the last.
            None => match (&id, self.last_index) {
                (Some(id), Some(last)) if self.calls.get(&last).is_some_and(|p| p.id == *id) => last,
                (None, Some(last)) => last,
                _ => self.calls.keys().next_back().map_or(0, |k| k.saturating_add(1)),
            },
        })?;
        self.last_index = Some(index);
        let entry = self.calls.entry(index).or_default();
        if let Some(id) = id
            && entry.id.is_empty()
        {
            entry.id = id;
        }
        let f = c.get("function");
        if let Some(name) = str_of(f.and_then(|f| f.get("name"))) {
            // Some servers repeat the whole name on every chunk; others could split it.
            if entry.name.is_empty() {
                entry.name = name;
            } else if entry.name != name {
                entry.name.push_str(&name);
            }
        }
        match f.and_then(|f| f.get("arguments")) {
            Some(Value::String(piece)) => entry.arguments.push_str(piece),
            Some(Value::Null) | None => {}
            Some(other) => entry.arguments.push_str(&other.to_string()),
        }
        Ok(())
    }
}

fn malformed_chunk(e: &serde_json::Error) -> Error {
    Error::new(ErrorKind::Malformed, format!("model stream chunk is not valid JSON: {e}"))
}

fn default_finish(calls: &[ToolCall]) -> &'static str {
    if calls.is_empty() { "stop" } else { "tool_calls" }
}

/// An error object inside a 200 response or a stream (`{"error": {...}}` or `{"error": "..."}`).
fn embedded_error(v: &Value) -> Option<Error> {
    let e = v.get("error").filter(|e| !e.is_null())?;
    Some(Error::new(ErrorKind::Server, format!("model server reported an error: {}", error_message(e))))
}

/// Content is a string, or (in newer APIs) a list of parts of which the text ones count.
fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let text: String =
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str())).collect();
            Some(text)
        }
        _ => None,
    }
}

/// Arguments are passed on raw; a server that sends an object instead of a string gets it
/// serialised, and no arguments at all means an empty object.
fn arguments_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) | Some(Value::Null) | None => "{}".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn usage_of(v: Option<&Value>) -> Option<Usage> {
    let u = v.filter(|u| u.is_object())?;
    Some(Usage { input_tokens: count(u, "prompt_tokens"), output_tokens: count(u, "completion_tokens") })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::wire::MAX_STREAM_INDEX;

    fn req(stream: bool) -> ModelRequest {
        ModelRequest {
            model: "m".into(),
            messages: [
                Message::System { content: "sys".into() },
                Message::User { content: "hi".into() },
                Message::Assistant {
                    content: None,
                    tool_calls: vec![ToolCall { id: "c1".into(), name: "clock".into(), arguments: "{}".into() }],
                },
                Message::Tool { call_id: "c1".into(), name: "clock".into(), content: "nope".into(), is_error: true },
                Message::Tool {
                    call_id: "c2".into(),
                    name: "clock".into(),
                    content: "Error: already".into(),
                    is_error: true,
                },
                Message::Assistant { content: None, tool_calls: vec![] },
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
            tools: vec![],
            temperature: Some(0.2),
            max_tokens: None,
            stream,
            tool_choice: None,
            parallel_tool_calls: None,
        }
    }

    #[test]
    fn request_body_shape() {
        let body = request_body(&req(false));
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "c1", "content": "error: nope"},
                    {"role": "tool", "tool_call_id": "c2", "content": "Error: already"},
                    {"role": "assistant", "content": ""},
                ],
                "temperature": 0.2,
                "stream": false,
            })
        );
        let body = request_body(&req(true));
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn tool_choice_shapes() {
        let mut r = req(false);
        r.tool_choice = Some(ToolChoice::Required);
        r.parallel_tool_calls = Some(false);
        // Without tools neither is sent: servers refuse a tool choice with nothing to choose.
        let body = request_body(&r);
        assert!(body.get("tool_choice").is_none() && body.get("parallel_tool_calls").is_none(), "{body}");
        r.tools = vec![ToolDef { name: "clock".into(), description: String::new(), parameters: json!({}) }];
        for (choice, want) in [
            (ToolChoice::Auto, json!("auto")),
            (ToolChoice::None, json!("none")),
            (ToolChoice::Required, json!("required")),
            (ToolChoice::Function("clock".into()), json!({"type": "function", "function": {"name": "clock"}})),
        ] {
            r.tool_choice = Some(choice);
            let body = request_body(&r);
            assert_eq!(body["tool_choice"], want);
            assert_eq!(body["parallel_tool_calls"], json!(false));
        }
    }

    #[test]
    fn odd_bodies_are_malformed_not_panics() {
        for body in
            ["null", "[]", "{}", "{\"choices\": 3}", "{\"choices\": [null]}", "{\"choices\": [{\"message\": 1}]}"]
        {
            let e = parse_response(body.as_bytes(), "m").unwrap_err();
            assert_eq!(e.kind, ErrorKind::Malformed, "{body}");
            CHAT_COMPLETIONS.feed(body);
        }
        let odd = "{\"choices\": [{\"message\": {\"tool_calls\": [1, {\"function\": 2}]}}], \"usage\": 7}";
        let r = parse_response(odd.as_bytes(), "m").unwrap();
        assert_eq!((r.tool_calls.len(), r.tool_calls[1].arguments.as_str(), r.usage), (2, "{}", Usage::default()));
    }

    #[test]
    fn huge_stream_index_is_refused_and_counts_saturate() {
        let mut acc = StreamAccumulator::default();
        let max = u64::MAX;
        let chunk = format!(r#"{{"choices":[{{"delta":{{"tool_calls":[{{"index":{max},"id":"a"}}]}}}}]}}"#);
        let e = acc.event(&[chunk]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
        assert!(e.message.contains("index 18446744073709551615"), "{}", e.message);
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"x"}}}}],"usage":{{"prompt_tokens":{max},"completion_tokens":{max}}}}}"#
        );
        let r = parse_response(body.as_bytes(), "m").unwrap();
        assert_eq!(r.usage, Usage { input_tokens: max, output_tokens: max });
        assert_eq!(r.usage.total(), max);
    }

    /// Numbers a server may put anywhere: extremes, negatives, fractions, strings, nothing.
    fn odd_number() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0u64..8).prop_map(Value::from),
            Just(json!(MAX_STREAM_INDEX)),
            Just(json!(MAX_STREAM_INDEX + 1)),
            Just(json!(u64::MAX)),
            proptest::num::u64::ANY.prop_map(Value::from),
            proptest::num::i64::ANY.prop_map(Value::from),
            Just(json!(1.5)),
            Just(json!("3")),
            Just(Value::Null),
        ]
    }

    fn odd_chunk() -> impl Strategy<Value = Value> {
        let id = proptest::option::of(prop_oneof![Just("a"), Just("b"), Just("")]);
        (odd_number(), id, odd_number(), odd_number(), proptest::bool::ANY).prop_map(
            |(index, id, input, output, end)| {
                let mut call = json!({"function": {"name": "f", "arguments": "{}"}});
                if !index.is_null() {
                    call["index"] = index;
                }
                if let Some(id) = id {
                    call["id"] = json!(id);
                }
                let finish = if end { json!("tool_calls") } else { Value::Null };
                json!({"choices": [{"delta": {"tool_calls": [call]}, "finish_reason": finish}],
                   "usage": {"prompt_tokens": input, "completion_tokens": output}})
            },
        )
    }

    proptest! {
        /// Any stream of chunks with odd numbers ends in a response or a malformed-response
        /// error; never a panic, a wrapped count or a call per possible index.
        #[test]
        fn odd_numbers_in_streams(chunks in proptest::collection::vec(odd_chunk(), 1..10)) {
            let mut acc = StreamAccumulator::default();
            let mut usage = Usage::default();
            for c in &chunks {
                let huge = c["choices"][0]["delta"]["tool_calls"][0]["index"].as_u64().is_some_and(|i| i > MAX_STREAM_INDEX);
                match acc.event(&[c.to_string()]) {
                    Ok(_) => prop_assert!(!huge),
                    Err(e) => {
                        prop_assert_eq!(e.kind, ErrorKind::Malformed);
                        prop_assert!(e.message.contains("index"), "{}", e.message);
                        return Ok(());
                    }
                }
                let n = |k: &str| c["usage"][k].as_u64().unwrap_or(0);
                usage = Usage { input_tokens: n("prompt_tokens"), output_tokens: n("completion_tokens") };
            }
            if let Ok(r) = acc.finish("m") {
                prop_assert_eq!(r.usage, usage);
                prop_assert!(r.tool_calls.len() <= chunks.len());
            }
        }

        #[test]
        fn odd_numbers_in_whole_responses(input in odd_number(), output in odd_number()) {
            let body = json!({"choices": [{"message": {"content": "x"}}],
                              "usage": {"prompt_tokens": input, "completion_tokens": output}});
            let r = parse_response(body.to_string().as_bytes(), "m").unwrap();
            prop_assert_eq!(r.usage.input_tokens, input.as_u64().unwrap_or(0));
            prop_assert_eq!(r.usage.output_tokens, output.as_u64().unwrap_or(0));
        }
    }

    #[test]
    fn content_parts_and_object_arguments() {
        let body = r#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}],
            "tool_calls":[{"function":{"name":"f","arguments":{"x":1}}}]}}]}"#;
        let r = parse_response(body.as_bytes(), "m").unwrap();
        assert_eq!(r.content.as_deref(), Some("ab"));
        assert_eq!(r.tool_calls[0].arguments, r#"{"x":1}"#);
        assert_eq!(r.tool_calls[0].id, "", "a missing id is left for the engine to assign");
        assert_eq!(r.finish_reason, "tool_calls");
        assert_eq!(r.model, "m");
    }

    #[test]
    fn stream_without_index_and_repeated_names() {
        let mut acc = StreamAccumulator::default();
        for chunk in [
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{\"x\""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":":1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ] {
            acc.event(&[chunk.to_owned()]).unwrap();
        }
        let r = acc.finish("m").unwrap();
        assert_eq!(
            r.tool_calls,
            vec![
                ToolCall { id: "a".into(), name: "f".into(), arguments: "{\"x\":1}".into() },
                ToolCall { id: "b".into(), name: "g".into(), arguments: "{}".into() },
            ]
        );
    }

    #[test]
    fn several_chunks_in_one_event() {
        let mut acc = StreamAccumulator::default();
        let d = acc
            .event(&[
                r#"{"choices":[{"delta":{"content":"a"}}]}"#.to_owned(),
                r#"{"choices":[{"delta":{"content":"b"}}]}"#.to_owned(),
                "[DONE]".to_owned(),
            ])
            .unwrap();
        assert_eq!(d.as_deref(), Some("ab"));
        assert!(acc.done());
    }
}
