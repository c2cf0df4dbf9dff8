//! The sink: consumes probe results from a Kafka topic and writes each one into PostgreSQL,
//! once.
//!
//! Flow: [`config`] → [`app::App`] → [`consume::Loop`] → [`store::Store`]. Only [`store`]
//! issues SQL.

pub mod app;
pub mod config;
pub mod consume;
pub mod metrics;
pub mod stall;
pub mod store;
