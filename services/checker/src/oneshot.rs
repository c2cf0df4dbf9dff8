//! `checker probe`: one probe now, from the command line, to debug a target (what
//! blackbox_exporter's `/probe?debug=true` is for).
//!
//! The target comes from one of three places, and is always built by the service's own parser
//! and defaults ([`crate::target::read_list`], [`crate::target::read_file`]), so every field of
//! a targets file is accepted and judged exactly as the service judges it:
//! - `URL` with convenience flags, each of which sets one field of the target spec
//!   ([`SpecFlags`]); the spec is then parsed like one entry of a targets file;
//! - `--target JSON|YAML`: one entry of a targets file;
//! - `--file FILE [--name NAME]`: one target of a targets file, read as `TARGETS_FILE` is.
//!
//! The probe is [`crate::probe::run`], the function every scheduled probe calls, so the result
//! is the [`ProbeResult`] the service would publish, serialized the same way. This module never
//! connects to Kafka, never starts the admin server and never writes anywhere but to the
//! caller's strings.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use common::config::{ConfigError, Env};
use common::result::{ProbeResult, DEFAULT_LOCATION};
use serde_json::{Map, Value};

use crate::target::{read_file_with, read_list, Defaults, References, Target};

/// `checker probe ...`: what to probe and how to print it.
#[derive(Debug, clap::Parser)]
#[command(
    name = "checker probe",
    about = "Probe one target now: the result as JSON on stdout, a summary on stderr",
    after_help = "Exit codes: 0 the probe succeeded, 1 it failed, 2 invalid input (the message names the flag, \
                  field or variable).\nThe proxy variables (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) and DEFAULT_TIMEOUT, \
                  DEFAULT_INTERVAL, BODY_MAX_BYTES apply as in the service."
)]
pub struct ProbeArgs {
    /// The http:// or https:// URL to probe.
    #[arg(
        value_name = "URL",
        required_unless_present_any = ["target", "file"],
        conflicts_with_all = ["target", "file"]
    )]
    pub url: Option<String>,
    /// One entry of a targets file, as JSON or YAML (every field of the target options).
    #[arg(long, value_name = "JSON|YAML", conflicts_with = "file")]
    pub target: Option<String>,
    /// A targets file (a YAML or JSON list), read as the service reads TARGETS_FILE.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// With --file: the target to probe (not needed when FILE holds one). With URL: the
    /// target's name (default: the URL).
    #[arg(long, value_name = "NAME", conflicts_with = "target")]
    pub name: Option<String>,
    /// Where the probe runs from, written into the result and its check_id (default: the
    /// LOCATION variable, else "default").
    #[arg(long, value_name = "LOCATION")]
    pub location: Option<String>,
    /// Print only the JSON result, no summary.
    #[arg(long)]
    pub json: bool,
    /// The URL form's convenience flags.
    #[command(flatten)]
    pub spec: SpecFlags,
}

