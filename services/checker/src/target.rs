//! Targets: what to probe and how, parsed and validated at start-up.
//!
//! A target list is a JSON array (`TARGETS`), a YAML or JSON file (`TARGETS_FILE`) or the
//! single-target form `TARGET`/`PATTERN`/`INTERVAL` of the tool this replaces. Every option is
//! checked here, so a probe never meets an invalid setting; errors name the variable, the
//! target's position and the field, e.g. `TARGETS[2].timeout`. A list is judged target by
//! target, so every problem of a list is found at once ([`read_list`]); one spec of the targets
//! topic is built by [`target_from_json`], with the same parser and defaults.
//!
//! Building a target reads the files and variables its credentials name (`password_file`,
//! `bearer_token_env`, ...) and nothing else: it never connects anywhere.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::config::{duration, parse_positive_duration, ConfigError, Env};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use regex::bytes::Regex;
use serde::Deserialize;
use url::Url;

// The proxy types live in `proxy`; re-exported where the target list has always had them.
use crate::proxy::parse_proxy_url;
pub use crate::proxy::{ProxyEnv, ProxyMode};
use crate::resolve::Resolver;
use crate::tls::{self, TlsClient, TlsOptions};

/// One validated target.
#[derive(Debug, Clone)]
pub struct Target {
    /// Unique name; the Kafka message key and the `target` label of metrics.
    pub name: String,
    /// `http` or `https` URL, without credentials (those in the configured URL moved to
    /// `headers` as `Authorization: Basic`).
    pub url: Url,
    /// Request method (default GET).
    pub method: Method,
    /// Extra request headers. Credential headers (see [`is_credential_header`]) and the
    /// configured auth are marked sensitive: never logged, never sent to another origin.
    pub headers: HeaderMap,
    /// Request body (default empty).
    pub body: Bytes,
    /// Accepted status codes of the final response (default 200-299).
    pub valid_status: Vec<RangeInclusive<u16>>,
    /// The body must match this regex.
    pub body_regex: Option<Arc<Regex>>,
    /// The body must not match this regex.
    pub body_regex_not: Option<Arc<Regex>>,
    /// Header conditions on the final response.
    pub header_rules: Vec<HeaderRule>,
    /// Time between two scheduled probes.
    pub interval: Duration,
    /// Bound on the whole probe, DNS to last body byte over all redirect hops.
    pub timeout: Duration,
    /// Follow 3xx responses with a `Location` header.
    pub follow_redirects: bool,
    /// Most redirects followed; one more is an error of kind `too_many_redirects`.
    pub max_redirects: u32,
    /// TLS client configurations (roots, client certificate for the configured host only,
    /// verification).
    pub tls: TlsClient,
    /// SNI and verification name for the configured host, when it differs from the URL's host.
    pub tls_server_name: Option<String>,
    /// Address family to connect with.
    pub ip_family: IpFamily,
    /// How to reach the target: directly, through an HTTP proxy, or as the proxy environment
    /// says for each hop's URL.
    pub proxy: ProxyMode,
    /// The resolver for host names (the system's unless a test sets another).
    pub resolver: Resolver,
    /// Body cap in bytes, raw and after decoding.
    pub body_max_bytes: u64,
    /// Down when at least `quorum` locations failed; default (`None`) a strict majority of the
    /// known locations (⌊M/2⌋+1). Used by the sink's `slot_verdicts` view, not by the probe.
    pub quorum: Option<NonZeroU32>,
    /// Consecutive down slots (quorum verdicts) that open an incident; default (`None`) 2
    /// (`sink::store::status::DEFAULT_FAILURE_THRESHOLD`). Used by the sink's rollup job, not
    /// by the probe.
    pub failure_threshold: Option<NonZeroU32>,
}

/// A condition on a response header (blackbox_exporter's `fail_if_header_[not_]matches`).
#[derive(Debug, Clone)]
pub struct HeaderRule {
    /// Header name.
    pub header: HeaderName,
    /// Regex applied to each value of the header.
    pub regex: Arc<Regex>,
    /// `true`: the probe fails when a value matches; `false`: it fails when none does.
    pub fail_if_matches: bool,
    /// With `fail_if_matches == false`: whether a missing header fails the probe (default true).
    pub allow_missing: bool,
}

/// Which IP family to connect with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// Both: AAAA and A are asked, and the addresses raced by Happy Eyeballs (RFC 8305), IPv6
    /// first.
    Any,
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
}

/// Defaults applied to targets that do not set an option.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Interval (`DEFAULT_INTERVAL`, 30 s).
    pub interval: Duration,
    /// Timeout (`DEFAULT_TIMEOUT`, 10 s; capped at the interval).
    pub timeout: Duration,
    /// Body cap (`BODY_MAX_BYTES`, 1 MiB).
    pub body_max_bytes: u64,
    /// The proxy environment (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, either case).
    pub proxy_env: ProxyEnv,
}

/// A status code (`200`) or a range (`"200-299"`, `"2xx"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StatusSpec {
    Code(u16),
    Text(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeaderRuleSpec {
    header: String,
    regex: String,
    #[serde(default)]
    allow_missing: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BasicAuthSpec {
    username: String,
    password: Option<String>,
    password_file: Option<String>,
    password_env: Option<String>,
}

/// A target as written by the user (JSON or YAML). Unknown fields are errors, so a typo is
/// reported instead of silently ignored.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    name: Option<String>,
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Header name → a file holding its value (a mounted secret), read like `password_file`.
    #[serde(default)]
    header_files: BTreeMap<String, String>,
    /// Header name → an environment variable holding its value.
    #[serde(default)]
    header_env: BTreeMap<String, String>,
    body: Option<String>,
    valid_status_codes: Option<Vec<StatusSpec>>,
    #[serde(alias = "pattern")]
    regex: Option<String>,
    fail_if_body_matches: Option<String>,
    #[serde(default)]
    fail_if_header_matches: Vec<HeaderRuleSpec>,
    #[serde(default)]
    fail_if_header_not_matches: Vec<HeaderRuleSpec>,
    #[serde(default, deserialize_with = "duration::option::positive")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration::option::positive")]
    timeout: Option<Duration>,
    follow_redirects: Option<bool>,
    max_redirects: Option<u32>,
    #[serde(default)]
    tls: TlsOptions,
    ip_family: Option<String>,
    proxy: Option<String>,
    basic_auth: Option<BasicAuthSpec>,
    bearer_token_file: Option<String>,
    bearer_token_env: Option<String>,
    body_max_bytes: Option<NonZeroU64>,
    quorum: Option<NonZeroU32>,
    failure_threshold: Option<NonZeroU32>,
}

/// A valid target list, shown with errors about the list.
const EXAMPLE: &str =
    r#"[{"name":"api","url":"https://api.example.com/health","regex":"ok","interval":"30s","timeout":"5s"}]"#;

/// What building a target needs besides its spec.
struct Context<'a> {
    /// Where `*_env` credential references are looked up.
    env: &'a Env,
    defaults: &'a Defaults,
    /// One copy for all targets; the proxy is chosen for each hop's URL.
    proxy_env: Arc<ProxyEnv>,
    /// Whether the files and variables a target refers to (credentials, TLS files) are read;
    /// not when a list is judged for the targets topic, far from where checkers run.
    references: References,
}

