//! Plain HTTP probes: recorded fields, body regexes, status and header conditions, request
//! options, one connection per probe.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::support::{probe, redirect, serve, serve_on, target, text, DEFAULT_TIMEOUT};

const PAGE: &str = "<html><body>status: all systems operational</body></html>";

#[tokio::test]
async fn healthy_page_records_every_field() {
    let server = serve(|_| async { text(200, PAGE) }).await;
    let t = target(json!({"name": "web", "url": server.url("/health"), "regex": "systems operational"}));
    let scheduled_at = Utc::now();

    let r = checker::probe::run(&t, scheduled_at, "checker-7", "eu-west").await;

    assert!(r.success, "{r:?}");
    assert_eq!((r.error_kind.as_deref(), r.error.as_deref()), (None, None));
    assert_eq!(r.schema_version, common::result::SCHEMA_VERSION);
    assert_eq!(r.check_id, common::result::check_id("web", "eu-west", scheduled_at));
    assert_eq!((r.instance_id.as_str(), r.location.as_str()), ("checker-7", "eu-west"));
    assert_eq!(r.target, "web");
    assert_eq!(r.url, server.url("/health"));
    assert_eq!(r.scheduled_at, scheduled_at);
    assert!(r.started_at >= scheduled_at && r.lateness_seconds >= 0.0, "{r:?}");
    assert_eq!(r.timeout_seconds, DEFAULT_TIMEOUT.as_secs_f64());
    assert_eq!(r.status_code, Some(200));
    assert_eq!(r.first_status_code, Some(200));
    assert_eq!(r.redirects, 0);
    assert_eq!(r.final_url.as_deref(), Some(server.url("/health").as_str()));
    assert_eq!(r.regex_matched, Some(true));
    assert_eq!(r.http_version.as_deref(), Some("HTTP/1.1"));
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(r.ip_family.as_deref(), Some("ipv4"));
    assert_eq!(r.body_bytes, Some(PAGE.len() as u64));
    assert_eq!(r.content_length, Some(PAGE.len() as u64));
    assert_eq!(r.tls, None);
    let p = &r.phases;
    assert_eq!(p.resolve, None, "no DNS for an IP literal");
    assert_eq!(p.tls, None, "no TLS for http://");
    let (connect, processing, transfer) = (p.connect.unwrap(), p.processing.unwrap(), p.transfer.unwrap());
    assert!(connect >= 0.0 && processing >= 0.0 && transfer >= 0.0, "{p:?}");
    assert!(
        r.duration_seconds >= connect + processing + transfer && r.duration_seconds < 1.0,
        "duration {} vs phases {p:?}",
        r.duration_seconds
    );
}

#[tokio::test]
async fn host_name_is_resolved_and_timed() {
    let server = serve(|_| async { text(200, PAGE) }).await;
    let url = format!("http://localhost:{}/", server.addr.port());
    let t = target(json!({"url": url, "regex": "operational", "ip_family": "ipv4"}));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert!(r.phases.resolve.is_some_and(|s| s >= 0.0), "{:?}", r.phases);
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(r.ip_family.as_deref(), Some("ipv4"));
    assert_eq!(r.target, url, "the name defaults to the URL");
}

#[tokio::test]
async fn body_regex_mismatch_is_regex_failure() {
    let server = serve(|_| async { text(200, "status: degraded") }).await;
    let t = target(json!({"url": server.url("/"), "regex": "operational"}));

    let r = probe(&t).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("regex"));
    assert_eq!(r.regex_matched, Some(false));
    assert_eq!(r.status_code, Some(200));
    assert_eq!(r.body_bytes, Some("status: degraded".len() as u64));
    assert!(r.error.as_deref().unwrap().contains("operational"), "{:?}", r.error);
}

#[tokio::test]
async fn fail_if_body_matches_is_regex_failure_when_it_matches() {
    let server = serve(|req: http::Request<_>| async move {
        match req.uri().path() {
            "/bad" => text(200, "status: ERROR in database"),
            _ => text(200, PAGE),
        }
    })
    .await;

    let bad = probe(&target(
        json!({"url": server.url("/bad"), "fail_if_body_matches": "ERROR"}),
    ))
    .await;
    let good = probe(&target(
        json!({"url": server.url("/good"), "fail_if_body_matches": "ERROR"}),
    ))
    .await;

    assert!(!bad.success);
    assert_eq!(bad.error_kind.as_deref(), Some("regex"));
    assert_eq!(bad.regex_matched, Some(false));
    assert!(good.success, "{good:?}");
    assert_eq!(good.regex_matched, Some(true));
}

