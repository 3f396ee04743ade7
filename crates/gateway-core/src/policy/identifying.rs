//! Fields that identify a person, and the check that every allow treats them.
//!
//! A kind's JSON Schema marks such a field with the annotation `"x-hetao-identifying": "direct"`
//! (the field alone names a person: a document number) or `"linkable"` (it singles a person out
//! with other data: an exact crossing time). At load, every allow rule must give each marked field
//! of its kinds a treatment — `pseudonymise`, `generalise`, `drop` or `keep` (with its legal
//! basis) — on that field or on an enclosing one; otherwise the set does not load.
//!
//! The walk follows `properties`, `$ref`s (as [`SchemaLookup`] resolves them), the branches of
//! `allOf`/`anyOf`/`oneOf`/`if`/`then`/`else`/`dependentSchemas`, array items (`-`: every item,
//! which only a treatment on `-` or above covers) and schema-valued `additionalProperties` /
//! `patternProperties` (`*`: any member, which only a treatment above covers).

use std::collections::BTreeMap;

use serde_json::Value;

use super::compiled::Pointer;
use super::schema_walk::SchemaLookup;

/// The annotation that marks a field as identifying a person.
pub const ANNOTATION: &str = "x-hetao-identifying";

/// How a field identifies a person (the annotation's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Identifying {
    /// Names a person on its own (a document number).
    Direct,
    /// Singles a person out in combination (an exact time, a birth date).
    Linkable,
}

impl Identifying {
    pub fn as_str(self) -> &'static str {
        match self {
            Identifying::Direct => "direct",
            Identifying::Linkable => "linkable",
        }
    }
}

/// One step of a field's path in the schema.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Key(String),
    /// Every item of an array (`-`).
    AnyItem,
    /// Any member of an object with schema-valued `additionalProperties` (`*`).
    AnyKey,
}

/// A field the schema marks as identifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyingField {
    /// From the envelope's root: `[Key("body"), Key("person_ref")]`.
    pub path: Vec<Step>,
    pub class: Identifying,
}

impl IdentifyingField {
    /// The path as a pointer: `/body/companions/-/passport_no`.
    pub fn pointer(&self) -> String {
        pointer_text(&self.path)
    }

    /// Whether an obligation on `treated` covers this field: `treated` names the field itself or
    /// an enclosing one. A `-` covers every item; an index covers only its own item.
    pub fn covered_by(&self, treated: &Pointer) -> bool {
        treated.tokens.len() <= self.path.len()
            && treated
                .tokens
                .iter()
                .zip(&self.path)
                .all(|(t, step)| match step {
                    Step::Key(k) => *t.key == **k,
                    Step::AnyItem => &*t.key == "-",
                    Step::AnyKey => false,
                })
    }
}

fn pointer_text(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => format!("/{}", k.replace('~', "~0").replace('/', "~1")),
            Step::AnyItem => "/-".to_string(),
            Step::AnyKey => "/*".to_string(),
        })
        .collect()
}

/// Deepest schema nesting walked (the shipped schemas go a few levels deep).
const MAX_DEPTH: usize = 64;

/// Every field `kind_schema` marks as identifying, in pointer order. A field marked twice (in two
/// branches) is listed once, as `direct` if either says so. An annotation other than `direct`
/// or `linkable` is an error naming the field.
pub fn fields(
    schemas: &dyn SchemaLookup,
    kind_schema: &Value,
) -> Result<Vec<IdentifyingField>, String> {
    let wraps_envelope = kind_schema
        .get("properties")
        .and_then(|p| p.get("body"))
        .is_some();
    let mut path = if wraps_envelope {
        Vec::new()
    } else {
        vec![Step::Key("body".into())]
    };
    let mut found = BTreeMap::new();
    let mut walker = Walker {
        schemas,
        refs: Vec::new(),
        found: &mut found,
        probing: false,
    };
    walker.walk(kind_schema, kind_schema, &mut path, 0)?;
    Ok(found
        .into_iter()
        .map(|(path, class)| IdentifyingField { path, class })
        .collect())
}

