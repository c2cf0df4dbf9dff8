//! TLS client configuration for probes (rustls with the `ring` provider) and what a handshake
//! tells about the server's certificates.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use common::result::TlsInfo;
use common::tls::ChainVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;

/// Per-target TLS options (the `tls` object of a target).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file of CA certificates that replace the default roots.
    pub ca_file: Option<String>,
    /// PEM client certificate chain, for mutual TLS.
    pub cert_file: Option<String>,
    /// PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
    /// Name sent as SNI and verified, instead of the URL's host.
    pub server_name: Option<String>,
    /// Accept any certificate. The handshake still happens and its details are still recorded.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// The `ring` provider, built once and shared by every configuration.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Trust anchors with the notAfter of the certificates they came from (a [`TrustAnchor`] keeps
/// only subject, key and name constraints). Mozilla's roots (webpki-roots) come without
/// certificates, so their dates are known only when the system store holds the same root.
#[derive(Debug)]
struct Roots {
    store: Arc<RootCertStore>,
    /// (subject, subjectPublicKeyInfo) of an anchor → notAfter of its certificate.
    not_after: HashMap<(Vec<u8>, Vec<u8>), DateTime<Utc>>,
}

impl Roots {
    fn from_certs(mut store: RootCertStore, certs: &[CertificateDer<'_>]) -> Self {
        let mut not_after = HashMap::new();
        for der in certs {
            let (Ok(anchor), Some(na)) = (webpki::anchor_from_trusted_cert(der), not_after_of(der)) else {
                continue;
            };
            not_after.insert(anchor_key(&anchor), na);
        }
        store.roots.shrink_to_fit();
        Self {
            store: Arc::new(store),
            not_after,
        }
    }
}

fn anchor_key(anchor: &TrustAnchor<'_>) -> (Vec<u8>, Vec<u8>) {
    (anchor.subject.to_vec(), anchor.subject_public_key_info.to_vec())
}

fn not_after_of(der: &[u8]) -> Option<DateTime<Utc>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    DateTime::<Utc>::from_timestamp(cert.validity().not_after.timestamp(), 0)
}

/// The default roots: Mozilla's (webpki-roots) plus the operating system's store, loaded once.
fn default_roots() -> Arc<Roots> {
    static ROOTS: OnceLock<Arc<Roots>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs.iter().cloned());
            tracing::debug!(native_roots = added, "Loaded TLS roots.");
            Arc::new(Roots::from_certs(roots, &native.certs))
        })
        .clone()
}

/// The TLS client side of one target, built once at start-up from its [`TlsOptions`].
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// For the configured host: its client certificate, if any. ALPN `h2`, `http/1.1`.
    pub configured_host: Arc<ClientConfig>,
    /// For any other host a redirect leads to: the same roots and verification, never the
    /// client certificate (a credential of the configured host).
    pub other_hosts: Arc<ClientConfig>,
    /// The trust anchors the chain is verified against; `None` with `insecure_skip_verify`.
    roots: Option<Arc<Roots>>,
}

impl TlsClient {
    /// The configuration for a connection to `host`, given the target's configured host.
    pub fn config_for(&self, host: &str, configured_host: &str) -> Arc<ClientConfig> {
        if host.eq_ignore_ascii_case(configured_host) {
            self.configured_host.clone()
        } else {
            self.other_hosts.clone()
        }
    }
}

