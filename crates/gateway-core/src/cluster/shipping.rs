//! Ships this instance's audit log to the cluster database, line for line, so auditors query
//! and verify every instance's log from one place (`audit query --database`, `audit verify
//! --database`).
//!
//! The local files stay the log: the gateway never waits for shipping, and a database that
//! cannot be reached only makes the copy lag (`hetao_cluster_shipping_lag_entries`). Only lines
//! the writer has made durable are shipped, so the copy never holds a line a crash could take
//! back. A line the database already holds with other bytes is never overwritten: it is
//! counted (`hetao_cluster_shipping_diverged_total`) and logged as an error, for auditors to
//! look at.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::link::Link;
use super::{timed, write_metric, ClusterError, Health};
use crate::audit::{segment_paths, AuditLog};

/// Lines per statement.
const BATCH: usize = 1000;
/// How long shipping waits after the log grew before reading it: the lines of several group
/// commits go in one statement.
const COALESCE: Duration = Duration::from_millis(50);
/// Lines read ahead of what the database has taken: while it cannot be reached, the copy waits
/// with this many in memory at most and reads the rest from the files later.
const READ_AHEAD: usize = 20_000;

/// Figures for `/metrics`.
#[derive(Default)]
pub struct ShippingCounts {
    /// Lines shipped since start.
    pub shipped: AtomicU64,
    /// The next sequence to ship.
    pub next_seq: AtomicU64,
    /// The log's durable sequence, as last seen.
    pub durable: AtomicU64,
    pub diverged: AtomicU64,
}

impl ShippingCounts {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let lag = self
            .durable
            .load(Ordering::Relaxed)
            .saturating_sub(self.next_seq.load(Ordering::Relaxed));
        write_metric(
            &mut out,
            "hetao_cluster_shipping_lag_entries",
            "gauge",
            "Durable audit entries of this instance not yet in the cluster database.",
            lag,
        );
        write_metric(
            &mut out,
            "hetao_cluster_shipped_entries_total",
            "counter",
            "Audit entries shipped to the cluster database since start.",
            self.shipped.load(Ordering::Relaxed),
        );
        write_metric(
            &mut out,
            "hetao_cluster_shipping_diverged_total",
            "counter",
            "Lines the cluster database holds with other bytes than this instance's log (never overwritten).",
            self.diverged.load(Ordering::Relaxed),
        );
        out
    }
}

/// The sequence a line starts with (`{"seq":N,...`: the first member of every entry).
fn line_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Reads the log's lines in order as they are written, across segment rotations.
struct Tail {
    log: PathBuf,
    file: Option<(File, u64)>,
    partial: Vec<u8>,
    /// Lines before this sequence are skipped.
    from: u64,
}

/// The segment holding `from`: the last whose first line is not after it (or the first).
fn locate(log: &Path, from: u64) -> std::io::Result<Option<PathBuf>> {
    let mut start: Option<PathBuf> = None;
    for (_, path) in segment_paths(log)? {
        let mut first = Vec::new();
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(_) => continue,
        };
        let mut buf = [0u8; 64];
        let n = f.read(&mut buf)?;
        first.extend_from_slice(&buf[..n]);
        match line_seq(&first) {
            Some(seq) if seq <= from => start = Some(path),
            Some(_) => {
                if start.is_none() {
                    start = Some(path);
                }
                break;
            }
            None => {}
        }
    }
    Ok(start)
}

impl Tail {
    /// Positioned at the segment holding `from`.
    fn open(log: &Path, from: u64) -> std::io::Result<Tail> {
        let mut tail = Tail {
            log: log.to_path_buf(),
            file: None,
            partial: Vec::new(),
            from,
        };
        if let Some(path) = locate(log, from)? {
            let f = File::open(&path)?;
            let inode = f.metadata()?.ino();
            tail.file = Some((f, inode));
        }
        Ok(tail)
    }

