//! The Anthropic provider against a real HTTP server on 127.0.0.1 that speaks the Messages API
//! (JSON and SSE), including its failure modes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Api, Deltas, NO_DELTA, NO_RETRY, Reply, SECS, ok_json, retrying, status};
use serde_json::{Value, json};
use stead_core::agent::{ModelSpec, Provider, ToolChoice};
use stead_core::message::{Message, ToolCall, ToolDef, Usage};
use stead_model::{
    AnthropicProvider, ErrorKind, ModelProvider, ModelRequest, ProviderDefaults, Providers, http_client,
};

impl Api for AnthropicProvider {
    const ROUTE: &'static str = "/v1/messages";
    /// The base URL is the API root.
    const BASE_PATH: &'static str = "";
    const SSE_CONTENT_TYPE: &'static str = "text/event-stream; charset=utf-8";

    fn provider(base_url: &str, key: Option<&str>, timeout: Duration) -> Self {
        AnthropicProvider::new(http_client().unwrap(), base_url, key, timeout).unwrap()
    }
}

type TestServer = common::TestServer<AnthropicProvider>;

fn api_error(ty: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": ty, "message": message}})
}

/// Serialises events as Anthropic does (`event:` line naming the type, then `data:`), with CRLF
/// line ends in places as proxies sometimes rewrite them.
fn sse(events: &[Value]) -> String {
    let mut out = String::new();
    for (i, e) in events.iter().enumerate() {
        let nl = if i % 2 == 0 { "\n" } else { "\r\n" };
        let ty = e["type"].as_str().unwrap_or("message");
        out.push_str(&format!("event: {ty}{nl}data: {e}{nl}{nl}"));
    }
    out
}

fn message_start(input_tokens: u64) -> Value {
    json!({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-20250101",
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1}
    }})
}

fn text_start(index: u64) -> Value {
    json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
}

fn text_delta(index: u64, text: &str) -> Value {
    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})
}

fn tool_start(index: u64, id: &str, name: &str) -> Value {
    json!({"type": "content_block_start", "index": index,
        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})
}

fn json_delta(index: u64, partial: &str) -> Value {
    json!({"type": "content_block_delta", "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial}})
}

fn block_stop(index: u64) -> Value {
    json!({"type": "content_block_stop", "index": index})
}

fn message_delta(stop_reason: &str, output_tokens: u64) -> Value {
    json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": output_tokens}})
}

fn message_stop() -> Value {
    json!({"type": "message_stop"})
}

fn ping() -> Value {
    json!({"type": "ping"})
}

fn streamed_text(pieces: &[&str]) -> String {
    let mut events = vec![message_start(20), text_start(0), ping()];
    events.extend(pieces.iter().map(|p| text_delta(0, p)));
    events.extend([block_stop(0), message_delta("end_turn", 4), message_stop()]);
    sse(&events)
}

fn request(stream: bool) -> ModelRequest {
    common::request("claude-test", stream)
}

fn message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-20250101",
        "content": content, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 2, "output_tokens": 3}
    })
}

fn hello() -> Reply {
    ok_json(message(json!([{"type": "text", "text": "Hello!"}]), "end_turn"))
}

fn spec() -> ModelSpec {
    common::spec(Provider::Anthropic, "claude-test")
}

