//! `hetao-gateway audit ...`: verify, query, check receipts.
//!
//! Everything these commands print from a log or a receipt was written by senders (record ids,
//! `from`/`to` of invalid envelopes, certificate organisations) or by whoever altered the log. So
//! it cannot act: table, stats, verify and error output show control characters as escapes
//! ([`escape_controls`]), and CSV cells a spreadsheet would run as formulas are neutralised
//! ([`csv_field`]). JSON output is escaped by JSON itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use hetao_gateway_core::audit::chain::{self, verify_logs_with_tree};
use hetao_gateway_core::audit::entry::open_line;
use hetao_gateway_core::audit::query::{csv_row, entry_row, COLUMNS};
use hetao_gateway_core::audit::tree::ReceiptFacts;
use hetao_gateway_core::audit::{
    evidence, find_receipt_entry, for_each_entry, public_key_pem_from_signing_key_file,
    verify_receipt, witnessing, AuditEntry, AuditEntryType, AuditPublicKey, QueryFilter,
    QueryStats, Receipt, VerifyReport,
};
use hetao_gateway_core::causes::chain_text;
pub use hetao_gateway_core::printable::csv_field;
use hetao_gateway_core::printable::escape_controls;

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Check every hash, link, sequence and checkpoint signature, and that the tail is signed.
    /// Exits 0 when intact, 1 naming the first bad sequence.
    Verify(Box<VerifyArgs>),
    /// Filter entries (all filters combine) or count them with --stats.
    Query(Box<QueryArgs>),
    /// Receipts given to senders, and evidence bundles.
    #[command(subcommand)]
    Receipt(ReceiptCommand),
    /// Write the evidence for one record: each of its entries as written, its inclusion proof,
    /// and the signed (and cosigned) checkpoint they lead to. Checks offline with
    /// `audit receipt verify BUNDLE --public-key FILE`.
    Prove {
        /// The record id.
        #[arg(value_name = "RECORD_ID")]
        record_id: String,
        /// Log segment files (every segment from seq 0; the active log brings its archives).
        #[arg(required = true, value_name = "LOG")]
        logs: Vec<PathBuf>,
        /// Write the bundle here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// A read-only web view of the log for auditors: verification status, decisions with
    /// filters, one entry with its rules and evidence, checkpoints and cosignatures, charts, CSV
    /// and JSON exports (HTML at `/`, JSON under `/api/`). Never writes to the log.
    Serve(Box<ServeArgs>),
    /// Print the public key (PEM) of a signing key: what auditors and senders need.
    PublicKey {
        /// The audit signing key (PEM PKCS#8).
        #[arg(long, value_name = "FILE")]
        signing_key: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Log segment files. The active log (`audit.jsonl`) brings its archived segments
    /// (`audit.jsonl.000001`, ...) along; files may be given in any order.
    #[arg(required_unless_present = "database", value_name = "LOG")]
    pub logs: Vec<PathBuf>,
    #[command(flatten)]
    pub cluster: DatabaseArgs,
    /// The gateway's audit public key (PEM); without it signatures are not checked.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
    /// Accept entries after the last checkpoint (a log that is still being written); with
    /// --witness-key, also a last checkpoint not yet cosigned.
    #[arg(long)]
    pub allow_unsigned_tail: bool,
    /// A witness's public key (`witness.pub`); repeat for each park's witness. The log must hold
    /// every tree the witness cosigned, and (unless --allow-unsigned-tail) its last checkpoint
    /// must be cosigned.
    #[arg(long = "witness-key", value_name = "FILE")]
    pub witness_keys: Vec<PathBuf>,
    /// The cosignatures file (default: `<active log>.cosignatures` beside the log).
    #[arg(long, value_name = "FILE")]
    pub cosignatures: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Log segment files (the active log brings its archived segments along).
    #[arg(required_unless_present = "database", value_name = "LOG")]
    pub logs: Vec<PathBuf>,
    /// Over a cluster: every instance's log shipped to its database, at once, followed as
    /// instances ship more.
    #[command(flatten)]
    pub cluster: DatabaseArgs,
    /// The gateway's audit public key (PEM, `audit-signing.pub`).
    #[arg(long, value_name = "FILE")]
    pub public_key: PathBuf,
    /// A witness's public key; repeat for each park's witness. Their cosignatures (kept beside
    /// the log) are checked and shown. With --database they are named but not checked: a
    /// cluster's cosignatures stay beside each instance's files.
    #[arg(long = "witness-key", value_name = "FILE")]
    pub witness_keys: Vec<PathBuf>,
    /// Address to listen on. Anything but loopback needs --cert, --key and --client-ca.
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// TLS certificate chain (PEM) of the view.
    #[arg(long, value_name = "FILE", requires_all = ["key", "client_ca"])]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["cert", "client_ca"])]
    pub key: Option<PathBuf>,
    /// CA (PEM) that issues the auditors' client certificates.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

/// Reading the logs every instance of a cluster shipped to its database, instead of files.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// The cluster's PostgreSQL (`[cluster] database`): every instance's shipped log.
    #[arg(long, value_name = "URL", conflicts_with = "logs")]
    pub database: Option<String>,
    /// With --database: the database server's CA (PEM); the connection then uses TLS.
    #[arg(long, value_name = "FILE", requires = "database")]
    pub database_ca: Option<PathBuf>,
    /// With --database: this instance's log only.
    #[arg(long, value_name = "NAME", requires = "database")]
    pub instance: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// Log segment files (the active log brings its archived segments along).
    #[arg(required_unless_present = "database", value_name = "LOG")]
    pub logs: Vec<PathBuf>,
    #[command(flatten)]
    pub cluster: DatabaseArgs,
    /// Entries at or after this time (RFC 3339, e.g. 2024-05-01T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Entry type: decision, outcome, checkpoint, recovery, segment_start.
    #[arg(long = "type", value_parser = parse_entry_type)]
    pub entry_type: Option<AuditEntryType>,
    /// Record kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Source park.
    #[arg(long)]
    pub from: Option<String>,
    /// Destination park.
    #[arg(long)]
    pub to: Option<String>,
    /// Sending organisation (certificate Subject O).
    #[arg(long)]
    pub org: Option<String>,
    /// Decision (allow, deny, invalid, ...) or outcome (forwarded, upstream_failed).
    #[arg(long)]
    pub decision: Option<String>,
    /// A matched rule id.
    #[arg(long)]
    pub rule: Option<String>,
    /// One record's entries (its decision and outcome).
    #[arg(long, value_name = "ID")]
    pub record_id: Option<String>,
    /// Output: a table for people, JSON lines or CSV for tools.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Counts by type, kind, route, decision, rule and organisation instead of entries.
    #[arg(long)]
    pub stats: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum ReceiptCommand {
    /// Check a receipt or an evidence bundle (`audit prove`) with the public key alone (and with
    /// --log, that the log holds the entry and the tree the receipt was shown).
    /// Exits 0 when it holds, 1 when it does not.
    Verify {
        /// The receipt JSON (a decision or a delivery receipt), a whole gateway answer
        /// containing a `receipt` member (and, for a 200, a `delivery_receipt`: the
        /// answer's acknowledgement is then checked against the signed outcome entry), or an
        /// evidence bundle.
        #[arg(value_name = "RECEIPT")]
        receipt: PathBuf,
        /// The gateway's audit public key (PEM, `audit-signing.pub`).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Log segments to look the entry up in.
        #[arg(long = "log", value_name = "LOG")]
        logs: Vec<PathBuf>,
    },
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2024-05-01T00:00:00Z: {e}"))
}

fn parse_entry_type(s: &str) -> Result<AuditEntryType, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        format!("`{s}` is not one of decision, outcome, checkpoint, recovery, segment_start")
    })
}

