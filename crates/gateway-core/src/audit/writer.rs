//! The writer: one OS thread owns the active segment file. Requests queue on a channel; the writer
//! takes everything queued (up to `max_batch`), chains it, writes it with one `write`, fsyncs once
//! and only then answers every waiter (group commit). Checkpoints, rotation and the sticky
//! failure state live here too.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::chain::archive_path;
use super::entry::{seal, AuditEntry, AuditEntryType};
use super::history::LinePlace;
use super::keys::AuditSigner;
use super::note::sign_checkpoint;
use super::tree::{hash_to_b64, HashStore, ReceiptFacts, TreeError};
use super::witnessing::LoggedCheckpoint;
use super::{Appended, AuditError, AuditEvent, BatchHead, EntryType, Unavailable};
use crate::config::{AuditConfig, FsyncPolicy};

/// Tree hashes (32 bytes each, about two per entry) gathered before they are written to the tree
/// file: 64 KiB per write.
const TREE_WRITE_HASHES: u64 = 2048;

/// With `fsync = "interval"`: the longest a written batch waits for its fsync. (Not yet a config
/// key; see docs/audit.md.)
/// Default for `audit.fsync_interval_ms` under the `interval` policy.
pub const FSYNC_INTERVAL: Duration = Duration::from_millis(200);

/// What the gateway asks of the writer.
pub(crate) enum Command {
    Append(
        Box<AuditEvent>,
        oneshot::Sender<Result<Appended, AuditError>>,
    ),
    Close(oneshot::Sender<Result<(), AuditError>>),
}

/// Why the writer could not make entries durable. The `io::Error` stays attached as the source,
/// so a caller can tell a full disk (`ErrorKind::StorageFull`) from a permission problem or a
/// failing device; the message names the file as before.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot serialise entry: {0}")]
    Serialise(#[source] serde_json::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot fsync {}: {source}", path.display())]
    Fsync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rotate {}: {} already exists", log.display(), archive.display())]
    ArchiveExists { log: PathBuf, archive: PathBuf },
    #[error("cannot rotate {} to {}: {source}", log.display(), archive.display())]
    Rotate {
        log: PathBuf,
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Tree(#[source] TreeError),
    #[error("cannot fsync the folder of {}: {source}", path.display())]
    SyncDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl WriteError {
    /// The operating system's reason, when the failure was I/O.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            WriteError::Write { source, .. }
            | WriteError::Fsync { source, .. }
            | WriteError::Rotate { source, .. }
            | WriteError::Create { source, .. }
            | WriteError::SyncDir { source, .. } => Some(source.kind()),
            WriteError::Tree(TreeError::Io { source, .. }) => Some(source.kind()),
            WriteError::Serialise(_) | WriteError::ArchiveExists { .. } | WriteError::Tree(_) => {
                None
            }
        }
    }
}

/// Upper bounds (seconds) of the fsync latency histogram.
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Upper bounds of the batch size histogram.
pub const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Counters the writer keeps for metrics; read through [`super::AuditLog::stats`].
#[derive(Debug, Default)]
pub(crate) struct StatsCells {
    pub entries: AtomicU64,
    pub checkpoints: AtomicU64,
    pub batches: AtomicU64,
    pub batch_entries_sum: AtomicU64,
    pub batch_buckets: [AtomicU64; BATCH_BUCKETS.len()],
    pub fsyncs: AtomicU64,
    pub fsync_nanos_sum: AtomicU64,
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len()],
    pub rotations: AtomicU64,
    pub rotation_failures: AtomicU64,
}

