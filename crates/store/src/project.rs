//! For backends, not for callers of [`crate::Store`]: the backend-neutral rules of a write —
//! the shape of events, what an append does to its runs and approvals, sealing events into
//! the hash chain — so every backend enforces exactly the same ones.
//!
//! A backend runs an append as: lock the session and compare its head; [`references`] names
//! the runs and approvals the events touch; the backend loads them ([`Loaded`]) with its own
//! SQL; [`plan_append`] folds the events (`RunState::apply`, the approval projection) into
//! an [`AppendPlan`] or refuses the batch; [`seal`] assigns the chain hashes; the backend writes
//! the sealed events and the plan in the same transaction. Nothing here does I/O.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sha2::{Digest, Sha256};
use stead_core::agent::AgentSpec;
use stead_core::event::{
    ApprovalDecision, ApprovalKind, CarriedCall, ErrorInfo, Event, EventBody, NewEvent, SerializedBody,
    chain_hash_serialized,
};
use stead_core::ids::{AgentVersionId, ApprovalId, RunId, SessionId, TenantId};
use stead_core::run::{RunState, RunStatus};
use stead_core::time::Timestamp;

use crate::{AgentVersion, Committed, Error, Result};

/// The limits every write enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A session's log may hold at most this many events.
    pub max_events_per_session: u64,
    /// An event's JSON payload (its `data`) may be at most this many bytes.
    pub max_event_bytes: usize,
}

/// Error code of a run set aside because its row or its session's row does not decode.
pub const CORRUPT_ROW: &str = "corrupt_row";

/// Hex SHA-256 of the spec's canonical JSON (RFC 8785), so formatting and key order do not
/// make a new version.
pub fn spec_hash(spec: &AgentSpec) -> Result<String> {
    let canonical =
        serde_jcs::to_vec(spec).map_err(|e| Error::Backend(format!("cannot canonicalize agent spec: {e}")))?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}

/// What storing `spec` as its agent's next version means, given the agent's latest version:
/// `Ok(Err(latest))` when the spec equals it (nothing to store), else the new version to insert.
pub fn next_agent_version(
    tenant: &TenantId,
    spec: &AgentSpec,
    latest: Option<AgentVersion>,
) -> Result<std::result::Result<AgentVersion, AgentVersion>> {
    let hash = spec_hash(spec)?;
    if let Some(latest) = latest.as_ref().filter(|l| l.spec_hash == hash) {
        return Ok(Err(latest.clone()));
    }
    let version = match &latest {
        Some(l) => l
            .version
            .checked_add(1)
            .ok_or_else(|| Error::LimitExceeded(format!("agent {} has too many versions", spec.name)))?,
        None => 1,
    };
    Ok(Ok(AgentVersion {
        id: AgentVersionId::new(),
        tenant_id: tenant.clone(),
        name: spec.name.clone(),
        version,
        spec: spec.clone(),
        spec_hash: hash,
        created_at: Timestamp::now(),
    }))
}

/// `NotFound` for an agent, or one version of it.
pub fn agent_not_found(name: &str, version: Option<u32>) -> Error {
    Error::NotFound {
        what: "agent",
        id: match version {
            Some(v) => format!("{name} version {v}"),
            None => name.to_owned(),
        },
    }
}

/// A page's size: 0 means the default (100); larger requests are served in pages of at most
/// 1000 (a conformance convention every backend follows).
pub fn page_limit(page: &crate::Page) -> i64 {
    match page.limit {
        0 => 100,
        n => i64::from(n.min(1000)),
    }
}

/// Serializes every event's body (the costly, transaction-independent part of hashing) before
/// the write's transaction starts.
pub fn serialize_bodies<'a>(events: impl Iterator<Item = &'a NewEvent>) -> Result<Vec<SerializedBody>> {
    events.map(|e| SerializedBody::of(&e.body).map_err(Error::Backend)).collect()
}

