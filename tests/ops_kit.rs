//! The operators' kit stays true to the gateway:
//! - every metric the Grafana dashboard (deploy/grafana/) and the alert rules (deploy/prometheus/)
//!   query is one a real gateway exposes on its admin `/metrics`, with the labels they select on
//!   (the `hetao_cluster_*` ones from an instance of a cluster on a real PostgreSQL);
//! - the dashboard is a Grafana import (datasource input, unique panel ids, a query per panel);
//! - the rules pass promtool's own checks and unit tests, and promtool parses every dashboard query
//!   (skipped, saying so, where promtool is not installed);
//! - the Debian package's pieces agree: its unit is the documented unit with the package's paths,
//!   its default configuration passes `serve --check` once certificates exist, its assets exist.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::{bytes, record, send, World};
use common::processes::admin_get;
use common::{repo, Options, TestGateway};
use hetao_devkit::endpoint::{CannedAnswer, EndpointBehaviour};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_hetao-gateway");
const DASHBOARD: &str = "deploy/grafana/hetao-gateway.json";
const ALERTS: &str = "deploy/prometheus/hetao-gateway-alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/tests/hetao-gateway-alerts.test.yml";

/// Series the rules may use that the gateway does not expose: `up` is made by Prometheus for
/// every scrape target, `probe_success` by the blackbox exporter probing `/readyz` (readiness is
/// an HTTP answer, not a metric).
const NOT_FROM_THE_GATEWAY: [&str; 2] = ["up", "probe_success"];
/// Labels Prometheus attaches at scrape time; the exposition never carries them.
const SCRAPE_LABELS: [&str; 3] = ["job", "instance", "__name__"];

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// === PromQL: the metric names and selector labels of an expression ===

/// One series selector in an expression: `name{label="..."}`.
#[derive(Debug, PartialEq)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// Aggregation operators: followed by `by`/`without` instead of `(` at times.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// The index just past the closing `close` matching the `open` at `i` (strings skipped).
fn skip_balanced(s: &[u8], mut i: usize, open: u8, close: u8) -> Result<usize, String> {
    let mut depth = 0;
    while i < s.len() {
        match s[i] {
            b'"' | b'\'' | b'`' => {
                i = skip_string(s, i)?;
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("unbalanced `{}`", open as char))
}

/// The index just past the string literal starting at `i`.
fn skip_string(s: &[u8], i: usize) -> Result<usize, String> {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() {
        if s[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if s[j] == quote {
            return Ok(j + 1);
        }
        j += 1;
    }
    Err("unterminated string".into())
}

fn skip_spaces(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Label names of the matchers in `{...}` starting at `i`, and the index past it.
fn matchers(s: &[u8], i: usize) -> Result<(Vec<String>, usize), String> {
    let end = skip_balanced(s, i, b'{', b'}')?;
    let mut labels = Vec::new();
    let mut j = i + 1;
    while j < end - 1 {
        match s[j] {
            b'"' | b'\'' | b'`' => j = skip_string(s, j)?,
            c if is_ident_start(c) => {
                let start = j;
                while j < end && is_ident(s[j]) {
                    j += 1;
                }
                labels.push(String::from_utf8_lossy(&s[start..j]).into_owned());
            }
            _ => j += 1,
        }
    }
    Ok((labels, end))
}

/// Every series selector of a PromQL expression (Grafana's `$variables` skipped): identifiers that
/// are not functions, aggregations, keywords or label lists are metric names.
fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let s = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(s, i)?;
        } else if c == b'[' {
            // A range or subquery: durations and Grafana's $__rate_interval.
            i = skip_balanced(s, i, b'[', b']')?;
        } else if c == b'$' {
            i += 1;
            while i < s.len() && (is_ident(s[i]) || s[i] == b'{' || s[i] == b'}') {
                i += 1;
            }
        } else if c == b'{' {
            // A selector without a metric name would select every metric: not in this kit.
            return Err(format!("a selector without a metric name at byte {i}"));
        } else if c.is_ascii_digit() || c == b'.' {
            // Numbers (0.99, 1e3) and the duration after `offset`.
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = skip_spaces(s, i);
            match word {
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right" => {
                    if s.get(next) == Some(&b'(') {
                        i = skip_balanced(s, next, b'(', b')')?;
                    }
                }
                "and" | "or" | "unless" | "bool" | "offset" | "atan2" => {}
                _ if word.eq_ignore_ascii_case("inf") || word.eq_ignore_ascii_case("nan") => {}
                _ if s.get(next) == Some(&b'(') => {} // a function or an aggregation
                _ if AGGREGATIONS.contains(&word) => {} // `sum by (...) (...)`
                _ => {
                    let mut labels = Vec::new();
                    if s.get(next) == Some(&b'{') {
                        let (names, end) = matchers(s, next)?;
                        labels = names;
                        i = end;
                    }
                    out.push(Selector {
                        metric: word.to_string(),
                        labels,
                    });
                }
            }
        } else {
            i += 1;
        }
    }
    Ok(out)
}

