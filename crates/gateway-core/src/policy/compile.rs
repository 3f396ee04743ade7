//! Loading and checking a policy set, and compiling it into the form [`super::eval`] runs.
//!
//! Everything that can be wrong with a rule is found here, once per load, and named by file, rule
//! id and key (`when.all[2].any_item.equals`): unknown keys, bad operators and operands, malformed
//! pointers, pointers the kind's schema does not declare, duplicate ids, unknown settings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::FixedOffset;
use ring::digest;
use serde_json::{Map, Value};

use super::dates::{self, Offset};
use super::identifying::{self, IdentifyingField};
use super::schema_walk::{self, SchemaLookup};
use super::{Effect, Granularity, MatchedRule, Obligation, PolicyLoadError, SettingInfo};
use crate::envelope::Kind;

/// The file every policy set has: version, time zone, documented settings.
pub const MANIFEST: &str = "policy-set.toml";

/// Deepest nesting of `any_item`/`every_item` scopes a rule may use.
const MAX_ITEM_SCOPES: usize = 4;

// The compiled form lives in `compiled.rs`; re-exported for the loaders and tests.
pub use super::compiled::*;

// === loading ===

/// Reads `dir/policy-set.toml` and every other `*.toml`/`*.json` file directly in `dir` (rule
/// files, in name order; subfolders such as `tests/` are not part of the set).
pub fn load_dir(
    dir: &Path,
    schemas: &dyn SchemaLookup,
    overrides: &BTreeMap<String, Value>,
) -> Result<LoadedSet, PolicyLoadError> {
    let dir_label = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|e| PolicyLoadError::Invalid {
        file: dir_label.clone(),
        message: format!("cannot read the policy folder: {e}"),
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| PolicyLoadError::Invalid {
            file: dir_label.clone(),
            message: format!("cannot list the policy folder: {e}"),
        })?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if name == MANIFEST || !(name.ends_with(".toml") || name.ends_with(".json")) {
            continue;
        }
        names.push(name);
    }
    names.sort();

    let read = |name: &str| -> Result<String, PolicyLoadError> {
        std::fs::read_to_string(dir.join(name)).map_err(|e| PolicyLoadError::Invalid {
            file: dir.join(name).display().to_string(),
            message: format!("cannot read: {e}"),
        })
    };
    let manifest_text = read(MANIFEST)?;
    let mut files = vec![(MANIFEST.to_string(), manifest_text)];
    for n in &names {
        files.push((n.clone(), read(n)?));
    }
    load_texts(&files, schemas, overrides, &dir_label)
}

