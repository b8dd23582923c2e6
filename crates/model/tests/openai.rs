//! The OpenAI-compatible provider against a real HTTP server on 127.0.0.1 that speaks the
//! chat-completions protocol (JSON and SSE), including its failure modes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Api, Deltas, NO_DELTA, NO_RETRY, Reply, SECS, fast_policy, ok_json, retrying, status};
use serde_json::{Value, json};
use stead_core::agent::{Provider, ToolChoice};
use stead_core::message::{Message, ToolCall, ToolDef, Usage};
use stead_model::{
    ErrorKind, ModelProvider, ModelRequest, OpenAiProvider, ProviderDefaults, Providers, RetryPolicy,
    complete_with_retry, http_client,
};
use tokio_util::sync::CancellationToken;

impl Api for OpenAiProvider {
    const ROUTE: &'static str = "/v1/chat/completions";
    /// The base URL includes the version, as OpenAI's does.
    const BASE_PATH: &'static str = "/v1";
    const SSE_CONTENT_TYPE: &'static str = "text/event-stream";

    fn provider(base_url: &str, key: Option<&str>, timeout: Duration) -> Self {
        OpenAiProvider::new(http_client().unwrap(), base_url, key, timeout).unwrap()
    }
}

type TestServer = common::TestServer<OpenAiProvider>;

/// Serialises chunks as an SSE stream, with a keepalive comment and CRLF line ends in places,
/// as real servers mix them.
fn sse(chunks: &[Value], done: bool) -> String {
    let mut out = String::from(": keep-alive\n\n");
    for (i, c) in chunks.iter().enumerate() {
        let nl = if i % 2 == 0 { "\n" } else { "\r\n" };
        out.push_str(&format!("data: {c}{nl}{nl}"));
    }
    if done {
        out.push_str("data: [DONE]\n\n");
    }
    out
}

fn text_chunk(piece: &str) -> Value {
    json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-test", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
}

fn finish_chunk(reason: &str) -> Value {
    json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-test", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

fn usage_chunk(prompt: u64, completion: u64) -> Value {
    json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-test", "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
}

fn streamed_text(pieces: &[&str]) -> String {
    let mut chunks = vec![json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})];
    chunks.extend(pieces.iter().map(|p| text_chunk(p)));
    chunks.push(finish_chunk("stop"));
    chunks.push(usage_chunk(20, 4));
    sse(&chunks, true)
}

fn request(stream: bool) -> ModelRequest {
    common::request("gpt-test", stream)
}

fn completion(message: Value, finish: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-test-0001",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    })
}

fn hello() -> Reply {
    ok_json(completion(json!({"role": "assistant", "content": "Hello!"}), "stop"))
}

#[tokio::test]
async fn non_streaming_text_with_usage() {
    let server = TestServer::start(|_, _| hello()).await;
    let deltas = Deltas::default();
    let resp = server.provider(None, SECS).complete(&request(false), &deltas.sink()).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello!"));
    assert!(resp.tool_calls.is_empty());
    assert_eq!(resp.usage, Usage { input_tokens: 12, output_tokens: 3 });
    assert_eq!(resp.finish_reason, "stop");
    assert_eq!(resp.model, "gpt-test-0001");
    assert!(deltas.get().is_empty(), "no deltas without streaming");
}

#[tokio::test]
async fn non_streaming_tool_calls() {
    let server = TestServer::start(|_, _| {
        ok_json(completion(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
                {"id": "call_b", "type": "function", "function": {"name": "search", "arguments": "{\"q\":\"rust\"}"}}
            ]}),
            "tool_calls",
        ))
    })
    .await;
    let resp = server.provider(None, SECS).complete(&request(false), NO_DELTA).await.unwrap();
    assert_eq!(resp.content, None);
    assert_eq!(
        resp.tool_calls,
        vec![
            ToolCall { id: "call_a".into(), name: "clock".into(), arguments: "{}".into() },
            ToolCall { id: "call_b".into(), name: "search".into(), arguments: "{\"q\":\"rust\"}".into() },
        ]
    );
    assert_eq!(resp.finish_reason, "tool_calls");
    assert_eq!(resp.usage, Usage { input_tokens: 12, output_tokens: 3 });
}

