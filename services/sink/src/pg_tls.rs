//! TLS to PostgreSQL as libpq defines it: the `sslmode`, `sslrootcert`, `sslcert` and `sslkey`
//! connection parameters (PostgreSQL docs §34.1.2 "Parameter Key Words" and §34.19 "SSL
//! Support", table "SSL Mode Descriptions"), in the URL's query (`?sslmode=verify-full&...`)
//! or in the `key=value` form, carried out with rustls (`ring` provider) through
//! `tokio-postgres-rustls`.
//!
//! tokio-postgres's own parser knows only `sslmode` `disable`/`prefer`/`require` and rejects
//! the other keys, so [`connect_config`] takes these four out of the DSN, hands the rest to
//! tokio-postgres and builds the rustls configuration they ask for:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (libpq's default, and ours) | when the server supports TLS | no |
//! | `require` | always | no; with `sslrootcert` as `verify-ca` (libpq's compatibility rule) |
//! | `verify-ca` | always | chain up to `sslrootcert` |
//! | `verify-full` | always | chain up to `sslrootcert`, and the host name (`host`, not `hostaddr`) in its subjectAltName |
//!
//! `sslrootcert=system` trusts the operating system's roots and, as in libpq 16+, allows only
//! `verify-full` (and makes it the default). `sslcert` and `sslkey` (PEM) are the client
//! certificate, presented when the server asks for one. With `hostaddr` and no `host` there is
//! no name to verify: `verify-full` is refused (as libpq does), the other modes send none.
//! Over Unix-domain sockets TLS is never used (libpq does not request it there).
//! Differences from libpq: `sslmode=allow` is
//! rejected; there are no default files under `~/.postgresql/` and no `PGSSL*` environment
//! variables (tokio-postgres reads none); host names are matched against subjectAltName only
//! (webpki), never the common name; `prefer` does not retry without TLS after a failed
//! handshake.
//!
//! Errors never echo the DSN (it may hold a password): they name the parameter and, for
//! files, the path.

use std::sync::Arc;

use common::tls::ChainVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` (PostgreSQL docs §34.19.3, table "SSL Mode Descriptions"), less `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server supports it, plain TCP otherwise; no certificate check.
    Prefer,
    /// TLS or fail; no certificate check (unless `sslrootcert` is given: then as `VerifyCa`).
    Require,
    /// TLS, and the server's certificate chains up to `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate is for the host name connected to.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "allow" => Err(DsnError::Unsupported(
                "sslmode=allow is not supported (use prefer or disable)".into(),
            )),
            other => Err(DsnError::SslMode(other.to_string())),
        }
    }
}

/// Why a DSN was refused. The text never holds the DSN or its password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    /// tokio-postgres rejected the rest of the DSN (its message names the option, not the value).
    #[error("not a PostgreSQL connection string ({0})")]
    Syntax(String),
    /// An unknown `sslmode`.
    #[error("sslmode: {0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    /// A combination libpq or this sink does not accept.
    #[error("{0}")]
    Unsupported(String),
    /// A certificate or key file that cannot be used.
    #[error("{key} {path:?}: {reason}")]
    File {
        /// The parameter: `sslrootcert`, `sslcert` or `sslkey`.
        key: &'static str,
        /// The path given.
        path: String,
        /// What is wrong (unreadable, no PEM certificate, no private key, rejected by rustls).
        reason: String,
    },
}

/// The TLS parameters taken out of a DSN, as given (libpq key words).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode`.
    pub sslmode: Option<String>,
    /// `sslrootcert`: PEM file of trusted CA certificates, or `system`.
    pub sslrootcert: Option<String>,
    /// `sslcert`: PEM client certificate chain.
    pub sslcert: Option<String>,
    /// `sslkey`: PEM private key of `sslcert` (PKCS#8, PKCS#1 or SEC1).
    pub sslkey: Option<String>,
}

impl TlsParams {
    fn set(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        // libpq: a later occurrence wins.
        *slot = Some(value);
        true
    }
}

/// What [`connect_config`] builds: tokio-postgres's configuration (its `ssl_mode` set) and the
/// TLS connector to hand to it (or to `deadpool_postgres::Manager::from_config`).
#[derive(Clone)]
pub struct PgConnect {
    /// Everything but the TLS parameters, with `ssl_mode` set from `sslmode`.
    pub config: tokio_postgres::Config,
    /// The rustls connector for the mode (unused with `disable`).
    pub tls: MakeRustlsConnect,
    /// The effective mode.
    pub mode: SslMode,
}

