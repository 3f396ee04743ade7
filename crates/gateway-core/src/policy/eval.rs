//! Evaluation of a compiled set: a pure function of identity, record and time.
//!
//! Reads never allocate: pointers are walked over pre-split tokens, item scopes are a linked list
//! on the stack, dates are parsed from the record's strings in place. The only allocations are the
//! decision's own lists.

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::Value;

use super::compiled::{
    kind_slot, Cite, CompiledSet, Cond, DateBase, DateOperand, IdentityField, NumOperand, Op,
    Pointer, Rule, Source,
};
use super::dates::{self, DateValue};
use super::{
    Decision, DecisionInput, Effect, MatchedRule, Obligation, DEFAULT_DENY_ID, KEY_MISSING_ID,
};
use crate::registry::Registry;
use crate::tls::identity::ClientIdentity;

/// What a condition sees while evaluating.
pub struct Ctx<'a> {
    pub record: &'a Value,
    pub identity: &'a ClientIdentity,
    /// The organisation registry of this load, if one is configured.
    pub registry: Option<&'a Registry>,
    pub now: DateValue,
    pub zone: FixedOffset,
}

/// The enclosing `any_item`/`every_item` items, innermost first.
struct Scope<'s, 'a> {
    item: &'a Value,
    parent: Option<&'s Scope<'s, 'a>>,
}

/// A value read from the record, the identity or a setting.
#[derive(Clone, Copy)]
enum Val<'a> {
    Json(&'a Value),
    Str(&'a str),
}

impl<'a> Val<'a> {
    fn as_str(self) -> Option<&'a str> {
        match self {
            Val::Json(v) => v.as_str(),
            Val::Str(s) => Some(s),
        }
    }
    fn as_f64(self) -> Option<f64> {
        match self {
            Val::Json(v) => v.as_f64(),
            Val::Str(_) => None,
        }
    }
    fn as_array(self) -> Option<&'a Vec<Value>> {
        match self {
            Val::Json(v) => v.as_array(),
            Val::Str(_) => None,
        }
    }
    fn is_null(self) -> bool {
        matches!(self, Val::Json(Value::Null))
    }
    fn equals(self, other: &Value) -> bool {
        match self {
            Val::Json(v) => json_eq(v, other),
            Val::Str(s) => other.as_str() == Some(s),
        }
    }
}