#[tokio::test]
async fn request_body_and_authorization() {
    let server = TestServer::start(|_, _| hello()).await;
    let req = ModelRequest {
        model: "gpt-test".into(),
        messages: [
            Message::System { content: "be brief".into() },
            Message::User { content: "what time is it?".into() },
            Message::Assistant {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "clock".into(),
                    arguments: "{\"tz\":\"UTC\"}".into(),
                }],
            },
            Message::Tool { call_id: "call_1".into(), name: "clock".into(), content: "12:00".into(), is_error: false },
            Message::Assistant { content: Some("It is noon.".into()), tool_calls: vec![] },
            Message::User { content: "again".into() },
            Message::Assistant {
                content: Some("checking".into()),
                tool_calls: vec![ToolCall { id: "call_2".into(), name: "clock".into(), arguments: "{".into() }],
            },
            Message::Tool {
                call_id: "call_2".into(),
                name: "clock".into(),
                content: "bad args".into(),
                is_error: true,
            },
        ]
        .into_iter()
        .map(Arc::new)
        .collect(),
        tools: vec![ToolDef {
            name: "clock".into(),
            description: "current time".into(),
            parameters: json!({"type": "object", "properties": {"tz": {"type": "string"}}}),
        }],
        temperature: Some(0.5),
        max_tokens: Some(100),
        stream: false,
        tool_choice: None,
        parallel_tool_calls: None,
    };

    // Through the registry, with a key from the defaults: the header is sent.
    let spec = common::spec(Provider::Openai, "gpt-test");
    let with_key = Providers::new(ProviderDefaults {
        openai_base_url: Some(server.base_url.clone()),
        openai_api_key: Some("sk-test-123".into()),
        ..Default::default()
    });
    with_key.for_spec(&spec).unwrap().complete(&req, NO_DELTA).await.unwrap();

    let (headers, body) = server.seen().pop().unwrap();
    assert_eq!(headers.get("authorization").unwrap(), "Bearer sk-test-123");
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    assert_eq!(
        body,
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "what time is it?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "clock", "arguments": "{\"tz\":\"UTC\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
                {"role": "assistant", "content": "It is noon."},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "checking", "tool_calls": [
                    {"id": "call_2", "type": "function", "function": {"name": "clock", "arguments": "{"}}
                ]},
                {"role": "tool", "tool_call_id": "call_2", "content": "error: bad args"},
            ],
            "tools": [{"type": "function", "function": {
                "name": "clock", "description": "current time",
                "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}
            }}],
            "temperature": 0.5,
            "max_tokens": 100,
            "stream": false,
        })
    );

    // Without a key (a local server): no header at all; streaming asks for usage.
    let without_key = Providers::new(ProviderDefaults {
        openai_base_url: Some(server.base_url.clone()),
        openai_api_key: None,
        ..Default::default()
    });
    let mut streaming = request(true);
    streaming.tools.clear();
    // The server answers with plain JSON even though we asked for a stream; that still works.
    let deltas = Deltas::default();
    let resp = without_key.for_spec(&spec).unwrap().complete(&streaming, &deltas.sink()).await.unwrap();
    assert_eq!(deltas.get(), vec!["Hello!"]);
    assert_eq!(resp.content.as_deref(), Some("Hello!"));
    let (headers, body) = server.seen().pop().unwrap();
    assert!(headers.get("authorization").is_none());
    assert_eq!(body["stream"], json!(true));
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert!(body.get("tools").is_none(), "no tools key when there are no tools");
    assert!(body.get("temperature").is_none() && body.get("max_tokens").is_none());

    // Unset, tool_choice and parallel_tool_calls stay out (the exact body above has neither).
    // Set, they go out with the tools, in OpenAI's shapes; without tools they stay out.
    let p = without_key.for_spec(&spec).unwrap();
    for (choice, want) in [
        (ToolChoice::Auto, json!("auto")),
        (ToolChoice::None, json!("none")),
        (ToolChoice::Required, json!("required")),
        (ToolChoice::Function("clock".into()), json!({"type": "function", "function": {"name": "clock"}})),
    ] {
        let mut r = req.clone();
        r.tool_choice = Some(choice);
        r.parallel_tool_calls = Some(false);
        p.complete(&r, NO_DELTA).await.unwrap();
        let (_, body) = server.seen().pop().unwrap();
        assert_eq!(body["tool_choice"], want);
        assert_eq!(body["parallel_tool_calls"], json!(false));
        assert_eq!(body["tools"].as_array().map(Vec::len), Some(1), "tools stay offered with any choice");
    }
    let mut r = req.clone();
    r.parallel_tool_calls = Some(true);
    p.complete(&r, NO_DELTA).await.unwrap();
    let (_, body) = server.seen().pop().unwrap();
    assert_eq!(body["parallel_tool_calls"], json!(true));
    assert!(body.get("tool_choice").is_none());
    r.tools.clear();
    r.tool_choice = Some(ToolChoice::Required);
    p.complete(&r, NO_DELTA).await.unwrap();
    let (_, body) = server.seen().pop().unwrap();
    assert!(body.get("tool_choice").is_none() && body.get("parallel_tool_calls").is_none(), "{body}");
}