/// An event whose shape is wrong regardless of any state: the caller built it badly.
pub fn malformed(event: &NewEvent, why: &str) -> Error {
    match event.run_id {
        Some(run) => Error::InvalidTransition { run, reason: format!("`{}` event {why}", event.body.kind()) },
        None => Error::Backend(format!("invalid `{}` event: {why}", event.body.kind())),
    }
}

/// `LimitExceeded` when `adding` events would take the session past its limit.
pub fn check_session_limit(limits: &Limits, head: u64, adding: usize) -> Result<()> {
    let total = head.saturating_add(adding as u64);
    if total > limits.max_events_per_session {
        return Err(Error::LimitExceeded(format!(
            "the session would hold {total} events, over the limit of {} (max_events_per_session)",
            limits.max_events_per_session
        )));
    }
    Ok(())
}

/// A session's first event must be `session_created`, naming no run.
pub fn check_first_event(first: &NewEvent) -> Result<()> {
    if !matches!(first.body, EventBody::SessionCreated { .. }) {
        return Err(malformed(first, "cannot start a session (expected `session_created`)"));
    }
    if first.run_id.is_some() {
        return Err(malformed(first, "must not name a run"));
    }
    Ok(())
}

/// The run a batch of events creates first, if any: what an idempotency key remembers.
pub fn first_run_created<'a>(events: impl IntoIterator<Item = &'a NewEvent>) -> Option<RunId> {
    events.into_iter().find(|e| matches!(e.body, EventBody::RunCreated { .. })).and_then(|e| e.run_id)
}

/// The state of a run being set aside because its row does not decode: `failed` with
/// [`CORRUPT_ROW`], when its state itself still decodes (`None` otherwise).
pub fn quarantined_state(state: Option<RunState>, why: &str, now: Timestamp) -> Option<RunState> {
    state.map(|mut s| {
        s.status = RunStatus::Failed;
        s.error = Some(ErrorInfo::new(CORRUPT_ROW, format!("the run's stored data is damaged: {why}")));
        s.finished_at.get_or_insert(now);
        s
    })
}

/// What an append's events name, for the backend to load before [`plan_append`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Every run named: by an event, as created, or as the origin of a carried call.
    pub runs: Vec<RunId>,
    /// Every approval named: requested, decided or carried.
    pub approvals: Vec<ApprovalId>,
}

/// The runs and approvals `events` touch, each once.
pub fn references(events: &[NewEvent]) -> References {
    fn add_run(refs: &mut References, run: RunId) {
        if !refs.runs.contains(&run) {
            refs.runs.push(run);
        }
    }
    fn add_approval(refs: &mut References, id: ApprovalId) {
        if !refs.approvals.contains(&id) {
            refs.approvals.push(id);
        }
    }
    let mut refs = References::default();
    for e in events {
        if let Some(run) = e.run_id {
            add_run(&mut refs, run);
        }
        match &e.body {
            EventBody::RunCreated { carried, .. } => {
                for c in carried {
                    add_run(&mut refs, c.from_run);
                    add_approval(&mut refs, c.approval_id);
                }
            }
            EventBody::ApprovalRequested { approval_id, .. } | EventBody::ApprovalDecided { approval_id, .. } => {
                add_approval(&mut refs, *approval_id)
            }
            _ => {}
        }
    }
    refs
}

/// A referenced run as the backend found it. Absent from [`Loaded::runs`]: no such run.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredRun {
    /// A run of the appending session (same tenant), with its backend key and state.
    Here { pk: i64, state: Box<RunState> },
    /// A run of another session or tenant: it exists, and that is all this append may know.
    Elsewhere,
}

/// A referenced approval as the backend found it (ids are unique across tenants, so it is
/// looked up by id alone). Absent from [`Loaded::approvals`]: no such approval.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredApproval {
    /// It belongs to the appending session (same tenant).
    pub here: bool,
    pub run_id: RunId,
    pub kind: ApprovalKind,
    pub call_id: String,
    pub tool_name: String,
    pub arguments: String,
    pub decided: bool,
}

