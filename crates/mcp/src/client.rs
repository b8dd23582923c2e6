//! [`McpClient`]: one logical connection to one MCP server, shared by every task that uses it.
//!
//! Owns the connection lifecycle: the first connect, noticing a dead connection, reconnecting
//! (with backoff) before a request that has not been sent yet, and classifying failures of
//! requests that were sent. The rule that shapes this module: a `tools/call` that may have
//! reached the server is never sent again by us.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::ServiceError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, Implementation, JsonObject,
    ProtocolVersion, RequestMetaObject,
};
use rmcp::service::{ClientInitializeError, ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpError;
use tokio_util::sync::CancellationToken;

use crate::redact::Secrets;
use crate::stdio::{self, ServerProcess, StderrTail, describe_exit};
use crate::{CallResult, Error, IDEMPOTENCY_KEY_META, McpTool, ServerConfig, Transport, convert, http};

pub(crate) const CALL_TOOL: &str = "tools/call";
const LIST_TOOLS: &str = "tools/list";
const CONNECT: &str = "connect";

/// Restart backoff: the first restart after a success is immediate, then 250 ms, doubling,
/// capped — a server that crashes on every start costs one attempt per 30 s at worst.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a stopping server gets at each step (stdin closed, SIGTERM, SIGKILL).
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long we wait, on an error path, for a dying server's exit status and last stderr.
const LAST_WORDS: Duration = Duration::from_millis(500);
/// How much stderr goes into an error message (all of the tail is in `stderr_tail`).
const STDERR_IN_MESSAGE: usize = 2048;

type Service = RunningService<RoleClient, ClientConfig>;

/// A client for one MCP server. Cheap to clone; clones share the connection, and concurrent
/// requests are multiplexed on it.
#[derive(Clone)]
pub struct McpClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    /// The config's credentials, redacted from everything this client returns or logs.
    secrets: Arc<Secrets>,
    stderr: Arc<StderrTail>,
    /// The connection in use; replaced when it dies. Read without awaiting on the hot path.
    current: Mutex<Option<Arc<Conn>>>,
    /// Held while (re)connecting, so concurrent requests start one server, not several.
    connect_gate: tokio::sync::Mutex<()>,
    /// Connections opened since a request last succeeded: drives the backoff.
    opened_since_success: AtomicU32,
    closed: CancellationToken,
}

struct Conn {
    service: Service,
    process: Option<ServerProcess>,
    /// Set when a request saw this connection fail.
    broken: AtomicBool,
}

impl Conn {
    fn is_alive(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
            && !self.service.is_closed()
            && !self.service.peer().is_transport_closed()
            && self.process.as_ref().is_none_or(|p| p.exit_status().is_none())
    }
}

/// What a failed request means for the caller.
enum Failure {
    /// The request never reached the server: it is safe to reconnect and send it.
    NotDelivered(Error),
    /// Anything else: the error says whether a call may have run (`is_outcome_unknown`).
    Final(Error),
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("name", &self.inner.config.name)
            .field("transport", &self.inner.config.transport)
            .finish_non_exhaustive()
    }
}

impl McpClient {
    /// Starts (stdio) or reaches (HTTP) the server and completes the MCP handshake, within
    /// `connect_timeout`.
    pub async fn connect(config: ServerConfig) -> Result<Self, Error> {
        let secrets = Arc::new(Secrets::of(&config));
        validate(&config).map_err(|e| secrets.error(e))?;
        let inner = Arc::new(Inner {
            config,
            secrets,
            stderr: Arc::default(),
            current: Mutex::new(None),
            connect_gate: tokio::sync::Mutex::new(()),
            opened_since_success: AtomicU32::new(0),
            closed: CancellationToken::new(),
        });
        let client = McpClient { inner };
        client.connection().await.map_err(|e| client.inner.secrets.error(e))?;
        Ok(client)
    }

    /// Every tool the server offers (all pages), with the config's credentials redacted from
    /// names, descriptions and schemas. Read-only, so a connection lost mid-request is retried
    /// once on a fresh connection.
    pub async fn list_tools(&self) -> Result<Vec<McpTool>, Error> {
        let secrets = &self.inner.secrets;
        match self.list_tools_unredacted().await {
            Ok(tools) => Ok(tools.into_iter().map(|t| secrets.tool(t)).collect()),
            Err(e) => Err(secrets.error(e)),
        }
    }

