//! The gateway's shared state: what was loaded from the configuration, swapped atomically on
//! reload, and the long-lived parts (audit log, replay guard, metrics).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::audit::{AuditError, AuditLog};
use crate::checkpoint::{Checkpoint, RecordWindow};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::policy::{KeyFiles, PolicyEngine, PolicyLoadError};
use crate::rate_limit::RateLimiter;
use crate::registry::{Registry, RegistryError};
use crate::replay::{self, ReplayGuard};
use crate::schema::{SchemaLoadError, SchemaSet};
use crate::tls::{InboundTls, TlsError};
use crate::upstream::Upstreams;

/// Why the gateway could not start, or a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Schema(#[from] SchemaLoadError),
    #[error(transparent)]
    Policy(#[from] PolicyLoadError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A folder or file of the rules that others may write.
    #[error("{0}")]
    Custody(String),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("[cluster]: {0}")]
    Cluster(#[from] ClusterError),
    #[error("{path}: the set of parks changed (running: {running}; in the file: {in_file}); parks are added or removed by a restart, not a reload; their CAs, CRLs and endpoints do reload")]
    ParksChanged {
        path: PathBuf,
        running: String,
        in_file: String,
    },
}

/// Schemas and policies of one load: a request is decided entirely under one `RuleSet`, even if
/// a reload swaps in another while it is in flight.
pub struct RuleSet {
    pub schemas: SchemaSet,
    pub policies: PolicyEngine,
}

impl RuleSet {
    /// Loads the schemas and policies the configuration names.
    pub fn load(config: &Config) -> Result<RuleSet, LoadError> {
        let mut trusted = vec![config.schemas.dir.clone(), config.policies.dir.clone()];
        if let Some(r) = &config.registry {
            trusted.push(r.file.clone());
        }
        for path in &trusted {
            crate::key_file::check_not_world_writable(path).map_err(LoadError::Custody)?;
        }
        let schemas =
            SchemaSet::load(&config.schemas.dir)?.with_max_violations(config.limits.max_violations);
        let registry = match &config.registry {
            None => None,
            Some(r) => {
                let parks: BTreeSet<String> = config.parks.keys().cloned().collect();
                Some(Arc::new(Registry::load(&r.file, Some(&parks))?))
            }
        };
        let policies = PolicyEngine::load(
            &config.policies.dir,
            &schemas,
            &config.policies.settings,
            &KeyFiles::of(&config.policies),
        )?
        .with_registry(registry);
        Ok(RuleSet { schemas, policies })
    }
}

/// Everything a reload replaces, built completely before anything is swapped.
struct Loaded {
    rules: RuleSet,
    tls: InboundTls,
    upstreams: Upstreams,
}

fn load_reloadable(config: &Config) -> Result<Loaded, LoadError> {
    Ok(Loaded {
        rules: RuleSet::load(config)?,
        tls: crate::tls::inbound(config)?,
        upstreams: Upstreams::new(config)?,
    })
}

/// The gateway: shared by every connection and request.
pub struct Gateway {
    /// The configuration as started. Listeners, limits and the set of parks keep these values
    /// until restart (a reload that changes the parks is refused); rules, certificates, CRLs and
    /// upstreams follow reloads.
    pub config: Config,
    pub rules: ArcSwap<RuleSet>,
    pub tls: ArcSwap<InboundTls>,
    /// Bumped when a reload installs different TLS material: every partner connection then
    /// closes gracefully, so clients reconnect with a full handshake against the new material.
    pub tls_generation: tokio::sync::watch::Sender<u64>,
    pub upstreams: ArcSwap<Upstreams>,
    pub audit: AuditLog,
    pub replay: ReplayGuard,
    /// `[cluster]`: the decision registry shared with the other instances, if configured.
    pub cluster: Option<Cluster>,
    pub metrics: Metrics,
    pub rate_limiter: RateLimiter,
    /// Request-body bytes held in memory across all connections, in KiB permits
    /// (`limits.max_body_bytes_in_flight`).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Records examined at once off the async workers (records over 16 KiB; see
    /// `pipeline::examine`): half the cores, at least one, so the other half always serve
    /// handshakes, the admin listener and small records.
    pub examinations: Arc<tokio::sync::Semaphore>,
    shutting_down: AtomicBool,
    reload_lock: tokio::sync::Mutex<()>,
}

