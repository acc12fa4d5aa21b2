//! One partial match of a key's trace, written: its events, what it waits for (with what its
//! events fix already), the key's events it saw and did not take (each step's failing lines),
//! the key's next event after its window closed, and why a discarded one ended.

use std::fmt::Write as _;
use std::sync::Arc;

use engine::runtime::{Key, MatchEvents};
use engine::{Bound, Cond, Event, Nfa, StateId, VarId};

use crate::core::alert::alert_id;
use crate::core::times::format as fmt_time;

use super::key::{PartitionTrace, Reason};
use super::text::{
    cond_text, coord, fmt_duration, part_reads, part_text, part_value, parts, reads_event, shown_values, step, verdict,
    Shown,
};
use super::walk::{view_of, waiting, Waiting};

/// At most this many events are listed per list (the rest are counted).
pub(super) const LIST_LIMIT: usize = 10;

/// Writes the partial matches of one key under one pattern, read from one topic.
pub(super) struct PartialText<'a> {
    pub(super) nfa: &'a Nfa,
    pub(super) key: &'a Key,
    pub(super) topic: &'a str,
    /// The reference tables conditions are shown with.
    pub(super) refs: &'a Bound,
}

impl PartialText<'_> {
    /// Why a partial match waiting in `state` (having taken `view`) was discarded.
    pub(super) fn write_reason(
        &self,
        o: &mut String,
        part: &PartitionTrace,
        state: StateId,
        view: &MatchEvents,
        reason: &Reason,
    ) {
        let nfa = self.nfa;
        let at = |e: &Event| format!("{} at {}", coord(self.topic, e.seq), fmt_time(e.ts));
        match reason {
            Reason::Negated(var, e) => {
                let _ = writeln!(o, "    ended by {}: the `not` element {} holds on it:", at(e), nfa.var_name(*var));
                let w = waiting(nfa, state);
                for (_, cond) in w.forbidden.iter().filter(|(v, _)| v == var).take(1) {
                    let mut lines = Vec::new();
                    parts(nfa, cond, &mut lines);
                    let mut shown = Vec::new();
                    for p in lines {
                        let _ = writeln!(
                            o,
                            "      {:<5}  {}",
                            verdict(&part_value(nfa, p, e, view, self.refs)),
                            part_text(nfa, p)
                        );
                        part_reads(nfa, p, &mut shown);
                    }
                    let values = shown_values(nfa, &shown, Some(e), view, self.refs);
                    if !values.is_empty() {
                        let _ = writeln!(o, "             {}", values.join(", "));
                    }
                }
            }
            Reason::Blocked(e) => {
                let _ = writeln!(o, "    ended by {}: the pattern could neither take it nor skip it here", at(e));
                let w = waiting(nfa, state);
                let mut checked = String::new();
                self.write_checked(&mut checked, e, &w.takes, view, "    ");
                // The event's own line is the heading above.
                o.extend(checked.lines().skip(1).map(|l| format!("{l}\n")));
            }
            Reason::Skipped(matches) => {
                let ids: Vec<String> = matches
                    .iter()
                    .map(|&i| {
                        alert_id(nfa, self.key, &engine::alert::body_with(nfa, &part.matches[i].1, self.refs).matched)
                    })
                    .collect();
                let _ = writeln!(
                    o,
                    "    cleared by the skip strategy (skip {}) when alert {} fired",
                    skip_text(nfa),
                    ids.join(", ")
                );
            }
            Reason::Budget => {
                o.push_str("    dropped by the per-key budget (engine.max_partial_matches_per_key)\n");
            }
            Reason::Unknown(events) if events.is_empty() => {
                o.push_str("    ended as time passed; the trace cannot tell why\n");
            }
            Reason::Unknown(events) => {
                let list: Vec<String> = events.iter().map(|e| at(e)).collect();
                let _ =
                    writeln!(o, "    ended while the pattern processed {}; the trace cannot tell why", list.join(", "));
            }
        }
    }

    /// When a partial match in `state` that took `taken` times out, if it can.
    pub(super) fn closes_at(&self, state: StateId, taken: &[(VarId, Arc<Event>)]) -> Option<i64> {
        let first = self.nfa.window_ms.zip(taken.first()).map(|(w, (_, e))| e.ts.saturating_add(w));
        let prev = self.nfa.state(state).window_ms.zip(taken.last()).map(|(w, (_, e))| e.ts.saturating_add(w));
        match (first, prev) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A partial match's events, what it waits for, and the key's events it saw and let pass.
    pub(super) fn write_partial(
        &self,
        o: &mut String,
        part: &PartitionTrace,
        state: StateId,
        taken: &[(VarId, Arc<Event>)],
        close: Option<i64>,
        timed_out: bool,
    ) {
        let nfa = self.nfa;
        o.push_str("    events taken:\n");
        for (var, e) in taken {
            let _ = writeln!(o, "      {}: {} at {}", step(nfa, *var), coord(self.topic, e.seq), fmt_time(e.ts));
        }
        let view = view_of(taken);
        let w = waiting(nfa, state);
        self.write_waits(o, &w, &view, timed_out);
        // The key's events it saw after its last one (and before its window closed): none took it on.
        let Some((_, last)) = taken.last() else { return };
        let wm = part.op.watermark();
        let seen: Vec<&Arc<Event>> = part
            .events
            .iter()
            .filter(|e| (e.ts, e.seq) > (last.ts, last.seq) && e.ts <= wm && close.is_none_or(|c| e.ts < c))
            .collect();
        if w.takes.is_empty() {
            return;
        }
        if seen.is_empty() {
            o.push_str(if timed_out {
                "    the key had no further event before its window closed\n"
            } else {
                "    the pattern has seen no further event of the key\n"
            });
        } else {
            let _ = writeln!(o, "    events of the key it saw and did not take ({}):", seen.len());
            for e in seen.iter().take(LIST_LIMIT) {
                self.write_checked(o, e, &w.takes, &view, "      ");
            }
            more(o, seen.len(), "      ");
        }
        if let Some(close) = close.filter(|_| timed_out) {
            self.write_too_late(o, part, close, &w.takes, &view);
        }
    }

    /// What a partial match that took `view` waits for: the steps that would take it on (with
    /// what its events fix already), time to pass, the `not` elements that would end it.
    fn write_waits(&self, o: &mut String, w: &Waiting<'_>, view: &MatchEvents, timed_out: bool) {
        let nfa = self.nfa;
        let waits = if timed_out { "it waited for" } else { "it waits for" };
        if w.pending {
            let _ = writeln!(o, "    {waits} its window to pass without the `not followed by` element");
        }
        for (var, cond) in &w.takes {
            let more = match w.more {
                Some(1) => " (1 more event completes a match)".to_owned(),
                Some(n) if n > 1 => format!(" (at least {n} more events to a match)"),
                _ => String::new(),
            };
            let _ = writeln!(o, "    {waits} {}{more}, which needs:", step(nfa, *var));
            let mut lines = Vec::new();
            parts(nfa, cond, &mut lines);
            let mut shown = Vec::new();
            for p in &lines {
                let _ = writeln!(o, "      {}", part_text(nfa, *p));
                part_reads(nfa, *p, &mut shown);
            }
            // What its events fix already (e.g. the amount a debit must reach).
            let fixed: Vec<Shown<'_>> = shown
                .into_iter()
                .filter(|s| matches!(s, Shown::Expr(e) if e.reads_match() && !reads_event(e)))
                .collect();
            let values = shown_values(nfa, &fixed, None, view, self.refs);
            if !values.is_empty() {
                let _ = writeln!(o, "    given its events: {}", values.join(", "));
            }
        }
        for (var, cond) in &w.forbidden {
            let _ = writeln!(o, "    the `not` element {} would end it: {}", nfa.var_name(*var), cond_text(nfa, cond));
        }
    }

    /// Too late: the key's next event after the window closed (at `close`), and whether it
    /// would have fitted.
    fn write_too_late(
        &self,
        o: &mut String,
        part: &PartitionTrace,
        close: i64,
        takes: &[(VarId, &Cond)],
        view: &MatchEvents,
    ) {
        let nfa = self.nfa;
        let wm = part.op.watermark();
        let Some(next) = part.events.iter().filter(|e| e.ts >= close && e.ts <= wm).min_by_key(|e| (e.ts, e.seq))
        else {
            return;
        };
        let fits: Vec<String> = takes
            .iter()
            .filter(|(_, c)| c.holds_with(&nfa.conditions, next, view, self.refs))
            .map(|(v, _)| step(nfa, *v))
            .collect();
        let verdict = if fits.is_empty() {
            "it would not have fitted either".to_owned()
        } else {
            format!("it would have satisfied {}", fits.join(" or "))
        };
        let _ = writeln!(
            o,
            "    the key's next event, {} at {}, came {} after the window closed: {verdict}",
            coord(self.topic, next.seq),
            fmt_time(next.ts),
            fmt_duration(next.ts - close)
        );
    }

    /// Why `event` did not satisfy any of `takes`: each step's failing lines with what they read.
    pub(super) fn write_checked(
        &self,
        o: &mut String,
        event: &Event,
        takes: &[(VarId, &Cond)],
        view: &MatchEvents,
        indent: &str,
    ) {
        let nfa = self.nfa;
        let _ = writeln!(o, "{indent}{} at {}:", coord(self.topic, event.seq), fmt_time(event.ts));
        for (var, cond) in takes {
            if cond.holds_with(&nfa.conditions, event, view, self.refs) {
                let _ = writeln!(
                    o,
                    "{indent}  {}: the condition holds (the pattern branches here: another partial match took it)",
                    step(nfa, *var)
                );
                continue;
            }
            let _ = writeln!(o, "{indent}  not {}:", step(nfa, *var));
            let mut lines = Vec::new();
            parts(nfa, cond, &mut lines);
            for p in lines {
                let value = part_value(nfa, p, event, view, self.refs);
                if value.is_true() {
                    continue;
                }
                let mut shown = Vec::new();
                part_reads(nfa, p, &mut shown);
                let values = shown_values(nfa, &shown, Some(event), view, self.refs);
                let _ = writeln!(o, "{indent}    {:<5}  {}", verdict(&value), part_text(nfa, p));
                if !values.is_empty() {
                    let _ = writeln!(o, "{indent}           {}", values.join(", "));
                }
            }
        }
    }
}

/// The line under a list of `total` cut at [`LIST_LIMIT`]: `... and 3 more`.
pub(super) fn more(o: &mut String, total: usize, indent: &str) {
    if total > LIST_LIMIT {
        let _ = writeln!(o, "{indent}... and {} more", total - LIST_LIMIT);
    }
}

/// The skip strategy as the pattern writes it.
fn skip_text(nfa: &Nfa) -> String {
    match nfa.skip {
        engine::SkipStrategy::NoSkip => "none".to_owned(),
        engine::SkipStrategy::ToNext => "to next".to_owned(),
        engine::SkipStrategy::PastLastEvent => "past last event".to_owned(),
        engine::SkipStrategy::ToFirst(v) => format!("to first {}", nfa.var_name(v)),
        engine::SkipStrategy::ToLast(v) => format!("to last {}", nfa.var_name(v)),
    }
}
