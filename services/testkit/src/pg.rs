//! The test stack's PostgreSQL (`TEST_DATABASE_URL`, exported by `make test` from
//! `scripts/stack.sh env`): a fresh database per test, plain clients and row counts. Never
//! drops or alters a database it did not create.

use std::net::SocketAddr;

use crate::unique;

/// The test PostgreSQL's URL (exported by `make test`).
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL is not set: run the tests with `make test`")
}

/// A fresh, empty database; returns its URL.
pub async fn fresh_database() -> String {
    let admin = database_url();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to TEST_DATABASE_URL");
    tokio::spawn(conn);
    let name = unique("t");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

/// The `host:port` of a PostgreSQL URL.
pub fn pg_addr(url: &str) -> SocketAddr {
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        _ => panic!("TCP host expected"),
    };
    format!("{host}:{}", cfg.get_ports()[0]).parse().unwrap()
}

/// A client of the database at `url`.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// `SELECT count(*)` of `table`.
pub async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}
