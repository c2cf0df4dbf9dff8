//! HTTP proxies: which proxy a request goes through, and the `CONNECT` tunnel for `https`.
//!
//! Both come from hyper-util: its [`Matcher`] applies `HTTP_PROXY`, `HTTPS_PROXY` and
//! `NO_PROXY` as curl does and decodes the proxy URL's credentials into a `Proxy-Authorization`
//! value; its [`Tunnel`] writes `CONNECT host:port` (RFC 9110 §9.3.6) and reads the proxy's
//! answer. What stays here is the seam the probe needs: the probe connects to the proxy
//! itself (a fresh connection per hop, timed as the `connect` phase, the proxy's address
//! recorded), and [`tunnel`] hands that connection to `Tunnel` as its connector, so
//! `Tunnel` never opens a connection of its own.
//!
//! This module must never put a proxy's credentials into a URL, a log line or an error:
//! they travel only as the sensitive header value [`Intercept::basic_auth`] returns.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use common::config::{ConfigError, Env};
use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
pub use hyper_util::client::proxy::matcher::Intercept;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;
use url::Url;

/// How the checker reaches a target. `Debug` shows proxy URLs without their password.
#[derive(Clone, PartialEq, Eq)]
pub enum ProxyMode {
    /// Directly.
    Direct,
    /// Through this HTTP proxy: absolute-form requests for `http`, a `CONNECT` tunnel for
    /// `https` (RFC 9110 §9.3.6). Credentials in the URL are sent as `Proxy-Authorization`.
    Http(Url),
    /// As the proxy environment says for each hop's URL (`NO_PROXY` is matched again after
    /// every redirect).
    Env(Arc<ProxyEnv>),
}

impl std::fmt::Debug for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct => f.write_str("Direct"),
            Self::Http(p) => f.debug_tuple("Http").field(&Redacted(Some(p))).finish(),
            Self::Env(env) => f.debug_tuple("Env").field(env).finish(),
        }
    }
}

impl ProxyMode {
    /// The proxy for a request to `url`, if any: its address ([`Intercept::uri`], an
    /// `http://host:port/` URI without credentials) and its credentials
    /// ([`Intercept::basic_auth`], percent-decoded, marked sensitive).
    pub fn for_url(&self, url: &Url) -> Option<Intercept> {
        match self {
            Self::Direct => None,
            // A matcher without NO_PROXY that sends everything to `p`. Built per hop (a parse
            // and a base64 encoding, nothing beside a network round trip) so that the mode
            // stays a plain value that compares and prints.
            Self::Http(p) => Matcher::builder().all(p.as_str()).build().intercept(&origin(url)?),
            Self::Env(env) => env.for_url(url),
        }
    }
}

/// A proxy URL for `Debug`, its password replaced by `***`.
struct Redacted<'a>(Option<&'a Url>);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(url) = self.0 else { return f.write_str("None") };
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        write!(f, "{:?}", shown.as_str())
    }
}

/// The standard proxy variables, read once at start-up, and hyper-util's [`Matcher`] over
/// them. `Debug` hides proxy passwords.
///
/// `NO_PROXY` (hyper-util's rules, after curl's): comma-separated entries; a domain matches
/// itself and its subdomains (a leading dot changes nothing), an IP address or a CIDR network
/// (`10.0.0.0/8`) matches addresses, `*` matches every host. A port in an entry never matches.
#[derive(Clone)]
pub struct ProxyEnv {
    http: Option<Url>,
    https: Option<Url>,
    no_proxy: String,
    matcher: Arc<Matcher>,
}

impl Default for ProxyEnv {
    fn default() -> Self {
        Self::new(None, None, String::new())
    }
}

/// Equal when read from the same values.
impl PartialEq for ProxyEnv {
    fn eq(&self, other: &Self) -> bool {
        (&self.http, &self.https, &self.no_proxy) == (&other.http, &other.https, &other.no_proxy)
    }
}

impl Eq for ProxyEnv {}

