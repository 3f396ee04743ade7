//! The auditors' view: the indexed log, its verification status, and the answer to each request
//! (HTML pages, the JSON API, exports, evidence). Transport-free: [`crate::server`] carries the
//! answers over HTTP, tests call [`AuditView::answer`] directly too.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::json;

use hetao_gateway_core::audit::evidence;
use hetao_gateway_core::audit::query::entries_csv;
use hetao_gateway_core::audit::{AuditEntry, AuditEntryType, AuditPublicKey};

use crate::charts::Charts;
use crate::filter::Selection as _;
use crate::filter::ViewQuery;
use crate::html::{self, CheckpointView, Facets};
use crate::index::{IndexError, LogIndex, NONE};
use crate::status::{self, Status};

/// The most entries one export holds; past it the answer says it was cut (narrow the filter, or
/// use `audit query` for larger sets).
pub const MAX_EXPORT: usize = 100_000;
/// Checkpoints per page.
const CHECKPOINTS_PER_PAGE: usize = 50;
/// A request looks for appended entries at most this often.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// One answer, before HTTP.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Offered as a download under this file name.
    pub download: Option<String>,
    /// The export was cut at [`MAX_EXPORT`] entries.
    pub truncated: bool,
}

impl Answer {
    fn html(status: u16, markup: maud::Markup) -> Answer {
        Answer {
            status,
            content_type: "text/html; charset=utf-8",
            body: markup.into_string().into_bytes(),
            download: None,
            truncated: false,
        }
    }
    fn json(status: u16, value: &serde_json::Value) -> Answer {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Answer {
            status,
            content_type: "application/json",
            body,
            download: None,
            truncated: false,
        }
    }
}

pub struct AuditView {
    logs: Vec<PathBuf>,
    key: AuditPublicKey,
    witness_keys: Vec<AuditPublicKey>,
    index: RwLock<LogIndex>,
    status: RwLock<Arc<Status>>,
    verifying: AtomicBool,
    last_refresh: Mutex<Instant>,
    /// One evidence bundle is made at a time (each reads the whole log).
    proving: Mutex<()>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl AuditView {
    /// Indexes the logs and verifies them, side by side on two threads.
    pub fn open(
        logs: Vec<PathBuf>,
        key: AuditPublicKey,
        witness_keys: Vec<AuditPublicKey>,
    ) -> Result<Arc<AuditView>, IndexError> {
        let (index, status) = std::thread::scope(|s| {
            let verifying = s.spawn(|| status::verify(&logs, &key, &witness_keys));
            let index = LogIndex::build(&logs);
            let status = verifying
                .join()
                .unwrap_or_else(|_| status::verify(&logs, &key, &witness_keys));
            (index, status)
        });
        Ok(Arc::new(AuditView {
            index: RwLock::new(index?),
            status: RwLock::new(Arc::new(status)),
            logs,
            key,
            witness_keys,
            verifying: AtomicBool::new(false),
            last_refresh: Mutex::new(Instant::now()),
            proving: Mutex::new(()),
        }))
    }

    pub fn status(&self) -> Arc<Status> {
        read(&self.status).clone()
    }

    pub fn entries(&self) -> usize {
        read(&self.index).rows().len()
    }

    /// Takes in appended entries (a rotated log is read again) and, when anything changed,
    /// verifies again in the background; the previous status stands until then.
    pub fn refresh(self: &Arc<Self>) {
        {
            let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < REFRESH_AT_MOST_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let changed = match write(&self.index).refresh(&self.logs) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(target: "hetao::auditview", error = %e, "cannot read the log again");
                false
            }
        };
        if changed && !self.verifying.swap(true, Ordering::AcqRel) {
            let view = self.clone();
            std::thread::spawn(move || {
                let status = status::verify(&view.logs, &view.key, &view.witness_keys);
                *write(&view.status) = Arc::new(status);
                view.verifying.store(false, Ordering::Release);
            });
        }
    }

    /// The answer to `GET path?query`.
    pub fn answer(&self, path: &str, query: &str) -> Answer {
        let status = self.status();
        let result = match path {
            "/" => self.list_page(&status, query),
            "/style.css" => Ok(Answer {
                status: 200,
                content_type: "text/css; charset=utf-8",
                body: html::STYLE.as_bytes().to_vec(),
                download: None,
                truncated: false,
            }),
            "/checkpoints" => self.checkpoints(&status, query, false),
            "/api" | "/api/" => Ok(Answer::json(200, &api_index())),
            "/api/status" => Ok(Answer::json(200, &json!(*status))),
            "/api/entries" => self.entries_json(query),
            "/api/charts" => self.charts_json(query),
            "/api/checkpoints" => self.checkpoints(&status, query, true),
            "/api/export.csv" => self.export(query, true),
            "/api/export.json" => self.export(query, false),
            _ => {
                if let Some(seq) = path.strip_prefix("/entry/") {
                    self.entry(&status, seq, false)
                } else if let Some(seq) = path.strip_prefix("/api/entries/") {
                    self.entry(&status, seq, true)
                } else if let Some(id) = path.strip_prefix("/api/evidence/") {
                    self.evidence(id)
                } else {
                    Err(Failure::NotFound("no such page".into()))
                }
            }
        };
        result.unwrap_or_else(|f| {
            let (code, message) = match &f {
                Failure::BadRequest(m) => (400, m.as_str()),
                Failure::NotFound(m) => (404, m.as_str()),
                Failure::Unavailable(m) => (503, m.as_str()),
                Failure::Internal(m) => {
                    tracing::warn!(target: "hetao::auditview", error = %m, path, "request failed");
                    (500, "the log could not be read: see the view's log")
                }
            };
            if path.starts_with("/api") {
                Answer::json(code, &json!({ "error": message }))
            } else {
                Answer::html(code, html::error_page(&status, code, message))
            }
        })
    }

