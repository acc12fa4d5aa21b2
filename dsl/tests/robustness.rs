//! The compiler never panics and always locates its errors:
//! - mutations of every library pattern and golden pattern (each word deleted, each keyword
//!   misspelled, the file cut at many byte offsets);
//! - the committed fuzz corpus (`dsl/fuzz/corpus/compile/`);
//! - property tests over token soup and arbitrary text.

#![allow(clippy::print_stderr)] // the mutation counts are worth seeing in the test log

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use common::*;
use dsl::{Catalog, Compiled, SourceFile};
use proptest::prelude::*;

/// Words whose misspelling can never leave a valid file.
const KEYWORDS: &[&str] = &[
    "pattern",
    "version",
    "severity",
    "mode",
    "from",
    "key",
    "match",
    "where",
    "within",
    "skip",
    "message",
    "emit",
    "followed",
    "by",
    "next",
    "any",
    "optional",
    "greedy",
    "consecutive",
    "allow",
    "combinations",
    "until",
    "and",
    "or",
    "in",
    "is",
    "null",
    "like",
    "matches",
    "contains",
    "starts",
    "ends",
    "with",
    "if",
    "then",
    "else",
    "distinct",
    "none",
    "past",
    "event",
    "low",
    "medium",
    "high",
    "critical",
    "live",
    "shadow",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Word,
    Other,
}

/// Byte ranges of the tokens of a pattern file (strings and comments skipped).
fn tokens(text: &str) -> Vec<(usize, usize, Tok)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'"' || c == b'\'' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != c && b[i] != b'\n' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push((start, i.min(b.len()), Tok::Other));
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            out.push((start, i, Tok::Word));
        } else if c.is_ascii_whitespace() || !c.is_ascii() {
            i += 1;
        } else {
            out.push((i, i + 1, Tok::Other));
            i += 1;
        }
    }
    out
}

fn run(name: &str, text: String, catalog: &Catalog) -> Result<Compiled, String> {
    let src = SourceFile::new(name, text.clone());
    let compiled = catch_unwind(AssertUnwindSafe(|| dsl::compile_source(&src, catalog)))
        .map_err(|_| format!("PANIC on {name}:\n{text}"))?;
    let lines = text.split('\n').count();
    for d in &compiled.diagnostics {
        if d.file != name || d.line == 0 || d.line > lines || d.column == 0 || d.message.is_empty() {
            return Err(format!("badly located diagnostic {d:?} for {name}:\n{text}"));
        }
        let rendered = d.render();
        if !rendered.starts_with(&format!("{}:{}:{}: error[", d.file, d.line, d.column)) {
            return Err(format!("rendering lacks file:line:col: {rendered}"));
        }
        // Rule names must not leak into messages (quoted input, in backticks, may say anything).
        let unquoted: String = d.message.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        if let Some(rule) = rule_names()
            .iter()
            .find(|r| unquoted.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == r.as_str()))
        {
            return Err(format!("grammar rule `{rule}` leaked into a message: {rendered}"));
        }
    }
    Ok(compiled)
}

/// The grammar's rule names that are not plain English words.
fn rule_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let grammar = std::fs::read_to_string(root().join("dsl/src/grammar.pest")).expect("grammar");
        grammar
            .lines()
            .filter_map(|l| l.split_once('=').map(|(n, _)| n.trim()))
            .filter(|n| !n.is_empty() && n.contains('_') && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .map(str::to_owned)
            .collect()
    })
}

fn hashes(c: &Compiled) -> Vec<String> {
    c.patterns.iter().map(|p| p.nfa.meta.hash.clone()).collect()
}

fn valid_corpus() -> Vec<(PathBuf, Catalog)> {
    let mut v: Vec<(PathBuf, Catalog)> = Vec::new();
    let library = catalog_from(&root().join("tripline.toml"));
    for p in files(&root().join("patterns"), "tl") {
        v.push((p, library.clone()));
    }
    let test = test_catalog();
    for p in files(&root().join("testdata/dsl/nfa"), "tl") {
        v.push((p, test.clone()));
    }
    v
}

