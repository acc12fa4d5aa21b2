//! Checks a parsed pattern against the stream catalog and resolves it: names to ids, fields to
//! indices, expressions to typed [`engine::Expr`]. Every problem becomes a [`Diagnostic`]; checking
//! goes on after an error so that one run reports all of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::{
    AggFunc, BinOp, CondId, Expr, FieldId, Func, Mode, OutputField, Severity, SkipStrategy, TypeId, UnOp, Value, VarId,
};

use crate::ast::{self, ClauseKind, Contiguity, ElementKind, ExprKind, Ident, Modifier, Quantifier, Span};
use crate::diag::{did_you_mean, Diagnostic, SourceFile};
use crate::schema::{Catalog, FieldType, StreamSchema};

/// Largest `{n}` / `{n,m}` bound: each repetition is a state of the compiled automaton.
pub const MAX_TIMES: u64 = 1000;

/// Contiguity inside a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inner {
    Relaxed,
    Strict,
    Any,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RKind {
    Var(VarId),
    Group(Vec<RElement>),
}

/// A resolved element of the sequence, in FlinkCEP's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct RElement {
    pub kind: RKind,
    /// How it follows the previous element; `None` for the first element of a sequence.
    pub contiguity: Option<Contiguity>,
    /// `None`: exactly once; `(n, None)`: n or more (looping); `(n, Some(m))`: n to m times.
    pub times: Option<(u32, Option<u32>)>,
    pub optional: bool,
    pub greedy: bool,
    pub inner: Inner,
    /// Window to the previous event (`within` on the element).
    pub window_ms: Option<i64>,
}

/// A resolved pattern variable.
#[derive(Clone, Debug, PartialEq)]
pub struct VarDef {
    pub name: String,
    pub span: Span,
    pub ty: Option<TypeId>,
    /// Its `: Type` named no record type (already reported): its conditions are not checked.
    pub bad_type: bool,
    pub looping: bool,
    pub negated: bool,
    pub cond: Option<CondId>,
    pub until: Option<CondId>,
}

/// A pattern that passed every check, ready for [`crate::compile`].
#[derive(Clone, Debug)]
pub struct CheckedPattern {
    pub name: String,
    /// Where the pattern is named in its file.
    pub name_span: Span,
    pub description: String,
    pub version: u32,
    pub severity: Severity,
    pub mode: Mode,
    pub stream: Arc<StreamSchema>,
    pub key: FieldId,
    pub vars: Vec<VarDef>,
    pub seq: Vec<RElement>,
    pub conditions: Vec<Expr>,
    pub window_ms: Option<i64>,
    pub skip: SkipStrategy,
    pub outputs: Vec<OutputField>,
    pub message: Vec<engine::TemplatePart>,
}

/// The static type of an expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Float,
    Str,
    Timestamp,
    Duration,
    Null,
}

impl Ty {
    fn describe(self) -> &'static str {
        match self {
            Ty::Bool => "a boolean",
            Ty::Int => "a whole number",
            Ty::Float => "a number",
            Ty::Str => "text",
            Ty::Timestamp => "a timestamp",
            Ty::Duration => "a duration",
            Ty::Null => "null",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float)
    }

    fn from_field(t: FieldType) -> Option<Ty> {
        Some(match t {
            FieldType::Bool => Ty::Bool,
            FieldType::Int => Ty::Int,
            FieldType::Float => Ty::Float,
            FieldType::Str => Ty::Str,
            FieldType::Timestamp => Ty::Timestamp,
            FieldType::Unsupported => return None,
        })
    }

    /// Whether values of the two types can be compared with `==` / `<`.
    fn comparable(a: Ty, b: Ty) -> bool {
        a == b || (a.numeric() && b.numeric())
    }
}

struct Typed {
    ty: Ty,
    expr: Expr,
    /// Enum symbols when the expression is an enum field.
    symbols: Option<Vec<String>>,
}

impl Typed {
    fn new(ty: Ty, expr: Expr) -> Self {
        Typed { ty, expr, symbols: None }
    }
}

/// Where an expression is evaluated.
#[derive(Clone, Copy)]
enum Scope {
    /// The condition (or until condition) of `owner`: bare fields are the candidate event's.
    Condition { owner: VarId },
    /// `emit` and `message`: evaluated on the complete match.
    Output,
}

const AGGREGATES: [&str; 7] = ["count", "sum", "avg", "min", "max", "first", "last"];

struct Checker<'a> {
    src: &'a SourceFile,
    diags: &'a mut Vec<Diagnostic>,
    stream: Option<Arc<StreamSchema>>,
    key: Option<FieldId>,
    vars: Vec<VarDef>,
    by_name: BTreeMap<String, VarId>,
    conditions: Vec<Expr>,
    pattern_window: Option<i64>,
}

/// Checks every pattern of a parsed file. Patterns with errors are reported in `diags` and left out.
pub fn check_file(
    src: &SourceFile,
    parsed: &crate::parser::Parsed,
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> Vec<CheckedPattern> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    for p in &parsed.file.patterns {
        if let Some(prev) = seen.get(p.name.name.as_str()) {
            let (line, _) = src.line_col(prev.start);
            diags.push(
                src.diag(
                    p.name.span,
                    "duplicate-pattern",
                    format!("pattern `{}` is defined twice in this file", p.name.name),
                )
                .with_hint(format!("the first definition is at line {line}; pattern names must be unique")),
            );
        } else {
            seen.insert(&p.name.name, p.name.span);
        }
        if parsed.damaged(p) {
            continue;
        }
        let before = diags.len();
        let checked = check_pattern(src, p, catalog, diags);
        if diags.len() == before {
            if let Some(c) = checked {
                out.push(c);
            }
        }
    }
    out
}

fn clause_map<'p>(
    src: &SourceFile,
    p: &'p ast::Pattern,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<&'static str, &'p ast::Clause> {
    let mut m: BTreeMap<&'static str, &ast::Clause> = BTreeMap::new();
    for c in &p.clauses {
        let kw = c.kind.keyword();
        if let Some(first) = m.get(kw) {
            let (line, _) = src.line_col(first.keyword.start);
            diags.push(
                src.diag(c.keyword, "duplicate-clause", format!("`{kw}` is given twice in pattern `{}`", p.name.name))
                    .with_hint(format!("the first `{kw}` is at line {line}; keep one")),
            );
        } else {
            m.insert(kw, c);
        }
    }
    m
}

