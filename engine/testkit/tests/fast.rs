//! Which patterns the fast tier runs (`engine/src/runtime/fast.rs`): chains of single elements
//! joined by `next` or `followed by` with at most a whole-pattern window. Its output is checked
//! against the exact runtime by the differential harness (`tests/generated.rs`, the conformance
//! runner); this pins down the shape `Chain::of` recognises, on the library, the benchmark's
//! patterns and small patterns of each kind it refuses.

use engine::runtime::fast::Chain;
use expect_test::expect;
use testkit::streams::library;
use testkit::{compile_one, root};

fn chain(text: &str) -> bool {
    Chain::of(&compile_one(text), usize::MAX).is_some()
}

#[test]
fn the_library_patterns_that_are_chains() {
    let mut lines: Vec<String> =
        library().iter().map(|l| format!("{}: {}", l.nfa.meta.name, Chain::of(&l.nfa, usize::MAX).is_some())).collect();
    for p in ["P1", "P2"] {
        let text = std::fs::read_to_string(root().join(format!("testdata/bench/{p}.tl"))).expect("bench pattern");
        let catalog = testkit::catalog_from(&root().join("testdata/bench/tripline.toml"));
        let compiled = dsl::compile_source(&dsl::SourceFile::new(format!("{p}.tl"), text), &catalog);
        let nfa = &compiled.patterns.first().expect("compiles").nfa;
        lines.push(format!("bench {p}: {}", Chain::of(nfa, usize::MAX).is_some()));
    }
    expect![[r#"
        ato_after_password_reset: false
        card_testing: false
        dormant_account_reactivation: false
        impossible_travel: true
        kyc_change_then_withdrawal: true
        mule_fan_in: false
        mule_fan_out: false
        quote_stuffing: false
        rapid_movement: false
        rapid_price_manipulation: false
        sanctioned_counterparty_transfer: true
        spoofing: false
        structuring: false
        wash_trade_round_trip: false
        wash_trade_self_match: true
        withdrawal_above_kyc_limit: true
        bench P1: true
        bench P2: false"#]]
    .assert_eq(&lines.join("\n"));
}

#[test]
fn chains_and_what_is_not_one() {
    let pattern = |m: &str, rest: &str| {
        let conditions = [("a", "name == \"a\""), ("b", "name == \"b\" and price > a.price"), ("c", "name == \"c\"")];
        let mut text = format!("pattern t from cep_events key id\n  match {m}\n  where\n");
        for (v, c) in conditions.iter().filter(|(v, _)| m.split(|c: char| !c.is_alphanumeric()).any(|w| w == *v)) {
            text.push_str(&format!("    {v}: {c}\n"));
        }
        text + rest
    };
    let cases = [
        ("a", ""),
        ("a followed by b", "  within 5s\n"),
        ("a next b followed by c", "  skip to last b\n"),
        ("a followed by any b", ""),
        ("a followed by b+", ""),
        ("a followed by b?", "  within 5s\n"),
        ("a not followed by b followed by c", ""),
        ("a followed by b within 1s of previous", "  within 5s\n"),
        ("(a followed by c){2}", ""),
    ];
    let got: Vec<String> = cases.iter().map(|(m, rest)| format!("{m}: {}", chain(&pattern(m, rest)))).collect();
    expect![[r#"
        a: true
        a followed by b: true
        a next b followed by c: true
        a followed by any b: false
        a followed by b+: false
        a followed by b?: false
        a not followed by b followed by c: false
        a followed by b within 1s of previous: false
        (a followed by c){2}: false"#]]
    .assert_eq(&got.join("\n"));
}
