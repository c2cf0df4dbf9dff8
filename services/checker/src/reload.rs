//! `TARGETS_FILE` read again while the checker runs: when its content changes (compared byte
//! for byte every `TARGETS_FILE_POLL_INTERVAL`) and on SIGHUP.
//!
//! Polling the content, not inotify on the file: Kubernetes updates a mounted ConfigMap by
//! writing a new directory and swapping the `..data` symlink, which a watch on the file (an
//! old inode) never sees; reading the path follows the symlinks every time. Comparing bytes
//! is cheap next to the probes (a 100,000-target file is a few MB read once a second).
//!
//! The file is parsed by [`load_targets`] with the environment and defaults of start-up, so
//! a reload judges a file exactly as start-up and `checker targets validate` do. A valid file
//! makes the roster schedule exactly its targets ([`Roster::sync`]); an invalid or unreadable
//! one keeps the targets running, is logged once per distinct content (and at every SIGHUP)
//! and counted. This module never exits the process and never schedules anything itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::TargetContext;
use crate::metrics::{Metrics, ReloadResult};
use crate::roster::Roster;
use crate::target::{load_targets, Target};

/// What was last read at the path: its bytes, or why it could not be read.
#[derive(Debug, PartialEq, Eq)]
enum Content {
    Bytes(Vec<u8>),
    Unreadable(String),
}

/// Reloads `TARGETS_FILE` into a roster.
pub struct FileReloader {
    /// The file (`TARGETS_FILE`).
    pub path: PathBuf,
    /// Environment and defaults of start-up.
    pub context: TargetContext,
    /// Where the targets go.
    pub roster: Roster,
    /// `healthcheck_checker_target_reloads_total`.
    pub metrics: Metrics,
    /// `TARGETS_FILE_POLL_INTERVAL`.
    pub poll: Duration,
}

/// Why a reload was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The first look, at start: applied silently when it matches, never counted as applied.
    Start,
    /// A poll (only a changed content is read again).
    Poll,
    /// SIGHUP: read and applied again even when the bytes are the same (a file it refers to,
    /// a password file say, may have changed).
    Hangup,
}

impl FileReloader {
    /// Looks at the file at once (it may have changed since the configuration was read), then
    /// every `poll` and on every SIGHUP, until `stop` is cancelled. SIGHUP is handled from
    /// the moment this is called (until then it would end the process, its default action).
    pub async fn run(self, stop: CancellationToken) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot handle SIGHUP; TARGETS_FILE is reloaded only when it changes.");
                None
            }
        };
        let mut seen: Option<Content> = None;
        let mut trigger = Trigger::Start;
        loop {
            let content = match tokio::fs::read(&self.path).await {
                Ok(bytes) => Content::Bytes(bytes),
                Err(e) => Content::Unreadable(e.to_string()),
            };
            let distinct = seen.as_ref() != Some(&content);
            if distinct || trigger == Trigger::Hangup {
                seen = Some(content);
                self.reload(trigger, distinct).await;
            }
            trigger = tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.poll) => Trigger::Poll,
                () = hangup_received(&mut hangup) => Trigger::Hangup,
            };
        }
    }

    /// Parses the file and applies it, or keeps the running targets.
    async fn reload(&self, trigger: Trigger, distinct: bool) {
        let context = self.context.clone();
        let parsed = tokio::task::spawn_blocking(move || load_targets(&context.env, &context.defaults))
            .await
            .expect("parsing the targets file does not panic");
        match parsed {
            Ok(targets) => {
                let count = targets.len();
                self.roster.sync(targets.into_iter().map(Arc::<Target>::new).collect());
                if trigger != Trigger::Start {
                    self.metrics.target_reloads.inc(ReloadResult::Applied);
                    tracing::info!(path = %self.path.display(), targets = count, sighup = trigger == Trigger::Hangup, "Targets file reloaded.");
                }
            }
            Err(e) => {
                self.metrics.target_reloads.inc(ReloadResult::Invalid);
                if distinct || trigger == Trigger::Hangup {
                    tracing::error!(path = %self.path.display(), error = %e, targets = self.roster.len(), "Targets file is invalid; the targets running are kept.");
                }
            }
        }
    }
}

/// The next SIGHUP; never, when it cannot be handled.
async fn hangup_received(hangup: &mut Option<Signal>) {
    match hangup {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}