impl StatsCells {
    fn observe_fsync(&self, d: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos_sum
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        let secs = d.as_secs_f64();
        if let Some(i) = FSYNC_BUCKETS.iter().position(|b| secs <= *b) {
            self.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn observe_batch(&self, n: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_entries_sum
            .fetch_add(n as u64, Ordering::Relaxed);
        if let Some(i) = BATCH_BUCKETS.iter().position(|b| n as f64 <= *b) {
            self.batch_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the chain stands; owned by the writer thread.
pub(crate) struct ChainHead {
    pub next_seq: u64,
    pub head_hash: String,
    pub unsigned: u64,
    /// Number of the active segment (its archive name once rotated).
    pub segment: u64,
    pub segment_bytes: u64,
}

/// What the writer seals the log with beyond the chain: the tree, and where it announces each
/// checkpoint it commits.
pub(crate) struct Sealing {
    pub tree: Arc<HashStore>,
    pub announce: tokio::sync::watch::Sender<Option<LoggedCheckpoint>>,
    /// The sequence below which every entry is durable under the fsync policy (what may be
    /// copied elsewhere: the cluster's shipping).
    pub durable: tokio::sync::watch::Sender<u64>,
}

pub(crate) struct Writer {
    pub log: PathBuf,
    pub file: File,
    pub head: ChainHead,
    pub signer: Arc<AuditSigner>,
    /// The log's Merkle tree, shared with the handle (receipts read proofs from it).
    pub tree: Arc<HashStore>,
    /// Where committed checkpoints are announced (witnesses are asked to cosign them).
    announce: tokio::sync::watch::Sender<Option<LoggedCheckpoint>>,
    /// A checkpoint pushed and not yet committed.
    unannounced: Option<LoggedCheckpoint>,
    durable: tokio::sync::watch::Sender<u64>,
    pub fsync: FsyncPolicy,
    /// Longest a written entry waits for its fsync under `FsyncPolicy::Interval`.
    pub fsync_interval: Duration,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub segment_max_bytes: u64,
    pub max_batch: usize,
    /// Most entries waiting for the writer before appends are refused (`audit.max_queue`).
    pub max_queue: usize,
    /// The first failure; from then on every append is refused (sticky).
    pub failure: Arc<Mutex<Option<Arc<WriteError>>>>,
    pub stats: Arc<StatsCells>,
    /// Entries sent to the writer and not yet taken from its channel (see `AuditLog::append`).
    pub queued: Arc<AtomicUsize>,
    last_checkpoint: Instant,
    /// Written but not yet fsynced (fsync = interval).
    dirty_since: Option<Instant>,
    /// After a failed rotation: not tried again before this.
    rotate_after: Option<Instant>,
}

/// How long a failed rotation is waited out before the next try.
const ROTATION_RETRY: Duration = Duration::from_secs(1);

/// Why a rotation did not happen.
enum RotateError {
    /// Nothing was changed (or it was put back): the active segment stays the one written to.
    Deferred(WriteError),
    /// Writing to the log itself failed: the log fails as any failed write does.
    Log(WriteError),
}

/// Where the next segment is created before it takes the log's name.
fn next_segment_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    log.with_file_name(name)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Makes a created or renamed file's directory entry durable.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    open_folder(path)?.sync_all()
}

/// The folder `path` is in, opened (to fsync it).
fn open_folder(path: &Path) -> std::io::Result<File> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir),
        _ => File::open("."),
    }
}

impl Writer {
    /// Where the durable sequence is published.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }

    pub fn new(
        cfg: &AuditConfig,
        file: File,
        head: ChainHead,
        signer: Arc<AuditSigner>,
        sealing: Sealing,
        failure: Arc<Mutex<Option<Arc<WriteError>>>>,
        stats: Arc<StatsCells>,
    ) -> Self {
        Writer {
            log: cfg.log.clone(),
            file,
            head,
            signer,
            tree: sealing.tree,
            announce: sealing.announce,
            unannounced: None,
            durable: sealing.durable,
            fsync: cfg.fsync,
            fsync_interval: cfg.fsync_interval,
            checkpoint_every: cfg.checkpoint_every_entries.max(1),
            checkpoint_interval: cfg.checkpoint_interval,
            segment_max_bytes: cfg.segment_max_bytes,
            max_batch: cfg.max_batch.max(1),
            max_queue: cfg.max_queue.max(1),
            failure,
            stats,
            queued: Arc::new(AtomicUsize::new(0)),
            last_checkpoint: Instant::now(),
            dirty_since: None,
            rotate_after: None,
        }
    }

