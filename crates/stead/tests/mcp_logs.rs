//! The real binary never writes an MCP server's credential to its log or its API answers, even
//! when the server quotes it back: against a server in this test that answers every request
//! `401` with the bearer token in the body (what rmcp's own error lines used to print).

mod support;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use support::{Options, Stead};

const TOKEN: &str = "mcp-token-91e4c7d2a5";

/// Answers everything `401 Unauthorized` (without a challenge), quoting the token it got.
async fn unauthorized_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let got = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (StatusCode::UNAUTHORIZED, format!("{{\"error\": \"invalid credentials: {got}\"}}")).into_response()
    });
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, task)
}

/// Applies an agent using the server, lists its tools (which fails), and returns that answer.
async fn list_tools(stead: &Stead, url: &str) -> String {
    let agent = format!(
        "name: locked\nmodel: {{provider: scripted, name: s}}\nmcp_servers:\n  - name: locked\n    url: {url}\n    \
         headers: {{Authorization: \"Bearer {TOKEN}\"}}\n    timeout_secs: 10\n"
    );
    stead.apply_agent(&agent).await;
    stead.get("/v1/agents/locked/tools").await.text
}

#[tokio::test]
async fn a_token_a_server_quotes_back_reaches_neither_the_log_nor_the_api() {
    let (url, _server) = unauthorized_server().await;

    // With rmcp's logging turned on explicitly, its lines carry the server's answer: this is
    // what the default filter keeps out.
    let mut verbose = Options::new().arg("--log").arg("info,rmcp=debug").start().await;
    let answer = list_tools(&verbose, &url).await;
    assert!(!answer.contains(TOKEN), "the API answer shows the token: {answer}");
    verbose.stop().await;
    let rmcp_saw_it = verbose.stderr().contains(TOKEN);

    let mut stead = Options::new().start().await;
    let answer = list_tools(&stead, &url).await;
    assert!(answer.contains("401"), "the failure is reported: {answer}");
    assert!(!answer.contains(TOKEN), "the API answer shows the token: {answer}");
    stead.stop().await;
    let log = stead.stderr();
    assert!(!log.contains(TOKEN), "the token reached the server's log:\n{log}");
    // rmcp prints it at ERROR ("worker quit with fatal: … UnexpectedServerResponse(…)"), so
    // its target must be `off`, not just `error`. If this fails, rmcp stopped quoting bodies.
    assert!(rmcp_saw_it, "with rmcp=debug, rmcp's own lines no longer quote the server's answer");
}
