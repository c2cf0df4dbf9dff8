//! What the checker and the sink really share: configuration helpers, the admin HTTP server
//! (`/healthz`, `/readyz`, `/metrics`), shutdown on SIGTERM/SIGINT, telemetry, the Kafka client
//! settings, the probe-result wire type and the slot grid.
//!
//! This crate never probes a target and never issues SQL; those belong to the services.

pub mod admin;
pub mod config;
pub mod kafka;
pub mod result;
pub mod service;
pub mod shutdown;
pub mod slots;
pub mod telemetry;
pub mod tls;
