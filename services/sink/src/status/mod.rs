//! The status page and its JSON API (issue #10), on the sink's own listener `STATUS_ADDR`
//! (default `0.0.0.0:8080`), apart from the admin server: the admin port is for probes and
//! scrapes (a network policy opens it to monitoring only), this one is for people.
//!
//! Routes (GET or HEAD):
//! - `/` the overview: every target, its state per location and the quorum verdict, uptime
//!   over 24 h / 7 d / 30 d, latency p50/p95, the last error kind and a bar of the last 90
//!   buckets (`?bucket=hour|day`); it reloads itself (`<meta http-equiv="refresh">`,
//!   `?refresh=SECONDS`, default [`DEFAULT_REFRESH_SECONDS`]).
//! - `/targets/{name}` one target: latency by phase over time, the recent slots, incidents,
//!   TLS expiry, the last failures with their error text, maintenance windows.
//! - `/api/v1/targets`, `/api/v1/targets/{name}`, `/api/v1/incidents`
//!   (`?target=&since=&open=&limit=`): JSON of [`crate::store::status`]'s types, described
//!   by `services/sink/openapi.yaml`, served at `/api/v1/openapi.yaml`.
//!
//! `{name}` is percent-decoded (names may hold spaces, slashes, any Unicode). An unknown
//! target is a 404, a bad parameter a 400 naming it, an unreachable database a 503 (the
//! store's read-only pool gives up on a connection or a statement within seconds; the whole
//! request is bounded by [`REQUEST_TIMEOUT`]). JSON routes answer errors as
//! `{"error": "..."}`, pages as HTML.
//!
//! Files: [`routes`] (routing, parameters, responses), [`html`] (the pages: maud templates,
//! which escape every interpolated value, and inline SVG charts). Only [`crate::store`]
//! issues SQL: the server calls the read methods of [`crate::store::status`].

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

pub mod html;
pub mod routes;

/// The status server's metrics, registered in the sink's registry (served on the admin
/// server's `/metrics`).
#[derive(Clone)]
pub struct StatusMetrics {
    /// `healthcheck_sink_status_requests_total{route, code}`: requests answered, by route
    /// ([`routes::Route::label`], or `unknown`) and HTTP status code.
    pub requests: prometheus::IntCounterVec,
    /// `healthcheck_sink_status_request_duration_seconds{route}`: time to answer, seconds.
    pub duration: prometheus::HistogramVec,
}

/// Every `route` label value of [`StatusMetrics`].
pub const ROUTE_LABELS: &[&str] = &[
    "overview",
    "target_page",
    "api_targets",
    "api_target",
    "api_incidents",
    "openapi",
    "unknown",
];

impl StatusMetrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// A metric of the same name is already registered.
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "healthcheck_sink_status_requests_total",
                "Requests the status page and JSON API answered, by route and HTTP status code.",
            ),
            &["route", "code"],
        )?;
        let duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "healthcheck_sink_status_request_duration_seconds",
                "Time the status page and JSON API took to answer, by route.",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0]),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        for r in ROUTE_LABELS {
            duration.with_label_values(&[r]);
            requests.with_label_values(&[r, "200"]);
        }
        Ok(Self { requests, duration })
    }
}

/// The PostgreSQL `statement_timeout` of the status server's reads: a page that would wait
/// longer answers 503 instead.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a request may take (pool wait, connection, statements): then 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How often the pages reload themselves by default, seconds.
pub const DEFAULT_REFRESH_SECONDS: u32 = 30;

/// The JSON API's description (OpenAPI 3.0), served at `/api/v1/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// Binds the status server to `addr` (port 0 picks a free port) and serves it on a tokio
/// task until the returned token is cancelled. `store` should be a [`Store::read_only`] one;
/// `metrics`, when given, counts and times every request.
///
/// # Errors
/// The bind error (address in use, permission denied).
pub async fn start(
    addr: SocketAddr,
    store: Store,
    metrics: Option<StatusMetrics>,
) -> std::io::Result<(SocketAddr, CancellationToken)> {
    let stop = CancellationToken::new();
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, store, metrics, stop.clone()));
    Ok((bound, stop))
}

/// Accepts connections on `listener` until `stop`; each on its own task.
async fn serve(listener: TcpListener, store: Store, metrics: Option<StatusMetrics>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Status server accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (store, metrics) = (store.clone(), metrics.clone());
        let service = hyper::service::service_fn(move |req| {
            let (store, metrics) = (store.clone(), metrics.clone());
            async move {
                let started = std::time::Instant::now();
                let resp = routes::handle(&store, &req).await;
                if let Some(m) = &metrics {
                    let route = routes::route(req.uri().path())
                        .ok()
                        .flatten()
                        .map_or("unknown", |r| r.label());
                    m.requests.with_label_values(&[route, resp.status().as_str()]).inc();
                    m.duration
                        .with_label_values(&[route])
                        .observe(started.elapsed().as_secs_f64());
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "Status connection ended with an error.");
                },
                () = stop.cancelled() => {}
            }
        });
    }
}
