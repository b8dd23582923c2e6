//! Context building: what the model sees. A pure function of the instructions, the recent
//! history and the budget, so it can be tested exhaustively and replayed exactly.

use std::borrow::Borrow;
use std::collections::HashMap;

use crate::agent::ContextSpec;
use crate::message::Message;

/// Result text given to the model for a call whose run ended before it had a result.
pub const MISSING_RESULT: &str =
    "error: no result was recorded for this call (its run ended before the call completed)";

/// Whether every tool call in `messages` is answered exactly once, right after its call's turn
/// (before any other message), and no result is orphaned: the shape providers accept.
pub fn is_well_formed<M: Borrow<Message>>(messages: &[M]) -> bool {
    let mut open: Vec<&str> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in messages {
        match m.borrow() {
            Message::Tool { call_id, .. } => {
                if !open.contains(&call_id.as_str()) || !seen.insert(call_id.as_str()) {
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

/// Builds the model's context: instructions, then the most recent messages that fit the
/// budget, repaired so that every tool call has exactly one result and no result is orphaned
/// (providers reject both). History itself is never changed; only what the model sees.
///
/// Generic over how messages are held, so a caller keeping its history as `Arc<Message>`
/// shares the messages with the context instead of deep-cloning them on every model call.
pub fn build_context<M>(instructions: &str, history: &[M], budget: &ContextSpec) -> Vec<M>
where
    M: Borrow<Message> + Clone + From<Message>,
{
    // Walk back from the newest message while it fits; always keep the newest one.
    let mut start = history.len();
    let mut tokens = 0u64;
    while start > 0 {
        let t = history[start - 1].borrow().estimated_tokens();
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
        out.push(M::from(Message::System { content: instructions.to_owned() }));
    }
    // Every call made inside the window, and whether a result for it has been kept yet:
    // results whose call was cut off, and duplicates, are dropped.
    let mut calls: HashMap<&str, bool> = HashMap::with_capacity(window.len() / 2 + 1);
    for m in window {
        if let Message::Assistant { tool_calls, .. } = m.borrow() {
            for c in tool_calls {
                calls.insert(c.id.as_str(), false);
            }
        }
    }
    let mut open: Vec<(&str, &str)> = Vec::new(); // calls still waiting for a result
    for m in window {
        match m.borrow() {
            Message::Tool { call_id, .. } => {
                match calls.get_mut(call_id.as_str()) {
                    Some(answered @ false) => *answered = true,
                    _ => continue, // orphaned by the window's cut, or a duplicate
                }
                open.retain(|(id, _)| id != call_id);
                out.push(m.clone());
            }
            other => {
                close_open_calls(&mut open, &mut out);
                if let Message::Assistant { tool_calls, .. } = other {
                    open.extend(tool_calls.iter().map(|c| (c.id.as_str(), c.name.as_str())));
                }
                out.push(m.clone());
            }
        }
    }
    close_open_calls(&mut open, &mut out);
    out
}

fn close_open_calls<M: From<Message>>(open: &mut Vec<(&str, &str)>, out: &mut Vec<M>) {
    for (call_id, name) in open.drain(..) {
        out.push(M::from(Message::Tool {
            call_id: call_id.to_owned(),
            name: name.to_owned(),
            content: MISSING_RESULT.to_owned(),
            is_error: true,
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

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
            assert!(is_well_formed(&ctx[1..]), "max_messages={max_messages}: {ctx:?}");
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

    /// The algorithm as first written (deep clones, `String` sets): the reference the
    /// cheaper one must agree with exactly.
    fn reference(instructions: &str, history: &[Message], budget: &ContextSpec) -> Vec<Message> {
        let mut start = history.len();
        let mut tokens = 0u64;
        while start > 0 {
            let t = history[start - 1].estimated_tokens();
            let count = history.len() - start;
            if count > 0 && (tokens + t > budget.max_tokens || count >= budget.max_messages as usize) {
                break;
            }
            tokens += t;
            start -= 1;
        }
        let window = &history[start..];
        let mut out = Vec::new();
        if !instructions.is_empty() {
            out.push(Message::System { content: instructions.to_owned() });
        }
        let calls_in_window: HashSet<&str> = window
            .iter()
            .flat_map(|m| match m {
                Message::Assistant { tool_calls, .. } => tool_calls.iter().map(|c| c.id.as_str()).collect(),
                _ => Vec::new(),
            })
            .collect();
        let mut open: Vec<(String, String)> = Vec::new();
        let mut answered: HashSet<String> = HashSet::new();
        let close = |open: &mut Vec<(String, String)>, out: &mut Vec<Message>| {
            for (call_id, name) in open.drain(..) {
                out.push(Message::Tool { call_id, name, content: MISSING_RESULT.to_owned(), is_error: true });
            }
        };
        for m in window {
            match m {
                Message::Tool { call_id, .. } => {
                    if !calls_in_window.contains(call_id.as_str()) || answered.contains(call_id) {
                        continue;
                    }
                    open.retain(|(id, _)| id != call_id);
                    answered.insert(call_id.clone());
                    out.push(m.clone());
                }
                other => {
                    close(&mut open, &mut out);
                    if let Message::Assistant { tool_calls, .. } = other {
                        open.extend(tool_calls.iter().map(|c| (c.id.clone(), c.name.clone())));
                    }
                    out.push(other.clone());
                }
            }
        }
        close(&mut open, &mut out);
        out
    }

    /// A small deterministic generator (xorshift64*), so the property test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random histories, including malformed ones (orphaned and duplicate results, results
    /// before their call, repeated call ids, calls never answered), under random budgets: the
    /// context is the same as the reference's, whether messages are held by value or shared.
    #[test]
    fn agrees_with_the_reference_on_random_histories() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..3000 {
            let ids = 1 + rng.below(12);
            let len = rng.below(40) as usize;
            let text = |rng: &mut Rng| "w".repeat(rng.below(60) as usize);
            let history: Vec<Message> = (0..len)
                .map(|_| match rng.below(10) {
                    0..=1 => user(&text(&mut rng)),
                    2 => Message::System { content: text(&mut rng) },
                    3..=5 => Message::Assistant {
                        content: (rng.below(2) == 0).then(|| text(&mut rng)),
                        tool_calls: (0..rng.below(4))
                            .map(|_| ToolCall {
                                id: format!("c{}", rng.below(ids)),
                                name: format!("t{}", rng.below(3)),
                                arguments: text(&mut rng),
                            })
                            .collect(),
                    },
                    _ => Message::Tool {
                        call_id: format!("c{}", rng.below(ids)),
                        name: format!("t{}", rng.below(3)),
                        content: text(&mut rng),
                        is_error: rng.below(4) == 0,
                    },
                })
                .collect();
            let budget = ContextSpec { max_messages: 1 + rng.below(45) as u32, max_tokens: 1 + rng.below(400) };
            let instructions = if rng.below(3) == 0 { "" } else { "be brief" };
            let want = reference(instructions, &history, &budget);
            assert_eq!(build_context(instructions, &history, &budget), want, "case {case}: {history:?} {budget:?}");
            let shared: Vec<Arc<Message>> = history.iter().cloned().map(Arc::new).collect();
            let got: Vec<Message> =
                build_context(instructions, &shared, &budget).into_iter().map(Arc::unwrap_or_clone).collect();
            assert_eq!(got, want, "case {case} (shared)");
        }
    }
}
