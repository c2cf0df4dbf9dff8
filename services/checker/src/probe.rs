//! One HTTP(S) probe of one target: resolve, connect, TLS, request, response, body, conditions.
//!
//! Rules this module keeps (each has a test against a real loopback server):
//! - A probe always yields a result; a failure is data with an [`ErrorKind`], never "no result".
//! - The target's timeout bounds the whole probe, DNS included.
//! - One attempt: no retries. Every hop uses a fresh connection, so connect and TLS time are
//!   measured, never hidden by keep-alive reuse.
//! - The body is read up to `body_max_bytes`, raw and after decoding (gzip, deflate, br); the
//!   regex runs on the decoded body.
//! - Names resolve through [`crate::resolve`] (asynchronous, never tokio's blocking pool);
//!   several addresses are raced by Happy Eyeballs ([`crate::connect`]).
//! - Credentials stay with the configured origin: after a redirect to another scheme, host or
//!   port, `Authorization`, `Cookie` and every sensitive header are dropped (as curl does
//!   since CVE-2022-27776); the client certificate and the `server_name` override are used for
//!   the configured host only; the proxy is chosen again for every hop's URL. URLs recorded
//!   never carry credentials.
//!
//! It never publishes; the caller does.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use common::result::{check_id, ErrorKind, HttpVersion, Phase, Phases, ProbeResult, TlsInfo, SCHEMA_VERSION};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::{Host, Url};

use crate::connect::{happy_eyeballs, CONNECTION_ATTEMPT_DELAY};
use crate::proxy;
use crate::target::{IpFamily, Target};
use crate::tls;

/// `User-Agent` sent with every probe.
pub const USER_AGENT: &str = concat!("healthcheck-pipeline/", env!("CARGO_PKG_VERSION"));

/// A probe failure: its kind and a human-readable cause.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    message: String,
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> Failure {
    Failure {
        kind,
        message: message.into(),
    }
}

/// What the probe saw so far. Filled in as the probe goes, so a timeout still reports the
/// phases that completed.
#[derive(Default)]
struct Trace {
    phases: Phases,
    /// The phase in progress, for the timeout message; `None` before the first.
    phase: Option<Phase>,
    first_status: Option<u16>,
    status: Option<u16>,
    redirects: u32,
    final_url: Option<String>,
    http_version: Option<HttpVersion>,
    /// The address the last hop connected to or, when connecting failed, last tried.
    peer: Option<SocketAddr>,
    tls: Option<TlsInfo>,
    content_length: Option<u64>,
    headers: http::HeaderMap,
    body: Option<Vec<u8>>,
}

impl Trace {
    /// Enters `phase` (for the timeout message) and starts timing it.
    fn enter(&mut self, phase: Phase) -> Instant {
        self.phase = Some(phase);
        Instant::now()
    }

    /// Adds the time since `started` to `phase`.
    fn add(&mut self, phase: Phase, started: Instant) {
        self.phases.add(phase, started.elapsed().as_secs_f64());
    }
}