/// A small deterministic generator for cut points.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn mutations_never_pass_silently_never_panic_and_are_located() {
    let mut failures = Vec::new();
    let mut counts = (0usize, 0usize, 0usize);
    for (path, catalog) in valid_corpus() {
        let text = std::fs::read_to_string(&path).expect("readable");
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let original = match run(&name, text.clone(), &catalog) {
            Ok(c) if c.is_ok() => hashes(&c),
            Ok(c) => {
                failures.push(format!("{name} does not compile: {:?}", c.diagnostics));
                continue;
            }
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        for (start, end, kind) in tokens(&text) {
            // Delete the token.
            let mutated = format!("{}{}", &text[..start], &text[end..]);
            counts.0 += 1;
            match run(&name, mutated, &catalog) {
                Err(e) => failures.push(e),
                Ok(c) if c.is_ok() && kind == Tok::Word && hashes(&c) == original => failures.push(format!(
                    "{name}: deleting `{}` at byte {start} changed nothing: the word is meaningless",
                    &text[start..end]
                )),
                Ok(_) => {}
            }
            // Misspell a keyword: swap its first two letters, and drop its last letter.
            let word = &text[start..end];
            if kind == Tok::Word && KEYWORDS.contains(&word) {
                let mut swapped: Vec<char> = word.chars().collect();
                swapped.swap(0, 1);
                let swapped: String = swapped.into_iter().collect();
                for typo in [swapped, word[..word.len() - 1].to_owned()] {
                    counts.1 += 1;
                    let mutated = format!("{}{typo}{}", &text[..start], &text[end..]);
                    match run(&name, mutated.clone(), &catalog) {
                        Err(e) => failures.push(e),
                        Ok(c) if c.is_ok() => failures.push(format!(
                            "{name}: `{word}` misspelled as `{typo}` at byte {start} still passes:\n{mutated}"
                        )),
                        Ok(_) => {}
                    }
                }
            }
        }
        // Cut the file at pseudo-random offsets (and at every token end).
        let mut seed = text.len() as u64;
        let mut cuts: Vec<usize> = (0..40).map(|_| (lcg(&mut seed) as usize) % text.len().max(1)).collect();
        cuts.extend(tokens(&text).iter().map(|t| t.1));
        for mut cut in cuts {
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            counts.2 += 1;
            if let Err(e) = run(&name, text[..cut].to_owned(), &catalog) {
                failures.push(e);
            }
        }
    }
    eprintln!("mutations: {} deletions, {} misspellings, {} cuts", counts.0, counts.1, counts.2);
    assert!(counts.0 > 1000 && counts.1 > 200 && counts.2 > 500, "too few mutations: {counts:?}");
    assert!(failures.is_empty(), "{} mutation failures:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn fuzz_corpus_never_panics() {
    let catalog = test_catalog();
    let dir = root().join("dsl/fuzz/corpus/compile");
    let mut n = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the fuzz corpus is committed") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("readable");
        // The fuzz target feeds the lossy UTF-8 decoding of its input, as here.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        n += 1;
        if let Err(e) = run("fuzz.tl", text, &catalog) {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    assert!(n >= 50, "the fuzz corpus has only {n} inputs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn token_soup() -> impl Strategy<Value = String> {
    let words: Vec<&'static str> = KEYWORDS
        .iter()
        .copied()
        .chain([
            "a",
            "b",
            "c",
            "first",
            "last",
            "amount",
            "price",
            "name",
            "cep_events",
            "payments",
            "1",
            "2.5",
            "10s",
            "\"x\"",
            "'y'",
            "(",
            ")",
            "{",
            "}",
            ",",
            ":",
            "+",
            "*",
            "?",
            "-",
            "/",
            "%",
            "==",
            "!=",
            "<",
            ">=",
            "\n",
            "#c\n",
            "{2,}",
            "{1,3}",
            "not",
            "to",
            "`key`",
            "SubEvent",
            "count(",
            "sum(",
            ".",
        ])
        .collect();
    proptest::collection::vec(proptest::sample::select(words), 0..60).prop_map(|v| v.join(" "))
}

proptest! {
    // A fixed seed: CI sees the same cases on every run (new inputs come from the fuzzer).
    #![proptest_config(ProptestConfig {
        cases: 1500,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7219_11e5),
        ..ProptestConfig::default()
    })]

    #[test]
    fn token_soup_never_panics(body in token_soup()) {
        let catalog = test_catalog();
        let text = format!("pattern p from cep_events key name {body}");
        if let Err(e) = run("soup.tl", text, &catalog) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let catalog = test_catalog();
        if let Err(e) = run("any.tl", text, &catalog) {
            prop_assert!(false, "{}", e);
        }
    }
}
