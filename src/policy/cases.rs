//! Policy test cases (`hetao-gateway policy test`), in the spirit of `opa test`.
//!
//! A case file (`policies/tests/*.toml`) holds `[[case]]` entries: a record (inline, or a path to
//! a record file relative to the case file) with optional pointer patches (`set`, `remove`), the
//! sender's identity, the decision time, optional setting overrides, and the expected decision
//! and matched rule ids. See `docs/policies.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{Decision, DecisionInput, Effect, PolicyEngine};
use crate::envelope::EnvelopeHead;
use crate::tls::identity::ClientIdentity;

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("test file {file}: {message}")]
    File { file: String, message: String },
    #[error("test file {file}: case `{case}`: {message}")]
    Case {
        file: String,
        case: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    description: Option<String>,
    #[serde(rename = "case", default)]
    cases: Vec<RawCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    /// A path (relative to the case file) or an inline record.
    record: toml::Value,
    #[serde(default)]
    set: BTreeMap<String, toml::Value>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    identity: Option<RawIdentity>,
    at: String,
    #[serde(default)]
    settings: BTreeMap<String, toml::Value>,
    expect: Effect,
    /// The exact set of matched rule ids (order does not matter).
    rules: Vec<String>,
    /// Whether the gateway has a pseudonymisation key (default true; false tests fail-closed).
    #[serde(default = "yes")]
    pseudonymisation_key: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    park: Option<String>,
    organisation: Option<String>,
    subject: Option<String>,
}

/// One test case, ready to run.
#[derive(Debug, Clone)]
pub struct PolicyCase {
    pub file: String,
    pub name: String,
    pub record: Value,
    pub identity: ClientIdentity,
    pub at: DateTime<Utc>,
    pub settings: BTreeMap<String, Value>,
    pub expect: Effect,
    pub rules: Vec<String>,
    pub with_key: bool,
}

/// The result of running one case.
#[derive(Debug)]
pub struct CaseOutcome {
    pub file: String,
    pub name: String,
    /// `None`: passed. Otherwise what differed.
    pub failure: Option<String>,
    pub decision: Option<Decision>,
}

