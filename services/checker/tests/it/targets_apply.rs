//! `checker targets apply` and `checker targets list` against the test stack's broker: the
//! real binary as a child process, a targets topic of each test's own, and the topic read back
//! (every record with `testkit::topic::read_all`, the state with `read_state`).

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

use checker::targets_topic::{read_state, State};
use common::config::Env;
use common::kafka::KafkaSettings;
use serde_json::{json, Value};
use testkit::topic::{read_all, Record};

/// A targets topic of the test's own on the test broker.
struct Topic {
    bootstrap: String,
    name: String,
}

impl Topic {
    fn new() -> Self {
        Self {
            bootstrap: testkit::broker::bootstrap(),
            name: testkit::unique("targets"),
        }
    }

    /// Runs `checker targets <args>` with only the broker settings (and `extra`) set.
    fn checker(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        Command::new(testkit::process::bin("checker"))
            .arg("targets")
            .args(args)
            .env_clear()
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            .env("KAFKA_TARGETS_TOPIC", &self.name)
            .envs(extra.iter().copied())
            .output()
            .expect("run the checker binary")
    }

    /// `checker targets apply` of `yaml` (plus `flags`), its exit code and stdout.
    fn apply(&self, yaml: &str, flags: &[&str]) -> (i32, String, String) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(yaml.as_bytes()).unwrap();
        let path = file.path().to_str().unwrap().to_string();
        let mut args = vec!["apply", path.as_str()];
        args.extend_from_slice(flags);
        let out = self.checker(&args, &[("DEFAULT_INTERVAL", "45s")]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn settings(&self) -> KafkaSettings {
        KafkaSettings::from_env(&Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", self.bootstrap.as_str()),
            ("KAFKA_TARGETS_TOPIC", self.name.as_str()),
        ]))
        .unwrap()
    }

    /// Every record of the topic.
    fn records(&self) -> Vec<Record> {
        read_all(&self.bootstrap, &self.name, Duration::from_secs(30)).unwrap()
    }

    /// The state: name → spec.
    fn state(&self) -> Vec<(String, Value)> {
        let state: State = read_state(&self.settings(), Duration::from_secs(30)).unwrap();
        state
            .into_iter()
            .map(|(k, e)| (k, e.spec.expect("JSON values")))
            .collect()
    }
}

const FIRST: &str = r#"
- name: api
  url: http://127.0.0.1:1/health
  quorum: 2
- name: web
  url: http://127.0.0.1:1/
  interval: 1m
  basic_auth: {username: probe, password_file: /run/secrets/not-here-but-on-the-checkers}
- name: tls
  url: https://127.0.0.1:1/
  interval: 10s
  tls: {ca_file: /etc/not-here/ca.pem}
"#;

/// `api` changed (interval), `web` removed, `tls` unchanged, `new` added.
const SECOND: &str = r#"
- name: api
  url: http://127.0.0.1:1/health
  quorum: 2
  interval: 20s
- name: tls
  url: https://127.0.0.1:1/
  interval: 10s
  tls: {ca_file: /etc/not-here/ca.pem}
- name: new
  url: http://127.0.0.1:2/
"#;

fn first_state() -> Vec<(String, Value)> {
    vec![
        (
            "api".into(),
            json!({"name": "api", "url": "http://127.0.0.1:1/health", "quorum": 2, "interval": "45s"}),
        ),
        (
            "tls".into(),
            json!({"name": "tls", "url": "https://127.0.0.1:1/", "interval": "10s", "tls": {"ca_file": "/etc/not-here/ca.pem"}}),
        ),
        (
            "web".into(),
            json!({"name": "web", "url": "http://127.0.0.1:1/", "interval": "1m",
                   "basic_auth": {"username": "probe", "password_file": "/run/secrets/not-here-but-on-the-checkers"}}),
        ),
    ]
}

#[test]
fn apply_to_an_empty_topic_publishes_every_target_with_its_interval() {
    let topic = Topic::new();
    let (code, stdout, stderr) = topic.apply(FIRST, &[]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(
        topic.state(),
        first_state(),
        "the applier's DEFAULT_INTERVAL fills api's interval"
    );
    assert_eq!(topic.records().len(), 3, "one record per target");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..3].iter().map(|l| &l[..5]).collect::<Vec<_>>(),
        ["+ api", "+ tls", "+ web"]
    );
    assert!(
        lines[3].ends_with("3 added, 0 changed, 0 removed, 0 unchanged"),
        "{stdout}"
    );
    // Values are canonical JSON: keys sorted.
    let raw = read_state(&topic.settings(), Duration::from_secs(30)).unwrap();
    assert_eq!(
        String::from_utf8(raw["api"].value.clone()).unwrap(),
        r#"{"interval":"45s","name":"api","quorum":2,"url":"http://127.0.0.1:1/health"}"#
    );
}