impl<'a> Context<'a> {
    fn new(env: &'a Env, defaults: &'a Defaults) -> Self {
        Self {
            env,
            defaults,
            proxy_env: Arc::new(defaults.proxy_env.clone()),
            references: References::Read,
        }
    }
}

/// What building a target does with the files and variables it refers to
/// (`basic_auth.password_file`/`password_env`, `bearer_token_file`/`bearer_token_env`,
/// `tls.ca_file`/`cert_file`/`key_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum References {
    /// Reads them, as the checker does before probing: a missing one is an error.
    Read,
    /// Leaves them alone (a credential becomes an empty placeholder, TLS files are not
    /// opened): how `checker targets apply` judges a file for the targets topic, since they
    /// exist where the checkers run, not where the apply runs.
    NotRead,
}

/// Reads the target list from `env`: `TARGETS` (JSON array), else `TARGETS_FILE` (YAML or JSON
/// file), else `TARGET` with `PATTERN` and `INTERVAL`/`DELAY`.
///
/// # Errors
/// A [`ConfigError`] naming the variable (and the target index and field) of the first invalid
/// value (saying how many more there are: [`read_list`] has them all), or saying that no
/// target is configured.
pub fn load_targets(env: &Env, defaults: &Defaults) -> Result<Vec<Target>, ConfigError> {
    let listed = if let Some(json) = env.get("TARGETS") {
        let specs = parse_json_list("TARGETS", json)?;
        read_list("TARGETS", specs, env, defaults)
    } else if let Some(path) = env.get("TARGETS_FILE") {
        read_file(path, env, defaults)
    } else if let Some(url) = env.get("TARGET") {
        let ctx = Context::new(env, defaults);
        return single_target(env, url, &ctx).map(|t| vec![t]);
    } else {
        return Err(ConfigError::new(
            "TARGETS",
            "no target configured: set TARGETS, TARGETS_FILE or TARGET",
            format!("'{EXAMPLE}'"),
        ));
    };
    match listed {
        Ok(listed) => Ok(listed.into_iter().map(|l| l.target).collect()),
        Err(mut errors) => {
            let more = errors.len() - 1;
            let mut first = errors.swap_remove(0);
            if more > 0 {
                first.problem = format!(
                    "{} (and {more} more problems: `checker targets validate FILE` lists them all)",
                    first.problem
                );
            }
            Err(first)
        }
    }
}

/// One valid entry of a target list.
#[derive(Debug)]
pub struct Listed {
    /// Where it was written, as errors name it: `TARGETS_FILE[2]`.
    pub origin: String,
    /// The target built from it.
    pub target: Target,
    /// The entry as written: a JSON object (YAML is read as JSON), before defaults.
    pub spec: serde_json::Value,
}

/// `json` as a JSON array, each entry still untyped.
fn parse_json_list(var: &str, json: &str) -> Result<Vec<serde_json::Value>, ConfigError> {
    serde_json::from_str(json)
        .map_err(|e| ConfigError::new(var, format!("not a JSON array of targets: {e}"), format!("'{EXAMPLE}'")))
}

/// Reads `path` (YAML or JSON: YAML is a superset of JSON, so one parser reads both) as the
/// service reads `TARGETS_FILE`, and builds every target ([`read_list`]).
///
/// # Errors
/// Every problem, each naming `TARGETS_FILE[<index>].<field>` (or `TARGETS_FILE` for the file
/// itself: unreadable, not a list, empty).
pub fn read_file(path: &str, env: &Env, defaults: &Defaults) -> Result<Vec<Listed>, Vec<ConfigError>> {
    read_file_with(path, env, defaults, References::Read)
}

/// [`read_file`], reading what targets refer to or not ([`References`]).
///
/// # Errors
/// As [`read_file`].
pub fn read_file_with(
    path: &str,
    env: &Env,
    defaults: &Defaults,
    references: References,
) -> Result<Vec<Listed>, Vec<ConfigError>> {
    let example = "/etc/healthcheck/targets.yaml";
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            "TARGETS_FILE",
            format!("cannot read {path:?}: {e}"),
            example,
        )]
    })?;
    let specs: Vec<serde_json::Value> = serde_yaml::from_str(&text).map_err(|e| {
        vec![ConfigError::new(
            "TARGETS_FILE",
            format!("{path:?} is not a YAML/JSON list of targets: {e}"),
            example,
        )]
    })?;
    let ctx = Context {
        references,
        ..Context::new(env, defaults)
    };
    list_with("TARGETS_FILE", specs, &ctx)
}

/// Builds every entry of the list held by `var`, judging each on its own.
///
/// # Errors
/// Every problem found, in list order, one [`ConfigError`] each: a field's
/// (`TARGETS_FILE[2].timeout`), an entry's outside any known field (`TARGETS_FILE[2]`: an
/// unknown or missing field), a name used twice (`TARGETS_FILE[5].name`), or an empty list
/// (`TARGETS_FILE`).
pub fn read_list(
    var: &str,
    specs: Vec<serde_json::Value>,
    env: &Env,
    defaults: &Defaults,
) -> Result<Vec<Listed>, Vec<ConfigError>> {
    list_with(var, specs, &Context::new(env, defaults))
}

fn list_with(var: &str, specs: Vec<serde_json::Value>, ctx: &Context<'_>) -> Result<Vec<Listed>, Vec<ConfigError>> {
    if specs.is_empty() {
        return Err(vec![ConfigError::new(
            var,
            "the target list is empty",
            format!("'{EXAMPLE}'"),
        )]);
    }
    let mut errors = Vec::new();
    let mut listed = Vec::new();
    let mut first_use: BTreeMap<String, usize> = BTreeMap::new();
    for (index, spec) in specs.into_iter().enumerate() {
        let names = ListNames { var, index };
        let origin = format!("{var}[{index}]");
        let built = typed_spec(&origin, &spec).and_then(|typed| build(typed, ctx, &names));
        match built {
            Ok(target) => {
                if let Some(first) = first_use.get(&target.name) {
                    errors.push(ConfigError::new(
                        names.field("name"),
                        format!(
                            "target name {:?} is used twice (also by {var}[{first}]); names must be unique",
                            target.name
                        ),
                        "give each target a \"name\"",
                    ));
                    continue;
                }
                first_use.insert(target.name.clone(), index);
                listed.push(Listed { origin, target, spec });
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(listed)
    } else {
        Err(errors)
    }
}

/// Builds the target `name` from its value on the targets topic (`KAFKA_TARGETS_TOPIC`): a
/// JSON object in the schema of one entry of the targets file, read with the same parser and
/// `defaults`, its `*_env` credentials looked up in `env`. The value's `name`, when present,
/// must equal `name` (the record's key).
///
/// # Errors
/// A [`ConfigError`] naming `KAFKA_TARGETS_TOPIC[<name>]` and the field: not JSON, an
/// invalid field, or a `name` other than the key.
pub fn target_from_json(name: &str, value: &[u8], env: &Env, defaults: &Defaults) -> Result<Target, ConfigError> {
    let names = TopicNames { name };
    let origin = format!("KAFKA_TARGETS_TOPIC[{name}]");
    let spec: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
        ConfigError::new(
            &origin,
            format!("the value is not JSON: {e}"),
            format!("'{}'", &EXAMPLE[1..EXAMPLE.len() - 1]),
        )
    })?;
    let mut typed = typed_spec(&origin, &spec)?;
    match &typed.name {
        Some(n) if n != name => {
            return Err(ConfigError::new(
                names.field("name"),
                format!("{n:?} differs from the record's key {name:?}"),
                name,
            ))
        }
        _ => typed.name = Some(name.to_string()),
    }
    build(typed, &Context::new(env, defaults), &names)
}

