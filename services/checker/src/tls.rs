//! TLS client configuration for probes (rustls with the `ring` provider) and what a handshake
//! tells about the server's certificates.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use common::result::TlsInfo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The default roots: Mozilla's (webpki-roots) plus the operating system's store, loaded once.
fn default_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(native_roots = added, "Loaded TLS roots.");
            Arc::new(roots)
        })
        .clone()
}

/// Builds the client configuration for `opts`. Targets without TLS options share one config.
///
/// ALPN offers `h2` and `http/1.1`, as browsers do.
///
/// # Errors
/// A description of the unreadable or invalid file.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
    static DEFAULT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let is_default =
        opts.ca_file.is_none() && opts.cert_file.is_none() && opts.key_file.is_none() && !opts.insecure_skip_verify;
    if is_default {
        if let Some(cfg) = DEFAULT.get() {
            return Ok(cfg.clone());
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if opts.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
    } else if let Some(path) = &opts.ca_file {
        let mut roots = RootCertStore::empty();
        let certs = read_certs(path)?;
        if certs.is_empty() {
            return Err(format!("{path:?} holds no PEM certificate"));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("{path:?}: {e}"))?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder.with_root_certificates(default_roots())
    };
    let mut cfg = match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| format!("client certificate: {e}"))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("cert_file and key_file go together".to_string()),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    if is_default {
        let _ = DEFAULT.set(cfg.clone());
    }
    Ok(cfg)
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
pub fn handshake_info(conn: &rustls::ClientConnection) -> TlsInfo {
    let mut info = TlsInfo {
        version: conn.protocol_version().map(|v| format!("{v:?}")),
        cipher: conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
        ..TlsInfo::default()
    };
    for (i, der) in conn.peer_certificates().unwrap_or_default().iter().enumerate() {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        let not_after = DateTime::<Utc>::from_timestamp(cert.validity().not_after.timestamp(), 0);
        if i == 0 {
            info.leaf_not_after = not_after;
            info.leaf_subject = Some(cert.subject().to_string());
        }
        if let Some(na) = not_after {
            info.earliest_not_after = Some(info.earliest_not_after.map_or(na, |e: DateTime<Utc>| e.min(na)));
        }
    }
    info
}

/// The server name for SNI and verification: `override_name`, else the URL host.
pub fn server_name(host: &str, override_name: Option<&str>) -> Result<ServerName<'static>, String> {
    let name = override_name.unwrap_or(host).trim_matches(['[', ']']);
    ServerName::try_from(name.to_string()).map_err(|e| format!("{name:?} is not a valid TLS server name: {e}"))
}

/// Verifier for `insecure_skip_verify`: trusts any certificate but still checks the handshake
/// signatures, so the negotiated session is real.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
