//! The scripted model: deterministic and in-process, a pure function of the request it gets,
//! driven by commands in the last user message (`call`, `repeat`, `parallel`, `badargs`,
//! `history`). With `tool_choice: none` it calls no tools: the commands that would are plain
//! text to echo.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stead_core::message::{Message, ToolCall, Usage};

use crate::{Error, ModelProvider, ModelRequest, ModelResponse, ToolChoice};

/// The arguments `badargs` sends: deliberately not JSON.
pub const BAD_ARGUMENTS: &str = "{\"unterminated";

/// A model whose answer depends only on the request, for tests, demos and crash drills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScriptedModel {
    /// Pause between streamed chunks, so a stream can be watched (or interrupted) mid-way.
    pub chunk_delay: Duration,
}

impl ScriptedModel {
    pub fn new(chunk_delay_ms: u64) -> Self {
        Self { chunk_delay: Duration::from_millis(chunk_delay_ms) }
    }
}

#[async_trait]
impl ModelProvider for ScriptedModel {
    async fn complete(
        &self,
        req: &ModelRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ModelResponse, Error> {
        let resp = respond(req);
        if req.stream
            && let Some(content) = &resp.content
        {
            for (i, piece) in word_chunks(content).into_iter().enumerate() {
                if i > 0 && !self.chunk_delay.is_zero() {
                    tokio::time::sleep(self.chunk_delay).await;
                }
                on_delta(piece);
            }
        }
        Ok(resp)
    }
}

/// The scripted model's answer to `req`: same request, same response.
pub fn respond(req: &ModelRequest) -> ModelResponse {
    let n = req.messages.len();
    let last_user = req.messages.iter().rposition(|m| matches!(**m, Message::User { .. }));
    let user_text = match last_user.map(|i| &*req.messages[i]) {
        Some(Message::User { content }) => content.as_str(),
        _ => "",
    };
    let after = last_user.map_or(&req.messages[..], |i| &req.messages[i + 1..]);
    // `call`, `parallel` and `badargs` act once: any answer after the user message means done.
    let answered = after.iter().any(|m| matches!(**m, Message::Assistant { .. }));
    // `repeat` counts the rounds of tool calls already made for this user message.
    let rounds = after
        .iter()
        .filter(|m| matches!(&***m, Message::Assistant { tool_calls, .. } if !tool_calls.is_empty()))
        .count();
    let last_result = after.iter().rev().find_map(|m| match &**m {
        Message::Tool { content, .. } => Some(content.as_str()),
        _ => None,
    });

    // Told not to call tools, the commands that would are not commands.
    let command = Command::parse(user_text)
        .filter(|c| req.tool_choice != Some(ToolChoice::None) || matches!(c, Command::History));
    let action = match command {
        Some(Command::Call { tool, args }) => {
            if !answered {
                Action::Calls(vec![call(format!("call_{n}"), tool, args)])
            } else {
                Action::Reply(format!("{tool} returned: {}", last_result.unwrap_or("")))
            }
        }
        Some(Command::BadArgs { tool }) => {
            if !answered {
                Action::Calls(vec![call(format!("call_{n}"), tool, BAD_ARGUMENTS)])
            } else {
                Action::Reply(format!("{tool} returned: {}", last_result.unwrap_or("")))
            }
        }
        Some(Command::Repeat { times, tool, args }) => {
            if (rounds as u64) < times {
                Action::Calls(vec![call(format!("call_{n}"), tool, args)])
            } else {
                Action::Reply(format!("done: {times} calls to {tool}"))
            }
        }
        Some(Command::Parallel { tools }) => {
            if !answered {
                Action::Calls(tools.iter().enumerate().map(|(i, t)| call(format!("call_{n}_{i}"), t, "{}")).collect())
            } else {
                let results: Vec<String> = after
                    .iter()
                    .filter_map(|m| match &**m {
                        Message::Tool { name, content, .. } => Some(format!("{name}: {content}")),
                        _ => None,
                    })
                    .collect();
                Action::Reply(format!("results: {}", results.join("; ")))
            }
        }
        Some(Command::History) => {
            let earlier: Vec<&str> = req.messages[..last_user.unwrap_or(0)]
                .iter()
                .filter_map(|m| match &**m {
                    Message::User { content } => Some(content.as_str()),
                    _ => None,
                })
                .collect();
            Action::Reply(format!("history: {}", earlier.join(" | ")))
        }
        None => match trailing_results(&req.messages) {
            Some(results) => Action::Reply(format!("tool results: {}", results.join("; "))),
            None => Action::Reply(format!("echo: {user_text}")),
        },
    };

    let input: usize = req.messages.iter().map(|m| message_len(m)).sum();
    let (content, tool_calls, output) = match action {
        Action::Reply(text) => {
            let len = text.len();
            (Some(text), Vec::new(), len)
        }
        Action::Calls(calls) => {
            let len = calls.iter().map(|c| c.name.len() + c.arguments.len()).sum();
            (None, calls, len)
        }
    };
    ModelResponse {
        finish_reason: if tool_calls.is_empty() { "stop" } else { "tool_calls" }.to_owned(),
        content,
        tool_calls,
        usage: Usage { input_tokens: (input as u64).div_ceil(4), output_tokens: (output as u64).div_ceil(4) },
        model: req.model.clone(),
    }
}

enum Action {
    Reply(String),
    Calls(Vec<ToolCall>),
}

enum Command<'a> {
    Call {
        tool: &'a str,
        args: &'a str,
    },
    Repeat {
        times: u64,
        tool: &'a str,
        args: &'a str,
    },
    Parallel {
        tools: Vec<&'a str>,
    },
    BadArgs {
        tool: &'a str,
    },
    /// `history`: reply with every earlier user message, to show what context the model got.
    History,
}

