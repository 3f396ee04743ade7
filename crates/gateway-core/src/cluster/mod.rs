//! Several instances behind one L4 balancer, sharing one PostgreSQL (`[cluster]`,
//! docs/scaling.md).
//!
//! - [`decisions`]: the decision registry. A record id is claimed in the database before it is
//!   decided and settled with its answer before the answer leaves, so a record id decided on any
//!   instance is an idempotent retry (the first answer again) or a `409 replay` on all, and a
//!   record is forwarded by one instance at a time.
//! - [`shipping`]: each instance keeps its own local audit chain and ships its durable lines to
//!   the database, so `audit query --database` and `audit verify --database` cover every
//!   instance.
//! - [`link`]: the connections, made again after they break.
//!
//! The database is on the request path of every record: when it cannot be reached, records are
//! refused with `503 cluster_unavailable` and `/readyz` says why (fail closed). Without
//! `[cluster]` nothing here runs and the gateway uses local files only.

pub mod decisions;
pub mod export;
pub mod link;
pub mod shipping;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::ClusterConfig;

pub use decisions::{
    registry_key, Claim, ClaimHold, ClaimRequest, Decisions, Settle, StoredAnswer,
};
use link::{Link, Target};

/// Why the cluster database could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The `[cluster]` settings cannot be used.
    #[error("{0}")]
    Config(String),
    /// The database cannot be reached, or the connection broke.
    #[error("the cluster database is unreachable: {0}")]
    Unreachable(String),
    /// The database refused a statement.
    #[error("the cluster database refused a statement: {0}")]
    Database(String),
    /// The gateway is stopping: the batching task is gone.
    #[error("the cluster link is closed")]
    Closed,
}

impl ClusterError {
    fn from_db(e: &tokio_postgres::Error) -> ClusterError {
        // `Display` of a database error is only its severity; the code and message say what.
        match e.as_db_error() {
            Some(db) => ClusterError::Database(format!("{} ({})", db.message(), db.code().code())),
            None => ClusterError::Unreachable(e.to_string()),
        }
    }
}

/// The schema, one migration per version, applied in order at start under an advisory lock (so
/// instances starting together apply each once). Never edit a shipped migration: add one.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_decision_registry.sql")),
    (2, include_str!("migrations/0002_shipped_logs.sql")),
];

/// The advisory lock the migrations run under (an arbitrary constant: "hetao" in ASCII).
const MIGRATION_LOCK: i64 = 0x0068_6574_616f;

/// The statements' time limit: a database that stops answering fails requests closed instead
/// of holding them.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a statement under [`STATEMENT_TIMEOUT`]: a database that stops answering fails the
/// caller instead of holding it.
pub(crate) async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ClusterError::from_db(&e)),
        Err(_) => Err(ClusterError::Unreachable(
            "the database did not answer in time".into(),
        )),
    }
}

/// One unlabelled metric in the Prometheus text format: help, type, value.
pub(crate) fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// This instance's handle on the cluster database.
pub struct Cluster {
    pub instance: String,
    /// How long a claim holds unsettled before another instance may take the record over.
    pub lease: Duration,
    pub decisions: Decisions,
    health: Arc<Health>,
    target: Arc<Target>,
    shipping: Arc<shipping::ShippingCounts>,
}

/// Whether the database answered lately, for `/readyz` and `/metrics`.
#[derive(Default)]
pub struct Health {
    reachable: AtomicBool,
    last_error: Mutex<Option<String>>,
    round_trips: AtomicU64,
    failures: AtomicU64,
}

impl Health {
    fn ok(&self) {
        self.reachable.store(true, Ordering::Relaxed);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, e: &ClusterError) {
        self.reachable.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
    }

    /// `Err(reason)` while the database cannot be reached.
    pub fn check(&self) -> Result<(), String> {
        if self.reachable.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        Err(last.unwrap_or_else(|| "not connected yet".into()))
    }
}

