//! What Grafana would do with the provisioned files, short of drawing: read the datasources
//! of `docker/grafana/provisioning/datasources/` and every dashboard of
//! `deploy/grafana/dashboards/`, resolve the template variables by running their queries,
//! and run every query of every panel against the datasource it names (PromQL as a range
//! query on Prometheus, SQL on PostgreSQL in a read-only transaction). A problem is a line
//! naming the dashboard, the panel and the query; nothing is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::macros::{expand, Dialect, Range};
use super::prometheus::Prometheus;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Datasource uid → its `type`, from every provisioning file.
///
/// # Panics
/// When a file is unreadable or not a provisioning file.
pub fn datasources() -> BTreeMap<String, String> {
    let dir = repo_root().join("docker/grafana/provisioning/datasources");
    let mut out = BTreeMap::new();
    for path in files(&dir, "yaml") {
        let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for ds in doc["datasources"].as_sequence().expect("a datasources list") {
            let uid = ds["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a datasource without uid", path.display()));
            out.insert(uid.to_string(), ds["type"].as_str().expect("a type").to_string());
        }
    }
    out
}

/// The dashboard files, sorted.
pub fn dashboard_files() -> Vec<PathBuf> {
    files(&repo_root().join("deploy/grafana/dashboards"), "json")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Where the queries go.
pub struct Backends<'a> {
    /// Prometheus scraping the services.
    pub prometheus: &'a Prometheus,
    /// A client logged in as the datasource's read-only role.
    pub pg: &'a tokio_postgres::Client,
    /// Datasource uid → type ([`datasources`]).
    pub datasources: &'a BTreeMap<String, String>,
    /// The dashboard time range.
    pub range: Range,
}

/// One query that ran: how many series or rows it gave.
#[derive(Debug)]
pub struct Ran {
    /// `dashboard / panel / refId`.
    pub what: String,
    /// Series (PromQL) or rows (SQL).
    pub results: usize,
}

