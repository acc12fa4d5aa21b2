//! Compiled expressions (field references already resolved to indices) and their evaluation.
//!
//! Expressions use SQL's three-valued logic: a comparison with `null` is `null`, `and` / `or` /
//! `not` follow Kleene's tables, and a condition holds only when it evaluates to `true`.
//! The structural negations the compiler adds to edges ([`Cond::Not`]) negate *whether a condition
//! holds*, so an event whose condition is `null` is ignored, not taken and not fatal.
//!
//! Reference tables (`x in list NAME`, `lookup(NAME, x)`) are read from a [`Bound`] given to the
//! `*_with` forms of evaluation ([`Expr::eval_with`], [`Cond::holds_with`], ...); the plain forms
//! ([`Expr::eval`], [`Cond::holds`], ...) evaluate with no tables ([`Bound::empty`]: every table
//! reads as empty). An operator passes the snapshot installed last; tables never change in the
//! middle of an event, so a condition that reads only the event and tables is as pure as one that
//! reads only the event (the per-event [`ConditionCache`] keeps its result).

use std::cmp::Ordering;
use std::sync::Arc;

use crate::nfa::{CondId, FieldId, TableId, TypeId, VarId};
use crate::refdata::Bound;
use crate::value::{Event, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Contains,
    StartsWith,
    EndsWith,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Contains => "contains",
            BinOp::StartsWith => "starts with",
            BinOp::EndsWith => "ends with",
        }
    }
}

/// Aggregates over the events a variable has taken so far in a (partial) match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggFunc {
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
}

impl AggFunc {
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count | AggFunc::CountDistinct => "count",
            AggFunc::Sum => "sum",
            AggFunc::Avg => "avg",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::First => "first",
            AggFunc::Last => "last",
        }
    }
}

/// Scalar functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    Abs,
    Lower,
    Upper,
    Length,
    Coalesce,
    Round,
    Floor,
    Ceil,
    /// Great-circle distance in km between (lat1, lon1) and (lat2, lon2), degrees.
    GeoKm,
    /// Hour of the day (0-23, UTC) of a timestamp.
    HourOfDay,
}

impl Func {
    pub const ALL: [Func; 10] = [
        Func::Abs,
        Func::Lower,
        Func::Upper,
        Func::Length,
        Func::Coalesce,
        Func::Round,
        Func::Floor,
        Func::Ceil,
        Func::GeoKm,
        Func::HourOfDay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Func::Abs => "abs",
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::Length => "length",
            Func::Coalesce => "coalesce",
            Func::Round => "round",
            Func::Floor => "floor",
            Func::Ceil => "ceil",
            Func::GeoKm => "geo_km",
            Func::HourOfDay => "hour_of_day",
        }
    }
}

/// A compiled `like` or `matches` pattern. Compared by source text.
#[derive(Clone, Debug)]
pub struct TextPattern {
    /// What the analyst wrote.
    pub source: String,
    /// `like` (SQL wildcards, whole string) or `matches` (regular expression, anywhere).
    pub like: bool,
    pub regex: Arc<regex::Regex>,
}

impl PartialEq for TextPattern {
    fn eq(&self, other: &Self) -> bool {
        self.like == other.like && self.source == other.source
    }
}

impl TextPattern {
    /// SQL `LIKE`: `%` any run, `_` one character, `\` escapes; matches the whole string.
    pub fn like(source: &str) -> Result<Self, regex::Error> {
        let mut re = String::from("(?s)^");
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => re.push_str(".*"),
                '_' => re.push('.'),
                '\\' => {
                    if let Some(n) = chars.next() {
                        re.push_str(&regex::escape(&n.to_string()));
                    }
                }
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        Ok(TextPattern { source: source.to_owned(), like: true, regex: Arc::new(regex::Regex::new(&re)?) })
    }

    /// A regular expression (Rust `regex` syntax), matched anywhere in the string.
    pub fn regex(source: &str) -> Result<Self, regex::Error> {
        Ok(TextPattern { source: source.to_owned(), like: false, regex: Arc::new(regex::Regex::new(source)?) })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Lit(Value),
    /// A field of the event being evaluated (the candidate, in a condition).
    Field(FieldId),
    /// A field of the single event a non-looping variable took earlier in the match.
    VarField(VarId, FieldId),
    /// An aggregate over the events a variable took so far (the candidate excluded).
    Agg(AggFunc, VarId, Option<FieldId>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Box<[Value]>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: TextPattern,
        negated: bool,
    },
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Call(Func, Box<[Expr]>),
    /// `expr in list NAME` (`negated`: `not in list`): whether the reference table holds the
    /// value as a key; null for a null value.
    InTable {
        expr: Box<Expr>,
        table: TableId,
        negated: bool,
    },
    /// `lookup(NAME, key)`: the reference table's value for the key; null when the key is null
    /// or absent.
    Lookup {
        table: TableId,
        key: Box<Expr>,
    },
}

/// A guard on an NFA edge, built by the compiler from element conditions.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    True,
    /// The element condition holds (evaluates to `true`).
    Holds(CondId),
    /// The event is of this record type (`var: Type` in the pattern).
    IsType(TypeId),
    Not(Box<Cond>),
    And(Box<Cond>, Box<Cond>),
}

