//! Redirect handling: off, on, and loops.

use serde_json::json;

use crate::support::{probe, redirect, serve, target, text};

async fn redirecting_server() -> crate::support::Server {
    serve(|req: http::Request<_>| async move {
        match req.uri().path() {
            "/old" => redirect(301, "/new?from=old"),
            "/loop" => redirect(302, "/loop"),
            _ => text(200, "new home"),
        }
    })
    .await
}

#[tokio::test]
async fn unfollowed_redirect_is_the_final_response() {
    let server = redirecting_server().await;

    let r = probe(&target(json!({"url": server.url("/old"), "follow_redirects": false}))).await;
    let accepted = probe(&target(json!({
        "url": server.url("/old"), "follow_redirects": false, "valid_status_codes": [301],
    })))
    .await;

    assert!(!r.success, "301 is not 2xx");
    assert_eq!(r.error_kind.as_deref(), Some("status"));
    assert_eq!(
        (r.status_code, r.first_status_code, r.redirects),
        (Some(301), Some(301), 0)
    );
    assert_eq!(r.final_url.as_deref(), Some(server.url("/old").as_str()));
    assert!(accepted.success, "{accepted:?}");
    assert_eq!(accepted.status_code, Some(301));
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn followed_redirect_records_both_hops() {
    let server = redirecting_server().await;

    let r = probe(&target(json!({"url": server.url("/old"), "regex": "new home"}))).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.first_status_code, Some(301));
    assert_eq!(r.status_code, Some(200));
    assert_eq!(r.redirects, 1);
    assert_eq!(r.final_url.as_deref(), Some(server.url("/new?from=old").as_str()));
    assert_eq!(r.url, server.url("/old"));
    assert_eq!(r.body_bytes, Some("new home".len() as u64));
}

#[tokio::test]
async fn redirect_loop_is_too_many_redirects() {
    let server = redirecting_server().await;

    let r = probe(&target(json!({"url": server.url("/loop"), "max_redirects": 3}))).await;

    assert!(!r.success);
    assert_eq!(r.error_kind.as_deref(), Some("too_many_redirects"), "{r:?}");
    assert_eq!(r.redirects, 3);
    assert_eq!(r.status_code, Some(302));
    assert_eq!(server.connections(), 4, "the original request and 3 followed redirects");
}

/// Method, `Authorization` header and body of one request, as the server saw them.
type Seen = (String, Option<String>, bytes::Bytes);

async fn recording_server(
    respond: fn(&str) -> http::Response<crate::support::Body>,
) -> (crate::support::Server, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let server = serve(move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let auth = parts
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            tx.send((parts.method.to_string(), auth, body)).unwrap();
            respond(parts.uri.path())
        }
    })
    .await;
    (server, rx)
}

