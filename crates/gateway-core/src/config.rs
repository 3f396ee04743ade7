//! The gateway's one TOML configuration file: load, validate, resolve paths.
//!
//! Every path in the file is relative to the file's own folder. Every key beyond the skeleton in
//! SPEC.md is optional with a safe default. Errors name the file and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// A park id as configured (`sz`, `hk`, ...): lowercase ASCII letters, digits, `-` and `_`.
pub type ParkId = String;

/// The loaded, validated configuration with every path made absolute.
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
    pub audit: AuditConfig,
    pub limits: LimitsConfig,
    pub upstream: UpstreamConfig,
    pub logging: LoggingConfig,
    pub rate_limit: RateLimitConfig,
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

#[derive(Debug, Clone)]
pub struct UpstreamClientConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ParkConfig {
    pub id: ParkId,
    /// CA whose certificates identify senders of this park.
    pub client_ca: PathBuf,
    /// Base URL of the park's endpoint; records bound for this park go to `<endpoint>/v1/records`.
    pub endpoint: String,
    /// CA that verifies the park's endpoint.
    pub endpoint_ca: PathBuf,
    /// Revocation lists of the park CA (zero or more).
    pub crl: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SchemasConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct PoliciesConfig {
    pub dir: PathBuf,
    /// Key for the `pseudonymise` obligation (HMAC-SHA-256). Without it, a record whose rule needs
    /// pseudonymisation is refused (fail closed).
    pub pseudonymisation_key: Option<PathBuf>,
    /// Overrides of the policy set's documented settings (e.g. D2's GBA volume question).
    pub settings: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub log: PathBuf,
    pub signing_key: PathBuf,
    pub fsync: FsyncPolicy,
    /// Under `fsync = "interval"`: the longest a written entry waits for its fsync.
    pub fsync_interval: Duration,
    /// A signed checkpoint after this many entries...
    pub checkpoint_every_entries: u64,
    /// ...or after this much time with unsigned entries, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Start a new segment once the current one reaches this size.
    pub segment_max_bytes: u64,
    /// Most entries written by one group commit.
    pub max_batch: usize,
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

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub max_pending_reset_streams: usize,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// `tracing` filter directive; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Sustained records per second per sending organisation; 0 turns the limit off.
    pub per_org_per_second: f64,
    /// Burst allowance above the sustained rate.
    pub burst: f64,
}

// === raw file format ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    admin: Option<RawAdmin>,
    upstream_client: RawUpstreamClient,
    parks: BTreeMap<String, RawPark>,
    schemas: Option<RawDir>,
    policies: Option<RawPolicies>,
    audit: RawAudit,
    limits: Option<RawLimits>,
    upstream: Option<RawUpstream>,
    logging: Option<RawLogging>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    cert: PathBuf,
    key: PathBuf,
    min_tls_version: Option<TlsVersion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamClient {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPark {
    client_ca: PathBuf,
    endpoint: String,
    endpoint_ca: PathBuf,
    crl: Option<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicies {
    dir: PathBuf,
    pseudonymisation_key: Option<PathBuf>,
    settings: Option<BTreeMap<String, toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    log: PathBuf,
    signing_key: PathBuf,
    fsync: Option<FsyncPolicy>,
    fsync_interval_ms: Option<u64>,
    checkpoint_every_entries: Option<u64>,
    checkpoint_interval_secs: Option<u64>,
    segment_max_bytes: Option<u64>,
    max_batch: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<usize>,
    max_json_depth: Option<usize>,
    max_header_bytes: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_concurrent_streams: Option<u32>,
    max_pending_reset_streams: Option<usize>,
    shutdown_grace_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    pool_idle_timeout_secs: Option<u64>,
    pool_max_idle_per_host: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: Option<String>,
    format: Option<LogFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_org_per_second: Option<f64>,
    burst: Option<f64>,
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
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

        let server = ServerConfig {
            listen: addr("server.listen", &raw.server.listen)?,
            cert: resolve(&raw.server.cert),
            key: resolve(&raw.server.key),
            min_tls_version: raw.server.min_tls_version.unwrap_or(TlsVersion::Tls13),
        };

        let admin = match raw.admin {
            None => AdminConfig {
                listen: addr("admin.listen", "127.0.0.1:9443")?,
                tls: None,
            },
            Some(a) => {
                let listen = addr(
                    "admin.listen",
                    a.listen.as_deref().unwrap_or("127.0.0.1:9443"),
                )?;
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
                                "needs admin.cert and admin.key: client certificates require TLS"
                                    .into(),
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
                AdminConfig { listen, tls }
            }
        };

        let upstream_client = UpstreamClientConfig {
            cert: resolve(&raw.upstream_client.cert),
            key: resolve(&raw.upstream_client.key),
        };

        if raw.parks.is_empty() {
            return Err(invalid(
                "parks",
                "at least one park must be configured".into(),
            ));
        }
        let mut parks = BTreeMap::new();
        for (id, p) in raw.parks {
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
            let endpoint = p.endpoint.trim_end_matches('/').to_string();
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
            let crl = match p.crl {
                None => Vec::new(),
                Some(OneOrMany::One(p)) => vec![resolve(&p)],
                Some(OneOrMany::Many(v)) => v.iter().map(|p| resolve(p)).collect(),
            };
            parks.insert(
                id.clone(),
                ParkConfig {
                    id,
                    client_ca: resolve(&p.client_ca),
                    endpoint,
                    endpoint_ca: resolve(&p.endpoint_ca),
                    crl,
                },
            );
        }

        let schemas = SchemasConfig {
            dir: resolve(
                raw.schemas
                    .as_ref()
                    .map(|s| s.dir.as_path())
                    .unwrap_or(Path::new("schemas")),
            ),
        };

        let policies = match raw.policies {
            None => PoliciesConfig {
                dir: resolve(Path::new("policies")),
                pseudonymisation_key: None,
                settings: BTreeMap::new(),
            },
            Some(p) => {
                let mut settings = BTreeMap::new();
                for (k, v) in p.settings.unwrap_or_default() {
                    let json = serde_json::to_value(&v)
                        .map_err(|e| invalid(&format!("policies.settings.{k}"), e.to_string()))?;
                    settings.insert(k, json);
                }
                PoliciesConfig {
                    dir: resolve(&p.dir),
                    pseudonymisation_key: p.pseudonymisation_key.as_deref().map(resolve),
                    settings,
                }
            }
        };

        let a = raw.audit;
        let checkpoint_every_entries = a.checkpoint_every_entries.unwrap_or(1000);
        if checkpoint_every_entries == 0 {
            return Err(invalid(
                "audit.checkpoint_every_entries",
                "must be at least 1".into(),
            ));
        }
        let max_batch = a.max_batch.unwrap_or(1024);
        if max_batch == 0 {
            return Err(invalid("audit.max_batch", "must be at least 1".into()));
        }
        let audit = AuditConfig {
            log: resolve(&a.log),
            signing_key: resolve(&a.signing_key),
            fsync: a.fsync.unwrap_or(FsyncPolicy::Always),
            fsync_interval: Duration::from_millis(a.fsync_interval_ms.unwrap_or(200).max(1)),
            checkpoint_every_entries,
            checkpoint_interval: Duration::from_secs(
                a.checkpoint_interval_secs.unwrap_or(60).max(1),
            ),
            segment_max_bytes: a.segment_max_bytes.unwrap_or(256 * 1024 * 1024).max(4096),
            max_batch,
        };

        let l = raw.limits.unwrap_or(RawLimits {
            max_body_bytes: None,
            max_json_depth: None,
            max_header_bytes: None,
            header_read_timeout_ms: None,
            handshake_timeout_ms: None,
            body_read_timeout_ms: None,
            idle_timeout_secs: None,
            max_connections: None,
            max_concurrent_streams: None,
            max_pending_reset_streams: None,
            shutdown_grace_secs: None,
        });
        let limits = LimitsConfig {
            max_body_bytes: positive("limits.max_body_bytes", l.max_body_bytes, 1024 * 1024)
                .map_err(|m| invalid("limits.max_body_bytes", m))?,
            max_json_depth: positive("limits.max_json_depth", l.max_json_depth, 32)
                .map_err(|m| invalid("limits.max_json_depth", m))?,
            max_header_bytes: positive("limits.max_header_bytes", l.max_header_bytes, 16 * 1024)
                .map_err(|m| invalid("limits.max_header_bytes", m))?,
            header_read_timeout: Duration::from_millis(
                l.header_read_timeout_ms.unwrap_or(10_000).max(1),
            ),
            handshake_timeout: Duration::from_millis(
                l.handshake_timeout_ms.unwrap_or(10_000).max(1),
            ),
            body_read_timeout: Duration::from_millis(
                l.body_read_timeout_ms.unwrap_or(30_000).max(1),
            ),
            idle_timeout: Duration::from_secs(l.idle_timeout_secs.unwrap_or(60).max(1)),
            max_connections: positive("limits.max_connections", l.max_connections, 10_000)
                .map_err(|m| invalid("limits.max_connections", m))?,
            max_concurrent_streams: l.max_concurrent_streams.unwrap_or(100).max(1),
            max_pending_reset_streams: l.max_pending_reset_streams.unwrap_or(20),
            shutdown_grace: Duration::from_secs(l.shutdown_grace_secs.unwrap_or(30)),
        };

        let upstream = match raw.upstream {
            None => UpstreamConfig::default(),
            Some(u) => {
                let d = UpstreamConfig::default();
                UpstreamConfig {
                    connect_timeout: u
                        .connect_timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or(d.connect_timeout),
                    request_timeout: u
                        .request_timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or(d.request_timeout),
                    pool_idle_timeout: u
                        .pool_idle_timeout_secs
                        .map(Duration::from_secs)
                        .unwrap_or(d.pool_idle_timeout),
                    pool_max_idle_per_host: u
                        .pool_max_idle_per_host
                        .unwrap_or(d.pool_max_idle_per_host),
                }
            }
        };

        let logging = match raw.logging {
            None => LoggingConfig {
                level: "info".into(),
                format: LogFormat::Auto,
            },
            Some(l) => LoggingConfig {
                level: l.level.unwrap_or_else(|| "info".into()),
                format: l.format.unwrap_or(LogFormat::Auto),
            },
        };

        let rate_limit = match raw.rate_limit {
            None => RateLimitConfig {
                per_org_per_second: 0.0,
                burst: 0.0,
            },
            Some(r) => {
                let per = r.per_org_per_second.unwrap_or(0.0);
                if !per.is_finite() || per < 0.0 {
                    return Err(invalid(
                        "rate_limit.per_org_per_second",
                        "must be 0 or more".into(),
                    ));
                }
                let burst = r.burst.unwrap_or(per.max(1.0));
                if !burst.is_finite() || burst < 0.0 {
                    return Err(invalid("rate_limit.burst", "must be 0 or more".into()));
                }
                RateLimitConfig {
                    per_org_per_second: per,
                    burst,
                }
            }
        };

        Ok(Config {
            source: path.to_path_buf(),
            server,
            admin,
            upstream_client,
            parks,
            schemas,
            policies,
            audit,
            limits,
            upstream,
            logging,
            rate_limit,
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

fn positive(_key: &str, v: Option<usize>, default: usize) -> Result<usize, String> {
    match v {
        None => Ok(default),
        Some(0) => Err("must be at least 1".into()),
        Some(n) => Ok(n),
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
}