impl Cond {
    pub fn negate(c: Cond) -> Cond {
        match c {
            Cond::Not(inner) => *inner,
            c => Cond::Not(Box::new(c)),
        }
    }

    pub fn and(a: Cond, b: Cond) -> Cond {
        match (a, b) {
            (Cond::True, b) => b,
            (a, Cond::True) => a,
            (a, b) => Cond::And(Box::new(a), Box::new(b)),
        }
    }

    /// Whether the guard lets `event` pass, given the conditions table and the partial match
    /// (with no reference tables: [`Cond::holds_with`]).
    pub fn holds(&self, conditions: &[Expr], event: &Event, view: &dyn MatchView) -> bool {
        self.holds_with(conditions, event, view, Bound::empty())
    }

    /// [`Cond::holds`], reading reference tables from `refs`.
    pub fn holds_with(&self, conditions: &[Expr], event: &Event, view: &dyn MatchView, refs: &Bound) -> bool {
        match self {
            Cond::True => true,
            Cond::Holds(id) => conditions[id.index()].eval_with(Some(event), view, refs).is_true(),
            Cond::IsType(t) => event.kind == *t,
            Cond::Not(c) => !c.holds_with(conditions, event, view, refs),
            Cond::And(a, b) => {
                a.holds_with(conditions, event, view, refs) && b.holds_with(conditions, event, view, refs)
            }
        }
    }

    /// As [`Cond::holds`], remembering in `cache` the result of conditions that do not read the
    /// match (the same for every partial match of one event). Reset the cache per event.
    pub fn holds_cached(
        &self,
        conditions: &[Expr],
        event: &Event,
        view: &dyn MatchView,
        cache: &mut ConditionCache,
    ) -> bool {
        self.holds_cached_with(conditions, event, view, cache, Bound::empty())
    }

    /// [`Cond::holds_cached`], reading reference tables from `refs` (the same for every call
    /// between two resets of the cache).
    pub fn holds_cached_with(
        &self,
        conditions: &[Expr],
        event: &Event,
        view: &dyn MatchView,
        cache: &mut ConditionCache,
        refs: &Bound,
    ) -> bool {
        match self {
            Cond::True => true,
            Cond::Holds(id) => {
                let i = id.index();
                match cache.known.get(i).copied().unwrap_or(UNKNOWN) {
                    TRUE => true,
                    FALSE => false,
                    GATE_PASSED => conditions[i].eval_with(Some(event), view, refs).is_true(),
                    _ if !cache.pure.get(i).copied().unwrap_or(false) => {
                        // Read the event-only part first: when it fails, no partial match passes.
                        if !conditions[i].gate_with(event, refs) {
                            cache.known[i] = FALSE;
                            return false;
                        }
                        cache.known[i] = GATE_PASSED;
                        conditions[i].eval_with(Some(event), view, refs).is_true()
                    }
                    _ => {
                        let r = conditions[i].eval_with(Some(event), &EmptyMatch, refs).is_true();
                        cache.known[i] = if r { TRUE } else { FALSE };
                        r
                    }
                }
            }
            Cond::IsType(t) => event.kind == *t,
            Cond::Not(c) => !c.holds_cached_with(conditions, event, view, cache, refs),
            Cond::And(a, b) => {
                a.holds_cached_with(conditions, event, view, cache, refs)
                    && b.holds_cached_with(conditions, event, view, cache, refs)
            }
        }
    }

    /// Whether the guard lets `event` pass whatever the partial match holds: `Some` when that
    /// is decided by the event alone (the guard reads no event of the match, or an event-only
    /// conjunct of a condition that does fails), `None` when it depends on the match. Results
    /// are kept in `cache` as [`Cond::holds_cached`] keeps them, and agree with them.
    pub fn holds_for_any(&self, conditions: &[Expr], event: &Event, cache: &mut ConditionCache) -> Option<bool> {
        self.holds_for_any_with(conditions, event, cache, Bound::empty())
    }

    /// [`Cond::holds_for_any`], reading reference tables from `refs` (the same for every call
    /// between two resets of the cache).
    pub fn holds_for_any_with(
        &self,
        conditions: &[Expr],
        event: &Event,
        cache: &mut ConditionCache,
        refs: &Bound,
    ) -> Option<bool> {
        match self {
            Cond::True => Some(true),
            Cond::IsType(t) => Some(event.kind == *t),
            Cond::Holds(id) => {
                let i = id.index();
                let pure = cache.pure.get(i).copied().unwrap_or(false);
                match cache.known.get(i).copied().unwrap_or(UNKNOWN) {
                    TRUE => Some(true),
                    FALSE => Some(false),
                    GATE_PASSED => None,
                    _ if pure => Some(self.holds_cached_with(conditions, event, &EmptyMatch, cache, refs)),
                    _ if !conditions[i].gate_with(event, refs) => {
                        cache.known[i] = FALSE;
                        Some(false)
                    }
                    _ => {
                        cache.known[i] = GATE_PASSED;
                        None
                    }
                }
            }
            Cond::Not(c) => c.holds_for_any_with(conditions, event, cache, refs).map(|b| !b),
            Cond::And(a, b) => {
                match (
                    a.holds_for_any_with(conditions, event, cache, refs),
                    b.holds_for_any_with(conditions, event, cache, refs),
                ) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }
            }
        }
    }
}

