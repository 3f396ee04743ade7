//! Reads the instances' shipped logs back out of the cluster database as the segment files they
//! came from, so auditors check and query them with the very code that checks local logs
//! (`audit verify --database`, `audit query --database`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::link::Target;
use super::{ClusterError, STATEMENT_TIMEOUT};
use crate::audit::chain::archive_path;

/// Lines read per statement.
const PAGE: i64 = 10_000;

/// One instance's log as written out: the active file (its archives beside it).
#[derive(Debug, Clone)]
pub struct ExportedLog {
    pub instance: String,
    /// The last segment, named as an active log (`audit.jsonl`); the earlier ones are its
    /// archives (`audit.jsonl.000001`, ...), so the usual tools find them.
    pub active: PathBuf,
    pub lines: u64,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    entry_type: String,
    #[serde(default)]
    segment: Option<u64>,
}

/// A read under a time limit (longer than the gateway's: pages of a large log).
async fn timed<T>(f: impl std::future::Future<Output = T>) -> Result<T, ClusterError> {
    tokio::time::timeout(STATEMENT_TIMEOUT * 6, f)
        .await
        .map_err(|_| ClusterError::Unreachable("the database did not answer in time".into()))
}

fn io(e: std::io::Error) -> ClusterError {
    ClusterError::Config(format!("writing the exported log: {e}"))
}

/// Writes every instance's shipped log (or only `instance`'s) under `dir`, one folder each.
pub async fn export_logs(
    database: &str,
    ca: Option<&Path>,
    instance: Option<&str>,
    dir: &Path,
) -> Result<Vec<ExportedLog>, ClusterError> {
    let target = Target::new(database, ca)?.read_only();
    let client = target.connect_once().await?;
    let db = |e: tokio_postgres::Error| ClusterError::from_db(&e);
    let names: Vec<String> = timed(client.query(
        "SELECT DISTINCT instance FROM hetao_audit_lines ORDER BY instance",
        &[],
    ))
    .await?
    .map_err(db)?
    .iter()
    .map(|r| r.get(0))
    .filter(|n: &String| instance.is_none_or(|i| i == n))
    .collect();
    let mut out = Vec::new();
    for name in names {
        // The folder is named by position: instance names come from the database.
        let folder = dir.join(format!("instance-{}", out.len() + 1));
        std::fs::create_dir_all(&folder).map_err(io)?;
        let active = folder.join("audit.jsonl");
        let mut writer: Option<(BufWriter<File>, PathBuf)> = None;
        let mut lines = 0u64;
        let mut next: i64 = 0;
        loop {
            let rows = timed(client.query(
                "SELECT seq, line FROM hetao_audit_lines
                 WHERE instance = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                &[&name, &next, &PAGE],
            ))
            .await?
            .map_err(db)?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let seq: i64 = row.get(0);
                let line: String = row.get(1);
                next = seq + 1;
                // A segment start begins a new file, named after its segment number.
                let head: Option<Head> = serde_json::from_str(&line).ok();
                let starts = head
                    .as_ref()
                    .filter(|h| h.entry_type == "segment_start")
                    .and_then(|h| h.segment);
                if let Some(n) = starts.or(if writer.is_none() { Some(0) } else { None }) {
                    if let Some((mut w, _)) = writer.take() {
                        w.flush().map_err(io)?;
                    }
                    let path = archive_path(&active, n);
                    writer = Some((BufWriter::new(File::create(&path).map_err(io)?), path));
                }
                if let Some((w, _)) = writer.as_mut() {
                    w.write_all(line.as_bytes()).map_err(io)?;
                    w.write_all(b"\n").map_err(io)?;
                }
                lines += 1;
            }
        }
        if let Some((mut w, path)) = writer.take() {
            w.flush().map_err(io)?;
            drop(w);
            std::fs::rename(&path, &active).map_err(io)?;
        }
        out.push(ExportedLog {
            instance: name,
            active,
            lines,
        });
    }
    Ok(out)
}

/// Follows the shipped logs for a view that stays open (`audit serve --database`): each call
/// reads only what lies past what the caller already holds. Only `SELECT`s, on a session the
/// server itself keeps read-only. The connection is made again after it breaks.
pub struct ShippedLines {
    target: Target,
    client: Option<tokio_postgres::Client>,
}

impl ShippedLines {
    /// Parses the connection string and reads the CA file; connects on first use.
    pub fn new(database: &str, ca: Option<&Path>) -> Result<ShippedLines, ClusterError> {
        Ok(ShippedLines {
            target: Target::new(database, ca)?.read_only(),
            client: None,
        })
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, ClusterError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.target.connect_once().await?);
        }
        self.client
            .as_ref()
            .ok_or_else(|| ClusterError::Unreachable("not connected".into()))
    }

    /// Runs `f` on the connection; a connection that failed is dropped, for the next call to
    /// make again.
    async fn with_client<T>(
        &mut self,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        let result = match self.client().await {
            Ok(client) => f(client).await,
            Err(e) => Err(e),
        };
        if matches!(result, Err(ClusterError::Unreachable(_))) {
            self.client = None;
        }
        result
    }

    /// The instances that shipped (or announced) a log, by name. `all_lines` also looks
    /// through the lines themselves (a scan of the table: at start only); otherwise the
    /// instances announced in `hetao_instances`, which every instance does before it ships.
    pub async fn instances(&mut self, all_lines: bool) -> Result<Vec<String>, ClusterError> {
        let sql = if all_lines {
            "SELECT instance FROM hetao_instances
             UNION SELECT DISTINCT instance FROM hetao_audit_lines ORDER BY 1"
        } else {
            "SELECT instance FROM hetao_instances ORDER BY 1"
        };
        self.with_client(async |client| {
            let rows = timed(client.query(sql, &[]))
                .await?
                .map_err(|e| ClusterError::from_db(&e))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    /// At most `limit` lines of `instance`'s log from sequence `from` on, in order.
    pub async fn lines_from(
        &mut self,
        instance: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, ClusterError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(PAGE);
        self.with_client(async |client| {
            let rows = timed(client.query(
                "SELECT seq, line FROM hetao_audit_lines
                 WHERE instance = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                &[&instance, &from, &limit],
            ))
            .await?
            .map_err(|e| ClusterError::from_db(&e))?;
            Ok(rows
                .iter()
                .map(|r| {
                    let seq: i64 = r.get(0);
                    (u64::try_from(seq).unwrap_or(0), r.get::<_, String>(1))
                })
                .collect())
        })
        .await
    }
}
