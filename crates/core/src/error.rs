//! The domain's error type: everything here is a bad input, never an I/O failure.

/// A domain error. Each variant maps to one stable code at the HTTP edge.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("invalid id {value:?}: expected `{prefix}_` followed by 32 hex digits")]
    InvalidId { prefix: &'static str, value: String },
    #[error("invalid agent spec: {0}")]
    InvalidAgentSpec(String),
    #[error("invalid tenant id {0:?}: use 1-63 of [a-z0-9_-], starting with a letter or digit")]
    InvalidTenant(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