/// What the backend loaded for an append's [`References`].
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub runs: HashMap<RunId, StoredRun>,
    pub approvals: HashMap<ApprovalId, StoredApproval>,
}

/// A run the append creates (`pk: None`) or changes, with its state after the append.
#[derive(Clone, Debug, PartialEq)]
pub struct RunChange {
    pub id: RunId,
    pub pk: Option<i64>,
    /// Its status before the append (`None` if created by it).
    pub before: Option<RunStatus>,
    pub state: RunState,
}

/// A decision recorded on an approval row.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionRow {
    pub decision: ApprovalDecision,
    pub decided_by: String,
    pub decided_at: Timestamp,
    pub reason: Option<String>,
    pub arguments: Option<String>,
    pub output: Option<String>,
}

/// An approval row the append creates, as it stands after the append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewApproval {
    pub id: ApprovalId,
    pub run_id: RunId,
    pub kind: ApprovalKind,
    pub call_id: String,
    pub tool_name: String,
    pub arguments: String,
    pub role: String,
    pub reason: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// Decided in the same append.
    pub decision: Option<DecisionRow>,
}

/// An existing approval row the append changes: write both columns groups as given.
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalChange {
    pub id: ApprovalId,
    /// The run it now belongs to (moved by a carried call, or unchanged).
    pub run_id: RunId,
    /// `Some` when decided by this append.
    pub decision: Option<DecisionRow>,
}

/// Everything an accepted append writes besides its events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppendPlan {
    /// The session's new metadata (the last `session_updated`), if any.
    pub metadata: Option<serde_json::Value>,
    /// Runs created or changed, in the order the events first touched them.
    pub runs: Vec<RunChange>,
    /// Approvals created, in request order (which is their listing order).
    pub new_approvals: Vec<NewApproval>,
    pub changed_approvals: Vec<ApprovalChange>,
}

impl AppendPlan {
    /// Runs whose status this append changes (or creates), with the new status: what
    /// [`Committed::runs`] reports.
    pub fn changed_statuses(&self) -> Vec<(RunId, RunStatus)> {
        self.runs.iter().filter(|r| r.before != Some(r.state.status)).map(|r| (r.id, r.state.status)).collect()
    }
}

/// An approval as this append sees it: loaded, then changed by earlier events of the batch.
struct Working {
    here: bool,
    run_id: RunId,
    kind: ApprovalKind,
    call_id: String,
    tool_name: String,
    arguments: String,
    decided: bool,
    /// Index into `new_approvals` when this append created it.
    created: Option<usize>,
    changed: bool,
    decision: Option<DecisionRow>,
}

