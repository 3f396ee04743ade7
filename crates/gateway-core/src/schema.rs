//! JSON Schemas (draft 2020-12) for the envelope and each kind, compiled once per load.
//!
//! `schemas/` holds `envelope.json`, `talent.json`, `materials.json`, `data.json` and, optionally,
//! `common.json` with the shared `$defs` (zone, party, ...). The kind files refer to it as
//! `common.json#/$defs/<name>`. At load `common.json` is handed to the validator as a resource
//! under its `$id` (and under the name `common.json` next to each kind), and jsonschema resolves
//! those references itself; nothing is ever fetched (jsonschema is built without
//! `resolve-http`/`resolve-file`). The same documents, in a [`referencing::Registry`], resolve the
//! `$ref`s that violation messages and policy loading follow ([`SchemaSet::follow_ref`]), by the
//! same URI rules: [`SchemaSet::kind_schema`] hands policy loading the very document records are
//! checked against.
//!
//! Violation reports (see `docs/schemas.md`):
//! - `pointer` is a JSON pointer into the whole record as sent: body errors carry the `/body`
//!   prefix. For `required` and `additionalProperties` the pointer names the property itself
//!   (`/body/consignor` is missing, `/body/colour` is not allowed), not its parent object.
//! - `rule` is the JSON Schema keyword broken (`required`, `enum`, `format`, ...).
//! - `message` never repeats the offending value (it may be personal data and answers may be
//!   logged); it says what was expected.
//! - Violations are sorted by pointer (array indices numerically), then rule, then message, and at
//!   most `limits.max_violations` ([`DEFAULT_MAX_VIOLATIONS`]) are listed; beyond that the last
//!   entry (rule `truncated`) says that more were found.
//!
//! The way back has a schema too: `ack.json` (and per kind, optionally, `ack/<kind>.json`)
//! declares what a park endpoint's answer may carry back to the sender
//! ([`SchemaSet::acknowledgement`]): undeclared properties are dropped before the rest is
//! validated, never relayed. See "acknowledgements" below.
//!
//! Listing is bounded: the check stops once it has found one violation more than it lists, so a
//! record that breaks its schema a million times costs about what one breaking it a hundred times
//! costs (see "bounded listing" below for why that needs more than `iter_errors().take(n)`).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Draft, PatternOptions, ValidationError, Validator};
use referencing::{Registry, Resource, Uri};
use ring::digest;
use serde::Serialize;
use serde_json::Value;

pub use crate::config::DEFAULT_MAX_VIOLATIONS;
use crate::envelope::Kind;

/// The only dialect accepted in `$schema`.
pub const DIALECT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// The envelope schema's file name.
pub const ENVELOPE_FILE: &str = "envelope.json";
/// The optional file of shared `$defs`.
pub const COMMON_FILE: &str = "common.json";
/// What a park endpoint's answer may carry back to the sender (required).
pub const ACK_FILE: &str = "ack.json";
/// Folder of per-kind acknowledgement schemas (`ack/<kind>.json`, each optional), which replace
/// [`ACK_FILE`] for records of their kind.
pub const ACK_DIR: &str = "ack";

/// Longest pointer reported; longer ones (hostile property names) are cut and end with `…`.
const MAX_POINTER_LEN: usize = 512;
/// Longest property name quoted in a message.
const MAX_NAME_IN_MESSAGE: usize = 64;

/// The schema file of a kind.
pub fn kind_file(kind: Kind) -> &'static str {
    match kind {
        Kind::Talent => "talent.json",
        Kind::Materials => "materials.json",
        Kind::Data => "data.json",
    }
}

/// One way a record breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
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

/// One schema document's compiled validator, and where the document is.
struct CompiledSchema {
    /// The document's base URI (its `$id`, or `json-schema:///<file>` without one): its key in
    /// [`SchemaSet::documents`] and what its relative `$ref`s resolve against.
    base: String,
    /// The whole document: tells a valid value from an invalid one.
    validator: Validator,
    /// How an invalid value's violations are listed within the limit.
    plan: Plan,
}

/// How much work a failed validation took (see [`SchemaSet::validate_counted`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValidationWork {
    /// Errors taken from jsonschema's iterators. Bounded by the violation limit plus what one
    /// piece of the schema can report, however many violations the record has.
    pub errors_examined: u64,
}

