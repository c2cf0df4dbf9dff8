//! The admin HTTP server every service runs: `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz` is liveness: 200 while every registered loop has ticked recently. It never
//!   touches a dependency, so a database or broker blip does not make Kubernetes restart pods.
//! - `/readyz` is readiness: 200 while the service's own dependency checks pass, 503 with the
//!   reason otherwise. The state is set by the service (see [`Health::set_ready`]); a request
//!   never waits on a dependency.
//! - `/metrics` is the Prometheus text exposition format (version 0.0.4) of the given
//!   [`Exposition`] (a `Registry`, or a service's own that adds series rendered without one).
//!
//! [`readiness_loop`] is the loop both services run to keep the readiness state current.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/metrics` serves: metrics written in the Prometheus text exposition format
/// (version 0.0.4, <https://prometheus.io/docs/instrumenting/exposition_formats/>).
pub trait Exposition: Send + Sync + 'static {
    /// Appends the exposition text of every metric to `out`.
    ///
    /// # Errors
    /// The encoder's (a metric family that is not valid).
    fn encode(&self, out: &mut Vec<u8>) -> prometheus::Result<()>;
}

impl Exposition for Registry {
    fn encode(&self, out: &mut Vec<u8>) -> prometheus::Result<()> {
        TextEncoder::new().encode(&self.gather(), out)
    }
}

/// Liveness and readiness state shared between a service's loops and its admin server.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    stall_after: Duration,
    loops: Mutex<Vec<(String, Heartbeat)>>,
    ready: Mutex<Result<(), String>>,
}

/// A handle a loop uses to say "I am still turning". Cheap to clone.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    started: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// Records a turn of the loop now.
    pub fn beat(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Health {
    /// New state: not ready (with `"starting"` as the reason) and no loops registered. A loop
    /// that has not beaten for `stall_after` makes `/healthz` fail.
    pub fn new(stall_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            stall_after,
            loops: Mutex::new(Vec::new()),
            ready: Mutex::new(Err("starting".to_string())),
        })
    }

    /// Registers a loop named `name` and returns its heartbeat, which counts as beaten now.
    pub fn heartbeat(&self, name: &str) -> Heartbeat {
        let hb = Heartbeat {
            started: self.started,
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        hb.beat();
        self.loops
            .lock()
            .expect("health lock")
            .push((name.to_string(), hb.clone()));
        hb
    }

    /// Liveness: `Err` names the loops that have not beaten within `stall_after`.
    pub fn live(&self) -> Result<(), String> {
        let loops = self.loops.lock().expect("health lock");
        let stalled: Vec<String> = loops
            .iter()
            .filter(|(_, hb)| hb.age() > self.stall_after)
            .map(|(n, hb)| format!("{n} stalled for {:.0}s", hb.age().as_secs_f64()))
            .collect();
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(stalled.join(", "))
        }
    }

    /// Sets readiness; `Err` carries the reason shown by `/readyz`.
    pub fn set_ready(&self, state: Result<(), String>) {
        let mut ready = self.ready.lock().expect("health lock");
        if *ready != state {
            match &state {
                Ok(()) => tracing::info!("Service is ready."),
                Err(reason) => tracing::warn!(reason = %reason, "Service is not ready."),
            }
            *ready = state;
        }
    }

    /// Current readiness.
    pub fn ready(&self) -> Result<(), String> {
        self.ready.lock().expect("health lock").clone()
    }
}

/// How often the services check their dependencies for readiness.
pub const READINESS_INTERVAL: Duration = Duration::from_secs(2);

/// A readiness check: `Ok` when the service's dependencies are reachable, `Err(reason)`
/// (shown by `/readyz`) otherwise. A closure returning such a future is a check; a check that
/// keeps state between calls implements it with `async fn check(&mut self)`.
pub trait Check: Send {
    /// Checks the dependencies once.
    fn check(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

impl<F, Fut> Check for F
where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Result<(), String>> + Send,
{
    fn check(&mut self) -> impl Future<Output = Result<(), String>> + Send {
        self()
    }
}

/// The readiness loop: runs `check` every `interval` (after the previous check ended) and
/// sets `health`'s readiness from it, until `stop` is cancelled. It beats a heartbeat named
/// `readiness`, registered when this is called (so liveness watches it from then on), after
/// every check.
pub fn readiness_loop(
    health: Arc<Health>,
    interval: Duration,
    stop: CancellationToken,
    mut check: impl Check + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let heartbeat = health.heartbeat("readiness");
    async move {
        loop {
            health.set_ready(check.check().await);
            heartbeat.beat();
            if crate::shutdown::until_cancelled(&stop, tokio::time::sleep(interval))
                .await
                .is_none()
            {
                break;
            }
        }
    }
}

/// Binds the admin server to `addr` (port 0 picks a free port) and serves it on a tokio task
/// until the returned token is cancelled: the seam both services' `App::build` use.
///
/// # Errors
/// The bind error (address in use, permission denied).
pub async fn start(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: impl Exposition,
) -> std::io::Result<(SocketAddr, CancellationToken)> {
    let stop = CancellationToken::new();
    let (bound, serving) = serve(addr, health, metrics, stop.clone()).await?;
    tokio::spawn(serving);
    Ok((bound, stop))
}

/// Binds the admin server to `addr` (port 0 picks a free port) and returns the bound address
/// and the future that serves until `shutdown` is cancelled.
///
/// # Errors
/// The bind error (address in use, permission denied).
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: impl Exposition,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()> + Send + 'static)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let metrics = Arc::new(MetricsEndpoint {
        metrics,
        last_len: AtomicUsize::new(0),
    });
    let fut = async move {
        loop {
            let (stream, _) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "Admin server accept failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let health = health.clone();
            let metrics = metrics.clone();
            let service = hyper::service::service_fn(move |req| {
                let resp = route(&req, &health, &*metrics);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "Admin connection ended with an error.");
                }
            });
        }
    };
    Ok((bound, fut))
}

