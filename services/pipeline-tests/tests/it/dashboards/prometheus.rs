//! A real Prometheus server (Debian's `prometheus` package, `/usr/bin/prometheus`) on a free
//! loopback port with a temporary storage directory, scraping the given admin servers every
//! second under the job names docker/prometheus/prometheus.yml uses; and its HTTP API
//! (`/api/v1/query_range`, `/api/v1/series`), decoded from JSON.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use testkit::http::{try_http_get, wait_for_200};
use testkit::process::Proc;

/// A running Prometheus; killed on drop, its storage deleted.
pub struct Prometheus {
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

/// The scrape interval, seconds (the test's `timeInterval` of the datasource).
pub const SCRAPE_S: u64 = 1;

impl Prometheus {
    /// Starts Prometheus scraping `jobs` (job name, admin address) and waits for `/-/ready`.
    ///
    /// # Panics
    /// When the binary is missing (install Debian's `prometheus`: `scripts/stack.sh install`)
    /// or it is not ready within 30 s (its log is in the panic message's directory).
    pub async fn start(jobs: &[(&str, SocketAddr)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = format!(
            "global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\nscrape_configs:\n"
        );
        for (job, addr) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n        labels: {{service: {job}}}\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = testkit::net::free_addr();
        let binary = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".to_string());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {binary}: {e} (install Debian's prometheus package: scripts/stack.sh install)")
            });
        let proc = Proc(child);
        wait_for_200(addr, "/-/ready", Duration::from_millis(200), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}; log: {}", dir.path().join("prometheus.log").display()));
        Self {
            addr,
            _proc: proc,
            _dir: dir,
        }
    }

    /// GETs `path?query` and returns `data` of a `"status": "success"` answer.
    async fn api(&self, path: &str, params: &[(&str, String)]) -> Result<serde_json::Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    utf8_percent_encode(k, NON_ALPHANUMERIC),
                    utf8_percent_encode(v, NON_ALPHANUMERIC)
                )
            })
            .collect();
        let url = format!("{path}?{}", query.join("&"));
        let (status, body) = try_http_get(self.addr, &url).await.map_err(|e| format!("{e:#}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if json["status"] != "success" {
            return Err(format!("HTTP {status}: {} {}", json["errorType"], json["error"]));
        }
        Ok(json["data"].clone())
    }

    /// `/api/v1/query_range`: the matrix's series, each with its `[time, "value"]` pairs.
    ///
    /// # Errors
    /// Prometheus refused the query (the message is its error) or the answer is not a matrix.
    pub async fn query_range(
        &self,
        expr: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        step_s: u64,
    ) -> Result<Vec<serde_json::Value>, String> {
        let data = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", expr.to_string()),
                    ("start", from.timestamp().to_string()),
                    ("end", to.timestamp().to_string()),
                    ("step", step_s.to_string()),
                ],
            )
            .await?;
        if data["resultType"] != "matrix" {
            return Err(format!("resultType {} (a matrix expected)", data["resultType"]));
        }
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values of `label` over the series matching `selector` in the range: what Grafana's
    /// `label_values(selector, label)` variable query returns.
    ///
    /// # Errors
    /// Prometheus refused the request.
    pub async fn label_values(
        &self,
        selector: &str,
        label: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<String>, String> {
        let data = self
            .api(
                "/api/v1/series",
                &[
                    ("match[]", selector.to_string()),
                    ("start", from.timestamp().to_string()),
                    ("end", to.timestamp().to_string()),
                ],
            )
            .await?;
        let mut values: Vec<String> = data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s[label].as_str().map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }
}
