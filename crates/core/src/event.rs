//! The event log: a session's truth. Events are append-only and hash-chained: each event's
//! hash is SHA-256 over the previous event's hash and this event's canonical JSON (RFC 8785),
//! so any edit, insertion or deletion breaks the chain from that point on.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{ApprovalId, RunId, SessionId, TenantId};
use crate::message::{Message, ToolCall, Usage};
use crate::time::Timestamp;

/// The hash "before" the first event of every session.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Who caused an event: `principal:<id>`, `worker:<id>` or `system`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Actor(pub String);

impl Actor {
    pub fn principal(id: &str) -> Self {
        Self(format!("principal:{id}"))
    }
    pub fn worker(id: &str) -> Self {
        Self(format!("worker:{id}"))
    }
    pub fn system() -> Self {
        Self("system".to_owned())
    }
}

/// A stable error as recorded in the log and returned by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

impl ErrorInfo {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into() }
    }
}

/// What happened. Serialized as `{"type": "...", "data": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventBody {
    SessionCreated {
        agent: String,
        agent_version: u32,
        #[serde(default)]
        metadata: serde_json::Value,
    },
    /// A run was queued with the user's input.
    RunCreated {
        input: Vec<Message>,
        /// The agent version this run uses instead of the session's (per-run settings, as the
        /// Responses API gives them with each request).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<AgentRef>,
        /// Calls an earlier run of this session ended on, still waiting for a decision, that
        /// this run takes over (with their open approvals).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        carried: Vec<CarriedCall>,
        /// What the caller wants kept with the run (e.g. the Responses API request's settings).
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        metadata: serde_json::Value,
    },
    /// Messages added to the session's conversation outside any run (conversation items).
    ItemsAdded {
        items: Vec<Message>,
    },
    /// Replaces the session's metadata.
    SessionUpdated {
        metadata: serde_json::Value,
    },
    /// The run is deleted: hidden from the APIs that show runs as responses. Its messages stay
    /// in the conversation and the log (append-only); delete the session to erase them.
    RunDeleted {},
    /// Removes one message, added by the event at `seq`, from the conversation the model sees
    /// from now on. The log keeps it (append-only); delete the session to erase it.
    ItemRemoved {
        seq: u64,
        index: u32,
    },
    /// The model answered. Recorded before anything it asked for is done.
    ModelResponded {
        step: u32,
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        usage: Usage,
        finish_reason: String,
        /// Byte lengths of the pieces the text streamed in, so a stream of this response can
        /// be replayed exactly as it went out live (same events, same sequence numbers).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chunks: Vec<u32>,
    },
    /// Intent: a server-side tool call is about to run. Durable before the side effect.
    ToolCallStarted {
        call_id: String,
        name: String,
        idempotency_key: String,
    },
    /// A tool call's result, from a server-side tool or submitted by the client.
    ToolCallCompleted {
        call_id: String,
        name: String,
        output: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
    /// The run waits for the client to run these tools and submit their outputs.
    RunRequiresAction {
        tool_calls: Vec<ToolCall>,
    },
    /// A person must decide before the call can go on (or, for `outcome_unknown`, how to
    /// settle a call that may or may not have had its effect).
    ApprovalRequested {
        approval_id: ApprovalId,
        kind: ApprovalKind,
        call_id: String,
        name: String,
        arguments: String,
        /// The role a decider must hold.
        role: String,
        expires_at: Timestamp,
        reason: String,
    },
    ApprovalDecided {
        approval_id: ApprovalId,
        call_id: String,
        decision: ApprovalDecision,
        /// `principal:<id>` of the decider, or `system` for an expiry.
        decided_by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// `approve` may replace the arguments the call runs with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arguments: Option<String>,
        /// `skip` supplies the result the model is told.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
    },
    /// The run waits for decisions. Holds no worker.
    RunAwaitingApproval {
        approval_ids: Vec<ApprovalId>,
    },
    RunCancelRequested {
        reason: String,
    },
    RunCompleted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
    },
    RunFailed {
        error: ErrorInfo,
    },
    RunCancelled {
        reason: String,
    },
}

