//! Processes the harness starts, and what Linux says about any process: CPU time, memory.
//!
//! Every process started here is a [`Proc`]: its output goes to a log file, its pid is
//! appended to the pid file that `scripts/bench.sh` reads in its exit trap, and dropping it
//! stops it (SIGTERM, then SIGKILL), so no run leaves anything behind.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

pub use testkit::procfs::{children_of, clock_ticks, cpu_seconds, rss_bytes, tree_cpu_seconds};

/// A child process that is stopped when dropped.
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr appended to `<log_dir>/<name>.log`,
    /// and records its pid in `pids_file`.
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path, pids_file: &Path) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.as_std().get_program()))?;
        let pid = child.id().context("child has no pid")?;
        let mut f = fs::OpenOptions::new().create(true).append(true).open(pids_file)?;
        writeln!(f, "{pid}")?;
        Ok(Self {
            name: name.to_string(),
            child,
            pid,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails when the process has exited, with the end of its log.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// Waits up to `limit` for the process to exit by itself (then stops it); true when it did.
    pub async fn wait(mut self, limit: Duration) -> bool {
        let exited = matches!(tokio::time::timeout(limit, self.child.wait()).await, Ok(Ok(s)) if s.success());
        self.stop(Duration::from_secs(5)).await;
        exited
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub async fn stop(mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid, "TERM");
            if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
                let _ = self.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only reached without `stop` on an error path: a short SIGTERM grace, then SIGKILL
        // (tokio's kill_on_drop) so that e.g. nginx's master can stop its workers first.
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid, "TERM");
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(100));
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
            }
        }
    }
}

/// Sends `SIG<sig>` to `pid` with kill(1) (the workspace forbids `unsafe`, so no libc call).
pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Busy and total CPU seconds of the whole machine since boot (`/proc/stat`), to tell how
/// much other work ran during a measurement.
pub fn machine_cpu() -> (f64, f64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    ((total - idle) / clock_ticks(), total / clock_ticks())
}

/// A CPU snapshot of named processes and of the machine, to diff over a window.
#[derive(Clone, Debug)]
pub struct CpuSnap {
    at: std::time::Instant,
    procs: Vec<(String, f64)>,
    busy: f64,
}

/// What [`CpuSnap::delta`] reports.
#[derive(Clone, Debug)]
pub struct CpuDelta {
    /// Window length, seconds.
    pub seconds: f64,
    /// CPU seconds per named process.
    pub procs: Vec<(String, f64)>,
    /// Busy CPU seconds of the machine not accounted to the named processes.
    pub other: f64,
}

/// Something whose CPU can be read.
#[derive(Clone, Debug)]
pub enum Who {
    /// One process (all threads).
    Pid(u32),
    /// A process and its children, e.g. a PostgreSQL postmaster and its backends or an nginx
    /// master and its workers; see [`tree_cpu_seconds`].
    Tree(u32),
}

impl CpuSnap {
    /// Reads the CPU of each `(name, who)` and of the machine.
    pub fn take(list: &[(&str, Who)]) -> Self {
        let procs = list
            .iter()
            .map(|(n, w)| {
                let v = match w {
                    Who::Pid(p) => cpu_seconds(*p, false).unwrap_or(f64::NAN),
                    Who::Tree(p) => tree_cpu_seconds(*p),
                };
                (n.to_string(), v)
            })
            .collect();
        Self {
            at: std::time::Instant::now(),
            procs,
            busy: machine_cpu().0,
        }
    }

    /// The difference `later - self`.
    pub fn delta(&self, later: &CpuSnap) -> CpuDelta {
        let procs: Vec<(String, f64)> = self
            .procs
            .iter()
            .zip(&later.procs)
            .map(|((n, a), (_, b))| (n.clone(), b - a))
            .collect();
        let ours: f64 = procs.iter().map(|(_, v)| v).filter(|v| v.is_finite()).sum();
        CpuDelta {
            seconds: later.at.duration_since(self.at).as_secs_f64(),
            other: (later.busy - self.busy - ours).max(0.0),
            procs,
        }
    }
}

impl CpuDelta {
    /// CPU seconds of the named process.
    pub fn of(&self, name: &str) -> f64 {
        self.procs.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, v)| *v)
    }

    /// "checker 0.93 cores, broker 0.21, ..., other 0.05": cores used on average.
    pub fn cores(&self) -> String {
        let mut parts: Vec<String> = self
            .procs
            .iter()
            .map(|(n, v)| format!("{n} {:.2}", v / self.seconds))
            .collect();
        parts.push(format!("other {:.2}", self.other / self.seconds));
        parts.join(", ")
    }
}
