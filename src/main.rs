//! hetao-gateway's entry point: parse the command line and dispatch. Everything else lives in the
//! library so tests drive the same code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = hetao_gateway::cli::Cli::parse();
    hetao_gateway::cli::run(cli).await
}
