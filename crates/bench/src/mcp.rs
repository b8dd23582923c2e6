//! Figure 7: what Stead adds to an MCP tool call. The same stdio server
//! (`@modelcontextprotocol/server-everything`, its `echo`) is called directly through
//! `stead_mcp::McpClient`, and through a run of Stead, where a call is timed from the commit
//! of its `tool_call_started` to the commit of its `tool_call_completed`, as seen on the
//! store's commit stream.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use stead_core::event::EventBody;
use stead_core::run::RunStatus;
use stead_engine::ToolRegistry;
use stead_mcp::{McpClient, ServerConfig, Transport};
use stead_store::Store;
use stead_store_sqlite::Durability;
use tokio::sync::broadcast::error::RecvError;

use crate::harness::Harness;

/// Where `.ci/mcp-servers.sh` says server-everything's entry point is.
pub const VAR: &str = "STEAD_MCP_EVERYTHING";

/// Calls made before any is timed (direct), and the warm-up run's length (through Stead).
pub const WARMUP: usize = 20;

/// Direct calls: each call's latency, after a warm-up.
pub async fn direct(entry: &str, calls: usize) -> anyhow::Result<Vec<Duration>> {
    let config = ServerConfig::new("everything", Transport::stdio("node", [entry, "stdio"]));
    let client = McpClient::connect(config).await.context("connecting to server-everything")?;
    let tools = client.list_tools().await?;
    if !tools.iter().any(|t| t.name == "echo") {
        bail!("server-everything lists no `echo`");
    }
    let mut args = serde_json::Map::new();
    args.insert("message".into(), "x".into());
    let mut times = Vec::with_capacity(calls);
    for i in 0..WARMUP + calls {
        let key = format!("bench-{i}");
        let t = Instant::now();
        let r = client.call_tool("echo", args.clone(), &key).await?;
        let d = t.elapsed();
        if r.is_error || r.text != "Echo: x" {
            bail!("server-everything's echo answered {:?} (error: {})", r.text, r.is_error);
        }
        if i >= WARMUP {
            times.push(d);
        }
    }
    client.close().await;
    Ok(times)
}

fn spec(entry: &str, steps: usize) -> anyhow::Result<String> {
    Ok(format!(
        "name: mcp-bench\nmodel: {{provider: scripted, name: bench}}\n\
         mcp_servers:\n  - {{name: everything, command: node, args: [{}, stdio]}}\n\
         limits: {{max_steps: {}, max_wall_time_secs: 3600}}\n\
         context: {{max_messages: {}, max_tokens: 10000000}}\n",
        serde_json::to_string(entry)?,
        steps + 10,
        (2 * steps + 50).min(10_000),
    ))
}

/// Through Stead at `durability`: started → completed commit of each call of a run of
/// `calls` calls, after a warm-up run (which starts the server).
pub async fn through_stead(
    base: &Path,
    entry: &str,
    calls: usize,
    durability: Durability,
) -> anyhow::Result<Vec<Duration>> {
    let h = Harness::start_with(base, false, ToolRegistry::with_builtins(), durability)?;
    let agent = h.agent(&spec(entry, calls.max(WARMUP))?).await?;
    let session = h.session(&agent).await?;
    let _ = run(&h, &session, WARMUP).await?;
    let times = run(&h, &session, calls).await?;
    h.close().await;
    Ok(times)
}

async fn run(h: &Harness, session: &stead_core::ids::SessionId, calls: usize) -> anyhow::Result<Vec<Duration>> {
    let mut commits = h.store.subscribe();
    let run = h.create_run(session, &format!(r#"repeat {calls} everything__echo {{"message":"x"}}"#)).await?;
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut times = Vec::with_capacity(calls);
    'watch: loop {
        match tokio::time::timeout(Duration::from_secs(120), commits.recv()).await {
            Err(_) => bail!("no commit for 120 s after {} MCP calls", times.len()),
            Ok(Err(RecvError::Lagged(n))) => bail!("the bench fell {n} commits behind the commit stream"),
            Ok(Err(RecvError::Closed)) => bail!("the commit stream closed"),
            Ok(Ok(c)) => {
                let now = Instant::now();
                for e in c.events.iter().filter(|e| e.run_id == Some(run.id)) {
                    match &e.body {
                        EventBody::ToolCallStarted { call_id, .. } => {
                            started.insert(call_id.clone(), now);
                        }
                        EventBody::ToolCallCompleted { call_id, output, is_error, .. } => {
                            if *is_error {
                                bail!("the MCP call failed: {output}");
                            }
                            let at = started.remove(call_id).context("a result without its start")?;
                            times.push(now - at);
                        }
                        EventBody::RunCompleted { .. }
                        | EventBody::RunFailed { .. }
                        | EventBody::RunCancelled { .. } => break 'watch,
                        _ => {}
                    }
                }
            }
        }
    }
    h.settle(&run.id, RunStatus::Completed).await?;
    if times.len() != calls {
        bail!("expected {calls} MCP calls, saw {}", times.len());
    }
    Ok(times)
}
