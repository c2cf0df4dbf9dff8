//! Name resolution for probes: an asynchronous stub resolver (hickory-resolver) that honours
//! `/etc/resolv.conf` and `/etc/hosts`.
//!
//! It never uses the operating system's `getaddrinfo` (tokio's `lookup_host`), which blocks one
//! thread of tokio's blocking pool per lookup: a name server that never answers would pile up
//! threads (up to the pool's 512), delay every other blocking task and outlive the probe's
//! timeout. Here a lookup is a future like any other, so dropping it at the probe's timeout
//! ends it.
//!
//! A and AAAA are asked in parallel (RFC 8305 §3); once one family answered, the other gets at
//! most [`RESOLUTION_DELAY`] more. Addresses come back in Happy Eyeballs order (RFC 8305 §4):
//! IPv6 first, then the families alternate.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::target::IpFamily;

/// How long to wait for the second address family once the first one answered (RFC 8305 §3,
/// "Resolution Delay", recommended 50 ms).
pub const RESOLUTION_DELAY: Duration = Duration::from_millis(50);

/// Records cached (hickory's default of 32 is too small for thousands of targets). Answers
/// are kept for their TTL, as a caching stub resolver does.
const CACHE_SIZE: usize = 4096;

/// A cheaply cloneable handle on a resolver: the system's (shared, built on first use) or one
/// built from an explicit configuration.
#[derive(Clone, Default)]
pub struct Resolver(Option<Arc<TokioResolver>>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Resolver(custom)"
        } else {
            "Resolver(system)"
        })
    }
}

impl Resolver {
    /// The system resolver: name servers, search domains and options from `/etc/resolv.conf`
    /// (resolv.conf(5)), static names from `/etc/hosts` (read once, on first use), and the
    /// names of RFC 6761 §6.3 (`localhost` is 127.0.0.1 and ::1 without asking a server).
    pub fn system() -> Self {
        Self(None)
    }

    /// A resolver with these name servers and options; `/etc/hosts` is still honoured unless
    /// `opts.use_hosts_file` says otherwise.
    pub fn new(config: ResolverConfig, mut opts: ResolverOpts) -> Self {
        opts.cache_size = opts.cache_size.max(CACHE_SIZE);
        let mut builder = TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = opts;
        Self(Some(Arc::new(builder.build())))
    }

    fn get(&self) -> Result<&TokioResolver, String> {
        static SYSTEM: OnceLock<Result<TokioResolver, String>> = OnceLock::new();
        match &self.0 {
            Some(r) => Ok(r),
            None => SYSTEM
                .get_or_init(|| {
                    let mut builder = TokioResolver::builder_tokio()
                        .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
                    let opts = builder.options_mut();
                    opts.cache_size = opts.cache_size.max(CACHE_SIZE);
                    Ok(builder.build())
                })
                .as_ref()
                .map_err(Clone::clone),
        }
    }

    /// The addresses of `host` of the wanted `family`, in the order to try them (RFC 8305 §4:
    /// IPv6 first, families alternating), each with `port`.
    ///
    /// Not bounded by a timeout of its own beyond the resolver's (`timeout`/`attempts` of
    /// resolv.conf): the caller bounds it by the probe's timeout.
    ///
    /// # Errors
    /// A description naming `host`: NXDOMAIN, no address of the family, or the resolver's error.
    pub async fn lookup(&self, host: &str, port: u16, family: IpFamily) -> Result<Vec<SocketAddr>, String> {
        let resolver = self.get()?;
        let v4 = async {
            resolver
                .ipv4_lookup(host)
                .await
                .map(|l| l.iter().map(|a| IpAddr::V4(a.0)).collect::<Vec<_>>())
        };
        let v6 = async {
            resolver
                .ipv6_lookup(host)
                .await
                .map(|l| l.iter().map(|a| IpAddr::V6(a.0)).collect::<Vec<_>>())
        };
        let (v6, v4) = match family {
            IpFamily::Ipv4 => (Ok(Vec::new()), v4.await),
            IpFamily::Ipv6 => (v6.await, Ok(Vec::new())),
            IpFamily::Any => both(v6, v4).await,
        };
        let describe = |e: &ResolveError| {
            if e.is_nx_domain() {
                "no such name (NXDOMAIN)".to_string()
            } else if e.is_no_records_found() {
                "no address".to_string()
            } else {
                e.to_string()
            }
        };
        let addrs = interleave(v6.as_deref().unwrap_or_default(), v4.as_deref().unwrap_or_default());
        if !addrs.is_empty() {
            return Ok(addrs.into_iter().map(|ip| SocketAddr::new(ip, port)).collect());
        }
        let wanted = match family {
            IpFamily::Any => "IPv4 or IPv6",
            IpFamily::Ipv4 => "IPv4",
            IpFamily::Ipv6 => "IPv6",
        };
        let why = [v6.err(), v4.err()].iter().flatten().map(describe).collect::<Vec<_>>();
        Err(if why.is_empty() {
            format!("resolving {host}: no {wanted} address")
        } else {
            format!("resolving {host}: no {wanted} address: {}", dedup(why).join("; "))
        })
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.dedup();
    v
}

type Answer = Result<Vec<IpAddr>, ResolveError>;

/// Runs both lookups; once one has answered, waits at most [`RESOLUTION_DELAY`] for the other,
/// whose answer then counts as empty. (RFC 8305 §3 starts connecting as soon as AAAA arrives
/// and adds A later; waiting up to 50 ms for A approximates that with a plain address list.)
async fn both(
    v6: impl std::future::Future<Output = Answer>,
    v4: impl std::future::Future<Output = Answer>,
) -> (Answer, Answer) {
    let late = || Ok(Vec::new());
    tokio::pin!(v6, v4);
    tokio::select! {
        a6 = &mut v6 => {
            let a4 = tokio::time::timeout(RESOLUTION_DELAY, v4).await.unwrap_or_else(|_| late());
            (a6, a4)
        }
        a4 = &mut v4 => {
            let a6 = tokio::time::timeout(RESOLUTION_DELAY, v6).await.unwrap_or_else(|_| late());
            (a6, a4)
        }
    }
}

/// RFC 8305 §4 with a "First Address Family Count" of 1: v6, v4, v6, v4, …, then the rest.
pub fn interleave(v6: &[IpAddr], v4: &[IpAddr]) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    for i in 0..v6.len().max(v4.len()) {
        out.extend(v6.get(i));
        out.extend(v4.get(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_alternate_starting_with_ipv6() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let out = interleave(
            &[ip("::1"), ip("::2")],
            &[ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")],
        );
        let want: Vec<IpAddr> = ["::1", "127.0.0.1", "::2", "127.0.0.2", "127.0.0.3"].map(ip).into();
        assert_eq!(out, want);
        assert_eq!(interleave(&[], &[ip("127.0.0.1")]), vec![ip("127.0.0.1")]);
    }
}
