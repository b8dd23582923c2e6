//! Stead's benchmark program: prints the performance figures Stead promises, measured on
//! the embedded store with its default durability (fsync on every commit group) and an
//! instant scripted model. A *step* is one model call plus one server-side tool call
//! (`echo`), each recorded durably.
//!
//! ```text
//! cargo build --release -p stead && cargo run --release -p stead-bench -- [--quick]
//! ```
//!
//! Figure 5 starts the real `stead serve`: `STEAD_BIN`, or `stead` next to this program.
//! Figure 7 starts the reference MCP server `STEAD_MCP_EVERYTHING` (set by
//! `eval "$(bash .ci/mcp-servers.sh)"`) with `node`; without it, the figure is skipped.
//! Every measurement uses a fresh data directory under `--dir` (default: the system's
//! temporary directory). Targets are reported as met or missed; nothing here fails on a
//! timing, only on a measurement that could not be made.

mod approval;
mod cpu;
mod harness;
mod mcp;
mod resume;
mod server;
mod steps;
mod timed;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Sizes {
    sequential_steps: usize,
    sessions: usize,
    steps_each: usize,
    resume_sizes: Vec<u64>,
    resume_samples: usize,
    waiting_runs: usize,
    approval_samples: usize,
    mcp_calls: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            sequential_steps: 1000,
            sessions: 100,
            steps_each: 50,
            resume_sizes: vec![100, 10_000, 100_000],
            resume_samples: 100,
            waiting_runs: 10_000,
            approval_samples: 100,
            mcp_calls: 200,
        }
    }

    fn quick() -> Self {
        Self {
            sequential_steps: 100,
            sessions: 10,
            steps_each: 10,
            resume_sizes: vec![100, 1000],
            resume_samples: 20,
            waiting_runs: 500,
            approval_samples: 20,
            mcp_calls: 50,
        }
    }
}

struct Args {
    quick: bool,
    dir: PathBuf,
    only: Option<Vec<u32>>,
}

