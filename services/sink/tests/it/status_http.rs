//! The status page and JSON API (`sink::status`) of a real sink (`App` on port 0) over real
//! rows in PostgreSQL: the JSON's numbers equal what SQL on the same rows says, the HTML shows
//! the JSON's numbers, names with spaces, slashes, Unicode and HTML characters round-trip
//! through percent-encoded paths, and bad input, unknown targets and an unreachable or locked
//! database answer 400, 404 and 503 (never a hang).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, DurationRound, Utc};
use common::result::{check_id, ProbeResult};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sink::status::html::{millis, ratio, target_path};
use sink::store::status::NewMaintenance;
use sink::store::Store;
use testkit::broker::{bootstrap, create_topic};
use testkit::pg::{connect, fresh_database};
use testkit::unique;

use crate::app::start_consuming;
use crate::store::{rows, sample};

/// One answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
    headers: http::HeaderMap,
}

impl Answer {
    fn json(&self) -> Value {
        assert!(
            self.content_type.starts_with("application/json"),
            "{}",
            self.content_type
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            content_type,
            body: String::from_utf8(body.to_vec()).unwrap(),
            headers,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} did not answer within 30 s"))
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path).await
}

/// `t` as PostgreSQL stores it (microseconds).
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(chrono::TimeDelta::microseconds(1)).unwrap()
}

/// The names: plain, with a space, a slash and Unicode, and with HTML's special characters.
const PLAIN: &str = "alpha";
const ODD: &str = "web edge/α β";
const HTML: &str = "R&D <lab> \"x\"";

/// 120 one-minute slots ending at the last whole minute: `PLAIN` always up; `ODD` down for 3
/// slots in the middle (a closed incident) and for its last 2 (an open one); `HTML` down
/// every 10th slot (never 2 in a row: no incident).
fn history(now: DateTime<Utc>) -> Vec<ProbeResult> {
    let last = now.duration_trunc(chrono::TimeDelta::minutes(1)).unwrap() - chrono::Duration::minutes(1);
    let mut out = Vec::new();
    for k in 0..120i64 {
        let at = last - chrono::Duration::minutes(119 - k);
        for (name, success) in [
            (PLAIN, true),
            (ODD, !((50..53).contains(&k) || k >= 118)),
            (HTML, k % 10 != 3),
        ] {
            // Durations spread over two orders of magnitude so that percentiles differ.
            let duration = 0.002 + 0.0005 * ((k * 7 + name.len() as i64) % 60) as f64;
            let mut r = sample(name, at, success, duration);
            r.check_id = check_id(name, &r.location, at);
            if !success {
                r.error_kind = Some("connect".into());
                r.error = Some(format!("connect to <{name}> refused & reset"));
                r.status_code = None;
            }
            out.push(r);
        }
    }
    out
}

