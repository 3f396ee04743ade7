//! JSON Schemas (draft 2020-12) for the envelope and each kind, compiled once per load.
//!
//! `schemas/` holds `envelope.json`, `talent.json`, `materials.json`, `data.json` and, optionally,
//! `common.json` with the shared `$defs` (zone, party, ...). The kind files refer to it as
//! `common.json#/$defs/<name>`. At load the shared `$defs` are copied into each kind's document
//! and those references rewritten to local ones (`#/$defs/<name>`), so that every kind is one
//! self-contained document: the validator compiles it with no resolver at all (jsonschema is built
//! without `resolve-http`/`resolve-file`, nothing is ever fetched), and [`SchemaSet::kind_schema`]
//! hands policy loading the very document records are checked against.
//!
//! Violation reports (see `docs/schemas.md`):
//! - `pointer` is a JSON pointer into the whole record as sent: body errors carry the `/body`
//!   prefix. For `required` and `additionalProperties` the pointer names the property itself
//!   (`/body/consignor` is missing, `/body/colour` is not allowed), not its parent object.
//! - `rule` is the JSON Schema keyword broken (`required`, `enum`, `format`, ...).
//! - `message` never repeats the offending value (it may be personal data and answers may be
//!   logged); it says what was expected.
//! - Violations are sorted by pointer (array indices numerically), then rule, then message, and at
//!   most [`MAX_VIOLATIONS`] are listed; beyond that the last entry (rule `truncated`) says how
//!   many more there were.

use std::cmp::Ordering;
use std::fmt;
use std::path::Path;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Draft, PatternOptions, ValidationError, Validator};
use ring::digest;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::envelope::Kind;

/// The only dialect accepted in `$schema`.
pub const DIALECT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// The most violations a single answer lists (a hostile record cannot produce a huge answer).
pub const MAX_VIOLATIONS: usize = 100;

/// The envelope schema's file name.
pub const ENVELOPE_FILE: &str = "envelope.json";
/// The optional file of shared `$defs`.
pub const COMMON_FILE: &str = "common.json";

/// Longest pointer reported; longer ones (hostile property names) are cut and end with `…`.
const MAX_POINTER_LEN: usize = 512;
/// Longest property name quoted in a message.
const MAX_NAME_IN_MESSAGE: usize = 64;
/// Guard against reference cycles when walking schemas.
const MAX_WALK_DEPTH: usize = 64;

/// The schema file of a kind.
pub fn kind_file(kind: Kind) -> &'static str {
    match kind {
        Kind::Talent => "talent.json",
        Kind::Materials => "materials.json",
        Kind::Data => "data.json",
    }
}

/// One way a record breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaViolation {
    /// JSON pointer into the record as sent (`/body/items/0/hs_code`; `""` for the root).
    pub pointer: String,
    /// The schema keyword broken (`required`, `enum`, `pattern`, `format`, ...).
    pub rule: String,
    /// A sentence a person can act on.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaLoadError {
    #[error("schema {path}: {message}")]
    Invalid { path: String, message: String },
}

