//! Credentials in URLs: `http://user:pass@host/` is basic auth, and no credential ever reaches
//! the published result, the metrics or the target's `Debug` (what logs print).

use base64::Engine as _;
use checker::target::{load_targets, Defaults, ProxyEnv};
use common::config::Env;
use serde_json::json;
use tokio::sync::mpsc;

use crate::support::{probe, redirect, serve, target, text};

const SECRET: &str = "hunter2";

/// A server recording the `Authorization` header of every request; `/hop` redirects to a URL
/// holding credentials, `/next` answers.
async fn auth_recorder() -> (
    crate::support::Server,
    mpsc::UnboundedReceiver<(String, Option<String>)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = serve(move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            let path = req.uri().path().to_string();
            tx.send((path.clone(), auth)).unwrap();
            let host = req.headers().get("host").unwrap().to_str().unwrap().to_string();
            match path.as_str() {
                "/hop" => redirect(302, &format!("http://bob:{SECRET}@{host}/next")),
                _ => text(200, "authorized"),
            }
        }
    })
    .await;
    (server, rx)
}

fn basic(credentials: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

#[tokio::test]
async fn url_credentials_are_basic_auth_and_never_recorded() {
    let (server, mut rx) = auth_recorder().await;
    let url = format!("http://alice:{SECRET}%40x@{}/health", server.addr);
    let t = target(json!({"url": url, "regex": "authorized"}));

    let r = probe(&t).await;
    let metrics = checker::metrics::Metrics::new();
    metrics.record(&r);
    let exposition = metrics.text();

    assert!(r.success, "{r:?}");
    let (_, auth) = rx.recv().await.unwrap();
    assert_eq!(auth, Some(basic(&format!("alice:{SECRET}@x"))), "percent-decoded");
    let clean = format!("http://{}/health", server.addr);
    assert_eq!(r.url, clean);
    assert_eq!(r.final_url.as_deref(), Some(clean.as_str()));
    assert_eq!(
        r.target, clean,
        "the default name (Kafka key, metrics label) has no credentials"
    );
    let published = serde_json::to_string(&r).unwrap();
    for text in [&published, &exposition, &format!("{t:?}")] {
        assert!(
            !text.contains(SECRET) && !text.contains("alice"),
            "credentials leaked: {text}"
        );
    }
    assert!(
        exposition.contains(&format!("probe_success{{target=\"{clean}\"}} 1")),
        "{exposition}"
    );
}

#[tokio::test]
async fn credentials_in_a_redirect_location_are_neither_used_nor_recorded() {
    let (server, mut rx) = auth_recorder().await;

    let r = probe(&target(json!({"url": server.url("/hop")}))).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.redirects, 1);
    assert_eq!(r.final_url.as_deref(), Some(server.url("/next").as_str()));
    let _hop = rx.recv().await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), ("/next".to_string(), None));
    assert!(!serde_json::to_string(&r).unwrap().contains(SECRET));
}

#[tokio::test]
async fn url_credentials_with_configured_auth_are_refused_at_start_up() {
    let defaults = Defaults {
        interval: std::time::Duration::from_secs(30),
        timeout: std::time::Duration::from_secs(5),
        body_max_bytes: 1 << 20,
        proxy_env: ProxyEnv::default(),
    };
    let load = |spec: serde_json::Value| {
        let json = serde_json::Value::Array(vec![spec]).to_string();
        load_targets(&Env::from_pairs([("TARGETS", json.as_str())]), &defaults).unwrap_err()
    };
    let url = format!("http://alice:{SECRET}@127.0.0.1:1/");

    let errors = [
        load(json!({"url": url, "basic_auth": {"username": "u", "password": "p"}})),
        load(json!({"url": url, "headers": {"Authorization": "Bearer t"}})),
        load(json!({"url": format!("gopher://alice:{SECRET}@h/")})),
    ];

    for e in &errors {
        assert_eq!(e.var, "TARGETS[0].url", "{e}");
        assert!(!e.to_string().contains(SECRET), "the error echoes the password: {e}");
    }
}
