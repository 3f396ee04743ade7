//! Obligations with their qualifiers (purpose, linkable, generalise, keep), pseudonyms per
//! destination park with key ids and rotation, and the load-time rule that every allow treats
//! the fields the schemas mark `x-hetao-identifying` — with in-memory schemas.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::super::compile::load_texts;
use super::super::pseudonym::{PseudonymKey, PseudonymKeys};
use super::super::{DecisionInput, Effect, Obligation, PolicyEngine, PolicyLoadError};
use super::{at, identity, load, MANIFEST};
use crate::envelope::Kind;

const KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const NOW: &str = "2026-12-01T10:00:00+08:00";

/// Talent bodies mark identifying fields; the other kinds mark none.
fn annotated() -> BTreeMap<Kind, Value> {
    let talent = json!({
        "type": "object",
        "$defs": {
            "doc_no": {"type": "string", "x-hetao-identifying": "direct"},
            "companion": {"type": "object", "properties": {
                "passport_no": {"$ref": "#/$defs/doc_no"},
                "relation": {"type": "string"}
            }}
        },
        "properties": {
            "person_ref": {"type": "string", "x-hetao-identifying": "direct"},
            "entry_at": {"type": "string", "format": "date-time", "x-hetao-identifying": "linkable"},
            "permit_no": {"$ref": "#/$defs/doc_no"},
            "purpose": {"type": "string"},
            "visit_days": {"type": "integer"},
            "contact": {"type": "object", "properties": {
                "phone": {"type": "string", "x-hetao-identifying": "direct"},
                "email": {"type": "string", "x-hetao-identifying": "direct"}
            }},
            "companions": {"type": "array", "items": {"$ref": "#/$defs/companion"}}
        }
    });
    let plain = json!({"type": "object", "properties": {"name": {"type": "string"}}});
    BTreeMap::from([
        (Kind::Talent, talent),
        (Kind::Materials, plain.clone()),
        (Kind::Data, plain),
    ])
}

fn load_annotated(rules: &str) -> Result<(), PolicyLoadError> {
    let files = vec![
        ("policy-set.toml".to_string(), MANIFEST.to_string()),
        ("rules.toml".to_string(), rules.to_string()),
    ];
    load_texts(&files, &annotated(), &BTreeMap::new(), "mem").map(|_| ())
}

fn allow_talent(obligations: &str) -> String {
    format!(
        "[[rule]]\nid = \"T.crossing\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\n\
         match = {{ kind = \"talent\" }}\nobligations = {obligations}\n"
    )
}

/// The treatments the annotated talent schema needs, each a different way.
const ALL_TREATED: &str = r#"[
  { pseudonymise = "/body/person_ref" },
  { generalise = "/body/entry_at", to = "day" },
  { keep = "/body/permit_no", basis = "Immigration Ordinance (Cap. 115) s.11: the permit is checked at entry" },
  { drop = "/body/contact" },
  { pseudonymise = "/body/companions/-/passport_no", purpose = "entry-check" },
]"#;

/// An engine over the annotated schemas (the set in a folder), with `keys`.
fn engine(rules: &str, keys: Option<PseudonymKeys>) -> PolicyEngine {
    engine_over(annotated(), rules, keys)
}

/// The talent schema with only `person_ref` marked.
fn person_ref_marked() -> BTreeMap<Kind, Value> {
    let talent = json!({"type": "object", "properties": {
        "person_ref": {"type": "string", "x-hetao-identifying": "direct"},
        "purpose": {"type": "string"}
    }});
    let mut schemas = annotated();
    schemas.insert(Kind::Talent, talent);
    schemas
}

fn engine_over(
    schemas: BTreeMap<Kind, Value>,
    rules: &str,
    keys: Option<PseudonymKeys>,
) -> PolicyEngine {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy-set.toml"), MANIFEST).unwrap();
    std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
    PolicyEngine::load_with_keys(dir.path(), &schemas, &BTreeMap::new(), keys).unwrap()
}

fn keys() -> PseudonymKeys {
    PseudonymKeys::from(PseudonymKey::from_hex(KEY).unwrap())
}

