//! Load-time check that a rule's pointer names a field the kind's JSON Schema declares, so a typo
//! (`/body/data_grde`) is an error at load and not a rule that silently never matches.
//!
//! The walker follows `properties`, `items`/`prefixItems`, local `$ref`s (`#/$defs/...`), the
//! branches of `allOf`/`anyOf`/`oneOf`/`if`/`then`/`else` and schema-valued
//! `additionalProperties`. A `$ref` it cannot resolve locally is accepted (it cannot prove the
//! field absent).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::envelope::Kind;
use crate::schema::SchemaSet;

/// Top-level envelope fields every record has (SPEC.md's fixed contract).
pub const ENVELOPE_FIELDS: &[&str] = &["record_id", "kind", "from", "to", "created_at", "body"];

/// Where policy loading finds the schema of each kind.
pub trait SchemaLookup {
    /// The kind's schema document: either the body schema, or a whole-envelope schema with a
    /// `body` property.
    fn kind_schema_doc(&self, kind: Kind) -> Option<&Value>;
}

impl SchemaLookup for SchemaSet {
    fn kind_schema_doc(&self, kind: Kind) -> Option<&Value> {
        Some(self.kind_schema(kind))
    }
}

impl SchemaLookup for BTreeMap<Kind, Value> {
    fn kind_schema_doc(&self, kind: Kind) -> Option<&Value> {
        self.get(&kind)
    }
}

/// The schema nodes that describe the value at `tokens` below `node` (empty: no such field).
/// `root` resolves local `$ref`s.
pub fn resolve<'a>(root: &'a Value, node: &'a Value, tokens: &[String]) -> Vec<&'a Value> {
    let mut out = Vec::new();
    walk(root, node, tokens, &mut out, 0);
    out
}

/// The schema nodes for an envelope pointer's tokens (`["body", "data_grade"]`) in a kind schema.
/// `Some(vec![])` means the field does not exist; `None` means it is an envelope field outside
/// the body (always present, not described by the kind schema).
pub fn resolve_envelope<'a>(kind_schema: &'a Value, tokens: &[String]) -> Option<Vec<&'a Value>> {
    let first = tokens.first()?;
    let wraps_envelope = kind_schema
        .get("properties")
        .and_then(|p| p.get("body"))
        .is_some();
    if wraps_envelope {
        return Some(resolve(kind_schema, kind_schema, tokens));
    }
    if first == "body" {
        Some(resolve(kind_schema, kind_schema, &tokens[1..]))
    } else if ENVELOPE_FIELDS.contains(&first.as_str()) && tokens.len() == 1 {
        None
    } else {
        Some(Vec::new())
    }
}

const MAX_DEPTH: usize = 64;

fn walk<'a>(
    root: &'a Value,
    node: &'a Value,
    tokens: &[String],
    out: &mut Vec<&'a Value>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(obj) = node.as_object() else {
        // `true` as a schema allows anything; it declares nothing, so it matches only the end.
        if tokens.is_empty() && node.as_bool() == Some(true) {
            out.push(node);
        }
        return;
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(target) => walk(root, target, tokens, out, depth + 1),
            // A reference into another document: cannot prove absence, accept.
            None => out.push(node),
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(branches) = obj.get(key).and_then(Value::as_array) {
            for b in branches {
                walk(root, b, tokens, out, depth + 1);
            }
        }
    }
    for key in ["if", "then", "else"] {
        if let Some(b) = obj.get(key) {
            walk(root, b, tokens, out, depth + 1);
        }
    }
    let Some((first, rest)) = tokens.split_first() else {
        out.push(node);
        return;
    };
    if let Some(p) = obj.get("properties").and_then(|p| p.get(first.as_str())) {
        walk(root, p, rest, out, depth + 1);
    }
    if let Some(Value::Object(_)) = obj.get("additionalProperties") {
        if let Some(ap) = obj.get("additionalProperties") {
            walk(root, ap, rest, out, depth + 1);
        }
    }
    let is_index = first == "-" || first.parse::<usize>().is_ok();
    if is_index {
        if let Some(items) = obj.get("items") {
            walk(root, items, rest, out, depth + 1);
        }
        if let (Some(prefix), Ok(i)) = (
            obj.get("prefixItems").and_then(Value::as_array),
            first.parse::<usize>(),
        ) {
            if let Some(p) = prefix.get(i) {
                walk(root, p, rest, out, depth + 1);
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
}
