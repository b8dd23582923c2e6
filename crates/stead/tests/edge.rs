//! The connection edge of the real binary (issue item 13), over raw TCP: a client that sends
//! its headers byte by byte is cut at `--header-timeout-secs`; a flood of idle connections
//! never makes the server hold more than `--max-connections` (the connection idle for longest
//! makes room, oldest first) and `/healthz` keeps answering through it; a kept-alive
//! connection with nothing in flight is closed at `--idle-timeout-secs`.
//!
//! Times are asserted only as correctness bounds: never closed before its deadline (minus a
//! margin for the clocks), always closed within the deadline plus a generous slack.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use support::{Options, Stead, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How late a deadline may be observed on a loaded machine.
const SLACK: Duration = Duration::from_secs(10);
/// How early: the server's clock starts at its accept (or its last response), a little after
/// ours.
const MARGIN: Duration = Duration::from_millis(500);

fn addr(stead: &Stead) -> String {
    stead.url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (end of stream or reset), bounded by `limit`;
/// returns when that happened, or `None` if it is still open at `limit`.
async fn closed_by(reader: &mut (impl AsyncReadExt + Unpin), limit: Instant) -> Option<Instant> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(limit, reader.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {} // whatever the server says before closing
        }
    }
}

// ---- (a) slow loris ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_loris_connections_are_closed_at_the_header_timeout() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    const CLIENTS: usize = 6;
    let stead = Options::new()
        .arg("--header-timeout-secs")
        .arg(HEADER_TIMEOUT.as_secs().to_string())
        .arg("--idle-timeout-secs")
        .arg("600")
        .start()
        .await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let addr = addr(&stead);
        clients.push(tokio::spawn(async move {
            let connected = Instant::now();
            let stream = TcpStream::connect(&addr).await.expect("connect");
            let (mut reader, mut writer) = stream.into_split();
            // A request line, then a header that never ends, one byte every 100 ms: far more
            // than the header timeout if the server waited for it.
            let writing = tokio::spawn(async move {
                let head = format!("GET /healthz HTTP/1.1\r\nHost: stead\r\nX-Slow-{i}: ");
                for b in head.bytes().chain(std::iter::repeat(b'a')) {
                    if writer.write_all(&[b]).await.is_err() {
                        return; // the server closed the connection
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let closed = closed_by(&mut reader, connected + HEADER_TIMEOUT + SLACK).await;
            writing.abort();
            closed.map(|at| at - connected)
        }));
    }
    for (i, c) in clients.into_iter().enumerate() {
        let after = c.await.unwrap().unwrap_or_else(|| {
            panic!(
                "slow-loris client {i} was still connected {:?} after connecting; stderr:\n{}",
                HEADER_TIMEOUT + SLACK,
                stead.stderr()
            )
        });
        assert!(after + MARGIN >= HEADER_TIMEOUT, "client {i} was closed before the header timeout: after {after:?}");
    }
    // The server is fine: a complete request on a new connection is answered.
    assert_eq!(stead.get("/healthz").await.status, 200);
}

// ---- (b) a flood of idle connections ----------------------------------------------------------

/// Whether the server has closed this (non-blocking) socket: end of stream or reset.
fn is_closed(mut stream: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false, // the server said something and left the connection open
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// `GET /healthz` on a fresh connection with `Connection: close`, so that its slot is free
/// again once answered; returns the status line. Bounded by `TIMEOUT`.
async fn healthz_once(addr: &str) -> String {
    let request = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: stead\r\nConnection: close\r\n\r\n").await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned())
    };
    match tokio::time::timeout(TIMEOUT, request).await {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => panic!("/healthz failed during the flood: {e}"),
        Err(_) => panic!("/healthz did not answer within {TIMEOUT:?} during the flood"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_flood_never_exceeds_the_cap_and_healthz_still_answers() {
    const CAP: usize = 8;
    const FLOOD: usize = CAP * 4;
    // Long header and idle timeouts: any connection closed here was closed to make room.
    let stead = Options::new()
        .arg("--max-connections")
        .arg(CAP.to_string())
        .arg("--header-timeout-secs")
        .arg("600")
        .arg("--idle-timeout-secs")
        .arg("600")
        .start()
        .await;
    let addr = addr(&stead);
    let mut flood: Vec<std::net::TcpStream> = Vec::new();
    let open_of = |flood: &[std::net::TcpStream]| flood.iter().filter(|s| !is_closed(s)).count();

    for i in 0..FLOOD {
        let s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_nonblocking(true).unwrap();
        flood.push(s);
        if (i + 1) % CAP == 0 {
            // The listen queue is FIFO: once this request is answered, every connection
            // opened before it was accepted, and the server held at most CAP of them.
            let status = healthz_once(&addr).await;
            assert!(status.starts_with("HTTP/1.1 200"), "/healthz during the flood: {status:?}");
            let deadline = Instant::now() + TIMEOUT;
            while open_of(&flood) > CAP {
                assert!(
                    Instant::now() < deadline,
                    "after {} idle connections the server still holds {} of them (cap {CAP}); stderr:\n{}",
                    i + 1,
                    open_of(&flood),
                    stead.stderr()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // The last /healthz took a slot from the oldest of ours and gave it back when it closed:
    // CAP - 1 of ours remain, the newest ones, and they stay (no timeout is near).
    let want = CAP - 1;
    let deadline = Instant::now() + TIMEOUT;
    let open = loop {
        let open: Vec<usize> = (0..FLOOD).filter(|&i| !is_closed(&flood[i])).collect();
        if open.len() <= want {
            break open;
        }
        assert!(Instant::now() < deadline, "still {} open, want {want}: {open:?}", open.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(open, (FLOOD - want..FLOOD).collect::<Vec<_>>(), "the oldest idle connections are the ones closed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still: Vec<usize> = (0..FLOOD).filter(|&i| !is_closed(&flood[i])).collect();
    assert_eq!(still, open, "the connections under the cap are left alone");

    // The survivors are real connections: one of them can still make a request.
    let mut survivor = flood.pop().unwrap();
    survivor.set_nonblocking(false).unwrap();
    survivor.set_read_timeout(Some(TIMEOUT)).unwrap();
    survivor.write_all(b"GET /healthz HTTP/1.1\r\nHost: stead\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    survivor.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let log = stead.stderr();
    assert!(log.contains("connection limit reached: closed the connection idle for longest"), "logged:\n{log}");
}

// ---- (c) idle keep-alive ----------------------------------------------------------------------

/// Sends `GET /healthz` on a kept-alive connection and reads exactly its response.
async fn healthz_on(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: stead\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("content-length"))
                .expect("a kept-alive response has a content-length");
            if got.len() >= end + 4 + length {
                assert_eq!(got.len(), end + 4 + length, "nothing follows the response");
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("response within TIMEOUT")
            .expect("read");
        assert!(n > 0, "the server closed the connection before answering: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
    // A long header timeout: after a complete request only the idle timeout applies.
    let stead = Options::new()
        .arg("--idle-timeout-secs")
        .arg(IDLE_TIMEOUT.as_secs().to_string())
        .arg("--header-timeout-secs")
        .arg("600")
        .start()
        .await;
    let mut stream = TcpStream::connect(addr(&stead)).await.unwrap();
    let first = healthz_on(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Kept alive: a second request on the same connection is answered too.
    let second = healthz_on(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let answered = Instant::now();
    let closed = closed_by(&mut stream, answered + IDLE_TIMEOUT + SLACK).await.unwrap_or_else(|| {
        panic!("an idle kept-alive connection was still open {:?} after its last response", IDLE_TIMEOUT + SLACK)
    });
    let idle = closed - answered;
    assert!(idle + MARGIN >= IDLE_TIMEOUT, "closed before the idle timeout: after {idle:?}");
}