/// Case files named by `paths` (files, or folders whose `*.toml` files are read), in name order.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CaseError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| CaseError::File {
                file: p.display().to_string(),
                message: format!("cannot list: {e}"),
            })?;
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn to_json(v: toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Reads the cases of one file.
pub fn read_file(path: &Path) -> Result<Vec<PolicyCase>, CaseError> {
    let file = path.display().to_string();
    let ferr = |message: String| CaseError::File {
        file: file.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| ferr(format!("cannot read: {e}")))?;
    let parsed: CaseFile = toml::from_str(&text).map_err(|e| ferr(e.to_string()))?;
    let _ = parsed.description;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for raw in parsed.cases {
        let cerr = |message: String| CaseError::Case {
            file: file.clone(),
            case: raw.name.clone(),
            message,
        };
        let mut record = match raw.record {
            toml::Value::String(rel) => {
                let p = base.join(&rel);
                let t = std::fs::read_to_string(&p)
                    .map_err(|e| cerr(format!("record {}: {e}", p.display())))?;
                serde_json::from_str::<Value>(&t)
                    .map_err(|e| cerr(format!("record {}: not JSON: {e}", p.display())))?
            }
            other => to_json(other),
        };
        for (ptr, v) in raw.set {
            set_pointer(&mut record, &ptr, to_json(v))
                .map_err(|m| cerr(format!("set `{ptr}`: {m}")))?;
        }
        for ptr in &raw.remove {
            remove_pointer(&mut record, ptr).map_err(|m| cerr(format!("remove `{ptr}`: {m}")))?;
        }
        let at = DateTime::parse_from_rfc3339(&raw.at)
            .map_err(|e| cerr(format!("at `{}`: not RFC 3339: {e}", raw.at)))?
            .with_timezone(&Utc);
        let from = record
            .get("from")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let id = raw.identity.unwrap_or(RawIdentity {
            park: None,
            organisation: None,
            subject: None,
        });
        let organisation = id.organisation.unwrap_or_else(|| "unknown".into());
        let identity = ClientIdentity {
            park: id.park.unwrap_or(from),
            subject: id
                .subject
                .unwrap_or_else(|| format!("CN=test, O={organisation}")),
            organisation,
            fingerprint_sha256: "0".repeat(64),
        };
        out.push(PolicyCase {
            file: file.clone(),
            name: raw.name.clone(),
            record,
            identity,
            at,
            settings: raw
                .settings
                .into_iter()
                .map(|(k, v)| (k, to_json(v)))
                .collect(),
            expect: raw.expect,
            rules: raw.rules,
            with_key: raw.pseudonymisation_key,
        });
    }
    Ok(out)
}

/// Sets the value at an RFC 6901 pointer, creating missing objects on the way (`-` appends).
pub fn set_pointer(root: &mut Value, ptr: &str, v: Value) -> Result<(), String> {
    let parsed = super::compile::parse_pointer(ptr)?;
    let Some((last, parents)) = parsed.tokens.split_last() else {
        *root = v;
        return Ok(());
    };
    let mut cur = root;
    for t in parents {
        cur = match cur {
            Value::Object(m) => m
                .entry(t.key.to_string())
                .or_insert_with(|| Value::Object(Default::default())),
            Value::Array(a) => {
                let i = t.index.ok_or("expected an array index")?;
                a.get_mut(i).ok_or("index out of range")?
            }
            _ => return Err(format!("`{}` is not an object or array", t.key)),
        };
    }
    match cur {
        Value::Object(m) => {
            m.insert(last.key.to_string(), v);
        }
        Value::Array(a) if &*last.key == "-" => a.push(v),
        Value::Array(a) => {
            let i = last.index.ok_or("expected an array index")?;
            *a.get_mut(i).ok_or("index out of range")? = v;
        }
        _ => return Err("parent is not an object or array".into()),
    }
    Ok(())
}

fn remove_pointer(root: &mut Value, ptr: &str) -> Result<(), String> {
    let i = ptr.rfind('/').ok_or("not a pointer")?;
    let (parent, last) = (&ptr[..i], &ptr[i + 1..]);
    match root.pointer_mut(parent) {
        Some(Value::Object(m)) => m
            .shift_remove(last)
            .map(|_| ())
            .ok_or_else(|| "no such field".to_string()),
        Some(Value::Array(a)) => {
            let idx: usize = last.parse().map_err(|_| "expected an index")?;
            if idx < a.len() {
                a.remove(idx);
                Ok(())
            } else {
                Err("index out of range".into())
            }
        }
        _ => Err("no such parent".into()),
    }
}

/// Runs one case against an engine loaded with the case's settings.
pub fn run_case(engine: &PolicyEngine, case: &PolicyCase) -> CaseOutcome {
    let outcome = |failure: Option<String>, decision: Option<Decision>| CaseOutcome {
        file: case.file.clone(),
        name: case.name.clone(),
        failure,
        decision,
    };
    let Some(head) = EnvelopeHead::read(&case.record) else {
        return outcome(
            Some("record has no valid envelope head (kind, from, to, record_id)".into()),
            None,
        );
    };
    let input = DecisionInput {
        identity: &case.identity,
        record: &case.record,
        kind: head.kind,
        from: &head.from,
        to: &head.to,
        now: case.at,
    };
    let d = engine.decide(&input);
    let mut got: Vec<&str> = d.rule_ids();
    got.sort_unstable();
    let mut want: Vec<&str> = case.rules.iter().map(String::as_str).collect();
    want.sort_unstable();
    let mut problems = Vec::new();
    if d.effect != case.expect {
        problems.push(format!(
            "expected {}, got {}",
            case.expect.as_str(),
            d.effect.as_str()
        ));
    }
    if got != want {
        problems.push(format!(
            "expected rules [{}], got [{}]",
            want.join(", "),
            got.join(", ")
        ));
    }
    let failure = (!problems.is_empty()).then(|| problems.join("; "));
    outcome(failure, Some(d))
}

/// Loads the policy set with setting overrides, with or without a pseudonymisation key.
pub type EngineLoader<'a> =
    dyn Fn(&BTreeMap<String, Value>, bool) -> Result<PolicyEngine, String> + 'a;
/// Checks a record against the schemas; the error describes the violations.
pub type RecordValidator<'a> = dyn Fn(&Value) -> Result<(), String> + 'a;

/// Runs cases, loading one engine per distinct (settings override, key present) through `load`.
/// `validate` (when given) checks each record against the schemas first: an invalid record is a
/// failed case, so shipped cases stay realistic.
pub fn run_all(
    cases: &[PolicyCase],
    load: &EngineLoader<'_>,
    validate: Option<&RecordValidator<'_>>,
) -> Vec<CaseOutcome> {
    let mut engines: BTreeMap<String, Result<PolicyEngine, String>> = BTreeMap::new();
    let mut out = Vec::new();
    for case in cases {
        if let Some(v) = validate {
            if let Err(m) = v(&case.record) {
                out.push(CaseOutcome {
                    file: case.file.clone(),
                    name: case.name.clone(),
                    failure: Some(format!("record is not valid against the schemas: {m}")),
                    decision: None,
                });
                continue;
            }
        }
        let key = format!(
            "{}{}",
            case.with_key,
            serde_json::to_string(&case.settings).unwrap_or_default()
        );
        let engine = engines
            .entry(key)
            .or_insert_with(|| load(&case.settings, case.with_key));
        match engine {
            Ok(e) => out.push(run_case(e, case)),
            Err(m) => out.push(CaseOutcome {
                file: case.file.clone(),
                name: case.name.clone(),
                failure: Some(format!("cannot load the policy set: {m}")),
                decision: None,
            }),
        }
    }
    out
}
