//! The sink's integration tests, against the real PostgreSQL and the real broker started by
//! `make test` (`scripts/stack.sh`).

mod app;
mod blackhole;
mod broker;
mod exit;
mod faults;
mod groups;
mod kafka_tls;
mod locations;
mod pg_tls;
mod poison;
mod status;
mod status_http;
mod store;
mod support;
mod targets;
mod tls_support;
mod views;