/// The URL form's convenience flags. Each sets exactly one field of the target spec (README's
/// target options); [`SpecFlags::given`] is the one table that says which.
#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "Target options of the URL form (each sets one field of the target spec)")]
pub struct SpecFlags {
    /// The body must match REGEX (field regex).
    #[arg(long, value_name = "REGEX")]
    pub regex: Option<String>,
    /// The body must not match REGEX (field fail_if_body_matches).
    #[arg(long, value_name = "REGEX")]
    pub fail_if_body_matches: Option<String>,
    /// Bound on the whole probe, e.g. 5s, 500ms, 2.5 (field timeout; default DEFAULT_TIMEOUT).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Request method (field method; default GET).
    #[arg(long, short = 'X', value_name = "METHOD")]
    pub method: Option<String>,
    /// A request header, repeatable (field headers).
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Request body (field body).
    #[arg(long, value_name = "TEXT")]
    pub body: Option<String>,
    /// Accepted status codes, comma-separated or repeated: 200, 3xx, 400-404 (field
    /// valid_status_codes; default 2xx).
    #[arg(long, value_name = "CODES", value_delimiter = ',')]
    pub valid_status: Vec<String>,
    /// Do not follow redirects (field follow_redirects: false).
    #[arg(long)]
    pub no_follow_redirects: bool,
    /// Most redirects followed (field max_redirects; default 10).
    #[arg(long, value_name = "N")]
    pub max_redirects: Option<u32>,
    /// Address family: any, ipv4 or ipv6 (field ip_family).
    #[arg(long, value_name = "FAMILY")]
    pub ip_family: Option<String>,
    /// env, none or http://[user:pass@]host:port (field proxy; default env).
    #[arg(long, value_name = "PROXY")]
    pub proxy: Option<String>,
    /// Accept any certificate; the handshake details are still recorded (field
    /// tls.insecure_skip_verify).
    #[arg(long, short = 'k')]
    pub insecure: bool,
    /// PEM CA certificates that replace the default roots (field tls.ca_file).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<String>,
    /// PEM client certificate for mutual TLS (field tls.cert_file).
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<String>,
    /// PEM key of the client certificate (field tls.key_file).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<String>,
    /// Name sent as SNI and verified, instead of the URL's host (field tls.server_name).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Body cap in bytes (field body_max_bytes; default BODY_MAX_BYTES).
    #[arg(long, value_name = "BYTES")]
    pub body_max_bytes: Option<u64>,
}

/// One flag given on the command line and the spec field it sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Given {
    /// The flag as typed: `--timeout`, or `URL` for the positional argument.
    pub flag: &'static str,
    /// The spec field, dotted for nested ones: `timeout`, `tls.ca_file`.
    pub field: &'static str,
    /// A valid value of the flag, shown with an error about it (empty for a switch).
    pub example: &'static str,
    /// The field's value, as a targets file would hold it.
    pub value: Value,
}

impl SpecFlags {
    /// The flags that were given, each with the field it sets and its value.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `--header` for a header that is not `NAME:VALUE` or is given
    /// twice.
    pub fn given(&self) -> Result<Vec<Given>, ConfigError> {
        let mut given = Vec::new();
        let mut set = |flag, field, example, value: Option<Value>| {
            if let Some(value) = value {
                given.push(Given {
                    flag,
                    field,
                    example,
                    value,
                });
            }
        };
        let text = |v: &Option<String>| v.clone().map(Value::String);
        set("--regex", "regex", "'\"status\":\"ok\"'", text(&self.regex));
        set(
            "--fail-if-body-matches",
            "fail_if_body_matches",
            "maintenance",
            text(&self.fail_if_body_matches),
        );
        set("--timeout", "timeout", "5s", text(&self.timeout));
        // The interval means nothing to one probe; it is set so that a timeout longer than
        // DEFAULT_INTERVAL is not refused as "longer than the interval".
        set("--timeout", "interval", "5s", text(&self.timeout));
        set("--method", "method", "HEAD", text(&self.method));
        set(
            "--header",
            "headers",
            "'Accept: application/json'",
            headers(&self.headers)?,
        );
        set("--body", "body", "'{}'", text(&self.body));
        set(
            "--valid-status",
            "valid_status_codes",
            "200,3xx,400-404",
            (!self.valid_status.is_empty())
                .then(|| Value::Array(self.valid_status.iter().cloned().map(Value::String).collect())),
        );
        set(
            "--no-follow-redirects",
            "follow_redirects",
            "",
            self.no_follow_redirects.then_some(Value::Bool(false)),
        );
        set(
            "--max-redirects",
            "max_redirects",
            "10",
            self.max_redirects.map(Value::from),
        );
        set("--ip-family", "ip_family", "ipv4", text(&self.ip_family));
        set("--proxy", "proxy", "http://proxy.internal:3128", text(&self.proxy));
        set(
            "--insecure",
            "tls.insecure_skip_verify",
            "",
            self.insecure.then_some(Value::Bool(true)),
        );
        set(
            "--ca-file",
            "tls.ca_file",
            "/etc/ssl/private-ca.pem",
            text(&self.ca_file),
        );
        set(
            "--cert-file",
            "tls.cert_file",
            "/etc/tls/client.pem",
            text(&self.cert_file),
        );
        set(
            "--key-file",
            "tls.key_file",
            "/etc/tls/client.key",
            text(&self.key_file),
        );
        set(
            "--server-name",
            "tls.server_name",
            "api.internal",
            text(&self.server_name),
        );
        set(
            "--body-max-bytes",
            "body_max_bytes",
            "1048576",
            self.body_max_bytes.map(Value::from),
        );
        Ok(given)
    }
}

