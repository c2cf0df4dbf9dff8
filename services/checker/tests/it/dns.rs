//! Name resolution and connecting: the asynchronous resolver against DNS servers on loopback
//! (one that answers, one that never does), and Happy Eyeballs over several addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{probe, serve, target, text, Server};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Threads of this process now (`Threads:` of /proc/self/status).
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn host_name_resolves_through_the_configured_name_server() {
    let server = serve(|_| async { text(200, "resolved ok") }).await;
    let dns = dns_server(&[("web.test", &[ip("127.0.0.1")])]).await;
    let mut t = target(json!({"url": format!("http://web.test:{}/", server.addr.port()), "regex": "resolved ok"}));
    t.resolver = resolver_for(dns);

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"));
    assert!(r.phases.resolve.is_some(), "{:?}", r.phases);
}

#[tokio::test]
async fn nxdomain_from_the_name_server_is_dns_failure() {
    let dns = dns_server(&[]).await;
    let mut t = target(json!({"url": "http://missing.test/"}));
    t.resolver = resolver_for(dns);

    let r = probe(&t).await;

    assert_eq!(r.error_kind.as_deref(), Some("dns"), "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("missing.test"), "{:?}", r.error);
    assert_eq!(r.phases.connect, None);
}

#[tokio::test]
async fn etc_hosts_and_localhost_still_resolve_with_a_configured_name_server() {
    // The name server knows nothing; `localhost` comes from /etc/hosts (RFC 6761 §6.3 too).
    let server = serve(|_| async { text(200, "local ok") }).await;
    let dns = dns_server(&[]).await;
    let mut t = target(json!({"url": format!("http://localhost:{}/", server.addr.port()), "ip_family": "ipv4"}));
    t.resolver = resolver_for(dns);

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"));
}

/// A name server that never answers: 200 probes of 200 names all fail as `dns` near their
/// timeout, and no thread is spent on any of them (getaddrinfo on tokio's blocking pool took
/// one thread per lookup, and kept it after the probe gave up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_name_server_fails_probes_in_time_without_piling_up_threads() {
    const PROBES: usize = 200;
    let (dns, queries) = silent_dns_server().await;
    let resolver = resolver_for(dns);
    let targets: Vec<_> = (0..PROBES)
        .map(|i| {
            let mut t = target(json!({"url": format!("http://host-{i}.test/"), "timeout": "1s"}));
            t.resolver = resolver.clone();
            t
        })
        .collect();
    let before = threads();
    let peak = Arc::new(AtomicUsize::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(threads(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let results = futures::future::join_all(targets.iter().map(probe)).await;
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();

    for r in &results {
        assert_eq!(r.error_kind.as_deref(), Some("dns"), "{r:?}");
        assert!(
            (1.0..4.0).contains(&r.duration_seconds),
            "bounded by the 1 s timeout: {}",
            r.duration_seconds
        );
    }
    assert!(
        queries.load(Ordering::SeqCst) >= PROBES,
        "every name was asked of the silent server"
    );
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= before + 8,
        "threads rose from {before} to {peak} while {PROBES} lookups hung"
    );
}

/// An HTTP server on 127.0.0.1 whose port is free on ::1, so a connection to [::1]:port is
/// refused.
async fn server_with_port_free_on_ipv6() -> Server {
    loop {
        let server = serve(|_| async { text(200, "v4 answered") }).await;
        if std::net::TcpListener::bind(("::1", server.addr.port())).is_ok() {
            return server;
        }
    }
}

#[tokio::test]
async fn refused_ipv6_address_falls_back_to_ipv4() {
    let server = server_with_port_free_on_ipv6().await;
    let dns = dns_server(&[("dual.test", &[ip("::1"), ip("127.0.0.1")])]).await;
    let mut t = target(json!({"url": format!("http://dual.test:{}/", server.addr.port()), "regex": "v4 answered"}));
    t.resolver = resolver_for(dns);

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(r.ip_family.as_deref(), Some("ipv4"));
    assert_eq!(server.connections(), 1);
}

/// A listener on [::1]:`port` whose accept queue is full, so further SYNs are dropped: a
/// connection attempt there hangs like one to an unreachable address.
async fn blackhole_on_ipv6(port: u16) -> Option<(tokio::net::TcpListener, TcpStream)> {
    let socket = TcpSocket::new_v6().ok()?;
    socket.bind(SocketAddr::new(ip("::1"), port)).ok()?;
    let listener = socket.listen(0).ok()?;
    let filler = TcpStream::connect(SocketAddr::new(ip("::1"), port)).await.ok()?;
    // Check that the next attempt really hangs.
    let probe = tokio::time::timeout(
        Duration::from_millis(300),
        TcpStream::connect(SocketAddr::new(ip("::1"), port)),
    );
    probe.await.is_err().then_some((listener, filler))
}

#[tokio::test]
async fn unresponsive_ipv6_address_falls_back_to_ipv4_after_the_attempt_delay() {
    let (server, _blackhole) = loop {
        let server = serve(|_| async { text(200, "v4 answered") }).await;
        if let Some(b) = blackhole_on_ipv6(server.addr.port()).await {
            break (server, b);
        }
    };
    let dns = dns_server(&[("dual.test", &[ip("::1"), ip("127.0.0.1")])]).await;
    let mut t = target(json!({"url": format!("http://dual.test:{}/", server.addr.port()), "timeout": "5s"}));
    t.resolver = resolver_for(dns);

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"));
    let connect = r.phases.connect.unwrap();
    assert!(
        connect >= 0.25,
        "IPv4 is tried only after the 250 ms Connection Attempt Delay: {connect}"
    );
}

#[tokio::test]
async fn every_address_refused_is_connect_failure_naming_each() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dns = dns_server(&[("dual.test", &[ip("::1"), ip("127.0.0.1")])]).await;
    let mut t = target(json!({"url": format!("http://dual.test:{port}/")}));
    t.resolver = resolver_for(dns);

    let r = probe(&t).await;

    assert_eq!(r.error_kind.as_deref(), Some("connect"), "{r:?}");
    let error = r.error.as_deref().unwrap();
    assert!(
        error.contains(&format!("[::1]:{port}")) && error.contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert_eq!(r.ip_address.as_deref(), Some("127.0.0.1"), "the last address tried");
}

#[tokio::test]
async fn ip_family_ipv4_never_tries_the_ipv6_address() {
    let server = server_with_port_free_on_ipv6().await;
    let dns = dns_server(&[("dual.test", &[ip("::1"), ip("127.0.0.1")])]).await;
    let v4 = |family: &str| {
        let mut t = target(json!({"url": format!("http://dual.test:{}/", server.addr.port()), "ip_family": family}));
        t.resolver = resolver_for(dns);
        t
    };

    let r4 = probe(&v4("ipv4")).await;
    let r6 = probe(&v4("ipv6")).await;

    assert!(r4.success, "{r4:?}");
    assert_eq!(r4.ip_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(r6.error_kind.as_deref(), Some("connect"), "{r6:?}");
    assert_eq!(r6.ip_address.as_deref(), Some("::1"));
}

/// A DNS server on a UDP port of 127.0.0.1 answering A and AAAA queries from `names` (name
/// without the final dot → addresses), NXDOMAIN for other names, with TTL 0 so nothing is
/// cached between tests. Built on hickory-proto's message types.
pub async fn dns_server(names: &[(&str, &[std::net::IpAddr])]) -> SocketAddr {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{rdata, RData, Record, RecordType};
    let names: std::collections::HashMap<String, Vec<std::net::IpAddr>> = names
        .iter()
        .map(|(n, a)| (n.to_ascii_lowercase(), a.to_vec()))
        .collect();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
    let addr = socket.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::new();
            reply
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_op_code(query.op_code())
                .set_recursion_desired(query.recursion_desired())
                .set_recursion_available(true)
                .set_authoritative(true);
            let mut known = false;
            for q in query.queries() {
                reply.add_query(q.clone());
                let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
                let Some(addrs) = names.get(&name) else { continue };
                known = true;
                for ip in addrs {
                    let rdata = match (ip, q.query_type()) {
                        (std::net::IpAddr::V4(v4), RecordType::A) => RData::A(rdata::A(*v4)),
                        (std::net::IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(rdata::AAAA(*v6)),
                        _ => continue,
                    };
                    reply.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
                }
            }
            if !known {
                reply.set_response_code(ResponseCode::NXDomain);
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

/// A "DNS server" that reads every query and never answers: a UDP socket on 127.0.0.1.
/// Returns its address and a counter of the queries it swallowed.
pub async fn silent_dns_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
    let addr = socket.local_addr().expect("local addr");
    let queries = Arc::new(AtomicUsize::new(0));
    let counter = queries.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while socket.recv_from(&mut buf).await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, queries)
}

/// A resolver asking only the DNS server at `server` (UDP), with hickory's default options,
/// still honouring `/etc/hosts`.
pub fn resolver_for(server: SocketAddr) -> checker::resolve::Resolver {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    let mut config = ResolverConfig::new();
    config.add_name_server(NameServerConfig::new(
        server,
        hickory_resolver::proto::xfer::Protocol::Udp,
    ));
    checker::resolve::Resolver::new(config, ResolverOpts::default())
}

#[tokio::test]
async fn ipv6_is_preferred_when_it_answers() {
    // The name server lists A first; Happy Eyeballs still tries IPv6 first (RFC 8305 §4).
    let server = crate::support::serve_on("[::1]:0", None, |_| async { text(200, "v6 answered") }).await;
    let dns = dns_server(&[("dual.test", &[ip("127.0.0.1"), ip("::1")])]).await;
    let mut t = target(json!({"url": format!("http://dual.test:{}/", server.addr.port()), "regex": "v6 answered"}));
    t.resolver = resolver_for(dns);

    let r = probe(&t).await;

    assert!(r.success, "{r:?}");
    assert_eq!(
        (r.ip_address.as_deref(), r.ip_family.as_deref()),
        (Some("::1"), Some("ipv6"))
    );
}
