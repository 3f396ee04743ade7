//! Any bytes as an audit log segment, or as byte edits of a small log written by the real writer,
//! through `verify_logs` (what `audit verify` and `AuditLog::open` run): no panic; a log verifies
//! exactly when every line opens (its hash over its bytes) and links to the one before, checkpoints
//! aside; any changed byte of a signed log is refused at the line that holds it; a problem names
//! its line.
//!
//! The checks are the ones `cargo test` runs (the file below is shared, not copied).

#![no_main]

#[path = "../../crates/gateway-core/tests/fuzz_checks/mod.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::loaders::audit_log_verdicts_are_exact(data));
