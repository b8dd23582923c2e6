//! Conversation messages as the model sees them, independent of any provider's wire format.

use serde::{Deserialize, Serialize};

/// A tool call the model asked for. `arguments` is the raw JSON text the model produced:
/// it may be invalid, and that is reported to the model as a tool error, not swallowed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Longest tool-call id kept as the provider sent it (OpenAI refuses ids over 40 bytes when
/// they are sent back; other providers send up to ~50).
pub const MAX_CALL_ID_LEN: usize = 64;

/// Gives every call of one model answer an id that is unique in what the model sees, before the
/// answer is recorded: results, approvals and the context find a call by its id. The
/// provider's id is kept when it is usable — not empty (wire formats leave it empty when the
/// provider sent none), at most [`MAX_CALL_ID_LEN`] bytes of `[A-Za-z0-9_-]` (what Anthropic
/// accepts), and taken neither by an earlier call of the same answer nor by a call or result in
/// `earlier` (the ids of the context the model was sent: a model that repeats an id from an
/// earlier turn must not have its new result paired with the old call). Any other call gets
/// `call_<run>_<step>_<index>` (the run part is the random half of the run id), a pure
/// function of what is recorded, so the provider sees the same ids in the history that is
/// sent back to it.
pub fn with_unique_ids<'a>(
    mut calls: Vec<ToolCall>,
    run: &crate::ids::RunId,
    step: u32,
    earlier: impl IntoIterator<Item = &'a str>,
) -> Vec<ToolCall> {
    let usable = |id: &str| {
        !id.is_empty()
            && id.len() <= MAX_CALL_ID_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let mut taken: std::collections::HashSet<String> = earlier.into_iter().map(str::to_owned).collect();
    let keep: Vec<bool> = calls.iter().map(|c| usable(&c.id) && taken.insert(c.id.clone())).collect();
    let run_part = hex::encode(&run.as_bytes()[8..]);
    for (index, (call, keep)) in calls.iter_mut().zip(keep).enumerate() {
        if keep {
            continue;
        }
        let mut id = format!("call_{run_part}_{step}_{index}");
        // Only a provider copying our scheme could collide; stay unique all the same.
        while !taken.insert(id.clone()) {
            id.push('x');
        }
        call.id = id;
    }
    calls
}

/// Every tool-call id in `messages`: the calls of assistant turns and the results' `call_id`s.
pub fn call_ids<M: std::borrow::Borrow<Message>>(messages: &[M]) -> impl Iterator<Item = &str> {
    messages.iter().flat_map(|m| {
        let (calls, result): (&[ToolCall], Option<&str>) = match m.borrow() {
            Message::Assistant { tool_calls, .. } => (tool_calls, None),
            Message::Tool { call_id, .. } => (&[], Some(call_id)),
            _ => (&[], None),
        };
        calls.iter().map(|c| c.id.as_str()).chain(result)
    })
}

/// Token counts as the provider reported them (or estimated, for the scripted model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// Adds counts, saturating: they come from model servers, which may send any number.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }

    /// Input and output together, saturating.
    pub fn total(self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// One message of a model's context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    System {
        content: String,
    },
    User {
        content: String,
    },
    Assistant {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        call_id: String,
        name: String,
        content: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

impl Message {
    /// A rough token estimate (4 bytes a token) used only to fit a context window;
    /// the provider's reported usage is the truth.
    pub fn estimated_tokens(&self) -> u64 {
        let bytes = match self {
            Message::System { content } | Message::User { content } => content.len(),
            Message::Assistant { content, tool_calls } => {
                content.as_deref().map_or(0, str::len)
                    + tool_calls.iter().map(|c| c.name.len() + c.arguments.len() + 8).sum::<usize>()
            }
            Message::Tool { content, .. } => content.len() + 8,
        };
        (bytes as u64).div_ceil(4) + 4
    }
}

/// A tool as offered to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RunId;

    fn calls(ids: &[&str]) -> Vec<ToolCall> {
        ids.iter().map(|id| ToolCall { id: (*id).into(), name: "f".into(), arguments: "{}".into() }).collect()
    }

    fn ids(calls: &[ToolCall]) -> Vec<&str> {
        calls.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn duplicate_ids_in_one_answer_become_unique() {
        let run = RunId::new();
        let part = hex::encode(&run.as_bytes()[8..]);
        let out = with_unique_ids(calls(&["a", "a", "b", "a"]), &run, 3, []);
        assert_eq!(ids(&out), ["a".to_owned(), format!("call_{part}_3_1"), "b".into(), format!("call_{part}_3_3")]);
    }

    #[test]
    fn ids_already_in_the_context_are_not_reused() {
        let run = RunId::new();
        let part = hex::encode(&run.as_bytes()[8..]);
        let history = vec![
            Message::User { content: "go".into() },
            Message::Assistant { content: None, tool_calls: calls(&["dup"]) },
            Message::Tool { call_id: "dup".into(), name: "f".into(), content: "1".into(), is_error: false },
            Message::Tool { call_id: "orphan".into(), name: "f".into(), content: "2".into(), is_error: false },
        ];
        assert_eq!(call_ids(&history).collect::<Vec<_>>(), ["dup", "dup", "orphan"]);
        let out = with_unique_ids(calls(&["dup", "orphan", "new"]), &run, 2, call_ids(&history));
        assert_eq!(ids(&out), [format!("call_{part}_2_0"), format!("call_{part}_2_1"), "new".into()]);
    }

    #[test]
    fn missing_ids_differ_between_steps_and_runs_and_are_deterministic() {
        let (run, other) = (RunId::new(), RunId::new());
        let step1 = with_unique_ids(calls(&["", ""]), &run, 1, []);
        let step2 = with_unique_ids(calls(&["", ""]), &run, 2, []);
        let elsewhere = with_unique_ids(calls(&["", ""]), &other, 1, []);
        let all: std::collections::HashSet<_> = [&step1, &step2, &elsewhere].iter().flat_map(|c| ids(c)).collect();
        assert_eq!(all.len(), 6, "{step1:?} {step2:?} {elsewhere:?}");
        assert_eq!(with_unique_ids(calls(&["", ""]), &run, 1, []), step1);
        assert!(step1.iter().all(|c| c.id.len() <= 40), "OpenAI refuses longer ids: {step1:?}");
    }

    #[test]
    fn unusable_ids_are_replaced_and_usable_ones_kept() {
        let run = RunId::new();
        let long = "x".repeat(MAX_CALL_ID_LEN + 1);
        let out =
            with_unique_ids(calls(&["toolu_01A-b_c", "has space", &long, "\u{e9}", "functions.f:0"]), &run, 0, []);
        assert_eq!(out[0].id, "toolu_01A-b_c");
        assert!(out[1..].iter().all(|c| c.id.starts_with("call_")), "{out:?}");
    }

    #[test]
    fn a_provider_copying_the_scheme_cannot_collide() {
        let run = RunId::new();
        let part = hex::encode(&run.as_bytes()[8..]);
        let copied = format!("call_{part}_0_1");
        let out = with_unique_ids(calls(&[&copied, ""]), &run, 0, []);
        assert_eq!(out[0].id, copied);
        assert_eq!(out[1].id, format!("{copied}x"));
    }

    proptest::proptest! {
        #[test]
        fn ids_are_always_unique(raw in proptest::collection::vec("[a-c ]{0,2}", 0..12), step in 0u32..4) {
            let raw: Vec<&str> = raw.iter().map(String::as_str).collect();
            let out = with_unique_ids(calls(&raw), &RunId::new(), step, []);
            let distinct: std::collections::HashSet<_> = out.iter().map(|c| &c.id).collect();
            proptest::prop_assert_eq!(distinct.len(), out.len());
            for (i, c) in out.iter().enumerate() {
                // The first usable occurrence of a provider id is kept as it was.
                let first = raw.iter().position(|r| *r == raw[i]) == Some(i);
                if first && !raw[i].is_empty() && !raw[i].contains(' ') {
                    proptest::prop_assert_eq!(&c.id, raw[i]);
                }
            }
        }
    }
}