/// Runs the rollup job until it has nothing left to do.
async fn roll_up(store: &Store) {
    for _ in 0..50 {
        let report = store.rollup_once().await.unwrap();
        if report.hours == 0 && report.targets == 0 {
            return;
        }
    }
    panic!("the rollup job still had work after 50 passes");
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_api_show_what_the_rows_say() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let store = Store::new(&url, 2, "topic").unwrap();
    store.migrate().await.unwrap();
    store.maintain_partitions(Utc::now(), 2, None).await.unwrap();
    let results = history(Utc::now());
    store.write(&rows(results.clone()), &[]).await.unwrap();
    let window = store
        .add_maintenance(&NewMaintenance {
            target_name: Some(PLAIN.to_string()),
            starts_at: Utc::now() + chrono::Duration::hours(1),
            ends_at: Utc::now() + chrono::Duration::hours(2),
            reason: "upgrade <db> & restart".to_string(),
        })
        .await
        .unwrap();
    roll_up(&store).await;
    let db = connect(&url).await;

    let topic = unique("results");
    create_topic(&bootstrap, &topic, 1).await;
    let sink = start_consuming(&url, &bootstrap, &topic, &[]).await;
    let addr = sink.status.expect("STATUS_ADDR is on");

    // ---- /api/v1/targets: every target, its numbers equal to SQL's on the same rows.
    let overview = get(addr, "/api/v1/targets").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert_eq!(overview.headers["cache-control"], "no-store");
    let overview = overview.json();
    assert_eq!(overview["bucket_seconds"], 3600);
    let targets = overview["targets"].as_array().unwrap();
    let names: Vec<&str> = targets.iter().map(|t| t["name"].as_str().unwrap()).collect();
    let mut expected_names = vec![PLAIN, ODD, HTML];
    expected_names.sort_unstable();
    assert_eq!(names, expected_names, "sorted by name");
    for t in targets {
        let name = t["name"].as_str().unwrap();
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE success), count(*) FILTER (WHERE NOT success),
                        percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds),
                        percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_seconds),
                        (SELECT success FROM probe_results p WHERE p.target_name = $1 ORDER BY scheduled_at DESC LIMIT 1),
                        (SELECT error_kind FROM probe_results p WHERE p.target_name = $1 AND NOT success ORDER BY scheduled_at DESC LIMIT 1),
                        (SELECT scheduled_at FROM probe_results p WHERE p.target_name = $1 AND NOT success ORDER BY scheduled_at DESC LIMIT 1)
                 FROM probe_results WHERE target_name = $1 AND scheduled_at > now() - interval '24 hours'",
                &[&name],
            )
            .await
            .unwrap();
        let (up, down): (i64, i64) = (row.get(0), row.get(1));
        let (p50, p95): (f64, f64) = (row.get(2), row.get(3));
        let (latest_ok, last_kind, last_at): (bool, Option<String>, Option<DateTime<Utc>>) =
            (row.get(4), row.get(5), row.get(6));
        let u = &t["uptime_24h"];
        assert_eq!(
            (u["up_slots"].as_i64(), u["down_slots"].as_i64()),
            (Some(up), Some(down)),
            "{name}"
        );
        assert!(
            (f(&u["ratio"]) - up as f64 / (up + down) as f64).abs() < 1e-12,
            "{name}: {u}"
        );
        assert_eq!(u["unknown_slots"], 0, "{name}: every slot has a row");
        for (w, sql) in [("latency_p50_seconds", p50), ("latency_p95_seconds", p95)] {
            // The rollups' histogram bins are 2^(1/4) wide: the percentile is in SQL's bin or
            // the next.
            let api = f(&t[w]);
            assert!(
                api / sql < 2f64.sqrt() && sql / api < 2f64.sqrt(),
                "{name} {w}: API {api}, SQL {sql}"
            );
        }
        assert_eq!(t["state"], if latest_ok { "up" } else { "down" }, "{name}");
        assert_eq!(t["last_error_kind"].as_str(), last_kind.as_deref(), "{name}");
        let api_at = t["last_error_at"].as_str().map(|s| s.parse::<DateTime<Utc>>().unwrap());
        assert_eq!(api_at, last_at, "{name}");
        assert_eq!(t["buckets"].as_array().unwrap().len(), 90, "{name}");
        let in_bars: i64 = t["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["up_slots"].as_i64().unwrap())
            .sum();
        assert_eq!(in_bars, up, "{name}: the bars hold every up slot");
        assert_eq!(t["locations"].as_array().unwrap().len(), 1, "{name}");
    }
    let odd = targets.iter().find(|t| t["name"] == ODD).unwrap();
    assert_eq!(odd["state"], "down");
    assert_eq!(odd["open_incident"]["down_slots"], 2);
    // The counts and the down list cover every target, whatever the page.
    let states: Vec<&str> = targets.iter().map(|t| t["state"].as_str().unwrap()).collect();
    for state in ["up", "down", "unknown", "maintenance"] {
        let n = states.iter().filter(|s| **s == state).count();
        assert_eq!(overview["counts"][state], n, "{state}: {}", overview["counts"]);
    }
    assert_eq!(overview["down_targets"], serde_json::json!([ODD]));
    assert_eq!(
        (
            overview["total_targets"].as_u64(),
            overview["page"].as_u64(),
            overview["per_page"].as_u64()
        ),
        (Some(3), Some(1), Some(100))
    );

    // ---- pages: per_page=1 walks the sorted names one by one; past the last is empty.
    for (i, name) in expected_names.iter().enumerate() {
        let page = get(addr, &format!("/api/v1/targets?per_page=1&page={}", i + 1))
            .await
            .json();
        let listed: Vec<&str> = page["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [*name], "page {}", i + 1);
        assert_eq!(page["counts"], overview["counts"], "page {}", i + 1);
        assert_eq!(page["down_targets"], overview["down_targets"]);
        assert_eq!(page["total_targets"], 3);
    }
    let past = get(addr, "/api/v1/targets?per_page=2&page=3").await.json();
    assert_eq!(past["targets"], serde_json::json!([]));
    assert_eq!(past["total_targets"], 3);
    let html = get(addr, "/?per_page=2&page=2&refresh=0").await;
    assert_eq!(html.status, 200);
    assert_eq!(html.body.matches(r#"<tr class="target""#).count(), 1, "{}", html.body);
    assert!(
        html.body.contains(&format!(r#"data-target="{}""#, expected_names[2])),
        "page 2 holds the third name"
    );
    assert!(
        html.body
            .contains(r#"id="pager" data-page="2" data-pages="2" data-total="3""#),
        "{}",
        html.body
    );

    // ---- /api/v1/targets/{name}: a percent-encoded name with a slash, a space and Unicode.
    let path = target_path(ODD);
    assert_eq!(path, "/targets/web%20edge%2F%CE%B1%20%CE%B2");
    let detail = get(addr, &format!("/api/v1{path}")).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let detail = detail.json();
    assert_eq!(detail["summary"]["name"], ODD);
    for field in [
        "state",
        "uptime_24h",
        "uptime_7d",
        "latency_p50_seconds",
        "last_error_kind",
        "buckets",
    ] {
        assert_eq!(
            detail["summary"][field], odd[field],
            "the detail's summary is the overview's row: {field}"
        );
    }
    let failures: Vec<(DateTime<Utc>, String)> = db
        .query(
            "SELECT scheduled_at, error FROM probe_results WHERE target_name = $1 AND NOT success ORDER BY scheduled_at DESC",
            &[&ODD],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let api_failures: Vec<(DateTime<Utc>, String)> = detail["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["scheduled_at"].as_str().unwrap().parse().unwrap(),
                x["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        api_failures, failures,
        "every failure, newest first, with its error text"
    );
    let slots = detail["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 90);
    assert_eq!(slots.last().unwrap()["state"], "down");

    // ---- /api/v1/incidents: the runs of >= 2 down slots SQL finds.
    let incidents = get(
        addr,
        &format!("/api/v1/incidents?target={}", "web%20edge%2F%CE%B1%20%CE%B2"),
    )
    .await;
    assert_eq!(incidents.status, 200, "{}", incidents.body);
    let incidents = incidents.json()["incidents"].as_array().unwrap().clone();
    let down_at: Vec<DateTime<Utc>> = failures.iter().map(|(t, _)| micros(*t)).collect();
    assert_eq!(incidents.len(), 2, "{incidents:?}");
    assert!(incidents[0]["ended_at"].is_null(), "newest (open) first");
    assert_eq!(incidents[0]["down_slots"], 2);
    assert_eq!(incidents[1]["down_slots"], 3);
    assert_eq!(
        incidents[1]["started_at"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        *down_at.last().unwrap(),
        "the closed incident starts at the first failure"
    );
    let open = get(addr, "/api/v1/incidents?open=true&limit=10").await.json();
    assert_eq!(open["incidents"].as_array().unwrap().len(), 1);
    let none = get(addr, &format!("/api/v1/incidents?target={}", "alpha")).await.json();
    assert_eq!(none["incidents"].as_array().unwrap().len(), 0);
    // A name no target can have (PostgreSQL text holds no NUL): valid, and selects nothing.
    // Found by schemathesis as a schema-valid request answered 400.
    let nul = get(addr, "/api/v1/incidents?target=web%00edge").await;
    assert_eq!(nul.status, 200, "{:?}", nul.body);
    assert_eq!(nul.json()["incidents"], serde_json::json!([]));

    // ---- The overview page shows the JSON's numbers, escaped.
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{}", page.content_type);
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert!(!page.body.contains("<lab>"), "names are escaped");
    for t in targets {
        let name = t["name"].as_str().unwrap();
        let escaped = name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;");
        let start = page
            .body
            .find(&format!(r#"<tr class="target" data-target="{escaped}""#))
            .unwrap_or_else(|| panic!("no row for {name}"));
        let row = &page.body[start..start + page.body[start..].find("</tr>").unwrap()];
        assert!(
            row.contains(&format!(r#"data-state="{}""#, t["state"].as_str().unwrap())),
            "{row}"
        );
        for w in ["24h", "7d", "30d"] {
            let text = ratio(t[format!("uptime_{w}")]["ratio"].as_f64());
            assert!(
                row.contains(&format!(r#"data-window="{w}""#)) && row.contains(&text),
                "{name} {w} {text}: {row}"
            );
        }
        assert!(row.contains(&millis(t["latency_p50_seconds"].as_f64())), "{row}");
        assert!(row.contains(&millis(t["latency_p95_seconds"].as_f64())), "{row}");
        // One rect per run of buckets of one state, 90 buckets in all, in the API's states.
        let shown: Vec<String> = row
            .split("<rect ")
            .skip(1)
            .flat_map(|r| {
                let attr = |a: &str| {
                    let from = r.find(&format!(r#"{a}=""#)).unwrap() + a.len() + 2;
                    r[from..from + r[from..].find('"').unwrap()].to_string()
                };
                std::iter::repeat_n(attr("data-state"), attr("data-buckets").parse().unwrap())
            })
            .collect();
        let api: Vec<String> = t["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["state"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(shown, api, "{name}: the bar's 90 buckets");
        assert!(row.contains(&format!(r#"href="{}""#, target_path(name))), "{row}");
    }

    // ---- Every target's page answers, with its failures' text escaped.
    for name in [PLAIN, ODD, HTML] {
        let page = get(addr, &target_path(name)).await;
        assert_eq!(page.status, 200, "{name}: {}", page.body);
        assert!(page.body.contains(r#"id="latency-chart""#), "{name}");
    }
    let page = get(addr, &target_path(HTML)).await;
    assert!(page
        .body
        .contains("connect to &lt;R&amp;D &lt;lab&gt; &quot;x&quot;&gt; refused &amp; reset"));
    // TLS (the rows' certificate; the chain's earliest expiry has passed: flagged) and the
    // planned maintenance window, escaped.
    let plain = get(addr, &format!("/api/v1{}", target_path(PLAIN))).await.json();
    assert_eq!(plain["tls"]["leaf_not_after"], "2027-01-01T00:00:00Z");
    assert_eq!(plain["maintenance"].as_array().unwrap().len(), 1);
    assert_eq!(plain["maintenance"][0]["id"], window.id);
    let page = get(addr, &target_path(PLAIN)).await;
    assert!(page.body.contains("2027-01-01 00:00:00 UTC"), "leaf expiry shown");
    assert!(
        page.body.contains(r#"<td class="earliest-expiry"><span class="crit""#),
        "expired chain flagged"
    );
    assert!(page.body.contains("upgrade &lt;db&gt; &amp; restart"));
    let day = get(addr, &format!("{}?bucket=day", target_path(ODD))).await;
    assert_eq!(day.status, 200);
    assert_eq!(
        get(addr, "/api/v1/targets?bucket=day").await.json()["bucket_seconds"],
        86_400
    );

    // ---- Unknown targets and routes: 404, JSON or HTML.
    let missing = get(addr, "/api/v1/targets/nobody%20here").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("nobody here"));
    let missing = get(addr, "/targets/nobody").await;
    assert_eq!(missing.status, 404);
    assert!(missing.content_type.starts_with("text/html"));
    assert_eq!(get(addr, "/api/v1/nothing").await.status, 404);
    assert_eq!(get(addr, "/favicon.ico").await.status, 404);

    // ---- Bad parameters: 400 naming them; other methods: 405.
    for (path, word) in [
        ("/api/v1/targets?bucket=week", "bucket"),
        ("/api/v1/targets?per_page=0", "per_page"),
        ("/api/v1/targets?per_page=1001", "per_page"),
        ("/api/v1/targets?page=0", "page"),
        ("/api/v1/targets?page=x", "page"),
        ("/api/v1/incidents?limit=0", "limit"),
        ("/api/v1/incidents?limit=5000", "limit"),
        ("/api/v1/incidents?since=yesterday", "since"),
        ("/api/v1/incidents?open=maybe", "open"),
        ("/api/v1/incidents?colour=red", "colour"),
        ("/api/v1/targets/%FF", "UTF-8"),
    ] {
        let a = get(addr, path).await;
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(a.json()["error"].as_str().unwrap().contains(word), "{path}: {}", a.body);
    }
    let bad = get(addr, "/?refresh=1").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("refresh"));
    let post = request(addr, "POST", "/api/v1/targets").await;
    assert_eq!(
        (post.status, post.headers["allow"].to_str().unwrap()),
        (405, "GET, HEAD")
    );
    let head = request(addr, "HEAD", "/api/v1/targets").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    // ---- The OpenAPI file.
    let spec = get(addr, "/api/v1/openapi.yaml").await;
    assert_eq!(spec.status, 200);
    assert!(spec.body.starts_with("openapi: 3."), "{}", &spec.body[..40]);

    // ---- A database that holds a lock the pages wait for: 503 after the statement timeout,
    // not a hang; the sink's writers are not involved (their own pool).
    let mut locker = connect(&url).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE probe_results, rollup_hourly, rollup_daily, incidents IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let t0 = Instant::now();
    let locked = get(addr, "/api/v1/targets").await;
    assert_eq!(locked.status, 503, "{}", locked.body);
    assert!(locked.json()["error"].as_str().unwrap().contains("unavailable"));
    assert!(
        t0.elapsed() < sink::status::REQUEST_TIMEOUT,
        "the statement timeout answered, in {:?}",
        t0.elapsed()
    );
    let locked = get(addr, "/").await;
    assert_eq!(locked.status, 503);
    assert!(locked.content_type.starts_with("text/html"));
    tx.rollback().await.unwrap();
    assert_eq!(
        get(addr, "/api/v1/targets").await.status,
        200,
        "answers again once the lock is gone"
    );
    // Every request is counted by route and code on the admin server's /metrics.
    let scrape = testkit::metrics::Scrape::get(sink.admin).await;
    let count = |route: &str, code: &str| {
        scrape
            .metric(
                "healthcheck_sink_status_requests_total",
                &[("route", route), ("code", code)],
            )
            .unwrap_or(0.0)
    };
    assert!(count("api_targets", "503") >= 1.0, "the 503 is counted");
    assert!(count("api_target", "404") >= 1.0);
    assert!(count("api_incidents", "400") >= 5.0);
    assert!(count("overview", "200") >= 1.0);
    assert!(count("unknown", "404") >= 2.0);
    sink.stop().await;
}

/// A status server whose database is unreachable answers 503 (JSON and HTML) within
/// seconds.
#[tokio::test]
async fn an_unreachable_database_is_a_503() {
    let port = testkit::net::free_port();
    let store = Store::read_only(
        &format!("postgres://nobody@127.0.0.1:{port}/nothing"),
        1,
        "topic",
        sink::status::STATEMENT_TIMEOUT,
    )
    .unwrap();
    let (addr, stop) = sink::status::start("127.0.0.1:0".parse().unwrap(), store, None)
        .await
        .unwrap();
    let t0 = Instant::now();
    let a = get(addr, "/api/v1/targets").await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.json()["error"].as_str().unwrap().contains("unavailable"));
    assert_eq!(a.headers["retry-after"], "5");
    assert!(!a.body.contains("nobody"), "no connection details leak: {}", a.body);
    let page = get(addr, "/targets/x").await;
    assert_eq!(page.status, 503);
    assert!(page.content_type.starts_with("text/html"));
    assert!(
        page.body.contains(r#"<meta http-equiv="refresh" content="10">"#),
        "a 503 page comes back by itself"
    );
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
    // What needs no database still answers.
    assert_eq!(get(addr, "/api/v1/openapi.yaml").await.status, 200);
    assert_eq!(get(addr, "/api/v1/incidents?limit=0").await.status, 400);
    stop.cancel();
}

/// The status pool's sessions cannot write, whatever a statement tries.
#[tokio::test]
async fn the_status_pool_is_read_only() {
    let url = fresh_database().await;
    let writer = Store::new(&url, 1, "topic").unwrap();
    writer.migrate().await.unwrap();
    writer.maintain_partitions(Utc::now(), 1, None).await.unwrap();
    let reader = Store::read_only(&url, 1, "topic", sink::status::STATEMENT_TIMEOUT).unwrap();
    let e = reader
        .write(&rows(vec![sample("x", Utc::now(), true, 0.01)]), &[])
        .await
        .expect_err("a read-only session cannot insert");
    assert!(
        e.is(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{e} ({})",
        e.code
    );
    assert_eq!(testkit::pg::count(&connect(&url).await, "probe_results").await, 0);
    writer
        .write(&rows(vec![sample("x", Utc::now(), true, 0.01)]), &[])
        .await
        .unwrap();
}
