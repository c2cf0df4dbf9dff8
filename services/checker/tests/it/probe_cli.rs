//! `checker probe`, run as a process against loopback servers: the JSON on stdout is the
//! wire `ProbeResult` (every field, parsed back), the exit code is 0 for a success, 1 for a
//! failed probe and 2 for bad input naming the flag, field or variable. Assertions are on the
//! JSON and the exit code; of the summary on stderr only that it names the error kind.

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use common::result::{check_id, ProbeResult};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::support::{raw, read_head, redirect, serve, serve_on, text, Pki};

/// What one `checker probe` run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// stdout as the one JSON line it must be, parsed as the sink parses a message.
    fn result(&self) -> ProbeResult {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one JSON line; stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// stdout as raw JSON, to check fields the typed result would default.
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// Runs `checker probe ARGS` with only `env` in its environment (no proxy variables leak in
/// from the machine running the tests).
async fn probe_cli(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_checker"))
        .arg("probe")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("checker binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A port nothing listens on (bound, then closed).
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_healthy_target_exits_0_with_the_wire_json() {
    // The body echoes a request header, so --header is seen to reach the server.
    let server = serve(|req: http::Request<_>| async move {
        let probe = req.headers().get("x-probe").map(|v| v.to_str().unwrap().to_string());
        text(200, format!("healthy, x-probe={}", probe.unwrap_or_default()))
    })
    .await;
    let url = format!("http://localhost:{}/health", server.addr.port());

    let run = probe_cli(
        &[
            &url,
            "--regex",
            "healthy, x-probe=hello",
            "-H",
            "X-Probe: hello",
            "--ip-family",
            "ipv4",
            "--location",
            "eu-1",
        ],
        &[("INSTANCE_ID", "cli-test")],
    )
    .await;

    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let r = run.result();
    assert!(r.success && r.error_kind.is_none(), "{r:?}");
    assert_eq!((r.target.as_str(), r.url.as_str()), (url.as_str(), url.as_str()));
    assert_eq!(
        (r.status_code, r.http_version.as_deref()),
        (Some(200), Some("HTTP/1.1"))
    );
    assert_eq!(r.regex_matched, Some(true));
    assert_eq!(r.body_bytes, Some("healthy, x-probe=hello".len() as u64));
    assert_eq!(
        (r.ip_address.as_deref(), r.ip_family.as_deref()),
        (Some("127.0.0.1"), Some("ipv4"))
    );
    for (phase, t) in [
        ("resolve", r.phases.resolve),
        ("connect", r.phases.connect),
        ("processing", r.phases.processing),
        ("transfer", r.phases.transfer),
    ] {
        assert!(t.is_some_and(|s| s > 0.0), "{phase}: {:?}", r.phases);
    }
    assert_eq!(r.phases.tls, None, "plain http");
    assert!(
        r.duration_seconds > 0.0 && r.timeout_seconds == 10.0,
        "DEFAULT_TIMEOUT: {r:?}"
    );
    // The identity a published result would carry.
    assert_eq!((r.location.as_str(), r.instance_id.as_str()), ("eu-1", "cli-test"));
    assert_eq!(r.check_id, check_id(&url, "eu-1", r.scheduled_at));
    assert_eq!(r.schema_version, common::result::SCHEMA_VERSION);
    // Exactly the wire JSON: what the publisher's serde_json would write for this result.
    assert_eq!(run.json(), serde_json::to_value(&r).unwrap());
}

#[tokio::test]
async fn failures_exit_1_with_their_kind() {
    let server = serve(|req: http::Request<_>| async move {
        match req.uri().path() {
            "/down" => text(503, "maintenance"),
            _ => text(200, "degraded"),
        }
    })
    .await;
    let silent = raw(|s| async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(s);
    })
    .await;
    let refused = format!("http://127.0.0.1:{}/", refused_port());

    for (args, kind) in [
        (vec![refused.as_str()], "connect"),
        (vec![&server.url("/"), "--regex", "healthy"], "regex"),
        (vec![&server.url("/down")], "status"),
        (vec![&silent.url("/"), "--timeout", "300ms"], "timeout"),
    ] {
        let run = probe_cli(&args, &[]).await;

        assert_eq!(run.code, Some(1), "{args:?}: stderr: {}", run.stderr);
        let r = run.result();
        assert!(!r.success, "{args:?}: {r:?}");
        assert_eq!(r.error_kind.as_deref(), Some(kind), "{args:?}: {r:?}");
        let error = r.error.clone().unwrap_or_default();
        assert!(!error.is_empty(), "{r:?}");
        let shown = format!("{kind}: {error}");
        assert!(
            run.stderr.contains(&shown),
            "the summary shows {shown:?}: {}",
            run.stderr
        );
        match kind {
            "connect" => assert_eq!((r.status_code, r.ip_address.as_deref()), (None, Some("127.0.0.1"))),
            "regex" => assert_eq!((r.status_code, r.regex_matched), (Some(200), Some(false))),
            "status" => assert_eq!(r.status_code, Some(503)),
            _ => {
                assert_eq!(r.timeout_seconds, 0.3);
                assert!(r.duration_seconds >= 0.3, "{r:?}");
                assert_eq!(r.status_code, None);
            }
        }
    }
}

#[tokio::test]
async fn json_prints_the_result_and_nothing_else() {
    let server = serve(|_| async { text(200, "ok") }).await;

    let ok = probe_cli(&[&server.url("/"), "--json"], &[]).await;
    let failed = probe_cli(&[&server.url("/"), "--json", "--regex", "nope"], &[]).await;

    assert_eq!((ok.code, failed.code), (Some(0), Some(1)));
    assert!(ok.result().success && !failed.result().success);
    assert_eq!((ok.stderr.as_str(), failed.stderr.as_str()), ("", ""));
}

#[tokio::test]
async fn bad_input_exits_2_naming_the_flag_field_or_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.yaml");
    std::fs::write(
        &file,
        "- {name: a, url: 'http://127.0.0.1:1/'}\n- {name: b, url: 'http://127.0.0.1:2/'}\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let url = "http://127.0.0.1:1/";
    for (args, env, named) in [
        (&[][..], &[][..], "URL"),
        (&[url, "--timeout", "soon"], &[], "--timeout"),
        (&[url, "--max-redirects", "many"], &[], "--max-redirects"),
        (&[url, "--header", "no-colon"], &[], "--header"),
        (&[url, "--valid-status", "9xx"], &[], "--valid-status"),
        (&[url, "--bogus"], &[], "--bogus"),
        (&["example.com/health"], &[], "URL"),
        (&["ftp://example.com/"], &[], "URL"),
        (&[url, "--target", "{url: 'http://h/'}"], &[], "--target"),
        (
            &["--target", "{url: 'http://h/', timeout: soon}"],
            &[],
            "--target.timeout",
        ),
        (&["--target", "{url: 'http://h/', tmeout: 1s}"], &[], "tmeout"),
        (&["--target", "[{url: 'http://h/'}]"], &[], "--target"),
        (&["--target", "{url: 'http://h/'}", "--regex", "ok"], &[], "--regex"),
        (&["--file", file], &[], "--name"),
        (&["--file", file, "--name", "c"], &[], "--name"),
        (&["--file", "/nonexistent.yaml", "--name", "a"], &[], "TARGETS_FILE"),
        (&[url, "--location", "eu west"], &[], "--location"),
        (&[url], &[("LOCATION", "eu west")], "LOCATION"),
        (&[url], &[("DEFAULT_TIMEOUT", "soon")], "DEFAULT_TIMEOUT"),
        (&[url], &[("HTTP_PROXY", "::")], "HTTP_PROXY"),
    ] {
        let run = probe_cli(args, env).await;

        assert_eq!(run.code, Some(2), "{args:?} {env:?}: stderr: {}", run.stderr);
        assert_eq!(run.stdout, "", "{args:?}: nothing probed");
        assert!(
            run.stderr.contains(named),
            "{args:?} {env:?}: names {named}: {}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn file_and_name_probe_that_target_of_the_file() {
    let a = serve(|_| async { text(200, "I am a") }).await;
    let b = serve(|_| async { text(200, "I am b") }).await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "- name: a\n  url: {}\n  regex: 'I am a'\n- name: b\n  url: {}\n  regex: 'I am b'\n  timeout: 3s\n",
        a.url("/"),
        b.url("/")
    )
    .unwrap();
    let path = file.path().to_str().unwrap();

    let run = probe_cli(&["--file", path, "--name", "b"], &[]).await;

    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let r = run.result();
    assert_eq!((r.target.as_str(), r.url.as_str()), ("b", b.url("/").as_str()));
    assert_eq!((r.regex_matched, r.timeout_seconds), (Some(true), 3.0));
    assert_eq!((a.connections(), b.connections()), (0, 1));
}

#[tokio::test]
async fn target_takes_one_entry_as_json_or_yaml() {
    let server = serve(|req: http::Request<_>| async move {
        let method = req.method().to_string();
        text(200, format!("method={method}"))
    })
    .await;
    let json = serde_json::json!({
        "name": "api", "url": server.url("/x"), "method": "POST", "regex": "method=POST",
        "valid_status_codes": [200], "fail_if_header_not_matches": [{"header": "content-type", "regex": "text/plain"}],
        "quorum": 2,
    })
    .to_string();
    let yaml = format!(
        "name: api\nurl: {}\nmethod: post\nregex: method=POST\nfail_if_header_matches:\n  - {{header: content-type, regex: json}}\n",
        server.url("/x")
    );

    for spec in [json, yaml] {
        let run = probe_cli(&["--target", &spec], &[]).await;

        assert_eq!(run.code, Some(0), "{spec}: stderr: {}", run.stderr);
        let r = run.result();
        assert_eq!((r.target.as_str(), r.regex_matched), ("api", Some(true)), "{spec}");
    }
}

#[tokio::test]
async fn tls_details_are_in_the_json() {
    let pki = Pki::new();
    let server = serve_on(
        "127.0.0.1:0",
        Some(pki.server_config(&[b"h2", b"http/1.1"])),
        |_| async { text(200, "secure ok") },
    )
    .await;
    let url = server.https_url("localhost", "/");

    let trusted = probe_cli(&[&url, "--ca-file", &pki.ca_file, "--ip-family", "ipv4"], &[]).await;
    let untrusted = probe_cli(&[&url, "--ip-family", "ipv4"], &[]).await;
    let insecure = probe_cli(&[&url, "--insecure", "--ip-family", "ipv4"], &[]).await;

    assert_eq!(trusted.code, Some(0), "stderr: {}", trusted.stderr);
    let r = trusted.result();
    assert_eq!(r.http_version.as_deref(), Some("HTTP/2"), "ALPN h2");
    assert!(r.phases.tls.is_some_and(|s| s > 0.0), "{:?}", r.phases);
    let tls = r.tls.expect("TLS details");
    assert_eq!(tls.version.as_deref(), Some("TLSv1_3"));
    assert!(
        tls.cipher.as_deref().is_some_and(|c| c.starts_with("TLS13_")),
        "{tls:?}"
    );
    assert_eq!(tls.leaf_subject.as_deref(), Some("CN=checker-test-leaf"));
    assert_eq!(tls.leaf_not_after, Some(pki.leaf_not_after));
    assert_eq!(tls.earliest_not_after, Some(pki.ca_not_after));

    assert_eq!(untrusted.code, Some(1), "stderr: {}", untrusted.stderr);
    assert_eq!(untrusted.result().error_kind.as_deref(), Some("tls"));
    let shown = format!("tls: {}", untrusted.result().error.unwrap_or_default());
    assert!(untrusted.stderr.contains(&shown), "{}", untrusted.stderr);

    assert_eq!(insecure.code, Some(0), "stderr: {}", insecure.stderr);
    let r = insecure.result();
    assert_eq!(
        r.tls.and_then(|t| t.leaf_not_after),
        Some(pki.leaf_not_after),
        "recorded without verification"
    );
}

#[tokio::test]
async fn a_redirect_is_followed_to_the_final_url() {
    let server = serve(|req: http::Request<_>| async move {
        match req.uri().path() {
            "/old" => redirect(301, "/new?from=old"),
            _ => text(200, "new home"),
        }
    })
    .await;

    let followed = probe_cli(&[&server.url("/old"), "--regex", "new home"], &[]).await;
    let not_followed = probe_cli(&[&server.url("/old"), "--no-follow-redirects"], &[]).await;

    assert_eq!(followed.code, Some(0), "stderr: {}", followed.stderr);
    let r = followed.result();
    assert_eq!(
        (r.first_status_code, r.status_code, r.redirects),
        (Some(301), Some(200), 1)
    );
    assert_eq!(r.final_url.as_deref(), Some(server.url("/new?from=old").as_str()));
    assert_eq!(r.url, server.url("/old"));
    assert_eq!(not_followed.code, Some(1));
    let r = not_followed.result();
    assert_eq!(
        (r.error_kind.as_deref(), r.status_code, r.redirects),
        (Some("status"), Some(301), 0)
    );
}

/// `HTTP_PROXY` and `NO_PROXY` apply as in the service: the request goes to the proxy in
/// absolute form, unless `NO_PROXY` exempts the host.
#[tokio::test]
async fn the_proxy_environment_applies() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let proxy = raw(move |mut s| {
        let tx = tx.clone();
        async move {
            tx.send(read_head(&mut s).await).unwrap();
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nvia proxy ok")
                .await;
        }
    })
    .await;
    let proxy_url = format!("http://127.0.0.1:{}", proxy.addr.port());
    let url = "http://example.invalid/status";

    let proxied = probe_cli(&[url, "--regex", "via proxy ok"], &[("HTTP_PROXY", &proxy_url)]).await;
    let exempt = probe_cli(
        &[url, "--timeout", "2s"],
        &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "example.invalid")],
    )
    .await;

    assert_eq!(proxied.code, Some(0), "stderr: {}", proxied.stderr);
    let r = proxied.result();
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"), "the proxy's address");
    let head = rx.recv().await.unwrap();
    assert!(
        head.starts_with("GET http://example.invalid/status HTTP/1.1\r\n"),
        "{head}"
    );
    assert_eq!(exempt.code, Some(1));
    assert_eq!(exempt.result().error_kind.as_deref(), Some("dns"), "resolved directly");
    assert_eq!(proxy.connections(), 1);
}

