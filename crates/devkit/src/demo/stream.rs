//! The demo's stream of records: the repository's example records (all allowed), variations of
//! them that a rule denies, invalid records, the attacks the gateway must refuse (a replay: another
//! record under a decided id; a sender claiming the other park), and retries of records already
//! answered, each with the answer it must get.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Duration, FixedOffset, NaiveDate, SecondsFormat, Utc};
use serde_json::{json, Value};

use hetao_gateway_core::policy_cases::set_pointer;

/// The answer a record must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// `200`, decision `allow`, forwarded to the destination park.
    Allow,
    /// `403 policy_denied`, with this rule among the matched rules.
    Deny { rule: &'static str },
    /// `400` (envelope) or `422` (schema of its kind).
    Invalid,
    /// `400 malformed_json`.
    Malformed,
    /// `415 unsupported_media_type`.
    NotJson,
    /// `403 origin_mismatch`: the certificate's park is not the record's `from`.
    OriginMismatch,
    /// `409 replay`: the record id was decided before, for another body.
    Replay,
    /// The first answer again (`200`, `"replayed": true`): the same bytes sent again, a retry.
    Retried,
}

impl Expect {
    /// Whether `status` and the answer's `error` code are what this case must get.
    pub fn holds(&self, status: u16, answer: Option<&Value>) -> bool {
        let error = answer.and_then(|a| a.get("error")).and_then(Value::as_str);
        match self {
            Expect::Allow => {
                status == 200
                    && answer
                        .and_then(|a| a.get("decision"))
                        .and_then(Value::as_str)
                        == Some("allow")
            }
            Expect::Deny { rule } => {
                status == 403
                    && error == Some("policy_denied")
                    && matched_rules(answer).iter().any(|(id, _)| id == rule)
            }
            Expect::Invalid => status == 400 || status == 422,
            Expect::Malformed => status == 400 && error == Some("malformed_json"),
            Expect::NotJson => status == 415,
            Expect::OriginMismatch => status == 403 && error == Some("origin_mismatch"),
            Expect::Replay => status == 409 && error == Some("replay"),
            Expect::Retried => {
                Expect::Allow.holds(status, answer)
                    && answer.and_then(|a| a.get("replayed")) == Some(&Value::Bool(true))
            }
        }
    }

    /// What this case must get, for messages.
    pub fn describe(&self) -> String {
        match self {
            Expect::Allow => "200 allow".into(),
            Expect::Deny { rule } => format!("403 policy_denied by {rule}"),
            Expect::Invalid => "400 or 422".into(),
            Expect::Malformed => "400 malformed_json".into(),
            Expect::NotJson => "415 unsupported_media_type".into(),
            Expect::OriginMismatch => "403 origin_mismatch".into(),
            Expect::Replay => "409 replay".into(),
            Expect::Retried => "200 allow, replayed".into(),
        }
    }
}

