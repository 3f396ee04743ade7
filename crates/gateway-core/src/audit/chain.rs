//! Reading the chain back: segment files, line scanning, the link checks shared by recovery at
//! open and by `audit verify`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use std::sync::Arc;

use super::entry::{open_line, AuditEntry, AuditEntryType, LineError, ZERO_HASH};
use super::keys::AuditPublicKey;
use super::note::open_checkpoint;
use super::tree::{hash_to_b64, HashStore, ReceiptFacts};

/// Width of the number in an archived segment's name: `audit.jsonl.000001` sorts by name.
pub const SEGMENT_DIGITS: usize = 6;

/// The longest line the log readers take in, newline excluded. An entry is at most a few KiB
/// (record ids are cut at 128 bytes, parks at 32, rules come from the policy set); a longer line
/// is damage or an attack, and reading it whole would let one file — or `/dev/zero` — take all
/// the reader's memory.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// A line longer than [`MAX_LINE_BYTES`]. Reported as an [`std::io::Error`] of kind
/// `InvalidData` inside [`ScanError::Io`] (the file cannot be read as a log), with this as its
/// inner error so callers can still tell which line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} is {}", LineTooLong::problem())]
pub struct LineTooLong {
    /// 1-based line number in its file.
    pub line: u64,
}

impl LineTooLong {
    /// What is wrong with the line, without its number.
    pub fn problem() -> String {
        format!(
            "longer than {MAX_LINE_BYTES} bytes, far more than any audit entry: not an audit \
             log, or a damaged one (reading stopped there)"
        )
    }
}

/// What reading one line found.
enum LineRead {
    /// The end of the file: nothing was read.
    End,
    /// A line of this many bytes, its newline included if it has one.
    Line(usize),
    /// More than [`MAX_LINE_BYTES`] without a newline; only that much was read.
    TooLong,
}

/// Reads the next line into `buf` (cleared first), taking in at most [`MAX_LINE_BYTES`] and its
/// newline.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<LineRead> {
    buf.clear();
    let most = MAX_LINE_BYTES as u64 + 1;
    let n = reader.by_ref().take(most).read_until(b'\n', buf)?;
    Ok(if n == 0 {
        LineRead::End
    } else if buf.last() != Some(&b'\n') && n as u64 == most {
        LineRead::TooLong
    } else {
        LineRead::Line(n)
    })
}

/// The archived segment `n` of the log at `log`.
pub fn archive_path(log: &Path, n: u64) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n:0width$}", width = SEGMENT_DIGITS));
    log.with_file_name(name)
}

