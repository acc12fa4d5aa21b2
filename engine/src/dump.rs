//! A readable, deterministic dump of a compiled [`Nfa`] (`tripline explain --nfa`).
//! The content hash of a pattern is taken over this text, so it must name everything that
//! changes the pattern's meaning (reference tables by name: their contents are not part of a
//! pattern).

use std::fmt::{self, Write};

use crate::expr::{Cond, Expr, UnOp};
use crate::nfa::{Action, Mode, Nfa, SkipStrategy, StateKind, TemplatePart};

/// Writes `expr` with names resolved through `nfa`.
pub fn write_expr(nfa: &Nfa, expr: &Expr, out: &mut String) {
    let _ = fmt_expr(nfa, expr, out, 0);
}

fn prec(e: &Expr) -> u8 {
    use crate::expr::BinOp::*;
    match e {
        Expr::Binary(Or, ..) => 1,
        Expr::Binary(And, ..) => 2,
        Expr::Unary(UnOp::Not, _) => 3,
        Expr::Binary(Eq | Ne | Lt | Le | Gt | Ge | Contains | StartsWith | EndsWith, ..)
        | Expr::IsNull { .. }
        | Expr::In { .. }
        | Expr::InTable { .. }
        | Expr::Like { .. } => 4,
        Expr::Binary(Add | Sub, ..) => 5,
        Expr::Binary(Mul | Div | Rem, ..) => 6,
        Expr::Unary(UnOp::Neg, _) => 7,
        Expr::If(..) => 0,
        _ => 9,
    }
}

fn fmt_expr(nfa: &Nfa, e: &Expr, out: &mut String, min: u8) -> fmt::Result {
    let p = prec(e);
    let paren = p < min;
    if paren {
        out.push('(');
    }
    match e {
        Expr::Lit(v) => write!(out, "{v}")?,
        Expr::Field(f) => out.push_str(nfa.field_name(*f)),
        Expr::VarField(v, f) => write!(out, "{}.{}", nfa.var_name(*v), nfa.field_name(*f))?,
        Expr::Agg(func, v, field) => {
            let distinct = if *func == crate::expr::AggFunc::CountDistinct { "distinct " } else { "" };
            match field {
                Some(f) => write!(out, "{}({distinct}{}.{})", func.name(), nfa.var_name(*v), nfa.field_name(*f))?,
                None => write!(out, "{}({})", func.name(), nfa.var_name(*v))?,
            }
        }
        Expr::Unary(UnOp::Neg, x) => {
            out.push('-');
            fmt_expr(nfa, x, out, p + 1)?;
        }
        Expr::Unary(UnOp::Not, x) => {
            out.push_str("not ");
            fmt_expr(nfa, x, out, p)?;
        }
        Expr::Binary(op, a, b) => {
            fmt_expr(nfa, a, out, p)?;
            write!(out, " {} ", op.symbol())?;
            fmt_expr(nfa, b, out, p + 1)?;
        }
        Expr::IsNull { expr, negated } => {
            fmt_expr(nfa, expr, out, p + 1)?;
            out.push_str(if *negated { " is not null" } else { " is null" });
        }
        Expr::In { expr, list, negated } => {
            fmt_expr(nfa, expr, out, p + 1)?;
            out.push_str(if *negated { " not in (" } else { " in (" });
            for (i, v) in list.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write!(out, "{v}")?;
            }
            out.push(')');
        }
        Expr::Like { expr, pattern, negated } => {
            fmt_expr(nfa, expr, out, p + 1)?;
            let not = if *negated { " not" } else { "" };
            let op = if pattern.like { "like" } else { "matches" };
            write!(out, "{not} {op} {:?}", pattern.source)?;
        }
        Expr::If(c, t, f) => {
            out.push_str("if ");
            fmt_expr(nfa, c, out, 0)?;
            out.push_str(" then ");
            fmt_expr(nfa, t, out, 1)?;
            out.push_str(" else ");
            fmt_expr(nfa, f, out, 1)?;
        }
        Expr::InTable { expr, table, negated } => {
            fmt_expr(nfa, expr, out, p + 1)?;
            let not = if *negated { " not" } else { "" };
            write!(out, "{not} in list {}", nfa.table_name(*table))?;
        }
        Expr::Lookup { table, key } => {
            write!(out, "lookup({}, ", nfa.table_name(*table))?;
            fmt_expr(nfa, key, out, 0)?;
            out.push(')');
        }
        Expr::Call(func, args) => {
            write!(out, "{}(", func.name())?;
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                fmt_expr(nfa, a, out, 0)?;
            }
            out.push(')');
        }
    }
    if paren {
        out.push(')');
    }
    Ok(())
}

