//! `hetao-gateway policy ...`. INTERFACE STUB: to be implemented (see issue 3).

use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Not built yet.
    Test {},
}

pub async fn run(_cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
