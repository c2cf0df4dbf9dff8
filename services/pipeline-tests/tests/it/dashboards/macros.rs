//! Grafana's query macros and template variables, expanded as Grafana expands them before a
//! query reaches its datasource — exactly the ones the dashboards use, and an error naming any
//! other, so a dashboard can never use a macro this test does not understand.
//!
//! Sources: Grafana's PostgreSQL data source documentation ("Macros": `$__timeFilter`,
//! `$__timeFrom`, `$__timeTo`, `$__timeGroupAlias`; its SQL expansion in
//! `pkg/tsdb/grafana-postgresql-datasource/macros.go`), "Global variables" (`$__interval`,
//! `$__range`) and the Prometheus data source's `$__rate_interval` = max(`$__interval` +
//! scrape interval, 4 × scrape interval). Multi-value variables are formatted as Grafana
//! formats them: SQL `'a','b'` (quotes doubled), Prometheus `(a|b)` with regex
//! metacharacters escaped.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};

/// Which datasource a query goes to: decides the macros available and the variable format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `grafana-postgresql-datasource`.
    Sql,
    /// `prometheus`.
    PromQl,
}

/// The dashboard time range and the intervals Grafana derives from it.
#[derive(Debug, Clone)]
pub struct Range {
    /// Start of the range.
    pub from: DateTime<Utc>,
    /// End of the range.
    pub to: DateTime<Utc>,
    /// `$__interval`, whole seconds (Grafana: range / max data points, at least the
    /// datasource's `timeInterval`).
    pub interval_s: u64,
    /// The Prometheus scrape interval (the datasource's `timeInterval`), seconds.
    pub scrape_s: u64,
}

impl Range {
    /// `$__rate_interval` in seconds.
    pub fn rate_interval_s(&self) -> u64 {
        (self.interval_s + self.scrape_s).max(4 * self.scrape_s)
    }

    /// `$__range` in whole seconds (at least 1).
    pub fn range_s(&self) -> u64 {
        u64::try_from((self.to - self.from).num_seconds()).unwrap_or(0).max(1)
    }

