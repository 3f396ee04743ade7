//! `hetao-gateway demo`: the whole zone on loopback in a few seconds.
//!
//! A throw-away development PKI, two park endpoints (each logging what it received), the real
//! gateway (the same `server::run` as `serve`), and a stream of realistic records in both
//! directions from organisations of both parks: allowed, denied, invalid, a replay, a sender
//! claiming the other park. Then a summary, an `audit verify` of the log, and an exit code that
//! says whether every record got the answer it must get.

mod report;
mod stream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::endpoint::{EndpointBehaviour, EndpointOptions, ParkEndpoint, RunningEndpoint};
use hetao_client::{ClientOptions, RecordClient};
use hetao_gateway_core::audit::AuditPublicKey;
use hetao_gateway_core::config::Config;
use hetao_gateway_core::state::Gateway;
use hetao_pki::{init_dev_pki, DevPkiFiles, DevPkiOptions};

pub use stream::{freshen, repository_examples_dir, Expect, Shot};

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Everything runs on 127.0.0.1 with ports the system picks, so the demo never clashes with a
running gateway. It exits 0 when every record got the answer it must get, every forwarded record
reached its park endpoint, and the audit log verifies; otherwise 1, saying what went wrong.

Examples:
  hetao-gateway demo
  hetao-gateway demo --dir demo-out --records 200
  hetao-gateway demo --dir demo-out --listen 127.0.0.1:8443 --keep-running
  hetao-gateway audit verify demo-out/audit/audit.jsonl --public-key demo-out/audit-signing.pub")]
pub struct DemoArgs {
    /// Keep everything in DIR (created; must be empty): the PKI, gateway.toml, the audit log and
    /// the endpoints' logs. Without it a temporary folder is used and removed at exit.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// How many records to send (at least 5).
    #[arg(long, value_name = "N", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(5..=1_000_000))]
    pub records: u32,
    /// Records in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Print only the summary, not a line per record.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Address of the gateway's partner listener (the default picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// After the stream, keep the gateway and endpoints running for your own `curl` and
    /// `hetao-gateway send` until Ctrl-C; then stop, verify and summarise as usual.
    #[arg(long)]
    pub keep_running: bool,
}

/// What one request got.
#[derive(Debug, Clone)]
pub struct Sent {
    pub shot: Shot,
    pub organisation: String,
    /// The HTTP status, or `None` when no answer came (see `failure`).
    pub status: Option<u16>,
    pub answer: Option<serde_json::Value>,
    pub failure: Option<String>,
    pub latency: Duration,
}

impl Sent {
    pub fn as_expected(&self) -> bool {
        self.status
            .is_some_and(|s| self.shot.expect.holds(s, self.answer.as_ref()))
    }
}

/// A partner organisation with its client.
struct Sender {
    park: String,
    organisation: String,
    client: RecordClient,
}