#[tokio::test]
async fn no_body_condition_leaves_regex_matched_null() {
    let server = serve(|_| async { text(200, PAGE) }).await;

    let r = probe(&target(json!({"url": server.url("/")}))).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.regex_matched, None);
}

#[tokio::test]
async fn unexpected_status_fails_unless_listed() {
    let server = serve(|_| async { text(500, "boom") }).await;

    let default = probe(&target(json!({"url": server.url("/")}))).await;
    let listed = probe(&target(json!({"url": server.url("/"), "valid_status_codes": ["5xx"]}))).await;

    assert!(!default.success);
    assert_eq!(default.error_kind.as_deref(), Some("status"));
    assert_eq!(default.status_code, Some(500));
    assert!(default.error.as_deref().unwrap().contains("500"), "{:?}", default.error);
    assert!(listed.success, "{listed:?}");
    assert_eq!(listed.status_code, Some(500));
}

#[tokio::test]
async fn header_rules_are_checked() {
    let server = serve(|req: http::Request<_>| async move {
        let content_type = if req.uri().path() == "/json" {
            "application/json"
        } else {
            "text/html"
        };
        http::Response::builder()
            .header("content-type", content_type)
            .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    })
    .await;
    let rule = json!([{"header": "content-type", "regex": "json"}]);

    let html = probe(&target(
        json!({"url": server.url("/html"), "fail_if_header_not_matches": rule}),
    ))
    .await;
    let json_page = probe(&target(
        json!({"url": server.url("/json"), "fail_if_header_not_matches": rule}),
    ))
    .await;
    let forbidden = probe(&target(
        json!({"url": server.url("/json"), "fail_if_header_matches": rule}),
    ))
    .await;

    assert!(!html.success);
    assert_eq!(html.error_kind.as_deref(), Some("header"));
    assert!(
        html.error.as_deref().unwrap().contains("content-type"),
        "{:?}",
        html.error
    );
    assert!(json_page.success, "{json_page:?}");
    assert_eq!(forbidden.error_kind.as_deref(), Some("header"));
}

/// What the server saw of one request.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

#[tokio::test]
async fn post_with_body_and_headers_reaches_the_server() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = serve(move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            tx.send(Seen {
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                headers: parts.headers,
                body,
            })
            .unwrap();
            text(201, "created")
        }
    })
    .await;
    let t = target(json!({
        "url": server.url("/api/check?x=1"), "method": "post", "body": "{\"ping\":true}",
        "headers": {"x-probe": "it-42", "content-type": "application/json"},
        "basic_auth": {"username": "u", "password": "p"}, "regex": "created",
    }));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.status_code, Some(201));
    let seen = rx.recv().await.unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/api/check?x=1");
    assert_eq!(seen.body, Bytes::from_static(b"{\"ping\":true}"));
    let h = |name: &str| seen.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(h("x-probe").as_deref(), Some("it-42"));
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    assert_eq!(h("content-length").as_deref(), Some("13"));
    assert_eq!(h("authorization").as_deref(), Some("Basic dTpw"));
    assert_eq!(h("host"), Some(server.addr.to_string()));
    assert_eq!(h("user-agent").as_deref(), Some(checker::probe::USER_AGENT));
}

#[tokio::test]
async fn every_probe_opens_a_fresh_connection() {
    let server = serve(|_| async { text(200, PAGE) }).await;
    let t = target(json!({"url": server.url("/")}));

    for _ in 0..3 {
        let r = probe(&t).await;
        assert!(r.success, "{r:?}");
    }

    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn every_redirect_hop_opens_a_fresh_connection() {
    let server = serve(|req: http::Request<_>| async move {
        match req.uri().path() {
            "/old" => redirect(301, "/new"),
            _ => text(200, PAGE),
        }
    })
    .await;

    let r = probe(&target(json!({"url": server.url("/old")}))).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.redirects, 1);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn ipv6_literal_is_connected_and_sent_as_host() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = serve_on("[::1]:0", None, move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            tx.send(req.headers().get("host").cloned()).unwrap();
            text(200, PAGE)
        }
    })
    .await;
    let url = server.url("/");
    assert!(url.starts_with("http://[::1]:"), "{url}");

    let r = tokio::time::timeout(Duration::from_secs(3), probe(&target(json!({"url": url}))))
        .await
        .unwrap();

    let host = rx.recv().await.unwrap();
    assert_eq!(
        host.as_ref().and_then(|h| h.to_str().ok()),
        Some(format!("[::1]:{}", server.addr.port())).as_deref()
    );
    assert!(r.success, "{r:?}");
    assert_eq!(r.ip_address.as_deref(), Some("::1"));
    assert_eq!(r.ip_family.as_deref(), Some("ipv6"));
}
