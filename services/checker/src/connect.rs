//! TCP connect over several addresses: Happy Eyeballs (RFC 8305 §5).
//!
//! Attempts start in the given order (see [`crate::resolve`] for the order), the next one
//! [`CONNECTION_ATTEMPT_DELAY`] after the previous started or at once when the previous
//! failed; the first connection established wins and the others are dropped (closed).
//!
//! Written here rather than reusing hyper-util's `HttpConnector` (which races the same way
//! internally) because the probe must know the address of every attempt, including a failed
//! one, and resolve and connect must be timed as separate phases with its own resolver.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;

/// Time between the starts of two connection attempts (RFC 8305 §5, "Connection Attempt
/// Delay", recommended 250 ms).
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Every attempt failed: each address with its error, in the order the attempts ended.
#[derive(Debug)]
pub struct AllFailed(pub Vec<(SocketAddr, io::Error)>);

impl std::fmt::Display for AllFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (addr, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "connecting to {addr}: {e}")?;
        }
        Ok(())
    }
}

/// Connects to the first of `addrs` that accepts, racing attempts `delay` apart.
///
/// `last_tried` is set to each address as its attempt starts, so a caller that drops this
/// future (at its timeout) still knows which address was being tried.
///
/// # Errors
/// [`AllFailed`] when every attempt failed (or `addrs` is empty).
pub async fn happy_eyeballs(
    addrs: &[SocketAddr],
    delay: Duration,
    last_tried: &mut Option<SocketAddr>,
) -> Result<(TcpStream, SocketAddr), AllFailed> {
    let mut pending = addrs.iter().copied().peekable();
    let mut in_flight = FuturesUnordered::new();
    let mut failures = Vec::new();
    let mut start_next = true;
    loop {
        if std::mem::take(&mut start_next) {
            if let Some(addr) = pending.next() {
                *last_tried = Some(addr);
                in_flight.push(attempt(addr));
            }
        }
        if in_flight.is_empty() {
            return Err(AllFailed(failures));
        }
        let more = pending.peek().is_some();
        tokio::select! {
            Some((addr, result)) = in_flight.next() => match result {
                Ok(stream) => {
                    *last_tried = Some(addr);
                    return Ok((stream, addr));
                }
                Err(e) => {
                    failures.push((addr, e));
                    start_next = true;
                }
            },
            () = tokio::time::sleep(delay), if more => start_next = true,
        }
    }
}

async fn attempt(addr: SocketAddr) -> (SocketAddr, io::Result<TcpStream>) {
    (addr, TcpStream::connect(addr).await)
}