impl std::fmt::Debug for ProxyEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyEnv")
            .field("http", &Redacted(self.http.as_ref()))
            .field("https", &Redacted(self.https.as_ref()))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ProxyEnv {
    fn new(http: Option<Url>, https: Option<Url>, no_proxy: String) -> Self {
        let as_str = |u: &Option<Url>| u.as_ref().map_or_else(String::new, |u| u.as_str().to_string());
        let matcher = Matcher::builder()
            .http(as_str(&http))
            .https(as_str(&https))
            .no(no_proxy.as_str())
            .build();
        Self {
            http,
            https,
            no_proxy,
            matcher: Arc::new(matcher),
        }
    }

    /// Reads `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (upper case first, then lower case).
    ///
    /// # Errors
    /// A proxy URL that does not parse or is not `http://`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = |names: [&'static str; 2]| -> Result<Option<Url>, ConfigError> {
            match env.get_any(&names) {
                None => Ok(None),
                Some((var, v)) => parse_proxy_url(var, v).map(Some),
            }
        };
        let no_proxy = env.get_any(&["NO_PROXY", "no_proxy"]).map(|(_, v)| v.to_string());
        Ok(Self::new(
            url(["HTTP_PROXY", "http_proxy"])?,
            url(["HTTPS_PROXY", "https_proxy"])?,
            no_proxy.unwrap_or_default(),
        ))
    }

    /// The proxy for `url` by the rules in the type's doc, as [`ProxyMode::for_url`].
    pub fn for_url(&self, url: &Url) -> Option<Intercept> {
        self.matcher.intercept(&origin(url)?)
    }

    /// Whether no proxy is set (`NO_PROXY` alone changes nothing).
    pub(crate) fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }
}

/// Parses the proxy URL in `var`: `http://` only, with a host.
///
/// # Errors
/// A [`ConfigError`] naming `var`, without the value's credentials.
pub(crate) fn parse_proxy_url(var: &str, v: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(v)
        .map_err(|e| ConfigError::new(var, format!("{v:?} is not a URL: {e}"), "http://proxy.internal:3128"))?;
    if url.scheme() != "http" || url.host_str().is_none() {
        return Err(ConfigError::new(
            var,
            "only http:// proxies are supported",
            "http://proxy.internal:3128",
        ));
    }
    Ok(url)
}

/// `scheme://host[:port]/` of `url`: what the matcher and the tunnel look at. `None` without
/// a host.
fn origin(url: &Url) -> Option<Uri> {
    // `host_str` already brackets IPv6 literals (`[::1]`).
    let host = url.host_str()?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Uri::builder()
        .scheme(url.scheme())
        .authority(authority)
        .path_and_query("/")
        .build()
        .ok()
}

/// Opens a `CONNECT` tunnel to `url`'s host and port (443 unless the URL says otherwise)
/// through `proxy` over `tcp`, the connection the probe already made to it.
///
/// hyper-util's `Tunnel` accepts only a `200` answer and reads the answer's head with one
/// buffer, so bytes the proxy sends after it are lost; a TLS client speaks first, so none
/// are expected.
///
/// # Errors
/// The cause, for the probe's `proxy` error: the proxy's status line when it refused the
/// tunnel (e.g. `proxy refused the tunnel: HTTP/1.1 407 Proxy Authentication Required`), or
/// what went wrong reading or writing.
pub async fn tunnel(tcp: TcpStream, proxy: &Intercept, url: &Url) -> Result<TcpStream, String> {
    let dst = origin(url).ok_or_else(|| format!("{url} has no host"))?;
    let head = Arc::new(Mutex::new(Vec::new()));
    let connected = Connected(Some(TokioIo::new(HeadRecorder {
        stream: tcp,
        head: head.clone(),
    })));
    let mut tunnel = Tunnel::new(proxy.uri().clone(), connected);
    if let Some(auth) = proxy.basic_auth() {
        tunnel = tunnel.with_auth(auth.clone());
    }
    match tunnel.call(dst).await {
        Ok(io) => Ok(io.into_inner().stream),
        Err(e) => {
            let head = head.lock().expect("head lock");
            let status_line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default())
                .trim()
                .to_string();
            Err(if status_line.is_empty() {
                format!("CONNECT through the proxy: {}", common::telemetry::chain(&e))
            } else {
                format!("proxy refused the tunnel: {status_line}")
            })
        }
    }
}

/// The connection already made (and timed) to the proxy, as the connector `Tunnel` wraps:
/// `Tunnel` calls it once, for the proxy's address, and gets this connection.
struct Connected(Option<TokioIo<HeadRecorder>>);

impl Service<Uri> for Connected {
    type Response = TokioIo<HeadRecorder>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _proxy: Uri) -> Self::Future {
        std::future::ready(
            self.0
                .take()
                .ok_or_else(|| io::Error::other("the connection to the proxy was used already")),
        )
    }
}

