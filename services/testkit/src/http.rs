//! One HTTP/1.1 GET (hyper's client connection, one request per connection) for admin
//! endpoints and loopback targets, and a loopback HTTP target. Never retries: callers that
//! wait for an endpoint poll with [`wait_for_200`] or `wait_until`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// How long one GET may take, connect to last body byte.
pub const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// GETs `path` (e.g. `/readyz`) from `addr`: the status code and the body (lossy UTF-8).
///
/// # Errors
/// The connection is refused or breaks, the answer is not HTTP/1.1, or it takes longer than
/// [`GET_TIMEOUT`].
pub async fn try_http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(GET_TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out after {GET_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// [`try_http_get`] for tests: (status, body).
///
/// # Panics
/// When [`try_http_get`] fails.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Polls `GET path` every `every` until it answers 200; returns the time that took.
///
/// # Errors
/// No 200 within `limit`.
pub async fn wait_for_200(addr: SocketAddr, path: &str, every: Duration, limit: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        if let Ok((200, _)) = try_http_get(addr, path).await {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!("http://{addr}{path} did not answer 200 within {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A loopback HTTP/1.1 target on 127.0.0.1 answering `body` with 200 to every request, for
/// as long as the runtime lives.
pub async fn http_target(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the target");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(body.as_bytes()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gets_status_and_body_from_a_loopback_target() {
        let addr = http_target("hello").await;
        assert_eq!(http_get(addr, "/any").await, (200, "hello".to_string()));
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error() {
        let addr = crate::net::free_addr();
        assert!(try_http_get(addr, "/").await.is_err());
        let waited = wait_for_200(addr, "/", Duration::from_millis(10), Duration::from_millis(50)).await;
        assert!(waited.is_err());
    }
}
