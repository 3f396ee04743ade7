//! What the demo prints: the banner, a line per record, the summary tables, the checks that
//! decide the exit code, and where the kept files are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::stream::{matched_rules, Expect};
use super::Sent;
use crate::endpoint::{ReceivedRecord, RunningEndpoint};
use hetao_gateway_core::audit::{
    query_logs, segment_paths, verify_receipt, AuditEntryType, AuditPublicKey, QueryFilter,
    Receipt, VerifyReport,
};
use hetao_gateway_core::upstream::headers::RECORD_ID;
use hetao_pki::DevPkiFiles;

/// Standard output, unless `--quiet` silences the per-record lines.
pub struct Out {
    quiet: bool,
}

impl Out {
    pub fn new(quiet: bool) -> Out {
        Out { quiet }
    }

    fn line(&self, text: &str) {
        // A closed stdout (`demo | head`) must not turn into a panic.
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }

    pub fn banner(
        &self,
        dir: &Path,
        keep: bool,
        gateway: SocketAddr,
        admin: SocketAddr,
        endpoints: &BTreeMap<String, RunningEndpoint>,
    ) {
        self.line("hetao-gateway demo: the Hetao zone on loopback, with a throw-away PKI");
        let what = if keep { "kept in" } else { "temporary folder" };
        self.line(&format!("  files      {what} {}", dir.display()));
        self.line(&format!(
            "  gateway    https://{gateway}/v1/records (mutual TLS)   admin http://{admin}"
        ));
        for (park, e) in endpoints {
            self.line(&format!(
                "  endpoint   {park}: {}  (logs to endpoint-{park}.jsonl)",
                e.url()
            ));
        }
        self.line("");
    }

    pub fn summary(
        &self,
        results: &[Sent],
        received: &BTreeMap<String, Vec<ReceivedRecord>>,
        audit: &AuditCheck,
        elapsed: Duration,
        concurrency: usize,
    ) {
        self.line("");
        let rate = results.len() as f64 / elapsed.as_secs_f64().max(1e-6);
        self.line(&format!(
            "Sent {} records in {:.2} s ({rate:.0} records/s, {concurrency} in flight)",
            results.len(),
            elapsed.as_secs_f64()
        ));
        self.line("");
        for l in decisions_table(results) {
            self.line(&l);
        }
        self.line("");
        for l in rules_table(results) {
            self.line(&l);
        }
        self.line("");
        for l in latency_table(results) {
            self.line(&l);
        }
        self.line("");
        self.line("Park endpoints");
        for (park, records) in received {
            // Retries answered with their first answer were not forwarded again.
            let expected = results
                .iter()
                .filter(|s| {
                    s.status == Some(200)
                        && decision_of(s) == "allow"
                        && s.shot.to.as_deref() == Some(park)
                })
                .count();
            self.line(&format!(
                "  {park:<4} received {:>4} records (gateway forwarded {expected} bound for {park})",
                records.len()
            ));
        }
        self.line("");
        self.line("Audit log");
        let r = &audit.report;
        self.line(&format!(
            "  {}: {} entries ({} decisions, {} outcomes, {} checkpoints), seq {}..{}",
            audit.log.display(),
            r.entries,
            audit.decisions,
            audit.outcomes,
            r.checkpoints,
            r.first_seq.unwrap_or(0),
            r.last_seq.unwrap_or(0)
        ));
        let verdict = if r.is_intact(false) {
            format!(
                "intact: every hash and link checked, {} checkpoint signature(s) verified with key {}, closed by the final checkpoint",
                r.signatures_verified,
                r.key_ids.join(", ")
            )
        } else {
            format!(
                "NOT INTACT: {}",
                r.problem
                    .as_ref()
                    .map(|p| p.to_string())
                    .or_else(|| r.tail_problem())
                    .unwrap_or_default()
            )
        };
        self.line(&format!("  audit verify: {verdict}"));
    }

