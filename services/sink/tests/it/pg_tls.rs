//! `DATABASE_URL`'s `sslmode`, `sslrootcert`, `sslcert` and `sslkey` against real PostgreSQL
//! clusters: one with `ssl = on` whose `pg_hba.conf` refuses every TCP connection without TLS
//! and authenticates one role by client certificate, and one without TLS. Every connection is
//! the sink's own (`Store::new`, as `App::build` calls it, then `Store::ping`), and what the
//! server saw is read back from `pg_stat_ssl` over the cluster's Unix socket.

use std::process::{Command, Stdio};

use sink::store::{ErrorCode, Store, StoreError};
use tokio_postgres::error::SqlState;

use crate::support::*;
use crate::tls_support::*;

/// What the server knows about the sink's session: (`ssl`, `client_dn`), from `pg_stat_ssl`.
type SessionTls = (bool, Option<String>);

/// Opens a pooled connection of a [`Store`] for `dsn` (URL or `key=value`) on `pg`; the
/// session's TLS as the server sees it, or why the connection failed.
///
/// # Panics
/// `Store::new` refuses `dsn` (a configuration error, not a refused connection).
async fn session(pg: &PrivatePostgres, dsn: &str) -> Result<SessionTls, StoreError> {
    // A unique application_name finds the session in pg_stat_activity.
    let app = unique("tls");
    let dsn = if dsn.starts_with("postgres") {
        format!(
            "{dsn}{}application_name={app}",
            if dsn.contains('?') { '&' } else { '?' }
        )
    } else {
        format!("{dsn} application_name={app}")
    };
    let store = Store::new(&dsn, 1, "topic").unwrap_or_else(|e| panic!("{dsn}: {e}"));
    store.ping().await?;
    let row = connect(&pg.socket_dsn("postgres"))
        .await
        .query_one(
            "SELECT s.ssl, s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .expect("the sink's session in pg_stat_ssl");
    Ok((row.get(0), row.get(1)))
}

async fn refused(pg: &PrivatePostgres, dsn: &str) -> StoreError {
    match session(pg, dsn).await {
        Ok(s) => panic!("{dsn}: connected ({s:?}) but should have been refused"),
        Err(e) => e,
    }
}

/// SQLSTATE 28000 invalid_authorization_specification: `pg_hba.conf` rejected the connection.
const HBA_REJECTED: SqlState = SqlState::INVALID_AUTHORIZATION_SPECIFICATION;

/// The cluster with TLS: a server certificate for `localhost` and `127.0.0.1` from `ca`,
/// client certificates from `ca` checked (`ssl_ca_file`), plain TCP refused, role
/// `certuser` authenticated by its certificate's common name and role `scramuser` by
/// password (SCRAM-SHA-256), as managed services do.
async fn tls_cluster(ca: &TestCa) -> PrivatePostgres {
    let server = ca.server("server", &["localhost", "127.0.0.1"]);
    let pg = PrivatePostgres::start_with(PgSetup {
        files: vec![
            ("server.crt".into(), server.cert_pem.clone().into_bytes()),
            ("server.key".into(), server.key_pem.clone().into_bytes()),
            ("root.crt".into(), ca.ca_pem().into_bytes()),
        ],
        conf: [
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
            "ssl_ca_file = 'root.crt'",
        ]
        .map(String::from)
        .to_vec(),
        hba: [
            "hostssl all certuser 127.0.0.1/32 cert",
            "hostssl all scramuser 127.0.0.1/32 scram-sha-256",
            "hostnossl all all 127.0.0.1/32 reject",
        ]
        .map(String::from)
        .to_vec(),
    })
    .await;
    connect(&pg.socket_dsn("healthcheck"))
        .await
        .batch_execute(
            "CREATE ROLE certuser LOGIN SUPERUSER;
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE scramuser LOGIN PASSWORD 'scram-secret'",
        )
        .await
        .expect("create role certuser");
    pg
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_against_a_tls_only_server() {
    let ca = TestCa::new("pg test CA");
    let other_ca = TestCa::new("another CA");
    let pg = tls_cluster(&ca).await;
    let port = pg_addr(&pg.url).port();
    let root = path(&ca.ca_path()).to_string();
    let other_root = path(&other_ca.ca_path()).to_string();
    let url = |query: &str| format!("postgres://healthcheck@127.0.0.1:{port}/healthcheck?{query}");
    let kv = |rest: &str| format!("port={port} user=healthcheck dbname=healthcheck {rest}");
    let encrypted: SessionTls = (true, None);

    // verify-full: the chain and the name, by IP address (URL form) and by DNS name (key=value).
    assert_eq!(
        session(&pg, &url(&format!("sslmode=verify-full&sslrootcert={root}")))
            .await
            .unwrap(),
        encrypted
    );
    assert_eq!(
        session(
            &pg,
            &kv(&format!("host=localhost sslmode=verify-full sslrootcert='{root}'"))
        )
        .await
        .unwrap(),
        encrypted
    );
    // A name the certificate does not hold (hostaddr is where to connect, host what to verify).
    let wrong_name = kv(&format!(
        "host=db.invalid hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={root}"
    ));
    let e = refused(&pg, &wrong_name).await;
    assert_eq!(e.code, ErrorCode::Io, "a TLS failure, not a server error: {e}");
    assert!(e.message.contains("not valid for name"), "{e}");

    // verify-ca: the chain only, so the wrong name passes; another CA does not.
    assert_eq!(
        session(
            &pg,
            &kv(&format!(
                "host=db.invalid hostaddr=127.0.0.1 sslmode=verify-ca sslrootcert={root}"
            ))
        )
        .await
        .unwrap(),
        encrypted
    );
    let e = refused(&pg, &url(&format!("sslmode=verify-ca&sslrootcert={other_root}"))).await;
    assert!(e.message.contains("UnknownIssuer"), "{e}");

    // require: encrypted, nothing checked; with sslrootcert it checks the chain (libpq's rule).
    assert_eq!(session(&pg, &url("sslmode=require")).await.unwrap(), encrypted);
    let e = refused(&pg, &url(&format!("sslmode=require&sslrootcert={other_root}"))).await;
    assert!(e.message.contains("UnknownIssuer"), "{e}");

    // A password over TLS, as managed services ask for: SCRAM-SHA-256-PLUS, bound to the
    // server's certificate (channel binding tls-server-end-point, RFC 5929).
    assert_eq!(
        session(
            &pg,
            &format!("postgres://scramuser:scram-secret@127.0.0.1:{port}/healthcheck?sslmode=require&channel_binding=require")
        )
        .await
        .unwrap(),
        encrypted
    );

    // Only hostaddr: no name to send or check, which require does not need.
    assert_eq!(
        session(&pg, &kv("hostaddr=127.0.0.1 sslmode=require")).await.unwrap(),
        encrypted
    );

    // prefer, and no sslmode at all (libpq's default is prefer): encrypted when offered.
    assert_eq!(session(&pg, &url("sslmode=prefer")).await.unwrap(), encrypted);
    assert_eq!(session(&pg, &pg.url).await.unwrap(), encrypted);

    // disable: plain TCP, which this server's pg_hba.conf rejects.
    let e = refused(&pg, &url("sslmode=disable")).await;
    assert_eq!(e.code, ErrorCode::Sqlstate(HBA_REJECTED), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_is_presented_when_the_server_demands_one() {
    let ca = TestCa::new("pg test CA");
    let other_ca = TestCa::new("another CA");
    let pg = tls_cluster(&ca).await;
    let port = pg_addr(&pg.url).port();
    let root = path(&ca.ca_path()).to_string();
    let client = ca.client("certuser", "certuser");
    let stranger = other_ca.client("certuser", "certuser");
    let dsn = |cert: &Issued| {
        format!(
            "postgres://certuser@localhost:{port}/healthcheck?sslmode=verify-full&sslrootcert={root}&sslcert={}&sslkey={}",
            path(&cert.cert_path),
            path(&cert.key_path)
        )
    };

    assert_eq!(
        session(&pg, &dsn(&client)).await.unwrap(),
        (true, Some("/CN=certuser".to_string()))
    );
    // Without a certificate the server refuses the role (pg_hba `cert`).
    let e = refused(
        &pg,
        &format!("postgres://certuser@localhost:{port}/healthcheck?sslmode=verify-full&sslrootcert={root}"),
    )
    .await;
    assert_eq!(e.code, ErrorCode::Sqlstate(HBA_REJECTED), "{e}");
    // A certificate from a CA the server does not trust fails the handshake.
    let e = refused(&pg, &dsn(&stranger)).await;
    assert_eq!(e.code, ErrorCode::Io, "{e}");

    // The sink's migrations run over that connection.
    let store = Store::new(&dsn(&client), 2, "topic").expect("store");
    store.migrate().await.expect("migrate over mutual TLS");
    let admin = connect(&pg.socket_dsn("healthcheck")).await;
    // The table exists (count is -1 when the query fails).
    assert_eq!(count(&admin, "probe_results").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_against_a_server_without_tls() {
    let ca = TestCa::new("pg test CA");
    let pg = PrivatePostgres::start().await;
    let port = pg_addr(&pg.url).port();
    let url = |query: &str| format!("postgres://healthcheck@127.0.0.1:{port}/healthcheck?{query}");
    let plain: SessionTls = (false, None);

    assert_eq!(session(&pg, &url("sslmode=disable")).await.unwrap(), plain);
    // prefer (and the default) fall back to plain TCP when the server has no TLS.
    assert_eq!(session(&pg, &url("sslmode=prefer")).await.unwrap(), plain);
    assert_eq!(session(&pg, &pg.url).await.unwrap(), plain);
    // Every mode from require on insists on TLS.
    for query in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca&sslrootcert={}", path(&ca.ca_path())),
        format!("sslmode=verify-full&sslrootcert={}", path(&ca.ca_path())),
    ] {
        let e = refused(&pg, &url(&query)).await;
        assert_eq!(e.code, ErrorCode::Io, "{query}: {e}");
    }
}

/// A bad TLS parameter stops the sink binary at start-up: exit 2, naming `DATABASE_URL`,
/// without the password.
#[test]
fn bad_tls_parameters_exit_2_naming_database_url() {
    let ca = TestCa::new("pg test CA");
    let missing = ca.dir().join("missing.pem");
    for query in [
        "sslmode=verify-fulll".to_string(),
        "sslmode=verify-full".to_string(),
        format!("sslmode=verify-ca&sslrootcert={}", path(&missing)),
        format!("sslmode=require&sslcert={}", path(&ca.ca_path())),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sink"))
            .env_clear()
            .env(
                "DATABASE_URL",
                format!("postgres://sink:hunter2@127.0.0.1:1/healthcheck?{query}"),
            )
            .env("LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .output()
            .expect("run sink");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{query}: {stderr}");
        assert!(stderr.contains("DATABASE_URL"), "{query}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{query}: {stderr}");
    }
}
