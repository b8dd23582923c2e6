//! Context building: what the model sees. A pure function of the instructions, the recent
//! history and the budget, so it can be tested exhaustively and replayed exactly.

use std::collections::HashSet;

use crate::agent::ContextSpec;
use crate::message::Message;

/// Result text given to the model for a call whose run ended before it had a result.
pub const MISSING_RESULT: &str =
    "error: no result was recorded for this call (its run ended before the call completed)";

/// Builds the model's context: instructions, then the most recent messages that fit the
/// budget, repaired so that every tool call has exactly one result and no result is orphaned
/// (providers reject both). History itself is never changed; only what the model sees.
pub fn build_context(instructions: &str, history: &[Message], budget: &ContextSpec) -> Vec<Message> {
    // Walk back from the newest message while it fits; always keep the newest one.
    let mut start = history.len();
    let mut tokens = 0u64;
    while start > 0 {
        let m = &history[start - 1];
        let t = m.estimated_tokens();
        let count = history.len() - start;
        if count > 0 && (tokens + t > budget.max_tokens || count >= budget.max_messages as usize) {
            break;
        }
        tokens += t;
        start -= 1;
    }
    let window = &history[start..];

    let mut out = Vec::with_capacity(window.len() + 1);
    if !instructions.is_empty() {
        out.push(Message::System { content: instructions.to_owned() });
    }
    // Calls made inside the window, so results whose call was cut off can be dropped.
    let calls_in_window: HashSet<&str> = window
        .iter()
        .flat_map(|m| match m {
            Message::Assistant { tool_calls, .. } => tool_calls.iter().map(|c| c.id.as_str()).collect(),
            _ => Vec::new(),
        })
        .collect();
    let mut open: Vec<(String, String)> = Vec::new(); // calls still waiting for a result
    let mut answered: HashSet<String> = HashSet::new();
    for m in window {
        match m {
            Message::Tool { call_id, .. } => {
                if !calls_in_window.contains(call_id.as_str()) || answered.contains(call_id) {
                    continue; // orphaned by the window's cut, or a duplicate
                }
                open.retain(|(id, _)| id != call_id);
                answered.insert(call_id.clone());
                out.push(m.clone());
            }
            other => {
                close_open_calls(&mut open, &mut out);
                if let Message::Assistant { tool_calls, .. } = other {
                    open.extend(tool_calls.iter().map(|c| (c.id.clone(), c.name.clone())));
                }
                out.push(other.clone());
            }
        }
    }
    close_open_calls(&mut open, &mut out);
    out
}

fn close_open_calls(open: &mut Vec<(String, String)>, out: &mut Vec<Message>) {
    for (call_id, name) in open.drain(..) {
        out.push(Message::Tool { call_id, name, content: MISSING_RESULT.to_owned(), is_error: true });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ToolCall;

    fn user(t: &str) -> Message {
        Message::User { content: t.into() }
    }
    fn asks(ids: &[&str]) -> Message {
        Message::Assistant {
            content: None,
            tool_calls: ids
                .iter()
                .map(|id| ToolCall { id: (*id).into(), name: "t".into(), arguments: "{}".into() })
                .collect(),
        }
    }
    fn result(id: &str) -> Message {
        Message::Tool { call_id: id.into(), name: "t".into(), content: "r".into(), is_error: false }
    }

    /// The property providers need: every call answered once, in order, no orphans.
    fn well_formed(ctx: &[Message]) -> bool {
        let mut open: Vec<&str> = Vec::new();
        let mut seen = HashSet::new();
        for m in ctx {
            match m {
                Message::Tool { call_id, .. } => {
                    if !open.contains(&call_id.as_str()) || !seen.insert(call_id.clone()) {
                        return false;
                    }
                    open.retain(|c| c != call_id);
                }
                Message::Assistant { tool_calls, .. } => {
                    if !open.is_empty() {
                        return false;
                    }
                    open = tool_calls.iter().map(|c| c.id.as_str()).collect();
                }
                _ => {
                    if !open.is_empty() {
                        return false;
                    }
                }
            }
        }
        open.is_empty()
    }

    #[test]
    fn window_keeps_newest_and_repairs_cuts() {
        let history = vec![
            user("a"),
            asks(&["1", "2"]),
            result("1"),
            result("2"),
            user("b"),
            asks(&["3"]),
            user("c"),
            asks(&["4"]),
            result("4"),
        ];
        for max_messages in 2..=12 {
            let spec = ContextSpec { max_messages, max_tokens: 1_000_000 };
            let ctx = build_context("be brief", &history, &spec);
            assert!(well_formed(&ctx[1..]), "max_messages={max_messages}: {ctx:?}");
            assert_eq!(ctx.last(), Some(&result("4")));
            assert_eq!(ctx[0], Message::System { content: "be brief".into() });
        }
        // The call whose run ended gets an explicit error result, not silence.
        let ctx = build_context("", &history, &ContextSpec { max_messages: 100, max_tokens: 1_000_000 });
        assert!(ctx.iter().any(
            |m| matches!(m, Message::Tool { call_id, content, .. } if call_id == "3" && content == MISSING_RESULT)
        ));
    }

    #[test]
    fn token_budget_limits_the_window_but_keeps_the_last_message() {
        let long = "x".repeat(4000);
        let history = vec![user(&long), user(&long), user("short")];
        let ctx = build_context("", &history, &ContextSpec { max_messages: 100, max_tokens: 1500 });
        assert_eq!(ctx, vec![user(&long), user("short")], "the oldest message does not fit");
        let huge = vec![user(&"y".repeat(100_000))];
        assert_eq!(build_context("", &huge, &ContextSpec { max_messages: 100, max_tokens: 256 }).len(), 1);
    }
}