/// Loads a set from (file name, text) pairs, the manifest first. Used by [`load_dir`] and tests.
pub fn load_texts(
    files: &[(String, String)],
    schemas: &dyn SchemaLookup,
    overrides: &BTreeMap<String, Value>,
    dir_label: &str,
) -> Result<LoadedSet, PolicyLoadError> {
    let mut hasher = digest::Context::new(&digest::SHA256);
    for (name, text) in files {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(&(text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    }
    let hash = hex::encode(hasher.finish().as_ref());

    let Some(((manifest_name, manifest_text), rule_files)) = files.split_first() else {
        return Err(PolicyLoadError::Invalid {
            file: dir_label.to_string(),
            message: format!("no {MANIFEST}"),
        });
    };
    let manifest_label = format!("{dir_label}/{manifest_name}");
    let manifest = parse_document(manifest_name, manifest_text, &manifest_label)?;
    let (declared_version, zone, settings) = read_manifest(&manifest, &manifest_label, overrides)?;
    let setting_values: BTreeMap<&str, &Value> = settings
        .iter()
        .map(|s| (s.name.as_str(), &s.value))
        .collect();

    // The fields each kind's schema marks as identifying a person: every allow must treat them.
    let mut identifying = BTreeMap::new();
    for kind in Kind::ALL {
        if let Some(doc) = schemas.kind_schema_doc(kind) {
            let fields = identifying::fields(schemas, doc).map_err(|m| {
                invalid(
                    &format!("schema of kind {}", kind.as_str()),
                    format!("{m} (annotations: docs/policies.md)"),
                )
            })?;
            identifying.insert(kind, fields);
        }
    }

    let mut rules = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, text) in rule_files {
        let label = format!("{dir_label}/{name}");
        let doc = parse_document(name, text, &label)?;
        let Value::Object(top) = doc else {
            return Err(invalid(&label, "expected a table of rules".into()));
        };
        for (k, _) in &top {
            if !matches!(k.as_str(), "rule" | "rules" | "description") {
                return Err(invalid(
                    &label,
                    format!("unknown key `{k}` (expected `rule` and optionally `description`)"),
                ));
            }
        }
        let empty = Vec::new();
        let list = match top.get("rule").or_else(|| top.get("rules")) {
            None => &empty,
            Some(Value::Array(list)) => list,
            Some(_) => return Err(invalid(&label, "expected `[[rule]]` entries".into())),
        };
        for (i, raw) in list.iter().enumerate() {
            let rule = compile_rule(raw, i, &label, schemas, &setting_values, &identifying)?;
            if let Some(prev) = seen.insert(rule.id.clone(), label.clone()) {
                return Err(PolicyLoadError::Rule {
                    file: label,
                    rule: rule.id,
                    key: "id".into(),
                    message: format!("duplicate rule id (first defined in {prev})"),
                });
            }
            rules.push(rule);
        }
    }

    let mut by_kind: [Vec<usize>; 3] = Default::default();
    for (i, r) in rules.iter().enumerate() {
        for k in Kind::ALL {
            if r.kinds.as_ref().is_none_or(|ks| ks.contains(&k)) {
                by_kind[kind_slot(k)].push(i);
            }
        }
    }
    Ok(LoadedSet {
        set: CompiledSet {
            rules,
            by_kind,
            settings,
            zone,
        },
        declared_version,
        hash,
    })
}

fn invalid(file: &str, message: String) -> PolicyLoadError {
    PolicyLoadError::Invalid {
        file: file.to_string(),
        message,
    }
}

fn parse_document(name: &str, text: &str, label: &str) -> Result<Value, PolicyLoadError> {
    if name.ends_with(".json") {
        serde_json::from_str(text).map_err(|e| invalid(label, format!("not valid JSON: {e}")))
    } else {
        let v: toml::Value =
            toml::from_str(text).map_err(|e| invalid(label, format!("not valid TOML: {e}")))?;
        serde_json::to_value(v).map_err(|e| invalid(label, format!("cannot convert TOML: {e}")))
    }
}

fn read_manifest(
    doc: &Value,
    label: &str,
    overrides: &BTreeMap<String, Value>,
) -> Result<(String, FixedOffset, Vec<SettingInfo>), PolicyLoadError> {
    let Value::Object(m) = doc else {
        return Err(invalid(label, "expected a table".into()));
    };
    for k in m.keys() {
        if !matches!(
            k.as_str(),
            "version" | "name" | "description" | "utc_offset" | "settings"
        ) {
            return Err(invalid(
                label,
                format!(
                    "unknown key `{k}` (expected version, name, description, utc_offset, settings)"
                ),
            ));
        }
    }
    let version = match m.get("version") {
        Some(Value::String(v)) if !v.trim().is_empty() => v.trim().to_string(),
        _ => {
            return Err(invalid(
                label,
                "key `version`: a non-empty string is required".into(),
            ))
        }
    };
    let zone = match m.get("utc_offset") {
        None => FixedOffset::east_opt(8 * 3600).ok_or_else(|| invalid(label, "offset".into()))?,
        Some(Value::String(s)) => parse_utc_offset(s)
            .ok_or_else(|| invalid(label, format!("key `utc_offset`: `{s}` is not like +08:00")))?,
        Some(_) => {
            return Err(invalid(
                label,
                "key `utc_offset`: expected a string like +08:00".into(),
            ))
        }
    };
    let mut settings = Vec::new();
    if let Some(s) = m.get("settings") {
        let Value::Object(s) = s else {
            return Err(invalid(
                label,
                "key `settings`: expected a table of settings".into(),
            ));
        };
        for (name, decl) in s {
            let key = format!("settings.{name}");
            let Value::Object(decl) = decl else {
                return Err(invalid(
                    label,
                    format!("key `{key}`: expected {{ default, description }}"),
                ));
            };
            for k in decl.keys() {
                if !matches!(k.as_str(), "default" | "description") {
                    return Err(invalid(
                        label,
                        format!("key `{key}.{k}`: unknown (expected default, description)"),
                    ));
                }
            }
            let default = decl
                .get("default")
                .filter(|v| v.is_boolean() || v.is_number() || v.is_string())
                .ok_or_else(|| {
                    invalid(
                        label,
                        format!("key `{key}.default`: a boolean, number or string is required"),
                    )
                })?
                .clone();
            let description = match decl.get("description") {
                Some(Value::String(d)) if !d.trim().is_empty() => d.clone(),
                _ => {
                    return Err(invalid(
                        label,
                        format!("key `{key}.description`: every setting must be documented"),
                    ))
                }
            };
            settings.push(SettingInfo {
                name: name.clone(),
                value: default.clone(),
                default,
                description,
            });
        }
    }
    for (name, value) in overrides {
        let Some(s) = settings.iter_mut().find(|s| &s.name == name) else {
            let known: Vec<&str> = settings.iter().map(|s| s.name.as_str()).collect();
            return Err(PolicyLoadError::Setting {
                name: name.clone(),
                message: format!("unknown setting (the set declares: {})", known.join(", ")),
            });
        };
        let same_type = (s.default.is_boolean() && value.is_boolean())
            || (s.default.is_number() && value.is_number())
            || (s.default.is_string() && value.is_string());
        if !same_type {
            return Err(PolicyLoadError::Setting {
                name: name.clone(),
                message: format!(
                    "expected a value like the default `{}`, got `{value}`",
                    s.default
                ),
            });
        }
        s.value = value.clone();
    }
    Ok((version, zone, settings))
}

fn parse_utc_offset(s: &str) -> Option<FixedOffset> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
    FixedOffset::east_opt(sign * secs)
}

// === rules ===

/// Where a rule's conditions are checked against: the schemas of the kinds it matches.
struct SchemaCtx<'s> {
    /// Resolves the `$ref`s met while walking the schemas.
    lookup: &'s dyn SchemaLookup,
    roots: Vec<&'s Value>,
    /// For each enclosing item scope, the schema nodes describing one item (root, node).
    scopes: Vec<schema_walk::Nodes<'s>>,
    /// No schema known for any matched kind: skip field checks.
    checking: bool,
}

struct RuleCtx<'a, 's> {
    file: &'a str,
    rule: &'a str,
    settings: &'a BTreeMap<&'a str, &'a Value>,
    schema: SchemaCtx<'s>,
}

impl RuleCtx<'_, '_> {
    fn err(&self, key: &str, message: impl Into<String>) -> PolicyLoadError {
        PolicyLoadError::Rule {
            file: self.file.to_string(),
            rule: self.rule.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

fn compile_rule(
    raw: &Value,
    index: usize,
    file: &str,
    schemas: &dyn SchemaLookup,
    settings: &BTreeMap<&str, &Value>,
    identifying: &BTreeMap<Kind, Vec<IdentifyingField>>,
) -> Result<Rule, PolicyLoadError> {
    let placeholder = format!("#{}", index + 1);
    let Value::Object(obj) = raw else {
        return Err(PolicyLoadError::Rule {
            file: file.into(),
            rule: placeholder,
            key: String::new(),
            message: "a rule must be a table".into(),
        });
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if valid_id(s) => s.clone(),
        _ => {
            return Err(PolicyLoadError::Rule {
                file: file.into(),
                rule: placeholder,
                key: "id".into(),
                message: "required: letters, digits, `.`, `-`, `_` (e.g. `D1.core-data`)".into(),
            })
        }
    };
    let early = |key: &str, message: String| PolicyLoadError::Rule {
        file: file.into(),
        rule: id.clone(),
        key: key.into(),
        message,
    };
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "id" | "effect"
                | "reason"
                | "regulation"
                | "basis"
                | "description"
                | "match"
                | "when"
                | "obligations"
                | "cites"
        ) {
            return Err(early(
                k,
                "unknown key (expected id, effect, reason, regulation, basis, description, match, when, obligations, cites)".into(),
            ));
        }
    }
    let effect = match obj.get("effect").and_then(Value::as_str) {
        Some("allow") => Effect::Allow,
        Some("deny") => Effect::Deny,
        _ => return Err(early("effect", "required: `allow` or `deny`".into())),
    };
    let text = |key: &str| -> Result<String, PolicyLoadError> {
        match obj.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            _ => Err(early(key, "required: a non-empty string".into())),
        }
    };
    let reason = text("reason")?;
    let regulation = text("regulation")?;
    if let Some(b) = obj.get("basis") {
        if !matches!(b.as_str(), Some("fact" | "model")) {
            return Err(early("basis", "expected `fact` or `model`".into()));
        }
    }