/// `--header` values (`NAME:VALUE`, curl's form: the value's leading blanks dropped) as the
/// `headers` object; `None` when none was given.
fn headers(raw: &[String]) -> Result<Option<Value>, ConfigError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let mut map = Map::new();
    let mut seen = BTreeSet::new();
    for h in raw {
        let Some((name, value)) = h.split_once(':') else {
            return Err(ConfigError::new(
                "--header",
                format!("{h:?} is not NAME:VALUE"),
                "'Accept: application/json'",
            ));
        };
        let name = name.trim();
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(ConfigError::new(
                "--header",
                format!("header {name:?} is given twice; keep one"),
                "'Accept: application/json'",
            ));
        }
        map.insert(name.to_string(), Value::String(value.trim_start().to_string()));
    }
    Ok(Some(Value::Object(map)))
}

/// Sets the dotted `field` of `spec` to `value`, creating the objects on the way.
fn insert(spec: &mut Map<String, Value>, field: &str, value: Value) {
    match field.split_once('.') {
        None => {
            spec.insert(field.to_string(), value);
        }
        Some((head, rest)) => {
            let inner = spec
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = inner {
                insert(inner, rest, value);
            }
        }
    }
}

/// What one probe needs: the target, and who and where probes it.
#[derive(Debug)]
pub struct Prepared {
    /// The target, built by the service's parser.
    pub target: Target,
    /// Written into the result and its `check_id` (`--location`, `LOCATION`, `default`).
    pub location: String,
    /// Written into the result (`INSTANCE_ID`, default the host name, as in the service).
    pub instance_id: String,
}

/// Builds the target `args` describe with `env` and `defaults` (the service's
/// `config::target_defaults`, so the proxy variables apply), and the location.
///
/// # Errors
/// Every problem found, each naming the flag (`--timeout`, `URL`), the field of `--target`
/// (`--target.timeout`) or of the file (`TARGETS_FILE[2].timeout`, as `checker targets
/// validate` names it), or the variable (`LOCATION`).
pub fn prepare(args: &ProbeArgs, env: &Env, defaults: &Defaults) -> Result<Prepared, Vec<ConfigError>> {
    let location = location(args.location.as_deref(), env).map_err(|e| vec![e])?;
    let target = if let Some(text) = &args.target {
        refuse_spec_flags(&args.spec)?;
        inline_target(text, env, defaults)?
    } else if let Some(path) = &args.file {
        refuse_spec_flags(&args.spec)?;
        file_target(path, args.name.as_deref(), env, defaults)?
    } else {
        let url = args.url.as_deref().unwrap_or_default();
        url_target(url, args.name.as_deref(), &args.spec, env, defaults)?
    };
    Ok(Prepared {
        target,
        location,
        instance_id: env
            .get("INSTANCE_ID")
            .map_or_else(|| common::config::hostname(env), str::to_string),
    })
}

/// Probes `p.target` once, scheduled now: the result the service would publish for it.
pub async fn probe(p: &Prepared) -> ProbeResult {
    crate::probe::run(&p.target, Utc::now(), &p.instance_id, &p.location).await
}

/// `--location`, else `LOCATION`, else `default`, validated as the service validates
/// `LOCATION`.
fn location(flag: Option<&str>, env: &Env) -> Result<String, ConfigError> {
    match flag {
        Some(l) => crate::config::location(l.to_string()).map_err(|e| ConfigError {
            var: "--location".into(),
            ..e
        }),
        None => crate::config::location(env.get("LOCATION").unwrap_or(DEFAULT_LOCATION).to_string()),
    }
}

