//! The gateway's side of witnessing: every checkpoint the log writes is sent to each configured
//! witness (`[[audit.witness]]`) with a consistency proof from what that witness cosigned last
//! (C2SP tlog-witness `add-checkpoint`); the cosignature that comes back is checked with the
//! witness's key and kept in `<log>.cosignatures`, one JSON line per cosigned checkpoint.
//!
//! Off the request path: a background task follows the log's checkpoints and retries with
//! backoff. At start, one synchronous round tells whether this log still extends what each
//! witness cosigned: a witness that cosigned more entries than the log holds, or refuses the
//! consistency proof, means the log was cut back or rewritten, and the gateway refuses to start.
//! With `audit.witness_max_lag_entries`, records are refused while a witness lags further.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::keys::AuditPublicKey;
use super::tree::HashStore;
use crate::config::WitnessConfig;
use crate::witness::cosignature::{add_cosignatures, verify_cosignature, witness_name_of};
use crate::witness::protocol::add_checkpoint_body;

/// How long one witness request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a witness's answer may hold (a few cosignature lines).
const MAX_ANSWER: usize = 16 * 1024;
/// Retry delays after a failed request: 1 s, doubling up to 10 s (a witness back from an outage
/// is caught up within seconds; the fail-closed mode waits on it).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A checkpoint the log wrote: its tree size and signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCheckpoint {
    pub size: u64,
    pub note: String,
}

/// One line of `<log>.cosignatures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CosignedCheckpoint {
    /// The witness's name (`hetao-witness/<key id>`).
    pub witness: String,
    pub size: u64,
    /// The checkpoint note with the log's signature and the witness's cosignature line.
    pub note: String,
}

/// A tree head the audit key signed and a configured witness cosigned.
#[derive(Debug, Clone, PartialEq)]
pub struct CosignedHead {
    pub witness: String,
    pub size: u64,
    pub root: tlog_tiles::Hash,
}

/// Where the cosignatures of the log at `log` are kept.
pub fn cosignatures_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".cosignatures");
    log.with_file_name(name)
}

/// What the gateway knows of one witness.
pub struct Witness {
    pub name: String,
    pub url: String,
    key: AuditPublicKey,
    /// Size of the checkpoint it last cosigned (valid once `known`).
    cosigned: AtomicU64,
    known: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// A witness's state for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct WitnessStatus {
    pub name: String,
    pub url: String,
    /// Tree size of the checkpoint it last cosigned, once known.
    pub cosigned_size: Option<u64>,
    /// Entries of the log not yet covered by its cosignature.
    pub lag_entries: u64,
    pub last_error: Option<String>,
}

/// Why a witness says the log is not the one it cosigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("witness {witness}: {problem}")]
pub struct Divergence {
    pub witness: String,
    pub problem: String,
}

/// Every configured witness and the gateway's view of each.
pub struct Witnesses {
    list: Vec<Witness>,
    max_lag: Option<u64>,
    side_file: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Set once a witness reports the log diverged from what it cosigned: sticky, like a write
    /// failure, since it means the log was cut back or rewritten.
    diverged: Mutex<Option<Divergence>>,
}

impl std::fmt::Debug for Witnesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witnesses")
            .field("witnesses", &self.list.len())
            .finish_non_exhaustive()
    }
}

/// A witness's public key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("audit.witness {url}: public_key: {source}")]
pub struct WitnessKeyError {
    url: String,
    #[source]
    source: super::keys::KeyError,
}