#[tokio::test]
async fn request_shape_and_headers_through_the_registry() {
    let server = TestServer::start(|_, _| hello()).await;
    let req = ModelRequest {
        model: "claude-test".into(),
        messages: [
            Message::System { content: "be brief".into() },
            Message::User { content: "what time is it in UTC and Paris?".into() },
            Message::Assistant {
                content: Some("Checking.".into()),
                tool_calls: vec![
                    ToolCall { id: "toolu_1".into(), name: "clock".into(), arguments: "{\"tz\":\"UTC\"}".into() },
                    // Not a JSON object: goes out as an empty input.
                    ToolCall { id: "toolu_2".into(), name: "clock".into(), arguments: "{\"tz\": \"Eur".into() },
                ],
            },
            Message::Tool { call_id: "toolu_1".into(), name: "clock".into(), content: "12:00".into(), is_error: false },
            Message::Tool {
                call_id: "toolu_2".into(),
                name: "clock".into(),
                content: "tool arguments are not valid JSON".into(),
                is_error: true,
            },
            Message::System { content: "answer in French".into() },
            Message::User { content: "and quickly".into() },
            Message::Assistant { content: Some("Il est midi.".into()), tool_calls: vec![] },
            Message::User { content: "merci".into() },
        ]
        .into_iter()
        .map(Arc::new)
        .collect(),
        tools: vec![ToolDef {
            name: "clock".into(),
            description: "current time".into(),
            parameters: json!({"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}),
        }],
        temperature: None,
        max_tokens: None,
        stream: false,
        tool_choice: None,
        parallel_tool_calls: None,
    };

    let providers = Providers::new(ProviderDefaults {
        anthropic_base_url: Some(format!("{}/", server.base_url)),
        anthropic_api_key: Some("sk-ant-test-123".into()),
        ..Default::default()
    });
    let resp = providers.for_spec(&spec()).unwrap().complete(&req, NO_DELTA).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello!"));

    let (headers, body) = server.seen().pop().unwrap();
    assert_eq!(headers.get("x-api-key").unwrap(), "sk-ant-test-123");
    assert_eq!(headers.get("anthropic-version").unwrap(), "2023-06-01");
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    assert!(headers.get("authorization").is_none(), "Anthropic authenticates with x-api-key only");
    assert_eq!(
        body,
        json!({
            "model": "claude-test",
            "max_tokens": 4096,
            "system": "be brief\n\nanswer in French",
            "messages": [
                {"role": "user", "content": "what time is it in UTC and Paris?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "clock", "input": {"tz": "UTC"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00", "is_error": false},
                    {"type": "tool_result", "tool_use_id": "toolu_2",
                        "content": "tool arguments are not valid JSON", "is_error": true},
                    {"type": "text", "text": "and quickly"},
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "Il est midi."}]},
                {"role": "user", "content": "merci"},
            ],
            "tools": [{
                "name": "clock", "description": "current time",
                "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}
            }],
            "stream": false,
        })
    );

    // Set values go out; no system, no tools: no keys for them. Without a key: no header.
    let keyless = Providers::new(ProviderDefaults {
        anthropic_base_url: Some(server.base_url.clone()),
        openai_api_key: Some("sk-openai-not-for-anthropic".into()),
        ..Default::default()
    });
    let mut r = request(true);
    r.temperature = Some(0.2);
    r.max_tokens = Some(100);
    // The server answers with plain JSON even though we asked for a stream; that still works.
    let deltas = Deltas::default();
    let resp = keyless.for_spec(&spec()).unwrap().complete(&r, &deltas.sink()).await.unwrap();
    assert_eq!(deltas.get(), vec!["Hello!"]);
    assert_eq!(resp.content.as_deref(), Some("Hello!"));
    let (headers, body) = server.seen().pop().unwrap();
    assert!(headers.get("x-api-key").is_none() && headers.get("authorization").is_none());
    assert_eq!(headers.get("accept").unwrap(), "text/event-stream");
    assert_eq!(
        body,
        json!({
            "model": "claude-test", "max_tokens": 100, "temperature": 0.2, "stream": true,
            "messages": [{"role": "user", "content": "hi"}],
        })
    );

    // Unset, there is no tool_choice (the exact bodies above have none). Set, it goes out in
    // Anthropic's shape with the tools, carrying `parallel_tool_calls: false` as
    // `disable_parallel_tool_use`; without tools it stays out.
    let p = providers.for_spec(&spec()).unwrap();
    for (choice, parallel, want) in [
        (None, Some(false), Some(json!({"type": "auto", "disable_parallel_tool_use": true}))),
        (None, Some(true), None),
        (Some(ToolChoice::Auto), None, Some(json!({"type": "auto"}))),
        (Some(ToolChoice::None), Some(false), Some(json!({"type": "none"}))),
        (Some(ToolChoice::Required), None, Some(json!({"type": "any"}))),
        (Some(ToolChoice::Required), Some(false), Some(json!({"type": "any", "disable_parallel_tool_use": true}))),
        (Some(ToolChoice::Function("clock".into())), None, Some(json!({"type": "tool", "name": "clock"}))),
    ] {
        let mut r = req.clone();
        r.tool_choice = choice.clone();
        r.parallel_tool_calls = parallel;
        p.complete(&r, NO_DELTA).await.unwrap();
        let (_, body) = server.seen().pop().unwrap();
        assert_eq!(body.get("tool_choice"), want.as_ref(), "{choice:?} {parallel:?}");
        assert!(body.get("parallel_tool_calls").is_none(), "not an Anthropic field");
        assert_eq!(body["tools"].as_array().map(Vec::len), Some(1), "tools stay offered with any choice");
    }
    let mut r = request(false);
    r.tool_choice = Some(ToolChoice::Required);
    r.parallel_tool_calls = Some(false);
    p.complete(&r, NO_DELTA).await.unwrap();
    let (_, body) = server.seen().pop().unwrap();
    assert!(body.get("tools").is_none() && body.get("tool_choice").is_none(), "{body}");
}