/// One entry of a list, typed in one pass (durations, counts, options). A value that does not
/// fit its field is named by the path `serde_path_to_error` tracked, `TARGETS[2].timeout`; an
/// error outside any known field (an unknown or missing field, not an object) by `origin`
/// (`TARGETS[2]`) alone.
fn typed_spec(origin: &str, spec: &serde_json::Value) -> Result<TargetSpec, ConfigError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let fields = struct_fields::<TargetSpec>();
        let in_field = matches!(
            e.path().iter().next(),
            Some(serde_path_to_error::Segment::Map { key }) if fields.contains(&key.as_str())
        );
        let first = match e.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) if in_field => key.clone(),
            _ => String::new(),
        };
        let (var, example) = if in_field {
            (format!("{origin}.{}", e.path()), field_example(&first).to_string())
        } else {
            (origin.to_string(), format!("'{}'", &EXAMPLE[1..EXAMPLE.len() - 1]))
        };
        ConfigError::new(var, e.into_inner().to_string(), example)
    })
}

/// A valid value of the spec field `field`, shown with an error about it.
fn field_example(field: &str) -> &'static str {
    match field {
        "interval" | "timeout" => "30s",
        "quorum" | "failure_threshold" => "2",
        "body_max_bytes" => "1048576",
        "max_redirects" => "10",
        "follow_redirects" => "true",
        "valid_status_codes" => "[200, \"3xx\"]",
        "headers" => "{accept: application/json}",
        "basic_auth" => "{username: probe, password_file: /run/secrets/pw}",
        "tls" => "{ca_file: /etc/ssl/private-ca.pem}",
        "url" => "https://api.example.com/health",
        _ => "<a value as README's target options show>",
    }
}

/// Inline secrets in a valid entry, which may not be published to the targets topic (every
/// reader of the topic would see them): `basic_auth.password`, values of credential headers
/// ([`is_credential_header`]), and passwords in the URL's or the proxy's userinfo. Each
/// problem names the target and the field and says which reference to use instead
/// (`password_file`/`password_env`, `bearer_token_file`/`bearer_token_env`). TLS options hold
/// file paths only (`key_file`), never an inline key.
pub fn inline_secrets(listed: &Listed) -> Vec<ConfigError> {
    let Ok(spec) = serde_json::from_value::<TargetSpec>(listed.spec.clone()) else {
        return Vec::new();
    };
    let name = &listed.target.name;
    let at = |field: &str| format!("{}.{field}", listed.origin);
    let mut found = Vec::new();
    if spec.basic_auth.as_ref().is_some_and(|b| b.password.is_some()) {
        found.push(ConfigError::new(
            at("basic_auth.password"),
            format!("target {name:?}: an inline password may not go into the targets topic; reference a secret with basic_auth.password_file (a mounted file) or basic_auth.password_env"),
            "{username: probe, password_file: /run/secrets/probe-password}",
        ));
    }
    for header in spec.headers.keys() {
        if HeaderName::from_bytes(header.as_bytes()).is_ok_and(|h| is_credential_header(&h)) {
            found.push(ConfigError::new(
                at(&format!("headers.{header}")),
                format!("target {name:?}: header {header:?} carries a credential, which may not go inline into the targets topic; reference it with header_files ({header}: /run/secrets/...) or header_env, or use bearer_token_file/bearer_token_env or basic_auth with password_file/password_env"),
                "header_files: {X-Api-Key: /run/secrets/api-key}",
            ));
        }
    }
    for (field, raw) in [("url", Some(spec.url.as_str())), ("proxy", spec.proxy.as_deref())] {
        let password = raw
            .and_then(|r| Url::parse(r.trim()).ok())
            .is_some_and(|u| u.password().is_some());
        if password {
            found.push(ConfigError::new(
                at(field),
                format!("target {name:?}: the URL holds a password (user:pass@), which may not go into the targets topic; use basic_auth with password_file or password_env"),
                "https://api.example.com/health with basic_auth: {username: probe, password_file: /run/secrets/pw}",
            ));
        }
    }
    found
}

/// The field names of a struct that derives `Deserialize`, as its derive hands them to
/// `deserialize_struct` (so an unknown key, a typo, is told apart from a known field).
fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Fields(&'static [&'static str]);
    impl std::fmt::Display for Fields {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields")
        }
    }
    impl std::error::Error for Fields {}
    impl de::Error for Fields {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Self(&[])
        }
    }
    struct Probe;
    impl<'de> de::Deserializer<'de> for Probe {
        type Error = Fields;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    match T::deserialize(Probe) {
        Err(Fields(fields)) => fields,
        Ok(_) => &[],
    }
}

/// The single-target form of the tool this replaces: `TARGET`, `PATTERN`, `INTERVAL` (or
/// `DELAY`). Errors name the variable that holds the value.
fn single_target(env: &Env, url: &str, ctx: &Context<'_>) -> Result<Target, ConfigError> {
    let interval = match env.get_any(&["INTERVAL", "DELAY"]) {
        Some((var, v)) => Some(parse_positive_duration(var, v)?),
        None => None,
    };
    let spec = TargetSpec {
        url: url.to_string(),
        regex: env.get("PATTERN").map(str::to_string),
        interval,
        ..TargetSpec::default()
    };
    build(spec, ctx, &SingleNames)
}

/// How to name a field in an error: `TARGETS[3].timeout` or, in the single-target form, the
/// variable itself.
trait FieldNames {
    fn field(&self, field: &str) -> String;
}

struct ListNames<'a> {
    var: &'a str,
    index: usize,
}

impl FieldNames for ListNames<'_> {
    fn field(&self, field: &str) -> String {
        format!("{}[{}].{field}", self.var, self.index)
    }
}