    /// The complete lines written since the last call (from `from` on).
    fn read_available(&mut self) -> std::io::Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        // Each rotation passed moves on by one segment: the next in chain order, however many
        // were archived since the last call (a lagging copy).
        loop {
            if self.file.is_none() {
                let Some(path) = locate(&self.log, self.from)? else {
                    return Ok(out);
                };
                match File::open(&path) {
                    Ok(f) => {
                        let inode = f.metadata()?.ino();
                        self.file = Some((f, inode));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(e),
                }
            }
            let Some((file, inode)) = self.file.as_mut() else {
                return Ok(out);
            };
            let mut bytes = std::mem::take(&mut self.partial);
            file.read_to_end(&mut bytes)?;
            let mut start = 0;
            while let Some(end) = bytes[start..].iter().position(|&b| b == b'\n') {
                let line = &bytes[start..start + end];
                start += end + 1;
                let Some(seq) = line_seq(line) else {
                    continue;
                };
                if seq >= self.from {
                    out.push((seq, String::from_utf8_lossy(line).into_owned()));
                    self.from = seq + 1;
                }
            }
            self.partial = bytes[start..].to_vec();
            // Rotated: the file held is an archive now, read to its end above; go on with the
            // segment after it.
            let current = std::fs::metadata(&self.log).map(|m| m.ino()).ok();
            if current.is_some_and(|c| c != *inode) && out.len() < READ_AHEAD {
                self.file = None;
                self.partial.clear();
                continue;
            }
            return Ok(out);
        }
    }
}

/// Starts shipping the log in the background.
pub(super) fn start(
    link: Link,
    instance: String,
    audit: &AuditLog,
    health: Arc<Health>,
    counts: Arc<ShippingCounts>,
) {
    let log = audit.path().to_path_buf();
    let durable = audit.durable_seq();
    let key_id = audit.key_id().to_string();
    let key_pem = audit.public_key_pem();
    tokio::spawn(async move {
        ship(
            link, instance, log, durable, key_id, key_pem, health, counts,
        )
        .await;
    });
}

