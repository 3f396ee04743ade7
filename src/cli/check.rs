//! `hetao-gateway check`: decide one record offline (no network) and print the decision.
//!
//! Exit codes: 0 allow, 1 deny, 2 invalid input (unreadable or schema-invalid record, bad
//! arguments, a policy set that does not load).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use bytes::Bytes;
use hetao_gateway_core::checkpoint::{Checkpoint, RecordWindow};
use hetao_gateway_core::config::{
    Config, LimitsConfig, ParkConfig, ParkId, DEFAULT_MAX_VIOLATIONS,
};
use hetao_gateway_core::envelope::Kind;
use hetao_gateway_core::error::Refusal;
use hetao_gateway_core::json_limits::{JsonLimits, DEFAULT_MAX_DEPTH, DEFAULT_MAX_VALUES};
use hetao_gateway_core::policy::{Decision, Effect, KeyFiles, PolicyEngine};
use hetao_gateway_core::registry::Registry;
use hetao_gateway_core::schema::SchemaSet;
use hetao_gateway_core::tls::identity::ClientIdentity;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub rules: RuleSource,
    /// The record (a whole envelope) as JSON; `-` reads standard input.
    #[arg(value_name = "RECORD.json")]
    pub record: PathBuf,
    /// The sender's park, as its certificate would prove it (default: the record's `from`).
    #[arg(long, value_name = "P")]
    pub as_park: Option<String>,
    /// The sender's organisation (certificate Subject O).
    #[arg(long, value_name = "O", default_value = "unknown")]
    pub as_org: String,
    /// Decision time, RFC 3339 (default: now).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Output: a readable table or JSON.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Where the schemas, policies, settings and pseudonymisation key come from: a gateway
/// configuration, or folders given directly. Shared by `check` and `policy test`.
#[derive(clap::Args, Debug)]
pub struct RuleSource {
    /// Gateway configuration: schema folder, policy folder, settings, pseudonymisation key.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Policy folder (without --config).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "config",
        default_value = "policies"
    )]
    pub policies: PathBuf,
    /// Schema folder (without --config).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "config",
        default_value = "schemas"
    )]
    pub schemas: PathBuf,
    /// Pseudonymisation key file (without --config).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub pseudonymisation_key: Option<PathBuf>,
    /// Organisation registry file (without --config; with it, the config's `[registry] file`).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub registry: Option<PathBuf>,
}

/// What a `RuleSource` resolves to.
pub struct ResolvedRules {
    pub schema_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub settings: BTreeMap<String, Value>,
    /// The pseudonymisation key files (current, and a rotation's previous one with --config).
    pub keys: KeyFiles,
    /// The organisation registry file, if any.
    pub registry: Option<PathBuf>,
    /// The configured parks (only with --config): records to or from another park are invalid.
    pub parks: Option<BTreeMap<ParkId, ParkConfig>>,
    pub max_json_depth: usize,
    pub max_json_values: usize,
    pub record_window: RecordWindow,
    /// Most schema violations listed (`limits.max_violations`).
    pub max_violations: usize,
}