/// Parses `dsn` (URL `postgres://…` / `postgresql://…` or libpq `key=value` form), takes the TLS
/// parameters out and builds the connector they ask for, reading the certificate and key files.
///
/// # Errors
/// A [`DsnError`]: the DSN does not parse, `sslmode` is unknown, a combination is not allowed
/// (`verify-ca`/`verify-full` without `sslrootcert`, `sslcert` without `sslkey`, a weak mode with
/// `sslrootcert=system`), or a file cannot be read or holds no usable certificate or key.
pub fn connect_config(dsn: &str) -> Result<PgConnect, DsnError> {
    let (rest, params) = split_tls_params(dsn)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
        DsnError::Syntax(std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string))
    })?;
    let system_roots = params.sslrootcert.as_deref() == Some("system");
    let mode = match params.sslmode.as_deref() {
        Some(m) => m.parse()?,
        // libpq 16+: sslrootcert=system makes verify-full the default.
        None if system_roots => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system_roots && mode != SslMode::VerifyFull {
        return Err(DsnError::Unsupported(format!(
            "sslrootcert=system needs sslmode=verify-full (a weaker sslmode would trust any server the system roots vouch for under any name), not {}",
            params.sslmode.as_deref().unwrap_or_default()
        )));
    }
    if config.get_hosts().is_empty() && !config.get_hostaddrs().is_empty() {
        // tokio-postgres takes the TLS server name from `host` only; without one the handshake
        // has no name at all. libpq refuses verify-full there ("host name must be specified for
        // a verified SSL connection"); the other modes do not check the name, so the address
        // stands in for it.
        if mode == SslMode::VerifyFull {
            return Err(DsnError::Unsupported(
                "sslmode=verify-full needs host (the name to verify), not only hostaddr".into(),
            ));
        }
        let addrs: Vec<String> = config.get_hostaddrs().iter().map(ToString::to_string).collect();
        for a in addrs {
            config.host(a);
        }
    }
    let tls = if mode == SslMode::Disable {
        // libpq ignores the files when TLS is off.
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| DsnError::Unsupported(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainVerifier::any_certificate(provider())))
            .with_no_client_auth()
    } else {
        client_config(mode, &params)?
    };
    let only_unix_sockets = {
        let hosts = config.get_hosts();
        !hosts.is_empty() && hosts.iter().all(|h| !matches!(h, Host::Tcp(_)))
    };
    config.ssl_mode(match mode {
        // libpq never requests TLS over Unix-domain sockets, whatever sslmode says.
        _ if only_unix_sockets => PgSslMode::Disable,
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    Ok(PgConnect {
        config,
        tls: MakeRustlsConnect::new(tls),
        mode,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: SslMode, params: &TlsParams) -> Result<ClientConfig, DsnError> {
    let provider = provider();
    let roots = match params.sslrootcert.as_deref() {
        None => None,
        Some("system") => {
            let native = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(DsnError::File {
                    key: "sslrootcert",
                    path: "system".into(),
                    reason: "the operating system's certificate store holds no usable certificate".into(),
                });
            }
            Some(Arc::new(roots))
        }
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(read_certs("sslrootcert", path)?);
            if added == 0 {
                return Err(file_error("sslrootcert", path, "holds no usable CA certificate"));
            }
            Some(Arc::new(roots))
        }
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DsnError::Unsupported(e.to_string()))?;
    let builder = match (mode, roots) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(DsnError::Unsupported(format!(
                "sslmode={} needs sslrootcert (a PEM file of the CA certificates to trust, or `system`)",
                if mode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            )))
        }
        (SslMode::VerifyFull, Some(roots)) => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| DsnError::Unsupported(format!("sslrootcert: {e}")))?;
            builder.with_webpki_verifier(verifier)
        }
        // verify-ca; and require with sslrootcert (libpq: "if a root CA file exists, the
        // behavior of sslmode=require will be the same as that of verify-ca"). prefer checks
        // nothing: a failed check would only make it fall back to plain TCP.
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainVerifier::chain_only(roots, provider.clone()))),
        (_, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainVerifier::any_certificate(provider.clone()))),
    };
    match (&params.sslcert, &params.sslkey) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_certs("sslcert", cert)?;
            if chain.is_empty() {
                return Err(file_error("sslcert", cert, "holds no PEM certificate"));
            }
            let key_der = read_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| file_error("sslkey", key, &format!("does not fit sslcert ({e})")))
        }
        (Some(_), None) => Err(DsnError::Unsupported(
            "sslcert needs sslkey (the client certificate's private key)".into(),
        )),
        (None, Some(_)) => Err(DsnError::Unsupported(
            "sslkey needs sslcert (the client certificate)".into(),
        )),
    }
}

