//! The keyed event-time operator: late events, the partial-match budget, idle keys, determinism.

use std::sync::Arc;

use engine::runtime::{Config, Key, Operator, Output};
use engine::{Event, TypeId, Value};
use testkit::compile_one as nfa;

/// A cep_events event: id (the key), name, price, ts.
fn ev(seq: u64, id: i64, name: &str, ts: i64) -> (Key, Arc<Event>) {
    let fields = vec![Value::Int(id), Value::str(name), Value::Float(1.0), Value::Int(ts), Value::Null];
    (Key::Int(id), Arc::new(Event { seq, ts, kind: TypeId(0), fields: fields.into() }))
}

const A_THEN_B: &str =
    "pattern p from cep_events key id match a followed by b where a: name == \"a\" b: name == \"b\" within 10s";

fn matches(out: &[Output]) -> Vec<Vec<u64>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Match { events, .. } => Some(events.iter().flat_map(|(_, l)| l.iter().map(|e| e.seq)).collect()),
            _ => None,
        })
        .collect()
}

#[test]
fn events_at_or_behind_the_watermark_are_late_and_returned() {
    let mut op = Operator::new(nfa(A_THEN_B), Config::default());
    let mut out = Vec::new();
    let (k, e) = ev(1, 7, "a", 100);
    op.process(k, e, &mut out);
    op.advance_watermark(150, &mut out);
    for (seq, ts) in [(2, 150), (3, 149)] {
        let (k, e) = ev(seq, 7, "b", ts);
        op.process(k, e, &mut out);
    }
    let late: Vec<(u64, i64)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Late { event, watermark, .. } => Some((event.seq, *watermark)),
            _ => None,
        })
        .collect();
    assert_eq!(late, [(2, 150), (3, 150)], "ts == watermark is late");
    assert_eq!(op.stats().late, 2);
    let (k, e) = ev(4, 7, "b", 151);
    op.process(k, e, &mut out);
    op.advance_watermark(i64::MAX, &mut out);
    assert_eq!(matches(&out), [vec![1, 4]]);
}

#[test]
fn events_are_fed_in_timestamp_order_whatever_their_arrival() {
    let mut op = Operator::new(nfa(A_THEN_B), Config::default());
    let mut out = Vec::new();
    for (seq, name, ts) in [(1, "b", 20), (2, "a", 10), (3, "b", 30)] {
        let (k, e) = ev(seq, 1, name, ts);
        op.process(k, e, &mut out);
    }
    op.advance_watermark(i64::MAX, &mut out);
    assert_eq!(matches(&out), [vec![2, 1]], "a@10 then the first b after it, b@20");
}

#[test]
fn idle_keys_hold_no_state() {
    let mut op = Operator::new(nfa(A_THEN_B), Config::default());
    let mut out = Vec::new();
    for key in 0..100 {
        let (k, e) = ev(key as u64, key, "c", 10);
        op.process(k, e, &mut out);
    }
    assert_eq!(op.active_keys(), 100, "buffered events are state");
    op.advance_watermark(20, &mut out);
    assert_eq!(op.active_keys(), 0, "no partial match and nothing buffered: nothing kept");
    let (k, e) = ev(200, 5, "a", 30);
    op.process(k, e, &mut out);
    op.advance_watermark(40, &mut out);
    assert_eq!(op.active_keys(), 1, "a partial match is state");
    op.advance_watermark(10_031, &mut out);
    assert_eq!(op.active_keys(), 0, "its window closed");
}

#[test]
fn the_partial_match_budget_drops_the_oldest_and_counts_them() {
    let config = Config { max_partial_matches_per_key: Some(3), ..Config::default() };
    let mut op = Operator::new(nfa(A_THEN_B), config);
    let mut out = Vec::new();
    for i in 0..10 {
        let (k, e) = ev(i, 1, "a", 10 + i as i64);
        op.process(k, e, &mut out);
    }
    let (k, e) = ev(10, 1, "b", 100);
    op.process(k, e, &mut out);
    op.advance_watermark(i64::MAX, &mut out);
    assert_eq!(op.stats().dropped_partial_matches, 7);
    // Only the three newest partial matches were left to complete.
    assert_eq!(matches(&out), [vec![7, 10], vec![8, 10], vec![9, 10]]);
}

#[test]
fn the_watermark_never_goes_back() {
    let mut op = Operator::new(nfa(A_THEN_B), Config::default());
    let mut out = Vec::new();
    op.advance_watermark(100, &mut out);
    op.advance_watermark(50, &mut out);
    assert_eq!(op.watermark(), 100);
}

/// The funnel counts partial matches entering each step; the gauges follow what is held.
#[test]
fn the_funnel_counts_partial_matches_per_step_and_the_gauges_follow_the_state() {
    let text = "pattern p from cep_events key id \
                match a followed by b+ followed by c \
                where a: name == \"a\" b: name == \"b\" c: name == \"c\" within 10s";
    let nfa = nfa(text);
    let vars: Vec<&str> = nfa.vars.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(vars, ["a", "b", "c"]);
    let mut op = Operator::new(nfa, Config::default());
    let mut out = Vec::new();
    // Key 1: a, b, b, c (one complete match); key 2: a, b (stops at b); key 3: a only.
    let feed = [(1, "a", 10), (1, "b", 20), (1, "b", 30), (1, "c", 40), (2, "a", 10), (2, "b", 20), (3, "a", 10)];
    for (i, (key, name, ts)) in feed.into_iter().enumerate() {
        let (k, e) = ev(i as u64, key, name, ts);
        op.process(k, e, &mut out);
    }
    op.advance_watermark(100, &mut out);
    // Key 1 completes twice (b+ is relaxed: a b1 b2 c and a b1 c).
    assert_eq!(matches(&out), [vec![0, 1, 2, 3], vec![0, 1, 3]]);
    assert_eq!(op.stats().matches, 2);
    // Three keys reach `a`; key 1 enters `b` once (b2 extends the loop, it is no new entry) and
    // key 2 once; both of key 1's matches entered `c`.
    assert_eq!(op.funnel(), [3, 2, 2]);
    // Still in their window: key 1's a b1 b2 (more b may come), key 2's a b, key 3's a.
    assert_eq!(op.active_partial_matches(), 3);
    assert_eq!(op.active_keys(), 3);
    op.advance_watermark(10_011, &mut out);
    assert_eq!(op.active_partial_matches(), 0, "every window closed");
    assert_eq!(op.active_keys(), 0);
    assert!(op.stats().timeouts >= 2, "timeouts are counted without Config::timeouts: {:?}", op.stats());
    let timeouts = out.iter().filter(|o| matches!(o, Output::Timeout { .. })).count();
    assert_eq!(timeouts, 0, "but not returned");
}
