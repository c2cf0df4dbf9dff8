//! Loopback ports and a TCP forwarder that a test can cut, black-hole and restore: a real
//! outage of a real dependency. Binds 127.0.0.1 only; never touches another host.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// `127.0.0.1:<free port>`: nothing listens there (until someone binds it).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A TCP forwarder from a local port to `upstream` that a test can cut and restore: a real
/// outage of a real dependency. A cut closes every connection and the listening socket, so new
/// connections are refused, as they are by a host whose service is down. (Accepting and then
/// closing them instead looks like a broker that does not speak the protocol, and librdkafka
/// reacts to that differently.) Restoring binds the same port again.
///
/// A black hole ([`Forwarder::black_hole`]) instead stops forwarding bytes in both directions
/// and closes nothing: connections stay open and new ones are accepted, but no answer comes,
/// as from a host that vanished from the network without a reset. What was sent meanwhile is
/// held and forwarded, in order, after [`Forwarder::resume`]. (The kernel still acknowledges
/// the bytes on loopback, so this is noticed by application timeouts, not by TCP's.)
pub struct Forwarder {
    /// Where clients connect.
    pub addr: SocketAddr,
    upstream: SocketAddr,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// `true` while black-holed.
    hole: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Forwarder {
    /// Starts forwarding from a free port (or `port` when given) to `upstream`.
    pub async fn start(upstream: SocketAddr, port: Option<u16>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
            .await
            .expect("bind forwarder");
        let addr = listener.local_addr().unwrap();
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let hole = Arc::new(tokio::sync::watch::channel(false).0);
        let accept = Self::serve(listener, upstream, conns.clone(), hole.clone());
        Self {
            addr,
            upstream,
            conns,
            accept: std::sync::Mutex::new(Some(accept)),
            hole,
        }
    }

    fn serve(
        listener: TcpListener,
        upstream: SocketAddr,
        conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
        hole: Arc<tokio::sync::watch::Sender<bool>>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let hole = hole.clone();
                let conn = tokio::spawn(async move {
                    if hole.subscribe().wait_for(|holed| !*holed).await.is_err() {
                        return;
                    }
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            pump(in_read, out_write, hole.subscribe()),
                            pump(out_read, in_write, hole.subscribe())
                        );
                    }
                });
                let mut c = conns.lock().unwrap();
                c.retain(|h| !h.is_finished());
                c.push(conn);
            }
        })
    }

    /// Closes the listening socket and every open connection.
    pub async fn cut(&self) {
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        let conns: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        for c in conns {
            c.abort();
            let _ = c.await;
        }
    }

    /// Listens on the same port again.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("rebind the forwarder on {}: {e}", self.addr));
        let accept = Self::serve(listener, self.upstream, self.conns.clone(), self.hole.clone());
        *self.accept.lock().unwrap() = Some(accept);
    }

    /// Stops forwarding without closing anything (see the type's doc).
    pub fn black_hole(&self) {
        self.hole.send_replace(true);
    }

    /// Forwards again, the held bytes first.
    pub fn resume(&self) {
        self.hole.send_replace(false);
    }
}

/// Copies `from` to `to` until either closes, holding the bytes while `hole` is `true`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hole: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if hole.wait_for(|holed| !*holed).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Not even the close goes through a black hole.
    let _ = hole.wait_for(|holed| !*holed).await;
    let _ = to.shutdown().await;
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}
