//! hetao-gateway's entry point: parse the command line and dispatch. Everything else lives in the
//! library so tests drive the same code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

// mimalloc instead of the system allocator: a request allocates many small short-lived objects
// across threads, and glibc's malloc spent ~15% of the gateway's CPU (much of it on its locks)
// under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = hetao_gateway::cli::Cli::parse();
    hetao_gateway::cli::run(cli).await
}