/// `(id, effect)` of every rule an answer lists.
pub fn matched_rules(answer: Option<&Value>) -> Vec<(String, String)> {
    answer
        .and_then(|a| a.get("rules"))
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| {
                    Some((
                        r.get("id")?.as_str()?.to_string(),
                        r.get("effect")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One request of the stream.
#[derive(Debug, Clone)]
pub struct Shot {
    /// What it shows, e.g. `example talent-sz-hk-researcher` or `D1: core data`.
    pub label: String,
    /// `data`, `materials`, `talent`, or `-` when the body has none.
    pub kind: String,
    /// `sz->hk` as the record claims it, or `-`.
    pub route: String,
    /// The destination park, for records that should be forwarded.
    pub to: Option<String>,
    /// The park whose organisation sends it (whose certificate is presented).
    pub sender_park: String,
    pub record_id: Option<String>,
    pub body: Bytes,
    /// `None` sends no content type at all.
    pub content_type: Option<&'static str>,
    pub expect: Expect,
}

/// A denial the demo shows: an example with a few fields changed, and the rule that must deny it.
struct Denial {
    example: &'static str,
    label: &'static str,
    set: &'static [(&'static str, &'static str)],
    remove: &'static [&'static str],
    rule: &'static str,
}

/// One denial per rule family and both routes; none of them sits on a date boundary, so they
/// deny on whatever day the demo runs.
const DENIALS: &[Denial] = &[
    Denial {
        example: "data-sz-hk-academic-measurements",
        label: "D1: core data never leaves",
        set: &[("/body/data_grade", r#""core""#)],
        remove: &[],
        rule: "D1.core-data",
    },
    Denial {
        example: "materials-sz-hk-hgr-samples",
        label: "M1: HGR samples without export approval",
        set: &[(
            "/body/permits/0/type",
            r#""gacc_animal_plant_quarantine_permit""#,
        )],
        remove: &[],
        rule: "M1.hgr-export-approval",
    },
    Denial {
        example: "talent-hk-sz-researcher",
        label: "T4: HKID card only, no Home Return Permit",
        set: &[("/body/travel_doc", r#""hkid""#)],
        remove: &[],
        rule: "T4.home-return-permit",
    },
    Denial {
        example: "data-hk-sz-staff-roster",
        label: "D7: new purpose without consent",
        set: &[("/body/purpose", r#""marketing""#)],
        remove: &[],
        rule: "D7.new-purpose-without-consent",
    },
    Denial {
        example: "talent-sz-hk-researcher",
        label: "T2: a visitor may not take employment",
        set: &[
            ("/body/hk_status", r#""visitor""#),
            ("/body/purpose", r#""employment""#),
        ],
        remove: &[],
        rule: "T2.visitor-may-not-work",
    },
    Denial {
        example: "materials-hk-sz-bio-reagents",
        label: "M2: special items without customs approval",
        set: &[("/body/permits", "[]")],
        remove: &[],
        rule: "M2.special-item-customs-approval",
    },
    Denial {
        example: "data-sz-hk-gba-clinical-followup",
        label: "D2: a CIIO needs a security assessment for a contract transfer",
        set: &[("/body/processor_is_ciio", "true")],
        remove: &[],
        rule: "D2.ciio-needs-assessment",
    },
    Denial {
        example: "data-hk-sz-clinical-study",
        label: "D8: green-channel data stays in the HK park",
        set: &[("/body/received_via_green_channel", "true")],
        remove: &[],
        rule: "D8.green-channel-stays-in-hk-park",
    },
    Denial {
        example: "materials-sz-hk-lab-mice",
        label: "M4: animals without an AFCD permit",
        set: &[(
            "/body/permits/0/type",
            r#""gacc_animal_plant_quarantine_permit""#,
        )],
        remove: &[],
        rule: "M4.afcd-permit",
    },
    Denial {
        example: "talent-hk-sz-researcher",
        label: "T5: no first-line pre-registration",
        set: &[],
        remove: &["/body/hetao_preregistration_id"],
        rule: "T5.first-line-preregistration",
    },
    Denial {
        example: "data-sz-hk-gba-clinical-followup",
        label: "D3: recipient registered outside the GBA",
        set: &[("/body/recipient/registered_city", r#""macao""#)],
        remove: &[],
        rule: "D3.gba-parties-outside-gba",
    },
    Denial {
        example: "talent-sz-hk-researcher",
        label: "T1: Mainland resident travelling on a passport",
        set: &[("/body/travel_doc", r#""passport""#)],
        remove: &[],
        rule: "T1.mainland-resident-needs-eep",
    },
];

/// The repository's example records (`examples/records`, build-time path).
pub fn repository_examples_dir() -> PathBuf {
    // This crate lives in `crates/devkit/` of the repository.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/records")
}

/// An example record as read from disk, with its name (file stem).
#[derive(Debug, Clone)]
pub struct Example {
    pub name: String,
    pub record: Value,
}

/// Reads every `*.json` directly in `dir`, sorted by name.
pub fn read_examples(dir: &Path) -> anyhow::Result<Vec<Example>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the example records in {} (the demo runs from a clone of the repository)",
            dir.display()
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read example record {}", path.display()))?;
        let record: Value = serde_json::from_str(&text)
            .with_context(|| format!("example record {} is not JSON", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(Example { name, record });
    }
    if out.is_empty() {
        anyhow::bail!("no example records (*.json) in {}", dir.display());
    }
    Ok(out)
}

fn text(record: &Value, key: &str) -> Option<String> {
    record.get(key).and_then(Value::as_str).map(str::to_string)
}

fn route_of(record: &Value) -> String {
    match (text(record, "from"), text(record, "to")) {
        (Some(f), Some(t)) => format!("{f}->{t}"),
        _ => "-".into(),
    }
}

/// A record made current: a fresh `record_id`, `created_at` now, and every other date moved
/// forward by whole weeks so that the example's permits and endorsements are as valid today as
/// on the day it was written (whole weeks keep weekdays, so working-day rules decide alike).
pub fn freshen(record: &Value, now: DateTime<Utc>) -> Value {
    let mut record = record.clone();
    let shift_days = text(&record, "created_at")
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|written| (now.date_naive() - written.date_naive()).num_days())
        .map(|days| if days > 0 { days / 7 * 7 } else { 0 })
        .unwrap_or(0);
    if let Some(body) = record.get_mut("body") {
        if shift_days > 0 {
            shift_dates(body, Duration::days(shift_days));
        }
    }
    if let Some(obj) = record.as_object_mut() {
        obj.insert("record_id".into(), json!(uuid::Uuid::new_v4().to_string()));
        obj.insert(
            "created_at".into(),
            json!(now.to_rfc3339_opts(SecondsFormat::Secs, true)),
        );
    }
    record
}

/// Moves every `YYYY-MM-DD` and RFC 3339 string in `value` by `by`.
fn shift_dates(value: &mut Value, by: Duration) {
    match value {
        Value::String(s) => {
            if let Some(shifted) = shift_date_text(s, by) {
                *s = shifted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| shift_dates(v, by)),
        Value::Object(map) => map.values_mut().for_each(|v| shift_dates(v, by)),
        _ => {}
    }
}

fn shift_date_text(s: &str, by: Duration) -> Option<String> {
    if s.len() == 10 {
        let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        return Some((d + by).format("%Y-%m-%d").to_string());
    }
    if s.len() >= 20 && s.as_bytes().get(10) == Some(&b'T') {
        let t: DateTime<FixedOffset> = DateTime::parse_from_rfc3339(s).ok()?;
        let use_z = s.ends_with('Z');
        return Some((t + by).to_rfc3339_opts(SecondsFormat::AutoSi, use_z));
    }
    None
}

fn shot_of(label: String, record: &Value, sender_park: String, expect: Expect) -> Shot {
    let body = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
    Shot {
        label,
        kind: text(record, "kind").unwrap_or_else(|| "-".into()),
        route: route_of(record),
        to: text(record, "to"),
        sender_park,
        record_id: text(record, "record_id"),
        body,
        content_type: Some("application/json"),
        expect,
    }
}

fn apply_denial(example: &Value, d: &Denial) -> anyhow::Result<Value> {
    let mut record = example.clone();
    for (ptr, value) in d.set {
        let v: Value = serde_json::from_str(value)
            .with_context(|| format!("demo denial `{}`: {value} is not JSON", d.label))?;
        set_pointer(&mut record, ptr, v)
            .map_err(|e| anyhow::anyhow!("demo denial `{}`: cannot set {ptr}: {e}", d.label))?;
    }
    for ptr in d.remove {
        let (parent, last) = ptr
            .rsplit_once('/')
            .ok_or_else(|| anyhow::anyhow!("demo denial `{}`: bad pointer {ptr}", d.label))?;
        if let Some(Value::Object(map)) = record.pointer_mut(parent) {
            map.shift_remove(last);
        }
    }
    Ok(record)
}

/// Everything the stream is made from.
pub struct Sources {
    pub examples: Vec<Example>,
    pub invalid: Vec<Example>,
}

impl Sources {
    pub fn read(examples_dir: &Path) -> anyhow::Result<Sources> {
        Ok(Sources {
            examples: read_examples(examples_dir)?,
            invalid: read_examples(&examples_dir.join("invalid"))?,
        })
    }

    fn example(&self, name: &str) -> anyhow::Result<&Example> {
        self.examples
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| anyhow::anyhow!("example record {name}.json is missing"))
    }
}

/// The stream of `n` records (`n` ≥ 5) sent concurrently, and the replays sent after it (which
/// must come after their originals were decided): alternately another record under an allowed
/// record's id (a `409 replay`) and a retry of an allowed record's bytes (its first answer). Every kind of case appears once before any
/// repeats: allowed examples, denials, invalid records, and the odd ones (wrong park, not JSON,
/// malformed JSON); then allowed and denied records again, with fresh ids, up to `n`.
pub fn build(
    sources: &Sources,
    n: usize,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<Shot>, Vec<Shot>)> {
    let replays = (n / 30).max(1);
    let main_len = n.saturating_sub(replays);

    let allowed = |i: usize| -> Shot {
        let ex = &sources.examples[i % sources.examples.len()];
        let record = freshen(&ex.record, now);
        let park = text(&record, "from").unwrap_or_default();
        shot_of(format!("example {}", ex.name), &record, park, Expect::Allow)
    };
    let denied = |i: usize| -> anyhow::Result<Shot> {
        let d = &DENIALS[i % DENIALS.len()];
        let record = freshen(&apply_denial(&sources.example(d.example)?.record, d)?, now);
        let park = text(&record, "from").unwrap_or_default();
        Ok(shot_of(
            d.label.to_string(),
            &record,
            park,
            Expect::Deny { rule: d.rule },
        ))
    };
    let invalid = |i: usize| -> Shot {
        let ex = &sources.invalid[i % sources.invalid.len()];
        let mut record = ex.record.clone();
        // A fresh id where the example has a well-formed one; a malformed id is the point of
        // some examples and stays.
        let valid_id =
            text(&record, "record_id").is_some_and(|id| uuid::Uuid::parse_str(&id).is_ok());
        if valid_id {
            if let Some(obj) = record.as_object_mut() {
                obj.insert("record_id".into(), json!(uuid::Uuid::new_v4().to_string()));
            }
        }
        let park = text(&record, "from").unwrap_or_else(|| "sz".into());
        shot_of(
            format!("invalid {}", ex.name),
            &record,
            park,
            Expect::Invalid,
        )
    };
    let odd = |i: usize| -> anyhow::Result<Shot> {
        Ok(match i % 4 {
            0 | 2 => {
                // An organisation of one park sends a record that claims to come from the other.
                let name = if i.is_multiple_of(4) {
                    "data-hk-sz-clinical-study"
                } else {
                    "materials-sz-hk-quantum-equipment"
                };
                let record = freshen(&sources.example(name)?.record, now);
                let claimed = text(&record, "from").unwrap_or_default();
                let sender = if claimed == "hk" { "sz" } else { "hk" };
                shot_of(
                    format!("{sender} certificate, from={claimed}"),
                    &record,
                    sender.to_string(),
                    Expect::OriginMismatch,
                )
            }
            1 => {
                let record = freshen(&sources.examples[0].record, now);
                let mut shot = shot_of(
                    "sent as text/plain".into(),
                    &record,
                    text(&record, "from").unwrap_or_default(),
                    Expect::NotJson,
                );
                shot.content_type = Some("text/plain");
                shot
            }
            _ => {
                let record = freshen(&sources.examples[0].record, now);
                let mut shot = shot_of(
                    "truncated JSON".into(),
                    &record,
                    text(&record, "from").unwrap_or_default(),
                    Expect::Malformed,
                );
                shot.body = shot.body.slice(..shot.body.len() / 2);
                shot.kind = "-".into();
                shot.route = "-".into();
                shot.record_id = None;
                shot.to = None;
                shot
            }
        })
    };

    // First pass: one of each family in turn until every pool is shown once.
    let pools = [
        sources.examples.len(),
        DENIALS.len(),
        sources.invalid.len(),
        4,
    ];
    let mut shots = Vec::new();
    let mut taken = [0usize; 4];
    while shots.len() < main_len && taken.iter().zip(pools).any(|(t, p)| *t < p) {
        for pool in 0..4 {
            if shots.len() >= main_len || taken[pool] >= pools[pool] {
                continue;
            }
            let i = taken[pool];
            taken[pool] += 1;
            shots.push(match pool {
                0 => allowed(i),
                1 => denied(i)?,
                2 => invalid(i),
                _ => odd(i)?,
            });
        }
    }
    // Then the everyday mix: three allowed records for each denied one.
    let mut k = 0usize;
    while shots.len() < main_len {
        shots.push(if k % 4 == 3 {
            denied(taken[1] + k)?
        } else {
            allowed(taken[0] + k)
        });
        k += 1;
    }

    // Replays of allowed records already in the stream: another body under the same id (created
    // a minute earlier), then exactly the same bytes (a retry).
    let originals: Vec<&Shot> = shots.iter().filter(|s| s.expect == Expect::Allow).collect();
    let mut replay_shots = Vec::new();
    for r in 0..replays {
        let original = match originals.get(r * 7 % originals.len().max(1)) {
            Some(o) => (*o).clone(),
            None => allowed(r),
        };
        if r % 2 == 0 {
            let mut record: Value = serde_json::from_slice(&original.body)?;
            let earlier = now - Duration::minutes(1);
            record["created_at"] = json!(earlier.to_rfc3339_opts(SecondsFormat::Secs, true));
            replay_shots.push(Shot {
                label: format!("same id, other body: {}", original.label),
                body: Bytes::from(serde_json::to_vec(&record)?),
                expect: Expect::Replay,
                to: None,
                ..original
            });
        } else {
            replay_shots.push(Shot {
                label: format!("retry: {}", original.label),
                expect: Expect::Retried,
                ..original
            });
        }
    }
    Ok((shots, replay_shots))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        Sources::read(&repository_examples_dir()).unwrap()
    }

    #[test]
    fn expectations_hold_only_for_the_right_answer() {
        let denied = json!({"error": "policy_denied",
                            "rules": [{"id": "D1.core-data", "effect": "deny"}]});
        let deny = Expect::Deny {
            rule: "D1.core-data",
        };
        assert!(deny.holds(403, Some(&denied)));
        assert!(!Expect::Deny { rule: "D3.x" }.holds(403, Some(&denied)));
        assert!(!deny.holds(200, Some(&json!({"decision": "allow"}))));
        assert!(!Expect::Replay.holds(200, Some(&json!({"decision": "allow"}))));
        assert!(!Expect::Retried.holds(200, Some(&json!({"decision": "allow"}))));
        assert!(Expect::Retried.holds(200, Some(&json!({"decision": "allow", "replayed": true}))));
        assert!(!Expect::OriginMismatch.holds(403, Some(&denied)));
        assert!(Expect::Invalid.holds(422, None) && Expect::Invalid.holds(400, None));
        assert!(!Expect::Allow.holds(502, Some(&json!({"decision": "allow"}))));
    }

    #[test]
    fn every_denial_names_an_existing_example() {
        let s = sources();
        for d in DENIALS {
            let ex = s.example(d.example).unwrap();
            apply_denial(&ex.record, d).unwrap();
        }
    }

    #[test]
    fn freshen_moves_dates_by_whole_weeks_and_renews_id_and_time() {
        let record = json!({
            "record_id": "x", "created_at": "2026-11-25T10:00:00+08:00",
            "body": {"valid_to": "2027-02-19", "entry_at": "2026-12-01T08:45:00+08:00",
                     "title": "run 2026-11"}
        });
        let now = DateTime::parse_from_rfc3339("2027-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let f = freshen(&record, now);
        // 2026-11-25 to 2027-03-01 is 96 days: 13 whole weeks = 91 days.
        assert_eq!(f["body"]["valid_to"], "2027-05-21");
        assert_eq!(f["body"]["entry_at"], "2027-03-02T08:45:00+08:00");
        assert_eq!(f["body"]["title"], "run 2026-11");
        assert_eq!(f["created_at"], "2027-03-01T00:00:00Z");
        assert_ne!(f["record_id"], "x");
    }

    #[test]
    fn small_stream_still_shows_every_family() {
        let (shots, replays) = build(&sources(), 5, Utc::now()).unwrap();
        assert_eq!(shots.len() + replays.len(), 5);
        assert!(shots.iter().any(|s| s.expect == Expect::Allow));
        assert!(shots
            .iter()
            .any(|s| matches!(s.expect, Expect::Deny { .. })));
        assert!(shots.iter().any(|s| s.expect == Expect::Invalid));
        assert!(shots.iter().any(|s| s.expect == Expect::OriginMismatch));
        assert_eq!(replays.len(), 1);
    }

    #[test]
    fn replays_repeat_an_allowed_records_id_with_another_body_or_its_very_bytes() {
        let (shots, replays) = build(&sources(), 60, Utc::now()).unwrap();
        assert_eq!(shots.len() + replays.len(), 60);
        assert_eq!(replays.len(), 2);
        for r in &replays {
            let original = shots
                .iter()
                .find(|s| s.expect == Expect::Allow && s.record_id == r.record_id)
                .unwrap();
            match r.expect {
                Expect::Replay => assert_ne!(original.body, r.body),
                Expect::Retried => assert_eq!(original.body, r.body),
                _ => panic!("{r:?}"),
            }
        }
    }
}
