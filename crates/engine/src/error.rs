//! The engine's error type: store and domain errors plus the command-level refusals.

use stead_core::ids::{RunId, SessionId};
use stead_core::run::RunStatus;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] stead_store::Error),
    #[error(transparent)]
    Domain(#[from] stead_core::Error),
    /// The agent's concurrency policy is `reject` and a run is active.
    #[error("session {session} already has an active run ({run}); its agent's concurrency policy is `reject`")]
    SessionBusy { session: SessionId, run: RunId },
    /// A run meant to follow exactly after `expected` found the session moved on.
    #[error("session {session} moved on (head {actual}, expected {expected})")]
    HeadMoved { session: SessionId, expected: u64, actual: u64 },
    /// Cancel of a run that already finished.
    #[error("run {run} is already {}", status.as_str())]
    RunFinished { run: RunId, status: RunStatus },
    /// Tool outputs for a run that is not waiting for them.
    #[error("run {run} is {}, not waiting for tool outputs", status.as_str())]
    RunNotWaiting { run: RunId, status: RunStatus },
    #[error("invalid tool outputs: {0}")]
    InvalidToolOutputs(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// The principal lacks the role an approval requires.
    #[error("{0}")]
    Forbidden(String),
    /// A decision that does not fit the approval (wrong kind, bad arguments, missing output).
    #[error("invalid decision: {0}")]
    InvalidDecision(String),
    /// Decisions are single-use: this approval already has a different one.
    #[error("approval {id} was already decided: {decision} by {by}")]
    AlreadyDecided { id: String, decision: String, by: String },
    /// An `Idempotency-Key` that is not one (empty, too long, not visible ASCII).
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    /// The key was already used for a different request (or for one that created no run).
    #[error("idempotency key {0:?} was already used for a different request; use a new key for a new request")]
    IdempotencyKeyReused(String),
    /// Contention did not settle within the retry budget; safe to retry.
    #[error("too much contention on {0}; try again")]
    Contention(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
