//! Declared flow policies: the language, loading, evaluation and obligations.
//! INTERFACE STUB: to be implemented (see issue 3).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::envelope::Kind;
use crate::schema::SchemaSet;
use crate::tls::identity::ClientIdentity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

/// A rule that matched a record, as shown to the sender and written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchedRule {
    pub id: String,
    pub effect: Effect,
    pub reason: String,
    pub regulation: String,
}

/// Something the gateway must do to a record before forwarding an allowed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Obligation {
    /// Replace the string at `pointer` by its keyed HMAC-SHA-256 (hex).
    Pseudonymise { pointer: String, rule: String },
    /// Remove the field at `pointer`.
    Drop { pointer: String, rule: String },
}

/// The outcome of evaluating the policy set: deny overrides allow, default deny.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub effect: Effect,
    /// Every rule that matched (allow and deny), in policy order.
    pub matched: Vec<MatchedRule>,
    /// Obligations of the matched allow rules (empty on deny).
    pub obligations: Vec<Obligation>,
    pub policy_version: String,
}

/// What a decision is made about.
pub struct DecisionInput<'a> {
    pub identity: &'a ClientIdentity,
    /// The whole envelope, already valid against its schemas.
    pub record: &'a serde_json::Value,
    pub kind: Kind,
    pub from: &'a str,
    pub to: &'a str,
    pub now: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("policy {file}: {message}")]
    Invalid { file: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ObligationError {
    #[error("obligation of rule {rule} on {pointer}: {message}")]
    Failed {
        rule: String,
        pointer: String,
        message: String,
    },
}

/// The compiled policy set of one load, with the pseudonymisation key if configured.
pub struct PolicyEngine {}

impl PolicyEngine {
    pub fn load(
        _dir: &Path,
        _schemas: &SchemaSet,
        _settings: &BTreeMap<String, serde_json::Value>,
        _pseudonymisation_key: Option<&Path>,
    ) -> Result<PolicyEngine, PolicyLoadError> {
        unimplemented!()
    }
    /// Pure: the same input always gives the same decision.
    pub fn decide(&self, _input: &DecisionInput<'_>) -> Decision {
        unimplemented!()
    }
    /// Applies the decision's obligations to the record to be forwarded; returns what was done
    /// (for the audit log: the pointer and action, never the values).
    pub fn apply_obligations(
        &self,
        _decision: &Decision,
        _record: &mut serde_json::Value,
    ) -> Result<Vec<String>, ObligationError> {
        unimplemented!()
    }
    /// Version label of the set (declared version + short hash).
    pub fn version(&self) -> &str {
        unimplemented!()
    }
    /// SHA-256 (hex) over the policy files of this load.
    pub fn hash(&self) -> &str {
        unimplemented!()
    }
    /// Warnings worth logging at start (e.g. a rule needs pseudonymisation but no key is set).
    pub fn warnings(&self) -> &[String] {
        unimplemented!()
    }
}