fn talent(to: &str, body: Value) -> Value {
    let from = if to == "hk" { "sz" } else { "hk" };
    json!({"record_id": "r", "kind": "talent", "from": from, "to": to,
           "created_at": NOW, "body": body})
}

/// Decides and applies `record` as the gateway would; the forwarded record and audit lines.
fn forward(e: &PolicyEngine, record: &Value) -> (Value, Vec<String>) {
    let id = identity(record["from"].as_str().unwrap(), "Org");
    let to = record["to"].as_str().unwrap();
    let d = e.decide(&DecisionInput {
        identity: &id,
        record,
        kind: Kind::Talent,
        from: record["from"].as_str().unwrap(),
        to,
        now: at(NOW),
    });
    assert_eq!(d.effect, Effect::Allow, "{d:?}");
    let mut out = record.clone();
    let lines = e.apply_obligations(&d, &mut out, to, at(NOW)).unwrap();
    (out, lines)
}

fn rule_error(rules: &str) -> (String, String) {
    match load_annotated(rules) {
        Err(PolicyLoadError::Rule {
            rule, key, message, ..
        }) => (rule, format!("{key}: {message}")),
        Err(e) => panic!("expected a rule error, got {e}"),
        Ok(()) => panic!("expected an error for:\n{rules}"),
    }
}

// === obligation syntax ===

#[test]
fn obligations_take_their_qualifiers_and_nothing_else() {
    for ok in [
        r#"[{ pseudonymise = "/body/name", purpose = "research" }]"#,
        r#"[{ pseudonymise = "/body/name", linkable = true, reason = "joint cohort, DPA 2026-07" }]"#,
        r#"[{ pseudonymise = "/body/name", linkable = false }]"#,
        r#"[{ generalise = "/body/at", to = "day" }, { generalise = "/body/start", to = "month" }]"#,
        r#"[{ keep = "/body/name", basis = "PDPO s.62" }, { drop = "/body/tags/-" }]"#,
    ] {
        let rules = format!(
            "[[rule]]\nid = \"A\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\nobligations = {ok}\n"
        );
        if let Err(e) = load(&rules) {
            panic!("{ok}: {e}");
        }
    }
    for (bad, key, needle) in [
        (
            r#"[{ pseudonymise = "/body/name", linkable = true }]"#,
            "obligations[0].reason",
            "required",
        ),
        (
            r#"[{ pseudonymise = "/body/name", reason = "because" }]"#,
            "obligations[0].reason",
            "linkable",
        ),
        (
            r#"[{ pseudonymise = "/body/name", linkable = true, reason = "r", purpose = "p" }]"#,
            "obligations[0].purpose",
            "shared",
        ),
        (
            r#"[{ pseudonymise = "/body/name", purpose = "to:hk" }]"#,
            "obligations[0].purpose",
            "purpose name",
        ),
        (
            r#"[{ pseudonymise = "/body/name", purpose = "" }]"#,
            "obligations[0].purpose",
            "purpose name",
        ),
        (
            r#"[{ pseudonymise = "/body/name", linkable = "yes", reason = "r" }]"#,
            "obligations[0].linkable",
            "true or false",
        ),
        (
            r#"[{ pseudonymise = "/body/name", to = "day" }]"#,
            "obligations[0].to",
            "purpose, linkable, reason",
        ),
        (
            r#"[{ pseudonymise = "/body/host" }]"#,
            "obligations[0].pseudonymise",
            "strings and numbers",
        ),
        (
            r#"[{ generalise = "/body/at" }]"#,
            "obligations[0].to",
            "day",
        ),
        (
            r#"[{ generalise = "/body/at", to = "week" }]"#,
            "obligations[0].to",
            "day",
        ),
        (
            r#"[{ generalise = "/body/count", to = "day" }]"#,
            "obligations[0].generalise",
            "dates",
        ),
        (
            r#"[{ keep = "/body/name" }]"#,
            "obligations[0].basis",
            "legal basis",
        ),
        (
            r#"[{ keep = "/body/name", basis = "two\nlines" }]"#,
            "obligations[0].basis",
            "line",
        ),
        (
            r#"[{ drop = "/body/name", basis = "x" }]"#,
            "obligations[0].basis",
            "takes none",
        ),
        (
            r#"[{ drop = "/body/name", keep = "/body/name" }]"#,
            "obligations[0]",
            "exactly one",
        ),
        (
            r#"[{ pseudonymise = "/body/name" }, { keep = "/body/name", basis = "b" }]"#,
            "obligations[1]",
            "one treatment per field",
        ),
    ] {
        let rules = format!(
            "[[rule]]\nid = \"A\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\nobligations = {bad}\n"
        );
        match load(&rules) {
            Err(PolicyLoadError::Rule {
                key: k, message, ..
            }) => {
                assert_eq!(k, key, "{bad}: {message}");
                assert!(message.contains(needle), "{bad}: {message}");
            }
            Err(e) => panic!("{bad}: expected a rule error, got {e}"),
            Ok(_) => panic!("{bad}: loaded"),
        }
    }
}