/// Folds `events` (to be numbered from `head + 1`, all at `at`) into the changes they make,
/// or refuses the whole batch: shapes (`session_created` only first, session-level events
/// name no run, run-level ones do), run transitions (`RunState::apply`), unique run and
/// approval ids, decisions only on pending approvals of their run and call, carried approvals
/// only from open tool-call questions of a completed run of this session.
pub fn plan_append(events: &[NewEvent], at: Timestamp, head: u64, loaded: &Loaded) -> Result<AppendPlan> {
    let mut plan = AppendPlan::default();
    let mut approvals: HashMap<ApprovalId, Working> = HashMap::new();
    for (i, new) in events.iter().enumerate() {
        let seq = head + 1 + i as u64;
        match (&new.body, new.run_id) {
            (EventBody::SessionCreated { .. }, _) => return Err(malformed(new, "can only be a session's first event")),
            (EventBody::SessionUpdated { metadata }, None) => plan.metadata = Some(metadata.clone()),
            (body, None) if body.is_session_level() => {}
            (_, None) => return Err(malformed(new, "must name its run")),
            (body, Some(_)) if body.is_session_level() => {
                return Err(malformed(new, "belongs to the session, not to a run"));
            }
            (EventBody::RunCreated { carried, .. }, Some(run)) => {
                if plan.runs.iter().any(|r| r.id == run) || loaded.runs.contains_key(&run) {
                    return Err(Error::InvalidTransition { run, reason: "a run with this id already exists".into() });
                }
                for c in carried {
                    take_over(&plan, loaded, &mut approvals, run, c)?;
                }
                plan.runs.push(RunChange {
                    id: run,
                    pk: None,
                    before: None,
                    state: RunState::created_from(seq, at, &new.body),
                });
            }
            (body, Some(run)) => {
                let idx = match plan.runs.iter().position(|r| r.id == run) {
                    Some(idx) => idx,
                    None => match loaded.runs.get(&run) {
                        Some(StoredRun::Here { pk, state }) => {
                            plan.runs.push(RunChange {
                                id: run,
                                pk: Some(*pk),
                                before: Some(state.status),
                                state: (**state).clone(),
                            });
                            plan.runs.len() - 1
                        }
                        _ => {
                            return Err(Error::InvalidTransition {
                                run,
                                reason: "the run does not exist in this session".into(),
                            });
                        }
                    },
                };
                plan.runs[idx].state.apply(at, body).map_err(|reason| Error::InvalidTransition { run, reason })?;
                project_approval(&mut plan, loaded, &mut approvals, run, at, body)?;
            }
        }
    }
    for (id, w) in approvals {
        match w.created {
            Some(idx) => {
                let row = &mut plan.new_approvals[idx];
                row.run_id = w.run_id;
                row.decision = w.decision;
            }
            None if w.changed => {
                plan.changed_approvals.push(ApprovalChange { id, run_id: w.run_id, decision: w.decision })
            }
            None => {}
        }
    }
    plan.changed_approvals.sort_by_key(|c| c.id);
    Ok(plan)
}

/// The approval `id` as the batch so far left it, loaded on first use.
fn working<'a>(
    loaded: &Loaded,
    approvals: &'a mut HashMap<ApprovalId, Working>,
    id: ApprovalId,
) -> Option<&'a mut Working> {
    match approvals.entry(id) {
        Entry::Occupied(o) => Some(o.into_mut()),
        Entry::Vacant(v) => {
            let a = loaded.approvals.get(&id)?;
            Some(v.insert(Working {
                here: a.here,
                run_id: a.run_id,
                kind: a.kind,
                call_id: a.call_id.clone(),
                tool_name: a.tool_name.clone(),
                arguments: a.arguments.clone(),
                decided: a.decided,
                created: None,
                changed: false,
                decision: None,
            }))
        }
    }
}

/// The status of a run of this session as the batch so far left it.
fn status_here(plan: &AppendPlan, loaded: &Loaded, run: RunId) -> Option<RunStatus> {
    match plan.runs.iter().find(|r| r.id == run) {
        Some(r) => Some(r.state.status),
        None => match loaded.runs.get(&run) {
            Some(StoredRun::Here { state, .. }) => Some(state.status),
            _ => None,
        },
    }
}

/// Moves an open approval of a completed run to the run that carries its call on. Only one
/// run can: the approval must still belong to the run it came from, undecided.
fn take_over(
    plan: &AppendPlan,
    loaded: &Loaded,
    approvals: &mut HashMap<ApprovalId, Working>,
    run: RunId,
    carried: &CarriedCall,
) -> Result<()> {
    let from_completed = status_here(plan, loaded, carried.from_run) == Some(RunStatus::Completed);
    let open = working(loaded, approvals, carried.approval_id).filter(|a| {
        a.here
            && a.run_id == carried.from_run
            && a.call_id == carried.call.id
            && a.tool_name == carried.call.name
            && a.arguments == carried.call.arguments
            && !a.decided
            && a.kind == ApprovalKind::ToolCall
    });
    match open {
        Some(a) if from_completed => {
            a.run_id = run;
            a.changed = true;
            Ok(())
        }
        _ => Err(Error::InvalidTransition {
            run,
            reason: format!(
                "approval {} is not an open question about this call of completed run {} in this session (decided, expired, already taken over, or another call)",
                carried.approval_id, carried.from_run
            ),
        }),
    }
}

