//! Checks a parsed pattern against the stream catalog and resolves it: names to ids, fields to
//! indices, expressions to typed [`engine::Expr`]. Every problem becomes a [`Diagnostic`]; checking
//! goes on after an error so that one run reports all of them.
//!
//! `check_pattern` lists the steps in order; each lives in a submodule by concern: the clauses,
//! the `match` sequence, the `where` conditions, names and fields, calls, reference tables,
//! expressions, output.

mod calls;
mod clauses;
mod conditions;
mod expr;
mod fields;
mod output;
mod sequence;
mod tables;

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::{CondId, Expr, FieldId, Mode, OutputField, Severity, SkipStrategy, TypeId, VarId};

use crate::ast::{self, Contiguity, Span};
use crate::diag::{Diagnostic, SourceFile};
use crate::schema::{Catalog, StreamSchema, TableDecl};

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
    /// The reference tables the pattern reads, by `engine::TableId` (in order of first use).
    pub tables: Vec<String>,
}

/// The state of checking one pattern: what is resolved so far, and where diagnostics go.
struct Checker<'a> {
    src: &'a SourceFile,
    diags: &'a mut Vec<Diagnostic>,
    stream: Option<Arc<StreamSchema>>,
    key: Option<FieldId>,
    vars: Vec<VarDef>,
    by_name: BTreeMap<String, VarId>,
    conditions: Vec<Expr>,
    /// The pattern's `within`, which an element's own window must not exceed.
    pattern_window: Option<i64>,
    /// The reference tables declared in the catalog.
    tables: &'a BTreeMap<String, TableDecl>,
    /// The tables the pattern reads so far, by `TableId`.
    tables_used: Vec<String>,
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

/// Checks one pattern, clause by clause; the steps run in this order, which is the order of their
/// diagnostics. `None` when there is no stream, key or sequence to compile.
fn check_pattern(
    src: &SourceFile,
    p: &ast::Pattern,
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> Option<CheckedPattern> {
    let mut ck = Checker::new(src, diags, &catalog.tables);
    let clauses = ck.clause_map(p);
    ck.require_clauses(p, &clauses);
    ck.stream_clause(&clauses, catalog);
    ck.key_clause(&clauses);
    ck.within_clause(&clauses);
    let seq = ck.match_clause(&clauses);
    ck.where_clause(&clauses, &seq);
    let skip = ck.skip_clause(&clauses);
    let version = ck.version_clause(&clauses);
    let severity = ck.severity_clause(&clauses);
    let mode = ck.mode_clause(&clauses);
    let outputs = ck.emit_clause(&clauses);
    let description = p.description.as_ref().map(|d| d.0.clone()).unwrap_or_default();
    let message = ck.message_clause(&clauses, &p.name.name, &description);

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
        window_ms: ck.pattern_window,
        skip,
        outputs,
        message,
        tables: ck.tables_used,
    })
}

impl<'a> Checker<'a> {
    fn new(src: &'a SourceFile, diags: &'a mut Vec<Diagnostic>, tables: &'a BTreeMap<String, TableDecl>) -> Self {
        Checker {
            src,
            diags,
            stream: None,
            key: None,
            vars: Vec::new(),
            by_name: BTreeMap::new(),
            conditions: Vec::new(),
            pattern_window: None,
            tables,
            tables_used: Vec::new(),
        }
    }

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
