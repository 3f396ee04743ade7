//! The auditors' view: the indexed logs, their verification status, and the answer to each
//! request (HTML pages, the JSON API, exports, evidence). Transport-free: [`crate::server`]
//! carries the answers over HTTP, tests call [`AuditView::answer`] directly too.
//!
//! A view shows one log (the files given to `audit serve LOG...`) or, over a cluster's database
//! (`audit serve --database`), every instance's log at once: each indexed and verified on its
//! own, their entries listed together with their instance, newest first.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLockReadGuard;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::json;

use hetao_gateway_core::audit::evidence;
use hetao_gateway_core::audit::query::{entries_csv, instances_csv};
use hetao_gateway_core::audit::{AuditEntry, AuditEntryType, AuditPublicKey};
use hetao_gateway_core::witness::cosignature::witness_name_of;

use crate::charts::Charts;
use crate::database::DatabaseSource;
use crate::filter::Selection as _;
use crate::filter::ViewQuery;
use crate::html::{self, CheckpointView, Facets, Shown};
use crate::index::{IndexError, LogIndex, NONE};
use crate::status::{self, Overview, Status};

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

/// One log the view shows: the files given on the command line, or one instance's shipped log
/// as mirrored from the database.
struct Log {
    /// `None`: the files given on the command line.
    instance: Option<String>,
    files: Vec<PathBuf>,
    index: RwLock<LogIndex>,
    status: RwLock<Arc<Status>>,
    verifying: AtomicBool,
}

impl Log {
    /// Indexes the log and verifies it, side by side on two threads.
    fn open(
        instance: Option<String>,
        files: Vec<PathBuf>,
        key: &AuditPublicKey,
        witness_keys: &[AuditPublicKey],
    ) -> Result<Log, IndexError> {
        let (index, status) = std::thread::scope(|s| {
            let verifying = s.spawn(|| status::verify(&files, key, witness_keys));
            let index = LogIndex::build(&files);
            let status = verifying
                .join()
                .unwrap_or_else(|_| status::verify(&files, key, witness_keys));
            (index, status)
        });
        Ok(Log {
            instance,
            index: RwLock::new(index?),
            status: RwLock::new(Arc::new(status)),
            files,
            verifying: AtomicBool::new(false),
        })
    }

    fn name(&self) -> Option<&str> {
        self.instance.as_deref()
    }
}

/// An entry among the logs: which log, and its position among that log's rows.
type Pick = (usize, usize);

/// The logs of a request, each index held for reading while the answer is made.
struct Held<'a> {
    logs: &'a [Arc<Log>],
    indexes: Vec<RwLockReadGuard<'a, LogIndex>>,
}