    async fn list_tools_unredacted(&self) -> Result<Vec<McpTool>, Error> {
        let timeout = self.inner.config.call_timeout;
        let mut retried = false;
        loop {
            let conn = self.connection().await?;
            let peer = conn.service.peer().clone();
            let error = match tokio::time::timeout(timeout, peer.list_all_tools()).await {
                Err(_) => return Err(self.timeout(LIST_TOOLS, timeout)),
                Ok(Ok(tools)) => {
                    self.succeeded();
                    return Ok(tools.into_iter().map(convert::tool).collect());
                }
                Ok(Err(error)) => error,
            };
            match self.classify(&conn, error, LIST_TOOLS, LIST_TOOLS).await {
                Failure::NotDelivered(_) if !retried => retried = true,
                Failure::Final(Error::ConnectionLost(_)) if !retried => retried = true,
                Failure::NotDelivered(e) | Failure::Final(e) => return Err(e),
            }
        }
    }

    /// Calls tool `name` once, sending `idempotency_key` in the request's `_meta` under
    /// [`IDEMPOTENCY_KEY_META`]. A call is re-sent only if it provably never left (the write to
    /// a dead stdio server failed, or the HTTP connection could not be opened); if the
    /// connection closes while it is in flight the result is [`Error::ConnectionLost`]. The
    /// config's credentials are redacted from the result (text and structured content).
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        idempotency_key: &str,
    ) -> Result<CallResult, Error> {
        let secrets = &self.inner.secrets;
        match self.call_tool_unredacted(name, arguments, idempotency_key).await {
            Ok(mut result) => {
                result.text = secrets.redact(&result.text);
                if let Some(structured) = &mut result.structured {
                    secrets.redact_json(structured);
                }
                Ok(result)
            }
            Err(e) => Err(secrets.error(e)),
        }
    }

    async fn call_tool_unredacted(
        &self,
        name: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        idempotency_key: &str,
    ) -> Result<CallResult, Error> {
        let timeout = self.inner.config.call_timeout;
        let mut meta = JsonObject::new();
        meta.insert(IDEMPOTENCY_KEY_META.to_owned(), idempotency_key.into());
        let mut params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        params.meta = Some(RequestMetaObject::from(meta));
        let mut resent = false;
        loop {
            let conn = self.connection().await?;
            let peer = conn.service.peer().clone();
            // On timeout the request future is dropped, which sends `notifications/cancelled`.
            let error = match tokio::time::timeout(timeout, peer.call_tool_once(params.clone())).await {
                Err(_) => return Err(self.timeout(CALL_TOOL, timeout)),
                Ok(Ok(CallToolResponse::Complete(result))) => {
                    self.succeeded();
                    return Ok(convert::call_result(result));
                }
                Ok(Ok(_)) => {
                    self.succeeded();
                    return Err(Error::Protocol(format!(
                        "MCP server `{}`: `{name}` asked for client input or started a task, which \
                         Stead does not support",
                        self.inner.config.name
                    )));
                }
                Ok(Err(error)) => error,
            };
            match self.classify(&conn, error, CALL_TOOL, &format!("{CALL_TOOL} `{name}`")).await {
                Failure::NotDelivered(_) if !resent => resent = true,
                Failure::NotDelivered(e) | Failure::Final(e) => return Err(e),
            }
        }
    }

    /// The last ~8 KiB the stdio server (any of its incarnations) wrote to stderr, with the
    /// config's credentials redacted. Empty for HTTP.
    pub fn stderr_tail(&self) -> String {
        self.inner.secrets.redact(&self.inner.stderr.text())
    }

    /// The pid of the running stdio server, if any. For diagnostics and tests.
    pub fn server_pid(&self) -> Option<u32> {
        self.current()?.process.as_ref()?.pid()
    }

    /// The MCP protocol version negotiated on the current connection, e.g. `2025-11-25`.
    pub fn protocol_version(&self) -> Option<String> {
        let info = self.current()?.service.peer().peer_info()?;
        Some(info.protocol_version.to_string())
    }

    /// Closes the connection and stops a stdio server (stdin closed, then SIGTERM, then
    /// SIGKILL). Requests in flight fail with `ConnectionLost`; later ones with `Closed`.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        let _gate = self.inner.connect_gate.lock().await;
        let conn = self.inner.current.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(conn) = conn {
            shutdown(conn).await;
        }
    }

    fn current(&self) -> Option<Arc<Conn>> {
        self.inner.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn current_alive(&self) -> Option<Arc<Conn>> {
        self.current().filter(|c| c.is_alive())
    }

    /// The live connection, reconnecting first if the last one died.
    async fn connection(&self) -> Result<Arc<Conn>, Error> {
        let inner = &self.inner;
        if inner.closed.is_cancelled() {
            return Err(Error::Closed(inner.config.name.clone()));
        }
        if let Some(conn) = self.current_alive() {
            return Ok(conn);
        }
        let _gate = tokio::select! {
            gate = inner.connect_gate.lock() => gate,
            () = inner.closed.cancelled() => return Err(Error::Closed(inner.config.name.clone())),
        };
        if inner.closed.is_cancelled() {
            return Err(Error::Closed(inner.config.name.clone()));
        }
        // Another request may have reconnected while we waited for the gate.
        if let Some(conn) = self.current_alive() {
            return Ok(conn);
        }
        let old = inner.current.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(old) = old {
            let status = old.process.as_ref().and_then(ServerProcess::exit_status);
            tracing::warn!(
                server = %inner.config.name,
                "MCP server connection lost ({}); reconnecting",
                match &old.process {
                    Some(_) => format!("server {}", describe_exit(status)),
                    None => "HTTP".to_owned(),
                }
            );
            // In-flight requests keep their own reference; dropping ours stops the server once
            // they are done (or now, if there are none).
            drop(old);
        }
        let delay = backoff(inner.opened_since_success.fetch_add(1, Ordering::AcqRel));
        if !delay.is_zero() {
            tracing::info!(server = %inner.config.name, ?delay, "waiting before reconnecting to MCP server");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = inner.closed.cancelled() => return Err(Error::Closed(inner.config.name.clone())),
            }
        }
        let conn = tokio::select! {
            conn = self.open() => Arc::new(conn?),
            () = inner.closed.cancelled() => return Err(Error::Closed(inner.config.name.clone())),
        };
        *inner.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// One connection attempt: start/reach the server and run the handshake.
    async fn open(&self) -> Result<Conn, Error> {
        let config = &self.inner.config;
        let timeout = config.connect_timeout;
        match &config.transport {
            Transport::Stdio { command, args, env, cwd } => {
                let stderr = stdio::StderrSink { tail: self.inner.stderr.clone(), secrets: self.inner.secrets.clone() };
                let spawned = stdio::spawn(&config.name, command, args, env, cwd.as_deref(), stderr).map_err(|e| {
                    Error::Connect(format!("MCP server `{}`: cannot start `{command}`: {e}", config.name))
                })?;
                let process = spawned.process;
                let transport = (spawned.stdout, spawned.stdin);
                match tokio::time::timeout(timeout, client_info().serve_with_lifecycle(transport, lifecycle())).await {
                    Ok(Ok(service)) => {
                        tracing::info!(server = %config.name, pid = process.pid(), "MCP server started");
                        Ok(Conn { service, process: Some(process), broken: AtomicBool::new(false) })
                    }
                    Ok(Err(error)) => {
                        let status = process.wait_exit(LAST_WORDS).await;
                        if status.is_some() || matches!(error, ClientInitializeError::ConnectionClosed(_)) {
                            process.wait_stderr(LAST_WORDS).await;
                            Err(Error::ServerExited(format!(
                                "MCP server `{}` {} during startup{}",
                                config.name,
                                describe_exit(status),
                                self.stderr_suffix()
                            )))
                        } else {
                            Err(init_error(&config.name, &http::detail(&error, &self.inner.secrets)))
                        }
                    }
                    Err(_) => Err(self.timeout(CONNECT, timeout)),
                }
            }
            Transport::Http { url, headers } => {
                let target = http::Target {
                    server: &config.name,
                    url,
                    headers,
                    guard: config.url_guard.as_ref(),
                    connect_timeout: timeout,
                };
                let transport = http::transport(&target, &self.inner.secrets)?;
                match tokio::time::timeout(timeout, client_info().serve_with_lifecycle(transport, lifecycle())).await {
                    Ok(Ok(service)) => {
                        tracing::info!(server = %config.name, url = %http::redact_url(url), "MCP server connected");
                        Ok(Conn { service, process: None, broken: AtomicBool::new(false) })
                    }
                    Ok(Err(error)) => Err(init_error(&config.name, &http::detail(&error, &self.inner.secrets))),
                    Err(_) => Err(self.timeout(CONNECT, timeout)),
                }
            }
        }
    }

    /// Sorts a request failure into "never delivered" and "final", and words the error.
    async fn classify(&self, conn: &Conn, error: ServiceError, operation: &'static str, what: &str) -> Failure {
        let name = &self.inner.config.name;
        match error {
            ServiceError::McpError(data) => {
                self.succeeded();
                Failure::Final(Error::Rpc {
                    server: name.clone(),
                    code: data.code.0,
                    message: data.message.into_owned(),
                })
            }
            ServiceError::Timeout { timeout } => Failure::Final(self.timeout(operation, timeout)),
            ServiceError::UnexpectedResponse => {
                Failure::Final(Error::Protocol(format!("MCP server `{name}`: unexpected response to {operation}")))
            }
            ServiceError::TransportSend(send) => {
                conn.broken.store(true, Ordering::Release);
                match &conn.process {
                    // Writing to the server's stdin failed: it is gone and cannot have read the
                    // request (a request is acted on only once its whole line is read).
                    Some(process) => Failure::NotDelivered(self.exited(process, what, false).await),
                    None => {
                        let text = http::detail(&send, &self.inner.secrets);
                        match send.error.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
                            // The server answered 3xx: it did not run anything, and we go nowhere else.
                            Some(StreamableHttpError::Client(e)) if http::is_redirect(e) => {
                                Failure::Final(Error::Connect(format!("MCP server `{name}`: {text}")))
                            }
                            Some(StreamableHttpError::Client(e)) if e.is_connect() => Failure::NotDelivered(
                                Error::Connect(format!("MCP server `{name}`: cannot connect: {text}")),
                            ),
                            Some(
                                StreamableHttpError::AuthRequired(_)
                                | StreamableHttpError::InsufficientScope(_)
                                | StreamableHttpError::ReservedHeaderConflict(_),
                            ) => Failure::Final(Error::Connect(format!(
                                "MCP server `{name}` refused {operation}: {text}"
                            ))),
                            _ => Failure::Final(Error::ConnectionLost(format!(
                                "MCP server `{name}`: connection lost during {what}: {text}{}",
                                not_retried(operation)
                            ))),
                        }
                    }
                }
            }
            ServiceError::TransportClosed => {
                conn.broken.store(true, Ordering::Release);
                match &conn.process {
                    Some(process) => Failure::Final(self.exited(process, what, true).await),
                    None => Failure::Final(Error::ConnectionLost(format!(
                        "MCP server `{name}`: connection closed during {what}{}",
                        not_retried(operation)
                    ))),
                }
            }
            // The request was cancelled under us; the connection itself may be fine.
            ServiceError::Cancelled { reason } => Failure::Final(Error::ConnectionLost(format!(
                "MCP server `{name}`: {what} was cancelled ({}){}",
                reason.as_deref().unwrap_or("no reason given"),
                not_retried(operation)
            ))),
            other => Failure::Final(Error::Protocol(format!(
                "MCP server `{name}`: {operation} failed: {}",
                http::detail(&other, &self.inner.secrets)
            ))),
        }
    }

    /// The error for a stdio server that died: `ConnectionLost` if the request had been sent,
    /// `ServerExited` if it could not be.
    async fn exited(&self, process: &ServerProcess, what: &str, sent: bool) -> Error {
        let status = process.wait_exit(LAST_WORDS).await;
        process.wait_stderr(LAST_WORDS).await;
        let name = &self.inner.config.name;
        let how = describe_exit(status);
        let stderr = self.stderr_suffix();
        if sent {
            Error::ConnectionLost(format!("MCP server `{name}` {how} during {what}{}{stderr}", not_retried(what)))
        } else {
            Error::ServerExited(format!("MCP server `{name}` {how} before {what} could be sent{stderr}"))
        }
    }

    fn timeout(&self, operation: &'static str, after: Duration) -> Error {
        Error::Timeout { server: self.inner.config.name.clone(), operation, after }
    }

    /// The server answered: the next restart, if one is needed, may be immediate.
    fn succeeded(&self) {
        self.inner.opened_since_success.store(1, Ordering::Release);
    }

    fn stderr_suffix(&self) -> String {
        // Redacted before it is cut, so the cut cannot leave part of a secret.
        let tail = self.stderr_tail();
        let tail = tail.trim_end();
        if tail.is_empty() {
            return String::new();
        }
        let mut start = tail.len().saturating_sub(STDERR_IN_MESSAGE);
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        format!("; stderr tail:\n{}", &tail[start..])
    }
}

