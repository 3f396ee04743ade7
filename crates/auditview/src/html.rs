//! The pages, rendered on the server with maud. maud escapes every `(value)` it inserts (`&`, `<`,
//! `>`, `"`), in text and in attribute values alike, so a record id, an organisation or a reason
//! quoting what a sender wrote shows as text and never becomes markup. Nothing here uses
//! `PreEscaped`. No script, no external asset: the stylesheet is served by the view itself.

use std::collections::BTreeMap;

use maud::{html, Markup, DOCTYPE};

use hetao_gateway_core::audit::AuditEntry;

use crate::charts::Charts;
use crate::filter::ViewQuery;
use crate::status::{Overview, Status};

/// An entry shown, with the instance whose log holds it (`None` over files).
#[derive(Debug, Clone)]
pub struct Shown {
    pub instance: Option<String>,
    pub entry: AuditEntry,
}

impl Shown {
    /// The entry as JSON with its hash, and its `instance` member over a database (as
    /// `audit query --database --format json` gives it).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self.entry.to_json_with_hash();
        if let (Some(obj), Some(i)) = (v.as_object_mut(), &self.instance) {
            obj.insert("instance".into(), serde_json::Value::String(i.clone()));
        }
        v
    }
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Where an entry's page is: `/entry/SEQ`, or `/entry/INSTANCE/SEQ` over a database (sequences
/// repeat across instances).
pub fn entry_href(instance: Option<&str>, seq: u64) -> String {
    match instance {
        Some(i) => format!("/entry/{}/{seq}", encode(i)),
        None => format!("/entry/{seq}"),
    }
}

/// Where a record's evidence is, in an instance's log over a database.
pub fn evidence_href(instance: Option<&str>, record_id: &str) -> String {
    match instance {
        Some(i) => format!("/api/evidence/{}/{}", encode(i), encode(record_id)),
        None => format!("/api/evidence/{}", encode(record_id)),
    }
}

