//! Against `mcp-server-time` (PyPI; the Python SDK 2.x, which speaks both the `initialize`
//! era and the sessionless 2026-07-28 revision): over stdio, and over streamable HTTP served
//! by the same SDK in stateless mode, answering with JSON and with SSE. Skipped, with a
//! message, when `STEAD_MCP_TIME` is unset.

mod common;

use std::path::{Path, PathBuf};

use common::{HttpServer, args, config, free_port, server_path};
use serde_json::json;
use stead_mcp::{Error, McpClient, ServerConfig, Transport};

const VAR: &str = "STEAD_MCP_TIME";

/// Runs the published server's `create_server` over the SDK's own streamable HTTP transport.
const HTTP_LAUNCHER: &str = r#"
import sys, anyio
from mcp_server_time.server import create_server
port, mode = int(sys.argv[1]), sys.argv[2]
server = create_server("UTC")
anyio.run(lambda: server.run_streamable_http_async(
    host="127.0.0.1", port=port, stateless_http=True, json_response=(mode == "json")))
"#;

fn python_of(executable: &Path) -> PathBuf {
    executable.parent().expect("venv bin dir").join("python")
}

async fn http_server(executable: &Path, mode: &str) -> HttpServer {
    let port = free_port();
    let mut command = tokio::process::Command::new(python_of(executable));
    command.arg("-c").arg(HTTP_LAUNCHER).arg(port.to_string()).arg(mode);
    HttpServer::start(command, port, "/mcp").await
}

async fn check_time_server(config: ServerConfig) {
    let client = McpClient::connect(config).await.unwrap();
    // `server/discover` succeeded: the sessionless revision, no `initialize`.
    assert_eq!(client.protocol_version().as_deref(), Some("2026-07-28"));

    let tools = client.list_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["convert_time", "get_current_time"]);
    let get = tools.iter().find(|t| t.name == "get_current_time").unwrap();
    assert_eq!(get.read_only_hint, Some(true));
    assert_eq!(get.description, "Get current time in a specific timezone");
    assert_eq!(get.input_schema["required"], json!(["timezone"]));

    let result = client.call_tool("get_current_time", args(json!({"timezone": "UTC"})), "k1").await.unwrap();
    assert!(!result.is_error, "{result:?}");
    let structured = result.structured.expect("structured content");
    assert_eq!(structured["timezone"], "UTC");
    assert_eq!(structured["is_dst"], false);
    assert!(result.text.contains("UTC"), "{}", result.text);

    let result = client
        .call_tool(
            "convert_time",
            args(json!({"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})),
            "k2",
        )
        .await
        .unwrap();
    assert!(!result.is_error, "{result:?}");
    assert_eq!(result.structured.unwrap()["target"]["datetime"].as_str().map(|s| s.contains("T21:00")), Some(true));

    // The tool ran and failed: `isError`, recorded as such.
    let result = client.call_tool("get_current_time", args(json!({"timezone": "Mars/Olympus"})), "k3").await.unwrap();
    assert!(result.is_error, "{result:?}");
    assert!(result.text.contains("Mars/Olympus"), "{}", result.text);

    // An unknown tool is a protocol error: the server refused, nothing ran.
    let err = client.call_tool("no_such_tool", serde_json::Map::new(), "k4").await.unwrap_err();
    assert!(matches!(err, Error::Rpc { code: -32602, .. }), "{err:?}");
    assert!(!err.is_outcome_unknown());
    client.close().await;
}

#[tokio::test]
async fn stdio_modern_revision() {
    let Some(exe) = server_path(VAR, "stdio_modern_revision") else { return };
    let transport = Transport::stdio(exe.to_str().unwrap(), ["--local-timezone", "UTC"]);
    check_time_server(config("time", transport)).await;
}

#[tokio::test]
async fn http_stateless_json_answers() {
    let Some(exe) = server_path(VAR, "http_stateless_json_answers") else { return };
    let server = http_server(&exe, "json").await;
    check_time_server(config("time-http-json", Transport::http(server.url.clone()))).await;
}

#[tokio::test]
async fn http_stateless_sse_answers() {
    let Some(exe) = server_path(VAR, "http_stateless_sse_answers") else { return };
    let server = http_server(&exe, "sse").await;
    check_time_server(config("time-http-sse", Transport::http(server.url.clone()))).await;
}
