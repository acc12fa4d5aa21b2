//! One alert ([`alert`]): which event each step of the pattern took and why its guard held,
//! re-derived by walking the automaton along the matched events.

use std::fmt::Write as _;
use std::sync::Arc;

use engine::runtime::{Key, MatchEvents};
use engine::{Bound, Cond, Event, Nfa, StateId, VarId};
use serde_json::Value as Json;

use crate::core::alert::alert_id;
use crate::core::coords::seq_of;
use crate::core::times::format as fmt_time;
use crate::error::Error;

use super::text::{
    coord, fmt_duration, ordinal, part_reads, part_text, part_value, parts, shown_values, step, verdict,
};
use super::walk::{find_take, view_of};

fn field<'a>(alert: &'a Json, name: &str) -> Result<&'a Json, Error> {
    alert.get(name).ok_or_else(|| Error::usage(format!("the alert has no `{name}`")))
}

fn str_field<'a>(alert: &'a Json, name: &str) -> Result<&'a str, Error> {
    field(alert, name)?.as_str().ok_or_else(|| Error::usage(format!("the alert's `{name}` is not text")))
}

fn int_field(alert: &Json, name: &str) -> Result<i64, Error> {
    field(alert, name)?.as_i64().ok_or_else(|| Error::usage(format!("the alert's `{name}` is not a whole number")))
}

/// Explains one alert: which event each step of the pattern took and why its condition held,
/// evaluated on exactly what the engine saw then (the events the match had taken before).
///
/// `alert` is an alert line as [`crate::core::alert::alert_line`] writes it; `events` are its matched
/// events (decoded, `seq` = [`seq_of`]`(partition, offset)`), in any order; events that the
/// alert does not name are ignored. An error when an event is missing, when the alert is not
/// this pattern's (name, content hash), or when the events are not the alert's (key, id).
pub fn alert(nfa: &Nfa, topic: &str, alert: &Json, events: &[Arc<Event>], refs: &Bound) -> Result<String, Error> {
    check_pattern(nfa, alert)?;
    let id = str_field(alert, "alert_id")?;
    let key = str_field(alert, "key")?;
    let ts = int_field(alert, "ts")?;
    let matched = coordinates(alert)?;
    let taken = taken_events(nfa, topic, &matched, key, events)?;
    let all = view_of(&taken);
    let body = engine::alert::body_with(nfa, &all, refs);
    let key_value = Key::of(taken[0].1.field(nfa.meta.key));
    let expected_id = alert_id(nfa, &key_value, &body.matched);
    if expected_id != id {
        return Err(Error::usage(format!(
            "the alert id {id} does not belong to these events under this pattern (they give {expected_id})"
        )));
    }

    let mut o = String::new();
    write_head(&mut o, nfa, id, key, ts, &taken, &body.matched);
    let mut state = nfa.start;
    for i in 0..taken.len() {
        state = write_event(&mut o, nfa, topic, &taken, i, state, refs);
    }
    let message = str_field(alert, "message")?;
    let _ = writeln!(o, "\nMessage: {message}");
    if body.message != message {
        let _ = writeln!(
            o,
            "PROBLEM: these events give the message \"{}\": they are not the events the service matched.",
            body.message
        );
    }
    Ok(o)
}

/// The alert is of this pattern, and of this version of it (its content hash).
fn check_pattern(nfa: &Nfa, alert: &Json) -> Result<(), Error> {
    let m = &nfa.meta;
    let pattern = str_field(alert, "pattern")?;
    if pattern != m.name {
        return Err(Error::usage(format!("the alert is of pattern `{pattern}`, not `{}`", m.name)));
    }
    let hash = str_field(alert, "hash")?;
    if hash != m.hash {
        return Err(Error::usage(format!(
            "the alert was made by {pattern} with content hash {hash} (version {}); this pattern compiles to hash {} \
             (version {}): explain the alert with the pattern the service ran",
            field(alert, "version")?,
            m.hash,
            m.version
        )));
    }
    Ok(())
}

