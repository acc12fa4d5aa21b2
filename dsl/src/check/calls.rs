//! Function calls: aggregates over a looping variable's events (`count`, `sum`, `avg`, `min`,
//! `max`, `first`, `last`) and the scalar functions.

use engine::{AggFunc, Expr, Func, VarId};

use super::expr::{Scope, Ty, Typed};
use super::{Checker, VarDef};
use crate::ast::{self, ExprKind, Ident};
use crate::diag::did_you_mean;

const AGGREGATES: [&str; 7] = ["count", "sum", "avg", "min", "max", "first", "last"];

impl Checker<'_> {
    pub(super) fn call(
        &mut self,
        e: &ast::Expr,
        name: &Ident,
        distinct: bool,
        args: &[ast::Expr],
        scope: Scope,
    ) -> Option<Typed> {
        if AGGREGATES.contains(&name.name.as_str()) {
            return self.aggregate(e, name, distinct, args, scope);
        }
        if name.name == "lookup" {
            return self.lookup(e, name, distinct, args, scope);
        }
        let Some(func) = Func::ALL.into_iter().find(|f| f.name() == name.name) else {
            let known = Func::ALL.iter().map(|f| f.name()).chain(AGGREGATES).chain(["lookup"]);
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
        self.check_arguments(e, name, func, args, &typed)?;
        let ty = self.result_type(func, args, &typed)?;
        Some(Typed::new(ty, Expr::Call(func, typed.into_iter().map(|t| t.expr).collect())))
    }

    /// Checks the number and the types of a function's arguments (`typed`, from `args`).
    fn check_arguments(
        &mut self,
        e: &ast::Expr,
        name: &Ident,
        func: Func,
        args: &[ast::Expr],
        typed: &[Typed],
    ) -> Option<()> {
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
        Some(())
    }

    /// The type of a function's result; `coalesce` reports arguments of different types.
    fn result_type(&mut self, func: Func, args: &[ast::Expr], typed: &[Typed]) -> Option<Ty> {
        Some(match func {
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
        })
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
        let segs = self.aggregate_argument(e, name, func, distinct, args)?;
        let (v, var) = self.aggregated_var(name, segs, scope)?;
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
        self.aggregate_field(name, func, v, &var, segs)
    }

    /// The one argument of an aggregate, a path: `x` or `x.field`.
    fn aggregate_argument<'e>(
        &mut self,
        e: &ast::Expr,
        name: &Ident,
        func: AggFunc,
        distinct: bool,
        args: &'e [ast::Expr],
    ) -> Option<&'e [Ident]> {
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
        Some(segs)
    }

    /// The variable an aggregate reads (`segs[0]`): a loop, matched before a condition's owner.
    fn aggregated_var(&mut self, name: &Ident, segs: &[Ident], scope: Scope) -> Option<(VarId, VarDef)> {
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
        Some((v, var))
    }

    /// `func(var.field)` for a field path (`segs[1..]`): the field's type must suit `func`.
    fn aggregate_field(
        &mut self,
        name: &Ident,
        func: AggFunc,
        v: VarId,
        var: &VarDef,
        segs: &[Ident],
    ) -> Option<Typed> {
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