// === pseudonyms per destination, key ids, rotation ===

#[test]
fn the_two_parks_get_different_pseudonyms_for_one_person_with_the_key_id() {
    let rules = "[[rule]]\nid = \"T.both\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\n\
                 match = { kind = \"talent\" }\nobligations = [{ pseudonymise = \"/body/person_ref\" }]\n";
    let e = engine_over(person_ref_marked(), rules, Some(keys()));
    let key = PseudonymKey::from_hex(KEY).unwrap();
    let body = json!({"person_ref": "passport:E12345678", "purpose": "meeting"});
    let (to_hk, hk_lines) = forward(&e, &talent("hk", body.clone()));
    let (to_sz, sz_lines) = forward(&e, &talent("sz", body));
    let (hk, sz) = (&to_hk["body"]["person_ref"], &to_sz["body"]["person_ref"]);
    assert_eq!(
        hk,
        &json!({"pseudonym": key.pseudonym("to:hk", "passport:E12345678"), "key_id": key.id()})
    );
    assert_eq!(sz["key_id"], json!(key.id()));
    assert_ne!(
        hk["pseudonym"], sz["pseudonym"],
        "unlinkable across the parks"
    );
    assert_eq!(
        hk_lines,
        vec![format!(
            "pseudonymise /body/person_ref key {} scope to:hk",
            key.id()
        )]
    );
    assert_eq!(
        sz_lines,
        vec![format!(
            "pseudonymise /body/person_ref key {} scope to:sz",
            key.id()
        )]
    );
    for text in [
        to_hk.to_string(),
        to_sz.to_string(),
        hk_lines.join(" "),
        sz_lines.join(" "),
    ] {
        assert!(!text.contains("E12345678"), "{text}");
    }
}

#[test]
fn a_linkable_pseudonym_is_shared_and_its_reason_is_audited() {
    let rules = "[[rule]]\nid = \"T.joint\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\n\
                 match = { kind = \"talent\" }\nobligations = [{ pseudonymise = \"/body/person_ref\", \
                 linkable = true, reason = \"joint HR register of the zone, agreement HZ-2026-3\" }]\n";
    let e = engine_over(person_ref_marked(), rules, Some(keys()));
    let body = json!({"person_ref": "passport:E12345678"});
    let (to_hk, lines) = forward(&e, &talent("hk", body.clone()));
    let (to_sz, _) = forward(&e, &talent("sz", body));
    assert_eq!(to_hk["body"]["person_ref"], to_sz["body"]["person_ref"]);
    assert!(
        lines[0]
            .ends_with("scope shared reason: joint HR register of the zone, agreement HZ-2026-3"),
        "{lines:?}"
    );
}