/// The URL form's flags set fields of the URL form's spec only: with `--target`/`--file` the
/// spec is written out, and a flag would silently lose to it or override it.
fn refuse_spec_flags(flags: &SpecFlags) -> Result<(), Vec<ConfigError>> {
    let given = flags.given().map_err(|e| vec![e])?;
    let mut errors: Vec<ConfigError> = Vec::new();
    for g in given {
        if errors.iter().any(|e| e.var == g.flag) {
            continue;
        }
        errors.push(ConfigError::new(
            g.flag,
            format!(
                "sets the field {} of the URL form; with --target or --file, write the field into the target's spec",
                g.field
            ),
            format!("checker probe URL {}", g.flag),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The URL form: the flags' spec, parsed as one entry of a list; errors name the flag that set
/// the field.
fn url_target(
    url: &str,
    name: Option<&str>,
    flags: &SpecFlags,
    env: &Env,
    defaults: &Defaults,
) -> Result<Target, Vec<ConfigError>> {
    let mut given = flags.given().map_err(|e| vec![e])?;
    given.push(Given {
        flag: "URL",
        field: "url",
        example: "https://api.example.com/health",
        value: Value::String(url.to_string()),
    });
    if let Some(name) = name {
        given.push(Given {
            flag: "--name",
            field: "name",
            example: "api",
            value: Value::String(name.to_string()),
        });
    }
    let mut spec = Map::new();
    for g in &given {
        insert(&mut spec, g.field, g.value.clone());
    }
    const VAR: &str = "URL";
    let listed = read_list(VAR, vec![Value::Object(spec)], env, defaults).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                let (var, example) = flag_of(&e.var, &format!("{VAR}[0]"), &given);
                ConfigError {
                    var,
                    example: example.to_string(),
                    ..e
                }
            })
            .collect::<Vec<_>>()
    })?;
    Ok(one(listed))
}

/// The flag(s) that set the field an error of the URL form's spec names (`URL[0].tls` →
/// `--ca-file`), `URL` for the entry as a whole, and a valid value of the first.
fn flag_of(var: &str, prefix: &str, given: &[Given]) -> (String, &'static str) {
    let field = var
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or_default();
    let head = field.split(['.', '[']).next().unwrap_or_default();
    let mut flags: Vec<&Given> = Vec::new();
    for g in given {
        if g.field.split('.').next() == Some(head) && !flags.iter().any(|f| f.flag == g.flag) {
            flags.push(g);
        }
    }
    if flags.is_empty() {
        return ("URL".to_string(), "https://api.example.com/health");
    }
    let example = flags.iter().map(|g| g.example).find(|e| !e.is_empty()).unwrap_or("");
    (flags.iter().map(|g| g.flag).collect::<Vec<_>>().join("/"), example)
}

/// `--target`: one entry of a targets file, JSON or YAML (one parser reads both, as for
/// `TARGETS_FILE`).
fn inline_target(text: &str, env: &Env, defaults: &Defaults) -> Result<Target, Vec<ConfigError>> {
    const VAR: &str = "--target";
    let example = "'{url: https://api.example.com/health, regex: ok, timeout: 5s}'";
    let spec: Value = serde_yaml::from_str(text)
        .map_err(|e| vec![ConfigError::new(VAR, format!("not JSON or YAML: {e}"), example)])?;
    if !spec.is_object() {
        let what = if spec.is_array() {
            "takes one target, not a list (one target of a file: --file FILE --name NAME)"
        } else {
            "takes one target: a JSON or YAML object with at least a url"
        };
        return Err(vec![ConfigError::new(VAR, what, example)]);
    }
    let listed = read_list(VAR, vec![spec], env, defaults).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| ConfigError {
                var: e.var.replacen(&format!("{VAR}[0]"), VAR, 1),
                ..e
            })
            .collect::<Vec<_>>()
    })?;
    Ok(one(listed))
}