/// Archived segments of `log` (`<log>.000001`, ...) in chain order with their numbers, followed
/// by the active segment `log` itself when it exists.
pub fn segment_paths(log: &Path) -> std::io::Result<Vec<(Option<u64>, PathBuf)>> {
    let dir = match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = log
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut archives = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            for item in rd {
                let item = item?;
                let name = item.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix(&base).and_then(|r| r.strip_prefix('.')) else {
                    continue;
                };
                if rest.len() >= SEGMENT_DIGITS && rest.bytes().all(|b| b.is_ascii_digit()) {
                    if let Ok(n) = rest.parse::<u64>() {
                        archives.push((Some(n), item.path()));
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    archives.sort();
    if log.exists() {
        archives.push((None, log.to_path_buf()));
    }
    Ok(archives)
}

/// Is `path` an archived segment (`audit.jsonl.000001`) rather than an active log?
fn is_archive_name(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name.rsplit_once('.')
        .is_some_and(|(_, n)| n.len() >= SEGMENT_DIGITS && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The files of the logs named on a command line: an active log brings its archived segments,
/// an archive or a set-aside (`.torn-`) file is kept as it is; duplicates are dropped. The error
/// names the log whose folder could not be listed.
pub fn expand_segments(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for path in paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let group = if is_archive_name(path) || name.contains(".torn-") {
            vec![path.clone()]
        } else {
            let mut g: Vec<PathBuf> = segment_paths(path)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot list the segments of {}: {e}", path.display()),
                    )
                })?
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            if g.is_empty() {
                g.push(path.clone());
            }
            g
        };
        for p in group {
            let key = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
            if seen.insert(key) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// The active log among the paths given (the one that is not an archived segment): where its
/// cosignatures are kept beside it.
pub fn active_log(logs: &[PathBuf]) -> PathBuf {
    logs.iter()
        .find(|p| !is_archive_name(p))
        .or(logs.first())
        .cloned()
        .unwrap_or_default()
}

/// A line that could not be used.
#[derive(Debug, Clone)]
pub struct BadLine {
    /// 1-based line number in its file.
    pub line: u64,
    /// Byte offset where the line starts.
    pub offset: u64,
    /// The sequence the line claims, if it could be read.
    pub seq: Option<u64>,
    /// The line has no trailing newline (the typical torn write).
    pub unterminated: bool,
    pub error: LineError,
}

/// Reads `path` line by line, calling `on_entry(entry, line_no, offset)` for every valid line.
/// Stops at the first bad line and returns it; `Ok(None)` when every line was good. The caller
/// decides whether a bad line is a torn tail (it is the last one) or corruption.
pub fn scan_file(
    path: &Path,
    on_entry: impl FnMut(AuditEntry, u64, u64) -> Result<(), LinkError>,
) -> Result<ScanEnd, ScanError> {
    scan_file_from(path, 0, 0, on_entry)
}

/// [`scan_file`] from byte `offset`, the start of the line after line `line` (0 for the file's
/// start): the rest of a segment whose beginning was read otherwise.
pub fn scan_file_from(
    path: &Path,
    offset: u64,
    line: u64,
    mut on_entry: impl FnMut(AuditEntry, u64, u64) -> Result<(), LinkError>,
) -> Result<ScanEnd, ScanError> {
    use std::io::Seek;
    let io = |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::with_capacity(1024);
    let mut offset = offset;
    let mut line_no = line;
    loop {
        let n = match read_line(&mut reader, &mut buf).map_err(io)? {
            LineRead::End => {
                return Ok(ScanEnd {
                    bad: None,
                    len: offset,
                })
            }
            LineRead::TooLong => {
                let too_long = LineTooLong { line: line_no + 1 };
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    too_long,
                )));
            }
            LineRead::Line(n) => n,
        };
        line_no += 1;
        let unterminated = buf.last() != Some(&b'\n');
        let content = if unterminated {
            &buf[..]
        } else {
            &buf[..buf.len() - 1]
        };
        let parsed = if unterminated {
            // A line without its newline was never completely written, whatever it contains.
            Err((
                LineError::Json("incomplete line: no trailing newline".into()),
                open_line(content).ok().map(|e| e.seq),
            ))
        } else {
            open_line(content)
        };
        match parsed {
            Ok(entry) => {
                on_entry(entry, line_no, offset).map_err(|error| ScanError::Chain {
                    path: path.to_path_buf(),
                    line: line_no,
                    error,
                })?;
            }
            Err((error, seq)) => {
                let bad = BadLine {
                    line: line_no,
                    offset,
                    seq,
                    unterminated,
                    error,
                };
                // Is anything after it? Only a bad *last* line can be a torn write. One buffered
                // byte answers that; the rest is not read.
                let is_last = reader.fill_buf().map_err(io)?.is_empty();
                return Ok(ScanEnd {
                    bad: Some((bad, is_last)),
                    len: offset + n as u64,
                });
            }
        }
        offset += n as u64;
    }
}

/// How a scan ended.
#[derive(Debug)]
pub struct ScanEnd {
    /// The first bad line, and whether it was the last line of the file.
    pub bad: Option<(BadLine, bool)>,
    /// Bytes up to the end of the bad line, or of the file when there was none (the file's
    /// length also when the bad line was the last).
    pub len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} line {line}: {error}", path.display())]
    Chain {
        path: PathBuf,
        line: u64,
        #[source]
        error: LinkError,
    },
}

