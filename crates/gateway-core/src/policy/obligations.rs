//! Obligations of allow decisions, applied to the record before it is forwarded: generalise a
//! date, keep a field on a declared legal basis, pseudonymise a field (keyed HMAC-SHA-256 in the
//! scope of the destination park, [`super::pseudonym`]) and drop a field.
//!
//! Each application returns one line per obligation for the audit log: the action, the pointer,
//! the key id and scope of a pseudonym, the basis of a kept field — never a value.

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Map, Value};

use super::compile::parse_pointer;
use super::dates::{self, DateValue};
use super::pseudonym::{PseudonymKeys, PseudonymPlan};
use super::{Decision, Effect, Granularity, Obligation, ObligationError};

// The key types live in `pseudonym`; kept reachable here for the tools that generate keys.
pub use super::pseudonym::{PseudonymKey, MIN_KEY_BYTES};

/// Where and when a record is forwarded: what the obligations depend on besides the record.
pub struct Destination<'a> {
    /// The keys in force (`None`: a pseudonymisation fails, fail closed).
    pub keys: Option<&'a PseudonymKeys>,
    /// Local time of the policy set, for generalised dates.
    pub zone: FixedOffset,
    /// The destination park (the record's `to`): the scope of its pseudonyms.
    pub to: &'a str,
    /// The decision time: whether a previous key's overlap still lasts.
    pub now: DateTime<Utc>,
}

/// Applies an allow decision's obligations: generalisations and keeps first, then
/// pseudonymisations, then drops (so a field both pseudonymised and dropped is simply gone).
/// Returns one line per obligation for the audit log, never a value.
pub fn apply(
    dest: &Destination<'_>,
    decision: &Decision,
    record: &mut Value,
) -> Result<Vec<String>, ObligationError> {
    let mut done = Vec::new();
    if decision.effect != Effect::Allow {
        return Ok(done);
    }
    let phases: [fn(&Obligation) -> bool; 3] = [
        |o| matches!(o, Obligation::Generalise { .. } | Obligation::Keep { .. }),
        |o| matches!(o, Obligation::Pseudonymise { .. }),
        |o| matches!(o, Obligation::Drop { .. }),
    ];
    for phase in phases {
        for o in decision.obligations.iter().filter(|o| phase(o)) {
            done.push(apply_one(dest, o, record)?);
        }
    }
    Ok(done)
}

/// The audit line of an obligation (`plan`: the key ids and scope of a pseudonymisation).
pub fn describe(o: &Obligation, plan: Option<&PseudonymPlan>) -> String {
    match o {
        Obligation::Pseudonymise {
            pointer, reason, ..
        } => {
            let mut line = format!("pseudonymise {pointer}");
            if let Some(p) = plan {
                line.push_str(&format!(" key {} scope {}", p.key_id, p.scope));
                if let Some(prev) = &p.previous_key_id {
                    line.push_str(&format!(" previous {prev}"));
                }
            }
            if let Some(r) = reason {
                line.push_str(&format!(" reason: {r}"));
            }
            line
        }
        Obligation::Generalise { pointer, to, .. } => {
            format!("generalise {pointer} to {}", to.as_str())
        }
        Obligation::Keep { pointer, basis, .. } => format!("keep {pointer} basis: {basis}"),
        Obligation::Drop { pointer, .. } => format!("drop {pointer}"),
    }
}

fn fail(o: &Obligation, message: impl Into<String>) -> ObligationError {
    ObligationError::Failed {
        rule: o.rule().to_string(),
        pointer: o.pointer().to_string(),
        message: message.into(),
    }
}

