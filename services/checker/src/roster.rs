//! The roster: the set of targets this checker schedules now, changed while it runs.
//!
//! One entry per target name: the `watch` sender its schedule task ([`Scheduler::run_target`])
//! reads its spec from, and the task's own `CancellationToken` (a child of the roster's stop
//! token). Every source of targets drives it the same way: a fixed list once at start-up
//! ([`Roster::sync`]), `TARGETS_FILE` at start-up and at each reload (`crate::app`), the
//! targets topic partition by partition (`crate::fleet`, [`Roster::upsert`] and
//! [`Roster::remove`], from librdkafka's rebalance callback too, hence the synchronous API).
//!
//! A changed spec goes to the running task, which keeps its slot grid (see
//! `schedule::slot_after_change`); a removed target's task ends at once, its probes in flight
//! finish and publish, and its `probe_*` series leave `/metrics` ([`crate::metrics::Metrics::forget`]). The
//! roster keeps `healthcheck_checker_targets` equal to its size and counts
//! `healthcheck_checker_target_changes_total{change}`. It never probes and never reads a
//! target list itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::TargetChange;
use crate::schedule::Scheduler;
use crate::target::{HeaderRule, Target};

/// The targets scheduled now, by name. Cheap to clone (one `Arc`); every clone is the same
/// roster.
#[derive(Clone)]
pub struct Roster {
    inner: Arc<Inner>,
}

struct Inner {
    scheduler: Scheduler,
    stop: CancellationToken,
    runtime: Handle,
    /// The schedule tasks (not the probes: those are on `scheduler.tracker`).
    tasks: TaskTracker,
    entries: Mutex<HashMap<String, Entry>>,
}

/// One scheduled target.
struct Entry {
    /// The spec its task runs with (the task reads every new value).
    spec: watch::Sender<Arc<Target>>,
    /// Ends its task (a child of the roster's stop token).
    stop: CancellationToken,
}

/// What one [`Roster::sync`] did, for its log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Changes {
    added: usize,
    changed: usize,
    removed: usize,
}