impl<'a> Held<'a> {
    fn new(logs: &'a [Arc<Log>]) -> Held<'a> {
        Held {
            logs,
            indexes: logs.iter().map(|l| read(&l.index)).collect(),
        }
    }

    /// The entries matching `q`, oldest first: chain order for one log, time order (then
    /// instance, then chain order) across several.
    fn select(&self, q: &ViewQuery) -> Vec<Pick> {
        let mut picks: Vec<Pick> = Vec::new();
        for (li, index) in self.indexes.iter().enumerate() {
            if q.instance
                .as_deref()
                .is_some_and(|i| self.logs[li].name() != Some(i))
            {
                continue;
            }
            picks.extend(q.filter.select(index).into_iter().map(|p| (li, p)));
        }
        if self.indexes.len() > 1 {
            picks.sort_by_key(|&(li, p)| (self.indexes[li].rows()[p].time_us, li));
        }
        picks
    }

    /// The entries of `picks`, in that order, each with its instance.
    fn read(&self, picks: &[Pick]) -> Result<Vec<Shown>, Failure> {
        let mut out: Vec<Option<AuditEntry>> = vec![None; picks.len()];
        for (li, index) in self.indexes.iter().enumerate() {
            let (at, positions): (Vec<usize>, Vec<usize>) = picks
                .iter()
                .enumerate()
                .filter(|(_, (l, _))| *l == li)
                .map(|(i, (_, p))| (i, *p))
                .unzip();
            if positions.is_empty() {
                continue;
            }
            let entries = index.read_entries(&positions).map_err(Failure::Internal)?;
            for (i, e) in at.into_iter().zip(entries) {
                out[i] = Some(e);
            }
        }
        Ok(picks
            .iter()
            .zip(out)
            .filter_map(|(&(li, _), e)| {
                e.map(|entry| Shown {
                    instance: self.logs[li].instance.clone(),
                    entry,
                })
            })
            .collect())
    }

    fn charts(&self, picks: &[Pick]) -> Charts {
        let parts: Vec<(&LogIndex, Vec<usize>)> = self
            .indexes
            .iter()
            .enumerate()
            .map(|(li, index)| {
                let positions = picks
                    .iter()
                    .filter(|(l, _)| *l == li)
                    .map(|(_, p)| *p)
                    .collect();
                (&**index, positions)
            })
            .collect();
        Charts::of_many(&parts)
    }
}

pub struct AuditView {
    logs: RwLock<Vec<Arc<Log>>>,
    /// Over a cluster's database: where the logs are mirrored from.
    database: Option<DatabaseSource>,
    /// With `--instance`: that instance's log only.
    only_instance: Option<String>,
    key: AuditPublicKey,
    witness_keys: Vec<AuditPublicKey>,
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
        let log = Log::open(None, logs, &key, &witness_keys)?;
        Ok(Arc::new(AuditView {
            logs: RwLock::new(vec![Arc::new(log)]),
            database: None,
            only_instance: None,
            key,
            witness_keys,
            last_refresh: Mutex::new(Instant::now()),
            proving: Mutex::new(()),
        }))
    }

    /// A view of every instance's log shipped to a cluster's database (or only `instance`'s):
    /// read once now (an error when the database cannot be read: there is nothing to show yet),
    /// then followed by [`follow`](Self::follow). Witness cosignatures are not in the database:
    /// the witnesses named are listed as not checked.
    pub async fn open_database(
        source: DatabaseSource,
        instance: Option<String>,
        key: AuditPublicKey,
        witness_keys: Vec<AuditPublicKey>,
    ) -> Result<Arc<AuditView>, String> {
        let mirrored = source
            .pull(instance.as_deref(), true)
            .await
            .map_err(|e| e.to_string())?;
        let view = Arc::new(AuditView {
            logs: RwLock::new(Vec::new()),
            database: Some(source),
            only_instance: instance,
            key,
            witness_keys,
            last_refresh: Mutex::new(Instant::now()),
            proving: Mutex::new(()),
        });
        let adding = view.clone();
        tokio::task::spawn_blocking(move || adding.add_instances(&mirrored))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(view)
    }

    /// Adds the mirrored logs of instances the view does not show yet.
    fn add_instances(&self, mirrored: &[crate::database::MirroredLog]) -> Result<(), IndexError> {
        for m in mirrored {
            let known = read(&self.logs)
                .iter()
                .any(|l| l.name() == Some(m.instance.as_str()));
            if known {
                continue;
            }
            // Cosignatures are not shipped: the mirrors are verified without witness keys, and
            // the witnesses named are listed as not checked.
            let log = Log::open(
                Some(m.instance.clone()),
                vec![m.path.clone()],
                &self.key,
                &[],
            )?;
            write(&self.logs).push(Arc::new(log));
        }
        Ok(())
    }

    fn logs(&self) -> Vec<Arc<Log>> {
        read(&self.logs).clone()
    }