fn file_error(key: &'static str, path: &str, reason: &str) -> DsnError {
    DsnError::File {
        key,
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

fn read_certs(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, DsnError> {
    let pem = std::fs::read(path).map_err(|e| file_error(key, path, &e.to_string()))?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, &format!("not PEM ({e})")))
}

fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, DsnError> {
    let pem = std::fs::read(path).map_err(|e| file_error("sslkey", path, &e.to_string()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| file_error("sslkey", path, &format!("not PEM ({e})")))?
        .ok_or_else(|| file_error("sslkey", path, "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"))
}

/// Splits `dsn` into the DSN without the TLS parameters (for tokio-postgres) and the TLS
/// parameters. URL form: the query's `&`-separated pairs, keys and values percent-decoded,
/// the other pairs kept as written; the query starts at the first `?` after the credentials,
/// as tokio-postgres (and libpq) read it. `key=value` form: libpq's syntax (values optionally
/// single-quoted, `\` escapes the next character); the other pairs are written back quoted.
///
/// # Errors
/// [`DsnError::Syntax`] for a malformed `key=value` list or a value that is not UTF-8.
pub fn split_tls_params(dsn: &str) -> Result<(String, TlsParams), DsnError> {
    let mut params = TlsParams::default();
    let prefix = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|p| dsn.starts_with(p));
    if let Some(prefix) = prefix {
        let rest = &dsn[prefix.len()..];
        let after_credentials = rest.find('@').map_or(0, |i| i + 1);
        let Some(q) = rest[after_credentials..]
            .find('?')
            .map(|i| prefix.len() + after_credentials + i)
        else {
            return Ok((dsn.to_string(), params));
        };
        let mut kept = Vec::new();
        for pair in dsn[q + 1..].split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| DsnError::Syntax("a query parameter is not UTF-8 after percent-decoding".into()))
            };
            if !params.set(&decode(key)?, decode(value)?) {
                kept.push(pair);
            }
        }
        let mut out = dsn[..q].to_string();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        return Ok((out, params));
    }
    let mut out = String::new();
    for (key, value) in parse_key_values(dsn)? {
        if params.set(&key, value.clone()) {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&key);
        out.push_str("='");
        out.push_str(&value.replace('\\', "\\\\").replace('\'', "\\'"));
        out.push('\'');
    }
    Ok((out, params))
}

