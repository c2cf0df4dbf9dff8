//! `checker targets validate FILE`, the check `scripts/k8s-validate.sh` runs on the targets
//! ConfigMap: exit 0 for a file the service accepts (including options a hand-written
//! validator once rejected: `method`, `tls`, `valid_status_codes`), exit 2 with the index and
//! field on stderr for one it refuses. Exit code and that message are the command's contract.

use std::io::Write;
use std::process::{Command, Output};

fn validate(yaml: &str) -> Output {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_checker"))
        .args(["targets", "validate"])
        .arg(file.path())
        .env_clear()
        // Ignored by the subcommand: only FILE is validated.
        .env("TARGETS", "not json")
        .output()
        .expect("checker binary")
}

#[test]
fn a_file_the_service_accepts_exits_0() {
    let out = validate(
        r#"
- name: api
  url: https://api.example.com/healthz
  method: HEAD
  valid_status_codes: [200, "300-399"]
  tls:
    server_name: api.internal
    insecure_skip_verify: true
  interval: 15s
  timeout: 3s
- name: web
  url: http://web.example.com/
  regex: "ok"
"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end().rsplit(": ").next(),
        Some("2 targets valid")
    );
}

#[test]
fn an_invalid_target_exits_2_naming_index_and_field() {
    for (yaml, field) in [
        (
            "- {name: a, url: 'https://a.example.com/'}\n- {name: b, url: 'https://b.example.com/', timeout: soon}\n",
            "TARGETS_FILE[1].timeout",
        ),
        (
            "- {name: a, url: 'https://a.example.com/', valid_status_codes: ['9xx']}\n",
            "TARGETS_FILE[0].valid_status_codes",
        ),
        ("- {name: a, uri: 'https://a.example.com/'}\n", "uri"),
        ("[]\n", "TARGETS_FILE"),
    ] {
        let out = validate(yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: stderr: {stderr}");
        assert!(stderr.contains(field), "{yaml}: stderr names {field}: {stderr}");
    }
}

#[test]
fn every_problem_is_listed_one_per_line() {
    let out = validate(
        "- {name: a, url: 'https://a.example.com/', timeout: soon}\n\
         - {name: b, url: 'https://b.example.com/'}\n\
         - {name: c, url: 'ftp://c.example.com/'}\n\
         - {name: d, url: 'https://d.example.com/', quorum: 0}\n\
         - {name: e, url: 'https://e.example.com/'}\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with("TARGETS_FILE")).collect();
    let fields: Vec<&str> = problems.iter().filter_map(|l| l.split(": ").next()).collect();
    assert_eq!(
        fields,
        [
            "TARGETS_FILE[0].timeout",
            "TARGETS_FILE[2].url",
            "TARGETS_FILE[3].quorum"
        ],
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [&["targets"][..], &["targets", "check", "x"], &["targets", "validate"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_checker"))
            .args(args)
            .env_clear()
            .output()
            .expect("checker binary");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
