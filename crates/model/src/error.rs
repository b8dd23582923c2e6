//! The one error type of model calls: a kind that decides retrying, a stable code for clients,
//! and a message that never carries credentials.

use std::time::Duration;

/// What went wrong, coarse enough to decide whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or the stream took longer than the configured timeout (or the server said 408).
    Timeout,
    /// 429 (or 409): the server asks us to slow down, possibly with `Retry-After`.
    RateLimited,
    /// 5xx, or an error reported inside an otherwise successful response.
    Server,
    /// The server could not be reached (connect, DNS, reset before a response).
    Transport,
    /// The response stream ended before the model finished.
    StreamCut,
    /// The server answered with something that is not the protocol (bad JSON, no choices).
    Malformed,
    /// 401/403: the key is missing, wrong or lacks access.
    Auth,
    /// 4xx other than the above: the request itself is wrong (unknown model, bad schema).
    BadRequest,
    /// Our own configuration is unusable (missing key variable, bad base URL).
    Config,
    /// The caller cancelled the call.
    Cancelled,
}

impl ErrorKind {
    /// Whether the same request may succeed if sent again.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout
                | ErrorKind::RateLimited
                | ErrorKind::Server
                | ErrorKind::Transport
                | ErrorKind::StreamCut
                | ErrorKind::Malformed
        )
    }

    /// A stable, machine-readable code (part of the public API; never rename).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "model_timeout",
            ErrorKind::RateLimited => "model_rate_limited",
            ErrorKind::Server => "model_server_error",
            ErrorKind::Transport => "model_unreachable",
            ErrorKind::StreamCut => "model_stream_cut",
            ErrorKind::Malformed => "model_malformed_response",
            ErrorKind::Auth => "model_auth_failed",
            ErrorKind::BadRequest => "model_bad_request",
            ErrorKind::Config => "model_config_invalid",
            ErrorKind::Cancelled => "model_call_cancelled",
        }
    }
}

/// A failed model call. `Display` is the message alone; the kind and status are fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    /// The HTTP status, when the server answered with one.
    pub status: Option<u16>,
    pub message: String,
    /// How long the server asked us to wait before trying again.
    pub retry_after: Option<Duration>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, status: None, message: message.into(), retry_after: None }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "model call cancelled")
    }

    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds_and_codes() {
        let all = [
            (ErrorKind::Timeout, true, "model_timeout"),
            (ErrorKind::RateLimited, true, "model_rate_limited"),
            (ErrorKind::Server, true, "model_server_error"),
            (ErrorKind::Transport, true, "model_unreachable"),
            (ErrorKind::StreamCut, true, "model_stream_cut"),
            (ErrorKind::Malformed, true, "model_malformed_response"),
            (ErrorKind::Auth, false, "model_auth_failed"),
            (ErrorKind::BadRequest, false, "model_bad_request"),
            (ErrorKind::Config, false, "model_config_invalid"),
            (ErrorKind::Cancelled, false, "model_call_cancelled"),
        ];
        for (kind, retryable, code) in all {
            let err = Error::new(kind, "boom");
            assert_eq!(err.retryable(), retryable, "{kind:?}");
            assert_eq!(err.code(), code);
            assert_eq!(err.to_string(), "boom");
        }
    }
}
