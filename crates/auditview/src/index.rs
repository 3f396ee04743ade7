//! The log held in memory as small rows: what the filters, pages and charts need of each entry
//! (about 80 bytes), and where its line is, so a page reads only the lines it shows.
//!
//! Built once at start by reading every segment; afterwards only what was appended to the active
//! segment is read (a rotation or any other change to an earlier file rebuilds it). Files are
//! only ever opened for reading.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::DateTime;

use hetao_gateway_core::audit::chain::{expand_segments, order_by_first_seq, MAX_LINE_BYTES};
use hetao_gateway_core::audit::entry::open_line;
use hetao_gateway_core::audit::{AuditEntry, AuditEntryType};

/// An interned string: an index into [`Names`]. [`NONE`] when the entry has no such field.
pub type Sym = u32;
pub const NONE: Sym = u32::MAX;
/// The top bit of a rule in the rule pool: the rule's effect was `deny`.
const DENY_BIT: u32 = 1 << 31;

/// The distinct texts of the log (kinds, parks, organisations, decisions, rule ids): few, however
/// long the log.
#[derive(Debug, Default)]
pub struct Names {
    ids: HashMap<String, Sym>,
    names: Vec<String>,
}

impl Names {
    fn intern(&mut self, s: &str) -> Sym {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as Sym;
        self.names.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }
    fn intern_opt(&mut self, s: Option<&str>) -> Sym {
        s.map_or(NONE, |s| self.intern(s))
    }
    /// The symbol of `s`, if the log holds it anywhere.
    pub fn lookup(&self, s: &str) -> Option<Sym> {
        self.ids.get(s).copied()
    }
    pub fn name(&self, id: Sym) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }
}

/// One entry, as the filters see it.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub seq: u64,
    /// Microseconds since the epoch (`i64::MIN` when the time does not parse).
    pub time_us: i64,
    /// Byte offset of the line in its file.
    pub offset: u64,
    /// Decision: the seq of its outcome entry; outcome: the seq of its decision. `u64::MAX`: none.
    pub related: u64,
    /// A hash of the record id, `0` when there is none (the line is read to confirm a match).
    pub record_hash: u64,
    pub file: u32,
    pub rules_at: u32,
    pub kind: Sym,
    pub from: Sym,
    pub to: Sym,
    pub org: Sym,
    pub decision: Sym,
    pub status: u16,
    pub rules_len: u16,
    pub entry_type: AuditEntryType,
}

/// Why the index could not be (entirely) built.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{0}")]
    Files(String),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The whole log, indexed.
#[derive(Debug, Default)]
pub struct LogIndex {
    /// The segment files in chain order.
    pub files: Vec<PathBuf>,
    /// Length of each file when it was read (the last: up to its last complete line).
    lens: Vec<u64>,
    rows: Vec<Row>,
    rule_pool: Vec<u32>,
    pub names: Names,
    /// A line that could not be read: indexing stopped there (`audit verify` names the damage).
    pub stopped_at: Option<String>,
}

pub fn record_hash(record_id: &str) -> u64 {
    // SipHash with fixed keys: stable within the process, which is all an index needs.
    let mut h = std::hash::DefaultHasher::new();
    record_id.hash(&mut h);
    h.finish().max(1)
}

impl LogIndex {
    /// Reads every segment of the logs named (`LOG...` as given on the command line).
    pub fn build(logs: &[PathBuf]) -> Result<LogIndex, IndexError> {
        let files = expand_segments(logs).map_err(|e| IndexError::Files(e.to_string()))?;
        let files = order_by_first_seq(&files).map_err(|p| IndexError::Files(p.to_string()))?;
        let mut index = LogIndex {
            files: files.clone(),
            lens: vec![0; files.len()],
            ..LogIndex::default()
        };
        for i in 0..files.len() {
            index.read_from(i, 0)?;
            if index.stopped_at.is_some() {
                break;
            }
        }
        Ok(index)
    }

    /// Takes in what was appended since the last read. Returns whether anything changed; a
    /// rotated or otherwise changed log is read again whole (`rebuilt` is then true).
    pub fn refresh(&mut self, logs: &[PathBuf]) -> Result<bool, IndexError> {
        let files = expand_segments(logs).map_err(|e| IndexError::Files(e.to_string()))?;
        let files = order_by_first_seq(&files).map_err(|p| IndexError::Files(p.to_string()))?;
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let same_files = files == self.files;
        let Some(last) = files.len().checked_sub(1) else {
            return Ok(false);
        };
        let earlier_unchanged =
            same_files && (0..last).all(|i| len(&self.files[i]) == self.lens[i]);
        let now = len(&files[last]);
        if earlier_unchanged && now >= self.lens[last] {
            if now == self.lens[last] || self.stopped_at.is_some() {
                return Ok(false);
            }
            let before = self.rows.len();
            self.read_from(last, self.lens[last])?;
            return Ok(self.rows.len() != before);
        }
        *self = LogIndex::build(logs)?;
        Ok(true)
    }

