//! The differential harness over generated patterns (`testkit::gen`): random patterns over
//! `cep_events` (every contiguity, loops and their modifiers, `until`, optional elements,
//! negations, groups, both kinds of window, conditions on earlier elements, every skip strategy)
//! with random streams, each through every tier the engine has: the skip of unchanged steps vs
//! FlinkCEP's full step (outputs, stats, snapshot bytes) and the multi-pattern operator vs one
//! operator per pattern. The same cases run longer under cargo-fuzz (`scripts/fuzz`).

#![allow(clippy::print_stderr)] // how many generated patterns compiled is worth seeing

use proptest::prelude::*;
use testkit::gen::{case, check, pattern_text};
use testkit::streams::Rng;

proptest! {
    // A fixed seed: CI sees the same cases on every run.
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6e6e_7a11),
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_patterns_give_the_same_output_in_every_tier(seed in any::<u64>()) {
        let case = case(&mut Rng(seed));
        if let Err(e) = check(&case) {
            prop_assert!(false, "seed {}: {}", seed, e);
        }
    }
}

/// The cases must match: a harness whose patterns never match would compare empty outputs.
#[test]
fn generated_cases_match_time_out_and_see_late_events() {
    let mut sum = testkit::gen::Checked::default();
    let mut matching = 0;
    let n = 300;
    for seed in 0..n {
        let c = check(&case(&mut Rng(seed ^ 0x5eed))).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        matching += usize::from(c.matches > 0);
        sum += c;
    }
    eprintln!("{n} generated cases: {matching} with matches; {sum:?}");
    assert!(matching * 3 >= n as usize, "only {matching} of {n} cases match");
    assert!(sum.timeouts > 0 && sum.late > 0, "{sum:?}");
    // The fast tier ran keys, and some fell back to the exact runtime mid-run.
    assert!(sum.fast_runs >= 100 && sum.fallbacks > 0, "{sum:?}");
}

/// The generator must mostly write patterns the language takes, and cover its constructs;
/// otherwise the harness above would test little.
#[test]
fn the_generator_writes_mostly_valid_patterns_of_every_kind() {
    let (mut compiled, mut total) = (0, 0);
    let mut seen = std::collections::BTreeSet::new();
    let constructs = [
        " next ",
        "followed by any",
        "not next",
        "not followed by",
        "+",
        "{2,}",
        "?",
        "consecutive",
        "allow combinations",
        "greedy",
        "until",
        "of previous",
        "(",
        "first(",
        ".price",
        "skip to first",
        "skip to last",
        "skip past last event",
        "skip to next",
        "SubEvent",
    ];
    for seed in 0..2_000 {
        let text = pattern_text(&mut Rng(seed), "g");
        total += 1;
        if testkit::gen::compile(&text).is_some() {
            compiled += 1;
            for c in constructs {
                if text.contains(c) {
                    seen.insert(c);
                }
            }
        }
    }
    eprintln!("generated patterns: {compiled} of {total} compile");
    assert!(compiled * 10 >= total * 6, "only {compiled} of {total} generated patterns compile");
    let missing: Vec<&&str> = constructs.iter().filter(|c| !seen.contains(*c)).collect();
    assert!(missing.is_empty(), "no compiled generated pattern has {missing:?}");
}

/// The fuzz target's committed corpus (`engine/fuzz/corpus/differential/`, grown and minimized by
/// `scripts/fuzz differential`): every input a case whose tiers agree. An input that once showed
/// a difference stays a regression test.
#[test]
fn the_fuzz_corpus_gives_the_same_output_in_every_tier() {
    let dir = testkit::root().join("engine/fuzz/corpus/differential");
    let mut paths: Vec<_> =
        std::fs::read_dir(&dir).expect("the fuzz corpus is committed").map(|e| e.expect("entry").path()).collect();
    paths.sort();
    let mut failures = Vec::new();
    let mut sum = testkit::gen::Checked::default();
    for path in &paths {
        let bytes = std::fs::read(path).expect("readable");
        match testkit::gen::check_bytes(&bytes) {
            Ok(c) => {
                sum += c;
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    eprintln!("fuzz corpus: {} inputs; {sum:?}", paths.len());
    assert!(paths.len() >= 50, "the fuzz corpus has only {} inputs", paths.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
