//! See `healthcheck_pipeline_fuzz::check_probe_result`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| healthcheck_pipeline_fuzz::check_probe_result(data));