const UNKNOWN: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
/// A condition that reads the match, whose event-only conjuncts all hold for this event.
const GATE_PASSED: u8 = 3;

/// Per-event results of the conditions that do not depend on the partial match.
#[derive(Clone, Debug, Default)]
pub struct ConditionCache {
    pure: Vec<bool>,
    known: Vec<u8>,
}

impl Cond {
    /// Whether the guard reads no event of the match (its result depends on the event alone).
    pub fn is_pure(&self, cache: &ConditionCache) -> bool {
        match self {
            Cond::True | Cond::IsType(_) => true,
            Cond::Holds(id) => cache.pure.get(id.index()).copied().unwrap_or(false),
            Cond::Not(c) => c.is_pure(cache),
            Cond::And(a, b) => a.is_pure(cache) && b.is_pure(cache),
        }
    }
}

impl ConditionCache {
    pub fn new(conditions: &[Expr]) -> Self {
        ConditionCache {
            pure: conditions.iter().map(|c| !c.reads_match()).collect(),
            known: vec![UNKNOWN; conditions.len()],
        }
    }

    /// Forgets the results (a new event).
    pub fn reset(&mut self) {
        self.known.iter_mut().for_each(|k| *k = UNKNOWN);
    }
}

/// Read access to the events a (partial) match has taken, per variable, in order.
pub trait MatchView {
    /// Calls `f` on each event `var` has taken, in order, until `f` returns `false`.
    fn visit(&self, var: VarId, f: &mut dyn FnMut(&Event) -> bool);

    /// The aggregate `func` of `field` over `var`'s events if the view keeps it at hand (a
    /// partial match's registers); `None`: it is computed by [`MatchView::visit`].
    fn folded(&self, _func: AggFunc, _var: VarId, _field: Option<FieldId>) -> Option<Value> {
        None
    }
}

/// A match with nothing taken yet.
#[derive(Debug)]
pub struct EmptyMatch;

impl MatchView for EmptyMatch {
    fn visit(&self, _var: VarId, _f: &mut dyn FnMut(&Event) -> bool) {}
}

impl Value {
    pub fn is_true(&self) -> bool {
        matches!(self, Value::Bool(true))
    }
}

fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

fn from_truth(b: Option<bool>) -> Value {
    b.map_or(Value::Null, Value::Bool)
}

fn arith(op: BinOp, a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => match op {
            BinOp::Add => x.checked_add(*y).map_or(Value::Null, Value::Int),
            BinOp::Sub => x.checked_sub(*y).map_or(Value::Null, Value::Int),
            BinOp::Mul => x.checked_mul(*y).map_or(Value::Null, Value::Int),
            BinOp::Rem => x.checked_rem(*y).map_or(Value::Null, Value::Int),
            // Division is exact: 5 / 2 == 2.5, and duration / duration is a ratio.
            _ => {
                if *y == 0 {
                    Value::Null
                } else {
                    Value::Float(*x as f64 / *y as f64)
                }
            }
        },
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => {
                let r = match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div if y == 0.0 => return Value::Null,
                    BinOp::Div => x / y,
                    BinOp::Rem if y == 0.0 => return Value::Null,
                    _ => x % y,
                };
                Value::Float(r)
            }
            _ => Value::Null,
        },
    }
}

fn text_op(op: BinOp, a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Str(s), Value::Str(t)) => Value::Bool(match op {
            BinOp::Contains => s.contains(t.as_str()),
            BinOp::StartsWith => s.starts_with(t.as_str()),
            _ => s.ends_with(t.as_str()),
        }),
        _ => Value::Null,
    }
}

fn aggregate(func: AggFunc, var: VarId, field: Option<FieldId>, view: &dyn MatchView) -> Value {
    if let Some(v) = view.folded(func, var, field) {
        return v;
    }
    let mut fold = Fold::default();
    view.visit(var, &mut |e| fold.add(func, field.map_or(Value::Null, |f| e.field(f).clone())));
    fold.result(func)
}

/// An aggregate over a variable's events, fed oldest first ([`Fold::add`]): what a condition's
/// `count(b)`, `avg(b.price)`, `first(b.price)` or `a.price` reads. The same fold serves the
/// walk over a match's events and the registers a partial match keeps as it takes events.
#[derive(Clone, Debug)]
pub struct Fold {
    /// Events (count), or values summed.
    n: i64,
    int_sum: i64,
    float_sum: f64,
    floats: bool,
    overflow: bool,
    /// First, last, min or max so far.
    value: Value,
    distinct: Vec<Value>,
}

