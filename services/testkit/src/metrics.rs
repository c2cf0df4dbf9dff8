//! A Prometheus text exposition, parsed by `prometheus-parse` (text format 0.0.4, as the
//! `prometheus` crate's `TextEncoder` writes it), and looked up by name and labels. Never
//! matches lines of text: a value is found by its metric name and label pairs.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use prometheus_parse::Value;

/// One parsed scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    /// Parses an exposition.
    ///
    /// # Panics
    /// Never for text (reading a `&str` cannot fail); lines that are not samples are skipped.
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Self(prometheus_parse::Scrape::parse(lines).expect("reading a string cannot fail"))
    }

    /// GETs and parses `/metrics` on `addr`.
    ///
    /// # Errors
    /// The GET fails or does not answer 200.
    pub async fn fetch(addr: SocketAddr) -> anyhow::Result<Self> {
        let (status, body) = crate::http::try_http_get(addr, "/metrics")
            .await
            .context("scrape /metrics")?;
        if status != 200 {
            bail!("GET http://{addr}/metrics answered {status}");
        }
        Ok(Self::parse(&body))
    }

    /// [`Scrape::fetch`] for tests.
    ///
    /// # Panics
    /// When [`Scrape::fetch`] fails.
    pub async fn get(addr: SocketAddr) -> Self {
        Self::fetch(addr).await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The value of counter, gauge or untyped `name` (a histogram's `<name>_sum` and
    /// `<name>_count` too), summed over every series whose labels include all of `labels`;
    /// `None` when no series matches (so a missing metric and a zero one differ).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name, labels)
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                Value::Histogram(_) | Value::Summary(_) => None,
            })
            .reduce(|a, b| a + b)
    }

    /// [`Scrape::metric`] of a series selector as PromQL writes one with equality matchers:
    /// `name` or `name{key="value",…}` (values without `"` or `,`); `None` when no series
    /// matches.
    ///
    /// # Panics
    /// On a selector that is not of that form.
    pub fn select(&self, selector: &str) -> Option<f64> {
        let Some((name, matchers)) = selector.split_once('{') else {
            return self.metric(selector, &[]);
        };
        let matchers = matchers
            .strip_suffix('}')
            .unwrap_or_else(|| panic!("selector {selector}: no closing brace"));
        let labels: Vec<(&str, &str)> = matchers
            .split(',')
            .filter(|m| !m.trim().is_empty())
            .map(|m| {
                let (k, v) = m
                    .split_once('=')
                    .unwrap_or_else(|| panic!("selector {selector}: {m} is not key=\"value\""));
                (k.trim(), v.trim().trim_matches('"'))
            })
            .collect();
        self.metric(name, &labels)
    }

    /// [`Scrape::metric`] over all label sets, 0 when absent.
    pub fn sum(&self, name: &str) -> f64 {
        self.metric(name, &[]).unwrap_or(0.0)
    }

    /// Every series of counter, gauge or untyped `name` written out as
    /// `name{key="value",…} value` (labels sorted), for failure messages.
    pub fn describe(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .series(name, &[])
            .filter_map(|s| {
                let (Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) = s.value else {
                    return None;
                };
                let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                labels.sort();
                Some(format!("{name}{{{}}} {v}", labels.join(",")))
            })
            .collect();
        out.sort();
        out
    }

    /// Cumulative buckets `(le, count)` of histogram `name`, sorted by `le` (`+Inf` last),
    /// summed over every series whose labels include all of `labels`; empty when absent.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = Vec::new();
        for s in self.series(name, labels) {
            let Value::Histogram(counts) = &s.value else { continue };
            for c in counts {
                match out.iter_mut().find(|(le, _)| *le == c.less_than) {
                    Some((_, n)) => *n += c.count,
                    None => out.push((c.less_than, c.count)),
                }
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    fn series<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.0
            .samples
            .iter()
            .filter(move |s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP foo_total Foos.\n# TYPE foo_total counter\n\
        foo_total{outcome=\"success\",target=\"a\"} 10\nfoo_total{outcome=\"dns\",target=\"a\"} 2\n\
        # TYPE h histogram\nh_bucket{le=\"0.01\"} 90\nh_bucket{le=\"0.1\"} 99\nh_bucket{le=\"+Inf\"} 100\n\
        h_sum 1.5\nh_count 100\nplain 3.5\n";

    #[test]
    fn finds_series_by_name_and_labels() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.metric("foo_total", &[("outcome", "success")]), Some(10.0));
        assert_eq!(s.metric("foo_total", &[("target", "a")]), Some(12.0));
        assert_eq!(s.metric("foo_total", &[("outcome", "connect")]), None);
        assert_eq!(s.metric("absent", &[]), None);
        assert_eq!(s.sum("foo_total"), 12.0);
        assert_eq!(s.sum("plain"), 3.5);
        assert_eq!(s.metric("h_count", &[]), Some(100.0));
        assert_eq!(s.select("foo_total{outcome=\"dns\"}"), Some(2.0));
        assert_eq!(s.select("foo_total{target=\"a\", outcome=\"dns\"}"), Some(2.0));
        assert_eq!(s.select("foo_total"), Some(12.0));
        assert_eq!(s.select("foo_total{outcome=\"connect\"}"), None);
        assert_eq!(
            s.describe("foo_total"),
            [
                "foo_total{outcome=\"dns\",target=\"a\"} 2",
                "foo_total{outcome=\"success\",target=\"a\"} 10"
            ]
        );
    }

    #[test]
    fn reads_histogram_buckets_in_order() {
        let s = Scrape::parse(TEXT);
        assert_eq!(
            s.buckets("h", &[]),
            vec![(0.01, 90.0), (0.1, 99.0), (f64::INFINITY, 100.0)]
        );
        assert!(s.buckets("foo_total", &[]).is_empty());
    }
}