    // Route match.
    let (mut kinds, mut from, mut to, mut organisations, mut parks) =
        (None, None, None, None, None);
    if let Some(m) = obj.get("match") {
        let Value::Object(m) = m else {
            return Err(early(
                "match",
                "expected a table (kind, from, to, organisation, park)".into(),
            ));
        };
        for (k, v) in m {
            let key = format!("match.{k}");
            let list = string_list(v)
                .ok_or_else(|| early(&key, "expected a string or a list of strings".into()))?;
            match k.as_str() {
                "kind" => {
                    let mut ks = Vec::new();
                    for s in &list {
                        ks.push(Kind::parse(s).ok_or_else(|| {
                            early(
                                &key,
                                format!("unknown kind `{s}` (talent, materials, data)"),
                            )
                        })?);
                    }
                    kinds = Some(ks);
                }
                "from" => from = Some(list),
                "to" => to = Some(list),
                "organisation" => organisations = Some(list),
                "park" => parks = Some(list),
                _ => {
                    return Err(early(
                        &key,
                        "unknown key (expected kind, from, to, organisation, park)".into(),
                    ))
                }
            }
        }
    }

    let matched_kinds: Vec<Kind> = kinds.clone().unwrap_or_else(|| Kind::ALL.to_vec());
    let roots: Vec<&Value> = matched_kinds
        .iter()
        .filter_map(|k| schemas.kind_schema_doc(*k))
        .collect();
    let mut ctx = RuleCtx {
        file,
        rule: &id,
        settings,
        schema: SchemaCtx {
            lookup: schemas,
            checking: !roots.is_empty(),
            roots,
            scopes: Vec::new(),
        },
    };

    let when = match obj.get("when") {
        None => Cond::Const(true),
        Some(v) => fold(compile_cond(v, "when", &mut ctx)?),
    };

    let obligations = match obj.get("obligations") {
        None => Vec::new(),
        Some(o) => {
            if effect == Effect::Deny {
                return Err(ctx.err("obligations", "only allow rules carry obligations"));
            }
            compile_obligations(o, &id, &ctx)?
        }
    };
    if effect == Effect::Allow {
        check_treatments(&matched_kinds, identifying, &obligations, &ctx)?;
    }

    let cites = match obj.get("cites") {
        None => Vec::new(),
        Some(c) => compile_cites(c, &mut ctx)?,
    };

    let shown = MatchedRule {
        id: id.clone(),
        effect,
        reason,
        regulation,
    };
    Ok(Rule {
        id,
        effect,
        file: file.to_string(),
        kinds,
        from,
        to,
        organisations,
        parks,
        when,
        obligations,
        cites,
        shown,
    })
}

// === obligations ===

/// The actions an obligation can declare, each with the keys that qualify it.
const OBLIGATION_ACTIONS: &[(&str, &[&str])] = &[
    ("pseudonymise", &["purpose", "linkable", "reason"]),
    ("generalise", &["to"]),
    ("keep", &["basis"]),
    ("drop", &[]),
];

/// `obligations = [{ pseudonymise = "/body/x", purpose = "research" }, { drop = "/body/y" }]`.
fn compile_obligations(
    o: &Value,
    rule: &str,
    ctx: &RuleCtx<'_, '_>,
) -> Result<Vec<Obligation>, PolicyLoadError> {
    let Value::Array(list) = o else {
        return Err(ctx.err(
            "obligations",
            "expected a list like [{ pseudonymise = \"/body/x\" }]",
        ));
    };
    let mut out: Vec<Obligation> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let key = format!("obligations[{i}]");
        let o = compile_obligation(item, rule, &key, ctx)?;
        if let Some(prev) = out.iter().find(|p| p.pointer() == o.pointer()) {
            return Err(ctx.err(
                &key,
                format!(
                    "`{}` is already treated by `{}`: one treatment per field",
                    o.pointer(),
                    prev.action()
                ),
            ));
        }
        out.push(o);
    }
    Ok(out)
}

