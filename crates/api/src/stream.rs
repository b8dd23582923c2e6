//! Server-sent event streams of a session's log. Event ids are sequence numbers, so a client
//! that reconnects with `Last-Event-ID` misses nothing and sees nothing twice. The stream
//! subscribes to commits before reading the backlog, and re-reads from the store whenever it
//! notices a gap (or lags behind), so ordering comes from the log, not from timing.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use stead_core::event::{Event, EventBody};
use stead_core::ids::{RunId, SessionId, TenantId};
use stead_engine::Engine;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// What a stream covers.
pub struct StreamScope {
    /// Start after this sequence number.
    after: u64,
    /// Only this run's events; the stream ends (with a final `run` event) once the run
    /// finishes or waits for the client.
    run: Option<RunId>,
    deltas: bool,
}

impl StreamScope {
    pub fn session(after: u64, deltas: bool) -> Self {
        Self { after, run: None, deltas }
    }
    pub fn run(run: RunId, after: u64) -> Self {
        Self { after, run: Some(run), deltas: true }
    }
}

type Tx = mpsc::Sender<Result<SseEvent, Infallible>>;

pub fn sse(
    engine: Engine,
    tenant: TenantId,
    session: SessionId,
    scope: StreamScope,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut s = Streamer { engine, tenant, session, scope, tx, last: 0 };
        s.last = s.scope.after;
        if let Err(e) = s.run().await {
            tracing::debug!(session = %s.session, error = %e, "event stream ended");
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

struct Streamer {
    engine: Engine,
    tenant: TenantId,
    session: SessionId,
    scope: StreamScope,
    tx: Tx,
    /// The newest sequence number already sent.
    last: u64,
}

/// Why the stream stopped: the client went away, storage failed, or the run settled.
#[derive(Debug)]
enum End {
    ClientGone,
    Settled,
    Store(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientGone => f.write_str("client disconnected"),
            End::Settled => f.write_str("run settled"),
            End::Store(e) => write!(f, "storage error: {e}"),
        }
    }
}

fn settles_run(e: &Event) -> bool {
    matches!(
        e.body,
        EventBody::RunRequiresAction { .. }
            | EventBody::RunCompleted { .. }
            | EventBody::RunFailed { .. }
            | EventBody::RunCancelled { .. }
    )
}

impl Streamer {
    async fn run(&mut self) -> Result<(), End> {
        let mut commits = self.engine.store().subscribe();
        let mut deltas = self.engine.subscribe_deltas();
        match self.catch_up().await {
            Err(End::Settled) => return self.finish().await,
            other => other?,
        }
        loop {
            tokio::select! {
                _ = self.tx.closed() => return Err(End::ClientGone),
                c = commits.recv() => {
                    let r = match c {
                        Ok(c) if c.session_id == self.session && c.tenant_id == self.tenant => {
                            if c.events.first().is_some_and(|e| e.seq > self.last + 1) {
                                self.catch_up().await // a gap: the log is the truth
                            } else {
                                let mut r = Ok(());
                                for e in c.events.iter() {
                                    if e.seq <= self.last { continue }
                                    r = self.send_event(e).await;
                                    if r.is_err() { break }
                                }
                                r
                            }
                        }
                        Ok(_) => Ok(()),
                        Err(RecvError::Lagged(_)) => self.catch_up().await,
                        Err(RecvError::Closed) => return Err(End::Store("commit stream closed".into())),
                    };
                    match r {
                        Err(End::Settled) => return self.finish().await,
                        other => other?,
                    }
                }
                d = deltas.recv(), if self.scope.deltas => {
                    if let Ok(d) = d
                        && d.session_id == self.session
                        && d.tenant_id == self.tenant
                        && self.scope.run.is_none_or(|r| r == d.run_id)
                    {
                        let ev = SseEvent::default().event("delta").json_data(&d).unwrap_or_default();
                        self.tx.send(Ok(ev)).await.map_err(|_| End::ClientGone)?;
                    }
                }
            }
        }
    }

    /// Sends everything after `last` from the store.
    async fn catch_up(&mut self) -> Result<(), End> {
        loop {
            let page = self
                .engine
                .store()
                .read_events(&self.tenant, &self.session, self.last, 500)
                .await
                .map_err(|e| End::Store(e.to_string()))?;
            if page.is_empty() {
                return Ok(());
            }
            for e in &page {
                self.send_event(e).await?;
            }
        }
    }

    async fn send_event(&mut self, e: &Event) -> Result<(), End> {
        self.last = e.seq;
        if let Some(run) = self.scope.run
            && e.run_id != Some(run)
        {
            return Ok(());
        }
        let ev = SseEvent::default().id(e.seq.to_string()).event(e.body.kind()).json_data(e).unwrap_or_default();
        self.tx.send(Ok(ev)).await.map_err(|_| End::ClientGone)?;
        if self.scope.run.is_some() && settles_run(e) {
            return Err(End::Settled);
        }
        Ok(())
    }

    /// Ends a run stream with the run as it now stands.
    async fn finish(&mut self) -> Result<(), End> {
        let Some(run) = self.scope.run else { return Ok(()) };
        let record = self.engine.store().get_run(&self.tenant, &run).await.map_err(|e| End::Store(e.to_string()))?;
        let view = crate::views::Run::from(record);
        let ev = SseEvent::default().event("run").json_data(&view).unwrap_or_default();
        self.tx.send(Ok(ev)).await.map_err(|_| End::ClientGone)?;
        Ok(())
    }
}

/// The tenant's approval events, live, as `approval` events carrying the approval's view.
pub fn approvals_sse(engine: Engine, tenant: TenantId) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut commits = engine.store().subscribe();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                c = commits.recv() => match c {
                    Ok(c) if c.tenant_id == tenant => {
                        for e in c.events.iter() {
                            let id = match &e.body {
                                EventBody::ApprovalRequested { approval_id, .. }
                                | EventBody::ApprovalDecided { approval_id, .. } => *approval_id,
                                _ => continue,
                            };
                            let Ok(record) = engine.store().get_approval(&tenant, &id).await else { continue };
                            let view = crate::views::Approval::from(record);
                            let ev = SseEvent::default().event("approval").json_data(&view).unwrap_or_default();
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
