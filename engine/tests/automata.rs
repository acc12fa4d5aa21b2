//! The runtime on automata made with `NfaBuilder` (no compiler): each automaton has the shape
//! `dsl::compile` gives its pattern (`tripline explain --nfa`), and the outputs are FlinkCEP's.

use std::sync::Arc;

use engine::runtime::{Config, Key, MatchEvents, Operator, Output, RunState};
use engine::{
    Action, BinOp, Cond, Event, Expr, FieldId, Mode, Nfa, NfaBuilder, PatternMeta, Severity, SkipStrategy, StateId,
    StateKind, TypeId, Value, VarId, VarInfo,
};

/// Events have two fields: `k` (the key) and `name`.
const NAME: FieldId = FieldId(1);

/// A builder with the stream's tables, the variables `vars` and, for each, the condition
/// `name == "<var>"` (condition i is variable i's).
fn builder(vars: &[(&str, bool)]) -> (NfaBuilder, Vec<VarId>) {
    let mut b = NfaBuilder::new(PatternMeta {
        name: "p".to_owned(),
        description: String::new(),
        version: 1,
        severity: Severity::Medium,
        mode: Mode::Live,
        stream: "s".to_owned(),
        key: FieldId(0),
        hash: String::new(),
    });
    b.add_field("k");
    assert_eq!(b.add_field("name"), NAME);
    b.add_type("T");
    let mut ids = Vec::new();
    for &(name, looping) in vars {
        ids.push(b.add_var(VarInfo { name: name.to_owned(), looping, negated: false }));
        let is = Expr::Binary(BinOp::Eq, Box::new(Expr::Field(NAME)), Box::new(Expr::Lit(Value::str(name))));
        b.add_condition(is);
    }
    (b, ids)
}

fn holds(i: u32) -> Cond {
    Cond::Holds(engine::CondId(i))
}

/// `a next b` (strict) or `a followed by b` (relaxed).
fn a_then_b(relaxed: bool, configure: impl FnOnce(&mut NfaBuilder)) -> Arc<Nfa> {
    let (mut b, v) = builder(&[("a", false), ("b", false)]);
    let end = b.add_state("$end", None, StateKind::Final);
    let sb = b.add_state("b", Some(v[1]), StateKind::Normal);
    let sa = b.add_state("a", Some(v[0]), StateKind::Normal);
    b.add_edge(sb, Action::Take, end, holds(1));
    if relaxed {
        b.add_edge(sb, Action::Ignore, sb, Cond::negate(holds(1)));
    }
    b.add_edge(sa, Action::Take, sb, holds(0)).start(sa);
    configure(&mut b);
    Arc::new(b.build().expect("valid"))
}

/// `a followed by b+`.
fn a_then_loop() -> Arc<Nfa> {
    let (mut b, v) = builder(&[("a", false), ("b", true)]);
    let end = b.add_state("$end", None, StateKind::Final);
    let looping = b.add_state("b", Some(v[1]), StateKind::Normal);
    let ignoring = b.add_state("b:0", Some(v[1]), StateKind::Normal);
    let first = b.add_state("b:1", Some(v[1]), StateKind::Normal);
    let sa = b.add_state("a", Some(v[0]), StateKind::Normal);
    b.add_edge(looping, Action::Proceed, end, Cond::True)
        .add_edge(looping, Action::Take, looping, holds(1))
        .add_edge(looping, Action::Ignore, ignoring, Cond::negate(holds(1)))
        .add_edge(ignoring, Action::Take, looping, holds(1))
        .add_edge(ignoring, Action::Ignore, ignoring, Cond::negate(holds(1)))
        .add_edge(first, Action::Take, looping, holds(1))
        .add_edge(first, Action::Ignore, first, Cond::negate(holds(1)))
        .add_edge(sa, Action::Take, first, holds(0))
        .start(sa);
    assert_eq!(sa, StateId(4));
    Arc::new(b.build().expect("valid"))
}

fn event(seq: u64, ts: i64, name: &str) -> Arc<Event> {
    Arc::new(Event { seq, ts, kind: TypeId(0), fields: vec![Value::str("k"), Value::str(name)].into() })
}

/// A match as `var: seqs` per variable, in match order.
fn show(nfa: &Nfa, events: &MatchEvents) -> String {
    let parts: Vec<String> = events
        .iter()
        .map(|(v, l)| {
            let seqs: Vec<String> = l.iter().map(|e| e.seq.to_string()).collect();
            format!("{}: {}", nfa.var_name(*v), seqs.join(" "))
        })
        .collect();
    parts.join(", ")
}