/// What a successful reload installed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub policy_version: String,
    pub policy_hash: String,
    pub schema_hash: String,
}

impl Gateway {
    /// Loads everything the configuration names, opens the audit log and, with `[cluster]`,
    /// connects to the cluster database (applying its migrations). An instance of a cluster does
    /// not start without its database: it could not tell a replay from a new record.
    pub async fn start(config: Config) -> Result<Gateway, LoadError> {
        let cluster_config = config.cluster.clone();
        let lease = match cluster_config.as_ref().and_then(|c| c.claim_lease_secs) {
            Some(secs) => std::time::Duration::from_secs(secs),
            None => config.upstream.request_timeout + std::time::Duration::from_secs(30),
        };
        let window = RecordWindow::of(&config.limits);
        let horizon = window.max_age + window.max_future + std::time::Duration::from_secs(60);
        let config_for_build = config;
        let mut gateway =
            tokio::task::spawn_blocking(move || Gateway::build_local(config_for_build))
                .await
                .map_err(|e| {
                    LoadError::Cluster(ClusterError::Config(format!("start-up task failed: {e}")))
                })??;
        if let Some(c) = &cluster_config {
            let cluster = Cluster::start(c, lease, horizon).await?;
            cluster.start_shipping(&gateway.audit);
            tracing::info!(target: "hetao::cluster", instance = %c.instance,
                lease_secs = lease.as_secs(), "decision registry connected");
            gateway.cluster = Some(cluster);
        }
        Ok(gateway)
    }

    /// [`Gateway::start`] for a configuration without `[cluster]` (no database to connect to):
    /// loads everything and opens the audit log.
    pub fn build(config: Config) -> Result<Gateway, LoadError> {
        if config.cluster.is_some() {
            return Err(LoadError::Cluster(ClusterError::Config(
                "an instance of a cluster starts with Gateway::start (it connects to the database)"
                    .into(),
            )));
        }
        Gateway::build_local(config)
    }

