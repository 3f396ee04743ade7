//! Unit tests of the language: every operator and combinator, setting folding, and the load-time
//! checks (each error names file, rule and key).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::compile::{load_texts, LoadedSet};
use super::{DecisionInput, Effect, KeyFiles, PolicyEngine, PolicyLoadError};
use crate::envelope::Kind;
use crate::tls::identity::ClientIdentity;

const MANIFEST: &str = r#"
version = "t1"
[settings.flag]
default = false
description = "a test flag"
"#;

fn schemas() -> BTreeMap<Kind, Value> {
    let body = json!({
        "type": "object",
        "properties": {
            "grade": {"type": "string", "enum": ["core", "general"]},
            "count": {"type": "integer"},
            "ratio": {"type": "number"},
            "flag": {"type": "boolean"},
            "start": {"type": "string", "format": "date"},
            "end": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "allowed": {"type": "array", "items": {"type": "string"}},
            "whitelist_id": {"type": "string"},
            "host": {"type": "object", "properties": {"name": {"type": "string"}}},
            "entry": {"type": "string", "format": "date-time"},
            "exit": {"type": "string", "format": "date-time"},
            "max_days": {"type": "integer"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
            "permits": {"type": "array", "items": {"type": "object", "properties": {
                "type": {"type": "string"}, "number": {"type": "string"}, "unit": {"type": "string"},
                "qty": {"type": "number"}, "valid_to": {"type": "string"}}}}
        },
        "$defs": {"item": {"type": "object", "properties": {
            "class": {"type": "string"}, "qty": {"type": "number"}, "unit": {"type": "string"},
            "refs": {"type": "array", "items": {"type": "string"}}}}}
    });
    Kind::ALL.iter().map(|k| (*k, body.clone())).collect()
}

fn load(rules: &str) -> Result<LoadedSet, PolicyLoadError> {
    load_with(rules, &BTreeMap::new())
}

fn load_with(
    rules: &str,
    settings: &BTreeMap<String, Value>,
) -> Result<LoadedSet, PolicyLoadError> {
    let files = vec![
        ("policy-set.toml".to_string(), MANIFEST.to_string()),
        ("rules.toml".to_string(), rules.to_string()),
    ];
    load_texts(&files, &schemas(), settings, "mem")
}

fn identity(park: &str, org: &str) -> ClientIdentity {
    ClientIdentity {
        park: park.into(),
        organisation: org.into(),
        subject: format!("CN=x, O={org}"),
        fingerprint_sha256: "ab".repeat(32),
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn record(body: Value) -> Value {
    json!({"record_id": "r", "kind": "data", "from": "sz", "to": "hk",
           "created_at": "2026-12-01T10:00:00+08:00", "body": body})
}

/// Whether a single allow rule with condition `cond` (TOML inline table) matches `body`.
fn holds_at(cond: &str, body: Value, now: &str) -> bool {
    let set = load(&allow_when(cond)).unwrap_or_else(|e| panic!("{cond}: {e}"));
    let d = decide_in(&set, None, "Org A", body, now);
    d.effect == Effect::Allow
}

/// Decides a data record with `body` from `org` of `sz` to `hk` at `now`.
fn decide_in(
    set: &LoadedSet,
    registry: Option<&crate::registry::Registry>,
    org: &str,
    body: Value,
    now: &str,
) -> super::Decision {
    let rec = record(body);
    let id = identity("sz", org);
    super::eval::decide(
        &set.set,
        registry,
        true,
        "v",
        &DecisionInput {
            identity: &id,
            record: &rec,
            kind: Kind::Data,
            from: "sz",
            to: "hk",
            now: at(now),
        },
    )
}

fn holds(cond: &str, body: Value) -> bool {
    holds_at(cond, body, "2026-12-01T10:00:00+08:00")
}

// === operators ===

#[test]
fn equals_compares_strings_bools_and_numbers_by_value() {
    assert!(holds(
        r#"{ field = "/body/grade", equals = "core" }"#,
        json!({"grade": "core"})
    ));
    assert!(!holds(
        r#"{ field = "/body/grade", equals = "core" }"#,
        json!({"grade": "general"})
    ));
    assert!(holds(
        r#"{ field = "/body/flag", equals = true }"#,
        json!({"flag": true})
    ));
    assert!(holds(
        r#"{ field = "/body/count", equals = 100000 }"#,
        json!({"count": 100000.0})
    ));
    assert!(!holds(
        r#"{ field = "/body/grade", equals = "core" }"#,
        json!({})
    ));
}

#[test]
fn one_of_matches_any_listed_value() {
    let c = r#"{ field = "/body/grade", one_of = ["core", "important"] }"#;
    assert!(holds(c, json!({"grade": "core"})));
    assert!(!holds(c, json!({"grade": "general"})));
    assert!(!holds(c, json!({"grade": 1})));
}

#[test]
fn numeric_comparisons_on_integers_and_floats_at_the_boundary() {
    let body = |n: Value| json!({"count": n});
    assert!(holds(
        r#"{ field = "/body/count", gte = 100000 }"#,
        body(json!(100000))
    ));
    assert!(!holds(
        r#"{ field = "/body/count", gt = 100000 }"#,
        body(json!(100000))
    ));
    assert!(holds(
        r#"{ field = "/body/count", lte = 100000 }"#,
        body(json!(100000))
    ));
    assert!(!holds(
        r#"{ field = "/body/count", lt = 100000 }"#,
        body(json!(100000))
    ));
    assert!(holds(
        r#"{ field = "/body/ratio", lt = 0.5 }"#,
        json!({"ratio": 0.25})
    ));
    assert!(holds(
        r#"{ field = "/body/ratio", gte = 1 }"#,
        json!({"ratio": 1.0})
    ));
    assert!(
        !holds(
            r#"{ field = "/body/count", gte = 1 }"#,
            json!({"count": "5"})
        ),
        "strings are not numbers"
    );
}

#[test]
fn numeric_comparison_with_another_field() {
    let c = r#"{ field = "/body/count", lte = { field = "/body/ratio" } }"#;
    assert!(holds(c, json!({"count": 3, "ratio": 3.0})));
    assert!(!holds(c, json!({"count": 4, "ratio": 3.0})));
    assert!(!holds(c, json!({"count": 4})), "missing operand: false");
}

#[test]
fn exists_and_absent_treat_null_as_absent() {
    assert!(holds(
        r#"{ field = "/body/name", exists = true }"#,
        json!({"name": "x"})
    ));
    assert!(!holds(
        r#"{ field = "/body/name", exists = true }"#,
        json!({"name": null})
    ));
    assert!(holds(
        r#"{ field = "/body/name", absent = true }"#,
        json!({})
    ));
    assert!(holds(
        r#"{ field = "/body/name", exists = false }"#,
        json!({"name": null})
    ));
    assert!(!holds(
        r#"{ field = "/body/name", absent = true }"#,
        json!({"name": ""})
    ));
}

#[test]
fn dates_against_now_are_inclusive_on_the_decision_date() {
    let c = r#"{ field = "/body/end", date_on_or_after = "now" }"#;
    assert!(holds(c, json!({"end": "2026-12-01"})));
    assert!(!holds(c, json!({"end": "2026-11-30"})));
    assert!(holds(
        r#"{ field = "/body/end", date_before = "now" }"#,
        json!({"end": "2026-11-30"})
    ));
    assert!(holds(
        r#"{ field = "/body/end", date_after = "now" }"#,
        json!({"end": "2026-12-02"})
    ));
    assert!(holds(
        r#"{ field = "/body/end", date_on_or_before = "now" }"#,
        json!({"end": "2026-12-01"})
    ));
    assert!(holds(
        r#"{ field = "/body/end", date_on = "now" }"#,
        json!({"end": "2026-12-01"})
    ));
    assert!(!holds(c, json!({"end": "not a date"})));
}

#[test]
fn dates_with_offsets_and_literals() {
    assert!(holds(
        r#"{ field = "/body/end", date_on_or_after = "now + 30 days" }"#,
        json!({"end": "2026-12-31"})
    ));
    assert!(!holds(
        r#"{ field = "/body/end", date_on_or_after = "now + 30 days" }"#,
        json!({"end": "2026-12-30"})
    ));
    assert!(holds(
        r#"{ field = "/body/end", date_after = "now - 1 year" }"#,
        json!({"end": "2025-12-02"})
    ));
    assert!(holds(
        r#"{ field = "/body/end", date_before = "2024-05-01" }"#,
        json!({"end": "2024-04-30"})
    ));
    // Friday 4 Dec 2026 + 1 working day = Monday 7 Dec.
    assert!(holds_at(
        r#"{ field = "/body/end", date_on = "now + 1 working day" }"#,
        json!({"end": "2026-12-07"}),
        "2026-12-04T09:00:00+08:00"
    ));
}

#[test]
fn date_times_compare_as_instants() {
    let c = r#"{ field = "/body/at", date_before = "now" }"#;
    assert!(holds(c, json!({"at": "2026-12-01T09:59:59+08:00"})));
    assert!(!holds(c, json!({"at": "2026-12-01T10:00:01+08:00"})));
    assert!(holds(c, json!({"at": "2026-12-01T01:59:59Z"})));
}

#[test]
fn dates_against_another_field_with_working_days_and_years() {
    let c = r#"{ field = "/body/end", date_on_or_before = { field = "/body/start", working_days = 10 } }"#;
    // Tuesday 1 Sep 2026 + 10 working days = Tuesday 15 Sep.
    assert!(holds(
        c,
        json!({"start": "2026-09-01", "end": "2026-09-15"})
    ));
    assert!(!holds(
        c,
        json!({"start": "2026-09-01", "end": "2026-09-16"})
    ));
    let y = r#"{ field = "/body/end", date_after = { field = "/body/start", years = 3 } }"#;
    assert!(!holds(
        y,
        json!({"start": "2024-03-01", "end": "2027-03-01"})
    ));
    assert!(holds(
        y,
        json!({"start": "2024-03-01", "end": "2027-03-02"})
    ));
    assert!(
        !holds(y, json!({"end": "2027-03-02"})),
        "missing operand field: false"
    );
}

#[test]
fn any_item_and_every_item() {
    let any = r#"{ field = "/body/items", any_item = { item = "/class", equals = "lab_animal" } }"#;
    let every = r#"{ field = "/body/items", every_item = { item = "/qty", lte = 10 } }"#;
    let items =
        json!({"items": [{"class": "chemical", "qty": 5}, {"class": "lab_animal", "qty": 10}]});
    assert!(holds(any, items.clone()));
    assert!(holds(every, items));
    assert!(!holds(any, json!({"items": [{"class": "chemical"}]})));
    assert!(!holds(every, json!({"items": [{"qty": 11}, {"qty": 1}]})));
    assert!(
        holds(every, json!({"items": []})),
        "every item of none holds"
    );
    assert!(!holds(any, json!({"items": []})));
    assert!(!holds(every, json!({"items": "not an array"})));
}

#[test]
fn nested_item_scopes_see_the_outer_item() {
    let c = r#"{ field = "/body/items", any_item = { field = "/body/permits", any_item = { item = "/qty", lt = { outer_item = "/qty" } } } }"#;
    assert!(holds(
        c,
        json!({"items": [{"qty": 5}], "permits": [{"qty": 4}]})
    ));
    assert!(!holds(
        c,
        json!({"items": [{"qty": 5}], "permits": [{"qty": 5}]})
    ));
}

#[test]
fn contains_member_of_and_same_as() {
    assert!(holds(
        r#"{ field = "/body/tags", contains = "genetic" }"#,
        json!({"tags": ["a", "genetic"]})
    ));
    assert!(!holds(
        r#"{ field = "/body/tags", contains = "genetic" }"#,
        json!({"tags": ["a"]})
    ));
    let m = r#"{ field = "/body/name", member_of = { field = "/body/allowed" } }"#;
    assert!(holds(m, json!({"name": "x", "allowed": ["x", "y"]})));
    assert!(!holds(m, json!({"name": "z", "allowed": ["x", "y"]})));
    let every = r#"{ field = "/body/tags", every_item = { item = "", member_of = { field = "/body/allowed" } } }"#;
    assert!(holds(every, json!({"tags": ["x"], "allowed": ["x", "y"]})));
    assert!(!holds(
        every,
        json!({"tags": ["x", "q"], "allowed": ["x", "y"]})
    ));
    let same = r#"{ field = "/body/name", same_as = { field = "/body/grade" } }"#;
    assert!(holds(same, json!({"name": "core", "grade": "core"})));
    assert!(!holds(same, json!({"name": "core", "grade": "general"})));
}

#[test]
fn identity_and_envelope_fields() {
    assert!(holds(
        r#"{ identity = "organisation", one_of = ["Org A", "Org B"] }"#,
        json!({})
    ));
    assert!(!holds(r#"{ identity = "park", equals = "hk" }"#, json!({})));
    assert!(holds(r#"{ field = "/from", equals = "sz" }"#, json!({})));
}

// === combinators ===

#[test]
fn all_any_not_and_implicit_all() {
    let b = json!({"grade": "core", "count": 5});
    assert!(holds(
        r#"{ all = [{ field = "/body/grade", equals = "core" }, { field = "/body/count", equals = 5 }] }"#,
        b.clone()
    ));
    assert!(!holds(
        r#"{ all = [{ field = "/body/grade", equals = "core" }, { field = "/body/count", equals = 6 }] }"#,
        b.clone()
    ));
    assert!(holds(
        r#"{ any = [{ field = "/body/grade", equals = "x" }, { field = "/body/count", equals = 5 }] }"#,
        b.clone()
    ));
    assert!(!holds(
        r#"{ any = [{ field = "/body/grade", equals = "x" }, { field = "/body/count", equals = 6 }] }"#,
        b.clone()
    ));
    assert!(holds(
        r#"{ not = { field = "/body/grade", equals = "general" } }"#,
        b.clone()
    ));
    assert!(!holds(
        r#"{ not = { field = "/body/grade", equals = "core" } }"#,
        b.clone()
    ));
    assert!(holds(
        r#"[{ field = "/body/grade", equals = "core" }, { not = { field = "/body/name", exists = true } }]"#,
        b
    ));
}

#[test]
fn settings_fold_into_constants_and_overrides_apply() {
    let rules = "[[rule]]\nid = \"r\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\nwhen = { setting = \"flag\", equals = true }\n";
    let off = load(rules).unwrap();
    assert_eq!(off.set.rules[0].when, super::compile::Cond::Const(false));
    let on = load_with(rules, &BTreeMap::from([("flag".to_string(), json!(true))])).unwrap();
    assert_eq!(on.set.rules[0].when, super::compile::Cond::Const(true));
    assert!(matches!(
        load_with(rules, &BTreeMap::from([("nope".to_string(), json!(true))])),
        Err(PolicyLoadError::Setting { name, .. }) if name == "nope"
    ));
    assert!(matches!(
        load_with(rules, &BTreeMap::from([("flag".to_string(), json!("yes"))])),
        Err(PolicyLoadError::Setting { .. })
    ));
}

#[test]
fn deny_overrides_allow_and_default_deny_is_visible() {
    let rules = r#"
[[rule]]
id = "allow-all"
effect = "allow"
reason = "ok"
regulation = "r"
[[rule]]
id = "deny-core"
effect = "deny"
reason = "core"
regulation = "r"
when = { field = "/body/grade", equals = "core" }
[[rule]]
id = "hk-only"
effect = "allow"
reason = "hk"
regulation = "r"
match = { from = "hk" }
"#;
    let set = load(rules).unwrap();
    let id = identity("sz", "O");
    let run = |body: Value, from: &str| {
        let rec = record(body);
        super::eval::decide(
            &set.set,
            None,
            true,
            "v",
            &DecisionInput {
                identity: &id,
                record: &rec,
                kind: Kind::Data,
                from,
                to: "hk",
                now: at("2026-12-01T00:00:00Z"),
            },
        )
    };
    let d = run(json!({"grade": "core"}), "sz");
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.rule_ids(), vec!["allow-all", "deny-core"]);
    let d = run(json!({"grade": "general"}), "sz");
    assert_eq!(d.effect, Effect::Allow);
    let only_hk = load(&rules.replace(
        "[[rule]]\nid = \"allow-all\"\neffect = \"allow\"\nreason = \"ok\"\nregulation = \"r\"\n",
        "",
    ))
    .unwrap();
    let rec = record(json!({}));
    let d = super::eval::decide(
        &only_hk.set,
        None,
        true,
        "v",
        &DecisionInput {
            identity: &id,
            record: &rec,
            kind: Kind::Data,
            from: "sz",
            to: "hk",
            now: at("2026-12-01T00:00:00Z"),
        },
    );
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.rule_ids(), vec![super::DEFAULT_DENY_ID]);
    assert_eq!(d.matched[0].reason, "no rule allows this flow");
}

#[test]
fn route_match_on_kind_organisation_and_park() {
    let rules = r#"
[[rule]]
id = "lab"
effect = "allow"
reason = "ok"
regulation = "r"
match = { kind = ["data"], from = "sz", to = ["hk"], organisation = ["Org A"], park = "sz" }
"#;
    let set = load(rules).unwrap();
    let rec = record(json!({}));
    let decide = |org: &str, kind: Kind, to: &str| {
        let id = identity("sz", org);
        super::eval::decide(
            &set.set,
            None,
            true,
            "v",
            &DecisionInput {
                identity: &id,
                record: &rec,
                kind,
                from: "sz",
                to,
                now: at("2026-12-01T00:00:00Z"),
            },
        )
        .effect
    };
    assert_eq!(decide("Org A", Kind::Data, "hk"), Effect::Allow);
    assert_eq!(decide("Org B", Kind::Data, "hk"), Effect::Deny);
    assert_eq!(decide("Org A", Kind::Talent, "hk"), Effect::Deny);
    assert_eq!(decide("Org A", Kind::Data, "sz"), Effect::Deny);
}

// === load-time checks ===

/// Obligations, pseudonym scopes and keys, and the treatment of identifying fields.
mod treatments;

fn load_err(rules: &str) -> (String, String, String) {
    match load(rules) {
        Err(PolicyLoadError::Rule {
            file, rule, key, ..
        }) => (file, rule, key),
        Err(e) => panic!("expected a rule error, got {e}"),
        Ok(_) => panic!("expected an error for:\n{rules}"),
    }
}

const HEAD: &str = "[[rule]]\nid = \"R1\"\neffect = \"deny\"\nreason = \"x\"\nregulation = \"y\"\n";

#[test]
fn unknown_rule_key_is_named() {
    let (file, rule, key) = load_err(&format!("{HEAD}colour = \"red\"\n"));
    assert_eq!(
        (file.as_str(), rule.as_str(), key.as_str()),
        ("mem/rules.toml", "R1", "colour")
    );
}

#[test]
fn bad_operator_is_named_with_its_path() {
    let (_, _, key) = load_err(&format!(
        "{HEAD}when = {{ all = [{{ field = \"/body/grade\", eqals = \"core\" }}] }}\n"
    ));
    assert_eq!(key, "when.all[0].eqals");
}

#[test]
fn bad_pointer_is_an_error() {
    let (_, _, key) = load_err(&format!(
        "{HEAD}when = {{ field = \"body/grade\", equals = \"core\" }}\n"
    ));
    assert_eq!(key, "when.field");
    let (_, _, key) = load_err(&format!(
        "{HEAD}when = {{ field = \"/body/a~2b\", equals = 1 }}\n"
    ));
    assert_eq!(key, "when.field");
}

#[test]
fn field_missing_from_the_schema_is_an_error() {
    let (_, _, key) = load_err(&format!(
        "{HEAD}when = {{ field = \"/body/grde\", equals = \"core\" }}\n"
    ));
    assert_eq!(key, "when.field");
    let (_, _, key) = load_err(&format!(
        "{HEAD}when = {{ field = \"/body/items\", any_item = {{ item = \"/clas\", equals = \"x\" }} }}\n"
    ));
    assert_eq!(key, "when.any_item.item");
}

#[test]
fn item_outside_a_scope_and_non_array_scopes_are_errors() {
    let (_, _, key) = load_err(&format!(
        "{HEAD}when = {{ item = \"/class\", equals = \"x\" }}\n"
    ));
    assert_eq!(key, "when.item");
    let (_, _, key) = load_err(&format!(
        "{HEAD}when = {{ field = \"/body/name\", any_item = {{ item = \"\", equals = \"x\" }} }}\n"
    ));
    assert_eq!(key, "when.any_item");
}

#[test]
fn bad_operands_are_errors() {
    for (cond, key) in [
        ("{ field = \"/body/count\", gte = \"many\" }", "when.gte"),
        (
            "{ field = \"/body/end\", date_before = \"tomorrow\" }",
            "when.date_before",
        ),
        ("{ field = \"/body/grade\", one_of = [] }", "when.one_of"),
        (
            "{ field = \"/body/name\", exists = \"yes\" }",
            "when.exists",
        ),
        (
            "{ field = \"/body/grade\", equals = \"a\", one_of = [\"b\"] }",
            "when",
        ),
        ("{ setting = \"nope\", equals = true }", "when.setting"),
        ("{ identity = \"email\", equals = \"x\" }", "when.identity"),
        ("{ any = [] }", "when.any"),
    ] {
        let (_, _, k) = load_err(&format!("{HEAD}when = {cond}\n"));
        assert_eq!(k, key, "{cond}");
    }
}

#[test]
fn duplicate_ids_are_errors() {
    let (_, rule, key) = load_err(&format!("{HEAD}{HEAD}"));
    assert_eq!((rule.as_str(), key.as_str()), ("R1", "id"));
}

#[test]
fn obligations_only_on_allow_and_only_under_body() {
    let (_, _, key) = load_err(&format!(
        "{HEAD}obligations = [{{ drop = \"/body/name\" }}]\n"
    ));
    assert_eq!(key, "obligations");
    let allow = HEAD.replace("deny", "allow");
    let (_, _, key) = load_err(&format!("{allow}obligations = [{{ drop = \"/from\" }}]\n"));
    assert_eq!(key, "obligations[0].drop");
    let (_, _, key) = load_err(&format!(
        "{allow}obligations = [{{ shred = \"/body/name\" }}]\n"
    ));
    assert_eq!(key, "obligations[0]");
    let (_, _, key) = load_err(&format!(
        "{allow}obligations = [{{ pseudonymise = \"/body/nmae\" }}]\n"
    ));
    assert_eq!(key, "obligations[0].pseudonymise");
}

#[test]
fn missing_key_fails_closed_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy-set.toml"), MANIFEST).unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nid = \"A\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\nobligations = [{ pseudonymise = \"/body/name\" }]\n",
    )
    .unwrap();
    let engine = PolicyEngine::load_with(
        dir.path(),
        &schemas(),
        &BTreeMap::new(),
        &KeyFiles::default(),
    )
    .unwrap();
    assert_eq!(engine.warnings().len(), 1);
    assert!(engine.warnings()[0].contains("A"));
    let rec = record(json!({"name": "E1234567"}));
    let id = identity("sz", "O");
    let d = engine.decide(&DecisionInput {
        identity: &id,
        record: &rec,
        kind: Kind::Data,
        from: "sz",
        to: "hk",
        now: at("2026-12-01T00:00:00Z"),
    });
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.rule_ids(), vec!["A", super::KEY_MISSING_ID]);
    assert!(d.obligations.is_empty());

    let key = dir.path().join("pseudo.key");
    crate::key_file::write_private(&key, format!("{}\n", "5a".repeat(32)).as_bytes()).unwrap();
    let engine = PolicyEngine::load_with(
        dir.path(),
        &schemas(),
        &BTreeMap::new(),
        &KeyFiles::current_only(Some(&key)),
    )
    .unwrap();
    assert!(engine.warnings().is_empty());
    let d = engine.decide(&DecisionInput {
        identity: &id,
        record: &rec,
        kind: Kind::Data,
        from: "sz",
        to: "hk",
        now: at("2026-12-01T00:00:00Z"),
    });
    assert_eq!(d.effect, Effect::Allow);
    let mut forwarded = rec.clone();
    let now = at("2026-12-01T00:00:00Z");
    let done = engine
        .apply_obligations(&d, &mut forwarded, "hk", now)
        .unwrap();
    let key_id = engine.pseudonymisation_keys().unwrap().current().id();
    assert_eq!(
        done,
        vec![format!("pseudonymise /body/name key {key_id} scope to:hk")]
    );
    assert_eq!(forwarded["body"]["name"]["key_id"], json!(key_id));
    assert_ne!(forwarded["body"]["name"], rec["body"]["name"]);
    assert!(
        !format!("{engine:?}").contains("5a5a"),
        "the key never shows in Debug"
    );
}

#[test]
fn version_and_hash_follow_the_content() {
    let a = load("").unwrap();
    let b = load("# a comment\n").unwrap();
    assert_eq!(a.declared_version, "t1");
    assert_eq!(a.hash.len(), 64);
    assert_ne!(a.hash, b.hash);
    assert_eq!(a.hash, load("").unwrap().hash);
}

// === round 3: registry, offsets from fields, calendar comparisons, sums, cites ===

const REGISTRY: &str = r#"
[[organisation]]
park = "sz"
name = "Org A"
whitelist_ids = ["HT-SZ-INST-2025-0147"]

[[organisation]]
park = "hk"
name = "Host Ltd."
authorised_host = true
"#;

/// Decides `body` under one allow rule with condition `cond`, as sender `org` of `sz`, with or
/// without the test registry; returns the decision.
fn decide_with_registry(rules: &str, body: Value, org: &str, registry: bool) -> super::Decision {
    let set = load(rules).unwrap_or_else(|e| panic!("{e}"));
    let reg = crate::registry::Registry::parse(REGISTRY, None).unwrap();
    decide_in(
        &set,
        registry.then_some(&reg),
        org,
        body,
        "2026-12-01T10:00:00+08:00",
    )
}

fn allow_when(cond: &str) -> String {
    format!("[[rule]]\nid = \"r\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\nwhen = {cond}\n")
}

#[test]
fn registry_member_of_reads_the_senders_entry_and_fails_closed_without_it() {
    let rule = allow_when(
        r#"{ field = "/body/whitelist_id", member_of = { registry = "whitelist_ids" } }"#,
    );
    let held = json!({"whitelist_id": "HT-SZ-INST-2025-0147"});
    let made_up = json!({"whitelist_id": "HT-SZ-INST-2099-9999"});
    let allows = |body: &Value, org: &str, reg: bool| {
        decide_with_registry(&rule, body.clone(), org, reg).effect == Effect::Allow
    };
    assert!(allows(&held, "Org A", true));
    assert!(
        !allows(&made_up, "Org A", true),
        "an id the sender does not hold"
    );
    assert!(
        !allows(&held, "Org B", true),
        "a sender the registry does not know"
    );
    assert!(!allows(&held, "Org A", false), "no registry at all");
}

#[test]
fn registry_of_reads_the_entry_of_an_organisation_the_record_names() {
    let rule =
        allow_when(r#"{ registry = "authorised_host", of = "/body/host/name", equals = true }"#);
    let allows = |name: &str| {
        decide_with_registry(&rule, json!({"host": {"name": name}}), "Org A", true).effect
            == Effect::Allow
    };
    assert!(allows("Host Ltd."));
    assert!(!allows("Unknown Host Ltd."));
    // An entry without the attribute cannot say: the test is false, `not` of it true.
    let deny_unless =
        "[[rule]]\nid = \"d\"\neffect = \"deny\"\nreason = \"x\"\nregulation = \"y\"\n\
        when = { not = { registry = \"authorised_host\", equals = true } }\n\
        [[rule]]\nid = \"a\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\n";
    let d = decide_with_registry(deny_unless, json!({}), "Org A", true);
    assert_eq!(d.rule_ids(), vec!["d", "a"]);
}

#[test]
fn registry_sources_are_checked_at_load() {
    for (cond, needle) in [
        (
            r#"{ registry = "whitelist", exists = true }"#,
            "registry attribute",
        ),
        (
            r#"{ field = "/body/name", of = "/body/host/name", exists = true }"#,
            "only qualifies",
        ),
        (
            r#"{ registry = "ciio", of = "/body/nowhere", exists = true }"#,
            "no such field",
        ),
        (
            r#"{ registry = "permits", any_item = { item = "", equals = "x" } }"#,
            "member_of",
        ),
    ] {
        let e = load(&allow_when(cond))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(needle), "{cond}: {e}");
    }
}

#[test]
fn engine_without_registry_warns_which_rules_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy-set.toml"), MANIFEST).unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        allow_when(r#"{ registry = "ciio", equals = false }"#),
    )
    .unwrap();
    let e = PolicyEngine::load_with_key(dir.path(), &schemas(), &BTreeMap::new(), None).unwrap();
    let version_before = e.version().to_string();
    let e = e.with_registry(None);
    assert!(e
        .warnings()
        .iter()
        .any(|w| w.contains("registry") && w.contains('r')));
    let reg = crate::registry::Registry::parse(REGISTRY, None).unwrap();
    let e = e.with_registry(Some(std::sync::Arc::new(reg)));
    assert!(e
        .warnings()
        .iter()
        .all(|w| !w.contains("no organisation registry")));
    assert_ne!(
        e.version(),
        version_before,
        "the version covers the registry"
    );
}

