//! Load-time check that a rule's pointer names a field the kind's JSON Schema declares, so a typo
//! (`/body/data_grde`) is an error at load and not a rule that silently never matches.
//!
//! The walker follows `properties`, `items`/`prefixItems`, `$ref`s (within the document or into
//! `common.json`, resolved by the [`SchemaLookup`] as the validator resolves them), the branches
//! of `allOf`/`anyOf`/`oneOf`/`if`/`then`/`else` and schema-valued `additionalProperties`. A
//! `$ref` it cannot resolve is accepted (it cannot prove the field absent).
//!
//! Every node comes with the root of the document it is in: after a `$ref` into `common.json`,
//! that document's own `#/$defs/...` references resolve there, not in the kind's.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::envelope::Kind;
use crate::schema::SchemaSet;

/// Top-level envelope fields every record has (SPEC.md's fixed contract).
pub const ENVELOPE_FIELDS: &[&str] = &["record_id", "kind", "from", "to", "created_at", "body"];

/// Schema nodes, each as `(root of its document, node)`.
pub type Nodes<'a> = Vec<(&'a Value, &'a Value)>;

/// Where policy loading finds the schema of each kind.
pub trait SchemaLookup {
    /// The kind's schema document: either the body schema, or a whole-envelope schema with a
    /// `body` property.
    fn kind_schema_doc(&self, kind: Kind) -> Option<&Value>;

    /// Where the `$ref` `reference`, met in the document `root`, leads: the document it lands in
    /// and the node there. By default only references within `root` (`#/$defs/...`).
    fn follow_ref<'a>(
        &'a self,
        root: &'a Value,
        reference: &str,
    ) -> Option<(&'a Value, &'a Value)> {
        let target = root.pointer(reference.strip_prefix('#')?)?;
        Some((root, target))
    }
}

impl SchemaLookup for SchemaSet {
    fn kind_schema_doc(&self, kind: Kind) -> Option<&Value> {
        self.kind_schema(kind)
    }

    fn follow_ref<'a>(
        &'a self,
        root: &'a Value,
        reference: &str,
    ) -> Option<(&'a Value, &'a Value)> {
        SchemaSet::follow_ref(self, root, reference)
    }
}

impl SchemaLookup for BTreeMap<Kind, Value> {
    fn kind_schema_doc(&self, kind: Kind) -> Option<&Value> {
        self.get(&kind)
    }
}

/// The schema nodes that describe the value at `tokens` below `node`, a node of the document
/// `root` (empty: no such field).
pub fn resolve<'a>(
    schemas: &'a dyn SchemaLookup,
    root: &'a Value,
    node: &'a Value,
    tokens: &[String],
) -> Nodes<'a> {
    let mut out = Vec::new();
    walk(schemas, root, node, tokens, &mut out, 0);
    out
}

/// The schema nodes for an envelope pointer's tokens (`["body", "data_grade"]`) in a kind schema.
/// `Some(vec![])` means the field does not exist; `None` means it is an envelope field outside
/// the body (always present, not described by the kind schema).
pub fn resolve_envelope<'a>(
    schemas: &'a dyn SchemaLookup,
    kind_schema: &'a Value,
    tokens: &[String],
) -> Option<Nodes<'a>> {
    let first = tokens.first()?;
    let wraps_envelope = kind_schema
        .get("properties")
        .and_then(|p| p.get("body"))
        .is_some();
    if wraps_envelope {
        return Some(resolve(schemas, kind_schema, kind_schema, tokens));
    }
    if first == "body" {
        Some(resolve(schemas, kind_schema, kind_schema, &tokens[1..]))
    } else if ENVELOPE_FIELDS.contains(&first.as_str()) && tokens.len() == 1 {
        None
    } else {
        Some(Vec::new())
    }
}

const MAX_DEPTH: usize = 64;

fn walk<'a>(
    schemas: &'a dyn SchemaLookup,
    root: &'a Value,
    node: &'a Value,
    tokens: &[String],
    out: &mut Nodes<'a>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(obj) = node.as_object() else {
        // `true` as a schema allows anything; it declares nothing, so it matches only the end.
        if tokens.is_empty() && node.as_bool() == Some(true) {
            out.push((root, node));
        }
        return;
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        match schemas.follow_ref(root, r) {
            Some((doc, target)) => walk(schemas, doc, target, tokens, out, depth + 1),
            // A reference into a document the lookup does not know: cannot prove absence.
            None => out.push((root, node)),
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(branches) = obj.get(key).and_then(Value::as_array) {
            for b in branches {
                walk(schemas, root, b, tokens, out, depth + 1);
            }
        }
    }
    for key in ["if", "then", "else"] {
        if let Some(b) = obj.get(key) {
            walk(schemas, root, b, tokens, out, depth + 1);
        }
    }
    let Some((first, rest)) = tokens.split_first() else {
        out.push((root, node));
        return;
    };
    if let Some(p) = obj.get("properties").and_then(|p| p.get(first.as_str())) {
        walk(schemas, root, p, rest, out, depth + 1);
    }
    if let Some(Value::Object(_)) = obj.get("additionalProperties") {
        if let Some(ap) = obj.get("additionalProperties") {
            walk(schemas, root, ap, rest, out, depth + 1);
        }
    }
    let is_index = first == "-" || first.parse::<usize>().is_ok();
    if is_index {
        if let Some(items) = obj.get("items") {
            walk(schemas, root, items, rest, out, depth + 1);
        }
        if let (Some(prefix), Ok(i)) = (
            obj.get("prefixItems").and_then(Value::as_array),
            first.parse::<usize>(),
        ) {
            if let Some(p) = prefix.get(i) {
                walk(schemas, root, p, rest, out, depth + 1);
            }
        }
    }
}