#[tokio::test]
async fn streaming_text_deltas_in_order() {
    let pieces = ["Hel", "lo", ", wo", "rld ", "— ünïcode", "!"];
    let text = streamed_text(&pieces);
    // Pieces of a few bytes cut through `data:` prefixes, JSON and line ends (the decoder is
    // checked against every split size in its unit tests); all must give the same result.
    for split in [3, 5, 13, 64, 4096] {
        let body = text.clone();
        let server = TestServer::start(move |_, _| Reply::Sse { text: body.clone(), split, abort: false }).await;
        let deltas = Deltas::default();
        let resp = server.provider(None, SECS).complete(&request(true), &deltas.sink()).await.unwrap();
        assert_eq!(deltas.get(), pieces, "split {split}");
        assert_eq!(resp.content.as_deref(), Some(deltas.get().concat().as_str()));
        assert_eq!(resp.usage, Usage { input_tokens: 20, output_tokens: 4 });
        assert_eq!(resp.finish_reason, "stop");
        assert_eq!(resp.model, "gpt-test");
    }
}

fn streamed_tool_calls(second_args: &[&str]) -> String {
    let call = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut tc = json!({"index": index, "function": {"arguments": args}});
        if let Some(id) = id {
            tc["id"] = json!(id);
            tc["type"] = json!("function");
        }
        if let Some(name) = name {
            tc["function"]["name"] = json!(name);
        }
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [tc]}, "finish_reason": null}]})
    };
    let mut chunks = vec![
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": null}}]}),
        call(0, Some("call_x"), Some("search"), ""),
        call(0, None, None, "{\"qu"),
        call(0, None, None, "ery\": \"stea"),
        call(0, None, None, "d ✓\"}"),
        call(1, Some("call_y"), Some("clock"), ""),
    ];
    chunks.extend(second_args.iter().map(|a| call(1, None, None, a)));
    chunks.push(finish_chunk("tool_calls"));
    chunks.push(usage_chunk(30, 9));
    sse(&chunks, true)
}

#[tokio::test]
async fn streamed_tool_calls_split_across_chunks_and_lines() {
    let text = streamed_tool_calls(&["{\"tz\"", ": \"UTC\"}"]);
    for split in [2, 7, 50] {
        let body = text.clone();
        let server = TestServer::start(move |_, _| Reply::Sse { text: body.clone(), split, abort: false }).await;
        let deltas = Deltas::default();
        let resp = server.provider(None, SECS).complete(&request(true), &deltas.sink()).await.unwrap();
        assert!(deltas.get().is_empty());
        assert_eq!(resp.content, None);
        assert_eq!(
            resp.tool_calls,
            vec![
                ToolCall { id: "call_x".into(), name: "search".into(), arguments: "{\"query\": \"stead ✓\"}".into() },
                ToolCall { id: "call_y".into(), name: "clock".into(), arguments: "{\"tz\": \"UTC\"}".into() },
            ]
        );
        assert_eq!(resp.finish_reason, "tool_calls");
        assert_eq!(resp.usage, Usage { input_tokens: 30, output_tokens: 9 });
    }
}

#[tokio::test]
async fn invalid_tool_arguments_pass_through_raw() {
    let text = streamed_tool_calls(&["{\"unterm", "inated"]);
    let server = TestServer::start(move |n, _| {
        if n == 0 {
            Reply::Sse { text: text.clone(), split: 4, abort: false }
        } else {
            ok_json(completion(
                json!({"role": "assistant", "tool_calls": [
                    {"id": "call_z", "type": "function", "function": {"name": "clock", "arguments": "{not json"}}
                ]}),
                "tool_calls",
            ))
        }
    })
    .await;
    let p = server.provider(None, SECS);
    let streamed = p.complete(&request(true), NO_DELTA).await.unwrap();
    assert_eq!(streamed.tool_calls[1].arguments, "{\"unterminated");
    let whole = p.complete(&request(false), NO_DELTA).await.unwrap();
    assert_eq!(whole.tool_calls[0].arguments, "{not json");
}