fn check_pattern(
    src: &SourceFile,
    p: &ast::Pattern,
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> Option<CheckedPattern> {
    let clauses = clause_map(src, p, diags);
    let header = Span::new(p.span.start, p.name.span.end);
    for (kw, example) in [("from", "from payments"), ("key", "key account_id"), ("match", "match a followed by b")] {
        if !clauses.contains_key(kw) {
            diags.push(
                src.diag(header, "missing-clause", format!("pattern `{}` has no `{kw}` clause", p.name.name))
                    .with_hint(format!("add one, e.g. `{example}`")),
            );
        }
    }

    let mut ck = Checker {
        src,
        diags,
        stream: None,
        key: None,
        vars: Vec::new(),
        by_name: BTreeMap::new(),
        conditions: Vec::new(),
        pattern_window: None,
    };

    // Stream and key.
    if let Some(ast::Clause { kind: ClauseKind::From(s), .. }) = clauses.get("from") {
        match catalog.streams.get(&s.name) {
            Some(st) => ck.stream = Some(st.clone()),
            None => {
                let known: Vec<&str> = catalog.streams.keys().map(String::as_str).collect();
                let hint = did_you_mean(&s.name, known.iter().copied()).unwrap_or_else(|| {
                    if known.is_empty() {
                        "no streams are configured: declare them under [streams] in the config".to_owned()
                    } else {
                        format!("configured streams: {}", known.join(", "))
                    }
                });
                let d = src.diag(s.span, "unknown-stream", format!("unknown stream `{}`", s.name)).with_hint(hint);
                ck.diags.push(d);
            }
        }
    }
    if let (Some(ast::Clause { kind: ClauseKind::Key(path), .. }), Some(st)) = (clauses.get("key"), ck.stream.clone()) {
        let name = path.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
        let span = path[0].span.to(path[path.len() - 1].span);
        match st.field(&name) {
            Some(id) => {
                let f = &st.fields[id.index()];
                if !f.in_types.iter().all(|b| *b) {
                    ck.diags.push(
                        src.diag(
                            span,
                            "bad-key",
                            format!("key field `{name}` is not in every record type of stream `{}`", st.name),
                        )
                        .with_hint(format!("missing from: {}", missing_types(&st, id))),
                    );
                } else if !matches!(f.ty, FieldType::Str | FieldType::Int) || f.conflict {
                    ck.diags.push(src.diag(
                        span,
                        "bad-key",
                        format!("key field `{name}` is {}; a key must be text or a whole number", f.ty.describe()),
                    ));
                } else {
                    ck.key = Some(id);
                }
            }
            None => {
                let d = ck.unknown_field(span, &name, &st, None);
                ck.diags.push(d);
            }
        }
    }

    // Window.
    let window_ms = match clauses.get("within") {
        Some(ast::Clause { kind: ClauseKind::Within(ms, span), .. }) => ck.duration(*ms, *span),
        _ => None,
    };
    ck.pattern_window = window_ms;

    // Sequence.
    let mut seq = Vec::new();
    if let Some(ast::Clause { kind: ClauseKind::Match(s), .. }) = clauses.get("match") {
        seq = ck.sequence(s, false, false);
        ck.check_sequence_ends(&seq, s, clauses.contains_key("within"));
    }

    // Conditions.
    let mut defs: BTreeMap<VarId, &ast::ConditionDef> = BTreeMap::new();
    if let (Some(ast::Clause { kind: ClauseKind::Where(list), .. }), true) =
        (clauses.get("where"), clauses.contains_key("match"))
    {
        for def in list {
            match ck.by_name.get(&def.var.name).copied() {
                Some(v) => {
                    if let Some(prev) = defs.get(&v) {
                        let (line, _) = src.line_col(prev.var.span.start);
                        let d = src
                            .diag(def.var.span, "duplicate-condition", format!("`{}` has two conditions", def.var.name))
                            .with_hint(format!("the first is at line {line}; combine them with `and`"));
                        ck.diags.push(d);
                    } else {
                        defs.insert(v, def);
                    }
                }
                None => {
                    let names = ck.var_names(true);
                    let hint = did_you_mean(&def.var.name, names.iter().map(String::as_str)).or_else(|| {
                        (!names.is_empty()).then(|| format!("the variables of `match` are: {}", names.join(", ")))
                    });
                    let d = src
                        .diag(
                            def.var.span,
                            "unknown-variable",
                            format!("`{}` is not a variable of the `match` sequence", def.var.name),
                        )
                        .with_hint_opt(hint);

                    ck.diags.push(d);
                }
            }
        }
    }
    if ck.stream.is_some() {
        for (v, def) in defs {
            if ck.vars[v.index()].bad_type {
                continue;
            }
            if let Some(t) = ck.expr(&def.cond, Scope::Condition { owner: v }) {
                if let Some(expr) = ck.expect_bool(t, def.cond.span, "a condition") {
                    ck.vars[v.index()].cond = Some(ck.add_condition(expr));
                }
            }
            if let Some(u) = &def.until {
                if !ck.vars[v.index()].looping || ck.vars[v.index()].negated || !ck.var_is_open_loop(&seq, v) {
                    let d = src
                        .diag(
                            u.span,
                            "until-needs-loop",
                            format!("`until` applies to loops, and `{}` is not an open-ended loop", def.var.name),
                        )
                        .with_hint("use it on `+`, `*` or `{n,}` elements");
                    ck.diags.push(d);
                }
                if let Some(t) = ck.expr(u, Scope::Condition { owner: v }) {
                    if let Some(expr) = ck.expect_bool(t, u.span, "an `until` condition") {
                        ck.vars[v.index()].until = Some(ck.add_condition(expr));
                    }
                }
            }
        }
    }

    // Skip.
    let skip = match clauses.get("skip") {
        Some(ast::Clause { kind: ClauseKind::Skip(s), .. }) => match s {
            ast::Skip::None => SkipStrategy::NoSkip,
            ast::Skip::ToNext => SkipStrategy::ToNext,
            ast::Skip::PastLastEvent => SkipStrategy::PastLastEvent,
            ast::Skip::ToFirst(i) | ast::Skip::ToLast(i) => match ck.by_name.get(&i.name).copied() {
                Some(v) if !ck.vars[v.index()].negated => {
                    if matches!(s, ast::Skip::ToFirst(_)) {
                        SkipStrategy::ToFirst(v)
                    } else {
                        SkipStrategy::ToLast(v)
                    }
                }
                Some(_) => {
                    let d = src
                        .diag(
                            i.span,
                            "bad-skip-target",
                            format!("skip target `{}` is a negated element and is never part of a match", i.name),
                        )
                        .with_hint(format!("skip to one of: {}", ck.var_names(false).join(", ")));
                    ck.diags.push(d);
                    SkipStrategy::NoSkip
                }
                None => {
                    let names = ck.var_names(false);
                    let hint = did_you_mean(&i.name, names.iter().map(String::as_str))
                        .unwrap_or_else(|| format!("the variables are: {}", names.join(", ")));
                    let d = src
                        .diag(
                            i.span,
                            "bad-skip-target",
                            format!("skip target `{}` names no variable of the pattern", i.name),
                        )
                        .with_hint(hint);
                    ck.diags.push(d);
                    SkipStrategy::NoSkip
                }
            },
        },
        _ => SkipStrategy::NoSkip,
    };

    // Metadata.
    let version = match clauses.get("version") {
        Some(ast::Clause { kind: ClauseKind::Version(n, span), .. }) => {
            if *n == 0 || *n > u64::from(u32::MAX) {
                ck.diags.push(src.diag(*span, "bad-version", "a version is a whole number from 1 to 4294967295"));
                1
            } else {
                *n as u32
            }
        }
        _ => 1,
    };
    let severity = match clauses.get("severity") {
        Some(ast::Clause { kind: ClauseKind::Severity(i), .. }) => match i.name.as_str() {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            other => {
                let levels = ["low", "medium", "high", "critical"];
                let hint =
                    did_you_mean(other, levels).unwrap_or_else(|| "use low, medium, high or critical".to_owned());
                ck.diags.push(src.diag(i.span, "bad-severity", format!("unknown severity `{other}`")).with_hint(hint));
                Severity::Medium
            }
        },
        _ => Severity::Medium,
    };
    let mode = match clauses.get("mode") {
        Some(ast::Clause { kind: ClauseKind::Mode(i), .. }) => match i.name.as_str() {
            "live" => Mode::Live,
            "shadow" => Mode::Shadow,
            other => {
                let hint = did_you_mean(other, ["live", "shadow"]).unwrap_or_else(|| "use live or shadow".to_owned());
                ck.diags.push(src.diag(i.span, "bad-mode", format!("unknown mode `{other}`")).with_hint(hint));
                Mode::Live
            }
        },
        _ => Mode::Live,
    };

    // Output.
    let mut outputs = Vec::new();
    if let (Some(ast::Clause { kind: ClauseKind::Emit(fields), .. }), true) = (clauses.get("emit"), ck.stream.is_some())
    {
        let mut names: BTreeMap<&str, Span> = BTreeMap::new();
        for f in fields {
            if names.insert(&f.name.name, f.name.span).is_some() {
                let d = src
                    .diag(f.name.span, "duplicate-output", format!("output field `{}` is given twice", f.name.name))
                    .with_hint("give it another name: `name: expression`");
                ck.diags.push(d);
            }
            if let Some(t) = ck.expr(&f.expr, Scope::Output) {
                outputs.push(OutputField { name: f.name.name.clone(), expr: t.expr });
            }
        }
    }
    let description = p.description.as_ref().map(|d| d.0.clone()).unwrap_or_default();
    let mut message = Vec::new();
    match clauses.get("message") {
        Some(ast::Clause { kind: ClauseKind::Message(t), .. }) if ck.stream.is_some() => {
            for part in &t.parts {
                match part {
                    ast::TemplatePart::Text(s) => message.push(engine::TemplatePart::Lit(s.clone())),
                    ast::TemplatePart::Hole(e) => {
                        if let Some(t) = ck.expr(e, Scope::Output) {
                            message.push(engine::TemplatePart::Expr(t.expr));
                        }
                    }
                }
            }
        }
        _ => {
            let text =
                if description.is_empty() { format!("pattern {} matched", p.name.name) } else { description.clone() };
            message.push(engine::TemplatePart::Lit(text));
        }
    }

    let stream = ck.stream.clone()?;
    let key = ck.key?;
    if seq.is_empty() {
        return None;
    }
    Some(CheckedPattern {
        name: p.name.name.clone(),
        name_span: p.name.span,
        description,
        version,
        severity,
        mode,
        stream,
        key,
        vars: ck.vars,
        seq,
        conditions: ck.conditions,
        window_ms,
        skip,
        outputs,
        message,
    })
}

fn missing_types(st: &StreamSchema, f: FieldId) -> String {
    st.types
        .iter()
        .zip(&st.fields[f.index()].in_types)
        .filter(|(_, has)| !**has)
        .map(|(t, _)| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Checker<'_> {
    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn err(&mut self, span: Span, code: &'static str, msg: impl Into<String>) {
        let d = self.src.diag(span, code, msg);
        self.diags.push(d);
    }

    fn err_hint(&mut self, span: Span, code: &'static str, msg: impl Into<String>, hint: impl Into<String>) {
        let d = self.src.diag(span, code, msg).with_hint(hint);
        self.diags.push(d);
    }

    fn add_condition(&mut self, e: Expr) -> CondId {
        self.conditions.push(e);
        CondId((self.conditions.len() - 1) as u32)
    }

    fn var_names(&self, include_negated: bool) -> Vec<String> {
        self.vars.iter().filter(|v| include_negated || !v.negated).map(|v| v.name.clone()).collect()
    }

    fn duration(&mut self, ms: i64, span: Span) -> Option<i64> {
        if ms <= 0 {
            self.err_hint(
                span,
                "bad-duration",
                "a window must be longer than zero",
                "e.g. `within 500ms`, `within 10m`",
            );
            None
        } else {
            Some(ms)
        }
    }

    fn var_is_open_loop(&self, seq: &[RElement], v: VarId) -> bool {
        seq.iter().any(|e| match &e.kind {
            RKind::Var(id) => *id == v && matches!(e.times, Some((_, None))),
            RKind::Group(inner) => self.var_is_open_loop(inner, v),
        })
    }

    /// Resolves a sequence; `in_loop`: inside a quantified group (its variables take several events).
    fn sequence(&mut self, s: &ast::Sequence, in_group: bool, in_loop: bool) -> Vec<RElement> {
        let mut out = Vec::new();
        let mut prev: Option<(bool, bool)> = None; // the previous element: (optional, greedy)
        let items = std::iter::once((None, &s.first)).chain(s.rest.iter().map(|(c, sp, e)| (Some((*c, *sp)), e)));
        for (contiguity, el) in items {
            let negated = contiguity.is_some_and(|(c, _)| c.is_negation());
            if let (Some((c, cspan)), Some((prev_optional, _))) = (contiguity, prev) {
                if c.is_negation() && prev_optional {
                    self.err_hint(cspan, "negation-after-optional", format!("`{}` cannot follow an optional element", c.text()),
                        "FlinkCEP does not support an optional path into a negation; write two patterns, one with and one without the optional element");
                }
            }
            let r = self.element(el, contiguity.map(|c| c.0), negated, in_group, in_loop);
            if let (Some(r), Some((_, prev_greedy))) = (&r, prev) {
                if r.optional && prev_greedy {
                    self.err_hint(
                        el.span,
                        "optional-after-greedy",
                        "an optional element cannot follow a greedy one",
                        "drop `greedy` from the element before, or make this one required",
                    );
                }
            }
            if let Some(r) = r {
                prev = Some((r.optional, r.greedy));
                out.push(r);
            } else {
                prev = Some((false, false));
            }
        }
        out
    }

    fn element(
        &mut self,
        el: &ast::Element,
        contiguity: Option<Contiguity>,
        negated: bool,
        in_group: bool,
        in_loop: bool,
    ) -> Option<RElement> {
        let mut optional = false;
        let mut times: Option<(u32, Option<u32>)> = None;
        if let Some((q, span)) = el.quantifier {
            if negated {
                self.err_hint(
                    span,
                    "negated-quantifier",
                    "a negated element cannot have a quantifier",
                    "`not next` / `not followed by` take a single variable",
                );
            }
            match q {
                Quantifier::Plus => times = Some((1, None)),
                Quantifier::Star => {
                    times = Some((1, None));
                    optional = true;
                }
                Quantifier::Optional => optional = true,
                Quantifier::Range { min, max } => {
                    let bad = |n: u64| n > MAX_TIMES;
                    if bad(min) || max.is_some_and(bad) {
                        self.err_hint(span, "bad-quantifier", format!("a repetition count must be at most {MAX_TIMES}"),
                            "for more, use an open range `{n,}` and an aggregate such as `count(x) >= n` on the next element");
                    } else if max == Some(0) {
                        self.err_hint(
                            span,
                            "bad-quantifier",
                            "an element cannot occur zero times",
                            "use `?` or `*` for an optional element",
                        );
                    } else if max.is_some_and(|m| m < min) {
                        self.err_hint(
                            span,
                            "bad-quantifier",
                            format!(
                                "the range `{{{min},{}}}` is empty: the maximum is below the minimum",
                                max.unwrap_or(0)
                            ),
                            format!("write `{{{},{min}}}`", max.unwrap_or(0)),
                        );
                    } else {
                        let (mut lo, hi) = (min as u32, max.map(|m| m as u32));
                        if lo == 0 {
                            optional = true;
                            lo = 1;
                        }
                        times = match hi {
                            Some(1) => None,
                            h => Some((lo, h)),
                        };
                    }
                }
            }
        }
        let mut greedy = false;
        let mut inner = Inner::Relaxed;
        let mut seen: Vec<Modifier> = Vec::new();
        for (m, span) in &el.modifiers {
            if seen.contains(m) {
                self.err(*span, "duplicate-modifier", format!("`{}` is given twice", m.text()));
                continue;
            }
            seen.push(*m);
            if negated {
                self.err_hint(
                    *span,
                    "negated-modifier",
                    format!("a negated element cannot be `{}`", m.text()),
                    "`not next` / `not followed by` take a single variable",
                );
                continue;
            }
            match m {
                Modifier::Optional => optional = true,
                Modifier::Greedy => {
                    if times.is_none() {
                        self.err_hint(
                            *span,
                            "needs-loop",
                            "`greedy` applies to loops and repetitions",
                            "add a quantifier such as `+` or `{2,4}`",
                        );
                    } else if matches!(el.kind, ElementKind::Group(_)) {
                        self.err(*span, "greedy-group", "a group cannot be `greedy` (FlinkCEP does not support it)");
                    }
                    greedy = true;
                }
                Modifier::Consecutive | Modifier::AllowCombinations => {
                    if times.is_none() {
                        self.err_hint(
                            *span,
                            "needs-loop",
                            format!("`{}` applies to loops and repetitions", m.text()),
                            "add a quantifier such as `+` or `{3}`",
                        );
                    }
                    let want = if *m == Modifier::Consecutive { Inner::Strict } else { Inner::Any };
                    if inner != Inner::Relaxed && inner != want {
                        self.err(
                            *span,
                            "conflicting-modifiers",
                            "`consecutive` and `allow combinations` exclude each other",
                        );
                    }
                    inner = want;
                }
            }
        }
        if greedy && inner == Inner::Any {
            let span = el.modifiers.iter().find(|(m, _)| *m == Modifier::Greedy).map_or(el.span, |(_, s)| *s);
            self.err(span, "conflicting-modifiers", "`greedy` and `allow combinations` exclude each other");
        }
        let window_ms = match el.window {
            Some((ms, span)) => {
                if contiguity.is_none() && !in_group {
                    self.err_hint(
                        span,
                        "bad-window",
                        "the first element has no previous event to be `within` of",
                        "put `within` on a later element, or a pattern-wide `within` clause",
                    );
                    None
                } else if self.pattern_window.is_some_and(|w| ms > w) {
                    self.err_hint(
                        span,
                        "bad-window",
                        "this element's `within` is longer than the pattern's `within`",
                        "the whole match must fit in the pattern window anyway: shorten this one or drop it",
                    );
                    None
                } else {
                    self.duration(ms, span)
                }
            }
            None => None,
        };
        let looping = in_loop || times.is_some();
        let kind = match &el.kind {
            ElementKind::Var { name, ty } => {
                let ty_id = ty.as_ref().and_then(|t| self.record_type(t));
                let id = self.declare(name, ty_id, looping, negated)?;
                self.vars[id.index()].bad_type = ty.is_some() && ty_id.is_none();
                RKind::Var(id)
            }
            ElementKind::Group(s) => {
                if negated {
                    self.err_hint(
                        el.span,
                        "negated-group",
                        "a group cannot be negated",
                        "negate a single variable: `not followed by x`",
                    );
                }
                let inner_seq = self.sequence(s, true, looping);
                if let Some((c, span, _)) = s.rest.last() {
                    if c.is_negation() {
                        self.err_hint(
                            *span,
                            "negation-at-group-end",
                            format!("a group cannot end with `{}`", c.text()),
                            "move the negation after the group: `(a next b) not followed by c followed by d`",
                        );
                    }
                }
                RKind::Group(inner_seq)
            }
        };
        Some(RElement { kind, contiguity, times, optional, greedy, inner, window_ms })
    }

    fn record_type(&mut self, t: &Ident) -> Option<TypeId> {
        let st = self.stream.clone()?;
        match st.record_type(&t.name) {
            Some(id) => Some(id),
            None => {
                let names: Vec<&str> = st.types.iter().map(|t| t.name.as_str()).collect();
                let hint = did_you_mean(&t.name, names.iter().copied())
                    .unwrap_or_else(|| format!("stream `{}` has: {}", st.name, names.join(", ")));
                self.err_hint(
                    t.span,
                    "unknown-type",
                    format!("stream `{}` has no record type `{}`", st.name, t.name),
                    hint,
                );
                None
            }
        }
    }

    fn declare(&mut self, name: &Ident, ty: Option<TypeId>, looping: bool, negated: bool) -> Option<VarId> {
        if let Some(prev) = self.by_name.get(&name.name) {
            let (line, col) = self.src.line_col(self.vars[prev.index()].span.start);
            self.err_hint(
                name.span,
                "duplicate-variable",
                format!("variable `{}` appears twice in the sequence", name.name),
                format!("it is first used at line {line}, column {col}; give each element its own name"),
            );
            return None;
        }
        if let Some(st) = &self.stream {
            if st.field(&name.name).is_some() {
                let hint = format!("rename the variable, e.g. `{}_event`", name.name);
                let msg = format!("variable `{}` has the same name as a field of stream `{}`", name.name, st.name);
                self.err_hint(name.span, "variable-shadows-field", msg, hint);
            }
        }
        let id = VarId(self.vars.len() as u16);
        self.vars.push(VarDef {
            name: name.name.clone(),
            span: name.span,
            ty,
            bad_type: false,
            looping,
            negated,
            cond: None,
            until: None,
        });
        self.by_name.insert(name.name.clone(), id);
        Some(id)
    }

    fn check_sequence_ends(&mut self, seq: &[RElement], s: &ast::Sequence, has_within: bool) {
        if let (Some(last), Some((c, span, el))) = (seq.last(), s.rest.last()) {
            if *c == Contiguity::NotFollowedBy && !has_within && last.window_ms.is_none() && el.window.is_none() {
                self.err_hint(*span, "not-followed-by-at-end", "`not followed by` at the end of a pattern needs a `within` window",
                    "add `within 10m` (or another duration): the match is released when the window has passed without the event");
            }
        }
    }

    fn unknown_field(&self, span: Span, name: &str, st: &StreamSchema, ty: Option<TypeId>) -> Diagnostic {
        let mut known: Vec<&str> = st.fields.iter().map(|f| f.path.as_str()).collect();
        let vars: Vec<&str> = self.vars.iter().map(|v| v.name.as_str()).collect();
        known.extend(vars);
        let hint = did_you_mean(name, known);
        let whose = match ty {
            Some(t) => format!("record type `{}` of stream `{}`", st.types[t.index()].name, st.name),
            None => format!("stream `{}`", st.name),
        };
        self.src.diag(span, "unknown-field", format!("unknown field `{name}` in {whose}")).with_hint_opt(hint)
    }

    /// Resolves a field path read from events of `ty` (or any record type of the stream).
    /// `who` is the variable whose events are read, for hints.
    fn field(
        &mut self,
        span: Span,
        path: &str,
        ty: Option<TypeId>,
        who: &str,
    ) -> Option<(FieldId, Ty, Option<Vec<String>>)> {
        let st = self.stream.clone()?;
        let Some(id) = st.field(path) else {
            let d = self.unknown_field(span, path, &st, ty);
            self.push(d);
            return None;
        };
        let f = &st.fields[id.index()];
        match ty {
            Some(t) if !f.in_types[t.index()] => {
                let has: Vec<&str> =
                    st.types.iter().zip(&f.in_types).filter(|(_, b)| **b).map(|(t, _)| t.name.as_str()).collect();
                self.err_hint(
                    span,
                    "unknown-field",
                    format!("record type `{}` has no field `{path}`", st.types[t.index()].name),
                    format!("`{path}` is a field of {}", has.join(", ")),
                );
                return None;
            }
            None if !f.in_types.iter().all(|b| *b) => {
                let has: Vec<&str> =
                    st.types.iter().zip(&f.in_types).filter(|(_, b)| **b).map(|(t, _)| t.name.as_str()).collect();
                self.err_hint(
                    span,
                    "field-not-in-all-types",
                    format!("field `{path}` is only in {} of stream `{}`", record_types(&has), st.name),
                    format!("restrict the variable to that type in `match`: `{who}: {}`", has[0]),
                );
                return None;
            }
            _ => {}
        }
        if f.conflict && ty.is_none() {
            self.err_hint(
                span,
                "type-mismatch",
                format!("field `{path}` has different types in the record types of stream `{}`", st.name),
                format!("restrict the variable to one record type in `match`, e.g. `{who}: {}`", st.types[0].name),
            );
            return None;
        }
        match Ty::from_field(f.ty) {
            Some(t) => Some((id, t, f.symbols.clone())),
            None => {
                self.err(span, "unsupported-field", format!("field `{path}` is {} in the schema; patterns can read booleans, numbers, text, enums and timestamps", f.avro));
                None
            }
        }
    }

    /// A field of `ty` (or of the stream) to show in hints, preferring a number.
    fn example_field(&self, ty: Option<TypeId>) -> String {
        let Some(st) = &self.stream else { return "field".to_owned() };
        let readable: Vec<_> = st
            .fields
            .iter()
            .filter(|f| ty.is_none_or(|t| f.in_types[t.index()]) && f.ty != FieldType::Unsupported)
            .collect();
        let numeric = readable.iter().find(|f| matches!(f.ty, FieldType::Float | FieldType::Int));
        numeric.or(readable.first()).map_or_else(|| "field".to_owned(), |f| f.path.clone())
    }

    /// Reports (and says) whether a condition reads `v`, which comes after the condition's owner.
    fn reads_later(&mut self, scope: Scope, v: VarId, name: &Ident) -> bool {
        let Scope::Condition { owner } = scope else { return false };
        if v <= owner {
            return false;
        }
        let o = self.vars[owner.index()].name.clone();
        self.err_hint(
            name.span,
            "read-later-variable",
            format!("`{}` comes after `{o}` in the sequence, so it has no event yet", name.name),
            format!("a condition can read variables matched before `{o}`"),
        );
        true
    }

    fn expect_bool(&mut self, t: Typed, span: Span, what: &str) -> Option<Expr> {
        if t.ty == Ty::Bool {
            Some(t.expr)
        } else {
            self.err_hint(
                span,
                "type-mismatch",
                format!("{what} must be true or false, but this is {}", t.ty.describe()),
                "compare it with something, e.g. `amount > 100`",
            );
            None
        }
    }

    fn path(&mut self, e: &ast::Expr, segs: &[Ident], scope: Scope) -> Option<Typed> {
        let first = &segs[0];
        // A variable named like a field (reported where it is declared) reads as the field.
        let shadowed = segs.len() == 1 && self.stream.as_ref().is_some_and(|st| st.field(&first.name).is_some());
        if let (Some(&v), false) = (self.by_name.get(&first.name), shadowed) {
            let var = self.vars[v.index()].clone();
            if segs.len() == 1 {
                let example = self.example_field(var.ty);
                let hint = if var.looping {
                    format!(
                        "read its events through an aggregate, e.g. `last({0}.{example})`, or count them: `count({0})`",
                        first.name
                    )
                } else {
                    format!("read one of its fields, e.g. `{}.{example}`", first.name)
                };
                self.err_hint(
                    e.span,
                    "variable-as-value",
                    format!("`{}` is a variable, not a value", first.name),
                    hint,
                );
                return None;
            }
            let field_path = segs[1..].iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
            let fspan = segs[1].span.to(segs[segs.len() - 1].span);
            let own = matches!(scope, Scope::Condition { owner } if owner == v);
            if !own {
                if var.negated {
                    self.err_hint(
                        first.span,
                        "read-negated",
                        format!("`{}` is a negated element: it never has an event to read", first.name),
                        "a negated element only says what must not happen; read the elements that matched",
                    );
                    return None;
                }
                if self.reads_later(scope, v, first) {
                    return None;
                }
                if var.looping {
                    let numeric = self
                        .stream
                        .as_ref()
                        .and_then(|st| st.field(&field_path).map(|f| st.fields[f.index()].ty))
                        .is_some_and(|t| matches!(t, FieldType::Int | FieldType::Float));
                    let more = if numeric { format!(", `sum({}.{field_path})`", first.name) } else { String::new() };
                    self.err_hint(
                        first.span,
                        "field-of-loop",
                        format!("`{}` takes several events; say which with an aggregate", first.name),
                        format!("e.g. `last({0}.{field_path})`, `first({0}.{field_path})`{more}", first.name),
                    );
                    return None;
                }
            }
            let (fid, ty, symbols) = self.field(fspan, &field_path, var.ty, &var.name)?;
            let expr = if own { Expr::Field(fid) } else { Expr::VarField(v, fid) };
            return Some(Typed { ty, expr, symbols });
        }
        let path = segs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
        match scope {
            Scope::Condition { owner } => {
                let ty = self.vars[owner.index()].ty;
                let who = self.vars[owner.index()].name.clone();
                let (fid, t, symbols) = self.field(e.span, &path, ty, &who)?;

                Some(Typed { ty: t, expr: Expr::Field(fid), symbols })
            }
            Scope::Output => {
                let st = self.stream.clone()?;
                let key = self.key?;
                if st.field(&path) == Some(key) {
                    // Every event of a match has the same key: read it from the first variable
                    // that took an event (an optional one may have taken none).
                    let t = Ty::from_field(st.fields[key.index()].ty)?;
                    let reads: Vec<Expr> = self
                        .vars
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| !v.negated)
                        .map(|(i, v)| {
                            let var = VarId(i as u16);
                            if v.looping {
                                Expr::Agg(AggFunc::First, var, Some(key))
                            } else {
                                Expr::VarField(var, key)
                            }
                        })
                        .collect();
                    let expr = if reads.len() == 1 {
                        reads.into_iter().next()?
                    } else {
                        Expr::Call(Func::Coalesce, reads.into())
                    };
                    return Some(Typed::new(t, expr));
                }
                if st.field(&path).is_some() {
                    let example =
                        self.vars.iter().find(|v| !v.negated && !v.looping).map_or("x", |v| v.name.as_str()).to_owned();
                    self.err_hint(
                        e.span,
                        "ambiguous-field",
                        format!("`{path}` is ambiguous here: say which event it comes from"),
                        format!(
                            "e.g. `{example}.{path}`; only the key field can be named alone in `emit` and `message`"
                        ),
                    );
                    return None;
                }
                let d = self.unknown_field(e.span, &path, &st, None);
                self.push(d);
                None
            }
        }
    }

    fn aggregate(
        &mut self,
        e: &ast::Expr,
        name: &Ident,
        distinct: bool,
        args: &[ast::Expr],
        scope: Scope,
    ) -> Option<Typed> {
        let func = match name.name.as_str() {
            "count" if distinct => AggFunc::CountDistinct,
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            "first" => AggFunc::First,
            _ => AggFunc::Last,
        };
        if distinct && func != AggFunc::CountDistinct {
            self.err_hint(
                name.span,
                "bad-aggregate",
                "`distinct` is only allowed in `count(distinct ...)`",
                format!("drop `distinct`: `{}(...)`, or count distinct values with `count(distinct ...)`", name.name),
            );
            return None;
        }
        if args.len() != 1 {
            let example = if func == AggFunc::Count { "count(burst)" } else { "sum(burst.amount)" };
            self.err_hint(
                e.span,
                "bad-aggregate",
                format!("`{}` takes one argument", name.name),
                format!("e.g. `{example}`"),
            );
            return None;
        }
        let ExprKind::Path(segs) = &args[0].kind else {
            self.err_hint(
                args[0].span,
                "bad-aggregate",
                format!("`{}` aggregates over a variable's events", name.name),
                format!("e.g. `{}(burst.amount)`", name.name),
            );
            return None;
        };
        let Some(&v) = self.by_name.get(&segs[0].name) else {
            let names = self.var_names(false);
            let hint = did_you_mean(&segs[0].name, names.iter().map(String::as_str))
                .unwrap_or_else(|| format!("the variables are: {}", names.join(", ")));
            self.err_hint(
                segs[0].span,
                "unknown-variable",
                format!("`{}` is not a variable of the pattern", segs[0].name),
                hint,
            );
            return None;
        };
        let var = self.vars[v.index()].clone();
        if var.negated {
            self.err(
                segs[0].span,
                "read-negated",
                format!("`{}` is a negated element: it never has events to aggregate", var.name),
            );
            return None;
        }
        if !var.looping {
            self.err_hint(
                segs[0].span,
                "aggregate-non-loop",
                format!("`{}` over `{}`, which takes a single event", name.name, var.name),
                if segs.len() > 1 {
                    format!(
                        "read it directly: `{}`",
                        segs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(".")
                    )
                } else {
                    format!("aggregates need a loop such as `{}+` or `{}{{2,}}`", var.name, var.name)
                },
            );
            return None;
        }
        if self.reads_later(scope, v, &segs[0]) {
            return None;
        }
        if segs.len() == 1 {
            if func == AggFunc::Count {
                return Some(Typed::new(Ty::Int, Expr::Agg(AggFunc::Count, v, None)));
            }
            self.err_hint(
                args[0].span,
                "bad-aggregate",
                format!("`{}` needs a field", name.name),
                format!("e.g. `{}({}.amount)`", name.name, var.name),
            );
            return None;
        }
        if func == AggFunc::Count {
            self.err_hint(
                args[0].span,
                "bad-aggregate",
                "`count` counts events: give it the variable alone",
                format!(
                    "`count({})`, or `count(distinct {})` for distinct values",
                    var.name,
                    segs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(".")
                ),
            );
            return None;
        }
        let field_path = segs[1..].iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
        let fspan = segs[1].span.to(segs[segs.len() - 1].span);
        let (fid, ty, symbols) = self.field(fspan, &field_path, var.ty, &var.name)?;
        let out = match func {
            AggFunc::CountDistinct => Ty::Int,
            AggFunc::Sum if ty.numeric() => ty,
            AggFunc::Avg if ty.numeric() => Ty::Float,
            AggFunc::Sum | AggFunc::Avg => {
                self.err(
                    fspan,
                    "type-mismatch",
                    format!("`{}` needs numbers, but `{field_path}` is {}", name.name, ty.describe()),
                );
                return None;
            }
            AggFunc::Min | AggFunc::Max if ty == Ty::Bool => {
                self.err(
                    fspan,
                    "type-mismatch",
                    format!("`{}` needs numbers, text or timestamps, but `{field_path}` is a boolean", name.name),
                );
                return None;
            }
            _ => ty,
        };
        Some(Typed {
            ty: out,
            expr: Expr::Agg(func, v, Some(fid)),
            symbols: if matches!(func, AggFunc::First | AggFunc::Last | AggFunc::Min | AggFunc::Max) {
                symbols
            } else {
                None
            },
        })
    }

    fn call(&mut self, e: &ast::Expr, name: &Ident, distinct: bool, args: &[ast::Expr], scope: Scope) -> Option<Typed> {
        if AGGREGATES.contains(&name.name.as_str()) {
            return self.aggregate(e, name, distinct, args, scope);
        }
        let Some(func) = Func::ALL.into_iter().find(|f| f.name() == name.name) else {
            let known = Func::ALL.iter().map(|f| f.name()).chain(AGGREGATES);
            let hint = did_you_mean(&name.name, known)
                .unwrap_or_else(|| "see docs/language.md for the list of functions".to_owned());
            self.err_hint(name.span, "unknown-function", format!("unknown function `{}`", name.name), hint);
            return None;
        };
        if distinct {
            self.err_hint(
                name.span,
                "bad-aggregate",
                "`distinct` is only allowed in `count(distinct ...)`",
                format!("`{}` is not an aggregate: drop `distinct`", name.name),
            );
            return None;
        }
        let typed: Vec<Option<Typed>> = args.iter().map(|a| self.expr(a, scope)).collect();
        if typed.iter().any(Option::is_none) {
            return None;
        }
        let typed: Vec<Typed> = typed.into_iter().flatten().collect();
        let (arity, sig): (Option<usize>, &str) = match func {
            Func::Abs | Func::Round | Func::Floor | Func::Ceil => (Some(1), "a number"),
            Func::Lower | Func::Upper | Func::Length => (Some(1), "text"),
            Func::GeoKm => (Some(4), "latitude, longitude, latitude, longitude (degrees)"),
            Func::HourOfDay => (Some(1), "a timestamp"),
            Func::Coalesce => (None, "two or more values of one type"),
        };
        let ok_arity = match arity {
            Some(n) => typed.len() == n,
            None => typed.len() >= 2,
        };
        if !ok_arity {
            self.err_hint(
                e.span,
                "bad-arguments",
                match arity {
                    Some(1) => format!("`{}` takes 1 argument ({sig}), but was given {}", name.name, typed.len()),
                    Some(n) => format!("`{}` takes {n} arguments ({sig}), but was given {}", name.name, typed.len()),
                    None => format!("`{}` takes {sig}, but was given {}", name.name, typed.len()),
                },
                if func == Func::Round {
                    "`round` has no precision argument: to round to cents write `round(amount * 100) / 100`".to_owned()
                } else {
                    format!("e.g. {}", example_call(func))
                },
            );
            return None;
        }
        let bad = |t: &Typed| match func {
            Func::Abs | Func::Round | Func::Floor | Func::Ceil | Func::GeoKm => !t.ty.numeric() && t.ty != Ty::Null,
            Func::Lower | Func::Upper | Func::Length => t.ty != Ty::Str && t.ty != Ty::Null,
            Func::HourOfDay => t.ty != Ty::Timestamp,
            Func::Coalesce => false,
        };
        if let Some((i, t)) = typed.iter().enumerate().find(|(_, t)| bad(t)) {
            self.err_hint(
                args[i].span,
                "type-mismatch",
                format!("`{}` takes {sig}, but this is {}", name.name, t.ty.describe()),
                format!("e.g. {}", example_call(func)),
            );
            return None;
        }
        let ty = match func {
            Func::Abs => typed[0].ty,
            Func::Round | Func::Floor | Func::Ceil | Func::Length | Func::HourOfDay => Ty::Int,
            Func::Lower | Func::Upper => Ty::Str,
            Func::GeoKm => Ty::Float,
            Func::Coalesce => {
                let mut ty = Ty::Null;
                for (i, t) in typed.iter().enumerate() {
                    if t.ty == Ty::Null {
                        continue;
                    }
                    if ty == Ty::Null {
                        ty = t.ty;
                    } else if !Ty::comparable(ty, t.ty) {
                        self.err(
                            args[i].span,
                            "type-mismatch",
                            format!("`coalesce` mixes {} and {}", ty.describe(), t.ty.describe()),
                        );
                        return None;
                    } else if ty != t.ty {
                        ty = Ty::Float;
                    }
                }
                ty
            }
        };
        Some(Typed::new(ty, Expr::Call(func, typed.into_iter().map(|t| t.expr).collect())))
    }

    fn check_symbol(&mut self, field: &Typed, lit: &ast::Expr) {
        if let (Some(symbols), ExprKind::Str(s)) = (&field.symbols, &lit.kind) {
            if !symbols.contains(s) {
                let hint = did_you_mean(s, symbols.iter().map(String::as_str))
                    .unwrap_or_else(|| format!("it is one of: {}", symbols.join(", ")));
                self.err_hint(lit.span, "unknown-symbol", format!("\"{s}\" is not a value of this enum field"), hint);
            }
        }
    }

    fn expr(&mut self, e: &ast::Expr, scope: Scope) -> Option<Typed> {
        match &e.kind {
            ExprKind::Int(i) => Some(Typed::new(Ty::Int, Expr::Lit(Value::Int(*i)))),
            ExprKind::Float(f) => {
                if !f.is_finite() {
                    self.err(e.span, "bad-number", "this number is too large");
                    return None;
                }
                Some(Typed::new(Ty::Float, Expr::Lit(Value::Float(*f))))
            }
            ExprKind::Str(s) => Some(Typed::new(Ty::Str, Expr::Lit(Value::str(s)))),
            ExprKind::Bool(b) => Some(Typed::new(Ty::Bool, Expr::Lit(Value::Bool(*b)))),
            ExprKind::Null => Some(Typed::new(Ty::Null, Expr::Lit(Value::Null))),
            ExprKind::Duration(ms) => {
                if *ms < 0 {
                    self.err(e.span, "bad-duration", "this duration is too large");
                    return None;
                }
                Some(Typed::new(Ty::Duration, Expr::Lit(Value::Int(*ms))))
            }
            ExprKind::Path(segs) => self.path(e, segs, scope),
            ExprKind::Call { name, distinct, args } => self.call(e, name, *distinct, args, scope),
            ExprKind::Unary(op, x) => {
                let t = self.expr(x, scope)?;
                match op {
                    UnOp::Not => {
                        let inner = self.expect_bool(t, x.span, "the operand of `not`")?;
                        Some(Typed::new(Ty::Bool, Expr::Unary(UnOp::Not, Box::new(inner))))
                    }
                    UnOp::Neg => {
                        if !(t.ty.numeric() || t.ty == Ty::Duration) {
                            self.err(x.span, "type-mismatch", format!("cannot negate {}", t.ty.describe()));
                            return None;
                        }
                        Some(Typed::new(t.ty, Expr::Unary(UnOp::Neg, Box::new(t.expr))))
                    }
                }
            }
            ExprKind::Binary(op, a, b) => {
                let ta = self.expr(a, scope);
                let tb = self.expr(b, scope);
                let (ta, tb) = (ta?, tb?);
                self.binary(e, *op, a, b, ta, tb)
            }
            ExprKind::IsNull { expr, negated } => {
                let t = self.expr(expr, scope)?;
                Some(Typed::new(Ty::Bool, Expr::IsNull { expr: Box::new(t.expr), negated: *negated }))
            }
            ExprKind::In { expr, list, negated } => {
                let t = self.expr(expr, scope)?;
                let mut values = Vec::new();
                for item in list {
                    let it = self.expr(item, scope)?;
                    if it.ty == Ty::Null {
                        self.err_hint(
                            item.span,
                            "null-in-list",
                            "`null` in a list never matches",
                            "test for null with `is null`",
                        );
                        return None;
                    }
                    if !Ty::comparable(t.ty, it.ty) {
                        self.err(
                            item.span,
                            "type-mismatch",
                            format!(
                                "this list item is {}, but the value tested is {}",
                                it.ty.describe(),
                                t.ty.describe()
                            ),
                        );
                        return None;
                    }
                    self.check_symbol(&t, item);
                    if let Expr::Lit(v) = it.expr {
                        values.push(v);
                    }
                }
                Some(Typed::new(Ty::Bool, Expr::In { expr: Box::new(t.expr), list: values.into(), negated: *negated }))
            }
            ExprKind::Like { expr, pattern, pattern_span, regex, negated } => {
                let t = self.expr(expr, scope)?;
                let op = if *regex { "matches" } else { "like" };
                if t.ty != Ty::Str {
                    self.err(expr.span, "type-mismatch", format!("`{op}` needs text, but this is {}", t.ty.describe()));
                    return None;
                }
                let compiled = if *regex {
                    engine::expr::TextPattern::regex(pattern)
                } else {
                    engine::expr::TextPattern::like(pattern)
                };
                match compiled {
                    Ok(p) => {
                        Some(Typed::new(Ty::Bool, Expr::Like { expr: Box::new(t.expr), pattern: p, negated: *negated }))
                    }
                    Err(err) => {
                        let first = err
                            .to_string()
                            .lines()
                            .last()
                            .unwrap_or("invalid")
                            .trim()
                            .trim_start_matches("error: ")
                            .to_owned();
                        self.err_hint(
                            *pattern_span,
                            "bad-regex",
                            format!("invalid regular expression: {first}"),
                            "see the `regex` crate syntax; escape special characters with `\\\\`",
                        );
                        None
                    }
                }
            }
            ExprKind::If(c, t, f) => {
                let tc = self.expr(c, scope);
                let tt = self.expr(t, scope);
                let tf = self.expr(f, scope);
                let (tc, tt, tf) = (tc?, tt?, tf?);
                let cond = self.expect_bool(tc, c.span, "the condition of `if`")?;
                let ty = if tt.ty == Ty::Null {
                    tf.ty
                } else if tf.ty == Ty::Null || tt.ty == tf.ty {
                    tt.ty
                } else if tt.ty.numeric() && tf.ty.numeric() {
                    Ty::Float
                } else {
                    self.err_hint(
                        f.span,
                        "type-mismatch",
                        format!(
                            "the `then` branch is {} but the `else` branch is {}",
                            tt.ty.describe(),
                            tf.ty.describe()
                        ),
                        "both branches must give the same kind of value (use `null` for \"nothing\")",
                    );
                    return None;
                };
                Some(Typed::new(ty, Expr::If(Box::new(cond), Box::new(tt.expr), Box::new(tf.expr))))
            }
        }
    }

    fn binary(
        &mut self,
        e: &ast::Expr,
        op: BinOp,
        a: &ast::Expr,
        b: &ast::Expr,
        ta: Typed,
        tb: Typed,
    ) -> Option<Typed> {
        use Ty::*;
        let mk =
            |ty: Ty, ta: Typed, tb: Typed| Some(Typed::new(ty, Expr::Binary(op, Box::new(ta.expr), Box::new(tb.expr))));
        let text = |x: &ast::Expr| self.src.text.get(x.span.start..x.span.end).unwrap_or("").to_owned();
        let (a_text, b_text) = (text(a), text(b));
        // `9000 < amount < 10000` parses as `(9000 < amount) < 10000`.
        let chained = match &a.kind {
            ExprKind::Binary(inner, _, mid) if is_comparison(*inner) && is_comparison(op) => {
                Some(format!("write `{a_text} and {} {} {b_text}`", text(mid), op.symbol()))
            }
            _ => None,
        };
        let hint = chained.unwrap_or_else(|| hint_for(op, (ta.ty, &a_text), (tb.ty, &b_text)));
        let mismatch = |this: &mut Self, what: String| {
            this.err_hint(e.span, "type-mismatch", what, hint);
            None
        };
        match op {
            BinOp::And | BinOp::Or => {
                let ea = self.expect_bool(ta, a.span, &format!("each side of `{}`", op.symbol()));
                let eb = self.expect_bool(tb, b.span, &format!("each side of `{}`", op.symbol()));
                Some(Typed::new(Bool, Expr::Binary(op, Box::new(ea?), Box::new(eb?))))
            }
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                if ta.ty == Null || tb.ty == Null {
                    let neg = if op == BinOp::Ne { "not " } else { "" };
                    let operand = if ta.ty == Null { &b_text } else { &a_text };
                    self.err_hint(
                        e.span,
                        "compare-null",
                        format!("`{}` with null is never true", op.symbol()),
                        format!("write `{operand} is {neg}null`"),
                    );
                    return None;
                }
                if !Ty::comparable(ta.ty, tb.ty) {
                    return mismatch(self, format!("cannot compare {} with {}", ta.ty.describe(), tb.ty.describe()));
                }
                if ta.ty == Bool && !matches!(op, BinOp::Eq | BinOp::Ne) {
                    return mismatch(self, "booleans can only be compared with `==` and `!=`".into());
                }
                self.check_symbol(&ta, b);
                self.check_symbol(&tb, a);
                mk(Bool, ta, tb)
            }
            BinOp::Contains | BinOp::StartsWith | BinOp::EndsWith => {
                if ta.ty != Str || tb.ty != Str {
                    return mismatch(
                        self,
                        format!(
                            "`{}` needs text on both sides, but has {} and {}",
                            op.symbol(),
                            ta.ty.describe(),
                            tb.ty.describe()
                        ),
                    );
                }
                mk(Bool, ta, tb)
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                let ty = match (op, ta.ty, tb.ty) {
                    (BinOp::Div, x, y) if x.numeric() && y.numeric() => Some(Float),
                    (_, Int, Int) => Some(Int),
                    (_, x, y) if x.numeric() && y.numeric() => Some(Float),
                    (BinOp::Add, Timestamp, Duration) | (BinOp::Add, Duration, Timestamp) => Some(Timestamp),
                    (BinOp::Sub, Timestamp, Duration) => Some(Timestamp),
                    (BinOp::Sub, Timestamp, Timestamp) => Some(Duration),
                    (BinOp::Add | BinOp::Sub, Duration, Duration) => Some(Duration),
                    (BinOp::Mul, Duration, x) | (BinOp::Mul, x, Duration) if x.numeric() => Some(Duration),
                    (BinOp::Div, Duration, Duration) => Some(Float),
                    (BinOp::Div, Duration, x) if x.numeric() => Some(Duration),
                    _ => None,
                };
                match ty {
                    Some(t) => mk(t, ta, tb),
                    None => mismatch(
                        self,
                        format!("cannot apply `{}` to {} and {}", op.symbol(), ta.ty.describe(), tb.ty.describe()),
                    ),
                }
            }
        }
    }
}