#[test]
fn date_offsets_can_come_from_a_field() {
    // The stay (entry to exit) is longer than the record's own max_days.
    let cond = r#"{ field = "/body/exit", date_after = { field = "/body/entry", days = { field = "/body/max_days" }, calendar = true } }"#;
    let body = |exit: &str, max: Value| json!({"entry": "2026-12-01T09:00:00+08:00", "exit": exit, "max_days": max});
    let now = "2026-12-01T10:00:00+08:00";
    assert!(!holds_at(
        cond,
        body("2026-12-08T23:00:00+08:00", json!(7)),
        now
    ));
    assert!(holds_at(
        cond,
        body("2026-12-09T00:30:00+08:00", json!(7)),
        now
    ));
    // A missing offset makes the test false.
    assert!(!holds_at(
        cond,
        json!({"entry": "2026-12-01T09:00:00+08:00", "exit": "2027-01-01T09:00:00+08:00"}),
        now
    ));
}

#[test]
fn calendar_comparisons_count_local_dates_not_hours() {
    // 30 nights from 1 December (+08:00) is 31 December, whatever the hour of exit that day.
    let longer_than_30 = r#"{ field = "/body/exit", date_after = { field = "/body/entry", days = 30, calendar = true } }"#;
    let instants = r#"{ field = "/body/exit", date_after = { field = "/body/entry", days = 30 } }"#;
    let now = "2026-12-01T10:00:00+08:00";
    let b = |exit: &str| json!({"entry": "2026-12-01T09:00:00+08:00", "exit": exit});
    assert!(!holds_at(
        longer_than_30,
        b("2026-12-31T23:00:00+08:00"),
        now
    ));
    assert!(holds_at(instants, b("2026-12-31T23:00:00+08:00"), now));
    assert!(holds_at(
        longer_than_30,
        b("2027-01-01T00:10:00+08:00"),
        now
    ));
    // 2026-12-31T16:30Z is already 1 January in Shenzhen.
    assert!(holds_at(longer_than_30, b("2026-12-31T16:30:00Z"), now));
}

