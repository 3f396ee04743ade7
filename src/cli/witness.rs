//! `hetao-gateway witness init | serve`: set up and run a witness that cosigns a gateway's audit
//! checkpoints (docs/witness.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hetao_gateway_core::server::bind;
use hetao_gateway_core::witness::config::{init, DEFAULT_LISTEN};
use hetao_gateway_core::witness::WitnessConfig;

#[derive(clap::Subcommand, Debug)]
pub enum WitnessCommand {
    /// Write a witness key pair (witness.key, witness.pub), a copy of the log's public key and a
    /// configuration (witness.toml) that witnesses that log. Never overwrites a file.
    Init(InitArgs),
    /// Run the witness: cosign each checkpoint of the configured logs that extends the last one
    /// it cosigned; refuse rollbacks and forks.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Then give witness.pub to the gateway's operator (`[[audit.witness]]` with this \
witness's URL and public_key) and to auditors (`audit verify --witness-key`), and start the \
witness with `hetao-gateway witness serve --config DIR/witness.toml`."
)]
pub struct InitArgs {
    /// The folder to write the witness's files in (created if missing; mode 0700 when created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The gateway's audit public key (PEM), as `audit public-key` prints it: the log to witness.
    #[arg(long, value_name = "FILE")]
    pub log_public_key: PathBuf,
    /// The address the witness will listen on (plain HTTP).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Signals: SIGTERM/SIGINT stop accepting, let requests in flight finish and exit. \
The state file is saved before every cosignature is answered; keep it, and back it up."
)]
pub struct ServeArgs {
    /// The witness's TOML configuration, as `witness init` writes it (paths inside are relative
    /// to it).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

pub async fn run(command: WitnessCommand) -> anyhow::Result<ExitCode> {
    match command {
        WitnessCommand::Init(args) => run_init(args),
        WitnessCommand::Serve(args) => run_serve(args).await,
    }
}

fn run_init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let report = init(&args.out, &args.log_public_key, args.listen)?;
    println!("witness name:       {}", report.name);
    println!("witness public key: {}", report.public_key.display());
    println!(
        "witness key:        {} (private, mode 0600)",
        report.key.display()
    );
    println!(
        "witnessed log:      {} (key copied to {})",
        report.origin,
        report.log_public_key.display()
    );
    println!("config:             {}", report.config.display());
    println!(
        "run it:             hetao-gateway witness serve --config {}",
        report.config.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = WitnessConfig::load(&args.config)?;
    // Held to the end: dropping it flushes the log queue.
    let _log_guard = hetao_gateway_core::telemetry::init(&config.logging);
    let listener = bind(&config.listen, "listen").await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    spawn_stop_on_signal(stop)?;
    hetao_gateway_core::witness::serve(config, listener, stopped).await?;
    Ok(ExitCode::SUCCESS)
}

/// Turns `stop` true on SIGTERM or SIGINT.
// `serve`'s handler also reloads on SIGHUP and is private to it; a shared helper in
// `hetao_gateway_core::shutdown` would serve both.
fn spawn_stop_on_signal(stop: tokio::sync::watch::Sender<bool>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!(target: "hetao::witness", "SIGTERM"),
            _ = interrupt.recv() => tracing::info!(target: "hetao::witness", "SIGINT"),
        }
        let _ = stop.send(true);
    });
    Ok(())
}