// === The exposition ===

/// What `/metrics` exposes: each family's type, and each sample name's label names.
struct Exposition {
    families: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut families = BTreeMap::new();
        let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    families.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let labels = samples.entry(name.to_string()).or_default();
            if line[name_end..].starts_with('{') {
                let (names, _) = matchers(&line.as_bytes()[name_end..], 0).unwrap();
                labels.extend(names);
            }
        }
        Exposition { families, samples }
    }

    /// Why `sel` selects nothing from this gateway, if it does not.
    fn problem(&self, sel: &Selector) -> Option<String> {
        let m = sel.metric.as_str();
        if NOT_FROM_THE_GATEWAY.contains(&m) {
            return None;
        }
        if !m.starts_with("hetao_") {
            return Some(format!("`{m}` is not a gateway metric (hetao_*)"));
        }
        let family_ok = match self.families.get(m).map(String::as_str) {
            Some("histogram" | "summary") => {
                return Some(format!(
                    "`{m}` is a histogram: query {m}_bucket, {m}_sum or {m}_count"
                ))
            }
            Some(_) => true,
            None => {
                // A histogram's series: the family is the name without the suffix.
                let base = |suffix: &str| m.strip_suffix(suffix).and_then(|b| self.families.get(b));
                matches!(base("_bucket").map(String::as_str), Some("histogram"))
                    || matches!(
                        base("_sum").or_else(|| base("_count")).map(String::as_str),
                        Some("histogram" | "summary")
                    )
            }
        };
        if !family_ok {
            return Some(format!("`{m}` is not in the gateway's /metrics"));
        }
        let Some(have) = self.samples.get(m) else {
            return Some(format!("`{m}` is declared but has no sample"));
        };
        let missing: Vec<&String> = sel
            .labels
            .iter()
            .filter(|l| !SCRAPE_LABELS.contains(&l.as_str()) && !have.contains(*l))
            .collect();
        if !missing.is_empty() {
            return Some(format!("`{m}` has no label {missing:?} (it has {have:?})"));
        }
        None
    }
}

// === The dashboard and the rules as files ===

/// (where, PromQL) of every query of the dashboard: panel targets and templating variables.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in all_panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    format!("panel {} {:?}", p["id"], p["title"]),
                    expr.to_string(),
                ));
            }
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_default();
        // label_values(SELECTOR, LABEL): the selector is PromQL; the label must be on it.
        if let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
        {
            let (selector, label) = args.rsplit_once(',').unwrap();
            out.push((
                format!("variable {}", v["name"]),
                format!("{}{{{}=~\".*\"}}", selector.trim(), label.trim()),
            ));
        }
    }
    out
}

/// Every panel, those inside collapsed rows too.
fn all_panels(dash: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// One alerting rule of the rules file, read line by line (the kit keeps to one layout:
/// `- alert:` items with `expr:` inline or as a `>-` block).
#[derive(Debug)]
struct AlertRule {
    name: String,
    expr: String,
    body: String,
}

fn alert_rules(yaml: &str) -> Vec<AlertRule> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut rules = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = lines[i].trim_start().strip_prefix("- alert:") else {
            i += 1;
            continue;
        };
        let mut j = i + 1;
        while j < lines.len() {
            let t = lines[j].trim_start();
            if t.starts_with("- alert:") || t.starts_with("- record:") || t.starts_with("- name:") {
                break;
            }
            j += 1;
        }
        let body = &lines[i..j];
        let mut expr = String::new();
        for (k, line) in body.iter().enumerate() {
            let Some(value) = line.trim_start().strip_prefix("expr:") else {
                continue;
            };
            let value = value.trim();
            if !value.is_empty() && !value.starts_with('>') && !value.starts_with('|') {
                expr = value.to_string();
            } else {
                let indent = line.len() - line.trim_start().len();
                let block: Vec<&str> = body[k + 1..]
                    .iter()
                    .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                    .map(|l| l.trim())
                    .collect();
                expr = block.join(" ");
            }
        }
        rules.push(AlertRule {
            name: name.trim().to_string(),
            expr,
            body: body.join("\n"),
        });
        i = j;
    }
    rules
}

