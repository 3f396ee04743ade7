//! The view over a cluster's database (`audit serve --database`): every instance's shipped log
//! (`hetao_audit_lines`) is mirrored, line for line, into a file of its own in a private
//! temporary folder, which the view then indexes and verifies exactly as it does a local log.
//!
//! Each read takes only the lines past what the mirror already holds, per instance, so a view
//! that stays open follows the cluster at the cost of what was shipped since. The database is
//! only read (`SELECT`s, on sessions the server keeps read-only). When it cannot be reached, the
//! mirrors keep what was read and the status says since when the database has not answered.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

use hetao_gateway_core::cluster::export::ShippedLines;
use hetao_gateway_core::cluster::ClusterError;

/// Lines read per statement.
const PAGE: usize = 10_000;

/// What the view knows of the database, shown at the top of every page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseState {
    /// The last read succeeded.
    pub reachable: bool,
    /// When the last read that succeeded ended.
    pub last_read: Option<DateTime<Utc>>,
    /// Why the last read failed (no connection string in it: only what the driver or server
    /// said).
    pub last_error: Option<String>,
    /// Since when reads have been failing.
    pub failing_since: Option<DateTime<Utc>>,
    /// Lines mirrored per instance.
    pub lines: BTreeMap<String, u64>,
}

/// One instance's mirror file.
struct Mirror {
    path: PathBuf,
    file: File,
    /// The next sequence to read.
    next: u64,
    lines: u64,
}

/// An instance's log as mirrored, and whether the last read added to it.
#[derive(Debug, Clone)]
pub struct MirroredLog {
    pub instance: String,
    pub path: PathBuf,
    pub grew: bool,
}

pub struct DatabaseSource {
    reader: tokio::sync::Mutex<ShippedLines>,
    dir: tempfile::TempDir,
    mirrors: tokio::sync::Mutex<BTreeMap<String, Mirror>>,
    state: Mutex<DatabaseState>,
}

impl DatabaseSource {
    /// Parses the connection string and reads the CA file (nothing is connected yet).
    pub fn new(database: &str, ca: Option<&Path>) -> Result<DatabaseSource, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("hetao-audit-view-")
            .tempdir()
            .map_err(|e| ClusterError::Config(format!("a temporary folder for the mirror: {e}")))?;
        Ok(DatabaseSource {
            reader: tokio::sync::Mutex::new(ShippedLines::new(database, ca)?),
            dir,
            mirrors: tokio::sync::Mutex::new(BTreeMap::new()),
            state: Mutex::new(DatabaseState::default()),
        })
    }

    pub fn state(&self) -> DatabaseState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads what was shipped since the last read (everything, the first time) into the
    /// mirrors: every instance's mirrored log, `only` restricting them to one instance. On
    /// failure the mirrors keep what they hold and the state says why.
    pub async fn pull(
        &self,
        only: Option<&str>,
        first: bool,
    ) -> Result<Vec<MirroredLog>, ClusterError> {
        let result = self.read(only, first).await;
        let lines: Vec<(String, u64)> = self
            .mirrors
            .lock()
            .await
            .iter()
            .map(|(name, m)| (name.clone(), m.lines))
            .collect();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.lines.extend(lines);
        match &result {
            Ok(_) => {
                state.reachable = true;
                state.last_read = Some(Utc::now());
                state.last_error = None;
                state.failing_since = None;
            }
            Err(e) => {
                if state.reachable || state.failing_since.is_none() {
                    state.failing_since = Some(Utc::now());
                }
                state.reachable = false;
                state.last_error = Some(e.to_string());
                tracing::warn!(target: "hetao::auditview", error = %e, "cannot read the cluster database; showing what was read before");
            }
        }
        result
    }

    async fn read(
        &self,
        only: Option<&str>,
        first: bool,
    ) -> Result<Vec<MirroredLog>, ClusterError> {
        let mut reader = self.reader.lock().await;
        let mut mirrors = self.mirrors.lock().await;
        let names: Vec<String> = reader
            .instances(first)
            .await?
            .into_iter()
            .filter(|n| only.is_none_or(|o| o == n))
            .collect();
        let mut out = Vec::new();
        for name in names {
            if !mirrors.contains_key(&name) {
                // Files are named by position: instance names come from the database.
                let path = self
                    .dir
                    .path()
                    .join(format!("instance-{}", mirrors.len() + 1))
                    .join("audit.jsonl");
                let io = |e: std::io::Error| {
                    ClusterError::Config(format!("writing the mirror of the shipped log: {e}"))
                };
                if let Some(folder) = path.parent() {
                    std::fs::create_dir_all(folder).map_err(io)?;
                }
                let file = File::create(&path).map_err(io)?;
                mirrors.insert(
                    name.clone(),
                    Mirror {
                        path,
                        file,
                        next: 0,
                        lines: 0,
                    },
                );
            }
            let Some(mirror) = mirrors.get_mut(&name) else {
                continue;
            };
            let before = mirror.lines;
            loop {
                let lines = reader.lines_from(&name, mirror.next, PAGE).await?;
                let mut bytes = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
                for (_, line) in &lines {
                    bytes.extend_from_slice(line.as_bytes());
                    bytes.push(b'\n');
                }
                mirror.file.write_all(&bytes).map_err(|e| {
                    ClusterError::Config(format!("writing the mirror of the shipped log: {e}"))
                })?;
                // A gap in the database's copy is kept as a gap: the verifier names it.
                if let Some((last, _)) = lines.last() {
                    mirror.next = last + 1;
                }
                mirror.lines += lines.len() as u64;
                if lines.len() < PAGE {
                    break;
                }
            }
            out.push(MirroredLog {
                instance: name,
                path: mirror.path.clone(),
                grew: mirror.lines != before,
            });
        }
        Ok(out)
    }
}
