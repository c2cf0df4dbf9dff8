//! Probes through an HTTP proxy: absolute-form requests for http, CONNECT tunnels for https.

use base64::Engine as _;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::{probe, raw, read_head, serve_on, target, text, Pki};

fn basic(credentials: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn http_goes_through_the_proxy_in_absolute_form() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let proxy = raw(move |mut s| {
        let tx = tx.clone();
        async move {
            tx.send(read_head(&mut s).await).unwrap();
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nvia proxy ok")
                .await;
        }
    })
    .await;
    let t = target(json!({
        "url": "http://example.invalid/status?q=1", "regex": "via proxy ok",
        "proxy": format!("http://user:p%40ss@127.0.0.1:{}", proxy.addr.port()),
    }));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    let head = rx.recv().await.unwrap();
    assert_eq!(
        head.lines().next(),
        Some("GET http://example.invalid/status?q=1 HTTP/1.1")
    );
    assert_eq!(header(&head, "host"), Some("example.invalid"));
    assert_eq!(header(&head, "proxy-authorization"), Some(basic("user:p@ss").as_str()));
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"), "the peer is the proxy");
    assert_eq!(r.phases.resolve, None, "the checker does not resolve the origin");
}

#[tokio::test]
async fn https_goes_through_a_connect_tunnel() {
    let pki = Pki::new();
    let origin = serve_on("127.0.0.1:0", Some(pki.server_config(&[])), |_| async {
        text(200, "tunnelled ok")
    })
    .await;
    let origin_addr = origin.addr;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Tunnels every CONNECT to the local TLS server, whatever host it names.
    let proxy = raw(move |mut s| {
        let tx = tx.clone();
        async move {
            tx.send(read_head(&mut s).await).unwrap();
            let mut upstream = TcpStream::connect(origin_addr).await.unwrap();
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
        }
    })
    .await;
    let t = target(json!({
        "url": "https://example.invalid/", "regex": "tunnelled ok", "tls": {"ca_file": pki.ca_file},
        "proxy": format!("http://user:secret@127.0.0.1:{}", proxy.addr.port()),
    }));

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    let head = rx.recv().await.unwrap();
    assert_eq!(head.lines().next(), Some("CONNECT example.invalid:443 HTTP/1.1"));
    assert_eq!(
        header(&head, "proxy-authorization"),
        Some(basic("user:secret").as_str())
    );
    assert_eq!(r.tls.and_then(|t| t.leaf_not_after), Some(pki.leaf_not_after));
    assert_eq!(origin.connections(), 1);
}

#[tokio::test]
async fn refused_tunnel_is_proxy_failure() {
    let proxy = raw(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await;
    })
    .await;
    let t =
        target(json!({"url": "https://example.invalid/", "proxy": format!("http://127.0.0.1:{}", proxy.addr.port())}));

    let r = probe(&t).await;

    assert_eq!(r.error_kind.as_deref(), Some("proxy"), "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("403 Forbidden"), "{:?}", r.error);
    assert_eq!(r.tls, None);
}

#[tokio::test]
async fn proxy_is_chosen_again_for_each_redirect_hop() {
    // The first hop goes through the proxy (example.invalid is not exempt); the proxy answers
    // with a redirect to 127.0.0.1, which NO_PROXY exempts, so the second hop goes direct.
    let (direct_tx, mut direct_rx) = mpsc::unbounded_channel();
    let direct = crate::support::serve(move |req: http::Request<hyper::body::Incoming>| {
        let tx = direct_tx.clone();
        async move {
            tx.send(req.uri().to_string()).unwrap();
            text(200, "direct ok")
        }
    })
    .await;
    let location = direct.url("/final");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let proxy = raw(move |mut s| {
        let (tx, location) = (tx.clone(), location.clone());
        async move {
            tx.send(read_head(&mut s).await).unwrap();
            let reply =
                format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(reply.as_bytes()).await;
        }
    })
    .await;
    let proxy_url = format!("http://127.0.0.1:{}", proxy.addr.port());
    let t = crate::support::target_with_proxy_env(
        json!({"url": "http://example.invalid/start", "regex": "direct ok"}),
        &[("HTTP_PROXY", proxy_url.as_str()), ("NO_PROXY", "127.0.0.1")],
    );

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    let head = rx.recv().await.unwrap();
    assert_eq!(head.lines().next(), Some("GET http://example.invalid/start HTTP/1.1"));
    assert_eq!(
        direct_rx.recv().await.unwrap(),
        "/final",
        "origin-form: no proxy on the second hop"
    );
    assert_eq!(proxy.connections(), 1, "only the first hop went through the proxy");
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"));
}