    fn rfc3339(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

/// Expands every `$__macro(...)`, `$__variable`, `$name` and `${name}` in `query`.
///
/// # Errors
/// A macro or global variable that is not implemented for `dialect`, a template variable
/// not in `vars`, a variable with no values, or malformed macro arguments; the message names
/// it.
pub fn expand(
    query: &str,
    dialect: Dialect,
    range: &Range,
    vars: &BTreeMap<String, Vec<String>>,
) -> Result<String, String> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (name, braced, after) = if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').ok_or_else(|| format!("unclosed ${{ in {query:?}"))?;
            (&inner[..end], true, &inner[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], false, &rest[end..])
        };
        if name.is_empty() {
            return Err(format!("a lone `$` in {query:?}"));
        }
        rest = after;
        if let Some(global) = name.strip_prefix("__") {
            if !braced && rest.starts_with('(') {
                let close = rest.find(')').ok_or_else(|| format!("$__{global}( is not closed"))?;
                let args_text = expand(&rest[1..close], dialect, range, vars)?;
                rest = &rest[close + 1..];
                out.push_str(&macro_call(global, &args_text, dialect, range)?);
            } else {
                out.push_str(&global_variable(global, dialect, range)?);
            }
        } else {
            let values = vars.get(name).ok_or_else(|| {
                format!(
                    "unknown template variable ${name} (the dashboard defines {:?})",
                    vars.keys()
                )
            })?;
            if values.is_empty() {
                return Err(format!("template variable ${name} has no values"));
            }
            out.push_str(&format_values(values, dialect));
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn format_values(values: &[String], dialect: Dialect) -> String {
    match dialect {
        Dialect::Sql => values
            .iter()
            .map(|v| format!("'{}'", v.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(","),
        Dialect::PromQl => {
            let escaped: Vec<String> = values.iter().map(|v| regex_escape(v)).collect();
            if escaped.len() == 1 {
                escaped[0].clone()
            } else {
                format!("({})", escaped.join("|"))
            }
        }
    }
}

/// Grafana's `prometheusRegularEscape`-style escaping: regex metacharacters get a backslash,
/// written twice because the value sits inside a PromQL double-quoted string.
fn regex_escape(v: &str) -> String {
    let mut s = String::new();
    for c in v.chars() {
        if r"\^$.|?*+()[]{}".contains(c) {
            s.push_str(r"\\");
        }
        if c == '"' {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

fn global_variable(name: &str, dialect: Dialect, range: &Range) -> Result<String, String> {
    match (name, dialect) {
        ("interval", _) => Ok(format!("{}s", range.interval_s)),
        ("rate_interval", Dialect::PromQl) => Ok(format!("{}s", range.rate_interval_s())),
        ("range", Dialect::PromQl) => Ok(format!("{}s", range.range_s())),
        _ => Err(format!("global variable $__{name} is not implemented for {dialect:?}")),
    }
}

fn macro_call(name: &str, args: &str, dialect: Dialect, range: &Range) -> Result<String, String> {
    if dialect != Dialect::Sql {
        return Err(format!("macro $__{name}() is not implemented for {dialect:?}"));
    }
    let args: Vec<&str> = if args.trim().is_empty() {
        Vec::new()
    } else {
        args.split(',').map(str::trim).collect()
    };
    let (from, to) = (Range::rfc3339(range.from), Range::rfc3339(range.to));
    match (name, args.as_slice()) {
        ("timeFilter", [col]) => Ok(format!("{col} BETWEEN '{from}' AND '{to}'")),
        ("timeFrom", []) => Ok(format!("'{from}'")),
        ("timeTo", []) => Ok(format!("'{to}'")),
        ("timeGroupAlias", [col, interval]) => {
            let s = parse_interval(interval)?;
            Ok(format!("floor(extract(epoch from {col})/{s})*{s} AS \"time\""))
        }
        _ => Err(format!(
            "macro $__{name}({}) is not implemented (or has the wrong number of arguments)",
            args.join(", ")
        )),
    }
}

/// A Grafana interval (`'5m'`, `30s`, `1h`, `1d`; quotes optional) in whole seconds.
fn parse_interval(text: &str) -> Result<u64, String> {
    let t = text.trim().trim_matches('\'');
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("interval {text:?} is not a number and a unit"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("interval {text:?}: unit {unit:?} is not one of s, m, h, d")),
    };
    if n == 0 {
        return Err(format!("interval {text:?} is zero"));
    }
    Ok(n * per)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn range() -> Range {
        Range {
            from: Utc.with_ymd_and_hms(2026, 12, 1, 18, 0, 0).unwrap(),
            to: Utc.with_ymd_and_hms(2026, 12, 1, 18, 1, 0).unwrap(),
            interval_s: 2,
            scrape_s: 1,
        }
    }

    fn vars() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([
            ("target".to_string(), vec!["a.b".to_string(), "o'k".to_string()]),
            ("one".to_string(), vec!["x".to_string()]),
        ])
    }

    #[test]
    fn sql_macros_expand_as_grafana_expands_them() {
        let q = "SELECT $__timeGroupAlias(scheduled_at, $__interval), x FROM t \
                 WHERE $__timeFilter(scheduled_at) AND n IN ($target) AND f($__timeFrom(), $__timeTo())";
        assert_eq!(
            expand(q, Dialect::Sql, &range(), &vars()).unwrap(),
            "SELECT floor(extract(epoch from scheduled_at)/2)*2 AS \"time\", x FROM t \
             WHERE scheduled_at BETWEEN '2026-12-01T18:00:00Z' AND '2026-12-01T18:01:00Z' \
             AND n IN ('a.b','o''k') AND f('2026-12-01T18:00:00Z', '2026-12-01T18:01:00Z')"
        );
        assert_eq!(
            expand("$__timeGroupAlias(t, '5m')", Dialect::Sql, &range(), &vars()).unwrap(),
            "floor(extract(epoch from t)/300)*300 AS \"time\""
        );
    }

    #[test]
    fn promql_variables_are_escaped_regex_alternatives() {
        let q = r#"rate(x{target=~"$target"}[$__rate_interval]) + y{t=~"${one}"}[$__range]"#;
        assert_eq!(
            expand(q, Dialect::PromQl, &range(), &vars()).unwrap(),
            r#"rate(x{target=~"(a\\.b|o'k)"}[4s]) + y{t=~"x"}[60s]"#
        );
    }

    #[test]
    fn unknown_macros_and_variables_are_errors_naming_them() {
        let e = |q: &str, d| expand(q, d, &range(), &vars()).unwrap_err();
        assert!(e("$__unixEpochFilter(t)", Dialect::Sql).contains("$__unixEpochFilter"));
        assert!(e("$__timeFilter(t)", Dialect::PromQl).contains("$__timeFilter"));
        assert!(e("$__rate_interval", Dialect::Sql).contains("$__rate_interval"));
        assert!(e("x IN ($nope)", Dialect::Sql).contains("$nope"));
        assert!(e("$__timeGroupAlias(t, 5x)", Dialect::Sql).contains("5x"));
        assert!(e("$__timeFilter(a, b)", Dialect::Sql).contains("timeFilter"));
        assert!(e("cost $ 5", Dialect::Sql).contains("lone"));
    }
}
