//! `hetao-gateway check`. INTERFACE STUB: to be implemented (see issue 3).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {}

pub async fn run(_args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
