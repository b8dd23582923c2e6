//! Against `@modelcontextprotocol/server-everything` (npm; the TypeScript SDK, protocol
//! 2025-11-25 with an `initialize` handshake), over stdio and over streamable HTTP (sessions,
//! SSE answers). Skipped, with a message, when `STEAD_MCP_EVERYTHING` is unset.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{HttpServer, args, config, free_port, server_path, sigkill, wait_dead};
use serde_json::json;
use stead_mcp::{Error, McpClient, ServerConfig, Transport};

const VAR: &str = "STEAD_MCP_EVERYTHING";

fn stdio_config(entry: &Path) -> ServerConfig {
    config("everything", Transport::stdio("node", [entry.to_str().unwrap(), "stdio"]))
}

async fn http_server(entry: &Path) -> HttpServer {
    let port = free_port();
    let mut command = tokio::process::Command::new("node");
    command.arg(entry).arg("streamableHttp").env("PORT", port.to_string());
    HttpServer::start(command, port, "/mcp").await
}

fn http_config(server: &HttpServer) -> ServerConfig {
    let mut headers = std::collections::BTreeMap::new();
    // The server ignores it; the transport must still send it without breaking anything.
    headers.insert("Authorization".to_owned(), "Bearer test-token-not-secret".to_owned());
    config("everything-http", Transport::Http { url: server.url.clone(), headers })
}

/// Handshake, tool listing with annotations, text, structured, image and error results.
async fn check_basics(client: &McpClient) {
    assert_eq!(client.protocol_version().as_deref(), Some("2025-11-25"));

    let tools = client.list_tools().await.unwrap();
    let echo = tools.iter().find(|t| t.name == "echo").expect("echo tool listed");
    assert_eq!(echo.description, "Echoes back the input string");
    assert_eq!(echo.read_only_hint, Some(true));
    assert_eq!(echo.idempotent_hint, Some(true));
    assert_eq!(echo.destructive_hint, Some(false));
    assert_eq!(echo.input_schema["type"], "object");
    assert_eq!(echo.input_schema["properties"]["message"]["type"], "string");
    assert!(tools.iter().any(|t| t.name == "get-structured-content"));

    let result = client.call_tool("echo", args(json!({"message": "hello"})), "key-1").await.unwrap();
    assert_eq!(result.text, "Echo: hello");
    assert!(!result.is_error);
    assert_eq!(result.structured, None);

    let result =
        client.call_tool("get-structured-content", args(json!({"location": "Chicago"})), "key-2").await.unwrap();
    let expected = json!({"temperature": 36, "conditions": "Light rain / drizzle", "humidity": 82});
    assert_eq!(result.structured, Some(expected.clone()));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&result.text).unwrap(), expected);
    assert!(!result.is_error);

    let result = client.call_tool("get-tiny-image", serde_json::Map::new(), "key-3").await.unwrap();
    assert!(result.text.contains("[image: image/png, "), "{}", result.text);
    assert!(!result.text.contains("iVBOR"), "base64 must not reach the text: {}", result.text);

    // Arguments that fail the tool's schema: the SDK reports a tool error (`isError`).
    let result = client.call_tool("get-sum", args(json!({"a": "one", "b": 2})), "key-4").await.unwrap();
    assert!(result.is_error, "{result:?}");
    assert!(result.text.to_lowercase().contains("invalid") || result.text.contains("error"), "{}", result.text);
}

/// A call that outlives `call_timeout` fails with a timeout whose outcome is unknown, and the
/// connection stays usable.
async fn check_timeout(mut config: ServerConfig) {
    config.call_timeout = Duration::from_millis(300);
    let client = McpClient::connect(config).await.unwrap();
    let err = client
        .call_tool("trigger-long-running-operation", args(json!({"duration": 30, "steps": 30})), "slow")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { operation: "tools/call", .. }), "{err}");
    assert!(err.is_outcome_unknown());
    assert!(err.to_string().contains("timed out"), "{err}");
    let result = client.call_tool("echo", args(json!({"message": "still here"})), "k").await.unwrap();
    assert_eq!(result.text, "Echo: still here");
    client.close().await;
}