impl Default for Fold {
    fn default() -> Self {
        Fold {
            n: 0,
            int_sum: 0,
            float_sum: 0.0,
            floats: false,
            overflow: false,
            value: Value::Null,
            distinct: Vec::new(),
        }
    }
}

impl PartialEq for Fold {
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n
            && self.int_sum == other.int_sum
            && self.float_sum.to_bits() == other.float_sum.to_bits()
            && self.floats == other.floats
            && self.overflow == other.overflow
            && self.value == other.value
            && self.distinct == other.distinct
    }
}

impl Eq for Fold {}

impl Fold {
    /// Adds the value of the next event (`v`: the field read, null when none is); `false` when
    /// later events cannot change the result.
    pub fn add(&mut self, func: AggFunc, v: Value) -> bool {
        match func {
            AggFunc::Count => self.n += 1,
            AggFunc::CountDistinct => {
                if !v.is_null() && !self.distinct.iter().any(|s| s.sql_eq(&v) == Some(true)) {
                    self.distinct.push(v);
                }
            }
            AggFunc::Sum | AggFunc::Avg => match v {
                Value::Int(i) => {
                    match self.int_sum.checked_add(i) {
                        Some(s) => self.int_sum = s,
                        None => self.overflow = true,
                    }
                    self.n += 1;
                }
                Value::Float(f) => {
                    self.floats = true;
                    self.float_sum += f;
                    self.n += 1;
                }
                _ => {}
            },
            AggFunc::Min | AggFunc::Max => {
                if !v.is_null() {
                    let better = match self.value.compare(&v) {
                        None => self.value.is_null(),
                        Some(o) => {
                            (func == AggFunc::Min && o == Ordering::Greater)
                                || (func == AggFunc::Max && o == Ordering::Less)
                        }
                    };
                    if better {
                        self.value = v;
                    }
                }
            }
            AggFunc::First => {
                if self.n == 0 {
                    self.value = v;
                }
                self.n += 1;
                return false;
            }
            AggFunc::Last => self.value = v,
        }
        true
    }

    pub fn result(&self, func: AggFunc) -> Value {
        match func {
            AggFunc::Count => Value::Int(self.n),
            AggFunc::CountDistinct => Value::Int(self.distinct.len() as i64),
            // The sum of no values is 0 (as in FlinkCEP's iterative conditions); their average
            // is null.
            AggFunc::Sum | AggFunc::Avg if self.overflow => Value::Null,
            AggFunc::Avg if self.n == 0 => Value::Null,
            AggFunc::Avg => Value::Float((self.int_sum as f64 + self.float_sum) / self.n as f64),
            AggFunc::Sum if self.floats => Value::Float(self.int_sum as f64 + self.float_sum),
            AggFunc::Sum => Value::Int(self.int_sum),
            AggFunc::Min | AggFunc::Max | AggFunc::First | AggFunc::Last => self.value.clone(),
        }
    }
}

fn geo_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6371.0088;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().min(1.0).asin()
}

fn call(func: Func, args: &[Value]) -> Value {
    let num = |i: usize| args.get(i).and_then(Value::as_f64);
    match func {
        Func::Coalesce => args.iter().find(|v| !v.is_null()).cloned().unwrap_or(Value::Null),
        Func::Abs => match args.first() {
            Some(Value::Int(i)) => i.checked_abs().map_or(Value::Null, Value::Int),
            Some(Value::Float(f)) => Value::Float(f.abs()),
            _ => Value::Null,
        },
        Func::Lower | Func::Upper => match args.first() {
            Some(Value::Str(s)) => Value::str(&if func == Func::Lower { s.to_lowercase() } else { s.to_uppercase() }),
            _ => Value::Null,
        },
        Func::Length => match args.first() {
            Some(Value::Str(s)) => Value::Int(s.chars().count() as i64),
            _ => Value::Null,
        },
        Func::Round | Func::Floor | Func::Ceil => match args.first() {
            Some(Value::Int(i)) => Value::Int(*i),
            Some(Value::Float(f)) => {
                let r = match func {
                    Func::Round => f.round(),
                    Func::Floor => f.floor(),
                    _ => f.ceil(),
                };
                if r.is_finite() && r.abs() < 9.0e18 {
                    Value::Int(r as i64)
                } else {
                    Value::Null
                }
            }
            _ => Value::Null,
        },
        Func::GeoKm => match (num(0), num(1), num(2), num(3)) {
            (Some(a), Some(b), Some(c), Some(d)) => Value::Float(geo_km(a, b, c, d)),
            _ => Value::Null,
        },
        Func::HourOfDay => match args.first() {
            Some(Value::Int(ms)) => Value::Int(ms.rem_euclid(86_400_000) / 3_600_000),
            _ => Value::Null,
        },
    }
}