/// A target of the targets topic: `KAFKA_TARGETS_TOPIC[api].timeout`.
struct TopicNames<'a> {
    name: &'a str,
}

impl FieldNames for TopicNames<'_> {
    fn field(&self, field: &str) -> String {
        format!("KAFKA_TARGETS_TOPIC[{}].{field}", self.name)
    }
}

struct SingleNames;

impl FieldNames for SingleNames {
    fn field(&self, field: &str) -> String {
        match field {
            "url" => "TARGET".into(),
            "regex" => "PATTERN".into(),
            "interval" => "INTERVAL".into(),
            other => format!("TARGET.{other}"),
        }
    }
}

/// Compiles `pattern` once per process: targets with the same pattern share one `Regex`
/// (its program and its pool of match caches, which serves every thread). A `Regex` clone
/// would share the program but bring its own pool, ≈2 KB with the cache it holds inline,
/// plus that cache's buffers once used: most of a target's memory when thousands of targets
/// check for the same body text.
fn compiled(pattern: &str) -> Result<Arc<Regex>, regex::Error> {
    static CACHE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Arc<Regex>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut cache = CACHE.lock().expect("lock");
    if let Some(r) = cache.get(pattern) {
        return Ok(r.clone());
    }
    let r = Arc::new(Regex::new(pattern)?);
    cache.insert(pattern.to_string(), r.clone());
    Ok(r)
}

/// `ConfigError` for `field` of the target `names` describes.
fn field_error(names: &dyn FieldNames, field: &str, problem: impl Into<String>, example: &str) -> ConfigError {
    ConfigError::new(names.field(field), problem, example)
}

fn build(spec: TargetSpec, ctx: &Context<'_>, names: &dyn FieldNames) -> Result<Target, ConfigError> {
    let err = |field: &str, problem: String, example: &str| field_error(names, field, problem, example);
    let has_auth_header = spec
        .headers
        .keys()
        .chain(spec.header_files.keys())
        .chain(spec.header_env.keys())
        .any(|k| k.eq_ignore_ascii_case("authorization"));
    let auth = auth_header(&spec, ctx, names)?;
    let (url, auth) = url_and_credentials(&spec.url, auth, has_auth_header, names)?;
    let name = spec.name.unwrap_or_else(|| url.as_str().to_string());
    if name.is_empty() || name.len() > 200 {
        return Err(err("name", "must be 1 to 200 characters".into(), "api"));
    }
    let method = match spec.method.as_deref() {
        None => Method::GET,
        Some(m) => Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| err("method", format!("{m:?} is not an HTTP method"), "GET"))?,
    };
    let interval = spec.interval.unwrap_or(ctx.defaults.interval);
    let timeout = spec.timeout.unwrap_or(ctx.defaults.timeout.min(interval));
    if timeout > interval {
        return Err(err(
            "timeout",
            format!("{timeout:?} is longer than the interval {interval:?}"),
            "5s",
        ));
    }
    let regex = |field: &str, r: &str| compiled(r).map_err(|e| err(field, format!("invalid regex: {e}"), "ok|healthy"));
    let body_regex = spec.regex.as_deref().map(|r| regex("regex", r)).transpose()?;
    let body_regex_not = spec
        .fail_if_body_matches
        .as_deref()
        .map(|r| regex("fail_if_body_matches", r))
        .transpose()?;
    let mut headers = request_headers(&spec.headers, names)?;
    let has_auth = spec.basic_auth.is_some() || spec.bearer_token_file.is_some() || spec.bearer_token_env.is_some();
    secret_headers(
        [&spec.header_files, &spec.header_env],
        has_auth,
        &mut headers,
        ctx,
        names,
    )?;
    let header_rules = header_rules(spec.fail_if_header_matches, spec.fail_if_header_not_matches, names)?;
    if let Some(auth) = auth {
        headers.insert(http::header::AUTHORIZATION, auth);
    }
    let tls_files = match ctx.references {
        References::Read => spec.tls.clone(),
        References::NotRead => TlsOptions {
            ca_file: None,
            cert_file: None,
            key_file: None,
            ..spec.tls.clone()
        },
    };
    let tls = tls::client_config(&tls_files).map_err(|p| err("tls", p, "{\"ca_file\":\"/etc/ssl/private-ca.pem\"}"))?;
    Ok(Target {
        name,
        url,
        method,
        headers,
        body: Bytes::from(spec.body.unwrap_or_default()),
        valid_status: valid_status(spec.valid_status_codes, names)?,
        body_regex,
        body_regex_not,
        header_rules,
        interval,
        timeout,
        follow_redirects: spec.follow_redirects.unwrap_or(true),
        max_redirects: spec.max_redirects.unwrap_or(10),
        tls,
        tls_server_name: spec.tls.server_name.clone(),
        ip_family: ip_family(spec.ip_family.as_deref(), names)?,
        proxy: proxy_mode(spec.proxy.as_deref(), &ctx.proxy_env, names)?,
        resolver: Resolver::system(),
        body_max_bytes: spec.body_max_bytes.map_or(ctx.defaults.body_max_bytes, NonZeroU64::get),
        quorum: spec.quorum,
        failure_threshold: spec.failure_threshold,
    })
}

