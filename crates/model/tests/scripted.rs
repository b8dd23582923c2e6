//! The scripted model through the `ModelProvider` trait: each command, multi-step conversations
//! fed back as the engine would, streaming, usage estimates and determinism.

use std::sync::{Arc, Mutex};

use serde_json::json;
use stead_core::agent::{ModelSpec, Provider};
use stead_core::message::{Message, ToolCall, ToolDef, Usage};
use stead_model::{ModelProvider, ModelRequest, ModelResponse, ProviderDefaults, Providers, ScriptedModel};

fn req(messages: Vec<Message>, tools: &[&str], stream: bool) -> ModelRequest {
    ModelRequest {
        model: "scripted-1".into(),
        messages: messages.into_iter().map(Arc::new).collect(),
        tools: tools
            .iter()
            .map(|t| ToolDef { name: (*t).into(), description: String::new(), parameters: json!({"type": "object"}) })
            .collect(),
        temperature: None,
        max_tokens: None,
        stream,
        tool_choice: None,
        parallel_tool_calls: None,
    }
}

fn user(text: &str) -> Message {
    Message::User { content: text.into() }
}

async fn ask(messages: Vec<Message>) -> ModelResponse {
    ScriptedModel::default().complete(&req(messages, &["clock", "echo", "search"], false), &|_| {}).await.unwrap()
}

/// Appends the model's answer and a result for each call, as the engine would.
fn feed(messages: &mut Vec<Message>, resp: &ModelResponse, result: impl Fn(&ToolCall) -> String) {
    messages.push(Message::Assistant { content: resp.content.clone(), tool_calls: resp.tool_calls.clone() });
    for c in &resp.tool_calls {
        messages.push(Message::Tool {
            call_id: c.id.clone(),
            name: c.name.clone(),
            content: result(c),
            is_error: false,
        });
    }
}

#[tokio::test]
async fn plain_text_is_echoed() {
    let resp = ask(vec![Message::System { content: "sys".into() }, user("hello there")]).await;
    assert_eq!(resp.content.as_deref(), Some("echo: hello there"));
    assert!(resp.tool_calls.is_empty());
    assert_eq!(resp.finish_reason, "stop");
    assert_eq!(resp.model, "scripted-1");
}

#[tokio::test]
async fn call_then_report_the_result() {
    let mut messages = vec![Message::System { content: "sys".into() }, user("call search {\"q\": \"rust\"}")];
    let first = ask(messages.clone()).await;
    assert_eq!(first.content, None);
    assert_eq!(first.finish_reason, "tool_calls");
    assert_eq!(
        first.tool_calls,
        vec![ToolCall { id: "call_2".into(), name: "search".into(), arguments: "{\"q\": \"rust\"}".into() }]
    );

    feed(&mut messages, &first, |_| "3 hits".into());
    let second = ask(messages).await;
    assert_eq!(second.content.as_deref(), Some("search returned: 3 hits"));
    assert_eq!(second.finish_reason, "stop");
}

#[tokio::test]
async fn call_defaults_to_empty_arguments_and_ignores_earlier_turns() {
    // An earlier exchange with tool calls must not count for the latest user message.
    let mut messages = vec![user("call clock")];
    let r = ask(messages.clone()).await;
    feed(&mut messages, &r, |_| "09:00".into());
    messages.push(Message::Assistant { content: Some("clock returned: 09:00".into()), tool_calls: vec![] });
    messages.push(user("call clock"));
    let again = ask(messages).await;
    assert_eq!(again.tool_calls, vec![ToolCall { id: "call_5".into(), name: "clock".into(), arguments: "{}".into() }]);
}

#[tokio::test]
async fn repeat_calls_n_times_then_finishes() {
    let mut messages = vec![user("repeat 3 echo {\"x\": 1}")];
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = ask(messages.clone()).await;
        assert_eq!(r.tool_calls.len(), 1, "{r:?}");
        assert_eq!(r.tool_calls[0].name, "echo");
        assert_eq!(r.tool_calls[0].arguments, "{\"x\": 1}");
        ids.push(r.tool_calls[0].id.clone());
        feed(&mut messages, &r, |_| "ok".into());
    }
    assert_eq!(ids, vec!["call_1", "call_3", "call_5"], "ids are unique and deterministic");
    let done = ask(messages).await;
    assert_eq!(done.content.as_deref(), Some("done: 3 calls to echo"));

    let zero = ask(vec![user("repeat 0 echo")]).await;
    assert_eq!(zero.content.as_deref(), Some("done: 0 calls to echo"));
}

