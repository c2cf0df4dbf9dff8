//! TLS for the tests: a throwaway PKI (rcgen) written to files, and a private tansu broker
//! reachable only through a TLS terminator (rustls) that demands a client certificate, the
//! way a managed Kafka with mutual TLS is reached.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::{free_port, spawn_tansu, wait_until};

/// A certificate authority with the files of the certificates it issued, in a temporary
/// directory deleted on drop.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: tempfile::TempDir,
}

/// A certificate and its key, PEM, with their paths.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// Where `cert_pem` is written.
    pub cert_path: PathBuf,
    /// Where `key_pem` is written.
    pub key_path: PathBuf,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Issued {
    /// The key for rustls.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }
}

impl TestCa {
    /// A new CA named `name`; its certificate is written to `ca.pem` ([`TestCa::ca_path`]).
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::Builder::new().prefix("sink-tls-").tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write ca.pem");
        Self { cert, key, dir }
    }

    /// The CA certificate's file (PEM).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `names` (IP addresses become iPAddress subjectAltNames, the
    /// rest dNSName), written to `<file>.pem` and `<file>.key`.
    pub fn server(&self, file: &str, names: &[&str]) -> Issued {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("server certificate names");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A client certificate whose subject common name is `cn` (PostgreSQL's `cert`
    /// authentication takes it as the user name).
    pub fn client(&self, file: &str, cn: &str) -> Issued {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params)
    }

    fn issue(&self, file: &str, mut params: CertificateParams) -> Issued {
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let (cert_path, key_path) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path,
            key_path,
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A TLS terminator on 127.0.0.1 (and ::1 when it exists) in front of a plain TCP `upstream`:
/// it completes the handshake with `config` (which may demand a client certificate), then
/// forwards the bytes. Counts the handshakes it completed and refused.
pub struct TlsTerminator {
    /// The port clients connect to.
    pub port: u16,
    /// Handshakes completed (connections forwarded).
    pub accepted: Arc<AtomicU64>,
    /// Handshakes that failed (no, or an untrusted, client certificate...).
    pub refused: Arc<AtomicU64>,
    accept: Vec<JoinHandle<()>>,
}

impl TlsTerminator {
    /// Listens on `port` of every loopback address and forwards to `upstream`.
    pub async fn start(port: u16, upstream: SocketAddr, config: Arc<ServerConfig>) -> Self {
        let (accepted, refused): (Arc<AtomicU64>, Arc<AtomicU64>) = Default::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let mut accept = Vec::new();
        for ip in ["127.0.0.1", "::1"] {
            let listener = match TcpListener::bind((ip, port)).await {
                Ok(l) => l,
                Err(e) if ip == "::1" => {
                    eprintln!("TLS terminator: no IPv6 loopback ({e}); 127.0.0.1 only");
                    continue;
                }
                Err(e) => panic!("bind the TLS terminator on {ip}:{port}: {e}"),
            };
            let (acceptor, accepted, refused) = (acceptor.clone(), accepted.clone(), refused.clone());
            accept.push(tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, accepted, refused) = (acceptor.clone(), accepted.clone(), refused.clone());
                    tokio::spawn(async move {
                        let mut tls = match acceptor.accept(tcp).await {
                            Ok(tls) => tls,
                            Err(_) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        };
                        accepted.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut up) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                        }
                    });
                }
            }));
        }
        Self {
            port,
            accepted,
            refused,
            accept,
        }
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        for a in &self.accept {
            a.abort();
        }
    }
}

/// A rustls server configuration presenting `server` and demanding a client certificate
/// issued by `client_ca`.
pub fn mutual_tls_server(server: &Issued, client_ca: &TestCa) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(client_ca.ca_der()).expect("client CA");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.der.clone()], server.key())
        .expect("server certificate");
    Arc::new(config)
}

/// A private tansu broker reachable only over mutual TLS: tansu listens on a private plain
/// port and advertises `localhost:<port>`, where a [`TlsTerminator`] presents a certificate
/// for `localhost` issued by the returned [`TestCa`] and demands a client certificate from it.
pub struct TlsBroker {
    child: Child,
    /// The terminator clients connect to.
    pub terminator: TlsTerminator,
    /// Issues the terminator's certificate and trusted client certificates.
    pub ca: TestCa,
}

impl TlsBroker {
    /// Starts tansu and the terminator, and waits until tansu listens.
    pub async fn start() -> Self {
        let (broker_port, front_port) = (free_port(), free_port());
        let child = spawn_tansu(broker_port, &format!("localhost:{front_port}"));
        let upstream: SocketAddr = format!("127.0.0.1:{broker_port}").parse().unwrap();
        wait_until(Duration::from_secs(20), "the private broker to listen", || async move {
            TcpStream::connect(upstream).await.is_ok()
        })
        .await;
        let ca = TestCa::new("kafka test CA");
        let server = ca.server("broker", &["localhost"]);
        let terminator = TlsTerminator::start(front_port, upstream, mutual_tls_server(&server, &ca)).await;
        Self { child, terminator, ca }
    }

    /// `bootstrap.servers`: the terminator, by the name its certificate holds.
    pub fn bootstrap(&self) -> String {
        format!("localhost:{}", self.terminator.port)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