/// The compiled schemas of one load. Immutable once built: `Send + Sync`, shared behind an
/// `ArcSwap` and replaced whole on reload.
pub struct SchemaSet {
    /// Every document of the load (the envelope, the kinds, `common.json`) under its base URI.
    /// Read to describe a violation and by policy loading, never for a valid record.
    documents: Registry,
    /// The keys of `documents`, to tell which document a node belongs to.
    bases: Vec<String>,
    envelope: CompiledSchema,
    talent: CompiledSchema,
    materials: CompiledSchema,
    data: CompiledSchema,
    /// What may flow back: the acknowledgement schema, per kind.
    acks: Acknowledgements,
    hash: String,
    /// Most violations one failure lists (`limits.max_violations`).
    max_violations: usize,
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
            let common = read_schema_file(&common_path, COMMON_FILE)?;
            if !matches!(common.doc.get("$defs"), Some(Value::Object(_))) {
                return Err(SchemaLoadError::invalid(
                    &common_path,
                    "has no \"$defs\" object: the shared file only holds definitions",
                ));
            }
            // Compiling it alone proves every shared definition is itself a valid schema.
            compile(&common, &[])?;
            Some(common)
        } else {
            None
        };

        // Every name a kind reaches `common.json` by; the registry below needs them all.
        let mut shared_names: Vec<String> = Vec::new();
        let mut files: Vec<SchemaFile> = Vec::new();
        let mut load_one =
            |file: &str, with_common: bool| -> Result<(String, Validator), SchemaLoadError> {
                let path = dir.join(file);
                let schema = read_schema_file(&path, file)?;
                hash_file(&mut hasher, file, &schema.bytes);
                let mut shared = Vec::new();
                if let (true, Some(common)) = (with_common, &common) {
                    refuse_shadowed_defs(&schema, common)?;
                    for name in common_names(&schema, common)? {
                        if !shared_names.contains(&name) {
                            shared_names.push(name.clone());
                        }
                        shared.push((name, common));
                    }
                }
                let validator = compile(&schema, &shared)?;
                // One key per document: two files claiming one `$id` would make one of them
                // unreachable for the walkers (and is a copy-paste mistake anyway).
                if let Some(other) = files.iter().find(|f| f.base == schema.base) {
                    return Err(SchemaLoadError::invalid(
                        &path,
                        format!(
                            "has the same \"$id\" as {} ({}): each file needs its own",
                            other.path.display(),
                            schema.base
                        ),
                    ));
                }
                let base = schema.base.clone();
                files.push(schema);
                Ok((base, validator))
            };
        let envelope = load_one(ENVELOPE_FILE, false)?;
        let talent = load_one(kind_file(Kind::Talent), true)?;
        let materials = load_one(kind_file(Kind::Materials), true)?;
        let data = load_one(kind_file(Kind::Data), true)?;
        if let Some(common) = &common {
            hash_file(&mut hasher, COMMON_FILE, &common.bytes);
        }
        let acks = Acknowledgements::load(dir, &mut hasher)?;

        let mut bases = Vec::new();
        let mut resources = Vec::new();
        for file in &files {
            bases.push(file.base.clone());
            resources.push((file.base.clone(), resource(file)?));
        }
        if let Some(common) = &common {
            for name in &shared_names {
                resources.push((name.clone(), resource(common)?));
                bases.push(name.clone());
            }
        }
        // Plans for listing violations within a limit: pieces of the same documents, compiled now.
        let planner = Planner::new(&files, common.as_ref(), &shared_names);
        let mut plans = Vec::new();
        for (i, file) in files.iter().enumerate() {
            plans.push(planner.plan_document(i).map_err(|message| {
                SchemaLoadError::invalid(
                    &file.path,
                    format!("cannot be cut into pieces for listing violations: {message}"),
                )
            })?);
        }
        let mut plans = plans.into_iter();
        let mut with_plan =
            |(base, validator): (String, Validator)| -> Result<CompiledSchema, SchemaLoadError> {
                let plan = plans.next().ok_or_else(|| {
                    SchemaLoadError::invalid(dir, "a schema document has no listing plan")
                })?;
                Ok(CompiledSchema {
                    base,
                    validator,
                    plan,
                })
            };
        // `files` holds the documents in the order they were loaded: envelope, talent, materials, data.
        let envelope = with_plan(envelope)?;
        let talent = with_plan(talent)?;
        let materials = with_plan(materials)?;
        let data = with_plan(data)?;
        // Every reference already resolved when the validators compiled: this cannot fail on
        // what the files say, but it must not panic if it does.
        let documents = Registry::try_from_resources(resources).map_err(|e| {
            SchemaLoadError::invalid(dir, format!("cannot index the schema documents: {e}"))
        })?;
        let set = SchemaSet {
            documents,
            bases,
            envelope,
            talent,
            materials,
            data,
            acks,
            hash: hex::encode(hasher.finish().as_ref()),
            max_violations: DEFAULT_MAX_VIOLATIONS,
        };
        let envelope_path = dir.join(ENVELOPE_FILE);
        let Some(envelope_doc) = set.envelope_schema() else {
            return Err(SchemaLoadError::invalid(
                &envelope_path,
                "is missing from the indexed schema documents",
            ));
        };
        check_envelope_shape(&envelope_path, envelope_doc)?;
        Ok(set)
    }

    /// The same set, listing at most `max_violations` violations per failure (at least 1;
    /// `limits.max_violations`, checked by the configuration).
    pub fn with_max_violations(mut self, max_violations: usize) -> SchemaSet {
        self.max_violations = max_violations.max(1);
        self
    }

    /// Validates the envelope, then the body against the schema of its kind. Violations are
    /// reported up to the set's limit ([`DEFAULT_MAX_VIOLATIONS`] unless
    /// [`SchemaSet::with_max_violations`]), in a deterministic order.
    pub fn validate(&self, record: &Value) -> Result<Kind, SchemaFailure> {
        self.validate_counted(record).0
    }

    /// [`SchemaSet::validate`], and the work it took: what the benches and the test that keeps
    /// validation bounded look at.
    pub fn validate_counted(
        &self,
        record: &Value,
    ) -> (Result<Kind, SchemaFailure>, ValidationWork) {
        let mut work = ValidationWork::default();
        // `is_valid` stops at the first failure and builds no error: a valid record never pays
        // for listing.
        if !self.envelope.validator.is_valid(record) {
            let violations = self.list_violations(&self.envelope, record, "", &mut work);
            return (Err(SchemaFailure::Envelope(violations)), work);
        }
        // The envelope schema guarantees both; a deployment that edited it to allow another kind
        // still gets a clear envelope error instead of a panic.
        let Some(kind) = record
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Kind::parse)
        else {
            let violations = vec![SchemaViolation {
                pointer: "/kind".to_string(),
                rule: "enum".to_string(),
                message: "must be one of talent, materials, data".to_string(),
            }];
            return (Err(SchemaFailure::Envelope(violations)), work);
        };
        let Some(body) = record.get("body") else {
            let violations = vec![SchemaViolation {
                pointer: "/body".to_string(),
                rule: "required".to_string(),
                message: "required property `body` is missing".to_string(),
            }];
            return (Err(SchemaFailure::Envelope(violations)), work);
        };
        let compiled = self.compiled(kind);
        if compiled.validator.is_valid(body) {
            return (Ok(kind), work);
        }
        let violations = self.list_violations(compiled, body, "/body", &mut work);
        (Err(SchemaFailure::Body(kind, violations)), work)
    }

    /// SHA-256 (hex) over the schema files of this load: recorded in every audit entry.
    ///
    /// Input, in this fixed order: `envelope.json`, `talent.json`, `materials.json`, `data.json`,
    /// then `common.json` if present, then `ack.json` and each `ack/<kind>.json` present (in the
    /// order talent, materials, data); for each, the file name (`ack/talent.json` for an
    /// override), a zero byte, the content length as a big-endian u64 and the raw bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The schema document of a kind, as written: its references into `common.json` stay as
    /// they are and resolve through [`SchemaSet::follow_ref`]. Records' bodies are validated
    /// against exactly this document. `None` only if the set was built wrongly.
    pub fn kind_schema(&self, kind: Kind) -> Option<&Value> {
        self.document(&self.compiled(kind).base)
    }

    /// Holds a park endpoint's answer (parsed JSON) to the acknowledgement schema of `kind`:
    /// keeps only the properties the schema declares at its top level, then validates them.
    /// Pure: the caller counts and logs what was dropped.
    pub fn acknowledgement(&self, kind: Kind, answer: Value) -> AckCheck {
        self.acks.of(kind).check(answer)
    }

    /// The acknowledgement schema document in force for `kind` (`ack/<kind>.json` if present,
    /// else `ack.json`).
    pub fn ack_schema(&self, kind: Kind) -> &Value {
        &self.acks.of(kind).doc
    }

    /// The envelope schema document.
    pub fn envelope_schema(&self) -> Option<&Value> {
        self.document(&self.envelope.base)
    }

    /// Where the `$ref` `reference`, met in the document `root`, leads: the document it lands in
    /// and the node there. Resolved as the validator resolves it (relative to `root`'s `$id`,
    /// into `common.json` or within `root`); `None` if it leads nowhere this set knows.
    pub fn follow_ref<'a>(
        &'a self,
        root: &'a Value,
        reference: &str,
    ) -> Option<(&'a Value, &'a Value)> {
        let base = self.bases.iter().find(|base| {
            self.document(base)
                .is_some_and(|doc| std::ptr::eq(doc, root))
        })?;
        let target = self
            .documents
            .try_resolver(base)
            .ok()?
            .lookup(reference)
            .ok()?;
        let landed = target.resolver().lookup("#").ok()?.contents();
        Some((landed, target.contents()))
    }

    /// The document stored under `base`.
    fn document(&self, base: &str) -> Option<&Value> {
        let resolved = self.documents.try_resolver(base).ok()?.lookup("#").ok()?;
        Some(resolved.contents())
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

/// A schema file as read: checked to be a draft 2020-12 schema, not yet compiled.
struct SchemaFile {
    path: PathBuf,
    bytes: Vec<u8>,
    doc: Value,
    /// `$id`, or `json-schema:///<file name>` for a document without one: what the validator
    /// resolves its relative references against.
    base: String,
}

fn read_schema_file(path: &Path, file: &str) -> Result<SchemaFile, SchemaLoadError> {
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
    meta_check(&doc).map_err(|message| SchemaLoadError::invalid(path, message))?;
    // A relative `$id` (or none) resolves against `json-schema:///`, as in the validator.
    let id = doc.get("$id").and_then(Value::as_str).unwrap_or(file);
    let base = referencing::uri::from_str(id.trim_end_matches('#'))
        .map_err(|e| SchemaLoadError::invalid(path, format!("\"$id\" is not a usable URI: {e}")))?
        .as_str()
        .to_string();
    Ok(SchemaFile {
        path: path.to_path_buf(),
        bytes,
        doc,
        base,
    })
}

/// The URIs a kind may reach `common.json` by: its `$id`, and `common.json` beside the kind
/// (what `common.json#/...` means in a kind whose `$id` lies elsewhere, or that has none).
fn common_names(kind: &SchemaFile, common: &SchemaFile) -> Result<Vec<String>, SchemaLoadError> {
    let not_usable = |e: String| SchemaLoadError::invalid(&kind.path, e);
    let base = Uri::parse(kind.base.as_str())
        .map_err(|e| not_usable(format!("\"$id\" is not a usable URI: {e}")))?;
    let beside = referencing::uri::resolve_against(&base, COMMON_FILE)
        .map_err(|e| not_usable(format!("cannot place {COMMON_FILE} beside it: {e}")))?;
    let mut names = vec![common.base.clone()];
    if beside.as_str() != common.base {
        names.push(beside.as_str().to_string());
    }
    Ok(names)
}

/// A kind may not define a name `common.json` defines. References would resolve unambiguously
/// (`#/$defs/x` and `common.json#/$defs/x` are different documents), but a kind carrying its own
/// copy of a shared type is a copy waiting to drift: refused, as it always was.
fn refuse_shadowed_defs(kind: &SchemaFile, common: &SchemaFile) -> Result<(), SchemaLoadError> {
    let (Some(Value::Object(own)), Some(Value::Object(shared))) =
        (kind.doc.get("$defs"), common.doc.get("$defs"))
    else {
        return Ok(());
    };
    match own.keys().find(|name| shared.contains_key(*name)) {
        Some(name) => Err(SchemaLoadError::invalid(
            &kind.path,
            format!(
                "defines \"$defs/{name}\", which {} also defines: rename one",
                common.path.display()
            ),
        )),
        None => Ok(()),
    }
}

fn resource(file: &SchemaFile) -> Result<Resource, SchemaLoadError> {
    Resource::from_contents(file.doc.clone()).map_err(|e| {
        SchemaLoadError::invalid(&file.path, format!("is not a usable schema resource: {e}"))
    })
}

/// How every schema of a load is compiled (the whole documents and the pieces listing uses).
fn validation_options() -> jsonschema::ValidationOptions {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        // A misspelt format ("dat") would otherwise silently check nothing.
        .should_ignore_unknown_formats(false)
        // Linear-time matching: a hostile value cannot make a pattern backtrack for long.
        .with_pattern_options(PatternOptions::regex())
}

/// Compiles `file`, with the shared documents it may reference each under the URI given.
///
/// The validator is built from `{"$ref": <file>}` with the file as a resource, as the pieces
/// are: jsonschema 0.33 checks the root schema of every build against its process-wide
/// meta-schema validator, which grows with each document it is shown and never shrinks (see
/// [`meta_check`]); a one-line root keeps that check trivial. The file itself was checked
/// against the meta-schema when it was read. Validation is the same either way: the root
/// applies the whole document.
fn compile(
    file: &SchemaFile,
    shared: &[(String, &SchemaFile)],
) -> Result<Validator, SchemaLoadError> {
    let options = with_shared(validation_options(), shared)?
        .with_resource(file.base.clone(), resource(file)?);
    // Compiled as the root, the error's location is a place in the file. Only a file that
    // fails to compile pays for the process-wide check this way.
    compile_reference(options, &file.base).map_err(|by_reference| {
        let as_root = match with_shared(validation_options(), shared) {
            Ok(options) => options.with_base_uri(file.base.clone()),
            Err(unusable) => return unusable,
        };
        let e = as_root
            .build(&file.doc)
            .err()
            .map(Box::new)
            .unwrap_or(by_reference);
        // For a compile error the "instance" is the schema itself: its path says where in the
        // file the problem is.
        SchemaLoadError::invalid(
            &file.path,
            format!(
                "does not compile at {}: {}",
                display_pointer(e.instance_path.as_str()),
                e.masked_with("the value")
            ),
        )
    })
}

/// `options` with each shared document under the URI given.
fn with_shared(
    mut options: jsonschema::ValidationOptions,
    shared: &[(String, &SchemaFile)],
) -> Result<jsonschema::ValidationOptions, SchemaLoadError> {
    for (uri, doc) in shared {
        options = options.with_resource(uri.clone(), resource(doc)?);
    }
    Ok(options)
}

/// Builds the one-line root `{"$ref": target}` (under [`PIECE_BASE`]) with the documents
/// `options` holds: how whole documents and pieces are compiled (why: see [`compile`]).
fn compile_reference(
    options: jsonschema::ValidationOptions,
    target: &str,
) -> Result<Validator, Box<ValidationError<'static>>> {
    options
        .with_base_uri(PIECE_BASE)
        .build(&serde_json::json!({ "$ref": target }))
        .map_err(Box::new)
}

/// An error's keyword location without the one-line root's `$ref`: its place in the node the
/// root refers to.
fn below_root_ref(schema_path: &str) -> &str {
    schema_path.strip_prefix("/$ref").unwrap_or(schema_path)
}

/// Checks `doc` against the draft 2020-12 meta-schema, with a validator compiled for this one
/// check on a thread of its own.
///
/// Not `jsonschema::meta::try_validate`: in jsonschema 0.33 that validator is process-wide and
/// its recursive references (`$dynamicRef`) compile lazily, one more clone of the meta-schema
/// for every level of every document it checks, kept for the life of the process (upstream
/// issue Stranger6667/jsonschema#675). Checking the shipped schemas left 93 MiB live in every
/// gateway, most of its memory at start. Compiled per check, the same growth is garbage once the
/// check ends; and grown on a thread that then exits, it is all in memory the allocator frees
/// whole, rather than in pages it shares with the compiled schemas that stay. The gateway then
/// has those pages returned to the system once the load is over ([`crate::memory`]).
fn meta_check(doc: &Value) -> Result<(), String> {
    let check = || -> Result<(), String> {
        // The meta-schema documents are built into jsonschema's registry: a reference to the
        // dialect is all the root needs (and keeps the build's own meta-check trivial).
        let meta = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .build(&serde_json::json!({ "$ref": DIALECT_2020_12 }))
            .map_err(|e| format!("cannot be checked: the meta-schema does not compile: {e}"))?;
        meta.validate(doc).map_err(|e| {
            format!(
                "is not a valid draft 2020-12 schema at {}: {}",
                display_pointer(e.instance_path.as_str()),
                e.masked_with("the value")
            )
        })
    };
    std::thread::scope(|scope| {
        let checker = std::thread::Builder::new()
            .name("schema-meta-check".into())
            .spawn_scoped(scope, check)
            .map_err(|e| format!("cannot be checked: no thread for the meta-schema check: {e}"))?;
        checker
            .join()
            .unwrap_or_else(|_| Err("cannot be checked: the meta-schema check failed".into()))
    })
}

