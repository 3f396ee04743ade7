//! One connection to the cluster's PostgreSQL, made again after it breaks.
//!
//! Each batching task of the cluster owns one link, so their statements pipeline on separate
//! connections. A broken database fails fast: after a failed attempt the link refuses for
//! [`RETRY_AFTER`] without trying, so requests get their 503 at once instead of each waiting for
//! a connect timeout; the health probe keeps trying in the meantime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres::Client;

use super::ClusterError;

/// The longest a connection attempt (TCP, TLS, authentication) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after a failed connection attempt the link refuses without trying again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// How to reach the database: the parsed connection string and, when `[cluster] ca` is set, the
/// TLS setup that verifies the server.
pub struct Target {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Target {
    /// Parses the connection string and reads the CA file, if any.
    pub fn new(database: &str, ca: Option<&std::path::Path>) -> Result<Target, ClusterError> {
        let mut config: tokio_postgres::Config = database
            .parse()
            .map_err(|e| ClusterError::Config(format!("cluster.database: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("hetao-gateway");
        let tls = match ca {
            None => None,
            Some(path) => Some(tls_connector(path)?),
        };
        Ok(Target { config, tls })
    }

    /// The same database, with commits that do not wait for the WAL flush: for the shipped
    /// copy of the log, which is not the log (the local files are, durable before any answer).
    pub fn with_async_commit(&self) -> Target {
        self.with_setting("synchronous_commit=off")
    }

    /// The same database, in sessions the server keeps read-only (`default_transaction_read_only`):
    /// for auditors' tools, which only ever read.
    pub fn read_only(&self) -> Target {
        self.with_setting("default_transaction_read_only=on")
    }

    /// The same database with one more session setting (`name=value`).
    fn with_setting(&self, setting: &str) -> Target {
        let mut config = self.config.clone();
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c {setting}"),
            _ => format!("-c {setting}"),
        };
        config.options(&options);
        Target {
            config,
            tls: self.tls.clone(),
        }
    }

    /// One connection, for a command that runs once (`audit ... --database`).
    pub async fn connect_once(&self) -> Result<Client, ClusterError> {
        self.connect().await
    }

    async fn connect(&self) -> Result<Client, ClusterError> {
        let connecting = async {
            match &self.tls {
                None => {
                    let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(watch_connection(connection));
                    Ok::<_, tokio_postgres::Error>(client)
                }
                Some(tls) => {
                    let (client, connection) = self.config.connect(tls.clone()).await?;
                    tokio::spawn(watch_connection(connection));
                    Ok(client)
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connecting).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(ClusterError::from_db(&e)),
            Err(_) => Err(ClusterError::Unreachable(
                "connecting to the database timed out".into(),
            )),
        }
    }
}

/// Drives a connection until it closes; its errors reach the client's next call as well.
async fn watch_connection<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(target: "hetao::cluster", error = %e, "database connection closed");
    }
}

fn tls_connector(
    ca: &std::path::Path,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ClusterError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| ClusterError::Config(format!("cluster.ca {}: {e}", ca.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| ClusterError::Config(format!("cluster.ca {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| ClusterError::Config(format!("cluster.ca {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(ClusterError::Config(format!(
            "cluster.ca {}: no certificate in the file",
            ca.display()
        )));
    }
    // The ring provider, as everywhere in the gateway: two providers in one build make rustls
    // panic at run time.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClusterError::Config(format!("cluster TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A connection made on first use and again after it breaks.
pub struct Link {
    target: Arc<Target>,
    state: tokio::sync::Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    client: Option<Arc<Client>>,
    failed_at: Option<Instant>,
    last_error: Option<String>,
}

impl Link {
    pub fn new(target: Arc<Target>) -> Link {
        Link {
            target,
            state: tokio::sync::Mutex::new(LinkState::default()),
        }
    }

    /// The open connection, or a new one.
    pub async fn client(&self) -> Result<Arc<Client>, ClusterError> {
        let mut state = self.state.lock().await;
        if let Some(client) = state.client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        state.client = None;
        if let (Some(at), Some(error)) = (state.failed_at, &state.last_error) {
            if at.elapsed() < RETRY_AFTER {
                return Err(ClusterError::Unreachable(error.clone()));
            }
        }
        match self.target.connect().await {
            Ok(client) => {
                let client = Arc::new(client);
                state.client = Some(client.clone());
                state.failed_at = None;
                state.last_error = None;
                Ok(client)
            }
            Err(e) => {
                state.failed_at = Some(Instant::now());
                state.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Drops the connection after a failed statement: the next call connects again.
    pub async fn broken(&self, error: &ClusterError) {
        let mut state = self.state.lock().await;
        state.client = None;
        state.failed_at = Some(Instant::now());
        state.last_error = Some(error.to_string());
    }
}