impl SchemaLoadError {
    fn invalid(path: &Path, message: impl Into<String>) -> SchemaLoadError {
        SchemaLoadError::Invalid {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

/// Where a record failed: the envelope (answered 400) or the body of its kind (answered 422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaFailure {
    Envelope(Vec<SchemaViolation>),
    Body(Kind, Vec<SchemaViolation>),
}

impl SchemaFailure {
    /// The violations, whichever part failed.
    pub fn violations(&self) -> &[SchemaViolation] {
        match self {
            SchemaFailure::Envelope(v) | SchemaFailure::Body(_, v) => v,
        }
    }
}

// === impl SchemaSet ===

/// One schema document and its compiled validator.
struct CompiledSchema {
    /// The document as compiled (a kind's document has the shared `$defs` bundled in).
    document: Value,
    validator: Validator,
}

/// The compiled schemas of one load. Immutable once built: `Send + Sync`, shared behind an
/// `ArcSwap` and replaced whole on reload.
pub struct SchemaSet {
    envelope: CompiledSchema,
    talent: CompiledSchema,
    materials: CompiledSchema,
    data: CompiledSchema,
    hash: String,
}

impl fmt::Debug for SchemaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaSet")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl SchemaSet {
    /// Loads `envelope.json`, `talent.json`, `materials.json` and `data.json` (and `common.json`
    /// if present) from `dir`: each must be JSON, declare `$schema` draft 2020-12, be a valid
    /// schema under that meta-schema and compile (formats validated, unknown formats refused,
    /// linear-time regular expressions, no remote references). Errors name the file.
    pub fn load(dir: &Path) -> Result<SchemaSet, SchemaLoadError> {
        let mut hasher = digest::Context::new(&digest::SHA256);

        let common_path = dir.join(COMMON_FILE);
        let common = if common_path.exists() {
            let (bytes, doc) = read_schema_file(&common_path)?;
            let defs = match doc.get("$defs") {
                Some(Value::Object(defs)) => defs.clone(),
                _ => {
                    return Err(SchemaLoadError::invalid(
                        &common_path,
                        "has no \"$defs\" object: the shared file only holds definitions",
                    ))
                }
            };
            let id = doc.get("$id").and_then(Value::as_str).map(str::to_string);
            // Compiling it alone proves every shared definition is itself a valid schema.
            compile(&common_path, &doc)?;
            Some(Common {
                bytes,
                defs,
                id,
                path: common_path.clone(),
            })
        } else {
            None
        };

        let mut load_one = |file: &str, bundle: bool| -> Result<CompiledSchema, SchemaLoadError> {
            let path = dir.join(file);
            let (bytes, mut doc) = read_schema_file(&path)?;
            hash_file(&mut hasher, file, &bytes);
            if bundle {
                if let Some(common) = &common {
                    bundle_common(&path, &mut doc, common)?;
                }
            }
            let validator = compile(&path, &doc)?;
            Ok(CompiledSchema {
                document: doc,
                validator,
            })
        };
        let envelope = load_one(ENVELOPE_FILE, false)?;
        let talent = load_one(kind_file(Kind::Talent), true)?;
        let materials = load_one(kind_file(Kind::Materials), true)?;
        let data = load_one(kind_file(Kind::Data), true)?;
        if let Some(common) = &common {
            hash_file(&mut hasher, COMMON_FILE, &common.bytes);
        }

        check_envelope_shape(&dir.join(ENVELOPE_FILE), &envelope.document)?;

        Ok(SchemaSet {
            envelope,
            talent,
            materials,
            data,
            hash: hex::encode(hasher.finish().as_ref()),
        })
    }

    /// Validates the envelope, then the body against the schema of its kind. Every violation is
    /// reported (up to [`MAX_VIOLATIONS`]), in a deterministic order.
    pub fn validate(&self, record: &Value) -> Result<Kind, SchemaFailure> {
        let envelope_violations =
            collect_violations(&self.envelope, self.envelope.validator.iter_errors(record), "");
        if !envelope_violations.is_empty() {
            return Err(SchemaFailure::Envelope(envelope_violations));
        }
        // The envelope schema guarantees both; a deployment that edited it to allow another kind
        // still gets a clear envelope error instead of a panic.
        let Some(kind) = record.get("kind").and_then(Value::as_str).and_then(Kind::parse) else {
            return Err(SchemaFailure::Envelope(vec![SchemaViolation {
                pointer: "/kind".to_string(),
                rule: "enum".to_string(),
                message: "must be one of talent, materials, data".to_string(),
            }]));
        };
        let Some(body) = record.get("body") else {
            return Err(SchemaFailure::Envelope(vec![SchemaViolation {
                pointer: "/body".to_string(),
                rule: "required".to_string(),
                message: "required property `body` is missing".to_string(),
            }]));
        };
        let compiled = self.compiled(kind);
        let violations = collect_violations(compiled, compiled.validator.iter_errors(body), "/body");
        if violations.is_empty() {
            Ok(kind)
        } else {
            Err(SchemaFailure::Body(kind, violations))
        }
    }

    /// SHA-256 (hex) over the schema files of this load: recorded in every audit entry.
    ///
    /// Input, in this fixed order: `envelope.json`, `talent.json`, `materials.json`, `data.json`,
    /// then `common.json` if present; for each, the file name, a zero byte, the content length as
    /// a big-endian u64 and the raw bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The schema document of a kind, self-contained: the shared `$defs` of `common.json` are
    /// bundled into its `$defs` and every `$ref` is local (`#/$defs/...`). Records' bodies are
    /// validated against exactly this document.
    pub fn kind_schema(&self, kind: Kind) -> &Value {
        &self.compiled(kind).document
    }

    /// The envelope schema document.
    pub fn envelope_schema(&self) -> &Value {
        &self.envelope.document
    }

    /// The schema nodes that describe the value at `pointer`, a JSON pointer into a whole record
    /// of `kind` (`/to`, `/body/gba_sc/filing_date`, `/body/items/0/material_class`). Array
    /// positions may be an index, `*` or `-` (any item). `$ref`s are resolved and the branches of
    /// `allOf`/`anyOf`/`oneOf`/`if`/`then`/`else` followed, so the result can hold several nodes
    /// (e.g. the property's own node and a conditional `then` constraint on it). Empty when no
    /// record valid for the schema can have a value there.
    pub fn schema_nodes_at(&self, kind: Kind, pointer: &str) -> Vec<&Value> {
        let Some(tokens) = parse_pointer(pointer) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match tokens.split_first() {
            Some((first, rest)) if first == "body" => {
                let doc = self.kind_schema(kind);
                walk_schema(doc, doc, rest, &mut out, 0);
            }
            _ => {
                let doc = self.envelope_schema();
                walk_schema(doc, doc, &tokens, &mut out, 0);
            }
        }
        out
    }

    /// Whether a record of `kind` can have a value at `pointer` (see [`SchemaSet::schema_nodes_at`]):
    /// policy loading refuses rules on fields that cannot exist (a typo never silently matches
    /// nothing).
    pub fn pointer_exists_in_schema(&self, kind: Kind, pointer: &str) -> bool {
        !self.schema_nodes_at(kind, pointer).is_empty()
    }

    /// The values a field may take when its schema is an enumeration (`enum`, or `const`), e.g.
    /// for `/body/data_grade`: `["core", "important", "general"]`. `None` when the field is not
    /// restricted to a list. Lets policy loading refuse a comparison with a value that can never
    /// occur.
    pub fn allowed_values_at(&self, kind: Kind, pointer: &str) -> Option<Vec<&Value>> {
        let nodes = self.schema_nodes_at(kind, pointer);
        let mut values: Option<Vec<&Value>> = None;
        for node in nodes {
            if let Some(Value::Array(options)) = node.get("enum") {
                values.get_or_insert_with(Vec::new).extend(options.iter());
            } else if let Some(c) = node.get("const") {
                values.get_or_insert_with(Vec::new).push(c);
            }
        }
        values.map(|mut v| {
            v.dedup();
            v
        })
    }

    fn compiled(&self, kind: Kind) -> &CompiledSchema {
        match kind {
            Kind::Talent => &self.talent,
            Kind::Materials => &self.materials,
            Kind::Data => &self.data,
        }
    }
}

// === loading ===

struct Common {
    bytes: Vec<u8>,
    defs: Map<String, Value>,
    id: Option<String>,
    path: std::path::PathBuf,
}

fn read_schema_file(path: &Path) -> Result<(Vec<u8>, Value), SchemaLoadError> {
    let bytes = std::fs::read(path)
        .map_err(|e| SchemaLoadError::invalid(path, format!("cannot be read: {e}")))?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| SchemaLoadError::invalid(path, format!("is not valid JSON: {e}")))?;
    if !doc.is_object() {
        return Err(SchemaLoadError::invalid(path, "is not a JSON object"));
    }
    match doc.get("$schema") {
        Some(Value::String(s)) if s == DIALECT_2020_12 => {}
        Some(other) => {
            return Err(SchemaLoadError::invalid(
                path,
                format!("\"$schema\" is {other}, expected \"{DIALECT_2020_12}\" (draft 2020-12)"),
            ))
        }
        None => {
            return Err(SchemaLoadError::invalid(
                path,
                format!("has no \"$schema\": declare \"{DIALECT_2020_12}\" (draft 2020-12)"),
            ))
        }
    }
    // The meta-schema check reports where in the file the schema is malformed (a bad `type`, a
    // `required` that is not a list, ...), which the compiler would not always say as clearly.
    let meta_errors: Vec<String> = match jsonschema::meta::try_validate(&doc) {
        Ok(Ok(())) => Vec::new(),
        Ok(Err(e)) => vec![format!(
            "at {}: {}",
            display_pointer(e.instance_path.as_str()),
            e.masked_with("the value")
        )],
        Err(e) => vec![format!("meta-schema not recognised: {e}")],
    };
    if let Some(first) = meta_errors.first() {
        return Err(SchemaLoadError::invalid(
            path,
            format!("is not a valid draft 2020-12 schema {first}"),
        ));
    }
    Ok((bytes, doc))
}