/// Runs one probe of `target` for the slot `scheduled_at`, started now, by the checker
/// `instance_id` in `location` (both written into the result; the location into its
/// `check_id` too).
pub async fn run(target: &Target, scheduled_at: DateTime<Utc>, instance_id: &str, location: &str) -> ProbeResult {
    let started_at = Utc::now();
    let t0 = Instant::now();
    let mut trace = Trace::default();
    let outcome = match tokio::time::timeout(target.timeout, hops(target, &mut trace)).await {
        Ok(r) => r,
        // A resolver that does not answer within the timeout is a DNS failure, not a slow server.
        Err(_) if trace.phase == Some(Phase::Resolve) => Err(fail(
            ErrorKind::Dns,
            format!("name resolution did not finish within {:?}", target.timeout),
        )),
        Err(_) => Err(fail(
            ErrorKind::Timeout,
            format!(
                "probe timed out after {:?} during {}",
                target.timeout,
                trace.phase.map_or("start", <&str>::from)
            ),
        )),
    };
    let duration = t0.elapsed().as_secs_f64();
    let outcome = outcome.and_then(|()| check_conditions(target, &trace));

    let regex_matched = match (
        &trace.body,
        target.body_regex.is_some() || target.body_regex_not.is_some(),
    ) {
        (Some(body), true) => Some(body_regex_holds(target, body)),
        _ => None,
    };
    let (success, error_kind, error) = match outcome {
        Ok(()) => (true, None, None),
        Err(f) => (false, Some(f.kind.to_string()), Some(f.message)),
    };
    ProbeResult {
        schema_version: SCHEMA_VERSION,
        check_id: check_id(&target.name, location, scheduled_at),
        instance_id: instance_id.to_string(),
        location: location.to_string(),
        target: target.name.clone(),
        url: target.url.to_string(),
        scheduled_at,
        started_at,
        lateness_seconds: (started_at - scheduled_at).num_microseconds().unwrap_or(0) as f64 / 1e6,
        timeout_seconds: target.timeout.as_secs_f64(),
        duration_seconds: duration,
        success,
        error_kind,
        error,
        status_code: trace.status,
        first_status_code: trace.first_status,
        redirects: trace.redirects,
        final_url: trace.final_url,
        http_version: trace.http_version.map(|v| v.to_string()),
        ip_address: trace.peer.map(|p| p.ip().to_string()),
        ip_family: trace
            .peer
            .map(|p| if p.is_ipv4() { "ipv4" } else { "ipv6" }.to_string()),
        regex_matched,
        body_bytes: trace.body.as_ref().map(|b| b.len() as u64),
        content_length: trace.content_length,
        phases: trace.phases,
        tls: trace.tls,
    }
}

fn body_regex_holds(target: &Target, body: &[u8]) -> bool {
    target.body_regex.as_ref().is_none_or(|r| r.is_match(body))
        && target.body_regex_not.as_ref().is_none_or(|r| !r.is_match(body))
}

/// Status, header and body conditions on the final response, in that order.
fn check_conditions(target: &Target, trace: &Trace) -> Result<(), Failure> {
    let status = trace.status.unwrap_or(0);
    if !target.valid_status.iter().any(|r| r.contains(&status)) {
        return Err(fail(
            ErrorKind::Status,
            format!(
                "status {status} is not one of the expected codes {:?}",
                target.valid_status
            ),
        ));
    }
    for rule in &target.header_rules {
        let values: Vec<&HeaderValue> = trace.headers.get_all(&rule.header).iter().collect();
        let any_match = values.iter().any(|v| rule.regex.is_match(v.as_bytes()));
        if rule.fail_if_matches && any_match {
            return Err(fail(
                ErrorKind::Header,
                format!("header {} matches {}", rule.header, rule.regex),
            ));
        }
        let missing_allowed = values.is_empty() && rule.allow_missing;
        if !rule.fail_if_matches && !any_match && !missing_allowed {
            return Err(fail(
                ErrorKind::Header,
                format!("header {} does not match {}", rule.header, rule.regex),
            ));
        }
    }
    if let Some(body) = &trace.body {
        if let Some(r) = &target.body_regex {
            if !r.is_match(body) {
                return Err(fail(ErrorKind::Regex, format!("body does not match {r}")));
            }
        }
        if let Some(r) = &target.body_regex_not {
            if r.is_match(body) {
                return Err(fail(ErrorKind::Regex, format!("body matches {r}")));
            }
        }
    }
    Ok(())
}

