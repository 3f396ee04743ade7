//! The tamper-evident audit log: hash-chained JSON Lines, group commit, signed checkpoints,
//! receipts, recovery, verification and queries.
//! INTERFACE STUB: to be implemented (see issue 4).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::config::AuditConfig;
use crate::tls::identity::ClientIdentity;

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
}

/// What the pipeline hands to the log. No personal data from the record: only ids, hashes,
/// routing facts, rule references and codes.
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
    /// Sequence of the decision entry an outcome entry belongs to.
    pub refers_to: Option<u64>,
    pub latency_us: u64,
}

/// Where an entry landed in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub seq: u64,
    pub hash: String,
}

/// Proof for the sender that its record was logged: signed by the gateway's audit key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub audit_seq: u64,
    pub entry_hash: String,
    pub record_id: String,
    pub signature: String,
    pub key_id: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error("audit log {path}: {message}")]
    Open { path: String, message: String },
}

/// Handle to the log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {}

impl AuditLog {
    /// Opens (or creates) the log, recovers a torn tail, and starts the writer.
    pub fn open(_cfg: &AuditConfig) -> Result<AuditLog, AuditError> {
        unimplemented!()
    }
    /// Appends one entry; resolves once it is durable under the configured fsync policy.
    pub async fn append(&self, _event: AuditEvent) -> Result<Appended, AuditError> {
        unimplemented!()
    }
    /// Signs a receipt for an appended entry.
    pub fn receipt(&self, _appended: &Appended, _record_id: &str) -> Receipt {
        unimplemented!()
    }
    /// Record ids that already have a decision (allow or deny) in the log, read at open.
    pub fn decided_record_ids(&self) -> HashSet<String> {
        unimplemented!()
    }
    /// `Err(reason)` once the log has failed; the gateway then refuses to forward.
    pub fn health(&self) -> Result<(), String> {
        unimplemented!()
    }
    /// Writes a final signed checkpoint and stops the writer.
    pub async fn close(&self) -> Result<(), AuditError> {
        unimplemented!()
    }
}
