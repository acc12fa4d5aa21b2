//! The multi-pattern operator (`MultiOperator`) against one `Operator` per pattern, the
//! reference: over random `cep_events` streams for the test patterns and over random streams of
//! the library's patterns, every pattern must give, for every key, the same matches and
//! timeouts in the same order, the same late events, the same counts and the same funnel,
//! whatever the configuration (timeouts, budgets, tie-breaks, FlinkCEP's full steps). And the
//! start index must leave most patterns out of most events.

#![allow(clippy::print_stderr)] // the work figures are worth seeing in the test log

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::runtime::{Config, Key, MultiOperator, MultiOutput, Operator, Output, StartIndex};
use engine::{Event, Nfa, Value};
use proptest::prelude::*;
use testkit::compile_one;
use testkit::streams::{apply, cep_patterns, cep_steps, configs, library, library_steps, replay_steps, CepEvent, Step};

/// Per (pattern, key): its outputs in order.
type PerKey = BTreeMap<(usize, String), Vec<Output>>;

fn key_of(o: &Output) -> String {
    match o {
        Output::Match { key, .. } | Output::Timeout { key, .. } | Output::Late { key, .. } => key.to_string(),
    }
}

/// Runs `patterns` both ways over `steps`; `Err` says what differs.
fn multi_is_exact(patterns: &[Arc<Nfa>], config: Config, steps: &[Step]) -> Result<(u64, u64), String> {
    let mut singles: Vec<Operator> = patterns.iter().map(|n| Operator::new(n.clone(), config)).collect();
    let mut outs: Vec<Vec<Output>> = vec![Vec::new(); patterns.len()];
    let mut multi = MultiOperator::new(patterns.to_vec(), config).map_err(|e| e.to_string())?;
    let mut multi_out = Vec::new();
    for s in steps {
        for (op, out) in singles.iter_mut().zip(&mut outs) {
            apply(op, s, out);
        }
        match s {
            Step::Event(k, e) => multi.process(k.clone(), e.clone(), &mut multi_out),
            Step::Watermark(wm) => multi.advance_watermark(*wm, &mut multi_out),
        }
    }
    let mut want = PerKey::new();
    let mut want_late: Vec<Vec<u64>> = vec![Vec::new(); patterns.len()];
    for (p, out) in outs.iter().enumerate() {
        for o in out {
            match o {
                Output::Late { event, .. } => want_late[p].push(event.seq),
                o => want.entry((p, key_of(o))).or_default().push(o.clone()),
            }
        }
    }
    let mut got = PerKey::new();
    let mut got_late = Vec::new();
    for o in multi_out {
        match o {
            MultiOutput::Pattern(_, Output::Late { .. }) => return Err("a pattern output a late event".into()),
            MultiOutput::Pattern(p, o) => got.entry((p, key_of(&o))).or_default().push(o),
            MultiOutput::Late { event, .. } => got_late.push(event.seq),
        }
    }
    for (p, nfa) in patterns.iter().enumerate() {
        let name = &nfa.meta.name;
        if want_late[p] != got_late {
            return Err(format!("{name}: late events {:?} vs {got_late:?}", want_late[p]));
        }
        let mut ks: Vec<&String> = want.keys().chain(got.keys()).filter(|(q, _)| *q == p).map(|(_, k)| k).collect();
        ks.sort();
        ks.dedup();
        for k in ks {
            let (w, g) = (want.get(&(p, k.clone())), got.get(&(p, k.clone())));
            if w != g {
                return Err(format!("{name}, key {k}: outputs\n{w:?}\nvs multi\n{g:?}"));
            }
        }
        if singles[p].stats() != multi.pattern_stats(p) {
            return Err(format!("{name}: stats {:?} vs multi {:?}", singles[p].stats(), multi.pattern_stats(p)));
        }
        if singles[p].funnel() != multi.funnel(p) {
            return Err(format!("{name}: funnel {:?} vs multi {:?}", singles[p].funnel(), multi.funnel(p)));
        }
    }
    let held: usize = singles.iter().map(Operator::active_partial_matches).sum();
    if multi.active_partial_matches() != held {
        return Err(format!("{} partial matches held vs multi {}", held, multi.active_partial_matches()));
    }
    Ok(multi.work())
}

fn all_configs() -> Vec<Config> {
    let mut v = configs().to_vec();
    v.push(Config { exact_steps: true, timeouts: true, ..Config::default() });
    v
}

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