impl EventBody {
    /// The event type's name as stored and shown (`run_created`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::SessionCreated { .. } => "session_created",
            EventBody::RunCreated { .. } => "run_created",
            EventBody::ItemsAdded { .. } => "items_added",
            EventBody::ItemRemoved { .. } => "item_removed",
            EventBody::SessionUpdated { .. } => "session_updated",
            EventBody::RunDeleted { .. } => "run_deleted",
            EventBody::ModelResponded { .. } => "model_responded",
            EventBody::ToolCallStarted { .. } => "tool_call_started",
            EventBody::ToolCallCompleted { .. } => "tool_call_completed",
            EventBody::RunRequiresAction { .. } => "run_requires_action",
            EventBody::ApprovalRequested { .. } => "approval_requested",
            EventBody::ApprovalDecided { .. } => "approval_decided",
            EventBody::RunAwaitingApproval { .. } => "run_awaiting_approval",
            EventBody::RunCancelRequested { .. } => "run_cancel_requested",
            EventBody::RunCompleted { .. } => "run_completed",
            EventBody::RunFailed { .. } => "run_failed",
            EventBody::RunCancelled { .. } => "run_cancelled",
        }
    }

    /// Whether this event changes the model's context (adds a message, or removes one).
    pub fn is_message(&self) -> bool {
        matches!(
            self,
            EventBody::RunCreated { .. }
                | EventBody::ItemsAdded { .. }
                | EventBody::ItemRemoved { .. }
                | EventBody::ModelResponded { .. }
                | EventBody::ToolCallCompleted { .. }
        )
    }

    /// A run's first event with nothing but its input.
    pub fn run_created(input: Vec<Message>) -> Self {
        EventBody::RunCreated { input, agent: None, carried: Vec::new(), metadata: serde_json::Value::Null }
    }

    /// Events that belong to no run: the session's first, and conversation edits.
    pub fn is_session_level(&self) -> bool {
        matches!(
            self,
            EventBody::SessionCreated { .. }
                | EventBody::ItemsAdded { .. }
                | EventBody::ItemRemoved { .. }
                | EventBody::SessionUpdated { .. }
        )
    }

    /// The messages this event adds to the conversation.
    pub fn messages(&self) -> Vec<Message> {
        match self {
            EventBody::RunCreated { input, .. } | EventBody::ItemsAdded { items: input } => input.clone(),
            EventBody::ModelResponded { content, tool_calls, .. } => {
                vec![Message::Assistant { content: content.clone(), tool_calls: tool_calls.clone() }]
            }
            EventBody::ToolCallCompleted { call_id, name, output, is_error } => vec![Message::Tool {
                call_id: call_id.clone(),
                name: name.clone(),
                content: output.clone(),
                is_error: *is_error,
            }],
            _ => Vec::new(),
        }
    }
}

/// An agent version, by name and number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AgentRef {
    pub name: String,
    pub version: u32,
}

/// A call handed from one run to the next (see `RunCreated::carried`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedCall {
    /// The run that ended waiting on it.
    pub from_run: RunId,
    pub call: ToolCall,
    /// Its open approval, which moves to the new run.
    pub approval_id: ApprovalId,
}

/// What an approval is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// May this call run? Decided with `approve` or `deny`.
    ToolCall,
    /// A non-idempotent call started but its result was not recorded (a crash): did it
    /// happen? Decided with `retry`, `skip` (with the result to report) or `fail`.
    OutcomeUnknown,
}

impl ApprovalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalKind::ToolCall => "tool_call",
            ApprovalKind::OutcomeUnknown => "outcome_unknown",
        }
    }

    /// Whether `d` answers this kind of question (`expire` answers both).
    pub fn accepts(self, d: ApprovalDecision) -> bool {
        use ApprovalDecision as D;
        match self {
            ApprovalKind::ToolCall => matches!(d, D::Approve | D::Deny | D::Expire),
            ApprovalKind::OutcomeUnknown => matches!(d, D::Retry | D::Skip | D::Fail | D::Expire),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    Approve,
    Deny,
    /// Nobody decided in time.
    Expire,
    Retry,
    Skip,
    Fail,
}

impl ApprovalDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalDecision::Approve => "approve",
            ApprovalDecision::Deny => "deny",
            ApprovalDecision::Expire => "expire",
            ApprovalDecision::Retry => "retry",
            ApprovalDecision::Skip => "skip",
            ApprovalDecision::Fail => "fail",
        }
    }
}

