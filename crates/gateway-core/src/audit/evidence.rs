//! Evidence for one record, checkable offline with the public keys alone: each of the record's
//! entries as written (the whole line), its inclusion proof, and the signed checkpoint (with any
//! witness cosignatures) of the tree the proofs lead to. `audit prove` writes it; `audit receipt
//! verify` checks it.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::scan_log;
use super::entry::{open_line, AuditEntryType};
use super::keys::AuditPublicKey;
use super::note::open_checkpoint;
use super::tree::{check_inclusion, hash_from_b64, hash_to_b64, ReceiptFacts};

/// The evidence bundle for one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub record_id: String,
    /// Size of the tree the proofs lead to (the latest checkpoint in the log covering them).
    pub tree_size: u64,
    /// That checkpoint: a C2SP signed note by the audit key, with the witnesses' cosignature
    /// lines where the log has them.
    pub checkpoint: String,
    pub key_id: String,
    pub entries: Vec<EvidenceEntry>,
}

/// One entry of the record as the log holds it, and the proof it is in the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceEntry {
    pub audit_seq: u64,
    /// The entry's line exactly as written (its `hash` member included).
    pub line: String,
    /// Inclusion proof: base64 hashes from the leaf's sibling up.
    pub inclusion: Vec<String>,
}

/// Why evidence cannot be made or does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("cannot read the log: {0}")]
    Log(String),
    #[error("the log given starts at seq {0}: proofs need every segment from seq 0")]
    Partial(u64),
    #[error("the log has no entry for record {0}")]
    NoEntries(String),
    #[error("no checkpoint in the log covers seq {0} yet (the log is still being written: try again after its next checkpoint)")]
    NotCovered(u64),
    #[error("entry seq {seq}: {problem}")]
    BadEntry { seq: u64, problem: String },
    #[error("the checkpoint does not hold: {0}")]
    BadCheckpoint(String),
}

/// Builds the evidence for `record_id` from the log segments `paths` (every segment from seq 0).
pub fn prove(paths: &[PathBuf], record_id: &str) -> Result<Evidence, EvidenceError> {
    let mut wanted: Vec<(u64, PathBuf, u64)> = Vec::new();
    let mut last_checkpoint: Option<(u64, String, String)> = None;
    let scanned = scan_log(paths, |e, path, offset| {
        if e.record_id.as_deref() == Some(record_id) {
            wanted.push((e.seq, path.to_path_buf(), offset));
        }
        if e.entry_type == AuditEntryType::Checkpoint {
            if let (Some(size), Some(note)) = (e.tree_size, &e.note) {
                let key_id = e.key_id.clone().unwrap_or_default();
                last_checkpoint = Some((size, note.clone(), key_id));
            }
        }
    })
    .map_err(EvidenceError::Log)?;
    let Some(tree) = scanned.tree else {
        return Err(EvidenceError::Partial(scanned.first_seq.unwrap_or(0)));
    };
    let Some(last_seq) = wanted.last().map(|w| w.0) else {
        return Err(EvidenceError::NoEntries(record_id.to_string()));
    };
    let Some((size, note, key_id)) = last_checkpoint.filter(|c| c.0 > last_seq) else {
        return Err(EvidenceError::NotCovered(last_seq));
    };
    let mut entries = Vec::with_capacity(wanted.len());
    for (seq, path, offset) in wanted {
        let line = read_line_at(&path, offset).map_err(EvidenceError::Log)?;
        let proof = tree
            .inclusion_proof(size, seq)
            .map_err(|e| EvidenceError::Log(e.to_string()))?;
        entries.push(EvidenceEntry {
            audit_seq: seq,
            line,
            inclusion: proof.iter().map(hash_to_b64).collect(),
        });
    }
    Ok(Evidence {
        record_id: record_id.to_string(),
        tree_size: size,
        checkpoint: note,
        key_id,
        entries,
    })
}

fn read_line_at(path: &Path, offset: u64) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut line = String::new();
    BufReader::new(file)
        .read_line(&mut line)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(line.trim_end_matches('\n').to_string())
}

/// Checks evidence with the audit public key alone: the checkpoint's signature, and for each
/// entry its hash, its record id and its inclusion in the checkpoint's tree.
pub fn verify_evidence(evidence: &Evidence, key: &AuditPublicKey) -> Result<(), EvidenceError> {
    let head = open_checkpoint(&evidence.checkpoint, key)
        .map_err(|p| EvidenceError::BadCheckpoint(p.to_string()))?;
    if head.size != evidence.tree_size {
        return Err(EvidenceError::BadCheckpoint(format!(
            "it signs a tree of {} entries, the evidence says {}",
            head.size, evidence.tree_size
        )));
    }
    if evidence.entries.is_empty() {
        return Err(EvidenceError::NoEntries(evidence.record_id.clone()));
    }
    for item in &evidence.entries {
        let bad = |problem: String| EvidenceError::BadEntry {
            seq: item.audit_seq,
            problem,
        };
        let entry = open_line(item.line.as_bytes()).map_err(|(e, _)| bad(e.to_string()))?;
        if entry.seq != item.audit_seq {
            return Err(bad(format!("the line is seq {}", entry.seq)));
        }
        if entry.record_id.as_deref() != Some(evidence.record_id.as_str()) {
            return Err(bad("the line is about another record".into()));
        }
        let proof: Option<Vec<_>> = item.inclusion.iter().map(|h| hash_from_b64(h)).collect();
        let proof = proof.ok_or_else(|| bad("a proof hash is not base64 of 32 bytes".into()))?;
        let leaf = ReceiptFacts::of(&entry).leaf_hash();
        if !check_inclusion(&proof, head.size, head.root, entry.seq, leaf) {
            return Err(bad(
                "its inclusion proof does not lead to the signed checkpoint".into(),
            ));
        }
    }
    Ok(())
}
