//! The sink: consumes probe results from a Kafka topic and writes each one into PostgreSQL,
//! once.
//!
//! Flow: [`config`] → [`app::App`] → [`consume::Loop`] ([`decode`]) → [`store::Store`]. Only [`store`]
//! issues SQL; [`pg_tls`] turns `DATABASE_URL`'s `sslmode` into its TLS connector.

pub mod app;
pub mod config;
pub mod consume;
pub mod decode;
pub mod metrics;
pub mod pg_tls;
pub mod retry;
pub mod rollup;
pub mod stall;
pub mod store;
pub mod targets;