#[tokio::test]
async fn stdio_basics() {
    let Some(entry) = server_path(VAR, "stdio_basics") else { return };
    let client = McpClient::connect(stdio_config(&entry)).await.unwrap();
    check_basics(&client).await;
    // The server's stderr is captured, not inherited.
    assert!(client.stderr_tail().contains("Starting default (STDIO) server"), "{}", client.stderr_tail());
    client.close().await;
    let err = client.call_tool("echo", args(json!({"message": "x"})), "k").await.unwrap_err();
    assert!(matches!(err, Error::Closed(_)), "{err}");
}

#[tokio::test]
async fn stdio_concurrent_calls_share_one_server() {
    let Some(entry) = server_path(VAR, "stdio_concurrent_calls_share_one_server") else { return };
    let client = McpClient::connect(stdio_config(&entry)).await.unwrap();
    let pid = client.server_pid();
    let calls = (0..16).map(|i| {
        let client = client.clone();
        tokio::spawn(
            async move { client.call_tool("get-sum", args(json!({"a": i, "b": 1000})), &format!("k{i}")).await },
        )
    });
    let results = futures_join(calls.collect()).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().text, format!("The sum of {i} and 1000 is {}.", i + 1000));
    }
    assert_eq!(client.server_pid(), pid);
    client.close().await;
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<Result<T, Error>>>) -> Vec<Result<T, Error>> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn stdio_timeout() {
    let Some(entry) = server_path(VAR, "stdio_timeout") else { return };
    check_timeout(stdio_config(&entry)).await;
}

#[tokio::test]
async fn stdio_environment_is_minimal_plus_configured() {
    let Some(entry) = server_path(VAR, "stdio_environment_is_minimal_plus_configured") else { return };
    let mut config = stdio_config(&entry);
    if let Transport::Stdio { env, cwd, .. } = &mut config.transport {
        env.insert("STEAD_TEST_VAR".into(), "configured".into());
        *cwd = Some(std::env::temp_dir());
    }
    let client = McpClient::connect(config).await.unwrap();
    let result = client.call_tool("get-env", serde_json::Map::new(), "k").await.unwrap();
    let env: serde_json::Value = serde_json::from_str(&result.text).unwrap();
    // It arrived; echoed back, a configured value (it may be a credential) is redacted.
    assert_eq!(env["STEAD_TEST_VAR"], "[redacted]");
    assert!(!result.text.contains("configured"), "{}", result.text);
    assert!(env.get("PATH").is_some());
    // Cargo sets this for the test process; a server must not inherit Stead's environment.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(env.get("CARGO_MANIFEST_DIR").is_none(), "{env}");
    client.close().await;
}

#[tokio::test]
async fn stdio_killed_server_is_restarted_by_the_next_call() {
    let Some(entry) = server_path(VAR, "stdio_killed_server_is_restarted_by_the_next_call") else { return };
    let client = McpClient::connect(stdio_config(&entry)).await.unwrap();
    let first = client.server_pid().unwrap();
    sigkill(first);
    wait_dead(first).await;

    // The call was never sent to the dead server: the client restarts it and sends it.
    let result = client.call_tool("echo", args(json!({"message": "again"})), "k").await.unwrap();
    assert_eq!(result.text, "Echo: again");
    let second = client.server_pid().unwrap();
    assert_ne!(first, second);

    // Listing after a kill works the same way.
    sigkill(second);
    wait_dead(second).await;
    assert!(!client.list_tools().await.unwrap().is_empty());
    assert_ne!(client.server_pid().unwrap(), second);
    client.close().await;
}

/// Preloaded into the server (`node --require`): appends everything the server reads on stdin
/// to the file in `STEAD_TEST_STDIN_LOG`, so a test sees what reached it, across restarts.
const STDIN_RECORDER: &str = r#"
const fs = require("fs");
const log = process.env.STEAD_TEST_STDIN_LOG;
const emit = process.stdin.emit;
process.stdin.emit = function (event, chunk, ...rest) {
  if (event === "data") fs.appendFileSync(log, chunk);
  return emit.call(this, event, chunk, ...rest);
};
"#;