impl Witnesses {
    /// Loads the witnesses' keys; `log` is the log's path (for the cosignatures file).
    pub fn load(
        configs: &[WitnessConfig],
        max_lag: Option<u64>,
        log: &Path,
    ) -> Result<Witnesses, WitnessKeyError> {
        let mut list = Vec::with_capacity(configs.len());
        for c in configs {
            let key =
                AuditPublicKey::from_pem_file(&c.public_key).map_err(|source| WitnessKeyError {
                    url: c.url.clone(),
                    source,
                })?;
            list.push(Witness {
                name: witness_name_of(&key),
                url: c.url.trim_end_matches('/').to_string(),
                key,
                cosigned: AtomicU64::new(0),
                known: AtomicBool::new(false),
                last_error: Mutex::new(None),
            });
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(REQUEST_TIMEOUT));
        http.set_nodelay(true);
        Ok(Witnesses {
            list,
            max_lag,
            side_file: cosignatures_path(log),
            // Pooled connections are dropped before the witness's own 10 s idle close, so a
            // request never goes out on a connection the witness is closing.
            client: Client::builder(TokioExecutor::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(4))
                .build(http),
            diverged: Mutex::new(None),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The largest tree a configured witness cosigned, from the cosignatures kept beside the log:
    /// the note must carry a valid cosignature by that witness's configured key and the audit
    /// key's signature (`log_key`). What the start checks the log against (`docs/audit.md`,
    /// "Start-up on a large log"). A kept line that does not verify is passed over (and named
    /// by `audit verify --witness-key`); `None` when no line verifies or there is no file.
    pub fn latest_cosigned(&self, log_key: &AuditPublicKey) -> Option<CosignedHead> {
        if self.list.is_empty() {
            return None;
        }
        let text = match std::fs::read_to_string(&self.side_file) {
            Ok(t) => t,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(target: "hetao::audit", file = %self.side_file.display(),
                        error = %e, "cannot read the kept cosignatures; the start checks the whole log");
                }
                return None;
            }
        };
        let mut kept: Vec<CosignedCheckpoint> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        // The largest first; only the lines tried are verified.
        kept.sort_by_key(|c| std::cmp::Reverse(c.size));
        kept.into_iter().find_map(|c| {
            let w = self.list.iter().find(|w| w.name == c.witness)?;
            verify_cosignature(&c.note, &w.key).ok()?;
            let head = super::note::open_checkpoint(&c.note, log_key).ok()?;
            (head.size == c.size).then(|| CosignedHead {
                witness: w.name.clone(),
                size: head.size,
                root: head.root,
            })
        })
    }

    /// `audit.witness_max_lag_entries`, when the fail-closed mode is on.
    pub fn max_lag(&self) -> Option<u64> {
        self.max_lag
    }

    /// The divergence a witness reported, if any.
    pub fn diverged(&self) -> Option<Divergence> {
        self.diverged.lock().ok().and_then(|d| d.clone())
    }

    /// The witness lagging most, when it lags beyond `witness_max_lag_entries`.
    pub fn over_lag(&self, log_size: u64) -> Option<(String, u64)> {
        let max = self.max_lag?;
        self.list
            .iter()
            .map(|w| (w.name.clone(), lag(w, log_size)))
            .filter(|(_, l)| *l > max)
            .max_by_key(|(_, l)| *l)
    }

    /// Each witness's state against a log of `log_size` entries.
    pub fn status(&self, log_size: u64) -> Vec<WitnessStatus> {
        self.list
            .iter()
            .map(|w| WitnessStatus {
                name: w.name.clone(),
                url: w.url.clone(),
                cosigned_size: w
                    .known
                    .load(Ordering::Acquire)
                    .then(|| w.cosigned.load(Ordering::Acquire)),
                lag_entries: lag(w, log_size),
                last_error: w.last_error.lock().ok().and_then(|e| e.clone()),
            })
            .collect()
    }

    /// One round: asks every witness that has not cosigned `checkpoint` yet to cosign it.
    /// Returns whether every witness has; a divergence is recorded (and returned).
    pub async fn round(
        &self,
        checkpoint: &LoggedCheckpoint,
        tree: &HashStore,
    ) -> Result<bool, Divergence> {
        let mut all = true;
        for w in &self.list {
            if w.known.load(Ordering::Acquire)
                && w.cosigned.load(Ordering::Acquire) >= checkpoint.size
            {
                continue;
            }
            match self.submit(w, checkpoint, tree).await {
                Ok(()) => {
                    if let Ok(mut e) = w.last_error.lock() {
                        *e = None;
                    }
                }
                Err(Failure::Diverged(problem)) => {
                    let d = Divergence {
                        witness: w.name.clone(),
                        problem,
                    };
                    tracing::error!(target: "hetao::audit", witness = %w.name, url = %w.url,
                        problem = %d.problem, "witness: the log is not the one it cosigned (cut back or rewritten)");
                    if let Ok(mut slot) = self.diverged.lock() {
                        slot.get_or_insert(d.clone());
                    }
                    return Err(d);
                }
                Err(Failure::Retry(message)) => {
                    tracing::warn!(target: "hetao::audit", witness = %w.name, url = %w.url,
                        error = %message, "witness: checkpoint not cosigned yet; will retry");
                    if let Ok(mut e) = w.last_error.lock() {
                        *e = Some(message);
                    }
                    all = false;
                }
            }
        }
        Ok(all)
    }

    /// Sends `checkpoint` to `w` with a proof from what it cosigned last; learns where it stands
    /// from a 409 and tries again once.
    async fn submit(
        &self,
        w: &Witness,
        checkpoint: &LoggedCheckpoint,
        tree: &HashStore,
    ) -> Result<(), Failure> {
        for _ in 0..2 {
            let old = if w.known.load(Ordering::Acquire) {
                w.cosigned.load(Ordering::Acquire)
            } else {
                0
            };
            if old > checkpoint.size {
                return Err(Failure::Diverged(format!(
                    "it cosigned a log of {old} entries; this log's latest checkpoint covers {}",
                    checkpoint.size
                )));
            }
            let proof = if old == 0 {
                Vec::new()
            } else {
                tree.consistency_proof(checkpoint.size, old)
                    .map_err(|e| Failure::Retry(format!("consistency proof: {e}")))?
            };
            let body = add_checkpoint_body(old, &proof, &checkpoint.note);
            let (status, answer) = self.post(w, body).await.map_err(Failure::Retry)?;
            match status {
                200 => {
                    let cosigned = add_cosignatures(&checkpoint.note, &answer);
                    verify_cosignature(&cosigned, &w.key).map_err(|e| {
                        Failure::Retry(format!("its answer is not a valid cosignature: {e}"))
                    })?;
                    self.keep(&CosignedCheckpoint {
                        witness: w.name.clone(),
                        size: checkpoint.size,
                        note: cosigned,
                    })
                    .map_err(Failure::Retry)?;
                    w.cosigned.store(checkpoint.size, Ordering::Release);
                    w.known.store(true, Ordering::Release);
                    return Ok(());
                }
                409 => {
                    let size: u64 = answer.trim().parse().map_err(|_| {
                        Failure::Retry(format!("409 without a tree size: {}", short(&answer)))
                    })?;
                    if size > tree.leaves() {
                        return Err(Failure::Diverged(format!(
                            "it cosigned a log of {size} entries; this log holds {}: it was cut back",
                            tree.leaves()
                        )));
                    }
                    if size == old && w.known.load(Ordering::Acquire) {
                        // Our `old` was its size, yet it refuses: it cosigned another tree of
                        // this size (C2SP answers a fork at the same size with 409).
                        return Err(Failure::Diverged(format!(
                            "it cosigned another tree of {size} entries than this log's: the log was rewritten"
                        )));
                    }
                    w.cosigned.store(size, Ordering::Release);
                    w.known.store(true, Ordering::Release);
                }
                422 => {
                    return Err(Failure::Diverged(format!(
                        "it refused the consistency proof from the {old} entries it cosigned: this log does not extend them (rewritten): {}",
                        short(&answer)
                    )))
                }
                other => {
                    return Err(Failure::Retry(format!(
                        "answered {other}: {}",
                        short(&answer)
                    )))
                }
            }
        }
        Err(Failure::Retry(
            "its tree size kept changing under the request".into(),
        ))
    }

    async fn post(&self, w: &Witness, body: String) -> Result<(u16, String), String> {
        let request = http::Request::post(format!("{}/add-checkpoint", w.url))
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("unreachable: {}", crate::causes::chain_text(&e)))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading its answer: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }

    /// Appends a cosigned checkpoint to the cosignatures file, durably.
    fn keep(&self, cosigned: &CosignedCheckpoint) -> Result<(), String> {
        let mut line = serde_json::to_string(cosigned).map_err(|e| e.to_string())?;
        line.push('\n');
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.side_file)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        };
        write().map_err(|e| format!("{}: {e}", self.side_file.display()))
    }
}

fn lag(w: &Witness, log_size: u64) -> u64 {
    let cosigned = if w.known.load(Ordering::Acquire) {
        w.cosigned.load(Ordering::Acquire)
    } else {
        0
    };
    log_size.saturating_sub(cosigned)
}

/// The first 200 characters of a witness's answer, for messages.
fn short(answer: &str) -> String {
    let trimmed = answer.trim();
    crate::printable::escape_controls(&trimmed.chars().take(200).collect::<String>()).into_owned()
}

enum Failure {
    Diverged(String),
    Retry(String),
}

/// The background task: follows the log's checkpoints and has each cosigned, retrying with
/// backoff, until `stop` turns true.
pub async fn follow(
    witnesses: Arc<Witnesses>,
    tree: Arc<HashStore>,
    mut checkpoints: tokio::sync::watch::Receiver<Option<LoggedCheckpoint>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut retry = RETRY_MIN;
    loop {
        let latest = checkpoints.borrow_and_update().clone();
        let mut pending = false;
        if let Some(cp) = latest {
            match witnesses.round(&cp, &tree).await {
                Ok(true) => retry = RETRY_MIN,
                Ok(false) => pending = true,
                // Sticky: the log is not what the witness cosigned; nothing more to send.
                Err(_) => return,
            }
        }
        let wait = async {
            if pending {
                tokio::time::sleep(retry).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = checkpoints.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = wait => retry = (retry * 2).min(RETRY_MAX),
            _ = crate::shutdown::stop_requested(&mut stop) => return,
        }
    }
}

/// Checks the cosignatures kept beside a log against the log, for each witness key an auditor
/// names (`audit verify --witness-key`). For each witness: every kept cosignature must verify and
/// name a tree the log holds (same root at that size; a larger tree means the log was cut, another
/// root that it was rewritten), and, for a closed log (`live` false), its latest must cover the
/// log's last checkpoint: a log cut back and continued can never get its new checkpoints
/// cosigned, since the witness refuses anything that does not extend what it cosigned.
pub fn check_witnessed(
    tree: Option<&HashStore>,
    last_checkpoint_size: Option<u64>,
    cosignatures: &Path,
    witness_keys: &[AuditPublicKey],
    log_key: Option<&AuditPublicKey>,
    live: bool,
) -> Vec<super::chain::WitnessCheck> {
    let kept: Result<Vec<CosignedCheckpoint>, String> = match std::fs::read_to_string(cosignatures)
    {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|e| format!("a line is not a cosignature: {e}"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", cosignatures.display())),
    };
    witness_keys
        .iter()
        .map(|key| {
            let witness = witness_name_of(key);
            let mut check = super::chain::WitnessCheck {
                witness: witness.clone(),
                latest_cosigned: None,
                problem: None,
            };
            let kept = match &kept {
                Ok(k) => k,
                Err(e) => {
                    check.problem = Some(e.clone());
                    return check;
                }
            };
            for c in kept.iter().filter(|c| c.witness == witness) {
                if let Err(problem) = check_one(c, key, tree, log_key) {
                    check.problem = Some(problem);
                    return check;
                }
                check.latest_cosigned = check.latest_cosigned.max(Some(c.size));
            }
            check.problem = match (check.latest_cosigned, last_checkpoint_size) {
                (None, _) => Some(format!(
                    "no cosignature by {witness} in {}",
                    cosignatures.display()
                )),
                (Some(latest), Some(last)) if latest < last && !live => Some(format!(
                    "its latest cosignature covers {latest} entries, the log's last checkpoint {last}: the end of the log is not witnessed (cut back and continued, or the witness was not reached at shutdown)"
                )),
                _ => None,
            };
            check
        })
        .collect()
}

fn check_one(
    c: &CosignedCheckpoint,
    key: &AuditPublicKey,
    tree: Option<&HashStore>,
    log_key: Option<&AuditPublicKey>,
) -> Result<(), String> {
    verify_cosignature(&c.note, key)
        .map_err(|e| format!("the cosignature for size {} does not verify: {e}", c.size))?;
    let head = match log_key {
        Some(k) => super::note::open_checkpoint(&c.note, k)
            .map_err(|e| format!("the cosigned checkpoint of size {}: {e}", c.size))?,
        None => {
            let text = c.note.split("\n\n").next().unwrap_or_default();
            let cp = tlog_tiles::Checkpoint::from_bytes(format!("{text}\n").as_bytes())
                .map_err(|_| format!("the cosigned checkpoint of size {} is malformed", c.size))?;
            super::note::TreeHead {
                size: cp.size(),
                root: *cp.hash(),
            }
        }
    };
    if head.size != c.size {
        return Err(format!(
            "a cosigned checkpoint says size {}, its line {}",
            head.size, c.size
        ));
    }
    let Some(tree) = tree else {
        return Ok(());
    };
    if head.size > tree.leaves() {
        return Err(format!(
            "it cosigned a log of {} entries; this log holds {}: it was cut",
            head.size,
            tree.leaves()
        ));
    }
    let root = tree.root(head.size).map_err(|e| e.to_string())?;
    if root != head.root {
        return Err(format!(
            "the log's first {} entries are not the tree it cosigned: the log was rewritten",
            head.size
        ));
    }
    Ok(())
}