/// A non-logical binary operator on two values.
fn binary(op: BinOp, x: &Value, y: &Value) -> Value {
    match op {
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => arith(op, x, y),
        BinOp::Eq => from_truth(x.sql_eq(y)),
        BinOp::Ne => from_truth(x.sql_eq(y).map(|b| !b)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => from_truth(x.compare(y).map(|o| match op {
            BinOp::Lt => o == Ordering::Less,
            BinOp::Le => o != Ordering::Greater,
            BinOp::Gt => o == Ordering::Greater,
            _ => o != Ordering::Less,
        })),
        _ => text_op(op, x, y),
    }
}

/// `v [not] in list` of a reference table: null for a null value; a missing table is empty.
fn table_holds(refs: &Bound, table: TableId, v: &Value, negated: bool) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    Value::Bool(refs.table(table).is_some_and(|t| t.contains(v)) != negated)
}

impl Expr {
    pub fn lit(v: Value) -> Expr {
        Expr::Lit(v)
    }

    /// Whether the value depends on the events the match has taken (variables, aggregates).
    /// `false` when a conjunct of this condition's top-level `and` chain that reads no event of
    /// the match does not hold for `event`: then the condition holds for no partial match
    /// (`and` is false or null once one side is not true). `true` otherwise (it may hold).
    pub fn gate(&self, event: &Event) -> bool {
        self.gate_with(event, Bound::empty())
    }

    /// [`Expr::gate`], reading reference tables from `refs`.
    pub fn gate_with(&self, event: &Event, refs: &Bound) -> bool {
        match self {
            Expr::Binary(BinOp::And, a, b) => a.gate_with(event, refs) && b.gate_with(event, refs),
            e if !e.reads_match() => e.eval_with(Some(event), &EmptyMatch, refs).is_true(),
            _ => true,
        }
    }

    pub fn reads_match(&self) -> bool {
        match self {
            Expr::Lit(_) | Expr::Field(_) => false,
            Expr::VarField(..) | Expr::Agg(..) => true,
            Expr::Unary(_, e)
            | Expr::IsNull { expr: e, .. }
            | Expr::In { expr: e, .. }
            | Expr::Like { expr: e, .. }
            | Expr::InTable { expr: e, .. }
            | Expr::Lookup { key: e, .. } => e.reads_match(),
            Expr::Binary(_, a, b) => a.reads_match() || b.reads_match(),
            Expr::If(c, t, e) => c.reads_match() || t.reads_match() || e.reads_match(),
            Expr::Call(_, args) => args.iter().any(Expr::reads_match),
        }
    }

    /// Calls `f` on each direct subexpression.
    pub fn for_each_child(&self, f: &mut dyn FnMut(&Expr)) {
        match self {
            Expr::Lit(_) | Expr::Field(_) | Expr::VarField(..) | Expr::Agg(..) => {}
            Expr::Unary(_, e)
            | Expr::IsNull { expr: e, .. }
            | Expr::In { expr: e, .. }
            | Expr::Like { expr: e, .. }
            | Expr::InTable { expr: e, .. }
            | Expr::Lookup { key: e, .. } => f(e),
            Expr::Binary(_, a, b) => {
                f(a);
                f(b);
            }
            Expr::If(c, t, e) => {
                f(c);
                f(t);
                f(e);
            }
            Expr::Call(_, args) => args.iter().for_each(f),
        }
    }

    /// The value of a constant or of a field of the event, without copying it.
    #[inline]
    fn plain<'a>(&'a self, event: Option<&'a Event>) -> Option<&'a Value> {
        match self {
            Expr::Lit(v) => Some(v),
            Expr::Field(f) => event.map(|e| e.field(*f)),
            _ => None,
        }
    }

