//! Reference tables in the language: `x in list NAME`, `x not in list NAME` and
//! `lookup(NAME, x)` parse, check against the catalog's declarations and compile; `list` stays
//! an ordinary name; the formatter keeps them; the content hash names tables, never contents.
//! (The diagnostics are in the error corpus, `testdata/dsl/err/9*.tl`; an automaton's dump in
//! `testdata/dsl/nfa/reference_tables.tl`.)

mod common;

use common::*;
use dsl::{Catalog, FieldType, SourceFile, TableDecl};
use engine::{Expr, TableId};

fn compile(text: &str, catalog: &Catalog) -> dsl::Compiled {
    dsl::compile_source(&SourceFile::new("t.tl", text), catalog)
}

fn compile_ok(text: &str, catalog: &Catalog) -> Vec<engine::Nfa> {
    let c = compile(text, catalog);
    let errors: Vec<String> = c.diagnostics.iter().map(|d| d.render()).collect();
    assert!(c.is_ok(), "{}", errors.join("\n"));
    c.patterns.into_iter().map(|p| p.nfa).collect()
}

const BOTH_FORMS: &str = r#"pattern risky_wire
  "A wire to a high-risk country by a customer whose KYC tier is not LOW"
  from payments
  key account_id
  match wire
  where
    wire: counterparty_country in list high_risk_countries
          and lookup(kyc_tier, customer_id) != "LOW"
          and country not in list high_risk_countries
          and currency in ("EUR", "USD")
          and amount > coalesce(lookup(customer_limit, customer_id), 10000.0)
  message "{wire.customer_id} ({lookup(kyc_tier, wire.customer_id)}) wired {wire.amount}"
  emit { tier: lookup(kyc_tier, wire.customer_id), listed: wire.country in list high_risk_countries }
"#;

