//! The tamper-evident audit log: hash-chained JSON Lines, group commit, signed checkpoints,
//! receipts, recovery, verification and queries.
//!
//! - [`entry`]: one line, its hash over the exact bytes.
//! - [`keys`]: the Ed25519 signing key, checkpoint and receipt signatures.
//! - [`chain`]: segment files, scanning, link checks, [`verify_logs`].
//! - [`writer`]: the writer thread (group commit, checkpoints, rotation, fail closed).
//! - [`query`]: an auditor's filters and statistics.
//! - [`history`]: what the log says about each record id, for retries.
//!
//! The format and the guarantees are described in `docs/audit.md`.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::AuditConfig;
use crate::tls::identity::ClientIdentity;

pub mod chain;
pub mod entry;
pub mod evidence;
pub mod history;
pub mod keys;
pub mod note;
pub mod query;
pub mod startup;
pub mod tree;
pub mod witnessing;
pub mod writer;

pub use chain::{segment_paths, verify_logs, LinkError, LinkProblem, VerifyProblem, VerifyReport};
pub use entry::{AuditEntry, AuditEntryType, ZERO_HASH};
pub use history::{
    record_key, Histories, LinePlace, LoggedEntry, RecordHistory, RecordKey, Standing,
};
pub use keys::{
    generate_signing_key, public_key_pem_from_signing_key_file, AuditPublicKey, AuditSigner,
    KeyError,
};
pub use query::{for_each_entry, query_logs, QueryFilter, QueryStats};
pub use writer::WriteError;

use chain::{scan_file_from, ChainChecker, ScanEnd, ScanError};
use entry::LineError;
use startup::PrefixError;
pub use startup::StartupReport;
use writer::{sync_dir, ChainHead, Command, StatsCells, Writer, BATCH_BUCKETS, FSYNC_BUCKETS};

/// What an entry records. A decision entry is written before anything is forwarded; an outcome
/// entry follows for forwarded records and refers to its decision entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    Decision,
    Outcome,
}

/// A rule reference as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub id: String,
    pub effect: String,
    pub reason: String,
    /// The regulation the rule comes from, as the answer showed it: a retry's answer is rebuilt
    /// from the log (absent in older entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regulation: Option<String>,
}

/// What the pipeline hands to the log. No personal data from the record: only ids, hashes,
/// routing facts, rule references and codes (and, for outcomes, the acknowledgement relayed,
/// which holds only what `schemas/ack.json` declares).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditEvent {
    pub entry_type: Option<EntryType>,
    pub record_id: Option<String>,
    pub kind: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub sender: Option<ClientIdentity>,
    /// SHA-256 (hex) of the request body exactly as received.
    pub body_sha256: Option<String>,
    /// `allow`, `deny`, `invalid`, `replay`, `too_large`, `unsupported_media_type`,
    /// `rate_limited`, `unavailable`, ... (for outcome entries: `forwarded`, `upstream_failed`).
    pub decision: String,
    /// HTTP status answered to the sender (for outcome entries: the upstream's status, if any).
    pub status: u16,
    /// Machine-readable error code when the record was refused or failed upstream.
    pub error: Option<String>,
    pub rules: Vec<RuleRef>,
    pub policy_version: Option<String>,
    pub policy_hash: Option<String>,
    pub schema_hash: Option<String>,
    /// Obligations applied (action and pointer only).
    pub obligations: Vec<String>,
    /// Allow decisions of a record forwarded again: the attempt number (2, 3, ...).
    pub attempt: Option<u32>,
    /// Sequence of the decision entry an outcome entry belongs to (replay entries: the decision
    /// entry of the record they repeat).
    pub refers_to: Option<u64>,
    /// Replay entries of a record decided on another instance of a cluster: that instance and
    /// its decision entry's sequence (`refers_to` names entries of this log only).
    pub decided_elsewhere: Option<entry::Elsewhere>,
    /// Outcome entries: SHA-256 (hex) of the endpoint's whole answer body as received (absent
    /// when the gateway stopped reading it, or got none).
    pub answer_sha256: Option<String>,
    /// Outcome entries: bytes of the endpoint's answer body the gateway received.
    pub answer_bytes: Option<u64>,
    /// Outcome entries: the acknowledgement relayed to the sender (only the properties the
    /// acknowledgement schema declares, after validation); absent when none was relayed.
    pub acknowledgement: Option<serde_json::Value>,
    pub latency_us: u64,
}

/// Where an entry landed in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub seq: u64,
    pub hash: String,
    /// What a receipt for this entry states (set by the writer).
    #[serde(skip)]
    pub facts: tree::ReceiptFacts,
    /// The signed checkpoint of the tree right after this entry's batch (set by the writer at
    /// commit): the receipt proves inclusion in it.
    #[serde(skip)]
    pub head: Option<Arc<BatchHead>>,
    /// The entry's line exactly as written (without its newline), set by the writer: a receipt
    /// that carries it lets its holder recompute the entry hash and read every field the hash
    /// binds (the delivery receipt does, for the acknowledgement).
    #[serde(skip)]
    pub line: Option<Arc<str>>,
    /// Where the writer put the line (its segment and offset): a retry reads it back there.
    #[serde(skip)]
    pub place: Option<LinePlace>,
}

/// The tree after one committed batch. Its checkpoint note is signed once for the whole batch,
/// by the first receipt that needs it: the writer thread, which every record waits on, does not
/// sign (an Ed25519 signature per batch was a sixth of its work), and a batch none of whose
/// entries gets a receipt (refusals, the outcomes of failed deliveries) is never signed.
#[derive(Debug)]
pub struct BatchHead {
    pub size: u64,
    root: tlog_tiles::Hash,
    note: std::sync::OnceLock<String>,
}

/// The same tree: the note, once signed, is a function of the size, the root and the log's key.
impl PartialEq for BatchHead {
    fn eq(&self, other: &Self) -> bool {
        self.size == other.size && self.root == other.root
    }
}

impl Eq for BatchHead {}

impl BatchHead {
    pub fn new(size: u64, root: tlog_tiles::Hash) -> BatchHead {
        BatchHead {
            size,
            root,
            note: std::sync::OnceLock::new(),
        }
    }

