//! Explanations for analysts: why an alert fired ([`alert`]), and why a key did or did not alert
//! over a range of its stream ([`KeyTrace`]). Plain text, deterministic (no wall clock, no I/O):
//! the same inputs give the same words, so the texts are golden-tested.
//!
//! Both re-derive what the engine did rather than trust a log: [`alert`] walks the compiled
//! automaton along the matched events and evaluates each step's guard on exactly the events the
//! engine had then; [`KeyTrace`] runs the pattern over the range as a partition of the service
//! does (same watermark, same lateness, same order), watching one key.
//!
//! What a trace can see: the key's matches and timed-out partial matches (engine outputs), its
//! partial matches after every step of the watermark ([`Operator::partial_matches`]), and so the
//! partial matches that ended in between without a match or a timeout. Why one ended is
//! re-derived from the automaton (a `not` element's guard held, an event could be neither taken
//! nor skipped, the skip strategy after a match, the budget); a partial match that started and
//! ended within one step of the watermark is not seen, and the report says so.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use engine::dump::write_expr;
use engine::runtime::{Config as OpConfig, Key, MatchEvents, Operator, Output, PartialView};
use engine::{Action, BinOp, Cond, Edge, Event, Expr, Nfa, StateId, StateKind, Value, VarId};
use serde_json::Value as Json;

use crate::core::alert::alert_id;
use crate::core::coords::{coords, seq_of, watermark_of};
use crate::core::times::format as fmt_time;
use crate::error::Error;

mod find;

pub use find::{alert as explain_alert, choice, key as explain_key, KeyOptions, Sources};

/// At most this many events are listed per list (the rest are counted).
const LIST_LIMIT: usize = 10;

// ---------------------------------------------------------------------------------------------
// Time

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
fn coord(topic: &str, seq: u64) -> String {
    let (p, o) = coords(seq);
    format!("{topic}/{p}@{o}")
}

