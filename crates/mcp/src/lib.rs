//! `stead-mcp`: Stead's client for MCP servers (stdio and streamable HTTP).
//!
//! This crate owns everything Stead knows about the Model Context Protocol wire: it wraps the
//! official Rust SDK (`rmcp`, pinned exactly) behind a small API of our own — [`McpClient`],
//! [`ServerConfig`], [`McpTool`], [`CallResult`], [`Error`] — so that nothing of `rmcp` leaks
//! out and an SDK major upgrade touches only this crate. The engine adapts [`McpClient`] to its
//! `Tool` trait.
//!
//! What it promises:
//! - **No silent replays.** A `tools/call` whose connection closed while it was in flight is
//!   never re-sent: it fails with [`Error::ConnectionLost`] and the caller decides (the engine
//!   re-runs it only for idempotent tools, with the same idempotency key). A call that was never
//!   sent because the server was already down reconnects first. [`Error::is_outcome_unknown`]
//!   says which errors leave the outcome unknown.
//! - **Stdio servers are restarted** on the next request after they die, with a bounded
//!   exponential backoff so a crashing server cannot spin.
//! - **Everything is bounded**: connecting by `connect_timeout`, each request by `call_timeout`.
//! - **Credentials stay out of what comes back**: HTTP header values, environment values and
//!   the URL's credentials (values of 8 bytes or more) are replaced by `[redacted]` in every
//!   error, JSON-RPC error message, stderr tail and log line, tool listing and call result —
//!   also when the server echoes them — and never appear in `Debug` output.
//! - **Tenant-chosen URLs stay behind the SSRF guard** ([`ServerConfig::url_guard`]), and no
//!   HTTP server is followed through a redirect.
//!
//! Modules: `client` (connections, reconnects, requests), `stdio` (child processes and their
//! stderr), `http` (the streamable HTTP transport), `convert` (SDK types to ours), `redact`
//! (secrets out of everything returned), `error`.

mod client;
mod convert;
mod error;
mod http;
mod redact;
mod stdio;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use client::McpClient;
pub use error::Error;

/// The `_meta` key under which [`McpClient::call_tool`] sends the idempotency key.
pub const IDEMPOTENCY_KEY_META: &str = "io.stead/idempotency_key";

/// How to reach an MCP server.
#[derive(Clone, PartialEq, Eq)]
pub enum Transport {
    /// Start `command` and speak JSON-RPC over its stdin/stdout.
    ///
    /// The child gets a minimal environment — `PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`,
    /// `TERM`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR` from Stead's own — plus `env`. Nothing else is
    /// inherited, so Stead's own credentials never reach a third-party server.
    Stdio { command: String, args: Vec<String>, env: BTreeMap<String, String>, cwd: Option<PathBuf> },
    /// Streamable HTTP at `url`, sending `headers` (e.g. `Authorization`) with every request.
    Http { url: String, headers: BTreeMap<String, String> },
}

impl Transport {
    /// A stdio transport with no extra environment and the current directory.
    pub fn stdio(command: impl Into<String>, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Transport::Stdio {
            command: command.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
        }
    }

    /// A streamable HTTP transport with no extra headers.
    pub fn http(url: impl Into<String>) -> Self {
        Transport::Http { url: url.into(), headers: BTreeMap::new() }
    }
}

/// Values of `env` and `headers` may hold credentials: `Debug` shows only their names.
impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Stdio { command, args, env, cwd } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &env.keys().collect::<Vec<_>>())
                .field("cwd", cwd)
                .finish(),
            Transport::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", &http::redact_url(url))
                .field("headers", &headers.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// One MCP server as Stead connects to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Names the server in logs and error messages.
    pub name: String,
    pub transport: Transport,
    /// Bound on starting/reaching the server and the MCP handshake.
    pub connect_timeout: Duration,
    /// Bound on each request (`tools/list` as a whole, each `tools/call`).
    pub call_timeout: Duration,
    /// For an HTTP URL a tenant chose: the SSRF guard its host must pass before anything
    /// connects — IP literals directly, host names on every address they resolve to, on every
    /// connection. `None` for URLs the operator declared (trusted; redirects are still never
    /// followed). Ignored for stdio.
    pub url_guard: Option<Arc<stead_tools_http::Guard>>,
}

impl ServerConfig {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

    /// A config with the default timeouts.
    pub fn new(name: impl Into<String>, transport: Transport) -> Self {
        Self {
            name: name.into(),
            transport,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            url_guard: None,
        }
    }
}

/// A tool as the server lists it. The hints are the server's claims, not guarantees.
#[derive(Clone, Debug, PartialEq)]
pub struct McpTool {
    pub name: String,
    /// Empty when the server gave none.
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    pub input_schema: serde_json::Value,
    pub read_only_hint: Option<bool>,
    pub idempotent_hint: Option<bool>,
    pub destructive_hint: Option<bool>,
}

/// What a `tools/call` returned.
#[derive(Clone, Debug, PartialEq)]
pub struct CallResult {
    /// Text content blocks joined with newlines; other content is summarized in brackets, e.g.
    /// `[image: image/png, 1234 bytes]`.
    pub text: String,
    /// The result's `structuredContent`, when present.
    pub structured: Option<serde_json::Value>,
    /// The result's `isError`: the tool ran and reports failure.
    pub is_error: bool,
}
