//! The one decision sequence: a record's bytes, its sender, the rules in force and the time in;
//! the decision and exactly what may leave the gateway out. Pure: no network, no files, no clock,
//! no shared state. The pipeline (`serve`), `check`, `policy test` and the benches all call
//! [`Checkpoint::examine`], so a record is decided the same way wherever it is decided.
//!
//! The sequence: JSON depth and value-count limits (one pass over the bytes) → parse (a key written twice is refused) → envelope schema →
//! `created_at` within the window around the decision time → route (configured parks, crossing
//! the boundary, `from` is the certificate's park) → body schema → policy → obligations.
//! What is stateful (replay memory, rate limits, the audit log, forwarding) stays in the pipeline.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::{LimitsConfig, ParkConfig, ParkId};
use crate::envelope::{record_id_hint, EnvelopeHead, Kind};
use crate::error::Refusal;
pub use crate::error::{origin_mismatch_rule, ORIGIN_MISMATCH_RULE};
use crate::json_limits::{parse_record, JsonError, JsonLimits, LimitExceeded};
use crate::policy::{Decision, DecisionInput, Effect, MatchedRule, PolicyEngine};
use crate::schema::{SchemaFailure, SchemaSet, SchemaViolation};
use crate::tls::identity::ClientIdentity;

/// The id of the gateway's own rule for an allow whose obligations could not be met.
pub const OBLIGATION_FAILED_RULE: &str = "gateway.obligation-failed";

/// The rules a record is examined against: one load of schemas and policies, the parks served.
#[derive(Clone, Copy)]
pub struct Checkpoint<'a> {
    pub schemas: &'a SchemaSet,
    pub policies: &'a PolicyEngine,
    /// The parks this gateway serves. `None` when deciding offline without a configuration:
    /// then only the envelope schema constrains `from` and `to`.
    pub parks: Option<&'a BTreeMap<ParkId, ParkConfig>>,
    /// Deepest JSON nesting accepted (`limits.max_json_depth`).
    pub max_json_depth: usize,
    /// Most JSON values a record may hold (`limits.max_json_values`): what its tree costs in
    /// memory while it is decided.
    pub max_json_values: usize,
    /// How far `created_at` may lie from the decision time. `None` only for policy test cases,
    /// which judge the policies on records written for a fixed date.
    pub record_window: Option<RecordWindow>,
}

/// How far a record's `created_at` may lie from the decision time: replay memory only has to
/// remember record ids for this long, and a record held back for weeks is not decided as new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordWindow {
    pub max_age: std::time::Duration,
    pub max_future: std::time::Duration,
}

impl RecordWindow {
    pub fn of(limits: &LimitsConfig) -> RecordWindow {
        RecordWindow {
            max_age: limits.record_max_age,
            max_future: limits.record_max_future,
        }
    }

    /// Refuses a `created_at` outside the window around `now`.
    fn check(&self, record: &Value, now: DateTime<Utc>) -> Result<(), Refusal> {
        let text = record
            .get("created_at")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let created = DateTime::parse_from_rfc3339(text).map_err(|_| {
            Refusal::InvalidEnvelope(vec![SchemaViolation {
                pointer: "/created_at".into(),
                rule: "format".into(),
                message: "not an RFC 3339 date-time with a time-zone offset".into(),
            }])
        })?;
        let span =
            |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let earliest = now.checked_sub_signed(span(self.max_age)).unwrap_or(now);
        let latest = now.checked_add_signed(span(self.max_future)).unwrap_or(now);
        let created = created.with_timezone(&Utc);
        if created < earliest || created > latest {
            return Err(Refusal::StaleRecord {
                created_at: text.chars().take(64).collect(),
                earliest,
                latest,
            });
        }
        Ok(())
    }
}

/// What the gateway learnt of a record, also when it refuses it: for the audit entry, the
/// metrics and the answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFacts {
    pub record_id: Option<String>,
    pub kind: Option<Kind>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A record that reached a policy decision.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub head: EnvelopeHead,
    /// The decision after obligations: an allow whose obligations cannot be met is a deny here,
    /// with [`OBLIGATION_FAILED_RULE`] among the matched rules (fail closed).
    pub decision: Decision,
    /// What leaves the gateway: `Some` exactly when the decision is allow. Without obligations
    /// these are the bytes as received (the audit log's SHA-256 matches what the endpoint gets).
    pub forward: Option<Bytes>,
    /// The obligations applied (pointer and action, never values), for the audit log.
    pub applied: Vec<String>,
}

/// The result of examining one record.
#[derive(Debug)]
pub struct Examination {
    pub facts: RecordFacts,
    pub outcome: Result<Verdict, Refusal>,
}