/// Folds an approval event into the approvals projection. Runs after `RunState::apply`
/// accepted the event, yet checks again on its own: the run state only knows its run, so only
/// here can an approval id reused elsewhere be caught, and the projection must never quietly
/// diverge from the log.
fn project_approval(
    plan: &mut AppendPlan,
    loaded: &Loaded,
    approvals: &mut HashMap<ApprovalId, Working>,
    run: RunId,
    at: Timestamp,
    body: &EventBody,
) -> Result<()> {
    match body {
        EventBody::ApprovalRequested { approval_id, kind, call_id, name, arguments, role, expires_at, reason } => {
            if working(loaded, approvals, *approval_id).is_some() {
                return Err(Error::InvalidTransition {
                    run,
                    reason: format!("an approval with id {approval_id} already exists"),
                });
            }
            approvals.insert(
                *approval_id,
                Working {
                    here: true,
                    run_id: run,
                    kind: *kind,
                    call_id: call_id.clone(),
                    tool_name: name.clone(),
                    arguments: arguments.clone(),
                    decided: false,
                    created: Some(plan.new_approvals.len()),
                    changed: true,
                    decision: None,
                },
            );
            plan.new_approvals.push(NewApproval {
                id: *approval_id,
                run_id: run,
                kind: *kind,
                call_id: call_id.clone(),
                tool_name: name.clone(),
                arguments: arguments.clone(),
                role: role.clone(),
                reason: reason.clone(),
                created_at: at,
                expires_at: *expires_at,
                decision: None,
            });
        }
        EventBody::ApprovalDecided { approval_id, call_id, decision, decided_by, reason, arguments, output } => {
            let pending = working(loaded, approvals, *approval_id)
                .filter(|a| a.here && a.run_id == run && a.call_id == *call_id && !a.decided);
            let Some(a) = pending else {
                return Err(Error::InvalidTransition {
                    run,
                    reason: format!("approval {approval_id} is not pending for call {call_id:?} of this run"),
                });
            };
            a.decided = true;
            a.changed = true;
            a.decision = Some(DecisionRow {
                decision: *decision,
                decided_by: decided_by.clone(),
                decided_at: at,
                reason: reason.clone(),
                arguments: arguments.clone(),
                output: output.clone(),
            });
        }
        _ => {}
    }
    Ok(())
}

/// An event numbered, timed and chained: what the backend inserts.
#[derive(Clone, Debug)]
pub struct Sealed {
    pub event: Event,
    /// The chain hash (also in `event.hash`, hex).
    pub hash: [u8; 32],
    /// The event's `data` as stored (plain JSON).
    pub data_json: String,
}

/// Numbers `events` from `first_seq`, times them `at`, checks each payload against
/// `max_event_bytes` and chains them after `prev` (`chain_hash_serialized`, byte-identical to
/// `chain_hash`), so a chain verifies the same whichever backend wrote it.
#[allow(clippy::too_many_arguments)]
pub fn seal(
    limits: &Limits,
    tenant: &TenantId,
    session: SessionId,
    first_seq: u64,
    at: Timestamp,
    prev: [u8; 32],
    events: Vec<NewEvent>,
    serialized: Vec<SerializedBody>,
) -> Result<Vec<Sealed>> {
    let mut prev = prev;
    let mut out = Vec::with_capacity(events.len());
    for (i, (new, ser)) in events.into_iter().zip(serialized).enumerate() {
        let SerializedBody { data_json, data_canonical } = ser;
        if data_json.len() > limits.max_event_bytes {
            return Err(Error::LimitExceeded(format!(
                "a `{}` event's payload is {} bytes, over the limit of {} bytes (max_event_bytes)",
                new.body.kind(),
                data_json.len(),
                limits.max_event_bytes
            )));
        }
        let seq = first_seq + i as u64;
        let hash = chain_hash_serialized(
            &prev,
            tenant,
            &session,
            seq,
            &new.run_id,
            &new.actor,
            &at,
            new.body.kind(),
            &data_canonical,
        );
        prev = hash;
        let event = Event {
            tenant_id: tenant.clone(),
            session_id: session,
            seq,
            run_id: new.run_id,
            actor: new.actor,
            at,
            body: new.body,
            hash: hex::encode(hash),
        };
        out.push(Sealed { event, hash, data_json });
    }
    Ok(out)
}

