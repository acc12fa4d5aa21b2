//! The compiled program: an immutable NFA in FlinkCEP's shape (states with TAKE / IGNORE / PROCEED
//! edges guarded by conditions), plus what an alert needs (metadata, output fields, message).
//!
//! One `Nfa` is built per pattern by `dsl::compile`, through [`crate::NfaBuilder`] (the only way
//! to make one outside this crate: it refuses automata the runtime cannot run), and shared
//! (`Arc<Nfa>`) by every key's run.
//! Everything the runtime touches is indexed by the newtype ids below; the string tables
//! (`fields`, `types`, `vars[..].name`, `State::name`) exist for output and explanations only;
//! `tables` names the reference tables the pattern reads, resolved once per installed snapshot
//! ([`crate::refdata::Bound`]).

use crate::expr::{Cond, Expr};

macro_rules! newtype_id {
    ($(#[$m:meta])* $name:ident, $inner:ty) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);
        impl $name {
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

newtype_id!(
    /// Index into [`Nfa::states`].
    StateId, u32
);
newtype_id!(
    /// Index into [`Nfa::vars`]: a pattern variable (`first`, `burst`, ...).
    VarId, u16
);
newtype_id!(
    /// Index into a stream's field table (and so into [`crate::Event::fields`]).
    FieldId, u16
);
newtype_id!(
    /// Index into [`Nfa::types`]: one record type of the stream.
    TypeId, u16
);
newtype_id!(
    /// Index into [`Nfa::conditions`].
    CondId, u32
);
newtype_id!(
    /// Index into [`Nfa::tables`]: a reference table or list the pattern reads.
    TableId, u16
);

/// What an edge does with the current event (FlinkCEP's `StateTransitionAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Accept the event into the source state's variable and move to the target.
    Take,
    /// Skip the event and stay in (or move to) the target without recording it.
    Ignore,
    /// Move to the target without consuming the event (an epsilon edge).
    Proceed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKind {
    Normal,
    /// Reaching it completes a match.
    Final,
    /// Reaching it kills the partial match (a negated element was seen).
    Stop,
    /// Waits for time to pass without the negated element (`not followed by` at the end).
    Pending,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub action: Action,
    pub target: StateId,
    pub cond: Cond,
}

#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Unique, readable state name (`burst`, `burst:1`, `$end`): dumps and explanations.
    pub name: String,
    /// The variable whose events this state takes; `None` for the final state.
    pub var: Option<VarId>,
    pub kind: StateKind,
    pub edges: Vec<Edge>,
    /// Window between the previous event and the one this state takes (`within` on an element).
    pub window_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VarInfo {
    pub name: String,
    /// Takes more than one event (a quantifier other than `?`, or inside a quantified group).
    pub looping: bool,
    /// A negated element (`not next` / `not followed by`): never part of a match.
    pub negated: bool,
}

/// After-match skip strategies (FlinkCEP's `AfterMatchSkipStrategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipStrategy {
    NoSkip,
    ToNext,
    PastLastEvent,
    ToFirst(VarId),
    ToLast(VarId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// Live patterns write to the alerts topic, shadow patterns to the shadow alerts topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Live,
    Shadow,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PatternMeta {
    pub name: String,
    pub description: String,
    pub version: u32,
    pub severity: Severity,
    pub mode: Mode,
    pub stream: String,
    pub key: FieldId,
    /// Content hash of the compiled pattern (hex); changes whenever its meaning does.
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputField {
    pub name: String,
    pub expr: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TemplatePart {
    Lit(String),
    Expr(Expr),
}

/// The alert message: literal text with `{expr}` placeholders evaluated on the complete match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

/// A compiled pattern. Made by [`crate::NfaBuilder`]; its fields are there to read.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Nfa {
    pub meta: PatternMeta,
    pub vars: Vec<VarInfo>,
    /// Field names of the stream, by `FieldId` (dotted paths for nested records).
    pub fields: Vec<String>,
    /// Record type names of the stream, by `TypeId`.
    pub types: Vec<String>,
    /// The pattern's element conditions, by `CondId`; edges refer to them through [`Cond`].
    pub conditions: Vec<Expr>,
    pub states: Vec<State>,
    pub start: StateId,
    /// Window from the first event of a partial match (`within` on the pattern), in ms.
    pub window_ms: Option<i64>,
    pub skip: SkipStrategy,
    pub outputs: Vec<OutputField>,
    pub message: Template,
    /// The reference tables (and lists) the pattern reads, by [`TableId`]: names only, never
    /// contents (see [`crate::refdata`]).
    pub tables: Vec<String>,
    /// What the conditions read of earlier events, `(function, variable, field)`: `a.price` is
    /// `(First, a, price)`. Derived from `conditions`; partial matches keep these as registers.
    pub(crate) reads: Vec<Read>,
}

/// An aggregate a condition reads over a variable's events (`a.price` is the first).
pub(crate) type Read = (crate::expr::AggFunc, VarId, Option<FieldId>);

/// The reads of `conditions`, each once, in order of appearance.
pub(crate) fn reads_of(conditions: &[Expr]) -> Vec<Read> {
    use crate::expr::AggFunc;
    fn walk(e: &Expr, out: &mut Vec<Read>) {
        let read = match e {
            Expr::VarField(var, f) => Some((AggFunc::First, *var, Some(*f))),
            Expr::Agg(func, var, field) => Some((*func, *var, *field)),
            _ => None,
        };
        if let Some(r) = read.filter(|r| !out.contains(r)) {
            out.push(r);
        }
        e.for_each_child(&mut |c| walk(c, out));
    }
    let mut out = Vec::new();
    for c in conditions {
        walk(c, &mut out);
    }
    out
}

impl Nfa {
    /// The fields of its stream the pattern reads: its key, and every field its conditions,
    /// outputs and message read (of the candidate or of earlier events), each once, ascending.
    pub fn fields_read(&self) -> Vec<FieldId> {
        fn walk(e: &Expr, out: &mut Vec<FieldId>) {
            match e {
                Expr::Field(f) | Expr::VarField(_, f) | Expr::Agg(_, _, Some(f)) => out.push(*f),
                _ => {}
            }
            e.for_each_child(&mut |c| walk(c, out));
        }
        let mut out = vec![self.meta.key];
        let parts = self.message.parts.iter().filter_map(|p| match p {
            TemplatePart::Expr(e) => Some(e),
            TemplatePart::Lit(_) => None,
        });
        for e in self.conditions.iter().chain(self.outputs.iter().map(|o| &o.expr)).chain(parts) {
            walk(e, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn state(&self, id: StateId) -> &State {
        &self.states[id.index()]
    }

    pub fn var_name(&self, id: VarId) -> &str {
        &self.vars[id.index()].name
    }

    pub fn field_name(&self, id: FieldId) -> &str {
        &self.fields[id.index()]
    }

    pub fn table_name(&self, id: TableId) -> &str {
        &self.tables[id.index()]
    }

    /// Whether any state has a window to the previous event (`within ... of previous`).
    pub fn has_state_windows(&self) -> bool {
        self.states.iter().any(|s| s.window_ms.is_some())
    }
}