    /// Reads file `i` from byte `start`: complete lines only (a line still being written is left
    /// for the next refresh).
    fn read_from(&mut self, i: usize, start: u64) -> Result<(), IndexError> {
        let path = self.files[i].clone();
        let io = |source| IndexError::Read {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io)?;
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut buf = Vec::with_capacity(1024);
        let mut offset = start;
        loop {
            buf.clear();
            let n = reader
                .by_ref()
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(io)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                if n > MAX_LINE_BYTES {
                    self.stopped_at = Some(format!(
                        "{} at byte {offset}: a line longer than {MAX_LINE_BYTES} bytes",
                        path.display()
                    ));
                }
                break;
            }
            match open_line(&buf[..n - 1]) {
                Ok(entry) => self.push(&entry, i as u32, offset),
                Err((e, _)) => {
                    self.stopped_at = Some(format!("{} at byte {offset}: {e}", path.display()));
                    break;
                }
            }
            offset += n as u64;
        }
        self.lens[i] = offset;
        Ok(())
    }

    fn push(&mut self, e: &AuditEntry, file: u32, offset: u64) {
        let time_us = DateTime::parse_from_rfc3339(&e.time)
            .map(|t| t.timestamp_micros())
            .unwrap_or(i64::MIN);
        let rules_at = self.rule_pool.len() as u32;
        for r in e.rules.iter().take(u16::MAX as usize) {
            let id = self.names.intern(&r.id);
            let deny = if r.effect == "deny" { DENY_BIT } else { 0 };
            self.rule_pool.push(id | deny);
        }
        let row = Row {
            seq: e.seq,
            time_us,
            offset,
            related: e.refers_to.unwrap_or(u64::MAX),
            record_hash: e.record_id.as_deref().map_or(0, record_hash),
            file,
            rules_at,
            kind: self.names.intern_opt(e.kind.as_deref()),
            from: self.names.intern_opt(e.from.as_deref()),
            to: self.names.intern_opt(e.to.as_deref()),
            org: self
                .names
                .intern_opt(e.sender.as_ref().map(|s| s.organisation.as_str())),
            decision: self.names.intern_opt(e.decision.as_deref()),
            status: e.status.unwrap_or(0),
            rules_len: e.rules.len().min(u16::MAX as usize) as u16,
            entry_type: e.entry_type,
        };
        if e.entry_type == AuditEntryType::Outcome {
            if let Some(d) = e.refers_to.and_then(|d| self.position(d)) {
                self.rows[d].related = e.seq;
            }
        }
        self.rows.push(row);
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The rule ids matched by `row`, each with whether its effect was deny.
    pub fn rules(&self, row: &Row) -> impl Iterator<Item = (Sym, bool)> + '_ {
        let at = row.rules_at as usize;
        self.rule_pool[at..at + row.rules_len as usize]
            .iter()
            .map(|r| (r & !DENY_BIT, r & DENY_BIT != 0))
    }

    /// Where the entry `seq` is among the rows.
    pub fn position(&self, seq: u64) -> Option<usize> {
        let first = self.rows.first()?.seq;
        let guess = seq.checked_sub(first)? as usize;
        if self.rows.get(guess).is_some_and(|r| r.seq == seq) {
            return Some(guess);
        }
        self.rows.binary_search_by_key(&seq, |r| r.seq).ok()
    }

    pub fn row(&self, seq: u64) -> Option<&Row> {
        self.position(seq).map(|i| &self.rows[i])
    }

    /// The entry of `row` as written: its line read again and its hash checked.
    pub fn read_entry(&self, row: &Row) -> Result<(AuditEntry, String), String> {
        let path = self
            .files
            .get(row.file as usize)
            .ok_or_else(|| "no such file".to_string())?;
        read_entry_at(path, row.offset)
    }

    /// The entries of `rows` (indices into [`rows`](Self::rows), ascending), read file by file
    /// in one pass.
    pub fn read_entries(&self, positions: &[usize]) -> Result<Vec<AuditEntry>, String> {
        let mut out = Vec::with_capacity(positions.len());
        let mut open: Option<(u32, BufReader<File>, u64)> = None;
        let mut buf = Vec::with_capacity(1024);
        for &p in positions {
            let row = &self.rows[p];
            if open.as_ref().map(|o| o.0) != Some(row.file) {
                let path = self
                    .files
                    .get(row.file as usize)
                    .ok_or_else(|| "no such file".to_string())?;
                let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
                open = Some((row.file, BufReader::with_capacity(1 << 16, f), 0));
            }
            let Some((_, reader, at)) = open.as_mut() else {
                continue;
            };
            let skip = row.offset as i64 - *at as i64;
            reader.seek_relative(skip).map_err(|e| e.to_string())?;
            buf.clear();
            let n = reader
                .by_ref()
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|e| e.to_string())?;
            *at = row.offset + n as u64;
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let entry = open_line(line).map_err(|(e, _)| format!("seq {}: {e}", row.seq))?;
            out.push(entry);
        }
        Ok(out)
    }
}