/// The target's URL, without credentials, and the `Authorization` to send: `auth` (from
/// `basic_auth` or a bearer token) or the URL's own `user:pass@`.
///
/// `https://user:pass@host/` means basic auth (as curl and browsers read it). The credentials
/// leave the URL here, so the URL (and the default name, which is the metrics label and the
/// Kafka key) never carries them; errors show the URL without them too (they are logged).
fn url_and_credentials(
    raw: &str,
    auth: Option<HeaderValue>,
    has_auth_header: bool,
    names: &dyn FieldNames,
) -> Result<(Url, Option<HeaderValue>), ConfigError> {
    let err = |problem: String, example: &str| field_error(names, "url", problem, example);
    let shown = redact_userinfo(raw.trim());
    let mut url = Url::parse(raw.trim())
        .map_err(|e| err(format!("{shown:?} is not a URL: {e}"), "https://example.com/health"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(err(
            format!("{shown:?} must be an http:// or https:// URL with a host"),
            "https://example.com/health",
        ));
    }
    if url.username().is_empty() && url.password().is_none() {
        return Ok((url, auth));
    }
    if auth.is_some() || has_auth_header {
        return Err(err(
            format!("{shown:?} holds credentials and the target also sets basic_auth, a bearer token or an Authorization header; keep one"),
            "https://example.com/health with basic_auth",
        ));
    }
    let user = percent_decode(url.username());
    let password = percent_decode(url.password().unwrap_or(""));
    let auth = sensitive(&basic_credentials(&user, &password)).map_err(|()| {
        err(
            "the URL's credentials contain characters not allowed in a header".into(),
            "https://user:pass@example.com/",
        )
    })?;
    url.set_username("")
        .and_then(|()| url.set_password(None))
        .map_err(|()| {
            err(
                format!("{shown:?}: cannot remove the credentials"),
                "https://example.com/",
            )
        })?;
    Ok((url, Some(auth)))
}

/// `fail_if_header_matches` and `fail_if_header_not_matches`, compiled.
fn header_rules(
    matches: Vec<HeaderRuleSpec>,
    not_matches: Vec<HeaderRuleSpec>,
    names: &dyn FieldNames,
) -> Result<Vec<HeaderRule>, ConfigError> {
    let mut rules = Vec::new();
    for (field, fail_if_matches, specs) in [
        ("fail_if_header_matches", true, matches),
        ("fail_if_header_not_matches", false, not_matches),
    ] {
        for r in specs {
            let err = |problem: String, example: &str| field_error(names, field, problem, example);
            rules.push(HeaderRule {
                header: HeaderName::from_bytes(r.header.as_bytes())
                    .map_err(|_| err(format!("{:?} is not a header name", r.header), "content-type"))?,
                regex: compiled(&r.regex).map_err(|e| err(format!("invalid regex: {e}"), "ok|healthy"))?,
                fail_if_matches,
                allow_missing: r.allow_missing,
            });
        }
    }
    Ok(rules)
}

/// The target's own request headers; credential headers are marked sensitive.
fn request_headers(spec: &BTreeMap<String, String>, names: &dyn FieldNames) -> Result<HeaderMap, ConfigError> {
    let err = |problem: String| field_error(names, "headers", problem, "{\"accept\":\"application/json\"}");
    let mut headers = HeaderMap::new();
    for (k, v) in spec {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| err(format!("{k:?} is not a header name")))?;
        let mut value =
            HeaderValue::from_str(v).map_err(|_| err(format!("the value of {k:?} is not a valid header value")))?;
        value.set_sensitive(is_credential_header(&name));
        headers.append(name, value);
    }
    Ok(headers)
}

/// `header_files` and `header_env`: headers whose values are secrets referenced by a file or
/// a variable (read now, unless [`References::NotRead`]), always marked sensitive. A name may
/// be given once across `headers`, `header_files` and `header_env`, and `Authorization` not
/// with `basic_auth` or a bearer token.
fn secret_headers(
    [files, vars]: [&BTreeMap<String, String>; 2],
    has_auth: bool,
    headers: &mut HeaderMap,
    ctx: &Context<'_>,
    names: &dyn FieldNames,
) -> Result<(), ConfigError> {
    for (field, map, from_file) in [("header_files", files, true), ("header_env", vars, false)] {
        for (k, source) in map {
            let err = |problem: String, example: &str| {
                ConfigError::new(names.field(&format!("{field}.{k}")), problem, example)
            };
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| err(format!("{k:?} is not a header name"), "X-Api-Key"))?;
            if headers.contains_key(&name) {
                return Err(err(format!("header {k:?} is given twice; keep one"), "X-Api-Key"));
            }
            if name == http::header::AUTHORIZATION && has_auth {
                return Err(err(
                    "Authorization is also set by basic_auth, a bearer token or headers; keep one".into(),
                    "bearer_token_file",
                ));
            }
            let value = match ctx.references {
                References::NotRead => String::new(),
                References::Read if from_file => std::fs::read_to_string(source)
                    .map(|v| v.trim_end_matches(['\r', '\n']).to_string())
                    .map_err(|e| err(format!("cannot read {source:?}: {e}"), "/run/secrets/api-key"))?,
                References::Read => ctx
                    .env
                    .var(source)
                    .map(str::to_string)
                    .ok_or_else(|| err(format!("environment variable {source:?} is not set"), "API_KEY"))?,
            };
            let value = sensitive(&value).map_err(|()| {
                err(
                    "the value is not a valid header value".into(),
                    "a printable ASCII token",
                )
            })?;
            headers.insert(name, value);
        }
    }
    Ok(())
}

/// `valid_status_codes` as ranges; 200-299 when unset.
fn valid_status(
    spec: Option<Vec<StatusSpec>>,
    names: &dyn FieldNames,
) -> Result<Vec<RangeInclusive<u16>>, ConfigError> {
    match spec {
        None => Ok(vec![200..=299]),
        Some(list) if list.is_empty() => Err(field_error(
            names,
            "valid_status_codes",
            "must list at least one code",
            "[200, \"300-399\"]",
        )),
        Some(list) => list
            .iter()
            .map(|s| {
                parse_status(s).map_err(|p| field_error(names, "valid_status_codes", p, "[200, \"300-399\", \"4xx\"]"))
            })
            .collect(),
    }
}

fn ip_family(spec: Option<&str>, names: &dyn FieldNames) -> Result<IpFamily, ConfigError> {
    match spec.map(str::to_ascii_lowercase).as_deref() {
        None | Some("any") => Ok(IpFamily::Any),
        Some("ipv4" | "ip4" | "4") => Ok(IpFamily::Ipv4),
        Some("ipv6" | "ip6" | "6") => Ok(IpFamily::Ipv6),
        Some(other) => Err(field_error(
            names,
            "ip_family",
            format!("{other:?} is not any, ipv4 or ipv6"),
            "ipv4",
        )),
    }
}

/// `proxy`: `env` (the default: as the proxy environment says), `none`/`direct`, or a URL.
fn proxy_mode(spec: Option<&str>, proxy_env: &Arc<ProxyEnv>, names: &dyn FieldNames) -> Result<ProxyMode, ConfigError> {
    Ok(match spec {
        None | Some("env") if proxy_env.is_empty() => ProxyMode::Direct,
        None | Some("env") => ProxyMode::Env(proxy_env.clone()),
        Some("none" | "direct") => ProxyMode::Direct,
        Some(p) => ProxyMode::Http(parse_proxy_url(&names.field("proxy"), p)?),
    })
}
/// Whether a header carries a credential, so that it is marked sensitive (never logged) and
/// sent to the configured origin only: `Authorization`, `Proxy-Authorization`, `Cookie`, and
/// any name containing `auth`, `token`, `secret`, `key`, `password`, `session` or `credential`
/// (`X-Api-Key`, `X-Auth-Token`, …).
pub fn is_credential_header(name: &HeaderName) -> bool {
    const PARTS: [&str; 7] = ["auth", "token", "secret", "key", "password", "session", "credential"];
    let n = name.as_str();
    n == "cookie" || PARTS.iter().any(|p| n.contains(p))
}

/// `"Basic " + base64(user ":" password)` (RFC 7617).
fn basic_credentials(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn sensitive(v: &str) -> Result<HeaderValue, ()> {
    let mut hv = HeaderValue::from_str(v).map_err(|_| ())?;
    hv.set_sensitive(true);
    Ok(hv)
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// `raw` with the userinfo of its authority (`user:pass@`) replaced by `***@`, for messages
/// about a URL that may not even parse.
pub fn redact_userinfo(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://").map(|i| i + 3) else {
        return raw.to_string();
    };
    let rest = &raw[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &raw[..scheme_end], &rest[at..]),
        None => raw.to_string(),
    }
}

