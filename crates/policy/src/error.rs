//! Why a boundary could not be built or narrowed: every refusal names the layer (its source
//! label: `tenant`, `agent`, `session`, …) and,
//! where the problem is in policy text, the line and column.

use std::fmt;

/// One problem found in a layer's policy text. `line` and `column` count from 1 (columns in
/// characters); both are 0 when the problem has no place in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// The policy's name (`<source>:<@id>` or `<source>#<index>`) when the problem is in one.
    pub policy: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}, column {}: ", self.line, self.column)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is not a valid policy set for this boundary: syntax errors, unknown tools,
    /// type errors against the schema generated from the tools, misused annotations.
    #[error("invalid `{layer}` policies: {}", join(problems))]
    Invalid { layer: String, problems: Vec<Problem> },
    /// A bound of [`crate::limits`] was exceeded.
    #[error("`{layer}` policies exceed a limit: {what} is {actual}, the limit is {limit}")]
    Limit { layer: String, what: &'static str, actual: usize, limit: usize },
    /// The tool list cannot make a schema (for example two tools with one name).
    #[error("the tools cannot make a policy schema: {0}")]
    Tools(String),
}

fn join(problems: &[Problem]) -> String {
    problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// The problems of an [`Error::Invalid`]; empty for the other kinds.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Error::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
