//! Stateless traffic on the same base URL: `/v1/chat/completions` and `/v1/models`, routed
//! like responses. An OpenAI-compatible route forwards the request as it is (streaming too);
//! other providers (Anthropic, scripted) are translated through Stead's provider interface.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use stead_api::authenticate;
use stead_core::agent::Provider;
use stead_core::message::{Message, ToolCall, ToolDef};
use stead_model::{DEFAULT_OPENAI_BASE_URL, ModelRequest, ModelResponse, ToolChoice};

use crate::OaiState;
use crate::error::{OaiError, OaiResult, respond};
use crate::request::content_text;
use crate::routes::ModelRoute;

fn http() -> OaiResult<reqwest::Client> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    let c = stead_model::http_client()
        .map_err(|e| OaiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?;
    Ok(CLIENT.get_or_init(|| c).clone())
}

/// Base URL and key of an OpenAI-compatible route.
fn upstream(st: &OaiState, route: &ModelRoute) -> OaiResult<(String, Option<String>)> {
    let defaults = st.engine.providers().defaults();
    let base = route
        .base_url
        .clone()
        .or_else(|| defaults.openai_base_url.clone())
        .unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.to_owned());
    let key = match &route.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            OaiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("the model route's key variable `{var}` is not set on this server"),
            )
        })?),
        None => defaults.openai_api_key.clone(),
    };
    Ok((base.trim_end_matches('/').to_owned(), key))
}

pub async fn chat_completions(State(st): State<OaiState>, headers: HeaderMap, body: Bytes) -> Response {
    respond(async {
        authenticate(&st.auth, &headers).await?;
        let mut req: Value = serde_json::from_slice(&body).map_err(|e| {
            OaiError::new(StatusCode::BAD_REQUEST, "invalid_request_body", format!("Invalid request body: {e}"))
        })?;
        if !req.is_object() {
            return Err(OaiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_body",
                "The body must be a JSON object.",
            ));
        }
        let model = req["model"].as_str().unwrap_or_default().to_owned();
        let route = st.options.routes.route(&model)?;
        if route.provider == Provider::Openai {
            if let Some(name) = &route.model {
                req["model"] = json!(name);
            }
            return forward(&st, &route, "/chat/completions", Some(req)).await;
        }
        translated(&st, &model, req).await
    })
    .await
}