#[test]
fn a_rotation_carries_the_previous_pseudonym_until_the_overlap_ends() {
    let rules = "[[rule]]\nid = \"T.both\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\n\
                 match = { kind = \"talent\" }\nobligations = [{ pseudonymise = \"/body/person_ref\", purpose = \"research\" }]\n";
    let old = PseudonymKey::from_hex(KEY).unwrap();
    let new_hex = "c3".repeat(32);
    let new = PseudonymKey::from_hex(&new_hex).unwrap();
    let rotated = PseudonymKeys::from(PseudonymKey::from_hex(&new_hex).unwrap()).with_previous(
        PseudonymKey::from_hex(KEY).unwrap(),
        at("2026-12-15T00:00:00+08:00"),
    );
    let before = engine_over(person_ref_marked(), rules, Some(keys()));
    let after = engine_over(person_ref_marked(), rules, Some(rotated));
    let record = talent("hk", json!({"person_ref": "hkid:A1234567"}));
    let (old_fwd, old_lines) = forward(&before, &record);
    let (new_fwd, new_lines) = forward(&after, &record);
    let scope = "to:hk/purpose:research";
    assert_eq!(
        old_fwd["body"]["person_ref"],
        json!({"pseudonym": old.pseudonym(scope, "hkid:A1234567"), "key_id": old.id()})
    );
    assert_eq!(
        new_fwd["body"]["person_ref"],
        json!({"pseudonym": new.pseudonym(scope, "hkid:A1234567"), "key_id": new.id(),
               "previous": old_fwd["body"]["person_ref"]}),
        "the receiving park links the old pseudonym to the new one"
    );
    assert_ne!(old.id(), new.id());
    assert_eq!(
        new_lines,
        vec![format!(
            "pseudonymise /body/person_ref key {} scope {scope} previous {}",
            new.id(),
            old.id()
        )]
    );
    assert!(!old_lines[0].contains("previous"));

    // `check` shows the same: key ids and scope of each pseudonymisation.
    let o = &after.decide(&DecisionInput {
        identity: &identity("sz", "Org"),
        record: &record,
        kind: Kind::Talent,
        from: "sz",
        to: "hk",
        now: at(NOW),
    });
    let plan = after
        .pseudonym_plan(&o.obligations[0], "hk", at(NOW))
        .unwrap();
    assert_eq!(
        (
            plan.key_id.as_str(),
            plan.scope.as_str(),
            plan.previous_key_id.as_deref()
        ),
        (new.id(), scope, Some(old.id()))
    );
    let later = at("2026-12-15T00:00:00+08:00");
    assert_eq!(
        after.describe_obligation(&o.obligations[0], "sz", later),
        format!(
            "pseudonymise /body/person_ref key {} scope to:sz/purpose:research",
            new.id()
        )
    );
}

// === identifying fields need a treatment on every allow ===

