//! Stdio servers: starting the child process, capturing its stderr, noticing that it exited,
//! and stopping it.
//!
//! We spawn the child ourselves (rather than through the SDK's child-process transport) and
//! hand the SDK only its stdin/stdout, because the client needs what that transport hides: a
//! synchronous "has it exited?" check before a request is sent (so a call to a dead server
//! restarts it instead of being reported as lost), the exit status for error messages, and the
//! pid. The child runs in its own process group so that wrappers (`npx`, `uvx`, `sh -c`) and
//! their children are stopped together.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

use crate::redact::Secrets;

/// How much of the server's stderr we keep for error messages.
pub(crate) const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// Variables a stdio server inherits from Stead's environment (the same list the reference
/// TypeScript SDK uses, plus locale/time zone/temp dir). Everything else must be configured.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// The last [`STDERR_TAIL_BYTES`] of a server's stderr, across restarts.
#[derive(Default)]
pub(crate) struct StderrTail {
    bytes: Mutex<Tail>,
}

#[derive(Default)]
struct Tail {
    bytes: VecDeque<u8>,
    /// Older bytes were dropped: the first line is only the end of one.
    cut: bool,
}

impl StderrTail {
    fn push(&self, chunk: &[u8]) {
        let mut tail = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        tail.bytes.extend(chunk);
        let excess = tail.bytes.len().saturating_sub(STDERR_TAIL_BYTES);
        tail.bytes.drain(..excess);
        tail.cut |= excess > 0;
    }

    /// Whole lines only once older bytes were dropped: the end of a cut line could be the end of
    /// a secret, which redaction can no longer recognise.
    pub(crate) fn text(&self) -> String {
        let tail = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = tail.bytes.as_slices();
        let mut all = Vec::with_capacity(tail.bytes.len());
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        let start = match all.iter().position(|&b| b == b'\n') {
            Some(newline) if tail.cut => newline + 1,
            _ => 0,
        };
        // The cut may fall inside a UTF-8 sequence: lossy decoding keeps the rest readable.
        String::from_utf8_lossy(&all[start..]).into_owned()
    }
}

/// Where a server's stderr goes: the shared tail, and the log (redacted).
pub(crate) struct StderrSink {
    pub tail: Arc<StderrTail>,
    pub secrets: Arc<Secrets>,
}

/// One running (or exited) server process.
pub(crate) struct ServerProcess {
    child: Mutex<Child>,
    pid: Option<u32>,
    exited: Mutex<Option<ExitStatus>>,
    /// Becomes `true` when the stderr reader reached end of file.
    stderr_done: watch::Receiver<bool>,
}

pub(crate) struct Spawned {
    pub(crate) process: ServerProcess,
    pub(crate) stdout: ChildStdout,
    pub(crate) stdin: ChildStdin,
}

pub(crate) fn spawn(
    server: &str,
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    sink: StderrSink,
) -> std::io::Result<Spawned> {
    let mut cmd = Command::new(command);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Never inherited: a server's chatter must not interleave with Stead's own stderr.
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.envs(env);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn()?;
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("child process has no stdio pipes"));
    };
    let pid = child.id();
    let (done_tx, done_rx) = watch::channel(false);
    tokio::spawn(read_stderr(server.to_owned(), pid, stderr, sink, done_tx));
    Ok(Spawned {
        process: ServerProcess { child: Mutex::new(child), pid, exited: Mutex::new(None), stderr_done: done_rx },
        stdout,
        stdin,
    })
}

/// Copies stderr into the tail and, line by line, into the log at debug level.
async fn read_stderr(
    server: String,
    pid: Option<u32>,
    mut stderr: tokio::process::ChildStderr,
    sink: StderrSink,
    done: watch::Sender<bool>,
) {
    let log_line = |line: &[u8]| {
        let line = sink.secrets.redact(String::from_utf8_lossy(line).trim_end());
        tracing::debug!(target: "stead_mcp::stderr", server, pid, "{line}");
    };
    let mut buf = [0u8; 4096];
    let mut line = Vec::new();
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                sink.tail.push(&buf[..n]);
                for &b in &buf[..n] {
                    if b == b'\n' {
                        log_line(&line);
                        line.clear();
                    } else if line.len() < STDERR_TAIL_BYTES {
                        line.push(b);
                    }
                }
            }
        }
    }
    if !line.is_empty() {
        log_line(&line);
    }
    let _ = done.send(true);
}

impl ServerProcess {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The exit status if the process has exited (reaping it if it is a zombie). Synchronous,
    /// so a check made just before sending a request sees a death that already happened.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        if exited.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(status)) = child.try_wait() {
                *exited = Some(status);
            }
        }
        *exited
    }

    /// Waits up to `within` for the process to exit.
    pub(crate) async fn wait_exit(&self, within: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits up to `within` for the stderr reader to drain what the process wrote before it
    /// died, so error messages include its last words.
    pub(crate) async fn wait_stderr(&self, within: Duration) {
        let mut done = self.stderr_done.clone();
        let _ = tokio::time::timeout(within, done.wait_for(|d| *d)).await;
    }

    /// Sends `signal` to the server's process group (the server and anything it started).
    fn signal_group(&self, signal: libc::c_int) {
        let Some(pid) = self.pid else { return };
        let Ok(pgid) = libc::pid_t::try_from(pid) else { return };
        // SAFETY: kill(2) has no memory-safety preconditions. The group id is the child's pid
        // (`process_group(0)`); a group id stays reserved while any member lives, so this
        // cannot hit an unrelated group while our server's processes exist.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }

    /// Stops the server the way the MCP spec asks for stdio: its stdin is already closed (the
    /// SDK transport was shut down), so wait for it to exit, then SIGTERM, then SIGKILL.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        if self.wait_exit(grace).await.is_none() {
            self.signal_group(libc::SIGTERM);
            if self.wait_exit(grace).await.is_none() {
                self.signal_group(libc::SIGKILL);
                self.wait_exit(grace).await;
            }
        }
        // Helpers the server started may outlive it while holding our pipes open.
        self.signal_group(libc::SIGKILL);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // `kill_on_drop` stops the direct child only; take its process group with it.
        self.signal_group(libc::SIGKILL);
    }
}

/// "exit status 3", "killed by signal 9", or "still running".
pub(crate) fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => format!("exited ({s})"),
        },
        None => "closed its stdout".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let tail = StderrTail::default();
        tail.push(b"hello\n");
        assert_eq!(tail.text(), "hello\n");
        let big = vec![b'x'; STDERR_TAIL_BYTES];
        tail.push(&big);
        tail.push(b"end");
        let text = tail.text();
        assert_eq!(text.len(), STDERR_TAIL_BYTES);
        assert!(text.ends_with("xend"));
        assert!(!text.contains("hello"));
    }

    #[test]
    fn a_cut_tail_starts_at_a_whole_line() {
        let tail = StderrTail::default();
        tail.push(b"token=abcdefgh-secret\n");
        // 10 bytes too many: the cut falls inside the secret.
        tail.push(&vec![b'y'; STDERR_TAIL_BYTES - 23]);
        tail.push(b"\nlast line\n");
        // The first line kept would be the end of the secret: it is left out.
        let text = tail.text();
        assert!(text.starts_with('y') && text.ends_with("y\nlast line\n"), "{text}");
    }

    #[test]
    fn tail_survives_a_cut_inside_a_character() {
        let tail = StderrTail::default();
        tail.push("é".repeat(STDERR_TAIL_BYTES).as_bytes());
        tail.push(b"x");
        let text = tail.text();
        assert!(text.ends_with("éx"));
    }
}