#[tokio::test]
async fn non_streaming_text_with_usage() {
    let server = TestServer::start(|_, _| hello()).await;
    let deltas = Deltas::default();
    let resp = server.provider(None, SECS).complete(&request(false), &deltas.sink()).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello!"));
    assert!(resp.tool_calls.is_empty());
    // Cache reads count as input.
    assert_eq!(resp.usage, Usage { input_tokens: 12, output_tokens: 3 });
    assert_eq!(resp.finish_reason, "stop");
    assert_eq!(resp.model, "claude-test-20250101");
    assert!(deltas.get().is_empty(), "no deltas without streaming");
}

#[tokio::test]
async fn non_streaming_tool_use() {
    let server = TestServer::start(|_, _| {
        ok_json(message(
            json!([
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_a", "name": "clock", "input": {}},
                {"type": "tool_use", "id": "toolu_b", "name": "search", "input": {"q": "rust", "n": [1, 2]}},
            ]),
            "tool_use",
        ))
    })
    .await;
    let resp = server.provider(None, SECS).complete(&request(false), NO_DELTA).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Let me look."));
    assert_eq!(
        resp.tool_calls,
        vec![
            ToolCall { id: "toolu_a".into(), name: "clock".into(), arguments: "{}".into() },
            // The `input` object re-serialised, compact, its keys in the order the model wrote them.
            ToolCall { id: "toolu_b".into(), name: "search".into(), arguments: r#"{"q":"rust","n":[1,2]}"#.into() },
        ]
    );
    assert_eq!(resp.finish_reason, "tool_calls");
}

#[tokio::test]
async fn stop_reasons_map_to_finish_reasons() {
    let cases = [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ];
    let server = TestServer::start(move |n, body| {
        let stop = cases[n % cases.len()].0;
        if body["stream"] == json!(true) {
            let events = [message_start(1), text_start(0), text_delta(0, "x"), message_delta(stop, 1), message_stop()];
            Reply::Sse { text: sse(&events), split: 4096, abort: false }
        } else {
            ok_json(message(json!([{"type": "text", "text": "x"}]), stop))
        }
    })
    .await;
    let p = server.provider(None, SECS);
    for stream in [false, true] {
        for (stop, want) in cases {
            let resp = p.complete(&request(stream), NO_DELTA).await.unwrap();
            assert_eq!(resp.finish_reason, want, "{stop} (stream: {stream})");
        }
    }
}

#[tokio::test]
async fn streaming_text_deltas_in_order() {
    let pieces = ["Hel", "lo", ", wo", "rld ", "— ünïcode", "!"];
    let text = streamed_text(&pieces);
    // Pieces of a few bytes cut through `event:`/`data:` prefixes, JSON and line ends.
    for split in [3, 5, 13, 64, 4096] {
        let body = text.clone();
        let server = TestServer::start(move |_, _| Reply::Sse { text: body.clone(), split, abort: false }).await;
        let deltas = Deltas::default();
        let resp = server.provider(None, SECS).complete(&request(true), &deltas.sink()).await.unwrap();
        assert_eq!(deltas.get(), pieces, "split {split}");
        assert_eq!(resp.content.as_deref(), Some(deltas.get().concat().as_str()));
        assert_eq!(resp.usage, Usage { input_tokens: 20, output_tokens: 4 });
        assert_eq!(resp.finish_reason, "stop");
        assert_eq!(resp.model, "claude-test-20250101");
        assert!(resp.tool_calls.is_empty());
    }
}

#[tokio::test]
async fn streaming_tool_use_with_input_json_deltas() {
    let events = [
        message_start(30),
        text_start(0),
        text_delta(0, "Looking"),
        text_delta(0, " it up."),
        block_stop(0),
        tool_start(1, "toolu_x", "search"),
        json_delta(1, ""),
        json_delta(1, "{\"qu"),
        ping(),
        json_delta(1, "ery\": \"stea"),
        json_delta(1, "d ✓\"}"),
        block_stop(1),
        // A tool without arguments sends no deltas at all.
        tool_start(2, "toolu_y", "clock"),
        block_stop(2),
        message_delta("tool_use", 9),
        message_stop(),
    ];
    let text = sse(&events);
    for split in [2, 7, 50, 4096] {
        let body = text.clone();
        let server = TestServer::start(move |_, _| Reply::Sse { text: body.clone(), split, abort: false }).await;
        let deltas = Deltas::default();
        let resp = server.provider(None, SECS).complete(&request(true), &deltas.sink()).await.unwrap();
        assert_eq!(deltas.get(), ["Looking", " it up."], "split {split}");
        assert_eq!(resp.content.as_deref(), Some("Looking it up."));
        assert_eq!(
            resp.tool_calls,
            vec![
                ToolCall {
                    id: "toolu_x".into(), name: "search".into(), arguments: "{\"query\": \"stead ✓\"}".into()
                },
                ToolCall { id: "toolu_y".into(), name: "clock".into(), arguments: "{}".into() },
            ]
        );
        assert_eq!(resp.finish_reason, "tool_calls");
        assert_eq!(resp.usage, Usage { input_tokens: 30, output_tokens: 9 });
    }
}

#[tokio::test]
async fn rate_limited_with_retry_after_then_success() {
    let server = TestServer::start(|n, _| {
        if n == 0 {
            status(429, vec![("retry-after", "1".into())], api_error("rate_limit_error", "slow down"))
        } else {
            hello()
        }
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let on_retry = move |n: u32, e: &stead_model::Error| {
        s2.lock().unwrap().push((n, e.kind, e.status, e.retry_after, e.message.clone()))
    };
    // max_delay caps the server's one second, so the test does not wait for it.
    let resp = retrying(&server.provider(None, SECS), &request(false), 3, NO_DELTA, &on_retry).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello!"));
    assert_eq!(server.hits(), 2);
    let seen = seen.lock().unwrap();
    let (n, kind, status, retry_after, message) = &seen[0];
    assert_eq!(
        (*n, *kind, *status, *retry_after),
        (1, ErrorKind::RateLimited, Some(429), Some(Duration::from_secs(1)))
    );
    assert!(message.contains("slow down"), "{message}");
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn overloaded_529_and_500_are_retried() {
    let server = TestServer::start(|n, _| match n {
        0 => status(529, vec![], api_error("overloaded_error", "Overloaded")),
        1 => status(500, vec![], api_error("api_error", "Internal server error")),
        _ => hello(),
    })
    .await;
    let retries = Arc::new(Mutex::new(Vec::new()));
    let r2 = retries.clone();
    let on_retry = move |n: u32, e: &stead_model::Error| {
        assert!(e.retryable());
        r2.lock().unwrap().push((n, e.kind, e.status, e.message.clone()))
    };
    let resp = retrying(&server.provider(None, SECS), &request(false), 3, NO_DELTA, &on_retry).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello!"));
    assert_eq!(server.hits(), 3);
    let retries = retries.lock().unwrap();
    assert_eq!(
        retries.iter().map(|r| (r.0, r.1, r.2)).collect::<Vec<_>>(),
        [(1, ErrorKind::Server, Some(529)), (2, ErrorKind::Server, Some(500))]
    );
    assert!(retries[0].3.contains("Overloaded"), "{}", retries[0].3);
}

#[tokio::test]
async fn bad_request_quotes_the_server_and_is_not_retried() {
    for (code, message) in
        [(400, "messages.1.content: roles must alternate"), (413, "Request exceeds the maximum size")]
    {
        let server =
            TestServer::start(move |_, _| status(code, vec![], api_error("invalid_request_error", message))).await;
        let err = retrying(&server.provider(None, SECS), &request(false), 3, NO_DELTA, NO_RETRY).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest, "{code}");
        assert_eq!(err.status, Some(code));
        assert_eq!(err.code(), "model_bad_request");
        assert!(err.message.contains(message), "{err}");
        assert_eq!(server.hits(), 1);
    }
}

#[tokio::test]
async fn auth_failure_is_not_retried_and_never_shows_the_key() {
    let server = TestServer::start(|n, body| {
        if n == 0 || body["stream"] != json!(true) {
            status(401, vec![], api_error("authentication_error", "invalid x-api-key: sk-ant-secret-777"))
        } else {
            // A stream whose error event echoes the key.
            Reply::Sse {
                text: sse(&[message_start(1), api_error("permission_error", "key sk-ant-secret-777 may not")]),
                split: 9,
                abort: false,
            }
        }
    })
    .await;
    let p = server.provider(Some("sk-ant-secret-777"), SECS);
    let err = retrying(&p, &request(false), 3, NO_DELTA, NO_RETRY).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    assert_eq!(err.status, Some(401));
    assert!(!err.retryable());
    assert_eq!(server.hits(), 1);
    assert!(err.message.contains("invalid x-api-key"), "{err}");
    assert!(!format!("{err} {err:?} {p:?}").contains("sk-ant-secret-777"), "{err:?}");

    let err = p.complete(&request(true), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    assert!(err.message.contains("permission_error"), "{err}");
    assert!(!format!("{err} {err:?}").contains("sk-ant-secret-777"), "{err:?}");
}

#[tokio::test]
async fn stream_ending_without_message_stop_is_cut() {
    // The server closes cleanly but early, even after a stop reason: no `message_stop`, no answer.
    let events = [message_start(5), text_start(0), text_delta(0, "Hel"), message_delta("end_turn", 2)];
    let text = sse(&events);
    let server = TestServer::start(move |_, _| Reply::Sse { text: text.clone(), split: 5, abort: false }).await;
    let deltas = Deltas::default();
    let err = server.provider(None, SECS).complete(&request(true), &deltas.sink()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::StreamCut);
    assert_eq!(err.code(), "model_stream_cut");
    assert!(err.retryable());
    assert_eq!(deltas.get(), ["Hel"]);
}

#[tokio::test]
async fn broken_stream_is_reported_and_retried() {
    // First attempt: the connection breaks after two deltas. Second: a clean stream.
    let partial = sse(&[message_start(5), text_start(0), text_delta(0, "Hel"), text_delta(0, "lo")]);
    let full = streamed_text(&["Hello", " again"]);
    let server = TestServer::start(move |n, _| {
        if n == 0 {
            Reply::Sse { text: partial.clone(), split: 10, abort: true }
        } else {
            Reply::Sse { text: full.clone(), split: 10, abort: false }
        }
    })
    .await;
    let deltas = Deltas::default();
    let kinds = Arc::new(Mutex::new(Vec::new()));
    let k2 = kinds.clone();
    let resp =
        retrying(&server.provider(None, SECS), &request(true), 2, &deltas.sink(), &move |_, e: &stead_model::Error| {
            k2.lock().unwrap().push(e.kind)
        })
        .await
        .unwrap();
    assert_eq!(*kinds.lock().unwrap(), vec![ErrorKind::StreamCut]);
    assert_eq!(server.hits(), 2);
    assert_eq!(resp.content.as_deref(), Some("Hello again"));
    let got = deltas.get();
    assert_eq!(got.first().map(String::as_str), Some("Hel"), "{got:?}");
    assert!(got.ends_with(&["Hello".to_owned(), " again".to_owned()]), "{got:?}");
}

#[tokio::test]
async fn error_event_inside_a_stream() {
    let server = TestServer::start(|n, _| {
        let error = match n {
            0 => api_error("overloaded_error", "Overloaded"),
            1 => api_error("rate_limit_error", "too many tokens per minute"),
            _ => api_error("invalid_request_error", "prompt is too long"),
        };
        Reply::Sse {
            text: sse(&[message_start(3), text_start(0), text_delta(0, "partial"), ping(), error]),
            split: 16,
            abort: false,
        }
    })
    .await;
    let p = server.provider(None, SECS);
    let deltas = Deltas::default();
    let err = p.complete(&request(true), &deltas.sink()).await.unwrap_err();
    assert_eq!(deltas.get(), ["partial"]);
    assert_eq!(err.kind, ErrorKind::Server);
    assert!(err.retryable());
    assert_eq!(err.message, "model server reported an error (overloaded_error): Overloaded");
    let err = p.complete(&request(true), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::RateLimited);
    assert!(err.message.contains("too many tokens per minute"), "{err}");
    let err = p.complete(&request(true), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(!err.retryable());
}

#[tokio::test]
async fn garbage_bodies_do_not_panic() {
    let replies: Vec<Box<dyn Fn() -> Reply + Send + Sync>> = vec![
        // Not JSON at all, truncated JSON, valid JSON of the wrong shape.
        Box::new(|| Reply::Json { status: 200, headers: vec![], body: "<html>oops</html>".into() }),
        Box::new(|| Reply::Json { status: 200, headers: vec![], body: "{\"content\": [".into() }),
        Box::new(|| ok_json(json!({"type": "message", "role": "assistant"}))),
        Box::new(|| ok_json(json!([1, 2, 3]))),
        // SSE whose data is not JSON, or not an object.
        Box::new(|| Reply::Sse {
            text: "event: message_start\ndata: {\"type\": \"mess\n\n".into(),
            split: 7,
            abort: false,
        }),
        Box::new(|| Reply::Sse { text: "data: [1, 2]\n\n".into(), split: 3, abort: false }),
    ];
    let replies = Arc::new(replies);
    let r2 = replies.clone();
    let server = TestServer::start(move |n, _| r2[n % r2.len()]()).await;
    let p = server.provider(None, SECS);
    for (i, stream) in [false, false, false, false, true, true].into_iter().enumerate() {
        let err = p.complete(&request(stream), NO_DELTA).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Malformed, "reply {i}: {err}");
        assert!(err.retryable());
    }

    // An error status with a body that is not Anthropic's error shape: the status decides.
    let server =
        TestServer::start(|_, _| Reply::Json { status: 502, headers: vec![], body: "\u{1}\u{2} bad gateway".into() })
            .await;
    let err = server.provider(None, SECS).complete(&request(false), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Server);
    assert!(err.message.contains("bad gateway"), "{err}");

    // An error object in a 200 body is an error, not an empty answer.
    let server = TestServer::start(|_, _| ok_json(api_error("overloaded_error", "Overloaded"))).await;
    let err = server.provider(None, SECS).complete(&request(false), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Server);
}

#[tokio::test]
async fn slow_and_stalled_servers_time_out() {
    let server = TestServer::start(|_, _| Reply::Delay(Duration::from_secs(30), Box::new(hello()))).await;
    let p = server.provider(None, Duration::from_millis(300));
    for stream in [false, true] {
        let err = p.complete(&request(stream), NO_DELTA).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(err.retryable());
    }

    let first = sse(&[message_start(1), text_start(0), text_delta(0, "first")]);
    let server = TestServer::start(move |_, _| Reply::Stall { first: first.clone() }).await;
    let deltas = Deltas::default();
    let err =
        server.provider(None, Duration::from_millis(300)).complete(&request(true), &deltas.sink()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert_eq!(deltas.get(), vec!["first"]);
}

#[tokio::test]
async fn unreachable_server_is_transport() {
    let addr = common::closed_address().await;
    let p = AnthropicProvider::new(http_client().unwrap(), &format!("http://{addr}"), Some("sk-ant-x"), SECS).unwrap();
    let err = p.complete(&request(false), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transport, "{err}");
    assert!(err.retryable());
}
