//! The gateway's one TOML configuration file: load, validate, resolve paths.
//!
//! Every path in the file is relative to the file's own folder. Every key beyond the skeleton in
//! SPEC.md is optional with a safe default. Errors name the file and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// Why a configuration could not be used. Always names the file, and the key where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (`hetao-gateway certs init --out DIR` writes a development configuration; docs/configuration.md lists every key)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The range of `limits.max_json_values`: below 100 not even a small record fits (an envelope
/// alone holds about 15 values); above a million a single record could cost hundreds of MiB as
/// a tree, which is what the limit is there to prevent.
pub const MIN_MAX_JSON_VALUES: usize = 100;
pub const MAX_MAX_JSON_VALUES: usize = 1_000_000;

/// `limits.max_violations` when the file does not set it.
pub const DEFAULT_MAX_VIOLATIONS: usize = 100;
/// The largest `limits.max_violations` accepted: an answer listing more helps nobody, and each
/// listed violation costs validation work.
pub const MAX_MAX_VIOLATIONS: usize = 10_000;

/// A park id as configured (`sz`, `hk`, ...): lowercase ASCII letters, digits, `-` and `_`.
pub type ParkId = String;

/// The loaded, validated configuration with every path made absolute.
///
/// The sections are read from the file by serde directly (defaults included); only what needs
/// more than a default is handled by hand: the listen addresses (so a bad one is reported with
/// its key), the admin listener's optional TLS pair, park ids and endpoints, and the paths.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for messages and reloads).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream_client: UpstreamClientConfig,
    /// Parks in a stable order (sorted by id).
    pub parks: BTreeMap<ParkId, ParkConfig>,
    pub schemas: SchemasConfig,
    pub policies: PoliciesConfig,
    /// `[registry]`: the organisation registry (eligibility facts held by the parks), if any.
    pub registry: Option<RegistryConfig>,
    pub audit: AuditConfig,
    pub limits: LimitsConfig,
    pub upstream: UpstreamConfig,
    pub logging: LoggingConfig,
    pub rate_limit: RateLimitConfig,
    /// `[cluster]`: several instances sharing one PostgreSQL (docs/scaling.md), if any.
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Lowest TLS version accepted: 1.3 unless the operator opts into 1.2.
    pub min_tls_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Optional TLS for the admin listener (server certificate and key).
    pub tls: Option<AdminTls>,
}

#[derive(Debug, Clone)]
pub struct AdminTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, admin clients must present a certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamClientConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkConfig {
    /// The park's table name (`[parks.<id>]`).
    #[serde(skip)]
    pub id: ParkId,
    /// CA whose certificates identify senders of this park.
    pub client_ca: PathBuf,
    /// Base URL of the park's endpoint; records bound for this park go to `<endpoint>/v1/records`.
    pub endpoint: String,
    /// CA that verifies the park's endpoint.
    pub endpoint_ca: PathBuf,
    /// Revocation lists of the park CA (zero or more): `crl = "a.pem"` or `crl = ["a.pem", ...]`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub crl: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemasConfig {
    pub dir: PathBuf,
}