fn compile_obligation(
    item: &Value,
    rule: &str,
    key: &str,
    ctx: &RuleCtx<'_, '_>,
) -> Result<Obligation, PolicyLoadError> {
    let names = || {
        OBLIGATION_ACTIONS
            .iter()
            .map(|(a, _)| *a)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(m) = item.as_object() else {
        return Err(ctx.err(key, format!("expected a table with one of {}", names())));
    };
    let actions: Vec<&(&str, &[&str])> = OBLIGATION_ACTIONS
        .iter()
        .filter(|(a, _)| m.contains_key(*a))
        .collect();
    let [(action, qualifiers)] = actions.as_slice() else {
        let unknown = m.keys().next().map(String::as_str).unwrap_or_default();
        return Err(ctx.err(
            key,
            if actions.is_empty() && m.len() == 1 {
                format!("unknown obligation `{unknown}` ({})", names())
            } else {
                format!("expected exactly one of {}", names())
            },
        ));
    };
    if let Some(k) = m
        .keys()
        .find(|k| k.as_str() != *action && !qualifiers.contains(&k.as_str()))
    {
        return Err(ctx.err(
            &format!("{key}.{k}"),
            if qualifiers.is_empty() {
                format!("unknown key (`{action}` takes none)")
            } else {
                format!("unknown key (`{action}` takes {})", qualifiers.join(", "))
            },
        ));
    }
    let ptr_key = format!("{key}.{action}");
    let ptr_text = m[*action]
        .as_str()
        .ok_or_else(|| ctx.err(&ptr_key, "expected a JSON pointer string"))?;
    let pointer = parse_pointer(ptr_text).map_err(|e| ctx.err(&ptr_key, e))?;
    if pointer.tokens.first().map(|t| &*t.key) != Some("body") || pointer.tokens.len() < 2 {
        return Err(ctx.err(
            &ptr_key,
            format!("`{ptr_text}`: obligations apply to fields under /body"),
        ));
    }
    let nodes = field_nodes(&pointer, &ptr_key, ctx)?;
    let types_ok = |allowed: &[&str]| {
        !ctx.schema.checking
            || nodes.as_ref().is_none_or(|ns| {
                ns.iter()
                    .any(|(_, n)| schema_walk::may_be_one_of(n, allowed))
            })
    };
    let text = |k: &str, what: &str| -> Result<Option<String>, PolicyLoadError> {
        match m.get(k) {
            None => Ok(None),
            Some(Value::String(s)) if single_line(s) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(ctx.err(
                &format!("{key}.{k}"),
                format!("expected {what}: a non-empty line of text"),
            )),
        }
    };
    let (pointer, rule) = (ptr_text.to_string(), rule.to_string());
    Ok(match *action {
        "pseudonymise" => {
            if !types_ok(&["string", "number", "integer"]) {
                return Err(ctx.err(
                    &ptr_key,
                    format!("`{pointer}`: only strings and numbers can be pseudonymised"),
                ));
            }
            let purpose =
                match m.get("purpose") {
                    None => None,
                    Some(Value::String(p)) if valid_purpose(p) => Some(p.clone()),
                    Some(_) => return Err(ctx.err(
                        &format!("{key}.purpose"),
                        "expected a purpose name: letters, digits, `.`, `-`, `_` (e.g. `research`)",
                    )),
                };
            let linkable = match m.get("linkable") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ctx.err(&format!("{key}.linkable"), "expected true or false"))
                }
            };
            let reason = text("reason", "why both parks may link this pseudonym")?;
            if linkable && reason.is_none() {
                return Err(ctx.err(
                    &format!("{key}.reason"),
                    "required with `linkable = true`: why the parks may link this person's records",
                ));
            }
            if !linkable && reason.is_some() {
                return Err(ctx.err(
                    &format!("{key}.reason"),
                    "only a `linkable = true` pseudonym takes a reason",
                ));
            }
            if linkable && purpose.is_some() {
                return Err(ctx.err(
                    &format!("{key}.purpose"),
                    "a linkable pseudonym is shared by every park and purpose; drop `purpose` or `linkable`",
                ));
            }
            Obligation::Pseudonymise {
                pointer,
                rule,
                purpose,
                linkable,
                reason,
            }
        }
        "generalise" => {
            if !types_ok(&["string"]) {
                return Err(ctx.err(
                    &ptr_key,
                    format!("`{pointer}`: only dates and date-times can be generalised"),
                ));
            }
            let to = m
                .get("to")
                .and_then(Value::as_str)
                .and_then(Granularity::parse)
                .ok_or_else(|| {
                    ctx.err(&format!("{key}.to"), "required: `day`, `month` or `year`")
                })?;
            Obligation::Generalise { pointer, rule, to }
        }
        "keep" => {
            let basis =
                text("basis", "the legal basis that requires the field")?.ok_or_else(|| {
                    ctx.err(
                        &format!("{key}.basis"),
                        "required: the legal basis that requires forwarding this field unchanged",
                    )
                })?;
            Obligation::Keep {
                pointer,
                rule,
                basis,
            }
        }
        _ => Obligation::Drop { pointer, rule },
    })
}

/// Text shown in audit lines: one non-empty line without control characters.
fn single_line(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= 500 && !s.chars().any(char::is_control)
}

/// A purpose becomes part of the pseudonym's scope (`to:hk/purpose:research`).
fn valid_purpose(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Every field the rule's kinds mark as identifying must be treated by one of its obligations.
fn check_treatments(
    kinds: &[Kind],
    identifying: &BTreeMap<Kind, Vec<IdentifyingField>>,
    obligations: &[Obligation],
    ctx: &RuleCtx<'_, '_>,
) -> Result<(), PolicyLoadError> {
    let treated: Vec<Pointer> = obligations
        .iter()
        .filter_map(|o| parse_pointer(o.pointer()).ok())
        .collect();
    let mut untreated: BTreeMap<String, (&str, Vec<&str>)> = BTreeMap::new();
    for kind in kinds {
        for field in identifying.get(kind).into_iter().flatten() {
            if !treated.iter().any(|t| field.covered_by(t)) {
                untreated
                    .entry(field.pointer())
                    .or_insert((field.class.as_str(), Vec::new()))
                    .1
                    .push(kind.as_str());
            }
        }
    }
    if untreated.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = untreated
        .iter()
        .map(|(p, (class, kinds))| format!("{p} ({class}, {})", kinds.join(", ")))
        .collect();
    Err(ctx.err(
        "obligations",
        format!(
            "the rule allows records that forward fields identifying a person without a \
             treatment: {}; give each one (or an enclosing field) pseudonymise, generalise, \
             drop or keep with its legal basis",
            list.join("; ")
        ),
    ))
}

/// `cites = [{ label, field, where?, value? }]`: the facts an allow rests on.
fn compile_cites(c: &Value, ctx: &mut RuleCtx<'_, '_>) -> Result<Vec<Cite>, PolicyLoadError> {
    let Value::Array(list) = c else {
        return Err(ctx.err(
            "cites",
            "expected a list like [{ label = \"security assessment\", field = \"/body/...\" }]",
        ));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let key = format!("cites[{i}]");
        let Value::Object(m) = item else {
            return Err(ctx.err(&key, "expected a table { label, field, where?, value? }"));
        };
        if let Some(k) = m
            .keys()
            .find(|k| !matches!(k.as_str(), "label" | "field" | "where" | "value"))
        {
            return Err(ctx.err(
                &format!("{key}.{k}"),
                "unknown key (label, field, where, value)",
            ));
        }
        let label = match m.get("label") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            _ => return Err(ctx.err(&format!("{key}.label"), "required: a non-empty string")),
        };
        let field_key = format!("{key}.field");
        let text = m
            .get("field")
            .and_then(Value::as_str)
            .ok_or_else(|| ctx.err(&field_key, "required: a JSON pointer into the envelope"))?;
        let field = parse_pointer(text).map_err(|e| ctx.err(&field_key, e))?;
        let nodes = field_nodes(&field, &field_key, ctx)?;
        let (filter, value) = if m.contains_key("where") || m.contains_key("value") {
            let items = array_item_nodes(nodes.as_ref(), &field_key, ctx)?;
            ctx.schema.scopes.push(items);
            let compiled = (|| {
                let filter = match m.get("where") {
                    None => None,
                    Some(w) => Some(fold(compile_cond(w, &format!("{key}.where"), ctx)?)),
                };
                let value = match m.get("value") {
                    None => None,
                    Some(v) => {
                        let value_key = format!("{key}.value");
                        let t = v.as_str().ok_or_else(|| {
                            ctx.err(&value_key, "expected a JSON pointer into each item")
                        })?;
                        let p = parse_pointer(t).map_err(|e| ctx.err(&value_key, e))?;
                        item_nodes(0, &p, &value_key, ctx)?;
                        Some(p)
                    }
                };
                Ok((filter, value))
            })();
            ctx.schema.scopes.pop();
            compiled?
        } else {
            (None, None)
        };
        out.push(Cite {
            label,
            field,
            filter,
            value,
        });
    }
    Ok(out)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => {
            a.iter().map(|x| x.as_str().map(str::to_string)).collect()
        }
        _ => None,
    }
}