/// A step an alert names and its events' (partition, offset).
pub type Step = (String, Vec<(i32, i64)>);

/// Per step the alert names, its events' (partition, offset): the offsets of `match`, in
/// `partition`, or per event in `partitions` when the alert has it (a pattern that reads a
/// repartition topic: its events come from several partitions).
pub fn coordinates(alert: &Json) -> Result<Vec<Step>, Error> {
    let partition = int_field(alert, "partition")?;
    let partition =
        i32::try_from(partition).map_err(|_| Error::usage(format!("the alert's partition {partition} is not one")))?;
    let matched =
        field(alert, "match")?.as_object().ok_or_else(|| Error::usage("the alert's `match` is not an object"))?;
    let partitions = alert.get("partitions").and_then(Json::as_object);
    let mut out = Vec::new();
    for (name, offsets) in matched {
        let offsets =
            offsets.as_array().ok_or_else(|| Error::usage(format!("the alert's `match.{name}` is not a list")))?;
        let parts = partitions.and_then(|p| p.get(name)).and_then(Json::as_array);
        let mut list = Vec::new();
        for (i, o) in offsets.iter().enumerate() {
            let o = o
                .as_i64()
                .ok_or_else(|| Error::usage(format!("the alert's `match.{name}` holds {o}, not an offset")))?;
            let p = match parts {
                Some(ps) => ps.get(i).and_then(Json::as_i64).and_then(|p| i32::try_from(p).ok()).ok_or_else(|| {
                    Error::usage(format!("the alert's `partitions.{name}` has no partition for offset {o}"))
                })?,
                None => partition,
            };
            list.push((p, o));
        }
        out.push((name.clone(), list));
    }
    Ok(out)
}

/// The events the alert names (coordinates per step, see [`coordinates`]), found among
/// `events` and checked to be of the alert's key, in the order the engine took them.
fn taken_events(
    nfa: &Nfa,
    topic: &str,
    matched: &[Step],
    key: &str,
    events: &[Arc<Event>],
) -> Result<Vec<(VarId, Arc<Event>)>, Error> {
    let m = &nfa.meta;
    let mut taken: Vec<(VarId, Arc<Event>)> = Vec::new();
    for (name, offsets) in matched {
        let var =
            nfa.vars.iter().position(|v| &v.name == name && !v.negated).map(|i| VarId(i as u16)).ok_or_else(|| {
                Error::usage(format!("the alert names `{name}`, which is not a step of pattern {}", m.name))
            })?;
        for &(partition, o) in offsets {
            let seq = seq_of(partition, o);
            let event = events.iter().find(|e| e.seq == seq).ok_or_else(|| {
                Error::usage(format!(
                    "event {} ({name}) of the alert is missing ({} event(s) given)",
                    coord(topic, seq),
                    events.len()
                ))
            })?;
            let event_key = Key::of(event.field(m.key)).to_string();
            if event_key != key {
                return Err(Error::usage(format!(
                    "event {} has {} {event_key}, the alert's key is {key}: not the alert's event",
                    coord(topic, seq),
                    nfa.field_name(m.key)
                )));
            }
            taken.push((var, event.clone()));
        }
    }
    if taken.is_empty() {
        return Err(Error::usage("the alert's `match` names no event"));
    }
    taken.sort_by_key(|(_, e)| (e.ts, e.seq));
    Ok(taken)
}

