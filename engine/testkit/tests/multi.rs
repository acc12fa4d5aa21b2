//! The multi-pattern operator (`MultiOperator`) against one `Operator` per pattern, the
//! reference: over random `cep_events` streams for the test patterns and over random streams of
//! the library's patterns, every pattern must give, for every key, the same matches and
//! timeouts in the same order, the same late events, the same counts and the same funnel,
//! whatever the configuration (timeouts, budgets, tie-breaks, FlinkCEP's full steps). And the
//! start index must leave most patterns out of most events.

#![allow(clippy::print_stderr)] // the work figures are worth seeing in the test log

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::runtime::{Config, Key, MultiOperator, MultiOutput, StartIndex};
use engine::{Event, Nfa, Value};
use proptest::prelude::*;
use testkit::compile_one;
use testkit::differential::{all_configs, multi_is_exact};
use testkit::streams::{cep_patterns, cep_steps, library, library_steps, replay_steps, CepEvent, Step};

proptest! {
    // A fixed seed: CI sees the same cases on every run.
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x3a17_5c0e),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_cep_streams_give_each_pattern_its_own_operators_output(
        config in 0usize..5,
        events in proptest::collection::vec(any::<CepEvent>(), 1..80),
    ) {
        if let Err(e) = multi_is_exact(cep_patterns(), all_configs()[config], &cep_steps(&events)) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// The library's patterns grouped by stream and key field, as the service would run them.
fn library_groups() -> BTreeMap<(String, usize), Vec<usize>> {
    let mut groups: BTreeMap<(String, usize), Vec<usize>> = BTreeMap::new();
    for (i, lib) in library().iter().enumerate() {
        groups.entry((lib.nfa.meta.stream.clone(), lib.nfa.meta.key.index())).or_default().push(i);
    }
    groups
}

#[test]
fn library_streams_give_each_pattern_its_own_operators_output() {
    let mut failures = Vec::new();
    let (mut runs, mut steps_taken, mut checks, mut events) = (0, 0, 0, 0);
    let groups = library_groups();
    assert!(groups.values().any(|g| g.len() > 1), "some stream must have several patterns with one key");
    for members in groups.values() {
        let patterns: Vec<Arc<Nfa>> = members.iter().map(|&i| library()[i].nfa.clone()).collect();
        for &i in members {
            let lib = &library()[i];
            let mut streams = vec![replay_steps(lib)];
            streams.extend((0..3).map(|seed| library_steps(lib, seed, 300)));
            for steps in &streams {
                for config in all_configs() {
                    runs += 1;
                    match multi_is_exact(&patterns, config, steps) {
                        Ok((s, c)) => {
                            steps_taken += s;
                            checks += c;
                            events +=
                                (steps.iter().filter(|s| matches!(s, Step::Event(..))).count() * patterns.len()) as u64;
                        }
                        Err(e) => failures.push(format!("{}: {e}", lib.nfa.meta.name)),
                    }
                }
            }
        }
    }
    eprintln!(
        "multi-pattern operator: {runs} library runs; {steps_taken} pattern steps and {checks} start checks \
         for {events} (pattern, event) pairs"
    );
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(steps_taken + checks < events, "the start index must spare work: {steps_taken} + {checks} of {events}");
}

#[test]
fn the_start_index_finds_patterns_by_the_equalities_of_their_start() {
    let auth = compile_one(
        r#"pattern p1 from payments key customer_id
  match a followed by b
  where a: channel == "CARD"  b: channel == "ATM_WITHDRAWAL"
  within 10m"#,
    );
    let either = compile_one(
        r#"pattern p2 from payments key customer_id
  match a followed by b
  where a: channel in ("TRANSFER", "CARD") and amount > 5  b: channel == "ATM_WITHDRAWAL"
  within 10m"#,
    );
    let optional = compile_one(
        r#"pattern p3 from payments key customer_id
  match a? followed by b
  where a: channel == "TRANSFER"  b: channel == "ATM_WITHDRAWAL"
  within 10m"#,
    );
    let any = compile_one(
        r#"pattern p4 from payments key customer_id
  match a followed by b
  where a: amount > 5  b: channel == "ATM_WITHDRAWAL"
  within 10m"#,
    );
    let index = StartIndex::new(&[auth.clone(), either, optional, any]);
    // p3's `a?` may be skipped, and then `b` ignores what it does not take: every event moves
    // its fresh start state (as in FlinkCEP), so no equality bounds its start.
    assert_eq!(index.unindexed(), 2, "p3 and p4 are asked about every event");
    let field = auth.fields.iter().position(|f| f == "channel").expect("channel");
    let event = |t: &str| {
        let mut fields = vec![Value::Null; auth.fields.len()];
        fields[field] = Value::str(t);
        Event { seq: 1, ts: 1, kind: engine::TypeId(0), fields: fields.into() }
    };
    let mut out = Vec::new();
    let mut of = |t: &str| {
        index.candidates(&event(t), &mut out);
        out.clone()
    };
    assert_eq!(of("CARD"), vec![0, 1, 2, 3]);
    assert_eq!(of("TRANSFER"), vec![1, 2, 3]);
    assert_eq!(of("ATM_WITHDRAWAL"), vec![2, 3]);
}

#[test]
fn patterns_of_other_streams_or_keys_are_refused_by_name() {
    let by_customer = compile_one(
        r#"pattern c from payments key customer_id
  match a followed by b
  where a: channel == "CARD"  b: channel == "CHEQUE"
  within 10m"#,
    );
    let by_account = compile_one(
        r#"pattern k from payments key account_id
  match a followed by b
  where a: channel == "CARD"  b: channel == "CHEQUE"
  within 10m"#,
    );
    let cep = cep_patterns()[0].clone();
    let err = |p: Vec<Arc<Nfa>>| MultiOperator::new(p, Config::default()).err().map(|e| e.to_string());
    assert_eq!(
        err(vec![by_customer.clone(), by_account]).as_deref(),
        Some("pattern `k` is keyed by `account_id`, the first pattern by `customer_id`: group patterns by key field")
    );
    let msg = err(vec![by_customer.clone(), cep]).unwrap_or_default();
    assert!(msg.contains("reads stream `cep_events`, the first pattern reads `payments`"), "{msg}");
    assert!(err(vec![by_customer]).is_none());
    assert!(err(Vec::new()).is_none(), "no pattern: an operator that does nothing");
}

#[test]
fn a_late_event_is_reported_once_whatever_the_number_of_patterns() {
    let patterns = cep_patterns().to_vec();
    let mut multi = MultiOperator::new(patterns, Config::default()).expect("one stream, one key");
    let mut out = Vec::new();
    multi.advance_watermark(100, &mut out);
    let e = Arc::new(Event {
        seq: 7,
        ts: 50,
        kind: engine::TypeId(0),
        fields: vec![Value::Int(1), Value::str("a"), Value::Float(1.0), Value::Int(50), Value::Null].into(),
    });
    multi.process(Key::Int(1), e, &mut out);
    assert!(matches!(out.as_slice(), [MultiOutput::Late { watermark: 100, .. }]), "{out:?}");
    assert_eq!((multi.stats().events, multi.stats().late), (1, 1));
}
