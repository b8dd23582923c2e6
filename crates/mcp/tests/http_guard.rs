//! The HTTP transport behind the SSRF guard and without redirects, against MCP servers written
//! in the test (`common::fake`) on loopback ports. Nothing here connects anywhere else: refused
//! addresses are refused before any connection, and redirects are never followed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::args;
use common::fake::{Behaviour, FakeServer};
use serde_json::json;
use stead_mcp::{Error, McpClient, ServerConfig, Transport};
use stead_tools_http::{Guard, GuardConfig};

const API_KEY: &str = "api-key-7f3a9c1e";
const TOKEN: &str = "bearer-token-5d2b8e";

fn guard(allow: &[&str]) -> Arc<Guard> {
    let cfg = GuardConfig { allow: allow.iter().map(|s| (*s).to_owned()).collect(), allow_all: false };
    Arc::new(Guard::new(cfg).unwrap())
}

/// A config sending both credentials, guarded by `guard` (`None`: an operator's URL).
fn config(url: &str, guard: Option<Arc<Guard>>) -> ServerConfig {
    let mut headers = BTreeMap::new();
    headers.insert("X-Api-Key".to_owned(), API_KEY.to_owned());
    headers.insert("Authorization".to_owned(), format!("Bearer {TOKEN}"));
    let mut config = common::config("fake", Transport::Http { url: url.to_owned(), headers });
    config.url_guard = guard;
    config
}

fn assert_no_secret(text: &str) {
    for secret in [API_KEY, TOKEN] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn a_redirect_to_a_refused_address_is_not_followed() {
    // 169.254.169.254 is cloud metadata: the redirect must end the request, not be checked
    // by connecting there.
    let server = FakeServer::start(Behaviour::Redirect("http://169.254.169.254/latest/meta-data?x=1".into())).await;
    for guard in [Some(guard(&["127.0.0.0/8"])), None] {
        let err = McpClient::connect(config(&server.url, guard)).await.expect_err("redirect refused");
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("redirects are not followed for MCP servers (got 307 to http://169.254.169.254)"),
            "{text}"
        );
        assert!(!text.contains("latest/meta-data") && !text.contains("never quoted"), "{text}");
        assert_no_secret(&text);
    }
}

#[tokio::test]
async fn a_redirect_to_another_server_sends_it_nothing() {
    let other = FakeServer::start(Behaviour::Record).await;
    let server = FakeServer::start(Behaviour::Redirect(other.url.clone())).await;
    let err = McpClient::connect(config(&server.url, Some(guard(&["127.0.0.0/8"])))).await.expect_err("refused");
    let text = err.to_string();
    assert!(text.contains(&format!("(got 307 to http://127.0.0.1:{})", other.port())), "{text}");
    assert_no_secret(&text);
    assert!(server.requests() >= 1);
    // Neither the API key nor anything else went to the other origin.
    assert_eq!(other.requests(), 0);
}

#[tokio::test]
async fn a_redirect_after_the_handshake_fails_the_call_and_is_not_followed() {
    let other = FakeServer::start(Behaviour::Record).await;
    let server = FakeServer::start(Behaviour::Mcp { moved_to: Some(other.url.clone()) }).await;
    let client = McpClient::connect(config(&server.url, Some(guard(&["127.0.0.0/8"])))).await.unwrap();
    let err = client.call_tool("moved", serde_json::Map::new(), "k").await.expect_err("redirected");
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    // A 3xx is an answer: the call did not run, nothing is unknown.
    assert!(!err.is_outcome_unknown());
    assert!(err.to_string().contains("redirects are not followed for MCP servers (got 307"), "{err}");
    assert_eq!(other.requests(), 0);
    // The connection still works.
    let result = client.call_tool("echo", serde_json::Map::new(), "k2").await.unwrap();
    assert!(result.text.starts_with("you sent"), "{}", result.text);
    client.close().await;
}

#[tokio::test]
async fn guarded_urls_with_refused_literals_are_refused_before_connecting() {
    // Nothing listens at these; the guard answers before any connection is attempted.
    let cases = [
        ("http://10.0.0.1:9/mcp", "10.0.0.1 is private"),
        ("http://169.254.169.254/mcp", "169.254.169.254 is link-local (cloud metadata)"),
        ("http://[::ffff:127.0.0.1]:9/mcp", "::ffff:127.0.0.1 is an IPv4-mapped form of 127.0.0.1"),
        ("http://2130706433:9/mcp", "127.0.0.1 is loopback"),
    ];
    for (url, why) in cases {
        let err = McpClient::connect(config(url, Some(guard(&[])))).await.expect_err("refused");
        assert!(matches!(err, Error::Connect(_)), "{url}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("refused") && text.contains(why), "{url}: {text}");
        assert_no_secret(&text);
    }
}

#[tokio::test]
async fn a_guarded_name_resolving_to_loopback_is_refused() {
    let server = FakeServer::start(Behaviour::Mcp { moved_to: None }).await;
    let url = format!("http://localhost:{}/mcp", server.port());
    let err = McpClient::connect(config(&url, Some(guard(&[])))).await.expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("localhost resolves only to refused addresses") && text.contains("is loopback"), "{text}");
    assert_no_secret(&text);
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn allowed_guarded_urls_list_and_call_tools() {
    let server = FakeServer::start(Behaviour::Mcp { moved_to: None }).await;
    let by_name = format!("http://localhost:{}/mcp", server.port());
    for (url, allow) in [(server.url.as_str(), "127.0.0.0/8"), (by_name.as_str(), "localhost")] {
        let client = McpClient::connect(config(url, Some(guard(&[allow])))).await.unwrap();
        let tools = client.list_tools().await.unwrap();
        assert_eq!(tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["echo"], "{url}");
        let result = client.call_tool("echo", args(json!({"k": "v"})), "key").await.unwrap();
        // The credentials arrived (and are redacted in what came back).
        assert_eq!(result.text, "you sent key [redacted] auth [redacted]", "{url}");
        client.close().await;
    }
    let seen = server.seen.lock().unwrap();
    assert!(seen.iter().all(|h| h["x-api-key"] == API_KEY), "every request carries the header");
}
