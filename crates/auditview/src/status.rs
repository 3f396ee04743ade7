//! The verification status shown at the top of every page: exactly what `audit verify
//! --public-key FILE [--witness-key FILE] --allow-unsigned-tail` finds (the same functions), run
//! at start and again whenever the log has grown.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use hetao_gateway_core::audit::chain::{active_log, expand_segments, verify_logs_with_tree};
use hetao_gateway_core::audit::witnessing::{
    check_witnessed, cosignatures_path, CosignedCheckpoint,
};
use hetao_gateway_core::audit::{AuditPublicKey, VerifyReport};

/// The most of a cosignatures file read (a few hundred bytes per checkpoint and witness).
const MAX_COSIGNATURES_BYTES: u64 = 64 * 1024 * 1024;

/// One run of the verifier.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// No hash, link, sequence, tree root, signature or witness problem (a tail not yet sealed,
    /// as in a log still being written, is allowed and shown in `tail_problem`).
    pub intact: bool,
    /// Why the tail is not sealed by a signature, if it is not.
    pub tail_problem: Option<String>,
    pub report: VerifyReport,
    /// The audit key the signatures were checked with.
    pub key_id: String,
    pub verified_at: DateTime<Utc>,
    pub took_ms: u64,
}

/// Runs `audit verify`'s checks over the logs named on the command line.
pub fn verify(logs: &[PathBuf], key: &AuditPublicKey, witness_keys: &[AuditPublicKey]) -> Status {
    let started = Instant::now();
    let (mut report, tree) = match expand_segments(logs) {
        Ok(files) => verify_logs_with_tree(&files, Some(key)),
        Err(e) => {
            let mut r = verify_logs_with_tree(&[], Some(key)).0;
            r.problem = Some(hetao_gateway_core::audit::VerifyProblem {
                seq: None,
                file: logs.first().cloned().unwrap_or_default(),
                line: None,
                message: e.to_string(),
            });
            (r, None)
        }
    };
    if !witness_keys.is_empty() {
        report.witnesses = check_witnessed(
            tree.as_deref(),
            report.last_checkpoint_seq,
            &cosignatures_path(&active_log(logs)),
            witness_keys,
            Some(key),
            true,
        );
    }
    Status {
        intact: report.is_intact(true),
        tail_problem: report.tail_problem(),
        report,
        key_id: key.key_id().to_string(),
        verified_at: Utc::now(),
        took_ms: started.elapsed().as_millis() as u64,
    }
}

/// The witnesses named in the cosignatures file beside the log, by tree size. Which of them
/// verify with the keys given is the status's `witnesses`.
pub fn cosignatures(logs: &[PathBuf]) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let path = cosignatures_path(&active_log(logs));
    for line in read_capped(&path).lines() {
        if let Ok(c) = serde_json::from_str::<CosignedCheckpoint>(line) {
            let names = out.entry(c.size).or_default();
            if !names.contains(&c.witness) {
                names.push(c.witness);
            }
        }
    }
    out
}

fn read_capped(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_COSIGNATURES_BYTES).read_to_string(&mut text);
    }
    text
}

/// The status of every log a view shows, and of the database it reads them from: what the top of
/// every page says.
#[derive(Debug, Clone)]
pub struct Overview {
    /// Each log with its instance (`None`: the files given on the command line).
    pub logs: Vec<(Option<String>, std::sync::Arc<Status>)>,
    /// Over a cluster's database (`audit serve --database`).
    pub database: Option<crate::database::DatabaseState>,
    /// The witnesses named with `--witness-key` whose cosignatures cannot be checked here: a
    /// cluster's cosignatures stay beside each instance's files and are not shipped.
    pub unshipped_witnesses: Vec<String>,
}

impl Overview {
    /// Every log verifies (a tail not yet sealed allowed).
    pub fn intact(&self) -> bool {
        self.logs.iter().all(|(_, s)| s.intact)
    }

    /// The one status of a view over files.
    pub fn single(&self) -> Option<&Status> {
        match (&self.database, self.logs.as_slice()) {
            (None, [(_, s)]) => Some(s),
            _ => None,
        }
    }
}
