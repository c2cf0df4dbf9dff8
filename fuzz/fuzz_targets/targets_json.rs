//! See `healthcheck_pipeline_fuzz::check_targets_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| healthcheck_pipeline_fuzz::check_targets_json(data));
