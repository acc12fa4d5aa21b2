//! The FlinkCEP conformance corpus passes, in process: every case, no exception.

use std::path::Path;

use serde_json::Value as Json;
use testkit::conformance::{self, CaseFailure, ConformanceError, Difference, Mismatch, Runner};
use testkit::root;

fn public_corpus() -> std::path::PathBuf {
    root().join("testdata/conformance/flinkcep-public.json")
}

fn failures(report: &conformance::CorpusReport) -> String {
    report.failures().map(|(id, f)| format!("FAIL {id}: {f}")).collect::<Vec<_>>().join("\n")
}

#[test]
fn flinkcep_public_corpus_passes() {
    let report = conformance::run_file(&public_corpus()).expect("the corpus runs");
    assert_eq!((report.passed(), report.failed()), (148, 0), "{}", failures(&report));
    // Every case whose pattern is a chain ran with the fast tier forced on and off.
    assert_eq!(report.fast_tier(), 8);
    let first = &report.cases[0];
    assert_eq!(first.to_string(), "ok   NFAITCase.testNoConditionLoopingNFA");
}

/// The shared corpora beside the repository (as CI lays it out), which may have grown.
#[test]
fn shared_corpora_pass_when_present() {
    let dir = root().join("../shared/conformance");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    let runner = Runner::new().expect("the event schema is valid");
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let report = runner.run_file(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(!report.cases.is_empty(), "{}: no cases", p.display());
            assert_eq!(report.failed(), 0, "{}:\n{}", p.display(), failures(&report));
        }
    }
}

#[test]
fn a_wrong_expectation_is_reported_with_a_diff() {
    let corpus: Json = serde_json::from_str(&std::fs::read_to_string(public_corpus()).expect("corpus")).expect("json");
    let mut case = corpus[0].clone();
    let first = case["expected_matches"][0].clone();
    case["expected_matches"].as_array_mut().expect("matches").push(first);
    let report = Runner::new().expect("runner").run_cases(&[case]);
    assert_eq!((report.passed(), report.failed()), (0, 1));
    assert_eq!(
        report.cases[0].to_string(),
        "FAIL NFAITCase.testNoConditionLoopingNFA: matches differ (expected 11, got 10); missing [40 41 42 43 44]"
    );
    let Err(CaseFailure::Differs(Mismatch { what, expected, got, difference })) = &report.cases[0].outcome else {
        panic!("{:?}", report.cases[0].outcome)
    };
    assert_eq!((*what, expected.len(), got.len()), ("matches", 11, 10));
    assert_eq!(difference, &Difference::Entries { missing: vec!["[40 41 42 43 44]".to_owned()], unexpected: vec![] });
}

#[test]
fn cases_that_cannot_run_say_why() {
    let runner = Runner::new().expect("runner");
    let cases: Json = serde_json::json!([
        {"id": "no-pattern"},
        {"id": "bad-skip", "pattern": {"seq": [{"name": "a", "cond": {"true": true}, "quant": null}]}, "skip": 3},
        {"pattern": {"seq": [{"name": "a", "cond": {"true": true}, "quant": null}]}, "skip": "no_skip"},
        {"id": "until-on-group", "skip": "no_skip", "pattern": {"seq": [
            {"group": {"seq": [{"name": "a", "cond": {"true": true}, "quant": null}]},
             "quant": {"min": 1, "max": null}, "until": {"true": true}}]}},
        {"id": "order", "pattern": {"seq": [{"name": "a", "cond": {"true": true}, "quant": null}]}, "skip": "no_skip",
         "events": [{"ref": 1, "id": 1, "name": "x", "price": 1.0, "type": "Event", "ts": 1},
                    {"ref": 2, "id": 2, "name": "y", "price": 1.0, "type": "Event", "ts": 2}],
         "expected_matches": [{"a": [2]}, {"a": [1]}], "expected_order_matters": true}
    ]);
    let report = runner.run_cases(cases.as_array().expect("array"));
    let lines: Vec<String> = report.cases.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        lines,
        [
            "FAIL no-pattern: cannot translate: pattern without seq",
            "FAIL bad-skip: cannot translate: unsupported skip 3",
            "FAIL ?: no events",
            "FAIL until-on-group: cannot translate: `until` on a group is not supported (the language puts `until` on single elements)",
            "FAIL order: matches differ (expected 2, got 2); same set, wrong order: expected [2] [1] got [1] [2]",
        ]
    );
}

#[test]
fn files_that_cannot_run_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let message = |p: &Path| conformance::run_file(p).expect_err("refused").to_string();
    let missing = dir.path().join("missing.json");
    assert!(matches!(conformance::run_file(&missing), Err(ConformanceError::Read { .. })));
    assert!(message(&missing).starts_with(&format!("cannot read {}: ", missing.display())));
    let not_json = write("a.json", "[1,");
    assert!(matches!(conformance::run_file(&not_json), Err(ConformanceError::NotJson { .. })));
    assert!(message(&not_json).starts_with(&format!("{}: not JSON: ", not_json.display())));
    let object = write("b.json", "{}");
    assert_eq!(message(&object), format!("{}: expected a JSON array of cases", object.display()));
    let empty = write("c.json", "[]");
    let report = conformance::run_file(&empty).expect("runs");
    assert_eq!((report.passed(), report.failed()), (0, 0));
}

/// The deliberate deviations from FlinkCEP (docs/engine.md, "Deliberate deviations"): with the
/// window each case declares, Tripline gives no match where FlinkCEP 2.3 gives one; with the
/// window widened, the match FlinkCEP gave is there, so the declared window is the difference.
#[test]
fn deliberate_deviations_from_flinkcep_keep_the_declared_window() {
    let runner = Runner::new().expect("runner");
    let path = root().join("testdata/conformance/deviations.json");
    let report = runner.run_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.passed(), report.failed()), (2, 0), "{}", failures(&report));
    let text = std::fs::read_to_string(&path).expect("readable");
    let cases: Json = serde_json::from_str(&text).expect("JSON");
    let mut wide = Vec::new();
    for case in cases.as_array().expect("array") {
        let flink = case["flinkcep_matches"].as_array().expect("FlinkCEP's matches");
        assert!(!flink.is_empty() && case["expected_matches"] != case["flinkcep_matches"], "{}", case["id"]);
        let mut c = case.clone();
        c["within_ms"] = Json::from(1_000);
        c["expected_matches"] = case["matches_with_a_wide_window"].clone();
        let with_wide = c["expected_matches"].as_array().expect("matches with a wide window");
        assert!(flink.iter().all(|m| with_wide.contains(m)), "{}", case["id"]);
        wide.push(c);
    }
    let report = runner.run_cases(&wide);
    assert_eq!((report.passed(), report.failed()), (2, 0), "{}", failures(&report));
}