impl Backends<'_> {
    fn dialect(&self, datasource: &Value) -> Result<Dialect, String> {
        let uid = datasource["uid"]
            .as_str()
            .ok_or_else(|| format!("no datasource uid in {datasource}"))?;
        let ty = self.datasources.get(uid).ok_or_else(|| {
            format!(
                "datasource uid {uid:?} is not provisioned ({:?})",
                self.datasources.keys()
            )
        })?;
        // Grafana 11's PostgreSQL plugin id; older ones call it `postgres` (an alias in 11).
        let same = |a: &str, b: &str| {
            let canon = |t: &str| {
                if t == "postgres" {
                    "grafana-postgresql-datasource"
                } else {
                    t
                }
                .to_string()
            };
            canon(a) == canon(b)
        };
        if datasource["type"].as_str().is_some_and(|t| !same(t, ty)) {
            return Err(format!(
                "datasource {uid:?} has type {ty:?}, the dashboard says {}",
                datasource["type"]
            ));
        }
        match ty.as_str() {
            "prometheus" => Ok(Dialect::PromQl),
            "grafana-postgresql-datasource" | "postgres" => Ok(Dialect::Sql),
            other => Err(format!("datasource type {other:?} is not one this test can query")),
        }
    }

    /// Runs every variable and panel query of `dashboard`; returns what ran and the problems.
    pub async fn run_dashboard(&self, dashboard: &Value) -> (Vec<Ran>, Vec<String>) {
        let name = dashboard["uid"].as_str().unwrap_or("<no uid>").to_string();
        let mut ran = Vec::new();
        let mut problems: Vec<String> = structure(dashboard)
            .into_iter()
            .map(|p| format!("{name}: {p}"))
            .collect();

        let mut vars = BTreeMap::new();
        for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            let vname = var["name"].as_str().unwrap_or("<no name>").to_string();
            let what = format!("{name} / variable ${vname}");
            match self.variable(var, &vars).await {
                Ok(values) if values.is_empty() => problems.push(format!("{what}: no values")),
                Ok(values) => {
                    ran.push(Ran {
                        what,
                        results: values.len(),
                    });
                    vars.insert(vname, values);
                }
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }

        for anno in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
            let what = format!("{name} / annotation {:?}", anno["name"].as_str().unwrap_or(""));
            match self.run_annotation(anno, &vars).await {
                Ok(0) => problems.push(format!("{what}: empty result")),
                Ok(results) => ran.push(Ran { what, results }),
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }

        for panel in panels(dashboard) {
            let title = format!(
                "{name} / panel {:?} (id {})",
                panel["title"].as_str().unwrap_or(""),
                panel["id"]
            );
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{title}: no query"));
            }
            for target in targets {
                let what = format!("{title} / {}", target["refId"].as_str().unwrap_or("?"));
                let datasource = if target["datasource"].is_object() {
                    &target["datasource"]
                } else {
                    &panel["datasource"]
                };
                match self.run_target(datasource, &target, &vars).await {
                    Ok(0) => problems.push(format!("{what}: empty result")),
                    Ok(results) => ran.push(Ran { what, results }),
                    Err(e) => problems.push(format!("{what}: {e}")),
                }
            }
        }
        (ran, problems)
    }

    async fn variable(&self, var: &Value, vars: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, String> {
        if var["type"] != "query" {
            return Err(format!("variable type {} is not implemented", var["type"]));
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .ok_or_else(|| "no query".to_string())?;
        let (from, to) = (self.range.from, self.range.to);
        match self.dialect(&var["datasource"])? {
            Dialect::PromQl => {
                let inner = query
                    .trim()
                    .strip_prefix("label_values(")
                    .and_then(|q| q.strip_suffix(')'))
                    .ok_or_else(|| format!("{query:?}: only label_values(selector, label) is implemented"))?;
                let (selector, label) = inner
                    .rsplit_once(',')
                    .ok_or_else(|| format!("{query:?}: label_values needs a selector and a label"))?;
                let selector = expand(selector.trim(), Dialect::PromQl, &self.range, vars)?;
                self.prometheus.label_values(&selector, label.trim(), from, to).await
            }
            Dialect::Sql => {
                let sql = expand(query, Dialect::Sql, &self.range, vars)?;
                let rows = self.sql(&sql).await?;
                rows.iter()
                    .map(|r| {
                        r.try_get::<_, String>(0)
                            .map_err(|e| format!("first column is not text: {e}"))
                    })
                    .collect()
            }
        }
    }

    /// An annotation query: SQL with `time` and `text` columns (`timeend` for a region).
    async fn run_annotation(&self, anno: &Value, vars: &BTreeMap<String, Vec<String>>) -> Result<usize, String> {
        if self.dialect(&anno["datasource"])? != Dialect::Sql {
            return Err("only SQL annotations are implemented".into());
        }
        let raw = anno["target"]["rawSql"].as_str().ok_or("no rawSql")?;
        let sql = expand(raw, Dialect::Sql, &self.range, vars)?;
        let rows = self.sql(&sql).await.map_err(|e| format!("{e}\n{sql}"))?;
        if let Some(row) = rows.first() {
            let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
            if !names.contains(&"time") || !names.contains(&"text") {
                return Err(format!("columns {names:?}: an annotation needs `time` and `text`"));
            }
        }
        Ok(rows.len())
    }

    async fn run_target(
        &self,
        datasource: &Value,
        target: &Value,
        vars: &BTreeMap<String, Vec<String>>,
    ) -> Result<usize, String> {
        match self.dialect(datasource)? {
            Dialect::PromQl => {
                let expr = target["expr"]
                    .as_str()
                    .filter(|e| !e.trim().is_empty())
                    .ok_or("no expr")?;
                let expr = expand(expr, Dialect::PromQl, &self.range, vars)?;
                let series = self
                    .prometheus
                    .query_range(&expr, self.range.from, self.range.to, self.range.interval_s)
                    .await
                    .map_err(|e| format!("{e} in {expr}"))?;
                // A series of NaN only (a quantile of no observations) draws nothing.
                let finite = series
                    .iter()
                    .filter(|s| {
                        s["values"].as_array().into_iter().flatten().any(|v| {
                            v[1].as_str()
                                .and_then(|x| x.parse::<f64>().ok())
                                .is_some_and(f64::is_finite)
                        })
                    })
                    .count();
                if !series.is_empty() && finite == 0 {
                    return Err(format!("{} series, every value NaN or infinite: {expr}", series.len()));
                }
                Ok(finite)
            }
            Dialect::Sql => {
                if target["rawQuery"] != true {
                    return Err("not a raw SQL query (rawQuery: true expected)".into());
                }
                let raw = target["rawSql"]
                    .as_str()
                    .filter(|e| !e.trim().is_empty())
                    .ok_or("no rawSql")?;
                let sql = expand(raw, Dialect::Sql, &self.range, vars)?;
                let rows = self.sql(&sql).await.map_err(|e| format!("{e}\n{sql}"))?;
                match target["format"].as_str() {
                    Some("table") => {}
                    Some("time_series") => {
                        if let Some(row) = rows.first() {
                            if !row.columns().iter().any(|c| c.name() == "time") {
                                return Err(format!("format time_series without a `time` column\n{sql}"));
                            }
                        }
                    }
                    other => return Err(format!("format {other:?} (table or time_series expected)")),
                }
                Ok(rows.len())
            }
        }
    }

    /// Runs `sql` in a read-only transaction (the datasource's role is read-only too).
    async fn sql(&self, sql: &str) -> Result<Vec<tokio_postgres::Row>, String> {
        let describe = |e: tokio_postgres::Error| match e.as_db_error() {
            Some(db) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
            None => format!("{e:#}"),
        };
        self.pg.batch_execute("BEGIN READ ONLY").await.map_err(describe)?;
        let rows = self.pg.query(sql, &[]).await.map_err(describe);
        self.pg.batch_execute("ROLLBACK").await.map_err(describe)?;
        rows
    }
}

/// Every panel that is not a row, rows' nested panels included (collapsed rows hold theirs).
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// What Grafana needs of a dashboard file to load it as provisioned: uid, title,
/// schemaVersion, panels with unique ids, a type and a grid position.
fn structure(d: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for key in ["uid", "title"] {
        if !d[key].is_string() {
            problems.push(format!("no {key}"));
        }
    }
    if !d["schemaVersion"].is_u64() {
        problems.push("no schemaVersion".into());
    }
    let mut ids = std::collections::BTreeSet::new();
    let all = d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten()));
    for p in all {
        if !ids.insert(p["id"].to_string()) {
            problems.push(format!("panel id {} used twice", p["id"]));
        }
        if !p["type"].is_string() || !p["gridPos"]["w"].is_u64() || !p["gridPos"]["h"].is_u64() {
            problems.push(format!("panel {} has no type or gridPos", p["id"]));
        }
    }
    problems
}