/// An entry that does not continue the chain: the sequence it is about and what is wrong.
/// `seq` is a field (not only part of the message) because `audit verify` reports the first bad
/// sequence on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seq {seq}: {problem}")]
pub struct LinkError {
    pub seq: u64,
    pub problem: LinkProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkProblem {
    /// Not a problem of the log: whoever read it asked to stop (a query's output went away).
    #[error("reading stopped by the reader")]
    Stopped,
    #[error("the first entry must have the all-zero prev_hash")]
    FirstPrevHashNotZero,
    #[error("the log starts in the middle of a segment: earlier entries are missing")]
    StartsMidSegment,
    #[error("duplicate sequence")]
    Duplicate,
    #[error("out of order (follows seq {follows}): entries were reordered")]
    OutOfOrder { follows: u64 },
    #[error("missing (next entry is seq {next}): entries were removed")]
    Missing { next: u64 },
    #[error("broken link: prev_hash does not match the hash of seq {prev} (an entry was removed, reordered or replaced)")]
    BrokenLink { prev: u64 },
    #[error("a segment file must begin with a segment_start entry (its head was cut off)")]
    NoSegmentStart,
    #[error("checkpoint lacks covers_seq, chain_head, key_id or signature")]
    CheckpointIncomplete,
    #[error("checkpoint does not cover the entry right before it")]
    CheckpointGap,
    #[error("checkpoint signed by key {key_id}, not by the given public key {given}")]
    CheckpointWrongKey { key_id: String, given: String },
    #[error("bad checkpoint signature")]
    CheckpointBadSignature,
    #[error("checkpoint's tree does not match the entries before it: size {size} signed, root {signed} signed, {computed} computed from the log")]
    TreeMismatch {
        size: u64,
        signed: String,
        computed: String,
    },
    #[error("checkpoint's tree note does not hold: {0}")]
    BadNote(String),
    #[error("the log's tree cannot be rebuilt here")]
    TreeUnavailable,
}

impl LinkProblem {
    pub(crate) fn at(self, seq: u64) -> LinkError {
        LinkError { seq, problem: self }
    }
}

/// Link checks over entries in chain order, across segment files; with a tree attached, every
/// checkpoint's tree size and root are checked against the entries too.
#[derive(Debug, Default)]
pub struct ChainChecker {
    /// The log's tree as the entries so far build it (`None`: roots are not checked).
    pub tree: Option<Arc<HashStore>>,
    last: Option<(u64, String)>,
    /// Entries since the last checkpoint.
    pub unsigned: u64,
    pub last_checkpoint: Option<u64>,
    /// The last entry is a checkpoint written at clean shutdown.
    pub closed: bool,
    pub entries: u64,
    pub checkpoints: u64,
    pub signatures_checked: u64,
    pub first_seq: Option<u64>,
    pub key_ids: BTreeSet<String>,
    pub notes: Vec<String>,
}

impl ChainChecker {
    /// A checker that goes on after the entry `seq` with hash `hash`, whose tree (with `seq + 1`
    /// leaves) is `tree`: the entries up to it were checked otherwise (`audit::startup`).
    pub fn resume(seq: u64, hash: String, tree: Arc<HashStore>) -> ChainChecker {
        ChainChecker {
            tree: Some(tree),
            last: Some((seq, hash)),
            ..ChainChecker::default()
        }
    }

    /// Sequence and hash of the last accepted entry.
    pub fn head(&self) -> Option<(u64, &str)> {
        self.last.as_ref().map(|(s, h)| (*s, h.as_str()))
    }

    /// Checks `e` against the chain so far; `first_in_file` marks the first line of a segment.
    pub fn check(
        &mut self,
        e: &AuditEntry,
        first_in_file: bool,
        key: Option<&AuditPublicKey>,
    ) -> Result<(), LinkError> {
        match &self.last {
            None => {
                if e.seq == 0 {
                    if e.prev_hash != ZERO_HASH {
                        return Err(LinkProblem::FirstPrevHashNotZero.at(0));
                    }
                } else if e.entry_type == AuditEntryType::SegmentStart {
                    self.notes.push(format!(
                        "the chain given starts at seq {} (segment {}): the link to earlier segments was not checked",
                        e.seq,
                        e.segment.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
                    ));
                } else {
                    return Err(LinkProblem::StartsMidSegment.at(e.seq));
                }
            }
            Some((last_seq, last_hash)) => {
                if e.seq == *last_seq {
                    return Err(LinkProblem::Duplicate.at(e.seq));
                }
                // Nothing can follow the largest sequence there is: whatever comes after it is
                // out of order (a forged line can claim u64::MAX; its hash is no secret).
                let Some(expected) = last_seq.checked_add(1) else {
                    return Err(LinkProblem::OutOfOrder { follows: *last_seq }.at(e.seq));
                };
                if e.seq < expected {
                    return Err(LinkProblem::OutOfOrder { follows: *last_seq }.at(e.seq));
                }
                if e.seq > expected {
                    return Err(LinkProblem::Missing { next: e.seq }.at(expected));
                }
                if &e.prev_hash != last_hash {
                    return Err(LinkProblem::BrokenLink { prev: *last_seq }.at(e.seq));
                }
            }
        }
        if first_in_file && e.entry_type != AuditEntryType::SegmentStart {
            return Err(LinkProblem::NoSegmentStart.at(e.seq));
        }
        if e.entry_type == AuditEntryType::Recovery {
            // Every automatic repair is listed for the auditor, with where its bytes went.
            self.notes.push(format!(
                "seq {}: recovery at {}: a torn last line of {} bytes was set aside in {}",
                e.seq,
                e.time,
                e.torn_bytes.unwrap_or(0),
                e.side_file.as_deref().unwrap_or("(no side file named)")
            ));
        }
        if e.entry_type == AuditEntryType::Checkpoint {
            self.check_checkpoint(e, key)?;
            self.unsigned = 0;
            self.last_checkpoint = Some(e.seq);
            self.closed = e.final_checkpoint;
            self.checkpoints += 1;
        } else {
            self.unsigned += 1;
            self.closed = false;
        }
        if let Some(tree) = &self.tree {
            tree.append(ReceiptFacts::of(e).leaf_hash())
                .map_err(|_| LinkProblem::TreeUnavailable.at(e.seq))?;
        }
        if self.first_seq.is_none() {
            self.first_seq = Some(e.seq);
        }
        self.entries += 1;
        self.last = Some((e.seq, e.hash.clone()));
        Ok(())
    }