impl RuleSource {
    /// Reads the configuration if one is given, else takes the folders as they are.
    pub fn resolve(&self) -> anyhow::Result<ResolvedRules> {
        Ok(match &self.config {
            Some(path) => {
                let c = Config::load(path)?;
                let keys = KeyFiles::of(&c.policies);
                ResolvedRules {
                    schema_dir: c.schemas.dir,
                    policy_dir: c.policies.dir,
                    keys,
                    settings: c.policies.settings,
                    registry: c.registry.map(|r| r.file),
                    parks: Some(c.parks),
                    max_json_depth: c.limits.max_json_depth,
                    max_json_values: c.limits.max_json_values,
                    record_window: RecordWindow::of(&c.limits),
                    max_violations: c.limits.max_violations,
                }
            }
            None => ResolvedRules {
                schema_dir: self.schemas.clone(),
                policy_dir: self.policies.clone(),
                settings: BTreeMap::new(),
                keys: KeyFiles::current_only(self.pseudonymisation_key.as_deref()),
                registry: self.registry.clone(),
                parks: None,
                max_json_depth: DEFAULT_MAX_DEPTH,
                max_json_values: DEFAULT_MAX_VALUES,
                record_window: RecordWindow::of(&LimitsConfig::default()),
                max_violations: DEFAULT_MAX_VIOLATIONS,
            },
        })
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

const EXIT_INVALID: u8 = 2;

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let ResolvedRules {
        schema_dir,
        policy_dir,
        settings,
        keys,
        registry,
        parks,
        max_json_depth,
        max_json_values,
        record_window,
        max_violations,
    } = args.rules.resolve()?;
    let now: DateTime<Utc> = match &args.at {
        None => Utc::now(),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("--at `{t}` is not an RFC 3339 time"))?
            .with_timezone(&Utc),
    };
    let body = Bytes::from(read_record(&args.record)?);
    let schemas = SchemaSet::load(&schema_dir)?.with_max_violations(max_violations);
    let registry = match &registry {
        None => None,
        Some(p) => {
            let served: Option<BTreeSet<String>> =
                parks.as_ref().map(|ps| ps.keys().cloned().collect());
            Some(Arc::new(Registry::load(p, served.as_ref())?))
        }
    };
    let engine =
        PolicyEngine::load(&policy_dir, &schemas, &settings, &keys)?.with_registry(registry);
    for w in engine.warnings() {
        eprintln!("warning: {w}");
    }
    // Without --as-park the sender is taken to be of the record's own park.
    let park = match &args.as_park {
        Some(p) => p.clone(),
        None => record_from(
            &body,
            JsonLimits {
                max_depth: max_json_depth,
                max_values: max_json_values,
            },
        ),
    };
    let identity = ClientIdentity {
        park,
        organisation: args.as_org.clone(),
        subject: format!("O={}", args.as_org),
        fingerprint_sha256: String::new(),
    };
    let checkpoint = Checkpoint {
        schemas: &schemas,
        policies: &engine,
        parks: parks.as_ref(),
        max_json_depth,
        max_json_values,
        record_window: Some(record_window),
    };
    let examination = checkpoint.examine(&body, &identity, now);
    let record_id = examination.facts.record_id.clone().unwrap_or_default();
    let kind = examination.facts.kind;
    let to = examination.facts.to.clone().unwrap_or_default();
    let decision = match checkpoint.offline_decision(examination.outcome) {
        Ok(decision) => decision,
        Err(refusal) => {
            report_invalid(&refusal, kind, args.format);
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let shown = Shown {
        engine: &engine,
        to: &to,
        now,
    };
    match args.format {
        Format::Json => println!("{}", decision_json(&record_id, &decision, &shown)),
        Format::Table => print!("{}", decision_table(&record_id, &decision, &shown)),
    }
    Ok(ExitCode::from(match decision.effect {
        Effect::Allow => 0,
        Effect::Deny => 1,
    }))
}

/// Prints why a record is invalid input, with each schema violation.
fn report_invalid(refusal: &Refusal, kind: Option<Kind>, format: Format) {
    let (what, violations) = match refusal {
        Refusal::InvalidEnvelope(v) => ("envelope".to_string(), v.as_slice()),
        Refusal::SchemaViolation(v) => (
            format!("{} body", kind.map(Kind::as_str).unwrap_or("record")),
            v.as_slice(),
        ),
        other => {
            if format == Format::Json {
                println!("{}", other.body(None));
            } else {
                eprintln!("invalid input: {}", other.message());
            }
            return;
        }
    };
    if format == Format::Json {
        let list: Vec<Value> = violations
            .iter()
            .map(|v| json!({"pointer": v.pointer, "rule": v.rule, "message": v.message}))
            .collect();
        println!(
            "{}",
            json!({"error": "schema_violation", "part": what, "violations": list})
        );
    } else {
        eprintln!("invalid input: the record breaks the {what} schema:");
        for v in violations {
            let p = if v.pointer.is_empty() {
                "(root)"
            } else {
                &v.pointer
            };
            eprintln!("  {p}: {} ({})", v.message, v.rule);
        }
    }
}

fn read_record(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the record from standard input")?;
        Ok(bytes)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// What the obligations of a decision would do: the engine's keys, the destination park and the
/// decision time (which key and scope a pseudonym gets).
pub struct Shown<'a> {
    pub engine: &'a PolicyEngine,
    pub to: &'a str,
    pub now: DateTime<Utc>,
}

/// The decision as one JSON object (`decision`, `matched`, `obligations`, `policy_version`);
/// each pseudonymise obligation with the `key_id` and `scope` the record would get (and the
/// `previous_key_id` during a key rotation).
pub fn decision_json(record_id: &str, d: &Decision, shown: &Shown<'_>) -> Value {
    let obligations: Vec<Value> = d
        .obligations
        .iter()
        .map(|o| {
            let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
            let plan = shown.engine.pseudonym_plan(o, shown.to, shown.now);
            if let (Some(m), Some(Ok(Value::Object(p)))) =
                (v.as_object_mut(), plan.map(serde_json::to_value))
            {
                m.extend(p);
            }
            v
        })
        .collect();
    json!({
        "record_id": record_id,
        "decision": d.effect,
        "matched": d.matched,
        "obligations": obligations,
        "policy_version": d.policy_version,
    })
}

/// The decision as a readable table; each obligation as the audit log words it.
pub fn decision_table(record_id: &str, d: &Decision, shown: &Shown<'_>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "record {record_id}: {}   (policy {})",
        d.effect.as_str().to_uppercase(),
        d.policy_version
    );
    let w = d
        .matched
        .iter()
        .map(|m| m.id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(out, "{:<w$}  {:<6}  REASON / REGULATION", "RULE", "EFFECT");
    for m in &d.matched {
        let _ = writeln!(out, "{:<w$}  {:<6}  {}", m.id, m.effect.as_str(), m.reason);
        let _ = writeln!(out, "{:<w$}  {:<6}  [{}]", "", "", m.regulation);
    }
    for o in &d.obligations {
        let line = shown.engine.describe_obligation(o, shown.to, shown.now);
        let _ = writeln!(out, "obligation: {line} (rule {})", o.rule());
    }
    out
}

/// The record's `from`. A record over the JSON limits is not parsed here (the checkpoint
/// refuses it without parsing it either), so a hostile record costs no memory before that.
fn record_from(body: &[u8], limits: JsonLimits) -> String {
    if limits.check(body).is_err() {
        return String::new();
    }
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|r| r.get("from").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}
