//! The witness's TOML configuration (`witness.toml`), and what `witness init` writes.
//!
//! ```toml
//! listen = "127.0.0.1:9500"      # default
//! key = "witness.key"            # the witness's Ed25519 signing key (PEM PKCS#8); default
//! state = "witness-state.json"   # last cosigned checkpoint per log; default
//!
//! [[log]]                        # one per witnessed audit log, at least one
//! origin = "hetao-gateway/audit/<key id>"
//! public_key = "log-<key id>.pub"
//! ```
//!
//! Paths are relative to the file's own folder. A log's origin is derived from its key
//! ([`origin_of`]); the witness checks the two agree when it starts.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::cosignature::witness_name_of;
use super::state::StateError;
use crate::audit::note::origin_of;
use crate::audit::{AuditPublicKey, AuditSigner, KeyError};
use crate::config::LoggingConfig;

/// Where a witness listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9500";
/// The files `witness init` writes in its folder.
pub const KEY_FILE: &str = "witness.key";
pub const PUBLIC_KEY_FILE: &str = "witness.pub";
pub const CONFIG_FILE: &str = "witness.toml";
pub const STATE_FILE: &str = "witness-state.json";

/// Why the witness cannot be set up or started. Names the file, and the key where there is one.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("cannot read witness config {path}: {source} (`hetao-gateway witness init --out DIR --log-public-key FILE` writes one)")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("witness config {path}: {message}")]
    ParseConfig { path: PathBuf, message: String },
    #[error("witness config {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("witness config {path}: key `{key}`: {source}")]
    Key {
        path: PathBuf,
        key: String,
        source: KeyError,
    },
    #[error("--log-public-key {path}: {source}")]
    LogPublicKey { path: PathBuf, source: KeyError },
    #[error("{0}")]
    Generate(KeyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path} already exists; `witness init` never overwrites a file (choose another --out, or remove the old witness's files on purpose)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The loaded configuration, every path absolute (or relative to the working directory when
/// the file's own path was).
#[derive(Debug, Clone)]
pub struct WitnessConfig {
    /// The file it was read from.
    pub source: PathBuf,
    pub listen: SocketAddr,
    /// The witness's signing key.
    pub key: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// The logs this witness cosigns for.
    pub logs: Vec<LogConfig>,
    pub logging: LoggingConfig,
}

/// One witnessed log: its origin and the public key its checkpoints are signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub origin: String,
    pub public_key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_key")]
    key: PathBuf,
    #[serde(default = "default_state")]
    state: PathBuf,
    #[serde(default, rename = "log")]
    logs: Vec<LogFile>,
    #[serde(default)]
    logging: LoggingConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    origin: String,
    public_key: PathBuf,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_key() -> PathBuf {
    KEY_FILE.into()
}
fn default_state() -> PathBuf {
    STATE_FILE.into()
}

// === impl WitnessConfig ===

impl WitnessConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<WitnessConfig, WitnessError> {
        let text = std::fs::read_to_string(path).map_err(|source| WitnessError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text as if read from `path` (relative paths resolve against its
    /// folder).
    pub fn parse(text: &str, path: &Path) -> Result<WitnessConfig, WitnessError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| WitnessError::ParseConfig {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |key: String, message: String| WitnessError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let resolve = |p: &Path| base.join(p);
        let listen = file.listen.parse().map_err(|e| {
            invalid(
                "listen".into(),
                format!(
                    "`{}` is not an address like {DEFAULT_LISTEN} ({e})",
                    file.listen
                ),
            )
        })?;
        if file.logs.is_empty() {
            return Err(invalid(
                "log".into(),
                "no [[log]]: a witness needs at least one log to cosign for".into(),
            ));
        }
        let mut logs: Vec<LogConfig> = Vec::with_capacity(file.logs.len());
        for (i, log) in file.logs.iter().enumerate() {
            if !signed_note::is_key_name_valid(&log.origin) {
                return Err(invalid(
                    format!("log[{i}].origin"),
                    "must be non-empty, without spaces or `+`".into(),
                ));
            }
            if logs.iter().any(|l| l.origin == log.origin) {
                return Err(invalid(
                    format!("log[{i}].origin"),
                    format!("log {} is listed twice", log.origin),
                ));
            }
            logs.push(LogConfig {
                origin: log.origin.clone(),
                public_key: resolve(&log.public_key),
            });
        }
        Ok(WitnessConfig {
            source: path.to_path_buf(),
            listen,
            key: resolve(&file.key),
            state: resolve(&file.state),
            logs,
            logging: file.logging,
        })
    }

    /// The witness's signing key.
    pub fn load_signer(&self) -> Result<AuditSigner, WitnessError> {
        AuditSigner::from_pem_file(&self.key).map_err(|source| WitnessError::Key {
            path: self.source.clone(),
            key: "key".into(),
            source,
        })
    }

    /// Each log's public key, checked to be the key its origin names.
    pub fn load_log_keys(&self) -> Result<Vec<(String, AuditPublicKey)>, WitnessError> {
        let mut out = Vec::with_capacity(self.logs.len());
        for (i, log) in self.logs.iter().enumerate() {
            let key = AuditPublicKey::from_pem_file(&log.public_key).map_err(|source| {
                WitnessError::Key {
                    path: self.source.clone(),
                    key: format!("log[{i}].public_key"),
                    source,
                }
            })?;
            let derived = origin_of(&key);
            if derived != log.origin {
                return Err(WitnessError::Invalid {
                    path: self.source.clone(),
                    key: format!("log[{i}].origin"),
                    message: format!(
                        "is {}, but the key in {} signs as {derived}",
                        log.origin,
                        log.public_key.display()
                    ),
                });
            }
            out.push((log.origin.clone(), key));
        }
        Ok(out)
    }
}

/// What `witness init` wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub config: PathBuf,
    pub key: PathBuf,
    pub public_key: PathBuf,
    /// The witness's name in cosignature lines.
    pub name: String,
    /// The witnessed log's origin, and the copy of its public key.
    pub origin: String,
    pub log_public_key: PathBuf,
}

/// Writes, in `out`, a new witness key pair, a copy of the log's public key and a configuration
/// that witnesses that log. Refuses to overwrite any file: a witness's key and state are its
/// identity and memory, and replacing them by accident would let it cosign a fork.
pub fn init(
    out: &Path,
    log_public_key: &Path,
    listen: SocketAddr,
) -> Result<InitReport, WitnessError> {
    let log_key = AuditPublicKey::from_pem_file(log_public_key).map_err(|source| {
        WitnessError::LogPublicKey {
            path: log_public_key.to_path_buf(),
            source,
        }
    })?;
    let origin = origin_of(&log_key);
    let log_copy_name = format!("log-{}.pub", log_key.key_id());
    let key = out.join(KEY_FILE);
    let public_key = out.join(PUBLIC_KEY_FILE);
    let config = out.join(CONFIG_FILE);
    let log_copy = out.join(&log_copy_name);
    // Checked before anything is written, so a refused init leaves the folder as it was.
    for path in [&key, &public_key, &config, &log_copy, &out.join(STATE_FILE)] {
        if path.symlink_metadata().is_ok() {
            return Err(WitnessError::Exists { path: path.clone() });
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .map_err(|source| WitnessError::Write {
            path: out.to_path_buf(),
            source,
        })?;
    let (signer, private_pem) = AuditSigner::generate().map_err(WitnessError::Generate)?;
    let witness_key = signer.public_key();
    let name = witness_name_of(&witness_key);
    write_new(&key, private_pem.as_bytes(), 0o600)?;
    write_new(&public_key, witness_key.to_pem().as_bytes(), 0o644)?;
    write_new(&log_copy, log_key.to_pem().as_bytes(), 0o644)?;
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let text = format!(
        "# hetao-gateway witness: cosigns the checkpoints of the audit log(s) below, each only after\n\
         # checking it extends the last one cosigned. Paths are relative to this file. See\n\
         # docs/witness.md.\n\
         listen = {listen}\n\
         # This witness's signing key (keep it private). Its public key is {PUBLIC_KEY_FILE}; it signs as\n\
         # {name}.\n\
         key = {key_file}\n\
         # The last checkpoint cosigned per log. Back it up; never delete it: a witness without its\n\
         # state would cosign a rolled-back or forked log.\n\
         state = {state_file}\n\
         \n\
         [[log]]\n\
         origin = {origin_q}\n\
         public_key = {log_copy_q}\n",
        listen = quote(&listen.to_string()),
        key_file = quote(KEY_FILE),
        state_file = quote(STATE_FILE),
        origin_q = quote(&origin),
        log_copy_q = quote(&log_copy_name),
    );
    write_new(&config, text.as_bytes(), 0o644)?;
    Ok(InitReport {
        config,
        key,
        public_key,
        name,
        origin,
        log_public_key: log_copy,
    })
}

/// Creates `path` (never replacing a file) with `contents` and `mode`, durably.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), WitnessError> {
    use std::io::Write;
    let write_error = |source| WitnessError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                WitnessError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                write_error(source)
            }
        })?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_relative_paths_resolve_against_the_file() {
        let text = "[[log]]\norigin = \"hetao-gateway/audit/0123456789abcdef\"\npublic_key = \"log.pub\"\n";
        let cfg = WitnessConfig::parse(text, Path::new("/etc/witness/witness.toml")).unwrap();
        assert_eq!(cfg.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(cfg.key, Path::new("/etc/witness/witness.key"));
        assert_eq!(cfg.state, Path::new("/etc/witness/witness-state.json"));
        assert_eq!(cfg.logs[0].public_key, Path::new("/etc/witness/log.pub"));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let p = Path::new("w.toml");
        let log = "[[log]]\norigin = \"o\"\npublic_key = \"k\"\n";
        let cases = [
            (format!("listen = \"nowhere\"\n{log}"), "key `listen`"),
            (String::new(), "key `log`"),
            (format!("{log}{log}"), "key `log[1].origin`"),
            (
                "[[log]]\norigin = \"a b\"\npublic_key = \"k\"\n".into(),
                "key `log[0].origin`",
            ),
            (format!("colour = \"red\"\n{log}"), "unknown field"),
        ];
        for (text, want) in cases {
            let err = WitnessConfig::parse(&text, p).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("w.toml"), "{err}");
        }
    }
}
