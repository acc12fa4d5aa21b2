//! How the explanations write things: times and durations, ordinals, a step of the pattern,
//! a guard split into its lines (with their values on an event), and the data a line reads.

use engine::dump::write_expr;
use engine::runtime::MatchEvents;
use engine::{BinOp, Bound, Cond, Event, Expr, Nfa, Value, VarId};

use crate::core::coords::coords;

/// A duration in its largest units: `2h 15m`, `1d 30m`, `3d`, `1s 500ms`, `0s`.
pub fn fmt_duration(ms: i64) -> String {
    if ms < 0 {
        return format!("-{}", fmt_duration(ms.saturating_neg()));
    }
    let mut parts = Vec::new();
    let mut rest = ms;
    for (n, unit) in [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s"), (1, "ms")] {
        if rest >= n {
            parts.push(format!("{}{unit}", rest / n));
            rest %= n;
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// `topic/partition@offset`.
pub(super) fn coord(topic: &str, seq: u64) -> String {
    let (p, o) = coords(seq);
    format!("{topic}/{p}@{o}")
}

/// `1st`, `2nd`, `3rd`, `11th`, ...
pub(super) fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

// ---------------------------------------------------------------------------------------------
// Steps and guards, readable

/// `step 2/3 debit`: the variable's position among the pattern's (non-negated) elements.
pub(super) fn step(nfa: &Nfa, var: VarId) -> String {
    let steps: Vec<usize> = (0..nfa.vars.len()).filter(|&i| !nfa.vars[i].negated).collect();
    match steps.iter().position(|&i| i == var.index()) {
        Some(i) => format!("step {}/{} {}", i + 1, steps.len(), nfa.var_name(var)),
        None => format!("`not` element {}", nfa.var_name(var)),
    }
}

/// One line of a guard; the guard holds when every line does.
#[derive(Clone, Copy)]
pub(super) enum Part<'a> {
    /// A conjunct of an element condition (`amount >= 5000`).
    Expr(&'a Expr),
    /// A structural guard the compiler added (`type Login`, `not (...)`).
    Cond(&'a Cond),
}

/// The lines of `cond`: its conjunctions split, element conditions resolved to their text; the
/// record type first, then the element's condition, then the negations the compiler added (an
/// `until`, or a loop's condition that would take the event instead). Order does not change
/// what holds: the lines are a conjunction without side effects.
pub(super) fn parts<'a>(nfa: &'a Nfa, cond: &'a Cond, out: &mut Vec<Part<'a>>) {
    let start = out.len();
    flatten(nfa, cond, out);
    out[start..].sort_by_key(|p| match p {
        Part::Cond(Cond::IsType(_)) => 0,
        Part::Expr(_) => 1,
        Part::Cond(_) => 2,
    });
}

fn flatten<'a>(nfa: &'a Nfa, cond: &'a Cond, out: &mut Vec<Part<'a>>) {
    match cond {
        Cond::True => {}
        Cond::And(a, b) => {
            flatten(nfa, a, out);
            flatten(nfa, b, out);
        }
        Cond::Holds(id) => split_and(&nfa.conditions[id.index()], out),
        c => out.push(Part::Cond(c)),
    }
}

fn split_and<'a>(e: &'a Expr, out: &mut Vec<Part<'a>>) {
    match e {
        Expr::Binary(BinOp::And, a, b) => {
            split_and(a, out);
            split_and(b, out);
        }
        e => out.push(Part::Expr(e)),
    }
}

fn expr_text(nfa: &Nfa, e: &Expr) -> String {
    let mut s = String::new();
    write_expr(nfa, e, &mut s);
    s
}

/// A guard as `dump::write_cond` writes it, with each `cN` replaced by the condition's text.
pub(super) fn cond_text(nfa: &Nfa, c: &Cond) -> String {
    match c {
        Cond::True => "true".to_owned(),
        Cond::Holds(id) => expr_text(nfa, &nfa.conditions[id.index()]),
        Cond::IsType(t) => format!("type {}", nfa.types[t.index()]),
        Cond::Not(inner) if matches!(**inner, Cond::IsType(_)) => format!("not {}", cond_text(nfa, inner)),
        Cond::Not(inner) => format!("not ({})", cond_text(nfa, inner)),
        Cond::And(a, b) => format!("{} and {}", and_operand(nfa, a), and_operand(nfa, b)),
    }
}

fn and_operand(nfa: &Nfa, c: &Cond) -> String {
    match c {
        Cond::Holds(id) if matches!(nfa.conditions[id.index()], Expr::Binary(BinOp::Or, ..) | Expr::If(..)) => {
            format!("({})", cond_text(nfa, c))
        }
        c => cond_text(nfa, c),
    }
}

pub(super) fn part_text(nfa: &Nfa, p: Part<'_>) -> String {
    match p {
        Part::Expr(e) => expr_text(nfa, e),
        Part::Cond(c) => cond_text(nfa, c),
    }
}

/// The line's value for `event`: `true`, `false` or `null` (a condition holds only when `true`).
pub(super) fn part_value(nfa: &Nfa, p: Part<'_>, event: &Event, view: &MatchEvents, refs: &Bound) -> Value {
    match p {
        Part::Expr(e) => e.eval_with(Some(event), view, refs),
        Part::Cond(c) => Value::Bool(c.holds_with(&nfa.conditions, event, view, refs)),
    }
}

pub(super) fn verdict(v: &Value) -> &'static str {
    match v {
        Value::Bool(true) => "true",
        Value::Bool(false) => "false",
        Value::Null => "null",
        _ => "not a truth value",
    }
}