/// Sends the request on to the route's server and relays its answer, status, type and body
/// (streamed as it arrives).
async fn forward(st: &OaiState, route: &ModelRoute, path: &str, body: Option<Value>) -> OaiResult<Response> {
    let (base, key) = upstream(st, route)?;
    let client = http()?;
    let url = format!("{base}{path}");
    let mut rb = match &body {
        Some(b) => client.post(&url).json(b),
        None => client.get(&url),
    };
    if let Some(k) = &key {
        rb = rb.bearer_auth(k);
    }
    let resp = rb.send().await.map_err(|e| {
        OaiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            format!("the model server at {base} did not answer: {}", e.without_url()),
        )
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type =
        resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let mut out = Response::new(Body::from_stream(resp.bytes_stream()));
    *out.status_mut() = status;
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}

/// Chat messages into Stead's.
fn messages(req: &Value) -> OaiResult<Vec<Arc<Message>>> {
    let list = req["messages"].as_array().ok_or_else(|| {
        OaiError::invalid("messages", "missing_required_parameter", "Missing required parameter: 'messages'.")
    })?;
    if list.is_empty() {
        return Err(OaiError::invalid(
            "messages",
            "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
        ));
    }
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let text = || -> OaiResult<String> {
            match m.get("content") {
                None | Some(Value::Null) => Ok(String::new()),
                c => content_text(c, &param),
            }
        };
        let msg = match m["role"].as_str() {
            Some("system") | Some("developer") => Message::System { content: text()? },
            Some("user") => Message::User { content: text()? },
            Some("assistant") => {
                let calls = m["tool_calls"]
                    .as_array()
                    .map(|calls| {
                        calls
                            .iter()
                            .map(|c| ToolCall {
                                id: c["id"].as_str().unwrap_or_default().to_owned(),
                                name: c["function"]["name"].as_str().unwrap_or_default().to_owned(),
                                arguments: c["function"]["arguments"].as_str().unwrap_or("{}").to_owned(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let content = text()?;
                Message::Assistant { content: (!content.is_empty()).then_some(content), tool_calls: calls }
            }
            Some("tool") => Message::Tool {
                call_id: m["tool_call_id"].as_str().unwrap_or_default().to_owned(),
                name: m["name"].as_str().unwrap_or_default().to_owned(),
                content: text()?,
                is_error: false,
            },
            other => {
                return Err(OaiError::invalid(
                    &format!("{param}.role"),
                    "invalid_value",
                    format!("Unknown role {other:?}."),
                ));
            }
        };
        out.push(Arc::new(msg));
    }
    Ok(out)
}

fn tools(req: &Value) -> Vec<ToolDef> {
    req["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| {
                    let f = &t["function"];
                    Some(ToolDef {
                        name: f["name"].as_str()?.to_owned(),
                        description: f["description"].as_str().unwrap_or_default().to_owned(),
                        parameters: if f["parameters"].is_object() {
                            f["parameters"].clone()
                        } else {
                            json!({"type": "object"})
                        },
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A chat-completions `tool_choice`: `"auto"`, `"none"`, `"required"`, or
/// `{"type": "function", "function": {"name": N}}`.
fn chat_tool_choice(v: &Value) -> OaiResult<Option<ToolChoice>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s == "auto" => Ok(Some(ToolChoice::Auto)),
        Value::String(s) if s == "none" => Ok(Some(ToolChoice::None)),
        Value::String(s) if s == "required" => Ok(Some(ToolChoice::Required)),
        v if v["type"] == "function" && v["function"]["name"].is_string() => {
            Ok(Some(ToolChoice::Function(v["function"]["name"].as_str().unwrap_or_default().to_owned())))
        }
        other => Err(OaiError::unsupported(
            "tool_choice",
            format!(
                "tool_choice {other} is not supported by this server; use 'auto', 'none', 'required' or \
                 {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}."
            ),
        )),
    }
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // The provider may send no id (stead-model leaves it empty): name it by position.
                let id = if c.id.is_empty() { format!("call_{i}") } else { c.id.clone() };
                json!({"index": i, "id": id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect(),
    )
}

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid_like())
}

fn uuid_like() -> String {
    let id = stead_core::ids::RunId::new().to_string();
    id.trim_start_matches("run_").to_owned()
}

/// A chat completion served by a provider that doesn't speak OpenAI's wire format.
async fn translated(st: &OaiState, model: &str, req: Value) -> OaiResult<Response> {
    let spec = st.options.routes.spec(model)?;
    let provider = st
        .engine
        .providers()
        .for_spec(&spec)
        .map_err(|e| OaiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?;
    let stream = req["stream"].as_bool().unwrap_or(false);
    let include_usage = req["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    let temperature = req["temperature"].as_f64().map(|t| t as f32);
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(OaiError::invalid("temperature", "invalid_value", "'temperature' must be between 0 and 2."));
    }
    let request = ModelRequest {
        model: spec.name.clone(),
        messages: messages(&req)?,
        tools: tools(&req),
        temperature,
        max_tokens: req["max_completion_tokens"].as_u64().or(req["max_tokens"].as_u64()).map(|m| m as u32),
        stream,
        tool_choice: chat_tool_choice(&req["tool_choice"])?,
        parallel_tool_calls: req["parallel_tool_calls"].as_bool(),
    };
    let id = completion_id();
    let created = stead_core::time::Timestamp::now().millis() / 1000;
    let model_name = model.to_owned();
    if !stream {
        let resp = provider.complete(&request, &|_| {}).await.map_err(model_error)?;
        return Ok(Json(completion(&id, created, &model_name, &resp)).into_response());
    }
    // Unbounded: the model's pieces must all arrive (the answer bounds the memory), and
    // `on_delta` cannot wait.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            Bytes::from(format!("data: {c}\n\n"))
        };
        let _ = tx.send(Ok(chunk(json!({"role": "assistant", "content": ""}), Value::Null)));
        let sender = tx.clone();
        let on_delta = move |text: &str| {
            let _ = sender.send(Ok(chunk(json!({"content": text}), Value::Null)));
        };
        match provider.complete(&request, &on_delta).await {
            Ok(resp) => {
                if !resp.tool_calls.is_empty() {
                    let _ = tx.send(Ok(chunk(json!({"tool_calls": tool_calls_json(&resp.tool_calls)}), Value::Null)));
                }
                let _ = tx.send(Ok(chunk(json!({}), json!(finish_reason(&resp)))));
                if include_usage {
                    let u = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                                   "choices": [], "usage": usage(&resp)});
                    let _ = tx.send(Ok(Bytes::from(format!("data: {u}\n\n"))));
                }
            }
            Err(e) => {
                let err = model_error(e);
                let body =
                    json!({"error": {"message": err.message, "type": "server_error", "param": null, "code": err.code}});
                let _ = tx.send(Ok(Bytes::from(format!("data: {body}\n\n"))));
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    });
    let mut out = Response::new(Body::from_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)));
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    out.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(out)
}

fn finish_reason(r: &ModelResponse) -> &str {
    if !r.tool_calls.is_empty() { "tool_calls" } else { r.finish_reason.as_str() }
}

fn usage(r: &ModelResponse) -> Value {
    json!({"prompt_tokens": r.usage.input_tokens, "completion_tokens": r.usage.output_tokens,
           "total_tokens": r.usage.total()})
}

fn completion(id: &str, created: i64, model: &str, r: &ModelResponse) -> Value {
    let mut message = json!({"role": "assistant", "content": r.content, "refusal": null});
    if !r.tool_calls.is_empty() {
        let mut calls = tool_calls_json(&r.tool_calls);
        for c in calls.as_array_mut().into_iter().flatten() {
            c.as_object_mut().map(|o| o.remove("index"));
        }
        message["tool_calls"] = calls;
    }
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(r), "logprobs": null}],
        "usage": usage(r),
    })
}