    /// The checkpoint note of this tree, signed by `signer` on first use.
    pub fn note(&self, signer: &AuditSigner) -> &str {
        self.note
            .get_or_init(|| note::sign_checkpoint(signer, self.size, self.root))
    }
}

/// Proof for the sender that its record was logged and decided as stated, checkable offline with
/// the gateway's public key: the entry's facts, an inclusion proof of its leaf (RFC 6962) in the
/// log's tree, and the checkpoint of that tree signed by the audit key (a C2SP signed note).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Sequence, entry hash, record id, decision, status, body hash and policy version.
    #[serde(flatten)]
    pub facts: tree::ReceiptFacts,
    /// Size of the signed tree the proof leads to.
    pub tree_size: u64,
    /// The inclusion proof: base64 hashes from the leaf's sibling up.
    pub inclusion: Vec<String>,
    /// The signed checkpoint (origin, tree size, root) as a C2SP signed note.
    pub checkpoint: String,
    pub key_id: String,
    /// The entry's line as written ([`Appended::line`]), when the receipt carries it: its hash
    /// must be `entry_hash` and its facts the receipt's, so every field of the entry is proven
    /// too. Delivery receipts carry it (the outcome entry holds the acknowledgement relayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Unavailable(#[source] Unavailable),
    /// Back-pressure: `audit.max_queue` entries already wait for the writer. Not sticky: the
    /// next append may succeed.
    #[error("audit log busy: {queued} entries are waiting for the writer")]
    Busy { queued: usize },
    #[error("audit log {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: OpenError,
    },
}

impl AuditError {
    /// The operating system's reason when an I/O call failed underneath (a full disk is
    /// `StorageFull`), wherever it sits in the chain of causes.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        crate::causes::io_kind(self)
    }
}

/// Why the log refuses appends.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// A write, fsync or rotation failed; the log refuses every append from then on. Shared by
    /// every waiter of the batch, hence the `Arc`.
    #[error(transparent)]
    Failed(Arc<WriteError>),
    /// An earlier entry of the same batch could not be prepared, so this one was not written.
    #[error("audit entry could not be prepared")]
    NotPrepared,
    #[error("audit log is closed")]
    Closed,
    #[error("audit writer stopped")]
    WriterStopped,
    /// A witness reported that the log is not the one it cosigned (cut back or rewritten).
    #[error("{0}; records are refused until an operator looks")]
    WitnessDiverged(witnessing::Divergence),
    /// Fail-closed mode: a witness's cosignatures lag too far behind.
    #[error("witness {witness} has not cosigned the last {lag} entries (audit.witness_max_lag_entries = {max})")]
    WitnessLag { witness: String, lag: u64, max: u64 },
}

impl Unavailable {
    /// See [`AuditError::io_kind`].
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Unavailable::Failed(e) => e.io_kind(),
            _ => None,
        }
    }
}

