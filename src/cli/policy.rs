//! `hetao-gateway policy test`: run policy test cases and report PASS/FAIL per case; with
//! `--export DIR`, write each case's record and an index (`examples/records/rules/`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;

use chrono::Utc;
use hetao_gateway_core::policy::{PolicyEngine, PseudonymKey, PseudonymKeys};
use hetao_gateway_core::policy_cases::{self as cases, CaseRegistry};
use hetao_gateway_core::registry::Registry;
use hetao_gateway_core::schema::SchemaSet;

/// A fixed key for test runs without a configured one, so cases exercise the allow path of rules
/// that pseudonymise (a case with `pseudonymisation_key = false` tests the fail-closed path).
const TEST_KEY_HEX: &str = "74657374206b6579206f6620706f6c6963792074657374732c206e6f74207573";

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Run policy test cases (default: the policy folder's `tests/`) and report pass/fail.
    Test(TestArgs),
}

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    pub rules: super::check::RuleSource,
    /// Show the matched rules of passing cases too.
    #[arg(long, short)]
    pub verbose: bool,
    /// After all cases pass, write each case's record (patches applied, a stable record id of
    /// its own) to DIR/<case-name>.json and a table of them to DIR/index.md. DIR must be new,
    /// empty or an earlier export.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
    /// Case files or folders of case files (`*.toml`).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

pub async fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Test(args) => test(args),
    }
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let super::check::ResolvedRules {
        schema_dir,
        policy_dir,
        settings: base_settings,
        keys: key_files,
        registry: registry_path,
        ..
    } = args.rules.resolve()?;
    let base_registry = match &registry_path {
        Some(p) => Some(Arc::new(Registry::load(p, None)?)),
        None => None,
    };
    let schemas = SchemaSet::load(&schema_dir)?;
    let paths = if args.paths.is_empty() {
        vec![policy_dir.join("tests")]
    } else {
        args.paths.clone()
    };
    let mut all = Vec::new();
    for f in cases::discover(&paths)? {
        all.extend(cases::read_file(&f)?);
    }
    let load = |overrides: &BTreeMap<String, Value>, with_key: bool, registry: &CaseRegistry| {
        let mut settings = base_settings.clone();
        settings.extend(overrides.clone());
        let keys = if !with_key {
            None
        } else if key_files.current.is_some() {
            PseudonymKeys::load(&key_files, Utc::now())
                .map_err(|e| e.to_string())?
                .0
        } else {
            Some(PseudonymKeys::from(PseudonymKey::from_hex(TEST_KEY_HEX)?))
        };
        let registry = match registry {
            CaseRegistry::Inherit => base_registry.clone(),
            CaseRegistry::File(p) => Some(Arc::new(
                Registry::load(p, None).map_err(|e| e.to_string())?,
            )),
            CaseRegistry::None => None,
        };
        Ok(
            PolicyEngine::load_with_keys(&policy_dir, &schemas, &settings, keys)
                .map_err(|e| e.to_string())?
                .with_registry(registry),
        )
    };
    let outcomes = cases::run_all(&all, &schemas, &load);
    let mut failed = 0;
    for o in &outcomes {
        match &o.failure {
            None => {
                println!("PASS  {}: {}", o.file, o.name);
                if args.verbose {
                    if let Some(d) = &o.decision {
                        println!(
                            "        {} [{}]",
                            d.effect.as_str(),
                            d.rule_ids().join(", ")
                        );
                    }
                }
            }
            Some(why) => {
                failed += 1;
                println!("FAIL  {}: {}\n        {why}", o.file, o.name);
            }
        }
    }
    println!(
        "\n{} cases: {} passed, {} failed",
        outcomes.len(),
        outcomes.len() - failed,
        failed
    );
    let passed = failed == 0 && !outcomes.is_empty();
    if let Some(dir) = &args.export {
        if !passed {
            eprintln!(
                "not exporting to {}: every case must pass first ({failed} failed of {})",
                dir.display(),
                outcomes.len()
            );
            return Ok(ExitCode::from(1));
        }
        // The exported records carry their own record ids: run them again so the folder never
        // holds a record that decides differently from its case.
        let items = cases::prepare_export(&all);
        let exported: Vec<cases::PolicyCase> = items.iter().map(|i| i.case.clone()).collect();
        let again = cases::run_all(&exported, &schemas, &load);
        let n = cases::write_export(dir, &items, &again)?;
        println!("exported {n} records and index.md to {}", dir.display());
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