/// Parses an RFC 6901 pointer (`/body/items/0/hs_code`, `~1` and `~0` escapes).
pub fn parse_pointer(s: &str) -> Result<Pointer, String> {
    if s.is_empty() {
        return Ok(Pointer {
            text: "".into(),
            tokens: Box::new([]),
        });
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!(
            "`{s}` is not a JSON pointer (it must start with `/`)"
        ));
    };
    let mut tokens = Vec::new();
    for raw in rest.split('/') {
        let mut key = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '~' {
                match chars.next() {
                    Some('0') => key.push('~'),
                    Some('1') => key.push('/'),
                    _ => return Err(format!("`{s}`: `~` must be followed by 0 or 1")),
                }
            } else {
                key.push(c);
            }
        }
        let index = if key.len() > 1 && key.starts_with('0') {
            None
        } else {
            key.parse::<usize>().ok()
        };
        tokens.push(Token {
            key: key.into(),
            index,
        });
    }
    Ok(Pointer {
        text: s.into(),
        tokens: tokens.into(),
    })
}

fn token_strings(p: &Pointer) -> Vec<String> {
    p.tokens.iter().map(|t| t.key.to_string()).collect()
}

/// The schema nodes an envelope field resolves to, across the rule's kinds. `Err` if no kind
/// declares it. `Ok(None)` for top-level envelope fields.
fn field_nodes<'s>(
    pointer: &Pointer,
    key: &str,
    ctx: &RuleCtx<'_, 's>,
) -> Result<Option<Vec<(&'s Value, &'s Value)>>, PolicyLoadError> {
    if pointer.tokens.is_empty() {
        return Err(ctx.err(
            key,
            "the empty pointer names the whole record; name a field",
        ));
    }
    if !ctx.schema.checking {
        return Ok(Some(Vec::new()));
    }
    let toks = token_strings(pointer);
    let mut nodes = Vec::new();
    for root in &ctx.schema.roots {
        match schema_walk::resolve_envelope(ctx.schema.lookup, root, &toks) {
            None => return Ok(None),
            Some(ns) => nodes.extend(ns),
        }
    }
    if nodes.is_empty() {
        return Err(ctx.err(
            key,
            format!(
                "`{}`: no such field in the schema of the rule's kind(s)",
                pointer.text
            ),
        ));
    }
    Ok(Some(nodes))
}

fn check_field(pointer: &Pointer, key: &str, ctx: &RuleCtx<'_, '_>) -> Result<(), PolicyLoadError> {
    field_nodes(pointer, key, ctx).map(|_| ())
}

fn item_nodes<'s>(
    up: usize,
    pointer: &Pointer,
    key: &str,
    ctx: &RuleCtx<'_, 's>,
) -> Result<Vec<(&'s Value, &'s Value)>, PolicyLoadError> {
    let depth = ctx.schema.scopes.len();
    if up >= depth {
        return Err(ctx.err(
            key,
            if up == 0 {
                "`item` is only meaningful inside `any_item` or `every_item`".to_string()
            } else {
                "`outer_item` needs two enclosing `any_item`/`every_item`".to_string()
            },
        ));
    }
    if !ctx.schema.checking {
        return Ok(Vec::new());
    }
    let toks = token_strings(pointer);
    let mut nodes = Vec::new();
    for (root, node) in &ctx.schema.scopes[depth - 1 - up] {
        nodes.extend(schema_walk::resolve(ctx.schema.lookup, root, node, &toks));
    }
    if nodes.is_empty() {
        return Err(ctx.err(
            key,
            format!("`{}`: no such field in the item's schema", pointer.text),
        ));
    }
    Ok(nodes)
}

const SOURCE_KEYS: &[&str] = &[
    "field",
    "item",
    "outer_item",
    "identity",
    "setting",
    "registry",
];
/// A key that qualifies a `registry` source: whose entry to read.
const REGISTRY_OF: &str = "of";
const OPERATOR_KEYS: &[&str] = &[
    "equals",
    "one_of",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "absent",
    "date_before",
    "date_on_or_before",
    "date_after",
    "date_on_or_after",
    "date_on",
    "any_item",
    "every_item",
    "contains",
    "member_of",
    "same_as",
];

/// Schema nodes a source resolves to, each with the document root that resolves its `$ref`s.
type SchemaNodes<'s> = schema_walk::Nodes<'s>;