#[test]
fn a_changed_file_publishes_only_the_difference_and_removal_is_a_tombstone() {
    let topic = Topic::new();
    assert_eq!(topic.apply(FIRST, &[]).0, 0);
    let before = topic.records();
    let (code, stdout, stderr) = topic.apply(SECOND, &[]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let after = topic.records();
    let new: Vec<&Record> = after.iter().filter(|r| !before.contains(r)).collect();
    assert_eq!(new.len(), 3, "api changed, new added, web removed: {new:?}");
    assert_eq!(new.iter().filter(|r| r.payload.is_none()).count(), 1, "one tombstone");
    let state = topic.state();
    let names: Vec<&str> = state.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["api", "new", "tls"]);
    assert_eq!(state[0].1["interval"], "20s");
    assert_eq!(state[2].1, first_state()[1].1, "tls is untouched");
    assert_eq!(
        stdout,
        "~ api\n    interval: \"45s\" → \"20s\"\n+ new  \"http://127.0.0.1:2/\"\n- web\n\
         checker: "
            .to_string()
            + &topic.name
            + ": 1 added, 1 changed, 1 removed, 1 unchanged\n"
    );
}

#[test]
fn re_applying_the_same_file_publishes_nothing() {
    let topic = Topic::new();
    assert_eq!(topic.apply(FIRST, &[]).0, 0);
    let before = topic.records();
    let (code, stdout, _) = topic.apply(FIRST, &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.ends_with("0 added, 0 changed, 0 removed, 3 unchanged\n"),
        "{stdout}"
    );
    assert_eq!(topic.records(), before);
}

