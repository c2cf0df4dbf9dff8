//! Live target changes in fleet mode on the test stack's tansu broker, with ONE checker (tansu's
//! groups are right for one or two members; see `shared/notes/test-broker-groups.md`):
//! `checker targets apply` of a changed file is probed within 2 s by the running process, and
//! the unchanged targets keep their slot grid (no slot lost, none doubled).

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::result::ProbeResult;
use testkit::metrics::Scrape;

fn file(a_path: &str) -> String {
    let mut yaml = String::new();
    for (name, path) in [("a", a_path), ("b", "/b"), ("c", "/c")] {
        yaml.push_str(&format!(
            "- name: {name}\n  url: http://{{ADDR}}{path}\n  interval: 1s\n  timeout: 500ms\n"
        ));
    }
    yaml
}

fn apply(bootstrap: &str, topic: &str, yaml: &str) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    let out = std::process::Command::new(testkit::process::bin("checker"))
        .args(["targets", "apply", f.path().to_str().unwrap()])
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_TARGETS_TOPIC", topic)
        .output()
        .expect("run checker targets apply");
    assert!(
        out.status.success(),
        "apply failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_change_is_probed_within_2s_and_unchanged_targets_keep_their_slots() {
    let bootstrap = testkit::broker::bootstrap();
    let (targets, results) = (testkit::unique("targets"), testkit::unique("results"));
    let server = testkit::http::http_target("ok").await;
    let with_addr = |yaml: String| yaml.replace("{ADDR}", &server.to_string());
    apply(&bootstrap, &targets, &with_addr(file("/a")));

    let admin = testkit::net::free_addr();
    let log = std::env::temp_dir().join(format!("{}.log", testkit::unique("fleet-apply")));
    let mut checker = testkit::process::spawn(
        "checker",
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("KAFKA_TOPIC", results.clone()),
            ("KAFKA_TARGETS_TOPIC", targets.clone()),
            ("LOCATION", testkit::unique("loc")),
            ("INSTANCE_ID", "only".into()),
            ("ADMIN_ADDR", admin.to_string()),
            ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000".into()),
            ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "1000".into()),
            ("RUST_LOG", "info".into()),
        ],
        &log,
    );
    testkit::wait_until(Duration::from_secs(60), "the three targets scheduled", || async {
        Scrape::fetch(admin)
            .await
            .ok()
            .and_then(|s| s.metric("healthcheck_checker_targets", &[]))
            == Some(3.0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before_apply = Utc::now();
    apply(&bootstrap, &targets, &with_addr(file("/a-v2")));
    let applied = Utc::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let end = Utc::now() - chrono::Duration::seconds(1);

    let seen: Vec<ProbeResult> = testkit::topic::read_topic(&bootstrap, &results)
        .await
        .iter()
        .filter_map(|r| serde_json::from_slice(r.payload.as_deref()?).ok())
        .collect();
    let first_new = seen
        .iter()
        .filter(|r| r.target == "a" && r.url.ends_with("/a-v2"))
        .map(|r| r.scheduled_at)
        .min()
        .unwrap_or_else(|| panic!("the new spec of a was never probed (log {log:?})"));
    assert!(
        first_new <= applied + chrono::Duration::seconds(2),
        "first probe of the new spec at {first_new}, apply done at {applied}"
    );
    for name in ["b", "c"] {
        let mut slots: Vec<DateTime<Utc>> = seen
            .iter()
            .filter(|r| r.target == name && r.scheduled_at <= end)
            .map(|r| r.scheduled_at)
            .collect();
        slots.sort();
        assert!(
            slots.first().is_some_and(|s| *s < before_apply),
            "{name} probed before the apply"
        );
        assert!(
            slots
                .last()
                .is_some_and(|s| *s > applied + chrono::Duration::seconds(2)),
            "{name} probed after it"
        );
        for w in slots.windows(2) {
            assert_eq!(
                w[1] - w[0],
                chrono::Duration::seconds(1),
                "{name}: one unbroken 1 s grid across the apply (no slot lost or doubled): {w:?}"
            );
        }
    }
    assert!(checker.try_wait().unwrap().is_none(), "the checker was not restarted");
    let scrape = Scrape::fetch(admin).await.unwrap();
    assert_eq!(
        scrape.metric("healthcheck_checker_target_changes_total", &[("change", "changed")]),
        Some(1.0),
        "one target changed in place"
    );
}
