//! [`NfaBuilder`]: the one way to make an [`Nfa`] outside this crate, and one that refuses the
//! automata the runtime cannot run.
//!
//! Tables (fields, record types, variables, conditions, states) are filled in any order; each
//! `add_*` returns the newtype id of what it added, in insertion order (the first state added is
//! `StateId(0)`, and so on), so a caller that numbers its states itself gets the same numbers.
//! Edges, windows, the start state and the rest may name ids that do not exist yet: everything
//! is checked once, by [`NfaBuilder::build`], which returns the automaton or the first problem
//! found as a [`BuildError`] (what is wrong, and where).
//!
//! What `build` checks is what the runtime (`runtime/run.rs`, `docs/design/flinkcep-runtime.md`)
//! relies on and what `dsl::compile` always produces:
//! - every id is in range: the key field, the skip strategy's variable, the variable of each
//!   state, the source and target of each edge, the conditions and record types its guard names,
//!   the fields, variables and reference tables read by conditions, outputs and the message;
//! - variable names, state names and table names are unique;
//! - windows (the pattern's and each state's) are longer than zero;
//! - there is a start state and it is a normal state;
//! - there is a final state, and every final state is empty: no edge, no variable, no window;
//! - a stop state has exactly one edge, a TAKE to itself;
//! - a TAKE edge leaves a state with a variable (the variable the event is taken into);
//! - PROCEED edges form no cycle (the runtime follows them without taking an event, so it
//!   would loop for ever on one event).

use std::collections::HashMap;
use std::fmt;

use crate::expr::{Cond, Expr};
use crate::nfa::{
    Action, CondId, Edge, FieldId, Nfa, OutputField, PatternMeta, SkipStrategy, State, StateId, StateKind, TableId,
    Template, TemplatePart, TypeId, VarId, VarInfo,
};

/// Collects the parts of an [`Nfa`]; [`NfaBuilder::build`] checks them and makes it.
#[derive(Clone, Debug)]
pub struct NfaBuilder {
    meta: PatternMeta,
    vars: Vec<VarInfo>,
    fields: Vec<String>,
    types: Vec<String>,
    conditions: Vec<Expr>,
    /// States without their edges and windows (those are checked and added by `build`).
    states: Vec<State>,
    edges: Vec<(StateId, Edge)>,
    state_windows: Vec<(StateId, i64)>,
    start: Option<StateId>,
    window_ms: Option<i64>,
    skip: SkipStrategy,
    outputs: Vec<OutputField>,
    message: Template,
    tables: Vec<String>,
}

impl NfaBuilder {
    /// An empty automaton of the pattern described by `meta` (whose `key` names a field added
    /// with [`NfaBuilder::add_field`]; its `hash` is kept as given). No window, no skip strategy,
    /// no outputs, an empty message.
    pub fn new(meta: PatternMeta) -> Self {
        NfaBuilder {
            meta,
            vars: Vec::new(),
            fields: Vec::new(),
            types: Vec::new(),
            conditions: Vec::new(),
            states: Vec::new(),
            edges: Vec::new(),
            state_windows: Vec::new(),
            start: None,
            window_ms: None,
            skip: SkipStrategy::NoSkip,
            outputs: Vec::new(),
            message: Template::default(),
            tables: Vec::new(),
        }
    }

    /// Adds a field of the stream (a dotted path for a nested record): the next [`FieldId`].
    pub fn add_field(&mut self, name: impl Into<String>) -> FieldId {
        self.fields.push(name.into());
        FieldId((self.fields.len() - 1) as u16)
    }

    /// Adds a record type of the stream: the next [`TypeId`].
    pub fn add_type(&mut self, name: impl Into<String>) -> TypeId {
        self.types.push(name.into());
        TypeId((self.types.len() - 1) as u16)
    }

    /// Adds a reference table (or list) the pattern reads, by name: the next [`TableId`]
    /// ([`crate::Expr::InTable`] and [`crate::Expr::Lookup`] name it by its id).
    pub fn add_table(&mut self, name: impl Into<String>) -> TableId {
        self.tables.push(name.into());
        TableId((self.tables.len() - 1) as u16)
    }

    /// Adds a pattern variable: the next [`VarId`].
    pub fn add_var(&mut self, var: VarInfo) -> VarId {
        self.vars.push(var);
        VarId((self.vars.len() - 1) as u16)
    }

    /// Adds an element condition, which edges name through [`Cond::Holds`]: the next [`CondId`].
    pub fn add_condition(&mut self, expr: Expr) -> CondId {
        self.conditions.push(expr);
        CondId((self.conditions.len() - 1) as u32)
    }