#[test]
fn an_allow_that_forwards_identifying_fields_untreated_does_not_load() {
    let (rule, message) = rule_error(&allow_talent(r#"[{ pseudonymise = "/body/person_ref" }]"#));
    assert_eq!(rule, "T.crossing");
    assert!(message.starts_with("obligations:"), "{message}");
    for field in [
        "/body/entry_at (linkable, talent)",
        "/body/permit_no (direct, talent)",
        "/body/contact/phone (direct, talent)",
        "/body/contact/email (direct, talent)",
        "/body/companions/-/passport_no (direct, talent)",
    ] {
        assert!(message.contains(field), "{field} in {message}");
    }
    assert!(!message.contains("/body/person_ref"), "{message}");
    assert!(!message.contains("/body/purpose"), "{message}");

    // No obligations at all: every marked field is named.
    let rules =
        "[[rule]]\nid = \"T.bare\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\n\
                 match = { kind = \"talent\" }\n";
    let (rule, message) = rule_error(rules);
    assert_eq!(rule, "T.bare");
    assert!(
        message.contains("/body/person_ref (direct, talent)"),
        "{message}"
    );
}

#[test]
fn each_treatment_on_the_field_or_an_enclosing_one_counts() {
    load_annotated(&allow_talent(ALL_TREATED)).unwrap();
    // Dropping the whole array covers its items; a treatment of one item does not.
    let whole = ALL_TREATED.replace(
        r#"{ pseudonymise = "/body/companions/-/passport_no", purpose = "entry-check" }"#,
        r#"{ drop = "/body/companions" }"#,
    );
    load_annotated(&allow_talent(&whole)).unwrap();
    let one_item = ALL_TREATED.replace(
        r#"{ pseudonymise = "/body/companions/-/passport_no", purpose = "entry-check" }"#,
        r#"{ pseudonymise = "/body/companions/0/passport_no" }"#,
    );
    let (_, message) = rule_error(&allow_talent(&one_item));
    assert!(
        message.contains("/body/companions/-/passport_no"),
        "{message}"
    );
    // A field below the marked one does not cover it.
    let (_, message) = rule_error(&allow_talent(&ALL_TREATED.replace(
        r#"{ drop = "/body/contact" }"#,
        r#"{ drop = "/body/contact/phone" }"#,
    )));
    assert!(message.contains("/body/contact/email"), "{message}");
    assert!(!message.contains("/body/contact/phone"), "{message}");
}

#[test]
fn only_allow_rules_of_the_marking_kinds_need_treatments() {
    let rules =
        "[[rule]]\nid = \"D.any\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\n\
                 match = { kind = [\"data\", \"materials\"] }\n\
                 [[rule]]\nid = \"T.deny\"\neffect = \"deny\"\nreason = \"x\"\nregulation = \"y\"\n\
                 match = { kind = \"talent\" }\n";
    load_annotated(rules).unwrap();
    // A rule without `match.kind` matches talent records too.
    let rules =
        "[[rule]]\nid = \"all-kinds\"\neffect = \"allow\"\nreason = \"x\"\nregulation = \"y\"\n";
    let (rule, message) = rule_error(rules);
    assert_eq!(rule, "all-kinds");
    assert!(message.contains("talent"), "{message}");
}

#[test]
fn a_mark_other_than_direct_or_linkable_is_refused_naming_the_field() {
    let mut schemas = annotated();
    schemas.insert(
        Kind::Data,
        json!({"properties": {"subject": {"type": "string", "x-hetao-identifying": "yes"}}}),
    );
    let files = vec![
        ("policy-set.toml".to_string(), MANIFEST.to_string()),
        ("rules.toml".to_string(), String::new()),
    ];
    let e = load_texts(&files, &schemas, &BTreeMap::new(), "mem")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("kind data") && e.contains("/body/subject"),
        "{e}"
    );
}

#[test]
fn a_treated_talent_record_reaches_the_park_without_identifying_residue() {
    let e = engine(&allow_talent(ALL_TREATED), Some(keys()));
    let record = talent(
        "hk",
        json!({
            "person_ref": "passport:E12345678",
            "entry_at": "2026-12-01T23:40:00+08:00",
            "permit_no": "ID-998877",
            "purpose": "meeting",
            "contact": {"phone": "+852 5555 0101", "email": "chan@example.hk"},
            "companions": [{"passport_no": "K1234567", "relation": "spouse"}]
        }),
    );
    let (out, lines) = forward(&e, &record);
    let body = &out["body"];
    assert_eq!(body["entry_at"], json!("2026-12-01"));
    assert_eq!(body["permit_no"], json!("ID-998877"), "kept on its basis");
    assert!(body.get("contact").is_none());
    assert_eq!(body["companions"][0]["relation"], json!("spouse"));
    assert!(body["companions"][0]["passport_no"]["pseudonym"].is_string());
    assert!(body["person_ref"]["pseudonym"].is_string());
    let text = out.to_string();
    for raw in ["E12345678", "K1234567", "5555", "chan@", "23:40"] {
        assert!(!text.contains(raw), "{raw} reached the park: {text}");
    }
    let key = PseudonymKey::from_hex(KEY).unwrap();
    assert_eq!(
        lines,
        vec![
            "generalise /body/entry_at to day".to_string(),
            "keep /body/permit_no basis: Immigration Ordinance (Cap. 115) s.11: the permit is checked at entry"
                .to_string(),
            format!("pseudonymise /body/person_ref key {} scope to:hk", key.id()),
            format!(
                "pseudonymise /body/companions/-/passport_no key {} scope to:hk/purpose:entry-check",
                key.id()
            ),
            "drop /body/contact".to_string(),
        ]
    );
    // The decision lists the obligations with their qualifiers (what `check --format json` shows).
    let d = e.decide(&DecisionInput {
        identity: &identity("sz", "Org"),
        record: &record,
        kind: Kind::Talent,
        from: "sz",
        to: "hk",
        now: at(NOW),
    });
    let shown = serde_json::to_value(&d.obligations).unwrap();
    assert_eq!(
        shown[1],
        json!({"action": "generalise", "pointer": "/body/entry_at", "rule": "T.crossing", "to": "day"})
    );
    assert!(matches!(
        &d.obligations[4],
        Obligation::Pseudonymise { purpose: Some(p), linkable: false, .. } if p == "entry-check"
    ));
}
