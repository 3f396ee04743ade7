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
pub mod identifying;
pub mod obligations;
pub mod pseudonym;
pub mod schema_walk;

pub use pseudonym::{KeyFiles, PseudonymKey, PseudonymKeys, PseudonymPlan};
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

/// Something the gateway must do to a record before forwarding an allowed record. A `-` token in
/// a pointer stands for every item of an array (`/body/companions/-/passport_no`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Obligation {
    /// Replace the string (or number) at `pointer` by `{"pseudonym", "key_id"}`: its keyed
    /// HMAC-SHA-256 (hex) in the scope of the destination park (and `purpose`), or in the
    /// `shared` scope when the rule declares the pseudonym `linkable` (with its `reason`).
    Pseudonymise {
        pointer: String,
        rule: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        purpose: Option<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        linkable: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Replace the date or date-time at `pointer` by its local day, month or year.
    Generalise {
        pointer: String,
        rule: String,
        to: Granularity,
    },
    /// Forward the field unchanged, on the legal `basis` that requires it.
    Keep {
        pointer: String,
        rule: String,
        basis: String,
    },
    /// Remove the field at `pointer`.
    Drop { pointer: String, rule: String },
}

impl Obligation {
    /// The field the obligation treats.
    pub fn pointer(&self) -> &str {
        match self {
            Obligation::Pseudonymise { pointer, .. }
            | Obligation::Generalise { pointer, .. }
            | Obligation::Keep { pointer, .. }
            | Obligation::Drop { pointer, .. } => pointer,
        }
    }

    /// The id of the rule that asks for it.
    pub fn rule(&self) -> &str {
        match self {
            Obligation::Pseudonymise { rule, .. }
            | Obligation::Generalise { rule, .. }
            | Obligation::Keep { rule, .. }
            | Obligation::Drop { rule, .. } => rule,
        }
    }

    /// `pseudonymise`, `generalise`, `keep` or `drop`: the key that declares it.
    pub fn action(&self) -> &'static str {
        match self {
            Obligation::Pseudonymise { .. } => "pseudonymise",
            Obligation::Generalise { .. } => "generalise",
            Obligation::Keep { .. } => "keep",
            Obligation::Drop { .. } => "drop",
        }
    }
}

/// How coarse a generalised date becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// `2026-12-01`: the local calendar date.
    Day,
    /// `2026-12`.
    Month,
    /// `2026`.
    Year,
}

impl Granularity {
    pub fn parse(s: &str) -> Option<Granularity> {
        match s {
            "day" => Some(Granularity::Day),
            "month" => Some(Granularity::Month),
            "year" => Some(Granularity::Year),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Month => "month",
            Granularity::Year => "year",
        }
    }
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

/// The compiled policy set of one load, with the pseudonymisation keys if configured.
pub struct PolicyEngine {
    set: compile::CompiledSet,
    /// The organisation registry decided against (`[registry] file`), if any.
    registry: Option<Arc<Registry>>,
    keys: Option<PseudonymKeys>,
    version: String,
    hash: String,
    warnings: Vec<String>,
}

impl std::fmt::Debug for PolicyEngine {
    // Hand-written so the key can never reach a log through `{:?}` (its id may: it reveals
    // nothing of the key).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("version", &self.version)
            .field("rules", &self.set.rules.len())
            .field("registry", &self.registry.as_ref().map(|r| r.len()))
            .field(
                "pseudonymisation_key",
                &self.keys.as_ref().map(|k| k.current().id()),
            )
            .finish()
    }
}

impl PolicyEngine {
    /// Loads the set in `dir` against the schemas, with the pseudonymisation keys `keys` names
    /// (read as of now: a previous key whose overlap has ended is left unread, with a warning).
    pub fn load(
        dir: &Path,
        schemas: &SchemaSet,
        settings: &BTreeMap<String, serde_json::Value>,
        keys: &KeyFiles,
    ) -> Result<PolicyEngine, PolicyLoadError> {
        Self::load_with(dir, schemas, settings, keys)
    }

    /// Like [`PolicyEngine::load`], against any source of kind schemas (tests use plain documents).
    pub fn load_with(
        dir: &Path,
        schemas: &dyn SchemaLookup,
        settings: &BTreeMap<String, serde_json::Value>,
        keys: &KeyFiles,
    ) -> Result<PolicyEngine, PolicyLoadError> {
        let (keys, key_warnings) = PseudonymKeys::load(keys, Utc::now())?;
        let mut engine = Self::load_with_keys(dir, schemas, settings, keys)?;
        engine.warnings.extend(key_warnings);
        Ok(engine)
    }

    /// Like [`PolicyEngine::load_with`], with a key already read (tests, `policy test`).
    pub fn load_with_key(
        dir: &Path,
        schemas: &dyn SchemaLookup,
        settings: &BTreeMap<String, serde_json::Value>,
        key: Option<PseudonymKey>,
    ) -> Result<PolicyEngine, PolicyLoadError> {
        Self::load_with_keys(dir, schemas, settings, key.map(PseudonymKeys::from))
    }

    /// Like [`PolicyEngine::load_with`], with the keys already read.
    pub fn load_with_keys(
        dir: &Path,
        schemas: &dyn SchemaLookup,
        settings: &BTreeMap<String, serde_json::Value>,
        keys: Option<PseudonymKeys>,
    ) -> Result<PolicyEngine, PolicyLoadError> {
        let loaded = compile::load_dir(dir, schemas, settings)?;
        let mut warnings = Vec::new();
        if keys.is_none() {
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
            keys,
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
            self.keys.is_some(),
            &self.version,
            input,
        )
    }

    /// Applies the decision's obligations to the record to be forwarded to park `to` at `now`;
    /// returns what was done (for the audit log: action, pointer, key id and scope, never the
    /// values).
    pub fn apply_obligations(
        &self,
        decision: &Decision,
        record: &mut serde_json::Value,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, ObligationError> {
        obligations::apply(
            &obligations::Destination {
                keys: self.keys.as_ref(),
                zone: self.set.zone,
                to,
                now,
            },
            decision,
            record,
        )
    }

    /// The key ids and scope a pseudonymise obligation gives a record bound for `to` at `now`
    /// (`None` for other obligations, or without a key).
    pub fn pseudonym_plan(
        &self,
        obligation: &Obligation,
        to: &str,
        now: DateTime<Utc>,
    ) -> Option<PseudonymPlan> {
        match obligation {
            Obligation::Pseudonymise {
                purpose, linkable, ..
            } => Some(
                self.keys
                    .as_ref()?
                    .plan(to, purpose.as_deref(), *linkable, now),
            ),
            _ => None,
        }
    }

    /// One line saying what an obligation does to a record bound for `to` at `now`, worded as
    /// the audit log words it (`pseudonymise /body/person_ref key pk-... scope to:hk`).
    pub fn describe_obligation(
        &self,
        obligation: &Obligation,
        to: &str,
        now: DateTime<Utc>,
    ) -> String {
        obligations::describe(
            obligation,
            self.pseudonym_plan(obligation, to, now).as_ref(),
        )
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
        self.keys.is_some()
    }

    /// The pseudonymisation keys in force, if any.
    pub fn pseudonymisation_keys(&self) -> Option<&PseudonymKeys> {
        self.keys.as_ref()
    }
}

#[cfg(test)]
mod tests;