#[test]
fn a_dry_run_prints_the_difference_and_publishes_nothing() {
    let topic = Topic::new();
    // On a topic that does not exist yet: nothing is created either.
    let (code, stdout, stderr) = topic.apply(FIRST, &["--dry-run"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        stdout.contains("3 added, 0 changed, 0 removed, 0 unchanged (dry run"),
        "{stdout}"
    );
    assert!(
        read_state(&topic.settings(), Duration::from_secs(30)).is_err(),
        "no topic created"
    );
    assert_eq!(topic.apply(FIRST, &[]).0, 0);
    let before = topic.records();
    let (code, stdout, _) = topic.apply(SECOND, &["--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("1 added, 1 changed, 1 removed, 1 unchanged (dry run"),
        "{stdout}"
    );
    assert_eq!(topic.records(), before, "nothing published");
    assert_eq!(topic.state(), first_state());
}

#[test]
fn inline_secrets_and_invalid_files_are_refused_and_nothing_is_published() {
    let topic = Topic::new();
    assert_eq!(topic.apply(FIRST, &[]).0, 0);
    let before = topic.records();
    for (yaml, fields) in [
        (
            // The valid targets around the secrets are not published either.
            "- {name: ok, url: 'http://127.0.0.1:1/'}\n\
             - {name: pw, url: 'http://127.0.0.1:1/', basic_auth: {username: u, password: hunter2}}\n\
             - {name: key, url: 'http://127.0.0.1:1/', headers: {X-Api-Key: k3y}}\n\
             - {name: url, url: 'http://u:hunter2@127.0.0.1:1/'}\n",
            &[
                "TARGETS_FILE[1].basic_auth.password",
                "TARGETS_FILE[2].headers.X-Api-Key",
                "TARGETS_FILE[3].url",
            ][..],
        ),
        (
            "- {name: ok, url: 'http://127.0.0.1:1/'}\n- {name: bad, url: 'http://127.0.0.1:1/', timeout: soon}\n",
            &["TARGETS_FILE[1].timeout"][..],
        ),
    ] {
        let (code, stdout, stderr) = topic.apply(yaml, &[]);
        assert_eq!(code, 2, "{yaml}: stdout {stdout} stderr {stderr}");
        let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with("TARGETS_FILE[")).collect();
        assert_eq!(problems.len(), fields.len(), "{stderr}");
        for (line, field) in problems.iter().zip(fields) {
            assert!(line.starts_with(&format!("{field}: ")), "{line} names {field}");
        }
        assert!(!stderr.contains("hunter2") && !stderr.contains("k3y"), "{stderr}");
        assert_eq!(topic.records(), before, "{yaml}: nothing published");
    }
    // The same credential as a reference to a mounted secret is published as the reference.
    let (code, _, stderr) = topic.apply(
        "- {name: key, url: 'http://127.0.0.1:1/', header_files: {X-Api-Key: /run/secrets/not-here}}\n",
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        topic.state(),
        [(
            "key".to_string(),
            json!({"name": "key", "url": "http://127.0.0.1:1/", "interval": "45s",
                   "header_files": {"X-Api-Key": "/run/secrets/not-here"}})
        )]
    );
}

#[test]
fn list_shows_the_state() {
    let topic = Topic::new();
    assert_eq!(topic.apply(FIRST, &[]).0, 0);
    assert_eq!(topic.apply(SECOND, &[]).0, 0);
    let out = topic.checker(&["list", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(String, Value)> = listed
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["spec"].clone()))
        .collect();
    assert_eq!(got, topic.state());
    assert!(listed.iter().all(|r| r["partition"].is_i64() && r["offset"].is_i64()));
    let out = topic.checker(&["list"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .filter(|n| !n.starts_with("checker:"))
        .collect();
    assert_eq!(names, ["api", "new", "tls"], "{text}");
}

#[test]
fn a_name_maps_to_the_java_clients_partition() {
    // murmur2 of the key, positive, modulo the partition count: the partition every Kafka
    // client computes (values from the Java client's `Utils.murmur2`).
    let topic = Topic::new();
    assert_eq!(topic.apply(SECOND, &[]).0, 0);
    let state = read_state(&topic.settings(), Duration::from_secs(30)).unwrap();
    for (name, e) in &state {
        assert_eq!(
            e.partition,
            (murmur2(name.as_bytes()) & 0x7fff_ffff) as i32 % 6,
            "{name}"
        );
    }
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), as the Java client's default partitioner uses it.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match rest.len() {
        3 => {
            h ^= u32::from(rest[2]) << 16;
            h ^= u32::from(rest[1]) << 8;
            h ^= u32::from(rest[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(rest[1]) << 8;
            h ^= u32::from(rest[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(rest[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[tokio::test]
async fn apply_creates_a_compacted_topic_with_the_configured_partitions() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let topic = Topic::new();
    let yaml = "- {name: a, url: 'http://127.0.0.1:1/'}\n";
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    let out = topic.checker(
        &["apply", file.path().to_str().unwrap()],
        &[("KAFKA_TARGETS_TOPIC_PARTITIONS", "3")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &topic.bootstrap)
        .create()
        .unwrap();
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&topic.name)], &AdminOptions::new())
        .await
        .unwrap();
    let config = described
        .into_iter()
        .next()
        .unwrap()
        .expect("the topic's configuration");
    let policy = config.get("cleanup.policy").and_then(|e| e.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"));
    let md = admin
        .inner()
        .fetch_metadata(Some(&topic.name), Duration::from_secs(10))
        .unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 3);
}

/// Two applies of different files racing on an empty topic: each publishes its own
/// difference, so the topic ends up holding both files' targets, a mix neither describes.
/// That is never silent: when the state is not exactly one of the files, an apply exits 3.
#[test]
fn racing_applies_that_leave_a_mix_exit_3() {
    let list = |prefix: &str| -> String {
        (0..100)
            .map(|i| format!("- {{name: {prefix}{i:03}, url: 'http://127.0.0.1:1/'}}\n"))
            .collect()
    };
    let (a, b) = (list("a"), list("b"));
    let mut mixes = 0;
    for _ in 0..3 {
        let topic = Topic::new();
        let (ra, rb) = std::thread::scope(|s| {
            let ra = s.spawn(|| topic.apply(&a, &[]));
            let rb = s.spawn(|| topic.apply(&b, &[]));
            (ra.join().unwrap(), rb.join().unwrap())
        });
        let names: Vec<String> = topic.state().into_iter().map(|(k, _)| k).collect();
        let only = |p: &str| names.len() == 100 && names.iter().all(|n| n.starts_with(p));
        if only("a") || only("b") {
            continue;
        }
        mixes += 1;
        assert!(
            ra.0 == 3 || rb.0 == 3,
            "a mix of {} targets and no apply exited 3: {ra:?} {rb:?}",
            names.len()
        );
        for (code, _, stderr) in [&ra, &rb] {
            assert!([0, 3].contains(code), "{stderr}");
        }
    }
    eprintln!("{mixes} of 3 races left a mix (each reported with exit 3)");
}
