//! Streaming a response as the Responses API's server-sent events: `response.created` first,
//! a `sequence_number` on every event, the item/part/delta events, and a final
//! `response.completed`, `response.incomplete` or `response.failed` carrying the response.
//!
//! The events are generated from the run's committed log, so a stream of the same response
//! is the same every time and can be resumed (`starting_after`). Text deltas go out live as
//! the model produces them; the sizes of the pieces are recorded with the model's answer, so
//! a replay emits exactly the same deltas with the same sequence numbers. A stream that joins
//! a model turn midway (a resume) waits for that turn to be recorded and replays it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{Value, json};
use stead_core::event::{Event, EventBody};
use stead_core::ids::{SessionId, TenantId};
use stead_core::message::ToolCall;
use stead_engine::Delta;
use stead_store::{Committed, RunRecord};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

use crate::OaiState;
use crate::items::{
    META_KEY, McpCall, approval_item_id, approval_request_item, assistant_message, function_call, item_id,
    list_tools_items, output_item_id, part_index,
};
use crate::responses::{delete_unstored, response_object, run_events};

type Tx = mpsc::Sender<Result<SseEvent, Infallible>>;

#[allow(clippy::too_many_arguments)]
pub fn sse(
    st: OaiState,
    tenant: TenantId,
    run: RunRecord,
    starting_after: Option<u64>,
    commits: broadcast::Receiver<Committed>,
    deltas: broadcast::Receiver<Delta>,
    cleanup: Option<SessionId>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let session = run.session_id;
        let run_id = run.id;
        let mut g = Generator::new(tx, run, starting_after);
        let finished = g.run(&st, commits, Some(deltas)).await;
        if let Some(s) = cleanup {
            if !finished {
                // The client left; the run still ends, and only then is it erased.
                let _ = st.engine.wait_for_run(&tenant, &run_id, st.options.max_wait).await;
            }
            delete_unstored(&st, &tenant, &s).await;
        }
        tracing::debug!(%session, "response stream ended");
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A message whose text is streaming.
struct OpenText {
    item_id: String,
    output_index: usize,
    step: u32,
    /// Pieces relayed so far.
    pieces: u32,
    text: String,
}

struct Generator {
    tx: Tx,
    run: RunRecord,
    starting_after: Option<u64>,
    /// The next event's `sequence_number` (OpenAI's start at 0).
    seq_no: u64,
    /// A model turn this stream joined midway: replayed when recorded, not relayed.
    joined_midway: Option<u32>,
    next_output: usize,
    open: Option<OpenText>,
    /// Model steps already recorded: their late deltas are dropped.
    recorded_step: u32,
    mcp_labels: HashMap<String, String>,
    calls: HashMap<String, ToolCall>,
    /// Carried calls' approval requests, by call id.
    approvals: HashMap<String, String>,
    last_seq: u64,
    gone: bool,
}

impl Generator {
    fn new(tx: Tx, run: RunRecord, starting_after: Option<u64>) -> Self {
        let last_seq = run.state.created_seq.saturating_sub(1);
        Self {
            tx,
            run,
            starting_after,
            seq_no: 0,
            joined_midway: None,
            next_output: 0,
            open: None,
            recorded_step: 0,
            mcp_labels: HashMap::new(),
            calls: HashMap::new(),
            approvals: HashMap::new(),
            last_seq,
            gone: false,
        }
    }

    async fn emit(&mut self, kind: &str, mut payload: Value) {
        let seq = self.seq_no;
        self.seq_no += 1;
        if self.starting_after.is_some_and(|after| seq <= after) || self.gone {
            return;
        }
        payload["type"] = json!(kind);
        payload["sequence_number"] = json!(seq);
        let ev = SseEvent::default().event(kind).data(payload.to_string());
        if self.tx.send(Ok(ev)).await.is_err() {
            self.gone = true;
        }
    }

    /// Streams until the run ends (true) or the client goes away (false).
    async fn run(
        &mut self,
        st: &OaiState,
        mut commits: broadcast::Receiver<Committed>,
        mut deltas: Option<broadcast::Receiver<Delta>>,
    ) -> bool {
        let store = st.engine.store().clone();
        let tenant = self.run.tenant_id.clone();
        let session = self.run.session_id;
        // The opening events show the response as it was created.
        match run_events(st, &self.run).await {
            Ok(events) => {
                let first: Vec<Event> = events.into_iter().take(1).collect();
                let mut created = response_object(&self.run, &first);
                created["status"] = json!("queued");
                created["output"] = json!([]);
                created["usage"] = Value::Null;
                created["completed_at"] = Value::Null;
                created["error"] = Value::Null;
                if let Some(m) = first.first().and_then(|e| match &e.body {
                    EventBody::RunCreated { metadata, .. } => metadata[META_KEY]["mcp_labels"].as_object().cloned(),
                    _ => None,
                }) {
                    self.mcp_labels = m.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_owned()))).collect();
                }
                self.emit("response.created", json!({"response": created.clone()})).await;
                created["status"] = json!("in_progress");
                self.emit("response.in_progress", json!({"response": created})).await;
            }
            Err(e) => {
                tracing::warn!(error = ?e, "cannot stream response");
                return true;
            }
        }
        loop {
            // Text that already arrived goes out before the log is read, so a recorded answer
            // never overtakes its own pieces.
            while let Some(rx) = &mut deltas {
                match rx.try_recv() {
                    Ok(d) if d.run_id == self.run.id => self.on_delta(d).await,
                    Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => deltas = None,
                }
            }
            // Everything committed since we last looked, in log order.
            loop {
                let batch = match store.read_events(&tenant, &session, self.last_seq, 500).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "response stream: reading the log failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                };
                let Some(last) = batch.last() else { break };
                self.last_seq = last.seq;
                let me = self.run.id;
                for e in batch.iter().filter(|e| e.run_id == Some(me)) {
                    if self.on_event(st, e).await {
                        return true;
                    }
                }
            }
            if self.gone {
                return false;
            }
            let tx = self.tx.clone();
            let delta = tokio::select! {
                _ = commits.recv() => None,
                d = async { match &mut deltas { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    match d {
                        Ok(d) if d.run_id == self.run.id => Some(d),
                        Ok(_) | Err(RecvError::Lagged(_)) => None,
                        Err(RecvError::Closed) => {
                            deltas = None;
                            None
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(5)) => None,
                _ = tx.closed() => return false,
            };
            if let Some(d) = delta {
                self.on_delta(d).await;
            }
        }
    }

    async fn on_delta(&mut self, d: Delta) {
        if d.step <= self.recorded_step || d.text.is_empty() || self.joined_midway == Some(d.step) {
            return;
        }
        if self.open.as_ref().is_none_or(|o| o.step != d.step) {
            if d.index != 0 {
                // Earlier pieces of this turn went out before this stream started.
                self.joined_midway = Some(d.step);
                return;
            }
            let item_id = output_item_id("msg", &self.run.id, d.step, part_index(0, 0));
            let output_index = self.next_output;
            self.next_output += 1;
            self.emit(
                "response.output_item.added",
                json!({"output_index": output_index, "item": {
                    "type": "message", "id": item_id, "role": "assistant", "status": "in_progress", "content": []}}),
            )
            .await;
            self.emit(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            )
            .await;
            self.open = Some(OpenText { item_id, output_index, step: d.step, pieces: 0, text: String::new() });
        }
        let (item_id, output_index) = {
            let o = self.open.as_mut().expect("opened above");
            o.pieces += 1;
            o.text.push_str(&d.text);
            (o.item_id.clone(), o.output_index)
        };
        self.emit(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "delta": d.text, "logprobs": []}),
        )
        .await;
    }

    fn mcp(&self, name: &str) -> Option<(String, String)> {
        let (slug, tool) = name.split_once("__")?;
        self.mcp_labels.get(slug).map(|l| (l.clone(), tool.to_owned()))
    }

    /// Emits what one of the run's events adds; true once the run has ended.
    async fn on_event(&mut self, st: &OaiState, e: &Event) -> bool {
        let session = self.run.session_id;
        match &e.body {
            EventBody::RunCreated { carried, metadata, .. } => {
                for c in carried {
                    self.calls.insert(c.call.id.clone(), c.call.clone());
                    self.approvals.insert(c.call.id.clone(), approval_item_id(&c.approval_id));
                }
                for item in list_tools_items(&session, e.seq, metadata) {
                    let output_index = self.next_output;
                    self.next_output += 1;
                    let at = json!({"item_id": item["id"], "output_index": output_index});
                    let mut added = item.clone();
                    added["tools"] = json!([]);
                    self.emit("response.output_item.added", json!({"output_index": output_index, "item": added})).await;
                    self.emit("response.mcp_list_tools.in_progress", at.clone()).await;
                    self.emit("response.mcp_list_tools.completed", at).await;
                    self.emit("response.output_item.done", json!({"output_index": output_index, "item": item})).await;
                }
            }
            EventBody::ModelResponded { step, content, tool_calls, chunks, .. } => {
                self.recorded_step = *step;
                let text = content.clone().unwrap_or_default();
                let open = self.open.take().filter(|o| o.step == *step);
                if open.is_some() || !text.is_empty() {
                    let final_id = output_item_id("msg", &self.run.id, *step, part_index(0, 0));
                    let (stream_id, output_index) = match &open {
                        Some(o) => {
                            // Pieces that were lost (a lagging subscriber) arrive here, so the
                            // deltas always add up to the text.
                            if let Some(rest) = text.strip_prefix(o.text.as_str()).filter(|r| !r.is_empty()) {
                                self.emit(
                                    "response.output_text.delta",
                                    json!({"item_id": o.item_id, "output_index": o.output_index, "content_index": 0,
                                           "delta": rest, "logprobs": []}),
                                )
                                .await;
                            }
                            (o.item_id.clone(), o.output_index)
                        }
                        None => {
                            let output_index = self.next_output;
                            self.next_output += 1;
                            self.emit(
                                "response.output_item.added",
                                json!({"output_index": output_index, "item": {
                                    "type": "message", "id": final_id, "role": "assistant", "status": "in_progress", "content": []}}),
                            )
                            .await;
                            self.emit(
                                "response.content_part.added",
                                json!({"item_id": final_id, "output_index": output_index, "content_index": 0,
                                       "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
                            )
                            .await;
                            for piece in pieces(&text, chunks) {
                                self.emit(
                                    "response.output_text.delta",
                                    json!({"item_id": final_id, "output_index": output_index, "content_index": 0,
                                           "delta": piece, "logprobs": []}),
                                )
                                .await;
                            }
                            (final_id.clone(), output_index)
                        }
                    };
                    self.emit(
                        "response.output_text.done",
                        json!({"item_id": stream_id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}),
                    )
                    .await;
                    self.emit(
                        "response.content_part.done",
                        json!({"item_id": stream_id, "output_index": output_index, "content_index": 0,
                               "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
                    )
                    .await;
                    self.emit(
                        "response.output_item.done",
                        json!({"output_index": output_index, "item": assistant_message(&final_id, &text, "completed")}),
                    )
                    .await;
                }
                for (k, c) in tool_calls.iter().enumerate() {
                    self.calls.insert(c.id.clone(), c.clone());
                    if self.mcp(&c.name).is_some() {
                        continue; // shown once it runs or is asked about
                    }
                    let id = output_item_id("fc", &self.run.id, *step, part_index(0, k + 1));
                    let output_index = self.next_output;
                    self.next_output += 1;
                    let mut added = function_call(&id, c);
                    added["arguments"] = json!("");
                    added["status"] = json!("in_progress");
                    self.emit("response.output_item.added", json!({"output_index": output_index, "item": added})).await;
                    self.emit(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": output_index, "delta": c.arguments}),
                    )
                    .await;
                    self.emit(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": output_index, "name": c.name, "arguments": c.arguments}),
                    )
                    .await;
                    self.emit(
                        "response.output_item.done",
                        json!({"output_index": output_index, "item": function_call(&id, c)}),
                    )
                    .await;
                }
            }
            EventBody::ApprovalRequested { approval_id, name, arguments, .. } => {
                let (label, tool) = self.mcp(name).unwrap_or_else(|| (String::new(), name.clone()));
                let item = approval_request_item(approval_id, &label, &tool, arguments);
                let output_index = self.next_output;
                self.next_output += 1;
                self.emit("response.output_item.added", json!({"output_index": output_index, "item": item.clone()}))
                    .await;
                self.emit("response.output_item.done", json!({"output_index": output_index, "item": item})).await;
            }
            EventBody::ToolCallCompleted { call_id, name, output, is_error } => {
                if let Some((label, tool)) = self.mcp(name) {
                    let call = McpCall {
                        id: item_id("mcp", &session, e.seq, 0),
                        label,
                        tool,
                        arguments: self.calls.get(call_id).map(|c| c.arguments.clone()).unwrap_or_default(),
                        approval: self.approvals.get(call_id).cloned(),
                    };
                    let (id, arguments) = (call.id.clone(), call.arguments.clone());
                    let output_index = self.next_output;
                    self.next_output += 1;
                    let at = json!({"item_id": id, "output_index": output_index});
                    self.emit(
                        "response.output_item.added",
                        json!({"output_index": output_index, "item": call.item(None)}),
                    )
                    .await;
                    self.emit("response.mcp_call.in_progress", at.clone()).await;
                    let mut delta = at.clone();
                    delta["delta"] = json!(arguments);
                    self.emit("response.mcp_call_arguments.delta", delta).await;
                    let mut done = at.clone();
                    done["arguments"] = json!(arguments);
                    self.emit("response.mcp_call_arguments.done", done).await;
                    let outcome = if *is_error { "response.mcp_call.failed" } else { "response.mcp_call.completed" };
                    self.emit(outcome, at).await;
                    let item = call.item(Some((output, *is_error)));
                    self.emit("response.output_item.done", json!({"output_index": output_index, "item": item})).await;
                }
            }
            EventBody::RunCompleted { .. } | EventBody::RunFailed { .. } | EventBody::RunCancelled { .. } => {
                let run = match st.engine.store().get_run(&self.run.tenant_id, &self.run.id).await {
                    Ok(r) => r,
                    Err(_) => self.run.clone(),
                };
                let events = run_events(st, &run).await.unwrap_or_default();
                let obj = response_object(&run, &events);
                let kind = match obj["status"].as_str() {
                    Some("completed") => "response.completed",
                    Some("incomplete") => "response.incomplete",
                    _ => "response.failed",
                };
                self.emit(kind, json!({"response": obj})).await;
                return true;
            }
            _ => {}
        }
        false
    }
}

/// The text cut as it streamed (by the recorded piece sizes), or whole when they don't fit it.
fn pieces<'a>(text: &'a str, chunks: &[u32]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(chunks.len());
    let mut at = 0usize;
    for &c in chunks {
        let end = at + c as usize;
        match text.get(at..end) {
            Some(p) => out.push(p),
            None => return vec![text],
        }
        at = end;
    }
    if at != text.len() || out.is_empty() {
        return vec![text];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::pieces;

    #[test]
    fn replayed_pieces_are_the_streamed_ones() {
        assert_eq!(pieces("echo: héllo", &[6, 6]), vec!["echo: ", "héllo"]);
        assert_eq!(pieces("abc", &[]), vec!["abc"]);
        assert_eq!(pieces("abc", &[1, 1]), vec!["abc"], "sizes that don't cover the text");
        assert_eq!(pieces("é", &[1, 1]), vec!["é"], "sizes that cut a character");
    }
}
