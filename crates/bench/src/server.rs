//! Figure 5: resident memory of a real `stead serve` holding many runs that wait for the
//! client (`requires_action`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Concurrent HTTP requests in flight while the runs are created.
const CONCURRENCY: usize = 64;

pub struct Memory {
    pub binary: PathBuf,
    pub runs: usize,
    pub startup_kib: u64,
    pub waiting_kib: u64,
    pub peak_kib: u64,
    pub fill_time: Duration,
}

/// `STEAD_BIN`, else `stead` next to this program (both are built into the same target dir).
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("STEAD_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("STEAD_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = exe.parent().context("this program has no directory")?;
    let p = dir.join(format!("stead{}", std::env::consts::EXE_SUFFIX));
    if !p.is_file() {
        bail!("no stead binary at {}; build it with `cargo build --release -p stead` or set STEAD_BIN", p.display());
    }
    Ok(p)
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => bail!("no VmRSS/VmHWM in /proc/{pid}/status"),
    }
}

pub async fn waiting_runs(base: &Path, runs: usize) -> anyhow::Result<Memory> {
    let binary = find_binary()?;
    let dir = tempfile::Builder::new().prefix("stead-bench-serve-").tempdir_in(base)?;
    let mut child = Command::new(&binary)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--log", "warn", "--durability", crate::harness::durability().as_str()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("STEAD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id().context("the server exited at once")?;
    let mut lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the server did not say it was listening within 60 s")??
            .context("the server exited before listening")?;
        if let Some(rest) = line.split("stead listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_owned();
        }
        eprintln!("  [stead] {line}");
    };
    // Keep reading stderr so the server never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("  [stead] {line}");
        }
    });
    let (startup_kib, _) = rss_kib(pid)?;

    let http = stead_model::http_client().map_err(|e| anyhow::anyhow!("{e}"))?;
    let base_url = format!("http://{addr}");
    let spec = serde_json::json!({
        "name": "waiter",
        "model": {"provider": "scripted", "name": "bench"},
        "tools": [{"name": "ask", "type": "client"}],
    });
    let resp = http.post(format!("{base_url}/v1/agents")).json(&spec).send().await?;
    if !resp.status().is_success() {
        bail!("applying the agent: {} {}", resp.status(), resp.text().await.unwrap_or_default());
    }

    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY.min(runs) {
        let (http, base_url, next) = (http.clone(), base_url.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < runs {
                one_waiting_run(&http, &base_url).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a client task panicked")??;
    }
    let fill_time = t0.elapsed();
    let (waiting_kib, peak_kib) = rss_kib(pid)?;
    let _ = child.kill().await;
    Ok(Memory { binary, runs, startup_kib, waiting_kib, peak_kib, fill_time })
}

/// A session and a run that calls the client tool and waits (`wait: true` returns once the
/// run is in `requires_action`).
async fn one_waiting_run(http: &reqwest::Client, base_url: &str) -> anyhow::Result<()> {
    let resp =
        http.post(format!("{base_url}/v1/sessions")).json(&serde_json::json!({"agent": "waiter"})).send().await?;
    if !resp.status().is_success() {
        bail!("creating a session: {} {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    let session: serde_json::Value = resp.json().await?;
    let id = session["id"].as_str().context("session without id")?;
    let body = serde_json::json!({"input": "call ask {}", "wait": true, "timeout_secs": 120});
    let resp = http.post(format!("{base_url}/v1/sessions/{id}/runs")).json(&body).send().await?;
    if !resp.status().is_success() {
        bail!("creating a run: {} {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    let run: serde_json::Value = resp.json().await?;
    if run["status"] != "requires_action" {
        bail!("run {} is {} instead of requires_action", run["id"], run["status"]);
    }
    Ok(())
}