/// The alert's heading: the pattern, the key, the time and the events. `matched`: the events'
/// `seq`s per step, as the alert body has them.
fn write_head(
    o: &mut String,
    nfa: &Nfa,
    id: &str,
    key: &str,
    ts: i64,
    taken: &[(VarId, Arc<Event>)],
    matched: &[(String, Vec<u64>)],
) {
    let m = &nfa.meta;
    let mode = if m.mode == engine::Mode::Shadow { "shadow" } else { "live" };
    let _ = writeln!(o, "Alert {id}");
    let _ = writeln!(
        o,
        "  pattern:  {} version {} (hash {}), severity {}, {mode}",
        m.name,
        m.version,
        m.hash,
        m.severity.as_str()
    );
    let _ = writeln!(o, "  about:    {}", m.description);
    let _ = writeln!(o, "  key:      {key} ({})", nfa.field_name(m.key));
    let _ = writeln!(o, "  time:     {} (event time of the match)", fmt_time(ts));
    let counts: Vec<String> = matched.iter().map(|(v, l)| format!("{v}: {}", l.len())).collect();
    let _ = writeln!(
        o,
        "  events:   {} ({}), in the order the engine took them (event time, then offset)",
        taken.len(),
        counts.join(", ")
    );
}

/// Event `i` of `taken`, taken by a partial match waiting in `state`: the step that took it,
/// its guard with the values it read, and the windows. Returns the state after it.
fn write_event(
    o: &mut String,
    nfa: &Nfa,
    topic: &str,
    taken: &[(VarId, Arc<Event>)],
    i: usize,
    state: StateId,
    refs: &Bound,
) -> StateId {
    let (var, event) = &taken[i];
    let n = taken.len();
    let view = view_of(&taken[..i]);
    let nth = taken[..i].iter().filter(|(v, _)| v == var).count() + 1;
    let of_var = taken.iter().filter(|(v, _)| v == var).count();
    let which = if of_var > 1 { format!(" ({} of its {of_var} events)", ordinal(nth)) } else { String::new() };
    let _ = writeln!(o, "\nEvent {}/{n}: {}{which}", i + 1, step(nfa, *var));
    let _ = writeln!(o, "  source:   {}", coord(topic, event.seq));
    let _ = writeln!(o, "  time:     {}", fmt_time(event.ts));
    let Some((from, edge)) = find_take(nfa, state, *var, event, &view, refs) else {
        let _ = writeln!(
            o,
            "  PROBLEM: the pattern has no step that takes an event into {} here: this is not the \
             automaton the engine ran",
            nfa.var_name(*var)
        );
        return state;
    };
    write_guard(o, nfa, &edge.cond, event, &view, refs);
    let holds = edge.cond.holds_with(&nfa.conditions, event, &view, refs);
    if holds {
        o.push_str("  holds:    true\n");
    } else {
        o.push_str(
            "  holds:    FALSE: the engine could not have taken this event with this pattern. The events \
             differ from those the service matched, or this is a bug: please report it.\n",
        );
    }
    write_windows(o, nfa, from, taken, i);
    edge.target
}

/// Windows, as the engine checks them: the partial match times out when the time since the
/// first (or previous) event reaches the window, so event `i` must come strictly before.
/// `from`: the state whose TAKE edge took it.
fn write_windows(o: &mut String, nfa: &Nfa, from: StateId, taken: &[(VarId, Arc<Event>)], i: usize) {
    let event = &taken[i].1;
    let (first, prev) = (&taken[0].1, i.checked_sub(1).map(|p| &taken[p].1));
    if let (Some(w), true) = (nfa.window_ms, i > 0) {
        let since = event.ts - first.ts;
        let _ = writeln!(
            o,
            "  window:   within {} of the first event: {} after event 1 ({})",
            fmt_duration(w),
            fmt_duration(since),
            inside(since, w)
        );
    }
    if let (Some(w), Some(prev)) = (nfa.state(from).window_ms, prev) {
        let since = event.ts - prev.ts;
        let _ = writeln!(
            o,
            "  window:   within {} of the previous event: {} after event {i} ({})",
            fmt_duration(w),
            fmt_duration(since),
            inside(since, w)
        );
    }
}

fn inside(since: i64, window: i64) -> &'static str {
    if since < window {
        "inside"
    } else {
        "OUTSIDE: the engine would have timed the partial match out first"
    }
}

