//! Probes that fail before a response: timeout, DNS, refused connection, early close.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::support::{probe, raw, read_head, target};

#[tokio::test]
async fn silent_server_times_out_at_the_target_timeout() {
    let server = raw(|mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(s);
    })
    .await;
    let t = target(json!({"url": server.url("/"), "timeout": "500ms"}));

    let r = probe(&t).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("timeout"), "{r:?}");
    assert!(
        (0.5..=0.75).contains(&r.duration_seconds),
        "duration {}",
        r.duration_seconds
    );
    assert_eq!(r.timeout_seconds, 0.5);
    assert_eq!(r.status_code, None);
    assert!(r.error.as_deref().unwrap().contains("processing"), "{:?}", r.error);
    assert!(r.phases.connect.is_some(), "completed phases are kept: {:?}", r.phases);
}

#[tokio::test]
async fn unresolvable_host_is_dns_failure() {
    let t = target(json!({"url": "http://no-such-host.invalid/"}));

    let r = probe(&t).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("dns"), "{r:?}");
    assert!(
        r.error.as_deref().unwrap().contains("no-such-host.invalid"),
        "{:?}",
        r.error
    );
    assert!(r.phases.resolve.is_some());
    assert_eq!(r.phases.connect, None);
    assert_eq!((r.status_code, r.ip_address.as_deref()), (None, None));
}

#[tokio::test]
async fn refused_connection_is_connect_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let t = target(json!({"url": format!("http://{addr}/")}));

    let r = probe(&t).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("connect"), "{r:?}");
    assert_eq!(r.status_code, None);
    assert_eq!(
        (r.ip_address.as_deref(), r.ip_family.as_deref()),
        (Some("127.0.0.1"), Some("ipv4")),
        "the address tried is recorded"
    );
    assert!(r.error.as_deref().unwrap().contains(&addr.to_string()), "{:?}", r.error);
}

#[tokio::test]
async fn close_before_response_headers_is_http_failure() {
    let server = raw(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.shutdown().await;
    })
    .await;

    let r = probe(&target(json!({"url": server.url("/")}))).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("http"), "{r:?}");
    assert_eq!(
        r.error.as_deref(),
        Some("connection closed before the response headers arrived")
    );
    assert_eq!(r.status_code, None);
}

#[tokio::test]
async fn malformed_response_is_http_failure() {
    let server = raw(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"this is not HTTP\r\n\r\n").await;
    })
    .await;

    let r = probe(&target(json!({"url": server.url("/")}))).await;

    assert_eq!(r.error_kind.as_deref(), Some("http"), "{r:?}");
    assert_eq!(r.status_code, None);
}