impl Cluster {
    /// Connects, applies the migrations and starts the batching tasks. Fails when the database
    /// cannot be reached or migrated: an instance does not start without its registry.
    pub async fn start(
        config: &ClusterConfig,
        lease: Duration,
        horizon: Duration,
    ) -> Result<Cluster, ClusterError> {
        let target = Arc::new(Target::new(&config.database, config.ca.as_deref())?);
        let setup = Link::new(target.clone());
        let client = setup.client().await?;
        migrate(&client).await?;
        drop(client);
        let health = Arc::new(Health::default());
        health.ok();
        let decisions = Decisions::start(
            config.instance.clone(),
            Link::new(target.clone()),
            Link::new(target.clone()),
            lease,
            health.clone(),
        );
        tokio::spawn(probe(setup, health.clone(), horizon));
        Ok(Cluster {
            instance: config.instance.clone(),
            lease,
            decisions,
            health,
            target,
            shipping: Arc::new(shipping::ShippingCounts::default()),
        })
    }

    /// Ships the audit log's durable lines to the database, in the background, for as long as
    /// the process runs.
    pub fn start_shipping(&self, audit: &crate::audit::AuditLog) {
        shipping::start(
            Link::new(Arc::new(self.target.with_async_commit())),
            self.instance.clone(),
            audit,
            self.health.clone(),
            self.shipping.clone(),
        );
    }

    /// `Err(reason)` while the database cannot be reached (`/readyz`).
    pub fn health(&self) -> Result<(), String> {
        self.health.check()
    }

    /// The cluster's lines of `/metrics`.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let h = &self.health;
        write_metric(
            &mut out,
            "hetao_cluster_database_up",
            "gauge",
            "1 when the last statement to the cluster database succeeded.",
            u64::from(h.reachable.load(Ordering::Relaxed)),
        );
        write_metric(
            &mut out,
            "hetao_cluster_round_trips_total",
            "counter",
            "Batches of statements the cluster database answered.",
            h.round_trips.load(Ordering::Relaxed),
        );
        write_metric(
            &mut out,
            "hetao_cluster_failures_total",
            "counter",
            "Batches of statements that failed (database unreachable or refusing).",
            h.failures.load(Ordering::Relaxed),
        );
        out.push_str(&self.decisions.render_metrics());
        out.push_str(&self.shipping.render());
        out
    }
}

/// Applies the migrations not applied yet, each in its own transaction.
async fn migrate(client: &tokio_postgres::Client) -> Result<(), ClusterError> {
    let db = |e: tokio_postgres::Error| ClusterError::from_db(&e);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS hetao_schema_version (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    let result = async {
        for (version, sql) in MIGRATIONS {
            let applied = client
                .query_opt(
                    "SELECT 1 FROM hetao_schema_version WHERE version = $1",
                    &[version],
                )
                .await
                .map_err(db)?;
            if applied.is_some() {
                continue;
            }
            client
                .batch_execute(&format!(
                    "BEGIN; {sql}; INSERT INTO hetao_schema_version (version) VALUES ({version}); COMMIT;"
                ))
                .await
                .map_err(db)?;
            tracing::info!(target: "hetao::cluster", version, "applied database migration");
        }
        Ok(())
    }
    .await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    if let Err(e) = unlocked {
        tracing::warn!(target: "hetao::cluster", error = %e, "could not release the migration lock");
    }
    result
}

/// Every second: checks that the database answers (for `/readyz` while no record comes), and
/// now and then removes registry rows older than any record window can bring back.
async fn probe(link: Link, health: Arc<Health>, horizon: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut until_sweep = 0u32;
    loop {
        tick.tick().await;
        let result = async {
            let client = link.client().await?;
            let statement = async {
                if until_sweep == 0 {
                    let secs = i64::try_from(horizon.as_secs()).unwrap_or(i64::MAX);
                    client
                        .execute(
                            "DELETE FROM hetao_decisions
                             WHERE updated_at < now() - make_interval(secs => $1::bigint::double precision)
                               AND state <> 'deciding'",
                            &[&secs],
                        )
                        .await
                        .map(|_| ())
                } else {
                    client.simple_query("SELECT 1").await.map(|_| ())
                }
            };
            timed(statement).await
        }
        .await;
        match result {
            Ok(()) => {
                health.ok();
                until_sweep = if until_sweep == 0 {
                    600
                } else {
                    until_sweep - 1
                };
            }
            Err(e) => {
                if !matches!(e, ClusterError::Database(_)) {
                    link.broken(&e).await;
                }
                health.failed(&e);
            }
        }
    }
}
