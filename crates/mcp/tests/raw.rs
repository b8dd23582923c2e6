//! Against a tiny stdio MCP server written here as a raw JSON-RPC loop (run by node), for what
//! the reference servers cannot show: the `_meta` a call arrives with, paginated tool lists,
//! that a call lost in flight reached the server exactly once, and startup failures. Needs
//! `node`; skipped, with a message, when `STEAD_MCP_EVERYTHING` is unset (CI sets it, and
//! installing it means node is there).

mod common;

use std::time::Duration;

use common::{args, config, server_path, sigkill, wait_dead, wait_stderr};
use serde_json::json;
use stead_mcp::{Error, IDEMPOTENCY_KEY_META, McpClient, ServerConfig, Transport};

const SERVER: &str = r#"
const readline = require("readline");
const send = (m) => process.stdout.write(JSON.stringify(m) + "\n");
const ok = (id, result) => send({ jsonrpc: "2.0", id, result });
const tool = (name, extra) => ({ name, description: name + " tool", inputSchema: { type: "object" }, ...extra });
console.error("raw server up");
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const m = JSON.parse(line);
  if (m.id === undefined) return; // notifications
  const p = m.params || {};
  switch (m.method) {
    case "initialize":
      return ok(m.id, { protocolVersion: p.protocolVersion, capabilities: { tools: {} },
                        serverInfo: { name: "raw", version: "1" } });
    case "ping":
      return ok(m.id, {});
    case "tools/list":
      // Two pages, to check that the client follows `nextCursor`.
      if (!p.cursor) return ok(m.id, { tools: [tool("record", { annotations: { idempotentHint: false } }),
                                               tool("hang")], nextCursor: "page-2" });
      return ok(m.id, { tools: [tool("crash", { annotations: { destructiveHint: true } })] });
    case "tools/call": {
      const key = (p._meta || {})["io.stead/idempotency_key"];
      console.error(`CALL ${p.name} ${key}`);
      if (p.name === "record")
        return ok(m.id, { content: [{ type: "text", text: "recorded" }],
                          structuredContent: { meta: p._meta || null, arguments: p.arguments || null } });
      if (p.name === "hang") return; // never answers
      if (p.name === "crash") { console.error("crashing on purpose"); process.exit(7); }
      return send({ jsonrpc: "2.0", id: m.id, error: { code: -32602, message: `Unknown tool: ${p.name}` } });
    }
    default: // `server/discover` included: this is a server from before 2026-07-28
      return send({ jsonrpc: "2.0", id: m.id, error: { code: -32601, message: "Method not found" } });
  }
});
"#;

fn raw_config(test: &str) -> Option<(ServerConfig, tempfile::TempDir)> {
    server_path("STEAD_MCP_EVERYTHING", test)?;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("server.js");
    std::fs::write(&script, SERVER).unwrap();
    Some((config("raw", Transport::stdio("node", [script.to_str().unwrap()])), dir))
}

#[tokio::test]
async fn idempotency_key_arrives_in_meta_and_lists_follow_cursors() {
    let Some((config, _dir)) = raw_config("idempotency_key_arrives_in_meta_and_lists_follow_cursors") else {
        return;
    };
    let client = McpClient::connect(config).await.unwrap();
    assert_eq!(client.protocol_version().as_deref(), Some("2025-11-25"));

    let tools = client.list_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["record", "hang", "crash"]);
    assert_eq!(tools[0].idempotent_hint, Some(false));
    assert_eq!(tools[2].destructive_hint, Some(true));
    assert_eq!(tools[1].read_only_hint, None);

    let result = client.call_tool("record", args(json!({"n": 1})), "sess_1/run_2/call_3").await.unwrap();
    let structured = result.structured.unwrap();
    assert_eq!(structured["meta"][IDEMPOTENCY_KEY_META], "sess_1/run_2/call_3");
    assert_eq!(structured["arguments"], json!({"n": 1}));
    assert_eq!(result.text, "recorded");

    let err = client.call_tool("nope", serde_json::Map::new(), "k").await.unwrap_err();
    assert!(matches!(&err, Error::Rpc { code: -32602, message, .. } if message.contains("nope")), "{err:?}");
    client.close().await;
}

#[tokio::test]
async fn a_call_lost_in_flight_reached_the_server_once_and_is_not_replayed() {
    let Some((config, _dir)) = raw_config("a_call_lost_in_flight_reached_the_server_once_and_is_not_replayed") else {
        return;
    };
    let client = McpClient::connect(config).await.unwrap();
    let pid = client.server_pid().unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.call_tool("hang", serde_json::Map::new(), "key-hang").await })
    };
    wait_stderr(&client, "CALL hang key-hang").await;
    sigkill(pid);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    assert!(err.is_outcome_unknown());

    // The next call restarts the server; the lost call was not sent again.
    let result = client.call_tool("record", serde_json::Map::new(), "key-next").await.unwrap();
    assert_eq!(result.structured.unwrap()["meta"][IDEMPOTENCY_KEY_META], "key-next");
    let tail = client.stderr_tail();
    assert_eq!(tail.matches("CALL hang key-hang").count(), 1, "{tail}");
    assert_eq!(tail.matches("raw server up").count(), 2, "{tail}");
    client.close().await;
}

#[tokio::test]
async fn a_server_that_crashes_during_a_call_is_restarted_with_its_stderr_reported() {
    let Some((config, _dir)) = raw_config("a_server_that_crashes_during_a_call_is_restarted_with_its_stderr_reported")
    else {
        return;
    };
    let client = McpClient::connect(config).await.unwrap();
    for round in 0..3 {
        let pid = client.server_pid().unwrap();
        let err = client.call_tool("crash", serde_json::Map::new(), &format!("crash-{round}")).await.unwrap_err();
        assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("exited with status 7") && text.contains("crashing on purpose"), "{text}");
        wait_dead(pid).await;
    }
    // Restarts back off (bounded) but keep working.
    let result = client.call_tool("record", serde_json::Map::new(), "after").await.unwrap();
    assert_eq!(result.text, "recorded");
    assert_eq!(client.stderr_tail().matches("CALL crash").count(), 3);
    client.close().await;
}

#[tokio::test]
async fn a_server_that_dies_at_startup_reports_its_exit_and_stderr() {
    if server_path("STEAD_MCP_EVERYTHING", "a_server_that_dies_at_startup_reports_its_exit_and_stderr").is_none() {
        return;
    }
    let transport = Transport::stdio("node", ["-e", "console.error('cannot open database: boom'); process.exit(3)"]);
    let err = McpClient::connect(config("dies", transport)).await.expect_err("server exits");
    assert!(matches!(err, Error::ServerExited(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("`dies`") && text.contains("status 3") && text.contains("boom"), "{text}");
}

#[tokio::test]
async fn a_missing_command_is_a_connect_error() {
    let transport = Transport::stdio("/nonexistent/stead-mcp-server", Vec::<String>::new());
    let err = McpClient::connect(config("missing", transport)).await.expect_err("cannot start");
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(err.to_string().contains("cannot start"), "{err}");
}

#[tokio::test]
async fn a_silent_server_times_out_connecting() {
    // `sleep` never answers the handshake; the connect timeout bounds the wait.
    let mut config = config("silent", Transport::stdio("sleep", ["600"]));
    config.connect_timeout = Duration::from_millis(300);
    let err = McpClient::connect(config).await.expect_err("times out");
    assert!(matches!(err, Error::Timeout { operation: "connect", .. }), "{err:?}");
    assert!(!err.is_outcome_unknown());
}