#[tokio::test]
async fn rate_limited_with_retry_after_then_success() {
    let server = TestServer::start(|n, _| {
        if n == 0 {
            status(
                429,
                vec![("retry-after", "1".into())],
                json!({"error": {"message": "slow down", "type": "rate_limit"}}),
            )
        } else {
            hello()
        }
    })
    .await;
    let retries = Arc::new(Mutex::new(Vec::new()));
    let r2 = retries.clone();
    let on_retry = move |n: u32, e: &stead_model::Error| r2.lock().unwrap().push((n, e.kind, e.retry_after));
    // max_delay caps the server's one second, so the test does not wait for it.
    let resp = retrying(&server.provider(None, SECS), &request(false), 3, NO_DELTA, &on_retry).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello!"));
    assert_eq!(server.hits(), 2);
    assert_eq!(*retries.lock().unwrap(), vec![(1, ErrorKind::RateLimited, Some(Duration::from_secs(1)))]);
}

#[tokio::test]
async fn server_errors_twice_then_success() {
    let server = TestServer::start(|n, _| {
        if n < 2 { status(500 + n as u16 * 2, vec![], json!({"error": {"message": "overloaded"}})) } else { hello() }
    })
    .await;
    let retries = Arc::new(Mutex::new(Vec::new()));
    let r2 = retries.clone();
    let on_retry = move |n: u32, e: &stead_model::Error| r2.lock().unwrap().push((n, e.kind, e.status));
    let resp = retrying(&server.provider(None, SECS), &request(false), 3, NO_DELTA, &on_retry).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("Hello!"));
    assert_eq!(server.hits(), 3);
    assert_eq!(*retries.lock().unwrap(), vec![(1, ErrorKind::Server, Some(500)), (2, ErrorKind::Server, Some(502))]);
}

#[tokio::test]
async fn retries_stop_at_max_retries() {
    let server = TestServer::start(|_, _| status(503, vec![], json!({"error": "unavailable"}))).await;
    let err = retrying(&server.provider(None, SECS), &request(false), 2, NO_DELTA, NO_RETRY).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Server);
    assert_eq!(err.code(), "model_server_error");
    assert!(err.message.contains("unavailable"), "{err}");
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn auth_failure_is_not_retried_and_hides_the_key() {
    let server = TestServer::start(|_, _| {
        status(
            401,
            vec![],
            json!({"error": {"message": "Incorrect API key provided: sk-secret-777", "code": "invalid_api_key"}}),
        )
    })
    .await;
    let err = retrying(&server.provider(Some("sk-secret-777"), SECS), &request(false), 3, NO_DELTA, NO_RETRY)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    assert_eq!(err.status, Some(401));
    assert!(!err.retryable());
    assert_eq!(server.hits(), 1);
    assert!(err.message.contains("Incorrect API key provided"), "{err}");
    assert!(!format!("{err} {err:?}").contains("sk-secret-777"), "{err:?}");
}

#[tokio::test]
async fn bad_request_quotes_the_server_and_is_not_retried() {
    let server = TestServer::start(|_, _| {
        status(
            404,
            vec![],
            json!({"error": {"message": "The model `nope` does not exist", "type": "invalid_request_error"}}),
        )
    })
    .await;
    let err = retrying(&server.provider(None, SECS), &request(false), 3, NO_DELTA, NO_RETRY).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert_eq!(err.code(), "model_bad_request");
    assert!(err.message.contains("The model `nope` does not exist"), "{err}");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn malformed_bodies_and_chunks() {
    let server = TestServer::start(|n, _| match n {
        0 => Reply::Json { status: 200, headers: vec![], body: "{\"choices\": [".into() },
        1 => ok_json(json!({"object": "chat.completion", "choices": []})),
        _ => Reply::Sse {
            text: format!("{}data: {{\"choices\": [{{\"delta\"\n\n", sse(&[text_chunk("a")], false)),
            split: 8,
            abort: false,
        },
    })
    .await;
    let p = server.provider(None, SECS);
    for stream in [false, false, true] {
        let err = p.complete(&request(stream), NO_DELTA).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Malformed, "{err}");
        assert!(err.retryable());
    }
}

#[tokio::test]
async fn error_event_inside_a_stream() {
    let text = sse(&[text_chunk("a"), json!({"error": {"message": "context length exceeded mid-way"}})], false);
    let server = TestServer::start(move |_, _| Reply::Sse { text: text.clone(), split: 16, abort: false }).await;
    let err = server.provider(None, SECS).complete(&request(true), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Server);
    assert!(err.message.contains("context length exceeded mid-way"), "{err}");
}