/// A source read by a condition or operand; returns it with its schema nodes (if checked).
fn compile_source<'s>(
    key_name: &str,
    v: &Value,
    of: Option<&Value>,
    key: &str,
    ctx: &RuleCtx<'_, 's>,
) -> Result<(Source, Option<SchemaNodes<'s>>), PolicyLoadError> {
    let key = format!("{key}.{key_name}");
    if of.is_some() && key_name != "registry" {
        return Err(ctx.err(&key, "`of` only qualifies a `registry` source"));
    }
    match key_name {
        "field" | "item" | "outer_item" => {
            let text = v
                .as_str()
                .ok_or_else(|| ctx.err(&key, "expected a JSON pointer string"))?;
            let pointer = parse_pointer(text).map_err(|m| ctx.err(&key, m))?;
            if key_name == "field" {
                let nodes = field_nodes(&pointer, &key, ctx)?;
                Ok((Source::Field(pointer), nodes))
            } else {
                let up = usize::from(key_name == "outer_item");
                let nodes = item_nodes(up, &pointer, &key, ctx)?;
                Ok((Source::Item { up, pointer }, Some(nodes)))
            }
        }
        "identity" => {
            let f = match v.as_str() {
                Some("park") => IdentityField::Park,
                Some("organisation") => IdentityField::Organisation,
                Some("subject") => IdentityField::Subject,
                Some("fingerprint_sha256") => IdentityField::Fingerprint,
                _ => {
                    return Err(ctx.err(
                        &key,
                        "expected park, organisation, subject or fingerprint_sha256",
                    ))
                }
            };
            Ok((Source::Identity(f), None))
        }
        "setting" => {
            let name = v
                .as_str()
                .ok_or_else(|| ctx.err(&key, "expected a setting name"))?;
            let value = ctx.settings.get(name).ok_or_else(|| {
                ctx.err(
                    &key,
                    format!("unknown setting `{name}` (declare it in {MANIFEST})"),
                )
            })?;
            Ok((Source::Constant((*value).clone()), None))
        }
        "registry" => {
            let name = v.as_str().unwrap_or_default();
            let attribute = crate::registry::ATTRIBUTES
                .iter()
                .copied()
                .find(|a| *a == name)
                .ok_or_else(|| {
                    ctx.err(
                        &key,
                        format!(
                            "expected a registry attribute ({})",
                            crate::registry::ATTRIBUTES.join(", ")
                        ),
                    )
                })?;
            let of = match of {
                None => None,
                Some(p) => {
                    let of_key = format!("{key}.{REGISTRY_OF}");
                    let text = p.as_str().ok_or_else(|| {
                        ctx.err(&of_key, "expected a JSON pointer to a name in the record")
                    })?;
                    let pointer = parse_pointer(text).map_err(|m| ctx.err(&of_key, m))?;
                    check_field(&pointer, &of_key, ctx)?;
                    Some(Box::new(pointer))
                }
            };
            Ok((Source::Registry { attribute, of }, None))
        }
        _ => Err(ctx.err(&key, "unknown source")),
    }
}

fn compile_cond(v: &Value, key: &str, ctx: &mut RuleCtx<'_, '_>) -> Result<Cond, PolicyLoadError> {
    match v {
        Value::Array(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                out.push(compile_cond(c, &format!("{key}[{i}]"), ctx)?);
            }
            Ok(Cond::All(out.into()))
        }
        Value::Object(m) => compile_cond_object(m, key, ctx),
        _ => Err(ctx.err(
            key,
            "a condition is a table (or a list of tables, all of which must hold)",
        )),
    }
}