/// JSON equality where `100000` equals `100000.0` (numbers compare by value).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// Walks a pre-split pointer.
pub fn resolve<'a>(root: &'a Value, p: &Pointer) -> Option<&'a Value> {
    let mut cur = root;
    for t in p.tokens.iter() {
        cur = match cur {
            Value::Object(m) => m.get(&*t.key)?,
            Value::Array(a) => a.get(t.index?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn read<'a>(src: &'a Source, cx: &Ctx<'a>, scope: Option<&Scope<'_, 'a>>) -> Option<Val<'a>> {
    match src {
        Source::Field(p) => resolve(cx.record, p).map(Val::Json),
        Source::Item { up, pointer } => {
            let mut s = scope?;
            for _ in 0..*up {
                s = s.parent?;
            }
            resolve(s.item, pointer).map(Val::Json)
        }
        Source::Identity(f) => Some(Val::Str(match f {
            IdentityField::Park => &cx.identity.park,
            IdentityField::Organisation => &cx.identity.organisation,
            IdentityField::Subject => &cx.identity.subject,
            IdentityField::Fingerprint => &cx.identity.fingerprint_sha256,
        })),
        Source::Registry { attribute, of } => {
            let registry = cx.registry?;
            let entry = match of {
                None => registry.get(&cx.identity.park, &cx.identity.organisation),
                Some(p) => registry.by_name(resolve(cx.record, p)?.as_str()?),
            };
            entry?.attribute(attribute).map(Val::Json)
        }
        Source::Constant(v) => Some(Val::Json(v)),
    }
}

/// The sum of `of` over the items at `over` that pass `filter`; items without a number there
/// are skipped, an empty sum is 0. `None` when `over` is not an array.
fn sum<'a>(
    over: &'a Source,
    of: &Pointer,
    filter: Option<&'a Cond>,
    cx: &Ctx<'a>,
    scope: Option<&Scope<'_, 'a>>,
) -> Option<f64> {
    let items = read(over, cx, scope)?.as_array()?;
    let mut total = 0.0;
    for item in items {
        let s = Scope {
            item,
            parent: scope,
        };
        if filter.is_none_or(|f| eval_in(f, cx, Some(&s))) {
            if let Some(n) = resolve(item, of).and_then(Value::as_f64) {
                total += n;
            }
        }
    }
    Some(total)
}

fn date_of(v: Val<'_>) -> Option<DateValue> {
    dates::parse(v.as_str()?)
}

fn date_operand(
    op: &DateOperand,
    cx: &Ctx<'_>,
    scope: Option<&Scope<'_, '_>>,
) -> Option<DateValue> {
    let base = match &op.base {
        DateBase::Now => cx.now,
        DateBase::Literal(d) => *d,
        DateBase::Source(s) => date_of(read(s, cx, scope)?)?,
    };
    let offset = match &op.offset_from {
        None => op.offset,
        Some(o) => {
            let (unit, src) = &**o;
            let v = read(src, cx, scope)?.as_f64()?;
            if v.fract() != 0.0 || !v.is_finite() {
                return None;
            }
            // Out-of-range amounts (a record's nonsense) make the condition false, as overflow does.
            dates::offset_from_unit(unit.name(), v as i64).ok()?
        }
    };
    base.shift(offset, cx.zone)
}

/// Evaluates one condition. A missing field or a value of the wrong type makes a test false
/// (so `not` of it is true): rules that need a field to exist say so with `exists`/`absent`.
pub fn eval(c: &Cond, cx: &Ctx<'_>) -> bool {
    eval_in(c, cx, None)
}

fn eval_in<'a>(c: &'a Cond, cx: &Ctx<'a>, scope: Option<&Scope<'_, 'a>>) -> bool {
    match c {
        Cond::Const(b) => *b,
        Cond::All(cs) => cs.iter().all(|c| eval_in(c, cx, scope)),
        Cond::Any(cs) => cs.iter().any(|c| eval_in(c, cx, scope)),
        Cond::Not(c) => !eval_in(c, cx, scope),
        Cond::Test(src, op) => {
            let v = read(src, cx, scope);
            test(v, op, cx, scope)
        }
    }
}

fn test<'a>(v: Option<Val<'a>>, op: &'a Op, cx: &Ctx<'a>, scope: Option<&Scope<'_, 'a>>) -> bool {
    if let Op::Exists(want) = op {
        let present = v.is_some_and(|v| !v.is_null());
        return present == *want;
    }
    let Some(v) = v else { return false };
    match op {
        Op::Exists(_) => false,
        Op::Equals(x) => v.equals(x),
        Op::OneOf(xs) => xs.iter().any(|x| v.equals(x)),
        Op::Num(cmp, operand) => {
            let Some(a) = v.as_f64() else { return false };
            let b = match operand {
                NumOperand::Const(b) => *b,
                NumOperand::Source(s) => match read(s, cx, scope).and_then(Val::as_f64) {
                    Some(b) => b,
                    None => return false,
                },
                NumOperand::Sum(s) => match sum(&s.over, &s.of, s.filter.as_ref(), cx, scope) {
                    Some(b) => b,
                    None => return false,
                },
            };
            a.partial_cmp(&b).is_some_and(|o| cmp.holds(o))
        }
        Op::Date(cmp, operand) => {
            let (Some(a), Some(b)) = (date_of(v), date_operand(operand, cx, scope)) else {
                return false;
            };
            if operand.calendar {
                return cmp.holds(a.local_date(cx.zone).cmp(&b.local_date(cx.zone)));
            }
            cmp.holds(dates::compare(a, b, cx.zone))
        }
        Op::AnyItem(inner) => v.as_array().is_some_and(|items| {
            items.iter().any(|item| {
                let s = Scope {
                    item,
                    parent: scope,
                };
                eval_in(inner, cx, Some(&s))
            })
        }),
        Op::EveryItem(inner) => v.as_array().is_some_and(|items| {
            items.iter().all(|item| {
                let s = Scope {
                    item,
                    parent: scope,
                };
                eval_in(inner, cx, Some(&s))
            })
        }),
        Op::Contains(x) => v
            .as_array()
            .is_some_and(|a| a.iter().any(|i| json_eq(i, x))),
        Op::MemberOf(src) => {
            let Some(list) = read(src, cx, scope).and_then(Val::as_array) else {
                return false;
            };
            list.iter().any(|i| v.equals(i))
        }
        Op::SameAs(src) => match read(src, cx, scope) {
            Some(Val::Json(other)) => v.equals(other),
            Some(Val::Str(other)) => v.as_str() == Some(other),
            None => false,
        },
    }
}

/// Evaluates a test on a setting's constant value at load time.
pub fn eval_constant(c: &Cond) -> bool {
    let identity = ClientIdentity {
        park: String::new(),
        organisation: String::new(),
        subject: String::new(),
        fingerprint_sha256: String::new(),
    };
    let zone = Utc.fix();
    let record = Value::Null;
    let cx = Ctx {
        record: &record,
        identity: &identity,
        registry: None,
        now: DateValue::Instant(DateTime::<Utc>::UNIX_EPOCH.with_timezone(&zone)),
        zone,
    };
    eval(c, &cx)
}

use chrono::Offset as _;

fn route_matches(r: &Rule, input: &DecisionInput<'_>) -> bool {
    let has = |list: &Option<Vec<String>>, v: &str| {
        list.as_ref().is_none_or(|l| l.iter().any(|x| x == v))
    };
    has(&r.from, input.from)
        && has(&r.to, input.to)
        && has(&r.organisations, &input.identity.organisation)
        && has(&r.parks, &input.identity.park)
}

