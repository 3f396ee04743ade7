//! Handing memory freed by a load back to the operating system.
//!
//! Loading the rules is the one burst of garbage in a gateway's life: checking the schemas
//! against the draft 2020-12 meta-schema alone allocates and frees ~70 MiB (see
//! [`crate::schema`]). The binary's allocator (mimalloc) returns freed pages to the system only
//! a delay after they are freed, and only from inside a later allocator call; a gateway that
//! loads and then waits for partners keeps all of it resident. Measured on the shipped rules: 111
//! MiB resident after start, 38 MiB once the freed pages are returned (docs/benchmarks.md).
//!
//! The allocator is the binary's choice, so the binary says how to return freed memory
//! ([`set_return_freed`]); the library calls it after each load ([`return_freed`]). Without one
//! (tests, the library under another allocator) nothing happens.

use std::sync::OnceLock;

static RETURN_FREED: OnceLock<fn()> = OnceLock::new();

/// Sets how freed memory is returned to the system. Set once, before the gateway starts; a
/// second call is ignored (the allocator cannot change while the process runs).
pub fn set_return_freed(return_freed: fn()) {
    let _ = RETURN_FREED.set(return_freed);
}

/// Returns what the last load freed to the system, if the binary said how. Called once the
/// load's threads have ended: a page still held by a running thread cannot be returned.
pub(crate) fn return_freed() {
    if let Some(return_freed) = RETURN_FREED.get() {
        return_freed();
    }
}
