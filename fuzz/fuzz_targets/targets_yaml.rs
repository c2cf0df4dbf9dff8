//! See `healthcheck_pipeline_fuzz::check_targets_yaml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| healthcheck_pipeline_fuzz::check_targets_yaml(data));