/// `--database` runs are dispatched by the caller (`cli::audit_database`); everything else here.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    if let AuditCommand::Serve(a) = cmd {
        return serve(*a).await.map_err(|e| {
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            anyhow::Error::msg(escape_controls(&chain_text(e)).into_owned())
        });
    }
    // An error can quote a log line (a JSON parse error names the unknown value it met): it is
    // rendered here, escaped, rather than by `main` as it is.
    run_command(cmd).map_err(|e| {
        let e: &(dyn std::error::Error + 'static) = e.as_ref();
        anyhow::Error::msg(escape_controls(&chain_text(e)).into_owned())
    })
}

/// An error as printed: its chain, control characters escaped (it can quote a log line).
pub fn escaped(e: anyhow::Error) -> anyhow::Error {
    let e: &(dyn std::error::Error + 'static) = e.as_ref();
    anyhow::Error::msg(escape_controls(&chain_text(e)).into_owned())
}

fn run_command(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify(a) => verify(*a),
        AuditCommand::Query(a) => query(*a),
        AuditCommand::Receipt(ReceiptCommand::Verify {
            receipt,
            public_key,
            logs,
        }) => receipt_verify(&receipt, &public_key, &logs),
        AuditCommand::Prove {
            record_id,
            logs,
            out,
        } => prove(&record_id, &logs, out.as_deref()),
        AuditCommand::Serve(_) => Err(anyhow::anyhow!("`audit serve` runs on the async runtime")),
        AuditCommand::PublicKey { signing_key } => {
            print!("{}", public_key_pem_from_signing_key_file(&signing_key)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The active log brings its archived segments; explicit paths are kept; duplicates dropped.
pub fn expand_segments(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    Ok(chain::expand_segments(paths)?)
}

pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = a
        .public_key
        .as_deref()
        .map(AuditPublicKey::from_pem_file)
        .transpose()?;
    let files = expand_segments(&a.logs)?;
    let (mut report, tree) = verify_logs_with_tree(&files, key.as_ref());
    if !a.witness_keys.is_empty() {
        let witness_keys = a
            .witness_keys
            .iter()
            .map(|p| AuditPublicKey::from_pem_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        let cosignatures = match &a.cosignatures {
            Some(p) => p.clone(),
            None => witnessing::cosignatures_path(&chain::active_log(&a.logs)),
        };
        report.witnesses = witnessing::check_witnessed(
            tree.as_deref(),
            report.last_checkpoint_seq,
            &cosignatures,
            &witness_keys,
            key.as_ref(),
            a.allow_unsigned_tail,
        );
    }
    let intact = report.is_intact(a.allow_unsigned_tail);
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["intact"] = intact.into();
        v["tail_problem"] = report.tail_problem().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_verify(&report, key.as_ref(), a.allow_unsigned_tail);
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints one line of the verify report with control characters escaped: file names, key ids,
/// notes and problems can all quote what a damaged or forged log holds.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", escape_controls(&format!($($arg)*)))
    };
}

fn print_verify(r: &VerifyReport, key: Option<&AuditPublicKey>, allow_unsigned_tail: bool) {
    say!("files (chain order):");
    for f in &r.files {
        say!("  {}", f.display());
    }
    match (r.first_seq, r.last_seq) {
        (Some(first), Some(last)) => say!(
            "entries: {} (seq {first}..={last}), head {}",
            r.entries,
            r.head_hash.as_deref().unwrap_or("-")
        ),
        _ => say!("entries: 0"),
    }
    match key {
        Some(k) => say!(
            "checkpoints: {}, signatures verified: {} with key {}",
            r.checkpoints,
            r.signatures_verified,
            k.key_id()
        ),
        None => say!(
            "checkpoints: {} (signed by key {}); signatures NOT checked: give --public-key to check them (without it, anyone able to recompute SHA-256 could have rewritten the log)",
            r.checkpoints,
            if r.key_ids.is_empty() { "-".to_string() } else { r.key_ids.join(", ") }
        ),
    }
    for n in &r.notes {
        say!("note: {n}");
    }
    if let Some(p) = &r.problem {
        say!("FAILED: {p}");
        return;
    }
    let mut witness_failed = false;
    for w in &r.witnesses {
        match &w.problem {
            Some(p) => {
                say!("FAILED: witness {}: {p}", escape_controls(&w.witness));
                witness_failed = true;
            }
            None => say!(
                "witness {}: cosigned up to {} entries, all held by this log",
                escape_controls(&w.witness),
                w.latest_cosigned.unwrap_or(0)
            ),
        }
    }
    if witness_failed {
        return;
    }
    match r.tail_problem() {
        Some(t) if allow_unsigned_tail => say!("warning: {t}"),
        Some(t) => {
            say!("FAILED: {t} (use --allow-unsigned-tail for a live log)");
            return;
        }
        None => {}
    }
    say!("OK: the log is intact");
}

impl QueryArgs {
    /// The filters given.
    pub fn filter(&self) -> QueryFilter {
        QueryFilter {
            since: self.since,
            until: self.until,
            entry_type: self.entry_type,
            kind: self.kind.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            org: self.org.clone(),
            decision: self.decision.clone(),
            rule: self.rule.clone(),
            record_id: self.record_id.clone(),
        }
    }
}

/// `audit query`: every format streams (one entry in memory at a time, whatever the log's size;
/// the table reads the log twice, once to size its columns); `--stats` keeps only the counts.
fn query(a: QueryArgs) -> anyhow::Result<ExitCode> {
    let files = expand_segments(&a.logs)?;
    let filter = a.filter();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    if a.stats {
        let mut stats = QueryStats::default();
        for_each_entry(&files, &filter, |e| {
            stats.add(&e);
            Ok(())
        })?;
        out.write_all(render_stats(&stats, a.format)?.as_bytes())?;
    } else {
        write_entries(&mut out, a.format, &mut |each| {
            for_each_entry(&files, &filter, |e| each(&e)).map_err(anyhow::Error::from)
        })?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Entries as a table, a JSON array (with hashes) or CSV.
pub fn render_entries(entries: &[AuditEntry], format: OutputFormat) -> anyhow::Result<String> {
    let mut out = Vec::new();
    write_entries(&mut out, format, &mut |each| {
        for e in entries {
            each(e)?;
        }
        Ok(())
    })?;
    Ok(String::from_utf8(out)?)
}

/// Hands every entry of a query, in order, to the function it is given; called once per pass.
type EntrySource<'a> =
    dyn FnMut(&mut dyn FnMut(&AuditEntry) -> std::io::Result<()>) -> anyhow::Result<()> + 'a;

/// Writes entries as they come: a table (two passes over `source`: column widths, then rows), a
/// JSON array (with hashes; the same text as one pretty-printed array) or CSV.
fn write_entries(
    out: &mut dyn Write,
    format: OutputFormat,
    source: &mut EntrySource<'_>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => {
            let mut written = 0u64;
            source(&mut |e| {
                out.write_all(if written == 0 { b"[\n" } else { b",\n" })?;
                let text = serde_json::to_string_pretty(&e.to_json_with_hash())?;
                // An element of a pretty-printed array: each of its lines indented by two.
                for (i, line) in text.split('\n').enumerate() {
                    if i > 0 {
                        out.write_all(b"\n")?;
                    }
                    out.write_all(b"  ")?;
                    out.write_all(line.as_bytes())?;
                }
                written += 1;
                Ok(())
            })?;
            out.write_all(if written == 0 { b"[]\n" } else { b"\n]\n" })?;
        }
        OutputFormat::Csv => {
            writeln!(out, "{}", COLUMNS.join(","))?;
            source(&mut |e| writeln!(out, "{}", csv_row(e)))?;
        }
        OutputFormat::Table => {
            // The hash is long and in the json/csv output; the table stays readable.
            let shown = COLUMNS.len() - 1;
            let cells = |e: &AuditEntry| -> Vec<String> {
                entry_row(e)[..shown]
                    .iter()
                    .map(|cell| escape_controls(cell).into_owned())
                    .collect()
            };
            let mut widths: Vec<usize> = COLUMNS[..shown].iter().map(|c| c.len()).collect();
            source(&mut |e| {
                for (w, cell) in widths.iter_mut().zip(cells(e)) {
                    *w = (*w).max(cell.chars().count());
                }
                Ok(())
            })?;
            let line = |out: &mut dyn Write, cells: &[&str]| {
                let text = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ");
                writeln!(out, "{}", text.trim_end())
            };
            line(out, &COLUMNS[..shown])?;
            let mut rows = 0u64;
            source(&mut |e| {
                let row = cells(e);
                rows += 1;
                line(out, &row.iter().map(String::as_str).collect::<Vec<_>>())
            })?;
            writeln!(out, "({rows} entries)")?;
        }
    }
    Ok(())
}

pub fn render_stats(s: &QueryStats, format: OutputFormat) -> anyhow::Result<String> {
    let groups = [
        ("type", &s.by_type),
        ("kind", &s.by_kind),
        ("route", &s.by_route),
        ("decision", &s.by_decision),
        ("rule", &s.by_rule),
        ("organisation", &s.by_organisation),
    ];
    Ok(match format {
        OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(s)?),
        OutputFormat::Csv => {
            let mut out = String::from("group,value,count\n");
            for (g, m) in groups {
                for (k, n) in m {
                    out += &format!("{g},{},{n}\n", csv_field(k));
                }
            }
            out
        }
        OutputFormat::Table => {
            let mut out = format!("entries: {}\n", s.entries);
            for (g, m) in groups {
                if m.is_empty() {
                    continue;
                }
                out += &format!("\nby {g}:\n");
                let keys: Vec<_> = m.keys().map(|k| escape_controls(k)).collect();
                let w = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0);
                for (k, n) in keys.iter().zip(m.values()) {
                    out += &format!("  {k:<w$}  {n}\n");
                }
            }
            out
        }
    })
}

/// A receipt file: the receipt itself, or a whole gateway answer with a `receipt` member (then
/// also the answer, whose own statements must agree with its receipt).
pub fn read_receipt(path: &Path) -> anyhow::Result<(Receipt, Option<serde_json::Value>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read receipt {}", path.display()))?;
    let mut v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("receipt {} is not JSON", path.display()))?;
    let mut answer = None;
    if let Some(inner) = v.get_mut("receipt") {
        let receipt = inner.take();
        answer = Some(v);
        v = receipt;
    }
    let receipt = serde_json::from_value(v).with_context(|| {
        format!(
            "receipt {}: expected audit_seq, entry_hash, record_id, decision, status, \
             body_sha256, policy_version, batch, signature, key_id",
            path.display()
        )
    })?;
    Ok((receipt, answer))
}