/// `--file FILE [--name NAME]`: the file judged as the service judges `TARGETS_FILE` (every
/// problem of any entry is an error, as at start-up), then one of its targets picked and
/// built, reading the files and variables it refers to (the other entries' are not read).
fn file_target(
    path: &std::path::Path,
    name: Option<&str>,
    env: &Env,
    defaults: &Defaults,
) -> Result<Target, Vec<ConfigError>> {
    let shown = path.display();
    // Every entry is judged, as at start-up, but only the probed target's files and variables
    // are read: the others' secrets need not exist where the probe runs.
    let listed = read_file_with(&path.to_string_lossy(), env, defaults, References::NotRead)?;
    let names: Vec<&str> = listed.iter().map(|l| l.target.name.as_str()).collect();
    let shown_names = || {
        let mut s = names.iter().take(20).copied().collect::<Vec<_>>().join(", ");
        if names.len() > 20 {
            let _ = write!(s, " and {} more", names.len() - 20);
        }
        s
    };
    let example = names.first().copied().unwrap_or("api").to_string();
    let index = match name {
        Some(n) => names.iter().position(|t| *t == n).ok_or_else(|| {
            vec![ConfigError::new(
                "--name",
                format!("{shown} has no target named {n:?}; its targets: {}", shown_names()),
                &example,
            )]
        })?,
        None if listed.len() == 1 => 0,
        None => {
            return Err(vec![ConfigError::new(
                "--name",
                format!(
                    "{shown} holds {} targets; name the one to probe: {}",
                    listed.len(),
                    shown_names()
                ),
                &example,
            )])
        }
    };
    let chosen = &listed[index];
    let built = read_list("TARGETS_FILE", vec![chosen.spec.clone()], env, defaults).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| ConfigError {
                var: e.var.replacen("TARGETS_FILE[0]", &chosen.origin, 1),
                ..e
            })
            .collect::<Vec<_>>()
    })?;
    Ok(one(built))
}

/// The only target of a one-entry list that `read_list` accepted.
fn one(mut listed: Vec<crate::target::Listed>) -> Target {
    listed.swap_remove(0).target
}

/// A short human summary of `r` for stderr: target, outcome and error, response, address,
/// redirects, phase times, TLS with days left until expiry (counted from `now`), body. One
/// `key value` line each; parts that did not happen show `-` or are left out.
pub fn summary(r: &ProbeResult, now: DateTime<Utc>) -> String {
    let mut s = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(s, "{key:<10} {value}");
    };
    let what = if r.target == r.url {
        r.url.clone()
    } else {
        format!("{} {}", r.target, r.url)
    };
    line(
        "target",
        format!("{what} (location {}, instance {})", r.location, r.instance_id),
    );
    line(
        "result",
        if r.success {
            "OK".to_string()
        } else {
            format!(
                "FAILED {}: {}",
                r.error_kind.as_deref().unwrap_or("unknown"),
                r.error.as_deref().unwrap_or("")
            )
        },
    );
    let response = match r.status_code {
        None => "- (no response)".to_string(),
        Some(code) => {
            let mut v = format!("{code} {}", r.http_version.as_deref().unwrap_or("-"));
            if r.first_status_code.is_some_and(|f| f != code) {
                let _ = write!(v, " (first response {})", r.first_status_code.unwrap_or(0));
            }
            v
        }
    };
    line("response", response);
    line(
        "address",
        match (&r.ip_address, &r.ip_family) {
            (Some(ip), Some(f)) => format!("{ip} ({f})"),
            (Some(ip), None) => ip.clone(),
            _ => "-".to_string(),
        },
    );
    if r.redirects > 0 {
        line(
            "redirects",
            format!("{}, final URL {}", r.redirects, r.final_url.as_deref().unwrap_or("-")),
        );
    }
    let p = &r.phases;
    let phases = [
        ("resolve", p.resolve),
        ("connect", p.connect),
        ("tls", p.tls),
        ("processing", p.processing),
        ("transfer", p.transfer),
    ]
    .iter()
    .map(|(name, t)| format!("{name} {}", t.map_or("-".to_string(), seconds)))
    .collect::<Vec<_>>()
    .join(", ");
    line("phases", phases);
    line(
        "duration",
        format!(
            "{} of a {} timeout",
            seconds(r.duration_seconds),
            seconds(r.timeout_seconds)
        ),
    );
    if let Some(tls) = &r.tls {
        line(
            "tls",
            format!(
                "{} {}",
                tls.version.as_deref().unwrap_or("-"),
                tls.cipher.as_deref().unwrap_or("-")
            ),
        );
        line(
            "leaf",
            format!(
                "{}, expires {}",
                tls.leaf_subject.as_deref().unwrap_or("-"),
                expiry(tls.leaf_not_after, now)
            ),
        );
        if tls.earliest_not_after != tls.leaf_not_after {
            line(
                "chain",
                format!("earliest expiry {}", expiry(tls.earliest_not_after, now)),
            );
        }
    }
    let mut body = match r.body_bytes {
        Some(n) => format!("{n} bytes"),
        None => "- (not read)".to_string(),
    };
    if let Some(n) = r.content_length {
        let _ = write!(body, ", Content-Length {n}");
    }
    match r.regex_matched {
        Some(true) => body.push_str(", regex matched"),
        Some(false) => body.push_str(", regex did not match"),
        None => {}
    }
    line("body", body);
    s
}