#[tokio::test]
async fn parallel_calls_in_one_message_then_lists_results() {
    let mut messages = vec![user("parallel clock search echo")];
    let r = ask(messages.clone()).await;
    let names: Vec<&str> = r.tool_calls.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["clock", "search", "echo"]);
    assert!(r.tool_calls.iter().all(|c| c.arguments == "{}"));
    let ids: std::collections::HashSet<&str> = r.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "ids are distinct");
    feed(&mut messages, &r, |c| format!("{}-out", c.name));
    let done = ask(messages).await;
    assert_eq!(done.content.as_deref(), Some("results: clock: clock-out; search: search-out; echo: echo-out"));
}

#[tokio::test]
async fn badargs_sends_invalid_json() {
    let mut messages = vec![user("badargs search")];
    let r = ask(messages.clone()).await;
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].arguments, "{\"unterminated");
    assert!(serde_json::from_str::<serde_json::Value>(&r.tool_calls[0].arguments).is_err());
    feed(&mut messages, &r, |_| "invalid arguments".into());
    let after = ask(messages).await;
    assert_eq!(after.content.as_deref(), Some("search returned: invalid arguments"));
}

#[tokio::test]
async fn unknown_tools_are_still_called() {
    let r = ScriptedModel::default().complete(&req(vec![user("call nosuchtool")], &[], false), &|_| {}).await.unwrap();
    assert_eq!(r.tool_calls[0].name, "nosuchtool");
}

#[tokio::test]
async fn foreign_tool_results_are_summarised() {
    let messages = vec![
        user("what's up"),
        Message::Assistant {
            content: None,
            tool_calls: vec![
                ToolCall { id: "a".into(), name: "clock".into(), arguments: "{}".into() },
                ToolCall { id: "b".into(), name: "echo".into(), arguments: "{}".into() },
            ],
        },
        Message::Tool { call_id: "a".into(), name: "clock".into(), content: "noon".into(), is_error: false },
        Message::Tool { call_id: "b".into(), name: "echo".into(), content: "boom".into(), is_error: true },
    ];
    assert_eq!(ask(messages).await.content.as_deref(), Some("tool results: noon; boom"));
    // No user message at all still gets an answer.
    assert_eq!(ask(vec![]).await.content.as_deref(), Some("echo: "));
}

#[tokio::test]
async fn usage_is_a_length_estimate() {
    let messages = vec![Message::System { content: "12345".into() }, user("hi")]; // 7 bytes
    let r = ask(messages).await;
    // "echo: hi" is 8 bytes.
    assert_eq!(r.usage, Usage { input_tokens: 2, output_tokens: 2 });
    let r = ask(vec![user("call clock")]).await; // 10 bytes in; "clock" + "{}" = 7 out
    assert_eq!(r.usage, Usage { input_tokens: 3, output_tokens: 2 });
}

#[tokio::test]
async fn streaming_emits_word_chunks_that_add_up() {
    let deltas = Arc::new(Mutex::new(Vec::<String>::new()));
    let d2 = deltas.clone();
    let on_delta = move |d: &str| d2.lock().unwrap().push(d.to_owned());
    let model = ScriptedModel::new(1);
    let r = model.complete(&req(vec![user("the quick  brown fox")], &[], true), &on_delta).await.unwrap();
    let got = deltas.lock().unwrap().clone();
    assert_eq!(got, vec!["echo: ", "the ", "quick  ", "brown ", "fox"]);
    assert_eq!(r.content.as_deref(), Some(got.concat().as_str()));

    // Not streaming: no deltas.
    deltas.lock().unwrap().clear();
    model.complete(&req(vec![user("x")], &[], false), &on_delta).await.unwrap();
    assert!(deltas.lock().unwrap().is_empty());
}

#[tokio::test]
async fn same_request_same_response() {
    let messages = vec![user("parallel a b"), Message::Assistant { content: Some("hm".into()), tool_calls: vec![] }];
    let model = ScriptedModel::default();
    let r = req(messages, &["a"], false);
    let first = model.complete(&r, &|_| {}).await.unwrap();
    for _ in 0..5 {
        assert_eq!(model.complete(&r, &|_| {}).await.unwrap(), first);
        assert_eq!(ScriptedModel::new(0).complete(&r, &|_| {}).await.unwrap(), first);
    }
    assert_eq!(stead_model::scripted::respond(&r), first);
}

#[tokio::test]
async fn registry_builds_the_scripted_model() {
    let spec = ModelSpec {
        provider: Provider::Scripted,
        name: "echo".into(),
        base_url: None,
        api_key_env: None,
        temperature: None,
        max_tokens: None,
        stream: true,
        timeout_secs: 5,
        max_retries: 0,
        chunk_delay_ms: 0,
        tool_choice: None,
        parallel_tool_calls: None,
    };
    let p = Providers::new(ProviderDefaults::default()).for_spec(&spec).unwrap();
    let r = p.complete(&req(vec![user("hi")], &[], true), &|_| {}).await.unwrap();
    assert_eq!(r.content.as_deref(), Some("echo: hi"));
}
