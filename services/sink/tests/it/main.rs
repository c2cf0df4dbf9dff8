//! The sink's integration tests, against the real PostgreSQL and the real broker started by
//! `make test` (`scripts/stack.sh`).

mod app;
mod broker;
mod e2e;
mod faults;
mod groups;
mod store;
mod support;