/// Follows the target's redirects, one fresh connection per hop.
async fn hops(target: &Target, trace: &mut Trace) -> Result<(), Failure> {
    let mut url = target.url.clone();
    let mut method = target.method.clone();
    let mut body = target.body.clone();
    loop {
        let (resp, mut conn) = hop(target, &url, &method, body.clone(), trace).await?;
        let status = resp.status();
        trace.first_status.get_or_insert(status.as_u16());
        trace.status = Some(status.as_u16());
        trace.final_url = Some(url.to_string());
        let location = resp.headers().get(header::LOCATION).cloned();
        if target.follow_redirects && status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            if let Some(location) = location {
                if trace.redirects >= target.max_redirects {
                    return Err(fail(
                        ErrorKind::TooManyRedirects,
                        format!(
                            "more than {} redirects (last: {status} to {location:?})",
                            target.max_redirects
                        ),
                    ));
                }
                let next = location
                    .to_str()
                    .ok()
                    .and_then(|l| url.join(l).ok())
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                let Some(mut next) = next else {
                    let shown = crate::target::redact_userinfo(&String::from_utf8_lossy(location.as_bytes()));
                    return Err(fail(
                        ErrorKind::Request,
                        format!("redirect to an invalid location {shown:?}"),
                    ));
                };
                // RFC 9110 §4.2.4: userinfo in an http(s) URI is deprecated and a sender must not
                // generate it. It is neither used nor recorded (final_url, errors).
                let _ = next.set_username("");
                let _ = next.set_password(None);
                trace.redirects += 1;
                // RFC 9110 §15.4: 303 turns any method but HEAD into GET; browsers (and
                // blackbox_exporter's Go client) do the same for POST on 301/302.
                let to_get = status == StatusCode::SEE_OTHER && method != Method::HEAD
                    || matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND) && method == Method::POST;
                if to_get {
                    method = Method::GET;
                    body = Bytes::new();
                }
                url = next;
                continue;
            }
        }
        return read_body(target, &method, resp, &mut conn, trace).await;
    }
}

/// Reads the body up to the cap, driving `conn`, then decodes it.
async fn read_body(
    target: &Target,
    method: &Method,
    resp: Response<Incoming>,
    conn: &mut Connection,
    trace: &mut Trace,
) -> Result<(), Failure> {
    let cap = target.body_max_bytes;
    trace.content_length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let encoding = resp
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    // A HEAD response's Content-Length describes a body that is not sent (RFC 9110 §9.3.2).
    if trace.content_length.is_some_and(|n| n > cap) && encoding.is_none() && method != Method::HEAD {
        return Err(fail(
            ErrorKind::BodyTooLarge,
            format!(
                "Content-Length {} exceeds the body cap of {cap} bytes",
                trace.content_length.unwrap_or(0)
            ),
        ));
    }
    let (parts, mut body) = resp.into_parts();
    trace.headers = parts.headers;
    let t = trace.enter(Phase::Transfer);
    let mut raw = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                fail(
                    ErrorKind::Body,
                    format!("reading the body: {}", common::telemetry::chain(&e)),
                )
            })?;
            if let Some(data) = frame.data_ref() {
                if raw.len() as u64 + data.len() as u64 > cap {
                    return Err(fail(
                        ErrorKind::BodyTooLarge,
                        format!("body exceeds the cap of {cap} bytes"),
                    ));
                }
                raw.extend_from_slice(data);
            }
        }
        Ok(())
    };
    let result = conn.drive(read).await;
    trace.add(Phase::Transfer, t);
    result?;
    trace.body = Some(decode(encoding.as_deref(), raw, cap)?);
    Ok(())
}