    fn query(query: &str, default_type: Option<AuditEntryType>) -> Result<ViewQuery, Failure> {
        ViewQuery::parse(query, default_type).map_err(|e| Failure::BadRequest(e.to_string()))
    }

    /// One page of the matching entries, newest first, and how many match.
    fn page(&self, q: &ViewQuery) -> Result<(usize, Vec<AuditEntry>, Vec<usize>), Failure> {
        let index = read(&self.index);
        let matching = q.filter.select(&index);
        let total = matching.len();
        let skip = (q.page - 1).saturating_mul(q.per_page);
        let mut shown: Vec<usize> = matching
            .iter()
            .rev()
            .skip(skip)
            .take(q.per_page)
            .copied()
            .collect();
        shown.reverse();
        let mut entries = index.read_entries(&shown).map_err(Failure::Internal)?;
        entries.reverse();
        Ok((total, entries, matching))
    }

    fn list_page(&self, status: &Status, query: &str) -> Result<Answer, Failure> {
        let q = Self::query(query, Some(AuditEntryType::Decision))?;
        let (total, entries, matching) = self.page(&q)?;
        let index = read(&self.index);
        let charts = Charts::of(&index, &matching);
        let facets = facets(&index);
        Ok(Answer::html(
            200,
            html::list_page(status, &q, total, &entries, &charts, &facets),
        ))
    }

    fn entries_json(&self, query: &str) -> Result<Answer, Failure> {
        let q = Self::query(query, Some(AuditEntryType::Decision))?;
        let (total, entries, _) = self.page(&q)?;
        Ok(Answer::json(
            200,
            &json!({
                "filter": q.filter,
                "total": total,
                "page": q.page,
                "per_page": q.per_page,
                "pages": total.div_ceil(q.per_page).max(1),
                "entries": entries.iter().map(AuditEntry::to_json_with_hash).collect::<Vec<_>>(),
            }),
        ))
    }

    fn charts_json(&self, query: &str) -> Result<Answer, Failure> {
        let q = Self::query(query, Some(AuditEntryType::Decision))?;
        let index = read(&self.index);
        let matching = q.filter.select(&index);
        Ok(Answer::json(200, &json!(Charts::of(&index, &matching))))
    }