/// Odd hosts a user may type: an IPv6 literal, and a Unicode name (IDNA: probed and recorded
/// as its punycode form).
#[tokio::test]
async fn ipv6_literals_and_unicode_hosts() {
    let server = serve_on("[::1]:0", None, |_| async { text(200, "six") }).await;
    let v6 = format!("http://[::1]:{}/", server.addr.port());

    let run = probe_cli(&[&v6, "--regex", "six"], &[]).await;
    let unicode = probe_cli(&["http://bücher.invalid/", "--timeout", "2s"], &[]).await;

    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let r = run.result();
    assert_eq!(
        (r.url.as_str(), r.ip_address.as_deref(), r.ip_family.as_deref()),
        (v6.as_str(), Some("::1"), Some("ipv6"))
    );
    assert_eq!(unicode.code, Some(1), "stderr: {}", unicode.stderr);
    let r = unicode.result();
    assert_eq!(r.url, "http://xn--bcher-kva.invalid/");
    assert_eq!(r.error_kind.as_deref(), Some("dns"));
}

/// In fleet mode the checkers read their targets from the targets topic: the spec `checker
/// targets list --json` prints for a name is one `--target`, probed as the fleet probes it.
#[tokio::test]
async fn a_spec_of_the_targets_topic_is_one_target() {
    let server = serve(|_| async { text(200, "from the topic") }).await;
    let (bootstrap, topic) = (testkit::broker::bootstrap(), testkit::unique("targets"));
    let kafka = [
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("KAFKA_TARGETS_TOPIC", topic.as_str()),
    ];
    let targets = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_checker"))
            .arg("targets")
            .args(args)
            .env_clear()
            .envs(kafka)
            .output()
            .expect("checker binary");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "- {{name: api, url: '{}', regex: 'from the topic', timeout: 4s}}\n- {{name: other, url: 'http://127.0.0.1:1/'}}\n",
        server.url("/health")
    )
    .unwrap();
    targets(&["apply", file.path().to_str().unwrap()]);
    let listed: serde_json::Value = serde_json::from_str(&targets(&["list", "--json"])).unwrap();
    let spec = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "api")
        .map(|t| t["spec"].to_string())
        .expect("api in the topic");

    let run = probe_cli(&["--target", &spec], &[]).await;

    assert_eq!(run.code, Some(0), "{spec}: stderr: {}", run.stderr);
    let r = run.result();
    assert_eq!(
        (r.target.as_str(), r.regex_matched, r.timeout_seconds),
        ("api", Some(true), 4.0)
    );
}

/// Credentials given in the URL are sent as basic auth and never printed: not in the JSON
/// (url, target, final_url), not in the summary, not in an error about the URL.
#[tokio::test]
async fn credentials_never_reach_the_output() {
    let server = serve(|req: http::Request<_>| async move {
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        text(200, format!("auth={}", auth.unwrap_or_default()))
    })
    .await;
    let url = format!("http://probe:s3cret-pw@127.0.0.1:{}/", server.addr.port());

    // base64("probe:s3cret-pw")
    let run = probe_cli(&[&url, "--regex", "auth=Basic cHJvYmU6czNjcmV0LXB3"], &[]).await;
    let bad = probe_cli(&[&url.replace("127.0.0.1", "[::1"), "--timeout", "1s"], &[]).await;

    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let r = run.result();
    assert_eq!(r.url, server.url("/"));
    assert_eq!(
        r.target,
        server.url("/"),
        "the default name is the URL without credentials"
    );
    assert_eq!(bad.code, Some(2));
    for out in [&run.stdout, &run.stderr, &bad.stderr] {
        assert!(!out.contains("s3cret-pw"), "{out}");
    }
}
