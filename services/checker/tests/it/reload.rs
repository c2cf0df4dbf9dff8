//! `TARGETS_FILE` changed while the checker runs: the whole app (`App::build` /
//! `run_until_stopped`) in-process, or the `checker` binary as a child process for SIGHUP,
//! publishing to the test stack's broker (`TEST_KAFKA_BOOTSTRAP_SERVERS`), probing a
//! loopback server that records every request. Asserts on the requests the server saw, on
//! `/metrics` and on the results read back from the topic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::app::App;
use checker::config::Config;
use chrono::{DateTime, Utc};
use common::config::Env;
use common::result::ProbeResult;
use testkit::metrics::Scrape;
use testkit::process::Proc;
use testkit::wait_until;
use tokio_util::sync::CancellationToken;

use crate::support::{serve, text, Server};

/// Every target's interval in these tests: with the 1 s default poll, a change is probed at
/// most ~1.5 s after the write.
const INTERVAL: &str = "500ms";
const INTERVAL_MS: i64 = 500;

/// A loopback HTTP server answering `ok` and recording when each path was requested (on
/// arrival). `/slow` answers after [`SLOW`].
struct Hits {
    server: Server,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

/// How long `/slow` takes to answer.
const SLOW: Duration = Duration::from_millis(2_500);

impl Hits {
    async fn start() -> Self {
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let l = log.clone();
        let server = serve(move |req| {
            let path = req.uri().path().to_string();
            l.lock().unwrap().push((Instant::now(), path.clone()));
            async move {
                if path == "/slow" {
                    tokio::time::sleep(SLOW).await;
                }
                text(200, "ok")
            }
        })
        .await;
        Self { server, log }
    }

    /// A target named `name` probing `path` every [`INTERVAL`].
    fn target(&self, name: &str, path: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "url": self.server.url(path), "interval": INTERVAL, "timeout": "400ms"})
    }

    /// When `path` was requested, in order.
    fn times(&self, path: &str) -> Vec<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(t, _)| *t)
            .collect()
    }

    fn count(&self, path: &str) -> usize {
        self.times(path).len()
    }
}

