//! `tripline conformance` passes FlinkCEP's public conformance corpus: every case, no exception.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("service/ is in the repository").to_owned()
}

fn conformance(file: &Path) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_tripline")).arg("conformance").arg(file).output().expect("tripline runs");
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn flinkcep_public_corpus_passes() {
    let (code, out) = conformance(&root().join("testdata/conformance/flinkcep-public.json"));
    assert_eq!(out.lines().last(), Some("148 passed, 0 failed"), "{out}");
    assert!(out.contains("8 cases ran on the fast tier too"), "{out}");
    assert_eq!(code, Some(0));
}

/// The shared corpus beside the repository (as CI lays it out), which may have grown.
#[test]
fn shared_corpora_pass_when_present() {
    let dir = root().join("../shared/conformance");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let (code, out) = conformance(&p);
            assert_eq!(code, Some(0), "{}:\n{out}", p.display());
            assert!(out.lines().last().is_some_and(|l| l.ends_with(" passed, 0 failed")), "{out}");
        }
    }
}

#[test]
fn a_wrong_expectation_is_reported_with_a_diff() {
    let corpus: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("testdata/conformance/flinkcep-public.json")).expect("corpus"),
    )
    .expect("json");
    let mut case = corpus[0].clone();
    let first = case["expected_matches"][0].clone();
    case["expected_matches"].as_array_mut().expect("matches").push(first);
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("bad.json");
    std::fs::write(&f, serde_json::to_string(&vec![case]).expect("json")).expect("write");
    let (code, out) = conformance(&f);
    assert_eq!(code, Some(1));
    assert!(
        out.contains(
            "FAIL NFAITCase.testNoConditionLoopingNFA: matches differ (expected 11, got 10); missing [40 41 42 43 44]"
        ),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("0 passed, 1 failed"));
}