/// `1st`, `2nd`, `3rd`, `11th`, ...
fn ordinal(n: usize) -> String {
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
fn step(nfa: &Nfa, var: VarId) -> String {
    let steps: Vec<usize> = (0..nfa.vars.len()).filter(|&i| !nfa.vars[i].negated).collect();
    match steps.iter().position(|&i| i == var.index()) {
        Some(i) => format!("step {}/{} {}", i + 1, steps.len(), nfa.var_name(var)),
        None => format!("`not` element {}", nfa.var_name(var)),
    }
}

/// One line of a guard; the guard holds when every line does.
#[derive(Clone, Copy)]
enum Part<'a> {
    /// A conjunct of an element condition (`amount >= 5000`).
    Expr(&'a Expr),
    /// A structural guard the compiler added (`type Login`, `not (...)`).
    Cond(&'a Cond),
}

/// The lines of `cond`: its conjunctions split, element conditions resolved to their text; the
/// record type first, then the element's condition, then the negations the compiler added (an
/// `until`, or a loop's condition that would take the event instead). Order does not change
/// what holds: the lines are a conjunction without side effects.
fn parts<'a>(nfa: &'a Nfa, cond: &'a Cond, out: &mut Vec<Part<'a>>) {
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
fn cond_text(nfa: &Nfa, c: &Cond) -> String {
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

fn part_text(nfa: &Nfa, p: Part<'_>) -> String {
    match p {
        Part::Expr(e) => expr_text(nfa, e),
        Part::Cond(c) => cond_text(nfa, c),
    }
}

/// The line's value for `event`: `true`, `false` or `null` (a condition holds only when `true`).
fn part_value(nfa: &Nfa, p: Part<'_>, event: &Event, view: &MatchEvents) -> Value {
    match p {
        Part::Expr(e) => e.eval(Some(event), view),
        Part::Cond(c) => Value::Bool(c.holds(&nfa.conditions, event, view)),
    }
}

fn verdict(v: &Value) -> &'static str {
    match v {
        Value::Bool(true) => "true",
        Value::Bool(false) => "false",
        Value::Null => "null",
        _ => "not a truth value",
    }
}

/// Something a guard reads, shown with its value: an expression or the event's record type.
#[derive(Clone, Copy)]
enum Shown<'a> {
    Expr(&'a Expr),
    Type,
}

fn any_node(e: &Expr, f: &dyn Fn(&Expr) -> bool) -> bool {
    f(e) || match e {
        Expr::Lit(_) | Expr::Field(_) | Expr::VarField(..) | Expr::Agg(..) => false,
        Expr::Unary(_, x) | Expr::IsNull { expr: x, .. } | Expr::In { expr: x, .. } | Expr::Like { expr: x, .. } => {
            any_node(x, f)
        }
        Expr::Binary(_, a, b) => any_node(a, f) || any_node(b, f),
        Expr::If(c, t, x) => any_node(c, f) || any_node(t, f) || any_node(x, f),
        Expr::Call(_, args) => args.iter().any(|a| any_node(a, f)),
    }
}

fn is_leaf(e: &Expr) -> bool {
    matches!(e, Expr::Field(_) | Expr::VarField(..) | Expr::Agg(..))
}

/// Reads the candidate event (a field of it), not only the match.
fn reads_event(e: &Expr) -> bool {
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
        Expr::IsNull { expr, .. } | Expr::In { expr, .. } | Expr::Like { expr, .. } => operand(expr, out),
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

fn part_reads<'a>(nfa: &'a Nfa, p: Part<'a>, out: &mut Vec<Shown<'a>>) {
    match p {
        Part::Expr(e) => collect_exprs(e, out),
        Part::Cond(c) => collect_cond(nfa, c, out),
    }
}

/// `name = value` lines of what the lines read, each once, evaluated as the engine did: on
/// `event` (if any) with the match's earlier events in `view`.
fn shown_values(nfa: &Nfa, shown: &[Shown<'_>], event: Option<&Event>, view: &MatchEvents) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for s in shown {
        let (name, value) = match (s, event) {
            (Shown::Expr(e), _) => (expr_text(nfa, e), e.eval(event, view).to_string()),
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

// ---------------------------------------------------------------------------------------------
// Walking the automaton

/// The events of a (partial) match in the order the engine took them: event time, then arrival.
fn in_order(events: &MatchEvents) -> Vec<(VarId, Arc<Event>)> {
    let mut all: Vec<(VarId, Arc<Event>)> =
        events.iter().flat_map(|(v, list)| list.iter().map(move |e| (*v, e.clone()))).collect();
    all.sort_by_key(|(_, e)| (e.ts, e.seq));
    all
}

/// The match's events as a condition sees them: per variable, in order of first event.
fn view_of(taken: &[(VarId, Arc<Event>)]) -> MatchEvents {
    let mut view: MatchEvents = Vec::new();
    for (v, e) in taken {
        match view.iter_mut().find(|(var, _)| var == v) {
            Some((_, list)) => list.push(e.clone()),
            None => view.push((*v, vec![e.clone()])),
        }
    }
    view
}

/// The TAKE edge (and its state) by which a partial match waiting in `from` takes `event` into
/// `var`: searched from `from` through the PROCEED edges that pass for the event and the IGNORE
/// edges to other states (events skipped in between), preferring an edge whose guard passes.
/// Without one (the events or the pattern are not what the engine ran), the first TAKE edge of
/// `var` found.
fn find_take<'a>(
    nfa: &'a Nfa,
    from: StateId,
    var: VarId,
    event: &Event,
    view: &MatchEvents,
) -> Option<(StateId, &'a Edge)> {
    let mut queue = VecDeque::from([from]);
    let mut seen = vec![false; nfa.states.len()];
    seen[from.index()] = true;
    let mut fallback = None;
    while let Some(s) = queue.pop_front() {
        let state = nfa.state(s);
        for e in &state.edges {
            let next = match e.action {
                Action::Take if state.var == Some(var) => {
                    if e.cond.holds(&nfa.conditions, event, view) {
                        return Some((s, e));
                    }
                    fallback.get_or_insert((s, e));
                    None
                }
                Action::Proceed if e.cond.holds(&nfa.conditions, event, view) => Some(e.target),
                Action::Ignore if e.target != s => Some(e.target),
                _ => None,
            };
            if let Some(t) = next.filter(|t| !seen[t.index()]) {
                seen[t.index()] = true;
                queue.push_back(t);
            }
        }
    }
    fallback
}

/// The state a partial match is in after taking `taken` (in order) from the start.
fn state_after(nfa: &Nfa, taken: &[(VarId, Arc<Event>)]) -> StateId {
    let mut state = nfa.start;
    for (i, (var, e)) in taken.iter().enumerate() {
        if let Some((_, edge)) = find_take(nfa, state, *var, e, &view_of(&taken[..i])) {
            state = edge.target;
        }
    }
    state
}

/// What a partial match waiting in a state can do next.
struct Waiting<'a> {
    /// The steps that can take the next event: (variable, guard).
    takes: Vec<(VarId, &'a Cond)>,
    /// `not` elements that discard it if seen: (variable, guard).
    forbidden: Vec<(VarId, &'a Cond)>,
    /// It waits for time to pass (a `not followed by` at the end).
    pending: bool,
    /// The fewest further events that complete a match.
    more: Option<usize>,
}

fn waiting(nfa: &Nfa, from: StateId) -> Waiting<'_> {
    let mut w = Waiting { takes: Vec::new(), forbidden: Vec::new(), pending: false, more: more_events(nfa, from) };
    let mut queue = VecDeque::from([from]);
    let mut seen = vec![false; nfa.states.len()];
    seen[from.index()] = true;
    while let Some(s) = queue.pop_front() {
        let state = nfa.state(s);
        w.pending |= state.kind == StateKind::Pending;
        for e in &state.edges {
            let target = nfa.state(e.target);
            let stop = target.kind == StateKind::Stop;
            match e.action {
                Action::Take => {
                    let var = state.var.unwrap_or(VarId(0));
                    let list = if stop || nfa.vars[var.index()].negated { &mut w.forbidden } else { &mut w.takes };
                    if !list.iter().any(|(v, c)| *v == var && cond_text(nfa, c) == cond_text(nfa, &e.cond)) {
                        list.push((var, &e.cond));
                    }
                }
                Action::Proceed if stop => {
                    if let Some(var) = target.var {
                        w.forbidden.push((var, &e.cond));
                    }
                }
                Action::Proceed | Action::Ignore => {}
            }
            let walk = !stop && (e.action == Action::Proceed || (e.action == Action::Ignore && e.target != s));
            if walk && !seen[e.target.index()] {
                seen[e.target.index()] = true;
                queue.push_back(e.target);
            }
        }
    }
    w
}

/// The fewest TAKEs from `from` to the final state (or a pending one, which completes by time).
fn more_events(nfa: &Nfa, from: StateId) -> Option<usize> {
    let mut dist = vec![usize::MAX; nfa.states.len()];
    let mut queue = VecDeque::from([(from, 0usize)]);
    dist[from.index()] = 0;
    let mut best = None;
    while let Some((s, d)) = queue.pop_front() {
        if d > dist[s.index()] {
            continue;
        }
        let state = nfa.state(s);
        if matches!(state.kind, StateKind::Final | StateKind::Pending) {
            best = Some(best.map_or(d, |b: usize| b.min(d)));
            continue;
        }
        for e in &state.edges {
            if nfa.state(e.target).kind == StateKind::Stop {
                continue;
            }
            let nd = d + usize::from(e.action == Action::Take);
            if nd < dist[e.target.index()] {
                dist[e.target.index()] = nd;
                if e.action == Action::Take {
                    queue.push_back((e.target, nd));
                } else {
                    queue.push_front((e.target, nd));
                }
            }
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// One alert

fn field<'a>(alert: &'a Json, name: &str) -> Result<&'a Json, Error> {
    alert.get(name).ok_or_else(|| Error::usage(format!("the alert has no `{name}`")))
}

fn str_field<'a>(alert: &'a Json, name: &str) -> Result<&'a str, Error> {
    field(alert, name)?.as_str().ok_or_else(|| Error::usage(format!("the alert's `{name}` is not text")))
}

fn int_field(alert: &Json, name: &str) -> Result<i64, Error> {
    field(alert, name)?.as_i64().ok_or_else(|| Error::usage(format!("the alert's `{name}` is not a whole number")))
}

/// Explains one alert: which event each step of the pattern took and why its condition held,
/// evaluated on exactly what the engine saw then (the events the match had taken before).
///
/// `alert` is an alert line as [`crate::core::alert::alert_line`] writes it; `events` are its matched
/// events (decoded, `seq` = [`seq_of`]`(partition, offset)`), in any order; events that the
/// alert does not name are ignored. An error when an event is missing, when the alert is not
/// this pattern's (name, content hash), or when the events are not the alert's (key, id).
pub fn alert(nfa: &Nfa, topic: &str, alert: &Json, events: &[Arc<Event>]) -> Result<String, Error> {
    let m = &nfa.meta;
    let pattern = str_field(alert, "pattern")?;
    if pattern != m.name {
        return Err(Error::usage(format!("the alert is of pattern `{pattern}`, not `{}`", m.name)));
    }
    let hash = str_field(alert, "hash")?;
    if hash != m.hash {
        return Err(Error::usage(format!(
            "the alert was made by {pattern} with content hash {hash} (version {}); this pattern compiles to hash {} \
             (version {}): explain the alert with the pattern the service ran",
            field(alert, "version")?,
            m.hash,
            m.version
        )));
    }
    let id = str_field(alert, "alert_id")?;
    let key = str_field(alert, "key")?;
    let ts = int_field(alert, "ts")?;
    let partition = int_field(alert, "partition")?;
    let partition =
        i32::try_from(partition).map_err(|_| Error::usage(format!("the alert's partition {partition} is not one")))?;
    let matched =
        field(alert, "match")?.as_object().ok_or_else(|| Error::usage("the alert's `match` is not an object"))?;

    // The named events, checked.
    let mut taken: Vec<(VarId, Arc<Event>)> = Vec::new();
    for (name, offsets) in matched {
        let var =
            nfa.vars.iter().position(|v| &v.name == name && !v.negated).map(|i| VarId(i as u16)).ok_or_else(|| {
                Error::usage(format!("the alert names `{name}`, which is not a step of pattern {}", m.name))
            })?;
        let offsets =
            offsets.as_array().ok_or_else(|| Error::usage(format!("the alert's `match.{name}` is not a list")))?;
        for o in offsets {
            let o = o
                .as_i64()
                .ok_or_else(|| Error::usage(format!("the alert's `match.{name}` holds {o}, not an offset")))?;
            let seq = seq_of(partition, o);
            let event = events.iter().find(|e| e.seq == seq).ok_or_else(|| {
                Error::usage(format!(
                    "event {} ({name}) of the alert is missing ({} event(s) given)",
                    coord(topic, seq),
                    events.len()
                ))
            })?;
            let event_key = Key::of(event.field(m.key)).to_string();
            if event_key != key {
                return Err(Error::usage(format!(
                    "event {} has {} {event_key}, the alert's key is {key}: not the alert's event",
                    coord(topic, seq),
                    nfa.field_name(m.key)
                )));
            }
            taken.push((var, event.clone()));
        }
    }
    if taken.is_empty() {
        return Err(Error::usage("the alert's `match` names no event"));
    }
    taken.sort_by_key(|(_, e)| (e.ts, e.seq));
    let all = view_of(&taken);
    let body = engine::alert::body(nfa, &all);
    let key_value = Key::of(taken[0].1.field(m.key));
    let expected_id = alert_id(nfa, &key_value, &body.matched);
    if expected_id != id {
        return Err(Error::usage(format!(
            "the alert id {id} does not belong to these events under this pattern (they give {expected_id})"
        )));
    }

    let mut o = String::new();
    let mode = if m.mode == engine::Mode::Shadow { "shadow" } else { "live" };
    let _ = writeln!(o, "Alert {id}");
    let _ = writeln!(
        o,
        "  pattern:  {} version {} (hash {}), severity {}, {mode}",
        m.name,
        m.version,
        m.hash,
        m.severity.as_str()
    );
    let _ = writeln!(o, "  about:    {}", m.description);
    let _ = writeln!(o, "  key:      {key} ({})", nfa.field_name(m.key));
    let _ = writeln!(o, "  time:     {} (event time of the match)", fmt_time(ts));
    let counts: Vec<String> = body.matched.iter().map(|(v, l)| format!("{v}: {}", l.len())).collect();
    let _ = writeln!(
        o,
        "  events:   {} ({}), in the order the engine took them (event time, then offset)",
        taken.len(),
        counts.join(", ")
    );

    let mut state = nfa.start;
    let n = taken.len();
    for (i, (var, event)) in taken.iter().enumerate() {
        let view = view_of(&taken[..i]);
        let nth = taken[..i].iter().filter(|(v, _)| v == var).count() + 1;
        let of_var = taken.iter().filter(|(v, _)| v == var).count();
        let which = if of_var > 1 { format!(" ({} of its {of_var} events)", ordinal(nth)) } else { String::new() };
        let _ = writeln!(o, "\nEvent {}/{n}: {}{which}", i + 1, step(nfa, *var));
        let _ = writeln!(o, "  source:   {}", coord(topic, event.seq));
        let _ = writeln!(o, "  time:     {}", fmt_time(event.ts));
        let Some((from, edge)) = find_take(nfa, state, *var, event, &view) else {
            let _ = writeln!(
                o,
                "  PROBLEM: the pattern has no step that takes an event into {} here: this is not the \
                 automaton the engine ran",
                nfa.var_name(*var)
            );
            continue;
        };
        write_guard(&mut o, nfa, &edge.cond, event, &view);
        let holds = edge.cond.holds(&nfa.conditions, event, &view);
        if holds {
            o.push_str("  holds:    true\n");
        } else {
            o.push_str(
                "  holds:    FALSE: the engine could not have taken this event with this pattern. The events \
                 differ from those the service matched, or this is a bug: please report it.\n",
            );
        }
        // Windows, as the engine checks them: the partial match times out when the time since the
        // first (or previous) event reaches the window, so the event must come strictly before.
        let (first, prev) = (&taken[0].1, i.checked_sub(1).map(|p| &taken[p].1));
        if let (Some(w), true) = (nfa.window_ms, i > 0) {
            let since = event.ts - first.ts;
            let _ = writeln!(
                o,
                "  window:   within {} of the first event: {} after event 1 ({})",
                fmt_duration(w),
                fmt_duration(since),
                inside(since, w)
            );
        }
        if let (Some(w), Some(prev)) = (nfa.state(from).window_ms, prev) {
            let since = event.ts - prev.ts;
            let _ = writeln!(
                o,
                "  window:   within {} of the previous event: {} after event {i} ({})",
                fmt_duration(w),
                fmt_duration(since),
                inside(since, w)
            );
        }
        state = edge.target;
    }
    let message = str_field(alert, "message")?;
    let _ = writeln!(o, "\nMessage: {message}");
    if body.message != message {
        let _ = writeln!(
            o,
            "PROBLEM: these events give the message \"{}\": they are not the events the service matched.",
            body.message
        );
    }
    Ok(o)
}

fn inside(since: i64, window: i64) -> &'static str {
    if since < window {
        "inside"
    } else {
        "OUTSIDE: the engine would have timed the partial match out first"
    }
}

/// The guard's lines with their values on `event`, then what they read.
fn write_guard(o: &mut String, nfa: &Nfa, cond: &Cond, event: &Event, view: &MatchEvents) {
    let mut lines = Vec::new();
    parts(nfa, cond, &mut lines);
    if lines.is_empty() {
        o.push_str("  condition: none (any event)\n");
        return;
    }
    o.push_str("  condition (every line must be true):\n");
    let mut shown = Vec::new();
    for p in &lines {
        let _ = writeln!(o, "    {:<5}  {}", verdict(&part_value(nfa, *p, event, view)), part_text(nfa, *p));
        part_reads(nfa, *p, &mut shown);
    }
    let values = shown_values(nfa, &shown, Some(event), view);
    if !values.is_empty() {
        o.push_str("  values:\n");
        for v in values {
            let _ = writeln!(o, "    {v}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One key over a range

/// Why one key did or did not alert over a range of the pattern's stream: the pattern runs over
/// the range exactly as the service runs it (per partition: the watermark over all the
/// partition's events, late events skipped, timers fired after every on-time event), with an
/// operator that sees only this key's events, so that its counts and partial matches are the
/// key's.
#[derive(Debug)]
pub struct KeyTrace {
    nfa: Arc<Nfa>,
    key: Key,
    out_of_orderness: i64,
    config: OpConfig,
    partitions: BTreeMap<i32, PartitionTrace>,
}

#[derive(Debug)]
struct PartitionTrace {
    op: Operator,
    /// Newest event time of the partition (all keys).
    max_ts: i64,
    /// Events of the partition read (all keys).
    read: u64,
    /// The key's on-time events, in offset order.
    events: Vec<Arc<Event>>,
    /// The key's late events, each with the watermark it was behind.
    late: Vec<(Arc<Event>, i64)>,
    /// Matches: (event time, events).
    matches: Vec<(i64, MatchEvents)>,
    /// Timed-out partial matches: (when the window closed, events).
    timeouts: Vec<(i64, MatchEvents)>,
    /// Partial matches that ended without a match or a timeout, and why.
    discarded: Vec<Discard>,
    /// The key's partial matches after the last step that changed them.
    last: Vec<PartialView>,
    /// The operator's budget drops at that step.
    dropped: u64,
    outs: Vec<Output>,
}

/// A partial match that ended without a match or a timeout.
#[derive(Debug)]
struct Discard {
    start_ts: i64,
    /// Its events, in order, up to the end (with those it took in its last step).
    taken: Vec<(VarId, Arc<Event>)>,
    /// The state it ended in.
    state: StateId,
    reason: Reason,
}

/// Why a partial match ended without a match or a timeout, as far as the trace can tell.
#[derive(Debug)]
enum Reason {
    /// A `not` element's guard held on this event.
    Negated(VarId, Arc<Event>),
    /// The event could be neither taken nor skipped (strict contiguity, an `until`).
    Blocked(Arc<Event>),
    /// The skip strategy cleared it when these matches (indices into `matches`) were made.
    Skipped(Vec<usize>),
    /// The per-key budget dropped it.
    Budget,
    /// None of the above: it ended while the pattern processed these events.
    Unknown(Vec<Arc<Event>>),
}

/// A (partial) match by the `seq`s of its events, per variable.
type Seqs = Vec<(VarId, Vec<u64>)>;

fn seqs(events: &MatchEvents) -> Seqs {
    events.iter().map(|(v, l)| (*v, l.iter().map(|e| e.seq).collect())).collect()
}

/// Whether `q` holds every event of `p` (per variable, as a prefix): `q` is `p` continued.
fn extends(p: &Seqs, q: &Seqs) -> bool {
    p.iter().all(|(v, l)| q.iter().any(|(w, m)| w == v && m.starts_with(l)))
}

/// What a partial match waiting in `state` does with `event`, when that is certain.
enum Move {
    /// Exactly one TAKE passes (and no IGNORE): it takes the event into the variable.
    Take(VarId, StateId),
    /// Only IGNOREs (to one state) pass: it skips the event.
    Skip(StateId),
    /// Nothing passes: the partial match ends.
    Blocked,
    /// Several edges pass: the partial match branches.
    Branch,
}

fn next_move(nfa: &Nfa, state: StateId, event: &Event, view: &MatchEvents) -> Move {
    let (mut takes, mut skips) = (Vec::new(), Vec::new());
    let mut queue = VecDeque::from([state]);
    let mut seen = vec![false; nfa.states.len()];
    seen[state.index()] = true;
    while let Some(s) = queue.pop_front() {
        for e in &nfa.state(s).edges {
            if !e.cond.holds(&nfa.conditions, event, view) {
                continue;
            }
            match e.action {
                Action::Take => takes.push((nfa.state(s).var.unwrap_or(VarId(0)), e.target)),
                Action::Ignore => skips.push(e.target),
                Action::Proceed if !seen[e.target.index()] => {
                    seen[e.target.index()] = true;
                    queue.push_back(e.target);
                }
                Action::Proceed => {}
            }
        }
    }
    match (takes.as_slice(), skips.as_slice()) {
        ([], []) => Move::Blocked,
        (&[(var, target)], []) => Move::Take(var, target),
        ([], &[target, ..]) if skips.iter().all(|&t| t == target) => Move::Skip(target),
        _ => Move::Branch,
    }
}

impl PartitionTrace {
    fn collect(&mut self) {
        for out in self.outs.drain(..) {
            match out {
                Output::Match { ts, events, .. } => self.matches.push((ts, events)),
                Output::Timeout { ts, events, .. } => self.timeouts.push((ts, events)),
                // Lateness is decided before the operator sees an event, as the service does.
                Output::Late { .. } => {}
            }
        }
    }

    /// Moves the operator's watermark to `wm`; when that changes the key's partial matches,
    /// finds those that ended without a successor, a match or a timeout.
    fn advance(&mut self, nfa: &Nfa, key: &Key, wm: i64) {
        let (buffered, prev_wm) = (self.op.buffered_events(key), self.op.watermark());
        let (matches, timeouts) = (self.matches.len(), self.timeouts.len());
        self.op.advance_watermark(wm, &mut self.outs);
        let changed = !self.outs.is_empty() || self.op.buffered_events(key) < buffered;
        self.collect();
        if !changed {
            return;
        }
        let now = self.op.partial_matches(key);
        let successors: Vec<Seqs> = now
            .iter()
            .map(|v| seqs(&v.events))
            .chain(self.matches[matches..].iter().map(|(_, m)| seqs(m)))
            .chain(self.timeouts[timeouts..].iter().map(|(_, m)| seqs(m)))
            .collect();
        let dropped = self.op.stats().dropped_partial_matches;
        let budget = dropped > self.dropped;
        self.dropped = dropped;
        let wm = self.op.watermark();
        let mut released: Vec<&Arc<Event>> = self.events.iter().filter(|e| e.ts > prev_wm && e.ts <= wm).collect();
        released.sort_by_key(|e| (e.ts, e.seq));
        for p in std::mem::replace(&mut self.last, now) {
            let mine = seqs(&p.events);
            if successors.iter().any(|q| extends(&mine, q)) {
                continue;
            }
            // Follow it through the events released in this step while what it does is certain.
            let mut taken = in_order(&p.events);
            let mut state = p.state;
            let last = taken.last().map(|(_, e)| (e.ts, e.seq));
            let after: Vec<&Arc<Event>> =
                released.iter().copied().filter(|e| last.is_none_or(|l| (e.ts, e.seq) > l)).collect();
            let mut reason = None;
            for e in &after {
                let view = view_of(&taken);
                let w = waiting(nfa, state);
                if let Some((var, _)) = w.forbidden.iter().find(|(_, c)| c.holds(&nfa.conditions, e, &view)) {
                    reason = Some(Reason::Negated(*var, (*e).clone()));
                    break;
                }
                match next_move(nfa, state, e, &view) {
                    Move::Blocked => {
                        reason = Some(Reason::Blocked((*e).clone()));
                        break;
                    }
                    Move::Take(var, target) => {
                        taken.push((var, (*e).clone()));
                        state = target;
                    }
                    Move::Skip(target) => state = target,
                    Move::Branch => break,
                }
            }
            let reason = reason.unwrap_or_else(|| {
                if nfa.skip != engine::SkipStrategy::NoSkip && self.matches.len() > matches {
                    Reason::Skipped((matches..self.matches.len()).collect())
                } else if budget {
                    Reason::Budget
                } else {
                    Reason::Unknown(after.into_iter().cloned().collect())
                }
            });
            self.discarded.push(Discard { start_ts: p.start_ts, taken, state, reason });
        }
    }
}

impl KeyTrace {
    /// A trace of `key` under `nfa`, for a stream with this bounded out-of-orderness (ms) and
    /// engine configuration (timeouts are turned on: they are what the trace reports).
    pub fn new(nfa: Arc<Nfa>, key: Key, out_of_orderness_ms: i64, config: OpConfig) -> Self {
        KeyTrace {
            nfa,
            key,
            out_of_orderness: out_of_orderness_ms,
            config: OpConfig { timeouts: true, ..config },
            partitions: BTreeMap::new(),
        }
    }

    /// Every event of the pattern's stream (all keys: they move the watermark), in offset order
    /// per partition (partitions may interleave): the events the service admitted (decoded,
    /// `pipeline::admit`), each with `seq` = [`seq_of`]`(partition, offset)`.
    pub fn feed(&mut self, partition: i32, event: Arc<Event>) {
        let (nfa, config) = (&self.nfa, self.config);
        let part = self.partitions.entry(partition).or_insert_with(|| {
            let mut op = Operator::new(nfa.clone(), config);
            op.track_changes(false);
            PartitionTrace {
                op,
                max_ts: i64::MIN,
                read: 0,
                events: Vec::new(),
                late: Vec::new(),
                matches: Vec::new(),
                timeouts: Vec::new(),
                discarded: Vec::new(),
                last: Vec::new(),
                dropped: 0,
                outs: Vec::new(),
            }
        });
        part.read += 1;
        let mine = Key::of(event.field(self.nfa.meta.key)) == self.key;
        let wm = watermark_of(part.max_ts, self.out_of_orderness);
        if event.ts <= wm {
            if mine {
                part.late.push((event, wm));
            }
            return;
        }
        part.max_ts = part.max_ts.max(event.ts);
        let wm = watermark_of(part.max_ts, self.out_of_orderness);
        if mine {
            part.events.push(event.clone());
            part.op.process(self.key.clone(), event, &mut part.outs);
        }
        part.advance(&self.nfa, &self.key, wm);
    }

    /// The report, at the end of the range. `open_end`: the input goes on (a range of a live
    /// topic), so time does not run to its end: open windows stay open, as in the service.
    pub fn finish(mut self, topic: &str, open_end: bool) -> String {
        if !open_end {
            for part in self.partitions.values_mut() {
                part.advance(&self.nfa, &self.key, i64::MAX);
            }
        }
        Report { nfa: &self.nfa, key: &self.key, topic, open_end, partitions: &self.partitions }.write()
    }
}

struct Report<'a> {
    nfa: &'a Nfa,
    key: &'a Key,
    topic: &'a str,
    open_end: bool,
    partitions: &'a BTreeMap<i32, PartitionTrace>,
}

impl Report<'_> {
    fn write(&self) -> String {
        let (nfa, m) = (self.nfa, &self.nfa.meta);
        let parts = self.partitions;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Key {} ({}) under pattern {} version {} (hash {})",
            self.key,
            nfa.field_name(m.key),
            m.name,
            m.version,
            m.hash
        );
        let _ = writeln!(o, "  {:?}", m.description);
        let read: u64 = parts.values().map(|p| p.read).sum();
        let on_time: usize = parts.values().map(|p| p.events.len()).sum();
        let late: usize = parts.values().map(|p| p.late.len()).sum();
        let matches: usize = parts.values().map(|p| p.matches.len()).sum();
        let names: Vec<String> = parts.keys().map(|p| p.to_string()).collect();
        let plural = if names.len() == 1 { "" } else { "s" };

        let result = if on_time + late == 0 {
            format!("Result: no events of key {} in the range.", self.key)
        } else if matches > 0 {
            format!("Result: ALERTED: {matches} alert(s) for this key in the range.")
        } else {
            "Result: no alert for this key in the range.".to_owned()
        };
        let _ = writeln!(o, "{result}\n");
        let _ = writeln!(
            o,
            "Range: {read} events read from topic {} (partition{plural} {}); {} of them are the key's: {on_time} on time, \
             {late} late.",
            self.topic,
            names.join(", "),
            on_time + late
        );
        if self.open_end {
            o.push_str("Open end: the input goes on, so the windows still open stay open.\n");
            for (p, part) in parts {
                let wm = part.op.watermark();
                let _ = writeln!(
                    o,
                    "Partition {p}'s watermark at the end: {}; events of the key after it, not yet seen by the \
                     pattern: {}",
                    fmt_wm(wm),
                    part.op.buffered_events(self.key)
                );
                let waiting: Vec<&Arc<Event>> = part.events.iter().filter(|e| e.ts > wm).collect();
                for e in waiting.iter().take(LIST_LIMIT) {
                    let _ = writeln!(o, "  {} at {}", coord(self.topic, e.seq), fmt_time(e.ts));
                }
                more(&mut o, waiting.len(), "  ");
            }
        } else {
            o.push_str("The range ends at the end of time: every window closed.\n");
        }
        if parts.len() > 1 && on_time + late > 0 {
            o.push_str(
                "The service keeps each partition's state apart; so does this trace (a match never spans \
                 partitions).\n",
            );
        }
        if on_time + late == 0 {
            return o;
        }

        // Alerts.
        if matches > 0 {
            let _ = writeln!(o, "\nAlerts ({matches}):");
            let mut n = 0;
            for part in parts.values() {
                for (ts, events) in &part.matches {
                    n += 1;
                    let body = engine::alert::body(nfa, events);
                    let id = alert_id(nfa, self.key, &body.matched);
                    let _ = writeln!(o, "  #{n} alert {id} at {}", fmt_time(*ts));
                    self.write_taken(&mut o, events, "     ");
                    let _ = writeln!(o, "     message: {}", body.message);
                }
            }
        }

        // Funnel.
        let _ = writeln!(o, "\nFunnel (partial matches of this key that reached each step):");
        let steps: Vec<usize> = (0..nfa.vars.len()).filter(|&i| !nfa.vars[i].negated).collect();
        let labels: Vec<String> = steps.iter().map(|&i| step(nfa, VarId(i as u16))).collect();
        let width = labels.iter().map(String::len).max().unwrap_or(0).max("matches".len()) + 1;
        for (label, &i) in labels.iter().zip(&steps) {
            let reached: u64 = parts.values().map(|p| p.op.funnel().get(i).copied().unwrap_or(0)).sum();
            let _ = writeln!(o, "  {:<width$} {reached}", format!("{label}:"));
        }
        let _ = writeln!(o, "  {:<width$} {matches}", "matches:");
        let dropped: u64 = parts.values().map(|p| p.op.stats().dropped_partial_matches).sum();
        if dropped > 0 {
            let _ = writeln!(
                o,
                "  {dropped} partial match(es) dropped by the per-key budget (engine.max_partial_matches_per_key)"
            );
        }
        let started: u64 =
            steps.first().map_or(0, |&i| parts.values().map(|p| p.op.funnel().get(i).copied().unwrap_or(0)).sum());
        if started == 0 && on_time > 0 {
            self.write_never_started(&mut o);
        }

        // Timed out.
        let timeouts: usize = parts.values().map(|p| p.timeouts.len()).sum();
        if timeouts == 0 {
            o.push_str("\nTimed-out partial matches: none\n");
        } else {
            let _ = writeln!(o, "\nTimed-out partial matches: {timeouts}");
        }
        let mut n = 0;
        for part in parts.values() {
            for (closed, events) in &part.timeouts {
                n += 1;
                if n > LIST_LIMIT {
                    break;
                }
                let taken = in_order(events);
                let state = state_after(nfa, &taken);
                let start = taken.first().map_or(0, |(_, e)| e.ts);
                let _ = writeln!(o, "  #{n} started {}; its window closed at {}", fmt_time(start), fmt_time(*closed));
                self.write_partial(&mut o, part, state, &taken, Some(*closed), true);
            }
        }
        more(&mut o, timeouts, "  ");

        // Discarded.
        let discarded: usize = parts.values().map(|p| p.discarded.len()).sum();
        if discarded == 0 {
            o.push_str("\nPartial matches discarded on the way: none\n");
        } else {
            let _ = writeln!(o, "\nPartial matches discarded on the way: {discarded}");
        }
        let mut n = 0;
        for part in parts.values() {
            for d in &part.discarded {
                n += 1;
                if n > LIST_LIMIT {
                    break;
                }
                let _ = writeln!(o, "  #{n} started {}", fmt_time(d.start_ts));
                o.push_str("    events taken:\n");
                for (var, e) in &d.taken {
                    let _ =
                        writeln!(o, "      {}: {} at {}", step(nfa, *var), coord(self.topic, e.seq), fmt_time(e.ts));
                }
                self.write_reason(&mut o, part, d.state, &view_of(&d.taken), &d.reason);
            }
        }
        more(&mut o, discarded, "  ");

        // Still open.
        let open: Vec<(&PartitionTrace, PartialView)> =
            parts.values().flat_map(|p| p.op.partial_matches(self.key).into_iter().map(move |v| (p, v))).collect();
        if open.is_empty() {
            o.push_str("\nPartial matches still open at the end: none\n");
        } else {
            let _ = writeln!(o, "\nPartial matches still open at the end: {}", open.len());
        }
        for (n, (part, view)) in open.iter().enumerate().take(LIST_LIMIT) {
            let taken = in_order(&view.events);
            let close = self.closes_at(view.state, &taken);
            let closes = match close {
                Some(t) => format!("its window closes at {}", fmt_time(t)),
                None => "no window: it stays open until it completes".to_owned(),
            };
            let _ = writeln!(o, "  #{} started {}; {closes}", n + 1, fmt_time(view.start_ts));
            self.write_partial(&mut o, part, view.state, &taken, close, false);
        }
        more(&mut o, open.len(), "  ");

        // Late.
        if late == 0 {
            o.push_str("\nLate events of the key: none\n");
        } else {
            let _ = writeln!(o, "\nLate events of the key (skipped, as the service skips them): {late}");
            let all: Vec<&(Arc<Event>, i64)> = parts.values().flat_map(|p| &p.late).collect();
            for (e, wm) in all.iter().take(LIST_LIMIT) {
                let _ = writeln!(
                    o,
                    "  {} at {}: the partition's watermark was already {}",
                    coord(self.topic, e.seq),
                    fmt_time(e.ts),
                    fmt_time(*wm)
                );
            }
            more(&mut o, all.len(), "  ");
        }
        o.push_str(
            "\nNot listed: partial matches that started and ended while the watermark passed several events \
             of the key at once (the trace compares the key's partial matches after each step of the \
             watermark).\n",
        );
        if !open.is_empty() && nfa.skip != engine::SkipStrategy::NoSkip {
            o.push_str(
                "Nor is a match the skip strategy holds back while an earlier-started partial match is still \
                 open (if there is one): the service emits it when that partial match ends.\n",
            );
        }
        o
    }

    /// Why a partial match waiting in `state` (having taken `view`) was discarded.
    fn write_reason(&self, o: &mut String, part: &PartitionTrace, state: StateId, view: &MatchEvents, reason: &Reason) {
        let nfa = self.nfa;
        let at = |e: &Event| format!("{} at {}", coord(self.topic, e.seq), fmt_time(e.ts));
        match reason {
            Reason::Negated(var, e) => {
                let _ = writeln!(o, "    ended by {}: the `not` element {} holds on it:", at(e), nfa.var_name(*var));
                let w = waiting(nfa, state);
                for (_, cond) in w.forbidden.iter().filter(|(v, _)| v == var).take(1) {
                    let mut lines = Vec::new();
                    parts(nfa, cond, &mut lines);
                    let mut shown = Vec::new();
                    for p in lines {
                        let _ =
                            writeln!(o, "      {:<5}  {}", verdict(&part_value(nfa, p, e, view)), part_text(nfa, p));
                        part_reads(nfa, p, &mut shown);
                    }
                    let values = shown_values(nfa, &shown, Some(e), view);
                    if !values.is_empty() {
                        let _ = writeln!(o, "             {}", values.join(", "));
                    }
                }
            }
            Reason::Blocked(e) => {
                let _ = writeln!(o, "    ended by {}: the pattern could neither take it nor skip it here", at(e));
                let w = waiting(nfa, state);
                let mut checked = String::new();
                self.write_checked(&mut checked, e, &w.takes, view, "    ");
                // The event's own line is the heading above.
                o.extend(checked.lines().skip(1).map(|l| format!("{l}\n")));
            }
            Reason::Skipped(matches) => {
                let ids: Vec<String> = matches
                    .iter()
                    .map(|&i| alert_id(nfa, self.key, &engine::alert::body(nfa, &part.matches[i].1).matched))
                    .collect();
                let _ = writeln!(
                    o,
                    "    cleared by the skip strategy (skip {}) when alert {} fired",
                    skip_text(nfa),
                    ids.join(", ")
                );
            }
            Reason::Budget => {
                o.push_str("    dropped by the per-key budget (engine.max_partial_matches_per_key)\n");
            }
            Reason::Unknown(events) if events.is_empty() => {
                o.push_str("    ended as time passed; the trace cannot tell why\n");
            }
            Reason::Unknown(events) => {
                let list: Vec<String> = events.iter().map(|e| at(e)).collect();
                let _ =
                    writeln!(o, "    ended while the pattern processed {}; the trace cannot tell why", list.join(", "));
            }
        }
    }

    /// `step 1/2 credit: payments/0@2 at 2025-...` per taken event.
    fn write_taken(&self, o: &mut String, events: &MatchEvents, indent: &str) {
        for (var, e) in in_order(events) {
            let _ = writeln!(o, "{indent}{}: {} at {}", step(self.nfa, var), coord(self.topic, e.seq), fmt_time(e.ts));
        }
    }

    /// When a partial match in `state` that took `taken` times out, if it can.
    fn closes_at(&self, state: StateId, taken: &[(VarId, Arc<Event>)]) -> Option<i64> {
        let first = self.nfa.window_ms.zip(taken.first()).map(|(w, (_, e))| e.ts.saturating_add(w));
        let prev = self.nfa.state(state).window_ms.zip(taken.last()).map(|(w, (_, e))| e.ts.saturating_add(w));
        match (first, prev) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A partial match's events, what it waits for, and the key's events it saw and let pass.
    fn write_partial(
        &self,
        o: &mut String,
        part: &PartitionTrace,
        state: StateId,
        taken: &[(VarId, Arc<Event>)],
        close: Option<i64>,
        timed_out: bool,
    ) {
        let nfa = self.nfa;
        let waits = if timed_out { "it waited for" } else { "it waits for" };
        o.push_str("    events taken:\n");
        for (var, e) in taken {
            let _ = writeln!(o, "      {}: {} at {}", step(nfa, *var), coord(self.topic, e.seq), fmt_time(e.ts));
        }
        let view = view_of(taken);
        let w = waiting(nfa, state);
        if w.pending {
            let _ = writeln!(o, "    {waits} its window to pass without the `not followed by` element");
        }
        for (var, cond) in &w.takes {
            let more = match w.more {
                Some(1) => " (1 more event completes a match)".to_owned(),
                Some(n) if n > 1 => format!(" (at least {n} more events to a match)"),
                _ => String::new(),
            };
            let _ = writeln!(o, "    {waits} {}{more}, which needs:", step(nfa, *var));
            let mut lines = Vec::new();
            parts(nfa, cond, &mut lines);
            let mut shown = Vec::new();
            for p in &lines {
                let _ = writeln!(o, "      {}", part_text(nfa, *p));
                part_reads(nfa, *p, &mut shown);
            }
            // What its events fix already (e.g. the amount a debit must reach).
            let fixed: Vec<Shown<'_>> = shown
                .into_iter()
                .filter(|s| matches!(s, Shown::Expr(e) if e.reads_match() && !reads_event(e)))
                .collect();
            let values = shown_values(nfa, &fixed, None, &view);
            if !values.is_empty() {
                let _ = writeln!(o, "    given its events: {}", values.join(", "));
            }
        }
        for (var, cond) in &w.forbidden {
            let _ = writeln!(o, "    the `not` element {} would end it: {}", nfa.var_name(*var), cond_text(nfa, cond));
        }
        // The key's events it saw after its last one (and before its window closed): none took it on.
        let Some((_, last)) = taken.last() else { return };
        let wm = part.op.watermark();
        let seen: Vec<&Arc<Event>> = part
            .events
            .iter()
            .filter(|e| (e.ts, e.seq) > (last.ts, last.seq) && e.ts <= wm && close.is_none_or(|c| e.ts < c))
            .collect();
        if w.takes.is_empty() {
            return;
        }
        if seen.is_empty() {
            o.push_str(if timed_out {
                "    the key had no further event before its window closed\n"
            } else {
                "    the pattern has seen no further event of the key\n"
            });
        } else {
            let _ = writeln!(o, "    events of the key it saw and did not take ({}):", seen.len());
            for e in seen.iter().take(LIST_LIMIT) {
                self.write_checked(o, e, &w.takes, &view, "      ");
            }
            more(o, seen.len(), "      ");
        }
        // Too late: the key's next event after the window closed, and whether it would have fitted.
        let Some(close) = close.filter(|_| timed_out) else { return };
        let Some(next) = part.events.iter().filter(|e| e.ts >= close && e.ts <= wm).min_by_key(|e| (e.ts, e.seq))
        else {
            return;
        };
        let fits: Vec<String> =
            w.takes.iter().filter(|(_, c)| c.holds(&nfa.conditions, next, &view)).map(|(v, _)| step(nfa, *v)).collect();
        let verdict = if fits.is_empty() {
            "it would not have fitted either".to_owned()
        } else {
            format!("it would have satisfied {}", fits.join(" or "))
        };
        let _ = writeln!(
            o,
            "    the key's next event, {} at {}, came {} after the window closed: {verdict}",
            coord(self.topic, next.seq),
            fmt_time(next.ts),
            fmt_duration(next.ts - close)
        );
    }

    /// Why `event` did not satisfy any of `takes`: each step's failing lines with what they read.
    fn write_checked(&self, o: &mut String, event: &Event, takes: &[(VarId, &Cond)], view: &MatchEvents, indent: &str) {
        let nfa = self.nfa;
        let _ = writeln!(o, "{indent}{} at {}:", coord(self.topic, event.seq), fmt_time(event.ts));
        for (var, cond) in takes {
            if cond.holds(&nfa.conditions, event, view) {
                let _ = writeln!(
                    o,
                    "{indent}  {}: the condition holds (the pattern branches here: another partial match took it)",
                    step(nfa, *var)
                );
                continue;
            }
            let _ = writeln!(o, "{indent}  not {}:", step(nfa, *var));
            let mut lines = Vec::new();
            parts(nfa, cond, &mut lines);
            for p in lines {
                let value = part_value(nfa, p, event, view);
                if value.is_true() {
                    continue;
                }
                let mut shown = Vec::new();
                part_reads(nfa, p, &mut shown);
                let values = shown_values(nfa, &shown, Some(event), view);
                let _ = writeln!(o, "{indent}    {:<5}  {}", verdict(&value), part_text(nfa, p));
                if !values.is_empty() {
                    let _ = writeln!(o, "{indent}           {}", values.join(", "));
                }
            }
        }
    }

    /// No event of the key started a partial match: why each failed the first step.
    fn write_never_started(&self, o: &mut String) {
        let w = waiting(self.nfa, self.nfa.start);
        let mut all: Vec<(&PartitionTrace, &Arc<Event>)> =
            self.partitions.values().flat_map(|p| p.events.iter().map(move |e| (p, e))).collect();
        all.retain(|(p, e)| e.ts <= p.op.watermark());
        if all.is_empty() {
            return;
        }
        let _ = writeln!(o, "  none of the key's events started the pattern ({} checked):", all.len());
        for (_, e) in all.iter().take(LIST_LIMIT) {
            self.write_checked(o, e, &w.takes, &Vec::new(), "    ");
        }
        more(o, all.len(), "    ");
    }
}

fn more(o: &mut String, total: usize, indent: &str) {
    if total > LIST_LIMIT {
        let _ = writeln!(o, "{indent}... and {} more", total - LIST_LIMIT);
    }
}

/// The skip strategy as the pattern writes it.
fn skip_text(nfa: &Nfa) -> String {
    match nfa.skip {
        engine::SkipStrategy::NoSkip => "none".to_owned(),
        engine::SkipStrategy::ToNext => "to next".to_owned(),
        engine::SkipStrategy::PastLastEvent => "past last event".to_owned(),
        engine::SkipStrategy::ToFirst(v) => format!("to first {}", nfa.var_name(v)),
        engine::SkipStrategy::ToLast(v) => format!("to last {}", nfa.var_name(v)),
    }
}

fn fmt_wm(wm: i64) -> String {
    if wm == i64::MIN {
        "none yet".to_owned()
    } else {
        fmt_time(wm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::partition::{Emit, Partition};
    use crate::core::plan::StreamPlan;
    use expect_test::{expect, Expect};
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The plan of the library pattern `name` alone, on its stream.
    fn plan(name: &str) -> Arc<StreamPlan> {
        let root = root();
        let cfg = crate::core::config::Config::load(&root.join("tripline.toml")).expect("config");
        let catalog = cfg.catalog(&root.join("tripline.toml")).expect("catalog");
        let text = std::fs::read_to_string(root.join(format!("patterns/{name}.tl"))).expect("pattern");
        let compiled = dsl::compile_source(&dsl::SourceFile::new(format!("{name}.tl"), text), &catalog);
        assert!(compiled.diagnostics.is_empty(), "{:?}", compiled.diagnostics);
        let nfas: Vec<Arc<Nfa>> = compiled.patterns.into_iter().map(|p| Arc::new(p.nfa)).collect();
        let stream = nfas[0].meta.stream.clone();
        StreamPlan::new(&stream, &cfg.streams[&stream], catalog.streams[&stream].clone(), &nfas)
    }

    /// The example events of pattern `name`: JSON lines, `seq` = line number, partition 0.
    fn events(plan: &StreamPlan, name: &str) -> Vec<Arc<Event>> {
        let text =
            std::fs::read_to_string(root().join(format!("patterns/examples/{name}.events.jsonl"))).expect("events");
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let j: Json = serde_json::from_str(l).expect("json");
                let ev = dsl::json_event(&plan.schema, j["type"].as_str(), &j["value"], i as u64 + 1);
                Arc::new(ev.expect("event"))
            })
            .collect()
    }

    /// The alert lines a replay of the examples writes (the whole range, end of time).
    fn alerts(plan: &Arc<StreamPlan>, events: &[Arc<Event>]) -> Vec<Json> {
        let mut part = Partition::new(plan.clone(), 0, OpConfig::default()).without_change_tracking();
        let mut emit = Vec::new();
        for e in events {
            part.process((**e).clone(), &mut emit);
        }
        part.finish(&mut emit);
        emit.into_iter()
            .filter_map(|e| match e {
                Emit::Alert { json, .. } => Some(serde_json::from_str(&json).expect("alert json")),
                Emit::Timeout { .. } => None,
            })
            .collect()
    }

    /// The events an alert names.
    fn matched(alert: &Json, events: &[Arc<Event>]) -> Vec<Arc<Event>> {
        let partition = alert["partition"].as_i64().expect("partition") as i32;
        let offsets: Vec<u64> = alert["match"]
            .as_object()
            .expect("match")
            .values()
            .flat_map(|l| l.as_array().expect("list").iter().map(|o| seq_of(partition, o.as_i64().expect("offset"))))
            .collect();
        events.iter().filter(|e| offsets.contains(&e.seq)).cloned().collect()
    }

    fn explain_first_alert(name: &str, golden: Expect) {
        let plan = plan(name);
        let events = events(&plan, name);
        let alerts = alerts(&plan, &events);
        let first = alerts.first().expect("the examples alert");
        let mut given = matched(first, &events);
        given.reverse(); // any order
        let text = alert(&plan.patterns[0], "payments", first, &given).expect("explained");
        golden.assert_eq(&text);
    }

    #[test]
    fn explains_a_rapid_movement_alert() {
        explain_first_alert(
            "rapid_movement",
            expect![[r#"
                Alert 064cbe44b042925dd1f4185ab8e4d708
                  pattern:  rapid_movement version 2 (hash dca2493120820dd7), severity high, live
                  about:    A large credit and at least 80% of it transferred on to someone else within 24 hours
                  key:      ACC-2001 (account_id)
                  time:     2025-03-03T11:15:00.000Z (event time of the match)
                  events:   2 (credit: 1, debit: 1), in the order the engine took them (event time, then offset)

                Event 1/2: step 1/2 credit
                  source:   payments/0@2
                  time:     2025-03-03T09:00:00.000Z
                  condition (every line must be true):
                    true   direction == "IN"
                    true   amount >= 5000
                    true   channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                  values:
                    direction = "IN"
                    amount = 12000.0
                    channel = "TRANSFER"
                  holds:    true

                Event 2/2: step 2/2 debit
                  source:   payments/0@7
                  time:     2025-03-03T11:15:00.000Z
                  condition (every line must be true):
                    true   direction == "OUT"
                    true   amount >= 0.8 * credit.amount
                    true   channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE", "ATM_WITHDRAWAL")
                    true   counterparty_account_id != credit.counterparty_account_id
                  values:
                    direction = "OUT"
                    amount = 10400.0
                    0.8 * credit.amount = 9600.0
                    credit.amount = 12000.0
                    channel = "INSTANT_TRANSFER"
                    counterparty_account_id = "LT121000011101001000"
                    credit.counterparty_account_id = "GB29NWBK60161331926819"
                  holds:    true
                  window:   within 1d of the previous event: 2h 15m after event 1 (inside)

                Message: Account ACC-2001 received 12000.0 EUR from GB29NWBK60161331926819 and sent 10400.0 EUR (87%) to LT121000011101001000 135 minutes later
            "#]],
        );
    }

    #[test]
    fn explains_a_structuring_alert() {
        explain_first_alert(
            "structuring",
            expect![[r#"
                Alert 87e7b57520b9e9f636530322fd11642a
                  pattern:  structuring version 1 (hash 42ae3f02a00c2912), severity high, live
                  about:    Three cash deposits just under the 10,000 reporting threshold within 72 hours
                  key:      ACC-1001 (account_id)
                  time:     2025-03-04T15:30:00.000Z (event time of the match)
                  events:   3 (deposit: 3), in the order the engine took them (event time, then offset)

                Event 1/3: step 1/1 deposit (1st of its 3 events)
                  source:   payments/0@2
                  time:     2025-03-03T09:12:00.000Z
                  condition (every line must be true):
                    true   direction == "IN"
                    true   channel == "CASH_DEPOSIT"
                    true   amount >= 8000
                    true   amount < 10000
                    true   not (channel == "CASH_DEPOSIT" and amount >= 10000)
                  values:
                    direction = "IN"
                    channel = "CASH_DEPOSIT"
                    amount = 9500.0
                  holds:    true

                Event 2/3: step 1/1 deposit (2nd of its 3 events)
                  source:   payments/0@10
                  time:     2025-03-04T10:05:00.000Z
                  condition (every line must be true):
                    true   direction == "IN"
                    true   channel == "CASH_DEPOSIT"
                    true   amount >= 8000
                    true   amount < 10000
                    true   not (channel == "CASH_DEPOSIT" and amount >= 10000)
                  values:
                    direction = "IN"
                    channel = "CASH_DEPOSIT"
                    amount = 9800.0
                  holds:    true
                  window:   within 3d of the first event: 1d 53m after event 1 (inside)

                Event 3/3: step 1/1 deposit (3rd of its 3 events)
                  source:   payments/0@11
                  time:     2025-03-04T15:30:00.000Z
                  condition (every line must be true):
                    true   direction == "IN"
                    true   channel == "CASH_DEPOSIT"
                    true   amount >= 8000
                    true   amount < 10000
                    true   not (channel == "CASH_DEPOSIT" and amount >= 10000)
                  values:
                    direction = "IN"
                    channel = "CASH_DEPOSIT"
                    amount = 8700.0
                  holds:    true
                  window:   within 3d of the first event: 1d 6h 18m after event 1 (inside)

                Message: Account ACC-1001: 3 cash deposits just under 10,000 totalling 28000.0 USD at 3 branch(es)
            "#]],
        );
    }

    fn trace(name: &str, key: &str, open_end: bool, golden: Expect) {
        let plan = plan(name);
        let events = events(&plan, name);
        let mut t = KeyTrace::new(
            plan.patterns[0].clone(),
            Key::Str(Arc::from(key)),
            plan.out_of_orderness,
            OpConfig::default(),
        );
        for e in events {
            t.feed(0, e);
        }
        golden.assert_eq(&t.finish(&plan.topic, open_end));
    }

    #[test]
    fn traces_a_key_that_did_not_alert() {
        // ACC-2002: a large credit; its debits are too small or go back to the sender, and the
        // large one comes after 24 hours.
        trace(
            "rapid_movement",
            "ACC-2002",
            false,
            expect![[r#"
                Key ACC-2002 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
                  "A large credit and at least 80% of it transferred on to someone else within 24 hours"
                Result: no alert for this key in the range.

                Range: 13 events read from topic payments (partition 0); 6 of them are the key's: 6 on time, 0 late.
                The range ends at the end of time: every window closed.

                Funnel (partial matches of this key that reached each step):
                  step 1/2 credit: 1
                  step 2/2 debit:  0
                  matches:         0

                Timed-out partial matches: 1
                  #1 started 2025-03-03T08:30:00.000Z; its window closed at 2025-03-04T08:30:00.000Z
                    events taken:
                      step 1/2 credit: payments/0@1 at 2025-03-03T08:30:00.000Z
                    it waited for step 2/2 debit (1 more event completes a match), which needs:
                      direction == "OUT"
                      amount >= 0.8 * credit.amount
                      channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE", "ATM_WITHDRAWAL")
                      counterparty_account_id != credit.counterparty_account_id
                    given its events: 0.8 * credit.amount = 16000.0, credit.amount = 20000.0, credit.counterparty_account_id = "DE89370400440532013000"
                    events of the key it saw and did not take (2):
                      payments/0@5 at 2025-03-03T10:00:00.000Z:
                        not step 2/2 debit:
                          false  amount >= 0.8 * credit.amount
                                 amount = 15000.0, 0.8 * credit.amount = 16000.0, credit.amount = 20000.0
                      payments/0@8 at 2025-03-03T12:00:00.000Z:
                        not step 2/2 debit:
                          false  counterparty_account_id != credit.counterparty_account_id
                                 counterparty_account_id = "DE89370400440532013000", credit.counterparty_account_id = "DE89370400440532013000"
                    the key's next event, payments/0@11 at 2025-03-04T09:00:00.000Z, came 30m after the window closed: it would have satisfied step 2/2 debit

                Partial matches discarded on the way: none

                Partial matches still open at the end: none

                Late events of the key: none

                Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            "#]],
        );
    }

    #[test]
    fn traces_a_key_that_alerted() {
        trace(
            "rapid_movement",
            "ACC-2001",
            false,
            expect![[r#"
                Key ACC-2001 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
                  "A large credit and at least 80% of it transferred on to someone else within 24 hours"
                Result: ALERTED: 1 alert(s) for this key in the range.

                Range: 13 events read from topic payments (partition 0); 4 of them are the key's: 4 on time, 0 late.
                The range ends at the end of time: every window closed.

                Alerts (1):
                  #1 alert 064cbe44b042925dd1f4185ab8e4d708 at 2025-03-03T11:15:00.000Z
                     step 1/2 credit: payments/0@2 at 2025-03-03T09:00:00.000Z
                     step 2/2 debit: payments/0@7 at 2025-03-03T11:15:00.000Z
                     message: Account ACC-2001 received 12000.0 EUR from GB29NWBK60161331926819 and sent 10400.0 EUR (87%) to LT121000011101001000 135 minutes later

                Funnel (partial matches of this key that reached each step):
                  step 1/2 credit: 1
                  step 2/2 debit:  1
                  matches:         1

                Timed-out partial matches: none

                Partial matches discarded on the way: none

                Partial matches still open at the end: none

                Late events of the key: none

                Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            "#]],
        );
    }

    #[test]
    fn traces_a_looping_key_that_did_not_alert() {
        // ACC-1002: cash deposits, but never three in the band within 72 hours.
        trace(
            "structuring",
            "ACC-1002",
            false,
            expect![[r#"
                Key ACC-1002 (account_id) under pattern structuring version 1 (hash 42ae3f02a00c2912)
                  "Three cash deposits just under the 10,000 reporting threshold within 72 hours"
                Result: no alert for this key in the range.

                Range: 17 events read from topic payments (partition 0); 5 of them are the key's: 5 on time, 0 late.
                The range ends at the end of time: every window closed.

                Funnel (partial matches of this key that reached each step):
                  step 1/1 deposit: 3
                  matches:          0

                Timed-out partial matches: 3
                  #1 started 2025-03-03T09:00:00.000Z; its window closed at 2025-03-06T09:00:00.000Z
                    events taken:
                      step 1/1 deposit: payments/0@1 at 2025-03-03T09:00:00.000Z
                      step 1/1 deposit: payments/0@5 at 2025-03-03T13:00:00.000Z
                    it waited for step 1/1 deposit (1 more event completes a match), which needs:
                      direction == "IN"
                      channel == "CASH_DEPOSIT"
                      amount >= 8000
                      amount < 10000
                      not (channel == "CASH_DEPOSIT" and amount >= 10000)
                    events of the key it saw and did not take (2):
                      payments/0@7 at 2025-03-03T16:20:00.000Z:
                        not step 1/1 deposit:
                          false  channel == "CASH_DEPOSIT"
                                 channel = "TRANSFER"
                      payments/0@9 at 2025-03-04T10:00:00.000Z:
                        not step 1/1 deposit:
                          false  amount >= 8000
                                 amount = 7900.0
                    the key's next event, payments/0@17 at 2025-03-06T10:00:00.000Z, came 1h after the window closed: it would have satisfied step 1/1 deposit
                  #2 started 2025-03-03T13:00:00.000Z; its window closed at 2025-03-06T13:00:00.000Z
                    events taken:
                      step 1/1 deposit: payments/0@5 at 2025-03-03T13:00:00.000Z
                      step 1/1 deposit: payments/0@17 at 2025-03-06T10:00:00.000Z
                    it waited for step 1/1 deposit (1 more event completes a match), which needs:
                      direction == "IN"
                      channel == "CASH_DEPOSIT"
                      amount >= 8000
                      amount < 10000
                      not (channel == "CASH_DEPOSIT" and amount >= 10000)
                    the key had no further event before its window closed
                  #3 started 2025-03-06T10:00:00.000Z; its window closed at 2025-03-09T10:00:00.000Z
                    events taken:
                      step 1/1 deposit: payments/0@17 at 2025-03-06T10:00:00.000Z
                    it waited for step 1/1 deposit (at least 2 more events to a match), which needs:
                      direction == "IN"
                      channel == "CASH_DEPOSIT"
                      amount >= 8000
                      amount < 10000
                      not (channel == "CASH_DEPOSIT" and amount >= 10000)
                    the key had no further event before its window closed

                Partial matches discarded on the way: none

                Partial matches still open at the end: none

                Late events of the key: none

                Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            "#]],
        );
    }

    #[test]
    fn traces_partial_matches_ended_by_an_until_and_by_the_skip_strategy() {
        // ACC-1003: a 12,000 cash deposit (line 8) ends the runs before it (`until`); the alert's
        // `skip past last event` clears the run that started inside it.
        trace(
            "structuring",
            "ACC-1003",
            false,
            expect![[r#"
            Key ACC-1003 (account_id) under pattern structuring version 1 (hash 42ae3f02a00c2912)
              "Three cash deposits just under the 10,000 reporting threshold within 72 hours"
            Result: ALERTED: 1 alert(s) for this key in the range.

            Range: 17 events read from topic payments (partition 0); 6 of them are the key's: 6 on time, 0 late.
            The range ends at the end of time: every window closed.

            Alerts (1):
              #1 alert 01d43f49e3966060ca8872bd3d3baa34 at 2025-03-05T17:05:00.000Z
                 step 1/1 deposit: payments/0@12 at 2025-03-04T16:00:00.000Z
                 step 1/1 deposit: payments/0@14 at 2025-03-05T11:20:00.000Z
                 step 1/1 deposit: payments/0@16 at 2025-03-05T17:05:00.000Z
                 message: Account ACC-1003: 3 cash deposits just under 10,000 totalling 27200.0 USD at 3 branch(es)

            Funnel (partial matches of this key that reached each step):
              step 1/1 deposit: 5
              matches:          1

            Timed-out partial matches: none

            Partial matches discarded on the way: 3
              #1 started 2025-03-03T10:30:00.000Z
                events taken:
                  step 1/1 deposit: payments/0@3 at 2025-03-03T10:30:00.000Z
                  step 1/1 deposit: payments/0@6 at 2025-03-03T14:45:00.000Z
                ended by payments/0@8 at 2025-03-04T09:10:00.000Z: the pattern could neither take it nor skip it here
                  not step 1/1 deposit:
                    false  amount < 10000
                           amount = 12000.0
                    false  not (channel == "CASH_DEPOSIT" and amount >= 10000)
                           channel = "CASH_DEPOSIT", amount = 12000.0
              #2 started 2025-03-03T14:45:00.000Z
                events taken:
                  step 1/1 deposit: payments/0@6 at 2025-03-03T14:45:00.000Z
                ended by payments/0@8 at 2025-03-04T09:10:00.000Z: the pattern could neither take it nor skip it here
                  not step 1/1 deposit:
                    false  amount < 10000
                           amount = 12000.0
                    false  not (channel == "CASH_DEPOSIT" and amount >= 10000)
                           channel = "CASH_DEPOSIT", amount = 12000.0
              #3 started 2025-03-05T11:20:00.000Z
                events taken:
                  step 1/1 deposit: payments/0@14 at 2025-03-05T11:20:00.000Z
                  step 1/1 deposit: payments/0@16 at 2025-03-05T17:05:00.000Z
                cleared by the skip strategy (skip past last event) when alert 01d43f49e3966060ca8872bd3d3baa34 fired

            Partial matches still open at the end: none

            Late events of the key: none

            Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
        "#]],
        );
    }

    #[test]
    fn traces_a_partial_match_ended_by_a_not_element() {
        // ACC-3002: a password reset followed by a successful MFA (the `not` element).
        trace(
            "ato_after_password_reset",
            "ACC-3002",
            false,
            expect![[r#"
                Key ACC-3002 (account_id) under pattern ato_after_password_reset version 1 (hash d30f82098089327c)
                  "Password reset followed by a profile change or a withdrawal without a successful MFA in between"
                Result: no alert for this key in the range.

                Range: 16 events read from topic account_events (partition 0); 6 of them are the key's: 6 on time, 0 late.
                The range ends at the end of time: every window closed.

                Funnel (partial matches of this key that reached each step):
                  step 1/2 reset:  2
                  step 2/2 action: 0
                  matches:         0

                Timed-out partial matches: 1
                  #1 started 2025-03-05T08:00:00.000Z; its window closed at 2025-03-06T08:00:00.000Z
                    events taken:
                      step 1/2 reset: account_events/0@15 at 2025-03-05T08:00:00.000Z
                    it waited for step 2/2 action (1 more event completes a match), which needs:
                      event_type in ("profile_change", "withdrawal")
                    the `not` element mfa would end it: type MfaVerification and success == true
                    the key had no further event before its window closed
                    the key's next event, account_events/0@16 at 2025-03-06T09:00:00.000Z, came 1h after the window closed: it would have satisfied step 2/2 action

                Partial matches discarded on the way: 1
                  #1 started 2025-03-03T10:00:00.000Z
                    events taken:
                      step 1/2 reset: account_events/0@3 at 2025-03-03T10:00:00.000Z
                    ended by account_events/0@4 at 2025-03-03T10:01:00.000Z: the `not` element mfa holds on it:
                      true   type MfaVerification
                      true   success == true
                             type = MfaVerification, success = true

                Partial matches still open at the end: none

                Late events of the key: none

                Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            "#]],
        );
    }

    #[test]
    fn traces_a_key_with_an_open_end() {
        // Cut after ACC-2002's refund (line 8): the partial match is still open.
        let plan = plan("rapid_movement");
        let events = events(&plan, "rapid_movement");
        let mut t = KeyTrace::new(
            plan.patterns[0].clone(),
            Key::Str(Arc::from("ACC-2002")),
            plan.out_of_orderness,
            OpConfig::default(),
        );
        for e in events.into_iter().take(9) {
            t.feed(0, e);
        }
        expect![[r#"
            Key ACC-2002 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
              "A large credit and at least 80% of it transferred on to someone else within 24 hours"
            Result: no alert for this key in the range.

            Range: 9 events read from topic payments (partition 0); 3 of them are the key's: 3 on time, 0 late.
            Open end: the input goes on, so the windows still open stay open.
            Partition 0's watermark at the end: 2025-03-03T11:59:54.999Z; events of the key after it, not yet seen by the pattern: 1
              payments/0@8 at 2025-03-03T12:00:00.000Z

            Funnel (partial matches of this key that reached each step):
              step 1/2 credit: 1
              step 2/2 debit:  0
              matches:         0

            Timed-out partial matches: none

            Partial matches discarded on the way: none

            Partial matches still open at the end: 1
              #1 started 2025-03-03T08:30:00.000Z; its window closes at 2025-03-04T08:30:00.000Z
                events taken:
                  step 1/2 credit: payments/0@1 at 2025-03-03T08:30:00.000Z
                it waits for step 2/2 debit (1 more event completes a match), which needs:
                  direction == "OUT"
                  amount >= 0.8 * credit.amount
                  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE", "ATM_WITHDRAWAL")
                  counterparty_account_id != credit.counterparty_account_id
                given its events: 0.8 * credit.amount = 16000.0, credit.amount = 20000.0, credit.counterparty_account_id = "DE89370400440532013000"
                events of the key it saw and did not take (1):
                  payments/0@5 at 2025-03-03T10:00:00.000Z:
                    not step 2/2 debit:
                      false  amount >= 0.8 * credit.amount
                             amount = 15000.0, 0.8 * credit.amount = 16000.0, credit.amount = 20000.0

            Late events of the key: none

            Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            Nor is a match the skip strategy holds back while an earlier-started partial match is still open (if there is one): the service emits it when that partial match ends.
        "#]].assert_eq(&t.finish("payments", true));
    }

    #[test]
    fn traces_a_key_without_events_and_one_that_never_started() {
        let plan = plan("rapid_movement");
        let events = events(&plan, "rapid_movement");
        let mut t = KeyTrace::new(
            plan.patterns[0].clone(),
            Key::Str(Arc::from("ACC-9999")),
            plan.out_of_orderness,
            OpConfig::default(),
        );
        for e in &events {
            t.feed(0, e.clone());
        }
        expect![[r#"
            Key ACC-9999 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
              "A large credit and at least 80% of it transferred on to someone else within 24 hours"
            Result: no events of key ACC-9999 in the range.

            Range: 13 events read from topic payments (partition 0); 0 of them are the key's: 0 on time, 0 late.
            The range ends at the end of time: every window closed.
        "#]]
        .assert_eq(&t.finish("payments", false));
        // The structuring examples under rapid_movement: cash deposits are no credit.
        let cash = self::events(&plan, "structuring");
        let mut t = KeyTrace::new(
            plan.patterns[0].clone(),
            Key::Str(Arc::from("ACC-1001")),
            plan.out_of_orderness,
            OpConfig::default(),
        );
        for e in cash {
            t.feed(0, e);
        }
        expect![[r#"
            Key ACC-1001 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
              "A large credit and at least 80% of it transferred on to someone else within 24 hours"
            Result: no alert for this key in the range.

            Range: 17 events read from topic payments (partition 0); 6 of them are the key's: 6 on time, 0 late.
            The range ends at the end of time: every window closed.

            Funnel (partial matches of this key that reached each step):
              step 1/2 credit: 0
              step 2/2 debit:  0
              matches:         0
              none of the key's events started the pattern (6 checked):
                payments/0@2 at 2025-03-03T09:12:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"
                payments/0@4 at 2025-03-03T11:40:00.000Z:
                  not step 1/2 credit:
                    false  direction == "IN"
                           direction = "OUT"
                    false  amount >= 5000
                           amount = 45.2
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CARD"
                payments/0@10 at 2025-03-04T10:05:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"
                payments/0@11 at 2025-03-04T15:30:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"
                payments/0@13 at 2025-03-05T09:45:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"
                payments/0@15 at 2025-03-05T12:10:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"

            Timed-out partial matches: none

            Partial matches discarded on the way: none

            Partial matches still open at the end: none

            Late events of the key: none

            Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
        "#]].assert_eq(&t.finish("payments", false));
    }

    #[test]
    fn late_events_are_skipped_and_listed() {
        let plan = plan("rapid_movement");
        let events = events(&plan, "rapid_movement");
        let mut t = KeyTrace::new(
            plan.patterns[0].clone(),
            Key::Str(Arc::from("ACC-2001")),
            plan.out_of_orderness,
            OpConfig::default(),
        );
        // ACC-2001's credit (line 2) arrives after line 4 moved the watermark past it: offsets
        // in arrival order, so the credit is at offset 4.
        let order = [0, 2, 3, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        for (offset, i) in order.into_iter().enumerate() {
            let e = Event { seq: seq_of(0, offset as i64 + 1), ..(*events[i]).clone() };
            t.feed(0, Arc::new(e));
        }
        expect![[r#"
            Key ACC-2001 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
              "A large credit and at least 80% of it transferred on to someone else within 24 hours"
            Result: no alert for this key in the range.

            Range: 13 events read from topic payments (partition 0); 4 of them are the key's: 3 on time, 1 late.
            The range ends at the end of time: every window closed.

            Funnel (partial matches of this key that reached each step):
              step 1/2 credit: 0
              step 2/2 debit:  0
              matches:         0
              none of the key's events started the pattern (3 checked):
                payments/0@3 at 2025-03-03T09:40:00.000Z:
                  not step 1/2 credit:
                    false  direction == "IN"
                           direction = "OUT"
                    false  amount >= 5000
                           amount = 35.9
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CARD"
                payments/0@7 at 2025-03-03T11:15:00.000Z:
                  not step 1/2 credit:
                    false  direction == "IN"
                           direction = "OUT"
                payments/0@10 at 2025-03-03T13:00:00.000Z:
                  not step 1/2 credit:
                    false  direction == "IN"
                           direction = "OUT"
                    false  amount >= 5000
                           amount = 1200.0

            Timed-out partial matches: none

            Partial matches discarded on the way: none

            Partial matches still open at the end: none

            Late events of the key (skipped, as the service skips them): 1
              payments/0@4 at 2025-03-03T09:00:00.000Z: the partition's watermark was already 2025-03-03T09:39:54.999Z

            Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
        "#]].assert_eq(&t.finish("payments", false));
    }

    /// Over every library pattern's examples: each key's trace finds exactly the alerts the
    /// replay writes for that key, and every alert explains without a problem.
    #[test]
    fn every_example_key_trace_agrees_with_the_replay() {
        let mut names: Vec<String> = std::fs::read_dir(root().join("patterns"))
            .expect("patterns")
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".tl").map(str::to_owned))
            .collect();
        names.sort();
        assert!(names.len() >= 10, "{names:?}");
        let mut checked = 0;
        for name in &names {
            let plan = plan(name);
            let nfa = &plan.patterns[0];
            let events = events(&plan, name);
            let alerts = alerts(&plan, &events);
            for a in &alerts {
                let text = alert(nfa, &plan.topic, a, &matched(a, &events)).expect("explained");
                for problem in ["FALSE", "PROBLEM", "OUTSIDE"] {
                    assert!(!text.contains(problem), "{name}:\n{text}");
                }
            }
            let mut keys: Vec<Key> = events.iter().map(|e| Key::of(e.field(nfa.meta.key))).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let mut t = KeyTrace::new(nfa.clone(), key.clone(), plan.out_of_orderness, OpConfig::default());
                for e in &events {
                    t.feed(0, e.clone());
                }
                let report = t.finish(&plan.topic, false);
                let traced: Vec<&str> = report
                    .lines()
                    .filter_map(|l| l.trim_start().strip_prefix('#')?.split_once(" alert ")?.1.split(' ').next())
                    .collect();
                let replayed: Vec<&str> = alerts
                    .iter()
                    .filter(|a| a["key"].as_str() == Some(key.to_string().as_str()))
                    .map(|a| a["alert_id"].as_str().expect("id"))
                    .collect();
                assert_eq!(traced, replayed, "{name}, key {key}:\n{report}");
                checked += replayed.len();
            }
        }
        assert!(checked >= names.len(), "every example alerts: {checked} alerts checked");
    }

    #[test]
    fn alert_errors() {
        let plan = plan("rapid_movement");
        let events = events(&plan, "rapid_movement");
        let first = alerts(&plan, &events).into_iter().next().expect("an alert");
        let given = matched(&first, &events);
        let nfa = &plan.patterns[0];
        let err = |alert: &Json, events: &[Arc<Event>]| {
            super::alert(nfa, "payments", alert, events).expect_err("an error").to_string()
        };
        // A missing event.
        expect!["event payments/0@7 (debit) of the alert is missing (1 event(s) given)"]
            .assert_eq(&err(&first, &given[..1]));
        // Another pattern version (another content hash).
        let mut other = first.clone();
        other["hash"] = "0123456789abcdef".into();
        other["version"] = 1.into();
        expect!["the alert was made by rapid_movement with content hash 0123456789abcdef (version 1); this pattern compiles to hash dca2493120820dd7 (version 2): explain the alert with the pattern the service ran"].assert_eq(&err(&other, &given));
        // Another pattern.
        let mut other = first.clone();
        other["pattern"] = "structuring".into();
        expect!["the alert is of pattern `structuring`, not `rapid_movement`"].assert_eq(&err(&other, &given));
        // Events of another key at the alert's coordinates.
        let mut moved = first.clone();
        moved["match"]["credit"] = serde_json::json!([1]);
        expect!["event payments/0@1 has account_id ACC-2002, the alert's key is ACC-2001: not the alert's event"]
            .assert_eq(&err(&moved, &events));
        // The id does not fit (another key's alert, say).
        let mut forged = first.clone();
        forged["alert_id"] = "00000000000000000000000000000000".into();
        expect!["the alert id 00000000000000000000000000000000 does not belong to these events under this pattern (they give 064cbe44b042925dd1f4185ab8e4d708)"].assert_eq(&err(&forged, &given));
        // Not an alert line.
        expect!["the alert has no `hash`"].assert_eq(&err(&serde_json::json!({"pattern": "rapid_movement"}), &given));
    }

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