#[test]
fn sums_compare_a_permit_with_the_items_that_cite_it() {
    let over = r#"{ field = "/body/permits", any_item = { item = "/qty", lt = { sum = "/body/items", of = "/qty", where = { outer_item = "/number", member_of = { item = "/refs" } } } } }"#;
    let body = |a: f64, b: f64| {
        json!({
            "permits": [{"number": "P1", "qty": 100}, {"number": "P2", "qty": 5}],
            "items": [
                {"qty": a, "refs": ["P1"]},
                {"qty": b, "refs": ["P1"]},
                {"qty": 1000, "refs": []}
            ]
        })
    };
    let now = "2026-12-01T10:00:00+08:00";
    assert!(
        !holds_at(over, body(60.0, 40.0), now),
        "exactly the approved quantity"
    );
    assert!(
        holds_at(over, body(60.0, 41.0), now),
        "one over, summed across items"
    );
    let bad = r#"{ field = "/body/permits", any_item = { item = "/qty", lt = { sum = "/body/items", of = "/nowhere" } } }"#;
    let e = load(&allow_when(bad))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("no such field"), "{e}");
}

#[test]
fn cites_show_the_approvals_an_allow_rests_on() {
    let rules = r#"
[[rule]]
id = "a"
effect = "allow"
reason = "Permits checked"
regulation = "y"
cites = [
  { label = "export approval", field = "/body/permits", where = { item = "/type", equals = "export" }, value = "/number" },
  { label = "host", field = "/body/host/name" },
  { label = "nothing", field = "/body/name" },
]
"#;
    let body = json!({
        "permits": [
            {"type": "export", "number": "EX-1"},
            {"type": "import", "number": "IM-1"},
            {"type": "export", "number": "EX-2\u{0007}\u{202e}"}
        ],
        "host": {"name": "Host Ltd."}
    });
    let d = decide_with_registry(rules, body, "Org A", true);
    assert_eq!(
        d.matched[0].reason,
        "Permits checked; rests on: export approval EX-1, EX-2; host Host Ltd."
    );
    let long = json!({"host": {"name": "x".repeat(500)}});
    let d = decide_with_registry(rules, long, "Org A", true);
    assert!(
        d.matched[0].reason.chars().count() < 140,
        "{}",
        d.matched[0].reason
    );
}
