//! The `where` clause: each variable's condition and `until` condition, typed as booleans on the
//! candidate event.

use std::collections::BTreeMap;

use engine::VarId;

use super::clauses::Clauses;
use super::expr::Scope;
use super::{Checker, RElement, RKind};
use crate::ast::{self, ClauseKind};
use crate::diag::did_you_mean;

impl Checker<'_> {
    /// `where`: attaches each condition (and `until`) to its variable, once the stream is known.
    pub(super) fn where_clause(&mut self, clauses: &Clauses<'_>, seq: &[RElement]) {
        let defs = self.condition_defs(clauses);
        if self.stream.is_some() {
            for (v, def) in defs {
                self.condition(v, def, seq);
            }
        }
    }

    /// The condition given for each variable; reports conditions on names that are not variables
    /// of `match`, and a second condition for a variable.
    fn condition_defs<'p>(&mut self, clauses: &Clauses<'p>) -> BTreeMap<VarId, &'p ast::ConditionDef> {
        let mut defs: BTreeMap<VarId, &ast::ConditionDef> = BTreeMap::new();
        let (Some(ast::Clause { kind: ClauseKind::Where(list), .. }), true) =
            (clauses.get("where").copied(), clauses.contains_key("match"))
        else {
            return defs;
        };
        for def in list {
            match self.by_name.get(&def.var.name).copied() {
                Some(v) => {
                    if let Some(prev) = defs.get(&v) {
                        let (line, _) = self.src.line_col(prev.var.span.start);
                        self.err_hint(
                            def.var.span,
                            "duplicate-condition",
                            format!("`{}` has two conditions", def.var.name),
                            format!("the first is at line {line}; combine them with `and`"),
                        );
                    } else {
                        defs.insert(v, def);
                    }
                }
                None => {
                    let names = self.var_names(true);
                    let hint = did_you_mean(&def.var.name, names.iter().map(String::as_str)).or_else(|| {
                        (!names.is_empty()).then(|| format!("the variables of `match` are: {}", names.join(", ")))
                    });
                    let d = self
                        .src
                        .diag(
                            def.var.span,
                            "unknown-variable",
                            format!("`{}` is not a variable of the `match` sequence", def.var.name),
                        )
                        .with_hint_opt(hint);
                    self.push(d);
                }
            }
        }
        defs
    }

    /// Types the condition and `until` condition of `v` (unless its record type is unknown).
    fn condition(&mut self, v: VarId, def: &ast::ConditionDef, seq: &[RElement]) {
        if self.vars[v.index()].bad_type {
            return;
        }
        if let Some(t) = self.expr(&def.cond, Scope::Condition { owner: v }) {
            if let Some(expr) = self.expect_bool(t, def.cond.span, "a condition") {
                self.vars[v.index()].cond = Some(self.add_condition(expr));
            }
        }
        if let Some(u) = &def.until {
            if !self.vars[v.index()].looping || self.vars[v.index()].negated || !self.var_is_open_loop(seq, v) {
                self.err_hint(
                    u.span,
                    "until-needs-loop",
                    format!("`until` applies to loops, and `{}` is not an open-ended loop", def.var.name),
                    "use it on `+`, `*` or `{n,}` elements",
                );
            }
            if let Some(t) = self.expr(u, Scope::Condition { owner: v }) {
                if let Some(expr) = self.expect_bool(t, u.span, "an `until` condition") {
                    self.vars[v.index()].until = Some(self.add_condition(expr));
                }
            }
        }
    }

    fn var_is_open_loop(&self, seq: &[RElement], v: VarId) -> bool {
        seq.iter().any(|e| match &e.kind {
            RKind::Var(id) => *id == v && matches!(e.times, Some((_, None))),
            RKind::Group(inner) => self.var_is_open_loop(inner, v),
        })
    }
}
