//! The bounded start: with witnesses configured, the log is checked against the latest
//! checkpoint a witness cosigned instead of being read back whole.
//!
//! The cosigned tree (its size N and root, signed by the audit key and cosigned by a configured
//! witness's key) commits to every entry before it: each leaf binds its entry's hash, which binds
//! every byte of the entry. So the start
//!
//! 1. checks the tree file against that root ([`HashStore::open_checked`]: every stored hash
//!    recomputed from its children, about 64 bytes read and one small SHA-256 per entry): from
//!    then on the tree's hashes of the first N entries, from which new entries are appended and
//!    proofs are made, are the cosigned ones;
//! 2. reads the entries before the checkpoint only as far back as the replay memory needs them
//!    (the segments that hold decisions of the record window, and always the segment of the
//!    checkpoint), each line hashed over its bytes and linked to the one before without parsing
//!    it as JSON ([`hash_line`]); the last one's leaf must be the cosigned tree's leaf N-1, which
//!    makes every line read the one the witness cosigned;
//! 3. fully checks the entries from the checkpoint on, as a start without witnesses checks all
//!    of them (chain, every checkpoint's signatures, the tree).
//!
//! What is not read at start (the older segments) is checked by `audit verify`, whose
//! `--witness-key` check rebuilds the tree from the entries and compares it with every kept
//! cosignature. See `docs/audit.md`, "Start-up on a large log".

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::MAX_LINE_BYTES;
use super::entry::{hash_line, open_line, AuditEntry, AuditEntryType, LineError};
use super::history::{note_entry, Histories, LinePlace};
use super::tree::{HashStore, ReceiptFacts};
use super::witnessing::CosignedHead;

/// How far a segment's last entry may lie before the record window and the segment still be read
/// for the replay memory: entries are stamped by the writer in chain order, so a segment whose
/// last entry is older than the window holds no decision of it, unless the clock was set back by
/// more than this while the segment was written.
const CLOCK_SLACK_SECS: i64 = 24 * 3600;

/// What the start checked, for the log line `audit log open` and `AuditLog::startup_report`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StartupReport {
    /// The cosigned tree the log was checked against: its witness and size.
    pub cosigned: Option<(String, u64)>,
    /// Why the whole log was read although witnesses are configured (no usable cosignature, a
    /// tree file that does not hold the cosigned tree, ...).
    pub full_check_reason: Option<String>,
    /// Entries fully checked: parsed, hashed, linked, every checkpoint's signatures and tree.
    pub entries_checked: u64,
    /// Entries before the cosigned checkpoint read for the replay memory: hashed and linked.
    pub entries_hashed: u64,
    /// Entries before the cosigned checkpoint not read at all (sealed by the cosigned tree).
    pub entries_not_read: u64,
}

impl std::fmt::Display for StartupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cosigned {
            Some((witness, size)) => write!(
                f,
                "checked against the tree of {size} entries cosigned by {witness}: {} entries from its checkpoint on fully checked, {} before it hashed and linked for the replay memory, {} before it not read",
                self.entries_checked, self.entries_hashed, self.entries_not_read
            ),
            None => {
                write!(f, "{} entries fully checked", self.entries_checked)?;
                if let Some(why) = &self.full_check_reason {
                    write!(f, " ({why})")?;
                }
                Ok(())
            }
        }
    }
}

/// Where the full check resumes after the cosigned prefix.
#[derive(Debug)]
pub(crate) struct Resume {
    /// Index (in the segment list) of the segment holding the cosigned checkpoint.
    pub segment_index: usize,
    /// Byte offset and 0-based line number of the checkpoint's line there.
    pub offset: u64,
    pub line: u64,
    /// Sequence and hash of the entry before the checkpoint (the cosigned tree's last leaf).
    pub head: (u64, String),
    /// The cosigned tree, read from the tree file and checked against the cosigned root.
    pub tree: HashStore,
    /// The active segment's number, when its segment_start was among the lines read.
    pub active_segment: Option<u64>,
    pub entries_hashed: u64,
}

