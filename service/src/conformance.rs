//! `tripline conformance FILE...`: runs a corpus of FlinkCEP test cases (the format of
//! `shared/conformance/`) through Tripline: each case's pattern is translated into the pattern
//! language, compiled, fed its events (and watermarks) and its output compared as the corpus
//! README says. Prints one line per failing case and ends with `N passed, M failed`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use dsl::{Catalog, SourceFile, StreamSchema};
use engine::runtime::{Key, Match, Operator, Output, RunState, Timeout};
use engine::{Event, FieldId, Nfa, TypeId, Value};
use serde_json::Value as Json;

use crate::{err, out, EXIT_INVALID, EXIT_OK, EXIT_USAGE};

const CEP_EVENTS: &str = include_str!("../../testdata/schemas/cep_events.avsc");

/// Runs every case of every file; the exit status is 0 only if all pass.
pub fn run(files: &[PathBuf], verbose: bool) -> u8 {
    let schema = match StreamSchema::from_avro_json("cep_events", CEP_EVENTS, Some("ts")) {
        Ok(s) => s,
        Err(e) => {
            err(&format!("error: the conformance event schema is invalid: {e}\n"));
            return EXIT_USAGE;
        }
    };
    let mut catalog = Catalog::default();
    catalog.insert(schema.clone());
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                err(&format!("error: cannot read {}: {e}\n", file.display()));
                return EXIT_USAGE;
            }
        };
        let cases: Vec<Json> = match serde_json::from_str(&text) {
            Ok(Json::Array(a)) => a,
            Ok(_) => {
                err(&format!("error: {}: expected a JSON array of cases\n", file.display()));
                return EXIT_USAGE;
            }
            Err(e) => {
                err(&format!("error: {}: not JSON: {e}\n", file.display()));
                return EXIT_USAGE;
            }
        };
        for case in &cases {
            let id = case["id"].as_str().unwrap_or("?").to_owned();
            match run_case(case, &catalog, &schema) {
                Ok(()) => {
                    passed += 1;
                    if verbose {
                        out(&format!("ok   {id}\n"));
                    }
                }
                Err(diff) => {
                    failed += 1;
                    out(&format!("FAIL {id}: {diff}\n"));
                }
            }
        }
    }
    out(&format!("{passed} passed, {failed} failed\n"));
    if failed == 0 {
        EXIT_OK
    } else {
        EXIT_INVALID
    }
}

// ---------------------------------------------------------------------------------------------
// Translation of a case's pattern into the language
// ---------------------------------------------------------------------------------------------

fn ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain && !dsl::parser::is_keyword(name) {
        name.to_owned()
    } else {
        format!("`{name}`")
    }
}

fn literal(v: &Json) -> Result<String, String> {
    Ok(match v {
        Json::String(s) => format!("{s:?}"),
        Json::Number(n) if n.is_i64() => n.to_string(),
        Json::Number(n) => {
            let f = n.as_f64().ok_or("bad number")?;
            if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{f:.1}")
            } else {
                format!("{f}")
            }
        }
        Json::Bool(b) => b.to_string(),
        other => return Err(format!("unsupported literal {other}")),
    })
}

struct Translator<'a> {
    /// Variables that take several events (looping, or inside a quantified group).
    looping: &'a BTreeSet<String>,
}