/// Why the log could not be opened (the path is in [`AuditError::Open`]).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("signing key: {0}")]
    SigningKey(#[source] KeyError),
    #[error("cannot create folder {}: {source}", dir.display())]
    CreateFolder {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list segments: {0}")]
    ListSegments(#[source] io::Error),
    /// Reading a segment back failed (the segment is the error's path).
    #[error("{0}")]
    Read(#[source] io::Error),
    #[error("line {line}: {error}; the log was altered and needs an operator (run `hetao-gateway audit verify`)")]
    Altered {
        line: u64,
        #[source]
        error: LinkError,
    },
    #[error("seq {seq} (line {line}): {error}; an entry inside the log is corrupt and is not repaired automatically: an operator must look (run `hetao-gateway audit verify`)")]
    Corrupt {
        seq: u64,
        line: u64,
        #[source]
        error: LineError,
    },
    #[error("{unsigned} entries after {} are not covered by a signed checkpoint, more than a crash can leave (at most {most}: checkpoint_every_entries + max_batch + the start's own entries); the unsigned tail may have been written by someone else. Refusing to sign over it: an operator must look (run `hetao-gateway audit verify` with the public key)", last_checkpoint.map(|s| format!("the last checkpoint (seq {s})")).unwrap_or_else(|| "the log's start (it has no checkpoint)".into()))]
    UnsignedTail {
        unsigned: u64,
        last_checkpoint: Option<u64>,
        most: u64,
    },
    #[error("{}: {problem}; the log is not the one the witnesses cosigned: an operator must look (run `hetao-gateway audit verify` with --witness-key)", match (seq, line) { (Some(s), l) if *l > 0 => format!("seq {s} (line {l})"), (Some(s), _) => format!("seq {s}"), (None, l) if *l > 0 => format!("line {l}"), (None, _) => "the log".into() })]
    NotCosigned {
        line: u64,
        seq: Option<u64>,
        problem: String,
    },
    #[error("{0}; the tree file is rebuilt from the log at start, but the entries of segments moved away from it must still be in it: put those segments back beside the log")]
    Tree(#[source] tree::TreeError),
    #[error("recovering a torn tail: {step}: {source}")]
    TornTail {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open for appending: {0}")]
    OpenForAppend(#[source] io::Error),
    /// Writing the entries the start owes (segment start, recovery note) failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot fsync its folder: {0}")]
    SyncFolder(#[source] io::Error),
    #[error("cannot start the writer thread: {0}")]
    WriterThread(#[source] io::Error),
    #[error("{0}")]
    Witness(#[source] witnessing::WitnessKeyError),
    #[error("the last entry has seq {0}, the largest there is: no entry can follow it; the log was altered and needs an operator (run `hetao-gateway audit verify`)")]
    SequenceExhausted(u64),
}

/// Counters for metrics (Prometheus-style: bucket counts are cumulative, bounds are upper bounds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditStats {
    /// Decision and outcome entries made durable.
    pub entries: u64,
    pub checkpoints: u64,
    /// Group commits that carried at least one entry.
    pub batches: u64,
    pub batch_entries_sum: u64,
    pub batch_size_buckets: Vec<(f64, u64)>,
    pub fsyncs: u64,
    pub fsync_seconds_sum: f64,
    pub fsync_seconds_buckets: Vec<(f64, u64)>,
    pub rotations: u64,
    /// Rotations that failed and were put off (the active segment went on growing).
    pub rotation_failures: u64,
    /// The log has failed (sticky) and refuses appends.
    pub failed: bool,
    /// Entries waiting for the writer now; at `audit.max_queue` new decisions get
    /// `503 audit_busy`.
    pub queued: usize,
}

/// Handle to the log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    log: PathBuf,
    tx: mpsc::Sender<Command>,
    signer: Arc<AuditSigner>,
    tree: Arc<tree::HashStore>,
    witnesses: Arc<witnessing::Witnesses>,
    /// The latest checkpoint written (what witnesses are asked to cosign).
    checkpoints: tokio::sync::watch::Sender<Option<witnessing::LoggedCheckpoint>>,
    failure: Arc<Mutex<Option<Arc<WriteError>>>>,
    stats: Arc<StatsCells>,
    /// Entries sent to the writer and not yet taken from its channel, and their bound.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    /// Handed over once to the replay guard (kept here it would double the memory).
    histories: Mutex<Histories>,
    /// What the start checked.
    startup: StartupReport,
    closed: AtomicBool,
    /// Every entry below this sequence is durable under the fsync policy.
    durable: tokio::sync::watch::Receiver<u64>,
}

/// What recovery found in the existing segments.
struct Recovered {
    head: Option<(u64, String)>,
    unsigned: u64,
    /// Number of the active segment, if the active file has its segment_start.
    active_segment: Option<u64>,
    last_archive: Option<u64>,
    active_len: u64,
    histories: Histories,
    /// `(bytes, side file)` of a torn tail set aside.
    torn: Option<(u64, PathBuf)>,
    /// The log's tree, rebuilt from the entries read (and checked against every checkpoint).
    tree: Arc<tree::HashStore>,
    /// The last checkpoint in the log.
    last_checkpoint: Option<witnessing::LoggedCheckpoint>,
    report: StartupReport,
}

fn open_error(path: &Path, source: impl Into<OpenError>) -> AuditError {
    AuditError::Open {
        path: path.to_path_buf(),
        source: source.into(),
    }
}

/// The most entries a crash can leave after the last checkpoint: a full interval's worth
/// (`checkpoint_every_entries`, less one), the batch committed just before the crash, and the
/// segment start and recovery entries a start writes before anything else.
pub fn crash_tail_bound(cfg: &AuditConfig) -> u64 {
    cfg.checkpoint_every_entries
        .max(1)
        .saturating_add(cfg.max_batch as u64)
        .saturating_add(2)
}

/// Reads every segment back, checks the chain and every checkpoint's signature (with the public
/// half of the signing key: the gateway never signs over what it did not write), refuses a bad
/// complete line and an unsigned tail longer than a crash can leave, and sets only an
/// unterminated (torn) last line aside.
///
/// With witnesses configured and a checkpoint one of them cosigned kept beside the log, the
/// entries before that checkpoint are checked against its cosigned tree instead
/// ([`startup`]); then the log's tree at the cosigned size must have the cosigned root whichever
/// way it was read.
///
/// Record histories are kept for decisions made at `remember_since` (Unix seconds) or later.
fn recover(
    cfg: &AuditConfig,
    key: &AuditPublicKey,
    remember_since: i64,
    witnesses: &witnessing::Witnesses,
) -> Result<Recovered, AuditError> {
    let segments =
        segment_paths(&cfg.log).map_err(|e| open_error(&cfg.log, OpenError::ListSegments(e)))?;
    let mut checker = ChainChecker::default();
    let tree_path = tree::HashStore::path_for(&cfg.log);
    let mut tree_error = None;
    let mut last_checkpoint = None;
    let mut histories = Histories::new();
    let mut active_segment = None;
    let mut last_archive = None;
    let mut active_len = 0;
    let mut torn = None;
    let mut report = StartupReport::default();
    let anchor = witnesses.latest_cosigned(key);
    let mut resume = None;
    if let Some(anchor) = &anchor {
        match startup::read_cosigned_prefix(
            &segments,
            &tree_path,
            anchor,
            remember_since,
            &mut histories,
        ) {
            Ok(r) => {
                report.cosigned = Some((anchor.witness.clone(), anchor.size));
                report.entries_hashed = r.entries_hashed;
                report.entries_not_read = anchor.size.saturating_sub(r.entries_hashed);
                active_segment = r.active_segment;
                checker = ChainChecker::resume(r.head.0, r.head.1.clone(), Arc::new(r.tree));
                resume = Some((r.segment_index, r.offset, r.line));
            }
            Err(PrefixError::FullCheck(why)) => {
                tracing::warn!(log = %cfg.log.display(), cosigned_size = anchor.size,
                    witness = %anchor.witness, reason = %why,
                    "audit log: cannot start from the cosigned checkpoint; checking the whole log");
                histories.clear();
                report.full_check_reason = Some(why);
            }
            Err(PrefixError::Altered {
                path,
                line,
                seq,
                problem,
            }) => {
                return Err(open_error(
                    &path,
                    OpenError::NotCosigned { line, seq, problem },
                ))
            }
            Err(PrefixError::Io(path, e)) => return Err(open_error(&path, OpenError::Read(e))),
            Err(PrefixError::Tree(e)) => return Err(open_error(&cfg.log, OpenError::Tree(e))),
        }
    } else if !witnesses.is_empty() {
        report.full_check_reason = Some("no cosigned checkpoint kept beside the log".into());
    }
    for (index, (number, path)) in segments.iter().enumerate() {
        if number.is_some() {
            last_archive = *number;
        }
        let is_active = number.is_none();
        // Segments before the cosigned checkpoint's were read (or left) by `startup`; its own is
        // checked from the checkpoint's line on.
        let (from, from_line) = match resume {
            Some((at, _, _)) if index < at => continue,
            Some((at, offset, line)) if index == at => (offset, line),
            _ => (0, 0),
        };
        let mut first = from == 0;
        let end = scan_file_from(path, from, from_line, |entry, _line, offset| {
            if let (AuditEntryType::Checkpoint, Some(size), Some(note)) =
                (entry.entry_type, entry.tree_size, &entry.note)
            {
                last_checkpoint = Some(witnessing::LoggedCheckpoint {
                    size,
                    note: note.clone(),
                });
            }
            if checker.tree.is_none() {
                // The tree file keeps the hashes of segments no longer beside the log (none when
                // the log starts at seq 0); everything from here on is rebuilt from the entries.
                match tree::HashStore::open_file(&tree_path, entry.seq) {
                    Ok(store) => checker.tree = Some(Arc::new(store)),
                    Err(e) => {
                        tree_error = Some(e);
                        return Err(LinkProblem::TreeUnavailable.at(entry.seq));
                    }
                }
            }
            checker.check(&entry, first, Some(key))?;
            if first && is_active {
                active_segment = entry.segment;
            }
            first = false;
            // The active segment's number is in its segment_start, its first entry; a segment
            // without one is the next after the archives (as the writer numbers it).
            let segment = number
                .or(active_segment)
                .unwrap_or_else(|| last_archive.map_or(1, |n| n + 1));
            history::note_entry(
                &mut histories,
                &entry,
                LinePlace { segment, offset },
                remember_since,
            );
            Ok(())
        })
        .map_err(|e| match (e, tree_error.take()) {
            (_, Some(e)) => open_error(&cfg.log, OpenError::Tree(e)),
            (ScanError::Io { path, source }, None) => open_error(&path, OpenError::Read(source)),
            (ScanError::Chain { path, line, error }, None) => {
                open_error(&path, OpenError::Altered { line, error })
            }
        })?;
        match end {
            ScanEnd { bad: None, len } => {
                if is_active {
                    active_len = len;
                }
            }
            // Only a line that never got its newline is a torn write; a complete line that fails
            // (an edited last entry or checkpoint) is an alteration like any other.
            ScanEnd {
                bad: Some((bad, true)),
                len,
            } if is_active && bad.unterminated => {
                let side = set_aside_torn_tail(path, bad.offset, len)?;
                tracing::warn!(
                    log = %path.display(),
                    line = bad.line,
                    bytes = len - bad.offset,
                    side_file = %side.display(),
                    reason = %bad.error,
                    "audit log: torn last line (crash mid-write) set aside; the chain continues from the last good entry"
                );
                active_len = bad.offset;
                torn = Some((len - bad.offset, side));
            }
            ScanEnd {
                bad: Some((bad, _)),
                ..
            } => {
                let seq = bad
                    .seq
                    // The one after the last good entry (saturating: a forged chain can end at
                    // u64::MAX).
                    .or_else(|| checker.head().map(|(s, _)| s.saturating_add(1)))
                    .unwrap_or(0);
                return Err(open_error(
                    path,
                    OpenError::Corrupt {
                        seq,
                        line: bad.line,
                        error: bad.error,
                    },
                ));
            }
        }
    }
    // A new log is signed from its first entry on (see `open`): without any checkpoint, only
    // what a crash during that very first write can leave is acceptable.
    let most = if checker.last_checkpoint.is_some() {
        crash_tail_bound(cfg)
    } else {
        2
    };
    if checker.unsigned > most {
        return Err(open_error(
            &cfg.log,
            OpenError::UnsignedTail {
                unsigned: checker.unsigned,
                last_checkpoint: checker.last_checkpoint,
                most,
            },
        ));
    }
    if checker.head().is_some() && !checker.closed && torn.is_none() {
        tracing::warn!(
            log = %cfg.log.display(),
            unsigned = checker.unsigned,
            "audit log: the previous run did not end with a closing checkpoint (crash or kill); the chain continues and the next checkpoint covers its tail"
        );
    }
    let tree = match checker.tree.take() {
        Some(t) => t,
        // An empty log: a fresh tree.
        None => Arc::new(
            tree::HashStore::open_file(&tree_path, 0)
                .map_err(|e| open_error(&cfg.log, OpenError::Tree(e)))?,
        ),
    };
    if let Err(e) = tree.flush() {
        return Err(open_error(&cfg.log, OpenError::Tree(e)));
    }
    if let (Some(anchor), None) = (&anchor, resume) {
        // Read whole: its tree at the cosigned size must still be the cosigned one. (A log
        // holding fewer entries was cut back: the start's witness round names the witness.)
        if tree.leaves() >= anchor.size {
            let root = tree
                .root(anchor.size)
                .map_err(|e| open_error(&cfg.log, OpenError::Tree(e)))?;
            if root != anchor.root {
                return Err(open_error(
                    &cfg.log,
                    OpenError::NotCosigned {
                        line: 0,
                        seq: None,
                        problem: format!(
                            "the log's first {} entries are not the tree {} cosigned: the log was rewritten",
                            anchor.size, anchor.witness
                        ),
                    },
                ));
            }
        }
    }
    report.entries_checked = checker.entries;
    Ok(Recovered {
        report,
        tree,
        last_checkpoint,
        head: checker.head().map(|(s, h)| (s, h.to_string())),
        unsigned: checker.unsigned,
        active_segment,
        last_archive,
        active_len,
        histories,
        torn,
    })
}

/// Moves bytes `[offset, len)` of the active segment to `<log>.torn-<UTC time>` and truncates.
fn set_aside_torn_tail(path: &Path, offset: u64, len: u64) -> Result<PathBuf, AuditError> {
    let io = |step: &str, source: io::Error| {
        open_error(
            path,
            OpenError::TornTail {
                step: step.to_string(),
                source,
            },
        )
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io("open", e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| io("seek", e))?;
    let mut torn = Vec::with_capacity((len - offset) as usize);
    file.read_to_end(&mut torn).map_err(|e| io("read", e))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".torn-{stamp}"));
    let side = path.with_file_name(name);
    let mut side_file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&side)
        .map_err(|e| io(&format!("create {}", side.display()), e))?;
    side_file
        .write_all(&torn)
        .map_err(|e| io("write side file", e))?;
    side_file.sync_all().map_err(|e| io("fsync side file", e))?;
    // The torn bytes are safe in the side file before they leave the log.
    file.set_len(offset).map_err(|e| io("truncate", e))?;
    file.sync_all().map_err(|e| io("fsync", e))?;
    sync_dir(path).map_err(|e| io("fsync folder", e))?;
    Ok(side)
}

impl AuditLog {
    /// Opens (or creates) the log, recovers a torn tail, and starts the writer.
    pub fn open(cfg: &AuditConfig) -> Result<AuditLog, AuditError> {
        Self::open_remembering(cfg, i64::MIN)
    }

    /// [`AuditLog::open`], keeping the histories of records decided at `since` (Unix seconds)
    /// or later only ([`AuditLog::record_histories`]): the replay memory forgets older ones
    /// anyway, and a log of months would otherwise hold them all in memory while it is read.
    pub fn open_remembering(cfg: &AuditConfig, since: i64) -> Result<AuditLog, AuditError> {
        let signer = Arc::new(
            AuditSigner::from_pem_file(&cfg.signing_key)
                .map_err(|e| open_error(&cfg.signing_key, OpenError::SigningKey(e)))?,
        );
        if let Some(dir) = cfg.log.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The log names senders and what was decided about them: readable by the gateway's
            // user only, whatever the umask (0700 for folders it creates, 0600 for files).
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| {
                    open_error(
                        &cfg.log,
                        OpenError::CreateFolder {
                            dir: dir.to_path_buf(),
                            source,
                        },
                    )
                })?;
        }
        let witnesses = Arc::new(
            witnessing::Witnesses::load(&cfg.witnesses, cfg.witness_max_lag_entries, &cfg.log)
                .map_err(|e| open_error(&cfg.log, OpenError::Witness(e)))?,
        );
        let rec = recover(cfg, &signer.public_key(), since, &witnesses)?;
        let checkpoints = tokio::sync::watch::Sender::new(rec.last_checkpoint.clone());
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&cfg.log)
            .map_err(|e| open_error(&cfg.log, OpenError::OpenForAppend(e)))?;
        let (next_seq, head_hash) = match &rec.head {
            Some((seq, hash)) => {
                // A log whose last entry claims the largest sequence (a forged line can: its
                // hash is no secret) cannot be continued. (Recovery refuses a log starting past
                // tree::MAX_KEPT_LEAVES already; this keeps the sum honest on its own.)
                let next = seq
                    .checked_add(1)
                    .ok_or_else(|| open_error(&cfg.log, OpenError::SequenceExhausted(*seq)))?;
                (next, hash.clone())
            }
            None => (0, ZERO_HASH.to_string()),
        };
        let needs_start = rec.active_len == 0;
        let segment = match (needs_start, rec.active_segment) {
            (false, Some(n)) => n,
            _ => rec.last_archive.map(|n| n + 1).unwrap_or(1),
        };
        let failure = Arc::new(Mutex::new(None));
        let stats = Arc::new(StatsCells::default());
        // What recovery read is on disk.
        let durable = tokio::sync::watch::Sender::new(next_seq);
        let mut writer = Writer::new(
            cfg,
            file,
            ChainHead {
                next_seq,
                head_hash,
                unsigned: rec.unsigned,
                segment,
                segment_bytes: rec.active_len,
            },
            signer.clone(),
            writer::Sealing {
                tree: rec.tree.clone(),
                announce: checkpoints.clone(),
                durable: durable.clone(),
            },
            failure.clone(),
            stats.clone(),
        );
        // Entries owed by the start itself, made durable before anyone can append.
        let mut buf = Vec::new();
        if needs_start {
            let start = writer.segment_start_entry(segment);
            writer
                .push(start, &mut buf)
                .map_err(|m| open_error(&cfg.log, m))?;
            if rec.head.is_none() {
                // A new log gets a signed checkpoint over its first entry at once: a log that
                // has entries and no checkpoint at all is then never one this gateway wrote.
                let first = writer
                    .checkpoint_entry(false)
                    .map_err(|m| open_error(&cfg.log, m))?;
                writer
                    .push(first, &mut buf)
                    .map_err(|m| open_error(&cfg.log, m))?;
            }
        }
        if let Some((bytes, side)) = &rec.torn {
            let mut e = AuditEntry::new(
                0,
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                AuditEntryType::Recovery,
                String::new(),
            );
            e.torn_bytes = Some(*bytes);
            e.side_file = side.file_name().map(|n| n.to_string_lossy().into_owned());
            writer
                .push(e, &mut buf)
                .map_err(|m| open_error(&cfg.log, m))?;
        }
        if !buf.is_empty() {
            writer
                .commit(&buf, true)
                .map_err(|m| open_error(&cfg.log, m))?;
            if needs_start {
                sync_dir(&cfg.log).map_err(|e| open_error(&cfg.log, OpenError::SyncFolder(e)))?;
            }
        }
        let records = rec.histories.len();
        let report = rec.report;
        tracing::info!(
            log = %cfg.log.display(),
            next_seq,
            key_id = signer.key_id(),
            records,
            startup = %report,
            "audit log open"
        );
        let log = Self::start(writer, rec.histories, witnesses, checkpoints, report)
            .map_err(|e| open_error(&cfg.log, OpenError::WriterThread(e)))?;
        Ok(log)
    }

    /// Starts the writer thread and returns the handle that talks to it.
    fn start(
        writer: Writer,
        histories: Histories,
        witnesses: Arc<witnessing::Witnesses>,
        checkpoints: tokio::sync::watch::Sender<Option<witnessing::LoggedCheckpoint>>,
        startup: StartupReport,
    ) -> io::Result<AuditLog> {
        let (tx, rx) = mpsc::channel();
        let inner = Inner {
            log: writer.log.clone(),
            tx,
            signer: writer.signer.clone(),
            tree: writer.tree.clone(),
            witnesses,
            checkpoints,
            failure: writer.failure.clone(),
            stats: writer.stats.clone(),
            queued: writer.queued.clone(),
            max_queue: writer.max_queue,
            histories: Mutex::new(histories),
            startup,
            closed: AtomicBool::new(false),
            durable: writer.durable(),
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(AuditLog {
            inner: Arc::new(inner),
        })
    }

    /// What the start checked: the whole log, or only what follows the latest cosigned
    /// checkpoint (and how many entries before it were hashed, or not read).
    pub fn startup_report(&self) -> &StartupReport {
        &self.inner.startup
    }

    /// The sequence below which every entry is durable (changes as batches are committed).
    pub fn durable_seq(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.durable.clone()
    }

    /// Appends one entry; resolves once it is durable under the configured fsync policy.
    /// Refused with [`AuditError::Busy`] when `audit.max_queue` entries already wait for the
    /// writer: a burst larger than the disk can take is answered at once instead of queueing
    /// without bound in memory.
    pub async fn append(&self, event: AuditEvent) -> Result<Appended, AuditError> {
        self.health().map_err(AuditError::Unavailable)?;
        let queued = self.inner.queued.fetch_add(1, Ordering::AcqRel);
        if queued >= self.inner.max_queue {
            self.inner.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(AuditError::Busy { queued });
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self
            .inner
            .tx
            .send(Command::Append(Box::new(event), reply))
            .is_err()
        {
            self.inner.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(AuditError::Unavailable(Unavailable::Closed));
        }
        answer
            .await
            .map_err(|_| AuditError::Unavailable(Unavailable::WriterStopped))?
    }

    /// Queues an entry without waiting for it to become durable: the writer puts it in the chain
    /// in order and makes it durable with its batch. For entries whose durability nothing waits
    /// on, such as the outcome of a record already forwarded under a durable decision entry:
    /// the sender's answer is not held back by a second fsync. A crash before that batch's fsync
    /// can lose such an entry; the decision entry before it is already on disk.
    pub fn append_in_background(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.health().map_err(AuditError::Unavailable)?;
        // Nobody awaits the reply; the writer ignores a dropped receiver. Counted in the queue
        // but never refused by its bound: this entry completes a decision already durable.
        let (reply, _) = tokio::sync::oneshot::channel();
        self.inner.queued.fetch_add(1, Ordering::AcqRel);
        self.inner
            .tx
            .send(Command::Append(Box::new(event), reply))
            .map_err(|_| {
                self.inner.queued.fetch_sub(1, Ordering::AcqRel);
                AuditError::Unavailable(Unavailable::Closed)
            })
    }

    /// The receipt for an appended entry: the inclusion proof of its leaf in the tree its batch
    /// left, whose checkpoint the writer signed once for the whole batch.
    pub fn receipt(&self, appended: &Appended) -> Result<Receipt, AuditError> {
        let tree = &self.inner.tree;
        let head = match &appended.head {
            Some(h) => h.clone(),
            None => {
                // Not committed through the writer's batches (should not happen): sign now.
                let size = tree.leaves();
                let root = tree.root(size).map_err(tree_failure)?;
                Arc::new(BatchHead::new(size, root))
            }
        };
        let proof = tree
            .inclusion_proof(head.size, appended.seq)
            .map_err(tree_failure)?;
        Ok(Receipt {
            facts: appended.facts.clone(),
            tree_size: head.size,
            inclusion: proof.iter().map(tree::hash_to_b64).collect(),
            checkpoint: head.note(&self.inner.signer).to_owned(),
            key_id: self.inner.signer.key_id().to_string(),
            entry: None,
        })
    }

    /// [`AuditLog::receipt`] carrying the entry's line as written, so that the whole entry can
    /// be checked offline, not only the facts its leaf binds (see `docs/audit.md`, "Proof of
    /// delivery").
    pub fn receipt_with_entry(&self, appended: &Appended) -> Result<Receipt, AuditError> {
        let mut receipt = self.receipt(appended)?;
        receipt.entry = appended.line.as_deref().map(str::to_owned);
        Ok(receipt)
    }

    /// What the log said at open about each record id decided by policy (its body hash, where
    /// its decision and outcome entries are, whether it was delivered): the replay memory keeps
    /// those still within the records' `created_at` window.
    ///
    /// Handed over, not copied: the map can be large, so the first call takes it and later calls
    /// get an empty one.
    pub fn record_histories(&self) -> Histories {
        match self.inner.histories.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    /// Reads back the entry `at` names (its line exactly as written, without its newline),
    /// checking its hash and that it is the entry of that sequence. Blocking file I/O: one
    /// positioned read of the line.
    ///
    /// The entry is looked for in its archived segment first (archives do not change), then in
    /// the active one, then in the archive again (the active segment may have been archived
    /// meanwhile).
    pub fn read_entry(&self, at: &LoggedEntry) -> Result<(AuditEntry, String), ReadEntryError> {
        let archive = chain::archive_path(&self.inner.log, u64::from(at.segment));
        let mut last = None;
        for path in [&archive, &self.inner.log, &archive] {
            match read_line_at(path, at.offset) {
                Ok(line) => match entry::open_line(&line) {
                    Ok(e) if e.seq == at.seq => {
                        let text = String::from_utf8(line).map_err(|_| ReadEntryError::NotUtf8)?;
                        return Ok((e, text));
                    }
                    Ok(e) => last = Some(ReadEntryError::OtherEntry { found: e.seq }),
                    Err((e, _)) => last = Some(ReadEntryError::Line(e)),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => last = Some(ReadEntryError::Io(e)),
            }
        }
        Err(last.unwrap_or(ReadEntryError::Missing {
            segment: u64::from(at.segment),
        }))
    }

    /// A receipt for the entry with these facts, proving its inclusion in the log's tree of
    /// `tree_size` entries under a checkpoint note signed now. Ed25519 signatures are
    /// deterministic, so for the tree size of the first receipt this is that receipt again, byte
    /// for byte. `line` is the entry's line, for a receipt that carries it.
    pub fn receipt_for(
        &self,
        facts: tree::ReceiptFacts,
        tree_size: u64,
        line: Option<String>,
    ) -> Result<Receipt, AuditError> {
        let tree = &self.inner.tree;
        let size = tree_size.min(tree.leaves());
        let root = tree.root(size).map_err(tree_failure)?;
        let proof = tree
            .inclusion_proof(size, facts.audit_seq)
            .map_err(tree_failure)?;
        Ok(Receipt {
            facts,
            tree_size: size,
            inclusion: proof.iter().map(tree::hash_to_b64).collect(),
            checkpoint: note::sign_checkpoint(&self.inner.signer, size, root),
            key_id: self.inner.signer.key_id().to_string(),
            entry: line,
        })
    }

    /// `Err(reason)` once the log has failed; the gateway then refuses to forward.
    pub fn health(&self) -> Result<(), Unavailable> {
        if let Some(reason) = self.inner.failure.lock().ok().and_then(|f| f.clone()) {
            return Err(Unavailable::Failed(reason));
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Unavailable::Closed);
        }
        if let Some(d) = self.inner.witnesses.diverged() {
            return Err(Unavailable::WitnessDiverged(d));
        }
        if let Some((witness, lag)) = self.inner.witnesses.over_lag(self.inner.tree.leaves()) {
            return Err(Unavailable::WitnessLag {
                witness,
                lag,
                max: self.inner.witnesses.max_lag().unwrap_or(0),
            });
        }
        Ok(())
    }

    /// Asks every witness to cosign the latest checkpoint, once. `Ok(true)` when all have;
    /// `Err` when one says the log is not the one it cosigned.
    pub async fn witness_round(&self) -> Result<bool, witnessing::Divergence> {
        let latest = self.inner.checkpoints.borrow().clone();
        match latest {
            Some(cp) if !self.inner.witnesses.is_empty() => {
                self.inner.witnesses.round(&cp, &self.inner.tree).await
            }
            _ => Ok(true),
        }
    }

    /// Starts the background task that has every new checkpoint cosigned, until `stop`.
    pub fn start_witnessing(
        &self,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if self.inner.witnesses.is_empty() {
            return None;
        }
        Some(tokio::spawn(witnessing::follow(
            self.inner.witnesses.clone(),
            self.inner.tree.clone(),
            self.inner.checkpoints.subscribe(),
            stop,
        )))
    }

    /// Each witness's state (for `/readyz` and `/metrics`).
    pub fn witness_status(&self) -> Vec<witnessing::WitnessStatus> {
        self.inner.witnesses.status(self.inner.tree.leaves())
    }

    /// Writes a final signed checkpoint and stops the writer.
    pub async fn close(&self) -> Result<(), AuditError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inner
            .tx
            .send(Command::Close(reply))
            .map_err(|_| AuditError::Unavailable(Unavailable::WriterStopped))?;
        answer
            .await
            .map_err(|_| AuditError::Unavailable(Unavailable::WriterStopped))?
    }

    /// The public key auditors and senders check signatures with (PEM `PUBLIC KEY`).
    pub fn public_key_pem(&self) -> String {
        self.inner.signer.public_key().to_pem()
    }

    pub fn public_key(&self) -> AuditPublicKey {
        self.inner.signer.public_key()
    }

    pub fn key_id(&self) -> &str {
        self.inner.signer.key_id()
    }

    /// The active segment's path.
    pub fn path(&self) -> &Path {
        &self.inner.log
    }

    /// Counters and histograms for `/metrics`.
    pub fn stats(&self) -> AuditStats {
        let s = &self.inner.stats;
        let cumulative = |bounds: &[f64], cells: &[std::sync::atomic::AtomicU64]| {
            let mut acc = 0;
            bounds
                .iter()
                .zip(cells)
                .map(|(b, c)| {
                    acc += c.load(Ordering::Relaxed);
                    (*b, acc)
                })
                .collect::<Vec<_>>()
        };
        AuditStats {
            entries: s.entries.load(Ordering::Relaxed),
            checkpoints: s.checkpoints.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            batch_entries_sum: s.batch_entries_sum.load(Ordering::Relaxed),
            batch_size_buckets: cumulative(&BATCH_BUCKETS, &s.batch_buckets),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            fsync_seconds_sum: s.fsync_nanos_sum.load(Ordering::Relaxed) as f64 / 1e9,
            fsync_seconds_buckets: cumulative(&FSYNC_BUCKETS, &s.fsync_buckets),
            rotations: s.rotations.load(Ordering::Relaxed),
            rotation_failures: s.rotation_failures.load(Ordering::Relaxed),
            failed: self
                .inner
                .failure
                .lock()
                .map(|f| f.is_some())
                .unwrap_or(true),
            queued: self.inner.queued.load(Ordering::Acquire),
        }
    }
}

/// Why an entry could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadEntryError {
    #[error("segment {segment} is not beside the log")]
    Missing { segment: u64 },
    #[error("cannot read the entry: {0}")]
    Io(#[source] io::Error),
    #[error("the line there is not a valid entry: {0}")]
    Line(#[source] LineError),
    #[error("the line there is entry seq {found}, not the one wanted")]
    OtherEntry { found: u64 },
    #[error("the line is not UTF-8")]
    NotUtf8,
}

/// The line starting at byte `offset` of `path`, without its newline, up to the longest line a
/// log may have.
fn read_line_at(path: &Path, offset: u64) -> io::Result<Vec<u8>> {
    use std::io::BufRead;
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = io::BufReader::with_capacity(8 * 1024, file);
    let mut line = Vec::with_capacity(2 * 1024);
    reader
        .by_ref()
        .take(chain::MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if line.pop() != Some(b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no complete line at that offset",
        ));
    }
    Ok(line)
}

fn tree_failure(e: tree::TreeError) -> AuditError {
    AuditError::Unavailable(Unavailable::Failed(Arc::new(WriteError::Tree(e))))
}

/// Why a receipt does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt signed by key {receipt}, not by the given public key {given}")]
    WrongKey { receipt: String, given: String },
    #[error("bad receipt signature: the receipt was altered or not issued by this gateway")]
    BadSignature,
    #[error("the log has no entry seq {0}")]
    NotInLog(u64),
    #[error("the log's entry seq {seq} does not match the receipt: {what}")]
    Mismatch { seq: u64, what: String },
    #[error("cannot read the log: {0}")]
    Log(String),
    #[error("{0}")]
    Rewritten(String),
}

/// Checks a receipt's signature with the gateway's public key.
pub fn verify_receipt(receipt: &Receipt, key: &AuditPublicKey) -> Result<(), ReceiptError> {
    if receipt.key_id != key.key_id() {
        return Err(ReceiptError::WrongKey {
            receipt: receipt.key_id.clone(),
            given: key.key_id().to_string(),
        });
    }
    let head =
        note::open_checkpoint(&receipt.checkpoint, key).map_err(|_| ReceiptError::BadSignature)?;
    if head.size != receipt.tree_size {
        return Err(ReceiptError::BadSignature);
    }
    let proof: Option<Vec<_>> = receipt
        .inclusion
        .iter()
        .map(|h| tree::hash_from_b64(h))
        .collect();
    let Some(proof) = proof else {
        return Err(ReceiptError::BadSignature);
    };
    let leaf = receipt.facts.leaf_hash();
    if !tree::check_inclusion(&proof, head.size, head.root, receipt.facts.audit_seq, leaf) {
        return Err(ReceiptError::BadSignature);
    }
    Ok(())
}

/// Checks that the log holds the entry a receipt names, stating the same facts (hash, record id,
/// decision, status, body hash, policy version), and, when the log is whole from seq 0, that its
/// tree at the receipt's size has the root the receipt's checkpoint signed: a log cut back and
/// continued, or rewritten, since the receipt was given fails here even where every later
/// checkpoint was signed again.
pub fn find_receipt_entry(
    receipt: &Receipt,
    paths: &[PathBuf],
    key: &AuditPublicKey,
) -> Result<(), ReceiptError> {
    let wanted = receipt.facts.audit_seq;
    let mut found = None;
    let tree = chain::scan_log(paths, |e, _, _| {
        if e.seq == wanted {
            found = Some(e.clone());
        }
    })
    .map_err(ReceiptError::Log)?
    .tree;
    let entry = found.ok_or(ReceiptError::NotInLog(wanted))?;
    let differences = receipt.facts.differences(&entry);
    if !differences.is_empty() {
        return Err(ReceiptError::Mismatch {
            seq: entry.seq,
            what: differences.join("; "),
        });
    }
    if let Some(t) = tree {
        let head = note::open_checkpoint(&receipt.checkpoint, key)
            .map_err(|_| ReceiptError::BadSignature)?;
        if t.leaves() < head.size {
            return Err(ReceiptError::Rewritten(format!(
                "the log holds {} entries, fewer than the {} of the tree the receipt was given: it was cut",
                t.leaves(),
                head.size
            )));
        }
        let root = t
            .root(head.size)
            .map_err(|e| ReceiptError::Log(e.to_string()))?;
        if root != head.root {
            return Err(ReceiptError::Rewritten(format!(
                "the log's first {} entries are not the tree the receipt's checkpoint signed: the log was rewritten since",
                head.size
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FsyncPolicy;

    /// A log whose writer appends to `/dev/full`, where every write fails as on a full disk.
    #[cfg(target_os = "linux")]
    fn log_on_a_full_disk(dir: &Path) -> AuditLog {
        let (private_pem, _) = generate_signing_key().unwrap();
        let cfg = AuditConfig {
            log: PathBuf::from("/dev/full"),
            signing_key: dir.join("unused.key"),
            fsync: FsyncPolicy::Always,
            fsync_interval: writer::FSYNC_INTERVAL,
            checkpoint_every_entries: 1000,
            checkpoint_interval: std::time::Duration::from_secs(3600),
            segment_max_bytes: u64::MAX,
            max_batch: 16,
            max_queue: 16 * 1024,
            witnesses: Vec::new(),
            witness_max_lag_entries: None,
        };
        let file = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let signer = Arc::new(AuditSigner::from_pem(private_pem.as_bytes(), "test").unwrap());
        let head = ChainHead {
            next_seq: 0,
            head_hash: ZERO_HASH.to_string(),
            unsigned: 0,
            segment: 1,
            segment_bytes: 0,
        };
        let writer = Writer::new(
            &cfg,
            file,
            head,
            signer,
            writer::Sealing {
                tree: Arc::new(tree::HashStore::in_memory()),
                announce: tokio::sync::watch::Sender::new(None),
                durable: tokio::sync::watch::Sender::new(0),
            },
            Arc::new(Mutex::new(None)),
            Arc::new(StatsCells::default()),
        );
        let witnesses =
            Arc::new(witnessing::Witnesses::load(&[], None, Path::new("/dev/full")).unwrap());
        AuditLog::start(
            writer,
            Histories::new(),
            witnesses,
            tokio::sync::watch::Sender::new(None),
            StartupReport::default(),
        )
        .unwrap()
    }

    /// A log can be forged to start at seq u64::MAX (a line's hash is no secret): the start
    /// refuses it rather than overflow the tree's size (a panic in a debug build, and in a
    /// release build a tree file cut to a wrapped size).
    #[tokio::test]
    async fn a_log_starting_past_the_largest_sequence_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (private_pem, _) = generate_signing_key().unwrap();
        let key = dir.path().join("audit-signing.key");
        crate::key_file::write_private(&key, private_pem.as_bytes()).unwrap();
        let cfg = AuditConfig {
            log: dir.path().join("audit.jsonl"),
            signing_key: key,
            fsync: FsyncPolicy::Never,
            fsync_interval: writer::FSYNC_INTERVAL,
            checkpoint_every_entries: 1000,
            checkpoint_interval: std::time::Duration::from_secs(3600),
            segment_max_bytes: 1 << 20,
            max_batch: 16,
            max_queue: 1024,
            witnesses: Vec::new(),
            witness_max_lag_entries: None,
        };
        let mut start = AuditEntry::new(
            u64::MAX,
            "2026-01-01T00:00:00Z".into(),
            AuditEntryType::SegmentStart,
            ZERO_HASH.into(),
        );
        std::fs::write(&cfg.log, entry::seal(&mut start).unwrap()).unwrap();

        let err = AuditLog::open(&cfg).err().expect("open must fail");
        assert!(
            err.to_string()
                .contains("past the most a log can hold (281474976710656)"),
            "{err}"
        );
        // The tree file is left as it was, not cut to a size computed from the forged sequence.
        let tree_file = tree::HashStore::path_for(&cfg.log);
        assert_eq!(
            std::fs::metadata(&tree_file).map(|m| m.len()).unwrap_or(0),
            0
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_full_disk_is_reported_as_such_and_the_log_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        // What the operating system answers for a full disk, whatever std calls that kind.
        let disk_full = OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .and_then(|mut f| f.write_all(b"x"))
            .unwrap_err()
            .kind();
        let log = log_on_a_full_disk(dir.path());
        let event = AuditEvent {
            record_id: Some("rec-full".into()),
            decision: "allow".into(),
            ..AuditEvent::default()
        };

        let err = log.append(event.clone()).await.unwrap_err();
        assert!(
            matches!(err, AuditError::Unavailable(Unavailable::Failed(_))),
            "{err:?}"
        );
        assert_eq!(err.io_kind(), Some(disk_full), "{err}");
        assert!(err.to_string().contains("cannot write /dev/full"), "{err}");

        // Sticky, and the kind is still there for whoever asks later (/readyz, the next record).
        let health = log.health().unwrap_err();
        assert_eq!(health.io_kind(), Some(disk_full));
        let again = log.append(event).await.unwrap_err();
        assert_eq!(again.io_kind(), Some(disk_full));
        assert!(log.stats().failed);
    }
}