async fn shutdown(conn: Arc<Conn>) {
    match Arc::try_unwrap(conn) {
        // Nothing in flight: close the session properly (HTTP sends its DELETE).
        Ok(mut conn) => {
            let _ = conn.service.close_with_timeout(STOP_GRACE).await;
            if let Some(process) = &conn.process {
                process.shutdown(STOP_GRACE).await;
            }
        }
        Err(conn) => {
            conn.service.cancellation_token().cancel();
            if let Some(process) = &conn.process {
                process.shutdown(STOP_GRACE).await;
            }
        }
    }
}

fn validate(config: &ServerConfig) -> Result<(), Error> {
    let name = &config.name;
    match &config.transport {
        Transport::Stdio { command, .. } if command.trim().is_empty() => {
            Err(Error::Config(format!("MCP server `{name}`: empty command")))
        }
        Transport::Http { url, .. } => match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
            _ => Err(Error::Config(format!("MCP server `{name}`: `{}` is not an http(s) URL", http::redact_url(url)))),
        },
        _ => Ok(()),
    }
}

fn client_info() -> ClientConfig {
    ClientConfig::new(ClientCapabilities::default(), Implementation::new("stead", env!("CARGO_PKG_VERSION")))
}

/// Probe with `server/discover` (2026-07-28, sessionless) and fall back to the `initialize`
/// handshake at the newest version that has one, which is what servers before 2026-07-28 speak.
fn lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
    }
}

