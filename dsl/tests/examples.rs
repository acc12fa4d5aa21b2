//! The examples beside each library pattern are consistent with the pattern and the schemas:
//! events are records of the pattern's stream with the right fields and value kinds, and each
//! expected alert names the pattern's variables, output fields and real events of its key.
//! (This test does not run them: `service/tests/replay.rs` replays each pattern's events through
//! the engine with `tripline replay` and checks that exactly the expected alerts come out.)

mod common;

use std::collections::BTreeSet;

use common::*;
use dsl::{FieldType, StreamSchema};
use serde_json::Value as Json;

fn kind_ok(ty: FieldType, nullable: bool, symbols: Option<&Vec<String>>, v: &Json) -> Result<(), String> {
    match (ty, v) {
        (_, Json::Null) if nullable => Ok(()),
        (FieldType::Bool, Json::Bool(_)) => Ok(()),
        (FieldType::Int | FieldType::Timestamp, Json::Number(n)) if n.is_i64() => Ok(()),
        (FieldType::Float, Json::Number(_)) => Ok(()),
        (FieldType::Str, Json::String(s)) => match symbols {
            Some(sym) if !sym.contains(s) => Err(format!("\"{s}\" is not one of {sym:?}")),
            _ => Ok(()),
        },
        (FieldType::Unsupported, _) => Ok(()),
        (t, v) => Err(format!("{v} is not {}{}", t.describe(), if nullable { " or null" } else { "" })),
    }
}

/// Problems with one event line, for stream `st`.
fn check_event(st: &StreamSchema, line: &Json) -> Result<(), String> {
    let stream = line["stream"].as_str().ok_or("no \"stream\"")?;
    if stream != st.name {
        return Err(format!("stream is `{stream}`, the pattern reads `{}`", st.name));
    }
    let ty_name = line["type"].as_str().ok_or("no \"type\"")?;
    let ty = st.record_type(ty_name).ok_or_else(|| format!("stream `{}` has no record type `{ty_name}`", st.name))?;
    let value = line["value"].as_object().ok_or("no \"value\" object")?;
    for f in st.fields.iter().filter(|f| f.in_types[ty.index()]) {
        let top = f.path.split('.').next().unwrap_or(&f.path);
        let v = f.path.split('.').try_fold(&line["value"], |v, seg| v.get(seg)).unwrap_or(&Json::Null);
        if !value.contains_key(top) {
            return Err(format!("field `{}` is missing", f.path));
        }
        kind_ok(f.ty, f.nullable, f.symbols.as_ref(), v).map_err(|e| format!("field `{}`: {e}", f.path))?;
    }
    for k in value.keys() {
        if !st.fields.iter().any(|f| f.in_types[ty.index()] && f.path.split('.').next() == Some(k)) {
            return Err(format!("`{k}` is not a field of record type `{ty_name}`"));
        }
    }
    Ok(())
}

#[test]
fn examples_match_their_patterns_and_schemas() {
    let catalog = catalog_from(&root().join("tripline.toml"));
    let mut failures = Vec::new();
    let mut alerts_total = 0;
    for path in files(&root().join("patterns"), "tl") {
        let src = source(&path);
        let compiled = dsl::compile_source(&src, &catalog);
        assert!(compiled.is_ok(), "{} does not compile", path.display());
        for nfa in compiled.patterns.iter().map(|p| &p.nfa) {
            let name = &nfa.meta.name;
            let st = catalog.streams[&nfa.meta.stream].clone();
            let dir = root().join("patterns/examples");
            let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{name}.{ext}.jsonl")));
            let (Ok(events), Ok(alerts)) = (read("events"), read("alerts")) else {
                failures.push(format!("{name}: examples/{name}.events.jsonl or .alerts.jsonl is missing"));
                continue;
            };
            let mut keys = Vec::new();
            for (i, line) in events.lines().enumerate() {
                let parsed: Result<Json, _> = serde_json::from_str(line);
                match parsed.map_err(|e| e.to_string()).and_then(|j| check_event(&st, &j).map(|()| j)) {
                    Ok(j) => keys.push(j["value"][nfa.field_name(nfa.meta.key)].as_str().map(str::to_owned)),
                    Err(e) => failures.push(format!("{name}.events.jsonl:{}: {e}", i + 1)),
                }
            }
            let vars: Vec<&str> = nfa.vars.iter().filter(|v| !v.negated).map(|v| v.name.as_str()).collect();
            let outputs: Vec<&str> = nfa.outputs.iter().map(|o| o.name.as_str()).collect();
            let mut key_values = BTreeSet::new();
            for (i, line) in alerts.lines().enumerate() {
                alerts_total += 1;
                let at = format!("{name}.alerts.jsonl:{}", i + 1);
                let Ok(a) = serde_json::from_str::<Json>(line) else {
                    failures.push(format!("{at}: not JSON"));
                    continue;
                };
                if a["pattern"] != name.as_str() {
                    failures.push(format!("{at}: pattern is {}, expected {name}", a["pattern"]));
                }
                let key = a["key"].as_str().unwrap_or_default();
                key_values.insert(key.to_owned());
                let Some(m) = a["match"].as_object() else {
                    failures.push(format!("{at}: no \"match\""));
                    continue;
                };
                let named: Vec<&str> = m.keys().map(String::as_str).collect();
                let in_order: Vec<&str> = vars.iter().copied().filter(|v| named.contains(v)).collect();
                if named.len() != in_order.len() {
                    failures.push(format!("{at}: match names {named:?}, the pattern's variables are {vars:?}"));
                }
                for lines in m.values() {
                    for n in lines.as_array().into_iter().flatten() {
                        let n = n.as_u64().unwrap_or(0) as usize;
                        match keys.get(n.wrapping_sub(1)) {
                            Some(Some(k)) if k == key => {}
                            Some(k) => {
                                failures.push(format!("{at}: event line {n} has key {k:?}, the alert's key is {key}"))
                            }
                            None => failures.push(format!("{at}: there is no event line {n}")),
                        }
                    }
                }
                // JSON objects are unordered: compare the names as sets.
                let fields: BTreeSet<&str> =
                    a["fields"].as_object().map(|f| f.keys().map(String::as_str).collect()).unwrap_or_default();
                if fields != outputs.iter().copied().collect() {
                    failures.push(format!("{at}: fields {fields:?}, the pattern emits {outputs:?}"));
                }
                if a["message"].as_str().is_none_or(str::is_empty) {
                    failures.push(format!("{at}: no message"));
                }
            }
            if alerts.lines().count() == 0 {
                failures.push(format!("{name}: no expected alert"));
            }
            let distinct_keys: BTreeSet<_> = keys.iter().flatten().collect();
            if distinct_keys.len() < 2 {
                failures.push(format!(
                    "{name}: the events cover only {} key(s); near misses need another",
                    distinct_keys.len()
                ));
            }
        }
    }
    assert!(alerts_total >= 14, "only {alerts_total} expected alerts in the library");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
