//! Integration tests of the checker: every probe rule of `checker::probe::run` against real
//! servers on loopback addresses (hyper servers, and raw TCP for misbehaving peers). Targets are
//! built through `checker::target::load_targets`, the path the service uses. The `targets_*` modules
//! run `checker targets ...` as a process against the test broker; `probe_cli` runs `checker probe`
//! against loopback servers.

mod body;
mod credentials;
mod dns;
mod exit;
mod failures;
mod fleet;
mod fleet_apply;
mod fleet_support;
mod http_probe;
mod outage;
mod per_target_metrics;
mod probe_cli;
mod proxy;
mod redirects;
mod reload;
mod support;
mod targets_apply;
mod targets_validate;
mod tls;