    pub fn checks(&self, checks: &Checks) {
        self.line("");
        self.line("Checks");
        for (ok, text) in &checks.items {
            self.line(&format!("  [{}] {text}", if *ok { "ok" } else { "FAILED" }));
        }
        for problem in &checks.problems {
            self.line(&format!("      - {problem}"));
        }
    }

    pub fn keep_running(&self, zone: &super::Zone) {
        let files = &zone.files;
        let org = files
            .orgs
            .iter()
            .find(|o| o.park == "sz")
            .or_else(|| files.orgs.first());
        self.line("");
        self.line(&format!(
            "The gateway keeps running at {} (admin http://{}). Try, from the repository:",
            zone.records_url(),
            zone.admin_addr
        ));
        if let Some(org) = org {
            self.line(&format!(
                "  curl --cert {} --key {} --cacert {} -H 'content-type: application/json' --data @examples/records/data-sz-hk-academic-measurements.json {}",
                org.cert.display(),
                org.key.display(),
                files.gateway_ca_cert.display(),
                zone.records_url()
            ));
            self.line(&format!(
                "  hetao-gateway send --url {} --cert {} --key {} --ca {} examples/records/",
                zone.records_url(),
                org.cert.display(),
                org.key.display(),
                files.gateway_ca_cert.display()
            ));
        }
        self.line("Press Ctrl-C to stop, verify the audit log and print the checks.");
    }

    pub fn kept(
        &self,
        files: &DevPkiFiles,
        endpoint_logs: &[(String, PathBuf)],
        witness_keys: &[PathBuf],
    ) {
        let dir = &files.dir;
        let rel = |p: &Path| p.strip_prefix(dir).unwrap_or(p).display().to_string();
        self.line("");
        self.line(&format!("Kept in {}:", dir.display()));
        self.line(&format!(
            "  {:<28} the configuration (ports of this run)",
            rel(&files.config)
        ));
        self.line(&format!(
            "  {:<28} the audit log; public key {}",
            rel(&files.audit_log),
            rel(&files.audit_public_key)
        ));
        for (park, log) in endpoint_logs {
            self.line(&format!(
                "  {:<28} what the {park} endpoint received",
                rel(log)
            ));
        }
        self.line(&format!(
            "  {:<28} partner organisations' certificates and keys; CAs, gateway certificates next to gateway.toml",
            "orgs/"
        ));
        if !witness_keys.is_empty() {
            self.line(&format!(
                "  {:<28} each park's witness (key, state, witness.toml); cosignatures in audit/audit.jsonl.cosignatures",
                "witness-<park>/"
            ));
        }
        self.line("Try:");
        let witness_args: String = witness_keys
            .iter()
            .map(|k| format!(" --witness-key {}", k.display()))
            .collect();
        self.line(&format!(
            "  hetao-gateway audit verify {} --public-key {}{witness_args}",
            files.audit_log.display(),
            files.audit_public_key.display()
        ));
        self.line(&format!(
            "  hetao-gateway audit query {} --stats",
            files.audit_log.display()
        ));
        self.line(&format!(
            "  hetao-gateway audit query {} --decision deny",
            files.audit_log.display()
        ));
    }

    pub fn finish(&self, checks: &Checks, elapsed: Duration) {
        self.line("");
        if checks.all_passed() {
            self.line(&format!(
                "demo passed in {:.1} s: every record got the answer it must get, every forwarded record arrived, the audit log verifies",
                elapsed.as_secs_f64()
            ));
        } else {
            self.line(&format!(
                "demo FAILED after {:.1} s: see the checks above",
                elapsed.as_secs_f64()
            ));
        }
    }
}

// === progress ===

/// Collects the results and prints a line per record as it completes.
pub struct Progress<'a> {
    out: &'a Out,
    total: usize,
    results: Vec<Sent>,
    lost: Vec<String>,
}