/// Without a `[schemas]` table.
impl Default for SchemasConfig {
    fn default() -> Self {
        SchemasConfig {
            dir: PathBuf::from("schemas"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    pub dir: PathBuf,
    /// Key for the `pseudonymise` obligation (HMAC-SHA-256). Without it, a record whose rule needs
    /// pseudonymisation is refused (fail closed).
    #[serde(default)]
    pub pseudonymisation_key: Option<PathBuf>,
    /// The key a rotation retires: still used beside `pseudonymisation_key` until
    /// `pseudonymisation_previous_until`, so the receiving parks can link old and new pseudonyms.
    #[serde(default)]
    pub pseudonymisation_previous_key: Option<PathBuf>,
    /// The end of the rotation's overlap (parsed from `pseudonymisation_previous_until`, an
    /// RFC 3339 date-time, when the file is loaded).
    #[serde(skip)]
    pub pseudonymisation_previous_until: Option<DateTime<Utc>>,
    #[serde(default, rename = "pseudonymisation_previous_until")]
    previous_until_text: Option<String>,
    /// Overrides of the policy set's documented settings (e.g. D2's GBA volume question).
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// Without a `[policies]` table.
impl Default for PoliciesConfig {
    fn default() -> Self {
        PoliciesConfig {
            dir: PathBuf::from("policies"),
            pseudonymisation_key: None,
            pseudonymisation_previous_key: None,
            pseudonymisation_previous_until: None,
            previous_until_text: None,
            settings: BTreeMap::new(),
        }
    }
}

/// `[cluster]`: the PostgreSQL database the instances share (their decision registry and their
/// shipped audit logs) and this instance's name among them.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// A libpq connection string or `postgresql://` URL. It may hold a password: never logged.
    pub database: String,
    /// Unique among the instances: names this instance's rows, its log in the database and the
    /// `instance` of its decisions.
    pub instance: String,
    /// PEM CA certificate(s) of the database server: the connection then uses TLS (rustls) and
    /// verifies the server against them. Without it, the connection is plain TCP, for a
    /// database on loopback or a private network only.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How long an instance's claim on a record id holds without being settled before another
    /// instance may take the record over (an instance that died mid-request). Default: the
    /// upstream request timeout and 30 s more.
    #[serde(default)]
    pub claim_lease_secs: Option<u64>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string may carry a password.
        f.debug_struct("ClusterConfig")
            .field("database", &"<redacted>")
            .field("instance", &self.instance)
            .field("ca", &self.ca)
            .field("claim_lease_secs", &self.claim_lease_secs)
            .finish()
    }
}

/// `[registry]`: the organisation registry file (docs/registry.md), reloaded with the rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub log: PathBuf,
    pub signing_key: PathBuf,
    #[serde(default = "defaults::fsync")]
    pub fsync: FsyncPolicy,
    /// Under `fsync = "interval"`: the longest a written entry waits for its fsync.
    #[serde(
        rename = "fsync_interval_ms",
        default = "defaults::fsync_interval",
        deserialize_with = "millis"
    )]
    pub fsync_interval: Duration,
    /// A signed checkpoint after this many entries...
    #[serde(default = "defaults::checkpoint_every_entries")]
    pub checkpoint_every_entries: u64,
    /// ...or after this much time with unsigned entries, whichever comes first.
    #[serde(
        rename = "checkpoint_interval_secs",
        default = "defaults::checkpoint_interval",
        deserialize_with = "secs"
    )]
    pub checkpoint_interval: Duration,
    /// Start a new segment once the current one reaches this size.
    #[serde(default = "defaults::segment_max_bytes")]
    pub segment_max_bytes: u64,
    /// Most entries written by one group commit.
    #[serde(default = "defaults::max_batch")]
    pub max_batch: usize,
    /// Entries waiting for the writer beyond which appends are answered 503 `audit_busy`.
    #[serde(default = "defaults::max_queue")]
    pub max_queue: usize,
    /// The parks' witnesses (`[[audit.witness]]`): each is asked to cosign every checkpoint.
    #[serde(default, rename = "witness")]
    pub witnesses: Vec<WitnessConfig>,
    /// Opt-in fail-closed mode: when a witness's cosignatures lag the log by more than this many
    /// entries, records are refused (503 `audit_unavailable`) until it catches up.
    #[serde(default)]
    pub witness_max_lag_entries: Option<u64>,
}

/// One witness the gateway asks to cosign its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Where the witness listens (`http://host:port`): cosignatures are checked by key, so the
    /// transport needs no TLS of its own.
    pub url: String,
    /// The witness's public key (PEM, `witness.pub` from `witness init`).
    pub public_key: PathBuf,
}