    fn export(&self, query: &str, csv: bool) -> Result<Answer, Failure> {
        let q = Self::query(query, Some(AuditEntryType::Decision))?;
        if form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "page") {
            return Err(Failure::BadRequest(
                "an export holds every matching entry: leave out `page`".into(),
            ));
        }
        let index = read(&self.index);
        let mut matching = q.filter.select(&index);
        let truncated = matching.len() > MAX_EXPORT;
        matching.truncate(MAX_EXPORT);
        let entries = index.read_entries(&matching).map_err(Failure::Internal)?;
        let mut answer = if csv {
            Answer {
                status: 200,
                content_type: "text/csv; charset=utf-8",
                body: entries_csv(&entries).into_bytes(),
                download: Some("audit.csv".into()),
                truncated,
            }
        } else {
            let v: Vec<_> = entries.iter().map(AuditEntry::to_json_with_hash).collect();
            Answer::json(200, &json!(v))
        };
        if !csv {
            answer.download = Some("audit.json".into());
            answer.truncated = truncated;
        }
        Ok(answer)
    }

    fn entry(&self, status: &Status, seq: &str, api: bool) -> Result<Answer, Failure> {
        let seq: u64 = seq
            .parse()
            .map_err(|_| Failure::BadRequest("an entry is named by its sequence number".into()))?;
        let index = read(&self.index);
        let row = index
            .row(seq)
            .ok_or_else(|| Failure::NotFound(format!("the log has no entry {seq}")))?;
        let (entry, line) = index.read_entry(row).map_err(Failure::Internal)?;
        let related = match row.related {
            u64::MAX => None,
            other => match index.row(other) {
                Some(r) => Some(index.read_entry(r).map_err(Failure::Internal)?.0),
                None => None,
            },
        };
        drop(index);
        if api {
            return Ok(Answer::json(
                200,
                &json!({
                    "entry": entry.to_json_with_hash(),
                    "line": line,
                    "related": related.as_ref().map(AuditEntry::to_json_with_hash),
                    "evidence": entry.record_id.as_ref().map(|id| format!("/api/evidence/{}", encode(id))),
                }),
            ));
        }
        Ok(Answer::html(
            200,
            html::entry_page(status, &entry, &line, related.as_ref()),
        ))
    }

    fn evidence(&self, id: &str) -> Result<Answer, Failure> {
        let id = decode(id);
        let Ok(_one_at_a_time) = self.proving.try_lock() else {
            return Err(Failure::Unavailable(
                "another evidence bundle is being made: try again in a moment".into(),
            ));
        };
        let files = read(&self.index).files.clone();
        match evidence::prove(&files, &id) {
            Ok(bundle) => {
                let mut a = Answer::json(200, &json!(bundle));
                a.download = Some("evidence.json".into());
                Ok(a)
            }
            Err(e @ evidence::EvidenceError::NoEntries(_)) => Err(Failure::NotFound(e.to_string())),
            Err(e @ evidence::EvidenceError::NotCovered(_)) => {
                Err(Failure::Unavailable(e.to_string()))
            }
            Err(e) => Err(Failure::Internal(e.to_string())),
        }
    }

    fn checkpoints(&self, status: &Status, query: &str, api: bool) -> Result<Answer, Failure> {
        let mut page = 1usize;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "page" => {
                    page = v
                        .parse()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or_else(|| Failure::BadRequest("page: a number from 1".into()))?
                }
                other => {
                    return Err(Failure::BadRequest(format!(
                        "parameter `{other}`: not one of this page"
                    )))
                }
            }
        }
        let cosigned = status::cosignatures(&self.logs);
        let index = read(&self.index);
        let all: Vec<usize> = index
            .rows()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.entry_type == AuditEntryType::Checkpoint)
            .map(|(i, _)| i)
            .collect();
        let total = all.len();
        let pages = total.div_ceil(CHECKPOINTS_PER_PAGE).max(1);
        let mut shown: Vec<usize> = all
            .iter()
            .rev()
            .skip((page - 1).saturating_mul(CHECKPOINTS_PER_PAGE))
            .take(CHECKPOINTS_PER_PAGE)
            .copied()
            .collect();
        shown.reverse();
        let mut views: Vec<CheckpointView> = index
            .read_entries(&shown)
            .map_err(Failure::Internal)?
            .into_iter()
            .map(|e| CheckpointView {
                cosigned_by: e
                    .tree_size
                    .and_then(|n| cosigned.get(&n).cloned())
                    .unwrap_or_default(),
                seq: e.seq,
                time: e.time,
                tree_size: e.tree_size,
                tree_root: e.tree_root,
                key_id: e.key_id,
                final_checkpoint: e.final_checkpoint,
            })
            .collect();
        views.reverse();
        drop(index);
        if api {
            return Ok(Answer::json(
                200,
                &json!({ "total": total, "page": page, "pages": pages, "checkpoints": views }),
            ));
        }
        Ok(Answer::html(
            200,
            html::checkpoints_page(status, &views, page, pages, total, &cosigned),
        ))
    }
}

enum Failure {
    BadRequest(String),
    NotFound(String),
    Unavailable(String),
    Internal(String),
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A percent-encoded path segment, decoded.
fn decode(s: &str) -> String {
    form_urlencoded::parse(format!("v={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The values the log holds for each filter, offered in the form.
fn facets(index: &LogIndex) -> Facets {
    let mut sets: [BTreeSet<u32>; 5] = Default::default();
    let mut rules = BTreeSet::new();
    for r in index.rows() {
        for (set, sym) in sets
            .iter_mut()
            .zip([r.kind, r.from, r.to, r.org, r.decision])
        {
            if sym != NONE {
                set.insert(sym);
            }
        }
        rules.extend(index.rules(r).map(|(id, _)| id));
    }
    let names = |set: &BTreeSet<u32>| -> Vec<String> {
        let mut v: Vec<String> = set
            .iter()
            .map(|&s| index.names.name(s).to_string())
            .collect();
        v.sort();
        v
    };
    let [kinds, from, to, orgs, decisions] = &sets;
    let parks: BTreeSet<u32> = from.union(to).copied().collect();
    Facets {
        kinds: names(kinds),
        parks: names(&parks),
        orgs: names(orgs),
        decisions: names(decisions),
        rules: names(&rules),
    }
}

fn api_index() -> serde_json::Value {
    json!({
        "endpoints": {
            "/api/status": "what `audit verify --allow-unsigned-tail` finds: hashes, links, tree roots, checkpoint signatures, witness cosignatures",
            "/api/entries": "one page of entries, newest first; filters: since, until (RFC 3339), type (decision by default; any), kind, from, to, org, decision, rule, record_id; page, per_page",
            "/api/entries/{seq}": "one entry, its line as written, its record's other entry, and where its evidence is",
            "/api/evidence/{record_id}": "the evidence bundle `audit prove` writes (check with `audit receipt verify`)",
            "/api/checkpoints": "signed checkpoints, newest first, with the witnesses that cosigned them; page",
            "/api/charts": "decisions over time by kind and the top deny rules, for the same filters",
            "/api/export.csv": "every matching entry as CSV (as `audit query --format csv`), same filters",
            "/api/export.json": "every matching entry as JSON, same filters",
        },
        "max_export": MAX_EXPORT,
    })
}