    /// What the top of every page says: each log's verification, and the database's state.
    pub fn overview(&self) -> Overview {
        Overview {
            logs: self
                .logs()
                .iter()
                .map(|l| (l.instance.clone(), read(&l.status).clone()))
                .collect(),
            database: self.database.as_ref().map(DatabaseSource::state),
            unshipped_witnesses: if self.database.is_some() {
                self.witness_keys.iter().map(witness_name_of).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The status of the first log (the only one of a view over files).
    pub fn status(&self) -> Arc<Status> {
        self.logs()
            .first()
            .map(|l| read(&l.status).clone())
            .unwrap_or_else(|| Arc::new(status::verify(&[], &self.key, &[])))
    }

    /// Entries in every log shown.
    pub fn entries(&self) -> usize {
        self.logs()
            .iter()
            .map(|l| read(&l.index).rows().len())
            .sum()
    }

    /// The instances shown (none for a view over files).
    pub fn instances(&self) -> Vec<String> {
        self.logs()
            .iter()
            .filter_map(|l| l.instance.clone())
            .collect()
    }

    /// Brings the view up to date: over a database, reads the lines shipped since the last
    /// read (and adds instances that appeared); then takes in what was appended to the files.
    /// A database that cannot be read leaves the view as it was, its status saying so.
    pub async fn follow(self: &Arc<Self>) {
        if let Some(source) = &self.database {
            if let Ok(mirrored) = source.pull(self.only_instance.as_deref(), false).await {
                let view = self.clone();
                let added =
                    tokio::task::spawn_blocking(move || view.add_instances(&mirrored)).await;
                if let Ok(Err(e)) = added {
                    tracing::warn!(target: "hetao::auditview", error = %e, "cannot index an instance's log");
                }
            }
        }
        let view = self.clone();
        let _ = tokio::task::spawn_blocking(move || view.refresh_now()).await;
    }

    /// Takes in appended entries (a rotated log is read again) and, when anything changed,
    /// verifies again in the background; the previous status stands until then. At most once
    /// a second.
    pub fn refresh(self: &Arc<Self>) {
        {
            let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < REFRESH_AT_MOST_EVERY {
                return;
            }
            *last = Instant::now();
        }
        self.refresh_now();
    }

    fn refresh_now(self: &Arc<Self>) {
        for log in self.logs() {
            let changed = match write(&log.index).refresh(&log.files) {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::warn!(target: "hetao::auditview", error = %e, "cannot read the log again");
                    false
                }
            };
            if changed && !log.verifying.swap(true, Ordering::AcqRel) {
                let key = self.key.clone();
                let witness_keys = if log.instance.is_none() {
                    self.witness_keys.clone()
                } else {
                    Vec::new()
                };
                std::thread::spawn(move || {
                    let status = status::verify(&log.files, &key, &witness_keys);
                    *write(&log.status) = Arc::new(status);
                    log.verifying.store(false, Ordering::Release);
                });
            }
        }
    }

    /// The answer to `GET path?query`.
    pub fn answer(&self, path: &str, query: &str) -> Answer {
        let overview = self.overview();
        let logs = self.logs();
        let result = match path {
            "/" => self.list_page(&overview, &logs, query),
            "/style.css" => Ok(Answer {
                status: 200,
                content_type: "text/css; charset=utf-8",
                body: html::STYLE.as_bytes().to_vec(),
                download: None,
                truncated: false,
            }),
            "/checkpoints" => self.checkpoints(&overview, &logs, query, false),
            "/api" | "/api/" => Ok(Answer::json(200, &api_index(self.database.is_some()))),
            "/api/status" => Ok(Answer::json(200, &status_json(&overview))),
            "/api/entries" => self.entries_json(&logs, query),
            "/api/charts" => self.charts_json(&logs, query),
            "/api/checkpoints" => self.checkpoints(&overview, &logs, query, true),
            "/api/export.csv" => self.export(&logs, query, true),
            "/api/export.json" => self.export(&logs, query, false),
            _ => {
                if let Some(rest) = path.strip_prefix("/entry/") {
                    self.entry(&overview, &logs, rest, false)
                } else if let Some(rest) = path.strip_prefix("/api/entries/") {
                    self.entry(&overview, &logs, rest, true)
                } else if let Some(rest) = path.strip_prefix("/api/evidence/") {
                    self.evidence(&logs, rest)
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
                Answer::html(code, html::error_page(&overview, code, message))
            }
        })
    }

    fn query(
        &self,
        query: &str,
        default_type: Option<AuditEntryType>,
    ) -> Result<ViewQuery, Failure> {
        let q = ViewQuery::parse(query, default_type)
            .map_err(|e| Failure::BadRequest(e.to_string()))?;
        if q.instance.is_some() && self.database.is_none() {
            return Err(Failure::BadRequest(
                "parameter `instance`: this view shows the log files given, not a cluster's instances".into(),
            ));
        }
        Ok(q)
    }

    /// One page of the matching entries, newest first, and all that match.
    fn page(&self, held: &Held, q: &ViewQuery) -> Result<(Vec<Shown>, Vec<Pick>), Failure> {
        let matching = held.select(q);
        let skip = (q.page - 1).saturating_mul(q.per_page);
        let shown: Vec<Pick> = matching
            .iter()
            .rev()
            .skip(skip)
            .take(q.per_page)
            .copied()
            .collect();
        Ok((held.read(&shown)?, matching))
    }

    fn list_page(
        &self,
        overview: &Overview,
        logs: &[Arc<Log>],
        query: &str,
    ) -> Result<Answer, Failure> {
        let q = self.query(query, Some(AuditEntryType::Decision))?;
        let held = Held::new(logs);
        let (entries, matching) = self.page(&held, &q)?;
        let charts = held.charts(&matching);
        let facets = facets(&held);
        Ok(Answer::html(
            200,
            html::list_page(overview, &q, matching.len(), &entries, &charts, &facets),
        ))
    }

    fn entries_json(&self, logs: &[Arc<Log>], query: &str) -> Result<Answer, Failure> {
        let q = self.query(query, Some(AuditEntryType::Decision))?;
        let held = Held::new(logs);
        let (entries, matching) = self.page(&held, &q)?;
        let total = matching.len();
        let mut filter = json!(q.filter);
        if let (Some(obj), Some(i)) = (filter.as_object_mut(), &q.instance) {
            obj.insert("instance".into(), json!(i));
        }
        Ok(Answer::json(
            200,
            &json!({
                "filter": filter,
                "total": total,
                "page": q.page,
                "per_page": q.per_page,
                "pages": total.div_ceil(q.per_page).max(1),
                "entries": entries.iter().map(Shown::to_json).collect::<Vec<_>>(),
            }),
        ))
    }

    fn charts_json(&self, logs: &[Arc<Log>], query: &str) -> Result<Answer, Failure> {
        let q = self.query(query, Some(AuditEntryType::Decision))?;
        let held = Held::new(logs);
        let matching = held.select(&q);
        Ok(Answer::json(200, &json!(held.charts(&matching))))
    }

    fn export(&self, logs: &[Arc<Log>], query: &str, csv: bool) -> Result<Answer, Failure> {
        let q = self.query(query, Some(AuditEntryType::Decision))?;
        if form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "page") {
            return Err(Failure::BadRequest(
                "an export holds every matching entry: leave out `page`".into(),
            ));
        }
        let held = Held::new(logs);
        let mut matching = held.select(&q);
        let truncated = matching.len() > MAX_EXPORT;
        matching.truncate(MAX_EXPORT);
        let entries = held.read(&matching)?;
        let mut answer = if csv {
            let body = if self.database.is_some() {
                // The columns of `audit query --database --format csv`: the instance first.
                let mut groups: Vec<(String, Vec<AuditEntry>)> = Vec::new();
                for s in entries {
                    let name = s.instance.unwrap_or_default();
                    match groups.last_mut() {
                        Some((last, run)) if *last == name => run.push(s.entry),
                        _ => groups.push((name, vec![s.entry])),
                    }
                }
                instances_csv(&groups)
            } else {
                let entries: Vec<AuditEntry> = entries.into_iter().map(|s| s.entry).collect();
                entries_csv(&entries)
            };
            Answer {
                status: 200,
                content_type: "text/csv; charset=utf-8",
                body: body.into_bytes(),
                download: Some("audit.csv".into()),
                truncated,
            }
        } else {
            let v: Vec<_> = entries.iter().map(Shown::to_json).collect();
            Answer::json(200, &json!(v))
        };
        if !csv {
            answer.download = Some("audit.json".into());
            answer.truncated = truncated;
        }
        Ok(answer)
    }

    /// The log an entry path names: `SEQ` over files, `INSTANCE/SEQ` (or `INSTANCE/RECORD_ID`)
    /// over a database, where sequences repeat across instances.
    fn named<'l>(
        &self,
        logs: &'l [Arc<Log>],
        rest: &'l str,
        what: &str,
    ) -> Result<(&'l Arc<Log>, &'l str), Failure> {
        if self.database.is_none() {
            return logs
                .first()
                .map(|l| (l, rest))
                .ok_or_else(|| Failure::NotFound("no log".into()));
        }
        let Some((instance, rest)) = rest.split_once('/') else {
            return Err(Failure::NotFound(format!(
                "name the instance as well as the {what}: sequences repeat across instances (/entry/INSTANCE/SEQ)"
            )));
        };
        let instance = decode(instance);
        let log = logs
            .iter()
            .find(|l| l.name() == Some(instance.as_str()))
            .ok_or_else(|| Failure::NotFound(format!("no instance `{instance}` in this view")))?;
        Ok((log, rest))
    }