/// Builds the client configurations for `opts`. Targets without TLS options share one.
///
/// ALPN offers `h2` and `http/1.1`, as browsers do.
///
/// # Errors
/// A description of the unreadable or invalid file.
pub fn client_config(opts: &TlsOptions) -> Result<TlsClient, String> {
    static DEFAULT: OnceLock<TlsClient> = OnceLock::new();
    let is_default =
        opts.ca_file.is_none() && opts.cert_file.is_none() && opts.key_file.is_none() && !opts.insecure_skip_verify;
    if is_default {
        if let Some(cfg) = DEFAULT.get() {
            return Ok(cfg.clone());
        }
    }
    let roots = if opts.insecure_skip_verify {
        None
    } else if let Some(path) = &opts.ca_file {
        let mut store = RootCertStore::empty();
        let certs = read_certs(path)?;
        if certs.is_empty() {
            return Err(format!("{path:?} holds no PEM certificate"));
        }
        for c in &certs {
            store.add(c.clone()).map_err(|e| format!("{path:?}: {e}"))?;
        }
        Some(Arc::new(Roots::from_certs(store, &certs)))
    } else {
        Some(default_roots())
    };
    let builder = || -> Result<_, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        Ok(match &roots {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainVerifier::any_certificate(provider()))),
            Some(r) => builder.with_root_certificates(r.store.clone()),
        })
    };
    let alpn = |mut cfg: ClientConfig| {
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    };
    let other_hosts = alpn(builder()?.with_no_client_auth());
    let configured_host = match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => alpn(
            builder()?
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| format!("client certificate: {e}"))?,
        ),
        (None, None) => other_hosts.clone(),
        _ => return Err("cert_file and key_file go together".to_string()),
    };
    let client = TlsClient {
        configured_host,
        other_hosts,
        roots,
    };
    if is_default {
        let _ = DEFAULT.set(client.clone());
    }
    Ok(client)
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path:?}: {e}"))
}

fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{path:?}: {e}"))?
        .ok_or_else(|| format!("{path:?} holds no private key"))
}

/// What the handshake of `conn` showed: protocol, cipher and the certificates' notAfter.
///
/// `earliest_not_after` is the earliest notAfter of the chain that verifies, leaf to trust
/// anchor: rustls-webpki's path building is run again on what the server sent, with the same
/// roots, and its [`webpki::VerifiedPath`] is read. A certificate the server sends that is not
/// on that path (an expired cross-sign, a stale intermediate) does not count; it shows in
/// `presented_earliest_not_after`. The anchor counts when the certificate it was loaded from
/// is known (a `ca_file` or the system store). With `insecure_skip_verify` nothing was
/// verified, so `earliest_not_after` is the presented chain's earliest.
pub fn handshake_info(conn: &rustls::ClientConnection, client: &TlsClient) -> TlsInfo {
    let mut info = TlsInfo {
        version: conn.protocol_version().map(|v| format!("{v:?}")),
        cipher: conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
        ..TlsInfo::default()
    };
    let certs = conn.peer_certificates().unwrap_or_default();
    let earliest = |dates: &mut dyn Iterator<Item = Option<DateTime<Utc>>>| dates.flatten().min();
    if let Some(leaf) = certs.first() {
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) {
            info.leaf_not_after = DateTime::<Utc>::from_timestamp(cert.validity().not_after.timestamp(), 0);
            info.leaf_subject = Some(cert.subject().to_string());
        }
    }
    info.presented_earliest_not_after = earliest(&mut certs.iter().map(|c| not_after_of(c)));
    info.earliest_not_after = match (&client.roots, certs.split_first()) {
        (Some(roots), Some((leaf, intermediates))) => verified_earliest(roots, leaf, intermediates),
        _ => None,
    }
    .or(info.presented_earliest_not_after);
    info
}

/// The earliest notAfter on the path rustls-webpki builds from `leaf` to one of `roots`.
fn verified_earliest(
    roots: &Roots,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<DateTime<Utc>> {
    let ee = webpki::EndEntityCert::try_from(leaf).ok()?;
    let path = ee
        .verify_for_usage(
            provider().signature_verification_algorithms.all,
            &roots.store.roots,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .ok()?;
    let anchor = roots.not_after.get(&anchor_key(path.anchor())).copied();
    std::iter::once(not_after_of(leaf))
        .chain(path.intermediate_certificates().map(|c| not_after_of(&c.der())))
        .chain(std::iter::once(anchor))
        .flatten()
        .min()
}

/// The server name for SNI and verification: `override_name`, else the URL host.
pub fn server_name(host: &str, override_name: Option<&str>) -> Result<ServerName<'static>, String> {
    let name = override_name.unwrap_or(host).trim_matches(['[', ']']);
    ServerName::try_from(name.to_string()).map_err(|e| format!("{name:?} is not a valid TLS server name: {e}"))
}
