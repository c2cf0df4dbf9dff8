//! What Linux says about a process (proc(5)): CPU time from `/proc/<pid>/stat`, memory from
//! `/proc/<pid>/status`, children by parent pid. Reads only; never signals or waits.

use std::fs;
use std::sync::OnceLock;

use anyhow::Context as _;

/// Clock ticks per second of the `/proc/<pid>/stat` times (`getconf CLK_TCK`, else 100).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Fields of `/proc/<pid>/stat` after the command name: index 0 is field 3 (state).
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid} is gone"))?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds (user + system, all threads) a process has used: `/proc/<pid>/stat` utime +
/// stime. With `children`, also the CPU of its waited-for children (cutime + cstime).
pub fn cpu_seconds(pid: u32, children: bool) -> anyhow::Result<f64> {
    let f = stat_fields(pid)?;
    let field = |n: usize| -> f64 { f.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) };
    let mut ticks = field(14) + field(15);
    if children {
        ticks += field(16) + field(17);
    }
    Ok(ticks / clock_ticks())
}

/// Pids whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid)
                .ok()
                .and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                == Some(ppid)
        })
        .collect()
}

/// CPU seconds of a process and its children: the parent with its reaped children (e.g.
/// PostgreSQL backends that exited) plus every live child (backends, WAL writer, ...).
pub fn tree_cpu_seconds(parent: u32) -> f64 {
    let own = cpu_seconds(parent, true).unwrap_or(0.0);
    own + children_of(parent)
        .into_iter()
        .map(|p| cpu_seconds(p, false).unwrap_or(0.0))
        .sum::<f64>()
}

/// `VmRSS` and `VmHWM` (peak RSS) of a process, bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((kb("VmRSS:"), kb("VmHWM:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let (rss, peak) = rss_bytes(me).unwrap();
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
        let before = cpu_seconds(me, false).unwrap();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(100) {}
        assert!(
            cpu_seconds(me, false).unwrap() > before,
            "100 ms of spinning shows as CPU time"
        );
        assert!(cpu_seconds(u32::MAX, false).is_err());
        let child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children_of(me).contains(&child.id()));
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
}