    /// Adds a state without edges: the next [`StateId`]. `var` is the variable whose events it
    /// takes (`None` for a final state).
    pub fn add_state(&mut self, name: impl Into<String>, var: Option<VarId>, kind: StateKind) -> StateId {
        self.states.push(State { name: name.into(), var, kind, edges: Vec::new(), window_ms: None });
        StateId((self.states.len() - 1) as u32)
    }

    /// Adds an edge after the edges `from` already has (their order is the runtime's order).
    pub fn add_edge(&mut self, from: StateId, action: Action, target: StateId, cond: Cond) -> &mut Self {
        self.edges.push((from, Edge { action, target, cond }));
        self
    }

    /// The window between the previous event and the one `state` takes (`within ... of
    /// previous`), in ms.
    pub fn state_window(&mut self, state: StateId, ms: i64) -> &mut Self {
        self.state_windows.push((state, ms));
        self
    }

    /// The state a fresh run waits in.
    pub fn start(&mut self, state: StateId) -> &mut Self {
        self.start = Some(state);
        self
    }

    /// The window from the first event of a partial match (`within` on the pattern), in ms.
    pub fn window(&mut self, ms: i64) -> &mut Self {
        self.window_ms = Some(ms);
        self
    }

    pub fn skip(&mut self, skip: SkipStrategy) -> &mut Self {
        self.skip = skip;
        self
    }

    /// Adds an output field of the alert, after those added before.
    pub fn add_output(&mut self, name: impl Into<String>, expr: Expr) -> &mut Self {
        self.outputs.push(OutputField { name: name.into(), expr });
        self
    }

    /// The alert message.
    pub fn message(&mut self, message: Template) -> &mut Self {
        self.message = message;
        self
    }