/// Whether any of the schema nodes describes an array (so `any_item`/`every_item` make sense).
pub fn may_be_array(nodes: &[&Value]) -> bool {
    nodes.iter().any(|n| match n.get("type") {
        Some(Value::String(t)) => t == "array",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "array"),
        // Untyped (a `$ref` shell, combinators): cannot tell, allow.
        _ => true,
    })
}

/// Whether a schema node may describe a value of one of the JSON types `allowed` (an untyped
/// node may describe anything).
pub fn may_be_one_of(node: &Value, allowed: &[&str]) -> bool {
    match node.get("type") {
        Some(Value::String(t)) => allowed.contains(&t.as_str()),
        Some(Value::Array(ts)) => ts
            .iter()
            .any(|t| t.as_str().is_some_and(|t| allowed.contains(&t))),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn toks(p: &str) -> Vec<String> {
        p.split('/').skip(1).map(str::to_string).collect()
    }

    #[test]
    fn follows_properties_items_and_refs() {
        let s = json!({
            "$defs": {"party": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "type": "object",
            "properties": {
                "exporter": {"$ref": "#/$defs/party"},
                "items": {"type": "array", "items": {"properties": {"hs_code": {}}}}
            },
            "allOf": [{"if": {}, "then": {"properties": {"gba_sc": {"type": "object"}}}}]
        });
        let plain = BTreeMap::<Kind, Value>::new();
        let resolve_envelope = |s, t: &[String]| resolve_envelope(&plain, s, t);
        assert!(!resolve_envelope(&s, &toks("/body/exporter/name"))
            .unwrap()
            .is_empty());
        assert!(!resolve_envelope(&s, &toks("/body/items/0/hs_code"))
            .unwrap()
            .is_empty());
        assert!(!resolve_envelope(&s, &toks("/body/gba_sc"))
            .unwrap()
            .is_empty());
        assert!(resolve_envelope(&s, &toks("/body/exporter/nam"))
            .unwrap()
            .is_empty());
        assert!(resolve_envelope(&s, &toks("/body/items/x/hs_code"))
            .unwrap()
            .is_empty());
        assert!(resolve_envelope(&s, &toks("/created_at")).is_none());
        assert!(resolve_envelope(&s, &toks("/bogus")).unwrap().is_empty());
    }

    /// The shipped schemas: kinds refer to `common.json`, whose definitions refer to each other.
    #[test]
    fn shipped_schemas_are_walked_through_refs_into_common_json() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let set = SchemaSet::load(&dir).unwrap();
        let nodes = |kind, p: &str| {
            let doc = set.kind_schema(kind).unwrap();
            resolve_envelope(&set, doc, &toks(p))
        };
        let exists = |kind, p: &str| match nodes(kind, p) {
            None => true, // an envelope field outside the body
            Some(n) => !n.is_empty(),
        };
        assert!(exists(Kind::Materials, "/body/items/0/material_class"));
        assert!(exists(Kind::Materials, "/body/items/-/hs_code"));
        assert!(exists(Kind::Materials, "/body/permits/-/valid_to"));
        assert!(exists(Kind::Data, "/body/gba_sc/filing_date"));
        assert!(exists(Kind::Data, "/body/gba_sc/declared_purposes/0"));
        assert!(exists(Kind::Talent, "/body/exit_endorsement/max_stay_days"));
        assert!(exists(Kind::Talent, "/body"));
        assert!(exists(Kind::Talent, "/from"));
        // Into common.json (`party`), and on from there to its own `#/$defs/city`.
        assert!(exists(Kind::Materials, "/body/consignor/registered_city"));
        assert!(exists(Kind::Data, "/body/exporter/hetao_whitelist_id"));

        assert!(!exists(Kind::Materials, "/body/items/0/nope"));
        assert!(!exists(Kind::Materials, "/body/items/first/hs_code"));
        assert!(!exists(Kind::Data, "/body/data_grde"));
        assert!(!exists(Kind::Data, "/body/consignor"), "a materials field");
        assert!(!exists(Kind::Talent, "/sender"));
        // A typo below a shared type is caught: the walker follows the reference instead of
        // giving up on it, and resolves common.json's own references in common.json.
        assert!(!exists(Kind::Data, "/body/exporter/hetao_whitelist_idd"));
        assert!(!exists(
            Kind::Materials,
            "/body/consignor/registered_city/x"
        ));

        // The nodes are common.json's: its enum is there for value checks.
        let zone = nodes(Kind::Data, "/body/recipient_zone").unwrap();
        assert!(zone.iter().any(|(_, n)| n
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| e.contains(&json!("hk_park")))));
    }
}
