//! Items: the Responses/Conversations view of a session's log. An item is not stored on its
//! own; it is rendered from the event that recorded it, and its id says where that is:
//! `{prefix}_{session}{seq:012x}{index:08x}` for input, `{prefix}_{run}{step:012x}{index:08x}`
//! for model output, where `index` is `message << 12 | part` (part 0 is a message's text,
//! part k its k-th tool call). So ids are stable and globally unique without an index of
//! their own.

use std::collections::HashMap;

use serde_json::{Value, json};
use stead_core::event::{ApprovalDecision, CarriedCall, Event, EventBody};
use stead_core::ids::{ApprovalId, RunId, SessionId};
use stead_core::message::{Message, ToolCall};

/// The run metadata key under which a response's request settings are kept.
pub const META_KEY: &str = "openai";

/// Where an item came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Given by the client (run input, conversation items, approval responses).
    Input,
    /// Produced by the model or a tool.
    Output,
}

#[derive(Clone, Debug)]
pub struct Rendered {
    pub seq: u64,
    pub index: u32,
    pub run: Option<RunId>,
    pub side: Side,
    pub item: Value,
}

impl Rendered {
    pub fn id(&self) -> &str {
        self.item["id"].as_str().unwrap_or_default()
    }
}

pub fn item_id(prefix: &str, session: &SessionId, seq: u64, index: u32) -> String {
    owned_item_id(prefix, &hex_of(session), seq, index)
}

/// The 32 hex digits of a prefixed id.
pub fn hex_of(id: &impl std::fmt::Display) -> String {
    let s = id.to_string();
    s.split_once('_').map_or(s.clone(), |(_, hex)| hex.to_owned())
}

/// Model output is named by its run and step instead of its seq, so a stream can name a
/// message before the event that records it exists.
pub fn output_item_id(prefix: &str, run: &RunId, step: u32, index: u32) -> String {
    owned_item_id(prefix, &hex_of(run), u64::from(step), index)
}

fn owned_item_id(prefix: &str, owner_hex: &str, n: u64, index: u32) -> String {
    format!("{prefix}_{owner_hex}{n:012x}{index:08x}")
}

/// `mcpr_…` names an approval request the way OpenAI names them; it is the approval's id.
pub fn approval_item_id(id: &ApprovalId) -> String {
    let s = id.to_string();
    format!("mcpr_{}", s.strip_prefix("apr_").unwrap_or(&s))
}

pub fn parse_approval_item_id(id: &str) -> Option<ApprovalId> {
    let hex = id.strip_prefix("mcpr_")?;
    format!("apr_{hex}").parse().ok()
}

pub fn part_index(message: usize, part: usize) -> u32 {
    ((message as u32) << 12) | (part as u32 & 0xfff)
}

/// What the renderer needs to know about each run: how MCP tools were named to the model.
#[derive(Default)]
struct RunInfo {
    /// Model-facing server prefix (`slug`) → the client's `server_label`.
    mcp_labels: HashMap<String, String>,
    carried: Vec<CarriedCall>,
}

impl RunInfo {
    fn from_created(metadata: &Value, carried: &[CarriedCall]) -> Self {
        let mcp_labels = metadata[META_KEY]["mcp_labels"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
            .unwrap_or_default();
        Self { mcp_labels, carried: carried.to_vec() }
    }

    /// (server_label, tool) when `name` is one of this run's MCP tools.
    fn mcp(&self, name: &str) -> Option<(String, String)> {
        let (slug, tool) = name.split_once("__")?;
        self.mcp_labels.get(slug).map(|label| (label.clone(), tool.to_owned()))
    }
}

/// Renders a stretch of a session's log as items, in log order, with removed items left out.
/// `events` must start at or before the `run_created` of every run whose items are wanted.
pub fn render(session: &SessionId, events: &[Event]) -> Vec<Rendered> {
    let mut r = Renderer::new(*session);
    r.feed(events);
    r.out
}

/// Renders a session's log as items incrementally: events are fed in log order, each once, and
/// the items so far are kept with an index by id, so a page or a lookup costs what it returns
/// rather than the whole conversation.
pub struct Renderer {
    session: SessionId,
    runs: HashMap<RunId, RunInfo>,
    /// call id → the call the model made, for MCP call items.
    calls: HashMap<String, ToolCall>,
    out: Vec<Rendered>,
    /// Item id → index in `out`; rebuilt after a removal.
    index: HashMap<String, usize>,
    /// The seq of the last event fed.
    last_seq: u64,
}

impl Renderer {
    pub fn new(session: SessionId) -> Self {
        Self {
            session,
            runs: HashMap::new(),
            calls: HashMap::new(),
            out: Vec::new(),
            index: HashMap::new(),
            last_seq: 0,
        }
    }