/// When an audit entry counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync every batch before anyone waiting on it proceeds (the default; required for the
    /// "decision is durable before forwarding" guarantee).
    Always,
    /// Write every batch to the OS but fsync at most every `fsync_interval_ms`; a power cut can
    /// lose the last interval's entries (a process crash cannot).
    Interval,
    /// Never fsync explicitly (testing only).
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    /// Most JSON values (objects, arrays, strings, numbers, literals) one record may hold, counted
    /// on the raw bytes before anything is parsed: a record's memory while it is decided grows
    /// with its values (1 MiB of empty objects is ~50 MiB as a tree), not only with its bytes.
    pub max_json_values: usize,
    pub max_header_bytes: usize,
    #[serde(rename = "header_read_timeout_ms", deserialize_with = "millis")]
    pub header_read_timeout: Duration,
    #[serde(rename = "handshake_timeout_ms", deserialize_with = "millis")]
    pub handshake_timeout: Duration,
    #[serde(rename = "body_read_timeout_ms", deserialize_with = "millis")]
    pub body_read_timeout: Duration,
    #[serde(rename = "idle_timeout_secs", deserialize_with = "secs")]
    pub idle_timeout: Duration,
    /// The longest a partner connection lives: then it is closed gracefully (in-flight requests
    /// finish) and the client reconnects with a full handshake against the CAs and CRLs of now.
    #[serde(rename = "max_connection_age_secs", deserialize_with = "secs")]
    pub max_connection_age: Duration,
    /// Authenticated connections open at once.
    pub max_connections: usize,
    /// Sockets in their TLS handshake at once: not yet authenticated, so they get a budget of
    /// their own and cannot use up `max_connections`.
    pub max_handshakes: usize,
    /// Connections one organisation (park and Subject O) may hold open at once.
    pub max_connections_per_org: usize,
    /// Request bodies held in memory at once, in bytes, across all connections: a body reserves
    /// its declared length (or `max_body_bytes` when undeclared) before it is read.
    pub max_body_bytes_in_flight: usize,
    pub max_concurrent_streams: u32,
    pub max_pending_reset_streams: usize,
    /// Most schema violations one answer lists (the last says that more were found). Validation
    /// stops once it has found one more than this, so a record breaking its schema a million
    /// times costs no more than one breaking it a hundred times.
    pub max_violations: usize,
    /// Grace period for in-flight requests at shutdown.
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "secs")]
    pub shutdown_grace: Duration,
    /// How old a record's `created_at` may be at the decision (else 400 `stale_record`); replay
    /// memory only has to cover this window.
    #[serde(rename = "record_max_age_secs", deserialize_with = "secs")]
    pub record_max_age: Duration,
    /// How far in the future a record's `created_at` may lie (clock skew between parks).
    #[serde(rename = "record_max_future_secs", deserialize_with = "secs")]
    pub record_max_future: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 1024 * 1024,
            max_json_depth: crate::json_limits::DEFAULT_MAX_DEPTH,
            max_json_values: crate::json_limits::DEFAULT_MAX_VALUES,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_millis(10_000),
            handshake_timeout: Duration::from_millis(10_000),
            body_read_timeout: Duration::from_millis(30_000),
            idle_timeout: Duration::from_secs(60),
            max_connection_age: Duration::from_secs(3600),
            max_connections: 10_000,
            max_handshakes: 256,
            max_connections_per_org: 1_000,
            max_body_bytes_in_flight: 256 * 1024 * 1024,
            max_concurrent_streams: 100,
            max_pending_reset_streams: 20,
            max_violations: DEFAULT_MAX_VIOLATIONS,
            shutdown_grace: Duration::from_secs(30),
            record_max_age: Duration::from_secs(7 * 24 * 3600),
            record_max_future: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    #[serde(rename = "connect_timeout_ms", deserialize_with = "millis")]
    pub connect_timeout: Duration,
    #[serde(rename = "request_timeout_ms", deserialize_with = "millis")]
    pub request_timeout: Duration,
    #[serde(rename = "pool_idle_timeout_secs", deserialize_with = "secs")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `tracing` filter directive; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RateLimitTable")]
pub struct RateLimitConfig {
    /// Sustained records per second per sending organisation; 0 turns the limit off.
    pub per_org_per_second: f64,
    /// Burst allowance above the sustained rate.
    pub burst: f64,
}

/// Without a `[rate_limit]` table: no limit.
impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_org_per_second: 0.0,
            burst: 0.0,
        }
    }
}

/// `[rate_limit]` as written: the default burst depends on the rate, which a serde default
/// cannot express.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitTable {
    #[serde(default)]
    per_org_per_second: f64,
    burst: Option<f64>,
}

impl From<RateLimitTable> for RateLimitConfig {
    fn from(t: RateLimitTable) -> Self {
        RateLimitConfig {
            per_org_per_second: t.per_org_per_second,
            burst: t.burst.unwrap_or(t.per_org_per_second.max(1.0)),
        }
    }
}

// === the file ===