    /// [`Expr::plain`], or a table's entry for a constant or a field, without copying it. Not
    /// recursive, so that it inlines into the comparisons of the hot path (`None`: evaluate).
    #[inline]
    fn borrowed<'a>(&'a self, event: Option<&'a Event>, refs: &'a Bound) -> Option<&'a Value> {
        static NULL: Value = Value::Null;
        match self {
            Expr::Lookup { table, key } => {
                let k = key.plain(event)?;
                Some(refs.table(*table).and_then(|t| t.get(k)).unwrap_or(&NULL))
            }
            e => e.plain(event),
        }
    }

    /// Evaluates on `event` (the candidate; `None` when evaluating on a complete match) with the
    /// events of the (partial) match available through `view`, and no reference tables (every
    /// table reads as empty: [`Expr::eval_with`] reads them).
    pub fn eval(&self, event: Option<&Event>, view: &dyn MatchView) -> Value {
        self.eval_with(event, view, Bound::empty())
    }

    /// [`Expr::eval`], reading reference tables (`in list`, `lookup`) from `refs`.
    pub fn eval_with(&self, event: Option<&Event>, view: &dyn MatchView, refs: &Bound) -> Value {
        match self {
            Expr::Lit(v) => v.clone(),
            Expr::Field(f) => event.map_or(Value::Null, |e| e.field(*f).clone()),
            Expr::VarField(var, f) => aggregate(AggFunc::First, *var, Some(*f), view),
            Expr::Agg(func, var, field) => aggregate(*func, *var, *field, view),
            Expr::Unary(UnOp::Neg, e) => match e.eval_with(event, view, refs) {
                Value::Int(i) => i.checked_neg().map_or(Value::Null, Value::Int),
                Value::Float(f) => Value::Float(-f),
                _ => Value::Null,
            },
            Expr::Unary(UnOp::Not, e) => from_truth(truth(&e.eval_with(event, view, refs)).map(|b| !b)),
            Expr::Binary(BinOp::And, a, b) => {
                let x = truth(&a.eval_with(event, view, refs));
                if x == Some(false) {
                    return Value::Bool(false);
                }
                match (x, truth(&b.eval_with(event, view, refs))) {
                    (_, Some(false)) => Value::Bool(false),
                    (Some(true), Some(true)) => Value::Bool(true),
                    _ => Value::Null,
                }
            }
            Expr::Binary(BinOp::Or, a, b) => {
                let x = truth(&a.eval_with(event, view, refs));
                if x == Some(true) {
                    return Value::Bool(true);
                }
                match (x, truth(&b.eval_with(event, view, refs))) {
                    (_, Some(true)) => Value::Bool(true),
                    (Some(false), Some(false)) => Value::Bool(false),
                    _ => Value::Null,
                }
            }
            Expr::Binary(op, a, b) => {
                // Fields, constants and table entries are compared in place (no clone of their
                // text).
                if let (Some(x), Some(y)) = (a.borrowed(event, refs), b.borrowed(event, refs)) {
                    return binary(*op, x, y);
                }
                binary(*op, &a.eval_with(event, view, refs), &b.eval_with(event, view, refs))
            }
            Expr::IsNull { expr, negated } => Value::Bool(expr.eval_with(event, view, refs).is_null() != *negated),
            Expr::In { expr, list, negated } => {
                let v = expr.eval_with(event, view, refs);
                if v.is_null() {
                    return Value::Null;
                }
                Value::Bool(list.iter().any(|l| v.sql_eq(l) == Some(true)) != *negated)
            }
            Expr::Like { expr, pattern, negated } => match expr.eval_with(event, view, refs) {
                Value::Str(s) => Value::Bool(pattern.regex.is_match(&s) != *negated),
                _ => Value::Null,
            },
            Expr::If(c, t, e) => {
                if c.eval_with(event, view, refs).is_true() {
                    t.eval_with(event, view, refs)
                } else {
                    e.eval_with(event, view, refs)
                }
            }
            Expr::Call(func, args) => {
                // Calls take one to three arguments: no allocation per evaluation.
                let vals: smallvec::SmallVec<[Value; 4]> =
                    args.iter().map(|a| a.eval_with(event, view, refs)).collect();
                call(*func, &vals)
            }
            // A field or a constant is looked up in place (no clone of its text).
            Expr::InTable { expr, table, negated } => match expr.borrowed(event, refs) {
                Some(v) => table_holds(refs, *table, v, *negated),
                None => table_holds(refs, *table, &expr.eval_with(event, view, refs), *negated),
            },
            Expr::Lookup { table, key } => {
                let lookup = |k: &Value| refs.table(*table).and_then(|t| t.get(k)).cloned().unwrap_or(Value::Null);
                match key.borrowed(event, refs) {
                    Some(k) => lookup(k),
                    None => lookup(&key.eval_with(event, view, refs)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneVar(Vec<Event>);
    impl MatchView for OneVar {
        fn visit(&self, var: VarId, f: &mut dyn FnMut(&Event) -> bool) {
            if var == VarId(0) {
                for e in &self.0 {
                    if !f(e) {
                        break;
                    }
                }
            }
        }
    }

    fn ev(vals: Vec<Value>) -> Event {
        Event { seq: 0, ts: 0, kind: TypeId(0), fields: vals.into() }
    }

    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }

    #[test]
    fn a_failing_event_only_conjunct_decides_a_condition_that_reads_the_match() {
        // field 0 == 1 and field 1 > (the first event of var 0).field 1
        let own = bin(BinOp::Eq, Expr::Field(FieldId(0)), Expr::Lit(Value::Int(1)));
        let reads = bin(BinOp::Gt, Expr::Field(FieldId(1)), Expr::VarField(VarId(0), FieldId(1)));
        let conds = [bin(BinOp::And, reads.clone(), own.clone()), own];
        let cond = Cond::Holds(CondId(0));
        let mut cache = ConditionCache::new(&conds);
        let earlier = OneVar(vec![ev(vec![Value::Int(1), Value::Int(5)])]);
        for (x, y, decided, holds) in [(2, 9, Some(false), false), (1, 9, None, true), (1, 3, None, false)] {
            let e = ev(vec![Value::Int(x), Value::Int(y)]);
            assert_eq!(conds[0].gate(&e), x == 1, "{x} {y}");
            cache.reset();
            assert_eq!(cond.holds_for_any(&conds, &e, &mut cache), decided, "{x} {y}");
            // Agrees with the evaluation against a match, before and after the cache knows.
            assert_eq!(cond.holds_cached(&conds, &e, &earlier, &mut cache), holds, "{x} {y}");
            cache.reset();
            assert_eq!(cond.holds_cached(&conds, &e, &earlier, &mut cache), holds, "{x} {y}");
            assert_eq!(cond.holds(&conds, &e, &earlier), holds, "{x} {y}");
        }
        // A null event-only conjunct fails too (`and` is null or false, never true).
        let e = ev(vec![Value::Null, Value::Int(9)]);
        cache.reset();
        assert_eq!(cond.holds_for_any(&conds, &e, &mut cache), Some(false));
        assert!(!cond.holds(&conds, &e, &earlier));
        // A pure condition is decided either way.
        let e = ev(vec![Value::Int(1), Value::Int(0)]);
        cache.reset();
        assert_eq!(Cond::Holds(CondId(1)).holds_for_any(&conds, &e, &mut cache), Some(true));
    }

    #[test]
    fn three_valued_logic() {
        let null = Expr::Lit(Value::Null);
        let t = Expr::Lit(Value::Bool(true));
        let f = Expr::Lit(Value::Bool(false));
        let v = |e: Expr| e.eval(None, &EmptyMatch);
        assert_eq!(v(bin(BinOp::And, null.clone(), f.clone())), Value::Bool(false));
        assert_eq!(v(bin(BinOp::And, null.clone(), t.clone())), Value::Null);
        assert_eq!(v(bin(BinOp::Or, null.clone(), t.clone())), Value::Bool(true));
        assert_eq!(v(bin(BinOp::Or, null.clone(), f)), Value::Null);
        assert_eq!(v(Expr::Unary(UnOp::Not, Box::new(null.clone()))), Value::Null);
        assert_eq!(v(bin(BinOp::Gt, null.clone(), Expr::Lit(Value::Int(1)))), Value::Null);
        assert_eq!(v(Expr::IsNull { expr: Box::new(null), negated: false }), Value::Bool(true));
    }

    #[test]
    fn structural_not_treats_null_as_not_holding() {
        let conds = [bin(BinOp::Gt, Expr::Field(FieldId(0)), Expr::Lit(Value::Int(5)))];
        let e = ev(vec![Value::Null]);
        assert!(!Cond::Holds(CondId(0)).holds(&conds, &e, &EmptyMatch));
        assert!(Cond::negate(Cond::Holds(CondId(0))).holds(&conds, &e, &EmptyMatch));
    }

    #[test]
    fn aggregates() {
        let m = OneVar(vec![
            ev(vec![Value::Int(3)]),
            ev(vec![Value::Float(1.5)]),
            ev(vec![Value::Null]),
            ev(vec![Value::Int(3)]),
        ]);
        let agg = |f| Expr::Agg(f, VarId(0), Some(FieldId(0))).eval(None, &m);
        assert_eq!(agg(AggFunc::Count), Value::Int(4));
        assert_eq!(agg(AggFunc::CountDistinct), Value::Int(2));
        assert_eq!(agg(AggFunc::Sum), Value::Float(7.5));
        assert_eq!(agg(AggFunc::Avg), Value::Float(2.5));
        assert_eq!(agg(AggFunc::Min), Value::Float(1.5));
        assert_eq!(agg(AggFunc::Max), Value::Int(3));
        assert_eq!(agg(AggFunc::First), Value::Int(3));
        assert_eq!(agg(AggFunc::Last), Value::Int(3));
        assert_eq!(Expr::Agg(AggFunc::Sum, VarId(1), Some(FieldId(0))).eval(None, &m), Value::Int(0));
        assert_eq!(Expr::Agg(AggFunc::Avg, VarId(1), Some(FieldId(0))).eval(None, &m), Value::Null);
    }

    /// Tables 0 (a list of texts), 1 (whole numbers to texts), 2 (missing from the snapshot).
    fn tables() -> Bound {
        use crate::refdata::{RefData, RefTable, TableKind};
        let mut list = RefTable::new(TableKind::List);
        for k in ["IR", "KP"] {
            list.insert(Value::str(k), Value::Bool(true)).expect("a valid key");
        }
        let mut map = RefTable::new(TableKind::Map);
        map.insert(Value::Int(7), Value::str("HIGH")).expect("a valid key");
        map.insert(Value::str("7"), Value::str("text seven")).expect("a valid key");
        let mut data = RefData::default();
        data.set("risky", Arc::new(list));
        data.set("tier", Arc::new(map));
        Bound::new(&["risky".to_owned(), "tier".to_owned(), "missing".to_owned()], &data)
    }

    #[test]
    fn membership_and_lookup_in_reference_tables() {
        let refs = tables();
        let in_list = |v: Value, table: u16, negated: bool| {
            let e = Expr::InTable { expr: Box::new(Expr::Lit(v)), table: TableId(table), negated };
            (e.eval_with(None, &EmptyMatch, &refs), e.eval(None, &EmptyMatch))
        };
        // With the tables, and without (every table empty).
        assert_eq!(in_list(Value::str("IR"), 0, false), (Value::Bool(true), Value::Bool(false)));
        assert_eq!(in_list(Value::str("FR"), 0, false), (Value::Bool(false), Value::Bool(false)));
        assert_eq!(in_list(Value::str("IR"), 0, true), (Value::Bool(false), Value::Bool(true)));
        assert_eq!(in_list(Value::str("FR"), 0, true), (Value::Bool(true), Value::Bool(true)));
        assert_eq!(in_list(Value::Null, 0, false), (Value::Null, Value::Null), "null in list is null");
        assert_eq!(in_list(Value::Null, 0, true), (Value::Null, Value::Null));
        // A map's keys: a whole number never equals a text.
        assert_eq!(in_list(Value::Int(7), 1, false).0, Value::Bool(true));
        assert_eq!(in_list(Value::Float(7.0), 1, false).0, Value::Bool(true), "7.0 == 7");
        assert_eq!(in_list(Value::str("7"), 1, false).0, Value::Bool(true));
        assert_eq!(in_list(Value::Int(8), 1, false).0, Value::Bool(false));
        // A table missing from the snapshot is empty.
        assert_eq!(in_list(Value::str("IR"), 2, false).0, Value::Bool(false));
        assert_eq!(in_list(Value::str("IR"), 2, true).0, Value::Bool(true));

        let lookup = |key: Expr, table: u16| Expr::Lookup { table: TableId(table), key: Box::new(key) };
        let v = |e: &Expr| e.eval_with(None, &EmptyMatch, &refs);
        assert_eq!(v(&lookup(Expr::Lit(Value::Int(7)), 1)), Value::str("HIGH"));
        assert_eq!(v(&lookup(Expr::Lit(Value::str("7")), 1)), Value::str("text seven"));
        assert_eq!(v(&lookup(Expr::Lit(Value::Int(8)), 1)), Value::Null, "absent: null");
        assert_eq!(v(&lookup(Expr::Lit(Value::Null), 1)), Value::Null, "a null key: null");
        assert_eq!(v(&lookup(Expr::Lit(Value::Int(7)), 2)), Value::Null, "a missing table: null");
        assert_eq!(lookup(Expr::Lit(Value::Int(7)), 1).eval(None, &EmptyMatch), Value::Null, "no tables");
        // Inside comparisons (read in place) and computed keys.
        let e = bin(BinOp::Eq, lookup(Expr::Field(FieldId(0)), 1), Expr::Lit(Value::str("HIGH")));
        let ev7 = ev(vec![Value::Int(7)]);
        assert_eq!(e.eval_with(Some(&ev7), &EmptyMatch, &refs), Value::Bool(true));
        assert_eq!(e.eval_with(Some(&ev(vec![Value::Int(6)])), &EmptyMatch, &refs), Value::Null, "absent == x");
        let sum = lookup(bin(BinOp::Add, Expr::Field(FieldId(0)), Expr::Lit(Value::Int(1))), 1);
        assert_eq!(sum.eval_with(Some(&ev(vec![Value::Int(6)])), &EmptyMatch, &refs), Value::str("HIGH"));
        // A key read from an earlier event of the match.
        let earlier = OneVar(vec![ev(vec![Value::Int(7)])]);
        assert_eq!(
            lookup(Expr::VarField(VarId(0), FieldId(0)), 1).eval_with(None, &earlier, &refs),
            Value::str("HIGH")
        );
    }

    #[test]
    fn a_condition_on_the_event_and_tables_is_pure_and_cached_per_event() {
        let refs = tables();
        let cond = Expr::InTable { expr: Box::new(Expr::Field(FieldId(0))), table: TableId(0), negated: false };
        assert!(!cond.reads_match());
        let conds = [cond];
        let mut cache = ConditionCache::new(&conds);
        let c = Cond::Holds(CondId(0));
        let e = ev(vec![Value::str("KP")]);
        cache.reset();
        assert_eq!(c.holds_for_any_with(&conds, &e, &mut cache, &refs), Some(true));
        assert!(c.holds_cached_with(&conds, &e, &EmptyMatch, &mut cache, &refs));
        assert!(c.holds_with(&conds, &e, &EmptyMatch, &refs));
        assert!(!c.holds(&conds, &e, &EmptyMatch), "no tables: empty");
        cache.reset();
        assert_eq!(c.holds_for_any(&conds, &e, &mut cache), Some(false));
    }

    #[test]
    fn text_and_arithmetic() {
        let like = TextPattern::like("ab%_z").expect("valid");
        assert!(like.regex.is_match("abXYz"));
        assert!(!like.regex.is_match("abz"));
        let e =
            |op, a: i64, b: i64| bin(op, Expr::Lit(Value::Int(a)), Expr::Lit(Value::Int(b))).eval(None, &EmptyMatch);
        assert_eq!(e(BinOp::Div, 5, 2), Value::Float(2.5));
        assert_eq!(e(BinOp::Div, 5, 0), Value::Null);
        assert_eq!(e(BinOp::Add, i64::MAX, 1), Value::Null);
        let km = call(
            Func::GeoKm,
            &[Value::Float(51.5074), Value::Float(-0.1278), Value::Float(40.7128), Value::Float(-74.006)],
        );
        let km = km.as_f64().expect("number");
        assert!((km - 5570.0).abs() < 10.0, "{km}");
    }
}