/// An event before it is committed: the store assigns `seq`, `at` and the hash.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub run_id: Option<RunId>,
    pub actor: Actor,
    pub body: EventBody,
}

/// A committed event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    pub actor: Actor,
    pub at: Timestamp,
    #[serde(flatten)]
    pub body: EventBody,
    /// Hex SHA-256 over the previous hash and this event's canonical JSON.
    pub hash: String,
}

/// The part of an event that the hash covers: everything but the hash itself.
#[derive(Serialize)]
struct Hashed<'a> {
    tenant_id: &'a TenantId,
    session_id: &'a SessionId,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: &'a Option<RunId>,
    actor: &'a Actor,
    at: &'a Timestamp,
    #[serde(flatten)]
    body: &'a EventBody,
}

/// Computes an event's chain hash from the previous hash and the event's fields.
/// The store calls this before an `Event` exists (it assigns seq and time), hence the
/// field-by-field signature.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    prev: &[u8; 32],
    tenant_id: &TenantId,
    session_id: &SessionId,
    seq: u64,
    run_id: &Option<RunId>,
    actor: &Actor,
    at: &Timestamp,
    body: &EventBody,
) -> [u8; 32] {
    let canonical = serde_jcs::to_vec(&Hashed { tenant_id, session_id, seq, run_id, actor, at, body })
        .expect("event bodies are plain JSON and always serialize");
    let mut h = Sha256::new();
    h.update(prev);
    h.update(&canonical);
    h.finalize().into()
}

/// An event body serialized once, ahead of the store's single writer: its `data` as stored
/// (plain JSON) and as hashed (RFC 8785 canonical JSON). Canonicalization is the costly part
/// of hashing, and it does not depend on anything the writer assigns.
#[derive(Clone, Debug)]
pub struct SerializedBody {
    pub data_json: String,
    pub data_canonical: Vec<u8>,
}

impl SerializedBody {
    pub fn of(body: &EventBody) -> Result<Self, String> {
        let mut value = serde_json::to_value(body).map_err(|e| format!("cannot serialize event: {e}"))?;
        let data = value.get_mut("data").map(serde_json::Value::take).unwrap_or(serde_json::Value::Null);
        let data_json = serde_json::to_string(&data).map_err(|e| format!("cannot serialize event data: {e}"))?;
        let data_canonical = serde_jcs::to_vec(&data).map_err(|e| format!("cannot canonicalize event data: {e}"))?;
        Ok(Self { data_json, data_canonical })
    }
}

/// The same hash as [`chain_hash`], from a body already canonicalized: the event's canonical
/// JSON is assembled around it. RFC 8785 orders keys by UTF-16 code units, which for these
/// fixed ASCII keys is `actor, at, data, run_id, seq, session_id, tenant_id, type`.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash_serialized(
    prev: &[u8; 32],
    tenant_id: &TenantId,
    session_id: &SessionId,
    seq: u64,
    run_id: &Option<RunId>,
    actor: &Actor,
    at: &Timestamp,
    kind: &str,
    data_canonical: &[u8],
) -> [u8; 32] {
    // Strings are escaped as RFC 8785 requires; integers below 2^53 print as themselves.
    let string = |s: &str| serde_jcs::to_string(s).expect("a string always serializes");
    let mut h = Sha256::new();
    h.update(prev);
    h.update(b"{\"actor\":");
    h.update(string(&actor.0).as_bytes());
    h.update(b",\"at\":");
    h.update(string(&at.to_rfc3339()).as_bytes());
    h.update(b",\"data\":");
    h.update(data_canonical);
    if let Some(run) = run_id {
        h.update(b",\"run_id\":\"");
        h.update(run.to_string().as_bytes());
        h.update(b"\"");
    }
    h.update(b",\"seq\":");
    h.update(seq.to_string().as_bytes());
    h.update(b",\"session_id\":\"");
    h.update(session_id.to_string().as_bytes());
    h.update(b"\",\"tenant_id\":");
    h.update(string(tenant_id.as_str()).as_bytes());
    h.update(b",\"type\":");
    h.update(string(kind).as_bytes());
    h.update(b"}");
    h.finalize().into()
}