/// The most bytes of the proxy's answer kept for the error (its status line).
const HEAD_KEPT: usize = 512;

/// A TCP stream that keeps the first [`HEAD_KEPT`] bytes read from it: `Tunnel`'s error says
/// "unsuccessful", the kept bytes say what the proxy answered.
struct HeadRecorder {
    stream: TcpStream,
    head: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for HeadRecorder {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let mut head = self.head.lock().expect("head lock");
            let read = &buf.filled()[before..];
            let keep = read.len().min(HEAD_KEPT.saturating_sub(head.len()));
            head.extend_from_slice(&read[..keep]);
        }
        polled
    }
}

impl AsyncWrite for HeadRecorder {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn proxy_of(mode: &ProxyMode, url: &str) -> Option<String> {
        mode.for_url(&Url::parse(url).unwrap()).map(|i| i.uri().to_string())
    }

    #[test]
    fn no_proxy_rules() {
        let env = Env::from_pairs([
            ("HTTP_PROXY", "http://p:3128"),
            ("NO_PROXY", "internal.example, .svc,127.0.0.1,10.1.0.0/16,::1"),
        ]);
        let mode = ProxyMode::Env(Arc::new(ProxyEnv::from_env(&env).unwrap()));
        let via = |u| proxy_of(&mode, u);
        assert_eq!(via("http://a.internal.example/"), None);
        assert_eq!(via("http://INTERNAL.example/"), None, "case does not matter");
        assert_eq!(via("http://x.svc/"), None);
        assert_eq!(via("http://svc/"), None, "a leading dot also matches the domain itself");
        assert_eq!(via("http://127.0.0.1:80/"), None);
        assert_eq!(via("http://10.1.200.3/"), None, "CIDR networks match addresses");
        assert_eq!(via("http://[::1]:8080/"), None);
        assert_eq!(via("http://notinternal.example/").as_deref(), Some("http://p:3128/"));
        assert_eq!(via("http://10.2.0.1/").as_deref(), Some("http://p:3128/"));
        assert_eq!(via("http://example.com/").as_deref(), Some("http://p:3128/"));
        assert_eq!(via("https://example.com/"), None, "no HTTPS_PROXY set");
        let all = ProxyEnv::from_env(&Env::from_pairs([("HTTPS_PROXY", "http://p"), ("NO_PROXY", "*")])).unwrap();
        assert_eq!(
            all.for_url(&Url::parse("https://example.com/").unwrap()).map(|_| ()),
            None
        );
        assert_eq!(
            ProxyEnv::from_env(&Env::from_pairs([("HTTPS_PROXY", "socks5://p")]))
                .unwrap_err()
                .var,
            "HTTPS_PROXY"
        );
    }

    #[test]
    fn proxy_credentials_are_percent_decoded() {
        let mode = ProxyMode::Http(Url::parse("http://us%40er:p%3Ass@proxy:3128").unwrap());
        let via = mode.for_url(&Url::parse("https://example.com/").unwrap()).unwrap();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("us@er:p:ss")
        );
        let auth = via.basic_auth().unwrap();
        assert_eq!(auth, expected.as_str());
        assert!(auth.is_sensitive());
        assert_eq!(via.uri().to_string(), "http://proxy:3128/");
        assert!(!format!("{via:?}{mode:?}").contains("p%3Ass"), "{mode:?}");
    }

    /// A proxy on loopback that reads the CONNECT head and answers `reply` (or closes).
    async fn tunnel_answered_with(reply: &'static [u8]) -> Result<TcpStream, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.unwrap() == 0 {
                    return;
                }
                head.push(b[0]);
            }
            let _ = s.write_all(reply).await;
        });
        let mode = ProxyMode::Http(Url::parse(&format!("http://{addr}")).unwrap());
        let url = Url::parse("https://example.invalid/").unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        tunnel(tcp, &mode.for_url(&url).unwrap(), &url).await
    }

    #[tokio::test]
    async fn a_refused_tunnel_names_the_proxys_answer() {
        let e = tunnel_answered_with(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            .await
            .unwrap_err();
        assert_eq!(
            e,
            "proxy refused the tunnel: HTTP/1.1 407 Proxy Authentication Required"
        );
        let e = tunnel_answered_with(b"").await.unwrap_err();
        assert!(e.starts_with("CONNECT through the proxy: "), "{e}");
        assert!(tunnel_answered_with(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_ok());
    }
}