#[allow(clippy::too_many_arguments)]
async fn ship(
    link: Link,
    instance: String,
    log: PathBuf,
    mut durable: tokio::sync::watch::Receiver<u64>,
    key_id: String,
    key_pem: String,
    health: Arc<Health>,
    counts: Arc<ShippingCounts>,
) {
    loop {
        let from = match announce(&link, &instance, &key_id, &key_pem).await {
            Ok(from) => from,
            Err(e) => {
                if !matches!(e, ClusterError::Database(_)) {
                    link.broken(&e).await;
                }
                health.failed(&e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        counts.next_seq.store(from, Ordering::Relaxed);
        let opened = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || Tail::open(&log, from)).await
        };
        let mut tail = match opened {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::error!(target: "hetao::cluster", error = %e, "cannot read the audit log to ship it");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(_) => return,
        };
        if from > *durable.borrow() {
            tracing::error!(target: "hetao::cluster", shipped = from, durable = *durable.borrow(),
                "the cluster database holds more of this instance's log than its files: a log replaced or cut back? Shipping waits for the log to catch up");
        }
        let mut pending: VecDeque<(u64, String)> = VecDeque::new();
        loop {
            if pending.len() < READ_AHEAD {
                let read = tokio::task::spawn_blocking(move || {
                    let lines = tail.read_available();
                    (tail, lines)
                })
                .await;
                let lines = match read {
                    Ok((t, lines)) => {
                        tail = t;
                        lines
                    }
                    Err(_) => return,
                };
                match lines {
                    Ok(lines) => pending.extend(lines),
                    Err(e) => {
                        tracing::error!(target: "hetao::cluster", error = %e, "cannot read the audit log to ship it");
                    }
                }
            }
            let durable_now = *durable.borrow();
            counts.durable.store(durable_now, Ordering::Relaxed);
            let ready = pending
                .iter()
                .take(BATCH)
                .take_while(|(seq, _)| *seq < durable_now)
                .count();
            if ready > 0 {
                let batch: Vec<(u64, String)> = pending.iter().take(ready).cloned().collect();
                match insert(&link, &instance, &batch).await {
                    Ok(diverged) => {
                        pending.drain(..ready);
                        health.ok();
                        counts.shipped.fetch_add(ready as u64, Ordering::Relaxed);
                        if let Some((last, _)) = batch.last() {
                            counts.next_seq.store(last + 1, Ordering::Relaxed);
                        }
                        if diverged > 0 {
                            counts.diverged.fetch_add(diverged, Ordering::Relaxed);
                        }
                        continue;
                    }
                    Err(e) => {
                        if !matches!(e, ClusterError::Database(_)) {
                            link.broken(&e).await;
                        }
                        health.failed(&e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        // Start over from what the database holds: lines it took without a
                        // flush (the shipping connection commits asynchronously) and then lost
                        // in a crash are read from the files again.
                        break;
                    }
                }
            }
            tokio::select! {
                changed = durable.changed() => {
                    if changed.is_err() {
                        // The log is closed: ship what is left, then stop.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    } else {
                        // A moment for more batches to commit: fewer, larger statements.
                        tokio::time::sleep(COALESCE).await;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// Registers the instance and its audit key; the next sequence to ship.
async fn announce(
    link: &Link,
    instance: &str,
    key_id: &str,
    key_pem: &str,
) -> Result<u64, ClusterError> {
    let client = link.client().await?;
    timed(client.execute(
        "INSERT INTO hetao_instances (instance, audit_key_id, audit_public_key)
         VALUES ($1, $2, $3)
         ON CONFLICT (instance) DO UPDATE
         SET audit_key_id = excluded.audit_key_id,
             audit_public_key = excluded.audit_public_key, last_seen = now()",
        &[&instance, &key_id, &key_pem],
    ))
    .await?;
    let row = timed(client.query_one(
        "SELECT coalesce(max(seq) + 1, 0) FROM hetao_audit_lines WHERE instance = $1",
        &[&instance],
    ))
    .await?;
    let next: i64 = row.get(0);
    Ok(u64::try_from(next).unwrap_or(0))
}

/// Inserts lines; the number found already there with other bytes.
async fn insert(link: &Link, instance: &str, batch: &[(u64, String)]) -> Result<u64, ClusterError> {
    let client = link.client().await?;
    let seqs: Vec<i64> = batch
        .iter()
        .map(|(s, _)| i64::try_from(*s).unwrap_or(i64::MAX))
        .collect();
    let lines: Vec<&str> = batch.iter().map(|(_, l)| l.as_str()).collect();
    let inserted = timed(client.query(
        "INSERT INTO hetao_audit_lines (instance, seq, line)
         SELECT $1, s, l FROM unnest($2::bigint[], $3::text[]) AS r(s, l)
         ON CONFLICT (instance, seq) DO NOTHING
         RETURNING seq",
        &[&instance, &seqs, &lines],
    ))
    .await?;
    if inserted.len() == batch.len() {
        return Ok(0);
    }
    // Some were there already (shipped before a restart, or not this log's): the same bytes
    // are fine, others are a divergence.
    let rows = timed(client.query(
        "SELECT count(*) FROM hetao_audit_lines d
         JOIN unnest($2::bigint[], $3::text[]) AS r(s, l) ON d.seq = r.s
         WHERE d.instance = $1 AND d.line <> r.l",
        &[&instance, &seqs, &lines],
    ))
    .await?;
    let diverged: i64 = rows.first().map_or(0, |r| r.get(0));
    if diverged > 0 {
        tracing::error!(target: "hetao::cluster", lines = diverged,
            "the cluster database holds other bytes for lines of this instance's log; they are left as they are: audit verify --database shows where");
    }
    Ok(u64::try_from(diverged).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_s_sequence_is_read_from_its_first_member() {
        assert_eq!(line_seq(br#"{"seq":42,"time":"x"}"#), Some(42));
        assert_eq!(line_seq(br#"{"time":"x","seq":42}"#), None);
        assert_eq!(line_seq(b""), None);
    }

    #[test]
    fn the_tail_follows_the_log_across_a_rotation_and_keeps_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        std::fs::write(&log, "{\"seq\":0}\n{\"seq\":1}\n{\"se").unwrap();
        let mut tail = Tail::open(&log, 1).unwrap();
        let got = tail.read_available().unwrap();
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1]);
        // The partial line completes; then the segment is archived and a new one started.
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(b"q\":2}\n").unwrap();
        }
        std::fs::rename(&log, crate::audit::chain::archive_path(&log, 1)).unwrap();
        std::fs::write(&log, "{\"seq\":3}\n").unwrap();
        let got = tail.read_available().unwrap();
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 3]);
        // Two rotations between reads: the segment in between is not skipped.
        std::fs::rename(&log, crate::audit::chain::archive_path(&log, 2)).unwrap();
        std::fs::write(crate::audit::chain::archive_path(&log, 3), "{\"seq\":4}\n").unwrap();
        std::fs::write(&log, "{\"seq\":5}\n").unwrap();
        let got = tail.read_available().unwrap();
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![4, 5]);
        std::fs::rename(&log, crate::audit::chain::archive_path(&log, 4)).unwrap();
        std::fs::write(&log, "{\"seq\":6}\n").unwrap();
        // A new tail positioned at seq 3 starts in the segment holding it.
        let mut again = Tail::open(&log, 3).unwrap();
        let got = again.read_available().unwrap();
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
    }
}