impl<'a> Command<'a> {
    /// Anything that is not a well-formed command is plain text to echo.
    fn parse(text: &'a str) -> Option<Self> {
        let (word, rest) = split_word(text);
        match word {
            "call" => {
                let (tool, args) = split_word(rest);
                (!tool.is_empty()).then(|| Command::Call { tool, args: or_empty_object(args) })
            }
            "repeat" => {
                let (times, rest) = split_word(rest);
                let times = times.parse().ok()?;
                let (tool, args) = split_word(rest);
                (!tool.is_empty()).then(|| Command::Repeat { times, tool, args: or_empty_object(args) })
            }
            "parallel" => {
                let tools: Vec<&str> = rest.split_whitespace().collect();
                (!tools.is_empty()).then_some(Command::Parallel { tools })
            }
            "history" if rest.is_empty() => Some(Command::History),
            "badargs" => {
                let (tool, _) = split_word(rest);
                (!tool.is_empty()).then_some(Command::BadArgs { tool })
            }
            _ => None,
        }
    }
}

/// The first whitespace-separated word and the (trimmed) rest.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim()),
        None => (text, ""),
    }
}

fn or_empty_object(args: &str) -> &str {
    if args.is_empty() { "{}" } else { args }
}

fn call(id: String, name: &str, arguments: &str) -> ToolCall {
    ToolCall { id, name: name.to_owned(), arguments: arguments.to_owned() }
}

/// The contents of the tool results the request ends with, if it ends with any.
fn trailing_results(messages: &[Arc<Message>]) -> Option<Vec<&str>> {
    let mut results: Vec<&str> = messages
        .iter()
        .rev()
        .map_while(|m| match &**m {
            Message::Tool { content, .. } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    results.reverse();
    (!results.is_empty()).then_some(results)
}

fn message_len(m: &Message) -> usize {
    match m {
        Message::System { content } | Message::User { content } => content.len(),
        Message::Assistant { content, tool_calls } => {
            content.as_deref().map_or(0, str::len)
                + tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>()
        }
        Message::Tool { content, .. } => content.len(),
    }
}

/// Splits text into word-sized pieces that concatenate back to it exactly (each piece is a
/// word followed by the whitespace after it).
fn word_chunks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, ch) in text.char_indices() {
        if ch.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_chunks_concatenate_back() {
        assert_eq!(word_chunks("echo: hello  world "), vec!["echo: ", "hello  ", "world "]);
        assert_eq!(word_chunks(" a"), vec![" ", "a"]);
        assert_eq!(word_chunks(""), Vec::<&str>::new());
        for text in ["x", "é è  ç\n\tz", "  "] {
            assert_eq!(word_chunks(text).concat(), text);
        }
    }

    #[test]
    fn commands_parse() {
        assert!(matches!(Command::parse("call clock"), Some(Command::Call { tool: "clock", args: "{}" })));
        assert!(matches!(
            Command::parse("  call  echo {\"a\": 1} "),
            Some(Command::Call { tool: "echo", args: "{\"a\": 1}" })
        ));
        assert!(matches!(Command::parse("repeat 3 t"), Some(Command::Repeat { times: 3, tool: "t", args: "{}" })));
        assert!(Command::parse("repeat x t").is_none());
        assert!(Command::parse("call").is_none());
        assert!(Command::parse("parallel").is_none());
        assert!(Command::parse("calls t").is_none());
        assert!(matches!(Command::parse(" history "), Some(Command::History)));
        assert!(Command::parse("history of rome").is_none());
    }

    #[test]
    fn tool_choice_none_calls_no_tools() {
        let mut req = ModelRequest {
            model: "m".into(),
            messages: vec![Arc::new(Message::User { content: "call clock".into() })],
            tools: vec![],
            temperature: None,
            max_tokens: None,
            stream: false,
            tool_choice: Some(ToolChoice::None),
            parallel_tool_calls: None,
        };
        for text in ["call clock", "repeat 2 clock", "parallel a b", "badargs clock"] {
            req.messages = vec![Arc::new(Message::User { content: text.into() })];
            let r = respond(&req);
            assert!(r.tool_calls.is_empty(), "{text}");
            assert_eq!(r.content.as_deref(), Some(format!("echo: {text}").as_str()));
            assert_eq!(r.finish_reason, "stop");
        }
        // Other choices leave the commands alone.
        for choice in [None, Some(ToolChoice::Auto), Some(ToolChoice::Required)] {
            req.tool_choice = choice;
            req.messages = vec![Arc::new(Message::User { content: "call clock".into() })];
            assert_eq!(respond(&req).tool_calls.len(), 1);
        }
    }
}