/// Why the prefix could not be used.
#[derive(Debug)]
pub(crate) enum PrefixError {
    /// The start must read the whole log instead (the reason is logged and reported).
    FullCheck(String),
    /// The log is not the one the witness cosigned: the start is refused.
    Altered {
        path: PathBuf,
        line: u64,
        seq: Option<u64>,
        problem: String,
    },
    Io(PathBuf, std::io::Error),
    Tree(super::tree::TreeError),
}

/// The fields of an entry the replay memory reads, borrowed from the line where they need no
/// unescaping (everything else in the line is skipped, not built).
#[derive(Deserialize)]
struct HistoryFields<'a> {
    seq: u64,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(rename = "type")]
    entry_type: AuditEntryType,
    #[serde(default, borrow)]
    record_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    decision: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    body_sha256: Option<Cow<'a, str>>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default)]
    refers_to: Option<u64>,
    #[serde(default)]
    segment: Option<u64>,
}

impl HistoryFields<'_> {
    fn entry(&self) -> AuditEntry {
        let mut e = AuditEntry::new(
            self.seq,
            self.time.to_string(),
            self.entry_type,
            String::new(),
        );
        e.record_id = self.record_id.as_ref().map(|s| s.to_string());
        e.decision = self.decision.as_ref().map(|s| s.to_string());
        e.error = self.error.as_ref().map(|s| s.to_string());
        e.body_sha256 = self.body_sha256.as_ref().map(|s| s.to_string());
        e.attempt = self.attempt;
        e.refers_to = self.refers_to;
        e
    }
}