    fn entry(
        &self,
        overview: &Overview,
        logs: &[Arc<Log>],
        rest: &str,
        api: bool,
    ) -> Result<Answer, Failure> {
        let (log, seq) = self.named(logs, rest, "sequence number")?;
        let seq: u64 = seq
            .parse()
            .map_err(|_| Failure::BadRequest("an entry is named by its sequence number".into()))?;
        let index = read(&log.index);
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
        let instance = log.name();
        if api {
            let mut value = json!({
                "entry": entry.to_json_with_hash(),
                "line": line,
                "related": related.as_ref().map(AuditEntry::to_json_with_hash),
                "evidence": entry.record_id.as_ref().map(|id| html::evidence_href(instance, id)),
            });
            if let (Some(obj), Some(i)) = (value.as_object_mut(), instance) {
                obj.insert("instance".into(), json!(i));
            }
            return Ok(Answer::json(200, &value));
        }
        Ok(Answer::html(
            200,
            html::entry_page(
                overview,
                instance,
                &entry,
                &line,
                related.as_ref(),
                self.database.is_some(),
            ),
        ))
    }

    fn evidence(&self, logs: &[Arc<Log>], rest: &str) -> Result<Answer, Failure> {
        let (log, id) = self.named(logs, rest, "record id")?;
        let id = decode(id);
        let Ok(_one_at_a_time) = self.proving.try_lock() else {
            return Err(Failure::Unavailable(
                "another evidence bundle is being made: try again in a moment".into(),
            ));
        };
        let files = read(&log.index).files.clone();
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

    fn checkpoints(
        &self,
        overview: &Overview,
        logs: &[Arc<Log>],
        query: &str,
        api: bool,
    ) -> Result<Answer, Failure> {
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
        // Over a database there is no cosignatures file: they stay beside each instance's log.
        let cosigned = match logs {
            [log] if log.instance.is_none() => status::cosignatures(&log.files),
            _ => Default::default(),
        };
        let held = Held::new(logs);
        let mut all: Vec<Pick> = Vec::new();
        for (li, index) in held.indexes.iter().enumerate() {
            all.extend(
                index
                    .rows()
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.entry_type == AuditEntryType::Checkpoint)
                    .map(|(i, _)| (li, i)),
            );
        }
        if held.indexes.len() > 1 {
            all.sort_by_key(|&(li, p)| (held.indexes[li].rows()[p].time_us, li));
        }
        let total = all.len();
        let pages = total.div_ceil(CHECKPOINTS_PER_PAGE).max(1);
        let shown: Vec<Pick> = all
            .iter()
            .rev()
            .skip((page - 1).saturating_mul(CHECKPOINTS_PER_PAGE))
            .take(CHECKPOINTS_PER_PAGE)
            .copied()
            .collect();
        let views: Vec<CheckpointView> = held
            .read(&shown)?
            .into_iter()
            .map(|Shown { instance, entry: e }| CheckpointView {
                instance,
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
        drop(held);
        if api {
            return Ok(Answer::json(
                200,
                &json!({ "total": total, "page": page, "pages": pages, "checkpoints": views }),
            ));
        }
        Ok(Answer::html(
            200,
            html::checkpoints_page(overview, &views, page, pages, total, &cosigned),
        ))
    }
}

/// `/api/status`: over files, what `audit verify` finds; over a database, that for each
/// instance, whether all verify, and the database's state.
fn status_json(overview: &Overview) -> serde_json::Value {
    if let Some(single) = overview.single() {
        return json!(single);
    }
    let instances: Vec<serde_json::Value> = overview
        .logs
        .iter()
        .map(|(name, s)| {
            let mut v = json!(**s);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("instance".into(), json!(name));
            }
            v
        })
        .collect();
    json!({
        "intact": overview.intact(),
        "database": overview.database,
        "instances": instances,
        "witnesses": {
            "checked": false,
            "named": overview.unshipped_witnesses,
            "why": "witness cosignatures are kept beside each instance's log files and are not shipped to the database: check them there with `audit verify LOG --witness-key`",
        },
    })
}

enum Failure {
    BadRequest(String),
    NotFound(String),
    Unavailable(String),
    Internal(String),
}

/// A percent-encoded path segment, decoded.
fn decode(s: &str) -> String {
    form_urlencoded::parse(format!("v={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The values the logs hold for each filter, offered in the form.
fn facets(held: &Held) -> Facets {
    let mut sets: [BTreeSet<String>; 5] = Default::default();
    let mut rules = BTreeSet::new();
    for index in &held.indexes {
        let mut syms: [BTreeSet<u32>; 5] = Default::default();
        let mut rule_syms = BTreeSet::new();
        for r in index.rows() {
            for (set, sym) in syms
                .iter_mut()
                .zip([r.kind, r.from, r.to, r.org, r.decision])
            {
                if sym != NONE {
                    set.insert(sym);
                }
            }
            rule_syms.extend(index.rules(r).map(|(id, _)| id));
        }
        for (names, syms) in sets.iter_mut().zip(&syms) {
            names.extend(syms.iter().map(|&s| index.names.name(s).to_string()));
        }
        rules.extend(rule_syms.iter().map(|&s| index.names.name(s).to_string()));
    }
    let [kinds, from, to, orgs, decisions] = sets;
    let parks: BTreeSet<String> = from.union(&to).cloned().collect();
    Facets {
        kinds: kinds.into_iter().collect(),
        parks: parks.into_iter().collect(),
        orgs: orgs.into_iter().collect(),
        decisions: decisions.into_iter().collect(),
        rules: rules.into_iter().collect(),
        instances: held
            .logs
            .iter()
            .filter_map(|l| l.instance.clone())
            .collect(),
    }
}

fn api_index(database: bool) -> serde_json::Value {
    if database {
        return json!({
            "endpoints": {
                "/api/status": "for each instance, what `audit verify --allow-unsigned-tail` finds (hashes, links, tree roots, checkpoint signatures); whether all verify; the database's state",
                "/api/entries": "one page of every instance's entries, newest first, each with its `instance`; filters: instance, since, until (RFC 3339), type (decision by default; any), kind, from, to, org, decision, rule, record_id; page, per_page",
                "/api/entries/{instance}/{seq}": "one entry of an instance, its line as written, its record's other entry, and where its evidence is",
                "/api/evidence/{instance}/{record_id}": "the evidence bundle `audit prove` writes from that instance's log (check with `audit receipt verify`)",
                "/api/checkpoints": "every instance's signed checkpoints, newest first; page",
                "/api/charts": "decisions over time by kind and the top deny rules, for the same filters",
                "/api/export.csv": "every matching entry as CSV (as `audit query --database --format csv`: the instance first), same filters",
                "/api/export.json": "every matching entry as JSON, each with its `instance`, same filters",
            },
            "max_export": MAX_EXPORT,
        });
    }
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