/// Decides a record: deny overrides allow; no matching rule is a deny ("default-deny").
pub fn decide(
    set: &CompiledSet,
    registry: Option<&Registry>,
    has_key: bool,
    version: &str,
    input: &DecisionInput<'_>,
) -> Decision {
    let cx = Ctx {
        record: input.record,
        identity: input.identity,
        registry,
        now: DateValue::Instant(input.now.with_timezone(&set.zone)),
        zone: set.zone,
    };
    let mut matched: Vec<MatchedRule> = Vec::new();
    let mut allow_rules: Vec<&Rule> = Vec::new();
    let mut denied = false;
    for &i in &set.by_kind[kind_slot(input.kind)] {
        let Some(r) = set.rules.get(i) else { continue };
        if !route_matches(r, input) || !eval(&r.when, &cx) {
            continue;
        }
        let mut shown = r.shown.clone();
        if let Some(basis) = cited(&r.cites, &cx) {
            shown.reason = format!("{}; rests on: {basis}", shown.reason);
        }
        matched.push(shown);
        match r.effect {
            Effect::Deny => denied = true,
            Effect::Allow => allow_rules.push(r),
        }
    }
    let policy_version = version.to_string();
    if denied {
        return Decision {
            effect: Effect::Deny,
            matched,
            obligations: Vec::new(),
            policy_version,
        };
    }
    if allow_rules.is_empty() {
        matched.push(MatchedRule {
            id: DEFAULT_DENY_ID.to_string(),
            effect: Effect::Deny,
            reason: "no rule allows this flow".to_string(),
            regulation: "default deny (SPEC.md: declared flow policies)".to_string(),
        });
        return Decision {
            effect: Effect::Deny,
            matched,
            obligations: Vec::new(),
            policy_version,
        };
    }
    // One treatment per field: when several allow rules treat the same pointer, the first in
    // policy order counts. Drops always apply (the same drop twice once).
    let mut obligations: Vec<Obligation> = Vec::new();
    let mut key_missing: Vec<&str> = Vec::new();
    for r in allow_rules {
        for o in &r.obligations {
            let is_drop = |x: &Obligation| matches!(x, Obligation::Drop { .. });
            let dup = obligations
                .iter()
                .any(|x| x.pointer() == o.pointer() && is_drop(x) == is_drop(o));
            if dup {
                continue;
            }
            if matches!(o, Obligation::Pseudonymise { .. }) && !has_key {
                key_missing.push(&r.id);
            }
            obligations.push(o.clone());
        }
    }
    if !key_missing.is_empty() {
        key_missing.dedup();
        matched.push(MatchedRule {
            id: KEY_MISSING_ID.to_string(),
            effect: Effect::Deny,
            reason: format!(
                "rule {} requires pseudonymisation before forwarding, but the gateway has no \
                 pseudonymisation key configured (fail closed)",
                key_missing.join(", ")
            ),
            regulation: "gateway configuration ([policies] pseudonymisation_key)".to_string(),
        });
        return Decision {
            effect: Effect::Deny,
            matched,
            obligations: Vec::new(),
            policy_version,
        };
    }
    Decision {
        effect: Effect::Allow,
        matched,
        obligations,
        policy_version,
    }
}

/// Longest value shown from a record in a reason, and most values per cite: reasons go into
/// answers, audit entries and auditors' screens, so a sender's text is kept short and plain.
const CITE_VALUE_CHARS: usize = 80;
const CITE_MAX_VALUES: usize = 8;

/// "HGR export approval A, B; GACC special-item approval C": the cites whose values the record
/// gives, or `None` when it gives none.
fn cited(cites: &[Cite], cx: &Ctx<'_>) -> Option<String> {
    let mut parts = Vec::new();
    for c in cites {
        let Some(found) = resolve(cx.record, &c.field) else {
            continue;
        };
        let mut values = Vec::new();
        match (&c.value, &c.filter, found.as_array()) {
            (None, None, _) => values.extend(shown_value(found)),
            (value, filter, Some(items)) => {
                for item in items {
                    let s = Scope { item, parent: None };
                    if filter.as_ref().is_none_or(|f| eval_in(f, cx, Some(&s))) {
                        let v = match value {
                            Some(p) => resolve(item, p),
                            None => Some(item),
                        };
                        values.extend(v.and_then(shown_value));
                    }
                }
            }
            _ => {}
        }
        values.dedup();
        if values.is_empty() {
            continue;
        }
        let more = values.len().saturating_sub(CITE_MAX_VALUES);
        values.truncate(CITE_MAX_VALUES);
        let mut text = format!("{} {}", c.label, values.join(", "));
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        parts.push(text);
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// A scalar of the record as it may appear in a reason: control characters dropped, shortened.
fn shown_value(v: &Value) -> Option<String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .take(CITE_VALUE_CHARS)
        .collect();
    if text.chars().count() > CITE_VALUE_CHARS {
        out.push('…');
    }
    let out = out.trim().to_string();
    (!out.is_empty()).then_some(out)
}

/// The decision time as the set's local instant (for tests and tools).
pub fn local_now(set: &CompiledSet, now: DateTime<Utc>) -> DateValue {
    DateValue::Instant(now.with_timezone(&set.zone))
}