/// The file as an evidence bundle, if it is one (it has `entries`).
fn read_evidence(path: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(v.get("entries").is_some().then_some(v))
}

/// Where a gateway answer says something other than the receipt it carries (an answer edited
/// after the fact: the receipt's signature covers the receipt, so the answer must match it).
fn answer_disagreements(receipt: &Receipt, answer: &serde_json::Value) -> Vec<String> {
    let facts = &receipt.facts;
    let stated = [
        ("record_id", serde_json::json!(facts.record_id)),
        ("decision", serde_json::json!(facts.decision)),
        ("audit_seq", serde_json::json!(facts.audit_seq)),
        ("policy_version", serde_json::json!(facts.policy_version)),
    ];
    stated
        .into_iter()
        .filter_map(|(field, signed)| {
            let said = answer.get(field)?;
            (said != &signed).then(|| {
                format!(
                    "the answer says {field} {}, its signed receipt {}",
                    escape_controls(&said.to_string()),
                    escape_controls(&signed.to_string())
                )
            })
        })
        .collect()
}

fn prove(record_id: &str, logs: &[PathBuf], out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let files = expand_segments(logs)?;
    let evidence = match evidence::prove(&files, record_id) {
        Ok(e) => e,
        Err(e) => {
            say!("cannot prove: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let text = serde_json::to_string_pretty(&evidence)? + "\n";
    match out {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            say!(
                "evidence for record {}: {} entries proven in the tree of {} entries, written to {}",
                escape_controls(record_id),
                evidence.entries.len(),
                evidence.tree_size,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// An evidence bundle (`audit prove`) rather than a receipt.
fn evidence_verify(v: serde_json::Value, key: &AuditPublicKey) -> anyhow::Result<ExitCode> {
    let evidence: evidence::Evidence =
        serde_json::from_value(v).context("not a valid evidence bundle")?;
    if let Err(e) = evidence::verify_evidence(&evidence, key) {
        say!("INVALID: {e}");
        return Ok(ExitCode::from(1));
    }
    say!(
        "evidence OK: {} entries of record {} are in the log's tree of {} entries, whose checkpoint key {} signed",
        evidence.entries.len(),
        escape_controls(&evidence.record_id),
        evidence.tree_size,
        escape_controls(&evidence.key_id)
    );
    Ok(ExitCode::SUCCESS)
}

/// The entry a receipt carries (delivery receipts do): its line must hash to what it says and
/// state the receipt's facts, so every field of it is as signed. `Ok(None)` without one.
fn receipt_entry(receipt: &Receipt) -> Result<Option<AuditEntry>, String> {
    let Some(line) = &receipt.entry else {
        return Ok(None);
    };
    let entry = open_line(line.as_bytes()).map_err(|(e, _)| format!("the receipt's entry: {e}"))?;
    if ReceiptFacts::of(&entry) != receipt.facts {
        return Err(format!(
            "the receipt's entry does not state the receipt's facts: {}",
            receipt.facts.differences(&entry).join("; ")
        ));
    }
    Ok(Some(entry))
}

/// The delivery receipt of a whole answer (a 200): proof that the outcome entry of the record,
/// with the acknowledgement the answer shows, is in the signed log. Checks that it is a valid
/// receipt carrying its entry, that the entry is the outcome of the answer's decision entry, and
/// that the answer's `acknowledgement` and `upstream_status` are the entry's. `Ok(None)` when the
/// answer has no delivery receipt.
fn delivery_verify(
    decision: &Receipt,
    answer: &serde_json::Value,
    key: &AuditPublicKey,
) -> Result<Option<(Receipt, AuditEntry)>, String> {
    let receipt = match answer.get("delivery_receipt") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(v) => serde_json::from_value::<Receipt>(v.clone())
            .map_err(|e| format!("the delivery receipt is not a receipt: {e}"))?,
    };
    verify_receipt(&receipt, key).map_err(|e| format!("delivery receipt: {e}"))?;
    let entry = receipt_entry(&receipt)?.ok_or(
        "the delivery receipt carries no entry: the acknowledgement cannot be checked".to_string(),
    )?;
    let mut wrong = Vec::new();
    if entry.entry_type != AuditEntryType::Outcome {
        wrong.push(format!(
            "the delivery receipt's entry is a {} entry, not an outcome",
            entry.entry_type.as_str()
        ));
    }
    if entry.refers_to != Some(decision.facts.audit_seq) {
        wrong.push(format!(
            "the delivery receipt's entry refers to seq {}, the answer's decision is seq {}",
            entry
                .refers_to
                .map_or_else(|| "none".to_string(), |s| s.to_string()),
            decision.facts.audit_seq
        ));
    }
    if receipt.facts.record_id != decision.facts.record_id {
        wrong.push("the two receipts are for different records".to_string());
    }
    let relayed = entry
        .acknowledgement
        .clone()
        .unwrap_or(serde_json::Value::Null);
    let said = answer
        .get("acknowledgement")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    if said != relayed {
        wrong.push(format!(
            "the answer says acknowledgement {}, its signed outcome entry {}",
            escape_controls(&said.to_string()),
            escape_controls(&relayed.to_string())
        ));
    }
    if let Some(status) = answer.get("upstream_status") {
        if status != &serde_json::json!(receipt.facts.status) {
            wrong.push(format!(
                "the answer says upstream_status {}, its signed outcome entry {}",
                escape_controls(&status.to_string()),
                receipt.facts.status
            ));
        }
    }
    if wrong.is_empty() {
        Ok(Some((receipt, entry)))
    } else {
        Err(wrong.join("; "))
    }
}

fn receipt_verify(path: &Path, public_key: &Path, logs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let key = AuditPublicKey::from_pem_file(public_key)?;
    if let Some(bundle) = read_evidence(path)? {
        return evidence_verify(bundle, &key);
    }
    let (receipt, answer) = read_receipt(path)?;
    if let Err(e) = verify_receipt(&receipt, &key) {
        say!("INVALID: {e}");
        return Ok(ExitCode::from(1));
    }
    let entry = match receipt_entry(&receipt) {
        Ok(entry) => entry,
        Err(e) => {
            say!("INVALID: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut delivery = None;
    if let Some(answer) = &answer {
        let disagreements = answer_disagreements(&receipt, answer);
        if !disagreements.is_empty() {
            say!("INVALID: {}", disagreements.join("; "));
            return Ok(ExitCode::from(1));
        }
        match delivery_verify(&receipt, answer, &key) {
            Ok(d) => delivery = d,
            Err(e) => {
                say!("INVALID: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    let f = &receipt.facts;
    say!(
        "signature OK: record {} was logged as seq {} with hash {}: decision {}, status {}, body \
         sha256 {}, policy version {} (key {})",
        escape_controls(&f.record_id),
        f.audit_seq,
        escape_controls(&f.entry_hash),
        escape_controls(&f.decision),
        f.status,
        escape_controls(&f.body_sha256),
        escape_controls(&f.policy_version),
        escape_controls(&receipt.key_id)
    );
    if let Some(entry) = &entry {
        say!(
            "entry OK: the receipt's entry line hashes to {} and states its facts",
            escape_controls(&entry.hash)
        );
    }
    if let Some((d, entry)) = &delivery {
        say!(
            "delivery OK: the outcome entry seq {} (of decision seq {}) records the endpoint's \
             status {}, its answer's sha256 {} ({} bytes) and the acknowledgement {}, as this \
             answer shows it",
            d.facts.audit_seq,
            receipt.facts.audit_seq,
            d.facts.status,
            escape_controls(entry.answer_sha256.as_deref().unwrap_or("-")),
            entry
                .answer_bytes
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            escape_controls(
                &entry
                    .acknowledgement
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |a| a.to_string())
            )
        );
    } else if answer
        .as_ref()
        .is_some_and(|a| a.get("delivery_receipt").is_some_and(|d| d.is_null()))
    {
        say!("note: the answer carries no delivery receipt (its outcome entry was not durable when it was given)");
    }
    if !logs.is_empty() {
        let files = expand_segments(logs)?;
        for r in std::iter::once(&receipt).chain(delivery.as_ref().map(|(d, _)| d)) {
            if let Err(e) = find_receipt_entry(r, &files, &key) {
                say!("INVALID: {e}");
                return Ok(ExitCode::from(1));
            }
        }
        if delivery.is_some() {
            say!("the log holds both entries, and the trees the receipts were shown");
        } else {
            say!("the log holds the entry, and the tree the receipt was shown");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit serve`: checks the listener is safe, indexes and verifies the log, then serves until
/// Ctrl-C or SIGTERM.
async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    // Warnings only (a log that cannot be read again, a failed page), on stderr; RUST_LOG
    // overrides.
    let _log_guard =
        hetao_gateway_core::telemetry::init(&hetao_gateway_core::config::LoggingConfig {
            level: "warn".into(),
            format: hetao_gateway_core::config::LogFormat::Auto,
        });
    let tls = match (a.cert, a.key, a.client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => Some(hetao_auditview::TlsFiles {
            cert,
            key,
            client_ca,
        }),
        _ => None,
    };
    // Refused before anything is read: a network listener without client certificates.
    let acceptor = hetao_auditview::acceptor_for(a.listen, tls.as_ref())?;
    let key = AuditPublicKey::from_pem_file(&a.public_key)?;
    let witness_keys = a
        .witness_keys
        .iter()
        .map(|p| AuditPublicKey::from_pem_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let started = std::time::Instant::now();
    let view = match a.cluster.database.as_deref() {
        Some(database) => {
            let source =
                hetao_auditview::DatabaseSource::new(database, a.cluster.database_ca.as_deref())?;
            // The connection string is never printed: only what the driver or server said.
            hetao_auditview::AuditView::open_database(
                source,
                a.cluster.instance.clone(),
                key,
                witness_keys,
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!("reading the shipped logs from the cluster database: {e}")
            })?
        }
        None => {
            let logs = a.logs.clone();
            tokio::task::spawn_blocking(move || {
                hetao_auditview::AuditView::open(logs, key, witness_keys)
            })
            .await
            .context("indexing the log stopped")??
        }
    };
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let overview = view.overview();
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let instances = view.instances();
    let (of, verdict) = if a.cluster.database.is_some() {
        (
            format!(
                " of {} instances ({})",
                instances.len(),
                hetao_gateway_core::printable::escape_controls(&instances.join(", "))
            ),
            if overview.intact() {
                "every instance's log verifies"
            } else {
                "AN INSTANCE'S LOG DOES NOT VERIFY: see the page"
            },
        )
    } else {
        (
            String::new(),
            if overview.intact() {
                "the log verifies"
            } else {
                "THE LOG DOES NOT VERIFY: see the page"
            },
        )
    };
    say!(
        "audit view of {} entries{of} ({verdict}) ready in {} ms at {scheme}://{}/",
        view.entries(),
        started.elapsed().as_millis(),
        listener.local_addr().unwrap_or(a.listen)
    );
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    };
    hetao_auditview::run(listener, view, acceptor, shutdown).await;
    Ok(ExitCode::SUCCESS)
}