    /// The seq of the last event fed: feed the events after it next.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn items(&self) -> &[Rendered] {
        &self.out
    }

    /// Where the item with this id is in [`Renderer::items`].
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Feeds events in log order; events at or before [`Renderer::last_seq`] are skipped.
    pub fn feed(&mut self, events: &[Event]) {
        let mut removed = false;
        let from = self.last_seq;
        for e in events.iter().filter(|e| e.seq > from) {
            let before = self.out.len();
            removed |= self.feed_one(e);
            self.last_seq = e.seq;
            if !removed {
                for (i, r) in self.out.iter().enumerate().skip(before) {
                    self.index.insert(r.id().to_owned(), i);
                }
            }
        }
        if removed {
            self.index = self.out.iter().enumerate().map(|(i, r)| (r.id().to_owned(), i)).collect();
        }
    }

    /// Renders one event; true if it removed items.
    fn feed_one(&mut self, e: &Event) -> bool {
        let session = &self.session;
        let (runs, calls, out) = (&mut self.runs, &mut self.calls, &mut self.out);
        let run = e.run_id;
        if let (EventBody::RunCreated { carried, metadata, .. }, Some(r)) = (&e.body, run) {
            runs.insert(r, RunInfo::from_created(metadata, carried));
        }
        let info = run.and_then(|r| runs.get(&r));
        let mut push = |index: u32, side: Side, item: Value| {
            out.push(Rendered { seq: e.seq, index, run, side, item });
        };
        match &e.body {
            EventBody::RunCreated { input, carried, metadata, .. } => {
                for c in carried {
                    calls.insert(c.call.id.clone(), c.call.clone());
                }
                for (i, m) in input.iter().enumerate() {
                    for (part, item) in message_items(&hex_of(session), e.seq, i, m, None) {
                        push(part, Side::Input, item);
                    }
                }
                for (k, item) in list_tools_items(session, e.seq, metadata).into_iter().enumerate() {
                    push(LIST_TOOLS_PART | k as u32, Side::Output, item);
                }
            }
            EventBody::ItemsAdded { items } => {
                for (i, m) in items.iter().enumerate() {
                    for (part, item) in message_items(&hex_of(session), e.seq, i, m, None) {
                        push(part, Side::Input, item);
                    }
                }
            }
            EventBody::ModelResponded { step, content, tool_calls, .. } => {
                for c in tool_calls {
                    calls.insert(c.id.clone(), c.clone());
                }
                let m = Message::Assistant { content: content.clone(), tool_calls: tool_calls.clone() };
                let owner = run.map_or_else(|| hex_of(session), |r| hex_of(&r));
                for (part, item) in message_items(&owner, u64::from(*step), 0, &m, info) {
                    push(part, Side::Output, item);
                }
            }
            EventBody::ApprovalRequested { approval_id, name, arguments, .. } => {
                let (label, tool) = info.and_then(|i| i.mcp(name)).unwrap_or_else(|| (String::new(), name.clone()));
                push(0, Side::Output, approval_request_item(approval_id, &label, &tool, arguments));
            }
            EventBody::ApprovalDecided { approval_id, decision, reason, decided_by, .. }
                if decided_by.starts_with("principal:")
                    && info.is_some_and(|i| i.carried.iter().any(|c| &c.approval_id == approval_id)) =>
            {
                push(
                    0,
                    Side::Input,
                    json!({
                        "type": "mcp_approval_response",
                        "id": item_id("mcpa", session, e.seq, 0),
                        "approval_request_id": approval_item_id(approval_id),
                        "approve": *decision == ApprovalDecision::Approve,
                        "reason": reason,
                    }),
                );
            }
            EventBody::ToolCallCompleted { call_id, name, output, is_error } => {
                let mcp = info.and_then(|i| i.mcp(name));
                match mcp {
                    Some((label, tool)) => {
                        let arguments = calls.get(call_id).map(|c| c.arguments.clone()).unwrap_or_default();
                        let approval = info.and_then(|i| i.carried.iter().find(|c| &c.call.id == call_id));
                        let call = McpCall {
                            id: item_id("mcp", session, e.seq, 0),
                            label,
                            tool,
                            arguments,
                            approval: approval.map(|c| approval_item_id(&c.approval_id)),
                        };
                        push(0, Side::Output, call.item(Some((output, *is_error))));
                    }
                    // A server-side tool of a native agent: shown as its output.
                    None if run.is_some() => push(
                        0,
                        Side::Output,
                        json!({
                            "type": "function_call_output",
                            "id": item_id("fco", session, e.seq, 0),
                            "call_id": call_id,
                            "output": output,
                            "status": "completed",
                        }),
                    ),
                    None => {}
                }
            }
            EventBody::ItemRemoved { seq, index } => {
                out.retain(|r| !(r.seq == *seq && r.index >> 12 == *index));
                return true;
            }
            _ => {}
        }
        false
    }
}