/// Reads the log's cosigned prefix as the module doc says, folding the entries read into
/// `histories` (decisions from `since` on). `segments` as `chain::segment_paths` lists them.
pub(crate) fn read_cosigned_prefix(
    segments: &[(Option<u64>, PathBuf)],
    tree_path: &Path,
    anchor: &CosignedHead,
    since: i64,
    histories: &mut Histories,
) -> Result<Resume, PrefixError> {
    let n = anchor.size;
    let tree = match HashStore::open_checked(tree_path, n, anchor.root) {
        Ok(Ok(t)) => t,
        Ok(Err(why)) => return Err(PrefixError::FullCheck(why)),
        Err(e) => return Err(PrefixError::Tree(e)),
    };
    // The segment holding entry N-1 (and the checkpoint N after it: a checkpoint never begins a
    // segment) is the last one starting at or before it.
    let mut firsts = Vec::with_capacity(segments.len());
    for (_, path) in segments {
        firsts.push(first_seq(path)?);
    }
    let Some(at) = firsts
        .iter()
        .rposition(|first| first.is_some_and(|s| s < n))
    else {
        return Err(PrefixError::FullCheck(format!(
            "no segment beside the log holds entry {}",
            n - 1
        )));
    };
    // Segments before it are read only while they may hold decisions of the record window.
    let mut from = at;
    while from > 0 {
        let needed = match last_time(&segments[from - 1].1)? {
            Some(t) => t >= since.saturating_sub(CLOCK_SLACK_SECS),
            None => true,
        };
        if !needed {
            break;
        }
        from -= 1;
    }
    let last_archive = segments.iter().filter_map(|(number, _)| *number).max();
    let mut prev: Option<(u64, String)> = None;
    let mut hashed = 0u64;
    let mut active_segment = None;
    for (index, (number, path)) in segments.iter().enumerate().take(at + 1).skip(from) {
        let file = File::open(path).map_err(|e| PrefixError::Io(path.clone(), e))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut buf = Vec::with_capacity(2048);
        let mut offset = 0u64;
        let mut line_no = 0u64;
        let mut segment = *number;
        loop {
            buf.clear();
            let got = reader
                .by_ref()
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|e| PrefixError::Io(path.clone(), e))?;
            let altered = |problem: String, seq: Option<u64>| PrefixError::Altered {
                path: path.clone(),
                line: line_no + 1,
                seq,
                problem,
            };
            if got == 0 && index < at {
                // On to the next segment, whose first line links to this one's last.
                break;
            }
            if got == 0 || buf.last() != Some(&b'\n') {
                // The segment of the cosigned checkpoint ends before it (the log was cut back:
                // the start's witness round names the witness), or a line is cut short before
                // it: the whole log is read, and what is wrong reported as such.
                return Err(PrefixError::FullCheck(format!(
                    "{} ends before entry {}, the last of the cosigned tree",
                    path.display(),
                    n - 1
                )));
            }
            let content = &buf[..buf.len() - 1];
            let line = hash_line(content).map_err(|e| altered(e.to_string(), None))?;
            if let Some((seq, hash)) = &prev {
                if line.seq != seq + 1 || line.prev_hash != hash {
                    return Err(altered(
                        format!(
                            "does not follow entry {seq} (sequence {} or prev_hash broken)",
                            line.seq
                        ),
                        Some(line.seq),
                    ));
                }
            }
            if matches!(line.entry_type, "decision" | "outcome" | "segment_start") {
                let fields: HistoryFields = serde_json::from_slice(content)
                    .map_err(|e| altered(LineError::Json(e.to_string()).to_string(), None))?;
                if fields.entry_type == AuditEntryType::SegmentStart && line_no == 0 {
                    if number.is_none() {
                        active_segment = fields.segment;
                    }
                    segment = segment.or(fields.segment);
                }
                let place = LinePlace {
                    segment: segment.unwrap_or_else(|| last_archive.map_or(1, |a| a + 1)),
                    offset,
                };
                note_entry(histories, &fields.entry(), place, since);
            }
            hashed += 1;
            prev = Some((line.seq, line.hash.to_string()));
            if line.seq + 1 == n {
                // The cosigned tree's last leaf: this line must be the entry it binds.
                let entry = open_line(content).map_err(|(e, _)| altered(e.to_string(), None))?;
                let leaf = tree.leaf(n - 1).map_err(PrefixError::Tree)?;
                if ReceiptFacts::of(&entry).leaf_hash() != leaf {
                    return Err(altered(
                        format!(
                            "entry {} is not the one {} cosigned: the log before the cosigned checkpoint was rewritten",
                            n - 1,
                            anchor.witness
                        ),
                        Some(n - 1),
                    ));
                }
                return Ok(Resume {
                    segment_index: index,
                    offset: offset + got as u64,
                    line: line_no + 1,
                    head: (entry.seq, entry.hash),
                    tree,
                    active_segment,
                    entries_hashed: hashed,
                });
            }
            if line.seq >= n {
                return Err(altered(
                    format!("entry {} should have come before", n - 1),
                    Some(line.seq),
                ));
            }
            offset += got as u64;
            line_no += 1;
        }
    }
    Err(PrefixError::FullCheck(format!(
        "entry {} was not found",
        n - 1
    )))
}

/// The sequence of a segment's first line, read where the writer puts it.
fn first_seq(path: &Path) -> Result<Option<u64>, PrefixError> {
    let file = File::open(path).map_err(|e| PrefixError::Io(path.to_path_buf(), e))?;
    let mut first = Vec::new();
    BufReader::new(file)
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut first)
        .map_err(|e| PrefixError::Io(path.to_path_buf(), e))?;
    let content = first.strip_suffix(b"\n").unwrap_or(&first);
    Ok(hash_line(content).ok().map(|l| l.seq))
}

/// When a segment's last complete line was written (Unix seconds), if it can be read.
fn last_time(path: &Path) -> Result<Option<i64>, PrefixError> {
    let io = |e| PrefixError::Io(path.to_path_buf(), e);
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    // An entry is a few KiB at most; a rotation checkpoint ends every archived segment.
    let tail = len.min(64 * 1024);
    file.seek(SeekFrom::Start(len - tail)).map_err(io)?;
    let mut bytes = Vec::with_capacity(tail as usize);
    file.read_to_end(&mut bytes).map_err(io)?;
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return Ok(None);
    };
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    Ok(hash_line(&body[start..]).ok().and_then(|l| {
        chrono::DateTime::parse_from_rfc3339(l.time)
            .ok()
            .map(|t| t.timestamp())
    }))
}
