//! Loopback servers and target builders shared by the probe tests.
//!
//! Every server binds port 0 on a loopback address and lives as long as the test's runtime, so
//! tests never share a server or a port.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use checker::target::{load_targets, Defaults, ProxyEnv, Target};
use chrono::{DateTime, TimeZone, Utc};
use common::config::Env;
use common::result::ProbeResult;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// The response body type of the test servers.
pub type Body = Full<Bytes>;

/// The timeout of targets that do not set one: short, so a hanging probe fails the test fast.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds one target from a JSON object through the public config path (`TARGETS`).
///
/// # Panics
/// When the configuration is rejected.
pub fn target(spec: serde_json::Value) -> Target {
    let defaults = Defaults {
        interval: Duration::from_secs(30),
        timeout: DEFAULT_TIMEOUT,
        body_max_bytes: 1 << 20,
        proxy_env: ProxyEnv::default(),
    };
    let json = serde_json::Value::Array(vec![spec]).to_string();
    let env = Env::from_pairs([("TARGETS", json.as_str())]);
    let mut targets = load_targets(&env, &defaults).unwrap_or_else(|e| panic!("target rejected: {e}"));
    assert_eq!(targets.len(), 1);
    targets.remove(0)
}

/// Runs one probe of `t`, scheduled now.
pub async fn probe(t: &Target) -> ProbeResult {
    checker::probe::run(t, Utc::now(), "it", "default").await
}

/// A plain-text response with `status`.
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("valid response")
}

/// A redirect to `location`.
pub fn redirect(status: u16, location: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("location", location)
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}

/// What a TLS server saw of one handshake: the SNI name and whether a client certificate came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The server name the client sent (none for an IP address).
    pub sni: Option<String>,
    /// Whether the client presented a certificate.
    pub client_cert: bool,
}

/// A TLS server on 127.0.0.1 with `cfg` that reports every handshake on the returned channel
/// and answers every request with `handler`.
pub async fn serve_tls_recording<F, Fut>(
    cfg: Arc<ServerConfig>,
    handler: F,
) -> (Server, tokio::sync::mpsc::UnboundedReceiver<Handshake>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let server = raw_on("127.0.0.1:0", move |tcp| {
        let (handler, cfg, tx) = (handler.clone(), cfg.clone(), tx.clone());
        async move {
            let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                return;
            };
            let conn = stream.get_ref().1;
            let _ = tx.send(Handshake {
                sni: conn.server_name().map(str::to_string),
                client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
            });
            serve_connection(stream, handler).await;
        }
    })
    .await;
    (server, rx)
}

/// Serves HTTP/1.1 and HTTP/2 on one accepted connection, every request answered by `handler`.
async fn serve_connection<S, F, Fut>(stream: S, handler: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let svc = service_fn(move |req| {
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// A running loopback server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Server {
    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `https://<host>:<port><path>`.
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with `handler`.
pub async fn serve<F, Fut>(handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    serve_on("127.0.0.1:0", None, handler).await
}

/// A hyper server (HTTP/1.1 and HTTP/2, TLS when `tls` is given) on `bind`.
pub async fn serve_on<F, Fut>(bind: &str, tls: Option<Arc<ServerConfig>>, handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    raw_on(bind, move |tcp| {
        let (handler, tls) = (handler.clone(), tls.clone());
        async move {
            match tls {
                None => serve_connection(tcp, handler).await,
                Some(cfg) => {
                    if let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                        serve_connection(stream, handler).await;
                    }
                }
            }
        }
    })
    .await
}

/// A raw TCP server on 127.0.0.1 for misbehaving peers: `handler` owns each accepted connection.
pub async fn raw<F, Fut>(handler: F) -> Server
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    raw_on("127.0.0.1:0", handler).await
}

/// A TCP server on `bind` that counts connections and gives each to `handler` on its own task.
async fn raw_on<F, Fut>(bind: &str, handler: F) -> Server
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(bind).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handler(tcp));
        }
    });
    Server { addr, connections }
}

