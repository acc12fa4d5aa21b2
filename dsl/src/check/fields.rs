//! Names in expressions: variables and their fields, fields of the candidate event, the key in
//! `emit` and `message`, with hints for unknown or ambiguous fields.

use engine::{AggFunc, Expr, FieldId, Func, TypeId, VarId};

use super::expr::{Scope, Ty, Typed};
use super::{Checker, VarDef};
use crate::ast::{self, Ident, Span};
use crate::diag::{did_you_mean, Diagnostic};
use crate::schema::{FieldType, StreamSchema};

impl Checker<'_> {
    pub(super) fn unknown_field(&self, span: Span, name: &str, st: &StreamSchema, ty: Option<TypeId>) -> Diagnostic {
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
    pub(super) fn field(
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
    pub(super) fn reads_later(&mut self, scope: Scope, v: VarId, name: &Ident) -> bool {
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

    /// A name in an expression: `v.field` (a variable's event), `field` (the candidate event in a
    /// condition, the key in `emit` and `message`).
    pub(super) fn path(&mut self, e: &ast::Expr, segs: &[Ident], scope: Scope) -> Option<Typed> {
        let first = &segs[0];
        // A variable named like a field (reported where it is declared) reads as the field.
        let shadowed = segs.len() == 1 && self.stream.as_ref().is_some_and(|st| st.field(&first.name).is_some());
        if let (Some(&v), false) = (self.by_name.get(&first.name), shadowed) {
            return self.var_path(e, v, segs, scope);
        }
        let path = segs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
        match scope {
            Scope::Condition { owner } => {
                let ty = self.vars[owner.index()].ty;
                let who = self.vars[owner.index()].name.clone();
                let (fid, t, symbols) = self.field(e.span, &path, ty, &who)?;

                Some(Typed { ty: t, expr: Expr::Field(fid), symbols })
            }
            Scope::Output => self.output_path(e, &path),
        }
    }

    /// `v.field`, where `segs[0]` names variable `v`.
    fn var_path(&mut self, e: &ast::Expr, v: VarId, segs: &[Ident], scope: Scope) -> Option<Typed> {
        let first = &segs[0];
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
            self.err_hint(e.span, "variable-as-value", format!("`{}` is a variable, not a value", first.name), hint);
            return None;
        }
        let field_path = segs[1..].iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
        let fspan = segs[1].span.to(segs[segs.len() - 1].span);
        let own = matches!(scope, Scope::Condition { owner } if owner == v);
        if !own && !self.can_read_other(&var, v, first, &field_path, scope) {
            return None;
        }
        let (fid, ty, symbols) = self.field(fspan, &field_path, var.ty, &var.name)?;
        let expr = if own { Expr::Field(fid) } else { Expr::VarField(v, fid) };
        Some(Typed { ty, expr, symbols })
    }

    /// Whether `name.field_path` can read the event of variable `v` outside `v`'s own condition;
    /// reports why not: `v` is negated, comes after the condition's owner, or loops.
    fn can_read_other(&mut self, var: &VarDef, v: VarId, name: &Ident, field_path: &str, scope: Scope) -> bool {
        if var.negated {
            self.err_hint(
                name.span,
                "read-negated",
                format!("`{}` is a negated element: it never has an event to read", name.name),
                "a negated element only says what must not happen; read the elements that matched",
            );
            return false;
        }
        if self.reads_later(scope, v, name) {
            return false;
        }
        if var.looping {
            let numeric = self
                .stream
                .as_ref()
                .and_then(|st| st.field(field_path).map(|f| st.fields[f.index()].ty))
                .is_some_and(|t| matches!(t, FieldType::Int | FieldType::Float));
            let more = if numeric { format!(", `sum({}.{field_path})`", name.name) } else { String::new() };
            self.err_hint(
                name.span,
                "field-of-loop",
                format!("`{}` takes several events; say which with an aggregate", name.name),
                format!("e.g. `last({0}.{field_path})`, `first({0}.{field_path})`{more}", name.name),
            );
            return false;
        }
        true
    }

    /// A bare field in `emit` or `message`: only the key, which every event of a match shares.
    fn output_path(&mut self, e: &ast::Expr, path: &str) -> Option<Typed> {
        let st = self.stream.clone()?;
        let key = self.key?;
        if st.field(path) == Some(key) {
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
            let expr =
                if reads.len() == 1 { reads.into_iter().next()? } else { Expr::Call(Func::Coalesce, reads.into()) };
            return Some(Typed::new(t, expr));
        }
        if st.field(path).is_some() {
            let example =
                self.vars.iter().find(|v| !v.negated && !v.looping).map_or("x", |v| v.name.as_str()).to_owned();
            self.err_hint(
                e.span,
                "ambiguous-field",
                format!("`{path}` is ambiguous here: say which event it comes from"),
                format!("e.g. `{example}.{path}`; only the key field can be named alone in `emit` and `message`"),
            );
            return None;
        }
        let d = self.unknown_field(e.span, path, &st, None);
        self.push(d);
        None
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