    fn build_local(config: Config) -> Result<Gateway, LoadError> {
        let loaded = load_reloadable(&config)?;
        for warning in loaded.rules.policies.warnings() {
            tracing::warn!(target: "hetao::policy", "{warning}");
        }
        let window = RecordWindow::of(&config.limits);
        let audit = AuditLog::open_remembering(&config.audit, replay::remembered_since(window))?;
        let replay = ReplayGuard::new(window, audit.record_histories());
        let metrics = Metrics::new();
        let rate_limiter = RateLimiter::new(&config.rate_limit);
        let gateway = Gateway {
            rules: ArcSwap::from_pointee(loaded.rules),
            tls: ArcSwap::from_pointee(loaded.tls),
            tls_generation: tokio::sync::watch::Sender::new(0),
            upstreams: ArcSwap::from_pointee(loaded.upstreams),
            audit,
            replay,
            cluster: None,
            metrics,
            rate_limiter,
            body_budget: Arc::new(tokio::sync::Semaphore::new(kib(config
                .limits
                .max_body_bytes_in_flight))),
            examinations: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            )),
            config,
            shutting_down: AtomicBool::new(false),
            reload_lock: tokio::sync::Mutex::new(()),
        };
        gateway.note_rules_loaded(true);
        // The load's garbage (the meta-schema check's above all) would otherwise stay resident
        // for as long as the gateway waits for its first partner.
        crate::memory::return_freed();
        Ok(gateway)
    }

    /// Re-reads the configuration file and reloads policies, schemas, park CAs, CRLs, certificates
    /// and upstream clients. All or nothing: a broken new set is refused and the last good one
    /// stays in force. Requests in flight finish under the set they started with.
    pub async fn reload(&self) -> Result<ReloadReport, LoadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let source: PathBuf = self.config.source.clone();
        let running = park_list(&self.config);
        let result = tokio::task::spawn_blocking(move || {
            let config = Config::load(&source)?;
            // Routing, the per-park verifiers and the upstreams must agree on one set of parks;
            // the running set is fixed at start, so a reload that changes it is refused whole.
            let in_file = park_list(&config);
            if in_file != running {
                return Err(LoadError::ParksChanged {
                    path: source,
                    running,
                    in_file,
                });
            }
            load_reloadable(&config)
        })
        .await
        .unwrap_or_else(|e| {
            Err(LoadError::Config(ConfigError::Parse {
                path: self.config.source.clone(),
                message: format!("reload task failed: {e}"),
            }))
        });
        let outcome = match result {
            Ok(loaded) => {
                for warning in loaded.rules.policies.warnings() {
                    tracing::warn!(target: "hetao::policy", "{warning}");
                }
                self.rules.store(Arc::new(loaded.rules));
                // Unchanged TLS material keeps the running setup: its session tickets stay
                // valid and its connections open.
                if loaded.tls.material != self.tls.load().material {
                    self.tls.store(Arc::new(loaded.tls));
                    self.tls_generation.send_modify(|g| *g += 1);
                    tracing::info!(target: "hetao::reload",
                        "new TLS material: partner connections close gracefully and reconnect");
                }
                self.upstreams.store(Arc::new(loaded.upstreams));
                self.note_rules_loaded(true);
                let report = self.report();
                tracing::info!(
                    target: "hetao::reload",
                    policy_version = %report.policy_version,
                    schema_hash = %report.schema_hash,
                    "reload succeeded: new policies, schemas, certificates and upstreams in force"
                );
                Ok(report)
            }
            Err(e) => {
                self.note_rules_loaded(false);
                tracing::error!(
                    target: "hetao::reload",
                    error = %e,
                    policy_version = %self.rules.load().policies.version(),
                    "reload refused; the last good set stays in force"
                );
                Err(e)
            }
        };
        // Whether the new set is in force or refused, loading it freed as much as a start does.
        crate::memory::return_freed();
        outcome
    }

    /// The decision sequence under `rules`, for this gateway's parks and limits.
    pub fn checkpoint<'a>(&'a self, rules: &'a RuleSet) -> Checkpoint<'a> {
        Checkpoint {
            schemas: &rules.schemas,
            policies: &rules.policies,
            parks: Some(&self.config.parks),
            max_json_depth: self.config.limits.max_json_depth,
            max_json_values: self.config.limits.max_json_values,
            record_window: Some(RecordWindow::of(&self.config.limits)),
        }
    }

    /// Versions of what is in force.
    pub fn report(&self) -> ReloadReport {
        let rules = self.rules.load();
        ReloadReport {
            policy_version: rules.policies.version().to_string(),
            policy_hash: rules.policies.hash().to_string(),
            schema_hash: rules.schemas.hash().to_string(),
        }
    }

    fn note_rules_loaded(&self, success: bool) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics.last_reload_timestamp.set(now);
        self.metrics.last_reload_success.set(i64::from(success));
        if success {
            let rules = self.rules.load();
            self.metrics.policy_info.reset();
            self.metrics
                .policy_info
                .with_label_values(&[rules.policies.version(), rules.schemas.hash()])
                .set(1.0);
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Bytes of the request-body budget held by requests now (in KiB steps, as reserved).
    pub fn body_bytes_reserved(&self) -> u64 {
        let total = kib(self.config.limits.max_body_bytes_in_flight);
        let free = self.body_budget.available_permits();
        (total.saturating_sub(free) as u64).saturating_mul(1024)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// The configured park ids, for messages: `hk, sz`.
fn park_list(config: &Config) -> String {
    config
        .parks
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bytes as whole KiB, rounded up: the body budget's unit (a semaphore counts in `u32`-sized
/// steps, so bytes would cap the budget at 4 GiB).
pub fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}