fn hash_file(hasher: &mut digest::Context, name: &str, bytes: &[u8]) {
    hasher.update(name.as_bytes());
    hasher.update(&[0]);
    hasher.update(&(bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
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

// === acknowledgements ===
//
// A park endpoint's answer crosses the boundary back to the sender. It is never relayed as it
// is: the gateway keeps only the properties the acknowledgement schema declares and relays them
// only if they then pass the schema. Dropping (rather than refusing an answer for an extra
// property) keeps a careless endpoint's acknowledgement usable while nothing undeclared gets
// through. For that to hold at every depth, an acknowledgement schema must be closed: checked
// at load by `check_closed`.

/// An endpoint's answer held to its acknowledgement schema.
#[derive(Debug, Clone, PartialEq)]
pub struct AckCheck {
    /// The declared properties, when they pass the schema: what may be relayed. `None` when the
    /// answer is not an object or what is left of it fails the schema.
    pub acknowledgement: Option<serde_json::Map<String, Value>>,
    /// Names of the top-level properties dropped because the schema does not declare them.
    pub undeclared: Vec<String>,
}

/// One compiled acknowledgement schema.
struct AckSchema {
    doc: Value,
    /// The top-level properties it declares: everything else is dropped.
    declared: Vec<String>,
    validator: Validator,
}

impl AckSchema {
    fn load(
        path: &Path,
        file: &str,
        hasher: &mut digest::Context,
    ) -> Result<Self, SchemaLoadError> {
        let schema = read_schema_file(path, file)?;
        hash_file(hasher, file, &schema.bytes);
        let declared = match schema.doc.get("properties") {
            Some(Value::Object(props)) if !props.is_empty() => props.keys().cloned().collect(),
            _ => {
                return Err(SchemaLoadError::invalid(
                    path,
                    "declares no \"properties\": an acknowledgement schema lists what a park \
                     endpoint's answer may carry back",
                ))
            }
        };
        if schema.doc.get("type") != Some(&Value::String("object".into())) {
            return Err(SchemaLoadError::invalid(
                path,
                "must have \"type\": \"object\" (an acknowledgement is a JSON object)",
            ));
        }
        if let Some(Value::Object(props)) = schema.doc.get("properties") {
            for (name, prop) in props {
                check_closed(prop, &format!("/properties/{}", escape_token(name)))
                    .map_err(|message| SchemaLoadError::invalid(path, message))?;
            }
        }
        let validator = compile(&schema, &[])?;
        Ok(AckSchema {
            doc: schema.doc,
            declared,
            validator,
        })
    }

    fn check(&self, answer: Value) -> AckCheck {
        let Value::Object(fields) = answer else {
            return AckCheck {
                acknowledgement: None,
                undeclared: Vec::new(),
            };
        };
        let mut kept = serde_json::Map::new();
        let mut undeclared = Vec::new();
        for (name, value) in fields {
            if self.declared.contains(&name) {
                kept.insert(name, value);
            } else {
                undeclared.push(name);
            }
        }
        let kept = Value::Object(kept);
        let acknowledgement = match (self.validator.is_valid(&kept), kept) {
            (true, Value::Object(map)) => Some(map),
            _ => None,
        };
        AckCheck {
            acknowledgement,
            undeclared,
        }
    }
}

/// `ack.json` and the per-kind overrides of one load.
struct Acknowledgements {
    default: AckSchema,
    talent: Option<AckSchema>,
    materials: Option<AckSchema>,
    data: Option<AckSchema>,
}

impl Acknowledgements {
    fn load(dir: &Path, hasher: &mut digest::Context) -> Result<Self, SchemaLoadError> {
        let default = AckSchema::load(&dir.join(ACK_FILE), ACK_FILE, hasher)?;
        let mut per_kind = |kind: Kind| -> Result<Option<AckSchema>, SchemaLoadError> {
            let file = format!("{ACK_DIR}/{}", kind_file(kind));
            let path = dir.join(ACK_DIR).join(kind_file(kind));
            if path.exists() {
                AckSchema::load(&path, &file, hasher).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Acknowledgements {
            talent: per_kind(Kind::Talent)?,
            materials: per_kind(Kind::Materials)?,
            data: per_kind(Kind::Data)?,
            default,
        })
    }

    fn of(&self, kind: Kind) -> &AckSchema {
        let own = match kind {
            Kind::Talent => &self.talent,
            Kind::Materials => &self.materials,
            Kind::Data => &self.data,
        };
        own.as_ref().unwrap_or(&self.default)
    }
}

/// A declared property of an acknowledgement must not be able to carry undeclared data inside
/// it: the gateway drops undeclared properties at the top level only, so below it the schema
/// itself must say exactly what may pass. Every declared value has a `type` (or `const` or
/// `enum`), every object among them `"additionalProperties": false` and no
/// `patternProperties`, every array its `items`, and no `$ref` (declared inline, so this check
/// sees everything that is allowed).
fn check_closed(node: &Value, at: &str) -> Result<(), String> {
    let Value::Object(schema) = node else {
        return Err(format!(
            "{at}: must be a schema object with a \"type\" (`true` would let anything back)"
        ));
    };
    if schema.contains_key("$ref") || schema.contains_key("$dynamicRef") {
        return Err(format!(
            "{at}: declare acknowledgement properties inline, without \"$ref\""
        ));
    }
    if schema.contains_key("const") || schema.contains_key("enum") {
        return Ok(());
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => {
            return Err(format!(
                "{at}: has no \"type\": say what the property may hold, nothing more"
            ))
        }
    };
    if types.contains(&"object") {
        if schema.get("additionalProperties") != Some(&Value::Bool(false))
            || schema.contains_key("patternProperties")
        {
            return Err(format!(
                "{at}: an object inside an acknowledgement needs \"additionalProperties\": false \
                 and no \"patternProperties\" (only the top level is filtered)"
            ));
        }
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (name, prop) in props {
                check_closed(prop, &format!("{at}/properties/{}", escape_token(name)))?;
            }
        }
    }
    if types.contains(&"array") {
        match schema.get("items") {
            Some(items) => check_closed(items, &format!("{at}/items"))?,
            None => {
                return Err(format!(
                    "{at}: an array inside an acknowledgement needs \"items\""
                ))
            }
        }
        if let Some(Value::Array(prefix)) = schema.get("prefixItems") {
            for (i, item) in prefix.iter().enumerate() {
                check_closed(item, &format!("{at}/prefixItems/{i}"))?;
            }
        }
    }
    Ok(())
}

// === violations ===

impl SchemaSet {
    /// The violations of a value its schema refused, in reading order, at most
    /// `max_violations` of them (the last then says that more were found).
    fn list_violations(
        &self,
        compiled: &CompiledSchema,
        value: &Value,
        prefix: &str,
        work: &mut ValidationWork,
    ) -> Vec<SchemaViolation> {
        let mut findings = Findings {
            // Only a failing record needs the document (titles and reasons for the messages).
            document: SchemaDoc {
                set: self,
                root: self.document(&compiled.base),
            },
            prefix,
            limit: self.max_violations,
            seen: HashSet::new(),
            found: Vec::new(),
            errors_examined: 0,
        };
        walk(&compiled.plan, value, "", &mut findings);
        work.errors_examined += findings.errors_examined;
        let mut out = findings.found;
        if out.is_empty() {
            // The whole validator refused the value but no piece did: never let that pass as
            // valid, and never panic on it.
            out.push(SchemaViolation {
                pointer: prefix.to_string(),
                rule: "schema".to_string(),
                message: "does not match its schema".to_string(),
            });
        }
        limit_violations(out, self.max_violations)
    }
}

/// The document a validator was compiled from, for looking up the schema nodes errors name.
struct SchemaDoc<'a> {
    set: &'a SchemaSet,
    root: Option<&'a Value>,
}

/// Sorts and caps the list at `limit` entries, the last of which then says more were found.
/// `found` holds distinct violations, at most one more than `limit`.
fn limit_violations(mut out: Vec<SchemaViolation>, limit: usize) -> Vec<SchemaViolation> {
    out.sort_by(compare_violations);
    if out.len() > limit {
        out.truncate(limit - 1);
        out.push(SchemaViolation {
            pointer: String::new(),
            rule: "truncated".to_string(),
            message: format!(
                "further violations are not listed (at most {limit} are reported, and checking \
                 stopped there)"
            ),
        });
    }
    out
}

// === bounded listing ===
//
// jsonschema's `iter_errors` is not lazy below the top: each schema node, `items` and
// `properties` collect the errors under them into a `Vec` before returning (jsonschema 0.33), so
// `iter_errors(record).take(n)` still builds every error first: 1.74 million of them, and about a
// gigabyte, for a 1 MiB record of 348,525 empty items. What makes the number of errors grow with
// the record is a keyword that applies a schema to every element or member ("fans out": `items`,
// `additionalProperties` with a schema, `patternProperties`, ...); everything else reports at most
// a few errors per keyword of the schema. So at load each document is cut, along the paths that
// lead to a fan-out, into pieces compiled on their own ([`Planner`]); [`walk`] hands jsonschema
// only pieces whose errors the schema bounds, element by element, and stops once it has one
// violation more than it lists. For a record with fewer violations than the limit the pieces
// report exactly what the whole schema reports, so the answer is the same.

/// Values a node the planner does not split ([`Plan::Guarded`]) may hold and still have every
/// violation listed; a larger value gets one violation summing the node up.
const GUARDED_MAX_VALUES: usize = 1000;
/// How deep the planner follows `$ref`s and subschemas; deeper (recursive) schemas are guarded.
const MAX_PLAN_DEPTH: usize = 64;
/// Base URI of the one-line schemas (`{"$ref": "<document>#<pointer>"}`) pieces compile from.
const PIECE_BASE: &str = "urn:hetao-gateway:piece";

/// A schema node compiled on its own, and where its errors belong in the whole schema.
struct Piece {
    validator: Validator,
    /// Keyword location of the node in the whole schema (`/properties/items/items`): the errors
    /// of the piece continue it.
    eval: String,
}

/// How the violations of one schema node are listed within the limit.
enum Plan {
    /// Nothing below the node fans out, so its errors are bounded by the schema's size:
    /// jsonschema lists them.
    Whole(Piece),
    /// The node's own keywords (`rest`: the branches that fan out replaced by `true`), then each
    /// of those branches planned on its own, elements one by one.
    Split(Box<Split>),
    /// A fan-out the planner does not cut (`additionalProperties` with a schema, `anyOf` over an
    /// array, recursion, ...): listed whole while the value is small, summed up when it is not.
    Guarded(Piece),
}

struct Split {
    rest: Piece,
    properties: Vec<(String, Plan)>,
    items: Option<Plan>,
    reference: Option<Plan>,
    all_of: Vec<Plan>,
    condition: Option<Condition>,
}

/// An `if` whose `then` or `else` fans out (a branch that does not stays in `rest`).
struct Condition {
    test: Validator,
    then: Option<Plan>,
    otherwise: Option<Plan>,
}

/// A schema node: which document it is in (index into [`Planner::docs`]) and where.
#[derive(Clone)]
struct NodeRef<'a> {
    doc: usize,
    /// JSON pointer of the node in its document.
    pointer: String,
    node: &'a Value,
}

impl<'a> NodeRef<'a> {
    /// The subschema under `key` (and `index`/name below it, for `allOf/0`, `properties/x`).
    fn child(&self, key: &str, below: Option<&str>) -> Option<NodeRef<'a>> {
        let mut node = self.node.get(key)?;
        let mut pointer = format!("{}/{}", self.pointer, escape_token(key));
        if let Some(name) = below {
            node = match node {
                Value::Object(members) => members.get(name)?,
                Value::Array(elements) => elements.get(name.parse::<usize>().ok()?)?,
                _ => return None,
            };
            pointer = format!("{pointer}/{}", escape_token(name));
        }
        Some(NodeRef {
            doc: self.doc,
            pointer,
            node,
        })
    }
}

/// Cuts the documents of one load into [`Plan`]s. Errors are plain messages: the caller names
/// the file.
struct Planner<'a> {
    /// The documents: the envelope and kinds in load order, then `common.json`.
    docs: Vec<&'a Value>,
    /// The base URI of each document (what its relative references resolve against).
    bases: Vec<&'a str>,
    /// Every URI a document is known by (`common.json` under several), with its index.
    names: Vec<(String, usize)>,
}