fn compile_cond_object(
    m: &Map<String, Value>,
    key: &str,
    ctx: &mut RuleCtx<'_, '_>,
) -> Result<Cond, PolicyLoadError> {
    for combinator in ["all", "any", "not"] {
        if let Some(inner) = m.get(combinator) {
            if m.len() != 1 {
                return Err(ctx.err(
                    key,
                    format!("`{combinator}` must be the only key of its table"),
                ));
            }
            let k = format!("{key}.{combinator}");
            return match combinator {
                "not" => Ok(Cond::Not(Box::new(compile_cond(inner, &k, ctx)?))),
                _ => {
                    let Value::Array(list) = inner else {
                        return Err(ctx.err(&k, "expected a list of conditions"));
                    };
                    if list.is_empty() {
                        return Err(ctx.err(&k, "an empty list is ambiguous; remove it"));
                    }
                    let mut out = Vec::with_capacity(list.len());
                    for (i, c) in list.iter().enumerate() {
                        out.push(compile_cond(c, &format!("{k}[{i}]"), ctx)?);
                    }
                    Ok(if combinator == "all" {
                        Cond::All(out.into())
                    } else {
                        Cond::Any(out.into())
                    })
                }
            };
        }
    }
    let sources: Vec<&String> = m
        .keys()
        .filter(|k| SOURCE_KEYS.contains(&k.as_str()))
        .collect();
    let ops: Vec<&String> = m
        .keys()
        .filter(|k| OPERATOR_KEYS.contains(&k.as_str()))
        .collect();
    if let Some(unknown) = m.keys().find(|k| {
        !SOURCE_KEYS.contains(&k.as_str())
            && !OPERATOR_KEYS.contains(&k.as_str())
            && k.as_str() != REGISTRY_OF
    }) {
        return Err(ctx.err(
            &format!("{key}.{unknown}"),
            format!(
                "unknown key: a condition has one source ({}) and one operator ({}), or is all/any/not",
                SOURCE_KEYS.join(", "),
                OPERATOR_KEYS.join(", ")
            ),
        ));
    }
    if sources.len() != 1 {
        return Err(ctx.err(
            key,
            format!("expected exactly one source ({})", SOURCE_KEYS.join(", ")),
        ));
    }
    if ops.len() != 1 {
        return Err(ctx.err(
            key,
            format!(
                "expected exactly one operator ({})",
                OPERATOR_KEYS.join(", ")
            ),
        ));
    }
    let (src_key, op_key) = (sources[0].as_str(), ops[0].as_str());
    let (source, nodes) = compile_source(src_key, &m[src_key], m.get(REGISTRY_OF), key, ctx)?;
    let op_k = format!("{key}.{op_key}");
    let operand = &m[op_key];
    let is_setting = matches!(source, Source::Constant(_));
    let op = match op_key {
        "equals" => {
            if operand.is_object() {
                return Err(ctx.err(&op_k, "compare with a scalar or list value"));
            }
            Op::Equals(operand.clone())
        }
        "one_of" => match operand {
            Value::Array(a) if !a.is_empty() => Op::OneOf(a.clone().into()),
            _ => return Err(ctx.err(&op_k, "expected a non-empty list of values")),
        },
        "gt" | "gte" | "lt" | "lte" => {
            let cmp = match op_key {
                "gt" => Cmp::Gt,
                "gte" => Cmp::Ge,
                "lt" => Cmp::Lt,
                _ => Cmp::Le,
            };
            let n = match operand {
                Value::Number(n) => NumOperand::Const(
                    n.as_f64()
                        .ok_or_else(|| ctx.err(&op_k, "number out of range"))?,
                ),
                Value::Object(o) if o.contains_key("sum") => compile_sum(o, &op_k, ctx)?,
                Value::Object(o) => {
                    NumOperand::Source(compile_operand_source(o, &op_k, ctx, &[])?.0)
                }
                _ => {
                    return Err(ctx.err(
                        &op_k,
                        "expected a number, { field | item | outer_item | registry = ... } or { sum = pointer, of = pointer, where = condition }",
                    ))
                }
            };
            Op::Num(cmp, n)
        }
        "exists" | "absent" => {
            let b = operand
                .as_bool()
                .ok_or_else(|| ctx.err(&op_k, "expected true or false"))?;
            Op::Exists(if op_key == "exists" { b } else { !b })
        }
        "date_before" | "date_on_or_before" | "date_after" | "date_on_or_after" | "date_on" => {
            if is_setting {
                return Err(ctx.err(&op_k, "date operators do not apply to settings"));
            }
            let cmp = match op_key {
                "date_before" => Cmp::Lt,
                "date_on_or_before" => Cmp::Le,
                "date_after" => Cmp::Gt,
                "date_on_or_after" => Cmp::Ge,
                _ => Cmp::Eq,
            };
            Op::Date(cmp, compile_date_operand(operand, &op_k, ctx)?)
        }
        "any_item" | "every_item" => {
            if is_setting || matches!(source, Source::Identity(_) | Source::Registry { .. }) {
                return Err(ctx.err(
                    &op_k,
                    "applies to an array field of the record (registry lists: use member_of or contains)",
                ));
            }
            if ctx.schema.scopes.len() >= MAX_ITEM_SCOPES {
                return Err(ctx.err(
                    &op_k,
                    format!("at most {MAX_ITEM_SCOPES} nested item scopes"),
                ));
            }
            let item_nodes = array_item_nodes(nodes.as_ref(), &op_k, ctx)?;
            ctx.schema.scopes.push(item_nodes);
            let inner = compile_cond(operand, &op_k, ctx);
            ctx.schema.scopes.pop();
            let inner = Box::new(fold(inner?));
            if op_key == "any_item" {
                Op::AnyItem(inner)
            } else {
                Op::EveryItem(inner)
            }
        }
        "contains" => {
            if operand.is_object() || operand.is_array() {
                return Err(ctx.err(&op_k, "expected a scalar value the array should hold"));
            }
            Op::Contains(operand.clone())
        }
        "member_of" => {
            let Value::Object(o) = operand else {
                return Err(ctx.err(
                    &op_k,
                    "expected { field | item | outer_item = pointer } naming an array",
                ));
            };
            Op::MemberOf(compile_operand_source(o, &op_k, ctx, &[])?.0)
        }
        "same_as" => {
            let Value::Object(o) = operand else {
                return Err(ctx.err(&op_k, "expected { field | item | outer_item = pointer }"));
            };
            Op::SameAs(compile_operand_source(o, &op_k, ctx, &[])?.0)
        }
        _ => return Err(ctx.err(&op_k, "unknown operator")),
    };
    let test = Cond::Test(source, op);
    if is_setting {
        // Settings are fixed for the load: decide the test now.
        return Ok(Cond::Const(super::eval::eval_constant(&test)));
    }
    Ok(test)
}

/// `{ field = "/p" }` (or item / outer_item), optionally with extra allowed keys.
fn compile_operand_source(
    o: &Map<String, Value>,
    key: &str,
    ctx: &RuleCtx<'_, '_>,
    extra: &[&str],
) -> Result<(Source, Option<String>), PolicyLoadError> {
    let mut src = None;
    for (k, v) in o {
        if matches!(k.as_str(), "field" | "item" | "outer_item" | "registry") {
            if src.is_some() {
                return Err(ctx.err(key, "name exactly one of field, item, outer_item, registry"));
            }
            src = Some((k.as_str(), v));
        } else if !extra.contains(&k.as_str()) && k.as_str() != REGISTRY_OF {
            return Err(ctx.err(&format!("{key}.{k}"), "unknown key"));
        }
    }
    let (k, v) =
        src.ok_or_else(|| ctx.err(key, "name one of field, item, outer_item, registry"))?;
    Ok((
        compile_source(k, v, o.get(REGISTRY_OF), key, ctx)?.0,
        Some(k.to_string()),
    ))
}

