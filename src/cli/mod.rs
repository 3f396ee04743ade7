//! The command line: one file per subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hetao_gateway_core::causes::chain_text;

pub mod audit;
mod audit_database;
pub mod certs;
pub mod check;
pub use hetao_devkit::demo;
pub mod policy;
pub mod send;
pub mod serve;
pub mod witness;

/// hetao-gateway: the mutual-TLS checkpoint between the Shenzhen and Hong Kong parks of the Hetao
/// co-operation zone.
#[derive(Parser, Debug)]
#[command(name = "hetao-gateway", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway from a configuration file.
    Serve(serve::ServeArgs),
    /// Run everything on loopback with a throw-away PKI: two park endpoints, the gateway, a stream
    /// of realistic records, a summary and a verified audit log.
    Demo(demo::DemoArgs),
    /// Development certificates (one CA per park, gateway, endpoints, organisations).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Send records to a gateway as a partner organisation.
    Send(send::SendArgs),
    /// Decide one record offline (no network) and print the decision.
    Check(check::CheckArgs),
    /// Policy tooling.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Verify and query audit logs.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run a witness that cosigns a gateway's audit checkpoints (set it up with `witness init`).
    #[command(subcommand)]
    Witness(witness::WitnessCommand),
}

/// Runs the parsed command and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(a) => serve::run(a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Certs(c) => certs::run(c).await,
        Command::Send(a) => send::run(a).await,
        Command::Check(a) => check::run(a).await,
        Command::Policy(c) => policy::run(c).await,
        Command::Audit(c) => audit_database::run(c).await,
        Command::Witness(c) => witness::run(c).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", chain_text(e));
            ExitCode::from(2)
        }
    }
}