// === A gateway that has been through everything the kit watches ===

/// A witness of the log whose public key is `log_pub`, on 127.0.0.1:0.
async fn start_witness(
    dir: &Path,
    log_pub: &Path,
) -> (
    String,
    PathBuf,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    std::fs::create_dir_all(dir).unwrap();
    let report =
        hetao_gateway_core::witness::config::init(dir, log_pub, "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let config = hetao_gateway_core::witness::config::WitnessConfig::load(&report.config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        hetao_gateway_core::witness::server::serve(config, listener, stopped)
            .await
            .unwrap();
    });
    (url, report.public_key, stop, task)
}

/// The admin `/metrics` of a gateway with a witness and a rate limit, after allowed, denied,
/// upstream-failed, answer-trimmed, rate-limited and handshake-refused traffic and an idle close:
/// every labelled series the kit queries then exists.
async fn metrics_after_traffic() -> String {
    let keys = tempfile::tempdir().unwrap();
    let (private_pem, public_pem) = hetao_gateway_core::audit::generate_signing_key().unwrap();
    let log_key = keys.path().join("audit-signing.key");
    let log_pub = keys.path().join("audit-signing.pub");
    hetao_gateway_core::key_file::write_private(&log_key, private_pem.as_bytes()).unwrap();
    std::fs::write(&log_pub, public_pem).unwrap();
    let (witness_url, witness_pub, witness_stop, witness_task) =
        start_witness(&keys.path().join("witness"), &log_pub).await;

    let mut gw = TestGateway::start_with(Options {
        audit_toml: Some(format!(
            "[audit]\nlog = \"audit/audit.jsonl\"\nsigning_key = \"{}\"\ncheckpoint_every_entries = 2\n\
             [[audit.witness]]\nurl = \"{witness_url}\"\npublic_key = \"{}\"\n",
            log_key.display(),
            witness_pub.display()
        )),
        // A burst the Shenzhen sender stays within; the Hong Kong sender goes past it below.
        // Idle connections close after a second, so `connections_closed` gets a series.
        extra_toml: "[rate_limit]\nper_org_per_second = 0.001\nburst = 10\n\
                     [limits]\nidle_timeout_secs = 1\n"
            .into(),
        ..Options::default()
    })
    .await;
    let sz = gw.sz_client();
    let allowed = "materials-sz-hk-quantum-equipment.json";
    for _ in 0..2 {
        let a = gw.send(&sz, &common::example(allowed)).await;
        assert_eq!(a.status, 200, "{:#}", a.json);
    }
    let denied = gw
        .send(
            &sz,
            &common::example("rules/d1-core-data-is-denied-even-without-personal-information.json"),
        )
        .await;
    assert_eq!(denied.status, 403, "{:#}", denied.json);
    // The Hong Kong endpoint fails, then answers with a field the acknowledgement does not declare.
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Status(500));
    let failed = gw.send(&sz, &common::example(allowed)).await;
    assert_eq!(failed.status, 502, "{:#}", failed.json);
    gw.hk_endpoint
        .set_behaviour(EndpointBehaviour::Answer(CannedAnswer::json(
            200,
            &serde_json::json!({"accepted": true, "internal_ticket": "T-1"}),
        )));
    let trimmed = gw.send(&sz, &common::example(allowed)).await;
    assert_eq!(trimmed.status, 200, "{:#}", trimmed.json);
    gw.hk_endpoint.set_behaviour(EndpointBehaviour::Accept);

    let hk = gw.hk_client();
    let mut limited = false;
    for _ in 0..15 {
        if gw.send(&hk, &serde_json::json!({})).await.status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the Hong Kong sender was never rate limited");
    let refused = common::raw_exchange(&gw, None, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        !refused.is_ok_and(|t| t.starts_with("HTTP/1.1 200")),
        "a client without a certificate got through"
    );
    // Past the idle timeout: the clients' pooled connections are closed as idle.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (status, text) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    gw.stop().await;
    let _ = witness_stop.send(true);
    let _ = witness_task.await;
    text
}

