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
    /// A spec uses something the operator did not grant its tenant (a host command, a model
    /// endpoint, an environment variable, an undeclared provider or catalog server).
    #[error("not granted: {0}")]
    NotGranted(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources, joined with `: `, each distinct text once. Client libraries
/// (reqwest, the MCP SDK) often say something generic at the top ("error sending request")
/// and put the useful part in a source.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // Wrappers often repeat their cause's text; say each thing once.
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("inner cause")]
    struct Inner;

    #[test]
    fn chain_names_each_cause_once() {
        assert_eq!(super::error_chain(&Outer(Inner)), "outer: inner cause");
    }
}
