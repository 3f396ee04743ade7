//! Any bytes as one file of the shipped policy set (the first byte picks which: manifest or rule
//! file), loaded as `serve` and `policy test` load the folder: no panic; an error naming a file,
//! or a set that decides the policy test records with classified answers.
//!
//! The checks are the ones `cargo test` runs (the file below is shared, not copied).

#![no_main]

#[path = "../../crates/gateway-core/tests/fuzz_checks/mod.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::loaders::policy_file_loads_or_is_refused(data));
