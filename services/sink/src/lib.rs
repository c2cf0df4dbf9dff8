//! The sink: consumes probe results from a Kafka topic and writes each one into PostgreSQL,
//! once.
//!
//! Flow: [`config`] → [`app::App`] → [`consume::Loop`] ([`decode`]) → [`store::Store`]. Only [`store`]
//! issues SQL ([`status`], the status page and JSON API, reads through it); [`pg_tls`] turns `DATABASE_URL`'s `sslmode` into its TLS connector.

pub mod app;
pub mod config;
pub mod consume;
pub mod decode;
pub mod metrics;
pub mod pg_tls;
pub mod retry;
pub mod rollup;
pub mod stall;
pub mod status;
pub mod store;
pub mod targets;