fn model_error(e: stead_model::Error) -> OaiError {
    use stead_model::ErrorKind as K;
    let status = match e.kind {
        K::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        K::BadRequest => StatusCode::BAD_REQUEST,
        K::Auth => StatusCode::BAD_GATEWAY,
        _ => StatusCode::BAD_GATEWAY,
    };
    OaiError::new(status, e.code(), format!("model call failed: {e}"))
}

fn model_object(id: &str, owner: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
}

fn owner(p: &Provider) -> &'static str {
    match p {
        Provider::Openai => "openai",
        Provider::Anthropic => "anthropic",
        Provider::Scripted | Provider::Named(_) => "stead",
    }
}

pub async fn list_models(State(st): State<OaiState>, headers: HeaderMap) -> Response {
    respond(async {
        authenticate(&st.auth, &headers).await?;
        let configured = st.options.routes.routes().to_vec();
        let routes = if configured.is_empty() { vec![st.options.routes.route("*")?] } else { configured };
        let mut data: Vec<Value> = Vec::new();
        let mut push = |v: Value| {
            if !data.iter().any(|d| d["id"] == v["id"]) {
                data.push(v);
            }
        };
        for r in &routes {
            if r.is_exact() {
                push(model_object(&r.pattern, owner(&r.provider)));
                continue;
            }
            let prefix = r.pattern.trim_end_matches('*');
            if r.provider == Provider::Openai {
                // What the upstream server offers, as far as this route serves it.
                match upstream_models(&st, r).await {
                    Ok(models) => {
                        for m in
                            models.into_iter().filter(|m| m["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
                        {
                            push(m);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e.message, "could not list the upstream server's models"),
                }
            } else if !prefix.is_empty() {
                push(model_object(prefix, owner(&r.provider)));
            }
        }
        Ok(Json(json!({"object": "list", "data": data})).into_response())
    })
    .await
}

async fn upstream_models(st: &OaiState, route: &ModelRoute) -> OaiResult<Vec<Value>> {
    let (base, key) = upstream(st, route)?;
    let mut rb = http()?.get(format!("{base}/models")).timeout(Duration::from_secs(5));
    if let Some(k) = &key {
        rb = rb.bearer_auth(k);
    }
    let err = |m: String| OaiError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", m);
    let resp = rb.send().await.map_err(|e| err(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(err(format!("{base}/models answered {}", resp.status())));
    }
    let body: Value = resp.json().await.map_err(|e| err(e.without_url().to_string()))?;
    Ok(body["data"].as_array().cloned().unwrap_or_default())
}

pub async fn retrieve_model(State(st): State<OaiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond(async {
        authenticate(&st.auth, &headers).await?;
        let route = st.options.routes.route(&id)?;
        Ok(Json(model_object(&id, owner(&route.provider))).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_tool_choice_shapes() {
        assert_eq!(chat_tool_choice(&Value::Null).unwrap(), None);
        assert_eq!(chat_tool_choice(&json!("auto")).unwrap(), Some(ToolChoice::Auto));
        assert_eq!(chat_tool_choice(&json!("none")).unwrap(), Some(ToolChoice::None));
        assert_eq!(chat_tool_choice(&json!("required")).unwrap(), Some(ToolChoice::Required));
        assert_eq!(
            chat_tool_choice(&json!({"type": "function", "function": {"name": "clock"}})).unwrap(),
            Some(ToolChoice::Function("clock".into()))
        );
        for bad in [json!("sometimes"), json!({"type": "function"}), json!({"type": "allowed_tools"}), json!(3)] {
            let e = chat_tool_choice(&bad).unwrap_err();
            assert_eq!((e.param.as_deref(), e.code.as_deref()), (Some("tool_choice"), Some("unsupported_parameter")));
        }
    }
}