/// Feeds `names` (event i has seq i + 1 and ts i + 1) as FlinkCEP's NFA test harness does:
/// time advances to each event's timestamp, then the event is processed.
fn run(nfa: &Nfa, names: &[&str]) -> Vec<String> {
    let mut st = RunState::new(nfa);
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let ts = i as i64 + 1;
        let (pending, _, _) = st.advance_time(nfa, ts, false);
        let mut matches = st.process(nfa, event(ts as u64, ts, name), ts);
        matches.extend(pending);
        out.extend(matches.iter().map(|m| show(nfa, &m.events)));
    }
    out
}

#[test]
fn strict_contiguity_needs_the_next_event_relaxed_skips_the_others() {
    let strict = a_then_b(false, |_| {});
    let relaxed = a_then_b(true, |_| {});
    assert_eq!(run(&strict, &["a", "b"]), ["a: 1, b: 2"]);
    assert!(run(&strict, &["a", "c", "b"]).is_empty());
    assert_eq!(run(&relaxed, &["a", "c", "b"]), ["a: 1, b: 3"]);
    // A second `a` ends the strict run of the first; the relaxed one keeps both.
    assert_eq!(run(&strict, &["a", "a", "b"]), ["a: 2, b: 3"]);
    assert_eq!(run(&relaxed, &["a", "a", "b"]), ["a: 1, b: 3", "a: 2, b: 3"]);
}

#[test]
fn a_loop_at_the_end_emits_every_prefix() {
    let nfa = a_then_loop();
    assert_eq!(run(&nfa, &["a", "b", "x", "b", "b"]), ["a: 1, b: 2", "a: 1, b: 2 4", "a: 1, b: 2 4 5"]);
}

#[test]
fn after_a_match_past_last_event_skips_what_started_inside_it() {
    let no_skip = a_then_b(true, |_| {});
    let past_last = a_then_b(true, |b| {
        b.skip(SkipStrategy::PastLastEvent);
    });
    let to_first_b = a_then_b(true, |b| {
        b.skip(SkipStrategy::ToFirst(VarId(1)));
    });
    let input = ["a", "a", "b", "a", "b"];
    assert_eq!(run(&no_skip, &input), ["a: 1, b: 3", "a: 2, b: 3", "a: 4, b: 5"]);
    assert_eq!(run(&past_last, &input), ["a: 1, b: 3", "a: 4, b: 5"]);
    // Skipping to the match's first `b` prunes what started before it: the run of `a: 2`.
    assert_eq!(run(&to_first_b, &input), ["a: 1, b: 3", "a: 4, b: 5"]);
}

fn outputs(out: &[Output], nfa: &Nfa) -> Vec<String> {
    out.iter()
        .map(|o| match o {
            Output::Match { key, ts, events } => format!("match {key}@{ts} {}", show(nfa, events)),
            Output::Timeout { key, ts, events } => format!("timeout {key}@{ts} {}", show(nfa, events)),
            Output::Late { key, event, watermark } => format!("late {key} seq {} wm {watermark}", event.seq),
        })
        .collect()
}

#[test]
fn a_partial_match_times_out_when_its_window_passes() {
    let nfa = a_then_b(true, |b| {
        b.window(10);
    });
    let mut op = Operator::new(nfa.clone(), Config { timeouts: true, ..Config::default() });
    let key = Key::Str("k".into());
    let mut out = Vec::new();
    op.process(key.clone(), event(1, 100, "a"), &mut out);
    op.advance_watermark(109, &mut out);
    assert!(out.is_empty(), "{:?}", outputs(&out, &nfa));
    assert_eq!(op.active_partial_matches(), 1);
    // The window is half-open: at 110 the run is 10ms old and expires, reported at 100 + 10.
    op.advance_watermark(110, &mut out);
    op.process(key.clone(), event(2, 111, "b"), &mut out);
    op.process(key.clone(), event(3, 200, "a"), &mut out);
    op.process(key.clone(), event(4, 209, "b"), &mut out);
    op.advance_watermark(i64::MAX, &mut out);
    assert_eq!(outputs(&out, &nfa), ["timeout k@110 a: 1", "match k@209 a: 3, b: 4"]);
    assert_eq!((op.stats().timeouts, op.stats().matches), (1, 1));
}

#[test]
fn events_at_or_behind_the_watermark_are_late() {
    let nfa = a_then_b(true, |_| {});
    let mut op = Operator::new(nfa.clone(), Config::default());
    let key = Key::Str("k".into());
    let mut out = Vec::new();
    op.process(key.clone(), event(1, 40, "a"), &mut out);
    op.advance_watermark(50, &mut out);
    op.process(key.clone(), event(2, 50, "b"), &mut out);
    op.process(key.clone(), event(3, 49, "b"), &mut out);
    op.process(key.clone(), event(4, 51, "b"), &mut out);
    op.advance_watermark(51, &mut out);
    assert_eq!(outputs(&out, &nfa), ["late k seq 2 wm 50", "late k seq 3 wm 50", "match k@51 a: 1, b: 4"]);
    assert_eq!(op.stats().late, 2);
}