fn compile_date_operand(
    v: &Value,
    key: &str,
    ctx: &RuleCtx<'_, '_>,
) -> Result<DateOperand, PolicyLoadError> {
    match v {
        Value::String(s) => {
            let (lit, offset) = dates::parse_operand_text(s).map_err(|m| ctx.err(key, m))?;
            Ok(DateOperand {
                base: lit.map_or(DateBase::Now, DateBase::Literal),
                offset,
                offset_from: None,
                calendar: false,
            })
        }
        Value::Object(o) => {
            const UNITS: &[&str] = &["days", "working_days", "months", "years", "calendar"];
            let calendar = match o.get("calendar") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ctx.err(&format!("{key}.calendar"), "expected true or false")),
            };
            let base = if o.keys().any(|k| matches!(k.as_str(), "field" | "item" | "outer_item" | "registry")) {
                DateBase::Source(compile_operand_source(o, key, ctx, UNITS)?.0)
            } else if let Some(k) = o.keys().find(|k| !UNITS.contains(&k.as_str())) {
                return Err(ctx.err(&format!("{key}.{k}"), "unknown key"));
            } else {
                // `{ calendar = true }` alone compares with the decision date.
                DateBase::Now
            };
            let mut offset = Offset::None;
            let mut offset_from = None;
            for unit in &UNITS[..4] {
                let Some(n) = o.get(*unit) else { continue };
                if offset != Offset::None || offset_from.is_some() {
                    return Err(ctx.err(key, "at most one of days, working_days, months, years"));
                }
                let unit_key = format!("{key}.{unit}");
                match n {
                    Value::Object(src) => {
                        let (source, _) = compile_operand_source(src, &unit_key, ctx, &[])?;
                        let u = match *unit {
                            "days" => OffsetUnit::Days,
                            "working_days" => OffsetUnit::WorkingDays,
                            "months" => OffsetUnit::Months,
                            _ => OffsetUnit::Years,
                        };
                        offset_from = Some(Box::new((u, source)));
                    }
                    _ => {
                        let n = n.as_i64().ok_or_else(|| {
                            ctx.err(&unit_key, "expected a whole number or { field = pointer }")
                        })?;
                        offset = dates::offset_from_unit(unit, n).map_err(|m| ctx.err(&unit_key, m))?;
                    }
                }
            }
            Ok(DateOperand {
                base,
                offset,
                offset_from,
                calendar,
            })
        }
        _ => Err(ctx.err(
            key,
            "expected `now`, `now + N days`, a date, or { field = pointer, days = N | { field = pointer }, calendar = true }",
        )),
    }
}

/// `{ sum = "/body/items", of = "/quantity", where = condition }`: `where` is compiled in a new
/// item scope over the summed array (so `item` is the summed item, `outer_item` the enclosing).
fn compile_sum(
    o: &Map<String, Value>,
    key: &str,
    ctx: &mut RuleCtx<'_, '_>,
) -> Result<NumOperand, PolicyLoadError> {
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "sum" | "of" | "where"))
    {
        return Err(ctx.err(&format!("{key}.{k}"), "unknown key (sum, of, where)"));
    }
    let sum_key = format!("{key}.sum");
    let text = o["sum"].as_str().ok_or_else(|| {
        ctx.err(
            &sum_key,
            "expected a JSON pointer to an array of the record",
        )
    })?;
    let pointer = parse_pointer(text).map_err(|m| ctx.err(&sum_key, m))?;
    let nodes = field_nodes(&pointer, &sum_key, ctx)?;
    if ctx.schema.scopes.len() >= MAX_ITEM_SCOPES {
        return Err(ctx.err(
            &sum_key,
            format!("at most {MAX_ITEM_SCOPES} nested item scopes"),
        ));
    }
    let summed = array_item_nodes(nodes.as_ref(), &sum_key, ctx)?;
    ctx.schema.scopes.push(summed);
    let compiled = (|| {
        let of_key = format!("{key}.of");
        let of_text = o.get("of").and_then(Value::as_str).ok_or_else(|| {
            ctx.err(
                &of_key,
                "required: a JSON pointer into each item (`/quantity`)",
            )
        })?;
        let of = parse_pointer(of_text).map_err(|m| ctx.err(&of_key, m))?;
        item_nodes(0, &of, &of_key, ctx)?;
        let filter = match o.get("where") {
            None => None,
            Some(w) => Some(fold(compile_cond(w, &format!("{key}.where"), ctx)?)),
        };
        Ok((of, filter))
    })();
    ctx.schema.scopes.pop();
    let (of, filter) = compiled?;
    Ok(NumOperand::Sum(Box::new(SumOperand {
        over: Source::Field(pointer),
        of,
        filter,
    })))
}

/// The schema nodes of one item of the array described by `nodes` (empty when not checking).
fn array_item_nodes<'s>(
    nodes: Option<&SchemaNodes<'s>>,
    key: &str,
    ctx: &RuleCtx<'_, 's>,
) -> Result<SchemaNodes<'s>, PolicyLoadError> {
    match nodes {
        Some(ns) if ctx.schema.checking => {
            let just: Vec<&Value> = ns.iter().map(|(_, n)| *n).collect();
            if !schema_walk::may_be_array(&just) {
                return Err(ctx.err(key, "the field is not an array in the schema"));
            }
            let mut items = Vec::new();
            for (root, n) in ns {
                items.extend(schema_walk::resolve(
                    ctx.schema.lookup,
                    root,
                    n,
                    &["0".to_string()],
                ));
            }
            Ok(items)
        }
        _ => Ok(Vec::new()),
    }
}

/// Simplifies constants out of combinators (settings fold to constants at load).
pub fn fold(c: Cond) -> Cond {
    match c {
        Cond::All(list) => {
            let mut out = Vec::new();
            for c in list.into_vec() {
                match fold(c) {
                    Cond::Const(true) => {}
                    Cond::Const(false) => return Cond::Const(false),
                    other => out.push(other),
                }
            }
            match out.len() {
                0 => Cond::Const(true),
                1 => out.pop().unwrap_or(Cond::Const(true)),
                _ => Cond::All(out.into()),
            }
        }
        Cond::Any(list) => {
            let mut out = Vec::new();
            for c in list.into_vec() {
                match fold(c) {
                    Cond::Const(false) => {}
                    Cond::Const(true) => return Cond::Const(true),
                    other => out.push(other),
                }
            }
            match out.len() {
                0 => Cond::Const(false),
                1 => out.pop().unwrap_or(Cond::Const(false)),
                _ => Cond::Any(out.into()),
            }
        }
        Cond::Not(inner) => match fold(*inner) {
            Cond::Const(b) => Cond::Const(!b),
            other => Cond::Not(Box::new(other)),
        },
        other => other,
    }
}

/// Ids of all rules in a set, for reports.
pub fn ids(set: &CompiledSet) -> BTreeSet<&str> {
    set.rules.iter().map(|r| r.id.as_str()).collect()
}