/// For a lost `tools/call`: what the caller needs to know.
fn not_retried(operation: &str) -> &'static str {
    if operation.starts_with(CALL_TOOL) { "; the call was not retried and may or may not have run" } else { "" }
}

fn init_error(server: &str, detail: &str) -> Error {
    Error::Connect(format!("MCP server `{server}`: handshake failed: {detail}"))
}

/// Delay before the next connection attempt, given how many were opened since a request last
/// succeeded.
fn backoff(opened_since_success: u32) -> Duration {
    match opened_since_success {
        0 | 1 => Duration::ZERO,
        n => BACKOFF_BASE.saturating_mul(1 << (n - 2).min(16)).min(BACKOFF_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_free_once_then_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::ZERO); // first connect
        assert_eq!(backoff(1), Duration::ZERO); // first restart after a success
        assert_eq!(backoff(2), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_millis(500));
        assert_eq!(backoff(6), Duration::from_secs(4));
        assert_eq!(backoff(20), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn configs_are_validated_without_echoing_secrets() {
        let bad = ServerConfig::new("x", Transport::stdio(" ", Vec::<String>::new()));
        assert!(matches!(validate(&bad), Err(Error::Config(_))));
        let bad = ServerConfig::new("x", Transport::http("ftp://user:secret@host/"));
        let err = validate(&bad).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        let ok = ServerConfig::new("x", Transport::http("http://127.0.0.1:1/mcp"));
        assert!(validate(&ok).is_ok());
    }

    #[test]
    fn debug_hides_env_and_header_values() {
        let mut t = Transport::stdio("srv", ["--flag"]);
        if let Transport::Stdio { env, .. } = &mut t {
            env.insert("API_KEY".into(), "hunter2".into());
        }
        let shown = format!("{t:?}");
        assert!(shown.contains("API_KEY") && !shown.contains("hunter2"), "{shown}");
        let mut t = Transport::http("http://h/mcp?token=abc123");
        if let Transport::Http { headers, .. } = &mut t {
            headers.insert("Authorization".into(), "Bearer hunter2".into());
        }
        let shown = format!("{t:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("abc123"), "{shown}");
    }
}