impl Event {
    /// Recomputes this event's hash given the previous event's hash.
    pub fn compute_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        chain_hash(prev, &self.tenant_id, &self.session_id, self.seq, &self.run_id, &self.actor, &self.at, &self.body)
    }
}

/// Where and why a chain stopped verifying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenLink {
    pub seq: u64,
    pub reason: String,
}

/// Incremental chain verifier: feed events in order, it names the first broken link.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    prev: [u8; 32],
    next_seq: u64,
    pub verified: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { prev: GENESIS_HASH, next_seq: 1, verified: 0 }
    }
}

impl ChainVerifier {
    pub fn push(&mut self, event: &Event) -> Result<(), BrokenLink> {
        if event.seq != self.next_seq {
            return Err(BrokenLink {
                seq: event.seq,
                reason: format!(
                    "expected sequence {}, found {} (an event is missing or out of place)",
                    self.next_seq, event.seq
                ),
            });
        }
        let expected = event.compute_hash(&self.prev);
        if hex::encode(expected) != event.hash {
            return Err(BrokenLink {
                seq: event.seq,
                reason: "hash does not match the event's content and the previous hash (edited or reordered)".into(),
            });
        }
        self.prev = expected;
        self.next_seq += 1;
        self.verified += 1;
        Ok(())
    }

