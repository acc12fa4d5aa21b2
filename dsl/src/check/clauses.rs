//! The pattern's clauses: each given once, the required ones present, and the `from`, `key`,
//! `within`, `skip`, `version`, `severity` and `mode` clauses.

use std::collections::BTreeMap;

use engine::{FieldId, Mode, Severity, SkipStrategy};

use super::Checker;
use crate::ast::{self, ClauseKind, Ident, Span};
use crate::diag::did_you_mean;
use crate::schema::{Catalog, FieldType, StreamSchema};

/// The clauses of a pattern by keyword (the first of each, if one is given twice).
pub(super) type Clauses<'p> = BTreeMap<&'static str, &'p ast::Clause>;

impl Checker<'_> {
    /// The clauses of `p` by keyword; reports each clause given twice.
    pub(super) fn clause_map<'p>(&mut self, p: &'p ast::Pattern) -> Clauses<'p> {
        let mut m: Clauses<'p> = BTreeMap::new();
        for c in &p.clauses {
            let kw = c.kind.keyword();
            if let Some(first) = m.get(kw) {
                let (line, _) = self.src.line_col(first.keyword.start);
                self.err_hint(
                    c.keyword,
                    "duplicate-clause",
                    format!("`{kw}` is given twice in pattern `{}`", p.name.name),
                    format!("the first `{kw}` is at line {line}; keep one"),
                );
            } else {
                m.insert(kw, c);
            }
        }
        m
    }

    /// Reports each of `from`, `key` and `match` that the pattern lacks.
    pub(super) fn require_clauses(&mut self, p: &ast::Pattern, clauses: &Clauses<'_>) {
        let header = Span::new(p.span.start, p.name.span.end);
        for (kw, example) in [("from", "from payments"), ("key", "key account_id"), ("match", "match a followed by b")]
        {
            if !clauses.contains_key(kw) {
                self.err_hint(
                    header,
                    "missing-clause",
                    format!("pattern `{}` has no `{kw}` clause", p.name.name),
                    format!("add one, e.g. `{example}`"),
                );
            }
        }
    }

    /// `from`: the stream whose events the pattern reads.
    pub(super) fn stream_clause(&mut self, clauses: &Clauses<'_>, catalog: &Catalog) {
        let Some(ast::Clause { kind: ClauseKind::From(s), .. }) = clauses.get("from") else { return };
        match catalog.streams.get(&s.name) {
            Some(st) => self.stream = Some(st.clone()),
            None => {
                let known: Vec<&str> = catalog.streams.keys().map(String::as_str).collect();
                let hint = did_you_mean(&s.name, known.iter().copied()).unwrap_or_else(|| {
                    if known.is_empty() {
                        "no streams are configured: declare them under [streams] in the config".to_owned()
                    } else {
                        format!("configured streams: {}", known.join(", "))
                    }
                });
                self.err_hint(s.span, "unknown-stream", format!("unknown stream `{}`", s.name), hint);
            }
        }
    }

    /// `key`: a field of every record type of the stream, text or a whole number.
    pub(super) fn key_clause(&mut self, clauses: &Clauses<'_>) {
        let (Some(ast::Clause { kind: ClauseKind::Key(path), .. }), Some(st)) =
            (clauses.get("key"), self.stream.clone())
        else {
            return;
        };
        let name = path.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
        let span = path[0].span.to(path[path.len() - 1].span);
        match st.field(&name) {
            Some(id) => {
                let f = &st.fields[id.index()];
                if !f.in_types.iter().all(|b| *b) {
                    self.err_hint(
                        span,
                        "bad-key",
                        format!("key field `{name}` is not in every record type of stream `{}`", st.name),
                        format!("missing from: {}", missing_types(&st, id)),
                    );
                } else if !matches!(f.ty, FieldType::Str | FieldType::Int) || f.conflict {
                    self.err(
                        span,
                        "bad-key",
                        format!("key field `{name}` is {}; a key must be text or a whole number", f.ty.describe()),
                    );
                } else {
                    self.key = Some(id);
                }
            }
            None => {
                let d = self.unknown_field(span, &name, &st, None);
                self.push(d);
            }
        }
    }

    /// `within`: the pattern window, which the elements' windows are then checked against.
    pub(super) fn within_clause(&mut self, clauses: &Clauses<'_>) {
        self.pattern_window = match clauses.get("within") {
            Some(ast::Clause { kind: ClauseKind::Within(ms, span), .. }) => self.duration(*ms, *span),
            _ => None,
        };
    }

    /// `skip`: the after-match skip strategy (no skip when absent or wrong).
    pub(super) fn skip_clause(&mut self, clauses: &Clauses<'_>) -> SkipStrategy {
        match clauses.get("skip") {
            Some(ast::Clause { kind: ClauseKind::Skip(s), .. }) => match s {
                ast::Skip::None => SkipStrategy::NoSkip,
                ast::Skip::ToNext => SkipStrategy::ToNext,
                ast::Skip::PastLastEvent => SkipStrategy::PastLastEvent,
                ast::Skip::ToFirst(i) | ast::Skip::ToLast(i) => self.skip_target(s, i),
            },
            _ => SkipStrategy::NoSkip,
        }
    }

    /// `skip to first/last i`: `i` must be a variable that takes part in matches.
    fn skip_target(&mut self, s: &ast::Skip, i: &Ident) -> SkipStrategy {
        match self.by_name.get(&i.name).copied() {
            Some(v) if !self.vars[v.index()].negated => {
                if matches!(s, ast::Skip::ToFirst(_)) {
                    SkipStrategy::ToFirst(v)
                } else {
                    SkipStrategy::ToLast(v)
                }
            }
            Some(_) => {
                let hint = format!("skip to one of: {}", self.var_names(false).join(", "));
                self.err_hint(
                    i.span,
                    "bad-skip-target",
                    format!("skip target `{}` is a negated element and is never part of a match", i.name),
                    hint,
                );
                SkipStrategy::NoSkip
            }
            None => {
                let names = self.var_names(false);
                let hint = did_you_mean(&i.name, names.iter().map(String::as_str))
                    .unwrap_or_else(|| format!("the variables are: {}", names.join(", ")));
                self.err_hint(
                    i.span,
                    "bad-skip-target",
                    format!("skip target `{}` names no variable of the pattern", i.name),
                    hint,
                );
                SkipStrategy::NoSkip
            }
        }
    }

    /// `version`: from 1 to `u32::MAX`; 1 when absent or wrong.
    pub(super) fn version_clause(&mut self, clauses: &Clauses<'_>) -> u32 {
        match clauses.get("version") {
            Some(ast::Clause { kind: ClauseKind::Version(n, span), .. }) => {
                if *n == 0 || *n > u64::from(u32::MAX) {
                    self.err(*span, "bad-version", "a version is a whole number from 1 to 4294967295");
                    1
                } else {
                    *n as u32
                }
            }
            _ => 1,
        }
    }

    /// `severity`: medium when absent or wrong.
    pub(super) fn severity_clause(&mut self, clauses: &Clauses<'_>) -> Severity {
        match clauses.get("severity") {
            Some(ast::Clause { kind: ClauseKind::Severity(i), .. }) => match i.name.as_str() {
                "low" => Severity::Low,
                "medium" => Severity::Medium,
                "high" => Severity::High,
                "critical" => Severity::Critical,
                other => {
                    let levels = ["low", "medium", "high", "critical"];
                    let hint =
                        did_you_mean(other, levels).unwrap_or_else(|| "use low, medium, high or critical".to_owned());
                    self.err_hint(i.span, "bad-severity", format!("unknown severity `{other}`"), hint);
                    Severity::Medium
                }
            },
            _ => Severity::Medium,
        }
    }

    /// `mode`: live when absent or wrong.
    pub(super) fn mode_clause(&mut self, clauses: &Clauses<'_>) -> Mode {
        match clauses.get("mode") {
            Some(ast::Clause { kind: ClauseKind::Mode(i), .. }) => match i.name.as_str() {
                "live" => Mode::Live,
                "shadow" => Mode::Shadow,
                other => {
                    let hint =
                        did_you_mean(other, ["live", "shadow"]).unwrap_or_else(|| "use live or shadow".to_owned());
                    self.err_hint(i.span, "bad-mode", format!("unknown mode `{other}`"), hint);
                    Mode::Live
                }
            },
            _ => Mode::Live,
        }
    }
}

/// The record types of `st` that lack field `f`, for hints.
fn missing_types(st: &StreamSchema, f: FieldId) -> String {
    st.types
        .iter()
        .zip(&st.fields[f.index()].in_types)
        .filter(|(_, has)| !**has)
        .map(|(t, _)| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