#[tokio::test]
async fn see_other_turns_post_into_get_and_307_keeps_it() {
    let (server, mut rx) = recording_server(|path| match path {
        "/303" => redirect(303, "/done"),
        "/307" => redirect(307, "/done"),
        _ => text(200, "done"),
    })
    .await;
    let post = |path: &str| target(json!({"url": server.url(path), "method": "POST", "body": "payload"}));

    let r303 = probe(&post("/303")).await;
    let seen303 = [rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    let r307 = probe(&post("/307")).await;
    let seen307 = [rx.recv().await.unwrap(), rx.recv().await.unwrap()];

    assert!(r303.success && r307.success, "{r303:?} {r307:?}");
    assert_eq!((seen303[0].0.as_str(), &seen303[0].2[..]), ("POST", &b"payload"[..]));
    assert_eq!((seen303[1].0.as_str(), &seen303[1].2[..]), ("GET", &b""[..]));
    assert_eq!((seen307[1].0.as_str(), &seen307[1].2[..]), ("POST", &b"payload"[..]));
}

#[tokio::test]
async fn redirect_to_a_non_http_location_is_request_failure() {
    let server = serve(|_| async { redirect(302, "ftp://files.invalid/x") }).await;

    let r = probe(&target(json!({"url": server.url("/")}))).await;

    assert_eq!(r.error_kind.as_deref(), Some("request"), "{r:?}");
    assert_eq!(r.status_code, Some(302));
}

#[tokio::test]
async fn credentials_follow_same_host_redirects() {
    let (server, mut rx) = recording_server(|path| match path {
        "/start" => redirect(302, "/final"),
        _ => text(200, "final"),
    })
    .await;
    let t = target(json!({"url": server.url("/start"), "basic_auth": {"username": "u", "password": "p"}}));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    let seen = [rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    assert_eq!(seen[0].1.as_deref(), Some("Basic dTpw"));
    assert_eq!(
        seen[1].1.as_deref(),
        Some("Basic dTpw"),
        "the same host keeps the credentials"
    );
}

#[tokio::test]
async fn credentials_are_not_sent_to_another_host_on_redirect() {
    // Like curl (without --location-trusted) and Go's client (blackbox_exporter), the checker
    // must send the configured Authorization header only to the host it was configured for.
    let (other, mut other_rx) = recording_server(|_| text(200, "elsewhere")).await;
    let other_url = format!("http://localhost:{}/", other.addr.port());
    let location = other_url.clone();
    let origin = serve(move |_| {
        let location = location.clone();
        async move { redirect(302, &location) }
    })
    .await;
    let t = target(json!({
        "url": origin.url("/"), "ip_family": "ipv4", "basic_auth": {"username": "u", "password": "p"},
    }));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.final_url.as_deref(), Some(other_url.as_str()));
    let (_, auth, _) = other_rx.recv().await.unwrap();
    assert_eq!(auth, None, "credentials for 127.0.0.1 were sent to {other_url}");
}

/// A server that sends the request headers it got on `tx` and answers 200.
async fn header_recorder() -> (
    crate::support::Server,
    tokio::sync::mpsc::UnboundedReceiver<http::HeaderMap>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let server = serve(move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            tx.send(req.headers().clone()).unwrap();
            text(200, "recorded")
        }
    })
    .await;
    (server, rx)
}

/// A target at `url` with basic auth, a cookie, an API key header and a harmless header.
fn target_with_credentials(url: &str) -> checker::target::Target {
    target(json!({
        "url": url, "basic_auth": {"username": "u", "password": "p"},
        "headers": {"cookie": "session=s3cret", "x-api-key": "k3y", "x-request-tag": "probe"},
    }))
}

#[tokio::test]
async fn credentials_are_not_sent_to_another_port_of_the_same_host() {
    // curl since CVE-2022-27776: another scheme, host *or port* is another origin.
    let (other, mut other_rx) = header_recorder().await;
    let location = other.url("/");
    let origin = serve(move |_| {
        let location = location.clone();
        async move { redirect(302, &location) }
    })
    .await;
    assert_eq!(origin.addr.ip(), other.addr.ip());

    let r = probe(&target_with_credentials(&origin.url("/"))).await;

    assert!(r.success, "{r:?}");
    let seen = other_rx.recv().await.unwrap();
    for name in ["authorization", "cookie", "x-api-key"] {
        assert_eq!(seen.get(name), None, "{name} reached {}", other.addr);
    }
    assert_eq!(seen.get("x-request-tag").unwrap(), "probe", "other headers still go");
}

#[tokio::test]
async fn credentials_follow_same_origin_redirects() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = serve(move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            tx.send(req.headers().clone()).unwrap();
            match req.uri().path() {
                "/start" => redirect(302, "/final"),
                _ => text(200, "final"),
            }
        }
    })
    .await;

    let r = probe(&target_with_credentials(&server.url("/start"))).await;

    assert!(r.success, "{r:?}");
    let _first = rx.recv().await.unwrap();
    let second = rx.recv().await.unwrap();
    assert_eq!(second.get("authorization").unwrap(), "Basic dTpw");
    assert_eq!(second.get("cookie").unwrap(), "session=s3cret");
    assert_eq!(second.get("x-api-key").unwrap(), "k3y");
}
