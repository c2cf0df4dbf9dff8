//! The admin HTTP server every service runs: `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz` is liveness: 200 while every registered loop has ticked recently. It never
//!   touches a dependency, so a database or broker blip does not make Kubernetes restart pods.
//! - `/readyz` is readiness: 200 while the service's own dependency checks pass, 503 with the
//!   reason otherwise. The state is set by the service (see [`Health::set_ready`]); a request
//!   never waits on a dependency.
//! - `/metrics` is the Prometheus text exposition format (version 0.0.4) of the given
//!   [`Exposition`] (a `Registry`, or a service's own that adds series rendered without one).
//!   It is written on a blocking thread and streamed out in chunks of [`METRICS_CHUNK`] bytes
//!   (chunked transfer encoding), so a scrape of a 10,000-target checker (~7.7 MB) neither
//!   holds its whole text in memory nor holds a runtime worker while it is written.
//!
//! [`readiness_loop`] is the loop both services run to keep the readiness state current.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What `/metrics` serves: metrics written in the Prometheus text exposition format
/// (version 0.0.4, <https://prometheus.io/docs/instrumenting/exposition_formats/>).
pub trait Exposition: Send + Sync + 'static {
    /// Writes the exposition text of every metric to `out`, in order. Called on a blocking
    /// thread; `out` is the response body, so the text need not be built in memory first.
    ///
    /// # Errors
    /// The encoder's (a metric family that is not valid), or `out`'s (the scraper went away).
    fn encode(&self, out: &mut dyn Write) -> prometheus::Result<()>;
}

impl Exposition for Registry {
    fn encode(&self, mut out: &mut dyn Write) -> prometheus::Result<()> {
        TextEncoder::new().encode(&self.gather(), &mut out)
    }
}

/// The size of the chunks `/metrics` is sent in, bytes: two are in memory at most (one
/// written, one queued), plus the one hyper is sending.
pub const METRICS_CHUNK: usize = 64 * 1024;

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
    let metrics: Arc<dyn Exposition> = Arc::new(metrics);
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
                let resp = route(&req, &health, &metrics);
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

/// `/metrics`' body: the chunks a blocking thread writes `metrics`' exposition in, as they
/// come. An encoder error ends the body with that error (the status line is sent by then, so
/// the scraper sees a broken response, not a truncated text that parses); a scraper that goes
/// away makes the writer fail, which stops the encoding.
fn metrics_body(metrics: &Arc<dyn Exposition>) -> BoxBody<Bytes, std::io::Error> {
    let (tx, rx) = mpsc::channel(1);
    let metrics = metrics.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            chunk: Vec::with_capacity(METRICS_CHUNK),
            tx,
        };
        let written = metrics
            .encode(&mut out)
            .map_err(|e| match e {
                prometheus::Error::Io(e) => e,
                e => std::io::Error::other(e.to_string()),
            })
            .and_then(|()| out.send());
        if let Err(e) = written {
            // Nobody to tell when the scraper went away (the send fails then too).
            let _ = out.tx.blocking_send(Err(e));
        }
    });
    BoxBody::new(ChunkBody { rx })
}

/// An `io::Write` that sends what it is given in chunks of [`METRICS_CHUNK`] bytes.
struct ChunkWriter {
    chunk: Vec<u8>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

impl ChunkWriter {
    /// Sends the chunk written so far (none when empty).
    fn send(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(METRICS_CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the scraper went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.chunk.extend_from_slice(buf);
        if self.chunk.len() >= METRICS_CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The receiving end of a [`ChunkWriter`] as a response body.
struct ChunkBody {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
}

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }
}

fn route(
    req: &Request<Incoming>,
    health: &Health,
    metrics: &Arc<dyn Exposition>,
) -> Response<BoxBody<Bytes, std::io::Error>> {
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
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
            .body(metrics_body(metrics))
            .expect("static response"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz or /metrics\n".to_string(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<BoxBody<Bytes, std::io::Error>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
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

    /// An exposition of `lines` numbered lines, or one that fails after `fail_after` lines;
    /// `done` is set when `encode` returns, with what it returned.
    struct Lines {
        lines: usize,
        fail_after: Option<usize>,
        done: Arc<Mutex<Option<Result<(), String>>>>,
    }

    impl Exposition for Lines {
        fn encode(&self, out: &mut dyn Write) -> prometheus::Result<()> {
            let result = (|| {
                for i in 0..self.lines {
                    if Some(i) == self.fail_after {
                        return Err(prometheus::Error::Msg("family 7 is not valid".into()));
                    }
                    writeln!(out, "line_{i} {i}")?;
                }
                Ok(())
            })();
            *self.done.lock().unwrap() = Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            result
        }
    }

    async fn serve_lines(
        lines: usize,
        fail_after: Option<usize>,
    ) -> (SocketAddr, Arc<Mutex<Option<Result<(), String>>>>) {
        let done = Arc::new(Mutex::new(None));
        let exposition = Lines {
            lines,
            fail_after,
            done: done.clone(),
        };
        let (addr, fut) = serve(
            "127.0.0.1:0".parse().unwrap(),
            Health::new(Duration::from_secs(60)),
            exposition,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        tokio::spawn(fut);
        (addr, done)
    }

    async fn get_metrics(addr: SocketAddr) -> hyper::Response<Incoming> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/metrics")
            .header("host", "x")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        s.send_request(req).await.unwrap()
    }

    #[tokio::test]
    async fn a_long_exposition_arrives_whole_in_chunks() {
        // ~2 MB: about 30 chunks
        let lines = 120_000;
        let (addr, done) = serve_lines(lines, None).await;
        let resp = get_metrics(addr).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], prometheus::TEXT_FORMAT);
        assert!(
            resp.headers().get(header::CONTENT_LENGTH).is_none(),
            "streamed, so no length is known up front"
        );
        let mut body = resp.into_body();
        let (mut text, mut frames, mut largest) = (Vec::new(), 0, 0);
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            frames += 1;
            largest = largest.max(data.len());
            text.extend_from_slice(&data);
        }
        let expected: String = (0..lines).map(|i| format!("line_{i} {i}\n")).collect();
        assert_eq!(String::from_utf8(text).unwrap(), expected);
        assert!(frames > 10, "{frames} frames");
        assert!(largest < 2 * METRICS_CHUNK, "a frame of {largest} bytes");
        assert_eq!(*done.lock().unwrap(), Some(Ok(())));
    }

    #[tokio::test]
    async fn an_encoder_error_breaks_the_body_instead_of_ending_it() {
        let (addr, done) = serve_lines(100_000, Some(50_000)).await;
        let resp = get_metrics(addr).await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "the status line went out before the error"
        );
        let collected = resp.into_body().collect().await;
        assert!(collected.is_err(), "a truncated exposition must not look complete");
        let ended = done.lock().unwrap().clone();
        assert!(
            matches!(&ended, Some(Err(e)) if e.contains("family 7 is not valid")),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn a_scraper_that_goes_away_stops_the_encoding() {
        // far more than the socket buffers hold: the writer blocks until the scraper reads
        let (addr, done) = serve_lines(10_000_000, None).await;
        let resp = get_metrics(addr).await;
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(result) = done.lock().unwrap().clone() {
                    return result;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the encoding stops once the scraper is gone");
        assert!(ended.unwrap_err().contains("went away"));
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
