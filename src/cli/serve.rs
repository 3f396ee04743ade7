//! `hetao-gateway serve --config FILE`: run the gateway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use hetao_gateway_core::server::bind;

use hetao_gateway_core::config::Config;
use hetao_gateway_core::state::{Gateway, RuleSet};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Signals: SIGHUP reloads policies, schemas and certificates; \
SIGTERM/SIGINT drain in-flight requests, write a final signed audit checkpoint and exit."
)]
pub struct ServeArgs {
    /// The gateway's TOML configuration (paths inside are relative to it).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Validate the configuration, certificates, schemas and policies, then exit (0 if usable).
    #[arg(long, short = 't')]
    pub check: bool,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    // Held to the end of `run`: dropping it flushes the log queue.
    let _log_guard = hetao_gateway_core::telemetry::init(&config.logging);
    if args.check {
        return check(&config);
    }
    let listener = bind(&config.server.listen, "server.listen").await?;
    let admin_listener = bind(&config.admin.listen, "admin.listen").await?;
    if let Some(tls) = &config.admin.tls {
        hetao_gateway_core::admin::admin_tls(tls)?;
    }
    let gateway = Arc::new(Gateway::start(config).await?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    spawn_signal_handlers(gateway.clone(), stop)?;
    hetao_gateway_core::server::run(gateway, listener, admin_listener, stopped).await?;
    Ok(ExitCode::SUCCESS)
}

/// Binds a listener; "address in use" gets a sentence saying what to do.
fn check(config: &Config) -> anyhow::Result<ExitCode> {
    let rules = RuleSet::load(config)?;
    hetao_gateway_core::tls::inbound(config)?;
    hetao_gateway_core::upstream::Upstreams::new(config)?;
    if let Some(tls) = &config.admin.tls {
        hetao_gateway_core::admin::admin_tls(tls)?;
    }
    // Read as `serve` reads it: a key the group or others may read is refused.
    hetao_gateway_core::audit::AuditSigner::from_pem_file(&config.audit.signing_key).with_context(
        || {
            format!(
                "audit.signing_key = {}: cannot use the audit signing key",
                config.audit.signing_key.display()
            )
        },
    )?;
    if let Some(cluster) = &config.cluster {
        // The connection string and CA are checked; the database itself is reached at start.
        hetao_gateway_core::cluster::link::Target::new(&cluster.database, cluster.ca.as_deref())?;
        println!(
            "cluster: instance `{}` (the database is not contacted by --check; `serve` refuses to start without it)",
            cluster.instance
        );
    }
    for warning in rules.policies.warnings() {
        println!("warning: {warning}");
    }
    println!(
        "{}: configuration usable (parks: {}; policy {}; schemas {})",
        config.source.display(),
        config.parks.keys().cloned().collect::<Vec<_>>().join(", "),
        rules.policies.version(),
        &rules.schemas.hash()[..12.min(rules.schemas.hash().len())],
    );
    Ok(ExitCode::SUCCESS)
}

fn spawn_signal_handlers(
    gateway: Arc<Gateway>,
    stop: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!(target: "hetao::reload", "SIGHUP: reloading");
                    let _ = gateway.reload().await;
                }
                _ = terminate.recv() => { tracing::info!(target: "hetao::server", "SIGTERM"); break; }
                _ = interrupt.recv() => { tracing::info!(target: "hetao::server", "SIGINT"); break; }
            }
        }
        let _ = stop.send(true);
    });
    Ok(())
}
