//! Fault-injection points for crash tests. `STEAD_FAULT_PAUSE=point[,point…]` makes the
//! process stop at the first time a run reaches a named point, say so on stderr, and wait
//! there forever — so a test can SIGKILL the real process exactly at that point.

use std::sync::OnceLock;

use stead_core::ids::RunId;

/// After `model_responded` (and the tool intents it implies) is committed.
pub const AFTER_MODEL_RECORDED: &str = "after_model_recorded";
/// After a tool's intent is committed, before the tool runs.
pub const TOOL_STARTED: &str = "tool_started";
/// After the tools ran, before their results are committed.
pub const BEFORE_TOOL_RECORDED: &str = "before_tool_recorded";
/// Before a model call.
pub const BEFORE_MODEL_CALL: &str = "before_model_call";

fn points() -> &'static [String] {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("STEAD_FAULT_PAUSE")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    })
}

/// Parks the current task forever if `point` is armed.
pub async fn point(point: &str, run: &RunId) {
    if points().iter().any(|p| p == point) {
        eprintln!("stead-fault: paused at {point} run={run}");
        std::future::pending::<()>().await;
    }
}
