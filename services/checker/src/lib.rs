//! The checker: probes HTTP(S) targets on a fixed-rate schedule and publishes one JSON result
//! per probe to a Kafka topic.
//!
//! Flow: [`config`] → [`app::App`] → [`roster::Roster`] → per-target [`schedule`] tasks → [`probe::run`] →
//! [`publish::Publisher`]. The checker never writes to a database.

pub mod app;
pub mod config;
pub mod connect;
pub mod fleet;
pub mod metrics;
pub mod oneshot;
pub mod probe;
pub mod proxy;
pub mod publish;
pub mod reload;
pub mod resolve;
pub mod roster;
pub mod schedule;
pub mod target;
pub mod targets_topic;
pub mod timer;
pub mod tls;