/// The admin `/metrics` of one instance of a cluster (`[cluster]` on a real PostgreSQL, the
/// binary as a child process) after a record was decided and its log shipped: the
/// `hetao_cluster_*` series. `None` (said why) without PostgreSQL.
async fn cluster_metrics() -> Option<String> {
    let world = World::new(&["gw-a"]).await?;
    let _gw = world.start("gw-a").await;
    let sz = world.client("sz");
    let record = bytes(&record("materials-sz-hk-quantum-equipment.json"));
    let answer = send(&sz, world.instance("gw-a").addr, &record).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    world.wait_until_shipped().await;
    let (status, text) = admin_get(world.instance("gw-a").admin, "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    Some(text)
}

// === Tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_what_a_running_gateway_exposes() {
    let mut text = metrics_after_traffic().await;
    let cluster = cluster_metrics().await;
    if let Some(c) = &cluster {
        text.push_str(c);
    } else if std::env::var_os("CI").is_some() {
        panic!("PostgreSQL is not installed: .ci/run installs it");
    }
    let exposition = Exposition::parse(&text);
    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut queries = dashboard_queries(&dash);
    for rule in alert_rules(&read(ALERTS)) {
        queries.push((format!("alert {}", rule.name), rule.expr));
    }
    assert!(queries.len() > 30, "only {} queries found", queries.len());
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for (place, expr) in &queries {
        match selectors(expr) {
            Ok(sels) if sels.is_empty() => problems.push(format!("{place}: no metric in {expr}")),
            Ok(sels) => {
                for sel in sels {
                    if cluster.is_none() && sel.metric.starts_with("hetao_cluster_") {
                        eprintln!("not checked without PostgreSQL: {place}: {}", sel.metric);
                        used.insert(sel.metric);
                        continue;
                    }
                    if let Some(p) = exposition.problem(&sel) {
                        problems.push(format!("{place}: {p}\n    in {expr}"));
                    }
                    used.insert(sel.metric);
                }
            }
            Err(e) => problems.push(format!("{place}: {e} in {expr}")),
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\n/metrics:\n{text}",
        problems.join("\n")
    );
    // What the kit promises to watch is actually queried.
    for metric in [
        "hetao_records_total",
        "hetao_rule_matches_total",
        "hetao_request_duration_seconds_bucket",
        "hetao_upstream_errors_total",
        "hetao_upstream_duration_seconds_bucket",
        "hetao_tls_handshake_failures_total",
        "hetao_audit_fsync_duration_seconds_bucket",
        "hetao_audit_failed",
        "hetao_audit_witness_lag_entries",
        "hetao_open_connections",
        "hetao_last_reload_success",
        "hetao_answers_total",
        "hetao_cluster_database_up",
        "hetao_cluster_registry_batch_duration_seconds_bucket",
        "hetao_cluster_failures_total",
        "hetao_cluster_lost_claims_total",
        "hetao_cluster_shipping_lag_entries",
        "hetao_cluster_shipping_diverged_total",
        "hetao_cluster_shipped_entries_total",
    ] {
        assert!(used.contains(metric), "nothing queries {metric}");
    }
}

#[test]
fn the_metric_check_catches_misspelt_and_misused_names() {
    let exposition = Exposition::parse(
        "# TYPE hetao_records_total counter\n\
         hetao_records_total{decision=\"allow\",kind=\"data\",route=\"sz->hk\"} 1\n\
         # TYPE hetao_request_duration_seconds histogram\n\
         hetao_request_duration_seconds_bucket{decision=\"allow\",kind=\"data\",le=\"0.1\"} 1\n\
         hetao_request_duration_seconds_sum{decision=\"allow\",kind=\"data\"} 0.01\n\
         hetao_request_duration_seconds_count{decision=\"allow\",kind=\"data\"} 1\n",
    );
    let check = |expr: &str| -> Vec<String> {
        selectors(expr)
            .unwrap()
            .iter()
            .filter_map(|s| exposition.problem(s))
            .collect()
    };
    let good = "histogram_quantile(0.99, sum by (le, kind) (rate(hetao_request_duration_seconds_bucket{instance=~\"$instance\"}[$__rate_interval]))) \
                / on (kind) group_left sum without (route) (rate(hetao_records_total{decision=\"deny\"}[5m] offset 1h)) > bool 0.5 or up{job=\"x\"} == 0";
    assert_eq!(check(good), Vec::<String>::new());
    assert_eq!(
        selectors(good)
            .unwrap()
            .iter()
            .map(|s| s.metric.as_str())
            .collect::<Vec<_>>(),
        [
            "hetao_request_duration_seconds_bucket",
            "hetao_records_total",
            "up"
        ]
    );
    assert!(check("rate(hetao_records_totl[5m])")[0].contains("not in the gateway's /metrics"));
    assert!(check("rate(hetao_request_duration_seconds[5m])")[0].contains("is a histogram"));
    assert!(check("rate(hetao_records_total_bucket[5m])")[0].contains("not in"));
    assert!(check("hetao_records_total{park=\"sz\"}")[0].contains("no label"));
    assert!(check("rate(process_cpu_seconds_total[5m])")[0].contains("not a gateway metric"));
    assert!(selectors("sum(rate({job=\"x\"}[5m]))").is_err());
}

#[test]
fn dashboard_is_a_grafana_import_with_unique_panel_ids_and_a_query_per_panel() {
    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert!(dash["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    // The datasource is an import input: Grafana asks for it and replaces ${DS_PROMETHEUS}.
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
        && i["type"] == "datasource"
        && i["pluginId"] == "prometheus"));
    let input_refs: BTreeSet<String> = inputs
        .iter()
        .filter_map(|i| i["name"].as_str())
        .map(|n| format!("${{{n}}}"))
        .collect();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, u64, u64, u64, String)> = Vec::new();
    let panels = all_panels(&dash);
    assert!(panels.len() >= 20, "only {} panels", panels.len());
    for p in &panels {
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel without id: {p}"));
        assert!(ids.insert(id), "panel id {id} used twice");
        let kind = p["type"].as_str().unwrap_or_default();
        assert!(!kind.is_empty(), "panel {id} has no type");
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("panel {id}: gridPos.{k}"))
        });
        assert!(h > 0 && w > 0 && x + w <= 24, "panel {id}: gridPos {g}");
        for (bx, by, bw, bh, other) in &boxes {
            let overlaps = x < bx + bw && *bx < x + w && y < by + bh && *by < y + h;
            assert!(!overlaps, "panel {id} overlaps {other}");
        }
        boxes.push((x, y, w, h, format!("panel {id}")));
        if kind == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {id}: datasource"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {id}: targets"));
        assert!(!targets.is_empty(), "panel {id} has no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "panel {id}: target without expr"
            );
            assert!(
                refs.insert(t["refId"].to_string()),
                "panel {id}: refId twice"
            );
            let uid = t["datasource"]["uid"].as_str().unwrap_or_default();
            assert!(
                input_refs.contains(uid),
                "panel {id}: datasource {uid} is no input"
            );
        }
    }
}

