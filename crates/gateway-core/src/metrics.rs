//! Prometheus metrics, named and labelled by Prometheus conventions (`_total` counters, `_seconds`
//! histograms, base units).

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the gateway exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub records: IntCounterVec,
    pub rule_matches: IntCounterVec,
    pub answers: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_answer_dropped: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub inflight_requests: IntGauge,
    pub open_connections: IntGauge,
    pub policy_info: GaugeVec,
    pub last_reload_timestamp: Gauge,
    pub last_reload_success: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // Registration only fails on duplicate names, which would be a programming error caught by
        // the unit test below; the metric still works unregistered.
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            let _ = r.register(Box::new(m.clone()));
            m
        }
        fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels)
                    .unwrap_or_else(|_| unreachable_metric(name)),
            )
        }
        fn histogram(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
            buckets: &[f64],
        ) -> HistogramVec {
            reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )
                .unwrap_or_else(|_| unreachable_metric(name)),
            )
        }
        let records = counter(
            &registry,
            "hetao_records_total",
            "Records by kind, route and decision (allow, deny, invalid, replay, ...).",
            &["kind", "route", "decision"],
        );
        let rule_matches = counter(
            &registry,
            "hetao_rule_matches_total",
            "Policy rules that matched a record, by rule id and effect.",
            &["rule", "effect"],
        );
        let answers = counter(
            &registry,
            "hetao_answers_total",
            "HTTP answers to senders by status code and error code.",
            &["status", "error"],
        );
        let request_duration = histogram(
            &registry,
            "hetao_request_duration_seconds",
            "Time from request to answer, by kind and decision.",
            &["kind", "decision"],
            LATENCY_BUCKETS,
        );
        let upstream_duration = histogram(
            &registry,
            "hetao_upstream_duration_seconds",
            "Time for a park endpoint to accept a forwarded record.",
            &["park"],
            LATENCY_BUCKETS,
        );
        let upstream_errors = counter(
            &registry,
            "hetao_upstream_errors_total",
            "Forwarding failures by destination park and kind of failure.",
            &["park", "error"],
        );
        let upstream_answer_dropped = counter(
            &registry,
            "hetao_upstream_answer_dropped_total",
            "Park endpoint answers of which something was not relayed to the sender, by destination park and reason: undeclared_field (properties the acknowledgement schema does not declare, dropped), not_json, invalid (fails the acknowledgement schema), too_large.",
            &["park", "reason"],
        );
        let tls_handshake_failures = counter(
            &registry,
            "hetao_tls_handshake_failures_total",
            "Inbound TLS handshakes that failed, by reason.",
            &["reason"],
        );
        let connections_refused = counter(
            &registry,
            "hetao_connections_refused_total",
            "Inbound connections refused by a budget: max_handshakes (before TLS), max_connections, max_connections_per_org (after).",
            &["reason"],
        );
        let tls_handshakes = counter(
            &registry,
            "hetao_tls_handshakes_total",
            "Inbound TLS handshakes that authenticated a partner, by kind: full, or resumed from a session ticket.",
            &["kind"],
        );
        let connections_closed = counter(
            &registry,
            "hetao_connections_closed_total",
            "Partner connections the gateway closed, by reason: idle, max_age, tls_reload, shutdown, header_timeout, certificate_refused.",
            &["reason"],
        );
        let inflight_requests = reg(
            &registry,
            IntGauge::new("hetao_inflight_requests", "Requests being processed.")
                .unwrap_or_else(|_| unreachable_metric("hetao_inflight_requests")),
        );
        let open_connections = reg(
            &registry,
            IntGauge::new("hetao_open_connections", "Open inbound connections.")
                .unwrap_or_else(|_| unreachable_metric("hetao_open_connections")),
        );
        let policy_info = reg(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "hetao_policy_info",
                    "The loaded policy set (value 1) labelled with its version and schema hash.",
                ),
                &["version", "schema_hash"],
            )
            .unwrap_or_else(|_| unreachable_metric("hetao_policy_info")),
        );
        let last_reload_timestamp = reg(
            &registry,
            Gauge::new(
                "hetao_last_reload_timestamp_seconds",
                "Unix time of the last reload attempt (or of the start).",
            )
            .unwrap_or_else(|_| unreachable_metric("hetao_last_reload_timestamp_seconds")),
        );
        let last_reload_success = reg(
            &registry,
            IntGauge::new(
                "hetao_last_reload_success",
                "1 if the last reload succeeded, 0 if it was refused.",
            )
            .unwrap_or_else(|_| unreachable_metric("hetao_last_reload_success")),
        );
        Metrics {
            registry,
            records,
            rule_matches,
            answers,
            request_duration,
            upstream_duration,
            upstream_errors,
            upstream_answer_dropped,
            tls_handshake_failures,
            connections_refused,
            tls_handshakes,
            connections_closed,
            inflight_requests,
            open_connections,
            policy_info,
            last_reload_timestamp,
            last_reload_success,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The audit writer's own counters (kept by its thread) in Prometheus text format.
/// Witness lag and state in Prometheus text format (labels: the witness's name, from its key).
pub fn render_witnesses(status: &[crate::audit::witnessing::WitnessStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if status.is_empty() {
        return out;
    }
    let _ = writeln!(out, "# HELP hetao_audit_witness_lag_entries Log entries not yet covered by the witness's latest cosignature.");
    let _ = writeln!(out, "# TYPE hetao_audit_witness_lag_entries gauge");
    for w in status {
        let _ = writeln!(
            out,
            "hetao_audit_witness_lag_entries{{witness=\"{}\"}} {}",
            w.name, w.lag_entries
        );
    }
    let _ = writeln!(out, "# HELP hetao_audit_witness_cosigned_size Tree size of the checkpoint the witness last cosigned (-1: not known yet).");
    let _ = writeln!(out, "# TYPE hetao_audit_witness_cosigned_size gauge");
    for w in status {
        let size = w
            .cosigned_size
            .map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let _ = writeln!(
            out,
            "hetao_audit_witness_cosigned_size{{witness=\"{}\"}} {size}",
            w.name
        );
    }
    let _ = writeln!(
        out,
        "# HELP hetao_audit_witness_up 1 when the last request to the witness succeeded."
    );
    let _ = writeln!(out, "# TYPE hetao_audit_witness_up gauge");
    for w in status {
        let _ = writeln!(
            out,
            "hetao_audit_witness_up{{witness=\"{}\"}} {}",
            w.name,
            u8::from(w.last_error.is_none())
        );
    }
    out
}

/// The request-body memory budget in use (`limits.max_body_bytes_in_flight`), read from the
/// budget itself at scrape time so it cannot drift from what requests hold.
pub fn render_body_budget(reserved_bytes: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP hetao_body_bytes_reserved Request-body memory reserved by requests in flight (of limits.max_body_bytes_in_flight, in KiB steps).");
    let _ = writeln!(out, "# TYPE hetao_body_bytes_reserved gauge");
    let _ = writeln!(out, "hetao_body_bytes_reserved {reserved_bytes}");
    out
}

pub fn render_audit(stats: &crate::audit::AuditStats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP hetao_audit_entries_total Decision and outcome entries made durable."
    );
    let _ = writeln!(out, "# TYPE hetao_audit_entries_total counter");
    let _ = writeln!(out, "hetao_audit_entries_total {}", stats.entries);
    let _ = writeln!(
        out,
        "# HELP hetao_audit_checkpoints_total Signed checkpoints written."
    );
    let _ = writeln!(out, "# TYPE hetao_audit_checkpoints_total counter");
    let _ = writeln!(out, "hetao_audit_checkpoints_total {}", stats.checkpoints);
    let _ = writeln!(
        out,
        "# HELP hetao_audit_segment_rotations_total Audit segments rotated."
    );
    let _ = writeln!(out, "# TYPE hetao_audit_segment_rotations_total counter");
    let _ = writeln!(
        out,
        "hetao_audit_segment_rotations_total {}",
        stats.rotations
    );
    let _ = writeln!(
        out,
        "# HELP hetao_audit_segment_rotation_failures_total Segment rotations that failed and were put off (the active segment goes on)."
    );
    let _ = writeln!(
        out,
        "# TYPE hetao_audit_segment_rotation_failures_total counter"
    );
    let _ = writeln!(
        out,
        "hetao_audit_segment_rotation_failures_total {}",
        stats.rotation_failures
    );
    let _ = writeln!(out, "# HELP hetao_audit_failed 1 once the audit log has failed and the gateway refuses to forward.");
    let _ = writeln!(out, "# TYPE hetao_audit_failed gauge");
    let _ = writeln!(out, "hetao_audit_failed {}", u8::from(stats.failed));
    let _ = writeln!(out, "# HELP hetao_audit_queue_entries Entries waiting for the audit writer (at audit.max_queue, records get 503 audit_busy).");
    let _ = writeln!(out, "# TYPE hetao_audit_queue_entries gauge");
    let _ = writeln!(out, "hetao_audit_queue_entries {}", stats.queued);
    histogram_text(
        &mut out,
        "hetao_audit_fsync_duration_seconds",
        "Time to fsync one group-commit batch of audit entries.",
        &stats.fsync_seconds_buckets,
        stats.fsync_seconds_sum,
        stats.fsyncs,
    );
    histogram_text(
        &mut out,
        "hetao_audit_batch_size",
        "Audit entries written per group commit.",
        &stats.batch_size_buckets,
        stats.batch_entries_sum as f64,
        stats.batches,
    );
    out
}

fn histogram_text(
    out: &mut String,
    name: &str,
    help: &str,
    buckets: &[(f64, u64)],
    sum: f64,
    count: u64,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (le, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

/// Metric construction only fails on an invalid name or label set, fixed at compile time.
fn unreachable_metric<T>(name: &str) -> T {
    panic!("metric {name} has an invalid definition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_in_text_format() {
        let m = Metrics::new();
        m.records
            .with_label_values(&["data", "sz->hk", "allow"])
            .inc();
        m.tls_handshake_failures
            .with_label_values(&["unknown_ca"])
            .inc();
        let text = m.render();
        assert!(
            text.contains(
                "hetao_records_total{decision=\"allow\",kind=\"data\",route=\"sz->hk\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("hetao_tls_handshake_failures_total{reason=\"unknown_ca\"} 1"));
        assert!(text.contains("# TYPE hetao_inflight_requests gauge"));
    }
}