impl<'a> Progress<'a> {
    pub fn new(out: &'a Out, total: usize) -> Progress<'a> {
        if !out.quiet {
            out.line(&format!(
                "{:>9}  {:<3} {:<8} {:<9} {:<6} {:<32} {:<44} {:>8}",
                "#", "ST", "DECISION", "KIND", "ROUTE", "SENDER", "CASE / RULE", "LATENCY"
            ));
        }
        Progress {
            out,
            total,
            results: Vec::with_capacity(total),
            lost: Vec::new(),
        }
    }

    pub fn record(&mut self, sent: Sent) {
        if !self.out.quiet {
            let n = self.results.len() + 1;
            let width = self.total.to_string().len();
            let status = sent
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "---".into());
            let decision = decision_of(&sent);
            let mut line = format!(
                "{:>w$}/{:<w$}  {status:<3} {decision:<8} {:<9} {:<6} {:<32} {:<44} {:>6.1}ms",
                n,
                self.total,
                sent.shot.kind,
                sent.shot.route,
                clip(&sent.organisation, 32),
                clip(&case_text(&sent), 44),
                sent.latency.as_secs_f64() * 1000.0,
                w = width.max(4),
            );
            if !sent.as_expected() {
                line.push_str(&format!("  <- expected {}", sent.shot.expect.describe()));
            }
            self.out.line(&line);
        }
        self.results.push(sent);
    }

    pub fn lost(&mut self, why: String) {
        self.lost.push(why);
    }