const USAGE: &str = "usage: stead-bench [--quick] [--dir DIR] [--only 1,2,3,4,5,6,7]
  --quick   reduced sizes (a smoke run for CI, a few seconds)
  --dir     where the temporary data directories go (default: $STEAD_BENCH_DIR, else the system temp dir)
  --only    run only these figures (4 is measured by 1 and 2)
  env STEAD_BIN: the stead binary for figure 5 (default: `stead` next to this program)
  env STEAD_MCP_EVERYTHING: server-everything's entry point for figure 7 (eval \"$(bash .ci/mcp-servers.sh)\")
  env STEAD_BENCH_DURABILITY=full|normal|off: diagnosis only; the targets are for `full`, the default";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        dir: std::env::var_os("STEAD_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--dir" => args.dir = it.next().ok_or("--dir needs a value")?.into(),
            "--only" => {
                let list = it.next().ok_or("--only needs a value")?;
                let figures = list
                    .split(',')
                    .map(|f| f.trim().parse::<u32>().map_err(|_| format!("--only: {f:?} is not a figure number")))
                    .collect::<Result<Vec<_>, _>>()?;
                args.only = Some(figures);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// One line of the result table.
struct Row {
    figure: String,
    measured: String,
    target: String,
    /// `None`: informational, or the measurement failed.
    met: Option<bool>,
}

impl Row {
    fn new(
        figure: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) -> Self {
        Self { figure: figure.into(), measured: measured.into(), target: target.into(), met }
    }
    fn failed(figure: impl Into<String>, e: &anyhow::Error) -> Self {
        Self::new(figure, format!("error: {e:#}"), "", None)
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn progress(msg: &str) {
    eprintln!("… {msg}");
}

/// Median latency of `write 4 KiB + fdatasync` in `dir`: the floor under every durable commit.
fn fsync_probe(dir: &Path) -> anyhow::Result<Duration> {
    let tmp = tempfile::Builder::new().prefix("stead-bench-fsync-").tempdir_in(dir)?;
    let mut f = std::fs::File::create(tmp.path().join("probe"))?;
    let block = vec![0u8; 4096];
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        times.push(t.elapsed());
    }
    Ok(resume::percentile(&times, 50.0))
}

/// The 1-minute load average, so a reader can tell a busy machine from a slow program.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let sizes = if args.quick { Sizes::quick() } else { Sizes::full() };
    let wanted = |f: u32| args.only.as_ref().is_none_or(|o| o.contains(&f));
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fsync = fsync_probe(&args.dir);
    let load_before = load_average();

    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut errors = 0;
    let started = Instant::now();

    // 1 and 4: one session, sequential steps.
    let mut disks = Vec::new();
    if wanted(1) || wanted(4) {
        let n = sizes.sequential_steps;
        progress(&format!("figure 1: 1 session × {} sequential steps", thousands(n as u64)));
        match steps::sequential(&args.dir, n).await {
            Ok(s) => {
                let rate = s.rate();
                rows.push(Row::new(
                    format!("1. steps/s, 1 session × {} steps", thousands(n as u64)),
                    format!("{rate:.0} steps/s"),
                    "≥ 1,500 steps/s",
                    Some(rate >= 1500.0),
                ));
                rows.push(Row::new(
                    format!("   first {} steps", s.window),
                    format!("{:.0} steps/s", s.first_rate()),
                    "",
                    None,
                ));
                let ratio = s.last_rate() / s.first_rate();
                rows.push(Row::new(
                    format!("   last {} steps", s.window),
                    format!("{:.0} steps/s ({ratio:.2}× first)", s.last_rate()),
                    "no slower (≥ 0.90× first)",
                    Some(ratio >= 0.90),
                ));
                notes.push(format!(
                    "1: the scripted model needs its `repeat` command in view, so the context window holds the \
                     whole run: the model is sent up to {} messages during the first {} steps, {}–{} during the last {}",
                    2 * s.window + 1,
                    s.window,
                    2 * (n - s.window) + 1,
                    2 * n + 1,
                    s.window
                ));
                let step_us = s.total.as_secs_f64() * 1e6 / n as f64;
                let append_sum: f64 = s.appends.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e6 / n as f64;
                notes.push(format!(
                    "1: {:.0} µs/step; {} writer ops in {} commits ({:.2} durable commits/step); the engine's appends \
                     took p50 {} (p99 {}), {append_sum:.0} µs/step = {:.0}% of the step",
                    step_us,
                    s.writer.ops,
                    s.writer.commits,
                    s.writer.commits as f64 / n as f64,
                    us(resume::percentile(&s.appends, 50.0)),
                    us(resume::percentile(&s.appends, 99.0)),
                    100.0 * append_sum / step_us,
                ));
                disks.push((format!("1 × {}", thousands(n as u64)), s.disk));
            }
            Err(e) => {
                errors += 1;
                rows.push(Row::failed("1. steps/s, 1 session", &e));
            }
        }
    }

    // 1b: the same, with the session growing and the context window fixed.
    if wanted(1) {
        let (runs, each) = (10, (sizes.sequential_steps / 10).max(1));
        progress(&format!("figure 1b: 1 session, {runs} runs × {each} steps"));
        match steps::session_growth(&args.dir, runs, each).await {
            Ok(g) => {
                let ratio = g.last() / g.first();
                rows.push(Row::new(
                    format!("   same session, {runs} runs × {each} steps: runs {}–{runs} vs 1–3", runs - 2),
                    format!("{:.0} vs {:.0} steps/s ({ratio:.2}×)", g.last(), g.first()),
                    "no slower (≥ 0.90× first)",
                    Some(ratio >= 0.90),
                ));
                notes.push(format!(
                    "1b: window of {} messages (one run); the session grows to {} events; steps/s per run: {}",
                    2 * each + 50,
                    thousands(g.events),
                    g.rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" ")
                ));
            }
            Err(e) => {
                errors += 1;
                rows.push(Row::failed("1b. same session, successive runs", &e));
            }
        }
    }

    // 2 and 4: many sessions at once.
    if wanted(2) || wanted(4) {
        let (k, n) = (sizes.sessions, sizes.steps_each);
        progress(&format!("figure 2: {k} sessions × {n} steps, concurrently"));
        match steps::concurrent(&args.dir, k, n).await {
            Ok(c) => {
                let rate = c.rate();
                rows.push(Row::new(
                    format!("2. steps/s, {k} sessions × {n} steps"),
                    format!("{rate:.0} steps/s"),
                    "≥ 10,000 steps/s",
                    Some(rate >= 10_000.0),
                ));
                notes.push(format!(
                    "2: {} steps in {}; {} writer ops in {} commits ({:.1} ops/commit, {:.2} commits/step), \
                     {:.0} µs of wall time per writer op; appends took p50 {} (p99 {})",
                    thousands((k * n) as u64),
                    ms(c.total),
                    c.writer.ops,
                    c.writer.commits,
                    c.writer.ops as f64 / c.writer.commits.max(1) as f64,
                    c.writer.commits as f64 / (k * n) as f64,
                    c.total.as_secs_f64() * 1e6 / c.writer.ops.max(1) as f64,
                    us(resume::percentile(&c.appends, 50.0)),
                    us(resume::percentile(&c.appends, 99.0)),
                ));
                let wall = c.total.as_secs_f64();
                let mut threads: Vec<_> = c.cpu.iter().collect();
                threads.sort_by_key(|(_, u)| std::cmp::Reverse(u.on_cpu));
                let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall;
                notes.push(format!(
                    "2: thread time over the {wall:.2} s run: {}",
                    threads
                        .iter()
                        .take(3)
                        .map(|(name, u)| format!(
                            "{name} on CPU {:.0}%, waiting for a CPU {:.0}%",
                            pct(u.on_cpu),
                            pct(u.waiting)
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
                disks.push((format!("{k} × {n}"), c.disk));
            }
            Err(e) => {
                errors += 1;
                rows.push(Row::failed(format!("2. steps/s, {k} sessions × {n} steps"), &e));
            }
        }
    }

    // 3: resume latency by session length.
    if wanted(3) {
        for &size in &sizes.resume_sizes {
            progress(&format!(
                "figure 3: resume on sessions of {} events ({} samples)",
                thousands(size),
                sizes.resume_samples
            ));
            match resume::resume(&args.dir, size, sizes.resume_samples).await {
                Ok(r) => {
                    let p50 = resume::percentile(&r.to_model, 50.0);
                    let p99 = resume::percentile(&r.to_model, 99.0);
                    rows.push(Row::new(
                        format!("3. resume → model call, {} events", thousands(r.events)),
                        format!("p50 {}, p99 {}", ms(p50), ms(p99)),
                        "p50 ≤ 5 ms",
                        Some(p50 <= Duration::from_millis(5)),
                    ));
                    notes.push(format!(
                        "3: {} events: {} samples over {} session(s); submit_tool_outputs returned after p50 {} (p99 {})",
                        thousands(r.events),
                        r.to_model.len(),
                        r.sessions,
                        ms(resume::percentile(&r.to_submitted, 50.0)),
                        ms(resume::percentile(&r.to_submitted, 99.0)),
                    ));
                }
                Err(e) => {
                    errors += 1;
                    rows.push(Row::failed(format!("3. resume, {} events", thousands(size)), &e));
                }
            }
        }
    }

    if wanted(4) {
        for (label, d) in &disks {
            let overhead = d.per_step() - d.payload_per_step();
            rows.push(Row::new(
                format!("4. disk bytes/step, {label}"),
                format!("{:.0} B raw, {:.0} B payload → {overhead:.0} B + payload", d.per_step(), d.payload_per_step()),
                "≤ 1,024 B + payload",
                Some(overhead <= 1024.0),
            ));
            notes.push(format!(
                "4: {label}: stead.db {} bytes after checkpoint for {} events ({:.1} events/step); event JSON {:.0} B/step",
                thousands(d.file_bytes),
                thousands(d.events),
                d.events as f64 / d.steps as f64,
                d.event_json_bytes as f64 / d.steps as f64
            ));
        }
    }

    // 5: the real server's memory.
    if wanted(5) {
        let n = sizes.waiting_runs;
        progress(&format!("figure 5: stead serve with {} runs waiting in requires_action", thousands(n as u64)));
        match server::waiting_runs(&args.dir, n).await {
            Ok(m) => {
                let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
                rows.push(Row::new(
                    format!("5. server RSS, {} runs in requires_action", thousands(n as u64)),
                    format!(
                        "{:.1} MB (startup {:.1} MB, peak {:.1} MB)",
                        mb(m.waiting_kib),
                        mb(m.startup_kib),
                        mb(m.peak_kib)
                    ),
                    "≤ 100 MB",
                    Some(mb(m.waiting_kib) <= 100.0),
                ));
                notes.push(format!(
                    "5: {} ({} sessions + waiting runs created over HTTP in {}, {} requests in flight)",
                    m.binary.display(),
                    thousands(m.runs as u64),
                    ms(m.fill_time),
                    64.min(m.runs)
                ));
            }
            Err(e) => {
                errors += 1;
                rows.push(Row::failed("5. server RSS", &e));
            }
        }
    }

    // 6: approve → the run moves on.
    if wanted(6) {
        let n = sizes.approval_samples;
        progress(&format!("figure 6: approval round trip ({n} samples)"));
        match approval::approval(&args.dir, n).await {
            Ok(a) => {
                let p50 = resume::percentile(&a.to_model, 50.0);
                let p99 = resume::percentile(&a.to_model, 99.0);
                rows.push(Row::new(
                    "6. approve → next model call",
                    format!("p50 {}, p99 {}", ms(p50), ms(p99)),
                    "p50 ≤ 2 ms",
                    Some(p50 <= Duration::from_millis(2)),
                ));
                rows.push(Row::new(
                    "   approve → tool call starts",
                    format!(
                        "p50 {}, p99 {}",
                        ms(resume::percentile(&a.to_tool, 50.0)),
                        ms(resume::percentile(&a.to_tool, 99.0))
                    ),
                    "",
                    None,
                ));
                notes.push(format!(
                    "6: {} samples, one session; approve → next model call includes the approval's commit, the \
                     run's claim, the tool's intent commit, the built-in `echo` and its result commit (durability \
                     {}); p50 from approve: decide_approval returned {}, intent commit seen {}, tool started {}, \
                     result commit seen {}, model called {}",
                    a.to_model.len(),
                    harness::durability(),
                    ms(resume::percentile(&a.to_decided, 50.0)),
                    ms(resume::percentile(&a.to_intent, 50.0)),
                    ms(resume::percentile(&a.to_tool, 50.0)),
                    ms(resume::percentile(&a.to_result, 50.0)),
                    ms(resume::percentile(&a.to_model, 50.0)),
                ));
            }
            Err(e) => {
                errors += 1;
                rows.push(Row::failed("6. approve → next model call", &e));
            }
        }
    }

    // 7: an MCP tool call through Stead against the same call made directly.
    if wanted(7) {
        let n = sizes.mcp_calls;
        match std::env::var(mcp::VAR).ok().filter(|v| !v.is_empty()) {
            None => rows.push(Row::new(
                "7. MCP tool call overhead",
                format!("skipped ({} not set; eval \"$(bash .ci/mcp-servers.sh)\")", mcp::VAR),
                "p50 overhead ≤ 1 ms",
                None,
            )),
            Some(entry) => {
                progress(&format!("figure 7: {n} MCP calls to server-everything's echo, directly and through Stead"));
                match figure7(&args.dir, &entry, n).await {
                    Ok((direct, durable, off)) => {
                        let d50 = resume::percentile(&direct, 50.0);
                        let s50 = resume::percentile(&durable, 50.0);
                        let o50 = resume::percentile(&off, 50.0);
                        let diff = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1000.0;
                        rows.push(Row::new(
                            "7. MCP tool call overhead (Stead − direct)",
                            format!("{:.2} ms (p50 {} vs {})", diff(s50, d50), ms(s50), ms(d50)),
                            "p50 overhead ≤ 1 ms",
                            Some(diff(s50, d50) <= 1.0),
                        ));
                        rows.push(Row::new(
                            "   same, durability off",
                            format!("{:.2} ms (p50 {} vs {})", diff(o50, d50), ms(o50), ms(d50)),
                            "",
                            None,
                        ));
                        notes.push(format!(
                            "7: {n} calls each after {} warm-up calls to server-everything over stdio; Stead's time is tool_call_started \
                             commit → tool_call_completed commit on the commit stream, so it includes recording the \
                             result durably (one commit, fsync at durability {}); p99: direct {}, Stead {}, \
                             durability off {}",
                            mcp::WARMUP,
                            harness::durability(),
                            ms(resume::percentile(&direct, 99.0)),
                            ms(resume::percentile(&durable, 99.0)),
                            ms(resume::percentile(&off, 99.0)),
                        ));
                    }
                    Err(e) => {
                        errors += 1;
                        rows.push(Row::failed("7. MCP tool call overhead", &e));
                    }
                }
            }
        }
    }

    println!();
    println!(
        "Stead benchmark{} — {} CPUs ({}), durability {} (embedded SQLite, fsync per commit group), scripted model",
        if args.quick { " (--quick: reduced sizes)" } else { "" },
        nproc,
        cpu_model(),
        harness::durability(),
    );
    match &fsync {
        Ok(d) => {
            println!("data dir {}: 4 KiB write + fdatasync p50 {:.0} µs", args.dir.display(), d.as_secs_f64() * 1e6)
        }
        Err(e) => println!("data dir {}: fsync probe failed: {e}", args.dir.display()),
    }
    println!("load average (1 min): {load_before} before, {} after", load_average());
    if args.quick {
        println!("--quick: a smoke run; at these sizes fixed costs dominate (pages of an almost empty database,");
        println!("one run's start-up), so the targets are only meaningful for the full run");
    }
    println!();
    print_table(&rows);
    println!();
    for n in &notes {
        println!("{n}");
    }
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
    if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Figure 7's three measurements: direct, through Stead, through Stead without fsync.
async fn figure7(dir: &Path, entry: &str, n: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
    let direct = mcp::direct(entry, n).await?;
    let durable = mcp::through_stead(dir, entry, n, harness::durability()).await?;
    let off = mcp::through_stead(dir, entry, n, stead_store_sqlite::Durability::Off).await?;
    Ok((direct, durable, off))
}

fn print_table(rows: &[Row]) {
    let head = ["figure", "measured", "target", "result"];
    let result = |r: &Row| match r.met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None if r.measured.starts_with("error") => "ERROR",
        None => "",
    };
    let width = |i: usize| {
        rows.iter()
            .map(|r| match i {
                0 => r.figure.chars().count(),
                1 => r.measured.chars().count(),
                2 => r.target.chars().count(),
                _ => result(r).len(),
            })
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let w = [width(0), width(1), width(2), width(3)];
    let line = |cells: [&str; 4]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            s.push_str(c);
            if i < 3 {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head);
    line(["-".repeat(w[0]).as_str(), "-".repeat(w[1]).as_str(), "-".repeat(w[2]).as_str(), "-".repeat(w[3]).as_str()]);
    for r in rows {
        line([&r.figure, &r.measured, &r.target, result(r)]);
    }
}