/// The file as written. Sections that need more than serde defaults stay raw here (see
/// [`Config`]); everything else is read straight into its final type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    upstream_client: UpstreamClientConfig,
    parks: BTreeMap<String, ParkConfig>,
    #[serde(default)]
    schemas: SchemasConfig,
    #[serde(default)]
    policies: PoliciesConfig,
    #[serde(default)]
    registry: Option<RegistryConfig>,
    audit: AuditConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    upstream: UpstreamConfig,
    #[serde(default)]
    logging: LoggingConfig,
    #[serde(default)]
    rate_limit: RateLimitConfig,
    #[serde(default)]
    cluster: Option<ClusterConfig>,
}

/// `[server]`: `listen` is parsed by hand so that a bad address is reported with its key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default = "defaults::min_tls_version")]
    min_tls_version: TlsVersion,
}

/// `[admin]`: the address as for `[server]`, and `cert`/`key` only make sense together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "defaults::admin_listen")]
    listen: String,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: defaults::admin_listen(),
            cert: None,
            key: None,
            client_ca: None,
        }
    }
}

/// Defaults of keys in sections that also have required keys.
mod defaults {
    use super::{FsyncPolicy, TlsVersion};
    use std::time::Duration;

    pub fn min_tls_version() -> TlsVersion {
        TlsVersion::Tls13
    }
    pub fn admin_listen() -> String {
        "127.0.0.1:9443".into()
    }
    pub fn fsync() -> FsyncPolicy {
        FsyncPolicy::Always
    }
    pub fn fsync_interval() -> Duration {
        Duration::from_millis(200)
    }
    pub fn checkpoint_every_entries() -> u64 {
        1000
    }
    pub fn checkpoint_interval() -> Duration {
        Duration::from_secs(60)
    }
    pub fn segment_max_bytes() -> u64 {
        256 * 1024 * 1024
    }
    pub fn max_batch() -> usize {
        1024
    }
    pub fn max_queue() -> usize {
        16 * 1024
    }
}

/// A `*_ms` key: whole milliseconds.
fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// A `*_secs` key: whole seconds.
fn secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// One path or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

// === impl Config ===