fn compile(path: &Path, doc: &Value) -> Result<Validator, SchemaLoadError> {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        // A misspelt format ("dat") would otherwise silently check nothing.
        .should_ignore_unknown_formats(false)
        // Linear-time matching: a hostile value cannot make a pattern backtrack for long.
        .with_pattern_options(PatternOptions::regex())
        .build(doc)
        .map_err(|e| {
            SchemaLoadError::invalid(
                path,
                format!(
                    "does not compile at {}: {}",
                    display_pointer(e.schema_path.as_str()),
                    e.masked_with("the value")
                ),
            )
        })
}

fn hash_file(hasher: &mut digest::Context, name: &str, bytes: &[u8]) {
    hasher.update(name.as_bytes());
    hasher.update(&[0]);
    hasher.update(&(bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// Copies the shared `$defs` into a kind's document and makes its references to them local.
fn bundle_common(path: &Path, doc: &mut Value, common: &Common) -> Result<(), SchemaLoadError> {
    let Some(obj) = doc.as_object_mut() else {
        return Err(SchemaLoadError::invalid(path, "is not a JSON object"));
    };
    let defs = obj
        .entry("$defs")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(defs) = defs.as_object_mut() else {
        return Err(SchemaLoadError::invalid(path, "\"$defs\" is not an object"));
    };
    for (name, def) in &common.defs {
        if defs.contains_key(name) {
            return Err(SchemaLoadError::invalid(
                path,
                format!(
                    "defines \"$defs/{name}\", which {} also defines: rename one",
                    common.path.display()
                ),
            ));
        }
        defs.insert(name.clone(), def.clone());
    }
    let mut prefixes = vec![format!("{COMMON_FILE}#"), format!("./{COMMON_FILE}#")];
    if let Some(id) = &common.id {
        prefixes.push(format!("{id}#"));
    }
    rewrite_refs(doc, &prefixes);
    Ok(())
}

/// Rewrites `"$ref": "common.json#/..."` to `"#/..."` everywhere in a schema, but not inside
/// keywords whose values are data rather than schemas.
fn rewrite_refs(node: &mut Value, prefixes: &[String]) {
    match node {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get_mut("$ref") {
                if let Some(fragment) = prefixes.iter().find_map(|p| r.strip_prefix(p.as_str())) {
                    *r = format!("#{fragment}");
                }
            }
            for (key, child) in obj.iter_mut() {
                if matches!(
                    key.as_str(),
                    "enum" | "const" | "examples" | "default" | "$ref"
                ) {
                    continue;
                }
                rewrite_refs(child, prefixes);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite_refs(i, prefixes)),
        _ => {}
    }
}

/// The gateway reads `record_id`, `kind`, `from`, `to` and `body` after the envelope check: an
/// envelope schema that does not require them would let a record through that the pipeline
/// cannot route.
fn check_envelope_shape(path: &Path, doc: &Value) -> Result<(), SchemaLoadError> {
    let required: Vec<&str> = doc
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = ["record_id", "kind", "from", "to", "created_at", "body"]
        .into_iter()
        .filter(|f| !required.contains(f))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SchemaLoadError::invalid(
            path,
            format!(
                "the envelope must require {} (the gateway routes on them)",
                missing.join(", ")
            ),
        ))
    }
}

fn display_pointer(p: &str) -> String {
    if p.is_empty() {
        "the root".to_string()
    } else {
        p.to_string()
    }
}

// === violations ===

fn collect_violations<'i>(
    compiled: &CompiledSchema,
    errors: impl Iterator<Item = ValidationError<'i>>,
    prefix: &str,
) -> Vec<SchemaViolation> {
    let mut out = Vec::new();
    for error in errors {
        to_violations(&compiled.document, &error, prefix, &mut out);
    }
    out.sort_by(compare_violations);
    out.dedup();
    if out.len() > MAX_VIOLATIONS {
        let hidden = out.len() - (MAX_VIOLATIONS - 1);
        out.truncate(MAX_VIOLATIONS - 1);
        out.push(SchemaViolation {
            pointer: String::new(),
            rule: "truncated".to_string(),
            message: format!(
                "{hidden} further violations are not listed (at most {MAX_VIOLATIONS} are reported)"
            ),
        });
    }
    out
}