impl Translator<'_> {
    fn cond(&self, c: &Json) -> Result<String, String> {
        let obj = c.as_object().ok_or_else(|| format!("condition is not an object: {c}"))?;
        let (op, arg) = obj.iter().next().ok_or("empty condition")?;
        let pair = |arg: &Json| -> Result<(String, String), String> {
            let a = arg.as_array().ok_or("expected [field, value]")?;
            Ok((self.operand(&a[0])?, self.operand(&a[1])?))
        };
        Ok(match op.as_str() {
            "true" => "true".to_owned(),
            "eq" | "ne" | "gt" | "ge" | "lt" | "le" => {
                let (a, b) = pair(arg)?;
                let sym = match op.as_str() {
                    "eq" => "==",
                    "ne" => "!=",
                    "gt" => ">",
                    "ge" => ">=",
                    "lt" => "<",
                    _ => "<=",
                };
                format!("{a} {sym} {b}")
            }
            "contains" => {
                let (a, b) = pair(arg)?;
                format!("{a} contains {b}")
            }
            "starts_with" => {
                let (a, b) = pair(arg)?;
                format!("{a} starts with {b}")
            }
            "and" | "or" => {
                let parts: Result<Vec<String>, String> = arg
                    .as_array()
                    .ok_or("expected a list")?
                    .iter()
                    .map(|c| Ok(format!("({})", self.cond(c)?)))
                    .collect();
                parts?.join(if op == "and" { " and " } else { " or " })
            }
            "not" => format!("not ({})", self.cond(arg)?),
            "if" => {
                let a = arg.as_array().ok_or("expected [cond, then, else]")?;
                format!("(if {} then ({}) else ({}))", self.cond(&a[0])?, self.cond(&a[1])?, self.cond(&a[2])?)
            }
            "iter" => return self.cond(obj.get("tree").ok_or("iterative condition without a tree")?),
            other => return Err(format!("unsupported condition `{other}`")),
        })
    }

    /// A field name, a constant, or an iterative-condition term.
    fn operand(&self, v: &Json) -> Result<String, String> {
        match v {
            Json::String(s) if ["id", "name", "price", "volume"].contains(&s.as_str()) => Ok(s.clone()),
            Json::Object(o) => {
                let (op, arg) = o.iter().next().ok_or("empty term")?;
                let a = arg.as_array();
                match op.as_str() {
                    "sum_of" | "first_of" => {
                        let a = a.ok_or("expected [pattern, field]")?;
                        let var = a[0].as_str().ok_or("pattern name")?;
                        let field = a[1].as_str().ok_or("field name")?;
                        if self.looping.contains(var) {
                            let f = if op == "sum_of" { "sum" } else { "first" };
                            Ok(format!("{f}({}.{field})", ident(var)))
                        } else if op == "first_of" {
                            Ok(format!("{}.{field}", ident(var)))
                        } else {
                            Ok(format!("coalesce({}.{field}, 0)", ident(var)))
                        }
                    }
                    "count_of" => {
                        let var = arg.as_str().ok_or("pattern name")?;
                        if self.looping.contains(var) {
                            Ok(format!("count({})", ident(var)))
                        } else {
                            Ok(format!("(if {0}.id is null then 0 else 1)", ident(var)))
                        }
                    }
                    "add" => {
                        let a = a.ok_or("expected [x, y]")?;
                        Ok(format!("({} + {})", self.operand(&a[0])?, self.operand(&a[1])?))
                    }
                    _ => self.cond(v).map(|c| format!("({c})")),
                }
            }
            other => literal(other),
        }
    }
}

fn collect_looping(seq: &[Json], in_loop: bool, out: &mut BTreeSet<String>) {
    for e in seq {
        let looping = in_loop || !e["quant"].is_null();
        if let Some(g) = e.get("group") {
            collect_looping(g["seq"].as_array().map_or(&[][..], |v| v), looping, out);
        } else if looping {
            if let Some(n) = e["name"].as_str() {
                out.insert(n.to_owned());
            }
        }
    }
}

struct Pieces {
    conditions: Vec<String>,
}

fn element(e: &Json, case: &Json, tr: &Translator<'_>, pieces: &mut Pieces) -> Result<String, String> {
    let mut s = if let Some(g) = e.get("group") {
        format!("({})", sequence(g["seq"].as_array().ok_or("group without seq")?, case, tr, pieces)?)
    } else {
        let name = e["name"].as_str().ok_or("element without name")?;
        let mut s = ident(name);
        if e["subtype"].as_str() == Some("SubEvent") {
            s.push_str(": SubEvent");
        }
        let mut def = format!("{}: {}", ident(name), tr.cond(&e["cond"])?);
        if !e["until"].is_null() {
            def.push_str(&format!(" until {}", tr.cond(&e["until"])?));
        }
        pieces.conditions.push(def);
        s
    };
    match (&e["quant"], e["optional"].as_bool() == Some(true)) {
        (Json::Null, true) => s.push('?'),
        (Json::Null, false) => {}
        (q, optional) => {
            let min = q["min"].as_u64().ok_or("quant without min")?;
            match (min, q["max"].as_u64()) {
                (1, None) => s.push('+'),
                (n, None) => s.push_str(&format!("{{{n},}}")),
                (n, Some(m)) if n == m => s.push_str(&format!("{{{n}}}")),
                (n, Some(m)) => s.push_str(&format!("{{{n},{m}}}")),
            }
            if optional {
                s.push_str(" optional");
            }
        }
    }
    if e["greedy"].as_bool() == Some(true) {
        s.push_str(" greedy");
    }
    match e["loop_contiguity"].as_str() {
        Some("strict") => s.push_str(" consecutive"),
        Some("any") => s.push_str(" allow combinations"),
        _ => {}
    }
    if case["within_type"].as_str() == Some("previous_and_current")
        && e["name"].as_str().is_some()
        && e["name"] == case["within_declared_on"]
    {
        let ms = case["within_ms"].as_i64().ok_or("within_ms")?;
        s.push_str(&format!(" within {ms}ms of previous"));
    }
    Ok(s)
}

