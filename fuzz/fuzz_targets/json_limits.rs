//! Any bytes through the raw-JSON layer the gateway reads records (and endpoint answers) with:
//! the nesting limit never panics and never lets a deeper document through, the value count is
//! exactly the number of nodes of every tree that parses, and the
//! duplicate-key parser builds exactly serde_json's tree, refuses only what serde_json refuses or
//! a key written twice (naming it), and its trees survive a round trip.
//!
//! The checks are the ones `cargo test` runs (the file below is shared, not copied).

#![no_main]

#[path = "../../crates/gateway-core/tests/fuzz_checks/mod.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::json_layer_is_consistent(data));