fn apply_one(
    dest: &Destination<'_>,
    o: &Obligation,
    record: &mut Value,
) -> Result<String, ObligationError> {
    let plan = match o {
        Obligation::Pseudonymise {
            purpose, linkable, ..
        } => {
            let keys = dest
                .keys
                .ok_or_else(|| fail(o, "no pseudonymisation key configured"))?;
            Some((
                keys,
                keys.plan(dest.to, purpose.as_deref(), *linkable, dest.now),
            ))
        }
        _ => None,
    };
    let line = describe(o, plan.as_ref().map(|(_, p)| p));
    let mut targets = locate(record, o.pointer()).map_err(|m| fail(o, m))?;
    // A missing or null value has nothing to treat (a drop of a null does remove the key).
    if !matches!(o, Obligation::Drop { .. }) {
        targets.retain(|p| !matches!(record.pointer(p), None | Some(Value::Null)));
    }
    if targets.is_empty() {
        return Ok(format!("{} {}: absent", o.action(), o.pointer()));
    }
    match o {
        Obligation::Keep { .. } => {}
        Obligation::Generalise { to, .. } => {
            for p in &targets {
                if let Some(slot) = record.pointer_mut(p) {
                    *slot =
                        Value::String(generalise(slot, *to, dest.zone).map_err(|m| fail(o, m))?);
                }
            }
        }
        Obligation::Pseudonymise { .. } => {
            let Some((keys, plan)) = &plan else {
                return Err(fail(o, "no pseudonymisation key configured"));
            };
            for p in &targets {
                let Some(slot) = record.pointer_mut(p) else {
                    continue;
                };
                let input = match slot {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(fail(o, "only strings and numbers can be pseudonymised")),
                };
                let mut out = Map::new();
                out.insert(
                    "pseudonym".into(),
                    json!(keys.current().pseudonym(&plan.scope, &input)),
                );
                out.insert("key_id".into(), json!(keys.current().id()));
                if let Some(previous) = keys.previous_at(dest.now) {
                    out.insert(
                        "previous".into(),
                        json!({"pseudonym": previous.pseudonym(&plan.scope, &input),
                               "key_id": previous.id()}),
                    );
                }
                *slot = Value::Object(out);
            }
        }
        Obligation::Drop { .. } => {
            // Last first, so removing an array item does not move the ones still to remove.
            for p in targets.iter().rev() {
                remove(record, p);
            }
        }
    }
    Ok(line)
}

/// The date or date-time `v` as its local day (`2026-12-01`), month (`2026-12`) or year.
fn generalise(v: &Value, to: Granularity, zone: FixedOffset) -> Result<String, String> {
    let date = v
        .as_str()
        .and_then(dates::parse)
        .map(|d: DateValue| d.local_date(zone))
        .ok_or("only RFC 3339 dates and date-times can be generalised")?;
    Ok(match to {
        Granularity::Day => date.format("%Y-%m-%d"),
        Granularity::Month => date.format("%Y-%m"),
        Granularity::Year => date.format("%Y"),
    }
    .to_string())
}

/// The concrete pointers `pointer` names in `record`: itself if present, and with a `-` token
/// standing for every item of an array, one per item (in document order).
fn locate(record: &Value, pointer: &str) -> Result<Vec<String>, String> {
    let parsed = parse_pointer(pointer)?;
    if parsed.tokens.is_empty() {
        return Err("an obligation cannot treat the whole record".into());
    }
    let mut found = Vec::new();
    let tokens: Vec<&str> = parsed.tokens.iter().map(|t| &*t.key).collect();
    walk(record, &tokens, String::new(), &mut found);
    Ok(found)
}