/// The notice of an accepted append, to publish once its transaction committed.
pub fn committed(tenant: &TenantId, session: SessionId, events: &[Event], plan: &AppendPlan) -> Committed {
    Committed {
        tenant_id: tenant.clone(),
        session_id: session,
        events: std::sync::Arc::from(events.to_vec()),
        runs: plan.changed_statuses(),
    }
}

#[cfg(test)]
mod tests {
    use stead_core::event::{Actor, ChainVerifier, GENESIS_HASH};
    use stead_core::message::Message;

    use super::*;

    fn created(run: RunId) -> NewEvent {
        NewEvent {
            run_id: Some(run),
            actor: Actor::principal("p"),
            body: EventBody::run_created(vec![Message::User { content: "é \u{1f600} \"q\"".into() }]),
        }
    }

    /// Sealed events chain exactly as `chain_hash` (and so `ChainVerifier`) says.
    #[test]
    fn sealed_events_verify_as_a_chain() {
        let tenant = TenantId::new("t").expect("tenant");
        let run = RunId::new();
        let events = vec![
            NewEvent { run_id: None, actor: Actor::system(), body: EventBody::ItemsAdded { items: Vec::new() } },
            created(run),
        ];
        let serialized = serialize_bodies(events.iter()).expect("serialize");
        let limits = Limits { max_events_per_session: 10, max_event_bytes: 1 << 20 };
        let sealed =
            seal(&limits, &tenant, SessionId::new(), 1, Timestamp(1_700_000_000_123), GENESIS_HASH, events, serialized)
                .expect("seal");
        let mut chain = ChainVerifier::default();
        for s in &sealed {
            chain.push(&s.event).expect("links");
            assert_eq!(s.event.compute_hash(&if s.event.seq == 1 { GENESIS_HASH } else { sealed[0].hash }), s.hash);
        }
        assert_eq!(chain.head_hash(), sealed[1].hash);
    }

    #[test]
    fn references_name_each_run_and_approval_once() {
        let (a, b) = (RunId::new(), RunId::new());
        let refs = references(&[created(a), created(b), created(a)]);
        assert_eq!(refs.runs, vec![a, b]);
        assert!(refs.approvals.is_empty());
    }

    /// A run created and moved on in one batch is one change, created, with its final state.
    #[test]
    fn a_batch_folds_into_one_change_per_run() {
        let run = RunId::new();
        let cancel = NewEvent {
            run_id: Some(run),
            actor: Actor::system(),
            body: EventBody::RunCancelRequested { reason: "r".into() },
        };
        let plan = plan_append(&[created(run), cancel], Timestamp(5), 1, &Loaded::default()).expect("plan");
        assert_eq!(plan.runs.len(), 1);
        assert_eq!((plan.runs[0].pk, plan.runs[0].before), (None, None));
        assert_eq!(plan.runs[0].state.cancel_requested.as_deref(), Some("r"));
        assert_eq!(plan.changed_statuses(), vec![(run, RunStatus::Queued)]);
        let err = plan_append(
            &[created(run)],
            Timestamp(5),
            1,
            &Loaded { runs: [(run, StoredRun::Elsewhere)].into(), ..Loaded::default() },
        )
        .expect_err("a taken id");
        assert!(matches!(err, Error::InvalidTransition { .. }), "{err:?}");
    }
}
