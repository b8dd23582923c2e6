//! The crate's error type. Messages name the server and say what happened; they never carry
//! HTTP header values or environment values (`redact::Secrets` removes them from every error
//! before it leaves the crate).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `ServerConfig` cannot work (bad header name, empty command, …).
    #[error("invalid MCP server config: {0}")]
    Config(String),
    /// Could not start, reach or initialize the server. Nothing was executed.
    #[error("{0}")]
    Connect(String),
    /// The server answered something unusable (or an SDK-level protocol failure).
    #[error("{0}")]
    Protocol(String),
    /// The server answered the request with a JSON-RPC error (unknown tool, invalid
    /// arguments, …): it refused the request, it did not run the tool.
    #[error("MCP server `{server}` returned error {code}: {message}")]
    Rpc { server: String, code: i32, message: String },
    /// The operation did not finish in time. For `tools/call` the server may still be running
    /// it (a cancellation notice was sent): the outcome is unknown.
    #[error("MCP server `{server}`: {operation} timed out after {after:?}")]
    Timeout { server: String, operation: &'static str, after: Duration },
    /// The stdio server exited (or would not stay up); the message ends with the tail of its
    /// stderr.
    #[error("{0}")]
    ServerExited(String),
    /// The connection closed while the request was in flight. For `tools/call` the outcome is
    /// unknown and the call was not replayed.
    #[error("{0}")]
    ConnectionLost(String),
    /// [`McpClient::close`](crate::McpClient::close) was called.
    #[error("MCP client for `{0}` is closed")]
    Closed(String),
}

impl Error {
    /// The same error with `f` applied to each of its texts (not the server's name).
    pub(crate) fn map_text(self, f: impl Fn(String) -> String) -> Self {
        match self {
            Error::Config(t) => Error::Config(f(t)),
            Error::Connect(t) => Error::Connect(f(t)),
            Error::Protocol(t) => Error::Protocol(f(t)),
            Error::Rpc { server, code, message } => Error::Rpc { server, code, message: f(message) },
            Error::ServerExited(t) => Error::ServerExited(f(t)),
            Error::ConnectionLost(t) => Error::ConnectionLost(f(t)),
            other @ (Error::Timeout { .. } | Error::Closed(_)) => other,
        }
    }

    /// Whether a `tools/call` that failed with this error may have run on the server: the
    /// caller must not assume it did not (retry only idempotent tools, with the same key).
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            Error::ConnectionLost(_) => true,
            Error::Timeout { operation, .. } => *operation == crate::client::CALL_TOOL,
            _ => false,
        }
    }
}