struct Walker<'a, 'f> {
    schemas: &'a dyn SchemaLookup,
    /// The `$ref`s followed on the way here (document, reference): a cycle is walked once.
    refs: Vec<(*const Value, &'a str)>,
    found: &'f mut BTreeMap<Vec<Step>, Identifying>,
    /// Only looking whether anything below a recursion point is marked.
    probing: bool,
}

impl<'a> Walker<'a, '_> {
    fn walk(
        &mut self,
        root: &'a Value,
        node: &'a Value,
        path: &mut Vec<Step>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        let Some(obj) = node.as_object() else {
            return Ok(());
        };
        if let Some(mark) = obj.get(ANNOTATION) {
            let class = match mark.as_str() {
                Some("direct") => Identifying::Direct,
                Some("linkable") => Identifying::Linkable,
                _ => {
                    return Err(format!(
                        "`{}`: {ANNOTATION} must be \"direct\" or \"linkable\", not {mark}",
                        pointer_text(path)
                    ))
                }
            };
            let slot = self.found.entry(path.clone()).or_insert(class);
            *slot = (*slot).min(class);
        }
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            let seen = (root as *const Value, r);
            if let Some((doc, target)) = self.schemas.follow_ref(root, r) {
                if !self.refs.contains(&seen) {
                    self.refs.push(seen);
                    let walked = self.walk(doc, target, path, depth + 1);
                    self.refs.pop();
                    walked?;
                } else if !self.probing {
                    // A recursive schema: its marks repeat without end below this point, so the
                    // point itself needs a treatment when anything below it is marked.
                    let mut below = BTreeMap::new();
                    let mut probe = Walker {
                        schemas: self.schemas,
                        refs: self.refs.clone(),
                        found: &mut below,
                        probing: true,
                    };
                    probe.walk(doc, target, &mut path.clone(), depth + 1)?;
                    if let Some(class) = below.values().min() {
                        let slot = self.found.entry(path.clone()).or_insert(*class);
                        *slot = (*slot).min(*class);
                    }
                }
            }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for b in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
                self.walk(root, b, path, depth + 1)?;
            }
        }
        for key in ["if", "then", "else"] {
            if let Some(b) = obj.get(key) {
                self.walk(root, b, path, depth + 1)?;
            }
        }
        for b in obj
            .get("dependentSchemas")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.values())
        {
            self.walk(root, b, path, depth + 1)?;
        }
        for (k, p) in obj
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            self.step(root, p, path, Step::Key(k.clone()), depth)?;
        }
        let members = obj
            .get("additionalProperties")
            .into_iter()
            .chain(obj.get("unevaluatedProperties"))
            .chain(
                obj.get("patternProperties")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|m| m.values()),
            );
        for m in members {
            self.step(root, m, path, Step::AnyKey, depth)?;
        }
        for key in ["items", "contains", "unevaluatedItems"] {
            if let Some(items) = obj.get(key) {
                self.step(root, items, path, Step::AnyItem, depth)?;
            }
        }
        for (i, p) in obj
            .get("prefixItems")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            self.step(root, p, path, Step::Key(i.to_string()), depth)?;
        }
        Ok(())
    }

    fn step(
        &mut self,
        root: &'a Value,
        node: &'a Value,
        path: &mut Vec<Step>,
        step: Step,
        depth: usize,
    ) -> Result<(), String> {
        path.push(step);
        let walked = self.walk(root, node, path, depth + 1);
        path.pop();
        walked
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::envelope::Kind;
    use crate::policy::compile::parse_pointer;

    fn found(schema: Value) -> Vec<(String, &'static str)> {
        let lookup = BTreeMap::<Kind, Value>::new();
        fields(&lookup, &schema)
            .unwrap()
            .iter()
            .map(|f| (f.pointer(), f.class.as_str()))
            .collect()
    }

    #[test]
    fn marks_are_found_through_properties_refs_branches_and_items() {
        let schema = json!({
            "$defs": {
                "doc": {"type": "string", "x-hetao-identifying": "direct"},
                "person": {"type": "object", "properties": {
                    "passport_no": {"$ref": "#/$defs/doc"},
                    "born": {"type": "string", "x-hetao-identifying": "linkable"},
                    "self": {"$ref": "#/$defs/person"}
                }}
            },
            "type": "object",
            "properties": {
                "person_ref": {"type": "string", "x-hetao-identifying": "direct"},
                "entry_at": {"type": "string", "format": "date-time",
                             "x-hetao-identifying": "linkable"},
                "companions": {"type": "array", "items": {"$ref": "#/$defs/person"}},
                "plain": {"type": "string"},
                "notes": {"type": "object", "additionalProperties":
                          {"type": "string", "x-hetao-identifying": "linkable"}}
            },
            "allOf": [{"if": {}, "then": {"properties": {
                "guardian": {"$ref": "#/$defs/person"}}}}]
        });
        let got = found(schema);
        let pointers: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        for p in [
            "/body/person_ref",
            "/body/entry_at",
            "/body/companions/-/passport_no",
            "/body/companions/-/born",
            "/body/guardian/passport_no",
            "/body/notes/*",
        ] {
            assert!(pointers.contains(&p), "{p} in {pointers:?}");
        }
        // The recursive `self` marks its recursion point, which only a treatment there or
        // above covers, instead of walking on forever.
        assert!(pointers.contains(&"/body/guardian/self"));
        assert!(pointers.contains(&"/body/companions/-/self"));
        assert!(!pointers.iter().any(|p| p.contains("self/")));
        assert!(!pointers.contains(&"/body/plain"));
        assert!(got.contains(&("/body/companions/-/born".into(), "linkable")));
    }

    #[test]
    fn an_envelope_schema_is_walked_from_its_root_and_bad_marks_are_errors() {
        let schema = json!({"properties": {"body": {"properties": {
            "name": {"x-hetao-identifying": "direct"}}}}});
        assert_eq!(found(schema), vec![("/body/name".to_string(), "direct")]);
        let lookup = BTreeMap::<Kind, Value>::new();
        let e = fields(
            &lookup,
            &json!({"properties": {"name": {"x-hetao-identifying": true}}}),
        )
        .unwrap_err();
        assert!(e.contains("/body/name") && e.contains("direct"), "{e}");
    }

    #[test]
    fn a_treatment_covers_its_field_and_everything_below_it() {
        let f = IdentifyingField {
            path: vec![
                Step::Key("body".into()),
                Step::Key("companions".into()),
                Step::AnyItem,
                Step::Key("passport_no".into()),
            ],
            class: Identifying::Direct,
        };
        let covers = |p: &str| f.covered_by(&parse_pointer(p).unwrap());
        assert!(covers("/body/companions/-/passport_no"));
        assert!(covers("/body/companions/-"));
        assert!(covers("/body/companions"));
        assert!(!covers("/body/companions/0/passport_no"), "one item only");
        assert!(
            !covers("/body/companions/-/passport_no/x"),
            "below the field"
        );
        assert!(!covers("/body/other"));
        let any = IdentifyingField {
            path: vec![
                Step::Key("body".into()),
                Step::Key("notes".into()),
                Step::AnyKey,
            ],
            class: Identifying::Linkable,
        };
        assert!(any.covered_by(&parse_pointer("/body/notes").unwrap()));
        assert!(!any.covered_by(&parse_pointer("/body/notes/x").unwrap()));
    }
}
