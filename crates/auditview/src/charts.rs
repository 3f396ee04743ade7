//! Charts of a filtered view, drawn on the server as SVG (no script, no external asset): decisions
//! over time, stacked by record kind, and the deny rules that matched most often.

use std::collections::BTreeMap;

use maud::{html, Markup};
use serde::Serialize;

use hetao_gateway_core::audit::AuditEntryType;

use crate::index::LogIndex;

/// Time buckets of the decisions chart.
const BUCKETS: usize = 48;
/// Deny rules shown.
const TOP_RULES: usize = 10;
/// Colours of the kinds, in order of first appearance (readable on white, and by most colour
/// blind readers: the Okabe-Ito palette).
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

/// What the charts show, also served as JSON (`/api/charts`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Charts {
    /// Start of the first bucket and bucket width, microseconds since the epoch.
    pub start_us: i64,
    pub bucket_us: i64,
    /// Per kind (`(none)` for entries without one), the decisions in each bucket.
    pub by_kind: BTreeMap<String, Vec<u64>>,
    pub decisions: u64,
    /// Deny rules by how often they matched, most first.
    pub top_deny_rules: Vec<(String, u64)>,
}

impl Charts {
    /// Over the decision entries among the positions of each log (the instances of a
    /// cluster): one time axis, their counts added up.
    pub fn of_many(parts: &[(&LogIndex, Vec<usize>)]) -> Charts {
        let decisions: Vec<(&LogIndex, usize)> = parts
            .iter()
            .flat_map(|(index, positions)| {
                positions
                    .iter()
                    .map(move |&p| (*index, p))
                    .filter(|(index, p)| {
                        let r = &index.rows()[*p];
                        r.entry_type == AuditEntryType::Decision && r.time_us > 0
                    })
            })
            .collect();
        let time = |(index, p): &(&LogIndex, usize)| index.rows()[*p].time_us;
        let mut charts = Charts::default();
        let (Some(first), Some(last)) = (
            decisions.iter().map(time).min(),
            decisions.iter().map(time).max(),
        ) else {
            return charts;
        };
        charts.start_us = first;
        charts.bucket_us = ((last - first) / BUCKETS as i64 + 1).max(1);
        let mut rules: BTreeMap<String, u64> = BTreeMap::new();
        for &(index, p) in &decisions {
            let r = &index.rows()[p];
            let bucket = (((r.time_us - first) / charts.bucket_us) as usize).min(BUCKETS - 1);
            let kind = match index.names.name(r.kind) {
                "" => "(none)".to_string(),
                k => k.to_string(),
            };
            charts
                .by_kind
                .entry(kind)
                .or_insert_with(|| vec![0; BUCKETS])[bucket] += 1;
            charts.decisions += 1;
            for (id, deny) in index.rules(r) {
                if deny {
                    *rules.entry(index.names.name(id).to_string()).or_default() += 1;
                }
            }
        }
        let mut top: Vec<(String, u64)> = rules.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_RULES);
        charts.top_deny_rules = top;
        charts
    }

    fn time_label(&self, us: i64) -> String {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    }

    /// Stacked bars: decisions per time bucket, one colour per kind.
    pub fn decisions_svg(&self) -> Markup {
        let (w, h, left, bottom, top) = (540.0, 200.0, 40.0, 36.0, 10.0);
        let plot_h = h - bottom - top;
        let bar_w = (w - left - 10.0) / BUCKETS as f64;
        let totals: Vec<u64> = (0..BUCKETS)
            .map(|b| self.by_kind.values().map(|v| v[b]).sum())
            .collect();
        let max = totals.iter().copied().max().unwrap_or(0).max(1);
        let y = |n: u64| top + plot_h - plot_h * n as f64 / max as f64;
        // Each bar: x, bottom, top, colour, tooltip; kinds stacked in name order.
        let mut bars = Vec::new();
        for b in 0..BUCKETS {
            let mut base = 0u64;
            for (i, (kind, counts)) in self.by_kind.iter().enumerate() {
                let n = counts[b];
                if n > 0 {
                    let x = left + b as f64 * bar_w + 1.0;
                    let label = format!("{kind}: {n}");
                    bars.push((x, y(base), y(base + n), PALETTE[i % PALETTE.len()], label));
                    base += n;
                }
            }
        }
        html! {
            svg class="chart" xmlns="http://www.w3.org/2000/svg" width=(w) height=(h + 24.0)
                viewBox=(format!("0 0 {w} {}", h + 24.0)) role="img"
                aria-label="Decisions over time by kind" {
                title { "Decisions over time by kind" }
                line x1=(left) y1=(top + plot_h) x2=(w - 10.0) y2=(top + plot_h) stroke="#888" {}
                text x=(left - 4.0) y=(top + 8.0) text-anchor="end" font-size="11" { (max) }
                text x=(left - 4.0) y=(top + plot_h) text-anchor="end" font-size="11" { "0" }
                @for (x, y0, y1, colour, label) in &bars {
                    rect x=(format!("{x:.1}")) y=(format!("{y1:.1}"))
                        width=(format!("{:.1}", (bar_w - 2.0).max(1.0)))
                        height=(format!("{:.1}", y0 - y1)) fill=(colour) {
                        title { (label) }
                    }
                }
                text x=(left) y=(h - bottom + 16.0) font-size="11" { (self.time_label(self.start_us)) }
                text x=(w - 10.0) y=(h - bottom + 16.0) font-size="11" text-anchor="end" {
                    (self.time_label(self.start_us + self.bucket_us * BUCKETS as i64))
                }
                @for (i, kind) in self.by_kind.keys().enumerate() {
                    rect x=(left + i as f64 * 120.0) y=(h + 4.0) width="12" height="12"
                        fill=(PALETTE[i % PALETTE.len()]) {}
                    text x=(left + i as f64 * 120.0 + 16.0) y=(h + 14.0) font-size="12" { (kind) }
                }
            }
        }
    }

    /// Horizontal bars: how often each deny rule matched.
    pub fn rules_svg(&self) -> Markup {
        let row_h = 21.0;
        let (w, label_w) = (540.0, 250.0);
        let h = row_h * self.top_deny_rules.len().max(1) as f64 + 8.0;
        let max = self
            .top_deny_rules
            .iter()
            .map(|r| r.1)
            .max()
            .unwrap_or(0)
            .max(1);
        html! {
            svg class="chart" xmlns="http://www.w3.org/2000/svg" width=(w) height=(h)
                viewBox=(format!("0 0 {w} {h}")) role="img" aria-label="Top deny rules" {
                title { "Top deny rules" }
                @if self.top_deny_rules.is_empty() {
                    text x="4" y="16" font-size="12" { "No deny rule matched in this view." }
                }
                @for (i, (rule, n)) in self.top_deny_rules.iter().enumerate() {
                    @let y = i as f64 * row_h + 4.0;
                    @let bar = (w - label_w - 60.0) * *n as f64 / max as f64;
                    text x=(label_w - 6.0) y=(y + 14.0) font-size="12" text-anchor="end" { (rule) }
                    rect x=(label_w) y=(y) width=(format!("{bar:.1}")) height=(row_h - 6.0) fill="#D55E00" {
                        title { (rule) ": " (n) }
                    }
                    text x=(label_w + bar + 4.0) y=(y + 13.0) font-size="12" { (n) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_escape_what_they_label() {
        let charts = Charts {
            start_us: 0,
            bucket_us: 1,
            by_kind: [("<k>".to_string(), vec![1; BUCKETS])].into(),
            decisions: BUCKETS as u64,
            top_deny_rules: vec![("<script>x</script>".into(), 3)],
        };
        let rules = charts.rules_svg().into_string();
        assert!(rules.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(!rules.contains("<script>"));
        let decisions = charts.decisions_svg().into_string();
        assert!(decisions.contains("&lt;k&gt;: 1"));
        assert_eq!(
            decisions.matches("<rect").count(),
            BUCKETS + 1,
            "a bar each, and the legend"
        );
    }
}