/// Something a guard reads, shown with its value: an expression or the event's record type.
#[derive(Clone, Copy)]
pub(super) enum Shown<'a> {
    Expr(&'a Expr),
    Type,
}

fn any_node(e: &Expr, f: &dyn Fn(&Expr) -> bool) -> bool {
    f(e) || match e {
        Expr::Lit(_) | Expr::Field(_) | Expr::VarField(..) | Expr::Agg(..) => false,
        Expr::Unary(_, x)
        | Expr::IsNull { expr: x, .. }
        | Expr::In { expr: x, .. }
        | Expr::Like { expr: x, .. }
        | Expr::InTable { expr: x, .. }
        | Expr::Lookup { key: x, .. } => any_node(x, f),
        Expr::Binary(_, a, b) => any_node(a, f) || any_node(b, f),
        Expr::If(c, t, x) => any_node(c, f) || any_node(t, f) || any_node(x, f),
        Expr::Call(_, args) => args.iter().any(|a| any_node(a, f)),
    }
}

fn is_leaf(e: &Expr) -> bool {
    matches!(e, Expr::Field(_) | Expr::VarField(..) | Expr::Agg(..))
}

/// Reads the candidate event (a field of it), not only the match.
pub(super) fn reads_event(e: &Expr) -> bool {
    any_node(e, &|x| matches!(x, Expr::Field(_)))
}

/// A computed operand worth showing next to its leaves (`0.8 * credit.amount`).
fn is_derived(e: &Expr) -> bool {
    !is_leaf(e) && !matches!(e, Expr::Lit(_)) && any_node(e, &is_leaf)
}

/// The data `e` reads, in reading order: every field, variable field and aggregate, and the
/// computed operands of comparisons.
fn collect_exprs<'a>(e: &'a Expr, out: &mut Vec<Shown<'a>>) {
    let operand = |x: &'a Expr, out: &mut Vec<Shown<'a>>| {
        if is_derived(x) {
            out.push(Shown::Expr(x));
        }
        collect_exprs(x, out);
    };
    match e {
        Expr::Field(_) | Expr::VarField(..) | Expr::Agg(..) => out.push(Shown::Expr(e)),
        Expr::Lit(_) => {}
        Expr::Binary(
            BinOp::Eq
            | BinOp::Ne
            | BinOp::Lt
            | BinOp::Le
            | BinOp::Gt
            | BinOp::Ge
            | BinOp::Contains
            | BinOp::StartsWith
            | BinOp::EndsWith,
            a,
            b,
        ) => {
            operand(a, out);
            operand(b, out);
        }
        Expr::Binary(_, a, b) => {
            collect_exprs(a, out);
            collect_exprs(b, out);
        }
        Expr::IsNull { expr, .. } | Expr::In { expr, .. } | Expr::Like { expr, .. } | Expr::InTable { expr, .. } => {
            operand(expr, out)
        }
        // The looked-up value, then what its key reads.
        Expr::Lookup { key, .. } => {
            out.push(Shown::Expr(e));
            collect_exprs(key, out);
        }
        Expr::Unary(_, x) => collect_exprs(x, out),
        Expr::If(c, t, f) => {
            collect_exprs(c, out);
            collect_exprs(t, out);
            collect_exprs(f, out);
        }
        Expr::Call(_, args) => args.iter().for_each(|a| collect_exprs(a, out)),
    }
}

fn collect_cond<'a>(nfa: &'a Nfa, c: &'a Cond, out: &mut Vec<Shown<'a>>) {
    match c {
        Cond::True => {}
        Cond::Holds(id) => collect_exprs(&nfa.conditions[id.index()], out),
        Cond::IsType(_) => out.push(Shown::Type),
        Cond::Not(x) => collect_cond(nfa, x, out),
        Cond::And(a, b) => {
            collect_cond(nfa, a, out);
            collect_cond(nfa, b, out);
        }
    }
}

pub(super) fn part_reads<'a>(nfa: &'a Nfa, p: Part<'a>, out: &mut Vec<Shown<'a>>) {
    match p {
        Part::Expr(e) => collect_exprs(e, out),
        Part::Cond(c) => collect_cond(nfa, c, out),
    }
}

/// `name = value` lines of what the lines read, each once, evaluated as the engine did: on
/// `event` (if any) with the match's earlier events in `view`.
pub(super) fn shown_values(
    nfa: &Nfa,
    shown: &[Shown<'_>],
    event: Option<&Event>,
    view: &MatchEvents,
    refs: &Bound,
) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for s in shown {
        let (name, value) = match (s, event) {
            (Shown::Expr(e), _) => (expr_text(nfa, e), e.eval_with(event, view, refs).to_string()),
            (Shown::Type, Some(ev)) => ("type".to_owned(), nfa.types[ev.kind.index()].clone()),
            (Shown::Type, None) => continue,
        };
        if !names.contains(&name) {
            lines.push(format!("{name} = {value}"));
            names.push(name);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(fmt_duration(8_100_000), "2h 15m");
        assert_eq!(fmt_duration(88_200_000), "1d 30m");
        assert_eq!(fmt_duration(259_200_000), "3d");
        assert_eq!(fmt_duration(1_500), "1s 500ms");
        assert_eq!(fmt_duration(0), "0s");
        assert_eq!(ordinal(1), "1st");
        assert_eq!(ordinal(12), "12th");
        assert_eq!(ordinal(23), "23rd");
    }
}
