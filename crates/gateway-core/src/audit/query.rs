//! An auditor's questions: filter entries, count them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::chain::{order_by_first_seq, scan_file, LinkProblem, ScanEnd};
use super::entry::{AuditEntry, AuditEntryType};
use crate::printable::csv_field;

/// Every set field must match (AND). Text fields match exactly. `audit query` matches it against
/// entries, the auditors' view against its index of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueryFilter {
    /// Entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time.
    pub until: Option<DateTime<Utc>>,
    pub entry_type: Option<AuditEntryType>,
    /// Record kind.
    pub kind: Option<String>,
    /// Source park.
    pub from: Option<String>,
    /// Destination park.
    pub to: Option<String>,
    /// Sender organisation (certificate Subject O).
    pub org: Option<String>,
    pub decision: Option<String>,
    /// A matched rule id.
    pub rule: Option<String>,
    pub record_id: Option<String>,
}

impl QueryFilter {
    pub fn matches(&self, e: &AuditEntry) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| match want {
            None => true,
            Some(w) => have == Some(w.as_str()),
        };
        if self.since.is_some() || self.until.is_some() {
            let Ok(t) = DateTime::parse_from_rfc3339(&e.time) else {
                return false;
            };
            let t = t.with_timezone(&Utc);
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        self.entry_type.is_none_or(|ty| ty == e.entry_type)
            && eq(&self.kind, e.kind.as_deref())
            && eq(&self.from, e.from.as_deref())
            && eq(&self.to, e.to.as_deref())
            && eq(
                &self.org,
                e.sender.as_ref().map(|s| s.organisation.as_str()),
            )
            && eq(&self.decision, e.decision.as_deref())
            && eq(&self.record_id, e.record_id.as_deref())
            && self
                .rule
                .as_ref()
                .is_none_or(|r| e.rules.iter().any(|x| &x.id == r))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Read(String),
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    #[error("{path} line {line}: {message} (run `hetao-gateway audit verify`)")]
    BadLine {
        path: PathBuf,
        line: u64,
        message: String,
    },
}

/// The entries of the segment files `paths` (any order) that match `filter`, in chain order. A
/// torn last line of the last file (a live log mid-write) is skipped; any other bad line is an
/// error. Queries do not check links or signatures: that is `audit verify`'s job.
pub fn query_logs(paths: &[PathBuf], filter: &QueryFilter) -> Result<Vec<AuditEntry>, QueryError> {
    let mut out = Vec::new();
    for_each_entry(paths, filter, |e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

/// [`query_logs`] one entry at a time: `each` gets every matching entry in chain order as it is
/// read, so a query holds one line in memory, not the log. An error from `each` (its output went
/// away) stops the reading and is returned as [`QueryError::Output`].
pub fn for_each_entry(
    paths: &[PathBuf],
    filter: &QueryFilter,
    mut each: impl FnMut(AuditEntry) -> std::io::Result<()>,
) -> Result<(), QueryError> {
    let ordered = order_by_first_seq(paths).map_err(|p| QueryError::Read(p.to_string()))?;
    let n = ordered.len();
    let mut output_failed = None;
    for (i, path) in ordered.iter().enumerate() {
        let scanned = scan_file(path, |e, _, _| {
            if filter.matches(&e) {
                let seq = e.seq;
                if let Err(err) = each(e) {
                    output_failed = Some(err);
                    return Err(LinkProblem::Stopped.at(seq));
                }
            }
            Ok(())
        });
        if let Some(err) = output_failed {
            return Err(QueryError::Output(err));
        }
        let end = scanned.map_err(|e| QueryError::Read(e.to_string()))?;
        if let ScanEnd {
            bad: Some((bad, is_last)),
            ..
        } = end
        {
            if !(is_last && bad.unterminated && i + 1 == n) {
                return Err(QueryError::BadLine {
                    path: path.clone(),
                    line: bad.line,
                    message: bad.error.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The columns of `audit query --format csv` (and of the auditors' view's CSV export).
pub const COLUMNS: [&str; 14] = [
    "seq",
    "time",
    "type",
    "record_id",
    "kind",
    "from",
    "to",
    "organisation",
    "decision",
    "status",
    "error",
    "rules",
    "acknowledgement",
    "hash",
];

/// One entry's cells, in [`COLUMNS`] order, unescaped.
pub fn entry_row(e: &AuditEntry) -> [String; 14] {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    [
        e.seq.to_string(),
        e.time.clone(),
        e.entry_type.as_str().to_string(),
        s(&e.record_id),
        s(&e.kind),
        s(&e.from),
        s(&e.to),
        e.sender
            .as_ref()
            .map(|x| x.organisation.clone())
            .unwrap_or_default(),
        s(&e.decision),
        e.status.map(|x| x.to_string()).unwrap_or_default(),
        s(&e.error),
        e.rules
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>()
            .join(";"),
        // Outcome entries: what the destination's answer relayed to the sender, as compact JSON
        // (its text came from a park endpoint: escaped and neutralised like every other cell).
        e.acknowledgement
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        e.hash.clone(),
    ]
}

/// The columns that hold numbers (`seq`, `status`): written as numbers in CSV, never neutralised
/// (a spreadsheet must still read them as numbers; both are unsigned, so none starts with `-`).
const NUMERIC_COLUMNS: [usize; 2] = [0, 9];

/// Entries as CSV: a header of [`COLUMNS`], then a row per entry, every text cell through
/// [`csv_field`] (quoted where needed, spreadsheet formulas neutralised).
pub fn entries_csv(entries: &[AuditEntry]) -> String {
    let mut out = COLUMNS.join(",") + "\n";
    for e in entries {
        out += &csv_row(e);
        out.push('\n');
    }
    out
}

/// The entries of several logs (the instances of a cluster) as CSV, with an `instance` column
/// first.
pub fn instances_csv(groups: &[(String, Vec<AuditEntry>)]) -> String {
    let mut out = format!("instance,{}\n", COLUMNS.join(","));
    for (instance, entries) in groups {
        for e in entries {
            out += &csv_field(instance);
            out.push(',');
            out += &csv_row(e);
            out.push('\n');
        }
    }
    out
}

/// One entry's CSV cells, joined (a line of [`entries_csv`] without its newline).
pub fn csv_row(e: &AuditEntry) -> String {
    let cells: Vec<String> = entry_row(e)
        .into_iter()
        .enumerate()
        .map(|(i, cell)| {
            if NUMERIC_COLUMNS.contains(&i) {
                cell
            } else {
                csv_field(&cell)
            }
        })
        .collect();
    cells.join(",")
}

/// Counts for `audit query --stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryStats {
    pub entries: u64,
    pub by_type: BTreeMap<String, u64>,
    pub by_kind: BTreeMap<String, u64>,
    /// `from->to`.
    pub by_route: BTreeMap<String, u64>,
    pub by_decision: BTreeMap<String, u64>,
    pub by_rule: BTreeMap<String, u64>,
    pub by_organisation: BTreeMap<String, u64>,
}

impl QueryStats {
    pub fn of(entries: &[AuditEntry]) -> Self {
        let mut s = QueryStats::default();
        for e in entries {
            s.add(e);
        }
        s
    }

    /// Counts one more entry (a streamed query counts as it reads).
    pub fn add(&mut self, e: &AuditEntry) {
        let s = self;
        s.entries += 1;
        *s.by_type.entry(e.entry_type.as_str().into()).or_default() += 1;
        if let Some(k) = &e.kind {
            *s.by_kind.entry(k.clone()).or_default() += 1;
        }
        if e.from.is_some() || e.to.is_some() {
            let route = format!(
                "{}->{}",
                e.from.as_deref().unwrap_or("?"),
                e.to.as_deref().unwrap_or("?")
            );
            *s.by_route.entry(route).or_default() += 1;
        }
        if let Some(d) = &e.decision {
            *s.by_decision.entry(d.clone()).or_default() += 1;
        }
        for r in &e.rules {
            *s.by_rule.entry(r.id.clone()).or_default() += 1;
        }
        if let Some(sender) = &e.sender {
            *s.by_organisation
                .entry(sender.organisation.clone())
                .or_default() += 1;
        }
    }
}