impl Checkpoint<'_> {
    /// Examines one record as received, from `sender`, at `now`.
    pub fn examine(
        &self,
        body: &Bytes,
        sender: &ClientIdentity,
        now: DateTime<Utc>,
    ) -> Examination {
        let mut facts = RecordFacts::default();
        let outcome = self.decide(body, sender, now, &mut facts);
        Examination { facts, outcome }
    }

    fn decide(
        &self,
        body: &Bytes,
        sender: &ClientIdentity,
        now: DateTime<Utc>,
        facts: &mut RecordFacts,
    ) -> Result<Verdict, Refusal> {
        let limits = JsonLimits {
            max_depth: self.max_json_depth,
            max_values: self.max_json_values,
        };
        match limits.check(body) {
            Ok(_) => {}
            Err(LimitExceeded::Depth) => {
                return Err(Refusal::TooDeep {
                    limit: self.max_json_depth,
                })
            }
            Err(LimitExceeded::Values) => {
                return Err(Refusal::TooManyValues {
                    limit: self.max_json_values,
                })
            }
        }
        let record = parse_record(body).map_err(|e| match e {
            JsonError::DuplicateKey { pointer } => Refusal::DuplicateKey { pointer },
            JsonError::Malformed(e) => Refusal::MalformedJson(e.to_string()),
        })?;
        facts.record_id = record_id_hint(&record);

        let schema_result = self.schemas.validate(&record);
        if let Err(SchemaFailure::Envelope(violations)) = schema_result {
            note_partial_head(facts, &record);
            return Err(Refusal::InvalidEnvelope(violations));
        }
        let head = EnvelopeHead::read(&record).ok_or_else(|| {
            Refusal::InvalidEnvelope(vec![SchemaViolation {
                pointer: String::new(),
                rule: "envelope".into(),
                message: "record_id, kind, from and to must be strings".into(),
            }])
        })?;
        facts.record_id = Some(head.record_id.clone());
        facts.kind = Some(head.kind);
        facts.from = Some(head.from.clone());
        facts.to = Some(head.to.clone());

        if let Some(window) = &self.record_window {
            window.check(&record, now)?;
        }

        self.check_route(sender, &head)?;
        if let Err(SchemaFailure::Body(_, violations)) = schema_result {
            return Err(Refusal::SchemaViolation(violations));
        }

        let decision = self.policies.decide(&DecisionInput {
            identity: sender,
            record: &record,
            kind: head.kind,
            from: &head.from,
            to: &head.to,
            now,
        });
        let (decision, forward, applied) =
            self.apply_obligations(decision, record, body, &head.to, now);
        Ok(Verdict {
            head,
            decision,
            forward,
            applied,
        })
    }

    /// `from` and `to` must be configured parks, different from each other, and `from` must be
    /// the park whose CA issued the sender's certificate — never trusted from the body.
    fn check_route(&self, sender: &ClientIdentity, head: &EnvelopeHead) -> Result<(), Refusal> {
        if let Some(parks) = self.parks {
            for (pointer, park) in [("/from", &head.from), ("/to", &head.to)] {
                if !parks.contains_key(park) {
                    return Err(Refusal::UnknownPark {
                        pointer,
                        park: park.clone(),
                    });
                }
            }
        }
        if head.from == head.to {
            return Err(Refusal::SamePark(head.from.clone()));
        }
        if head.from != sender.park {
            return Err(Refusal::OriginMismatch {
                claimed: head.from.clone(),
                certificate_park: sender.park.clone(),
            });
        }
        Ok(())
    }

    /// Applies the obligations of an allow decision. Without obligations the record leaves
    /// exactly as it arrived, byte for byte.
    fn apply_obligations(
        &self,
        decision: Decision,
        record: Value,
        body: &Bytes,
        to: &str,
        now: DateTime<Utc>,
    ) -> (Decision, Option<Bytes>, Vec<String>) {
        if decision.effect != Effect::Allow {
            return (decision, None, Vec::new());
        }
        if decision.obligations.is_empty() {
            return (decision, Some(body.clone()), Vec::new());
        }
        let mut record = record;
        match self
            .policies
            .apply_obligations(&decision, &mut record, to, now)
        {
            Ok(applied) => match serde_json::to_vec(&record) {
                Ok(bytes) => (decision, Some(Bytes::from(bytes)), applied),
                Err(e) => (obligation_denial(decision, e.to_string()), None, Vec::new()),
            },
            Err(e) => (obligation_denial(decision, e.to_string()), None, Vec::new()),
        }
    }

    /// The decision as the offline tools (`check`, `policy test`) report it: an origin mismatch
    /// is a deny by the gateway's own rule, as the gateway answers it; any other refusal is
    /// invalid input and stays a refusal.
    pub fn offline_decision(&self, outcome: Result<Verdict, Refusal>) -> Result<Decision, Refusal> {
        match outcome {
            Ok(verdict) => Ok(verdict.decision),
            Err(refusal) => match refusal.gateway_rule() {
                Some(rule) => Ok(Decision {
                    effect: Effect::Deny,
                    matched: vec![rule],
                    obligations: Vec::new(),
                    policy_version: self.policies.version().to_string(),
                }),
                None => Err(refusal),
            },
        }
    }
}