impl<'a> Planner<'a> {
    fn new(files: &'a [SchemaFile], common: Option<&'a SchemaFile>, shared: &[String]) -> Self {
        let mut docs: Vec<&Value> = files.iter().map(|f| &f.doc).collect();
        let mut bases: Vec<&str> = files.iter().map(|f| f.base.as_str()).collect();
        let mut names: Vec<(String, usize)> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.base.clone(), i))
            .collect();
        if let Some(common) = common {
            let i = docs.len();
            docs.push(&common.doc);
            bases.push(&common.base);
            names.push((common.base.clone(), i));
            for name in shared.iter().filter(|n| **n != common.base) {
                names.push((name.clone(), i));
            }
        }
        Planner { docs, bases, names }
    }

    fn plan_document(&self, doc: usize) -> Result<Plan, String> {
        let root = NodeRef {
            doc,
            pointer: String::new(),
            node: self.docs[doc],
        };
        self.plan(&root, String::new(), 0)
    }

    fn plan(&self, at: &NodeRef<'a>, eval: String, depth: usize) -> Result<Plan, String> {
        if !self.fans_out(at, 0) {
            return Ok(Plan::Whole(self.piece(at, None, eval)?));
        }
        match self.split(at, &eval, depth)? {
            Some(split) => Ok(Plan::Split(Box::new(split))),
            None => Ok(Plan::Guarded(self.piece(at, None, eval)?)),
        }
    }

    /// Cuts a node that fans out, or `None` when it fans out where it cannot be cut.
    fn split(&self, at: &NodeRef<'a>, eval: &str, depth: usize) -> Result<Option<Split>, String> {
        let Value::Object(members) = at.node else {
            return Ok(None);
        };
        // A nested `$id` changes what references below it resolve against; a `prefixItems`
        // shifts which elements `items` applies to. Neither is cut.
        if depth > MAX_PLAN_DEPTH
            || (members.contains_key("$id") && !at.pointer.is_empty())
            || members.contains_key("prefixItems")
        {
            return Ok(None);
        }
        let mut rest = members.clone();
        let mut split = SplitParts::default();
        for (key, value) in members {
            if !self.key_fans_out(at, key, value, 0) {
                continue;
            }
            let child_eval = |below: &str| format!("{eval}/{}{below}", escape_token(key));
            match key.as_str() {
                "properties" => {
                    let Value::Object(properties) = value else {
                        return Ok(None);
                    };
                    for name in properties.keys() {
                        let Some(child) = at.child(key, Some(name)) else {
                            return Ok(None);
                        };
                        if self.fans_out(&child, 0) {
                            let plan = self.plan(
                                &child,
                                child_eval(&format!("/{}", escape_token(name))),
                                depth + 1,
                            )?;
                            split.properties.push((name.clone(), plan));
                            set_true(&mut rest, key, Some(name));
                        }
                    }
                }
                "items" => {
                    let Some(child) = at.child(key, None) else {
                        return Ok(None);
                    };
                    split.items = Some(self.plan(&child, child_eval(""), depth + 1)?);
                    set_true(&mut rest, key, None);
                }
                "$ref" => {
                    let Some(target) = value.as_str().and_then(|r| self.resolve(at, r)) else {
                        return Ok(None);
                    };
                    split.reference = Some(self.plan(&target, child_eval(""), depth + 1)?);
                    rest.remove(key);
                }
                "allOf" => {
                    let Value::Array(branches) = value else {
                        return Ok(None);
                    };
                    for i in 0..branches.len() {
                        let index = i.to_string();
                        let Some(child) = at.child(key, Some(&index)) else {
                            return Ok(None);
                        };
                        if self.fans_out(&child, 0) {
                            let plan =
                                self.plan(&child, child_eval(&format!("/{i}")), depth + 1)?;
                            split.all_of.push(plan);
                            set_true(&mut rest, key, Some(&index));
                        }
                    }
                }
                "then" | "else" => {
                    // Without `if` both are ignored: nothing to list.
                    let Some(test) = at.child("if", None) else {
                        continue;
                    };
                    let Some(child) = at.child(key, None) else {
                        return Ok(None);
                    };
                    let plan = self.plan(&child, child_eval(""), depth + 1)?;
                    let condition = split.condition.get_or_insert(PendingCondition {
                        test,
                        then: None,
                        otherwise: None,
                    });
                    if key == "then" {
                        condition.then = Some(plan);
                    } else {
                        condition.otherwise = Some(plan);
                    }
                    set_true(&mut rest, key, None);
                }
                _ => return Ok(None),
            }
        }
        let rest = self.piece(at, Some(Value::Object(rest)), eval.to_string())?;
        let condition = match split.condition {
            Some(c) => Some(Condition {
                test: self.piece(&c.test, None, String::new())?.validator,
                then: c.then,
                otherwise: c.otherwise,
            }),
            None => None,
        };
        Ok(Some(Split {
            rest,
            properties: split.properties,
            items: split.items,
            reference: split.reference,
            all_of: split.all_of,
            condition,
        }))
    }

    /// Whether the node can report errors in numbers that grow with the value checked. When
    /// unsure (recursion, dynamic references) it says yes: the node is then cut or guarded.
    fn fans_out(&self, at: &NodeRef<'a>, depth: usize) -> bool {
        match at.node {
            Value::Object(members) => members
                .iter()
                .any(|(key, value)| self.key_fans_out(at, key, value, depth)),
            _ => false,
        }
    }

    fn key_fans_out(&self, at: &NodeRef<'a>, key: &str, value: &Value, depth: usize) -> bool {
        if depth > MAX_PLAN_DEPTH {
            return true;
        }
        let child_fans_out = |below: Option<&str>| match at.child(key, below) {
            Some(child) => self.fans_out(&child, depth + 1),
            None => false,
        };
        match key {
            // One error per element or member.
            "items" | "unevaluatedItems" | "propertyNames" => !accepts_all(value),
            // `false` is one error naming every unexpected member; a schema, errors per member.
            "additionalProperties" | "unevaluatedProperties" => {
                !accepts_all(value) && value != &Value::Bool(false)
            }
            "patternProperties" => value
                .as_object()
                .is_some_and(|m| m.values().any(|v| !accepts_all(v))),
            "$dynamicRef" | "$recursiveRef" => true,
            "$ref" => match value.as_str().and_then(|r| self.resolve(at, r)) {
                Some(target) => self.fans_out(&target, depth + 1),
                None => true,
            },
            "properties" | "dependentSchemas" => value
                .as_object()
                .is_some_and(|m| m.keys().any(|name| child_fans_out(Some(name)))),
            // `anyOf` and `oneOf` collect their branches' errors to describe a failure.
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => value
                .as_array()
                .is_some_and(|a| (0..a.len()).any(|i| child_fans_out(Some(&i.to_string())))),
            "then" | "else" => child_fans_out(None),
            // `if`, `not` and `contains` only ask whether their subschema holds (one error at
            // most); every other keyword is an assertion or an annotation.
            _ => false,
        }
    }

    /// The node a `$ref` met at `at` leads to, when it is a document of this load and a JSON
    /// pointer (anchors and percent-encoded pointers are not followed: the node is guarded).
    fn resolve(&self, at: &NodeRef<'a>, reference: &str) -> Option<NodeRef<'a>> {
        let base = Uri::parse(self.bases[at.doc]).ok()?;
        let full = referencing::uri::resolve_against(&base, reference).ok()?;
        let full = full.as_str();
        let (uri, fragment) = full.split_once('#').unwrap_or((full, ""));
        if !(fragment.is_empty() || fragment.starts_with('/')) || fragment.contains('%') {
            return None;
        }
        let doc = self.names.iter().find(|(name, _)| name == uri)?.1;
        let node = self.docs[doc].pointer(fragment)?;
        Some(NodeRef {
            doc,
            pointer: fragment.to_string(),
            node,
        })
    }

    /// Compiles the node at `at` on its own — or `replacement` in its place — with every
    /// document of the load available to its references, as the whole schema compiles it.
    fn piece(
        &self,
        at: &NodeRef<'a>,
        replacement: Option<Value>,
        eval: String,
    ) -> Result<Piece, String> {
        let replaced = match replacement {
            Some(node) => {
                let mut doc = self.docs[at.doc].clone();
                let slot = doc
                    .pointer_mut(&at.pointer)
                    .ok_or_else(|| format!("no node at {}", display_pointer(&at.pointer)))?;
                *slot = node;
                Some(doc)
            }
            None => None,
        };
        let mut options = validation_options();
        for (name, i) in &self.names {
            let doc = match (&replaced, *i == at.doc) {
                (Some(doc), true) => doc.clone(),
                _ => self.docs[*i].clone(),
            };
            let resource = Resource::from_contents(doc)
                .map_err(|e| format!("{name} is not a usable schema resource: {e}"))?;
            options = options.with_resource(name.clone(), resource);
        }
        let target = format!("{}#{}", self.bases[at.doc], encode_fragment(&at.pointer));
        let validator = compile_reference(options, &target).map_err(|e| {
            format!(
                "the node at {} does not compile on its own: {}",
                display_pointer(&at.pointer),
                e.masked_with("the value")
            )
        })?;
        Ok(Piece { validator, eval })
    }
}

#[derive(Default)]
struct SplitParts<'a> {
    properties: Vec<(String, Plan)>,
    items: Option<Plan>,
    reference: Option<Plan>,
    all_of: Vec<Plan>,
    condition: Option<PendingCondition<'a>>,
}

struct PendingCondition<'a> {
    test: NodeRef<'a>,
    then: Option<Plan>,
    otherwise: Option<Plan>,
}

/// Replaces `key` (or `key`'s member `below`) of a node by `true`: a branch listed on its own.
fn set_true(node: &mut serde_json::Map<String, Value>, key: &str, below: Option<&str>) {
    let Some(slot) = node.get_mut(key) else {
        return;
    };
    let slot = match (below, slot) {
        (None, slot) => slot,
        (Some(name), Value::Object(members)) => match members.get_mut(name) {
            Some(slot) => slot,
            None => return,
        },
        (Some(index), Value::Array(elements)) => {
            match index
                .parse::<usize>()
                .ok()
                .and_then(|i| elements.get_mut(i))
            {
                Some(slot) => slot,
                None => return,
            }
        }
        _ => return,
    };
    *slot = Value::Bool(true);
}

/// A schema that no value fails.
fn accepts_all(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(members) => members.is_empty(),
        _ => false,
    }
}

/// A JSON pointer token with `~` and `/` escaped.
fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer as a URI fragment: anything outside the characters a fragment may hold as
/// they are is percent-encoded (`referencing` decodes it again).
fn encode_fragment(pointer: &str) -> String {
    let mut out = String::with_capacity(pointer.len());
    for byte in pointer.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Violations found so far: distinct, at most one more than the limit.
struct Findings<'s> {
    document: SchemaDoc<'s>,
    /// `/body` for a kind's schema: pointers are into the whole record.
    prefix: &'s str,
    limit: usize,
    seen: HashSet<SchemaViolation>,
    found: Vec<SchemaViolation>,
    errors_examined: u64,
}

impl Findings<'_> {
    /// One more than the limit is known to exist: nothing further is looked at.
    fn enough(&self) -> bool {
        self.found.len() > self.limit
    }

    /// How many more violations are still wanted.
    fn wanted(&self) -> usize {
        (self.limit + 1).saturating_sub(self.found.len())
    }

    fn add(&mut self, violation: SchemaViolation) {
        if !self.enough() && !self.seen.contains(&violation) {
            self.seen.insert(violation.clone());
            self.found.push(violation);
        }
    }
}