    /// Everything recorded, and the tasks that died without a result.
    pub fn finish(self) -> (Vec<Sent>, Vec<String>) {
        (self.results, self.lost)
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// The decision column: what the gateway decided, in the audit log's words.
pub fn decision_of(sent: &Sent) -> &'static str {
    let error = sent
        .answer
        .as_ref()
        .and_then(|a| a.get("error"))
        .and_then(Value::as_str);
    let replayed = sent
        .answer
        .as_ref()
        .and_then(|a| a.get("replayed"))
        .and_then(Value::as_bool)
        == Some(true);
    match sent.status {
        None => "no-answer",
        // A retry answered with the first answer: no second decision, nothing forwarded.
        Some(200 | 403) if replayed => "replay",
        Some(200) => "allow",
        Some(403) => "deny",
        Some(409) => "replay",
        Some(400 | 413 | 415 | 422) => "invalid",
        Some(429) => "limited",
        Some(_) => match error {
            Some("upstream_failed" | "upstream_timeout") => "upstream",
            _ => "error",
        },
    }
}

/// The case column: the rule that decided (the first denying rule, else the first allowing
/// one), or the error code and first violation; deliberate cases name themselves.
fn case_text(sent: &Sent) -> String {
    let answer = sent.answer.as_ref();
    let rules = matched_rules(answer);
    let decisive = rules
        .iter()
        .find(|(_, effect)| effect == "deny")
        .or_else(|| rules.first())
        .map(|(id, _)| id.clone());
    let error = answer
        .and_then(|a| a.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let pointer = answer
        .and_then(|a| a.get("violations"))
        .and_then(|v| v.get(0))
        .and_then(|v| v.get("pointer"))
        .and_then(Value::as_str)
        .map(|p| if p.is_empty() { "/" } else { p }.to_string());
    if let Some(f) = &sent.failure {
        return f.clone();
    }
    match (&sent.shot.expect, decisive, error) {
        (Expect::Allow, Some(rule), _) => rule,
        (Expect::Deny { .. }, Some(rule), _) => rule,
        (_, _, Some(code)) => match pointer {
            Some(p) => format!("{code} {p}"),
            None => format!("{code}: {}", sent.shot.label),
        },
        (_, Some(rule), None) => rule,
        _ => sent.shot.label.clone(),
    }
}

// === tables ===

fn decisions_table(results: &[Sent]) -> Vec<String> {
    const COLUMNS: [&str; 6] = ["allow", "deny", "invalid", "replay", "upstream", "error"];
    let mut rows: BTreeMap<(String, String), [usize; 7]> = BTreeMap::new();
    for s in results {
        let row = rows
            .entry((s.shot.kind.clone(), s.shot.route.clone()))
            .or_default();
        row[0] += 1;
        let d = decision_of(s);
        let col = COLUMNS.iter().position(|c| *c == d).unwrap_or(5);
        row[col + 1] += 1;
    }
    let mut lines = vec![
        "Decisions by kind and route".to_string(),
        format!(
            "  {:<10} {:<7} {:>5} {:>6} {:>5} {:>8} {:>7} {:>9} {:>6}",
            "KIND", "ROUTE", "SENT", "ALLOW", "DENY", "INVALID", "REPLAY", "UPSTREAM", "OTHER"
        ),
    ];
    let mut total = [0usize; 7];
    for ((kind, route), row) in &rows {
        for (t, v) in total.iter_mut().zip(row) {
            *t += v;
        }
        lines.push(format_row(kind, route, row));
    }
    lines.push(format_row("total", "", &total));
    lines
}

fn format_row(kind: &str, route: &str, r: &[usize; 7]) -> String {
    format!(
        "  {kind:<10} {route:<7} {:>5} {:>6} {:>5} {:>8} {:>7} {:>9} {:>6}",
        r[0], r[1], r[2], r[3], r[4], r[5], r[6]
    )
}

fn rules_table(results: &[Sent]) -> Vec<String> {
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for s in results {
        for rule in matched_rules(s.answer.as_ref()) {
            *counts.entry(rule).or_default() += 1;
        }
    }
    let mut ranked: Vec<_> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut lines = vec![
        "Top rules by matches".to_string(),
        format!("  {:<40} {:<6} {:>7}", "RULE", "EFFECT", "MATCHES"),
    ];
    for ((id, effect), n) in ranked.into_iter().take(5) {
        lines.push(format!("  {id:<40} {effect:<6} {n:>7}"));
    }
    lines
}

/// The `q`-quantile of sorted durations (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency_table(results: &[Sent]) -> Vec<String> {
    let mut lines = vec![
        "Latency, measured by the senders (ms)".to_string(),
        format!(
            "  {:<30} {:>6} {:>7} {:>7} {:>7} {:>7}",
            "", "COUNT", "P50", "P90", "P99", "MAX"
        ),
    ];
    fn all(_: &Sent) -> bool {
        true
    }
    fn allowed(s: &Sent) -> bool {
        s.status == Some(200)
    }
    fn refused(s: &Sent) -> bool {
        s.status.is_some_and(|c| c != 200)
    }
    type Keep = fn(&Sent) -> bool;
    let groups: [(&str, Keep); 3] = [
        ("all answers", all),
        ("allowed (forwarded round trip)", allowed),
        ("refused", refused),
    ];
    for (name, keep) in groups {
        let mut d: Vec<Duration> = results
            .iter()
            .filter(|s| s.status.is_some() && keep(s))
            .map(|s| s.latency)
            .collect();
        d.sort();
        let ms = |x: Duration| x.as_secs_f64() * 1000.0;
        lines.push(format!(
            "  {name:<30} {:>6} {:>7.1} {:>7.1} {:>7.1} {:>7.1}",
            d.len(),
            ms(quantile(&d, 0.50)),
            ms(quantile(&d, 0.90)),
            ms(quantile(&d, 0.99)),
            ms(d.last().copied().unwrap_or_default()),
        ));
    }
    lines
}

// === audit ===

/// The audit log after the gateway stopped: `audit verify` and counts by entry type.
pub struct AuditCheck {
    pub log: PathBuf,
    pub report: VerifyReport,
    pub decisions: u64,
    pub outcomes: u64,
    /// Record ids with a decision entry.
    pub decided: HashSet<String>,
    /// Record ids with an outcome entry `forwarded`.
    pub forwarded: HashSet<String>,
}

impl AuditCheck {
    /// `audit verify` of the log with `key`, and with each witness key in `witness_keys`.
    pub fn run(
        log: &Path,
        key: &AuditPublicKey,
        witness_keys: &[PathBuf],
    ) -> anyhow::Result<AuditCheck> {
        let paths: Vec<PathBuf> = segment_paths(log)
            .map_err(|e| anyhow::anyhow!("audit log {}: {e}", log.display()))?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let (mut report, tree) =
            hetao_gateway_core::audit::chain::verify_logs_with_tree(&paths, Some(key));
        let witness_keys = witness_keys
            .iter()
            .map(|p| AuditPublicKey::from_pem_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        report.witnesses = hetao_gateway_core::audit::witnessing::check_witnessed(
            tree.as_deref(),
            report.last_checkpoint_seq,
            &hetao_gateway_core::audit::witnessing::cosignatures_path(log),
            &witness_keys,
            Some(key),
            false,
        );
        let entries = query_logs(&paths, &QueryFilter::default())
            .map_err(|e| anyhow::anyhow!("audit log {}: {e}", log.display()))?;
        let mut check = AuditCheck {
            log: log.to_path_buf(),
            report,
            decisions: 0,
            outcomes: 0,
            decided: HashSet::new(),
            forwarded: HashSet::new(),
        };
        for e in entries {
            match e.entry_type {
                AuditEntryType::Decision => {
                    check.decisions += 1;
                    if let Some(id) = e.record_id {
                        check.decided.insert(id);
                    }
                }
                AuditEntryType::Outcome => {
                    check.outcomes += 1;
                    if e.decision.as_deref() == Some("forwarded") {
                        if let Some(id) = e.record_id {
                            check.forwarded.insert(id);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(check)
    }
}

// === checks ===

/// What decides the exit code.
pub struct Checks {
    pub items: Vec<(bool, String)>,
    /// Details of what failed.
    pub problems: Vec<String>,
}

impl Checks {
    pub fn all_passed(&self) -> bool {
        self.items.iter().all(|(ok, _)| *ok)
    }

    pub fn evaluate(
        results: &[Sent],
        lost: &[String],
        received: &BTreeMap<String, Vec<ReceivedRecord>>,
        audit: &AuditCheck,
        key: &AuditPublicKey,
        readiness: Option<u16>,
        kept_running: bool,
    ) -> Checks {
        let mut items = Vec::new();
        let mut problems: Vec<String> = lost
            .iter()
            .map(|why| format!("a sending task died: {why}"))
            .collect();

        // Every record got the answer it must get.
        let wrong: Vec<&Sent> = results.iter().filter(|s| !s.as_expected()).collect();
        let families = [
            (
                "allowed",
                results
                    .iter()
                    .filter(|s| s.shot.expect == Expect::Allow)
                    .count(),
            ),
            (
                "denied",
                results
                    .iter()
                    .filter(|s| matches!(s.shot.expect, Expect::Deny { .. }))
                    .count(),
            ),
            (
                "invalid",
                results
                    .iter()
                    .filter(|s| {
                        matches!(
                            s.shot.expect,
                            Expect::Invalid | Expect::Malformed | Expect::NotJson
                        )
                    })
                    .count(),
            ),
            (
                "wrong park",
                results
                    .iter()
                    .filter(|s| s.shot.expect == Expect::OriginMismatch)
                    .count(),
            ),
            (
                "replay",
                results
                    .iter()
                    .filter(|s| s.shot.expect == Expect::Replay)
                    .count(),
            ),
            (
                "retry",
                results
                    .iter()
                    .filter(|s| s.shot.expect == Expect::Retried)
                    .count(),
            ),
        ];
        let summary: Vec<String> = families.iter().map(|(n, c)| format!("{c} {n}")).collect();
        items.push((
            wrong.is_empty() && lost.is_empty(),
            format!(
                "every record got the answer it must get ({})",
                summary.join(", ")
            ),
        ));
        for s in &wrong {
            let got = match (s.status, &s.failure) {
                (_, Some(f)) => f.clone(),
                (Some(code), None) => {
                    let error = s
                        .answer
                        .as_ref()
                        .and_then(|a| a.get("error"))
                        .and_then(Value::as_str)
                        .unwrap_or("-");
                    let rules: Vec<String> = matched_rules(s.answer.as_ref())
                        .into_iter()
                        .map(|(id, effect)| format!("{id} ({effect})"))
                        .collect();
                    format!("{code} {error} rules [{}]", rules.join(", "))
                }
                (None, None) => "no answer".into(),
            };
            problems.push(format!(
                "{} ({} {}): expected {}, got {got}",
                s.shot.label,
                s.shot.kind,
                s.shot.route,
                s.shot.expect.describe()
            ));
        }

        // Receipts of allowed records verify with the audit public key.
        let mut receipts = 0usize;
        for s in results.iter().filter(|s| s.status == Some(200)) {
            let receipt = s
                .answer
                .as_ref()
                .and_then(|a| a.get("receipt"))
                .and_then(|r| serde_json::from_value::<Receipt>(r.clone()).ok());
            match receipt {
                Some(r) => match verify_receipt(&r, key) {
                    Ok(()) => receipts += 1,
                    Err(e) => problems.push(format!("receipt of {}: {e}", s.shot.label)),
                },
                None => problems.push(format!("answer for {} has no receipt", s.shot.label)),
            }
        }
        let allowed = results.iter().filter(|s| s.status == Some(200)).count();
        items.push((
            receipts == allowed,
            format!("{receipts} of {allowed} receipts verify with the audit public key"),
        ));

        // Delivery receipts: the outcome entry, with the acknowledgement the sender was given.
        let mut delivered = 0usize;
        for s in results.iter().filter(|s| s.status == Some(200)) {
            match delivery_holds(s.answer.as_ref(), key) {
                Ok(()) => delivered += 1,
                Err(e) => problems.push(format!("delivery receipt of {}: {e}", s.shot.label)),
            }
        }
        items.push((
            delivered == allowed,
            format!(
                "{delivered} of {allowed} delivery receipts prove the destination's acknowledgement as relayed"
            ),
        ));

        // Every forwarded record arrived at the endpoint of its destination park, and nothing else.
        let mut arrived = 0usize;
        for s in results.iter().filter(|s| s.status == Some(200)) {
            let (Some(to), Some(id)) = (&s.shot.to, &s.shot.record_id) else {
                problems.push(format!(
                    "{} was answered 200 without a destination",
                    s.shot.label
                ));
                continue;
            };
            let found = received.get(to).is_some_and(|records| {
                records
                    .iter()
                    .any(|r| r.header(RECORD_ID) == Some(id.as_str()))
            });
            if found {
                arrived += 1;
            } else {
                problems.push(format!(
                    "record {id} ({}) was answered 200 but never reached the {to} endpoint",
                    s.shot.label
                ));
            }
        }
        // Records sent by hand while the zone kept running arrive too: then only the demo's own
        // records are accounted for.
        // A retry answered with its first answer was not forwarded again.
        let total_received: usize = received.values().map(Vec::len).sum();
        let forwarded = results
            .iter()
            .filter(|s| s.status == Some(200) && decision_of(s) == "allow")
            .count();
        let exact = !kept_running;
        if exact && total_received != forwarded {
            problems.push(format!(
                "the endpoints received {total_received} records but the gateway forwarded {forwarded} (answered 200 for {allowed}, retries among them)"
            ));
        }
        items.push((
            arrived == allowed && (!exact || total_received == forwarded),
            format!("{arrived} of {allowed} forwarded records arrived at their park endpoint, none unannounced"),
        ));

        // Every answered request has a decision entry; every forwarded record an outcome.
        let answered = results.iter().filter(|s| s.status.is_some()).count() as u64;
        let mut missing = 0usize;
        for s in results.iter().filter(|s| s.status.is_some()) {
            if let Some(id) = &s.shot.record_id {
                let must_be_new = !matches!(s.shot.expect, Expect::Replay | Expect::Retried);
                if must_be_new && s.status != Some(415) && !audit.decided.contains(id) {
                    missing += 1;
                    problems.push(format!(
                        "no decision entry for record {id} ({})",
                        s.shot.label
                    ));
                }
            }
            if s.status == Some(200) {
                if let Some(id) = &s.shot.record_id {
                    if !audit.forwarded.contains(id) {
                        missing += 1;
                        problems.push(format!("no outcome entry for forwarded record {id}"));
                    }
                }
            }
        }
        let counts_ok =
            !exact || (audit.decisions == answered && audit.outcomes == forwarded as u64);
        if !counts_ok {
            problems.push(format!(
                "the audit log has {} decision and {} outcome entries for {answered} answered requests and {forwarded} forwarded records",
                audit.decisions, audit.outcomes
            ));
        }
        items.push((
            counts_ok && missing == 0,
            format!(
                "audit log: a decision entry for each of {answered} requests (retries included), an outcome for each of {forwarded} forwarded"
            ),
        ));

        let intact = audit.report.is_intact(false);
        if let Some(p) = &audit.report.problem {
            problems.push(format!("audit verify: {p}"));
        } else if let Some(t) = audit.report.tail_problem() {
            problems.push(format!("audit verify: {t}"));
        }
        for w in &audit.report.witnesses {
            if let Some(p) = &w.problem {
                problems.push(format!("audit verify: witness {}: {p}", w.witness));
            }
        }
        items.push((
            intact,
            format!(
                "audit verify: hashes, links, tree roots, checkpoint signatures, the final checkpoint{}",
                if audit.report.witnesses.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", cosigned by {} park witnesses",
                        audit.report.witnesses.len()
                    )
                }
            ),
        ));

        items.push((
            readiness == Some(200),
            format!(
                "admin /readyz answered {} while running",
                readiness
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "nothing".into())
            ),
        ));

        Checks { items, problems }
    }
}

/// Checks a 200 answer's delivery receipt with the public key alone: its proof and checkpoint, its
/// outcome entry line (hash and facts), and that the entry's acknowledgement is the answer's.
fn delivery_holds(answer: Option<&serde_json::Value>, key: &AuditPublicKey) -> Result<(), String> {
    let answer = answer.ok_or("no answer")?;
    let receipt: Receipt = answer
        .get("delivery_receipt")
        .filter(|r| !r.is_null())
        .ok_or("no delivery receipt")
        .and_then(|r| serde_json::from_value(r.clone()).map_err(|_| "not a receipt"))?;
    verify_receipt(&receipt, key).map_err(|e| e.to_string())?;
    let line = receipt.entry.as_deref().ok_or("it carries no entry")?;
    let entry = hetao_gateway_core::audit::entry::open_line(line.as_bytes())
        .map_err(|(e, _)| format!("its entry: {e}"))?;
    if hetao_gateway_core::audit::tree::ReceiptFacts::of(&entry) != receipt.facts {
        return Err("its entry does not state the receipt's facts".into());
    }
    let relayed = answer
        .get("acknowledgement")
        .filter(|a| !a.is_null())
        .cloned();
    if entry.acknowledgement != relayed {
        return Err("the answer's acknowledgement is not the one logged".into());
    }
    Ok(())
}

/// A plain HTTP GET on the admin listener; the status, or `None` when it did not answer.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&d[..1], 0.9), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