fn obligation_denial(mut decision: Decision, reason: String) -> Decision {
    decision.effect = Effect::Deny;
    decision.obligations.clear();
    decision.matched.push(MatchedRule {
        id: OBLIGATION_FAILED_RULE.into(),
        effect: Effect::Deny,
        reason: format!("an obligation of the allowing rule could not be met: {reason}"),
        regulation: "fail closed: a record is forwarded only with every obligation applied".into(),
    });
    decision
}

/// Keeps whatever routing facts an invalid envelope does have, for the audit entry. Bounded so a
/// hostile value cannot bloat the log.
fn note_partial_head(facts: &mut RecordFacts, record: &Value) {
    let short = |k: &str| {
        record
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| s.len() <= 32)
            .map(str::to_string)
    };
    facts.kind = record
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::parse);
    facts.from = short("from");
    facts.to = short("to");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::policy::obligations::PseudonymKey;

    /// The repository root: this crate lives in `crates/gateway-core/`.
    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    struct Shipped {
        schemas: SchemaSet,
        policies: PolicyEngine,
    }

    fn shipped() -> Shipped {
        let schemas = SchemaSet::load(&root().join("schemas")).unwrap();
        let key = PseudonymKey::from_hex(&"ab".repeat(32)).unwrap();
        let policies = PolicyEngine::load_with_key(
            &root().join("policies"),
            &schemas,
            &BTreeMap::new(),
            Some(key),
        )
        .unwrap()
        .with_registry(Some(std::sync::Arc::new(
            crate::registry::Registry::load(&root().join("examples/registry.toml"), None).unwrap(),
        )));
        Shipped { schemas, policies }
    }

    impl Shipped {
        fn checkpoint(&self) -> Checkpoint<'_> {
            Checkpoint {
                schemas: &self.schemas,
                policies: &self.policies,
                parks: None,
                max_json_depth: crate::json_limits::DEFAULT_MAX_DEPTH,
                max_json_values: crate::json_limits::DEFAULT_MAX_VALUES,
                record_window: None,
            }
        }
    }

    fn record(name: &str) -> Value {
        let text = std::fs::read(root().join("policies/tests/records").join(name)).unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    /// The sample sender of the park for talent records (the registry holds its facts).
    fn sender(park: &str) -> ClientIdentity {
        let organisation = match park {
            "sz" => "Futian Quantum Devices Co.",
            _ => "HKSTP Biomedical Ltd.",
        };
        ClientIdentity {
            park: park.into(),
            organisation: organisation.into(),
            subject: format!("O={organisation}"),
            fingerprint_sha256: String::new(),
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T10:00:00+08:00")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn an_allowed_record_without_obligations_leaves_byte_for_byte() {
        let s = shipped();
        let body = Bytes::from(
            serde_json::to_vec_pretty(&record("data-sz-hk-academic-measurements.json")).unwrap(),
        );
        let exam = s.checkpoint().examine(&body, &sender("sz"), at());
        let verdict = exam.outcome.unwrap();
        assert_eq!(verdict.decision.effect, Effect::Allow);
        assert!(verdict.applied.is_empty());
        assert_eq!(verdict.forward.as_deref(), Some(&body[..]));
        assert_eq!(exam.facts.from.as_deref(), Some("sz"));
    }

    #[test]
    fn an_allowed_record_with_obligations_leaves_as_the_obligations_made_it() {
        let s = shipped();
        let original = record("talent-sz-hk-researcher.json");
        let body = Bytes::from(serde_json::to_vec(&original).unwrap());
        let verdict = s
            .checkpoint()
            .examine(&body, &sender("sz"), at())
            .outcome
            .unwrap();
        assert_eq!(verdict.decision.effect, Effect::Allow, "{verdict:?}");
        assert!(!verdict.applied.is_empty());
        let forwarded: Value = serde_json::from_slice(&verdict.forward.unwrap()).unwrap();
        assert_ne!(
            forwarded["body"]["person_ref"],
            original["body"]["person_ref"]
        );
        assert_eq!(forwarded["record_id"], original["record_id"]);
    }

    #[test]
    fn a_denied_record_has_nothing_to_forward() {
        let s = shipped();
        let mut r = record("data-sz-hk-academic-measurements.json");
        r["body"]["data_grade"] = json!("core");
        let body = Bytes::from(serde_json::to_vec(&r).unwrap());
        let verdict = s
            .checkpoint()
            .examine(&body, &sender("sz"), at())
            .outcome
            .unwrap();
        assert_eq!(verdict.decision.effect, Effect::Deny);
        assert!(verdict.forward.is_none());
    }

    #[test]
    fn a_sender_of_the_other_park_is_refused_before_any_policy_and_is_a_deny_offline() {
        let s = shipped();
        let body = Bytes::from(
            serde_json::to_vec(&record("data-sz-hk-academic-measurements.json")).unwrap(),
        );
        let cp = s.checkpoint();
        let exam = cp.examine(&body, &sender("hk"), at());
        let refusal = exam.outcome.as_ref().unwrap_err();
        assert_eq!(refusal.code(), "origin_mismatch");
        let decision = cp.offline_decision(exam.outcome).unwrap();
        assert_eq!(decision.effect, Effect::Deny);
        assert_eq!(decision.matched, vec![origin_mismatch_rule("sz", "hk")]);
    }

    #[test]
    fn routes_are_checked_against_the_configured_parks_and_must_cross() {
        let s = shipped();
        let mut r = record("data-sz-hk-academic-measurements.json");
        r["to"] = json!("sz");
        let body = Bytes::from(serde_json::to_vec(&r).unwrap());
        let exam = s.checkpoint().examine(&body, &sender("sz"), at());
        assert_eq!(exam.outcome.unwrap_err().code(), "same_park");

        let mut parks = BTreeMap::new();
        for id in ["sz", "hk"] {
            parks.insert(
                id.to_string(),
                ParkConfig {
                    id: id.to_string(),
                    client_ca: PathBuf::new(),
                    endpoint: String::new(),
                    endpoint_ca: PathBuf::new(),
                    crl: Vec::new(),
                },
            );
        }
        r["to"] = json!("mo");
        let body = Bytes::from(serde_json::to_vec(&r).unwrap());
        let mut cp = s.checkpoint();
        // Offline, without a configuration, `mo` is only a park no rule covers.
        let offline = cp.examine(&body, &sender("sz"), at()).outcome.unwrap();
        assert_eq!(offline.decision.effect, Effect::Deny);
        cp.parks = Some(&parks);
        let exam = cp.examine(&body, &sender("sz"), at());
        assert!(matches!(
            exam.outcome,
            Err(Refusal::UnknownPark { pointer: "/to", .. })
        ));
    }

    #[test]
    fn json_nested_past_the_limit_is_refused_before_it_is_parsed() {
        let s = shipped();
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let exam = s
            .checkpoint()
            .examine(&Bytes::from(deep), &sender("sz"), at());
        assert_eq!(exam.outcome.unwrap_err().code(), "json_too_deep");
        assert_eq!(exam.facts, RecordFacts::default());
    }

    #[test]
    fn a_record_holding_more_values_than_the_limit_is_refused_before_it_is_parsed() {
        let s = shipped();
        let mut r = record("materials-sz-hk-quantum-equipment.json");
        let mut cp = s.checkpoint();
        cp.max_json_values = 1000;
        // Within the limit: decided as before (the items break the schema).
        r["body"]["items"] = json!(vec![json!({}); 900]);
        let body = Bytes::from(serde_json::to_vec(&r).unwrap());
        let exam = cp.examine(&body, &sender("sz"), at());
        assert_eq!(exam.outcome.unwrap_err().code(), "schema_violation");
        r["body"]["items"] = json!(vec![json!({}); 1000]);
        let body = Bytes::from(serde_json::to_vec(&r).unwrap());
        let exam = cp.examine(&body, &sender("sz"), at());
        let refusal = exam.outcome.unwrap_err();
        assert_eq!(refusal.code(), "json_too_many_values");
        assert_eq!(refusal.status(), http::StatusCode::BAD_REQUEST);
        assert!(refusal.message().contains("1000"), "{}", refusal.message());
        // Nothing was parsed, so nothing of the envelope is known.
        assert_eq!(exam.facts, RecordFacts::default());
    }

    #[test]
    fn an_invalid_envelope_keeps_the_routing_facts_it_has() {
        let s = shipped();
        let mut r = record("data-sz-hk-academic-measurements.json");
        r["record_id"] = json!(42);
        let body = Bytes::from(serde_json::to_vec(&r).unwrap());
        let exam = s.checkpoint().examine(&body, &sender("sz"), at());
        assert_eq!(exam.outcome.unwrap_err().code(), "invalid_envelope");
        assert_eq!(exam.facts.kind, Some(Kind::Data));
        assert_eq!(exam.facts.to.as_deref(), Some("hk"));
        assert_eq!(exam.facts.record_id, None);
    }
}