    fn check_checkpoint(
        &mut self,
        e: &AuditEntry,
        key: Option<&AuditPublicKey>,
    ) -> Result<(), LinkError> {
        let seq = e.seq;
        let (Some(covers), Some(head), Some(key_id), Some(sig)) =
            (e.covers_seq, &e.chain_head, &e.key_id, &e.signature)
        else {
            return Err(LinkProblem::CheckpointIncomplete.at(seq));
        };
        if Some(covers) != seq.checked_sub(1) || head != &e.prev_hash {
            return Err(LinkProblem::CheckpointGap.at(seq));
        }
        self.key_ids.insert(key_id.clone());
        let (Some(size), Some(root), Some(note_text)) = (e.tree_size, &e.tree_root, &e.note) else {
            return Err(LinkProblem::CheckpointIncomplete.at(seq));
        };
        if size != seq {
            return Err(LinkProblem::CheckpointGap.at(seq));
        }
        if let Some(tree) = &self.tree {
            // The tree holds the entries before this checkpoint: exactly `size` leaves.
            let computed = tree
                .root(size)
                .map_err(|_| LinkProblem::TreeUnavailable.at(seq))?;
            if hash_to_b64(&computed) != *root {
                return Err(LinkProblem::TreeMismatch {
                    size,
                    signed: root.clone(),
                    computed: hash_to_b64(&computed),
                }
                .at(seq));
            }
        }
        if let Some(key) = key {
            if key.key_id() != key_id {
                return Err(LinkProblem::CheckpointWrongKey {
                    key_id: key_id.clone(),
                    given: key.key_id().to_string(),
                }
                .at(seq));
            }
            if !key.verify_checkpoint(covers, head, sig) {
                return Err(LinkProblem::CheckpointBadSignature.at(seq));
            }
            let signed = open_checkpoint(note_text, key)
                .map_err(|p| LinkProblem::BadNote(p.to_string()).at(seq))?;
            if signed.size != size || hash_to_b64(&signed.root) != *root {
                return Err(LinkProblem::BadNote(
                    "the note signs another tree than the entry states".into(),
                )
                .at(seq));
            }
            self.signatures_checked += 1;
        }
        Ok(())
    }
}

/// Reads the segment files `paths` in chain order, handing every entry with its file and byte
/// offset to `on_entry`, and rebuilds the log's tree from them. The tree is `None` when the files
/// do not start at seq 0 (earlier segments are elsewhere); `first_seq` says where they start.
/// For readers of a log already verified: a bad line ends its file's scan, as in [`scan_file`].
pub fn scan_log(
    paths: &[PathBuf],
    mut on_entry: impl FnMut(&AuditEntry, &Path, u64),
) -> Result<ScannedLog, String> {
    let ordered = order_by_first_seq(paths).map_err(|p| p.to_string())?;
    let mut scanned = ScannedLog {
        first_seq: None,
        tree: None,
    };
    for path in &ordered {
        scan_file(path, |e, _, offset| {
            if scanned.first_seq.is_none() {
                scanned.first_seq = Some(e.seq);
                if e.seq == 0 {
                    scanned.tree = Some(HashStore::in_memory());
                }
            }
            if let Some(tree) = &scanned.tree {
                tree.append(ReceiptFacts::of(&e).leaf_hash())
                    .map_err(|_| LinkProblem::TreeUnavailable.at(e.seq))?;
            }
            on_entry(&e, path, offset);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    }
    Ok(scanned)
}

/// What [`scan_log`] rebuilt.
pub struct ScannedLog {
    pub first_seq: Option<u64>,
    /// The log's tree, when the files start at seq 0.
    pub tree: Option<HashStore>,
}

/// The first problem found by [`verify_logs`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyProblem {
    /// The first bad sequence, when it is known.
    pub seq: Option<u64>,
    pub file: PathBuf,
    pub line: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(seq) = self.seq {
            write!(f, "first bad entry: seq {seq}: ")?;
        }
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What [`verify_logs`] found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The files in chain order.
    pub files: Vec<PathBuf>,
    pub entries: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub head_hash: Option<String>,
    pub checkpoints: u64,
    /// False when no public key was given: hashes and links were checked, signatures were not.
    pub signatures_checked: bool,
    pub signatures_verified: u64,
    pub last_checkpoint_seq: Option<u64>,
    /// Entries after the last checkpoint: not yet sealed by a signature.
    pub unsigned_tail: u64,
    /// The log ends with the checkpoint written at clean shutdown.
    pub closed: bool,
    pub key_ids: Vec<String>,
    pub notes: Vec<String>,
    /// The first hash, link, sequence or signature problem.
    pub problem: Option<VerifyProblem>,
    /// What each witness named (`--witness-key`) cosigned, and whether the log holds it.
    pub witnesses: Vec<WitnessCheck>,
}

/// One witness's cosignatures checked against the log.
#[derive(Debug, Clone, Serialize)]
pub struct WitnessCheck {
    pub witness: String,
    /// Tree size of the latest checkpoint it cosigned that the log holds.
    pub latest_cosigned: Option<u64>,
    pub problem: Option<String>,
}

impl VerifyReport {
    /// Why the tail is not sealed, if it is not: entries after the last checkpoint, or a log that
    /// does not end with the closing checkpoint (what a cut exactly at a checkpoint leaves).
    pub fn tail_problem(&self) -> Option<String> {
        if self.unsigned_tail > 0 {
            return Some(match self.last_checkpoint_seq {
                Some(cp) => format!(
                    "{} entries after the last checkpoint (seq {cp}) are not covered by a signature: the tail was cut or the log is still being written",
                    self.unsigned_tail
                ),
                None => format!(
                    "no checkpoint at all: none of the {} entries is covered by a signature",
                    self.unsigned_tail
                ),
            });
        }
        if !self.closed && self.entries > 0 {
            return Some(format!(
                "the log ends with a periodic checkpoint (seq {}), not the one written at shutdown: the tail was cut at a checkpoint or the gateway is still running",
                self.last_seq.unwrap_or_default()
            ));
        }
        None
    }

    /// Intact: no problem and, unless `allow_unsigned_tail` (a live log), a sealed tail.
    pub fn is_intact(&self, allow_unsigned_tail: bool) -> bool {
        self.problem.is_none()
            && (allow_unsigned_tail || self.tail_problem().is_none())
            && self.witnesses.iter().all(|w| w.problem.is_none())
    }
}

/// Checks every hash, link, sequence and (with `public_key`) checkpoint signature of the segment
/// files `paths`, given in any order: they are put in chain order by their first sequence.
pub fn verify_logs(paths: &[PathBuf], public_key: Option<&AuditPublicKey>) -> VerifyReport {
    verify_logs_with_tree(paths, public_key).0
}

/// [`verify_logs`], also handing back the log's tree as rebuilt (when the log was whole from
/// seq 0), for checks against it such as witnesses' cosignatures.
pub fn verify_logs_with_tree(
    paths: &[PathBuf],
    public_key: Option<&AuditPublicKey>,
) -> (VerifyReport, Option<Arc<HashStore>>) {
    let mut report = VerifyReport {
        witnesses: Vec::new(),
        files: Vec::new(),
        entries: 0,
        first_seq: None,
        last_seq: None,
        head_hash: None,
        checkpoints: 0,
        signatures_checked: public_key.is_some(),
        signatures_verified: 0,
        last_checkpoint_seq: None,
        unsigned_tail: 0,
        closed: false,
        key_ids: Vec::new(),
        notes: Vec::new(),
        problem: None,
    };
    let ordered = match order_by_first_seq(paths) {
        Ok(o) => o,
        Err(problem) => {
            report.problem = Some(problem);
            return (report, None);
        }
    };
    report.files = ordered.clone();
    let mut checker = ChainChecker::default();
    let mut tree_decided = false;
    let n_files = ordered.len();
    for (i, path) in ordered.iter().enumerate() {
        let mut first = true;
        let result = scan_file(path, |entry, _line, _offset| {
            if !tree_decided {
                tree_decided = true;
                if entry.seq == 0 {
                    // The whole log is here: rebuild its tree and check every checkpoint's root.
                    checker.tree = Some(Arc::new(HashStore::in_memory()));
                } else {
                    checker.notes.push(format!(
                        "tree roots not checked: the chain given starts at seq {} (earlier segments are not here)",
                        entry.seq
                    ));
                }
            }
            let r = checker.check(&entry, first, public_key);
            first = false;
            r
        });
        let problem = match result {
            Ok(ScanEnd { bad: None, .. }) => None,
            Ok(ScanEnd {
                bad: Some((bad, is_last)),
                ..
            }) => {
                let torn = is_last && i + 1 == n_files && bad.unterminated;
                let what = if torn {
                    format!("incomplete last line (torn write): {}", bad.error)
                } else {
                    bad.error.to_string()
                };
                Some(VerifyProblem {
                    seq: bad
                        .seq
                        // The one after the last good entry (saturating: a forged chain can
                        // end at u64::MAX).
                        .or_else(|| checker.head().map(|(s, _)| s.saturating_add(1)))
                        .or(Some(0)),
                    file: path.clone(),
                    line: Some(bad.line),
                    message: what,
                })
            }
            Err(ScanError::Io { path, source }) => {
                let too_long = source
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<LineTooLong>());
                Some(match too_long {
                    Some(too_long) => VerifyProblem {
                        seq: checker.head().map(|(s, _)| s.saturating_add(1)).or(Some(0)),
                        file: path,
                        line: Some(too_long.line),
                        message: LineTooLong::problem(),
                    },
                    None => VerifyProblem {
                        seq: None,
                        file: path,
                        line: None,
                        message: source.to_string(),
                    },
                })
            }
            Err(ScanError::Chain { path, line, error }) => Some(VerifyProblem {
                seq: Some(error.seq),
                file: path,
                line: Some(line),
                message: error.to_string(),
            }),
        };
        if problem.is_some() {
            report.problem = problem;
            break;
        }
    }
    report.entries = checker.entries;
    report.first_seq = checker.first_seq;
    report.last_seq = checker.head().map(|(s, _)| s);
    report.head_hash = checker.head().map(|(_, h)| h.to_string());
    report.checkpoints = checker.checkpoints;
    report.signatures_verified = checker.signatures_checked;
    report.last_checkpoint_seq = checker.last_checkpoint;
    report.unsigned_tail = checker.unsigned;
    report.closed = checker.closed;
    report.key_ids = checker.key_ids.into_iter().collect();
    report.notes = checker.notes;
    (report, checker.tree)
}

/// Puts segment files in chain order by the sequence of their first line. A file whose first line
/// is unreadable sorts where it was given (its problem is then reported by the scan).
pub fn order_by_first_seq(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VerifyProblem> {
    let mut keyed = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        let file = File::open(path).map_err(|e| VerifyProblem {
            seq: None,
            file: path.clone(),
            line: None,
            message: format!("cannot open: {e}"),
        })?;
        // Only the first line, and no more of it than a line may hold: a file without newlines
        // (or `/dev/zero`) is then refused by the scan, not read whole here.
        let mut first = Vec::new();
        let _ = read_line(&mut BufReader::new(file), &mut first);
        let content = first.strip_suffix(b"\n").unwrap_or(&first);
        let seq = open_line(content).map(|e| e.seq).unwrap_or(u64::MAX);
        keyed.push((seq, i, path.clone()));
    }
    keyed.sort();
    Ok(keyed.into_iter().map(|(_, _, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entry::seal;

    /// A sealed chain of `n` entries: a segment start, then decisions.
    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = ZERO_HASH.to_string();
        (0..n)
            .map(|seq| {
                let kind = if seq == 0 {
                    AuditEntryType::SegmentStart
                } else {
                    AuditEntryType::Decision
                };
                let mut e = AuditEntry::new(seq, "2026-01-01T00:00:00Z".into(), kind, prev.clone());
                seal(&mut e).unwrap();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn first_error(entries: &[AuditEntry]) -> LinkError {
        let mut checker = ChainChecker::default();
        entries
            .iter()
            .enumerate()
            .find_map(|(i, e)| checker.check(e, i == 0, None).err())
            .expect("a broken chain")
    }

    /// Found by the `audit_log` fuzz target's corpus in a debug build: after an entry claiming
    /// seq u64::MAX the next sequence overflowed (a panic; wrapped in release).
    #[test]
    fn nothing_follows_the_largest_sequence() {
        let mut start = AuditEntry::new(
            u64::MAX,
            "2026-01-01T00:00:00Z".into(),
            AuditEntryType::SegmentStart,
            ZERO_HASH.into(),
        );
        let mut lines = seal(&mut start).unwrap();
        let mut next = AuditEntry::new(
            0,
            "2026-01-01T00:00:00Z".into(),
            AuditEntryType::Decision,
            start.hash.clone(),
        );
        lines.extend(seal(&mut next).unwrap());
        assert_eq!(
            first_error(&[start.clone(), next]),
            LinkProblem::OutOfOrder { follows: u64::MAX }.at(0)
        );

        // And `audit verify` on the file: the first bad line after it names a sequence too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, &lines).unwrap();
        let problem = verify_logs(std::slice::from_ref(&path), None)
            .problem
            .unwrap();
        assert_eq!((problem.seq, problem.line), (Some(0), Some(2)), "{problem}");
        let mut torn = seal(&mut start).unwrap();
        torn.extend_from_slice(b"{\"seq\":");
        std::fs::write(&path, &torn).unwrap();
        let problem = verify_logs(std::slice::from_ref(&path), None)
            .problem
            .unwrap();
        assert_eq!(
            (problem.seq, problem.line),
            (Some(u64::MAX), Some(2)),
            "{problem}"
        );
    }

    #[test]
    fn a_removed_entry_names_the_missing_sequence_not_the_next_one() {
        let mut entries = chain(5);
        entries.remove(2);
        let err = first_error(&entries);
        assert_eq!(err.seq, 2);
        assert_eq!(err.problem, LinkProblem::Missing { next: 3 });
        assert_eq!(
            err.to_string(),
            "seq 2: missing (next entry is seq 3): entries were removed"
        );
    }

    #[test]
    fn a_replaced_entry_is_a_broken_link_at_its_own_sequence() {
        let mut entries = chain(4);
        entries[2].prev_hash = "0".repeat(64);
        let err = first_error(&entries);
        assert_eq!(err.seq, 2);
        assert_eq!(err.problem, LinkProblem::BrokenLink { prev: 1 });
    }

    fn scan_error(content: &[u8]) -> ScanError {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, content).unwrap();
        scan_file(&path, |_, _, _| Ok(())).expect_err("a line too long")
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_naming_its_number() {
        // A good first line, then one of 2 MiB.
        let mut first = chain(1).remove(0);
        let mut content = seal(&mut first).unwrap();
        if content.last() != Some(&b'\n') {
            content.push(b'\n');
        }
        content.extend(vec![b'x'; 2 * MAX_LINE_BYTES]);
        content.push(b'\n');
        let err = scan_error(&content);
        let ScanError::Io { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::InvalidData);
        let inner = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<LineTooLong>());
        assert_eq!(inner, Some(&LineTooLong { line: 2 }));
        let text = err.to_string();
        assert!(
            text.contains("audit.jsonl: line 2 is longer than 1048576 bytes"),
            "{text}"
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_read() {
        let mut content = vec![b'x'; MAX_LINE_BYTES];
        content.push(b'\n');
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, &content).unwrap();
        let end = scan_file(&path, |_, _, _| Ok(())).unwrap();
        let (bad, is_last) = end.bad.expect("not an entry");
        assert_eq!(
            (bad.line, is_last, end.len),
            (1, true, content.len() as u64)
        );
        assert!(
            matches!(bad.error, LineError::NoHashMember),
            "{:?}",
            bad.error
        );
    }
}