impl Roster {
    /// An empty roster whose schedules run on `scheduler` until `stop` is cancelled.
    ///
    /// # Panics
    /// When called outside a tokio runtime (it keeps the runtime's `Handle`, so that the other
    /// methods, which are synchronous, may be called from any thread, e.g. a librdkafka
    /// rebalance callback).
    pub fn new(scheduler: Scheduler, stop: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                scheduler,
                stop,
                runtime: Handle::current(),
                tasks: TaskTracker::new(),
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts `target`'s schedule, or hands a changed spec to its running schedule, which
    /// keeps its slot grid (same interval: the next slot is unchanged; no slot lost or
    /// gained). A spec equal to the running one ([`same_spec`]) changes nothing and is not
    /// counted.
    pub fn upsert(&self, target: Arc<Target>) {
        let mut entries = self.entries();
        let change = self.upsert_locked(&mut entries, target);
        self.settle(&entries, change.into_iter());
    }

    /// Stops scheduling `name` (in-flight probes finish and publish) and removes its
    /// `probe_*` series from /metrics. Unknown names are ignored.
    pub fn remove(&self, name: &str) {
        let mut entries = self.entries();
        let removed = self.remove_locked(&mut entries, name);
        self.settle(&entries, removed.then_some(TargetChange::Removed).into_iter());
    }

    /// Makes the scheduled set exactly `targets` (upsert each, remove the others). When a
    /// name appears twice, the last one wins.
    pub fn sync(&self, targets: Vec<Arc<Target>>) {
        let mut entries = self.entries();
        let keep: std::collections::HashSet<String> = targets.iter().map(|t| t.name.clone()).collect();
        let gone: Vec<String> = entries.keys().filter(|n| !keep.contains(*n)).cloned().collect();
        let mut changes = Vec::new();
        for name in gone {
            if self.remove_locked(&mut entries, &name) {
                changes.push(TargetChange::Removed);
            }
        }
        for target in targets {
            changes.extend(self.upsert_locked(&mut entries, target));
        }
        let summary = changes.iter().fold(Changes::default(), |mut c, change| {
            match change {
                TargetChange::Added => c.added += 1,
                TargetChange::Changed => c.changed += 1,
                TargetChange::Removed => c.removed += 1,
            }
            c
        });
        self.settle(&entries, changes.into_iter());
        if summary != Changes::default() {
            tracing::info!(
                added = summary.added,
                changed = summary.changed,
                removed = summary.removed,
                targets = entries.len(),
                "Targets changed."
            );
        }
    }

    /// How many targets are scheduled.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no target is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the scheduled targets, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries().keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// The spec `name` is scheduled with, if it is.
    pub fn get(&self, name: &str) -> Option<Arc<Target>> {
        self.entries().get(name).map(|e| e.spec.borrow().clone())
    }

    /// After `stop` is cancelled: waits until every schedule task ended (it never returns
    /// while `stop` is not cancelled and a target is scheduled). Probes in flight are not
    /// waited for here; they are on the scheduler's probe tracker.
    pub async fn wait(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while the lock was held left the map consistent (every change is one
        // insert or remove), so a poisoned lock is still usable.
        self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn upsert_locked(&self, entries: &mut HashMap<String, Entry>, target: Arc<Target>) -> Option<TargetChange> {
        if let Some(entry) = entries.get(&target.name) {
            if same_spec(&entry.spec.borrow(), &target) {
                return None;
            }
            tracing::debug!(target_name = %target.name, "Target changed.");
            // The task may have ended (the roster is stopping): nothing to hand over then.
            entry.spec.send_replace(target);
            return Some(TargetChange::Changed);
        }
        tracing::debug!(target_name = %target.name, "Target added.");
        let name = target.name.clone();
        let (spec, receiver) = watch::channel(target);
        let stop = self.inner.stop.child_token();
        self.inner.tasks.spawn_on(
            self.inner.scheduler.clone().run_target(receiver, stop.clone()),
            &self.inner.runtime,
        );
        entries.insert(name, Entry { spec, stop });
        Some(TargetChange::Added)
    }

    fn remove_locked(&self, entries: &mut HashMap<String, Entry>, name: &str) -> bool {
        let Some(entry) = entries.remove(name) else {
            return false;
        };
        tracing::debug!(target_name = %name, "Target removed.");
        // Cancel first: a probe finishing after this writes no gauge (`record_owned`), so
        // the series `forget` removes do not come back.
        entry.stop.cancel();
        self.inner.scheduler.metrics.forget(name);
        true
    }

    /// Counts `changes` and sets the targets gauge to the roster's size.
    fn settle(&self, entries: &HashMap<String, Entry>, changes: impl Iterator<Item = TargetChange>) {
        let metrics = &self.inner.scheduler.metrics;
        for change in changes {
            metrics.target_changes.inc(change);
        }
        metrics.targets.set(entries.len() as f64);
    }
}

/// Whether two targets would be probed the same way: every field of [`Target`] compared
/// (regexes by their source text). The destructuring names every field, so a field added to
/// `Target` does not compile here until it is compared too.
///
/// TLS client configurations cannot be compared by value (rustls' `ClientConfig` has no
/// equality): they are equal when they are the same configuration, as every target without
/// TLS options shares one. A target with its own `tls` files therefore counts as changed at
/// every reload that rebuilds it (which also picks up a renewed CA or client certificate).
pub fn same_spec(a: &Target, b: &Target) -> bool {
    let Target {
        name,
        url,
        method,
        headers,
        body,
        valid_status,
        body_regex,
        body_regex_not,
        header_rules,
        interval,
        timeout,
        follow_redirects,
        max_redirects,
        tls,
        tls_server_name,
        ip_family,
        proxy,
        resolver,
        body_max_bytes,
        quorum,
        failure_threshold,
    } = a;
    let regex_eq = |x: &Option<Arc<regex::bytes::Regex>>, y: &Option<Arc<regex::bytes::Regex>>| {
        x.as_ref().map(|r| r.as_str()) == y.as_ref().map(|r| r.as_str())
    };
    let rules_eq = |x: &[HeaderRule], y: &[HeaderRule]| {
        x.len() == y.len()
            && x.iter().zip(y).all(|(x, y)| {
                x.header == y.header
                    && x.regex.as_str() == y.regex.as_str()
                    && x.fail_if_matches == y.fail_if_matches
                    && x.allow_missing == y.allow_missing
            })
    };
    *name == b.name
        && *url == b.url
        && *method == b.method
        && *headers == b.headers
        && *body == b.body
        && *valid_status == b.valid_status
        && regex_eq(body_regex, &b.body_regex)
        && regex_eq(body_regex_not, &b.body_regex_not)
        && rules_eq(header_rules, &b.header_rules)
        && *interval == b.interval
        && *timeout == b.timeout
        && *follow_redirects == b.follow_redirects
        && *max_redirects == b.max_redirects
        && Arc::ptr_eq(&tls.configured_host, &b.tls.configured_host)
        && Arc::ptr_eq(&tls.other_hosts, &b.tls.other_hosts)
        && *quorum == b.quorum
        && *tls_server_name == b.tls_server_name
        && *ip_family == b.ip_family
        && *proxy == b.proxy
        && format!("{resolver:?}") == format!("{:?}", b.resolver)
        && *body_max_bytes == b.body_max_bytes
        && *quorum == b.quorum
        && *failure_threshold == b.failure_threshold
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::config::Env;
    use common::kafka::KafkaSettings;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::metrics::Metrics;
    use crate::publish::Publisher;
    use crate::target::{load_targets, Defaults, ProxyEnv};

    /// Targets parsed from a JSON list, as `TARGETS` would be.
    fn targets(json: serde_json::Value) -> Vec<Arc<Target>> {
        let defaults = Defaults {
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
            body_max_bytes: 1 << 20,
            proxy_env: ProxyEnv::default(),
        };
        let text = json.to_string();
        load_targets(&Env::from_pairs([("TARGETS", text.as_str())]), &defaults)
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect()
    }

    fn one(spec: serde_json::Value) -> Arc<Target> {
        targets(serde_json::Value::Array(vec![spec])).remove(0)
    }

    /// A roster whose targets are due once an hour (none is probed during a test), with a
    /// producer towards a closed port.
    fn roster(stop: &CancellationToken) -> (Roster, Metrics) {
        let metrics = Metrics::new();
        let kafka = KafkaSettings::from_env(&Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")])).unwrap();
        let (publisher, _loop) = Publisher::new(&kafka, 10, metrics.clone()).unwrap();
        let scheduler = Scheduler {
            permits: Arc::new(Semaphore::new(1)),
            publisher,
            metrics: metrics.clone(),
            tracker: TaskTracker::new(),
            instance_id: Arc::from("unit"),
            location: Arc::from("default"),
            timer: Arc::new(crate::timer::Timer::start()),
        };
        (Roster::new(scheduler, stop.clone()), metrics)
    }

    fn counts(m: &Metrics) -> [u64; 3] {
        [TargetChange::Added, TargetChange::Changed, TargetChange::Removed].map(|c| m.target_changes.get(c))
    }

    #[tokio::test]
    async fn changes_are_counted_only_when_the_spec_differs() {
        let stop = CancellationToken::new();
        let (roster, m) = roster(&stop);
        let a = serde_json::json!({"name": "a", "url": "http://127.0.0.1:1/a", "regex": "ok"});
        let b = serde_json::json!({"name": "b", "url": "http://127.0.0.1:1/b"});
        roster.sync(targets(serde_json::json!([a, b])));
        assert_eq!(
            (roster.names(), counts(&m), m.targets.get()),
            (vec!["a".into(), "b".into()], [2, 0, 0], 2.0)
        );

        // The same list parsed again: nothing changed.
        roster.sync(targets(serde_json::json!([a, b])));
        roster.upsert(one(a.clone()));
        assert_eq!(counts(&m), [2, 0, 0]);

        // A new regex, then a new interval: changed, and the task runs with the new spec.
        roster.upsert(one(
            serde_json::json!({"name": "a", "url": "http://127.0.0.1:1/a", "regex": "fine"}),
        ));
        assert_eq!(counts(&m), [2, 1, 0]);
        assert_eq!(roster.get("a").unwrap().body_regex.as_ref().unwrap().as_str(), "fine");
        roster.upsert(one(
            serde_json::json!({"name": "a", "url": "http://127.0.0.1:1/a", "regex": "fine", "interval": "2h"}),
        ));
        assert_eq!(counts(&m), [2, 2, 0]);

        // b leaves, c comes: one removed, one added; unknown names are ignored.
        roster.sync(targets(serde_json::json!([
            {"name": "a", "url": "http://127.0.0.1:1/a", "regex": "fine", "interval": "2h"},
            {"name": "c", "url": "http://127.0.0.1:1/c"},
        ])));
        roster.remove("never-there");
        assert_eq!(
            (roster.names(), counts(&m), m.targets.get()),
            (vec!["a".into(), "c".into()], [3, 2, 1], 2.0)
        );
        roster.remove("a");
        assert_eq!((roster.len(), counts(&m), m.targets.get()), (1, [3, 2, 2], 1.0));

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), roster.wait())
            .await
            .expect("every schedule task ends after stop");
    }

    #[tokio::test]
    async fn a_removed_targets_task_ends_while_the_others_run() {
        let stop = CancellationToken::new();
        let (roster, _m) = roster(&stop);
        roster.sync(targets(serde_json::json!([
            {"name": "a", "url": "http://127.0.0.1:1/a"},
            {"name": "b", "url": "http://127.0.0.1:1/b"},
        ])));
        tokio::task::yield_now().await;
        assert_eq!(roster.inner.tasks.len(), 2);
        roster.remove("a");
        tokio::time::timeout(Duration::from_secs(5), async {
            while roster.inner.tasks.len() != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a's task ends");
        assert!(!stop.is_cancelled());
        stop.cancel();
        roster.wait().await;
    }

    /// librdkafka calls rebalance callbacks on its own threads, outside the runtime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn it_can_be_driven_from_a_thread_outside_the_runtime() {
        let stop = CancellationToken::new();
        let (roster, m) = roster(&stop);
        let r = roster.clone();
        let list = targets(serde_json::json!([{"name": "a", "url": "http://127.0.0.1:1/a"}]));
        std::thread::spawn(move || {
            r.sync(list);
            r.upsert(one(serde_json::json!({"name": "b", "url": "http://127.0.0.1:1/b"})));
            r.remove("a");
        })
        .join()
        .expect("no panic outside the runtime");
        assert_eq!((roster.names(), counts(&m)), (vec!["b".to_string()], [2, 0, 1]));
        tokio::time::timeout(Duration::from_secs(5), async {
            while roster.inner.tasks.len() != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("b's task runs, a's ended");
        stop.cancel();
        roster.wait().await;
    }

    #[test]
    fn same_spec_compares_every_field_that_changes_a_probe() {
        let base = serde_json::json!({"name": "a", "url": "http://127.0.0.1:1/a"});
        let a = one(base.clone());
        assert!(same_spec(&a, &one(base.clone())), "parsed twice, equal");
        for (field, value) in [
            ("url", serde_json::json!("http://127.0.0.1:1/b")),
            ("method", serde_json::json!("HEAD")),
            ("headers", serde_json::json!({"accept": "text/plain"})),
            ("body", serde_json::json!("x")),
            ("valid_status_codes", serde_json::json!([200])),
            ("regex", serde_json::json!("ok")),
            ("fail_if_body_matches", serde_json::json!("down")),
            (
                "fail_if_header_matches",
                serde_json::json!([{"header": "server", "regex": "old"}]),
            ),
            ("interval", serde_json::json!("2h")),
            ("timeout", serde_json::json!("2s")),
            ("follow_redirects", serde_json::json!(false)),
            ("max_redirects", serde_json::json!(3)),
            ("tls", serde_json::json!({"insecure_skip_verify": true})),
            ("ip_family", serde_json::json!("ipv4")),
            ("proxy", serde_json::json!("http://127.0.0.1:3128")),
            ("basic_auth", serde_json::json!({"username": "u", "password": "p"})),
            ("body_max_bytes", serde_json::json!(10)),
            ("quorum", serde_json::json!(2)),
            ("failure_threshold", serde_json::json!(3)),
        ] {
            let mut spec = base.clone();
            spec[field] = value;
            assert!(!same_spec(&a, &one(spec)), "{field} differs");
        }
    }
}
