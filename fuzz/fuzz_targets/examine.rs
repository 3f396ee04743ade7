//! Any bytes, as a record from a sender of either park, through the one decision function
//! (`Checkpoint::examine`) with the shipped schemas, policies and development registry: no
//! panic, and a classified answer (a verdict that forwards exactly when it allows, or a refusal
//! with a code and status of the answer table).
//!
//! The checks are the ones `cargo test` runs (the file below is shared, not copied): each input
//! is examined as sent by every sender of `SENDERS` (a registry sample of each park, and a
//! stranger), alternately with and without the `created_at` window, so that seed records (the
//! policy test records) are decided as they are, not only refused for their origin.

#![no_main]

#[path = "../../crates/gateway-core/tests/fuzz_checks/mod.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::examine_from_every_sender(data));
