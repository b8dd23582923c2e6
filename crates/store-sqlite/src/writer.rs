//! The single writer thread and its group commit.
//!
//! One OS thread owns the only read-write connection. Callers send it jobs and await a
//! oneshot reply. The thread blocks for one job, drains whatever else is queued, and runs
//! the lot in one `BEGIN IMMEDIATE … COMMIT`, each job inside its own savepoint: a job
//! that fails (a conflict, a fenced write) is rolled back alone. One fsync then covers the
//! whole group, which is what keeps many concurrent sessions fast with `synchronous=FULL`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::Connection;
use stead_store::{Committed, Error, Result};
use tokio::sync::{broadcast, oneshot};

use crate::rows::{Cached, sql_error};

/// Most jobs committed together; bounds a group's latency and transaction size.
const MAX_GROUP: usize = 1024;

/// What a job needs besides the connection.
#[derive(Debug, Clone)]
pub(crate) struct WriteCtx {
    pub max_events_per_session: u64,
    pub max_event_bytes: usize,
}

impl WriteCtx {
    pub(crate) fn limits(&self) -> stead_store::project::Limits {
        stead_store::project::Limits {
            max_events_per_session: self.max_events_per_session,
            max_event_bytes: self.max_event_bytes,
        }
    }
}

/// A job's outcome inside the transaction: what to publish if the group commits, and how
/// to answer the caller once the commit's fate is known.
pub(crate) struct Executed {
    ok: bool,
    notes: Vec<Committed>,
    finish: Box<dyn FnOnce(Result<()>) + Send>,
}

/// One write operation waiting for the writer.
pub(crate) trait Job: Send {
    /// Runs the operation (inside a savepoint the writer manages).
    fn execute(self: Box<Self>, conn: &Connection, ctx: &WriteCtx) -> Executed;
    /// Answers the caller without running (the transaction could not start).
    fn fail(self: Box<Self>, err: Error);
}

struct OpJob<T, F> {
    op: F,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for OpJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &WriteCtx) -> Result<(T, Vec<Committed>)> + Send + 'static,
{
    fn execute(self: Box<Self>, conn: &Connection, ctx: &WriteCtx) -> Executed {
        let OpJob { op, reply } = *self;
        let result = catch_unwind(AssertUnwindSafe(|| op(conn, ctx))).unwrap_or_else(|_| {
            tracing::error!("a store write panicked; it was rolled back");
            Err(Error::Backend("internal error: the write panicked and was rolled back".into()))
        });
        match result {
            Ok((value, notes)) => Executed {
                ok: true,
                notes,
                finish: Box::new(move |commit: Result<()>| {
                    let _ = reply.send(commit.map(|()| value));
                }),
            },
            Err(e) => Executed {
                ok: false,
                notes: Vec::new(),
                finish: Box::new(move |_| {
                    let _ = reply.send(Err(e));
                }),
            },
        }
    }

    fn fail(self: Box<Self>, err: Error) {
        let _ = self.reply.send(Err(err));
    }
}

/// Wraps an operation into a job and the receiver of its answer.
pub(crate) fn job<T, F>(op: F) -> (Box<dyn Job>, oneshot::Receiver<Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(&Connection, &WriteCtx) -> Result<(T, Vec<Committed>)> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    (Box::new(OpJob { op, reply }), rx)
}

enum Msg {
    Job(Box<dyn Job>),
    /// Park the writer until the sender is dropped (tests use it to queue a group).
    Hold {
        ack: oneshot::Sender<()>,
        until: mpsc::Receiver<()>,
    },
}

/// Counters of the writer's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Jobs executed (succeeded or failed).
    pub ops: u64,
    /// Transactions committed; fewer than `ops` when commits were grouped.
    pub commits: u64,
    /// Jobs sent but not yet picked up by the writer.
    pub queued: u64,
}

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    commits: AtomicU64,
    queued: AtomicU64,
}

/// The caller's side of the writer.
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

/// Keeps the writer parked while alive; see [`Writer::hold`].
pub struct WriterHold<'a> {
    _release: mpsc::Sender<()>,
    _store: std::marker::PhantomData<&'a ()>,
}

impl Writer {
    pub(crate) fn start(
        conn: Connection,
        ctx: WriteCtx,
        events: broadcast::Sender<Committed>,
        path: PathBuf,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("stead-sqlite-writer".into())
            .spawn(move || {
                WriterThread { conn, ctx, events, counters: thread_counters, path }.run(rx);
            })
            .map_err(|e| Error::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { tx: Some(tx), thread: Some(thread), counters })
    }