/// Where the demo works: a folder kept (`--dir`) or a temporary one removed on drop.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn new(dir: Option<&Path>) -> anyhow::Result<WorkDir> {
        match dir {
            Some(dir) => {
                if dir.exists() {
                    let mut entries = std::fs::read_dir(dir).with_context(|| {
                        format!("--dir {}: cannot read the folder", dir.display())
                    })?;
                    if entries.next().is_some() {
                        anyhow::bail!(
                            "--dir {}: the folder is not empty (a previous demo?); \
                             remove it or choose another folder",
                            dir.display()
                        );
                    }
                }
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("--dir {}: cannot create the folder", dir.display())
                })?;
                let path = std::fs::canonicalize(dir)
                    .with_context(|| format!("--dir {}", dir.display()))?;
                Ok(WorkDir { path, keep: true })
            }
            None => {
                let path = std::env::temp_dir()
                    .join(format!("hetao-demo-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&path).with_context(|| {
                    format!("cannot create a temporary folder {}", path.display())
                })?;
                Ok(WorkDir { path, keep: false })
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    // The demo's own output is the show: only warnings and errors from the gateway.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let started = Instant::now();
    let work = WorkDir::new(args.dir.as_deref())?;
    let out = report::Out::new(args.quiet);

    // 1-3. The PKI, the endpoints and the gateway.
    let sources = stream::Sources::read(&repository_examples_dir())?;
    let zone = Zone::start(&work.path, args.listen).await?;
    let (gateway_addr, admin_addr) = (zone.gateway_addr, zone.admin_addr);
    let files = zone.files.clone();
    let audit_log = zone.gateway.config.audit.log.clone();
    let witness_keys: Vec<PathBuf> = zone
        .witnesses
        .iter()
        .map(|w| w.public_key.clone())
        .collect();
    out.banner(
        &work.path,
        work.keep,
        gateway_addr,
        admin_addr,
        &zone.endpoints,
    );

    // 4. The stream.
    let senders = senders(&files)?;
    let (shots, replays) = stream::build(&sources, args.records as usize, Utc::now())?;
    let url = zone.records_url();
    let total = shots.len() + replays.len();
    let concurrency = args.concurrency as usize;
    let send_started = Instant::now();
    let mut progress = report::Progress::new(&out, total);
    // Replays go after everything else is decided: a replay must find its original decided.
    let first = shots.len();
    send_all(&senders, &url, shots, concurrency, &mut progress, 0).await;
    send_all(&senders, &url, replays, concurrency, &mut progress, first).await;
    let (results, lost) = progress.finish();
    let send_elapsed = send_started.elapsed();
    let readiness = report::admin_get(admin_addr, "/readyz").await;
    if args.keep_running {
        out.keep_running(&zone);
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
    }

    // 5. Stop the gateway: drain, final signed checkpoint.
    let received = zone.stop().await?;

    // 6. Audit verification and the summary.
    let public_key = AuditPublicKey::from_pem_file(&files.audit_public_key)
        .with_context(|| format!("audit public key {}", files.audit_public_key.display()))?;
    let audit = report::AuditCheck::run(&audit_log, &public_key, &witness_keys)?;
    let checks = report::Checks::evaluate(
        &results,
        &lost,
        &received,
        &audit,
        &public_key,
        readiness,
        args.keep_running,
    );
    out.summary(&results, &received, &audit, send_elapsed, concurrency);
    out.checks(&checks);
    if work.keep {
        out.kept(&files, &endpoint_logs(&files), &witness_keys);
    }
    out.finish(&checks, started.elapsed());
    drop(work);
    Ok(if checks.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The zone on loopback: a development PKI in a folder, a park endpoint per park and the gateway,
/// on ports the system picked, with a `gateway.toml` that names them. The demo runs on it, and
/// tests use it to try the README's commands against a real gateway.
pub struct Zone {
    pub files: DevPkiFiles,
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub endpoints: BTreeMap<String, RunningEndpoint>,
    /// One witness per park, cosigning the gateway's checkpoints.
    pub witnesses: Vec<DemoWitness>,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A park's witness run by the demo (as `hetao-gateway witness serve` would run it).
pub struct DemoWitness {
    pub park: String,
    pub url: String,
    /// Its public key (`witness.pub`), what `audit verify --witness-key` takes.
    pub public_key: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a witness of the demo's log for `park`, in `dir/witness-<park>/`.
async fn start_witness(files: &DevPkiFiles, park: &str) -> anyhow::Result<DemoWitness> {
    use hetao_gateway_core::witness::config::{init, WitnessConfig};
    let dir = files.dir.join(format!("witness-{park}"));
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot listen on 127.0.0.1 for a witness")?;
    let addr = listener.local_addr()?;
    let report = init(&dir, &files.audit_public_key, addr)
        .with_context(|| format!("cannot set up the {park} witness"))?;
    let config = WitnessConfig::load(&report.config)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        if let Err(e) = hetao_gateway_core::witness::server::serve(config, listener, stopped).await
        {
            tracing::error!(error = %e, "demo witness stopped");
        }
    });
    Ok(DemoWitness {
        park: park.to_string(),
        url: format!("http://{addr}"),
        public_key: report.public_key,
        stop,
        task,
    })
}

impl Zone {
    /// Writes the development PKI into `dir` (which must not hold one yet) and starts everything.
    /// `listen` is the partner listener's address (`127.0.0.1:0`: a free port); the admin
    /// listener and the endpoints always take free loopback ports.
    pub async fn start(dir: &Path, listen: SocketAddr) -> anyhow::Result<Zone> {
        let files = init_dev_pki(dir, &DevPkiOptions::default())
            .with_context(|| format!("cannot write the development PKI into {}", dir.display()))?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = hetao_gateway_core::server::bind(&listen, "demo --listen").await?;
        let admin_listener = TcpListener::bind(loopback)
            .await
            .context("cannot listen on 127.0.0.1 for the admin listener")?;
        let gateway_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let mut endpoints = BTreeMap::new();
        for park in &files.parks {
            endpoints.insert(park.park.clone(), start_endpoint(&files, &park.park).await?);
        }
        let urls = endpoints
            .iter()
            .map(|(park, e): (&String, &RunningEndpoint)| (park.clone(), e.url()))
            .collect();
        files.rewrite_config(gateway_addr, admin_addr, &urls)?;
        // One witness per park cosigns the log's checkpoints, as the parks would run them.
        let mut witnesses = Vec::new();
        for park in &files.parks {
            witnesses.push(start_witness(&files, &park.park).await?);
        }
        let mut config_text = std::fs::read_to_string(&files.config)
            .with_context(|| format!("cannot read {}", files.config.display()))?;
        for w in &witnesses {
            config_text.push_str(&format!(
                "\n# The {} park's witness (hetao-gateway witness serve).\n[[audit.witness]]\nurl = \"{}\"\npublic_key = \"{}\"\n",
                w.park,
                w.url,
                w.public_key.display()
            ));
        }
        std::fs::write(&files.config, config_text)
            .with_context(|| format!("cannot write {}", files.config.display()))?;

        // The gateway, exactly as `serve` runs it.
        let config = Config::load(&files.config)?;
        let gateway = Arc::new(Gateway::build(config)?);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(hetao_gateway_core::server::run(
            gateway.clone(),
            listener,
            admin_listener,
            stopped,
        ));
        Ok(Zone {
            files,
            gateway_addr,
            admin_addr,
            gateway,
            endpoints,
            witnesses,
            stop,
            server,
        })
    }

    /// `https://127.0.0.1:<port>/v1/records`.
    pub fn records_url(&self) -> String {
        format!(
            "https://{}{}",
            self.gateway_addr,
            hetao_gateway_core::pipeline::RECORDS_PATH
        )
    }

    /// Stops the gateway (drain, final signed checkpoint), then the endpoints; returns what each
    /// park's endpoint received.
    pub async fn stop(
        self,
    ) -> anyhow::Result<BTreeMap<String, Vec<crate::endpoint::ReceivedRecord>>> {
        let _ = self.stop.send(true);
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("the gateway stopped with an error: {e}"),
            Err(e) => anyhow::bail!("the gateway task failed: {e}"),
        }
        let mut received = BTreeMap::new();
        for (park, endpoint) in self.endpoints {
            received.insert(park, endpoint.received());
            endpoint.shutdown().await;
        }
        // The witnesses last: the gateway has its closing checkpoint cosigned as it stops.
        for w in self.witnesses {
            let _ = w.stop.send(true);
            let _ = w.task.await;
        }
        Ok(received)
    }
}

fn endpoint_log(files: &DevPkiFiles, park: &str) -> PathBuf {
    files.dir.join(format!("endpoint-{park}.jsonl"))
}

fn endpoint_logs(files: &DevPkiFiles) -> Vec<(String, PathBuf)> {
    files
        .parks
        .iter()
        .map(|p| (p.park.clone(), endpoint_log(files, &p.park)))
        .collect()
}

async fn start_endpoint(files: &DevPkiFiles, park: &str) -> anyhow::Result<RunningEndpoint> {
    let p = files
        .park(park)
        .ok_or_else(|| anyhow::anyhow!("the development PKI has no park {park}"))?;
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let endpoint = ParkEndpoint::start(EndpointOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert_pem: read(&p.endpoint_cert)?,
        key_pem: read(&p.endpoint_key)?,
        client_ca_pem: read(&files.gateway_ca_cert)?,
        behaviour: EndpointBehaviour::Accept,
        log_file: Some(endpoint_log(files, park)),
    })
    .await
    .with_context(|| format!("cannot start the endpoint of park {park}"))?;
    Ok(endpoint)
}