fn sequence(seq: &[Json], case: &Json, tr: &Translator<'_>, pieces: &mut Pieces) -> Result<String, String> {
    let mut s = String::new();
    for (i, e) in seq.iter().enumerate() {
        if i > 0 {
            let c = match e["contiguity_to_prev"].as_str() {
                Some("next") => "next",
                Some("followedBy") => "followed by",
                Some("followedByAny") => "followed by any",
                Some("notNext") => "not next",
                Some("notFollowedBy") => "not followed by",
                other => return Err(format!("unsupported contiguity {other:?}")),
            };
            s.push_str(&format!("\n        {c} "));
        }
        s.push_str(&element(e, case, tr, pieces)?);
    }
    Ok(s)
}

/// The case's pattern in the language.
pub fn translate(case: &Json) -> Result<String, String> {
    let seq = case["pattern"]["seq"].as_array().ok_or("pattern without seq")?;
    let mut looping = BTreeSet::new();
    collect_looping(seq, false, &mut looping);
    let tr = Translator { looping: &looping };
    let mut pieces = Pieces { conditions: Vec::new() };
    let body = sequence(seq, case, &tr, &mut pieces)?;
    let mut p = String::from("pattern conformance_case\n  from cep_events\n  key id\n");
    p.push_str(&format!("  match {body}\n"));
    if !pieces.conditions.is_empty() {
        p.push_str("  where\n");
        for c in &pieces.conditions {
            p.push_str(&format!("    {c}\n"));
        }
    }
    if let (Some(ms), false) =
        (case["within_ms"].as_i64(), case["within_type"].as_str() == Some("previous_and_current"))
    {
        p.push_str(&format!("  within {ms}ms\n"));
    }
    let skip = match &case["skip"] {
        Json::String(s) if s == "no_skip" => "none".to_owned(),
        Json::String(s) if s == "skip_to_next" => "to next".to_owned(),
        Json::String(s) if s == "skip_past_last_event" => "past last event".to_owned(),
        Json::Object(o) => match (o.get("skip_to_first"), o.get("skip_to_last")) {
            (Some(n), _) => format!("to first {}", ident(n.as_str().ok_or("skip target")?)),
            (_, Some(n)) => format!("to last {}", ident(n.as_str().ok_or("skip target")?)),
            _ => return Err(format!("unsupported skip {o:?}")),
        },
        other => return Err(format!("unsupported skip {other}")),
    };
    p.push_str(&format!("  skip {skip}\n"));
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

/// A match as the corpus writes it: variable name -> event refs.
type Named = Vec<(String, Vec<String>)>;

/// What a run produced: matches and timeouts as named maps, late refs.
#[derive(Default)]
struct Outcome {
    matches: Vec<Named>,
    timeouts: Vec<(Named, i64)>,
    late: Vec<String>,
}

fn ref_of(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

struct Feed {
    events: Vec<(Arc<Event>, String)>,
}

fn build_events(case: &Json, schema: &StreamSchema) -> Result<Feed, String> {
    let field = |n: &str| schema.field(n).ok_or_else(|| format!("no field {n}"));
    let (fid, fname, fprice, fts, fvol) =
        (field("id")?, field("name")?, field("price")?, field("ts")?, field("volume")?);
    let mut events = Vec::new();
    for (i, e) in case["events"].as_array().ok_or("no events")?.iter().enumerate() {
        let mut fields = vec![Value::Null; schema.fields.len()];
        let set = |fields: &mut Vec<Value>, f: FieldId, v: Value| fields[f.index()] = v;
        let ts = e["ts"].as_i64().unwrap_or(0);
        set(&mut fields, fid, e["id"].as_i64().map_or(Value::Null, Value::Int));
        set(&mut fields, fname, e["name"].as_str().map_or(Value::Null, Value::str));
        set(&mut fields, fprice, e["price"].as_f64().map_or(Value::Null, Value::Float));
        set(&mut fields, fts, Value::Int(ts));
        let kind = if e["type"].as_str() == Some("SubEvent") {
            set(&mut fields, fvol, e["volume"].as_f64().map_or(Value::Null, Value::Float));
            schema.record_type("SubEvent").unwrap_or(TypeId(0))
        } else {
            schema.record_type("Event").unwrap_or(TypeId(0))
        };
        events.push((Arc::new(Event { seq: i as u64, ts, kind, fields: fields.into() }), ref_of(&e["ref"])));
    }
    Ok(Feed { events })
}

fn named(nfa: &Nfa, feed: &Feed, events: &[(engine::VarId, Vec<Arc<Event>>)]) -> Named {
    events
        .iter()
        .map(|(v, list)| {
            (nfa.var_name(*v).to_owned(), list.iter().map(|e| feed.events[e.seq as usize].1.clone()).collect())
        })
        .collect()
}

fn partition(case: &Json, e: &Event, schema: &StreamSchema) -> String {
    match case["partition_by"].as_str().and_then(|f| schema.field(f)) {
        Some(f) => e.field(f).to_string(),
        None => String::new(),
    }
}

fn run_processing_free(case: &Json, nfa: &Nfa, feed: &Feed, schema: &StreamSchema) -> Outcome {
    let mut states: BTreeMap<String, RunState> = BTreeMap::new();
    let mut outcome = Outcome::default();
    let comparator = case["same_timestamp_order"].as_str() == Some("price ascending");
    let mut order: Vec<usize> = (0..feed.events.len()).collect();
    if comparator {
        // Events of one processing-time instant are buffered and sorted before matching.
        order.sort_by(|&a, &b| {
            let (x, y) = (&feed.events[a].0, &feed.events[b].0);
            x.ts.cmp(&y.ts).then(price(x).total_cmp(&price(y)))
        });
    }
    for i in order {
        let (event, _) = &feed.events[i];
        let st = states.entry(partition(case, event, schema)).or_insert_with(|| RunState::new(nfa));
        let (pending, timeouts, _) = st.advance_time(nfa, event.ts, true);
        record_timeouts(nfa, feed, &timeouts, &mut outcome);
        let mut out = st.process(nfa, event.clone(), event.ts);
        out.extend(pending);
        record(nfa, feed, &out, &mut outcome);
    }
    outcome
}

fn price(e: &Event) -> f64 {
    e.fields.get(2).and_then(Value::as_f64).unwrap_or(0.0)
}

fn record(nfa: &Nfa, feed: &Feed, ms: &[Match], outcome: &mut Outcome) {
    for m in ms {
        outcome.matches.push(named(nfa, feed, &m.events));
    }
}

fn record_timeouts(nfa: &Nfa, feed: &Feed, ts: &[Timeout], outcome: &mut Outcome) {
    for t in ts {
        outcome.timeouts.push((named(nfa, feed, &t.events), t.ts));
    }
}

/// Event time, through the engine's operator (FlinkCEP's `CepOperator` semantics).
fn run_event_time(case: &Json, nfa: &Nfa, feed: &Feed, schema: &StreamSchema) -> Result<Outcome, String> {
    let tie_break =
        (case["same_timestamp_order"].as_str() == Some("price ascending")).then(|| schema.field("price")).flatten();
    let config = engine::runtime::Config { tie_break, timeouts: true, ..Default::default() };
    let mut op = Operator::new(Arc::new(nfa.clone()), config);
    let wm_value = |w: &Json| -> Result<i64, String> {
        match w {
            Json::String(s) if s == "MIN" => Ok(i64::MIN),
            Json::String(s) if s == "MAX" => Ok(i64::MAX),
            other => other.as_i64().ok_or_else(|| format!("bad watermark {other}")),
        }
    };
    let mut marks: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for w in case["watermarks"].as_array().into_iter().flatten() {
        marks.entry(ref_of(&w["after_ref"])).or_default().push(wm_value(&w["wm"])?);
    }
    let mut out = Vec::new();
    for w in marks.get("START").into_iter().flatten() {
        op.advance_watermark(*w, &mut out);
    }
    for (event, r) in &feed.events {
        op.process(Key::Str(partition(case, event, schema).into()), event.clone(), &mut out);
        for w in marks.get(r).into_iter().flatten() {
            op.advance_watermark(*w, &mut out);
        }
    }
    for w in marks.get("END").into_iter().flatten() {
        op.advance_watermark(*w, &mut out);
    }
    let mut outcome = Outcome::default();
    for o in out {
        match o {
            Output::Match { events, .. } => outcome.matches.push(named(nfa, feed, &events)),
            Output::Timeout { events, ts, .. } => outcome.timeouts.push((named(nfa, feed, &events), ts)),
            Output::Late { event, .. } => outcome.late.push(feed.events[event.seq as usize].1.clone()),
        }
    }
    Ok(outcome)
}

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

fn expected_map(m: &Json) -> Named {
    m.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_array().map(|a| a.iter().map(ref_of).collect()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn flat(m: &Named) -> String {
    let mut refs: Vec<&String> = m.iter().flat_map(|(_, l)| l).collect();
    refs.sort();
    format!("[{}]", refs.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "))
}

fn by_name(m: &Named) -> String {
    let mut parts: Vec<String> = m.iter().map(|(k, l)| format!("{k}:{}", l.join(" "))).collect();
    parts.sort();
    format!("{{{}}}", parts.join(", "))
}

fn compare_lists(what: &str, mut want: Vec<String>, mut got: Vec<String>, ordered: bool) -> Result<(), String> {
    if !ordered {
        want.sort();
        got.sort();
    }
    if want == got {
        return Ok(());
    }
    let mut msg = format!("{what} differ (expected {}, got {})", want.len(), got.len());
    if ordered && {
        let (mut a, mut b) = (want.clone(), got.clone());
        a.sort();
        b.sort();
        a == b
    } {
        let _ = write!(msg, "; same set, wrong order: expected {} got {}", want.join(" "), got.join(" "));
        return Err(msg);
    }
    let mut missing = want.clone();
    let mut extra = Vec::new();
    for g in &got {
        match missing.iter().position(|w| w == g) {
            Some(i) => {
                missing.remove(i);
            }
            None => extra.push(g.clone()),
        }
    }
    if !missing.is_empty() {
        let _ = write!(msg, "; missing {}", missing.join(" "));
    }
    if !extra.is_empty() {
        let _ = write!(msg, "; unexpected {}", extra.join(" "));
    }
    Err(msg)
}

fn compare(case: &Json, outcome: &Outcome, feed: &Feed) -> Result<(), String> {
    let expected: Vec<Named> = case["expected_matches"].as_array().into_iter().flatten().map(expected_map).collect();
    let ordered = case["expected_order_matters"].as_bool() == Some(true);
    let mode = case["match_compare"].as_str().unwrap_or("events_only");
    let project = |m: &Named, like: Option<&Named>| -> String {
        match mode {
            "by_pattern_name" => by_name(m),
            "first_event_ids" | "first_event_prices" => {
                let names: Vec<&String> =
                    like.map_or_else(|| m.iter().map(|(k, _)| k).collect(), |l| l.iter().map(|(k, _)| k).collect());
                let mut parts: Vec<String> = names
                    .iter()
                    .map(|n| {
                        let first = m.iter().find(|(k, _)| k == *n).and_then(|(_, l)| l.first());
                        let v = first.and_then(|r| feed.events.iter().find(|(_, x)| x == r)).map(|(e, _)| {
                            if mode == "first_event_ids" {
                                e.fields[0].to_string()
                            } else {
                                e.fields[2].to_string()
                            }
                        });
                        format!("{n}:{}", v.unwrap_or_else(|| "-".into()))
                    })
                    .collect();
                parts.sort();
                format!("{{{}}}", parts.join(", "))
            }
            _ => flat(m),
        }
    };
    let like = expected.first();
    let want: Vec<String> = expected.iter().map(|m| project(m, Some(m))).collect();
    let got: Vec<String> = outcome.matches.iter().map(|m| project(m, like)).collect();
    compare_lists("matches", want, got, ordered)?;
    if let Some(ts) = case["expected_timeouts"].as_array() {
        let want: Vec<String> =
            ts.iter().map(|t| format!("{}@{}", by_name(&expected_map(&t["match"])), t["timeout_ts"])).collect();
        let got: Vec<String> = outcome.timeouts.iter().map(|(m, t)| format!("{}@{t}", by_name(m))).collect();
        compare_lists("timeouts", want, got, false)?;
    }
    if let Some(late) = case["expected_late"].as_array() {
        compare_lists("late events", late.iter().map(ref_of).collect(), outcome.late.clone(), false)?;
    }
    Ok(())
}

fn run_case(case: &Json, catalog: &Catalog, schema: &StreamSchema) -> Result<(), String> {
    let text = translate(case).map_err(|e| format!("cannot translate: {e}"))?;
    let src = SourceFile::new("case.tl", text.clone());
    let compiled = dsl::compile_source(&src, catalog);
    let Some(p) = compiled.patterns.first() else {
        let diags: Vec<String> = compiled.diagnostics.iter().map(|d| d.render()).collect();
        return Err(format!("does not compile:\n{text}\n{}", diags.join("\n")));
    };
    let nfa = &p.nfa;
    let feed = build_events(case, schema)?;
    let outcome = match case["time"].as_str() {
        Some("event") => run_event_time(case, nfa, &feed, schema)?,
        _ => run_processing_free(case, nfa, &feed, schema),
    };
    compare(case, &outcome, &feed)
}
