//! Credentials from a server's config never come back out of the client, whatever the server
//! does with them: echo them in a tool listing, a call result or a JSON-RPC error, quote them in
//! an error body, or print them to stderr and die. Against servers written in the test.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::fake::{Behaviour, FakeServer};
use stead_mcp::{Error, McpClient, Transport};

const API_KEY: &str = "api-key-7f3a9c1e";
const TOKEN: &str = "bearer-token-5d2b8e";

fn http_config(url: &str) -> stead_mcp::ServerConfig {
    let mut headers = BTreeMap::new();
    headers.insert("X-Api-Key".to_owned(), API_KEY.to_owned());
    headers.insert("Authorization".to_owned(), format!("Bearer {TOKEN}"));
    common::config("echo", Transport::Http { url: url.to_owned(), headers })
}

fn assert_clean(what: &str, text: &str) {
    for secret in [API_KEY, TOKEN] {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

#[tokio::test]
async fn secrets_echoed_by_an_http_server_are_redacted_everywhere() {
    let server = FakeServer::start(Behaviour::Mcp { moved_to: None }).await;
    let client = McpClient::connect(http_config(&server.url)).await.unwrap();

    let tools = client.list_tools().await.unwrap();
    assert_eq!(tools[0].description, "Echoes what it was sent: key [redacted] auth [redacted]");
    assert_eq!(tools[0].input_schema["properties"]["k"]["default"], "key [redacted] auth [redacted]");
    assert_clean("tools/list", &format!("{tools:?}"));

    let result = client.call_tool("echo", serde_json::Map::new(), "k").await.unwrap();
    assert_eq!(result.text, "you sent key [redacted] auth [redacted]");
    let structured = result.structured.clone().unwrap();
    assert_eq!(structured["[redacted]"], 1, "{structured}");
    assert_clean("tools/call", &format!("{result:?}"));

    let err = client.call_tool("nope", serde_json::Map::new(), "k").await.unwrap_err();
    assert!(matches!(&err, Error::Rpc { code: -32602, message, .. } if message.contains("[redacted]")), "{err:?}");
    assert_clean("JSON-RPC error", &format!("{err} {err:?}"));
    // The server did get the real values.
    assert!(server.seen.lock().unwrap().iter().all(|h| h["x-api-key"] == API_KEY));
    client.close().await;
}

#[tokio::test]
async fn an_error_body_is_quoted_as_a_short_redacted_excerpt() {
    // What a server that is not an MCP server may answer: a page quoting the key, and long. The
    // key sits across the 200-byte excerpt limit, so a cut there would show its first bytes.
    let body = format!("{}{API_KEY}{}", "x".repeat(170), "y".repeat(5000));
    let server = FakeServer::start(Behaviour::Fail(axum::http::StatusCode::BAD_REQUEST, body)).await;
    let err = McpClient::connect(http_config(&server.url)).await.expect_err("not an MCP server");
    let text = err.to_string();
    assert!(text.contains("HTTP 400 Bad Request: xxx") && text.contains("[cut: "), "{text}");
    assert!(!text.contains(&API_KEY[..4]) && !text.contains("yyy"), "{text}");
    assert!(text.len() < 600, "{} bytes: {text}", text.len());
}

/// What the `tracing` log received, for a test on one thread (the default test runtime: the
/// client's stderr reader runs on it too).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_stdio_server_that_prints_its_secret_and_dies_does_not_leak_it() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let secret = "env-secret-2c4e6a8b";
    let mut transport = Transport::stdio("sh", ["-c", "echo \"starting with API_KEY=$API_KEY\" >&2; exit 3"]);
    if let Transport::Stdio { env, .. } = &mut transport {
        env.insert("API_KEY".into(), secret.into());
    }
    let err = McpClient::connect(common::config("leaky", transport)).await.expect_err("server exits");
    assert!(matches!(err, Error::ServerExited(_)), "{err:?}");
    let text = err.to_string();
    // Its stderr is in the message, with the value it printed redacted.
    assert!(text.contains("status 3") && text.contains("starting with API_KEY=[redacted]"), "{text}");
    assert!(!text.contains(secret) && !format!("{err:?}").contains(secret), "{text}");
    // Its stderr lines are logged (at debug), redacted too.
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("starting with API_KEY=[redacted]"), "{log}");
    assert!(!log.contains(secret), "{log}");
}
