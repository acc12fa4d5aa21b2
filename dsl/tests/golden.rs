//! Data-driven tests of the language:
//! - `testdata/dsl/err/*.tl`: each file fails with exactly the diagnostics in its `.expected` file;
//! - `testdata/dsl/nfa/*.tl`: each file compiles to exactly the automaton dump in its `.nfa` file;
//! - `patterns/*.tl`: every library pattern checks clean against the demo config.

mod common;

use common::*;

fn render_all(diags: &[dsl::Diagnostic]) -> String {
    diags.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n")
}

#[test]
fn error_corpus() {
    let catalog = test_catalog();
    let dir = root().join("testdata/dsl/err");
    let inputs = files(&dir, "tl");
    assert!(inputs.len() >= 40, "the error corpus has {} files; it should have at least 40", inputs.len());
    let mut failures = Vec::new();
    for path in &inputs {
        let src = source(path);
        let compiled = dsl::compile_source(&src, &catalog);
        if compiled.diagnostics.is_empty() {
            failures.push(format!("{}: passed, but every file of the error corpus must fail", path.display()));
            continue;
        }
        if let Some(m) = golden(&path.with_extension("expected"), &render_all(&compiled.diagnostics)) {
            failures.push(m);
        }
    }
    assert!(failures.is_empty(), "{} of {} error cases failed:\n{}", failures.len(), inputs.len(), failures.join("\n"));
}

#[test]
fn nfa_dumps() {
    let catalog = test_catalog();
    let dir = root().join("testdata/dsl/nfa");
    let inputs = files(&dir, "tl");
    assert!(inputs.len() >= 12, "only {} NFA golden files", inputs.len());
    let mut failures = Vec::new();
    for path in &inputs {
        let src = source(path);
        let compiled = dsl::compile_source(&src, &catalog);
        if !compiled.is_ok() {
            failures.push(format!("{} does not compile:\n{}", path.display(), render_all(&compiled.diagnostics)));
            continue;
        }
        let dump: String = compiled
            .patterns
            .iter()
            .map(|p| format!("# hash {}\n{}", p.nfa.meta.hash, engine::dump::dump(&p.nfa)))
            .collect::<Vec<_>>()
            .join("\n");
        if let Some(m) = golden(&path.with_extension("nfa"), &dump) {
            failures.push(m);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn pattern_library_checks_clean() {
    let catalog = catalog_from(&root().join("tripline.toml"));
    let inputs = files(&root().join("patterns"), "tl");
    assert!(inputs.len() >= 12, "the pattern library has {} patterns; it should have at least 12", inputs.len());
    let mut failures = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for path in &inputs {
        let src = source(path);
        let compiled = dsl::compile_source(&src, &catalog);
        if !compiled.is_ok() {
            failures.push(render_all(&compiled.diagnostics));
        }
        for p in compiled.patterns.iter().map(|p| &p.nfa) {
            assert!(names.insert(p.meta.name.clone()), "pattern {} defined twice", p.meta.name);
            assert!(!p.meta.description.is_empty(), "{}: pattern {} has no description", path.display(), p.meta.name);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_grammar_rule_is_documented() {
    let grammar = std::fs::read_to_string(root().join("dsl/src/grammar.pest")).expect("grammar");
    let mut prev = "";
    let mut undocumented = Vec::new();
    for line in grammar.lines() {
        let is_rule = line.split_once('=').is_some_and(|(name, _)| {
            let n = name.trim();
            !n.is_empty() && !line.starts_with(' ') && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if is_rule && !prev.starts_with("///") {
            undocumented.push(line.split('=').next().unwrap_or("").trim().to_owned());
        }
        if !line.trim().is_empty() {
            prev = line;
        }
    }
    assert!(undocumented.is_empty(), "grammar rules without a /// doc comment: {undocumented:?}");
}
