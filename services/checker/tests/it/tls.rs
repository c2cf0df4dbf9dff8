//! HTTPS probes against a test CA: verification, recorded handshake details, ALPN.

use serde_json::json;

use crate::support::{probe, serve_on, target, text, Pki};

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