impl Config {
    /// Reads and validates the file at `path`. Relative paths inside resolve against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let addr = |key: &str, s: &str| -> Result<SocketAddr, ConfigError> {
            s.parse().map_err(|e| {
                invalid(
                    key,
                    format!("`{s}` is not an address like 127.0.0.1:8443 ({e})"),
                )
            })
        };
        let at_least_1 = |key: &str, n: u64| {
            if n == 0 {
                Err(invalid(key, "must be at least 1".into()))
            } else {
                Ok(())
            }
        };

        let server = ServerConfig {
            listen: addr("server.listen", &file.server.listen)?,
            cert: resolve(&file.server.cert),
            key: resolve(&file.server.key),
            min_tls_version: file.server.min_tls_version,
        };

        let a = file.admin;
        let listen = addr("admin.listen", &a.listen)?;
        let tls = match (a.cert, a.key) {
            (Some(cert), Some(key)) => Some(AdminTls {
                cert: resolve(&cert),
                key: resolve(&key),
                client_ca: a.client_ca.as_deref().map(resolve),
            }),
            (None, None) => {
                if a.client_ca.is_some() {
                    return Err(invalid(
                        "admin.client_ca",
                        "needs admin.cert and admin.key: client certificates require TLS".into(),
                    ));
                }
                None
            }
            (Some(_), None) => {
                return Err(invalid(
                    "admin.key",
                    "admin.cert is set but not admin.key".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "admin.cert",
                    "admin.key is set but not admin.cert".into(),
                ))
            }
        };
        // POST /reload changes what the gateway enforces: off loopback, only a caller with a
        // certificate from the admin CA may reach it.
        let authenticated = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !listen.ip().is_loopback() && !authenticated {
            return Err(invalid(
                "admin.listen",
                format!(
                    "{listen} is not a loopback address: an admin listener reachable from the network needs TLS with client certificates (admin.cert, admin.key and admin.client_ca), since POST /reload changes what the gateway enforces"
                ),
            ));
        }
        let admin = AdminConfig { listen, tls };

        let mut upstream_client = file.upstream_client;
        upstream_client.cert = resolve(&upstream_client.cert);
        upstream_client.key = resolve(&upstream_client.key);

        if file.parks.is_empty() {
            return Err(invalid(
                "parks",
                "at least one park must be configured".into(),
            ));
        }
        let mut parks = BTreeMap::new();
        for (id, mut park) in file.parks {
            let key = format!("parks.{id}");
            if id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    &key,
                    "a park id is 1-32 lowercase letters, digits, `-` or `_`".into(),
                ));
            }
            let endpoint = park.endpoint.trim_end_matches('/').to_string();
            match endpoint.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
                Ok(_) => {
                    return Err(invalid(
                        &format!("{key}.endpoint"),
                        format!(
                            "`{endpoint}` must be an https:// URL (records travel over mutual TLS)"
                        ),
                    ))
                }
                Err(e) => {
                    return Err(invalid(
                        &format!("{key}.endpoint"),
                        format!("`{endpoint}` is not a URL: {e}"),
                    ))
                }
            }
            park.id = id.clone();
            park.endpoint = endpoint;
            park.client_ca = resolve(&park.client_ca);
            park.endpoint_ca = resolve(&park.endpoint_ca);
            park.crl = park.crl.iter().map(|p| resolve(p)).collect();
            parks.insert(id, park);
        }

        let mut schemas = file.schemas;
        schemas.dir = resolve(&schemas.dir);

        let mut policies = file.policies;
        policies.dir = resolve(&policies.dir);
        policies.pseudonymisation_key = policies.pseudonymisation_key.as_deref().map(resolve);
        policies.pseudonymisation_previous_key = policies
            .pseudonymisation_previous_key
            .as_deref()
            .map(resolve);
        const UNTIL: &str = "policies.pseudonymisation_previous_until";
        policies.pseudonymisation_previous_until = match &policies.previous_until_text {
            None => None,
            Some(t) => Some(
                DateTime::parse_from_rfc3339(t)
                    .map_err(|_| {
                        invalid(
                            UNTIL,
                            format!(
                                "`{t}` is not an RFC 3339 date-time like 2027-01-31T00:00:00+08:00"
                            ),
                        )
                    })?
                    .with_timezone(&Utc),
            ),
        };
        match (
            &policies.pseudonymisation_previous_key,
            policies.pseudonymisation_previous_until,
        ) {
            (Some(_), None) => {
                return Err(invalid(
                    UNTIL,
                    "required with policies.pseudonymisation_previous_key: until when the \
                     previous key is used beside the current one"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    UNTIL,
                    "only meaningful with policies.pseudonymisation_previous_key".into(),
                ))
            }
            (Some(_), Some(_)) if policies.pseudonymisation_key.is_none() => {
                return Err(invalid(
                    "policies.pseudonymisation_previous_key",
                    "needs policies.pseudonymisation_key: a rotation retires a key for a new one"
                        .into(),
                ))
            }
            _ => {}
        }
        let registry = file.registry.map(|r| RegistryConfig {
            file: resolve(&r.file),
        });
        let cluster = match file.cluster {
            None => None,
            Some(mut c) => {
                let name_ok = !c.instance.is_empty()
                    && c.instance.len() <= 64
                    && c.instance.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)
                    });
                if !name_ok {
                    return Err(invalid(
                        "cluster.instance",
                        "an instance name is 1-64 lowercase letters, digits, `-`, `_` or `.`"
                            .into(),
                    ));
                }
                if let Err(e) = c.database.parse::<tokio_postgres::Config>() {
                    // The parser's message never repeats the string (it may hold a password).
                    return Err(invalid(
                        "cluster.database",
                        format!("not a PostgreSQL connection string: {e}"),
                    ));
                }
                if c.claim_lease_secs == Some(0) {
                    return Err(invalid(
                        "cluster.claim_lease_secs",
                        "must be at least 1".into(),
                    ));
                }
                c.ca = c.ca.as_deref().map(&resolve);
                Some(c)
            }
        };

        let mut audit = file.audit;
        at_least_1(
            "audit.checkpoint_every_entries",
            audit.checkpoint_every_entries,
        )?;
        at_least_1("audit.max_batch", audit.max_batch as u64)?;
        audit.log = resolve(&audit.log);
        audit.signing_key = resolve(&audit.signing_key);
        for (i, w) in audit.witnesses.iter_mut().enumerate() {
            w.public_key = resolve(&w.public_key);
            let parsed: Result<http::Uri, _> = w.url.parse();
            match parsed {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
                _ => {
                    return Err(invalid(
                        &format!("audit.witness[{i}].url"),
                        format!(
                            "`{}` is not an http://host:port URL (the witness protocol runs over plain HTTP: cosignatures are checked by key)",
                            w.url
                        ),
                    ))
                }
            }
        }
        // Zero would mean a busy loop (intervals) or a rotation per entry (size): the smallest
        // sensible value is taken instead.
        audit.fsync_interval = audit.fsync_interval.max(Duration::from_millis(1));
        audit.checkpoint_interval = audit.checkpoint_interval.max(Duration::from_secs(1));
        audit.segment_max_bytes = audit.segment_max_bytes.max(4096);

        let mut limits = file.limits;
        at_least_1("limits.max_body_bytes", limits.max_body_bytes as u64)?;
        at_least_1("limits.max_json_depth", limits.max_json_depth as u64)?;
        if !(MIN_MAX_JSON_VALUES..=MAX_MAX_JSON_VALUES).contains(&limits.max_json_values) {
            return Err(invalid(
                "limits.max_json_values",
                format!(
                    "must be {MIN_MAX_JSON_VALUES} to {MAX_MAX_JSON_VALUES} (an envelope alone holds about 15 values; each value can cost a few hundred bytes of memory while its record is decided)"
                ),
            ));
        }
        at_least_1("limits.max_header_bytes", limits.max_header_bytes as u64)?;
        at_least_1("limits.max_connections", limits.max_connections as u64)?;
        at_least_1("limits.max_handshakes", limits.max_handshakes as u64)?;
        if limits.max_body_bytes_in_flight < limits.max_body_bytes {
            return Err(invalid(
                "limits.max_body_bytes_in_flight",
                format!(
                    "{} is less than limits.max_body_bytes ({}): no record could ever be read",
                    limits.max_body_bytes_in_flight, limits.max_body_bytes
                ),
            ));
        }
        at_least_1(
            "limits.max_connections_per_org",
            limits.max_connections_per_org as u64,
        )?;
        if !(1..=MAX_MAX_VIOLATIONS).contains(&limits.max_violations) {
            return Err(invalid(
                "limits.max_violations",
                format!(
                    "must be 1 to {} (each listed violation costs validation work and answer bytes)",
                    MAX_MAX_VIOLATIONS
                ),
            ));
        }
        // A zero timeout would refuse everything; 1 ms (1 s) is the smallest taken.
        limits.header_read_timeout = limits.header_read_timeout.max(Duration::from_millis(1));
        limits.handshake_timeout = limits.handshake_timeout.max(Duration::from_millis(1));
        limits.body_read_timeout = limits.body_read_timeout.max(Duration::from_millis(1));
        limits.idle_timeout = limits.idle_timeout.max(Duration::from_secs(1));
        limits.max_concurrent_streams = limits.max_concurrent_streams.max(1);

        let rate_limit = file.rate_limit;
        let per = rate_limit.per_org_per_second;
        if !per.is_finite() || per < 0.0 {
            return Err(invalid(
                "rate_limit.per_org_per_second",
                "must be 0 or more".into(),
            ));
        }
        if !rate_limit.burst.is_finite() || rate_limit.burst < 0.0 {
            return Err(invalid("rate_limit.burst", "must be 0 or more".into()));
        }

        Ok(Config {
            source: path.to_path_buf(),
            server,
            admin,
            upstream_client,
            parks,
            schemas,
            policies,
            registry,
            audit,
            limits,
            upstream: file.upstream,
            logging: file.logging,
            rate_limit,
            cluster,
        })
    }

    /// The folder relative paths resolve against.
    pub fn base_dir(&self) -> PathBuf {
        self.source
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKELETON: &str = r#"
[server]
listen = "127.0.0.1:8443"
cert = "gateway.pem"
key = "gateway.key"
[admin]
listen = "127.0.0.1:9443"
[upstream_client]
cert = "gateway-client.pem"
key = "gateway-client.key"
[parks.sz]
client_ca = "sz-ca.pem"
endpoint = "https://127.0.0.1:9001"
endpoint_ca = "sz-ca.pem"
crl = "sz-crl.pem"
[parks.hk]
client_ca = "hk-ca.pem"
endpoint = "https://127.0.0.1:9002"
endpoint_ca = "hk-ca.pem"
[schemas]
dir = "schemas"
[policies]
dir = "policies"
[audit]
log = "audit/audit.jsonl"
signing_key = "audit-signing.key"
"#;

    #[test]
    fn skeleton_from_spec_loads_with_safe_defaults() {
        let c = Config::parse(SKELETON, Path::new("/etc/hetao/gateway.toml")).unwrap();
        assert_eq!(c.server.cert, PathBuf::from("/etc/hetao/gateway.pem"));
        assert_eq!(
            c.parks["sz"].crl,
            vec![PathBuf::from("/etc/hetao/sz-crl.pem")]
        );
        assert!(c.parks["hk"].crl.is_empty());
        assert_eq!(c.audit.log, PathBuf::from("/etc/hetao/audit/audit.jsonl"));
        assert_eq!(c.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(c.audit.fsync, FsyncPolicy::Always);
        assert_eq!(c.server.min_tls_version, TlsVersion::Tls13);
        assert!(c.policies.pseudonymisation_key.is_none());
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let bad = SKELETON.replace("https://127.0.0.1:9002", "http://127.0.0.1:9002");
        let err = Config::parse(&bad, Path::new("/x/gateway.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/x/gateway.toml"), "{err}");
        assert!(err.contains("parks.hk.endpoint"), "{err}");

        let bad = SKELETON.replace("127.0.0.1:8443", "localhost");
        let err = Config::parse(&bad, Path::new("g.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let bad = format!("{SKELETON}\n[limits]\nmax_bodybytes = 3\n");
        let err = Config::parse(&bad, Path::new("g.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_bodybytes"), "{err}");
    }

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{SKELETON}\n{extra}"), Path::new("/x/g.toml"))
    }

    #[test]
    fn zero_counts_are_refused_and_zero_durations_raised_to_the_smallest() {
        let err = Config::parse(
            &SKELETON.replace(
                "signing_key = \"audit-signing.key\"",
                "signing_key = \"audit-signing.key\"\nmax_batch = 0",
            ),
            Path::new("/x/g.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/x/g.toml") && err.contains("audit.max_batch"),
            "{err}"
        );
        let err = parse("[limits]\nmax_connections = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_connections"), "{err}");

        let c = parse(
            "[limits]\nidle_timeout_secs = 0\nbody_read_timeout_ms = 0\nshutdown_grace_secs = 0",
        )
        .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(1));
        assert_eq!(c.limits.body_read_timeout, Duration::from_millis(1));
        // No floor: a zero grace period means "stop at once".
        assert_eq!(c.limits.shutdown_grace, Duration::ZERO);
        // The rest of the table keeps its defaults.
        assert_eq!(c.limits.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn max_json_values_defaults_to_20000_and_is_refused_outside_its_range() {
        assert_eq!(parse("").unwrap().limits.max_json_values, 20_000);
        let c = parse("[limits]\nmax_json_values = 50000").unwrap();
        assert_eq!(c.limits.max_json_values, 50_000);
        for bad in ["0", "99", "1000001"] {
            let err = parse(&format!("[limits]\nmax_json_values = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("limits.max_json_values"), "{bad}: {err}");
        }
        let err = parse("[limits]\nmax_json_values = 10")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be 100 to 1000000"), "{err}");
    }

    #[test]
    fn max_violations_defaults_to_100_and_is_refused_outside_its_range() {
        assert_eq!(parse("").unwrap().limits.max_violations, 100);
        assert_eq!(
            parse("[limits]\nmax_violations = 20")
                .unwrap()
                .limits
                .max_violations,
            20
        );
        for bad in ["0", "10001"] {
            let err = parse(&format!("[limits]\nmax_violations = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("limits.max_violations"), "{bad}: {err}");
        }
    }

    #[test]
    fn rate_limit_burst_defaults_to_the_rate_once_the_table_is_present() {
        let off = parse("").unwrap().rate_limit;
        assert_eq!((off.per_org_per_second, off.burst), (0.0, 0.0));
        let r = parse("[rate_limit]\nper_org_per_second = 5.0")
            .unwrap()
            .rate_limit;
        assert_eq!((r.per_org_per_second, r.burst), (5.0, 5.0));
        let r = parse("[rate_limit]\nper_org_per_second = 0.5")
            .unwrap()
            .rate_limit;
        assert_eq!(r.burst, 1.0);
        let r = parse("[rate_limit]\nper_org_per_second = 5.0\nburst = 20.0")
            .unwrap()
            .rate_limit;
        assert_eq!(r.burst, 20.0);
        let err = parse("[rate_limit]\nburst = -1.0").unwrap_err().to_string();
        assert!(err.contains("rate_limit.burst"), "{err}");
        let err = parse("[rate_limit]\nburts = 1.0").unwrap_err().to_string();
        assert!(err.contains("burts"), "{err}");
    }

    #[test]
    fn policy_settings_keep_their_types_and_paths_resolve() {
        let text = SKELETON.replace(
            "[policies]\ndir = \"policies\"",
            "[policies]\ndir = \"rules\"\npseudonymisation_key = \"p.key\"\n\
             [policies.settings]\nflag = true\nlimit = 3\nnames = [\"a\", \"b\"]",
        );
        let c = Config::parse(&text, Path::new("/etc/hetao/g.toml")).unwrap();
        assert_eq!(c.policies.dir, PathBuf::from("/etc/hetao/rules"));
        assert_eq!(
            c.policies.pseudonymisation_key,
            Some(PathBuf::from("/etc/hetao/p.key"))
        );
        assert_eq!(c.policies.settings["flag"], serde_json::json!(true));
        assert_eq!(c.policies.settings["limit"], serde_json::json!(3));
        assert_eq!(c.policies.settings["names"], serde_json::json!(["a", "b"]));
        // Without the table: the folder beside the file, no key, no settings.
        let bare = SKELETON.replace("[policies]\ndir = \"policies\"\n", "");
        let c = Config::parse(&bare, Path::new("/etc/hetao/g.toml")).unwrap();
        assert_eq!(c.policies.dir, PathBuf::from("/etc/hetao/policies"));
        assert!(c.policies.settings.is_empty());
    }

    #[test]
    fn a_key_rotation_names_the_previous_key_and_until_when() {
        let with = |keys: &str| {
            Config::parse(
                &SKELETON.replace(
                    "[policies]\ndir = \"policies\"",
                    &format!("[policies]\ndir = \"policies\"\n{keys}"),
                ),
                Path::new("/etc/hetao/g.toml"),
            )
        };
        let c = with(
            "pseudonymisation_key = \"new.key\"\npseudonymisation_previous_key = \"old.key\"\n\
             pseudonymisation_previous_until = \"2027-01-31T00:00:00+08:00\"",
        )
        .unwrap();
        assert_eq!(
            c.policies.pseudonymisation_previous_key,
            Some(PathBuf::from("/etc/hetao/old.key"))
        );
        assert_eq!(
            c.policies
                .pseudonymisation_previous_until
                .map(|t| t.to_rfc3339()),
            Some("2027-01-30T16:00:00+00:00".to_string())
        );
        for (keys, key) in [
            (
                "pseudonymisation_key = \"n.key\"\npseudonymisation_previous_key = \"o.key\"",
                "policies.pseudonymisation_previous_until",
            ),
            (
                "pseudonymisation_key = \"n.key\"\npseudonymisation_previous_until = \"2027-01-31T00:00:00Z\"",
                "policies.pseudonymisation_previous_until",
            ),
            (
                "pseudonymisation_previous_key = \"o.key\"\npseudonymisation_previous_until = \"2027-01-31T00:00:00Z\"",
                "policies.pseudonymisation_previous_key",
            ),
            (
                "pseudonymisation_key = \"n.key\"\npseudonymisation_previous_key = \"o.key\"\n\
                 pseudonymisation_previous_until = \"next month\"",
                "policies.pseudonymisation_previous_until",
            ),
        ] {
            let err = with(keys).unwrap_err().to_string();
            assert!(err.contains(key), "{keys}: {err}");
        }
    }

    #[test]
    fn a_network_admin_listener_needs_tls_with_client_certificates() {
        let with_admin = |admin: &str| {
            Config::parse(
                &SKELETON.replace("[admin]\nlisten = \"127.0.0.1:9443\"", admin),
                Path::new("/x/g.toml"),
            )
        };
        let err = with_admin("[admin]\nlisten = \"0.0.0.0:9443\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.listen"), "{err}");
        assert!(err.contains("client certificates"), "{err}");
        let tls_only = "[admin]\nlisten = \"0.0.0.0:9443\"\ncert = \"a.pem\"\nkey = \"a.key\"";
        let err = with_admin(tls_only).unwrap_err().to_string();
        assert!(err.contains("admin.listen"), "{err}");
        let ok = with_admin(&format!("{tls_only}\nclient_ca = \"ops-ca.pem\""));
        assert!(ok.is_ok(), "{ok:?}");
        assert!(with_admin("[admin]\nlisten = \"[::1]:9443\"").is_ok());
    }
}