/// Writes `targets` (a JSON array, which is YAML) to `path` as an editor or `kubectl cp`
/// would: a new file renamed over the old one, so no reader sees half a file.
fn write_targets(path: &Path, targets: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(targets).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A fresh topic on the test broker, created before the checker publishes to it.
async fn fresh_topic() -> (String, String) {
    let bootstrap = testkit::broker::bootstrap();
    let topic = testkit::unique("reload");
    testkit::broker::create_topic(&bootstrap, &topic, 3).await;
    (bootstrap, topic)
}

/// The checker app on its own task, reading `TARGETS_FILE=file`.
struct Running {
    admin: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(file: &Path, bootstrap: &str, topic: &str) -> Self {
        let pairs = [
            ("TARGETS_FILE", file.to_str().unwrap().to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_string()),
            ("KAFKA_TOPIC", topic.to_string()),
            ("KAFKA_CREATE_TOPIC", "false".into()),
            ("ADMIN_ADDR", "127.0.0.1:0".into()),
            ("INSTANCE_ID", "reload-it".into()),
        ];
        let config = Config::from_env(&Env::from_pairs(pairs)).expect("valid configuration");
        let app = App::build(config).await.expect("app builds");
        let admin = app.admin_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self { admin, stop, task }
    }

    async fn scrape(&self) -> Scrape {
        Scrape::get(self.admin).await
    }

    /// Stops it as SIGTERM would; asserts it was running until then (never restarted).
    async fn stop(self) {
        assert!(!self.task.is_finished(), "the app ran the whole test");
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the checker stops within its grace period")
            .unwrap()
            .expect("the checker stops cleanly");
    }
}

/// `healthcheck_checker_target_changes_total` by change: [added, changed, removed].
fn changes(s: &Scrape) -> [f64; 3] {
    ["added", "changed", "removed"].map(|c| {
        s.metric("healthcheck_checker_target_changes_total", &[("change", c)])
            .expect("pre-registered")
    })
}

/// `healthcheck_checker_target_reloads_total` by result: [applied, invalid].
fn reloads(s: &Scrape) -> [f64; 2] {
    ["applied", "invalid"].map(|r| {
        s.metric("healthcheck_checker_target_reloads_total", &[("result", r)])
            .expect("pre-registered")
    })
}

/// The results on `topic`, by target, in slot order.
async fn results_by_target(bootstrap: &str, topic: &str) -> BTreeMap<String, Vec<ProbeResult>> {
    let mut by: BTreeMap<String, Vec<ProbeResult>> = BTreeMap::new();
    for m in testkit::topic::read_topic(bootstrap, topic).await {
        let r: ProbeResult = serde_json::from_slice(m.payload.as_deref().expect("a payload")).expect("a result");
        by.entry(r.target.clone()).or_default().push(r);
    }
    for results in by.values_mut() {
        results.sort_by_key(|r| r.scheduled_at);
    }
    by
}

/// Asserts that `slots` are consecutive slots of one grid: each exactly one interval after
/// the one before (none lost, none doubled).
fn assert_unbroken(name: &str, slots: &[DateTime<Utc>]) {
    let gaps: Vec<i64> = slots.windows(2).map(|w| (w[1] - w[0]).num_milliseconds()).collect();
    assert!(
        gaps.iter().all(|g| *g == INTERVAL_MS),
        "{name}: slots are not one unbroken {INTERVAL} grid; gaps (ms): {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_applied_live_and_unchanged_targets_keep_their_slots() {
    let (bootstrap, topic) = fresh_topic().await;
    let hits = Hits::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.yaml");
    write_targets(
        &file,
        &serde_json::json!([
            hits.target("keep", "/keep"),
            hits.target("change", "/old"),
            hits.target("gone", "/gone"),
            hits.target("slower", "/slower")
        ]),
    );
    let app = Running::start(&file, &bootstrap, &topic).await;
    wait_until(Duration::from_secs(10), "every target probed twice", || async {
        ["/keep", "/old", "/gone", "/slower"].iter().all(|p| hits.count(p) >= 2)
    })
    .await;
    assert_eq!(
        changes(&app.scrape().await),
        [4.0, 0.0, 0.0],
        "the start-up list: four added"
    );

    // Act: one target changed (a new path), one slowed down (500 ms to 1 s), one removed, one
    // added, one untouched.
    let written = Instant::now();
    let written_at = Utc::now();
    write_targets(
        &file,
        &serde_json::json!([
            hits.target("keep", "/keep"),
            hits.target("change", "/new"),
            hits.target("added", "/added"),
            {"name": "slower", "url": hits.server.url("/slower-1s"), "interval": "1s", "timeout": "400ms"}
        ]),
    );
    wait_until(Duration::from_secs(5), "the changed spec probed", || async {
        hits.count("/new") >= 1 && hits.count("/added") >= 1
    })
    .await;
    let first_new = hits.times("/new")[0];
    assert!(
        first_new - written <= Duration::from_secs(2),
        "the change was probed {:?} after the write",
        first_new - written
    );
    // Let a few more slots pass, then judge.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let scrape = app.scrape().await;
    app.stop().await;

    // The server: the old path and the removed target stopped when the change was applied
    // (a probe already started may land a few ms later), the new ones probe on.
    let settle = first_new + Duration::from_millis(INTERVAL_MS as u64);
    assert!(
        hits.times("/old").iter().all(|t| *t < settle),
        "/old still probed after the change"
    );
    assert!(
        hits.times("/gone").iter().all(|t| *t < settle),
        "the removed target still probed"
    );
    assert!(hits.count("/new") >= 3 && hits.count("/added") >= 3);

    // /metrics: the removed target's probe_* series are gone, the counters say what happened.
    for name in ["probe_success", "probe_duration_seconds", "probe_http_status_code"] {
        assert_eq!(
            scrape.metric(name, &[("target", "gone")]),
            None,
            "{name} of the removed target"
        );
        assert!(
            scrape.metric(name, &[("target", "added")]).is_some(),
            "{name} of the added target"
        );
    }
    assert_eq!(scrape.metric("probe_success", &[("target", "change")]), Some(1.0));
    assert_eq!(
        changes(&scrape),
        [5.0, 2.0, 1.0],
        "one more added, one changed, one removed"
    );
    assert_eq!(reloads(&scrape), [1.0, 0.0]);
    assert_eq!(scrape.metric("healthcheck_checker_targets", &[]), Some(4.0));
    assert_eq!(scrape.metric("healthcheck_checker_skipped_slots_total", &[]), Some(0.0));

    // The topic: the untouched target and the changed one (same interval) each have one
    // unbroken grid across the write; the changed one switched paths once, on it.
    let by = results_by_target(&bootstrap, &topic).await;
    for name in ["keep", "change"] {
        let slots: Vec<DateTime<Utc>> = by[name].iter().map(|r| r.scheduled_at).collect();
        assert!(
            slots.first().unwrap() < &written_at
                && slots.last().unwrap() > &(written_at + chrono::Duration::seconds(2)),
            "{name}: results before and after the write"
        );
        assert_unbroken(name, &slots);
    }
    let paths: Vec<&str> = by["change"].iter().map(|r| r.url.rsplit('/').next().unwrap()).collect();
    let switch = paths
        .iter()
        .position(|p| *p == "new")
        .expect("results with the new spec");
    assert!(
        paths[..switch].iter().all(|p| *p == "old") && paths[switch..].iter().all(|p| *p == "new"),
        "{paths:?}"
    );
    let last_gone = by["gone"].last().unwrap().scheduled_at;
    assert!(
        last_gone < written_at + chrono::Duration::milliseconds(1_600),
        "gone probed until {last_gone}"
    );
    assert_unbroken("gone", &by["gone"].iter().map(|r| r.scheduled_at).collect::<Vec<_>>());
    assert!(by["added"].len() >= 3);

    // The new interval (and path): its own grid from the first slot after the change, nothing
    // doubled or probed in between.
    let slots = |path: &str| -> Vec<DateTime<Utc>> {
        by["slower"]
            .iter()
            .filter(|r| r.url.ends_with(path))
            .map(|r| r.scheduled_at)
            .collect()
    };
    let (old, new) = (slots("/slower"), slots("/slower-1s"));
    assert_eq!(old.len() + new.len(), by["slower"].len());
    assert!(old.len() >= 2 && new.len() >= 2, "{old:?} {new:?}");
    assert_unbroken("slower before", &old);
    let gaps: Vec<i64> = new.windows(2).map(|w| (w[1] - w[0]).num_milliseconds()).collect();
    assert!(gaps.iter().all(|g| *g == 1_000), "slower after: {gaps:?}");
    let between = (new[0] - *old.last().unwrap()).num_milliseconds();
    assert!(
        (1..=1_000).contains(&between),
        "the first 1 s slot follows at once: {between} ms"
    );
    let phase = checker::schedule::phase("slower", Duration::from_secs(1));
    assert_eq!(
        checker::schedule::next_slot_after(
            new[0] - chrono::Duration::milliseconds(1),
            Duration::from_secs(1),
            phase
        ),
        new[0],
        "on the 1 s grid of its name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_running_targets_and_is_counted_once() {
    let (bootstrap, topic) = fresh_topic().await;
    let hits = Hits::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.yaml");
    write_targets(&file, &serde_json::json!([hits.target("a", "/a")]));
    let app = Running::start(&file, &bootstrap, &topic).await;
    wait_until(Duration::from_secs(10), "a probed", || async { hits.count("/a") >= 1 }).await;

    // An interval that does not parse.
    let mut bad = hits.target("a", "/b");
    bad["interval"] = "soon".into();
    write_targets(&file, &serde_json::json!([bad]));
    wait_until(Duration::from_secs(5), "the invalid file counted", || async {
        reloads(&app.scrape().await)[1] >= 1.0
    })
    .await;
    let before = hits.count("/a");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let scrape = app.scrape().await;
    assert_eq!(
        reloads(&scrape),
        [0.0, 1.0],
        "one invalid content, counted once over three polls"
    );
    assert!(
        hits.count("/a") >= before + 4,
        "a probed on: {before} then {}",
        hits.count("/a")
    );
    assert_eq!(hits.count("/b"), 0);
    assert_eq!(scrape.metric("healthcheck_checker_targets", &[]), Some(1.0));
    assert_eq!(scrape.metric("probe_success", &[("target", "a")]), Some(1.0));

    // The file gone (unreadable): another invalid content; still probing.
    std::fs::remove_file(&file).unwrap();
    wait_until(Duration::from_secs(5), "the missing file counted", || async {
        reloads(&app.scrape().await)[1] >= 2.0
    })
    .await;
    let before = hits.count("/a");
    wait_until(Duration::from_secs(5), "a probed on", || async {
        hits.count("/a") > before
    })
    .await;

    // A valid file again: applied.
    write_targets(&file, &serde_json::json!([hits.target("a", "/fixed")]));
    wait_until(Duration::from_secs(5), "the fixed file probed", || async {
        hits.count("/fixed") >= 1
    })
    .await;
    let scrape = app.scrape().await;
    assert_eq!(reloads(&scrape), [1.0, 2.0]);
    assert_eq!(
        changes(&scrape),
        [1.0, 1.0, 0.0],
        "the start-up target, then its change"
    );
    app.stop().await;
}

/// Kubernetes' ConfigMap volume: `targets.yaml -> ..data/targets.yaml`, `..data -> ..<ts>`;
/// an update writes a new `..<ts>` directory and renames a new `..data` symlink over the old
/// one. The file the checker was given is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_applied() {
    let (bootstrap, topic) = fresh_topic().await;
    let hits = Hits::start().await;
    let dir = tempfile::tempdir().unwrap();
    let version = |name: &str, targets: serde_json::Value| -> PathBuf {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("targets.yaml"), targets.to_string()).unwrap();
        d
    };
    version("..2026_01_01_00_00_00.1", serde_json::json!([hits.target("a", "/v1")]));
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.path().join("..data")).unwrap();
    let file = dir.path().join("targets.yaml");
    std::os::unix::fs::symlink("..data/targets.yaml", &file).unwrap();

    let app = Running::start(&file, &bootstrap, &topic).await;
    wait_until(Duration::from_secs(10), "v1 probed", || async {
        hits.count("/v1") >= 1
    })
    .await;

    version("..2026_01_01_00_01_00.2", serde_json::json!([hits.target("a", "/v2")]));
    std::os::unix::fs::symlink("..2026_01_01_00_01_00.2", dir.path().join("..data_tmp")).unwrap();
    let swapped = Instant::now();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(dir.path().join("..2026_01_01_00_00_00.1")).unwrap();

    wait_until(Duration::from_secs(5), "v2 probed", || async { hits.count("/v2") >= 1 }).await;
    assert!(hits.times("/v2")[0] - swapped <= Duration::from_secs(2));
    let scrape = app.scrape().await;
    assert_eq!(reloads(&scrape), [1.0, 0.0]);
    assert_eq!(
        changes(&scrape),
        [1.0, 1.0, 0.0],
        "the start-up target, then its change"
    );
    app.stop().await;
}

