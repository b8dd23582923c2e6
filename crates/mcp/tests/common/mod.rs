//! Helpers shared by the integration tests: finding the reference servers installed by
//! `.ci/mcp-servers.sh`, starting HTTP servers on free loopback ports, and killing processes.
#![allow(dead_code)]

pub mod fake;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use stead_mcp::{McpClient, ServerConfig, Transport};

/// The path in env var `var`, or `None` after printing why the test is skipped (a panic
/// instead when `STEAD_REQUIRE_ALL_TESTS=1`).
pub fn server_path(var: &str, test: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            // `scripts/test` (the README's test command) sets this: there, a missing server is
            // a broken setup, not a reason to pass.
            if std::env::var_os("STEAD_REQUIRE_ALL_TESTS").is_some_and(|v| v == "1") {
                panic!(
                    "{test}: {var} is not set but STEAD_REQUIRE_ALL_TESTS=1 forbids skipping; run \
                     `eval \"$(bash .ci/mcp-servers.sh)\"` (scripts/test does)"
                );
            }
            // Straight to stderr: libtest captures `eprintln!` of passing tests, and a skip
            // must be visible.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {var} is not set; run `eval \"$(bash .ci/mcp-servers.sh)\"` to install the \
                 reference MCP servers (scripts/test always does)"
            );
            None
        }
    }
}

pub fn config(name: &str, transport: Transport) -> ServerConfig {
    let mut config = ServerConfig::new(name, transport);
    // Generous: CI machines are small and node/python start slowly under load.
    config.connect_timeout = Duration::from_secs(60);
    config.call_timeout = Duration::from_secs(60);
    config
}

pub fn args(items: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match items {
        serde_json::Value::Object(map) => map,
        other => panic!("arguments must be an object, got {other}"),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process started by a test; killed when dropped.
pub struct HttpServer {
    pub child: tokio::process::Child,
    pub url: String,
}

impl HttpServer {
    /// Starts `command`, which must listen on `port`, and waits until the port accepts.
    pub async fn start(mut command: tokio::process::Command, port: u16, path: &str) -> Self {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start HTTP MCP server");
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return HttpServer { child, url: format!("http://127.0.0.1:{port}{path}") };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("HTTP MCP server exited before listening: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("HTTP MCP server did not listen on port {port}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }
}

pub fn sigkill(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
}

/// Waits until `pid` is dead for good: gone, or a zombie whose threads have all exited (a
/// multi-threaded process shows `Z` as soon as its main thread exits, while other threads
/// still hold its pipes open and `waitpid` would not yet report it).
pub async fn wait_dead(pid: u32) {
    for _ in 0..1000 {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return };
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default()
        };
        let state = field("State:");
        let threads = field("Threads:");
        if (state.starts_with('Z') || state.starts_with('X')) && threads == "1" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} did not die");
}

/// Waits until the server's stderr contains `needle`.
pub async fn wait_stderr(client: &McpClient, needle: &str) {
    for _ in 0..1000 {
        if client.stderr_tail().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("stderr never contained {needle:?}; tail:\n{}", client.stderr_tail());
}