#[test]
fn alert_rules_each_wait_carry_a_severity_and_tell_the_operator_what_to_check() {
    let rules = alert_rules(&read(ALERTS));
    let names: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    for wanted in [
        "HetaoGatewayDown",
        "HetaoGatewayNotReady",
        "HetaoAuditLogFailed",
        "HetaoWitnessNotCosigning",
        "HetaoTlsHandshakeFailureBurst",
        "HetaoUpstreamErrors",
        "HetaoRateLimitPressure",
        "HetaoClusterDatabaseUnreachable",
        "HetaoClusterShippingLagHigh",
        "HetaoClusterShippedLinesDiverged",
    ] {
        assert!(names.contains(wanted), "no alert {wanted}");
    }
    assert_eq!(names.len(), rules.len(), "an alert name is used twice");
    for r in &rules {
        assert!(!r.expr.is_empty(), "{}: no expr", r.name);
        assert!(
            r.body.lines().any(|l| l.trim_start().starts_with("for: ")),
            "{}: no `for:`",
            r.name
        );
        assert!(
            ["severity: critical", "severity: warning"]
                .iter()
                .any(|s| r.body.contains(s)),
            "{}: no severity label",
            r.name
        );
        assert!(r.body.contains("summary: "), "{}: no summary", r.name);
        let description = r.body.split("description:").nth(1).unwrap_or_default();
        assert!(
            description.contains("Check") || description.contains("check"),
            "{}: the description does not say what to check",
            r.name
        );
    }
}

