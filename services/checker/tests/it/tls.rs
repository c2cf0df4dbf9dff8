//! HTTPS probes against a test CA: verification, recorded handshake details, ALPN.

use chrono::{TimeZone, Utc};
use serde_json::json;

use crate::support::{probe, redirect, serve_on, serve_tls_recording, target, text, Handshake, Pki};

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

#[tokio::test]
async fn trusted_chain_records_handshake_and_expiry() {
    let pki = Pki::new();
    let server = serve_on("127.0.0.1:0", Some(pki.server_config(&[])), |_| async {
        text(200, "secure ok")
    })
    .await;
    let t = target(
        json!({"url": server.https_url("127.0.0.1", "/"), "regex": "secure ok", "tls": {"ca_file": pki.ca_file}}),
    );

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(
        r.http_version.as_deref(),
        Some("HTTP/1.1"),
        "no ALPN offered by the server"
    );
    assert!(r.phases.tls.is_some_and(|s| s > 0.0), "{:?}", r.phases);
    let tls = r.tls.expect("TLS details");
    assert_eq!(tls.version.as_deref(), Some("TLSv1_3"));
    assert!(
        tls.cipher.as_deref().is_some_and(|c| c.starts_with("TLS13_")),
        "{tls:?}"
    );
    assert_eq!(tls.leaf_not_after, Some(pki.leaf_not_after));
    assert_eq!(tls.earliest_not_after, Some(pki.ca_not_after), "the CA expires first");
    assert!(tls.earliest_not_after <= tls.leaf_not_after);
    assert_eq!(tls.leaf_subject.as_deref(), Some("CN=checker-test-leaf"));
}

#[tokio::test]
async fn host_name_is_verified_against_the_leaf() {
    let pki = Pki::new();
    let server = serve_on("127.0.0.1:0", Some(pki.server_config(&[])), |_| async {
        text(200, "ok")
    })
    .await;
    let t = target(
        json!({"url": server.https_url("localhost", "/"), "tls": {"ca_file": pki.ca_file}, "ip_family": "ipv4"}),
    );

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert!(r.phases.resolve.is_some() && r.phases.tls.is_some(), "{:?}", r.phases);
}

#[tokio::test]
async fn untrusted_certificate_is_tls_failure_without_details() {
    let pki = Pki::new();
    let server = serve_on("127.0.0.1:0", Some(pki.server_config(&[])), |_| async {
        text(200, "ok")
    })
    .await;
    let t = target(json!({"url": server.https_url("127.0.0.1", "/")}));

    let r = probe(&t).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("tls"), "{r:?}");
    assert_eq!(
        r.tls, None,
        "no certificate was accepted, so no dates (never the epoch)"
    );
    assert_eq!(r.status_code, None);
    assert!(r.phases.tls.is_some(), "{:?}", r.phases);
    assert!(r.error.as_deref().unwrap().contains("127.0.0.1"), "{:?}", r.error);
}

#[tokio::test]
async fn wrong_name_is_tls_failure() {
    let pki = Pki::new();
    let server = serve_on("127.0.0.1:0", Some(pki.server_config(&[])), |_| async {
        text(200, "ok")
    })
    .await;
    let t = target(json!({
        "url": server.https_url("127.0.0.1", "/"),
        "tls": {"ca_file": pki.ca_file, "server_name": "other.invalid"},
    }));

    let r = probe(&t).await;

    assert_eq!(r.error_kind.as_deref(), Some("tls"), "{r:?}");
    assert_eq!(r.tls, None);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_and_still_records() {
    let pki = Pki::new();
    let server = serve_on("127.0.0.1:0", Some(pki.server_config(&[])), |_| async {
        text(200, "ok")
    })
    .await;
    let t = target(json!({"url": server.https_url("127.0.0.1", "/"), "tls": {"insecure_skip_verify": true}}));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    let tls = r.tls.expect("TLS details");
    assert_eq!(tls.leaf_not_after, Some(pki.leaf_not_after));
    assert_eq!(tls.version.as_deref(), Some("TLSv1_3"));
    assert_eq!(
        tls.earliest_not_after, tls.presented_earliest_not_after,
        "nothing was verified: the presented chain's earliest"
    );
    assert_eq!(tls.earliest_not_after, Some(pki.ca_not_after));
}

#[tokio::test]
async fn alpn_h2_is_spoken_and_recorded() {
    let pki = Pki::new();
    let server = serve_on(
        "127.0.0.1:0",
        Some(pki.server_config(H2_AND_H1)),
        |req: http::Request<_>| async move {
            assert_eq!(req.version(), http::Version::HTTP_2);
            assert_eq!(req.uri().path(), "/h2");
            text(200, "over h2")
        },
    )
    .await;
    let t = target(
        json!({"url": server.https_url("127.0.0.1", "/h2"), "regex": "over h2", "tls": {"ca_file": pki.ca_file}}),
    );

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.http_version.as_deref(), Some("HTTP/2"));
    assert_eq!(r.body_bytes, Some(7));
}

