//! A streamable-HTTP MCP server written here (JSON answers, no sessions, protocol 2025-11-25),
//! for what the reference servers cannot do: echo back the credentials it was sent, answer
//! with a redirect or an error body, and record every request it got. Loopback only.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};

/// How the server answers.
#[derive(Clone)]
pub enum Behaviour {
    /// An MCP server whose tool `echo` (and listing, and errors) quote the `X-Api-Key` and
    /// `Authorization` headers it got. A call of tool `moved` is answered 307 to `moved_to`.
    Mcp { moved_to: Option<String> },
    /// Every request: 307 to this URL (with a body that must never be quoted).
    Redirect(String),
    /// Every request: this status with this text body.
    Fail(StatusCode, String),
    /// Every request: 200 `recorded`.
    Record,
}

pub struct FakeServer {
    pub url: String,
    /// The headers of every request the server received, in order.
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new((behaviour, seen.clone()));
        let app = Router::new().fallback(handle).with_state(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeServer { url: format!("http://127.0.0.1:{port}/mcp"), seen, task }
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn port(&self) -> u16 {
        reqwest::Url::parse(&self.url).unwrap().port().unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Arc<(Behaviour, Arc<Mutex<Vec<HeaderMap>>>)>;

async fn handle(State(state): State<Shared>, method: Method, headers: HeaderMap, body: String) -> Response {
    state.1.lock().unwrap().push(headers.clone());
    match &state.0 {
        Behaviour::Redirect(to) => redirect(to),
        Behaviour::Fail(status, text) => (*status, [(header::CONTENT_TYPE, "text/html")], text.clone()).into_response(),
        Behaviour::Record => "recorded".into_response(),
        Behaviour::Mcp { moved_to } => mcp(&method, &headers, &body, moved_to.as_deref()),
    }
}

fn redirect(to: &str) -> Response {
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to.to_owned())], "body of the redirect, never quoted")
        .into_response()
}

fn mcp(method: &Method, headers: &HeaderMap, body: &str, moved_to: Option<&str>) -> Response {
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let message: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let Some(id) = message.get("id").cloned() else { return StatusCode::ACCEPTED.into_response() };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let echo = format!("key {} auth {}", header("x-api-key"), header("authorization"));
    let params = &message["params"];
    let result = match (message["method"].as_str().unwrap_or_default(), params["name"].as_str()) {
        ("initialize", _) => json!({
            "protocolVersion": params["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fake", "version": "1"}
        }),
        ("tools/list", _) => json!({"tools": [{
            "name": "echo",
            "description": format!("Echoes what it was sent: {echo}"),
            "inputSchema": {"type": "object", "properties": {"k": {"type": "string", "default": echo}}}
        }]}),
        ("tools/call", Some("moved")) if moved_to.is_some() => return redirect(moved_to.unwrap_or_default()),
        ("tools/call", Some("echo")) => {
            let mut structured = serde_json::Map::new();
            structured.insert("sent".into(), echo.clone().into());
            structured.insert(header("x-api-key"), json!(1));
            json!({"content": [{"type": "text", "text": format!("you sent {echo}")}], "structuredContent": structured})
        }
        ("tools/call", name) => return rpc_error(id, -32602, format!("unknown tool {name:?}; {echo} is not allowed")),
        _ => return rpc_error(id, -32601, "Method not found".to_owned()),
    };
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

fn rpc_error(id: Value, code: i32, message: String) -> Response {
    Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})).into_response()
}
