//! Response bodies: content decoding and the body cap.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::support::{probe, raw, read_head, serve, target};

/// A page that compresses well, so its encoded form holds no readable copy of the pattern.
fn page() -> String {
    format!(
        "<html>{}<p>status: all systems operational</p></html>",
        "<p>padding</p>".repeat(200)
    )
}

fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        // RFC 9110 §8.4.1.2: "deflate" is the zlib format.
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(data).unwrap();
            }
            out
        }
        other => panic!("no encoder for {other}"),
    }
}

#[tokio::test]
async fn encoded_bodies_are_decoded_before_the_regex() {
    for coding in ["gzip", "deflate", "br"] {
        let text = page();
        let encoded = Bytes::from(encode(coding, text.as_bytes()));
        assert!(
            !encoded.windows(10).any(|w| w == b"operationa"),
            "{coding}: the encoded body must not contain the pattern"
        );
        let len = encoded.len();
        // The probe sends no Accept-Encoding; the server encodes regardless, as some do.
        let server = serve(move |_| {
            let encoded = encoded.clone();
            async move {
                http::Response::builder()
                    .header("content-encoding", coding)
                    .header("content-type", "text/html")
                    .body(http_body_util::Full::new(encoded))
                    .unwrap()
            }
        })
        .await;

        let r = probe(&target(json!({"url": server.url("/"), "regex": "systems operational"}))).await;

        assert!(r.success, "{coding}: {r:?}");
        assert_eq!(r.regex_matched, Some(true), "{coding}");
        assert_eq!(
            r.body_bytes,
            Some(text.len() as u64),
            "{coding}: body_bytes is the decoded length"
        );
        assert_eq!(
            r.content_length,
            Some(len as u64),
            "{coding}: Content-Length is the encoded length"
        );
    }
}

#[tokio::test]
async fn endless_body_stops_at_the_cap() {
    let server = raw(|mut s| async move {
        read_head(&mut s).await;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
        while s.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await;
    let t = target(json!({"url": server.url("/"), "body_max_bytes": 65536, "timeout": "5s"}));

    let r = probe(&t).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("body_too_large"), "{r:?}");
    assert!(r.duration_seconds < 1.0, "stopped at the cap, not the timeout: {r:?}");
    assert_eq!(r.status_code, Some(200));
    assert_eq!(r.body_bytes, None);
    assert_eq!(r.content_length, None);
    assert!(r.error.as_deref().unwrap().contains("65536"), "{:?}", r.error);
}

#[tokio::test]
async fn content_length_over_the_cap_fails_without_reading() {
    // Announces 10 MB and then sends nothing: only the header can have failed the probe.
    let server = raw(|mut s| async move {
        read_head(&mut s).await;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10000000\r\n\r\n";
        let _ = s.write_all(head.as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;
    let t = target(json!({"url": server.url("/"), "body_max_bytes": 1000, "timeout": "5s"}));

    let r = probe(&t).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("body_too_large"), "{r:?}");
    assert_eq!(r.content_length, Some(10_000_000));
    assert_eq!(r.status_code, Some(200));
    assert!(r.duration_seconds < 1.0, "{r:?}");
}

#[tokio::test]
async fn body_exactly_at_the_cap_is_accepted() {
    let server = serve(|_| async { crate::support::text(200, "y".repeat(1000)) }).await;

    let at = probe(&target(json!({"url": server.url("/"), "body_max_bytes": 1000}))).await;
    let below = probe(&target(json!({"url": server.url("/"), "body_max_bytes": 999}))).await;

    assert!(at.success, "{at:?}");
    assert_eq!(at.body_bytes, Some(1000));
    assert_eq!(below.error_kind.as_deref(), Some("body_too_large"));
}

#[tokio::test]
async fn head_response_content_length_is_not_a_body() {
    // RFC 9110 §9.3.2: a HEAD response carries no body; its Content-Length is the size a GET
    // would have returned, so it cannot exceed the body cap.
    let server = raw(|mut s| async move {
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HEAD / HTTP/1.1\r\n"), "{head}");
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: 5000000\r\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let t = target(json!({"url": server.url("/"), "method": "HEAD", "body_max_bytes": 1000}));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.content_length, Some(5_000_000));
    assert_eq!(r.body_bytes, Some(0));
}

#[tokio::test]
async fn connection_closed_mid_body_is_body_failure() {
    let server = raw(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            .await;
    })
    .await;

    let r = probe(&target(json!({"url": server.url("/")}))).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("body"), "{r:?}");
    assert_eq!(r.status_code, Some(200));
    assert_eq!(r.content_length, Some(100));
}

#[tokio::test]
async fn slow_body_times_out_during_transfer() {
    let server = raw(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst bytes")
            .await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;

    let r = probe(&target(json!({"url": server.url("/"), "timeout": "300ms"}))).await;

    assert_eq!(r.error_kind.as_deref(), Some("timeout"), "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("transfer"), "{:?}", r.error);
    assert_eq!(r.status_code, Some(200), "the response head arrived before the timeout");
    assert!((0.3..=0.55).contains(&r.duration_seconds), "{}", r.duration_seconds);
}
