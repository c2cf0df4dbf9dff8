//! The pipeline's end-to-end tests: the `checker` and `sink` binaries as processes against the
//! real broker and PostgreSQL started by `make test` (`scripts/stack.sh`), private tansu
//! brokers, and loopback targets. They judge by data only: the topic read back, the table,
//! HTTP answers, parsed `/metrics`, exit codes.
//!
//! The binaries must be built (`make test` builds the workspace; alone:
//! `cargo build -p checker -p sink && cargo nextest run -p pipeline-tests`).

mod dashboards;
mod e2e;
