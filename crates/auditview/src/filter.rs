//! What an auditor asks for in a query string: filters (time range, type, kind, route,
//! organisation, decision, rule, record id) and a page. The same parameters serve the HTML pages,
//! the JSON API and the exports, so a filtered view can be shared as a link.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Serialize;

use hetao_gateway_core::audit::AuditEntryType;

use crate::index::{record_hash, LogIndex, Row, Sym};

/// Rows per page unless asked otherwise, and the most a page may hold.
pub const DEFAULT_PER_PAGE: usize = 50;
pub const MAX_PER_PAGE: usize = 500;
/// The longest value of a parameter taken in (record ids are at most 128 bytes in the log).
const MAX_VALUE: usize = 256;

/// The filter of `audit query`, so a view and the CLI mean the same thing by each parameter.
pub use hetao_gateway_core::audit::QueryFilter as ViewFilter;

/// A filter and a page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewQuery {
    pub filter: ViewFilter,
    /// Over a cluster's database: one instance's entries only.
    pub instance: Option<String>,
    /// 1-based.
    pub page: usize,
    pub per_page: usize,
}

/// A parameter that cannot be used; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{name}`: {message}")]
pub struct BadParameter {
    pub name: String,
    pub message: String,
}

fn bad(name: &str, message: impl Into<String>) -> BadParameter {
    BadParameter {
        name: name.to_string(),
        message: message.into(),
    }
}

/// A time as RFC 3339, or as an HTML form sends it (`2026-12-01T10:30`, `2026-12-01`), in UTC.
pub fn parse_time(name: &str, s: &str) -> Result<DateTime<Utc>, BadParameter> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(bad(
        name,
        "not a time: use RFC 3339 (2026-12-01T10:30:00Z), 2026-12-01T10:30 or 2026-12-01 (UTC)",
    ))
}

pub fn parse_type(name: &str, s: &str) -> Result<Option<AuditEntryType>, BadParameter> {
    if s == "any" {
        return Ok(None);
    }
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map(Some)
        .map_err(|_| {
            bad(
                name,
                "one of any, decision, outcome, checkpoint, recovery, segment_start",
            )
        })
}

impl ViewQuery {
    /// Parses a query string (`kind=data&decision=deny&page=2`). Empty values are no filter; the
    /// entry type defaults to `default_type`; unknown parameters are refused (a misspelt filter
    /// must not silently show everything).
    pub fn parse(query: &str, default_type: Option<AuditEntryType>) -> Result<Self, BadParameter> {
        let mut q = ViewQuery {
            filter: ViewFilter {
                entry_type: default_type,
                ..ViewFilter::default()
            },
            instance: None,
            page: 1,
            per_page: DEFAULT_PER_PAGE,
        };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            if value.len() > MAX_VALUE {
                return Err(bad(&name, format!("longer than {MAX_VALUE} bytes")));
            }
            let text = || Some(value.to_string());
            let f = &mut q.filter;
            match name.as_ref() {
                "since" => f.since = Some(parse_time(&name, value)?),
                "until" => f.until = Some(parse_time(&name, value)?),
                "type" => f.entry_type = parse_type(&name, value)?,
                "kind" => f.kind = text(),
                "from" => f.from = text(),
                "to" => f.to = text(),
                "org" => f.org = text(),
                "decision" => f.decision = text(),
                "rule" => f.rule = text(),
                "record_id" => f.record_id = text(),
                "instance" => q.instance = text(),
                "page" => {
                    q.page = value
                        .parse::<usize>()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or_else(|| bad(&name, "a page number from 1"))?
                }
                "per_page" => {
                    q.per_page = value
                        .parse::<usize>()
                        .ok()
                        .filter(|p| (1..=MAX_PER_PAGE).contains(p))
                        .ok_or_else(|| bad(&name, format!("a number from 1 to {MAX_PER_PAGE}")))?
                }
                other => return Err(bad(other, "not a filter of this view")),
            }
        }
        Ok(q)
    }

    /// The query string of this filter (and `per_page` when not the default), without the page:
    /// what links to other pages and exports of the same view append to.
    pub fn filter_query(&self) -> String {
        let f = &self.filter;
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(i) = &self.instance {
            s.append_pair("instance", i);
        }
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        if let Some(t) = &f.since {
            s.append_pair("since", &time(t));
        }
        if let Some(t) = &f.until {
            s.append_pair("until", &time(t));
        }
        s.append_pair("type", f.entry_type.map_or("any", |t| t.as_str()));
        for (name, v) in [
            ("kind", &f.kind),
            ("from", &f.from),
            ("to", &f.to),
            ("org", &f.org),
            ("decision", &f.decision),
            ("rule", &f.rule),
            ("record_id", &f.record_id),
        ] {
            if let Some(v) = v {
                s.append_pair(name, v);
            }
        }
        if self.per_page != DEFAULT_PER_PAGE {
            s.append_pair("per_page", &self.per_page.to_string());
        }
        s.finish()
    }
}