/// "record type `A`" / "record types `A` and `B`".
fn record_types(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        1 => format!("record type {}", quoted[0]),
        n => format!("record types {} and {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

fn example_call(f: Func) -> &'static str {
    match f {
        Func::Abs => "`abs(last.price - first.price)`",
        Func::Lower => "`lower(country)`",
        Func::Upper => "`upper(country)`",
        Func::Length => "`length(reference)`",
        Func::Coalesce => "`coalesce(reference, \"\")`",
        Func::Round => "`round(amount)`",
        Func::Floor => "`floor(amount)`",
        Func::Ceil => "`ceil(amount)`",
        Func::GeoKm => "`geo_km(a.latitude, a.longitude, b.latitude, b.longitude)`",
        Func::HourOfDay => "`hour_of_day(event_time)`",
    }
}

fn is_comparison(op: BinOp) -> bool {
    matches!(op, BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge)
}

/// A hint for an operator applied to values of the wrong kinds (each side's type and text).
fn hint_for(op: BinOp, (a, a_text): (Ty, &str), (b, b_text): (Ty, &str)) -> String {
    let arithmetic = matches!(op, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem);
    let text_op = matches!(op, BinOp::Contains | BinOp::StartsWith | BinOp::EndsWith);
    // The side that is not what the operator wants, for messages about one operand.
    let odd = |want: fn(Ty) -> bool| if !want(a) { (a, a_text) } else { (b, b_text) };
    match (a, b) {
        _ if text_op => {
            let (t, s) = odd(|t| t == Ty::Str);
            format!("`{s}` is {}; `{}` works on text", t.describe(), op.symbol())
        }
        _ if arithmetic && (a == Ty::Str || b == Ty::Str || a == Ty::Bool || b == Ty::Bool) => {
            let (t, s) = odd(|t| t != Ty::Str && t != Ty::Bool);
            format!("`{}` needs numbers (or durations and timestamps); `{s}` is {}", op.symbol(), t.describe())
        }
        (Ty::Str, x) | (x, Ty::Str) if x.numeric() => {
            "text and numbers do not mix: quote the number (\"42\") or compare with a numeric field".into()
        }
        (Ty::Duration, x) | (x, Ty::Duration) if x.numeric() => {
            "write the duration with a unit, e.g. `1h`, `30s` or `500ms`".into()
        }
        (Ty::Timestamp, x) | (x, Ty::Timestamp) if x.numeric() => {
            "timestamps compare with timestamps, and differ by durations (`event_time - prev.event_time > 10m`); there are no date literals".into()
        }
        (Ty::Bool, Ty::Bool) => format!("booleans compare with `==` and `!=`, e.g. `{a_text} == true`"),
        _ if arithmetic => "arithmetic works on numbers, durations and timestamps".into(),
        _ => "both sides must have the same kind of value".into(),
    }
}