/// Lists the violations of `value` (at `pointer` in the value validated) under `plan`, until
/// there are enough.
fn walk(plan: &Plan, value: &Value, pointer: &str, findings: &mut Findings<'_>) {
    if findings.enough() {
        return;
    }
    match plan {
        Plan::Whole(piece) => list_piece(piece, value, pointer, findings),
        Plan::Guarded(piece) => {
            if piece.validator.is_valid(value) {
                return;
            }
            if count_values(value, GUARDED_MAX_VALUES) <= GUARDED_MAX_VALUES {
                list_piece(piece, value, pointer, findings);
            } else {
                let at = if piece.eval.is_empty() {
                    "the root of the schema".to_string()
                } else {
                    piece.eval.clone()
                };
                let violation = SchemaViolation {
                    pointer: cap_pointer(format!("{}{pointer}", findings.prefix)),
                    rule: "schema".to_string(),
                    message: format!(
                        "does not match the schema at {at}; a value of more than \
                         {GUARDED_MAX_VALUES} values is not checked violation by violation there"
                    ),
                };
                findings.add(violation);
            }
        }
        Plan::Split(split) => {
            list_piece(&split.rest, value, pointer, findings);
            if let Value::Object(members) = value {
                for (name, plan) in &split.properties {
                    if let Some(member) = members.get(name) {
                        walk(plan, member, &join_pointer(pointer, name), findings);
                    }
                }
            }
            if let (Some(plan), Value::Array(elements)) = (&split.items, value) {
                for (i, element) in elements.iter().enumerate() {
                    if findings.enough() {
                        break;
                    }
                    walk(plan, element, &format!("{pointer}/{i}"), findings);
                }
            }
            if let Some(plan) = &split.reference {
                walk(plan, value, pointer, findings);
            }
            for plan in &split.all_of {
                walk(plan, value, pointer, findings);
            }
            if let Some(condition) = &split.condition {
                let branch = if condition.test.is_valid(value) {
                    &condition.then
                } else {
                    &condition.otherwise
                };
                if let Some(plan) = branch {
                    walk(plan, value, pointer, findings);
                }
            }
        }
    }
}

/// The violations one piece reports for `value`: bounded by the schema, not by the value.
fn list_piece(piece: &Piece, value: &Value, pointer: &str, findings: &mut Findings<'_>) {
    if piece.validator.is_valid(value) {
        return;
    }
    for error in piece.validator.iter_errors(value) {
        findings.errors_examined += 1;
        // The piece is `{"$ref": <node>}`: its errors' keyword locations start with that `$ref`.
        let own = below_root_ref(error.schema_path.as_str());
        let schema_path = format!("{}{own}", piece.eval);
        let instance_path = format!("{pointer}{}", error.instance_path.as_str());
        to_violations(findings, &error, &schema_path, &instance_path);
        if findings.enough() {
            break;
        }
    }
}

/// The number of values in `value` (itself, and every element and member below), counted up to
/// just past `limit`.
fn count_values(value: &Value, limit: usize) -> usize {
    let mut count = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        count += 1;
        if count > limit {
            break;
        }
        match v {
            Value::Array(elements) => stack.extend(elements),
            Value::Object(members) => stack.extend(members.values()),
            _ => {}
        }
    }
    count
}

