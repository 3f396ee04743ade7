//! hetao-gateway's entry point: parse the command line and dispatch. Everything else lives in the
//! library so tests drive the same code.
// One call into the allocator's C API (`return_freed_memory`) is the only unsafe code.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

// mimalloc instead of the system allocator: a request allocates many small short-lived objects
// across threads, and glibc's malloc spent ~15% of the gateway's CPU (much of it on its locks)
// under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Has mimalloc return every page freed so far to the system now, rather than a delay after it
/// was freed and only if the allocator is called again (an idle gateway does not call it): what
/// a load freed would otherwise stay resident (hetao_gateway_core::memory).
#[allow(unsafe_code)]
fn return_freed_memory() {
    // SAFETY: mi_collect takes no pointers and has no precondition; it may be called from any
    // thread at any time, and only frees memory mimalloc itself holds unused.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[tokio::main]
async fn main() -> ExitCode {
    hetao_gateway_core::memory::set_return_freed(return_freed_memory);
    let cli = hetao_gateway::cli::Cli::parse();
    hetao_gateway::cli::run(cli).await
}
