//! `hetao-gateway send`. INTERFACE STUB: to be implemented (see issue 5).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct SendArgs {}

pub async fn run(_args: SendArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