/// Turns one validation error into one or more violations (one per unexpected property).
/// `schema_path` and `instance_path` locate the error in the whole schema and the whole value
/// checked (the error's own paths are relative to the piece that found it).
fn to_violations(
    findings: &mut Findings<'_>,
    error: &ValidationError<'_>,
    schema_path: &str,
    instance_path: &str,
) {
    let document = &findings.document;
    let base = format!("{}{instance_path}", findings.prefix);
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

    // One error can name every member of an object (`additionalProperties`): take no more
    // names than can still be listed.
    let wanted = findings.wanted();
    let mut push = |pointer: String, rule: &str, message: String| {
        findings.add(SchemaViolation {
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
            for name in unexpected.iter().take(wanted) {
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
        ValidationErrorKind::Constant { expected_value } => {
            push(base, "const", format!("must be {expected_value}{because}"))
        }
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
        ValidationErrorKind::Maximum { limit } => {
            push(base, "maximum", format!("must be at most {limit}{because}"))
        }
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
fn condition_description<'a>(document: &SchemaDoc<'a>, schema_path: &str) -> Option<&'a str> {
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
/// following `$ref` segments wherever they lead (within the document or into `common.json`).
fn schema_node_at_path<'a>(document: &SchemaDoc<'a>, schema_path: &str) -> Option<&'a Value> {
    let mut root = document.root?;
    let mut node = root;
    for raw in schema_path.split('/').skip(1) {
        let segment = unescape_token(raw);
        if segment == "$ref" {
            let target = node.get("$ref")?.as_str()?;
            (root, node) = document.set.follow_ref(root, target)?;
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

/// A JSON pointer token with `~1` and `~0` unescaped.
fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn manifest_dir() -> PathBuf {
        // The repository root: this crate lives in `crates/gateway-core/`.
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn shipped_dir() -> PathBuf {
        manifest_dir().join("schemas")
    }

    fn shipped() -> SchemaSet {
        SchemaSet::load(&shipped_dir()).unwrap()
    }

    fn example(name: &str) -> Value {
        let path = manifest_dir().join("examples/records").join(name);
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }

    fn body_violations(set: &SchemaSet, record: &Value) -> Vec<SchemaViolation> {
        match set.validate(record) {
            Err(SchemaFailure::Body(_, v)) => v,
            other => panic!("expected a body failure, got {other:?}"),
        }
    }

    fn envelope_violations(set: &SchemaSet, record: &Value) -> Vec<SchemaViolation> {
        match set.validate(record) {
            Err(SchemaFailure::Envelope(v)) => v,
            other => panic!("expected an envelope failure, got {other:?}"),
        }
    }

    fn has(violations: &[SchemaViolation], pointer: &str, rule: &str) -> bool {
        violations
            .iter()
            .any(|v| v.pointer == pointer && v.rule == rule)
    }

    /// A copy of the shipped schemas in a tempdir, for tests that break one file.
    fn copied_schemas() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(shipped_dir()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
        dir
    }

    fn load_err(dir: &Path) -> String {
        match SchemaSet::load(dir) {
            Ok(_) => panic!("a broken schema set was accepted"),
            Err(e) => e.to_string(),
        }
    }

    // === loading ===

    #[test]
    fn shipped_schemas_load_and_hash_is_stable_lowercase_hex() {
        let a = shipped();
        let b = shipped();
        assert_eq!(a.hash().len(), 64);
        assert!(a
            .hash()
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn hash_changes_when_any_schema_file_changes() {
        let dir = copied_schemas();
        let before = SchemaSet::load(dir.path()).unwrap().hash().to_string();
        let path = dir.path().join(COMMON_FILE);
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["description"] = json!("edited");
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        let after = SchemaSet::load(dir.path()).unwrap().hash().to_string();
        assert_ne!(before, after);
    }

    #[test]
    fn schema_set_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<SchemaSet>();
    }

    #[test]
    fn every_ref_in_a_kind_resolves_within_it_or_into_common_json() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        out.push(r);
                    }
                    o.values().for_each(|c| refs(c, out));
                }
                Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
                _ => {}
            }
        }
        let set = shipped();
        for kind in Kind::ALL {
            let doc = set.kind_schema(kind).unwrap();
            let mut found = Vec::new();
            refs(doc, &mut found);
            assert!(
                found.iter().any(|r| r.starts_with("common.json#/$defs/")),
                "{kind} uses shared definitions"
            );
            for r in found {
                let (landed, target) = set
                    .follow_ref(doc, r)
                    .unwrap_or_else(|| panic!("{kind}: dangling $ref {r}"));
                let local = r.starts_with('#');
                assert_eq!(std::ptr::eq(landed, doc), local, "{kind}: {r}");
                assert!(target.is_object(), "{kind}: {r} -> {target}");
            }
            assert_eq!(doc["$schema"], DIALECT_2020_12);
        }
    }

    #[test]
    fn every_object_refuses_unknown_fields_and_every_field_is_described() {
        // Conditional branches (`allOf`, `if`/`then`/`else`) only re-constrain declared fields.
        fn check(node: &Value, path: &str, in_condition: bool, problems: &mut Vec<String>) {
            match node {
                Value::Object(obj) => {
                    if let (Some(Value::Object(props)), false) =
                        (obj.get("properties"), in_condition)
                    {
                        if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
                            problems.push(format!("{path}: additionalProperties is not false"));
                        }
                        for (name, prop) in props {
                            if prop.get("description").is_none() {
                                problems.push(format!("{path}/properties/{name}: no description"));
                            }
                        }
                    }
                    for (key, child) in obj {
                        let conditional = in_condition
                            || matches!(key.as_str(), "allOf" | "if" | "then" | "else");
                        check(child, &format!("{path}/{key}"), conditional, problems);
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        check(item, &format!("{path}/{i}"), in_condition, problems);
                    }
                }
                _ => {}
            }
        }
        let set = shipped();
        let mut problems = Vec::new();
        check(
            set.envelope_schema().unwrap(),
            "envelope",
            false,
            &mut problems,
        );
        for kind in Kind::ALL {
            check(
                set.kind_schema(kind).unwrap(),
                kind.as_str(),
                false,
                &mut problems,
            );
        }
        // The shared definitions are no longer copied into the kinds: check them where they are.
        let talent = set.kind_schema(Kind::Talent).unwrap();
        let (common, _) = set.follow_ref(talent, "common.json#").unwrap();
        assert!(common.get("$defs").is_some());
        check(common, "common", false, &mut problems);
        check(set.ack_schema(Kind::Talent), "ack", false, &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn broken_schema_file_is_refused_with_its_name() {
        let dir = copied_schemas();
        let path = dir.path().join("talent.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["properties"]["purpose"]["type"] = json!("strnig");
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("talent.json"), "{err}");
        assert!(err.contains("not a valid draft 2020-12 schema"), "{err}");
        assert!(err.contains("/properties/purpose/type"), "{err}");
    }

    #[test]
    fn schema_file_that_is_not_json_is_refused_with_its_name() {
        let dir = copied_schemas();
        std::fs::write(dir.path().join("materials.json"), b"{\"$schema\": ").unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("materials.json"), "{err}");
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn schema_of_another_draft_is_refused() {
        let dir = copied_schemas();
        let path = dir.path().join("data.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["$schema"] = json!("http://json-schema.org/draft-07/schema#");
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("data.json") && err.contains("draft 2020-12"),
            "{err}"
        );
    }

    #[test]
    fn missing_schema_file_is_refused_with_its_name() {
        let dir = copied_schemas();
        std::fs::remove_file(dir.path().join("envelope.json")).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("envelope.json") && err.contains("cannot be read"),
            "{err}"
        );
    }

    #[test]
    fn unknown_format_in_a_schema_is_refused() {
        let dir = copied_schemas();
        let path = dir.path().join("talent.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["properties"]["limit_of_stay"]["format"] = json!("dat");
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("talent.json") && err.contains("'dat'"),
            "{err}"
        );
        assert!(err.contains("/properties/limit_of_stay"), "{err}");
    }

    #[test]
    fn remote_ref_is_refused_never_fetched() {
        let dir = copied_schemas();
        let path = dir.path().join("data.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["properties"]["purpose"] = json!({"$ref": "https://example.org/purposes.json"});
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("data.json") && err.contains("does not compile"),
            "{err}"
        );
        assert!(err.contains("https://example.org/purposes.json"), "{err}");
    }

    #[test]
    fn kinds_referring_to_a_missing_shared_file_are_refused() {
        let dir = copied_schemas();
        std::fs::remove_file(dir.path().join(COMMON_FILE)).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("talent.json"), "{err}");
        assert!(err.contains("common.json"), "{err}");
    }

    #[test]
    fn envelope_schema_must_require_the_routing_fields() {
        let dir = copied_schemas();
        let path = dir.path().join(ENVELOPE_FILE);
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["required"] = json!(["record_id", "kind", "body"]);
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("envelope.json") && err.contains("from, to"),
            "{err}"
        );
    }

    #[test]
    fn kind_defining_a_shared_name_again_is_refused() {
        let dir = copied_schemas();
        let path = dir.path().join("materials.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["$defs"]["party"] = json!({"type": "object"});
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("materials.json") && err.contains("$defs/party"),
            "{err}"
        );
    }

    // === the example records ===

    #[test]
    fn every_example_record_is_valid_and_each_kind_goes_both_ways() {
        let set = shipped();
        let mut routes = std::collections::BTreeMap::<(String, String, String), usize>::new();
        let dir = manifest_dir().join("examples/records");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let kind = set
                .validate(&record)
                .unwrap_or_else(|f| panic!("{}: {f:?}", path.display()));
            assert_eq!(kind.as_str(), record["kind"]);
            let route = (
                kind.to_string(),
                record["from"].as_str().unwrap().to_string(),
                record["to"].as_str().unwrap().to_string(),
            );
            *routes.entry(route).or_default() += 1;
        }
        for kind in Kind::ALL {
            for (from, to) in [("sz", "hk"), ("hk", "sz")] {
                let n = routes
                    .get(&(kind.to_string(), from.to_string(), to.to_string()))
                    .copied()
                    .unwrap_or(0);
                assert!(n >= 2, "{kind} {from}->{to}: only {n} examples");
            }
        }
    }

    #[test]
    fn every_invalid_example_fails_with_its_documented_violation() {
        let set = shipped();
        let cases = [
            (
                "materials-missing-consignor.json",
                true,
                "/body/consignor",
                "required",
            ),
            ("data-bad-data-grade.json", true, "/body/data_grade", "enum"),
            (
                "talent-additional-property.json",
                true,
                "/body/passport_number",
                "additionalProperties",
            ),
            (
                "data-sensitive-pi-without-types.json",
                true,
                "/body/sensitive_pi_types",
                "required",
            ),
            (
                "materials-bad-hs-code.json",
                true,
                "/body/items/1/hs_code",
                "pattern",
            ),
            (
                "talent-bad-date.json",
                true,
                "/body/limit_of_stay",
                "format",
            ),
            ("envelope-bad-record-id.json", false, "/record_id", "format"),
        ];
        let dir = manifest_dir().join("examples/records/invalid");
        let on_disk = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(
            on_disk,
            cases.len(),
            "every invalid example has a case here"
        );
        for (file, in_body, pointer, rule) in cases {
            let record = example(&format!("invalid/{file}"));
            let violations = if in_body {
                body_violations(&set, &record)
            } else {
                envelope_violations(&set, &record)
            };
            assert!(has(&violations, pointer, rule), "{file}: {violations:?}");
        }
    }

    // === specific violations ===

    #[test]
    fn missing_required_field_is_reported_at_the_missing_property() {
        let set = shipped();
        let mut r = example("materials-sz-hk-hgr-samples.json");
        r["body"].as_object_mut().unwrap().remove("consignor");
        let v = body_violations(&set, &r);
        assert_eq!(
            v,
            vec![SchemaViolation {
                pointer: "/body/consignor".into(),
                rule: "required".into(),
                message: "required property `consignor` is missing".into(),
            }]
        );
    }

    #[test]
    fn missing_envelope_field_is_reported_at_the_missing_property() {
        let set = shipped();
        let mut r = example("talent-sz-hk-researcher.json");
        r.as_object_mut().unwrap().remove("created_at");
        let v = envelope_violations(&set, &r);
        assert!(has(&v, "/created_at", "required"), "{v:?}");
    }

    #[test]
    fn bad_enum_value_is_reported_with_the_allowed_values_and_not_the_value() {
        let set = shipped();
        let mut r = example("data-sz-hk-academic-measurements.json");
        r["body"]["data_grade"] = json!("top-secret-HKID-A1234567");
        let v = body_violations(&set, &r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].pointer.as_str(), v[0].rule.as_str()),
            ("/body/data_grade", "enum")
        );
        assert!(v[0].message.contains("core, important, general"), "{v:?}");
        assert!(!v[0].message.contains("A1234567"), "value echoed: {v:?}");
    }

    #[test]
    fn bad_date_is_a_format_violation() {
        let set = shipped();
        let mut r = example("materials-sz-hk-quantum-equipment.json");
        r["body"]["permits"][0]["valid_to"] = json!("2027-02-30");
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/permits/0/valid_to", "format"), "{v:?}");
        assert!(v[0].message.contains("YYYY-MM-DD"), "{v:?}");
    }

    #[test]
    fn date_time_without_offset_is_a_format_violation() {
        let set = shipped();
        let mut r = example("talent-hk-sz-researcher.json");
        r["body"]["entry_at"] = json!("2026-12-01 08:45");
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/entry_at", "format"), "{v:?}");
    }

    #[test]
    fn bad_uuid_is_an_envelope_violation_and_body_is_not_checked() {
        let set = shipped();
        let mut r = example("talent-hk-sz-researcher.json");
        r["record_id"] = json!("3f6c2a9e-8d41-4b7a-9c15-2e7d0b94a6");
        r["body"]["purpose"] = json!("smuggling");
        let v = envelope_violations(&set, &r);
        assert!(has(&v, "/record_id", "format"), "{v:?}");
        assert!(has(&v, "/record_id", "pattern"), "{v:?}");
        assert!(v.iter().all(|x| !x.pointer.starts_with("/body/")), "{v:?}");
    }

    #[test]
    fn record_that_is_not_an_object_is_an_envelope_type_violation() {
        let set = shipped();
        let v = envelope_violations(&set, &json!(["talent"]));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].pointer.as_str(), v[0].rule.as_str()), ("", "type"));
        assert_eq!(v[0].message, "must be an object, not an array");
        let mut r = example("talent-hk-sz-researcher.json");
        r["body"] = json!("person");
        let v = envelope_violations(&set, &r);
        assert!(has(&v, "/body", "type"), "{v:?}");
    }

    #[test]
    fn shared_refs_resolve_in_schemas_but_not_inside_data_or_property_names() {
        let dir = copied_schemas();
        let path = dir.path().join("data.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        // A property called `enum` whose schema is a shared reference, and a `const` whose value
        // merely looks like one: the first is a schema, the second is data compared as is.
        doc["properties"]["enum"] = json!({
            "description": "a property named like a keyword",
            "$ref": "common.json#/$defs/zone"
        });
        doc["properties"]["literal"] = json!({
            "description": "data shaped like a reference",
            "const": {"$ref": "common.json#/$defs/zone"}
        });
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let set = SchemaSet::load(dir.path()).unwrap();

        let mut r = example("data-sz-hk-academic-measurements.json");
        r["body"]["enum"] = json!("hk_park");
        r["body"]["literal"] = json!({"$ref": "common.json#/$defs/zone"});
        assert!(set.validate(&r).is_ok(), "{:?}", set.validate(&r));

        r["body"]["enum"] = json!("atlantis");
        r["body"]["literal"] = json!("hk_park");
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/enum", "enum"), "{v:?}");
        assert!(has(&v, "/body/literal", "const"), "{v:?}");
    }

    #[test]
    fn kinds_without_an_id_find_common_json_beside_them() {
        let dir = copied_schemas();
        for file in ["common.json", "talent.json", "materials.json", "data.json"] {
            let path = dir.path().join(file);
            let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            doc.as_object_mut().unwrap().remove("$id");
            std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        }
        let set = SchemaSet::load(dir.path()).unwrap();
        let shipped = shipped();
        for (name, party) in [
            ("data-sz-hk-academic-measurements.json", "exporter"),
            ("materials-hk-sz-bio-reagents.json", "consignor"),
        ] {
            let mut r = example(name);
            assert!(set.validate(&r).is_ok(), "{name}");
            // A shared type still checks, with the same answer as the shipped set gives.
            r["body"][party] = json!({"name": "x"});
            let v = body_violations(&set, &r);
            assert!(
                v.iter()
                    .any(|v| v.pointer.starts_with(&format!("/body/{party}/"))),
                "{v:?}"
            );
            assert_eq!(set.validate(&r), shipped.validate(&r), "{name}");
        }
    }

    #[test]
    fn a_record_id_in_upper_or_mixed_case_is_an_envelope_violation() {
        let set = shipped();
        let mut r = example("talent-hk-sz-researcher.json");
        r["record_id"] = json!("c8e1f0a3-2b6d-4e95-a7c4-0d3f58b19e72");
        assert_eq!(set.validate(&r), Ok(Kind::Talent));
        for id in [
            "C8E1F0A3-2B6D-4E95-A7C4-0D3F58B19E72",
            "c8e1f0a3-2B6D-4e95-a7c4-0d3f58b19e72",
        ] {
            r["record_id"] = json!(id);
            let v = envelope_violations(&set, &r);
            assert!(has(&v, "/record_id", "pattern"), "{id}: {v:?}");
        }
    }

    #[test]
    fn park_ids_must_be_short_lowercase_ids() {
        let set = shipped();
        let mut r = example("talent-hk-sz-researcher.json");
        r["to"] = json!("Shenzhen Park");
        let v = envelope_violations(&set, &r);
        assert!(has(&v, "/to", "pattern"), "{v:?}");
    }

    #[test]
    fn additional_property_is_reported_at_the_property() {
        let set = shipped();
        let mut r = example("materials-sz-hk-lab-mice.json");
        r["body"]["items"][0]["colour"] = json!("white");
        r["extra"] = json!(1);
        let v = envelope_violations(&set, &r);
        assert!(has(&v, "/extra", "additionalProperties"), "{v:?}");
        r.as_object_mut().unwrap().remove("extra");
        let v = body_violations(&set, &r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            has(&v, "/body/items/0/colour", "additionalProperties"),
            "{v:?}"
        );
    }

    #[test]
    fn bad_hs_code_is_a_pattern_violation() {
        let set = shipped();
        for bad in ["3002.12", "300212", "30021200001", "300212000A"] {
            let mut r = example("materials-sz-hk-hgr-samples.json");
            r["body"]["items"][0]["hs_code"] = json!(bad);
            let v = body_violations(&set, &r);
            assert!(has(&v, "/body/items/0/hs_code", "pattern"), "{bad}: {v:?}");
        }
        let mut r = example("materials-sz-hk-hgr-samples.json");
        r["body"]["items"][0]["hs_code"] = json!("30021200");
        assert_eq!(
            set.validate(&r),
            Ok(Kind::Materials),
            "8 digits (Hong Kong)"
        );
    }

    #[test]
    fn sensitive_pi_without_types_is_required_with_the_reason() {
        let set = shipped();
        let mut r = example("data-sz-hk-gba-clinical-followup.json");
        r["body"]
            .as_object_mut()
            .unwrap()
            .remove("sensitive_pi_types");
        let v = body_violations(&set, &r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(has(&v, "/body/sensitive_pi_types", "required"), "{v:?}");
        assert!(
            v[0].message.contains("sensitive personal information"),
            "{v:?}"
        );

        r["body"]["sensitive_pi_types"] = json!([]);
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/sensitive_pi_types", "minItems"), "{v:?}");
    }

    #[test]
    fn sensitive_pi_types_without_sensitive_pi_is_refused() {
        let set = shipped();
        let mut r = example("data-hk-sz-staff-roster.json");
        r["body"]["sensitive_pi_types"] = json!(["biometric"]);
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/sensitive_pi_types", "maxItems"), "{v:?}");
    }

    #[test]
    fn sensitive_pi_implies_pi() {
        let set = shipped();
        let mut r = example("data-sz-hk-gba-clinical-followup.json");
        r["body"]["contains_pi"] = json!(false);
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/contains_pi", "const"), "{v:?}");
    }

    #[test]
    fn mechanism_needs_its_evidence() {
        let set = shipped();
        let mut r = example("data-sz-hk-gba-clinical-followup.json");
        r["body"].as_object_mut().unwrap().remove("gba_sc");
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/gba_sc", "required"), "{v:?}");

        let mut r = example("data-sz-hk-hgr-sequencing.json");
        r["body"]
            .as_object_mut()
            .unwrap()
            .remove("security_assessment");
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/security_assessment", "required"), "{v:?}");

        let mut r = example("data-sz-hk-hr-attendance.json");
        r["body"]
            .as_object_mut()
            .unwrap()
            .remove("lawful_hr_exemption_basis");
        let v = body_violations(&set, &r);
        assert!(
            has(&v, "/body/lawful_hr_exemption_basis", "required"),
            "{v:?}"
        );
    }

    #[test]
    fn personal_information_needs_the_year_to_date_count() {
        let set = shipped();
        let mut r = example("data-hk-sz-staff-roster.json");
        r["body"]
            .as_object_mut()
            .unwrap()
            .remove("ytd_subjects_nonsensitive");
        let v = body_violations(&set, &r);
        assert!(
            has(&v, "/body/ytd_subjects_nonsensitive", "required"),
            "{v:?}"
        );
        r["body"]["ytd_subjects_nonsensitive"] = json!(-1);
        let v = body_violations(&set, &r);
        assert!(
            has(&v, "/body/ytd_subjects_nonsensitive", "minimum"),
            "{v:?}"
        );
        r["body"]["ytd_subjects_nonsensitive"] = json!(2.5);
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/ytd_subjects_nonsensitive", "type"), "{v:?}");
    }

    #[test]
    fn party_id_must_match_its_scheme() {
        let set = shipped();
        let mut r = example("data-sz-hk-gba-clinical-followup.json");
        r["body"]["exporter"]["id"] = json!("9144030MA5EUHUXXH"); // 17 characters
        r["body"]["recipient"]["id"] = json!("7410293"); // 7 digits
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/exporter/id", "pattern"), "{v:?}");
        assert!(has(&v, "/body/recipient/id", "pattern"), "{v:?}");
        assert!(v[0].message.contains("uscc"), "{v:?}");
        r["body"]["exporter"]["id"] = json!("91440300MA5EUHUXXI"); // I is never used
        r["body"]["recipient"]["id"] = json!("74102935");
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/exporter/id", "pattern"), "{v:?}");
    }

    #[test]
    fn quantities_must_be_positive() {
        let set = shipped();
        let mut r = example("materials-sz-hk-lab-mice.json");
        r["body"]["items"][0]["quantity"] = json!(0);
        r["body"]["permits"][0]["approved_quantity"] = json!(-5);
        let v = body_violations(&set, &r);
        assert!(
            has(&v, "/body/items/0/quantity", "exclusiveMinimum"),
            "{v:?}"
        );
        assert!(
            has(&v, "/body/permits/0/approved_quantity", "exclusiveMinimum"),
            "{v:?}"
        );
    }

    #[test]
    fn materials_need_at_least_one_item_but_permits_may_be_empty() {
        let set = shipped();
        let mut r = example("materials-hk-sz-equipment-return.json");
        assert_eq!(r["body"]["permits"], json!([]));
        assert_eq!(set.validate(&r), Ok(Kind::Materials));
        r["body"]["items"] = json!([]);
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/items", "minItems"), "{v:?}");
    }

    #[test]
    fn infectious_substance_needs_un_number_and_class() {
        let set = shipped();
        let mut r = example("materials-hk-sz-bio-reagents.json");
        r["body"]["items"][0]["infectious_category"] = json!("B");
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/items/0/un_number", "required"), "{v:?}");
        assert!(has(&v, "/body/items/0/dg_class", "required"), "{v:?}");
        r["body"]["items"][0]["un_number"] = json!("UN3373");
        r["body"]["items"][0]["dg_class"] = json!("6.2");
        assert_eq!(set.validate(&r), Ok(Kind::Materials));
        r["body"]["items"][0]["un_number"] = json!("3373");
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/items/0/un_number", "pattern"), "{v:?}");
    }

    #[test]
    fn person_ref_is_a_pseudonym_or_a_raw_document_reference() {
        let set = shipped();
        let mut r = example("talent-sz-hk-researcher.json");
        for ok in ["passport:E12345678", "hkid:A123456(7)"] {
            r["body"]["person_ref"] = json!(ok);
            assert_eq!(set.validate(&r), Ok(Kind::Talent), "{ok}");
        }
        for bad in ["E12345678", "ABCDEF", "driving_licence:123456789"] {
            r["body"]["person_ref"] = json!(bad);
            let v = body_violations(&set, &r);
            assert!(has(&v, "/body/person_ref", "pattern"), "{bad}: {v:?}");
        }
    }

    #[test]
    fn every_violation_is_reported_in_reading_order() {
        let set = shipped();
        let mut r = example("materials-sz-hk-hgr-samples.json");
        let item = r["body"]["items"][0].clone();
        let items: Vec<Value> = (0..12).map(|_| item.clone()).collect();
        r["body"]["items"] = json!(items);
        r["body"]["items"][10]["unit"] = json!("millilitres");
        r["body"]["items"][2]["material_class"] = json!("blood");
        r["body"]["carriage"] = json!("drone");
        r["body"].as_object_mut().unwrap().remove("shipment_id");
        let v = body_violations(&set, &r);
        let pointers: Vec<&str> = v.iter().map(|x| x.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            vec![
                "/body/carriage",
                "/body/items/2/material_class",
                "/body/items/10/unit",
                "/body/shipment_id",
            ]
        );
        // Same input, same answer.
        assert_eq!(v, body_violations(&set, &r));
    }

    #[test]
    fn number_of_violations_is_capped() {
        let set = shipped();
        let mut r = example("materials-sz-hk-hgr-samples.json");
        let items: Vec<Value> = (0..200).map(|_| json!({"hs_code": "x"})).collect();
        r["body"]["items"] = json!(items);
        let v = body_violations(&set, &r);
        assert_eq!(v.len(), DEFAULT_MAX_VIOLATIONS);
        let last = v.last().unwrap();
        assert_eq!(last.rule, "truncated");
        assert!(last.message.contains("further violations"), "{last:?}");
    }

    #[test]
    fn hostile_property_names_are_cut_in_pointers() {
        let set = shipped();
        let mut r = example("talent-hk-sz-researcher.json");
        r["body"]["x".repeat(5000)] = json!(1);
        let v = body_violations(&set, &r);
        assert_eq!(v.len(), 1);
        assert!(v[0].pointer.len() <= MAX_POINTER_LEN + '…'.len_utf8());
        assert!(v[0].message.len() < 300, "{}", v[0].message);
    }

    #[test]
    fn pointer_escapes_slash_and_tilde_in_property_names() {
        let set = shipped();
        let mut r = example("talent-hk-sz-researcher.json");
        r["body"]["a/b~c"] = json!(1);
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/a~1b~0c", "additionalProperties"), "{v:?}");
    }

    // === bounded listing ===

    /// The materials record of the review (issue 22): `body.items` holds empty objects up to
    /// the review's 1,047,047 bytes written compactly (348,525 items then; the example has since
    /// gained fields), 1.74 million violations in all.
    fn record_of_empty_items() -> Value {
        let mut r = example("materials-sz-hk-quantum-equipment.json");
        r["body"]["items"] = Value::Array(vec![json!({}); 348_391]);
        assert_eq!(serde_json::to_vec(&r).unwrap().len(), 1_047_047);
        r
    }

    #[test]
    fn a_record_with_a_million_violations_is_listed_from_a_bounded_number_of_errors() {
        let set = shipped();
        let (result, work) = set.validate_counted(&record_of_empty_items());
        let v = match result {
            Err(SchemaFailure::Body(Kind::Materials, v)) => v,
            other => panic!("expected a body failure, got {other:?}"),
        };
        assert_eq!(v.len(), DEFAULT_MAX_VIOLATIONS);
        assert_eq!(v.last().unwrap().rule, "truncated");
        assert!(has(&v, "/body/items", "maxItems"), "{v:?}");
        assert!(has(&v, "/body/items/0/hs_code", "required"), "{v:?}");
        // Collecting every error first (what `iter_errors` does, also under `.take(n)`) would
        // examine 1.74 million; the limit plus what one item can report is the most needed.
        assert!(
            work.errors_examined <= (DEFAULT_MAX_VIOLATIONS + 10) as u64,
            "{work:?}"
        );
    }

    #[test]
    fn the_limit_is_the_sets_and_listing_stops_one_past_it() {
        let set = shipped().with_max_violations(5);
        let (result, work) = set.validate_counted(&record_of_empty_items());
        let v = result.unwrap_err().violations().to_vec();
        assert_eq!(v.len(), 5, "{v:?}");
        assert_eq!(v[4].rule, "truncated");
        assert!(v[4].message.contains("at most 5"), "{v:?}");
        assert!(work.errors_examined <= 15, "{work:?}");

        // Exactly as many as the limit: all listed, nothing truncated.
        let mut r = example("materials-sz-hk-hgr-samples.json");
        r["body"]["items"][0] = json!({});
        let v = body_violations(&set, &r);
        assert_eq!(v.len(), 5, "{v:?}");
        assert!(v.iter().all(|x| x.rule == "required"), "{v:?}");
    }

    #[test]
    fn a_valid_record_takes_no_error_from_the_validator() {
        let set = shipped();
        let (result, work) = set.validate_counted(&example("materials-sz-hk-hgr-samples.json"));
        assert_eq!(result, Ok(Kind::Materials));
        assert_eq!(work.errors_examined, 0);
    }

    /// What listing was before it was bounded: every error of the whole document, sorted.
    fn listed_by_the_whole_schema(set: &SchemaSet, record: &Value) -> Option<Vec<SchemaViolation>> {
        let (compiled, value, prefix) = if !set.envelope.validator.is_valid(record) {
            (&set.envelope, record, "")
        } else {
            let kind = Kind::parse(record["kind"].as_str()?)?;
            (set.compiled(kind), record.get("body")?, "/body")
        };
        let mut findings = Findings {
            document: SchemaDoc {
                set,
                root: set.document(&compiled.base),
            },
            prefix,
            limit: usize::MAX - 1,
            seen: HashSet::new(),
            found: Vec::new(),
            errors_examined: 0,
        };
        for error in compiled.validator.iter_errors(value) {
            // The whole document compiles as `{"$ref": <document>}` (see `compile`).
            let (schema_path, instance_path) = (
                below_root_ref(error.schema_path.as_str()).to_string(),
                error.instance_path.as_str().to_string(),
            );
            to_violations(&mut findings, &error, &schema_path, &instance_path);
        }
        let mut out = findings.found;
        if out.is_empty() {
            return None;
        }
        out.sort_by(compare_violations);
        Some(out)
    }

    /// Every value below `value` with its pointer.
    fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match value {
            Value::Object(m) => {
                for (k, v) in m {
                    pointers(v, format!("{at}/{}", escape_token(k)), out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    pointers(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn pieces_list_exactly_what_the_whole_schema_lists_for_ordinary_records() {
        let set = shipped();
        let mut records: Vec<Value> = Vec::new();
        let dir = manifest_dir().join("examples/records");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".json"))
            .collect();
        names.sort();
        for name in names {
            let original = example(&name);
            let mut at = Vec::new();
            pointers(&original, String::new(), &mut at);
            // Each value of the record broken in turn, one way or another.
            for (i, pointer) in at.iter().enumerate().skip(1) {
                let breakage = [json!(null), json!("x"), json!(-1), json!({}), json!([{}])];
                let mut r = original.clone();
                *r.pointer_mut(pointer).unwrap() = breakage[i % breakage.len()].clone();
                records.push(r);
            }
            // Several at once, and members nobody expects.
            let mut r = original.clone();
            for pointer in at.iter().skip(1).step_by(7) {
                if let Some(v) = r.pointer_mut(pointer) {
                    *v = json!(true);
                }
            }
            records.push(r);
            let mut r = original.clone();
            r["body"]["unexpected"] = json!(1);
            r["body"]["pathogen_risk_known"] = json!(true);
            if let Some(items) = r["body"]["items"].as_array_mut() {
                items.push(json!({"biosafety_risk_known": false, "colour": "red"}));
            }
            records.push(r);
        }
        let mut compared = 0;
        for r in &records {
            let Some(expected) = listed_by_the_whole_schema(&set, r) else {
                assert!(set.validate(r).is_ok(), "{r}");
                continue;
            };
            if expected.len() > DEFAULT_MAX_VIOLATIONS {
                continue;
            }
            let got = set.validate(r).unwrap_err();
            assert_eq!(got.violations(), expected.as_slice(), "{r}");
            compared += 1;
        }
        assert!(compared > 500, "only {compared} records compared");
    }

    #[test]
    fn a_fan_out_behind_a_reference_and_a_condition_is_cut_too() {
        let dir = copied_schemas();
        let path = dir.path().join("talent.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["$defs"]["visits"] = json!({
            "type": "array",
            "items": {"type": "object", "required": ["place"], "properties": {"place": {"type": "string"}}}
        });
        doc["properties"]["visits"] = json!({"$ref": "#/$defs/visits", "maxItems": 3});
        doc["properties"]["escorted"] = json!({"type": "boolean"});
        doc["allOf"] = json!([{
            "if": {"properties": {"escorted": {"const": true}}, "required": ["escorted"]},
            "then": {"properties": {"visits": {"items": {"required": ["escort"]}}}}
        }]);
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        let set = SchemaSet::load(dir.path()).unwrap();

        let mut r = example("talent-hk-sz-researcher.json");
        r["body"]["escorted"] = json!(true);
        r["body"]["visits"] =
            json!([{"place": "A"}, {"place": 1}, {}, {"place": "B", "escort": "C"}]);
        let expected = listed_by_the_whole_schema(&set, &r).unwrap();
        assert_eq!(
            set.validate(&r).unwrap_err().violations(),
            expected.as_slice()
        );
        assert!(has(&expected, "/body/visits", "maxItems"), "{expected:?}");
        assert!(
            has(&expected, "/body/visits/1/place", "type"),
            "{expected:?}"
        );
        assert!(
            has(&expected, "/body/visits/2/escort", "required"),
            "{expected:?}"
        );

        r["body"]["visits"] = Value::Array(vec![json!({}); 100_000]);
        let (result, work) = set.validate_counted(&r);
        assert_eq!(
            result.unwrap_err().violations().len(),
            DEFAULT_MAX_VIOLATIONS
        );
        assert!(work.errors_examined <= 110, "{work:?}");
    }

    #[test]
    fn a_fan_out_the_planner_does_not_cut_is_listed_when_small_and_summed_up_when_large() {
        let dir = copied_schemas();
        let path = dir.path().join("talent.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        // Free-form labels: any name, each value a short string.
        doc["properties"]["labels"] = json!({
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": 3}
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        let set = SchemaSet::load(dir.path()).unwrap();

        let mut r = example("talent-hk-sz-researcher.json");
        r["body"]["labels"] = json!({"a": "toolong", "b": 1, "c": "ok"});
        let v = body_violations(&set, &r);
        assert!(has(&v, "/body/labels/a", "maxLength"), "{v:?}");
        assert!(has(&v, "/body/labels/b", "type"), "{v:?}");
        assert_eq!(v.len(), 2, "{v:?}");

        let labels: serde_json::Map<String, Value> =
            (0..5000).map(|i| (format!("l{i}"), json!(i))).collect();
        r["body"]["labels"] = Value::Object(labels);
        let (result, work) = set.validate_counted(&r);
        let v = result.unwrap_err().violations().to_vec();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].pointer.as_str(), v[0].rule.as_str()),
            ("/body/labels", "schema")
        );
        assert_eq!(work.errors_examined, 0);
    }

    // === acknowledgements ===

    #[test]
    fn an_acknowledgement_keeps_only_declared_properties_and_lists_the_dropped_ones() {
        let set = shipped();
        let answer = json!({"accepted": true, "reference": "INTAKE-2026-000123",
            "applicant": {"name": "CHAN Tai Man", "hkid": "A123456(7)"}});
        for kind in Kind::ALL {
            let check = set.acknowledgement(kind, answer.clone());
            assert_eq!(
                check.acknowledgement.map(Value::Object),
                Some(json!({"accepted": true, "reference": "INTAKE-2026-000123"})),
                "{kind}"
            );
            assert_eq!(check.undeclared, vec!["applicant".to_string()]);
        }
    }

    #[test]
    fn an_acknowledgement_that_fails_the_schema_relays_nothing() {
        let set = shipped();
        for (answer, undeclared) in [
            // A reference is an identifier, not a name and an HKID.
            (
                json!({"accepted": true, "reference": "CHAN Tai Man A123456(7)"}),
                0,
            ),
            (json!({"accepted": "yes"}), 0),
            // `accepted` is required: an answer of undeclared fields only is not an acknowledgement.
            (json!({"status": "ok"}), 1),
            (json!(["accepted", true]), 0),
            (json!("accepted"), 0),
        ] {
            let check = set.acknowledgement(Kind::Data, answer.clone());
            assert_eq!(check.acknowledgement, None, "{answer}");
            assert_eq!(check.undeclared.len(), undeclared, "{answer}");
        }
        // Declined is an acknowledgement like any other.
        let check = set.acknowledgement(Kind::Data, json!({"accepted": false}));
        assert_eq!(
            check.acknowledgement.map(Value::Object),
            Some(json!({"accepted": false}))
        );
    }

    /// A per-kind file in `ack/` replaces `ack.json` for its kind only, and is in the hash.
    #[test]
    fn a_per_kind_acknowledgement_schema_replaces_the_default_for_its_kind() {
        let dir = copied_schemas();
        let before = SchemaSet::load(dir.path()).unwrap().hash().to_string();
        std::fs::create_dir(dir.path().join(ACK_DIR)).unwrap();
        let mut talent: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(ACK_FILE)).unwrap()).unwrap();
        talent["properties"]["permit_checked"] =
            json!({"description": "the destination checked the permit", "type": "boolean"});
        std::fs::write(
            dir.path().join(ACK_DIR).join("talent.json"),
            serde_json::to_vec(&talent).unwrap(),
        )
        .unwrap();
        let set = SchemaSet::load(dir.path()).unwrap();
        assert_ne!(set.hash(), before);
        let answer = json!({"accepted": true, "permit_checked": true});
        let talent = set.acknowledgement(Kind::Talent, answer.clone());
        assert_eq!(talent.acknowledgement.map(Value::Object), Some(answer));
        assert!(talent.undeclared.is_empty());
        let data = set.acknowledgement(
            Kind::Data,
            json!({"accepted": true, "permit_checked": true}),
        );
        assert_eq!(
            data.acknowledgement.map(Value::Object),
            Some(json!({"accepted": true}))
        );
        assert_eq!(data.undeclared, vec!["permit_checked".to_string()]);
    }

    #[test]
    fn hash_changes_when_the_acknowledgement_schema_changes() {
        let dir = copied_schemas();
        let before = SchemaSet::load(dir.path()).unwrap().hash().to_string();
        let path = dir.path().join(ACK_FILE);
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["properties"]["reference"]["pattern"] = json!("^[A-Z0-9-]{1,32}$");
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_ne!(SchemaSet::load(dir.path()).unwrap().hash(), before);
    }

    #[test]
    fn a_missing_acknowledgement_schema_is_refused_with_its_name() {
        let dir = copied_schemas();
        std::fs::remove_file(dir.path().join(ACK_FILE)).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("ack.json"), "{err}");
        assert!(err.contains("cannot be read"), "{err}");
    }

    /// Only the top level is filtered: a declared property must not be able to hold undeclared
    /// data below it.
    #[test]
    fn an_acknowledgement_schema_that_could_carry_undeclared_data_is_refused() {
        for (name, property, expected) in [
            (
                "open object",
                json!({"type": "object"}),
                "additionalProperties",
            ),
            (
                "object with pattern properties",
                json!({"type": "object", "additionalProperties": false,
                    "patternProperties": {"^x": {"type": "string"}}}),
                "patternProperties",
            ),
            ("anything", json!(true), "must be a schema object"),
            (
                "no type",
                json!({"description": "free text"}),
                "no \"type\"",
            ),
            (
                "array of anything",
                json!({"type": "array"}),
                "needs \"items\"",
            ),
            (
                "array of open objects",
                json!({"type": "array", "items": {"type": "object"}}),
                "/properties/details/items",
            ),
            (
                "reference",
                json!({"$ref": "#/$defs/details"}),
                "without \"$ref\"",
            ),
        ] {
            let dir = copied_schemas();
            std::fs::create_dir(dir.path().join(ACK_DIR)).unwrap();
            let mut doc: Value =
                serde_json::from_slice(&std::fs::read(dir.path().join(ACK_FILE)).unwrap()).unwrap();
            doc["properties"]["details"] = property;
            doc["$defs"] = json!({"details": {"type": "object"}});
            std::fs::write(
                dir.path().join(ACK_DIR).join("materials.json"),
                serde_json::to_vec(&doc).unwrap(),
            )
            .unwrap();
            let err = load_err(dir.path());
            assert!(err.contains("ack/materials.json"), "{name}: {err}");
            assert!(err.contains(expected), "{name}: {err}");
        }
        // Closed all the way down is accepted.
        let dir = copied_schemas();
        let path = dir.path().join(ACK_FILE);
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["properties"]["checks"] = json!({"type": "array", "items": {"type": "object",
            "additionalProperties": false, "properties": {"code": {"type": "string", "maxLength": 8}}}});
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        SchemaSet::load(dir.path()).unwrap();
    }
}