    /// The hash the next event must chain from.
    pub fn head_hash(&self) -> [u8; 32] {
        self.prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Event> {
        let tenant = TenantId::default_tenant();
        let session = SessionId::new();
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let body = EventBody::run_created(vec![Message::User { content: format!("hello {seq}") }]);
                let mut e = Event {
                    tenant_id: tenant.clone(),
                    session_id: session,
                    seq,
                    run_id: Some(RunId::new()),
                    actor: Actor::principal("p"),
                    at: Timestamp(1000 + seq as i64),
                    body,
                    hash: String::new(),
                };
                prev = e.compute_hash(&prev);
                e.hash = hex::encode(prev);
                e
            })
            .collect()
    }

    fn verify(events: &[Event]) -> Result<u64, BrokenLink> {
        let mut v = ChainVerifier::default();
        for e in events {
            v.push(e)?;
        }
        Ok(v.verified)
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(20)), Ok(20));
    }

    #[test]
    fn every_kind_of_tampering_names_the_first_broken_link() {
        let events = chain(10);
        // Edit a payload.
        let mut edited = events.clone();
        edited[4].body = EventBody::run_created(vec![Message::User { content: "forged".into() }]);
        assert_eq!(verify(&edited).unwrap_err().seq, 5);
        // Edit the actor only.
        let mut actor = events.clone();
        actor[6].actor = Actor::principal("mallory");
        assert_eq!(verify(&actor).unwrap_err().seq, 7);
        // Delete an event.
        let mut deleted = events.clone();
        deleted.remove(3);
        assert_eq!(verify(&deleted).unwrap_err().seq, 5);
        // Swap two events, renumbered to look contiguous.
        let mut swapped = events.clone();
        swapped.swap(2, 3);
        swapped[2].seq = 3;
        swapped[3].seq = 4;
        assert_eq!(verify(&swapped).unwrap_err().seq, 3);
        // Truncating the tail is not detectable from the events alone; the store
        // compares the session's recorded head with the last event for that.
        assert_eq!(verify(&events[..5]), Ok(5));
    }

    /// The fast path must hash exactly what the reference path hashes, for every kind of
    /// event and awkward content (escapes, control characters, non-ASCII, numbers).
    #[test]
    fn serialized_hash_equals_the_reference_hash() {
        use crate::event::{ApprovalDecision, ApprovalKind};
        use crate::ids::ApprovalId;
        let texts = [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "ctl \u{0} \u{1f} \u{7f} \t\n\r\u{8}\u{c}",
            "ünïcödé 日本 🎉 \u{2028}\u{2029}",
            "<script>&amp;</script>",
            "e\u{301}",
            "\u{ffff}",
        ];
        let call = |t: &str| ToolCall {
            id: format!("call_{t}"),
            name: "n".into(),
            arguments: format!("{{\"a\":{}}}", serde_json::to_string(t).unwrap()),
        };
        let mut bodies = Vec::new();
        for t in texts {
            bodies.extend([
                EventBody::SessionCreated { agent: t.into(), agent_version: 7, metadata: serde_json::json!({"k": t, "n": [0.1, 1e21, -0.0, 1.5e-7, 123456789012345u64, -3], "z": null, "b": true, "é": {"b": 1, "a": 2, "A": 3, "\u{10000}": 4, "\u{ffff}": 5}}) },
                EventBody::run_created(vec![Message::User { content: t.into() }]),
                EventBody::ModelResponded { step: 3, model: t.into(), content: Some(t.into()), tool_calls: vec![call(t)], usage: Usage { input_tokens: 10, output_tokens: u64::from(u32::MAX) }, finish_reason: "stop".into(), chunks: Vec::new() },
                EventBody::ToolCallStarted { call_id: t.into(), name: t.into(), idempotency_key: "k".into() },
                EventBody::ToolCallCompleted { call_id: "c".into(), name: "n".into(), output: t.into(), is_error: true },
                EventBody::RunRequiresAction { tool_calls: vec![call(t), call("x")] },
                EventBody::ApprovalRequested { approval_id: ApprovalId::new(), kind: ApprovalKind::OutcomeUnknown, call_id: t.into(), name: "n".into(), arguments: t.into(), role: t.into(), expires_at: Timestamp(1_700_000_000_123), reason: t.into() },
                EventBody::ApprovalDecided { approval_id: ApprovalId::new(), call_id: "c".into(), decision: ApprovalDecision::Skip, decided_by: t.into(), reason: Some(t.into()), arguments: None, output: Some(t.into()) },
                EventBody::RunAwaitingApproval { approval_ids: vec![ApprovalId::new()] },
                EventBody::RunCancelRequested { reason: t.into() },
                EventBody::RunCompleted { output: None },
                EventBody::RunFailed { error: ErrorInfo::new("x", t) },
                EventBody::RunCancelled { reason: t.into() },
            ]);
        }
        let tenant = TenantId::new("acme-1").unwrap();
        let session = SessionId::new();
        let mut prev = GENESIS_HASH;
        for (i, body) in bodies.iter().enumerate() {
            let run = (i % 3 != 0).then(RunId::new);
            let actor = Actor(texts[i % texts.len()].to_owned());
            let at = Timestamp(1_764_000_000_000 + i as i64 * 7919);
            let seq = 1 + i as u64 * 1_000_003;
            let reference = chain_hash(&prev, &tenant, &session, seq, &run, &actor, &at, body);
            let ser = SerializedBody::of(body).unwrap();
            let fast = chain_hash_serialized(
                &prev,
                &tenant,
                &session,
                seq,
                &run,
                &actor,
                &at,
                body.kind(),
                &ser.data_canonical,
            );
            assert_eq!(hex::encode(fast), hex::encode(reference), "event {i}: {body:?}");
            let stored: serde_json::Value = serde_json::from_str(&ser.data_json).unwrap();
            assert_eq!(stored, serde_json::to_value(body).unwrap()["data"]);
            prev = reference;
        }
    }

    #[test]
    fn serialized_shape_is_flat_and_stable() {
        let e = &chain(1)[0];
        let v = serde_json::to_value(e).unwrap();
        assert_eq!(v["type"], "run_created");
        assert_eq!(v["data"]["input"][0]["role"], "user");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(&back, e);
        assert_eq!(verify(&[back]), Ok(1), "a round-tripped event still verifies");
    }
}