fn senders(files: &DevPkiFiles) -> anyhow::Result<Vec<Sender>> {
    files
        .orgs
        .iter()
        .map(|org| {
            let client = RecordClient::from_files(
                &files.gateway_ca_cert,
                &org.cert,
                &org.key,
                ClientOptions::default(),
            )
            .with_context(|| format!("client of {}", org.organisation))?;
            Ok(Sender {
                park: org.park.clone(),
                organisation: org.organisation.clone(),
                client,
            })
        })
        .collect()
}

/// Sends `shots` with at most `concurrency` in flight, reporting each as it completes. The
/// organisations of a park take turns.
async fn send_all(
    senders: &[Sender],
    url: &str,
    shots: Vec<Shot>,
    concurrency: usize,
    progress: &mut report::Progress<'_>,
    offset: usize,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for (i, shot) in shots.into_iter().enumerate() {
        let of_park: Vec<&Sender> = senders
            .iter()
            .filter(|s| s.park == shot.sender_park)
            .collect();
        // The organisation the registry holds this kind's facts for, else the park's
        // organisations in turn.
        let sample = hetao_pki::sample_sender(&shot.sender_park, &shot.kind);
        let chosen = of_park
            .iter()
            .copied()
            .find(|s| Some(s.organisation.as_str()) == sample)
            .or_else(|| of_park.get((offset + i) % of_park.len().max(1)).copied());
        let Some(sender) = chosen else {
            progress.record(Sent {
                failure: Some(format!("no organisation of park {}", shot.sender_park)),
                shot,
                organisation: "-".into(),
                status: None,
                answer: None,
                latency: Duration::ZERO,
            });
            continue;
        };
        let client = sender.client.clone();
        let organisation = sender.organisation.clone();
        let url = url.to_string();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let t = Instant::now();
            let result = client
                .send_with_content_type(&url, shot.body.clone(), shot.content_type)
                .await;
            let latency = t.elapsed();
            match result {
                Ok(a) => Sent {
                    shot,
                    organisation,
                    status: Some(a.status),
                    answer: a.json,
                    failure: None,
                    latency,
                },
                Err(e) => Sent {
                    shot,
                    organisation,
                    status: None,
                    answer: None,
                    failure: Some(format!("{e} ({})", e.hint())),
                    latency,
                },
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(sent) => progress.record(sent),
            Err(e) => progress.lost(e.to_string()),
        }
    }
}
