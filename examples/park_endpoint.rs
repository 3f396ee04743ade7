//! The reference park endpoint as a process, for the load benchmark (`bench/load.sh`): an mTLS
//! server accepting `POST /v1/records` from clients of one CA, answering
//! `200 {"accepted": true, ...}`. The gateway and nginx both forward to it.
//!
//! The library endpoint keeps every record it received (tests read them); under load that would
//! grow without bound, so this program empties the list twice a second.
//!
//! ```text
//! cargo run --release --example park_endpoint -- --listen 127.0.0.1:9002 \
//!     --cert hk-endpoint.pem --key hk-endpoint.key --client-ca gateway-ca.pem
//! ```
//! Runs until SIGTERM or SIGINT; prints `listening https://ADDR` once ready.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hetao_devkit::endpoint::{EndpointBehaviour, EndpointOptions, ParkEndpoint};

#[derive(Parser, Debug)]
#[command(about = "Reference park endpoint (mTLS), for benchmarks")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Server certificate (PEM chain).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// CA whose client certificates are accepted (PEM; may hold several).
    #[arg(long)]
    client_ca: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Two worker threads at most: the endpoint must not crowd out what is being measured.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let endpoint = ParkEndpoint::start(EndpointOptions {
        listen: args.listen,
        cert_pem: read(&args.cert)?,
        key_pem: read(&args.key)?,
        client_ca_pem: read(&args.client_ca)?,
        behaviour: EndpointBehaviour::Accept,
        log_file: None,
    })
    .await?;
    println!("listening {}", endpoint.url());

    let received = endpoint.received_handle();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                received.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!(
        "park endpoint: {} connections, {} failed handshakes",
        endpoint.connections(),
        endpoint.handshake_failures()
    );
    endpoint.shutdown().await;
    Ok(())
}