/// The stylesheet (`/style.css`).
pub const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 0; color: #1a1a1a; background: #fafafa; }
header { background: #17324d; color: #fff; padding: .6em 1.2em; display: flex; gap: 2em; align-items: baseline; }
header a { color: #fff; } header h1 { font-size: 1.2em; margin: 0; }
main { padding: 0 1.2em 2em; }
.status { margin: 1em 0; padding: .6em 1em; border-radius: 4px; border: 1px solid; }
.status.ok { background: #e8f5e9; border-color: #2e7d32; }
.status.warn { background: #fff8e1; border-color: #f9a825; }
.status.bad { background: #ffebee; border-color: #c62828; }
.status h2 { margin: .2em 0 .4em; font-size: 1.1em; }
.status ul { margin: .2em 0; padding-left: 1.2em; }
table { border-collapse: collapse; background: #fff; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
td.mono, .mono { font-family: ui-monospace, monospace; font-size: .85em; word-break: break-all; }
form.filters { display: flex; flex-wrap: wrap; gap: .5em 1em; align-items: end; margin: 1em 0; }
form.filters label { display: flex; flex-direction: column; font-size: .85em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.charts figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: .5em; }
.pager { margin: .8em 0; display: flex; gap: 1em; }
.deny { color: #b71c1c; font-weight: 600; } .allow { color: #1b5e20; font-weight: 600; }
pre { white-space: pre-wrap; word-break: break-all; background: #fff; border: 1px solid #ddd; padding: .5em; }
"#;

fn layout(title: &str, overview: &Overview, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hetao-gateway audit" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    h1 { "hetao-gateway audit log" }
                    nav { a href="/" { "Decisions" } " · " a href="/checkpoints" { "Checkpoints" } " · " a href="/api/" { "JSON API" } }
                }
                main {
                    (status_box(overview))
                    (body)
                }
            }
        }
    }
}

/// What the verifier found, at the top of every page: of the log, or of every instance's log and
/// the database they are read from.
pub fn status_box(overview: &Overview) -> Markup {
    match overview.single() {
        Some(s) => log_status_box(s),
        None => cluster_status_box(overview),
    }
}

fn status_class(s: &Status) -> &'static str {
    if !s.intact {
        "bad"
    } else if s.tail_problem.is_some() {
        "warn"
    } else {
        "ok"
    }
}

/// Over a cluster's database: the overall verdict, the database's state, then each instance's
/// log verified on its own.
fn cluster_status_box(o: &Overview) -> Markup {
    let db = o.database.clone().unwrap_or_default();
    let unsealed = o.logs.iter().any(|(_, s)| s.tail_problem.is_some());
    let class = if !o.intact() {
        "status bad"
    } else if !db.reachable || unsealed || o.logs.is_empty() {
        "status warn"
    } else {
        "status ok"
    };
    html! {
        section class=(class) id="status" {
            h2 {
                @if !o.intact() { "FAILED: an instance's log does not verify" }
                @else if o.logs.is_empty() { "No instance has shipped a log yet" }
                @else if unsealed { "Intact so far: every instance's log verifies; some tails are not sealed yet" }
                @else { "Intact: every instance's hashes, links, tree roots and signatures verify" }
            }
            p id="database" {
                @if db.reachable {
                    "Cluster database: read at "
                    (db.last_read.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default())
                    ", " (o.logs.len()) " instances."
                } @else {
                    span.deny { "Cluster database UNREACHABLE" }
                    @if let Some(t) = db.failing_since { " since " (t.format("%Y-%m-%d %H:%M:%S UTC")) }
                    ": " (db.last_error.as_deref().unwrap_or("")) ". Showing what was read"
                    @if let Some(t) = db.last_read { " at " (t.format("%Y-%m-%d %H:%M:%S UTC")) }
                    "; entries shipped since are not shown."
                }
            }
            table id="instances" {
                thead { tr { th { "instance" } th { "verdict" } th { "entries" } th { "hashes and links" } th { "checkpoint signatures" } th { "tail" } th { "problem" } } }
                tbody { @for (name, s) in &o.logs {
                    @let r = &s.report;
                    @let name = name.as_deref().unwrap_or("");
                    tr class=(status_class(s)) {
                        td.mono { a href=(format!("/?instance={}", encode(name))) { (name) } }
                        td { @if !s.intact { span.deny { "FAILED" } } @else if s.tail_problem.is_some() { "intact so far" } @else { span.allow { "intact" } } }
                        td { (r.entries) @if let (Some(a), Some(b)) = (r.first_seq, r.last_seq) { " (seq " (a) "–" (b) ")" } }
                        td { @if r.problem.is_none() { "all verified" } @else { "see the problem" } }
                        td { (r.signatures_verified) " of " (r.checkpoints) }
                        td { (s.tail_problem.as_deref().unwrap_or("sealed")) }
                        td { @if let Some(p) = &r.problem { span.deny { (p.to_string()) } } }
                    }
                } }
            }
            ul {
                li { "Checkpoint signatures verified with key " span.mono { (o.logs.first().map(|(_, s)| s.key_id.as_str()).unwrap_or("")) } "; tree roots rebuilt from the entries and checked at every checkpoint." }
                li {
                    "Witness cosignatures: not checked here. They are kept beside each instance's log files and are not shipped to the database; check them at each instance with "
                    code { "audit verify LOG --witness-key FILE" } "."
                    @if !o.unshipped_witnesses.is_empty() {
                        " Witnesses named: "
                        @for (i, w) in o.unshipped_witnesses.iter().enumerate() { @if i > 0 { ", " } span.mono { (w) } }
                        "."
                    }
                }
            }
            small { "Each instance's log is verified on its own, as `audit verify --database --allow-unsigned-tail` does; the database is not trusted." }
        }
    }
}

/// One log's status (a view over files).
fn log_status_box(s: &Status) -> Markup {
    let r = &s.report;
    let class = if !s.intact {
        "status bad"
    } else if s.tail_problem.is_some() {
        "status warn"
    } else {
        "status ok"
    };
    let roots_checked = !r
        .notes
        .iter()
        .any(|n| n.starts_with("tree roots not checked"));
    html! {
        section class=(class) id="status" {
            h2 {
                @if !s.intact { "FAILED: the log does not verify" }
                @else if s.tail_problem.is_some() { "Intact so far: the tail is not sealed yet" }
                @else { "Intact: every hash, link, tree root and signature verifies" }
            }
            ul {
                li {
                    "Entries: " (r.entries)
                    @if let (Some(a), Some(b)) = (r.first_seq, r.last_seq) { " (seq " (a) "–" (b) ")" }
                    @if let Some(h) = &r.head_hash { ", head " span.mono { (h) } }
                }
                li { "Hashes and links: " @if r.problem.is_none() { "all verified" } @else { "see the problem below" } }
                li { "Tree roots: " @if roots_checked { "rebuilt from the entries and checked at every checkpoint" } @else { "not checked (the files do not start at seq 0)" } }
                li { "Checkpoint signatures: " (r.signatures_verified) " of " (r.checkpoints) " verified with key " span.mono { (s.key_id) } }
                li {
                    "Witness cosignatures: "
                    @if r.witnesses.is_empty() { "not checked (no --witness-key given)" }
                    ul {
                        @for w in &r.witnesses {
                            li {
                                span.mono { (w.witness) } ": "
                                @match &w.problem {
                                    Some(p) => { span.deny { "FAILED: " (p) } }
                                    None => { "cosigned up to " (w.latest_cosigned.unwrap_or(0)) " entries, all held by this log" }
                                }
                            }
                        }
                    }
                }
                @if let Some(t) = &s.tail_problem { li { "Tail: " (t) } }
                @for n in &r.notes { li { "Note: " (n) } }
                @if let Some(p) = &r.problem { li.deny { "Problem: " (p.to_string()) } }
            }
            small { "Verified " (s.verified_at.format("%Y-%m-%d %H:%M:%S UTC")) " in " (s.took_ms) " ms, as `audit verify --allow-unsigned-tail` does." }
        }
    }
}

/// Values offered in the filter form.
#[derive(Debug, Default)]
pub struct Facets {
    pub kinds: Vec<String>,
    pub parks: Vec<String>,
    pub orgs: Vec<String>,
    pub decisions: Vec<String>,
    pub rules: Vec<String>,
    /// Over a database: the instances.
    pub instances: Vec<String>,
}

fn datalist(id: &str, values: &[String]) -> Markup {
    html! { datalist id=(id) { @for v in values { option value=(v) {} } } }
}

fn filter_form(q: &ViewQuery, f: &Facets) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let t = |o: &Option<chrono::DateTime<chrono::Utc>>| {
        o.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
            .unwrap_or_default()
    };
    let ty = q.filter.entry_type.map_or("any", |t| t.as_str());
    html! {
        form.filters method="get" action="/" id="filters" {
            @if !f.instances.is_empty() {
                @let chosen = q.instance.clone().unwrap_or_default();
                label { "Instance" select name="instance" {
                    option value="" selected[chosen.is_empty()] { "every instance" }
                    @for i in &f.instances { option value=(i) selected[*i == chosen] { (i) } }
                } }
            }
            label { "Since (UTC)" input type="datetime-local" step="1" name="since" value=(t(&q.filter.since)); }
            label { "Until (UTC)" input type="datetime-local" step="1" name="until" value=(t(&q.filter.until)); }
            label { "Type" select name="type" {
                @for o in ["decision", "outcome", "checkpoint", "recovery", "segment_start", "any"] {
                    option value=(o) selected[o == ty] { (o) }
                }
            } }
            label { "Kind" input name="kind" list="kinds" value=(v(&q.filter.kind)); }
            label { "From" input name="from" list="parks" size="6" value=(v(&q.filter.from)); }
            label { "To" input name="to" list="parks" size="6" value=(v(&q.filter.to)); }
            label { "Organisation" input name="org" list="orgs" value=(v(&q.filter.org)); }
            label { "Decision" input name="decision" list="decisions" size="10" value=(v(&q.filter.decision)); }
            label { "Rule" input name="rule" list="rules" value=(v(&q.filter.rule)); }
            label { "Record id" input name="record_id" size="36" value=(v(&q.filter.record_id)); }
            button type="submit" id="apply" { "Filter" }
            a href="/" { "Clear" }
            (datalist("kinds", &f.kinds)) (datalist("parks", &f.parks)) (datalist("orgs", &f.orgs))
            (datalist("decisions", &f.decisions)) (datalist("rules", &f.rules))
        }
    }
}

fn decision_class(d: &str) -> &'static str {
    match d {
        "allow" | "forwarded" => "allow",
        "" => "",
        _ => "deny",
    }
}

fn rule_ids(e: &AuditEntry) -> String {
    e.rules
        .iter()
        .map(|r| r.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The decisions page: status, filters, charts, one page of entries, exports.
pub fn list_page(
    overview: &Overview,
    q: &ViewQuery,
    total: usize,
    entries: &[Shown],
    charts: &Charts,
    facets: &Facets,
) -> Markup {
    let fq = q.filter_query();
    let pages = total.div_ceil(q.per_page).max(1);
    let link = |page: usize| format!("/?{fq}&page={page}");
    let instances = overview.database.is_some();
    let body = html! {
        (filter_form(q, facets))
        div.charts {
            figure { figcaption { "Decisions over time, by kind (" (charts.decisions) " decisions in this view)" } (charts.decisions_svg()) }
            figure { figcaption { "Top deny rules in this view" } (charts.rules_svg()) }
        }
        p {
            strong id="total" { (total) } " entries match, newest first. Export this view: "
            a href=(format!("/api/export.csv?{fq}")) download="audit.csv" { "CSV" } " · "
            a href=(format!("/api/export.json?{fq}")) download="audit.json" { "JSON" } " · "
            a href=(format!("/api/entries?{fq}&page={}", q.page)) { "this page as JSON" }
        }
        table id="entries" {
            thead { tr { @if instances { th { "instance" } } th { "seq" } th { "time (UTC)" } th { "type" } th { "record id" } th { "kind" } th { "route" } th { "organisation" } th { "decision" } th { "status" } th { "rules" } } }
            tbody {
                @for Shown { instance, entry: e } in entries {
                    tr {
                        @if instances { td.instance { (instance.as_deref().unwrap_or("")) } }
                        td { a href=(entry_href(instance.as_deref(), e.seq)) { (e.seq) } }
                        td { (e.time) }
                        td { (e.entry_type.as_str()) }
                        td.mono { (e.record_id.as_deref().unwrap_or("")) }
                        td { (e.kind.as_deref().unwrap_or("")) }
                        td { @if e.from.is_some() || e.to.is_some() { (e.from.as_deref().unwrap_or("?")) "→" (e.to.as_deref().unwrap_or("?")) } }
                        td { (e.sender.as_ref().map_or("", |s| s.organisation.as_str())) }
                        td class=(decision_class(e.decision.as_deref().unwrap_or(""))) { (e.decision.as_deref().unwrap_or("")) }
                        td { @if let Some(s) = e.status { (s) } }
                        td { (rule_ids(e)) }
                    }
                }
            }
        }
        div.pager {
            @if q.page > 1 { a href=(link(1)) { "« first" } a href=(link(q.page - 1)) rel="prev" { "‹ newer" } }
            span { "page " (q.page) " of " (pages) }
            @if q.page < pages { a href=(link(q.page + 1)) rel="next" { "older ›" } a href=(link(pages)) { "last »" } }
        }
    };
    layout("Decisions", overview, body)
}

/// One entry: everything the log holds of it, the other entry of its record, its evidence.
pub fn entry_page(
    overview: &Overview,
    instance: Option<&str>,
    entry: &AuditEntry,
    line: &str,
    related: Option<&AuditEntry>,
    across_instances: bool,
) -> Markup {
    let title = match instance {
        Some(i) => format!("Entry {} of instance {i}", entry.seq),
        None => format!("Entry {}", entry.seq),
    };
    let body = html! {
        h2 { (title) " (" (entry.entry_type.as_str()) ")" }
        (entry_table(entry))
        @if let Some(elsewhere) = &entry.decided_elsewhere {
            p id="decided-elsewhere" {
                "The record was decided on instance " span.mono { (elsewhere.instance) }
                @if let Some(seq) = elsewhere.seq {
                    ", its entry "
                    @if across_instances { a href=(entry_href(Some(&elsewhere.instance), seq)) { (seq) } } @else { (seq) }
                }
                "; this entry answered a retry with that first answer."
            }
        }
        @if !entry.rules.is_empty() {
            h3 { "Matched rules" }
            table id="rules" {
                thead { tr { th { "rule" } th { "effect" } th { "reason (and the regulation it cites)" } } }
                tbody { @for r in &entry.rules {
                    tr { td.mono { a href=(format!("/?type=decision&rule={}", form_urlencoded::byte_serialize(r.id.as_bytes()).collect::<String>())) { (r.id) } }
                         td class=(decision_class(&r.effect)) { (r.effect) } td.reason { (r.reason) } }
                } }
            }
        }
        @if !entry.obligations.is_empty() {
            h3 { "Obligations applied before forwarding" }
            ul id="obligations" { @for o in &entry.obligations { li { (o) } } }
        }
        @if let Some(other) = related {
            h3 { @if other.seq > entry.seq { "Upstream outcome (entry " } @else { "Its decision (entry " } a href=(entry_href(instance, other.seq)) { (other.seq) } ")" }
            (entry_table(other))
        }
        @if let Some(id) = &entry.record_id {
            h3 { "Evidence" }
            p {
                "The record's entries as written, their inclusion proofs and the signed (and cosigned) checkpoint they lead to, as "
                code { "audit prove" } " writes them; check offline with "
                code { "hetao-gateway audit receipt verify FILE --public-key audit-signing.pub" } ": "
                a id="evidence" href=(evidence_href(instance, id)) download="evidence.json" { "download evidence (JSON)" }
            }
        }
        h3 { "The line as written" }
        pre.mono { (line) }
    };
    layout(&title, overview, body)
}

fn entry_table(e: &AuditEntry) -> Markup {
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let rows: Vec<(&str, String)> = [
        ("seq", e.seq.to_string()),
        ("time", e.time.clone()),
        ("type", e.entry_type.as_str().to_string()),
        ("record id", opt(&e.record_id)),
        ("kind", opt(&e.kind)),
        ("from", opt(&e.from)),
        ("to", opt(&e.to)),
        (
            "organisation",
            e.sender
                .as_ref()
                .map(|s| s.organisation.clone())
                .unwrap_or_default(),
        ),
        (
            "certificate subject",
            e.sender
                .as_ref()
                .map(|s| s.subject.clone())
                .unwrap_or_default(),
        ),
        (
            "certificate sha256",
            e.sender
                .as_ref()
                .map(|s| s.fingerprint_sha256.clone())
                .unwrap_or_default(),
        ),
        ("body sha256", opt(&e.body_sha256)),
        ("decision", opt(&e.decision)),
        (
            "status",
            e.status.map(|s| s.to_string()).unwrap_or_default(),
        ),
        ("error", opt(&e.error)),
        ("policy version", opt(&e.policy_version)),
        ("policy hash", opt(&e.policy_hash)),
        (
            "refers to",
            e.refers_to.map(|s| s.to_string()).unwrap_or_default(),
        ),
        ("answer sha256", opt(&e.answer_sha256)),
        (
            "answer bytes",
            e.answer_bytes.map(|s| s.to_string()).unwrap_or_default(),
        ),
        (
            "acknowledgement",
            e.acknowledgement
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        ),
        (
            "latency (µs)",
            e.latency_us.map(|s| s.to_string()).unwrap_or_default(),
        ),
        (
            "tree size",
            e.tree_size.map(|s| s.to_string()).unwrap_or_default(),
        ),
        ("tree root", opt(&e.tree_root)),
        ("key id", opt(&e.key_id)),
        ("previous hash", e.prev_hash.clone()),
        ("hash", e.hash.clone()),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect();
    html! {
        table.entry {
            @for (k, v) in &rows { tr { th { (k) } td.mono { (v) } } }
        }
    }
}

/// A checkpoint as the checkpoints page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointView {
    /// Over a database: the instance whose log holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub seq: u64,
    pub time: String,
    pub tree_size: Option<u64>,
    pub tree_root: Option<String>,
    pub key_id: Option<String>,
    #[serde(rename = "final")]
    pub final_checkpoint: bool,
    /// Witnesses whose cosignature of this tree is kept beside the log.
    pub cosigned_by: Vec<String>,
}

pub fn checkpoints_page(
    overview: &Overview,
    checkpoints: &[CheckpointView],
    page: usize,
    pages: usize,
    total: usize,
    cosigned: &BTreeMap<u64, Vec<String>>,
) -> Markup {
    let instances = overview.database.is_some();
    let witnesses = overview
        .single()
        .map(|s| s.report.witnesses.clone())
        .unwrap_or_default();
    let body = html! {
        h2 { "Checkpoints" }
        @if instances { p { (total) " signed checkpoints of every instance, newest first. Witness cosignatures are kept beside each instance's log files, not in the database: check them there with " code { "audit verify LOG --witness-key" } ". " a href=(format!("/api/checkpoints?page={page}")) { "as JSON" } } }
        @else { p { (total) " signed checkpoints, newest first; " (cosigned.len()) " tree sizes cosigned by witnesses (kept in the cosignatures file beside the log). A witness is marked verified when every cosignature it made verifies with the --witness-key given for it and names a tree this log holds. "
            a href=(format!("/api/checkpoints?page={page}")) { "as JSON" } } }
        table id="checkpoints" {
            thead { tr { @if instances { th { "instance" } } th { "seq" } th { "time (UTC)" } th { "tree size" } th { "tree root" } th { "key" } th { "final" } th { "cosigned by" } } }
            tbody { @for c in checkpoints {
                tr {
                    @if instances { td.instance { (c.instance.as_deref().unwrap_or("")) } }
                    td { a href=(entry_href(c.instance.as_deref(), c.seq)) { (c.seq) } }
                    td { (c.time) }
                    td { @if let Some(n) = c.tree_size { (n) } }
                    td.mono { (c.tree_root.as_deref().unwrap_or("")) }
                    td.mono { (c.key_id.as_deref().unwrap_or("")) }
                    td { @if c.final_checkpoint { "yes" } }
                    td { @for (i, w) in c.cosigned_by.iter().enumerate() {
                        @if i > 0 { ", " }
                        span.mono { (w) } " "
                        @match witnesses.iter().find(|x| &x.witness == w) {
                            Some(x) if x.problem.is_none() => { span.allow { "verified" } }
                            Some(_) => { span.deny { "FAILED" } }
                            None => { "(not checked: no --witness-key for it)" }
                        }
                    } }
                }
            } }
        }
        div.pager {
            @if page > 1 { a href=(format!("/checkpoints?page={}", page - 1)) { "‹ newer" } }
            span { "page " (page) " of " (pages) }
            @if page < pages { a href=(format!("/checkpoints?page={}", page + 1)) { "older ›" } }
        }
    };
    layout("Checkpoints", overview, body)
}

pub fn error_page(overview: &Overview, code: u16, message: &str) -> Markup {
    layout(
        "Error",
        overview,
        html! { h2 { (code) } p id="error" { (message) } p { a href="/" { "Back to the decisions" } } },
    )
}
