//! `hetao-gateway certs ...`. INTERFACE STUB: to be implemented (see issue 5).

use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum CertsCommand {
    /// Not built yet.
    Init {},
}

pub async fn run(_cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