/// promtool from PATH, or `None` with the reason printed.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED: promtool not found on PATH (Debian package `prometheus`; .ci/run installs it): \
             the rules and dashboard queries are not checked by Prometheus's own parser"
        );
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String) {
    common::cli_output(cmd)
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let Some(promtool) = promtool() else { return };
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo(ALERTS)));
    println!("{out}");
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(repo(ALERT_TESTS)));
    println!("{out}");
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn promtool_parses_every_dashboard_query() {
    let Some(promtool) = promtool() else { return };
    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    // Each query as a recording rule, Grafana's variables given values as Grafana would.
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (n, (place, expr)) in dashboard_queries(&dash).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "2m")
            .replace("$__interval", "1m")
            .replace("$__range", "6h")
            .replace("$instance", ".*");
        assert!(!expr.contains('$'), "{place}: unknown variable in {expr}");
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {}\n",
            serde_json::Value::String(expr)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).unwrap();
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules"]).arg(&file));
    assert!(
        ok,
        "promtool check rules on the dashboard's queries:\n{out}\n{rules}"
    );
}

/// A systemd unit without its leading comment.
fn unit_body(text: &str) -> String {
    let start = text.find("[Unit]").expect("[Unit]");
    text[start..].to_string()
}

#[test]
fn packaged_unit_is_the_documented_unit_with_the_packages_paths() {
    let documented =
        unit_body(&read("deploy/hetao-gateway.service")).replace("/usr/local/", "/usr/");
    let packaged = unit_body(&read("deploy/debian/hetao-gateway.service"));
    assert_eq!(packaged, documented);
    assert!(packaged.contains(
        "\nExecStart=/usr/bin/hetao-gateway serve --config /etc/hetao-gateway/gateway.toml\n"
    ));
}

#[test]
fn debian_package_metadata_names_files_that_exist() {
    let cargo: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let deb = &cargo["package"]["metadata"]["deb"];
    let mut targets = BTreeSet::new();
    for asset in deb["assets"].as_array().unwrap() {
        let [source, target, mode] = [0, 1, 2].map(|i| asset[i].as_str().unwrap().to_string());
        assert!(
            u32::from_str_radix(&mode, 8).is_ok(),
            "{source}: mode {mode}"
        );
        targets.insert(target.clone());
        if source.starts_with("target/") {
            continue; // built by `cargo deb`
        }
        let found = match source.split_once('*') {
            Some((dir, ext)) => std::fs::read_dir(repo(dir))
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(ext)),
            None => repo(&source).is_file(),
        };
        assert!(found, "asset {source} matches no file");
    }
    assert!(
        targets.contains("usr/bin/"),
        "the binary is not at /usr/bin"
    );
    assert!(targets.contains("etc/hetao-gateway/gateway.toml"));
    for conf in deb["conf-files"].as_array().unwrap() {
        let conf = conf.as_str().unwrap();
        assert!(
            targets.contains(conf.trim_start_matches('/')),
            "{conf} is not installed"
        );
    }
    let scripts = repo(deb["maintainer-scripts"].as_str().unwrap());
    for script in ["postinst", "postrm"] {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(scripts.join(script)).unwrap();
        assert!(
            meta.permissions().mode() & 0o111 != 0,
            "{script} is not executable"
        );
        let text = std::fs::read_to_string(scripts.join(script)).unwrap();
        assert!(
            text.contains("#DEBHELPER#"),
            "{script}: cargo-deb's systemd snippets go there"
        );
    }
    let units = repo(deb["systemd-units"]["unit-scripts"].as_str().unwrap());
    assert!(units.join("hetao-gateway.service").is_file());
}

#[test]
fn packaged_default_config_passes_serve_check_once_certificates_exist() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("gateway.toml");
    common::copy_dir(&repo("schemas"), &d.join("schemas"));
    common::copy_dir(&repo("policies"), &d.join("policies"));
    std::fs::copy(repo("deploy/debian/gateway.toml"), &config).unwrap();
    // As installed, before the operator has put certificates in place: refused, naming the file.
    let (ok, out) = run(Command::new(BIN)
        .args(["serve", "--check", "--config"])
        .arg(&config));
    assert!(!ok, "{out}");
    assert!(
        out.contains(".pem") && out.contains("No such file"),
        "not a missing certificate: {out}"
    );
    // `certs init` writes every file the default configuration names (and a config of its own,
    // which it will not write over).
    std::fs::remove_file(&config).unwrap();
    let (ok, out) = run(Command::new(BIN).args(["certs", "init", "--out"]).arg(d));
    assert!(ok, "{out}");
    std::fs::copy(repo("deploy/debian/gateway.toml"), &config).unwrap();
    let (ok, out) = run(Command::new(BIN)
        .args(["serve", "--check", "--config"])
        .arg(&config));
    assert!(ok, "{out}");
    assert!(out.contains("configuration usable"), "{out}");
}
