//! The compiled form of a policy set: what [`super::compile`] produces once per load and
//! [`super::eval`] runs for every decision. Types only, so both depend on this and not on each
//! other.

use chrono::FixedOffset;
use serde_json::Value;

use super::dates::{DateValue, Offset};
use super::{Effect, MatchedRule, Obligation, SettingInfo};
use crate::envelope::Kind;

/// A JSON pointer split into tokens at load; array indices pre-parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointer {
    pub text: Box<str>,
    pub tokens: Box<[Token]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub key: Box<str>,
    pub index: Option<usize>,
}

/// Which part of the sender's identity a condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityField {
    Park,
    Organisation,
    Subject,
    Fingerprint,
}

/// Where a condition reads its value.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A pointer into the whole envelope (`/body/data_grade`).
    Field(Pointer),
    /// A pointer into the item of an enclosing `any_item`/`every_item`; `up` 0 is the innermost.
    Item {
        up: usize,
        pointer: Pointer,
    },
    Identity(IdentityField),
    /// An attribute of a registry entry: the sender's (`of` = None) or that of the organisation
    /// whose name the record gives at `of`.
    Registry {
        attribute: &'static str,
        of: Option<Box<Pointer>>,
    },
    /// A setting's value (folded into a constant at load; kept for completeness).
    Constant(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Cmp {
    pub fn holds(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cmp::Lt => o == Less,
            Cmp::Le => o != Greater,
            Cmp::Gt => o == Greater,
            Cmp::Ge => o != Less,
            Cmp::Eq => o == Equal,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NumOperand {
    Const(f64),
    Source(Source),
    /// The sum of `of` over the items of the array at `over` for which `filter` holds (inside
    /// the filter, `item` is the summed item, `outer_item` the enclosing scope's item).
    Sum(Box<SumOperand>),
}

/// `{ sum = ..., of = ..., where = ... }` (boxed: rare, and it would widen every condition).
#[derive(Debug, Clone, PartialEq)]
pub struct SumOperand {
    pub over: Source,
    pub of: Pointer,
    pub filter: Option<Cond>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DateBase {
    Now,
    Literal(DateValue),
    Source(Source),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DateOperand {
    pub base: DateBase,
    pub offset: Offset,
    /// An offset whose amount is read from the record (`days = { field = ... }`).
    pub offset_from: Option<Box<(OffsetUnit, Source)>>,
    /// Compare both sides as local calendar dates, even two date-times.
    pub calendar: bool,
}

/// The unit of an offset read from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetUnit {
    Days,
    WorkingDays,
    Months,
    Years,
}

impl OffsetUnit {
    pub fn name(self) -> &'static str {
        match self {
            OffsetUnit::Days => "days",
            OffsetUnit::WorkingDays => "working_days",
            OffsetUnit::Months => "months",
            OffsetUnit::Years => "years",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Equals(Value),
    OneOf(Box<[Value]>),
    Num(Cmp, NumOperand),
    /// `true`: present and not null; `false`: absent or null.
    Exists(bool),
    Date(Cmp, DateOperand),
    AnyItem(Box<Cond>),
    EveryItem(Box<Cond>),
    /// The array at the source holds this value.
    Contains(Value),
    /// The value at the source is one of the items of the array at another source.
    MemberOf(Source),
    /// The value at the source equals the value at another source.
    SameAs(Source),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Const(bool),
    All(Box<[Cond]>),
    Any(Box<[Cond]>),
    Not(Box<Cond>),
    Test(Source, Op),
}

impl Source {
    fn reads_registry(&self) -> bool {
        matches!(self, Source::Registry { .. })
    }
}

impl Cond {
    /// Whether the condition, anywhere inside, reads the organisation registry.
    pub fn reads_registry(&self) -> bool {
        match self {
            Cond::Const(_) => false,
            Cond::All(cs) | Cond::Any(cs) => cs.iter().any(Cond::reads_registry),
            Cond::Not(c) => c.reads_registry(),
            Cond::Test(src, op) => {
                src.reads_registry()
                    || match op {
                        Op::AnyItem(c) | Op::EveryItem(c) => c.reads_registry(),
                        Op::MemberOf(s) | Op::SameAs(s) => s.reads_registry(),
                        Op::Num(_, NumOperand::Source(s)) => s.reads_registry(),
                        Op::Num(_, NumOperand::Sum(sum)) => {
                            sum.filter.as_ref().is_some_and(Cond::reads_registry)
                        }
                        Op::Date(_, d) => {
                            matches!(&d.base, DateBase::Source(s) if s.reads_registry())
                                || d.offset_from.as_ref().is_some_and(|o| o.1.reads_registry())
                        }
                        _ => false,
                    }
            }
        }
    }
}

/// One fact a rule rests on: `label` and the value(s) at `field` (or, for an array, `value` of
/// each item for which `filter` holds).
#[derive(Debug, Clone)]
pub struct Cite {
    pub label: String,
    pub field: Pointer,
    pub filter: Option<Cond>,
    pub value: Option<Pointer>,
}

/// One rule, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub effect: Effect,
    pub file: String,
    /// `None`: any. Otherwise the accepted values.
    pub kinds: Option<Vec<Kind>>,
    pub from: Option<Vec<String>>,
    pub to: Option<Vec<String>>,
    pub organisations: Option<Vec<String>>,
    pub parks: Option<Vec<String>>,
    pub when: Cond,
    /// What an allow asks for before forwarding, in declared order (the rule id filled in).
    pub obligations: Vec<Obligation>,
    /// What an allow rests on, shown after its reason with the values the record gives.
    pub cites: Vec<Cite>,
    /// Built once so a decision clones instead of formatting.
    pub shown: MatchedRule,
}

impl Rule {
    /// Whether any condition of the rule reads the organisation registry.
    pub fn reads_registry(&self) -> bool {
        self.when.reads_registry()
    }

    pub fn needs_key(&self) -> bool {
        self.effect == Effect::Allow
            && self
                .obligations
                .iter()
                .any(|o| matches!(o, Obligation::Pseudonymise { .. }))
    }
}

/// A compiled policy set.
#[derive(Debug, Clone)]
pub struct CompiledSet {
    pub rules: Vec<Rule>,
    /// Indices into `rules` of the rules that can match each kind, in policy order.
    pub by_kind: [Vec<usize>; 3],
    pub settings: Vec<SettingInfo>,
    /// Local time of the zone, for "the decision date" and plain dates.
    pub zone: FixedOffset,
}

pub fn kind_slot(kind: Kind) -> usize {
    match kind {
        Kind::Talent => 0,
        Kind::Materials => 1,
        Kind::Data => 2,
    }
}

/// What [`load_dir`] produces.
pub struct LoadedSet {
    pub set: CompiledSet,
    pub declared_version: String,
    /// SHA-256 (hex) over the manifest and rule files in name order.
    pub hash: String,
}
