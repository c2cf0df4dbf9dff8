//! A minimal HTTP/1.1 GET (one request per connection) and a Prometheus text-format reader:
//! enough to poll `/readyz` and read `/metrics` without adding an HTTP client dependency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// GETs `path` from `addr`; returns the status and the (de-chunked) body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `GET path` until it answers 200; returns the time that took.
pub async fn wait_for_200(addr: SocketAddr, path: &str, every: Duration, limit: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        if let Ok((200, _)) = get(addr, path).await {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!("http://{addr}{path} did not answer 200 within {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// One sample of a scrape.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` suffixes for histograms).
    pub name: String,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// A parsed Prometheus text exposition.
#[derive(Debug, Clone, Default)]
pub struct Scrape(pub Vec<Sample>);

impl Scrape {
    /// GETs and parses `/metrics`.
    pub async fn fetch(addr: SocketAddr) -> anyhow::Result<Self> {
        let (status, body) = get(addr, "/metrics").await?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        Ok(Self::parse(&body))
    }

    /// Parses the text format (comments skipped, timestamps ignored).
    pub fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, labels, rest) = match line.find('{') {
                Some(i) => {
                    let Some(j) = line.rfind('}') else { continue };
                    (&line[..i], parse_labels(&line[i + 1..j]), &line[j + 1..])
                }
                None => match line.split_once(char::is_whitespace) {
                    Some((n, r)) => (n, Vec::new(), r),
                    None => continue,
                },
            };
            let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            out.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Self(out)
    }

    /// Sum of every sample named `name` (all label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.0.iter().filter(|s| s.name == name).map(|s| s.value).sum()
    }

    /// The sample named `name` with label `key="value"`.
    pub fn with_label(&self, name: &str, key: &str, value: &str) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name && s.labels.iter().any(|(k, v)| k == key && v == value))
            .map(|s| s.value)
            .sum()
    }

    /// Cumulative buckets `(le, count)` of histogram `name`, sorted by `le`.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut v: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|s| s.name == bucket)
            .filter_map(|s| {
                let le = s.labels.iter().find(|(k, _)| k == "le")?.1.as_str();
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, s.value))
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim().trim_start_matches(',').trim().to_string();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
    }
    out
}

/// Difference of two cumulative bucket lists of the same histogram (`later - earlier`).
pub fn bucket_delta(earlier: &[(f64, f64)], later: &[(f64, f64)]) -> Vec<(f64, f64)> {
    later
        .iter()
        .map(|(le, c)| {
            let before = earlier.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
            (*le, c - before)
        })
        .collect()
}

/// The `q` quantile of a cumulative histogram, interpolated linearly within the bucket that
/// holds it (as PromQL's `histogram_quantile`). `None` when empty.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = count - prev.1;
            let frac = if span > 0.0 { (rank - prev.1) / span } else { 1.0 };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

/// Fraction of a cumulative histogram's observations at or below `le` (which must be a bucket
/// bound).
pub fn fraction_at_most(le: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    let at = buckets.iter().find(|(l, _)| (*l - le).abs() < 1e-12)?.1;
    (total > 0.0).then(|| at / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_histograms() {
        let s = Scrape::parse(
            "# HELP x y\nfoo_total{outcome=\"success\"} 10\nfoo_total{outcome=\"dns\"} 2\n\
             h_bucket{le=\"0.01\"} 90\nh_bucket{le=\"0.1\"} 99\nh_bucket{le=\"+Inf\"} 100\nplain 3.5\n",
        );
        assert_eq!(s.sum("foo_total"), 12.0);
        assert_eq!(s.with_label("foo_total", "outcome", "success"), 10.0);
        assert_eq!(s.sum("plain"), 3.5);
        let b = s.buckets("h");
        assert_eq!(b.len(), 3);
        assert_eq!(fraction_at_most(0.01, &b), Some(0.9));
        let p50 = histogram_quantile(0.5, &b).unwrap();
        assert!((p50 - 0.01 * 50.0 / 90.0).abs() < 1e-9, "{p50}");
        assert!((histogram_quantile(0.99, &b).unwrap() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