/// `Authorization` from `basic_auth` or a bearer token, read now from a file or a variable and
/// marked sensitive so it is never logged.
fn auth_header(
    spec: &TargetSpec,
    ctx: &Context<'_>,
    names: &dyn FieldNames,
) -> Result<Option<HeaderValue>, ConfigError> {
    let env = ctx.env;
    let read_secret = |field: &str,
                       file: &Option<String>,
                       var: &Option<String>,
                       inline: &Option<String>|
     -> Result<Option<String>, ConfigError> {
        if ctx.references == References::NotRead && (file.is_some() || var.is_some()) {
            return Ok(Some(String::new()));
        }
        if let Some(path) = file {
            let v = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    names.field(field),
                    format!("cannot read {path:?}: {e}"),
                    "/var/run/secrets/token",
                )
            })?;
            return Ok(Some(v.trim_end_matches(['\r', '\n']).to_string()));
        }
        if let Some(var) = var {
            let v = env.var(var).map(str::to_string).ok_or_else(|| {
                ConfigError::new(
                    names.field(field),
                    format!("environment variable {var:?} is not set"),
                    "API_TOKEN",
                )
            })?;
            return Ok(Some(v));
        }
        Ok(inline.clone())
    };
    let value = if let Some(b) = &spec.basic_auth {
        let password = read_secret("basic_auth", &b.password_file, &b.password_env, &b.password)?.unwrap_or_default();
        Some(basic_credentials(&b.username, &password))
    } else {
        read_secret("bearer_token", &spec.bearer_token_file, &spec.bearer_token_env, &None)?
            .map(|t| format!("Bearer {t}"))
    };
    value
        .map(|v| {
            let mut hv = HeaderValue::from_str(&v).map_err(|_| {
                ConfigError::new(
                    names.field("basic_auth"),
                    "credentials contain characters not allowed in a header",
                    "a printable ASCII token",
                )
            })?;
            hv.set_sensitive(true);
            Ok(hv)
        })
        .transpose()
}