/// libpq's `key = value` list (PostgreSQL docs §34.1.1.1): whitespace-separated, spaces allowed
/// around `=`, a value single-quoted when it holds spaces, `\` escaping the next character.
/// Mirrors tokio-postgres's parser, so what it keeps parses the same there.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, DsnError> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    let syntax = |m: &'static str| DsnError::Syntax(m.to_string());
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if it.peek().is_some() {
                return Err(syntax("a parameter has no key before `=`"));
            }
            return Ok(out);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            // Not echoing the key: it may be part of an unquoted password with a space.
            return Err(syntax(
                "expected `=` after a key (a value holding spaces must be single-quoted)",
            ));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    None => return Err(syntax("unterminated quoted connection parameter value")),
                    Some('\'') => break,
                    Some('\\') => value.extend(it.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(syntax("a key has no value"));
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_query_loses_only_the_tls_parameters() {
        let (rest, p) = split_tls_params(
            "postgres://u:p%3Fw@db.example:5432/hc?application_name=a%20b&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@db.example:5432/hc?application_name=a%20b&connect_timeout=3"
        );
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let (rest, p) = split_tls_params("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), p.sslmode.as_deref()),
            ("postgresql://h/db", Some("require"))
        );
        // A `?` inside the credentials is not the query (tokio-postgres reads up to `@` first).
        let (rest, p) = split_tls_params("postgres://u:a?b@h/db?sslcert=/c&sslkey=/k").unwrap();
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert_eq!((p.sslcert.as_deref(), p.sslkey.as_deref()), (Some("/c"), Some("/k")));
        let (rest, p) = split_tls_params("postgres://h/db").unwrap();
        assert_eq!((rest.as_str(), p), ("postgres://h/db", TlsParams::default()));
    }

    #[test]
    fn key_value_form_keeps_quoting_and_escapes() {
        let (rest, p) = split_tls_params(
            r"host=h  user = u password='it\'s a \\ secret' sslmode=verify-ca sslrootcert='/path with space/ca.pem' dbname=d",
        )
        .unwrap();
        assert_eq!(p.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/path with space/ca.pem"));
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"it's a \\ secret"[..]));
        assert_eq!((cfg.get_user(), cfg.get_dbname()), (Some("u"), Some("d")));
        assert!(matches!(
            split_tls_params("host=h password='unterminated"),
            Err(DsnError::Syntax(_))
        ));
        assert!(matches!(split_tls_params("host"), Err(DsnError::Syntax(_))));
    }

    #[test]
    fn modes_map_onto_tokio_postgres() {
        let mode = |dsn: &str| {
            let c = connect_config(dsn).unwrap();
            (c.mode, c.config.get_ssl_mode())
        };
        // libpq's default is prefer.
        assert_eq!(mode("postgres://h/db"), (SslMode::Prefer, PgSslMode::Prefer));
        assert_eq!(mode("host=h sslmode=disable"), (SslMode::Disable, PgSslMode::Disable));
        assert_eq!(mode("host=h sslmode=require"), (SslMode::Require, PgSslMode::Require));
        // Files are not read when TLS is off.
        assert_eq!(
            mode("host=h sslmode=disable sslrootcert=/nonexistent"),
            (SslMode::Disable, PgSslMode::Disable)
        );
        // Only hostaddr: the address is the (unchecked) TLS server name.
        let c = connect_config("hostaddr=10.1.2.3 sslmode=verify-ca sslrootcert=system");
        assert!(
            matches!(c, Err(DsnError::Unsupported(_))),
            "system roots need verify-full"
        );
        let c = connect_config("hostaddr=10.1.2.3 sslmode=require").unwrap();
        assert_eq!(c.config.get_hosts(), [Host::Tcp("10.1.2.3".into())]);
        assert!(matches!(
            connect_config("hostaddr=10.1.2.3 sslmode=verify-full sslrootcert=/etc/ca.pem"),
            Err(DsnError::Unsupported(_))
        ));
        // Over a Unix-domain socket, TLS is never requested.
        assert_eq!(
            mode("host=/run/postgresql sslmode=require"),
            (SslMode::Require, PgSslMode::Disable)
        );
    }

    #[test]
    fn bad_parameters_are_refused_without_echoing_the_password() {
        let err = |dsn: &str| match connect_config(dsn) {
            Err(e) => {
                assert!(!e.to_string().contains("hunter2"), "{e}");
                e
            }
            Ok(_) => panic!("accepted {dsn}"),
        };
        assert_eq!(
            err("postgres://u:hunter2@h/db?sslmode=verify_full"),
            DsnError::SslMode("verify_full".into())
        );
        assert!(matches!(
            err("postgres://u:hunter2@h/db?sslmode=allow"),
            DsnError::Unsupported(_)
        ));
        assert!(matches!(
            err("postgres://u:hunter2@h/db?sslmode=verify-full"),
            DsnError::Unsupported(_)
        ));
        assert!(matches!(
            err("postgres://u:hunter2@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"),
            DsnError::File { key: "sslrootcert", .. }
        ));
        assert!(matches!(
            err("postgres://u:hunter2@h/db?sslmode=require&sslrootcert=system"),
            DsnError::Unsupported(_)
        ));
        assert!(matches!(
            err("host=h password=hunter2 sslmode=require sslcert=/c.pem"),
            DsnError::Unsupported(_)
        ));
        assert!(matches!(err("postgres://u:hunter2@h:notaport/db"), DsnError::Syntax(_)));
        assert!(matches!(err("host=h password=hunter2 sslcrl=/x"), DsnError::Syntax(_)));
        // An unquoted password with a space: the rest of it is read as a key, never shown.
        assert!(matches!(
            err("host=h password=abc hunter2 dbname=d"),
            DsnError::Syntax(_)
        ));
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let dsn = format!(
            "host=h password=hunter2 sslmode=verify-ca sslrootcert={}",
            not_pem.display()
        );
        assert!(matches!(err(&dsn), DsnError::File { key: "sslrootcert", .. }));
    }
}