    /// Chains `entry` (seq, prev_hash) and appends its line to `buf`.
    pub fn push(
        &mut self,
        mut entry: AuditEntry,
        buf: &mut Vec<u8>,
    ) -> Result<Appended, WriteError> {
        entry.seq = self.head.next_seq;
        entry.prev_hash = std::mem::take(&mut self.head.head_hash);
        let line = match seal(&mut entry) {
            Ok(l) => l,
            Err(e) => {
                self.head.head_hash = entry.prev_hash;
                return Err(WriteError::Serialise(e));
            }
        };
        let facts = ReceiptFacts::of(&entry);
        // `buf` is written at the end of the segment by the next commit.
        let place = LinePlace {
            segment: self.head.segment,
            offset: self.head.segment_bytes + buf.len() as u64,
        };
        if let Err(e) = self.tree.append(facts.leaf_hash()) {
            self.head.head_hash = entry.prev_hash;
            return Err(WriteError::Tree(e));
        }
        buf.extend_from_slice(&line);
        self.head.next_seq += 1;
        self.head.head_hash = entry.hash.clone();
        if entry.entry_type == AuditEntryType::Checkpoint {
            if let (Some(size), Some(note)) = (entry.tree_size, &entry.note) {
                self.unannounced = Some(LoggedCheckpoint {
                    size,
                    note: note.clone(),
                });
            }
            self.head.unsigned = 0;
            self.last_checkpoint = Instant::now();
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        } else {
            self.head.unsigned += 1;
        }
        // serde_json writes UTF-8; the line without its newline is what `open_line` checks.
        let text = std::str::from_utf8(line.strip_suffix(b"\n").unwrap_or(&line)).ok();
        Ok(Appended {
            seq: entry.seq,
            hash: entry.hash,
            facts,
            head: None,
            line: text.map(Arc::from),
            place: Some(place),
        })
    }

    /// A checkpoint over everything written so far: the chain head signed as before, and the
    /// tree (size, root) as a C2SP checkpoint note that witnesses can cosign.
    pub fn checkpoint_entry(&self, final_checkpoint: bool) -> Result<AuditEntry, WriteError> {
        let covers = self.head.next_seq.saturating_sub(1);
        let size = self.head.next_seq;
        let root = self.tree.root(size).map_err(WriteError::Tree)?;
        let mut e = AuditEntry::new(0, now_rfc3339(), AuditEntryType::Checkpoint, String::new());
        e.covers_seq = Some(covers);
        e.chain_head = Some(self.head.head_hash.clone());
        e.key_id = Some(self.signer.key_id().to_string());
        e.signature = Some(self.signer.sign_checkpoint(covers, &self.head.head_hash));
        e.tree_size = Some(size);
        e.tree_root = Some(hash_to_b64(&root));
        e.note = Some(sign_checkpoint(&self.signer, size, root));
        e.final_checkpoint = final_checkpoint;
        Ok(e)
    }

    pub fn segment_start_entry(&self, segment: u64) -> AuditEntry {
        let mut e = AuditEntry::new(
            0,
            now_rfc3339(),
            AuditEntryType::SegmentStart,
            String::new(),
        );
        e.segment = Some(segment);
        e.key_id = Some(self.signer.key_id().to_string());
        e
    }

    /// The tree as the batch just committed left it (its note is signed by the first receipt).
    fn batch_head(&self) -> Result<Arc<BatchHead>, WriteError> {
        let size = self.tree.leaves();
        let root = self.tree.root(size).map_err(WriteError::Tree)?;
        Ok(Arc::new(BatchHead::new(size, root)))
    }