/// Turns one validation error into one or more violations (one per unexpected property).
fn to_violations(
    document: &Value,
    error: &ValidationError<'_>,
    prefix: &str,
    out: &mut Vec<SchemaViolation>,
) {
    let schema_path = error.schema_path.as_str();
    let base = format!("{prefix}{}", error.instance_path.as_str());
    let keyword = schema_path
        .rsplit('/')
        .next()
        .filter(|k| !k.is_empty())
        .unwrap_or("schema");
    let because = condition_description(document, schema_path)
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    let node = schema_node_at_path(document, parent_path(schema_path));
    let title = node
        .and_then(|n| n.get("title"))
        .and_then(Value::as_str)
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();

    let mut push = |pointer: String, rule: &str, message: String| {
        out.push(SchemaViolation {
            pointer: cap_pointer(pointer),
            rule: rule.to_string(),
            message,
        });
    };

    match &error.kind {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            push(
                join_pointer(&base, name),
                "required",
                format!(
                    "required property `{}` is missing{because}",
                    short_name(name)
                ),
            );
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for name in unexpected {
                push(
                    join_pointer(&base, name),
                    "additionalProperties",
                    format!(
                        "property `{}` is not allowed here: unknown fields are refused so that \
                         nothing unchecked crosses{because}",
                        short_name(name)
                    ),
                );
            }
        }
        ValidationErrorKind::Enum { options } => push(
            base,
            "enum",
            format!("must be one of {}{because}", list_values(options)),
        ),
        ValidationErrorKind::Constant { expected_value } => push(
            base,
            "const",
            format!("must be {expected_value}{because}"),
        ),
        ValidationErrorKind::Format { format } => push(
            base,
            "format",
            format!("is not a valid {}{because}", format_hint(format)),
        ),
        ValidationErrorKind::Pattern { pattern } => push(
            base,
            "pattern",
            format!("does not have the expected form{title}: must match {pattern}{because}"),
        ),
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            push(
                base,
                "type",
                format!(
                    "must be {} {expected}, not {}{because}",
                    article(&expected),
                    json_type_name(&error.instance)
                ),
            );
        }
        ValidationErrorKind::Minimum { limit } => push(
            base,
            "minimum",
            format!("must be at least {limit}{because}"),
        ),
        ValidationErrorKind::Maximum { limit } => push(
            base,
            "maximum",
            format!("must be at most {limit}{because}"),
        ),
        ValidationErrorKind::ExclusiveMinimum { limit } => push(
            base,
            "exclusiveMinimum",
            format!("must be greater than {limit}{because}"),
        ),
        ValidationErrorKind::ExclusiveMaximum { limit } => push(
            base,
            "exclusiveMaximum",
            format!("must be less than {limit}{because}"),
        ),
        ValidationErrorKind::MinItems { limit } => push(
            base,
            "minItems",
            format!("must have at least {limit} item{}{because}", plural(*limit)),
        ),
        ValidationErrorKind::MaxItems { limit } => push(
            base,
            "maxItems",
            format!("must have at most {limit} item{}{because}", plural(*limit)),
        ),
        ValidationErrorKind::MinLength { limit } => push(
            base,
            "minLength",
            format!(
                "must be at least {limit} character{} long{because}",
                plural(*limit)
            ),
        ),
        ValidationErrorKind::MaxLength { limit } => push(
            base,
            "maxLength",
            format!(
                "must be at most {limit} character{} long{because}",
                plural(*limit)
            ),
        ),
        ValidationErrorKind::UniqueItems => push(
            base,
            "uniqueItems",
            format!("must not list the same value twice{because}"),
        ),
        _ => push(
            base,
            keyword,
            format!("{}{because}", error.masked_with("the value")),
        ),
    }
}

