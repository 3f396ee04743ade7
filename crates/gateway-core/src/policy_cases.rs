//! Policy test cases (`hetao-gateway policy test`), in the spirit of `opa test`.
//!
//! A case file (`policies/tests/*.toml`) holds `[[case]]` entries: a record (inline, or a path to
//! a record file relative to the case file) with optional pointer patches (`set`, `remove`), the
//! sender's identity, the decision time, optional setting overrides, and the expected decision
//! and matched rule ids. See `docs/policies.md`.
//!
//! `policy test --export DIR` writes each case's record (patches applied) as an example file plus
//! an `index.md` telling how to decide it with `check` ([`prepare_export`], [`write_export`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use bytes::Bytes;

use crate::checkpoint::Checkpoint;
use crate::error::Refusal;
use crate::json_limits::{DEFAULT_MAX_DEPTH, DEFAULT_MAX_VALUES};
use crate::policy::{Decision, Effect, Obligation, PolicyEngine};
use crate::schema::SchemaSet;
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
    #[error("export to {path}: {message}")]
    Export { path: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    description: Option<String>,
    /// The organisation registry the file's cases are decided against (relative to the file).
    #[serde(default)]
    registry: Option<String>,
    /// Default sender organisation (Subject O) per park, for cases without `identity`.
    #[serde(default)]
    organisations: BTreeMap<String, String>,
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
    /// `false`: decide this case with no registry (the fail-closed path).
    #[serde(default = "yes")]
    registry: bool,
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
    pub registry: CaseRegistry,
}

/// Which organisation registry a case is decided against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CaseRegistry {
    /// Whatever the run has (the configuration's, with `--config`).
    Inherit,
    /// The file the case file names.
    File(PathBuf),
    /// None at all: rules that need registry facts fail closed.
    None,
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
    let file_registry = match &parsed.registry {
        None => CaseRegistry::Inherit,
        Some(rel) => {
            let p = base.join(rel);
            if !p.is_file() {
                return Err(ferr(format!("registry {}: no such file", p.display())));
            }
            CaseRegistry::File(p)
        }
    };
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
        let park = id.park.unwrap_or(from);
        let organisation = id
            .organisation
            .or_else(|| parsed.organisations.get(&park).cloned())
            .unwrap_or_else(|| "unknown".into());
        let identity = ClientIdentity {
            park,
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
            registry: if raw.registry {
                file_registry.clone()
            } else {
                CaseRegistry::None
            },
        });
    }
    Ok(out)
}

