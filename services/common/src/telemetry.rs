//! Structured logs (tracing) and the `*_build_info` metric.

use std::io::IsTerminal;

use crate::config::ConfigError;

/// Log output format, from `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON unless standard output is a terminal.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

impl LogFormat {
    /// Parses `auto`, `json` or `text`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `LOG_FORMAT`.
    pub fn parse(v: Option<&str>) -> Result<Self, ConfigError> {
        match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("auto") => Ok(Self::Auto),
            Some("json") => Ok(Self::Json),
            Some("text") => Ok(Self::Text),
            Some(other) => Err(ConfigError::new(
                "LOG_FORMAT",
                format!("{other:?} is not auto, json or text"),
                "json",
            )),
        }
    }
}

/// The log filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,librdkafka=warn,rdkafka=warn,refinery_core=warn,tokio_postgres=warn";

/// The log filter of `RUST_LOG`'s value (tracing-subscriber's `EnvFilter` directives, e.g.
/// `info,sink=debug`), or [`DEFAULT_FILTER`] when it is unset.
///
/// # Errors
/// A [`ConfigError`] naming `RUST_LOG` when a directive does not parse (e.g. an unknown level).
pub fn filter(value: Option<&str>) -> Result<tracing_subscriber::EnvFilter, ConfigError> {
    let Some(v) = value else {
        return Ok(tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(v)
        .map_err(|e| ConfigError::new("RUST_LOG", format!("{v:?} is not a log filter: {e}"), "info,sink=debug"))
}

/// Installs the global tracing subscriber with `filter` (see [`filter`]). Logs go to
/// standard error. Calling it twice is harmless (the second call does nothing).
pub fn init(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Registers `<namespace>_build_info{version, revision}` = 1 in `registry` (the convention of
/// Prometheus' own exporters).
pub fn register_build_info(registry: &prometheus::Registry, namespace: &str, version: &str) {
    let opts = prometheus::Opts::new(
        format!("{namespace}_build_info"),
        "A metric with a constant '1' value labelled by the version from which the service was built.",
    )
    .const_label("version", version)
    .const_label("revision", option_env!("GIT_REVISION").unwrap_or("unknown"));
    let g = prometheus::IntGauge::with_opts(opts).expect("valid build_info metric");
    g.set(1);
    registry.register(Box::new(g)).expect("build_info registered once");
}

/// Registers `<namespace>_runtime_worker_threads`: the worker threads of the tokio runtime
/// this is called in (`WORKER_THREADS`, or one per CPU); not registered outside a runtime.
pub fn register_runtime_workers(registry: &prometheus::Registry, namespace: &str) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let g = prometheus::IntGauge::new(
        format!("{namespace}_runtime_worker_threads"),
        "Worker threads of the async runtime (blocking threads and librdkafka's are not counted).",
    )
    .expect("valid runtime_worker_threads metric");
    g.set(runtime.metrics().num_workers() as i64);
    registry
        .register(Box::new(g))
        .expect("runtime_worker_threads registered once");
}

/// Formats an error with its whole cause chain: `outer: middle: inner`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}