/// A filter with its texts looked up in the index once: matching a row is then a few integer
/// comparisons. `None` when a text the filter names is nowhere in the log (nothing matches).
pub struct Compiled {
    since: Option<i64>,
    until: Option<i64>,
    entry_type: Option<AuditEntryType>,
    kind: Option<Sym>,
    from: Option<Sym>,
    to: Option<Sym>,
    org: Option<Sym>,
    decision: Option<Sym>,
    rule: Option<Sym>,
    record: Option<(u64, String)>,
}

/// A filter run against the view's index (interned names, times in microseconds).
pub trait Selection {
    fn compile(&self, index: &LogIndex) -> Option<Compiled>;
    /// The positions (in chain order) of the rows that match.
    fn select(&self, index: &LogIndex) -> Vec<usize>;
}

impl Selection for ViewFilter {
    fn compile(&self, index: &LogIndex) -> Option<Compiled> {
        let sym = |v: &Option<String>| -> Result<Option<Sym>, ()> {
            match v {
                None => Ok(None),
                Some(s) => index.names.lookup(s).map(Some).ok_or(()),
            }
        };
        Some(Compiled {
            since: self.since.map(|t| t.timestamp_micros()),
            until: self.until.map(|t| t.timestamp_micros()),
            entry_type: self.entry_type,
            kind: sym(&self.kind).ok()?,
            from: sym(&self.from).ok()?,
            to: sym(&self.to).ok()?,
            org: sym(&self.org).ok()?,
            decision: sym(&self.decision).ok()?,
            rule: sym(&self.rule).ok()?,
            record: self.record_id.as_ref().map(|r| (record_hash(r), r.clone())),
        })
    }

    fn select(&self, index: &LogIndex) -> Vec<usize> {
        let Some(c) = self.compile(index) else {
            return Vec::new();
        };
        let mut out: Vec<usize> = index
            .rows()
            .iter()
            .enumerate()
            .filter(|(_, r)| c.matches(index, r))
            .map(|(i, _)| i)
            .collect();
        // A record id matches by hash first; its line confirms it.
        if let Some((_, id)) = &c.record {
            out.retain(|&i| {
                index
                    .read_entry(&index.rows()[i])
                    .is_ok_and(|(e, _)| e.record_id.as_deref() == Some(id.as_str()))
            });
        }
        out
    }
}

impl Compiled {
    pub fn matches(&self, index: &LogIndex, r: &Row) -> bool {
        let eq = |want: Option<Sym>, have: Sym| want.is_none_or(|w| w == have);
        self.since.is_none_or(|s| r.time_us >= s)
            && self.until.is_none_or(|u| r.time_us < u)
            && self.entry_type.is_none_or(|t| t == r.entry_type)
            && eq(self.kind, r.kind)
            && eq(self.from, r.from)
            && eq(self.to, r.to)
            && eq(self.org, r.org)
            && eq(self.decision, r.decision)
            && self
                .record
                .as_ref()
                .is_none_or(|(h, _)| *h == r.record_hash)
            && self
                .rule
                .is_none_or(|want| index.rules(r).any(|(id, _)| id == want))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_string_becomes_a_filter_and_back() {
        let q = ViewQuery::parse(
            "instance=gw-b&since=2026-12-01T10%3A30&kind=data&from=sz&to=hk&org=Shenzhen+Bay+Lab&decision=deny&rule=data-no-export&page=3&per_page=20",
            Some(AuditEntryType::Decision),
        )
        .unwrap();
        assert_eq!(q.page, 3);
        assert_eq!(q.per_page, 20);
        assert_eq!(q.filter.org.as_deref(), Some("Shenzhen Bay Lab"));
        assert_eq!(q.filter.entry_type, Some(AuditEntryType::Decision));
        assert_eq!(
            q.filter.since.unwrap().to_rfc3339(),
            "2026-12-01T10:30:00+00:00"
        );
        let again = ViewQuery::parse(&q.filter_query(), None).unwrap();
        assert_eq!(again.filter, q.filter);
        assert_eq!(again.instance.as_deref(), Some("gw-b"));
        assert_eq!(again.per_page, 20);
        assert_eq!(again.page, 1);
    }

    #[test]
    fn empty_values_are_no_filter_and_type_any_is_every_type() {
        let q = ViewQuery::parse("kind=&org=&type=any", Some(AuditEntryType::Decision)).unwrap();
        assert_eq!(q.filter, ViewFilter::default());
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        for (query, name) in [
            ("since=yesterday", "since"),
            ("page=0", "page"),
            ("per_page=100000", "per_page"),
            ("type=everything", "type"),
            ("decison=deny", "decison"),
        ] {
            let e = ViewQuery::parse(query, None).unwrap_err();
            assert_eq!(e.name, name, "{query}");
        }
        let long = format!("record_id={}", "a".repeat(300));
        assert_eq!(ViewQuery::parse(&long, None).unwrap_err().name, "record_id");
    }
}