/// `2031-06-15 01:02:03 UTC (1656 days left)`, or `(expired 3 days ago)`.
fn expiry(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(at) = at else { return "-".to_string() };
    let days = |n: i64| {
        if n == 1 {
            "1 day".to_string()
        } else {
            format!("{n} days")
        }
    };
    let left = if at < now {
        format!("expired {} ago", days((now - at).num_days()))
    } else {
        format!("{} left", days((at - now).num_days()))
    };
    format!("{} ({left})", at.format("%Y-%m-%d %H:%M:%S UTC"))
}

/// Seconds as milliseconds below one second (`12.3 ms`, `0.021 ms`), else seconds (`2.5 s`,
/// `10 s`).
fn seconds(s: f64) -> String {
    if s < 0.001 {
        format!("{:.3} ms", s * 1000.0)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        let text = format!("{s:.3}");
        format!("{} s", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    fn defaults() -> Defaults {
        Defaults {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            body_max_bytes: 1 << 20,
            proxy_env: crate::target::ProxyEnv::default(),
        }
    }

    fn prepared(args: &[&str]) -> Result<Prepared, Vec<ConfigError>> {
        let args = ProbeArgs::try_parse_from(std::iter::once("checker probe").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        prepare(&args, &Env::default(), &defaults())
    }

    fn error_vars(args: &[&str]) -> Vec<String> {
        prepared(args).unwrap_err().into_iter().map(|e| e.var).collect()
    }

    /// Every flag of the table reaches its field through the service's parser.
    #[test]
    fn every_spec_flag_sets_its_field() {
        let t = prepared(&[
            "https://h.example/x",
            "--name",
            "api",
            "--regex",
            "ok",
            "--fail-if-body-matches",
            "down",
            "--timeout",
            "45s",
            "-X",
            "post",
            "-H",
            "Accept: application/json",
            "--header",
            "X-Api-Key:k",
            "--body",
            "{}",
            "--valid-status",
            "200,3xx",
            "--valid-status",
            "404",
            "--no-follow-redirects",
            "--max-redirects",
            "3",
            "--ip-family",
            "ipv6",
            "--proxy",
            "http://proxy.example:3128",
            "-k",
            "--server-name",
            "api.internal",
            "--body-max-bytes",
            "1000",
        ])
        .unwrap()
        .target;
        assert_eq!(t.name, "api");
        assert_eq!(t.url.as_str(), "https://h.example/x");
        assert!(t.body_regex.unwrap().is_match(b"ok"));
        assert!(t.body_regex_not.unwrap().is_match(b"down"));
        assert_eq!(t.timeout, Duration::from_secs(45), "longer than DEFAULT_INTERVAL");
        assert_eq!(t.method, http::Method::POST);
        assert_eq!(t.headers["accept"], "application/json");
        assert!(t.headers["x-api-key"].is_sensitive());
        assert_eq!(&t.body[..], b"{}");
        assert_eq!(t.valid_status, vec![200..=200, 300..=399, 404..=404]);
        assert!(!t.follow_redirects);
        assert_eq!(t.max_redirects, 3);
        assert_eq!(t.ip_family, crate::target::IpFamily::Ipv6);
        assert!(matches!(t.proxy, crate::target::ProxyMode::Http(_)));
        assert_eq!(t.tls_server_name.as_deref(), Some("api.internal"));
        assert_eq!(t.body_max_bytes, 1000);
        let plain = prepared(&["http://h.example/"]).unwrap();
        assert_eq!(plain.target.name, "http://h.example/");
        assert_eq!(plain.target.timeout, Duration::from_secs(10), "DEFAULT_TIMEOUT");
        assert_eq!(plain.location, "default");
    }

    #[test]
    fn url_form_errors_name_the_flag() {
        for (args, var) in [
            (&["example.com/health"][..], "URL"),
            (&["ftp://h/"], "URL"),
            (&["http://h/", "--timeout", "soon"], "--timeout"),
            (&["http://h/", "--timeout", "0s"], "--timeout"),
            (&["http://h/", "--regex", "("], "--regex"),
            (&["http://h/", "-X", "GE T"], "--method"),
            (&["http://h/", "-H", "no colon"], "--header"),
            (&["http://h/", "-H", "A: 1", "-H", "a: 2"], "--header"),
            (&["http://h/", "-H", "bad name: 1"], "--header"),
            (&["http://h/", "--valid-status", "9xx"], "--valid-status"),
            (&["http://h/", "--ip-family", "ipv5"], "--ip-family"),
            (&["http://h/", "--proxy", "socks5://p:1"], "--proxy"),
            (&["http://h/", "--ca-file", "/nonexistent.pem"], "--ca-file"),
            (&["http://h/", "--body-max-bytes", "0"], "--body-max-bytes"),
            (&["http://h/", "--name", ""], "--name"),
            (&["http://h/", "--location", "eu west"], "--location"),
        ] {
            assert_eq!(error_vars(args), [var], "{args:?}");
        }
        // The example is a value of the flag, not of the spec field.
        let e = prepared(&["http://h/", "--valid-status", "9xx"]).unwrap_err();
        assert_eq!(
            e[0].to_string().rsplit("example: ").next(),
            Some("--valid-status=200,3xx,400-404)")
        );
        let e = prepared(&[
            "http://h/",
            "--server-name",
            "api.internal",
            "--ca-file",
            "/nonexistent.pem",
        ])
        .unwrap_err();
        assert_eq!(
            (e[0].var.as_str(), e[0].example.as_str()),
            ("--ca-file/--server-name", "/etc/ssl/private-ca.pem"),
            "a tls error names every tls flag given"
        );
    }

    #[test]
    fn target_json_and_yaml_are_one_entry_of_a_file() {
        let json = prepared(&[
            "--target",
            r#"{"name":"api","url":"http://h/","regex":"ok","quorum":2}"#,
        ])
        .unwrap();
        let yaml = prepared(&["--target", "name: api\nurl: http://h/\nregex: ok\nquorum: 2\n"]).unwrap();
        for p in [json, yaml] {
            assert_eq!((p.target.name.as_str(), p.target.url.as_str()), ("api", "http://h/"));
            assert_eq!(p.target.quorum, std::num::NonZeroU32::new(2));
        }
        for (args, var) in [
            (
                &["--target", "{url: 'http://h/', timeout: soon}"][..],
                "--target.timeout",
            ),
            (&["--target", "{url: 'http://h/', tmeout: 1s}"], "--target"),
            (&["--target", "[{url: 'http://h/'}]"], "--target"),
            (&["--target", ""], "--target"),
            (&["--target", "{url: 'http://h/'}", "--regex", "x"], "--regex"),
        ] {
            assert_eq!(error_vars(args), [var], "{args:?}");
        }
        let typo = prepared(&["--target", "{url: 'http://h/', tmeout: 1s}"]).unwrap_err();
        assert!(typo[0].problem.contains("tmeout"), "{}", typo[0]);
    }

    #[test]
    fn file_and_name_pick_one_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets.yaml");
        std::fs::write(&path, "- {name: a, url: 'http://a/'}\n- {name: b, url: 'http://b/'}\n").unwrap();
        let file = path.to_str().unwrap();
        assert_eq!(
            prepared(&["--file", file, "--name", "b"]).unwrap().target.url.as_str(),
            "http://b/"
        );
        assert_eq!(error_vars(&["--file", file]), ["--name"]);
        assert_eq!(error_vars(&["--file", file, "--name", "c"]), ["--name"]);
        assert_eq!(error_vars(&["--file", file, "--name", "a", "-k"]), ["--insecure"]);
        std::fs::write(&path, "- {name: only, url: 'http://o/'}\n").unwrap();
        assert_eq!(prepared(&["--file", file]).unwrap().target.name, "only");
        std::fs::write(&path, "- {name: a, url: 'http://a/', timeout: soon}\n").unwrap();
        assert_eq!(
            error_vars(&["--file", file, "--name", "a"]),
            ["TARGETS_FILE[0].timeout"]
        );
        // Another target's secret need not exist here; the probed one's must, named by its index.
        std::fs::write(
            &path,
            "- {name: a, url: 'http://a/', bearer_token_file: /run/secrets/not-here}\n\
             - {name: b, url: 'http://b/', bearer_token_env: B_TOKEN}\n\
             - {name: c, url: 'http://c/', timeout: soon}\n",
        )
        .unwrap();
        assert_eq!(
            error_vars(&["--file", file, "--name", "b"]),
            ["TARGETS_FILE[2].timeout"]
        );
        std::fs::write(
            &path,
            "- {name: a, url: 'http://a/', bearer_token_file: /run/secrets/not-here}\n\
             - {name: b, url: 'http://b/', bearer_token_env: B_TOKEN}\n",
        )
        .unwrap();
        assert_eq!(
            error_vars(&["--file", file, "--name", "b"]),
            ["TARGETS_FILE[1].bearer_token"]
        );
        let args = ProbeArgs::try_parse_from(["checker probe", "--file", file, "--name", "b"]).unwrap();
        let b = prepare(&args, &Env::from_pairs([("B_TOKEN", "t0k")]), &defaults()).unwrap();
        assert_eq!(b.target.headers["authorization"], "Bearer t0k");
        assert_eq!(
            error_vars(&["--file", file, "--name", "a"]),
            ["TARGETS_FILE[0].bearer_token"]
        );
    }

    #[test]
    fn summary_has_the_error_kind_and_days_left() {
        let now = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().to_utc();
        let r: ProbeResult = serde_json::from_value(serde_json::json!({
            "check_id": "00000000-0000-0000-0000-000000000000", "target": "api", "url": "https://h/",
            "scheduled_at": now, "started_at": now, "success": false, "error_kind": "regex",
            "error": "body does not match ok", "status_code": 200, "first_status_code": 301,
            "redirects": 1, "final_url": "https://h/new", "phases": {"connect": 0.002},
            "tls": {"leaf_not_after": "2030-01-11T00:00:00Z", "earliest_not_after": "2029-12-31T00:00:00Z"}
        }))
        .unwrap();
        let s = summary(&r, now);
        assert!(s.contains("FAILED regex: body does not match ok"), "{s}");
        assert!(s.contains("(10 days left)"), "{s}");
        assert!(s.contains("(expired 1 day ago)"), "{s}");
        assert!(s.contains("https://h/new") && s.contains("connect 2.0 ms"), "{s}");
    }
}
