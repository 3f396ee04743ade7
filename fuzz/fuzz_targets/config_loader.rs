//! Any bytes as the gateway's configuration file through `Config::parse` (parsing and
//! validation, no disk): no panic; an error naming the file, or a configuration within the
//! ranges validation promises.
//!
//! The checks are the ones `cargo test` runs (the file below is shared, not copied).

#![no_main]

#[path = "../../crates/gateway-core/tests/fuzz_checks/mod.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::loaders::config_parses_or_is_refused(data));
