//! The one rustls server-certificate verifier both services need beside the standard
//! (`WebPkiServerVerifier`) one: checks the chain but not the name, or nothing at all, while
//! always verifying the handshake signature. Never reads files or configuration.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Checks that the server's certificate chains up to `roots`, ignoring the server name
/// (libpq's `sslmode=verify-ca`), or, without roots, checks no certificate at all (the
/// checker's `insecure_skip_verify`, libpq's `require`/`prefer`). In both cases the handshake
/// signature is verified with `provider`'s algorithms (RFC 8446 §4.4.3), so the session is
/// real: the server holds the key of the certificate it sent.
#[derive(Debug)]
pub struct ChainVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ChainVerifier {
    /// Trusts a certificate that chains up to `roots`, whatever its name.
    pub fn chain_only(roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            roots: Some(roots),
            provider,
        }
    }

    /// Trusts any certificate; only the handshake signature is checked.
    pub fn any_certificate(provider: Arc<CryptoProvider>) -> Self {
        Self { roots: None, provider }
    }
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