    /// Writes `buf` with one write and makes it durable per policy (`force` fsyncs regardless).
    pub fn commit(&mut self, buf: &[u8], force_sync: bool) -> Result<(), WriteError> {
        if buf.is_empty() && !force_sync {
            return Ok(());
        }
        let before = self.head.segment_bytes;
        if let Err(source) = self.file.write_all(buf) {
            self.undo_partial(before);
            return Err(WriteError::Write {
                path: self.log.clone(),
                source,
            });
        }
        self.head.segment_bytes += buf.len() as u64;
        let sync_now = force_sync
            || match self.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval => self
                    .dirty_since
                    .is_some_and(|t| t.elapsed() >= self.fsync_interval),
                FsyncPolicy::Never => false,
            };
        if sync_now {
            self.sync().inspect_err(|_| self.undo_partial(before))?;
        } else if self.fsync == FsyncPolicy::Interval && self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        } else if self.fsync == FsyncPolicy::Never {
            // Durable as far as this policy ever makes anything.
            self.durable.send_replace(self.head.next_seq);
        }
        if let Some(cp) = self.unannounced.take() {
            // Witnesses are asked only about checkpoints that are in the file, and whose tree is
            // in the tree file: a start checks the cosigned tree against it (`startup`).
            self.write_tree();
            self.announce.send_replace(Some(cp));
        }
        Ok(())
    }

    /// Writes the tree's new hashes to its file. A failed write keeps them in memory and is
    /// tried again at the next write.
    fn write_tree(&self) {
        if let Err(e) = self.tree.flush() {
            tracing::warn!(error = %e, "audit tree: cannot write the tree file");
        }
    }

    fn sync(&mut self) -> Result<(), WriteError> {
        let t = Instant::now();
        // fdatasync: the entries matter, not the file's timestamps.
        self.file.sync_data().map_err(|source| WriteError::Fsync {
            path: self.log.clone(),
            source,
        })?;
        self.stats.observe_fsync(t.elapsed());
        self.dirty_since = None;
        // Everything pushed so far is in the file (pushes are committed before the next sync).
        self.durable.send_replace(self.head.next_seq);
        Ok(())
    }

    /// After a failed write or fsync, best effort: cut the file back so entries nobody was told
    /// about do not linger (a sender answered 503 may retry without being refused as a replay).
    fn undo_partial(&mut self, len: u64) {
        let _ = self.file.set_len(len);
    }

    fn fail(&self, reason: &Arc<WriteError>) {
        tracing::error!(log = %self.log.display(), %reason, "audit log failed: refusing all further appends");
        if let Ok(mut f) = self.failure.lock() {
            if f.is_none() {
                *f = Some(reason.clone());
            }
        }
    }

    fn failed(&self) -> Option<Arc<WriteError>> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Archives the active segment (sealed by a checkpoint) and starts the next one.
    ///
    /// The steps that need a file descriptor or room in the folder (opening the folder, creating
    /// the next segment) come before anything is renamed: when one fails (out of file
    /// descriptors, a name in the way, a read-only folder) the active segment is left as it was
    /// and stays writable, and [`Writer::run`] tries again later. Entries are never at risk in a
    /// rotation, only the segment's size, so a failed one is not a reason to refuse records.
    fn rotate(&mut self) -> Result<(), RotateError> {
        if self.head.unsigned > 0 {
            // Seal the segment. A retry after a failed rotation finds it sealed already, unless
            // entries came since: it never piles up checkpoints.
            let mut buf = Vec::new();
            let cp = self.checkpoint_entry(false).map_err(RotateError::Log)?;
            self.push(cp, &mut buf).map_err(RotateError::Log)?;
            self.commit(&buf, true).map_err(RotateError::Log)?;
        }
        let archive = archive_path(&self.log, self.head.segment);
        if archive.exists() {
            return Err(RotateError::Deferred(WriteError::ArchiveExists {
                log: self.log.clone(),
                archive,
            }));
        }
        // Both file descriptors the rotation needs are opened before anything is renamed.
        let folder = open_folder(&self.log).map_err(|source| {
            RotateError::Deferred(WriteError::SyncDir {
                path: self.log.clone(),
                source,
            })
        })?;
        let next = next_segment_path(&self.log);
        // What a crash between the renames below leaves: not a segment, never read. Anything
        // else in the way (a folder) stays, and create_new below reports it.
        let _ = std::fs::remove_file(&next);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&next)
            .map_err(|source| {
                RotateError::Deferred(WriteError::Create {
                    path: next.clone(),
                    source,
                })
            })?;
        if let Err(source) = std::fs::rename(&self.log, &archive) {
            let _ = std::fs::remove_file(&next);
            return Err(RotateError::Deferred(WriteError::Rotate {
                log: self.log.clone(),
                archive,
                source,
            }));
        }
        if let Err(source) = std::fs::rename(&next, &self.log) {
            // Put the active segment back under its name; the open file is the same either way.
            if std::fs::rename(&archive, &self.log).is_ok() {
                let _ = std::fs::remove_file(&next);
                return Err(RotateError::Deferred(WriteError::Create {
                    path: self.log.clone(),
                    source,
                }));
            }
            // The log's name is gone and cannot be given back: a start would find the archive
            // and begin a new segment, but this writer cannot go on.
            return Err(RotateError::Log(WriteError::Create {
                path: self.log.clone(),
                source,
            }));
        }
        folder.sync_all().map_err(|source| {
            RotateError::Log(WriteError::SyncDir {
                path: self.log.clone(),
                source,
            })
        })?;
        self.file = file;
        self.head.segment += 1;
        self.head.segment_bytes = 0;
        let mut buf = Vec::new();
        let start = self.segment_start_entry(self.head.segment);
        self.push(start, &mut buf).map_err(RotateError::Log)?;
        self.commit(&buf, true).map_err(RotateError::Log)?;
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(archive = %archive.display(), segment = self.head.segment, "audit segment rotated");
        Ok(())
    }

    /// Rotates when the active segment is full and a failed rotation is not being waited out;
    /// only a failure that touched the log itself makes it fail.
    fn rotate_if_full(&mut self) {
        if self.head.segment_bytes < self.segment_max_bytes
            || self.rotate_after.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        match self.rotate() {
            Ok(()) => self.rotate_after = None,
            Err(RotateError::Deferred(reason)) => {
                self.stats.rotation_failures.fetch_add(1, Ordering::Relaxed);
                self.rotate_after = Some(Instant::now() + ROTATION_RETRY);
                tracing::error!(log = %self.log.display(), %reason, retry_in = ?ROTATION_RETRY,
                    "audit segment not rotated; entries go on into the active segment");
            }
            Err(RotateError::Log(reason)) => self.fail(&Arc::new(reason)),
        }
    }

    fn next_wakeup(&self) -> Duration {
        let mut wait = Duration::from_secs(3600);
        if self.head.unsigned > 0 {
            wait = wait.min(
                self.checkpoint_interval
                    .saturating_sub(self.last_checkpoint.elapsed()),
            );
        }
        if let Some(t) = self.dirty_since {
            wait = wait.min(self.fsync_interval.saturating_sub(t.elapsed()));
        }
        wait
    }

    /// Timer work when idle: a checkpoint for unsigned entries that waited long enough, and the
    /// pending fsync of `interval` mode.
    fn tick(&mut self) -> Result<(), WriteError> {
        let mut buf = Vec::new();
        if self.head.unsigned > 0 && self.last_checkpoint.elapsed() >= self.checkpoint_interval {
            let cp = self.checkpoint_entry(false)?;
            self.push(cp, &mut buf)?;
        }
        let due = self
            .dirty_since
            .is_some_and(|t| t.elapsed() >= self.fsync_interval);
        self.commit(&buf, due)?;
        self.write_tree();
        Ok(())
    }

    /// Builds the entry for an event.
    fn event_entry(event: AuditEvent) -> AuditEntry {
        let entry_type = match event.entry_type {
            Some(EntryType::Outcome) => AuditEntryType::Outcome,
            _ => AuditEntryType::Decision,
        };
        let mut e = AuditEntry::new(0, now_rfc3339(), entry_type, String::new());
        e.record_id = event.record_id;
        e.kind = event.kind;
        e.from = event.from;
        e.to = event.to;
        e.sender = event.sender;
        e.body_sha256 = event.body_sha256;
        e.decision = Some(event.decision);
        e.status = (event.status != 0).then_some(event.status);
        e.error = event.error;
        e.rules = event.rules;
        e.policy_version = event.policy_version;
        e.policy_hash = event.policy_hash;
        e.schema_hash = event.schema_hash;
        e.obligations = event.obligations;
        e.attempt = event.attempt;
        e.refers_to = event.refers_to;
        e.decided_elsewhere = event.decided_elsewhere;
        e.answer_sha256 = event.answer_sha256;
        e.answer_bytes = event.answer_bytes;
        e.acknowledgement = event.acknowledgement;
        e.latency_us = Some(event.latency_us);
        e
    }

    /// The writer thread's loop. Returns when closed or when every handle is gone.
    pub fn run(mut self, rx: Receiver<Command>) {
        let mut batch: Vec<Command> = Vec::with_capacity(self.max_batch);
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut waiting: Vec<(oneshot::Sender<Result<Appended, AuditError>>, Appended)> =
            Vec::with_capacity(self.max_batch);
        loop {
            batch.clear();
            match rx.recv_timeout(self.next_wakeup()) {
                Ok(cmd) => batch.push(cmd),
                Err(RecvTimeoutError::Timeout) => {
                    if self.failed().is_none() {
                        if let Err(reason) = self.tick() {
                            self.fail(&Arc::new(reason));
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Every handle was dropped without close(): still seal the log.
                    if self.failed().is_none() {
                        if let Err(reason) = self.close() {
                            self.fail(&Arc::new(reason));
                        }
                    }
                    return;
                }
            }
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let taken = batch
                .iter()
                .filter(|c| matches!(c, Command::Append(..)))
                .count();
            self.queued.fetch_sub(taken, Ordering::AcqRel);

            if let Some(reason) = self.failed() {
                let refusal = || AuditError::Unavailable(Unavailable::Failed(reason.clone()));
                for cmd in batch.drain(..) {
                    match cmd {
                        Command::Append(_, reply) => {
                            let _ = reply.send(Err(refusal()));
                        }
                        Command::Close(reply) => {
                            let _ = reply.send(Err(refusal()));
                        }
                    }
                }
                continue;
            }

            buf.clear();
            waiting.clear();
            let mut close_reply = None;
            let mut result: Result<(), Arc<WriteError>> = Ok(());
            for cmd in batch.drain(..) {
                match cmd {
                    Command::Append(event, reply) => {
                        if result.is_err() {
                            let _ =
                                reply.send(Err(AuditError::Unavailable(Unavailable::NotPrepared)));
                            continue;
                        }
                        match self.push(Self::event_entry(*event), &mut buf) {
                            Ok(appended) => {
                                waiting.push((reply, appended));
                            }
                            Err(reason) => {
                                let reason = Arc::new(reason);
                                let _ = reply.send(Err(AuditError::Unavailable(
                                    Unavailable::Failed(reason.clone()),
                                )));
                                result = Err(reason);
                            }
                        }
                    }
                    // Entries queued behind a close still get written; the close follows them.
                    Command::Close(reply) => close_reply = Some(reply),
                }
            }
            let n = waiting.len();
            if result.is_ok() && self.head.unsigned >= self.checkpoint_every {
                result = self
                    .checkpoint_entry(false)
                    .and_then(|cp| self.push(cp, &mut buf))
                    .map(|_| ())
                    .map_err(Arc::new);
            }
            if result.is_ok() {
                result = self.commit(&buf, false).map_err(Arc::new);
            }
            match &result {
                Ok(()) => {
                    self.stats.entries.fetch_add(n as u64, Ordering::Relaxed);
                    if n > 0 {
                        self.stats.observe_batch(n);
                    }
                    // One checkpoint note for the whole batch's receipts (signed by the first of
                    // them): each proves its entry's inclusion in the tree as this batch left it.
                    if !waiting.is_empty() {
                        match self.batch_head() {
                            Ok(head) => {
                                for (_, appended) in waiting.iter_mut() {
                                    appended.head = Some(head.clone());
                                }
                            }
                            // The receipt signs on its own then (`AuditLog::receipt`).
                            Err(e) => {
                                tracing::error!(error = %e, "audit tree: cannot sign the batch's checkpoint")
                            }
                        }
                    }
                    // The tree file is a cache rebuilt at start: written in blocks of hashes
                    // rather than after every batch (one write system call per batch was 2 % of
                    // the gateway's CPU), and before a checkpoint is announced (`commit`).
                    if self.tree.unwritten() >= TREE_WRITE_HASHES {
                        self.write_tree();
                    }
                    for (reply, appended) in waiting.drain(..) {
                        let _ = reply.send(Ok(appended));
                    }
                }
                Err(reason) => {
                    self.fail(reason);
                    for (reply, _) in waiting.drain(..) {
                        let _ = reply.send(Err(AuditError::Unavailable(Unavailable::Failed(
                            reason.clone(),
                        ))));
                    }
                }
            }
            if let Some(reply) = close_reply {
                let r = match result {
                    Ok(()) => self.close().map_err(Arc::new),
                    Err(reason) => Err(reason),
                };
                if let Err(reason) = &r {
                    self.fail(reason);
                }
                let _ = reply
                    .send(r.map_err(|reason| AuditError::Unavailable(Unavailable::Failed(reason))));
                return;
            }
            if result.is_ok() {
                self.rotate_if_full();
            }
        }
    }

    /// The closing checkpoint, always fsynced.
    fn close(&mut self) -> Result<(), WriteError> {
        let mut buf = Vec::new();
        let cp = self.checkpoint_entry(true)?;
        self.push(cp, &mut buf)?;
        self.commit(&buf, true)?;
        self.write_tree();
        tracing::info!(log = %self.log.display(), seq = self.head.next_seq - 1, "audit log closed with a signed checkpoint");
        Ok(())
    }
}