#[tokio::test]
async fn stream_cut_is_reported_and_retried() {
    // First attempt: the connection breaks after two deltas. Second: a clean stream.
    let partial = sse(&[text_chunk("Hel"), text_chunk("lo")], false);
    let full = streamed_text(&["Hello", " again"]);
    let server = TestServer::start(move |n, _| {
        if n == 0 {
            Reply::Sse { text: partial.clone(), split: 10, abort: true }
        } else {
            Reply::Sse { text: full.clone(), split: 10, abort: false }
        }
    })
    .await;
    let p = server.provider(None, SECS);
    let deltas = Deltas::default();
    let kinds = Arc::new(Mutex::new(Vec::new()));
    let k2 = kinds.clone();
    let resp = retrying(&p, &request(true), 2, &deltas.sink(), &move |_, e: &stead_model::Error| {
        k2.lock().unwrap().push(e.kind)
    })
    .await
    .unwrap();
    assert_eq!(*kinds.lock().unwrap(), vec![ErrorKind::StreamCut]);
    assert_eq!(server.hits(), 2);
    assert_eq!(resp.content.as_deref(), Some("Hello again"));
    // Deltas of the broken attempt reach the caller before it breaks (how many of them depends
    // on what the server flushed before dropping the connection); the retry's follow in order.
    let got = deltas.get();
    assert_eq!(got.first().map(String::as_str), Some("Hel"), "{got:?}");
    assert!(got.ends_with(&["Hello".to_owned(), " again".to_owned()]), "{got:?}");
}

#[tokio::test]
async fn stream_ending_without_done_or_finish_is_cut() {
    let text = sse(&[text_chunk("Hel"), text_chunk("lo")], false);
    let server = TestServer::start(move |_, _| Reply::Sse { text: text.clone(), split: 5, abort: false }).await;
    let err = server.provider(None, SECS).complete(&request(true), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::StreamCut);
    assert_eq!(err.code(), "model_stream_cut");
}

#[tokio::test]
async fn stream_with_finish_reason_but_no_done_is_complete() {
    let text = sse(&[text_chunk("ok"), finish_chunk("length")], false);
    let server = TestServer::start(move |_, _| Reply::Sse { text: text.clone(), split: 5, abort: false }).await;
    let resp = server.provider(None, SECS).complete(&request(true), NO_DELTA).await.unwrap();
    assert_eq!(resp.content.as_deref(), Some("ok"));
    assert_eq!(resp.finish_reason, "length");
}

#[tokio::test]
async fn slow_server_times_out() {
    let server = TestServer::start(|_, _| Reply::Delay(Duration::from_secs(30), Box::new(hello()))).await;
    let p = server.provider(None, Duration::from_millis(300));
    let err = p.complete(&request(false), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert_eq!(err.code(), "model_timeout");
    assert!(err.retryable());
    let err = p.complete(&request(true), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
}

#[tokio::test]
async fn stalled_stream_times_out() {
    let first = sse(&[text_chunk("first")], false);
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
    let p = OpenAiProvider::new(http_client().unwrap(), &format!("http://{addr}/v1"), None, SECS).unwrap();
    let err = p.complete(&request(false), NO_DELTA).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transport, "{err}");
    assert_eq!(err.code(), "model_unreachable");
    assert!(err.retryable());
}

#[tokio::test]
async fn cancel_during_backoff_returns_cancelled() {
    // The server asks for a 30 s pause; a cancel must end the wait, not sit it out. With one
    // retry allowed, an uncancellable wait would end in a second 429 instead of `Cancelled`.
    let server =
        TestServer::start(|_, _| status(429, vec![("retry-after", "30".into())], json!({"error": "busy"}))).await;
    let cancel = CancellationToken::new();
    let waiting = Arc::new(tokio::sync::Notify::new());
    let (c, w) = (cancel.clone(), waiting.clone());
    tokio::spawn(async move {
        w.notified().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.cancel();
    });
    let policy =
        RetryPolicy { max_retries: 1, base_delay: Duration::from_millis(5), max_delay: Duration::from_secs(3600) };
    let w = waiting.clone();
    let err =
        complete_with_retry(&server.provider(None, SECS), &request(false), &policy, &cancel, NO_DELTA, &move |_, _| {
            w.notify_one()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled);
    assert_eq!(err.code(), "model_call_cancelled");
    assert!(!err.retryable());
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn cancel_during_a_call_returns_cancelled() {
    let server = TestServer::start(|_, _| Reply::Delay(Duration::from_secs(3600), Box::new(hello()))).await;
    let cancel = CancellationToken::new();
    let (c, arrived) = (cancel.clone(), server.shared.arrived.clone());
    tokio::spawn(async move {
        arrived.notified().await;
        c.cancel();
    });
    let err = complete_with_retry(
        &server.provider(None, Duration::from_secs(3600)),
        &request(false),
        &fast_policy(3),
        &cancel,
        NO_DELTA,
        NO_RETRY,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled);
    assert_eq!(server.hits(), 1);
}