fn parse_status(s: &StatusSpec) -> Result<RangeInclusive<u16>, String> {
    let valid = |c: u16| (100..=599).contains(&c);
    let range = match s {
        StatusSpec::Code(c) => *c..=*c,
        StatusSpec::Text(t) => {
            let t = t.trim().to_ascii_lowercase();
            // checked_mul: "700xx" is out of range, not an overflow.
            if let Some(class) = t.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok()) {
                let first = class
                    .checked_mul(100)
                    .ok_or_else(|| format!("{t:?} is not within 100-599"))?;
                first..=first.saturating_add(99)
            } else if let Some((a, b)) = t.split_once('-') {
                let a = a
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| format!("{t:?} is not a status code or range"))?;
                let b = b
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| format!("{t:?} is not a status code or range"))?;
                a..=b
            } else {
                let c = t
                    .parse::<u16>()
                    .map_err(|_| format!("{t:?} is not a status code or range"))?;
                c..=c
            }
        }
    };
    if !valid(*range.start()) || !valid(*range.end()) || range.start() > range.end() {
        return Err(format!("{range:?} is not within 100-599"));
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The service's defaults when no variable is set.
    fn defaults() -> Defaults {
        crate::config::target_defaults(&Env::default()).expect("the defaults are valid")
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Vec<Target>, ConfigError> {
        load_targets(&Env::from_pairs(pairs.iter().copied()), &defaults())
    }

    #[test]
    fn single_target_form() {
        let t = load(&[
            ("TARGET", "http://127.0.0.1:8000/x"),
            ("PATTERN", "o+k"),
            ("INTERVAL", "5"),
        ])
        .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "http://127.0.0.1:8000/x");
        assert_eq!(t[0].interval, Duration::from_secs(5));
        assert_eq!(
            t[0].timeout,
            Duration::from_secs(5),
            "timeout defaults to min(DEFAULT_TIMEOUT, interval)"
        );
        assert!(t[0].body_regex.as_ref().unwrap().is_match(b"ook"));
        let t = load(&[("TARGET", "http://h/"), ("DELAY", "7")]).unwrap();
        assert_eq!(t[0].interval, Duration::from_secs(7));
    }

    #[test]
    fn single_target_errors_name_the_variable() {
        assert_eq!(
            load(&[("TARGET", "http://h/"), ("INTERVAL", "abc")]).unwrap_err().var,
            "INTERVAL"
        );
        assert_eq!(load(&[("TARGET", "example.com/health")]).unwrap_err().var, "TARGET");
        assert_eq!(load(&[("TARGET", "ftp://h/")]).unwrap_err().var, "TARGET");
        assert_eq!(
            load(&[("TARGET", "http://h/"), ("PATTERN", "(")]).unwrap_err().var,
            "PATTERN"
        );
        assert_eq!(load(&[]).unwrap_err().var, "TARGETS");
    }

    #[test]
    fn json_list_with_options() {
        let json = r#"[{"name":"api","url":"https://h/health","regex":"ok","interval":"30s","timeout":"5s",
            "method":"post","headers":{"accept":"application/json"},"body":"{}","valid_status_codes":[200,"3xx","400-404"],
            "follow_redirects":false,"ip_family":"ipv6","proxy":"http://proxy:3128","fail_if_body_matches":"error",
            "fail_if_header_not_matches":[{"header":"content-type","regex":"json"}],
            "basic_auth":{"username":"u","password":"p"}}]"#;
        let t = &load(&[("TARGETS", json)]).unwrap()[0];
        assert_eq!(t.method, Method::POST);
        assert_eq!(t.valid_status, vec![200..=200, 300..=399, 400..=404]);
        assert!(!t.follow_redirects);
        assert_eq!(t.ip_family, IpFamily::Ipv6);
        assert_eq!(t.proxy, ProxyMode::Http(Url::parse("http://proxy:3128").unwrap()));
        let proxied = &load(&[(
            "TARGETS",
            r#"[{"url":"http://h/","proxy":"http://u:pr0xy-pw@proxy:3128"}]"#,
        )])
        .unwrap()[0];
        let shown = format!("{proxied:?}");
        assert!(
            !shown.contains("pr0xy-pw") && shown.contains("http://u:***@proxy:3128/"),
            "{shown}"
        );
        assert_eq!(t.header_rules.len(), 1);
        let auth = t.headers.get("authorization").unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth, "Basic dTpw");
        assert!(
            !format!("{t:?}").contains("dTpw"),
            "credentials must not be Debug-printed"
        );
    }

    /// Found while fuzzing the target list: a number of seconds too large for a `Duration`
    /// panicked, one that rounds to zero nanoseconds was accepted as a zero interval or
    /// timeout, and a status class like "700xx" overflowed.
    #[test]
    fn out_of_range_numbers_are_errors_naming_the_field() {
        for (json, field) in [
            (r#"[{"url":"http://a/","interval":1e20}]"#, "TARGETS[0].interval"),
            (r#"[{"url":"http://a/","interval":"1e20"}]"#, "TARGETS[0].interval"),
            (r#"[{"url":"http://a/","interval":1e-300}]"#, "TARGETS[0].interval"),
            (r#"[{"url":"http://a/","timeout":1e-12}]"#, "TARGETS[0].timeout"),
            (r#"[{"url":"http://a/","timeout":-1}]"#, "TARGETS[0].timeout"),
            (
                r#"[{"url":"http://a/","valid_status_codes":["700xx"]}]"#,
                "TARGETS[0].valid_status_codes",
            ),
            (
                r#"[{"url":"http://a/","valid_status_codes":["6xx"]}]"#,
                "TARGETS[0].valid_status_codes",
            ),
        ] {
            assert_eq!(load(&[("TARGETS", json)]).unwrap_err().var, field, "{json}");
        }
        let t = &load(&[("TARGETS", r#"[{"url":"http://a/","valid_status_codes":["5xx"]}]"#)]).unwrap()[0];
        assert_eq!(t.valid_status, vec![500..=599]);
    }

    #[test]
    fn list_errors_name_index_and_field() {
        let e = load(&[(
            "TARGETS",
            r#"[{"url":"http://a/"},{"url":"http://b/","timeout":"abc"}]"#,
        )])
        .unwrap_err();
        assert_eq!(e.var, "TARGETS[1].timeout");
        let e = load(&[("TARGETS", r#"[{"url":"http://a/","tmeout":"5s"}]"#)]).unwrap_err();
        assert_eq!(e.var, "TARGETS[0]");
        assert!(e.problem.contains("tmeout"), "{e}");
        let e = load(&[("TARGETS", r#"[{"url":"http://a/","interval":"5s","timeout":"10s"}]"#)]).unwrap_err();
        assert_eq!(e.var, "TARGETS[0].timeout");
        let e = load(&[(
            "TARGETS",
            r#"[{"name":"x","url":"http://a/"},{"name":"x","url":"http://b/"}]"#,
        )])
        .unwrap_err();
        assert!(e.problem.contains("used twice"), "{e}");
        let e = load(&[("TARGETS", r#"[{"url":"http://a/","valid_status_codes":["700"]}]"#)]).unwrap_err();
        assert_eq!(e.var, "TARGETS[0].valid_status_codes");
    }

    #[test]
    fn spec_fields_are_typed_naming_the_field() {
        let t = &load(&[("TARGETS", r#"[{"url":"http://a/","interval":"90","timeout":2.5}]"#)]).unwrap()[0];
        assert_eq!(
            (t.interval, t.timeout),
            (Duration::from_secs(90), Duration::from_millis(2500))
        );
        for (json, field) in [
            (
                r#"[{"url":"http://a/","interval":"5 fortnights"}]"#,
                "TARGETS[0].interval",
            ),
            (
                r#"[{"url":"http://a/"},{"url":"http://b/","timeout":"0s"}]"#,
                "TARGETS[1].timeout",
            ),
            (
                r#"[{"url":"http://a/","body_max_bytes":0}]"#,
                "TARGETS[0].body_max_bytes",
            ),
            (
                r#"[{"url":"http://a/","max_redirects":"many"}]"#,
                "TARGETS[0].max_redirects",
            ),
            // Not inside a known field: the entry.
            (r#"[{"url":"http://a/","intervall":"5s"}]"#, "TARGETS[0]"),
            (r#"[{"name":"no url"}]"#, "TARGETS[0]"),
            (r#"[{"url":"http://a/"}, 7]"#, "TARGETS[1]"),
            // Not a list at all: the variable.
            (r#"{"url":"http://a/"}"#, "TARGETS"),
            (r#"[{"url":"http://a/"}] trailing"#, "TARGETS"),
        ] {
            assert_eq!(load(&[("TARGETS", json)]).unwrap_err().var, field, "{json}");
        }
    }

    /// A credential named by `*_env` is read from the same snapshot as the rest of the
    /// configuration, not from the process environment.
    #[test]
    fn credential_variables_come_from_the_snapshot() {
        let json = r#"[{"url":"http://h/","bearer_token_env":"PROBE_TOKEN"}]"#;
        let t = &load(&[("TARGETS", json), ("PROBE_TOKEN", "t0k")]).unwrap()[0];
        assert_eq!(t.headers["authorization"], "Bearer t0k");
        assert_eq!(load(&[("TARGETS", json)]).unwrap_err().var, "TARGETS[0].bearer_token");
    }

    #[test]
    fn yaml_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets.yaml");
        std::fs::write(
            &path,
            "# comment\n- name: web\n  url: http://127.0.0.1:1/\n  interval: 10s\n  timeout: 2\n",
        )
        .unwrap();
        let t = load(&[("TARGETS_FILE", path.to_str().unwrap())]).unwrap();
        assert_eq!(t[0].name, "web");
        assert_eq!(t[0].timeout, Duration::from_secs(2));
        assert_eq!(
            load(&[("TARGETS_FILE", "/nonexistent.yaml")]).unwrap_err().var,
            "TARGETS_FILE"
        );
    }

    #[test]
    fn userinfo_is_redacted_even_in_urls_that_do_not_parse() {
        assert_eq!(redact_userinfo("https://u:p@h:1/x@y"), "https://***@h:1/x@y");
        assert_eq!(redact_userinfo("http://a@b:pw@h/"), "http://***@h/");
        assert_eq!(redact_userinfo("http://u:p@[::1/"), "http://***@[::1/");
        assert_eq!(redact_userinfo("http://h/?q=a@b"), "http://h/?q=a@b");
        assert_eq!(redact_userinfo("not a url"), "not a url");
    }

    #[test]
    fn credential_headers_are_marked_sensitive() {
        let t = &load(&[(
            "TARGETS",
            r#"[{"url":"http://h/","headers":{"Cookie":"s=1","X-Api-Key":"k","X-Auth-Token":"t","Accept":"*/*"}}]"#,
        )])
        .unwrap()[0];
        for name in ["cookie", "x-api-key", "x-auth-token"] {
            assert!(t.headers[name].is_sensitive(), "{name}");
        }
        assert!(!t.headers["accept"].is_sensitive());
    }
    fn list(json: &str) -> Result<Vec<Listed>, Vec<ConfigError>> {
        let specs: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
        read_list("TARGETS_FILE", specs, &Env::default(), &defaults())
    }

    /// `checker targets validate` lists every problem: one per broken entry, and one per
    /// repeated name, in list order.
    #[test]
    fn every_problem_of_a_list_is_reported() {
        let errors = list(
            r#"[{"name":"a","url":"http://a/","timeout":"soon"},
                {"name":"b","url":"http://b/"},
                {"name":"c","uri":"http://c/"},
                {"name":"b","url":"http://b2/"},
                {"name":"e","url":"ftp://e/"}]"#,
        )
        .unwrap_err();
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "TARGETS_FILE[0].timeout",
                "TARGETS_FILE[2]",
                "TARGETS_FILE[3].name",
                "TARGETS_FILE[4].url"
            ]
        );
        assert!(errors[2].problem.contains("TARGETS_FILE[1]"), "{}", errors[2]);
        let ok = list(r#"[{"name":"a","url":"http://a/","quorum":2},{"url":"http://b/"}]"#).unwrap();
        assert_eq!(ok[0].target.quorum, NonZeroU32::new(2));
        assert_eq!((ok[1].target.quorum, ok[1].origin.as_str()), (None, "TARGETS_FILE[1]"));
        let e = list(r#"[{"url":"http://a/","quorum":0}]"#).unwrap_err();
        assert_eq!(e[0].var, "TARGETS_FILE[0].quorum");
        let ok = list(r#"[{"name":"a","url":"http://a/","failure_threshold":3},{"url":"http://b/"}]"#).unwrap();
        assert_eq!(ok[0].target.failure_threshold, NonZeroU32::new(3));
        assert_eq!(ok[1].target.failure_threshold, None);
        for bad in ["0", "-1", "\"2\"", "1.5"] {
            let e = list(&format!(r#"[{{"url":"http://a/","failure_threshold":{bad}}}]"#)).unwrap_err();
            assert_eq!(e[0].var, "TARGETS_FILE[0].failure_threshold", "{bad}");
        }
        // The service's start-up reports the first and says how many more there are.
        let e = load(&[("TARGETS", r#"[{"url":"ftp://a/"},{"url":"ftp://b/"}]"#)]).unwrap_err();
        assert_eq!(e.var, "TARGETS[0].url");
        assert!(e.problem.contains("1 more"), "{e}");
    }

    #[test]
    fn a_topic_value_is_one_entry_of_the_file_schema() {
        let env = Env::default();
        let t = target_from_json(
            "api",
            br#"{"url":"http://a/","interval":"1m","quorum":2,"failure_threshold":4}"#,
            &env,
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            (t.name.as_str(), t.interval, t.quorum, t.failure_threshold),
            ("api", Duration::from_secs(60), NonZeroU32::new(2), NonZeroU32::new(4))
        );
        let t = target_from_json("api", br#"{"name":"api","url":"http://a/"}"#, &env, &defaults()).unwrap();
        assert_eq!(t.interval, Duration::from_secs(30), "the consumer's defaults");
        for (value, var) in [
            (
                &br#"{"name":"web","url":"http://a/"}"#[..],
                "KAFKA_TARGETS_TOPIC[api].name",
            ),
            (
                br#"{"url":"http://a/","timeout":"x"}"#,
                "KAFKA_TARGETS_TOPIC[api].timeout",
            ),
            (br#"{"url":"http://a/","tmeout":"5s"}"#, "KAFKA_TARGETS_TOPIC[api]"),
            (b"not json", "KAFKA_TARGETS_TOPIC[api]"),
        ] {
            let e = target_from_json("api", value, &env, &defaults()).unwrap_err();
            assert_eq!(e.var, var, "{}", String::from_utf8_lossy(value));
        }
    }

    /// `header_files`/`header_env`: a credential header referenced, not inline, so it may go
    /// into the targets topic.
    #[test]
    fn secret_headers_come_from_files_and_variables() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k3y\n").unwrap();
        let json = format!(
            r#"[{{"url":"http://h/","header_files":{{"X-Api-Key":{:?}}},"header_env":{{"Cookie":"COOKIE"}}}}]"#,
            key.display().to_string()
        );
        let t = &load(&[("TARGETS", json.as_str()), ("COOKIE", "s=1")]).unwrap()[0];
        assert_eq!(
            (&t.headers["x-api-key"], &t.headers["cookie"]),
            (
                &"k3y".parse::<HeaderValue>().unwrap(),
                &"s=1".parse::<HeaderValue>().unwrap()
            )
        );
        assert!(t.headers["x-api-key"].is_sensitive() && t.headers["cookie"].is_sensitive());
        assert_eq!(
            load(&[("TARGETS", json.as_str())]).unwrap_err().var,
            "TARGETS[0].header_env.Cookie"
        );
        for (json, var) in [
            (
                r#"[{"url":"http://h/","header_files":{"X-K":"/nonexistent"}}]"#,
                "TARGETS[0].header_files.X-K",
            ),
            (
                r#"[{"url":"http://h/","headers":{"X-K":"a"},"header_env":{"x-k":"V"}}]"#,
                "TARGETS[0].header_env.x-k",
            ),
            (
                r#"[{"url":"http://h/","bearer_token_env":"V","header_env":{"Authorization":"V"}}]"#,
                "TARGETS[0].header_env.Authorization",
            ),
            (
                r#"[{"url":"http://u:p@h/","header_env":{"Authorization":"V"}}]"#,
                "TARGETS[0].url",
            ),
        ] {
            assert_eq!(load(&[("TARGETS", json), ("V", "x")]).unwrap_err().var, var, "{json}");
        }
        // Judged for the topic: nothing is read, and nothing is an inline secret.
        let specs: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"name":"a","url":"http://h/","header_files":{"X-Api-Key":"/run/secrets/not-here"}}]"#,
        )
        .unwrap();
        let (env, defaults) = (Env::default(), defaults());
        let ctx = Context {
            references: References::NotRead,
            ..Context::new(&env, &defaults)
        };
        let listed = list_with("TARGETS_FILE", specs, &ctx).unwrap();
        assert!(inline_secrets(&listed[0]).is_empty());
    }

    #[test]
    fn inline_secrets_are_found_by_field() {
        let found = |json: &str| -> Vec<String> {
            let env = Env::from_pairs([("PW", "x")]);
            let specs: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
            let listed = read_list("TARGETS_FILE", specs, &env, &defaults()).unwrap();
            listed.iter().flat_map(inline_secrets).map(|e| e.var).collect()
        };
        assert_eq!(
            found(
                r#"[{"name":"a","url":"http://u:p@a/"},
                    {"name":"b","url":"http://b/","basic_auth":{"username":"u","password":"p"}},
                    {"name":"c","url":"http://c/","headers":{"X-Api-Key":"k","Accept":"*/*"}},
                    {"name":"d","url":"http://d/","proxy":"http://u:p@proxy:3128"}]"#
            ),
            [
                "TARGETS_FILE[0].url",
                "TARGETS_FILE[1].basic_auth.password",
                "TARGETS_FILE[2].headers.X-Api-Key",
                "TARGETS_FILE[3].proxy"
            ]
        );
        assert!(found(
            r#"[{"name":"a","url":"http://user@a/","proxy":"http://proxy:3128"},
                {"name":"b","url":"http://b/","basic_auth":{"username":"u","password_env":"PW"}}]"#
        )
        .is_empty());
    }
}