    /// Sends a job; the answer comes on the job's receiver.
    pub(crate) async fn run<T>(&self, job: Box<dyn Job>, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        if tx.send(Msg::Job(job)).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(stopped());
        }
        rx.await.map_err(|_| stopped())?
    }

    /// Parks the writer after its current group until the returned guard is dropped.
    pub(crate) async fn hold(&self) -> Result<WriterHold<'_>> {
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        let (ack, acked) = oneshot::channel();
        let (release, until) = mpsc::channel();
        tx.send(Msg::Hold { ack, until }).map_err(|_| stopped())?;
        acked.await.map_err(|_| stopped())?;
        Ok(WriterHold { _release: release, _store: std::marker::PhantomData })
    }

    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            ops: self.counters.ops.load(Ordering::SeqCst),
            commits: self.counters.commits.load(Ordering::SeqCst),
            queued: self.counters.queued.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish what is queued and exit; joining makes
        // sure the write connection is closed before the directory lock is released.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> Error {
    Error::Unavailable("the store's writer has stopped".into())
}

struct WriterThread {
    conn: Connection,
    ctx: WriteCtx,
    events: broadcast::Sender<Committed>,
    counters: Arc<Counters>,
    path: PathBuf,
}

impl WriterThread {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut held: Option<Msg> = None;
        loop {
            let first = match held.take() {
                Some(m) => m,
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            let mut group = match first {
                Msg::Hold { ack, until } => {
                    let _ = ack.send(());
                    // Returns when the guard is dropped.
                    let _ = until.recv();
                    continue;
                }
                Msg::Job(job) => vec![job],
            };
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(Msg::Job(job)) => group.push(job),
                    Ok(hold @ Msg::Hold { .. }) => {
                        held = Some(hold);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.counters.queued.fetch_sub(group.len() as u64, Ordering::SeqCst);
            self.commit_group(group);
        }
    }

    /// Runs jobs in as few transactions as possible. A transaction SQLite aborted on its
    /// own (disk full, I/O error) fails the jobs it held; the rest go in a new one.
    fn commit_group(&mut self, group: Vec<Box<dyn Job>>) {
        let mut jobs = group.into_iter().peekable();
        while jobs.peek().is_some() {
            if let Err(e) = self.conn.exec("BEGIN IMMEDIATE", []) {
                let err = self.named(sql_error(e));
                tracing::error!(error = %err, "the writer cannot begin a transaction");
                for job in jobs.by_ref() {
                    job.fail(copy_error(&err));
                }
                return;
            }
            let mut done: Vec<Executed> = Vec::new();
            let mut aborted = None;
            for job in jobs.by_ref() {
                self.counters.ops.fetch_add(1, Ordering::SeqCst);
                match self.run_job(job) {
                    Ok(executed) => done.push(executed),
                    Err(e) => {
                        aborted = Some(e);
                        break;
                    }
                }
            }
            let outcome = match aborted {
                Some(e) => {
                    if !self.conn.is_autocommit() {
                        let _ = self.conn.execute_batch("ROLLBACK");
                    }
                    Err(e)
                }
                None => self.conn.exec("COMMIT", []).map(drop).map_err(|e| {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    self.named(sql_error(e))
                }),
            };
            match outcome {
                Ok(()) => {
                    self.counters.commits.fetch_add(1, Ordering::SeqCst);
                    // Publish before answering, so a caller that sees its write succeed knows
                    // subscribers have been sent it.
                    for executed in &mut done {
                        for note in executed.notes.drain(..) {
                            let _ = self.events.send(note);
                        }
                    }
                    for executed in done {
                        (executed.finish)(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "a commit group failed");
                    for executed in done {
                        // A job that failed on its own keeps its own error.
                        let err = copy_error(&e);
                        (executed.finish)(Err(err));
                    }
                }
            }
        }
    }

    /// Runs one job inside its own savepoint. `Err` means the whole transaction is lost
    /// (the job has been answered with that error).
    fn run_job(&mut self, job: Box<dyn Job>) -> Result<Executed> {
        if let Err(e) = self.conn.exec("SAVEPOINT op", []) {
            let err = self.named(sql_error(e));
            job.fail(copy_error(&err));
            return Err(err);
        }
        let executed = job.execute(&self.conn, &self.ctx);
        if self.conn.is_autocommit() {
            // SQLite rolled the whole transaction back (disk full, I/O error): the jobs
            // before this one are lost with it.
            let err =
                self.named(Error::Backend("the database aborted the transaction (disk full or I/O error?)".into()));
            (executed.finish)(Err(copy_error(&err)));
            return Err(err);
        }
        let end = if executed.ok {
            self.conn.exec("RELEASE op", [])
        } else {
            self.conn.exec("ROLLBACK TO op", []).and_then(|_| self.conn.exec("RELEASE op", []))
        };
        if let Err(e) = end {
            let err = self.named(sql_error(e));
            (executed.finish)(Err(copy_error(&err)));
            return Err(err);
        }
        Ok(executed)
    }

    /// Names the database file in a corruption report.
    fn named(&self, e: Error) -> Error {
        match e {
            Error::Corrupt(m) => Error::Corrupt(format!("{}: {m}", self.path.display())),
            other => other,
        }
    }
}

/// Errors are not `Clone`; a failed commit answers every job of the group with a copy.
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Corrupt(m) => Error::Corrupt(m.clone()),
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::Backend(m) => Error::Backend(m.clone()),
        other => Error::Backend(other.to_string()),
    }
}