fn walk(v: &Value, tokens: &[&str], at: String, found: &mut Vec<String>) {
    let Some((first, rest)) = tokens.split_first() else {
        found.push(at);
        return;
    };
    match v {
        Value::Object(m) => {
            if let Some(child) = m.get(*first) {
                walk(child, rest, format!("{at}/{}", escape(first)), found);
            }
        }
        Value::Array(items) if *first == "-" => {
            for (i, child) in items.iter().enumerate() {
                walk(child, rest, format!("{at}/{i}"), found);
            }
        }
        Value::Array(items) => {
            let index = (first.len() == 1 || !first.starts_with('0'))
                .then(|| first.parse::<usize>().ok())
                .flatten();
            if let Some(child) = index.and_then(|i| items.get(i)) {
                walk(child, rest, format!("{at}/{first}"), found);
            }
        }
        _ => {}
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Removes the member or item at a concrete pointer (present: [`locate`] found it).
fn remove(record: &mut Value, pointer: &str) {
    let Some(cut) = pointer.rfind('/') else {
        return;
    };
    let (parent, last) = (&pointer[..cut], &pointer[cut + 1..]);
    let last = last.replace("~1", "/").replace("~0", "~");
    match record.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.shift_remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < a.len()) {
                a.remove(i);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::pseudonym::scope;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn allow(obligations: Vec<Obligation>) -> Decision {
        Decision {
            effect: Effect::Allow,
            matched: vec![],
            obligations,
            policy_version: "t".into(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn zone() -> FixedOffset {
        FixedOffset::east_opt(8 * 3600).unwrap()
    }

    fn dest<'a>(keys: Option<&'a PseudonymKeys>, to: &'a str) -> Destination<'a> {
        Destination {
            keys,
            zone: zone(),
            to,
            now: at("2026-12-01T10:00:00+08:00"),
        }
    }

    fn keys() -> PseudonymKeys {
        PseudonymKeys::from(PseudonymKey::from_hex(KEY).unwrap())
    }

    fn pseudonymise(pointer: &str) -> Obligation {
        Obligation::Pseudonymise {
            pointer: pointer.into(),
            rule: "r".into(),
            purpose: None,
            linkable: false,
            reason: None,
        }
    }

    fn drop(pointer: &str) -> Obligation {
        Obligation::Drop {
            pointer: pointer.into(),
            rule: "r".into(),
        }
    }

    #[test]
    fn pseudonymise_then_drop_rewrites_the_record() {
        let k = keys();
        let mut rec = json!({"body": {"person_ref": "hkid:A1234567", "employer": "X", "keep": 1}});
        let d = allow(vec![
            drop("/body/employer"),
            pseudonymise("/body/person_ref"),
        ]);
        let done = apply(&dest(Some(&k), "hk"), &d, &mut rec).unwrap();
        let id = k.current().id();
        assert_eq!(
            rec["body"]["person_ref"],
            json!({"pseudonym": k.current().pseudonym("to:hk", "hkid:A1234567"), "key_id": id})
        );
        assert!(rec["body"].get("employer").is_none());
        assert_eq!(rec["body"]["keep"], json!(1));
        assert_eq!(
            done,
            vec![
                format!("pseudonymise /body/person_ref key {id} scope to:hk"),
                "drop /body/employer".to_string()
            ]
        );
        assert!(done.iter().all(|l| !l.contains("A1234567")));
    }

    #[test]
    fn the_destination_park_separates_pseudonyms_and_shared_ones_link() {
        let k = keys();
        let rec = json!({"body": {"person_ref": "passport:E12345678"}});
        let run = |o: Obligation, to: &str| {
            let mut r = rec.clone();
            let line = apply(&dest(Some(&k), to), &allow(vec![o]), &mut r).unwrap();
            (r["body"]["person_ref"]["pseudonym"].clone(), line)
        };
        let (hk, _) = run(pseudonymise("/body/person_ref"), "hk");
        let (sz, line) = run(pseudonymise("/body/person_ref"), "sz");
        assert_ne!(hk, sz);
        assert!(line[0].ends_with("scope to:sz"), "{line:?}");
        let purpose = Obligation::Pseudonymise {
            pointer: "/body/person_ref".into(),
            rule: "r".into(),
            purpose: Some("research".into()),
            linkable: false,
            reason: None,
        };
        let (research, line) = run(purpose, "hk");
        assert_ne!(research, hk);
        assert!(
            line[0].ends_with("scope to:hk/purpose:research"),
            "{line:?}"
        );
        let shared = Obligation::Pseudonymise {
            pointer: "/body/person_ref".into(),
            rule: "r".into(),
            purpose: None,
            linkable: true,
            reason: Some("joint cohort under agreement X".into()),
        };
        let (a, line) = run(shared.clone(), "hk");
        let (b, _) = run(shared, "sz");
        assert_eq!(a, b, "a linkable pseudonym is the same for both parks");
        assert_eq!(
            a,
            json!(k
                .current()
                .pseudonym(&scope("hk", None, true), "passport:E12345678"))
        );
        assert!(
            line[0].contains("scope shared reason: joint cohort under agreement X"),
            "{line:?}"
        );
    }

    #[test]
    fn during_an_overlap_the_previous_pseudonym_travels_beside_the_new_one() {
        let old = PseudonymKey::from_hex(&"22".repeat(32)).unwrap();
        let old_id = old.id().to_string();
        let old_pseudonym = old.pseudonym("to:hk", "hkid:A1234567");
        let k = PseudonymKeys::from(PseudonymKey::from_hex(KEY).unwrap())
            .with_previous(old, at("2026-12-02T00:00:00+08:00"));
        let d = allow(vec![pseudonymise("/body/p")]);
        let mut rec = json!({"body": {"p": "hkid:A1234567"}});
        let done = apply(&dest(Some(&k), "hk"), &d, &mut rec).unwrap();
        assert_eq!(
            rec["body"]["p"]["previous"],
            json!({"pseudonym": old_pseudonym, "key_id": old_id})
        );
        assert_eq!(rec["body"]["p"]["key_id"], json!(k.current().id()));
        assert!(done[0].ends_with(&format!("previous {old_id}")), "{done:?}");

        // After the overlap, only the current key.
        let mut later = dest(Some(&k), "hk");
        later.now = at("2026-12-02T00:00:00+08:00");
        let mut rec = json!({"body": {"p": "hkid:A1234567"}});
        let done = apply(&later, &d, &mut rec).unwrap();
        assert!(rec["body"]["p"].get("previous").is_none());
        assert!(!done[0].contains("previous"));
    }

    #[test]
    fn generalise_keeps_the_local_day_month_or_year() {
        let g = |v: &str, to| generalise(&json!(v), to, zone());
        // 23:30 UTC is already the next day in Shenzhen and Hong Kong.
        assert_eq!(
            g("2026-12-01T23:30:00Z", Granularity::Day).unwrap(),
            "2026-12-02"
        );
        assert_eq!(
            g("2026-12-01T09:00:00+08:00", Granularity::Day).unwrap(),
            "2026-12-01"
        );
        assert_eq!(
            g("2026-12-31T20:00:00Z", Granularity::Month).unwrap(),
            "2027-01"
        );
        assert_eq!(g("2026-12-01", Granularity::Month).unwrap(), "2026-12");
        assert_eq!(g("1990-06-15", Granularity::Year).unwrap(), "1990");
        assert!(g("yesterday", Granularity::Day).is_err());
        assert!(generalise(&json!(3), Granularity::Day, zone()).is_err());

        let d = allow(vec![
            Obligation::Generalise {
                pointer: "/body/entry_at".into(),
                rule: "r".into(),
                to: Granularity::Day,
            },
            Obligation::Keep {
                pointer: "/body/permit".into(),
                rule: "r".into(),
                basis: "Immigration Ordinance s.11".into(),
            },
        ]);
        let mut rec = json!({"body": {"entry_at": "2026-12-01T09:00:00+08:00", "permit": "ID9"}});
        let done = apply(&dest(None, "hk"), &d, &mut rec).unwrap();
        assert_eq!(
            rec["body"],
            json!({"entry_at": "2026-12-01", "permit": "ID9"})
        );
        assert_eq!(
            done,
            vec![
                "generalise /body/entry_at to day",
                "keep /body/permit basis: Immigration Ordinance s.11"
            ]
        );
        // A value that is no date cannot be generalised: the obligation fails (fail closed).
        let mut rec = json!({"body": {"entry_at": "soon"}});
        assert!(apply(&dest(None, "hk"), &d, &mut rec).is_err());
    }

    #[test]
    fn a_dash_treats_every_item_of_an_array() {
        let k = keys();
        let mut rec = json!({"body": {"people": [
            {"doc": "passport:A1", "name": "A"}, {"doc": "passport:B2", "name": "B"}, {"name": "C"}
        ]}});
        let d = allow(vec![
            pseudonymise("/body/people/-/doc"),
            drop("/body/people/-/name"),
        ]);
        apply(&dest(Some(&k), "sz"), &d, &mut rec).unwrap();
        let people = rec["body"]["people"].as_array().unwrap();
        assert_eq!(
            people[0]["doc"]["pseudonym"],
            json!(k.current().pseudonym("to:sz", "passport:A1"))
        );
        assert_eq!(
            people[1]["doc"]["pseudonym"],
            json!(k.current().pseudonym("to:sz", "passport:B2"))
        );
        assert_eq!(people[2], json!({}));
        assert!(people.iter().all(|p| p.get("name").is_none()));

        let mut rec = json!({"body": {"list": [1, 2, 3]}});
        apply(
            &dest(None, "sz"),
            &allow(vec![drop("/body/list/-")]),
            &mut rec,
        )
        .unwrap();
        assert_eq!(rec["body"]["list"], json!([]));
        let mut rec = json!({"body": {"list": [1, 2, 3], "a/b": 1}});
        apply(
            &dest(None, "sz"),
            &allow(vec![drop("/body/list/1"), drop("/body/a~1b")]),
            &mut rec,
        )
        .unwrap();
        assert_eq!(rec["body"], json!({"list": [1, 3]}));
    }

    #[test]
    fn missing_fields_are_reported_absent_and_objects_refused() {
        let k = keys();
        let mut rec = json!({"body": {"obj": {"a": 1}, "n": null}});
        let d = allow(vec![drop("/body/nope")]);
        assert_eq!(
            apply(&dest(Some(&k), "hk"), &d, &mut rec).unwrap(),
            vec!["drop /body/nope: absent"]
        );
        let d = allow(vec![pseudonymise("/body/n")]);
        assert_eq!(
            apply(&dest(Some(&k), "hk"), &d, &mut rec).unwrap(),
            vec!["pseudonymise /body/n: absent"]
        );
        let d = allow(vec![pseudonymise("/body/obj")]);
        assert!(apply(&dest(Some(&k), "hk"), &d, &mut rec).is_err());
        let d = allow(vec![pseudonymise("/body/obj/a")]);
        assert!(
            apply(&dest(None, "hk"), &d, &mut rec).is_err(),
            "no key: fail closed"
        );
        let mut n = json!({"body": {"obj": {"a": 7}}});
        apply(&dest(Some(&k), "hk"), &d, &mut n).unwrap();
        assert_eq!(
            n["body"]["obj"]["a"]["pseudonym"],
            json!(k.current().pseudonym("to:hk", "7"))
        );
    }
}
