//! The workspace binaries (`checker`, `sink`) as child processes of a test: found next to
//! the test executable, started with a clean environment, killed when the test ends. Never
//! builds anything: `cargo nextest run --workspace` (make test) has built them, or
//! `cargo build -p checker -p sink` before running one crate's tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace binary `name` in the target directory of the running test executable
/// (`target/<profile>/<name>`; test executables live in `target/<profile>/deps`).
///
/// # Panics
/// When it is not built, with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    let profile = if deps.ends_with("deps") {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    let p = profile.join(name);
    assert!(
        p.exists(),
        "{} not built: run the tests for the whole workspace (make test) or `cargo build -p {name}` first",
        p.display()
    );
    p
}

/// A child process that is killed when the test ends, even when it panics.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts the workspace binary `name` with only `env` (and `PATH`), its stderr appended to `log`.
/// A sink gets `STATUS_ADDR=127.0.0.1:0` unless `env` sets it (its default, `0.0.0.0:8080`,
/// would be taken by the first of several sinks tests start at once).
pub fn spawn(name: &str, env: &[(&str, String)], log: &Path) -> Proc {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(bin(name));
    cmd.env_clear();
    if name == "sink" {
        cmd.env("STATUS_ADDR", "127.0.0.1:0");
    }
    let child = cmd
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc(child)
}

/// Sends `sig` (e.g. `-TERM`, `-KILL`) to `child` with kill(1).
///
/// # Panics
/// When kill fails.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {} failed", child.id());
}

/// Waits for `child` to exit within `limit`; returns its exit code (-1 for a signal).
///
/// # Panics
/// When it is still running after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "process did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