/// The provisioned files fit together without any backend: every panel has a query naming a
/// provisioned datasource, every macro and variable expands, and docker-compose.yml mounts
/// the dashboards where the provider looks, with every variable the datasources file reads.
#[cfg(test)]
mod files {
    use super::*;

    fn yaml(path: &str) -> serde_yaml::Value {
        let p = repo_root().join(path);
        serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn every_panel_query_names_a_provisioned_datasource_and_expands() {
        let ds = datasources();
        let range = Range {
            from: chrono::Utc::now() - chrono::Duration::hours(1),
            to: chrono::Utc::now(),
            interval_s: 15,
            scrape_s: 15,
        };
        let mut problems = Vec::new();
        let mut queries = 0;
        for path in dashboard_files() {
            let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let name = d["uid"].as_str().unwrap_or("?").to_string();
            problems.extend(structure(&d).into_iter().map(|p| format!("{name}: {p}")));
            let vars: BTreeMap<String, Vec<String>> = d["templating"]["list"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| (v["name"].as_str().unwrap_or("?").to_string(), vec!["x".to_string()]))
                .collect();
            for anno in d["annotations"]["list"].as_array().into_iter().flatten() {
                let uid = anno["datasource"]["uid"].as_str().unwrap_or("");
                queries += 1;
                if ds.get(uid).map(String::as_str) != Some("grafana-postgresql-datasource") {
                    problems.push(format!("{name} / annotation {}: datasource {uid:?}", anno["name"]));
                } else if let Err(e) = expand(
                    anno["target"]["rawSql"].as_str().unwrap_or(""),
                    Dialect::Sql,
                    &range,
                    &vars,
                ) {
                    problems.push(format!("{name} / annotation {}: {e}", anno["name"]));
                }
            }
            for panel in panels(&d) {
                let targets = panel["targets"].as_array().cloned().unwrap_or_default();
                if targets.is_empty() {
                    problems.push(format!("{name} / {}: no query", panel["title"]));
                }
                for t in targets {
                    let ds_ref = if t["datasource"].is_object() {
                        &t["datasource"]
                    } else {
                        &panel["datasource"]
                    };
                    let uid = ds_ref["uid"].as_str().unwrap_or("");
                    let (dialect, text) = match ds.get(uid).map(String::as_str) {
                        Some("prometheus") => (Dialect::PromQl, t["expr"].as_str()),
                        Some("grafana-postgresql-datasource") => (Dialect::Sql, t["rawSql"].as_str()),
                        other => {
                            problems.push(format!("{name} / {}: datasource {uid:?} ({other:?})", panel["title"]));
                            continue;
                        }
                    };
                    queries += 1;
                    match text.map(|q| expand(q, dialect, &range, &vars)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => problems.push(format!("{name} / {}: {e}", panel["title"])),
                        None => problems.push(format!("{name} / {}: no query text", panel["title"])),
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert!(queries >= 40, "{queries} queries");
    }

    #[test]
    fn compose_mounts_the_dashboards_where_the_provider_reads_them() {
        let provider = yaml("docker/grafana/provisioning/dashboards/healthcheck.yaml");
        let path = provider["providers"][0]["options"]["path"]
            .as_str()
            .expect("provider path")
            .to_string();
        let compose = yaml("docker-compose.yml");
        let grafana = &compose["services"]["grafana"];
        assert_eq!(grafana["profiles"][0].as_str(), Some("grafana"));
        let volumes: Vec<&str> = grafana["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            volumes.contains(&format!("./deploy/grafana/dashboards:{path}:ro").as_str()),
            "{volumes:?}"
        );
        assert!(
            volumes.contains(&"./docker/grafana/provisioning:/etc/grafana/provisioning:ro"),
            "{volumes:?}"
        );
        let home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
            .as_str()
            .unwrap();
        let file = home
            .strip_prefix(&format!("{path}/"))
            .expect("home dashboard under the provider path");
        assert!(
            repo_root().join("deploy/grafana/dashboards").join(file).exists(),
            "{home}"
        );
        // Every ${VAR} the datasources file reads is in Grafana's environment.
        let text =
            std::fs::read_to_string(repo_root().join("docker/grafana/provisioning/datasources/healthcheck.yaml"))
                .unwrap();
        for var in text
            .split("${")
            .skip(1)
            .filter_map(|s| s.split_once('}'))
            .map(|(v, _)| v)
        {
            assert!(
                grafana["environment"][var].is_string(),
                "{var} is not in the grafana service's environment"
            );
        }
    }
}