/// SIGHUP reloads at once: the `checker` binary with polling made too slow to see the edit
/// (`TARGETS_FILE_POLL_INTERVAL=1h`), so only the signal can apply it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_in_the_running_process() {
    let (bootstrap, topic) = fresh_topic().await;
    let hits = Hits::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.yaml");
    write_targets(&file, &serde_json::json!([hits.target("a", "/before")]));
    let admin = testkit::net::free_addr();
    let log = std::fs::File::create(dir.path().join("checker.log")).unwrap();
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_checker"))
            .env_clear()
            .env("TARGETS_FILE", &file)
            .env("TARGETS_FILE_POLL_INTERVAL", "1h")
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("KAFKA_TOPIC", &topic)
            .env("KAFKA_CREATE_TOPIC", "false")
            .env("ADMIN_ADDR", admin.to_string())
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("checker binary"),
    );
    wait_until(Duration::from_secs(15), "the first target probed", || async {
        hits.count("/before") >= 2
    })
    .await;
    let pid = child.id();

    write_targets(&file, &serde_json::json!([hits.target("a", "/after")]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hits.count("/after"), 0, "the slow poll did not see the edit");

    testkit::process::signal(&child, "-HUP");
    let sent = Instant::now();
    wait_until(Duration::from_secs(5), "the edit probed after SIGHUP", || async {
        hits.count("/after") >= 1
    })
    .await;
    assert!(hits.times("/after")[0] - sent <= Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP did not end the process");
    assert_eq!(child.id(), pid);
    let scrape = Scrape::get(admin).await;
    assert_eq!(reloads(&scrape), [1.0, 0.0]);
    assert_eq!(
        changes(&scrape),
        [1.0, 1.0, 0.0],
        "the start-up target, then its change"
    );

    testkit::process::signal(&child, "-TERM");
    assert_eq!(testkit::process::wait_exit(&mut child, Duration::from_secs(30)), 0);
}

/// A target removed while its probe is in flight: the probe finishes and its result is
/// published, and its late completion does not bring the target's `probe_*` series back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_in_flight_when_its_target_is_removed_publishes_and_leaves_no_series() {
    let (bootstrap, topic) = fresh_topic().await;
    let hits = Hits::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.yaml");
    let slow = serde_json::json!({"name": "slow", "url": hits.server.url("/slow"), "interval": "10s", "timeout": "5s"});
    write_targets(&file, &serde_json::json!([slow, hits.target("other", "/other")]));
    let app = Running::start(&file, &bootstrap, &topic).await;
    wait_until(Duration::from_secs(12), "the slow probe in flight", || async {
        hits.count("/slow") == 1
    })
    .await;
    let arrived = hits.times("/slow")[0];

    write_targets(&file, &serde_json::json!([hits.target("other", "/other")]));
    wait_until(Duration::from_secs(3), "slow removed", || async {
        app.scrape().await.metric("healthcheck_checker_targets", &[]) == Some(1.0)
    })
    .await;
    assert!(arrived.elapsed() < SLOW, "removed while the probe was in flight");
    let scrape = app.scrape().await;
    assert_eq!(scrape.metric("healthcheck_checker_probes_in_flight", &[]), Some(1.0));
    // Until well after the answer came.
    tokio::time::sleep(SLOW - arrived.elapsed() + Duration::from_secs(1)).await;
    let scrape = app.scrape().await;
    assert_eq!(scrape.metric("healthcheck_checker_probes_in_flight", &[]), Some(0.0));
    assert_eq!(scrape.metric("probe_success", &[("target", "slow")]), None);
    assert_eq!(scrape.metric("probe_success", &[("target", "other")]), Some(1.0));
    app.stop().await;

    let by = results_by_target(&bootstrap, &topic).await;
    let slow: Vec<&ProbeResult> = by["slow"].iter().collect();
    assert_eq!(slow.len(), 1, "the one probe in flight published");
    assert!(slow[0].success, "{:?}", slow[0].error_kind);
    assert!(slow[0].duration_seconds >= SLOW.as_secs_f64() - 0.1);
    assert_eq!(hits.count("/slow"), 1, "never probed again");
}
