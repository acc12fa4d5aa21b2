//! Checks a parsed pattern against the stream catalog and resolves it: names to ids, fields to
//! indices, expressions to typed [`engine::Expr`]. Every problem becomes a [`Diagnostic`]; checking
//! goes on after an error so that one run reports all of them.

mod calls;
mod clauses;
mod expr;
mod fields;
mod sequence;

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::{CondId, Expr, FieldId, Mode, OutputField, Severity, SkipStrategy, TypeId, VarId};

use self::clauses::{clause_map, missing_types};
use self::expr::Scope;
use crate::ast::{self, ClauseKind, Contiguity, Span};
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
}
