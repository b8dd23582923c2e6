//! Where this process's threads spent their time, by thread name (Linux
//! `/proc/self/task/*/schedstat`): on a CPU, or runnable but waiting for one. The rest of the
//! wall time a thread was blocked (on I/O such as fsync, or idle).

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Usage {
    pub on_cpu: Duration,
    /// Runnable, waiting for a CPU (other threads or processes had them).
    pub waiting: Duration,
}

/// Totals so far, summed per thread name (tokio's workers share one name).
pub fn by_thread() -> BTreeMap<String, Usage> {
    let mut out: BTreeMap<String, Usage> = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_owned();
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut fields = stat.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        let (on, wait) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
        let u = out.entry(name).or_default();
        u.on_cpu += Duration::from_nanos(on);
        u.waiting += Duration::from_nanos(wait);
    }
    out
}

/// What each thread name used between `before` and now. Threads that ended in between are
/// missing.
pub fn since(before: &BTreeMap<String, Usage>) -> BTreeMap<String, Usage> {
    by_thread()
        .into_iter()
        .map(|(name, after)| {
            let b = before.get(&name).copied().unwrap_or_default();
            (
                name,
                Usage {
                    on_cpu: after.on_cpu.saturating_sub(b.on_cpu),
                    waiting: after.waiting.saturating_sub(b.waiting),
                },
            )
        })
        .filter(|(_, u)| !u.on_cpu.is_zero())
        .collect()
}
