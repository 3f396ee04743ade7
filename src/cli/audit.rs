//! `hetao-gateway audit ...`. INTERFACE STUB: to be implemented (see issue 4).

use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Not built yet.
    Verify {},
}

pub async fn run(_cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
