//! Declared flow policies: the language, loading, evaluation and obligations.
//!
//! The language is declarative data (TOML or JSON files in `policies/`, documented in
//! `docs/policies.md`). [`PolicyEngine::load`] reads and checks the whole set once and compiles it
//! ([`compile`]) into a tree that [`PolicyEngine::decide`] evaluates ([`eval`]) without re-parsing:
//! pointers are split into tokens, literal dates parsed and settings folded into constants at load.
//!
//! Decision: deny overrides allow; with no matching rule the answer is deny ("default-deny").

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::envelope::Kind;
use crate::registry::Registry;
use crate::schema::SchemaSet;
use crate::tls::identity::ClientIdentity;

pub mod compile;
pub mod compiled;
pub mod dates;
pub mod eval;
pub mod obligations;
pub mod schema_walk;

pub use schema_walk::SchemaLookup;

/// Id of the synthetic entry shown when no rule allows a flow.
pub const DEFAULT_DENY_ID: &str = "default-deny";
/// Start of the warning given when rules read registry facts but no registry is configured.
const NO_REGISTRY_WARNING: &str = "no organisation registry configured ([registry] file)";
/// Id of the synthetic entry shown when an allow rule needs pseudonymisation but no key is set.
pub const KEY_MISSING_ID: &str = "gateway.pseudonymisation-key-missing";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
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

impl Decision {
    /// The ids of the matched rules, in order.
    pub fn rule_ids(&self) -> Vec<&str> {
        self.matched.iter().map(|m| m.id.as_str()).collect()
    }
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
    /// A rule is wrong: names the file, the rule id and the key inside the rule.
    #[error("policy {file}: rule `{rule}`: key `{key}`: {message}")]
    Rule {
        file: String,
        rule: String,
        key: String,
        message: String,
    },
    /// A setting override from the configuration (`[policies.settings]`) is wrong.
    #[error("policy setting `{name}`: {message}")]
    Setting { name: String, message: String },
    /// The pseudonymisation key file is missing or malformed (the key itself is never shown).
    #[error("pseudonymisation key {path}: {message}")]
    Key { path: String, message: String },
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

/// A documented setting of the policy set, with its effective value for this load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingInfo {
    pub name: String,
    pub default: serde_json::Value,
    pub value: serde_json::Value,
    pub description: String,
}

/// The compiled policy set of one load, with the pseudonymisation key if configured.
pub struct PolicyEngine {
    set: compile::CompiledSet,
    /// The organisation registry decided against (`[registry] file`), if any.
    registry: Option<Arc<Registry>>,
    key: Option<obligations::PseudonymKey>,
    version: String,
    hash: String,
    warnings: Vec<String>,
}

impl std::fmt::Debug for PolicyEngine {
    // Hand-written so the key can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("version", &self.version)
            .field("rules", &self.set.rules.len())
            .field("registry", &self.registry.as_ref().map(|r| r.len()))
            .field("pseudonymisation_key", &self.key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl PolicyEngine {
    pub fn load(
        dir: &Path,
        schemas: &SchemaSet,
        settings: &BTreeMap<String, serde_json::Value>,
        pseudonymisation_key: Option<&Path>,
    ) -> Result<PolicyEngine, PolicyLoadError> {
        Self::load_with(dir, schemas, settings, pseudonymisation_key)
    }

    /// Like [`PolicyEngine::load`], against any source of kind schemas (tests use plain documents).
    pub fn load_with(
        dir: &Path,
        schemas: &dyn SchemaLookup,
        settings: &BTreeMap<String, serde_json::Value>,
        pseudonymisation_key: Option<&Path>,
    ) -> Result<PolicyEngine, PolicyLoadError> {
        let key = match pseudonymisation_key {
            Some(p) => Some(obligations::PseudonymKey::from_file(p)?),
            None => None,
        };
        Self::load_with_key(dir, schemas, settings, key)
    }

    /// Like [`PolicyEngine::load_with`], with a key already read (tests, `policy test`).
    pub fn load_with_key(
        dir: &Path,
        schemas: &dyn SchemaLookup,
        settings: &BTreeMap<String, serde_json::Value>,
        key: Option<obligations::PseudonymKey>,
    ) -> Result<PolicyEngine, PolicyLoadError> {
        let loaded = compile::load_dir(dir, schemas, settings)?;
        let mut warnings = Vec::new();
        if key.is_none() {
            let needing: Vec<&str> = loaded
                .set
                .rules
                .iter()
                .filter(|r| r.needs_key())
                .map(|r| r.id.as_str())
                .collect();
            if !needing.is_empty() {
                warnings.push(format!(
                    "no pseudonymisation key configured ([policies] pseudonymisation_key): \
                     records allowed by {} will be denied (fail closed)",
                    needing.join(", ")
                ));
            }
        }
        let version = format!("{}+{}", loaded.declared_version, &loaded.hash[..12]);
        Ok(PolicyEngine {
            set: loaded.set,
            registry: None,
            key,
            version,
            hash: loaded.hash,
            warnings,
        })
    }

    /// Decides against `registry` from now on. The version label and hash then also cover the
    /// registry (its file's SHA-256), so an audit entry names the eligibility facts it used.
    /// Without a registry, every rule that needs a registry fact fails closed, and a warning
    /// says which.
    pub fn with_registry(mut self, registry: Option<Arc<Registry>>) -> PolicyEngine {
        self.warnings
            .retain(|w| !w.starts_with(NO_REGISTRY_WARNING));
        match &registry {
            Some(r) => {
                let mut h = ring::digest::Context::new(&ring::digest::SHA256);
                h.update(self.hash.as_bytes());
                h.update(b"\nregistry ");
                h.update(r.digest().as_bytes());
                self.hash = hex::encode(h.finish().as_ref());
                let declared = self
                    .version
                    .split('+')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                self.version = format!("{declared}+{}", &self.hash[..12]);
            }
            None => {
                let needing: Vec<&str> = self
                    .set
                    .rules
                    .iter()
                    .filter(|r| r.reads_registry())
                    .map(|r| r.id.as_str())
                    .collect();
                if !needing.is_empty() {
                    self.warnings.push(format!(
                        "{NO_REGISTRY_WARNING}: rules {} read registry facts and deny (fail \
                         closed) every record that needs them",
                        needing.join(", ")
                    ));
                }
            }
        }
        self.registry = registry;
        self
    }

    /// The registry decisions are made against, if any.
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_deref()
    }

    /// Pure: the same input always gives the same decision.
    pub fn decide(&self, input: &DecisionInput<'_>) -> Decision {
        eval::decide(
            &self.set,
            self.registry.as_deref(),
            self.key.is_some(),
            &self.version,
            input,
        )
    }

    /// Applies the decision's obligations to the record to be forwarded; returns what was done
    /// (for the audit log: the pointer and action, never the values).
    pub fn apply_obligations(
        &self,
        decision: &Decision,
        record: &mut serde_json::Value,
    ) -> Result<Vec<String>, ObligationError> {
        obligations::apply(self.key.as_ref(), decision, record)
    }

    /// Version label of the set (declared version + short hash).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 (hex) over the policy files of this load.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Warnings worth logging at start (e.g. a rule needs pseudonymisation but no key is set).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The set's documented settings and their values in force.
    pub fn settings(&self) -> &[SettingInfo] {
        &self.set.settings
    }

    /// Ids of the rules in policy order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.set.rules.iter().map(|r| r.id.as_str())
    }

    /// Whether a pseudonymisation key is loaded.
    pub fn has_pseudonymisation_key(&self) -> bool {
        self.key.is_some()
    }
}

#[cfg(test)]
mod tests;