#[tokio::test]
async fn h2_to_an_ipv6_literal() {
    let pki = Pki::new();
    let server = serve_on("[::1]:0", Some(pki.server_config(H2_AND_H1)), |_| async {
        text(200, "v6 h2")
    })
    .await;
    let t = target(json!({"url": server.https_url("[::1]", "/"), "regex": "v6 h2", "tls": {"ca_file": pki.ca_file}}));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.http_version.as_deref(), Some("HTTP/2"));
    assert_eq!(r.ip_family.as_deref(), Some("ipv6"));
}

#[tokio::test]
async fn client_certificate_and_server_name_go_to_the_configured_host_only() {
    let pki = Pki::new();
    let (client_cert, client_key) = pki.client_cert_files();
    let (other, mut other_seen) = serve_tls_recording(pki.server_config_asking_client_cert(), |_| async {
        text(200, "other host")
    })
    .await;
    let location = other.https_url("127.0.0.1", "/");
    let (origin, mut origin_seen) = serve_tls_recording(pki.server_config_asking_client_cert(), move |_| {
        let location = location.clone();
        async move { redirect(302, &location) }
    })
    .await;
    let t = target(json!({
        "url": origin.https_url("localhost", "/"), "ip_family": "ipv4", "regex": "other host",
        "tls": {"ca_file": pki.ca_file, "cert_file": client_cert, "key_file": client_key, "server_name": "example.invalid"},
    }));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(
        origin_seen.recv().await.unwrap(),
        Handshake {
            sni: Some("example.invalid".into()),
            client_cert: true
        },
        "the configured host gets the override and the certificate"
    );
    assert_eq!(
        other_seen.recv().await.unwrap(),
        Handshake {
            sni: None,
            client_cert: false
        },
        "127.0.0.1 is another host: its own name (an IP: no SNI), no client certificate"
    );
}

/// A chain where the server also sends an expired certificate that is not on the verified
/// path: root R (trusted), intermediate I signed by R, leaf L signed by I, and X, an old
/// cross-sign of I (same name and key) by a retired root, expired years ago.
struct CrossSigned {
    _dir: tempfile::TempDir,
    ca_file: String,
    server: std::sync::Arc<rustls::ServerConfig>,
    intermediate_not_after: chrono::DateTime<Utc>,
    expired_not_after: chrono::DateTime<Utc>,
}

fn cross_signed_chain() -> CrossSigned {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca = |cn: &str, not_after: (i32, u8, u8)| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = rcgen::date_time_ymd(2015, 1, 1);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        p
    };
    let (root_key, old_root_key, inter_key, leaf_key) = (
        KeyPair::generate().unwrap(),
        KeyPair::generate().unwrap(),
        KeyPair::generate().unwrap(),
        KeyPair::generate().unwrap(),
    );
    let root = ca("test-root-r", (2040, 1, 1)).self_signed(&root_key).unwrap();
    let old_root = ca("test-old-root-y", (2020, 1, 1)).self_signed(&old_root_key).unwrap();
    let inter = ca("test-intermediate-i", (2032, 2, 2))
        .signed_by(&inter_key, &root, &root_key)
        .unwrap();
    let expired_cross = ca("test-intermediate-i", (2020, 1, 1))
        .signed_by(&inter_key, &old_root, &old_root_key)
        .unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, "test-leaf-l");
    leaf.not_after = rcgen::date_time_ymd(2034, 4, 4);
    let leaf = leaf.signed_by(&leaf_key, &inter, &inter_key).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("root.pem");
    std::fs::write(&ca_path, root.pem()).unwrap();
    let chain = vec![leaf.der().clone(), inter.der().clone(), expired_cross.der().clone()];
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into();
    let server =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    CrossSigned {
        _dir: dir,
        ca_file: ca_path.to_str().unwrap().to_string(),
        server: std::sync::Arc::new(server),
        intermediate_not_after: Utc.with_ymd_and_hms(2032, 2, 2, 0, 0, 0).unwrap(),
        expired_not_after: Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
    }
}

#[tokio::test]
async fn earliest_not_after_is_of_the_verified_chain_not_of_every_certificate_sent() {
    let pki = cross_signed_chain();
    let server = serve_on("127.0.0.1:0", Some(pki.server.clone()), |_| async { text(200, "ok") }).await;
    let t = target(json!({"url": server.https_url("127.0.0.1", "/"), "tls": {"ca_file": pki.ca_file}}));

    let r = probe(&t).await;

    assert!(r.success, "the expired cross-sign is not on the verified path: {r:?}");
    let tls = r.tls.expect("TLS details");
    assert_eq!(
        tls.earliest_not_after,
        Some(pki.intermediate_not_after),
        "min(L 2034, I 2032, R 2040)"
    );
    assert_eq!(tls.presented_earliest_not_after, Some(pki.expired_not_after));
}