    /// Checks everything (see the module documentation) and makes the automaton.
    pub fn build(self) -> Result<Nfa, BuildError> {
        let NfaBuilder {
            meta,
            vars,
            fields,
            types,
            conditions,
            mut states,
            edges,
            state_windows,
            start,
            window_ms,
            skip,
            outputs,
            message,
            tables: table_names,
        } = self;
        let tables = Tables {
            vars: vars.len(),
            fields: fields.len(),
            types: types.len(),
            conditions: conditions.len(),
            tables: table_names.len(),
        };
        let (small, large) = (usize::from(u16::MAX) + 1, usize::try_from(u32::MAX).map_or(usize::MAX, |m| m + 1));
        for (what, len, max) in [
            ("fields", fields.len(), small),
            ("record types", types.len(), small),
            ("variables", vars.len(), small),
            ("tables", table_names.len(), small),
            ("conditions", conditions.len(), large),
            ("states", states.len(), large),
        ] {
            if len > max {
                return Err(BuildError::new(Site::Pattern, Kind::TooMany(what)));
            }
        }

        let mut var_names = HashMap::new();
        for (i, v) in vars.iter().enumerate() {
            if var_names.insert(v.name.as_str(), i).is_some() {
                return Err(BuildError::new(Site::Variable(VarId(index(i))), Kind::DuplicateVarName(v.name.clone())));
            }
        }
        let mut seen_tables = HashMap::new();
        for (i, t) in table_names.iter().enumerate() {
            if seen_tables.insert(t.as_str(), i).is_some() {
                return Err(BuildError::new(Site::Table(TableId(index(i))), Kind::DuplicateTableName(t.clone())));
            }
        }
        tables.field(meta.key).map_err(|k| BuildError::new(Site::Key, k))?;
        if let Some(ms) = window_ms {
            positive(ms).map_err(|k| BuildError::new(Site::Pattern, k))?;
        }
        if let SkipStrategy::ToFirst(v) | SkipStrategy::ToLast(v) = skip {
            tables.var(v).map_err(|k| BuildError::new(Site::Skip, k))?;
        }
        for (i, c) in conditions.iter().enumerate() {
            tables.expr(c).map_err(|k| BuildError::new(Site::Condition(CondId(index(i))), k))?;
        }
        for (i, o) in outputs.iter().enumerate() {
            tables.expr(&o.expr).map_err(|k| BuildError::new(Site::Output(i), k))?;
        }
        for part in &message.parts {
            if let TemplatePart::Expr(e) = part {
                tables.expr(e).map_err(|k| BuildError::new(Site::Message, k))?;
            }
        }

        let mut state_names = HashMap::new();
        for (i, s) in states.iter().enumerate() {
            let site = Site::State(StateId(index(i)));
            if let Some(v) = s.var {
                tables.var(v).map_err(|k| BuildError::new(site, k))?;
            }
            if state_names.insert(s.name.as_str(), i).is_some() {
                return Err(BuildError::new(site, Kind::DuplicateStateName(s.name.clone())));
            }
        }
        for (s, ms) in state_windows {
            let site = Site::State(s);
            let state = states.get_mut(s.index()).ok_or_else(|| BuildError::new(site, Kind::NoSuchState(s)))?;
            positive(ms).map_err(|k| BuildError::new(site, k))?;
            state.window_ms = Some(ms);
        }
        let mut per_state = vec![0usize; states.len()];
        let mut unknown_sources: HashMap<StateId, usize> = HashMap::new();
        for (from, edge) in edges {
            let n = match per_state.get_mut(from.index()) {
                Some(n) => n,
                None => unknown_sources.entry(from).or_default(),
            };
            let site = Site::Edge { from, index: *n };
            *n += 1;
            let Some(source) = states.get(from.index()) else {
                return Err(BuildError::new(site, Kind::NoSuchState(from)));
            };
            if edge.target.index() >= states.len() {
                return Err(BuildError::new(site, Kind::NoSuchState(edge.target)));
            }
            tables.cond(&edge.cond).map_err(|k| BuildError::new(site, k))?;
            if edge.action == Action::Take && source.var.is_none() {
                return Err(BuildError::new(site, Kind::TakeWithoutVariable));
            }
            states[from.index()].edges.push(edge);
        }
        if let Some(cycle) = proceed_cycle(&states) {
            return Err(BuildError::new(Site::State(cycle[0]), Kind::ProceedCycle(cycle)));
        }

        let start = start.ok_or_else(|| BuildError::new(Site::Pattern, Kind::NoStart))?;
        let start_state =
            states.get(start.index()).ok_or_else(|| BuildError::new(Site::Start, Kind::NoSuchState(start)))?;
        if start_state.kind != StateKind::Normal {
            return Err(BuildError::new(Site::Start, Kind::StartNotNormal(start_state.kind)));
        }
        let mut finals = 0;
        for (i, s) in states.iter().enumerate() {
            let id = StateId(index(i));
            let site = Site::State(id);
            match s.kind {
                StateKind::Final => {
                    finals += 1;
                    if !s.edges.is_empty() {
                        return Err(BuildError::new(site, Kind::FinalHasEdges));
                    }
                    if s.var.is_some() {
                        return Err(BuildError::new(site, Kind::FinalHasVariable));
                    }
                    if s.window_ms.is_some() {
                        return Err(BuildError::new(site, Kind::FinalHasWindow));
                    }
                }
                StateKind::Stop => {
                    if !matches!(&s.edges[..], [e] if e.action == Action::Take && e.target == id) {
                        return Err(BuildError::new(site, Kind::StopNotSelfTake));
                    }
                }
                StateKind::Normal | StateKind::Pending => {}
            }
        }
        if finals == 0 {
            return Err(BuildError::new(Site::Pattern, Kind::NoFinalState));
        }

        let reads = crate::nfa::reads_of(&conditions);
        Ok(Nfa {
            meta,
            vars,
            fields,
            types,
            conditions,
            states,
            start,
            window_ms,
            skip,
            outputs,
            message,
            tables: table_names,
            reads,
        })
    }
}