/// The guard's lines with their values on `event`, then what they read.
fn write_guard(o: &mut String, nfa: &Nfa, cond: &Cond, event: &Event, view: &MatchEvents, refs: &Bound) {
    let mut lines = Vec::new();
    parts(nfa, cond, &mut lines);
    if lines.is_empty() {
        o.push_str("  condition: none (any event)\n");
        return;
    }
    o.push_str("  condition (every line must be true):\n");
    let mut shown = Vec::new();
    for p in &lines {
        let _ = writeln!(o, "    {:<5}  {}", verdict(&part_value(nfa, *p, event, view, refs)), part_text(nfa, *p));
        part_reads(nfa, *p, &mut shown);
    }
    let values = shown_values(nfa, &shown, Some(event), view, refs);
    if !values.is_empty() {
        o.push_str("  values:\n");
        for v in values {
            let _ = writeln!(o, "    {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::fixtures::{alerts, events, matched, plan};
    use expect_test::{expect, Expect};

    fn explain_first_alert(name: &str, golden: Expect) {
        let plan = plan(name);
        let events = events(&plan, name);
        let alerts = alerts(&plan, &events);
        let first = alerts.first().expect("the examples alert");
        let mut given = matched(first, &events);
        given.reverse(); // any order
        let text = alert(&plan.patterns[0], "payments", first, &given, Bound::empty()).expect("explained");
        golden.assert_eq(&text);
    }

    #[test]
    fn explains_a_rapid_movement_alert() {
        explain_first_alert(
            "rapid_movement",
            expect![[r#"
                Alert 064cbe44b042925dd1f4185ab8e4d708
                  pattern:  rapid_movement version 2 (hash dca2493120820dd7), severity high, live
                  about:    A large credit and at least 80% of it transferred on to someone else within 24 hours
                  key:      ACC-2001 (account_id)
                  time:     2025-03-03T11:15:00.000Z (event time of the match)
                  events:   2 (credit: 1, debit: 1), in the order the engine took them (event time, then offset)

                Event 1/2: step 1/2 credit
                  source:   payments/0@2
                  time:     2025-03-03T09:00:00.000Z
                  condition (every line must be true):
                    true   direction == "IN"
                    true   amount >= 5000
                    true   channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                  values:
                    direction = "IN"
                    amount = 12000.0
                    channel = "TRANSFER"
                  holds:    true

                Event 2/2: step 2/2 debit
                  source:   payments/0@7
                  time:     2025-03-03T11:15:00.000Z
                  condition (every line must be true):
                    true   direction == "OUT"
                    true   amount >= 0.8 * credit.amount
                    true   channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE", "ATM_WITHDRAWAL")
                    true   counterparty_account_id != credit.counterparty_account_id
                  values:
                    direction = "OUT"
                    amount = 10400.0
                    0.8 * credit.amount = 9600.0
                    credit.amount = 12000.0
                    channel = "INSTANT_TRANSFER"
                    counterparty_account_id = "LT121000011101001000"
                    credit.counterparty_account_id = "GB29NWBK60161331926819"
                  holds:    true
                  window:   within 1d of the previous event: 2h 15m after event 1 (inside)

                Message: Account ACC-2001 received 12000.0 EUR from GB29NWBK60161331926819 and sent 10400.0 EUR (87%) to LT121000011101001000 135 minutes later
            "#]],
        );
    }

    #[test]
    fn explains_a_structuring_alert() {
        explain_first_alert(
            "structuring",
            expect![[r#"
                Alert 87e7b57520b9e9f636530322fd11642a
                  pattern:  structuring version 1 (hash 42ae3f02a00c2912), severity high, live
                  about:    Three cash deposits just under the 10,000 reporting threshold within 72 hours
                  key:      ACC-1001 (account_id)
                  time:     2025-03-04T15:30:00.000Z (event time of the match)
                  events:   3 (deposit: 3), in the order the engine took them (event time, then offset)

                Event 1/3: step 1/1 deposit (1st of its 3 events)
                  source:   payments/0@2
                  time:     2025-03-03T09:12:00.000Z
                  condition (every line must be true):
                    true   direction == "IN"
                    true   channel == "CASH_DEPOSIT"
                    true   amount >= 8000
                    true   amount < 10000
                    true   not (channel == "CASH_DEPOSIT" and amount >= 10000)
                  values:
                    direction = "IN"
                    channel = "CASH_DEPOSIT"
                    amount = 9500.0
                  holds:    true

                Event 2/3: step 1/1 deposit (2nd of its 3 events)
                  source:   payments/0@10
                  time:     2025-03-04T10:05:00.000Z
                  condition (every line must be true):
                    true   direction == "IN"
                    true   channel == "CASH_DEPOSIT"
                    true   amount >= 8000
                    true   amount < 10000
                    true   not (channel == "CASH_DEPOSIT" and amount >= 10000)
                  values:
                    direction = "IN"
                    channel = "CASH_DEPOSIT"
                    amount = 9800.0
                  holds:    true
                  window:   within 3d of the first event: 1d 53m after event 1 (inside)

                Event 3/3: step 1/1 deposit (3rd of its 3 events)
                  source:   payments/0@11
                  time:     2025-03-04T15:30:00.000Z
                  condition (every line must be true):
                    true   direction == "IN"
                    true   channel == "CASH_DEPOSIT"
                    true   amount >= 8000
                    true   amount < 10000
                    true   not (channel == "CASH_DEPOSIT" and amount >= 10000)
                  values:
                    direction = "IN"
                    channel = "CASH_DEPOSIT"
                    amount = 8700.0
                  holds:    true
                  window:   within 3d of the first event: 1d 6h 18m after event 1 (inside)

                Message: Account ACC-1001: 3 cash deposits just under 10,000 totalling 28000.0 USD at 3 branch(es)
            "#]],
        );
    }
    #[test]
    fn alert_errors() {
        let plan = plan("rapid_movement");
        let events = events(&plan, "rapid_movement");
        let first = alerts(&plan, &events).into_iter().next().expect("an alert");
        let given = matched(&first, &events);
        let nfa = &plan.patterns[0];
        let err = |alert: &Json, events: &[Arc<Event>]| {
            super::alert(nfa, "payments", alert, events, Bound::empty()).expect_err("an error").to_string()
        };
        // A missing event.
        expect!["event payments/0@7 (debit) of the alert is missing (1 event(s) given)"]
            .assert_eq(&err(&first, &given[..1]));
        // Another pattern version (another content hash).
        let mut other = first.clone();
        other["hash"] = "0123456789abcdef".into();
        other["version"] = 1.into();
        expect!["the alert was made by rapid_movement with content hash 0123456789abcdef (version 1); this pattern compiles to hash dca2493120820dd7 (version 2): explain the alert with the pattern the service ran"].assert_eq(&err(&other, &given));
        // Another pattern.
        let mut other = first.clone();
        other["pattern"] = "structuring".into();
        expect!["the alert is of pattern `structuring`, not `rapid_movement`"].assert_eq(&err(&other, &given));
        // Events of another key at the alert's coordinates.
        let mut moved = first.clone();
        moved["match"]["credit"] = serde_json::json!([1]);
        expect!["event payments/0@1 has account_id ACC-2002, the alert's key is ACC-2001: not the alert's event"]
            .assert_eq(&err(&moved, &events));
        // The id does not fit (another key's alert, say).
        let mut forged = first.clone();
        forged["alert_id"] = "00000000000000000000000000000000".into();
        expect!["the alert id 00000000000000000000000000000000 does not belong to these events under this pattern (they give 064cbe44b042925dd1f4185ab8e4d708)"].assert_eq(&err(&forged, &given));
        // Not an alert line.
        expect!["the alert has no `hash`"].assert_eq(&err(&serde_json::json!({"pattern": "rapid_movement"}), &given));
    }
}