/// Reads a request head up to and including the blank line, one byte at a time so nothing
/// after it is consumed (a TLS handshake may follow a `CONNECT`). Empty when the peer closed.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A test CA and a leaf for `127.0.0.1`, `::1`, `localhost` and `example.invalid` signed by it.
///
/// The CA expires before the leaf, so "earliest notAfter of the chain" differs from the leaf's.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// PEM file holding the CA certificate.
    pub ca_file: String,
    /// notAfter of the CA certificate.
    pub ca_not_after: DateTime<Utc>,
    /// notAfter of the leaf certificate.
    pub leaf_not_after: DateTime<Utc>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    /// Generates the CA and the leaf.
    pub fn new() -> Self {
        let ca_not_after = Utc.with_ymd_and_hms(2030, 3, 1, 4, 5, 6).unwrap();
        let leaf_not_after = Utc.with_ymd_and_hms(2031, 6, 15, 1, 2, 3).unwrap();

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name.push(DnType::CommonName, "checker-test-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_after = rcgen::date_time_ymd(2030, 3, 1) + Duration::from_secs(4 * 3600 + 5 * 60 + 6);
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");

        let leaf_key = KeyPair::generate().expect("leaf key");
        let names = ["127.0.0.1", "::1", "localhost", "example.invalid"].map(String::from);
        let mut leaf = CertificateParams::new(names.to_vec()).expect("leaf params");
        leaf.distinguished_name = DistinguishedName::new();
        leaf.distinguished_name.push(DnType::CommonName, "checker-test-leaf");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_after = rcgen::date_time_ymd(2031, 6, 15) + Duration::from_secs(3600 + 2 * 60 + 3);
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).expect("leaf cert");

        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).expect("write CA");
        Self {
            ca_file: ca_path.to_str().expect("UTF-8 path").to_string(),
            _dir: dir,
            ca_not_after,
            leaf_not_after,
            chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
            ca_cert,
            ca_key,
        }
    }

    /// A client certificate (CN=checker-test-client) signed by the CA: PEM files of the
    /// certificate and its key, for `tls.cert_file` / `tls.key_file`.
    pub fn client_cert_files(&self) -> (String, String) {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "checker-test-client");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("client cert");
        let dir = self._dir.path();
        let (cert_path, key_path) = (dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write client cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write client key");
        let s = |p: std::path::PathBuf| p.to_str().expect("UTF-8 path").to_string();
        (s(cert_path), s(key_path))
    }

    /// Like [`Pki::server_config`] (no ALPN), also asking for a client certificate signed by
    /// the CA, without requiring one.
    pub fn server_config_asking_client_cert(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_cert.der().clone()).expect("CA root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .expect("client verifier");
        let cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("server certificate");
        Arc::new(cfg)
    }

    /// A server configuration presenting leaf and CA, offering `alpn` (empty: no ALPN).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut cfg = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("server certificate");
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// Builds one target like [`target`], with the proxy environment read from `proxy_env` pairs
/// (`HTTP_PROXY`, `NO_PROXY`, …).
///
/// # Panics
/// When the configuration is rejected.
pub fn target_with_proxy_env(spec: serde_json::Value, proxy_env: &[(&str, &str)]) -> Target {
    let defaults = Defaults {
        interval: Duration::from_secs(30),
        timeout: DEFAULT_TIMEOUT,
        body_max_bytes: 1 << 20,
        proxy_env: ProxyEnv::from_env(&Env::from_pairs(proxy_env.iter().copied())).expect("proxy env"),
    };
    let json = serde_json::Value::Array(vec![spec]).to_string();
    let env = Env::from_pairs([("TARGETS", json.as_str())]);
    let mut targets = load_targets(&env, &defaults).unwrap_or_else(|e| panic!("target rejected: {e}"));
    targets.remove(0)
}