/// A cycle of PROCEED edges, if any, as the states along it (the first one repeated at the
/// end). The runtime follows PROCEED edges without taking an event, so such a cycle would loop
/// for ever on one event.
fn proceed_cycle(states: &[State]) -> Option<Vec<StateId>> {
    // Iterative depth-first search; 0: unseen, 1: on the path, 2: done.
    let mut mark = vec![0u8; states.len()];
    for root in 0..states.len() {
        if mark[root] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = 1;
        while let Some(&mut (s, ref mut next)) = path.last_mut() {
            let proceeds: Vec<usize> =
                states[s].edges.iter().filter(|e| e.action == Action::Proceed).map(|e| e.target.index()).collect();
            if let Some(&t) = proceeds.get(*next) {
                *next += 1;
                match mark[t] {
                    0 => {
                        mark[t] = 1;
                        path.push((t, 0));
                    }
                    1 => {
                        let at = path.iter().position(|&(p, _)| p == t).unwrap_or(0);
                        let mut cycle: Vec<StateId> = path[at..].iter().map(|&(p, _)| StateId(index(p))).collect();
                        cycle.push(StateId(index(t)));
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                mark[s] = 2;
                path.pop();
            }
        }
    }
    None
}

/// An index of a table whose length [`NfaBuilder::build`] checked against its id type.
fn index<T: TryFrom<usize> + Default>(i: usize) -> T {
    T::try_from(i).unwrap_or_default()
}

/// `s1 -> s3 -> s1`.
fn cycle_text(states: &[StateId]) -> String {
    states.iter().map(|s| format!("s{}", s.0)).collect::<Vec<_>>().join(" -> ")
}

fn positive(ms: i64) -> Result<(), Kind> {
    if ms > 0 {
        Ok(())
    } else {
        Err(Kind::WindowNotPositive(ms))
    }
}

/// The sizes of the tables ids index into.
struct Tables {
    vars: usize,
    fields: usize,
    types: usize,
    conditions: usize,
    tables: usize,
}

impl Tables {
    fn var(&self, v: VarId) -> Result<(), Kind> {
        if v.index() < self.vars {
            Ok(())
        } else {
            Err(Kind::NoSuchVariable(v))
        }
    }

    fn field(&self, f: FieldId) -> Result<(), Kind> {
        if f.index() < self.fields {
            Ok(())
        } else {
            Err(Kind::NoSuchField(f))
        }
    }

    fn table(&self, t: TableId) -> Result<(), Kind> {
        if t.index() < self.tables {
            Ok(())
        } else {
            Err(Kind::NoSuchTable(t))
        }
    }

    fn expr(&self, e: &Expr) -> Result<(), Kind> {
        match e {
            Expr::Lit(_) => Ok(()),
            Expr::Field(f) => self.field(*f),
            Expr::VarField(v, f) => {
                self.var(*v)?;
                self.field(*f)
            }
            Expr::Agg(_, v, f) => {
                self.var(*v)?;
                f.map_or(Ok(()), |f| self.field(f))
            }
            Expr::Unary(_, x)
            | Expr::IsNull { expr: x, .. }
            | Expr::In { expr: x, .. }
            | Expr::Like { expr: x, .. } => self.expr(x),
            Expr::InTable { expr: x, table, .. } | Expr::Lookup { key: x, table } => {
                self.table(*table)?;
                self.expr(x)
            }
            Expr::Binary(_, a, b) => {
                self.expr(a)?;
                self.expr(b)
            }
            Expr::If(c, t, f) => {
                self.expr(c)?;
                self.expr(t)?;
                self.expr(f)
            }
            Expr::Call(_, args) => args.iter().try_for_each(|a| self.expr(a)),
        }
    }

    fn cond(&self, c: &Cond) -> Result<(), Kind> {
        match c {
            Cond::True => Ok(()),
            Cond::Holds(id) if id.index() < self.conditions => Ok(()),
            Cond::Holds(id) => Err(Kind::NoSuchCondition(*id)),
            Cond::IsType(t) if t.index() < self.types => Ok(()),
            Cond::IsType(t) => Err(Kind::NoSuchType(*t)),
            Cond::Not(c) => self.cond(c),
            Cond::And(a, b) => {
                self.cond(a)?;
                self.cond(b)
            }
        }
    }
}

/// An automaton [`NfaBuilder::build`] refused: what is wrong ([`BuildError::kind`]) and where
/// ([`BuildError::site`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{site}: {kind}")]
pub struct BuildError {
    kind: BuildErrorKind,
    site: Site,
}

impl BuildError {
    fn new(site: Site, kind: BuildErrorKind) -> Self {
        BuildError { kind, site }
    }

    pub fn kind(&self) -> &BuildErrorKind {
        &self.kind
    }

    pub fn site(&self) -> Site {
        self.site
    }
}

type Kind = BuildErrorKind;

/// What is wrong with an automaton.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildErrorKind {
    #[error("state s{} does not exist", .0 .0)]
    NoSuchState(StateId),
    #[error("variable {} does not exist", .0 .0)]
    NoSuchVariable(VarId),
    #[error("field {} does not exist", .0 .0)]
    NoSuchField(FieldId),
    #[error("record type {} does not exist", .0 .0)]
    NoSuchType(TypeId),
    #[error("condition c{} does not exist", .0 .0)]
    NoSuchCondition(CondId),
    #[error("table {} does not exist", .0 .0)]
    NoSuchTable(TableId),
    #[error("the variable name `{0}` is used twice")]
    DuplicateVarName(String),
    #[error("the state name `{0}` is used twice")]
    DuplicateStateName(String),
    #[error("the table name `{0}` is used twice")]
    DuplicateTableName(String),
    #[error("a window of {0}ms: windows are longer than zero")]
    WindowNotPositive(i64),
    /// A table has more entries than its id type can number (65,536 fields, record types,
    /// variables or reference tables; 2^32 conditions or states): ids past that were given out
    /// wrapped.
    #[error("more {0} than ids can number")]
    TooMany(&'static str),
    #[error("no start state")]
    NoStart,
    #[error("the start state is a {0:?} state, not a normal one")]
    StartNotNormal(StateKind),
    #[error("no final state")]
    NoFinalState,
    #[error("a final state has no edges")]
    FinalHasEdges,
    #[error("a final state takes no variable")]
    FinalHasVariable,
    #[error("a final state has no window")]
    FinalHasWindow,
    #[error("a stop state has exactly one edge, a TAKE to itself")]
    StopNotSelfTake,
    #[error("a TAKE edge leaves a state without a variable to take the event into")]
    TakeWithoutVariable,
    #[error("PROCEED edges form a cycle ({}): the runtime would loop for ever without taking an event", cycle_text(.0))]
    ProceedCycle(Vec<StateId>),
}

/// Where in the automaton a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Site {
    /// The automaton as a whole (its window, its start, its final states).
    Pattern,
    /// The key field of [`PatternMeta`].
    Key,
    /// The skip strategy's variable.
    Skip,
    /// The start state.
    Start,
    Variable(VarId),
    /// A reference table of [`Nfa::tables`].
    Table(TableId),
    Condition(CondId),
    /// An output field, by position.
    Output(usize),
    Message,
    State(StateId),
    /// The `index`-th edge added to `from`.
    Edge {
        from: StateId,
        index: usize,
    },
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Pattern => f.write_str("the automaton"),
            Site::Key => f.write_str("the key"),
            Site::Skip => f.write_str("the skip strategy"),
            Site::Start => f.write_str("the start state"),
            Site::Variable(v) => write!(f, "variable {}", v.0),
            Site::Table(t) => write!(f, "table {}", t.0),
            Site::Condition(c) => write!(f, "condition c{}", c.0),
            Site::Output(i) => write!(f, "output {i}"),
            Site::Message => f.write_str("the message"),
            Site::State(s) => write!(f, "state s{}", s.0),
            Site::Edge { from, index } => write!(f, "edge {index} of state s{}", from.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{AggFunc, BinOp};
    use crate::nfa::{Mode, Severity};
    use crate::value::Value;

    fn meta(key: u16) -> PatternMeta {
        PatternMeta {
            name: "p".to_owned(),
            description: String::new(),
            version: 1,
            severity: Severity::Low,
            mode: Mode::Live,
            stream: "s".to_owned(),
            key: FieldId(key),
            hash: String::new(),
        }
    }

    fn var(name: &str) -> VarInfo {
        VarInfo { name: name.to_owned(), looping: false, negated: false }
    }

    fn name_is(field: FieldId, v: &str) -> Expr {
        Expr::Binary(BinOp::Eq, Box::new(Expr::Field(field)), Box::new(Expr::Lit(Value::str(v))))
    }

    /// The parts of `a followed by b` (as the compiler numbers them), without edges and start.
    struct Parts {
        b: NfaBuilder,
        end: StateId,
        sb: StateId,
        sa: StateId,
        a: VarId,
        ca: CondId,
        cb: CondId,
    }

    fn parts() -> Parts {
        let mut b = NfaBuilder::new(meta(0));
        let key = b.add_field("k");
        let name = b.add_field("name");
        assert_eq!((key, name), (FieldId(0), FieldId(1)));
        b.add_type("T");
        let a = b.add_var(var("a"));
        let vb = b.add_var(var("b"));
        let ca = b.add_condition(name_is(name, "a"));
        let cb = b.add_condition(name_is(name, "b"));
        let end = b.add_state("$end", None, StateKind::Final);
        let sb = b.add_state("b", Some(vb), StateKind::Normal);
        let sa = b.add_state("a", Some(a), StateKind::Normal);
        Parts { b, end, sb, sa, a, ca, cb }
    }

    /// `a followed by b`.
    fn valid() -> Parts {
        let mut p = parts();
        let (end, sb, sa, ca, cb) = (p.end, p.sb, p.sa, p.ca, p.cb);
        p.b.add_edge(sb, Action::Take, end, Cond::Holds(cb))
            .add_edge(sb, Action::Ignore, sb, Cond::negate(Cond::Holds(cb)))
            .add_edge(sa, Action::Take, sb, Cond::Holds(ca))
            .start(sa);
        p
    }

    fn refused(b: NfaBuilder) -> BuildError {
        match b.build() {
            Ok(nfa) => panic!("built an invalid automaton:\n{}", crate::dump::dump(&nfa)),
            Err(e) => e,
        }
    }

    fn assert_refused(b: NfaBuilder, kind: BuildErrorKind, site: Site) {
        let e = refused(b);
        assert_eq!((e.kind(), e.site()), (&kind, site), "{e}");
    }

    #[test]
    fn ids_come_in_insertion_order_and_a_valid_automaton_builds() {
        let p = valid();
        assert_eq!(
            (p.end, p.sb, p.sa, p.a, p.ca, p.cb),
            (StateId(0), StateId(1), StateId(2), VarId(0), CondId(0), CondId(1))
        );
        let mut b = p.b;
        b.window(10).state_window(p.sb, 5).skip(SkipStrategy::ToLast(p.a));
        b.add_output("n", Expr::Agg(AggFunc::Count, p.a, None));
        b.message(Template {
            parts: vec![TemplatePart::Lit("x ".to_owned()), TemplatePart::Expr(Expr::VarField(p.a, FieldId(1)))],
        });
        let nfa = b.build().expect("valid");
        assert_eq!(nfa.start, StateId(2));
        assert_eq!(nfa.state(StateId(1)).window_ms, Some(5));
        assert_eq!(nfa.state(StateId(1)).edges.len(), 2);
        assert_eq!(nfa.state(StateId(1)).edges[1].action, Action::Ignore, "edges keep their order");
        expect_test::expect![[r#"
            pattern p version 1 severity low mode live
              ""
            stream s key k
            window 10ms from the first event
            skip to last a
            variables:
              a
              b
            conditions:
              c0: name == "a"
              c1: name == "b"
            states:
              s0 $end [final]
              s1 b [within 5ms of previous]
                take    -> s0 when c1
                ignore  -> s1 when not c1
              s2 a [start]
                take    -> s1 when c0
            emit:
              n: count(a)
            message: x {a.name}
        "#]]
        .assert_eq(&crate::dump::dump(&nfa));
    }

    #[test]
    fn ids_out_of_range_are_refused_where_they_are() {
        let mut p = valid();
        p.b.add_edge(p.sa, Action::Take, StateId(7), Cond::True);
        assert_refused(p.b, Kind::NoSuchState(StateId(7)), Site::Edge { from: StateId(2), index: 1 });

        let mut p = valid();
        p.b.add_edge(StateId(9), Action::Ignore, p.sb, Cond::True);
        assert_refused(p.b, Kind::NoSuchState(StateId(9)), Site::Edge { from: StateId(9), index: 0 });

        let mut p = valid();
        p.b.add_edge(p.sb, Action::Ignore, p.sb, Cond::and(Cond::True, Cond::Not(Box::new(Cond::Holds(CondId(2))))));
        assert_refused(p.b, Kind::NoSuchCondition(CondId(2)), Site::Edge { from: StateId(1), index: 2 });

        let mut p = valid();
        p.b.add_edge(p.sb, Action::Ignore, p.sb, Cond::IsType(TypeId(1)));
        assert_refused(p.b, Kind::NoSuchType(TypeId(1)), Site::Edge { from: StateId(1), index: 2 });

        let mut p = valid();
        p.b.add_state("c", Some(VarId(2)), StateKind::Normal);
        assert_refused(p.b, Kind::NoSuchVariable(VarId(2)), Site::State(StateId(3)));

        let mut p = valid();
        p.b.start(StateId(3));
        assert_refused(p.b, Kind::NoSuchState(StateId(3)), Site::Start);

        let mut p = valid();
        p.b.state_window(StateId(3), 10);
        assert_refused(p.b, Kind::NoSuchState(StateId(3)), Site::State(StateId(3)));

        let mut p = valid();
        p.b.skip(SkipStrategy::ToFirst(VarId(5)));
        assert_refused(p.b, Kind::NoSuchVariable(VarId(5)), Site::Skip);

        let mut p = valid();
        p.b.meta.key = FieldId(2);
        assert_refused(p.b, Kind::NoSuchField(FieldId(2)), Site::Key);
    }

    #[test]
    fn ids_inside_expressions_are_checked() {
        let deep =
            |e: Expr| Expr::If(Box::new(Expr::Lit(Value::Bool(true))), Box::new(Expr::Lit(Value::Null)), Box::new(e));
        let mut p = valid();
        p.b.add_condition(Expr::Call(crate::expr::Func::Abs, vec![Expr::Field(FieldId(2))].into()));
        assert_refused(p.b, Kind::NoSuchField(FieldId(2)), Site::Condition(CondId(2)));

        let mut p = valid();
        p.b.add_output("x", Expr::Unary(crate::expr::UnOp::Neg, Box::new(Expr::Agg(AggFunc::Sum, VarId(3), None))));
        assert_refused(p.b, Kind::NoSuchVariable(VarId(3)), Site::Output(0));

        let mut p = valid();
        p.b.add_output("ok", Expr::Field(FieldId(1)));
        p.b.add_output("x", Expr::Agg(AggFunc::Sum, VarId(0), Some(FieldId(4))));
        assert_refused(p.b, Kind::NoSuchField(FieldId(4)), Site::Output(1));

        let mut p = valid();
        p.b.message(Template { parts: vec![TemplatePart::Expr(deep(Expr::VarField(VarId(1), FieldId(8))))] });
        assert_refused(p.b, Kind::NoSuchField(FieldId(8)), Site::Message);
    }

    #[test]
    fn reference_tables_are_named_once_and_read_by_id() {
        let in_list =
            |t: u16| Expr::InTable { expr: Box::new(Expr::Field(FieldId(1))), table: TableId(t), negated: true };
        let lookup = |t: u16| Expr::Lookup { table: TableId(t), key: Box::new(Expr::Field(FieldId(0))) };

        let mut p = valid();
        assert_eq!(p.b.add_table("watch"), TableId(0));
        assert_eq!(p.b.add_table("tier"), TableId(1));
        p.b.add_condition(Expr::Binary(BinOp::And, Box::new(in_list(0)), Box::new(Expr::Lit(Value::Bool(true)))));
        p.b.add_output("tier", lookup(1));
        let nfa = p.b.build().expect("valid");
        assert_eq!(nfa.tables, ["watch", "tier"]);
        let dump = crate::dump::dump(&nfa);
        assert!(dump.contains("tables: watch, tier\n"), "{dump}");
        assert!(dump.contains("  c2: name not in list watch and true\n"), "{dump}");
        assert!(dump.contains("  tier: lookup(tier, k)\n"), "{dump}");

        let mut p = valid();
        p.b.add_table("watch");
        p.b.add_condition(in_list(1));
        assert_refused(p.b, Kind::NoSuchTable(TableId(1)), Site::Condition(CondId(2)));

        let mut p = valid();
        p.b.add_output("x", Expr::Unary(crate::expr::UnOp::Not, Box::new(lookup(0))));
        assert_refused(p.b, Kind::NoSuchTable(TableId(0)), Site::Output(0));

        let mut p = valid();
        p.b.add_table("watch");
        p.b.message(Template { parts: vec![TemplatePart::Expr(lookup(3))] });
        assert_refused(p.b, Kind::NoSuchTable(TableId(3)), Site::Message);

        // The key is checked too.
        let mut p = valid();
        p.b.add_table("tier");
        p.b.add_output("x", Expr::Lookup { table: TableId(0), key: Box::new(Expr::Field(FieldId(9))) });
        assert_refused(p.b, Kind::NoSuchField(FieldId(9)), Site::Output(0));

        let mut p = valid();
        p.b.add_table("watch");
        p.b.add_table("watch");
        assert_refused(p.b, Kind::DuplicateTableName("watch".to_owned()), Site::Table(TableId(1)));
        assert_eq!(
            BuildError::new(Site::Table(TableId(1)), Kind::NoSuchTable(TableId(4))).to_string(),
            "table 1: table 4 does not exist"
        );
    }

    #[test]
    fn names_are_unique() {
        let mut p = valid();
        p.b.add_var(var("a"));
        assert_refused(p.b, Kind::DuplicateVarName("a".to_owned()), Site::Variable(VarId(2)));

        let mut p = valid();
        p.b.add_state("b", Some(VarId(1)), StateKind::Normal);
        assert_refused(p.b, Kind::DuplicateStateName("b".to_owned()), Site::State(StateId(3)));
    }

    #[test]
    fn windows_are_longer_than_zero() {
        let mut p = valid();
        p.b.window(0);
        assert_refused(p.b, Kind::WindowNotPositive(0), Site::Pattern);

        let mut p = valid();
        p.b.state_window(StateId(1), -5);
        assert_refused(p.b, Kind::WindowNotPositive(-5), Site::State(StateId(1)));
    }

    #[test]
    fn a_start_state_is_required_and_normal() {
        let p = parts();
        assert_refused(p.b, Kind::NoStart, Site::Pattern);

        let mut p = valid();
        p.b.start(p.end);
        assert_refused(p.b, Kind::StartNotNormal(StateKind::Final), Site::Start);
    }

    #[test]
    fn final_states_exist_and_are_empty() {
        let mut b = NfaBuilder::new(meta(0));
        b.add_field("k");
        let a = b.add_var(var("a"));
        let s = b.add_state("a", Some(a), StateKind::Normal);
        b.add_edge(s, Action::Ignore, s, Cond::True).start(s);
        assert_refused(b, Kind::NoFinalState, Site::Pattern);

        let mut p = valid();
        p.b.add_edge(p.end, Action::Ignore, p.end, Cond::True);
        // An edge out of the final state is refused whatever its action.
        assert_refused(p.b, Kind::FinalHasEdges, Site::State(StateId(0)));

        let mut p = valid();
        p.b.add_state("$end:0", Some(p.a), StateKind::Final);
        assert_refused(p.b, Kind::FinalHasVariable, Site::State(StateId(3)));

        let mut p = valid();
        p.b.state_window(p.end, 10);
        assert_refused(p.b, Kind::FinalHasWindow, Site::State(StateId(0)));

        // Several final states are fine (the compiler copies `$end` in some patterns).
        let mut p = valid();
        p.b.add_state("$end:0", None, StateKind::Final);
        assert!(p.b.build().is_ok());
    }

    #[test]
    fn stop_states_take_into_themselves_only() {
        let with_stop = |edges: &[(Action, bool)]| {
            let mut p = valid();
            let stop = p.b.add_state("x", Some(p.a), StateKind::Stop);
            p.b.add_edge(p.sb, Action::Proceed, stop, Cond::Holds(p.ca));
            for &(action, to_self) in edges {
                p.b.add_edge(stop, action, if to_self { stop } else { p.sb }, Cond::Holds(p.ca));
            }
            p.b
        };
        assert!(with_stop(&[(Action::Take, true)]).build().is_ok());
        let stop = Site::State(StateId(3));
        assert_refused(with_stop(&[]), Kind::StopNotSelfTake, stop);
        assert_refused(with_stop(&[(Action::Take, false)]), Kind::StopNotSelfTake, stop);
        assert_refused(with_stop(&[(Action::Ignore, true)]), Kind::StopNotSelfTake, stop);
        assert_refused(with_stop(&[(Action::Take, true), (Action::Take, true)]), Kind::StopNotSelfTake, stop);
    }

    #[test]
    fn edges_that_the_runtime_cannot_follow_are_refused() {
        let mut p = valid();
        let group = p.b.add_state("(group)", None, StateKind::Normal);
        p.b.add_edge(group, Action::Proceed, p.sb, Cond::True);
        assert!(p.b.clone().build().is_ok(), "a state without a variable may PROCEED");
        p.b.add_edge(group, Action::Take, p.sb, Cond::True);
        assert_refused(p.b, Kind::TakeWithoutVariable, Site::Edge { from: StateId(3), index: 1 });

        let mut p = valid();
        p.b.add_edge(p.sb, Action::Proceed, p.sb, Cond::True);
        assert_refused(p.b, Kind::ProceedCycle(vec![StateId(1), StateId(1)]), Site::State(StateId(1)));

        // A longer cycle: s1 -> (group) -> s1, each by PROCEED.
        let mut p = valid();
        let group = p.b.add_state("(group)", None, StateKind::Normal);
        p.b.add_edge(p.sb, Action::Proceed, group, Cond::True);
        p.b.add_edge(group, Action::Proceed, p.sb, Cond::True);
        let err = p.b.build().expect_err("a cycle");
        assert_eq!(err.kind(), &Kind::ProceedCycle(vec![StateId(1), StateId(3), StateId(1)]));
        assert!(err.to_string().contains("PROCEED edges form a cycle (s1 -> s3 -> s1)"), "{err}");
    }

    #[test]
    fn tables_fit_their_id_types() {
        let mut p = valid();
        for i in 0..=u16::MAX {
            p.b.add_field(format!("f{i}"));
        }
        assert_refused(p.b, Kind::TooMany("fields"), Site::Pattern);
    }

    #[test]
    fn errors_say_what_and_where() {
        let mut p = valid();
        p.b.add_edge(p.sa, Action::Take, StateId(7), Cond::True);
        assert_eq!(refused(p.b).to_string(), "edge 1 of state s2: state s7 does not exist");
        let p = parts();
        assert_eq!(refused(p.b).to_string(), "the automaton: no start state");
    }
}
