//! Alerts and timeouts as JSON lines (the bytes the service commits and a replay writes), and
//! the stable alert id: SHA-256 of the pattern's content hash, the key and the matched events'
//! coordinates.

use std::fmt::Write as _;

use engine::runtime::Key;
use engine::{Bound, Nfa, Value};
use sha2::{Digest, Sha256};

use super::coords::coords;

fn json_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or_else(|| "null".to_owned(), |n| n.to_string()),
        Value::Str(s) => serde_json::to_string(s.as_str()).unwrap_or_default(),
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A stable alert id: the pattern's content hash, the key and the matched events' coordinates.
pub fn alert_id(nfa: &Nfa, key: &Key, matched: &[(String, Vec<u64>)]) -> String {
    let mut h = Sha256::new();
    h.update(nfa.meta.hash.as_bytes());
    h.update([0]);
    h.update(key.to_string().as_bytes());
    for (var, seqs) in matched {
        h.update([0]);
        h.update(var.as_bytes());
        for s in seqs {
            h.update(s.to_be_bytes());
        }
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// One alert as a JSON line, fields in a fixed order. `match` lists, per variable, the offsets
/// of the events it took in `partition` (an export without coordinates: partition 0, line or
/// record numbers) of its stream's topic. `lanes`: the events may come from several partitions
/// (a pattern that reads a repartition topic, see `core::repartition`): `partitions` lists each
/// one's partition, parallel to `match`, and `partition` is the first one's. `shadow`: the
/// alert goes to the shadow topic (its pattern is declared shadow, or not live on its key),
/// and says so in `mode`. `refs`: the reference tables its outputs read.
pub fn alert_line(
    nfa: &Nfa,
    refs: &Bound,
    key: &Key,
    ts: i64,
    events: &engine::runtime::MatchEvents,
    shadow: bool,
    lanes: bool,
) -> String {
    let body = engine::alert::body_with(nfa, events, refs);
    let m = &nfa.meta;
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "{{\"alert_id\":{},\"pattern\":{},\"version\":{},\"hash\":{},\"severity\":{},\"mode\":{},\"key\":{},\"ts\":{ts},",
        json_str(&alert_id(nfa, key, &body.matched)),
        json_str(&m.name),
        m.version,
        json_str(&m.hash),
        json_str(m.severity.as_str()),
        json_str(if shadow { "shadow" } else { "live" }),
        json_str(&key.to_string()),
    );
    write_match(&mut s, lanes, &body.matched);
    s.push_str(",\"fields\":{");
    for (i, (name, v)) in body.fields.iter().enumerate() {
        let _ = write!(s, "{}{}:{}", if i > 0 { "," } else { "" }, json_str(name), json_value(v));
    }
    let _ = write!(s, "}},\"message\":{}}}", json_str(&body.message));
    s
}

/// A timed-out partial match as a JSON line: the pattern, the key, when the window closed and
/// the events taken so far (`lanes`: as for [`alert_line`]).
pub fn timeout_line(nfa: &Nfa, key: &Key, ts: i64, events: &engine::runtime::MatchEvents, lanes: bool) -> String {
    let m = &nfa.meta;
    let mut matched = Vec::new();
    for (i, v) in nfa.vars.iter().enumerate() {
        if let Some((_, list)) = events.iter().find(|(var, _)| var.index() == i) {
            matched.push((v.name.clone(), list.iter().map(|e| e.seq).collect::<Vec<u64>>()));
        }
    }
    let mut s = String::with_capacity(160);
    let _ = write!(
        s,
        "{{\"pattern\":{},\"version\":{},\"hash\":{},\"key\":{},\"timed_out_at\":{ts},",
        json_str(&m.name),
        m.version,
        json_str(&m.hash),
        json_str(&key.to_string()),
    );
    write_match(&mut s, lanes, &matched);
    s.push('}');
    s
}

/// `"partition":P,"match":{"var":[offset,...],...}`, with `lanes`
/// `,"partitions":{"var":[partition,...],...}` after it.
fn write_match(s: &mut String, lanes: bool, matched: &[(String, Vec<u64>)]) {
    let partition = matched.iter().flat_map(|(_, seqs)| seqs.first()).map(|&q| coords(q).0).next().unwrap_or(0);
    let _ = write!(s, "\"partition\":{partition},\"match\":{{");
    let list = |s: &mut String, part: fn(u64) -> i64| {
        for (i, (var, seqs)) in matched.iter().enumerate() {
            let list: Vec<String> = seqs.iter().map(|&q| part(q).to_string()).collect();
            let _ = write!(s, "{}{}:[{}]", if i > 0 { "," } else { "" }, json_str(var), list.join(","));
        }
        s.push('}');
    };
    list(s, |q| coords(q).1);
    if lanes {
        s.push_str(",\"partitions\":{");
        list(s, |q| i64::from(coords(q).0));
    }
}