#[test]
fn both_forms_check_and_compile() {
    let nfa = compile_ok(BOTH_FORMS, &test_catalog()).remove(0);
    assert_eq!(nfa.tables, ["high_risk_countries", "kyc_tier", "customer_limit"], "in order of first use");
    expect_test::expect![[r#"
        tables: high_risk_countries, kyc_tier, customer_limit
        conditions:
          c0: counterparty_country in list high_risk_countries and lookup(kyc_tier, customer_id) != "LOW" and country not in list high_risk_countries and currency in ("EUR", "USD") and amount > coalesce(lookup(customer_limit, customer_id), 10000.0)
        states:
          s0 $end [final]
          s1 wire [start]
            take    -> s0 when c0
        emit:
          tier: lookup(kyc_tier, wire.customer_id)
          listed: wire.country in list high_risk_countries
        message: {wire.customer_id} ({lookup(kyc_tier, wire.customer_id)}) wired {wire.amount}
    "#]]
    .assert_eq(engine::dump::dump(&nfa).split_once("tables:").map(|(_, t)| format!("tables:{t}")).as_deref().unwrap_or(""));
    // The ids the expressions name are the automaton's.
    let Expr::Lookup { table, key } = &nfa.outputs[0].expr else { panic!("{:?}", nfa.outputs[0].expr) };
    assert_eq!(*table, TableId(1));
    assert!(matches!(**key, Expr::VarField(..)));
    let Expr::InTable { table, negated: false, .. } = &nfa.outputs[1].expr else { panic!() };
    assert_eq!(*table, TableId(0));
}

#[test]
fn list_is_not_a_reserved_word() {
    // A variable, a field path segment and an output named `list`; `in (...)` as before.
    let text = r#"pattern p
  from payments
  key account_id
  match list followed by other
  where
    list: country in list high_risk_countries and list.currency in ("EUR")
    other: country in (list.country, "FR") or country not in ("DE")
  emit { list: list.country }
"#;
    let c = compile(text, &test_catalog());
    // `in (...)` holds constants only: `list.country` there is refused, not misread as a table.
    let codes: Vec<&str> = c.diagnostics.iter().map(|d| d.code).collect();
    assert!(!codes.contains(&"unknown-table"), "{codes:?}");
    let text = text.replace("(list.country, \"FR\")", "(\"FR\")");
    compile_ok(&text, &test_catalog());
}

#[test]
fn a_catalog_without_tables_says_where_to_declare_them() {
    let mut catalog = test_catalog();
    catalog.tables.clear();
    let c = compile(BOTH_FORMS, &catalog);
    let rendered: Vec<String> = c.diagnostics.iter().map(|d| d.render()).collect();
    expect_test::expect![[r#"
        t.tl:7:40: error[unknown-table]: unknown table `high_risk_countries`: no tables are declared
          |
        7 |     wire: counterparty_country in list high_risk_countries
          |                                        ^^^^^^^^^^^^^^^^^^^
          = hint: declare it under `[tables.high_risk_countries]` in the config
    "#]]
    .assert_eq(&rendered[0]);
    assert!(c.diagnostics.iter().all(|d| d.code == "unknown-table"), "{rendered:?}");
}

#[test]
fn keys_and_values_follow_the_declared_types() {
    let mut catalog = test_catalog();
    catalog.insert_table("limit_by_id", TableDecl::map(FieldType::Int, FieldType::Float));
    // A whole-number key takes numbers (as `in (1, 2.5)` does); the value is a number.
    let ok = r#"pattern p
  from cep_events
  key name
  match a
  where
    a: price > lookup(limit_by_id, id) and price in list watched_ids and id in list limit_by_id
"#;
    compile_ok(ok, &catalog);
    let bad = ok.replace("price > lookup(limit_by_id, id)", "lookup(limit_by_id, id) == name");
    let c = compile(&bad, &catalog);
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert_eq!(c.diagnostics[0].message, "cannot compare a number with text");
}

#[test]
fn the_formatter_keeps_the_new_forms() {
    let canonical = compile_ok(BOTH_FORMS, &test_catalog()).remove(0).meta.hash;
    assert_eq!(dsl::format::format(BOTH_FORMS), BOTH_FORMS, "already canonical");
    let messy: String =
        BOTH_FORMS.lines().enumerate().map(|(i, l)| format!("{}{}\t\n", " ".repeat(i % 5), l.trim())).collect();
    let formatted = dsl::format::format(&messy);
    assert_eq!(formatted, BOTH_FORMS);
    assert_eq!(dsl::format::format(&formatted), formatted, "idempotent");
    assert_eq!(compile_ok(&messy, &test_catalog())[0].meta.hash, canonical, "layout changes no hash");
}

#[test]
fn the_content_hash_names_tables_never_contents() {
    let mut catalog = test_catalog();
    // The same shape under another name.
    catalog.insert_table("high_risk_countries_v2", TableDecl::list(FieldType::Str));
    let hash = |text: &str| compile_ok(text, &catalog)[0].meta.hash.clone();
    let original = hash(BOTH_FORMS);
    assert_eq!(hash(BOTH_FORMS), original);
    assert_ne!(hash(&BOTH_FORMS.replace("list high_risk_countries", "list high_risk_countries_v2")), original);
    assert_ne!(hash(&BOTH_FORMS.replace("country not in list", "country in list")), original);
    // Contents are not part of the compiled pattern: installing any changes nothing of it.
    let nfa = std::sync::Arc::new(compile_ok(BOTH_FORMS, &catalog).remove(0));
    let mut op = engine::runtime::Operator::new(nfa.clone(), Default::default());
    let mut table = engine::RefTable::new(engine::TableKind::List);
    table.insert(engine::Value::str("IR"), engine::Value::Bool(true)).expect("a valid key");
    let mut data = engine::RefData::default();
    data.set("high_risk_countries", std::sync::Arc::new(table));
    op.set_reference(&data);
    assert_eq!(dsl::compile::content_hash(op.nfa()), original);
}

#[test]
fn the_reference_data_example_of_the_language_guide_compiles() {
    let guide = std::fs::read_to_string(root().join("docs/language.md")).expect("docs/language.md");
    let section = guide.split("### 4.11 Reference data").nth(1).expect("a section 4.11");
    let example = section.split("```tl\n").nth(1).and_then(|s| s.split("```").next()).expect("an example");
    let nfa = compile_ok(example, &test_catalog()).remove(0);
    assert_eq!(nfa.tables, ["high_risk_countries", "kyc_tier"]);
}