/// Waits until `path` contains `needle`.
async fn wait_file(path: &Path, needle: &str) {
    for _ in 0..1000 {
        if std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never contained {needle:?}", path.display());
}

#[tokio::test]
async fn stdio_call_in_flight_when_the_server_dies_is_lost_not_replayed() {
    let Some(entry) = server_path(VAR, "stdio_call_in_flight_when_the_server_dies_is_lost_not_replayed") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (recorder, log) = (dir.path().join("recorder.js"), dir.path().join("stdin.log"));
    std::fs::write(&recorder, STDIN_RECORDER).unwrap();
    let mut config = config(
        "everything",
        Transport::stdio("node", ["--require", recorder.to_str().unwrap(), entry.to_str().unwrap(), "stdio"]),
    );
    if let Transport::Stdio { env, .. } = &mut config.transport {
        env.insert("STEAD_TEST_STDIN_LOG".into(), log.to_str().unwrap().into());
    }
    let client = McpClient::connect(config).await.unwrap();
    let pid = client.server_pid().unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client.call_tool("trigger-long-running-operation", args(json!({"duration": 60, "steps": 60})), "long").await
        })
    };
    // The server has read the call: it is in flight when the server dies.
    const LONG: &str = r#""name":"trigger-long-running-operation""#;
    wait_file(&log, LONG).await;
    sigkill(pid);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionLost(_)), "{err}");
    assert!(err.is_outcome_unknown());
    assert!(err.to_string().contains("signal 9"), "{err}");
    assert!(err.to_string().contains("not retried"), "{err}");

    // The next call starts a fresh server, which gets that call and not the lost one.
    let result = client.call_tool("echo", args(json!({"message": "after"})), "k2").await.unwrap();
    assert_eq!(result.text, "Echo: after");
    assert_ne!(client.server_pid(), Some(pid));
    let read = std::fs::read_to_string(&log).unwrap();
    assert_eq!(read.matches(r#""method":"initialize""#).count(), 2, "two servers started:\n{read}");
    assert_eq!(read.matches(LONG).count(), 1, "the lost call was sent again:\n{read}");
    assert!(read.contains(r#""message":"after""#), "{read}");
    client.close().await;
}

#[tokio::test]
async fn http_basics() {
    let Some(entry) = server_path(VAR, "http_basics") else { return };
    let server = http_server(&entry).await;
    let client = McpClient::connect(http_config(&server)).await.unwrap();
    check_basics(&client).await;
    assert_eq!(client.stderr_tail(), "");
    assert_eq!(client.server_pid(), None);
    client.close().await;
}

#[tokio::test]
async fn http_timeout() {
    let Some(entry) = server_path(VAR, "http_timeout") else { return };
    let server = http_server(&entry).await;
    check_timeout(http_config(&server)).await;
}

#[tokio::test]
async fn http_call_in_flight_when_the_server_dies_is_lost() {
    let Some(entry) = server_path(VAR, "http_call_in_flight_when_the_server_dies_is_lost") else { return };
    let server = http_server(&entry).await;
    let client = McpClient::connect(http_config(&server)).await.unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client.call_tool("trigger-long-running-operation", args(json!({"duration": 60, "steps": 60})), "long").await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigkill(server.pid());
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    assert!(err.is_outcome_unknown());
    assert!(!err.to_string().contains("test-token-not-secret"), "{err}");
    client.close().await;
}

#[tokio::test]
async fn http_unreachable_server_fails_to_connect_without_leaking_headers() {
    let port = free_port(); // nothing listens there
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("Authorization".to_owned(), "Bearer sup3r-s3cret".to_owned());
    let mut config = config("nowhere", Transport::Http { url: format!("http://127.0.0.1:{port}/mcp"), headers });
    config.connect_timeout = Duration::from_secs(10);
    let err = McpClient::connect(config).await.expect_err("nothing listens");
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(err.to_string().contains("nowhere"), "{err}");
    assert!(!err.to_string().contains("sup3r"), "{err}");
}
