//! `hetao-gateway check`: decide one record offline (no network) and print the decision.
//!
//! Exit codes: 0 allow, 1 deny, 2 invalid input (unreadable or schema-invalid record, bad
//! arguments, a policy set that does not load).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use hetao_gateway_core::config::Config;
use hetao_gateway_core::envelope::EnvelopeHead;
use hetao_gateway_core::policy::{Decision, DecisionInput, Effect, PolicyEngine};
use hetao_gateway_core::schema::{SchemaFailure, SchemaSet};
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
}

/// What a `RuleSource` resolves to.
pub struct ResolvedRules {
    pub schema_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub settings: BTreeMap<String, Value>,
    pub pseudonymisation_key: Option<PathBuf>,
}

impl RuleSource {
    /// Reads the configuration if one is given, else takes the folders as they are.
    pub fn resolve(&self) -> anyhow::Result<ResolvedRules> {
        Ok(match &self.config {
            Some(path) => {
                let c = Config::load(path)?;
                ResolvedRules {
                    schema_dir: c.schemas.dir,
                    policy_dir: c.policies.dir,
                    settings: c.policies.settings,
                    pseudonymisation_key: c.policies.pseudonymisation_key,
                }
            }
            None => ResolvedRules {
                schema_dir: self.schemas.clone(),
                policy_dir: self.policies.clone(),
                settings: BTreeMap::new(),
                pseudonymisation_key: self.pseudonymisation_key.clone(),
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
        pseudonymisation_key: key,
    } = args.rules.resolve()?;
    let now: DateTime<Utc> = match &args.at {
        None => Utc::now(),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("--at `{t}` is not an RFC 3339 time"))?
            .with_timezone(&Utc),
    };
    let text = read_record(&args.record)?;
    let record: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("invalid input: the record is not JSON: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let schemas = SchemaSet::load(&schema_dir)?;
    if let Err(failure) = schemas.validate(&record) {
        let (what, violations) = match &failure {
            SchemaFailure::Envelope(v) => ("envelope".to_string(), v),
            SchemaFailure::Body(kind, v) => (format!("{kind} body"), v),
        };
        if args.format == Format::Json {
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
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let Some(head) = EnvelopeHead::read(&record) else {
        eprintln!("invalid input: the envelope has no kind, from, to or record_id");
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    let engine = PolicyEngine::load(&policy_dir, &schemas, &settings, key.as_deref())?;
    for w in engine.warnings() {
        eprintln!("warning: {w}");
    }
    let identity = ClientIdentity {
        park: args.as_park.clone().unwrap_or_else(|| head.from.clone()),
        organisation: args.as_org.clone(),
        subject: format!("O={}", args.as_org),
        fingerprint_sha256: String::new(),
    };
    let decision = decide_with_origin(&engine, &identity, &record, &head, now);
    match args.format {
        Format::Json => println!("{}", decision_json(&head.record_id, &decision)),
        Format::Table => print!("{}", decision_table(&head.record_id, &decision)),
    }
    Ok(ExitCode::from(match decision.effect {
        Effect::Allow => 0,
        Effect::Deny => 1,
    }))
}

fn read_record(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the record from standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Decides like the gateway: a sender whose park is not the record's `from` is denied first
/// (SPEC: origin mismatch is a denial, never trusted from the body).
pub fn decide_with_origin(
    engine: &PolicyEngine,
    identity: &ClientIdentity,
    record: &Value,
    head: &EnvelopeHead,
    now: DateTime<Utc>,
) -> Decision {
    if identity.park != head.from {
        return Decision {
            effect: Effect::Deny,
            matched: vec![hetao_gateway_core::policy::MatchedRule {
                id: "gateway.origin-mismatch".into(),
                effect: Effect::Deny,
                reason: format!(
                    "the sender's certificate is from park `{}` but the record says from `{}`",
                    identity.park, head.from
                ),
                regulation: "SPEC.md: `from` must be the park whose CA issued the certificate"
                    .into(),
            }],
            obligations: Vec::new(),
            policy_version: engine.version().to_string(),
        };
    }
    engine.decide(&DecisionInput {
        identity,
        record,
        kind: head.kind,
        from: &head.from,
        to: &head.to,
        now,
    })
}

/// The decision as one JSON object (`decision`, `matched`, `obligations`, `policy_version`).
pub fn decision_json(record_id: &str, d: &Decision) -> Value {
    json!({
        "record_id": record_id,
        "decision": d.effect,
        "matched": d.matched,
        "obligations": d.obligations,
        "policy_version": d.policy_version,
    })
}

/// The decision as a readable table.
pub fn decision_table(record_id: &str, d: &Decision) -> String {
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
        let (what, p, r) = match o {
            hetao_gateway_core::policy::Obligation::Pseudonymise { pointer, rule } => {
                ("pseudonymise", pointer, rule)
            }
            hetao_gateway_core::policy::Obligation::Drop { pointer, rule } => {
                ("drop", pointer, rule)
            }
        };
        let _ = writeln!(out, "obligation: {what} {p} (rule {r})");
    }
    out
}