/// Writes an edge guard: `c0`, `not c1`, `type Login and c2`, `true`.
pub fn write_cond(nfa: &Nfa, cond: &Cond, out: &mut String) {
    match cond {
        Cond::True => out.push_str("true"),
        Cond::Holds(id) => {
            let _ = write!(out, "c{}", id.0);
        }
        Cond::IsType(t) => {
            let _ = write!(out, "type {}", nfa.types[t.index()]);
        }
        Cond::Not(c) => {
            out.push_str("not ");
            let inner = matches!(**c, Cond::And(..));
            if inner {
                out.push('(');
            }
            write_cond(nfa, c, out);
            if inner {
                out.push(')');
            }
        }
        Cond::And(a, b) => {
            write_cond(nfa, a, out);
            out.push_str(" and ");
            write_cond(nfa, b, out);
        }
    }
}

fn fmt_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
    for (n, u) in UNITS {
        if ms != 0 && ms % n == 0 {
            return format!("{}{u}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// The whole dump.
pub fn dump(nfa: &Nfa) -> String {
    let mut o = String::new();
    let m = &nfa.meta;
    let mode = match m.mode {
        Mode::Live => "live",
        Mode::Shadow => "shadow",
    };
    let _ = writeln!(o, "pattern {} version {} severity {} mode {mode}", m.name, m.version, m.severity.as_str());
    let _ = writeln!(o, "  {:?}", m.description);
    let _ = writeln!(o, "stream {} key {}", m.stream, nfa.field_name(m.key));
    match nfa.window_ms {
        Some(ms) => {
            let _ = writeln!(o, "window {} from the first event", fmt_ms(ms));
        }
        None => o.push_str("window none\n"),
    }
    let skip = match nfa.skip {
        SkipStrategy::NoSkip => "none".to_owned(),
        SkipStrategy::ToNext => "to next".to_owned(),
        SkipStrategy::PastLastEvent => "past last event".to_owned(),
        SkipStrategy::ToFirst(v) => format!("to first {}", nfa.var_name(v)),
        SkipStrategy::ToLast(v) => format!("to last {}", nfa.var_name(v)),
    };
    let _ = writeln!(o, "skip {skip}");
    o.push_str("variables:\n");
    for v in &nfa.vars {
        let kind = if v.negated {
            " (negated)"
        } else if v.looping {
            " (looping)"
        } else {
            ""
        };
        let _ = writeln!(o, "  {}{kind}", v.name);
    }
    // Only the names of the reference tables read (never their contents): a pattern that reads
    // none has no such line (and the same dump, and hash, as before tables existed).
    if !nfa.tables.is_empty() {
        let _ = writeln!(o, "tables: {}", nfa.tables.join(", "));
    }
    o.push_str("conditions:\n");
    for (i, c) in nfa.conditions.iter().enumerate() {
        let _ = write!(o, "  c{i}: ");
        write_expr(nfa, c, &mut o);
        o.push('\n');
    }
    o.push_str("states:\n");
    for (i, s) in nfa.states.iter().enumerate() {
        let kind = match s.kind {
            StateKind::Normal => "",
            StateKind::Final => " [final]",
            StateKind::Stop => " [stop]",
            StateKind::Pending => " [pending]",
        };
        let start = if nfa.start.index() == i { " [start]" } else { "" };
        let window = s.window_ms.map(|w| format!(" [within {} of previous]", fmt_ms(w))).unwrap_or_default();
        let _ = writeln!(o, "  s{i} {}{start}{kind}{window}", s.name);
        for e in &s.edges {
            let action = match e.action {
                Action::Take => "take   ",
                Action::Ignore => "ignore ",
                Action::Proceed => "proceed",
            };
            let _ = write!(o, "    {action} -> s{} when ", e.target.0);
            write_cond(nfa, &e.cond, &mut o);
            o.push('\n');
        }
    }
    o.push_str("emit:\n");
    for f in &nfa.outputs {
        let _ = write!(o, "  {}: ", f.name);
        write_expr(nfa, &f.expr, &mut o);
        o.push('\n');
    }
    o.push_str("message: ");
    for part in &nfa.message.parts {
        match part {
            TemplatePart::Lit(s) => {
                let escaped = format!("{s:?}");
                o.push_str(&escaped[1..escaped.len() - 1]);
            }
            TemplatePart::Expr(e) => {
                o.push('{');
                write_expr(nfa, e, &mut o);
                o.push('}');
            }
        }
    }
    o.push('\n');
    o
}
