//! `audit verify --database URL` and `audit query --database URL`: every instance of a cluster
//! from one place. The logs the instances shipped are written out of the database as the
//! segment files they came from (in a temporary folder, removed afterwards) and checked or
//! queried with the same code as local files. The database is not trusted: `verify` checks
//! every hash, link and signature with the public key the auditor gives.

use std::process::ExitCode;

use anyhow::Context;
use hetao_gateway_core::audit::{query_logs, AuditEntry, QueryStats};
use hetao_gateway_core::cluster::export::{export_logs, ExportedLog};
use hetao_gateway_core::printable::escape_controls;

use hetao_gateway_core::audit::query::instances_csv;

use super::audit::{
    escaped, expand_segments, render_entries, render_stats, AuditCommand, DatabaseArgs,
    OutputFormat, QueryArgs, VerifyArgs,
};

/// Runs an audit command: `verify` and `query` with `--database` here, the rest as usual.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify(a) if a.cluster.database.is_some() => {
            verify(*a).await.map_err(escaped)
        }
        AuditCommand::Query(a) if a.cluster.database.is_some() => query(*a).await.map_err(escaped),
        other => super::audit::run(other).await,
    }
}

async fn export(args: &DatabaseArgs, dir: &std::path::Path) -> anyhow::Result<Vec<ExportedLog>> {
    let database = args.database.as_deref().unwrap_or_default();
    let logs = export_logs(
        database,
        args.database_ca.as_deref(),
        args.instance.as_deref(),
        dir,
    )
    .await
    .context("reading the shipped logs from the cluster database")?;
    if logs.is_empty() {
        anyhow::bail!(
            "the cluster database holds no shipped log{}",
            args.instance
                .as_deref()
                .map(|i| format!(" of instance `{}`", escape_controls(i)))
                .unwrap_or_default()
        );
    }
    Ok(logs)
}

/// Verifies each instance's log; exits 1 when any is not intact.
async fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    if !a.witness_keys.is_empty() || a.cosignatures.is_some() {
        anyhow::bail!(
            "witness cosignatures are kept beside each instance's log files, not in the database: verify them there (audit verify LOG --witness-key ...)"
        );
    }
    let dir = tempfile::tempdir().context("a temporary folder for the exported logs")?;
    let logs = export(&a.cluster, dir.path()).await?;
    let mut all_intact = true;
    for log in &logs {
        println!(
            "instance {} ({} lines in the database):",
            escape_controls(&log.instance),
            log.lines
        );
        let code = super::audit::verify(VerifyArgs {
            logs: vec![log.active.clone()],
            cluster: DatabaseArgs {
                database: None,
                database_ca: None,
                instance: None,
            },
            public_key: a.public_key.clone(),
            allow_unsigned_tail: a.allow_unsigned_tail,
            witness_keys: Vec::new(),
            cosignatures: None,
            json: a.json,
        })?;
        all_intact &= code == ExitCode::SUCCESS;
    }
    Ok(if all_intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Queries every instance's log: each entry with its instance.
async fn query(a: QueryArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("a temporary folder for the exported logs")?;
    let logs = export(&a.cluster, dir.path()).await?;
    let filter = a.filter();
    let mut groups: Vec<(String, Vec<AuditEntry>)> = Vec::new();
    for log in &logs {
        let files = expand_segments(std::slice::from_ref(&log.active))?;
        let entries = query_logs(&files, &filter)
            .with_context(|| format!("instance {}", escape_controls(&log.instance)))?;
        groups.push((log.instance.clone(), entries));
    }
    let out = if a.stats {
        let all: Vec<AuditEntry> = groups.iter().flat_map(|(_, e)| e.iter().cloned()).collect();
        render_stats(&QueryStats::of(&all), a.format)?
    } else {
        render_groups(&groups, a.format)?
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Entries of several instances: a table per instance, JSON objects with an `instance` member,
/// or CSV with an `instance` column first.
fn render_groups(
    groups: &[(String, Vec<AuditEntry>)],
    format: OutputFormat,
) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Table => {
            let mut out = String::new();
            for (instance, entries) in groups {
                out += &format!("instance {}:\n", escape_controls(instance));
                out += &render_entries(entries, format)?;
            }
            out
        }
        OutputFormat::Json => {
            let mut all = Vec::new();
            for (instance, entries) in groups {
                for e in entries {
                    let mut v = e.to_json_with_hash();
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert(
                            "instance".into(),
                            serde_json::Value::String(instance.clone()),
                        );
                    }
                    all.push(v);
                }
            }
            format!("{}\n", serde_json::to_string_pretty(&all)?)
        }
        OutputFormat::Csv => instances_csv(groups),
    })
}
