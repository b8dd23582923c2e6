//! The HTTP/1 accept loop of `stead serve`: a cap on open connections, a deadline for a
//! request's headers, an idle timeout between requests, and graceful shutdown.
//!
//! `axum::serve` has none of these, so one client could hold thousands of sockets. Here every
//! connection has a deadline while nothing is in flight on it: `header_timeout` from its accept
//! (or from the first byte of its next request) until the request's head is parsed, and
//! `idle_timeout` after a response ends while no byte of the next request has arrived. A
//! request in flight — an SSE stream included — is never cut. At the cap, the connection idle
//! for longest (nothing in flight: idle keep-alive, or still sending its headers) is closed to
//! make room, so a flood of idle or slow-loris sockets cannot lock `/healthz` out; only when
//! every connection has a request in flight is the new one accepted and closed at once. Both
//! are counted and logged.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The connection options of `stead serve` (`--header-timeout-secs`, `--idle-timeout-secs`,
/// `--max-connections`).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Longest a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Longest a connection may stay open with no request in flight and none arriving.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown`, then waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let registry = Arc::new(Registry::new(limits.max_connections));
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (all_closed, task_alive) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before accept: wait a moment.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(conn) = registry.admit() else { continue };
        let task = Connection { conn, registry: registry.clone(), limits, shutdown: shutdown.clone() };
        let (app, alive) = (app.clone(), task_alive.clone());
        tokio::spawn(async move {
            task.run(stream, app).await;
            drop(alive);
        });
    }
    drop(listener);
    drop(task_alive);
    all_closed.closed().await;
    Ok(())
}

/// What one connection is doing, shared by its task, its socket wrapper and its requests.
struct Conn {
    id: u64,
    activity: Mutex<Activity>,
    wake: Notify,
}

struct Activity {
    in_flight: usize,
    /// When nothing was last in flight: the accept, or the end of the last response.
    idle_since: Instant,
    /// When the head of the next request began (its first byte; a new connection counts).
    head_since: Option<Instant>,
    /// Closed to make room for a new connection.
    evicted: bool,
}

impl Conn {
    fn new(id: u64) -> Self {
        let now = Instant::now();
        let activity = Activity { in_flight: 0, idle_since: now, head_since: Some(now), evicted: false };
        Self { id, activity: Mutex::new(activity), wake: Notify::new() }
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection must be closed, if nothing changes; `None` while a request is in flight.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        let a = self.activity();
        if a.evicted {
            return Some(Instant::now());
        }
        if a.in_flight > 0 {
            return None;
        }
        Some(match a.head_since {
            Some(t) => t + limits.header_timeout,
            None => a.idle_since + limits.idle_timeout,
        })
    }

    /// Since when it has had nothing in flight, if it has nothing in flight (and may be evicted).
    fn idle_since(&self) -> Option<Instant> {
        let a = self.activity();
        (a.in_flight == 0 && !a.evicted).then_some(a.idle_since)
    }

    fn evict(&self) {
        self.activity().evicted = true;
        self.wake.notify_one();
    }

    fn bytes_read(&self) {
        let mut a = self.activity();
        if a.in_flight == 0 && a.head_since.is_none() {
            a.head_since = Some(Instant::now());
            drop(a);
            self.wake.notify_one();
        }
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        let mut a = self.activity();
        a.in_flight += 1;
        a.head_since = None;
        drop(a);
        self.wake.notify_one();
        InFlight(self.clone())
    }
}

/// A request in flight: dropped with its response body (when it ended, or the client left).
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = self.0.activity();
        a.in_flight -= 1;
        if a.in_flight == 0 {
            a.idle_since = Instant::now();
        }
        drop(a);
        self.0.wake.notify_one();
    }
}

/// The open connections, under the cap.
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    max: usize,
    evicted: AtomicU64,
    refused: AtomicU64,
}

impl Registry {
    fn new(max: usize) -> Self {
        Self {
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            max,
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// A slot for a new connection: a free one, or the one of the connection idle for longest;
    /// `None` (the caller closes the socket) when every connection has a request in flight.
    fn admit(&self) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() >= self.max {
            let victim = conns.values().filter_map(|c| Some((c.idle_since()?, c))).min_by_key(|(t, _)| *t);
            let Some((_, victim)) = victim else {
                count(&self.refused, "connection limit reached with every connection busy: closed a new one");
                return None;
            };
            victim.evict();
            let id = victim.id;
            conns.remove(&id);
            count(&self.evicted, "connection limit reached: closed the connection idle for longest");
        }
        let conn = Arc::new(Conn::new(self.next_id.fetch_add(1, Ordering::Relaxed)));
        conns.insert(conn.id, conn.clone());
        Some(conn)
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// Counts an event and logs the first and then every 1000th, so a flood does not flood the log.
fn count(counter: &AtomicU64, what: &str) {
    let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if total == 1 || total.is_multiple_of(1000) {
        tracing::warn!(total, "{what}");
    }
}

struct Connection {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream, app: Router) {
        let conn = self.conn.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let in_flight = conn.begin_request();
            let response = app.clone().oneshot(req);
            async move {
                let response = response.await.unwrap_or_else(|e: Infallible| match e {});
                // The guard lives as long as the body: a stream keeps its connection busy.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &in_flight;
                        frame
                    }))
                }))
            }
        });
        let io = TokioIo::new(TrackedIo { inner: stream, conn: self.conn.clone() });
        let mut http = pin!(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        let mut draining = false;
        loop {
            let deadline = self.conn.deadline(&self.limits);
            tokio::select! {
                result = http.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = self.shutdown.cancelled(), if !draining => {
                    draining = true;
                    http.as_mut().graceful_shutdown();
                }
                _ = sleep_until(deadline) => {
                    if self.conn.deadline(&self.limits).is_some_and(|d| d <= Instant::now()) {
                        break;
                    }
                }
                _ = self.conn.wake.notified() => {}
            }
        }
        self.registry.remove(self.conn.id);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The socket, telling its connection when bytes of a request arrive.
struct TrackedIo {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.conn.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room_and_busy_ones_never_do() {
        let registry = Registry::new(2);
        let first = registry.admit().unwrap();
        let second = registry.admit().unwrap();
        let busy = second.begin_request();
        let third = registry.admit().expect("the idle one makes room");
        assert!(first.deadline(&limits()).is_some_and(|d| d <= Instant::now()), "evicted: closes at once");
        assert_eq!(second.deadline(&limits()), None, "a request in flight has no deadline");
        let _busy_too = third.begin_request();
        assert!(registry.admit().is_none(), "every connection busy: the new one is refused");
        assert_eq!((registry.evicted.load(Ordering::Relaxed), registry.refused.load(Ordering::Relaxed)), (1, 1));
        drop(busy);
        assert!(registry.admit().is_some(), "a finished request makes its connection evictable");
    }

    #[test]
    fn the_header_deadline_runs_until_a_request_and_the_idle_one_after_it() {
        let conn = Arc::new(Conn::new(0));
        let accepted = conn.deadline(&limits()).unwrap();
        let request = conn.begin_request();
        drop(request);
        let idle = conn.deadline(&limits()).unwrap();
        assert!(idle >= accepted + Duration::from_secs(50), "idle timeout after a response, not the header one");
        conn.bytes_read();
        let head = conn.deadline(&limits()).unwrap();
        assert!(head < idle, "a request's first byte starts the header deadline");
    }

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 2,
        }
    }
}