/// `/metrics`' state: what it serves and the length of the last exposition, so that the
/// next one is written into a buffer of the right size at once (a 10,000-target checker's is
/// several MB; growing it by doubling would copy it over and over and leave the halves to
/// the allocator).
struct MetricsEndpoint<E> {
    metrics: E,
    last_len: AtomicUsize,
}

impl<E: Exposition> MetricsEndpoint<E> {
    fn render(&self) -> prometheus::Result<Vec<u8>> {
        let last = self.last_len.load(Ordering::Relaxed);
        let mut buf = Vec::with_capacity((last + last / 16).max(16 * 1024));
        self.metrics.encode(&mut buf)?;
        self.last_len.store(buf.len(), Ordering::Relaxed);
        Ok(buf)
    }
}

fn route<E: Exposition>(
    req: &Request<Incoming>,
    health: &Health,
    metrics: &MetricsEndpoint<E>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_string());
    }
    match req.uri().path() {
        "/healthz" => match health.live() {
            Ok(()) => text(StatusCode::OK, "ok\n".to_string()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/readyz" => match health.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_string()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        },
        "/metrics" => {
            let buf = match metrics.render() {
                Ok(buf) => buf,
                Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            };
            Response::builder()
                .header(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
                .body(Full::new(Bytes::from(buf)))
                .expect("static response")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz or /metrics\n".to_string(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

/// The container self-check (`checker healthcheck`, `sink healthcheck`): GETs `/healthz` on the
/// loopback interface at `admin_addr`'s port and returns whether it answered 200 within 3 s.
/// Images without a shell or curl use this as their compose healthcheck.
pub async fn self_check(admin_addr: SocketAddr) -> Result<(), String> {
    let ip = if admin_addr.ip().is_unspecified() {
        match admin_addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        }
    } else {
        admin_addr.ip()
    };
    let addr = SocketAddr::new(ip, admin_addr.port());
    let check = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get("/healthz")
            .header(header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("static request");
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&body).trim()))
        }
    };
    tokio::time::timeout(Duration::from_secs(3), check)
        .await
        .map_err(|_| "timed out after 3s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_readiness_loop_follows_its_check_until_stopped() {
        let health = Health::new(Duration::from_secs(60));
        let stop = CancellationToken::new();
        let calls = Arc::new(AtomicU64::new(0));
        let check = {
            let calls = calls.clone();
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(format!("check {n} failed"))
                    } else {
                        Ok(())
                    }
                }
            }
        };
        let task = tokio::spawn(readiness_loop(
            health.clone(),
            Duration::from_millis(5),
            stop.clone(),
            check,
        ));
        assert_eq!(
            health.ready(),
            Err("starting".to_string()),
            "nothing checked before the task runs"
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            while calls.load(Ordering::SeqCst) < 4 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the check runs every interval");
        assert_eq!(health.ready(), Ok(()));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the loop ends on stop")
            .unwrap();
        let after = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(calls.load(Ordering::SeqCst), after, "no check after stop");
    }

    #[tokio::test]
    async fn endpoints_answer_by_state() {
        let health = Health::new(Duration::from_millis(200));
        let hb = health.heartbeat("loop");
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("demo_total", "demo").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc();
        let token = CancellationToken::new();
        let (addr, fut) = serve("127.0.0.1:0".parse().unwrap(), health.clone(), registry, token.clone())
            .await
            .unwrap();
        tokio::spawn(fut);

        let get = |path: &'static str| async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::get(path)
                .header("host", "x")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let resp = s.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };

        assert_eq!(get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        health.set_ready(Ok(()));
        assert_eq!(get("/readyz").await.0, StatusCode::OK);
        assert_eq!(get("/healthz").await.0, StatusCode::OK);
        assert!(self_check(addr).await.is_ok());
        let (status, body) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("demo_total 1"), "{body}");
        assert_eq!(get("/nope").await.0, StatusCode::NOT_FOUND);

        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, body) = get("/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("loop stalled"), "{body}");
        assert!(self_check(addr).await.is_err());
        hb.beat();
        assert_eq!(get("/healthz").await.0, StatusCode::OK);
        token.cancel();
    }
}