/// The items one message renders as: `(part index, item)`.
fn message_items(owner_hex: &str, n: u64, message: usize, m: &Message, info: Option<&RunInfo>) -> Vec<(u32, Value)> {
    let id = |prefix: &str, part: usize| owned_item_id(prefix, owner_hex, n, part_index(message, part));
    let idx = |part: usize| part_index(message, part);
    match m {
        Message::User { content } => vec![(
            idx(0),
            json!({
                "type": "message", "id": id("msg", 0), "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": content}],
            }),
        )],
        Message::System { content } => vec![(
            idx(0),
            json!({
                "type": "message", "id": id("msg", 0), "role": "system", "status": "completed",
                "content": [{"type": "input_text", "text": content}],
            }),
        )],
        Message::Assistant { content, tool_calls } => {
            let mut items = Vec::new();
            if let Some(text) = content.as_deref().filter(|t| !t.is_empty()) {
                items.push((idx(0), assistant_message(&id("msg", 0), text, "completed")));
            }
            for (k, c) in tool_calls.iter().enumerate() {
                // MCP calls show up once they ran (as `mcp_call`) or were asked about.
                if info.and_then(|i| i.mcp(&c.name)).is_some() {
                    continue;
                }
                items.push((idx(k + 1), function_call(&id("fc", k + 1), c)));
            }
            items
        }
        Message::Tool { call_id, content, .. } => vec![(
            idx(0),
            json!({
                "type": "function_call_output", "id": id("fco", 0), "call_id": call_id,
                "output": content, "status": "completed",
            }),
        )],
    }
}

/// Part indexes of `mcp_list_tools` items: after every input message's parts.
const LIST_TOOLS_PART: u32 = 0xfff0_0000;

/// The tools each MCP server offered when the response started, as the request recorded them.
pub fn list_tools_items(session: &SessionId, seq: u64, metadata: &Value) -> Vec<Value> {
    metadata[META_KEY]["mcp_list_tools"]
        .as_array()
        .map(|lists| {
            lists
                .iter()
                .enumerate()
                .map(|(k, l)| {
                    json!({
                        "type": "mcp_list_tools",
                        "id": item_id("mcpl", session, seq, LIST_TOOLS_PART | k as u32),
                        "server_label": l["server_label"],
                        "tools": l["tools"],
                        "error": null,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn approval_request_item(approval: &ApprovalId, label: &str, tool: &str, arguments: &str) -> Value {
    json!({
        "type": "mcp_approval_request",
        "id": approval_item_id(approval),
        "server_label": label,
        "name": tool,
        "arguments": arguments,
    })
}

/// An MCP call as an output item.
pub struct McpCall {
    pub id: String,
    pub label: String,
    pub tool: String,
    pub arguments: String,
    /// The `mcp_approval_request` it ran after, if it was asked about.
    pub approval: Option<String>,
}

impl McpCall {
    /// The item, in progress (`None`) or with its result (text, is_error).
    pub fn item(&self, result: Option<(&str, bool)>) -> Value {
        let (output, error, status) = match result {
            None => (Value::Null, Value::Null, "in_progress"),
            Some((text, false)) => (json!(text), Value::Null, "completed"),
            Some((text, true)) => (
                Value::Null,
                json!({"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": text}]}),
                "failed",
            ),
        };
        json!({
            "type": "mcp_call",
            "id": self.id,
            "server_label": self.label,
            "name": self.tool,
            "arguments": self.arguments,
            "approval_request_id": self.approval,
            "output": output,
            "error": error,
            "status": status,
        })
    }
}

pub fn assistant_message(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "role": "assistant", "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

pub fn function_call(id: &str, c: &ToolCall) -> Value {
    json!({
        "type": "function_call", "id": id, "call_id": c.id, "name": c.name,
        "arguments": c.arguments, "status": "completed",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_round_trip() {
        let s = SessionId::new();
        let id = item_id("msg", &s, 123_456, part_index(3, 2));
        assert_eq!(id, format!("msg_{}{:012x}{:08x}", hex_of(&s), 123_456, (3 << 12) | 2));
        let r = RunId::new();
        assert_ne!(output_item_id("msg", &r, 1, 0), output_item_id("msg", &r, 2, 0));
        let a = ApprovalId::new();
        assert_eq!(parse_approval_item_id(&approval_item_id(&a)), Some(a));
        assert_eq!(parse_approval_item_id("apr_x"), None);
    }
}
