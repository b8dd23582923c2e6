//! HTTP tools for agents: `type: http` tools declared in an agent spec and the built-in
//! `http_fetch`, both behind an SSRF guard.
//!
//! - `spec`: what a spec declares (`HttpToolSpec`) and how a call's arguments become a request.
//! - `guard`: which addresses may be connected to (`Guard`), and why the others may not.
//! - `resolve`: the DNS resolver the client connects through; it drops refused addresses, so
//!   the address checked is the address connected to.
//! - `caller`: the shared client (`HttpCaller`): redirects re-checked hop by hop, credentials
//!   kept to their origin, responses cut at a limit with a marker, echoed secrets redacted.
//!
//! The engine adapts `HttpCaller` to its `Tool` trait; this crate knows nothing of runs or logs.
//! Every failure of a call is a `ToolResult` with `is_error`, worded for the model and the
//! operator — never a panic, never a silent truncation.

mod caller;
mod guard;
mod resolve;
mod spec;

use std::time::Duration;

pub use caller::HttpCaller;
pub use guard::{Denied, Guard, GuardConfig};
pub use spec::HttpToolSpec;

/// Bounds on one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// For the whole call: connecting, every redirect hop, and reading the body.
    pub timeout: Duration,
    /// Body bytes shown; the rest is cut with an explicit marker.
    pub max_response_bytes: usize,
    /// Redirects followed before giving up; 0 follows none.
    pub max_redirects: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), max_response_bytes: 256 * 1024, max_redirects: 5 }
    }
}

/// The outcome of one call, as the model will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolResult {
    pub text: String,
    pub is_error: bool,
    /// The final response's status, when there was a response.
    pub status: Option<u16>,
    /// The request may have reached the server but no answer came back (the connection broke
    /// after sending, or the deadline passed): its effect may or may not have happened.
    pub outcome_unknown: bool,
}

impl ToolResult {
    pub(crate) fn error(text: impl Into<String>) -> Self {
        Self { text: text.into(), is_error: true, status: None, outcome_unknown: false }
    }

    pub(crate) fn unknown(text: impl Into<String>) -> Self {
        Self { text: text.into(), is_error: true, status: None, outcome_unknown: true }
    }
}

/// Building an `HttpCaller` failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("invalid HTTP tool limits: {0}")]
    Limits(String),
}