/// Sets the value at an RFC 6901 pointer, creating missing objects on the way (`-` appends).
pub fn set_pointer(root: &mut Value, ptr: &str, v: Value) -> Result<(), String> {
    let parsed = crate::policy::compile::parse_pointer(ptr)?;
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

/// Runs one case through the gateway's decision sequence ([`Checkpoint::examine`]): the record
/// must pass the schemas, then its decision must be the one expected.
pub fn run_case(checkpoint: &Checkpoint<'_>, case: &PolicyCase) -> CaseOutcome {
    let outcome = |failure: Option<String>, decision: Option<Decision>| CaseOutcome {
        file: case.file.clone(),
        name: case.name.clone(),
        failure,
        decision,
    };
    let body = match serde_json::to_vec(&case.record) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => return outcome(Some(format!("record cannot be serialised: {e}")), None),
    };
    let examination = checkpoint.examine(&body, &case.identity, case.at);
    let d = match checkpoint.offline_decision(examination.outcome) {
        Ok(d) => d,
        Err(refusal) => return outcome(Some(refusal_failure(&refusal)), None),
    };
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

/// Why a case's record never reached a decision. Shipped cases must be realistic records, so a
/// schema violation fails the case.
fn refusal_failure(refusal: &Refusal) -> String {
    match refusal {
        Refusal::InvalidEnvelope(v) | Refusal::SchemaViolation(v) => format!(
            "record is not valid against the schemas: {}",
            v.iter()
                .map(|v| format!("{}: {}", v.pointer, v.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        other => format!("record refused ({}): {}", other.code(), other.message()),
    }
}

/// Loads the policy set with setting overrides, with or without a pseudonymisation key.
pub type EngineLoader<'a> =
    dyn Fn(&BTreeMap<String, Value>, bool, &CaseRegistry) -> Result<PolicyEngine, String> + 'a;

/// Runs cases against `schemas`, loading one engine per distinct (settings override, key
/// present) through `load`. Offline: no configured parks, the default JSON depth limit.
pub fn run_all(
    cases: &[PolicyCase],
    schemas: &SchemaSet,
    load: &EngineLoader<'_>,
) -> Vec<CaseOutcome> {
    let mut engines: BTreeMap<String, Result<PolicyEngine, String>> = BTreeMap::new();
    let mut out = Vec::new();
    for case in cases {
        let key = format!(
            "{}{:?}{}",
            case.with_key,
            case.registry,
            serde_json::to_string(&case.settings).unwrap_or_default()
        );
        let engine = engines
            .entry(key)
            .or_insert_with(|| load(&case.settings, case.with_key, &case.registry));
        match engine {
            Ok(policies) => {
                let checkpoint = Checkpoint {
                    schemas,
                    policies,
                    parks: None,
                    max_json_depth: DEFAULT_MAX_DEPTH,
                    max_json_values: DEFAULT_MAX_VALUES,
                    // Cases judge the policies on records written for a fixed date; `check`
                    // judges a record's freshness against `--at` as the gateway does.
                    record_window: None,
                };
                out.push(run_case(&checkpoint, case));
            }
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

/// First line of an exported `index.md`: marks a folder `--export` may overwrite.
pub const EXPORT_MARKER: &str =
    "<!-- Generated by `hetao-gateway policy test --export`: do not edit, regenerate. -->";

/// One case prepared for export: its file name and its case with a stable record id.
#[derive(Debug, Clone)]
pub struct ExportItem {
    /// `<case-name-slug>.json` (a `-2`, `-3`… suffix if two names give the same slug).
    pub file_name: String,
    /// The case, with `/record_id` replaced by [`stable_record_id`].
    pub case: PolicyCase,
}

/// A case name as a file name stem: lowercase ASCII letters and digits, runs of anything else
/// become one `-` ("D2/D5: academic data" → "d2-d5-academic-data").
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("case");
    }
    out
}

/// A record id that depends only on the case file's name and the case name: a UUID (version 8,
/// RFC 9562 custom layout) made of the first 16 bytes of SHA-256 over both. Every exported record
/// gets its own id (the gateway refuses a record id twice), and re-exporting gives the same one.
pub fn stable_record_id(case_file: &str, case_name: &str) -> String {
    let file = Path::new(case_file)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| case_file.to_string());
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("hetao-gateway example record\n{file}\n{case_name}").as_bytes(),
    );
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // variant RFC 9562
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The cases as they are exported: a file name each (in case order, collisions numbered) and the
/// record id replaced by a stable one. Run them again before writing: the export must decide as
/// the cases do.
pub fn prepare_export(cases: &[PolicyCase]) -> Vec<ExportItem> {
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    cases
        .iter()
        .map(|c| {
            let base = slug(&c.name);
            let n = taken.entry(base.clone()).or_insert(0);
            *n += 1;
            let stem = if *n == 1 { base } else { format!("{base}-{n}") };
            let mut case = c.clone();
            if let Value::Object(m) = &mut case.record {
                m.insert(
                    "record_id".into(),
                    Value::String(stable_record_id(&c.file, &c.name)),
                );
            }
            ExportItem {
                file_name: format!("{stem}.json"),
                case,
            }
        })
        .collect()
}

fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The decision time as written in `index.md`: RFC 3339 at UTC+8 (both parks' local time).
pub fn export_time(at: &DateTime<Utc>) -> String {
    match chrono::FixedOffset::east_opt(8 * 3600) {
        Some(tz) => at
            .with_timezone(&tz)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        None => at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    }
}

/// What `check` needs beyond identity and time to reproduce a case, as `index.md` lists it:
/// `setting `k = v`` per override, `no pseudonymisation key`, `needs a pseudonymisation key`.
fn conditions(case: &PolicyCase, decision: Option<&Decision>) -> Vec<String> {
    let mut out: Vec<String> = case
        .settings
        .iter()
        .map(|(k, v)| format!("setting `{k} = {v}`"))
        .collect();
    let pseudonymises = decision.is_some_and(|d| {
        d.obligations
            .iter()
            .any(|o| matches!(o, Obligation::Pseudonymise { .. }))
    });
    if !case.with_key {
        out.push("no pseudonymisation key".into());
    } else if pseudonymises {
        out.push("needs a pseudonymisation key".into());
    }
    // The registry a case file names is said once in the index's header; only its absence
    // is a condition of a row.
    if case.registry == CaseRegistry::None {
        out.push("no organisation registry".into());
    }
    out
}

/// `index.md` for exported cases (`outcomes` in the order of `items`, from running their cases).
pub fn render_index(items: &[ExportItem], outcomes: &[CaseOutcome]) -> String {
    let mut rows: Vec<(&ExportItem, Option<&Decision>)> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it, outcomes.get(i).and_then(|o| o.decision.as_ref())))
        .collect();
    rows.sort_by(|a, b| a.0.file_name.cmp(&b.0.file_name));
    let mut s = String::new();
    s.push_str(EXPORT_MARKER);
    s.push_str("\n\n# Example records: every rule allowing and denying\n\n");
    s.push_str(
        "One record per policy test case (`policies/tests/*.toml`), with the case's patches \
         applied and a record id of its own. Regenerate after changing the cases or the policies:\n\
         \n\
         ```sh\n\
         hetao-gateway policy test --export examples/records/rules\n\
         ```\n\
         \n\
         Decide one offline with the identity and time of its row:\n\
         \n\
         ```sh\n\
         hetao-gateway check --registry examples/registry.toml --as-park P --as-org O --at TIME examples/records/rules/FILE\n\
         ```\n\
         \n\
         Every case is decided with the organisation registry its case file names (the shipped \
         cases: the development registry, `examples/registry.toml`), except where the \
         Conditions say `no organisation registry`: then leave `--registry` out.\n\
         \n\
         Conditions: `needs a pseudonymisation key`: the allow needs one, else it is denied \
         (fail closed); pass `--pseudonymisation-key FILE` (64+ hex characters) or `--config`. \
         `no pseudonymisation key`: decide without one. `setting k = v`: the case overrides a \
         policy setting; use a configuration whose `[policies.settings]` sets it (`--config`).\n\n",
    );
    let (allow, deny) = rows
        .iter()
        .fold((0, 0), |(a, d), (it, _)| match it.case.expect {
            Effect::Allow => (a + 1, d),
            Effect::Deny => (a, d + 1),
        });
    s.push_str(&format!(
        "{} records: {allow} allowed, {deny} denied.\n\n",
        rows.len()
    ));
    s.push_str(
        "| File | Decision | Rules | Case | Park | Organisation | At | Conditions | Source |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for (it, d) in rows {
        let c = &it.case;
        let mut rules: Vec<&str> = c.rules.iter().map(String::as_str).collect();
        rules.sort_unstable();
        let rules = if rules.is_empty() {
            "(none: default deny)".to_string()
        } else {
            rules
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let source = Path::new(&c.file)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| c.file.clone());
        s.push_str(&format!(
            "| [{f}]({f}) | {} | {rules} | {} | `{}` | `{}` | `{}` | {} | {} |\n",
            c.expect.as_str(),
            md_cell(&c.name),
            md_cell(&c.identity.park),
            md_cell(&c.identity.organisation),
            export_time(&c.at),
            md_cell(&conditions(c, d).join("; ")),
            md_cell(&source),
            f = it.file_name,
        ));
    }
    s
}

/// Writes the exported records (pretty JSON) and `index.md` into `dir`. `outcomes` come from
/// running the items' cases and must all have passed. A folder that exists must be empty or
/// hold an earlier export (its `index.md` starts with [`EXPORT_MARKER`]); that export's `*.json`
/// files and `index.md` are replaced, anything else in the folder is left alone.
pub fn write_export(
    dir: &Path,
    items: &[ExportItem],
    outcomes: &[CaseOutcome],
) -> Result<usize, CaseError> {
    let err = |path: &Path, message: String| CaseError::Export {
        path: path.display().to_string(),
        message,
    };
    if outcomes.len() != items.len() {
        return Err(err(dir, "internal: one outcome per case expected".into()));
    }
    if let Some(o) = outcomes.iter().find(|o| o.failure.is_some()) {
        return Err(err(
            dir,
            format!(
                "case `{}` ({}) fails as exported: {}",
                o.name,
                o.file,
                o.failure.as_deref().unwrap_or_default()
            ),
        ));
    }
    if dir.exists() {
        let entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| err(dir, format!("cannot list: {e}")))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| err(dir, format!("cannot list: {e}")))?;
        if !entries.is_empty() {
            let index = dir.join("index.md");
            let earlier = std::fs::read_to_string(&index)
                .map(|t| t.starts_with(EXPORT_MARKER))
                .unwrap_or(false);
            if !earlier {
                return Err(err(
                    dir,
                    "the folder is not empty and holds no index.md of an earlier export; \
                     name a new or empty folder"
                        .into(),
                ));
            }
            for p in entries {
                let ours = p.is_file()
                    && (p.extension().is_some_and(|x| x == "json")
                        || p.file_name().is_some_and(|n| n == "index.md"));
                if ours {
                    std::fs::remove_file(&p)
                        .map_err(|e| err(&p, format!("cannot remove the earlier export: {e}")))?;
                }
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
    for it in items {
        let path = dir.join(&it.file_name);
        let mut text = serde_json::to_string_pretty(&it.case.record)
            .map_err(|e| err(&path, format!("cannot serialise: {e}")))?;
        text.push('\n');
        std::fs::write(&path, text).map_err(|e| err(&path, format!("cannot write: {e}")))?;
    }
    let index = dir.join("index.md");
    std::fs::write(&index, render_index(items, outcomes))
        .map_err(|e| err(&index, format!("cannot write: {e}")))?;
    Ok(items.len())
}