/// Decodes a body by its `Content-Encoding` (RFC 9110 §8.4), encodings applied last first,
/// stopping at `cap` decoded bytes (a compression bomb is `body_too_large`, not an OOM).
fn decode(encoding: Option<&str>, raw: Vec<u8>, cap: u64) -> Result<Vec<u8>, Failure> {
    let Some(encoding) = encoding else { return Ok(raw) };
    let mut data = raw;
    for coding in encoding.split(',').map(str::trim).rev() {
        let reader: Box<dyn Read + '_> = match coding {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(data.as_slice())),
            // "deflate" is zlib-wrapped (RFC 9110 §8.4.1.2); some servers send raw deflate.
            "deflate" if data.first().is_some_and(|b| b & 0x0f == 8) => {
                Box::new(flate2::read::ZlibDecoder::new(data.as_slice()))
            }
            "deflate" => Box::new(flate2::read::DeflateDecoder::new(data.as_slice())),
            "br" => Box::new(brotli::Decompressor::new(data.as_slice(), 8192)),
            other => return Err(fail(ErrorKind::Body, format!("unsupported Content-Encoding {other:?}"))),
        };
        let mut out = Vec::new();
        reader
            .take(cap + 1)
            .read_to_end(&mut out)
            .map_err(|e| fail(ErrorKind::Body, format!("decoding {coding} body: {e}")))?;
        if out.len() as u64 > cap {
            return Err(fail(
                ErrorKind::BodyTooLarge,
                format!("decoded body exceeds the cap of {cap} bytes"),
            ));
        }
        data = out;
    }
    Ok(data)
}

/// Object-safe byte stream: plain TCP, TLS, or either through a proxy tunnel.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One request/response on a fresh connection. Returns once the response headers arrived,
/// with the connection, which must be driven ([`Connection::drive`]) while the body is read.
async fn hop(
    target: &Target,
    url: &Url,
    method: &Method,
    body: Bytes,
    trace: &mut Trace,
) -> Result<(Response<Incoming>, Connection), Failure> {
    // Taken for this hop's URL: a redirect may lead to a host NO_PROXY exempts, or back.
    let proxy = target.proxy.for_url(url);
    let tcp = connect(target, url, proxy.as_ref(), trace).await?;
    trace.tls = None;
    let (stream, h2): (Box<dyn Io>, bool) = if url.scheme() == "https" {
        let tcp = match &proxy {
            Some(p) => proxy::tunnel(tcp, p, url)
                .await
                .map_err(|e| fail(ErrorKind::Proxy, e))?,
            None => tcp,
        };
        let tls = handshake(target, url, tcp, trace).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        (Box::new(tls), h2)
    } else {
        (Box::new(tcp), false)
    };
    // Plain http through a proxy: the request goes to the proxy, in absolute form.
    let via_proxy = proxy.filter(|_| url.scheme() == "http");
    let req = build_request(target, url, method, body, h2, via_proxy.as_ref())?;
    exchange(stream, h2, req, trace).await
}

