//! STAND-IN until the roster branch is merged (its `roster.rs` replaces this file): the set of
//! scheduled targets, with the pinned interface of BRIEF-COMMON (interface 2). A changed spec
//! restarts the target's task (same slot grid, since the phase comes from the name); it never
//! removes `probe_*` series or counts changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::schedule::Scheduler;
use crate::target::Target;

/// The scheduled targets, by name.
#[derive(Clone)]
pub struct Roster {
    inner: Arc<Inner>,
}

struct Inner {
    scheduler: Scheduler,
    stop: CancellationToken,
    handle: Handle,
    tasks: TaskTracker,
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Roster {
    /// Call inside a tokio runtime.
    pub fn new(scheduler: Scheduler, stop: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                scheduler,
                stop,
                handle: Handle::current(),
                tasks: TaskTracker::new(),
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts `target`'s schedule, or restarts it with the new spec.
    pub fn upsert(&self, target: Arc<Target>) {
        let mut running = self.inner.running.lock().expect("roster lock");
        if let Some(old) = running.remove(&target.name) {
            old.cancel();
        }
        let token = self.inner.stop.child_token();
        running.insert(target.name.clone(), token.clone());
        let fut = self.inner.scheduler.clone().run_target(target, token);
        let _guard = self.inner.handle.enter();
        self.inner.tasks.spawn(fut);
        self.inner.scheduler.metrics.targets.set(running.len() as f64);
    }

    /// Stops scheduling `name`.
    pub fn remove(&self, name: &str) {
        let mut running = self.inner.running.lock().expect("roster lock");
        if let Some(old) = running.remove(name) {
            old.cancel();
        }
        self.inner.scheduler.metrics.targets.set(running.len() as f64);
    }

    /// Makes the scheduled set exactly `targets`.
    pub fn sync(&self, targets: Vec<Arc<Target>>) {
        let keep: std::collections::HashSet<String> = targets.iter().map(|t| t.name.clone()).collect();
        for name in self.names() {
            if !keep.contains(&name) {
                self.remove(&name);
            }
        }
        for t in targets {
            self.upsert(t);
        }
    }

    /// Number of scheduled targets.
    pub fn len(&self) -> usize {
        self.inner.running.lock().expect("roster lock").len()
    }

    /// Whether no target is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names of the scheduled targets.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .running
            .lock()
            .expect("roster lock")
            .keys()
            .cloned()
            .collect()
    }

    /// After `stop` is cancelled: waits until every schedule task ended.
    pub async fn wait(&self) {
        self.inner.stop.cancelled().await;
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