/// The `description` of the `then`/`else` branch an error comes from: says why a conditional
/// requirement applies ("sensitive personal information ... requires sensitive_pi_types").
fn condition_description<'a>(document: &'a Value, schema_path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = schema_path.split('/').collect();
    let last = segments
        .iter()
        .rposition(|s| *s == "then" || *s == "else")?;
    let branch_path = segments[..=last].join("/");
    schema_node_at_path(document, &branch_path)?
        .get("description")?
        .as_str()
}

/// The schema node at a keyword location (`/properties/exporter/$ref/properties/id/pattern`),
/// following `$ref` segments through the document's local references.
fn schema_node_at_path<'a>(document: &'a Value, schema_path: &str) -> Option<&'a Value> {
    let mut node = document;
    for raw in schema_path.split('/').skip(1) {
        let segment = unescape_token(raw);
        if segment == "$ref" {
            let target = node.get("$ref")?.as_str()?;
            node = document.pointer(target.strip_prefix('#')?)?;
            continue;
        }
        node = match node {
            Value::Object(obj) => obj.get(segment.as_str())?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn parent_path(schema_path: &str) -> &str {
    schema_path
        .rsplit_once('/')
        .map(|(parent, _)| parent)
        .unwrap_or("")
}

fn join_pointer(base: &str, name: &str) -> String {
    format!("{base}/{}", name.replace('~', "~0").replace('/', "~1"))
}

fn cap_pointer(mut pointer: String) -> String {
    if pointer.len() > MAX_POINTER_LEN {
        let mut cut = MAX_POINTER_LEN;
        while !pointer.is_char_boundary(cut) {
            cut -= 1;
        }
        pointer.truncate(cut);
        pointer.push('…');
    }
    pointer
}

fn short_name(name: &str) -> String {
    if name.chars().count() > MAX_NAME_IN_MESSAGE {
        let cut: String = name.chars().take(MAX_NAME_IN_MESSAGE).collect();
        format!("{cut}…")
    } else {
        name.to_string()
    }
}

fn list_values(options: &Value) -> String {
    match options {
        Value::Array(values) => values
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn format_hint(format: &str) -> String {
    match format {
        "date" => "date (format date: YYYY-MM-DD, e.g. 2026-11-18)".to_string(),
        "date-time" => {
            "date-time (format date-time: RFC 3339 with offset, e.g. 2026-11-18T09:30:00+08:00)"
                .to_string()
        }
        "uuid" => "UUID (format uuid: 8-4-4-4-12 hex digits)".to_string(),
        other => format!("{other} (format {other})"),
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Reading order: by pointer with array indices compared as numbers (`/items/2` before
/// `/items/10`), then by rule and message.
fn compare_violations(a: &SchemaViolation, b: &SchemaViolation) -> Ordering {
    compare_pointers(&a.pointer, &b.pointer)
        .then_with(|| a.rule.cmp(&b.rule))
        .then_with(|| a.message.cmp(&b.message))
}

fn compare_pointers(a: &str, b: &str) -> Ordering {
    let mut left = a.split('/');
    let mut right = b.split('/');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(i), Ok(j)) => i.cmp(&j),
                    _ => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

// === pointer walking ===

/// Splits a JSON pointer into unescaped tokens; `None` if it is not a pointer.
fn parse_pointer(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    Some(rest.split('/').map(unescape_token).collect())
}

fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Collects into `out` the schema nodes below `node` that describe the value at `tokens`.
fn walk_schema<'a>(
    root: &'a Value,
    node: &'a Value,
    tokens: &[String],
    out: &mut Vec<&'a Value>,
    depth: usize,
) {
    if depth > MAX_WALK_DEPTH {
        return;
    }
    let Some(obj) = node.as_object() else {
        // The `true` schema allows anything but declares nothing: it only describes the end.
        if tokens.is_empty() && node.as_bool() == Some(true) {
            out.push(node);
        }
        return;
    };
    if let Some(target) = obj
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|fragment| root.pointer(fragment))
    {
        walk_schema(root, target, tokens, out, depth + 1);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(branches) = obj.get(key).and_then(Value::as_array) {
            for branch in branches {
                walk_schema(root, branch, tokens, out, depth + 1);
            }
        }
    }
    // `if` only tests; `then`/`else` constrain.
    for key in ["then", "else"] {
        if let Some(branch) = obj.get(key) {
            walk_schema(root, branch, tokens, out, depth + 1);
        }
    }
    let Some((first, rest)) = tokens.split_first() else {
        out.push(node);
        return;
    };
    if let Some(property) = obj.get("properties").and_then(|p| p.get(first.as_str())) {
        walk_schema(root, property, rest, out, depth + 1);
    }
    if let Some(extra @ Value::Object(_)) = obj.get("additionalProperties") {
        walk_schema(root, extra, rest, out, depth + 1);
    }
    let any_item = first == "*" || first == "-";
    let index = first.parse::<usize>().ok();
    if any_item || index.is_some() {
        if let Some(items) = obj.get("items") {
            walk_schema(root, items, rest, out, depth + 1);
        }
        if let Some(prefix) = obj.get("prefixItems").and_then(Value::as_array) {
            match index {
                Some(i) => {
                    if let Some(p) = prefix.get(i) {
                        walk_schema(root, p, rest, out, depth + 1);
                    }
                }
                None => prefix
                    .iter()
                    .for_each(|p| walk_schema(root, p, rest, out, depth + 1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn shipped_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
    }

    fn shipped() -> SchemaSet {
        SchemaSet::load(&shipped_dir()).unwrap()
    }

    fn example(name: &str) -> Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples/records")
            .join(name);
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }

    fn body_violations(set: &SchemaSet, record: &Value) -> Vec<SchemaViolation> {
        match set.validate(record) {
            Err(SchemaFailure::Body(_, v)) => v,
            other => panic!("expected a body failure, got {other:?}"),
        }
    }

    #[test]
    fn scratch_print() {
        let set = shipped();
        for name in [
            "invalid/materials-missing-consignor.json",
            "invalid/data-sensitive-pi-without-types.json",
            "invalid/materials-bad-hs-code.json",
            "invalid/envelope-bad-record-id.json",
        ] {
            println!("{name}: {:#?}", set.validate(&example(name)));
        }
        let mut r = example("data-sz-hk-gba-clinical-followup.json");
        r["body"]["exporter"]["id"] = json!("1234");
        r["body"]["contains_pi"] = json!(false);
        println!("{:#?}", set.validate(&r));
        panic!("scratch");
    }
}