/// Resolves and connects to the proxy when there is one, else to `url`'s host; the
/// connection is timed as the `connect` phase and its address recorded as the peer.
async fn connect(
    target: &Target,
    url: &Url,
    proxy: Option<&proxy::Intercept>,
    trace: &mut Trace,
) -> Result<TcpStream, Failure> {
    let host = url
        .host()
        .ok_or_else(|| fail(ErrorKind::Request, format!("{url} has no host")))?;
    let (host, port) = match proxy {
        Some(p) => (
            p.uri()
                .host()
                .and_then(|h| Host::parse(h).ok())
                .ok_or_else(|| fail(ErrorKind::Proxy, "the proxy URL has no valid host"))?,
            // Only http:// proxies are accepted (see `proxy::parse_proxy_url`).
            p.uri().port_u16().unwrap_or(80),
        ),
        None => (host.to_owned(), url.port_or_known_default().unwrap_or(80)),
    };
    let addrs = addresses(target, &host, port, trace).await?;
    let t = trace.enter(Phase::Connect);
    trace.peer = None;
    let connected = happy_eyeballs(&addrs, CONNECTION_ATTEMPT_DELAY, &mut trace.peer).await;
    trace.add(Phase::Connect, t);
    let (tcp, _) = connected.map_err(|e| fail(ErrorKind::Connect, e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS handshake with `url`'s host over `tcp`, timed as the `tls` phase; records what
/// the handshake showed.
async fn handshake(
    target: &Target,
    url: &Url,
    tcp: TcpStream,
    trace: &mut Trace,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    trace.phase = Some(Phase::Tls);
    let host = url.host_str().unwrap_or_default();
    // The client certificate and the server_name override belong to the configured host.
    let configured_host = target.url.host_str().unwrap_or_default();
    let is_configured_host = host.eq_ignore_ascii_case(configured_host);
    let override_name = target.tls_server_name.as_deref().filter(|_| is_configured_host);
    let name = tls::server_name(host, override_name).map_err(|e| fail(ErrorKind::Tls, e))?;
    let connector = tokio_rustls::TlsConnector::from(target.tls.config_for(host, configured_host));
    let t = Instant::now();
    let tls = connector.connect(name, tcp).await;
    trace.add(Phase::Tls, t);
    let tls = tls.map_err(|e| {
        fail(
            ErrorKind::Tls,
            format!("TLS handshake with {host}: {}", common::telemetry::chain(&e)),
        )
    })?;
    trace.tls = Some(tls::handshake_info(tls.get_ref().1, &target.tls));
    Ok(tls)
}

/// A client connection's own future (hyper's `Connection`: it reads and writes the socket),
/// polled by the probe's task alongside what waits for it instead of on a task of its own: a
/// probe costs one task and its wake-ups, not two (BENCHMARKS.md, section 1). Dropped with the
/// probe (a timeout included), which closes the connection.
struct Connection {
    io: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The connection's future returned (the exchange ended, or failed): never polled again.
    done: bool,
}

impl Connection {
    fn new<F: Future<Output = Result<(), hyper::Error>> + Send + 'static>(conn: F) -> Self {
        Self {
            // Its error also reaches the request or body it failed, which reports it.
            io: Box::pin(async move {
                let _ = conn.await;
            }),
            done: false,
        }
    }

    /// Awaits `fut` while driving the connection.
    async fn drive<T>(&mut self, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        if !self.done {
            tokio::select! {
                biased;
                out = &mut fut => return out,
                () = &mut self.io => self.done = true,
            }
        }
        fut.await
    }
}

/// Sends `req` over `stream`, HTTP/2 when ALPN chose `h2`, else HTTP/1.1; timed as the
/// `processing` phase, until the response headers arrived.
async fn exchange(
    stream: Box<dyn Io>,
    h2: bool,
    req: Request<Full<Bytes>>,
    trace: &mut Trace,
) -> Result<(Response<Incoming>, Connection), Failure> {
    let t = trace.enter(Phase::Processing);
    let io = TokioIo::new(stream);
    let (resp, conn) = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(http_failure)?;
        let mut conn = Connection::new(conn);
        (conn.drive(sender.send_request(req)).await, conn)
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(http_failure)?;
        let mut conn = Connection::new(conn);
        (conn.drive(sender.send_request(req)).await, conn)
    };
    trace.add(Phase::Processing, t);
    let resp = resp.map_err(http_failure)?;
    trace.http_version = Some(match resp.version() {
        Version::HTTP_09 => HttpVersion::Http09,
        Version::HTTP_10 => HttpVersion::Http10,
        Version::HTTP_2 => HttpVersion::Http2,
        Version::HTTP_3 => HttpVersion::Http3,
        _ => HttpVersion::Http11,
    });
    Ok((resp, conn))
}

fn http_failure(e: hyper::Error) -> Failure {
    let message = if e.is_incomplete_message() {
        "connection closed before the response headers arrived".to_string()
    } else {
        format!("HTTP exchange failed: {}", common::telemetry::chain(&e))
    };
    fail(ErrorKind::Http, message)
}

/// The addresses to try for `host`, in Happy Eyeballs order: an IP literal as it is, a name
/// through the target's resolver (timed as the `resolve` phase).
async fn addresses(
    target: &Target,
    host: &Host<String>,
    port: u16,
    trace: &mut Trace,
) -> Result<Vec<SocketAddr>, Failure> {
    let literal = match *host {
        Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
        Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
        Host::Domain(ref name) => {
            let t = trace.enter(Phase::Resolve);
            let found = target.resolver.lookup(name, port, target.ip_family).await;
            trace.add(Phase::Resolve, t);
            return found.map_err(|e| fail(ErrorKind::Dns, e));
        }
    };
    let wanted = match target.ip_family {
        IpFamily::Any => true,
        IpFamily::Ipv4 => literal.is_ipv4(),
        IpFamily::Ipv6 => literal.is_ipv6(),
    };
    if !wanted {
        return Err(fail(
            ErrorKind::Dns,
            format!("{literal} is not an address of the family {:?}", target.ip_family),
        ));
    }
    Ok(vec![SocketAddr::new(literal, port)])
}

/// The request for `url`. `via_proxy`: the proxy an absolute-form request goes to (plain
/// `http` through a proxy), whose credentials are then sent as `Proxy-Authorization`
/// (hyper-util marks the value sensitive).
fn build_request(
    target: &Target,
    url: &Url,
    method: &Method,
    body: Bytes,
    h2: bool,
    via_proxy: Option<&proxy::Intercept>,
) -> Result<Request<Full<Bytes>>, Failure> {
    let absolute_form = via_proxy.is_some();
    // `host_str` already brackets IPv6 literals (`[::1]`).
    let host = url.host_str().unwrap_or_default();
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let uri: Uri = if h2 || absolute_form {
        format!("{}://{authority}{path}", url.scheme()).parse()
    } else {
        path.parse()
    }
    .map_err(|e| fail(ErrorKind::Request, format!("invalid request target {url}: {e}")))?;
    let mut builder = Request::builder().method(method.clone()).uri(uri);
    if !h2 {
        builder = builder.header(header::HOST, &authority);
    }
    let mut req = builder
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "*/*")
        .body(Full::new(body.clone()))
        .map_err(|e| fail(ErrorKind::Request, format!("building the request: {e}")))?;
    // Credentials go only to the configured origin (scheme, host and port): a redirect
    // elsewhere, even to another port of the same host, does not get them (curl since
    // CVE-2022-27776, without --location-trusted).
    let same_origin = url.origin() == target.url.origin();
    for (name, value) in &target.headers {
        let credential = value.is_sensitive() || name == header::AUTHORIZATION || name == header::COOKIE;
        if credential && !same_origin {
            continue;
        }
        req.headers_mut().insert(name, value.clone());
    }
    if h2 {
        req.headers_mut().remove(header::HOST);
    }
    if let Some(auth) = via_proxy.and_then(proxy::Intercept::basic_auth) {
        req.headers_mut().insert(header::PROXY_AUTHORIZATION, auth.clone());
    }
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn decodes_gzip_deflate_brotli_within_cap() {
        let text = b"hello healthy world".repeat(10);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        assert_eq!(decode(Some("gzip"), gz.finish().unwrap(), 1 << 20).unwrap(), text);
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(&text).unwrap();
        assert_eq!(decode(Some("deflate"), zl.finish().unwrap(), 1 << 20).unwrap(), text);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        assert_eq!(decode(Some("deflate"), raw.finish().unwrap(), 1 << 20).unwrap(), text);
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
            .write_all(&text)
            .unwrap();
        assert_eq!(decode(Some("br"), br, 1 << 20).unwrap(), text);
        assert_eq!(
            decode(None, text.clone(), 1).unwrap(),
            text,
            "identity bodies are capped while reading, not here"
        );
    }

    #[test]
    fn compression_bomb_is_body_too_large() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 10 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        let e = decode(Some("gzip"), bomb, 1 << 20).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BodyTooLarge);
        assert_eq!(decode(Some("zstd"), vec![1], 10).unwrap_err().kind, ErrorKind::Body);
    }
}