/// Reads and opens the line at `offset` of `path`.
pub fn read_entry_at(path: &Path, offset: u64) -> Result<(AuditEntry, String), String> {
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    BufReader::new(file)
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
    let entry = open_line(line).map_err(|(e, _)| e.to_string())?;
    Ok((entry, String::from_utf8_lossy(line).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Selection as _, ViewFilter};
    use hetao_gateway_core::audit::entry::seal;
    use hetao_gateway_core::audit::{RuleRef, ZERO_HASH};

    /// Lines of a chain: a segment start, then decisions (odd seqs) each followed by its outcome.
    fn lines(n: u64) -> Vec<Vec<u8>> {
        let mut prev = ZERO_HASH.to_string();
        (0..n)
            .map(|seq| {
                let ty = match seq {
                    0 => AuditEntryType::SegmentStart,
                    s if s % 2 == 1 => AuditEntryType::Decision,
                    _ => AuditEntryType::Outcome,
                };
                let mut e = AuditEntry::new(
                    seq,
                    format!("2026-12-01T10:00:{:02}Z", seq % 60),
                    ty,
                    prev.clone(),
                );
                if ty == AuditEntryType::Decision {
                    e.record_id = Some(format!("id-{seq}"));
                    e.kind = Some(if seq % 3 == 0 { "data" } else { "talent" }.into());
                    e.decision = Some(if seq % 4 == 1 { "deny" } else { "allow" }.into());
                    e.rules = vec![RuleRef {
                        id: "R1".into(),
                        effect: e.decision.clone().unwrap_or_default(),
                        reason: "because".into(),
                        regulation: None,
                    }];
                }
                if ty == AuditEntryType::Outcome {
                    e.record_id = Some(format!("id-{}", seq - 1));
                    e.refers_to = Some(seq - 1);
                    e.decision = Some("forwarded".into());
                }
                let line = seal(&mut e).unwrap();
                prev = e.hash.clone();
                line
            })
            .collect()
    }

    #[test]
    fn every_line_is_indexed_with_its_rules_and_its_records_other_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        std::fs::write(&log, lines(9).concat()).unwrap();
        let index = LogIndex::build(&[log]).unwrap();
        assert_eq!(index.rows().len(), 9);
        let decision = index.row(1).unwrap();
        assert_eq!(decision.related, 2, "a decision knows its outcome");
        assert_eq!(index.row(2).unwrap().related, 1);
        let rules: Vec<_> = index.rules(decision).collect();
        assert_eq!(rules, vec![(index.names.lookup("R1").unwrap(), true)]);
        let (entry, line) = index.read_entry(index.row(5).unwrap()).unwrap();
        assert_eq!(entry.record_id.as_deref(), Some("id-5"));
        assert!(line.ends_with(&format!("\"hash\":\"{}\"}}", entry.hash)));
        // Filters on the rows; a record id is confirmed by its line.
        let deny = ViewFilter {
            decision: Some("deny".into()),
            ..ViewFilter::default()
        };
        let seqs: Vec<u64> = deny
            .select(&index)
            .iter()
            .map(|&i| index.rows()[i].seq)
            .collect();
        assert_eq!(seqs, vec![1, 5]);
        let by_id = ViewFilter {
            record_id: Some("id-5".into()),
            ..ViewFilter::default()
        };
        let seqs: Vec<u64> = by_id
            .select(&index)
            .iter()
            .map(|&i| index.rows()[i].seq)
            .collect();
        assert_eq!(seqs, vec![5, 6]);
    }

    #[test]
    fn a_line_still_being_written_waits_for_its_newline_and_appends_are_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let all = lines(8);
        let mut content = all[..5].concat();
        let torn = &all[5][..all[5].len() / 2];
        content.extend_from_slice(torn);
        std::fs::write(&log, &content).unwrap();
        let logs = vec![log.clone()];
        let mut index = LogIndex::build(&logs).unwrap();
        assert_eq!(index.rows().len(), 5);
        assert!(index.stopped_at.is_none());
        assert!(!index.refresh(&logs).unwrap(), "nothing new");
        // The rest of the line, and two more.
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, &all[5][all[5].len() / 2..]).unwrap();
        std::io::Write::write_all(&mut file, &all[6..].concat()).unwrap();
        assert!(index.refresh(&logs).unwrap());
        assert_eq!(
            index.rows().iter().map(|r| r.seq).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
        assert_eq!(index.row(5).unwrap().related, 6);
    }

    #[test]
    fn a_log_changed_other_than_by_appending_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        std::fs::write(&log, lines(9).concat()).unwrap();
        let logs = vec![log.clone()];
        let mut index = LogIndex::build(&logs).unwrap();
        std::fs::write(&log, lines(4).concat()).unwrap();
        assert!(index.refresh(&logs).unwrap());
        assert_eq!(index.rows().len(), 4);
    }
}
