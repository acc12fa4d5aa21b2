//! The text of a key's trace ([`KeyTrace::finish`]): the result, the alerts, the funnel, the
//! partial matches that timed out, were discarded or are still open, and the late events.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use engine::runtime::{Key, MatchEvents, PartialView};
use engine::{Bound, Event, Nfa, VarId};

use crate::core::alert::alert_id;
use crate::core::times::format as fmt_time;

use super::key::{KeyTrace, PartitionTrace};
use super::partial::{more, PartialText, LIST_LIMIT};
use super::text::{coord, step};
use super::walk::{in_order, state_after, view_of, waiting};

impl KeyTrace {
    /// The report, at the end of the range. `open_end`: the input goes on (a range of a live
    /// topic), so time does not run to its end: open windows stay open, as in the service.
    pub fn finish(mut self, topic: &str, open_end: bool) -> String {
        if !open_end {
            for part in self.partitions.values_mut() {
                part.advance(&self.nfa, &self.key, i64::MAX);
            }
        }
        Report { nfa: &self.nfa, key: &self.key, topic, open_end, partitions: &self.partitions, refs: &self.refs }
            .write()
    }
}

struct Report<'a> {
    nfa: &'a Nfa,
    key: &'a Key,
    topic: &'a str,
    open_end: bool,
    partitions: &'a BTreeMap<i32, PartitionTrace>,
    refs: &'a Bound,
}

impl Report<'_> {
    /// The writer of the report's partial matches.
    fn partial(&self) -> PartialText<'_> {
        PartialText { nfa: self.nfa, key: self.key, topic: self.topic, refs: self.refs }
    }

    fn write(&self) -> String {
        let parts = self.partitions;
        let mut o = String::new();
        let on_time: usize = parts.values().map(|p| p.events.len()).sum();
        let late: usize = parts.values().map(|p| p.late.len()).sum();
        let matches: usize = parts.values().map(|p| p.matches.len()).sum();
        self.write_head(&mut o, on_time, late, matches);
        self.write_range_end(&mut o, on_time + late > 0);
        if on_time + late == 0 {
            return o;
        }
        self.write_alerts(&mut o, matches);
        self.write_funnel(&mut o, on_time, matches);
        self.write_timeouts(&mut o);
        self.write_discarded(&mut o);
        let open = self.write_open(&mut o);
        self.write_late(&mut o, late);
        self.write_not_listed(&mut o, open);
        o
    }

    /// The key and the pattern, the result, and what the range held.
    fn write_head(&self, o: &mut String, on_time: usize, late: usize, matches: usize) {
        let (nfa, m) = (self.nfa, &self.nfa.meta);
        let parts = self.partitions;
        let _ = writeln!(
            o,
            "Key {} ({}) under pattern {} version {} (hash {})",
            self.key,
            nfa.field_name(m.key),
            m.name,
            m.version,
            m.hash
        );
        let _ = writeln!(o, "  {:?}", m.description);
        let read: u64 = parts.values().map(|p| p.read).sum();
        let names: Vec<String> = parts.keys().map(|p| p.to_string()).collect();
        let plural = if names.len() == 1 { "" } else { "s" };

        let result = if on_time + late == 0 {
            format!("Result: no events of key {} in the range.", self.key)
        } else if matches > 0 {
            format!("Result: ALERTED: {matches} alert(s) for this key in the range.")
        } else {
            "Result: no alert for this key in the range.".to_owned()
        };
        let _ = writeln!(o, "{result}\n");
        let _ = writeln!(
            o,
            "Range: {read} events read from topic {} (partition{plural} {}); {} of them are the key's: {on_time} on time, \
             {late} late.",
            self.topic,
            names.join(", "),
            on_time + late
        );
    }

    /// Whether time ran to its end (or what the pattern has not seen yet), and that partitions
    /// stay apart (when there are several and the key has events).
    fn write_range_end(&self, o: &mut String, any_events: bool) {
        let parts = self.partitions;
        if self.open_end {
            o.push_str("Open end: the input goes on, so the windows still open stay open.\n");
            for (p, part) in parts {
                let wm = part.op.watermark();
                let _ = writeln!(
                    o,
                    "Partition {p}'s watermark at the end: {}; events of the key after it, not yet seen by the \
                     pattern: {}",
                    fmt_wm(wm),
                    part.op.buffered_events(self.key)
                );
                let waiting: Vec<&Arc<Event>> = part.events.iter().filter(|e| e.ts > wm).collect();
                for e in waiting.iter().take(LIST_LIMIT) {
                    let _ = writeln!(o, "  {} at {}", coord(self.topic, e.seq), fmt_time(e.ts));
                }
                more(o, waiting.len(), "  ");
            }
        } else {
            o.push_str("The range ends at the end of time: every window closed.\n");
        }
        if parts.len() > 1 && any_events {
            o.push_str(
                "The service keeps each partition's state apart; so does this trace (a match never spans \
                 partitions).\n",
            );
        }
    }

    /// The key's alerts, with their events and messages.
    fn write_alerts(&self, o: &mut String, matches: usize) {
        let nfa = self.nfa;
        if matches > 0 {
            let _ = writeln!(o, "\nAlerts ({matches}):");
            let mut n = 0;
            for part in self.partitions.values() {
                for (ts, events) in &part.matches {
                    n += 1;
                    let body = engine::alert::body_with(nfa, events, self.refs);
                    let id = alert_id(nfa, self.key, &body.matched);
                    let _ = writeln!(o, "  #{n} alert {id} at {}", fmt_time(*ts));
                    self.write_taken(o, events, "     ");
                    let _ = writeln!(o, "     message: {}", body.message);
                }
            }
        }
    }

    /// How many partial matches reached each step; why none started, if none did.
    fn write_funnel(&self, o: &mut String, on_time: usize, matches: usize) {
        let (nfa, parts) = (self.nfa, self.partitions);
        let _ = writeln!(o, "\nFunnel (partial matches of this key that reached each step):");
        let steps: Vec<usize> = (0..nfa.vars.len()).filter(|&i| !nfa.vars[i].negated).collect();
        let labels: Vec<String> = steps.iter().map(|&i| step(nfa, VarId(i as u16))).collect();
        let width = labels.iter().map(String::len).max().unwrap_or(0).max("matches".len()) + 1;
        for (label, &i) in labels.iter().zip(&steps) {
            let reached: u64 = parts.values().map(|p| p.op.funnel().get(i).copied().unwrap_or(0)).sum();
            let _ = writeln!(o, "  {:<width$} {reached}", format!("{label}:"));
        }
        let _ = writeln!(o, "  {:<width$} {matches}", "matches:");
        let dropped: u64 = parts.values().map(|p| p.op.stats().dropped_partial_matches).sum();
        if dropped > 0 {
            let _ = writeln!(
                o,
                "  {dropped} partial match(es) dropped by the per-key budget (engine.max_partial_matches_per_key)"
            );
        }
        let started: u64 =
            steps.first().map_or(0, |&i| parts.values().map(|p| p.op.funnel().get(i).copied().unwrap_or(0)).sum());
        if started == 0 && on_time > 0 {
            self.write_never_started(o);
        }
    }

    /// The partial matches that timed out.
    fn write_timeouts(&self, o: &mut String) {
        let (nfa, parts) = (self.nfa, self.partitions);
        let timeouts: usize = parts.values().map(|p| p.timeouts.len()).sum();
        if timeouts == 0 {
            o.push_str("\nTimed-out partial matches: none\n");
        } else {
            let _ = writeln!(o, "\nTimed-out partial matches: {timeouts}");
        }
        let mut n = 0;
        for part in parts.values() {
            for (closed, events) in &part.timeouts {
                n += 1;
                if n > LIST_LIMIT {
                    break;
                }
                let taken = in_order(events);
                let state = state_after(nfa, &taken, self.refs);
                let start = taken.first().map_or(0, |(_, e)| e.ts);
                let _ = writeln!(o, "  #{n} started {}; its window closed at {}", fmt_time(start), fmt_time(*closed));
                self.partial().write_partial(o, part, state, &taken, Some(*closed), true);
            }
        }
        more(o, timeouts, "  ");
    }

    /// The partial matches that ended without a match or a timeout, and why.
    fn write_discarded(&self, o: &mut String) {
        let (nfa, parts) = (self.nfa, self.partitions);
        let discarded: usize = parts.values().map(|p| p.discarded.len()).sum();
        if discarded == 0 {
            o.push_str("\nPartial matches discarded on the way: none\n");
        } else {
            let _ = writeln!(o, "\nPartial matches discarded on the way: {discarded}");
        }
        let mut n = 0;
        for part in parts.values() {
            for d in &part.discarded {
                n += 1;
                if n > LIST_LIMIT {
                    break;
                }
                let _ = writeln!(o, "  #{n} started {}", fmt_time(d.start_ts));
                o.push_str("    events taken:\n");
                for (var, e) in &d.taken {
                    let _ =
                        writeln!(o, "      {}: {} at {}", step(nfa, *var), coord(self.topic, e.seq), fmt_time(e.ts));
                }
                self.partial().write_reason(o, part, d.state, &view_of(&d.taken), &d.reason);
            }
        }
        more(o, discarded, "  ");
    }

    /// The partial matches still open at the end; whether there are any.
    fn write_open(&self, o: &mut String) -> bool {
        let open: Vec<(&PartitionTrace, PartialView)> = self
            .partitions
            .values()
            .flat_map(|p| p.op.partial_matches(self.key).into_iter().map(move |v| (p, v)))
            .collect();
        if open.is_empty() {
            o.push_str("\nPartial matches still open at the end: none\n");
        } else {
            let _ = writeln!(o, "\nPartial matches still open at the end: {}", open.len());
        }
        for (n, (part, view)) in open.iter().enumerate().take(LIST_LIMIT) {
            let taken = in_order(&view.events);
            let close = self.partial().closes_at(view.state, &taken);
            let closes = match close {
                Some(t) => format!("its window closes at {}", fmt_time(t)),
                None => "no window: it stays open until it completes".to_owned(),
            };
            let _ = writeln!(o, "  #{} started {}; {closes}", n + 1, fmt_time(view.start_ts));
            self.partial().write_partial(o, part, view.state, &taken, close, false);
        }
        more(o, open.len(), "  ");
        !open.is_empty()
    }

    /// The key's late events, which the pattern skipped.
    fn write_late(&self, o: &mut String, late: usize) {
        if late == 0 {
            o.push_str("\nLate events of the key: none\n");
        } else {
            let _ = writeln!(o, "\nLate events of the key (skipped, as the service skips them): {late}");
            let all: Vec<&(Arc<Event>, i64)> = self.partitions.values().flat_map(|p| &p.late).collect();
            for (e, wm) in all.iter().take(LIST_LIMIT) {
                let _ = writeln!(
                    o,
                    "  {} at {}: the partition's watermark was already {}",
                    coord(self.topic, e.seq),
                    fmt_time(e.ts),
                    fmt_time(*wm)
                );
            }
            more(o, all.len(), "  ");
        }
    }

    /// What the trace cannot see. `open`: partial matches are still open at the end.
    fn write_not_listed(&self, o: &mut String, open: bool) {
        o.push_str(
            "\nNot listed: partial matches that started and ended while the watermark passed several events \
             of the key at once (the trace compares the key's partial matches after each step of the \
             watermark).\n",
        );
        if open && self.nfa.skip != engine::SkipStrategy::NoSkip {
            o.push_str(
                "Nor is a match the skip strategy holds back while an earlier-started partial match is still \
                 open (if there is one): the service emits it when that partial match ends.\n",
            );
        }
    }

    /// `step 1/2 credit: payments/0@2 at 2025-...` per taken event.
    fn write_taken(&self, o: &mut String, events: &MatchEvents, indent: &str) {
        for (var, e) in in_order(events) {
            let _ = writeln!(o, "{indent}{}: {} at {}", step(self.nfa, var), coord(self.topic, e.seq), fmt_time(e.ts));
        }
    }

    /// No event of the key started a partial match: why each failed the first step.
    fn write_never_started(&self, o: &mut String) {
        let w = waiting(self.nfa, self.nfa.start);
        let mut all: Vec<(&PartitionTrace, &Arc<Event>)> =
            self.partitions.values().flat_map(|p| p.events.iter().map(move |e| (p, e))).collect();
        all.retain(|(p, e)| e.ts <= p.op.watermark());
        if all.is_empty() {
            return;
        }
        let _ = writeln!(o, "  none of the key's events started the pattern ({} checked):", all.len());
        for (_, e) in all.iter().take(LIST_LIMIT) {
            self.partial().write_checked(o, e, &w.takes, &Vec::new(), "    ");
        }
        more(o, all.len(), "    ");
    }
}

fn fmt_wm(wm: i64) -> String {
    if wm == i64::MIN {
        "none yet".to_owned()
    } else {
        fmt_time(wm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::coords::seq_of;
    use crate::explain::alert;
    use crate::explain::fixtures::{alerts, events, matched, plan, root, tables};
    use engine::runtime::Config as OpConfig;
    use expect_test::{expect, Expect};

    fn trace(name: &str, key: &str, open_end: bool, golden: Expect) {
        let plan = plan(name);
        let events = events(&plan, name);
        let mut t =
            KeyTrace::new(plan.patterns[0].clone(), Key::Str(key.into()), plan.out_of_orderness, OpConfig::default());
        for e in events {
            t.feed(0, e);
        }
        golden.assert_eq(&t.finish(&plan.topic, open_end));
    }

    #[test]
    fn traces_a_key_that_did_not_alert() {
        // ACC-2002: a large credit; its debits are too small or go back to the sender, and the
        // large one comes after 24 hours.
        trace(
            "rapid_movement",
            "ACC-2002",
            false,
            expect![[r#"
                Key ACC-2002 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
                  "A large credit and at least 80% of it transferred on to someone else within 24 hours"
                Result: no alert for this key in the range.

                Range: 13 events read from topic payments (partition 0); 6 of them are the key's: 6 on time, 0 late.
                The range ends at the end of time: every window closed.

                Funnel (partial matches of this key that reached each step):
                  step 1/2 credit: 1
                  step 2/2 debit:  0
                  matches:         0

                Timed-out partial matches: 1
                  #1 started 2025-03-03T08:30:00.000Z; its window closed at 2025-03-04T08:30:00.000Z
                    events taken:
                      step 1/2 credit: payments/0@1 at 2025-03-03T08:30:00.000Z
                    it waited for step 2/2 debit (1 more event completes a match), which needs:
                      direction == "OUT"
                      amount >= 0.8 * credit.amount
                      channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE", "ATM_WITHDRAWAL")
                      counterparty_account_id != credit.counterparty_account_id
                    given its events: 0.8 * credit.amount = 16000.0, credit.amount = 20000.0, credit.counterparty_account_id = "DE89370400440532013000"
                    events of the key it saw and did not take (2):
                      payments/0@5 at 2025-03-03T10:00:00.000Z:
                        not step 2/2 debit:
                          false  amount >= 0.8 * credit.amount
                                 amount = 15000.0, 0.8 * credit.amount = 16000.0, credit.amount = 20000.0
                      payments/0@8 at 2025-03-03T12:00:00.000Z:
                        not step 2/2 debit:
                          false  counterparty_account_id != credit.counterparty_account_id
                                 counterparty_account_id = "DE89370400440532013000", credit.counterparty_account_id = "DE89370400440532013000"
                    the key's next event, payments/0@11 at 2025-03-04T09:00:00.000Z, came 30m after the window closed: it would have satisfied step 2/2 debit

                Partial matches discarded on the way: none

                Partial matches still open at the end: none

                Late events of the key: none

                Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            "#]],
        );
    }

    #[test]
    fn traces_a_key_that_alerted() {
        trace(
            "rapid_movement",
            "ACC-2001",
            false,
            expect![[r#"
                Key ACC-2001 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
                  "A large credit and at least 80% of it transferred on to someone else within 24 hours"
                Result: ALERTED: 1 alert(s) for this key in the range.

                Range: 13 events read from topic payments (partition 0); 4 of them are the key's: 4 on time, 0 late.
                The range ends at the end of time: every window closed.

                Alerts (1):
                  #1 alert 064cbe44b042925dd1f4185ab8e4d708 at 2025-03-03T11:15:00.000Z
                     step 1/2 credit: payments/0@2 at 2025-03-03T09:00:00.000Z
                     step 2/2 debit: payments/0@7 at 2025-03-03T11:15:00.000Z
                     message: Account ACC-2001 received 12000.0 EUR from GB29NWBK60161331926819 and sent 10400.0 EUR (87%) to LT121000011101001000 135 minutes later

                Funnel (partial matches of this key that reached each step):
                  step 1/2 credit: 1
                  step 2/2 debit:  1
                  matches:         1

                Timed-out partial matches: none

                Partial matches discarded on the way: none

                Partial matches still open at the end: none

                Late events of the key: none

                Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            "#]],
        );
    }

    #[test]
    fn traces_a_looping_key_that_did_not_alert() {
        // ACC-1002: cash deposits, but never three in the band within 72 hours.
        trace(
            "structuring",
            "ACC-1002",
            false,
            expect![[r#"
                Key ACC-1002 (account_id) under pattern structuring version 1 (hash 42ae3f02a00c2912)
                  "Three cash deposits just under the 10,000 reporting threshold within 72 hours"
                Result: no alert for this key in the range.

                Range: 17 events read from topic payments (partition 0); 5 of them are the key's: 5 on time, 0 late.
                The range ends at the end of time: every window closed.

                Funnel (partial matches of this key that reached each step):
                  step 1/1 deposit: 3
                  matches:          0

                Timed-out partial matches: 3
                  #1 started 2025-03-03T09:00:00.000Z; its window closed at 2025-03-06T09:00:00.000Z
                    events taken:
                      step 1/1 deposit: payments/0@1 at 2025-03-03T09:00:00.000Z
                      step 1/1 deposit: payments/0@5 at 2025-03-03T13:00:00.000Z
                    it waited for step 1/1 deposit (1 more event completes a match), which needs:
                      direction == "IN"
                      channel == "CASH_DEPOSIT"
                      amount >= 8000
                      amount < 10000
                      not (channel == "CASH_DEPOSIT" and amount >= 10000)
                    events of the key it saw and did not take (2):
                      payments/0@7 at 2025-03-03T16:20:00.000Z:
                        not step 1/1 deposit:
                          false  channel == "CASH_DEPOSIT"
                                 channel = "TRANSFER"
                      payments/0@9 at 2025-03-04T10:00:00.000Z:
                        not step 1/1 deposit:
                          false  amount >= 8000
                                 amount = 7900.0
                    the key's next event, payments/0@17 at 2025-03-06T10:00:00.000Z, came 1h after the window closed: it would have satisfied step 1/1 deposit
                  #2 started 2025-03-03T13:00:00.000Z; its window closed at 2025-03-06T13:00:00.000Z
                    events taken:
                      step 1/1 deposit: payments/0@5 at 2025-03-03T13:00:00.000Z
                      step 1/1 deposit: payments/0@17 at 2025-03-06T10:00:00.000Z
                    it waited for step 1/1 deposit (1 more event completes a match), which needs:
                      direction == "IN"
                      channel == "CASH_DEPOSIT"
                      amount >= 8000
                      amount < 10000
                      not (channel == "CASH_DEPOSIT" and amount >= 10000)
                    the key had no further event before its window closed
                  #3 started 2025-03-06T10:00:00.000Z; its window closed at 2025-03-09T10:00:00.000Z
                    events taken:
                      step 1/1 deposit: payments/0@17 at 2025-03-06T10:00:00.000Z
                    it waited for step 1/1 deposit (at least 2 more events to a match), which needs:
                      direction == "IN"
                      channel == "CASH_DEPOSIT"
                      amount >= 8000
                      amount < 10000
                      not (channel == "CASH_DEPOSIT" and amount >= 10000)
                    the key had no further event before its window closed

                Partial matches discarded on the way: none

                Partial matches still open at the end: none

                Late events of the key: none

                Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            "#]],
        );
    }

    #[test]
    fn traces_partial_matches_ended_by_an_until_and_by_the_skip_strategy() {
        // ACC-1003: a 12,000 cash deposit (line 8) ends the runs before it (`until`); the alert's
        // `skip past last event` clears the run that started inside it.
        trace(
            "structuring",
            "ACC-1003",
            false,
            expect![[r#"
            Key ACC-1003 (account_id) under pattern structuring version 1 (hash 42ae3f02a00c2912)
              "Three cash deposits just under the 10,000 reporting threshold within 72 hours"
            Result: ALERTED: 1 alert(s) for this key in the range.

            Range: 17 events read from topic payments (partition 0); 6 of them are the key's: 6 on time, 0 late.
            The range ends at the end of time: every window closed.

            Alerts (1):
              #1 alert 01d43f49e3966060ca8872bd3d3baa34 at 2025-03-05T17:05:00.000Z
                 step 1/1 deposit: payments/0@12 at 2025-03-04T16:00:00.000Z
                 step 1/1 deposit: payments/0@14 at 2025-03-05T11:20:00.000Z
                 step 1/1 deposit: payments/0@16 at 2025-03-05T17:05:00.000Z
                 message: Account ACC-1003: 3 cash deposits just under 10,000 totalling 27200.0 USD at 3 branch(es)

            Funnel (partial matches of this key that reached each step):
              step 1/1 deposit: 5
              matches:          1

            Timed-out partial matches: none

            Partial matches discarded on the way: 3
              #1 started 2025-03-03T10:30:00.000Z
                events taken:
                  step 1/1 deposit: payments/0@3 at 2025-03-03T10:30:00.000Z
                  step 1/1 deposit: payments/0@6 at 2025-03-03T14:45:00.000Z
                ended by payments/0@8 at 2025-03-04T09:10:00.000Z: the pattern could neither take it nor skip it here
                  not step 1/1 deposit:
                    false  amount < 10000
                           amount = 12000.0
                    false  not (channel == "CASH_DEPOSIT" and amount >= 10000)
                           channel = "CASH_DEPOSIT", amount = 12000.0
              #2 started 2025-03-03T14:45:00.000Z
                events taken:
                  step 1/1 deposit: payments/0@6 at 2025-03-03T14:45:00.000Z
                ended by payments/0@8 at 2025-03-04T09:10:00.000Z: the pattern could neither take it nor skip it here
                  not step 1/1 deposit:
                    false  amount < 10000
                           amount = 12000.0
                    false  not (channel == "CASH_DEPOSIT" and amount >= 10000)
                           channel = "CASH_DEPOSIT", amount = 12000.0
              #3 started 2025-03-05T11:20:00.000Z
                events taken:
                  step 1/1 deposit: payments/0@14 at 2025-03-05T11:20:00.000Z
                  step 1/1 deposit: payments/0@16 at 2025-03-05T17:05:00.000Z
                cleared by the skip strategy (skip past last event) when alert 01d43f49e3966060ca8872bd3d3baa34 fired

            Partial matches still open at the end: none

            Late events of the key: none

            Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
        "#]],
        );
    }

    #[test]
    fn traces_a_partial_match_ended_by_a_not_element() {
        // ACC-3002: a password reset followed by a successful MFA (the `not` element).
        trace(
            "ato_after_password_reset",
            "ACC-3002",
            false,
            expect![[r#"
                Key ACC-3002 (account_id) under pattern ato_after_password_reset version 1 (hash d30f82098089327c)
                  "Password reset followed by a profile change or a withdrawal without a successful MFA in between"
                Result: no alert for this key in the range.

                Range: 16 events read from topic account_events (partition 0); 6 of them are the key's: 6 on time, 0 late.
                The range ends at the end of time: every window closed.

                Funnel (partial matches of this key that reached each step):
                  step 1/2 reset:  2
                  step 2/2 action: 0
                  matches:         0

                Timed-out partial matches: 1
                  #1 started 2025-03-05T08:00:00.000Z; its window closed at 2025-03-06T08:00:00.000Z
                    events taken:
                      step 1/2 reset: account_events/0@15 at 2025-03-05T08:00:00.000Z
                    it waited for step 2/2 action (1 more event completes a match), which needs:
                      event_type in ("profile_change", "withdrawal")
                    the `not` element mfa would end it: type MfaVerification and success == true
                    the key had no further event before its window closed
                    the key's next event, account_events/0@16 at 2025-03-06T09:00:00.000Z, came 1h after the window closed: it would have satisfied step 2/2 action

                Partial matches discarded on the way: 1
                  #1 started 2025-03-03T10:00:00.000Z
                    events taken:
                      step 1/2 reset: account_events/0@3 at 2025-03-03T10:00:00.000Z
                    ended by account_events/0@4 at 2025-03-03T10:01:00.000Z: the `not` element mfa holds on it:
                      true   type MfaVerification
                      true   success == true
                             type = MfaVerification, success = true

                Partial matches still open at the end: none

                Late events of the key: none

                Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            "#]],
        );
    }

    #[test]
    fn traces_a_key_with_an_open_end() {
        // Cut after ACC-2002's refund (line 8): the partial match is still open.
        let plan = plan("rapid_movement");
        let events = events(&plan, "rapid_movement");
        let mut t = KeyTrace::new(
            plan.patterns[0].clone(),
            Key::Str("ACC-2002".into()),
            plan.out_of_orderness,
            OpConfig::default(),
        );
        for e in events.into_iter().take(9) {
            t.feed(0, e);
        }
        expect![[r#"
            Key ACC-2002 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
              "A large credit and at least 80% of it transferred on to someone else within 24 hours"
            Result: no alert for this key in the range.

            Range: 9 events read from topic payments (partition 0); 3 of them are the key's: 3 on time, 0 late.
            Open end: the input goes on, so the windows still open stay open.
            Partition 0's watermark at the end: 2025-03-03T11:59:54.999Z; events of the key after it, not yet seen by the pattern: 1
              payments/0@8 at 2025-03-03T12:00:00.000Z

            Funnel (partial matches of this key that reached each step):
              step 1/2 credit: 1
              step 2/2 debit:  0
              matches:         0

            Timed-out partial matches: none

            Partial matches discarded on the way: none

            Partial matches still open at the end: 1
              #1 started 2025-03-03T08:30:00.000Z; its window closes at 2025-03-04T08:30:00.000Z
                events taken:
                  step 1/2 credit: payments/0@1 at 2025-03-03T08:30:00.000Z
                it waits for step 2/2 debit (1 more event completes a match), which needs:
                  direction == "OUT"
                  amount >= 0.8 * credit.amount
                  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE", "ATM_WITHDRAWAL")
                  counterparty_account_id != credit.counterparty_account_id
                given its events: 0.8 * credit.amount = 16000.0, credit.amount = 20000.0, credit.counterparty_account_id = "DE89370400440532013000"
                events of the key it saw and did not take (1):
                  payments/0@5 at 2025-03-03T10:00:00.000Z:
                    not step 2/2 debit:
                      false  amount >= 0.8 * credit.amount
                             amount = 15000.0, 0.8 * credit.amount = 16000.0, credit.amount = 20000.0

            Late events of the key: none

            Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
            Nor is a match the skip strategy holds back while an earlier-started partial match is still open (if there is one): the service emits it when that partial match ends.
        "#]].assert_eq(&t.finish("payments", true));
    }

    #[test]
    fn traces_a_key_without_events_and_one_that_never_started() {
        let plan = plan("rapid_movement");
        let events = events(&plan, "rapid_movement");
        let mut t = KeyTrace::new(
            plan.patterns[0].clone(),
            Key::Str("ACC-9999".into()),
            plan.out_of_orderness,
            OpConfig::default(),
        );
        for e in &events {
            t.feed(0, e.clone());
        }
        expect![[r#"
            Key ACC-9999 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
              "A large credit and at least 80% of it transferred on to someone else within 24 hours"
            Result: no events of key ACC-9999 in the range.

            Range: 13 events read from topic payments (partition 0); 0 of them are the key's: 0 on time, 0 late.
            The range ends at the end of time: every window closed.
        "#]]
        .assert_eq(&t.finish("payments", false));
        // The structuring examples under rapid_movement: cash deposits are no credit.
        let cash = self::events(&plan, "structuring");
        let mut t = KeyTrace::new(
            plan.patterns[0].clone(),
            Key::Str("ACC-1001".into()),
            plan.out_of_orderness,
            OpConfig::default(),
        );
        for e in cash {
            t.feed(0, e);
        }
        expect![[r#"
            Key ACC-1001 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
              "A large credit and at least 80% of it transferred on to someone else within 24 hours"
            Result: no alert for this key in the range.

            Range: 17 events read from topic payments (partition 0); 6 of them are the key's: 6 on time, 0 late.
            The range ends at the end of time: every window closed.

            Funnel (partial matches of this key that reached each step):
              step 1/2 credit: 0
              step 2/2 debit:  0
              matches:         0
              none of the key's events started the pattern (6 checked):
                payments/0@2 at 2025-03-03T09:12:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"
                payments/0@4 at 2025-03-03T11:40:00.000Z:
                  not step 1/2 credit:
                    false  direction == "IN"
                           direction = "OUT"
                    false  amount >= 5000
                           amount = 45.2
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CARD"
                payments/0@10 at 2025-03-04T10:05:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"
                payments/0@11 at 2025-03-04T15:30:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"
                payments/0@13 at 2025-03-05T09:45:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"
                payments/0@15 at 2025-03-05T12:10:00.000Z:
                  not step 1/2 credit:
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CASH_DEPOSIT"

            Timed-out partial matches: none

            Partial matches discarded on the way: none

            Partial matches still open at the end: none

            Late events of the key: none

            Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
        "#]].assert_eq(&t.finish("payments", false));
    }

    #[test]
    fn late_events_are_skipped_and_listed() {
        let plan = plan("rapid_movement");
        let events = events(&plan, "rapid_movement");
        let mut t = KeyTrace::new(
            plan.patterns[0].clone(),
            Key::Str("ACC-2001".into()),
            plan.out_of_orderness,
            OpConfig::default(),
        );
        // ACC-2001's credit (line 2) arrives after line 4 moved the watermark past it: offsets
        // in arrival order, so the credit is at offset 4.
        let order = [0, 2, 3, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        for (offset, i) in order.into_iter().enumerate() {
            let e = Event { seq: seq_of(0, offset as i64 + 1), ..(*events[i]).clone() };
            t.feed(0, Arc::new(e));
        }
        expect![[r#"
            Key ACC-2001 (account_id) under pattern rapid_movement version 2 (hash dca2493120820dd7)
              "A large credit and at least 80% of it transferred on to someone else within 24 hours"
            Result: no alert for this key in the range.

            Range: 13 events read from topic payments (partition 0); 4 of them are the key's: 3 on time, 1 late.
            The range ends at the end of time: every window closed.

            Funnel (partial matches of this key that reached each step):
              step 1/2 credit: 0
              step 2/2 debit:  0
              matches:         0
              none of the key's events started the pattern (3 checked):
                payments/0@3 at 2025-03-03T09:40:00.000Z:
                  not step 1/2 credit:
                    false  direction == "IN"
                           direction = "OUT"
                    false  amount >= 5000
                           amount = 35.9
                    false  channel in ("TRANSFER", "INSTANT_TRANSFER", "INTERNATIONAL_WIRE")
                           channel = "CARD"
                payments/0@7 at 2025-03-03T11:15:00.000Z:
                  not step 1/2 credit:
                    false  direction == "IN"
                           direction = "OUT"
                payments/0@10 at 2025-03-03T13:00:00.000Z:
                  not step 1/2 credit:
                    false  direction == "IN"
                           direction = "OUT"
                    false  amount >= 5000
                           amount = 1200.0

            Timed-out partial matches: none

            Partial matches discarded on the way: none

            Partial matches still open at the end: none

            Late events of the key (skipped, as the service skips them): 1
              payments/0@4 at 2025-03-03T09:00:00.000Z: the partition's watermark was already 2025-03-03T09:39:54.999Z

            Not listed: partial matches that started and ended while the watermark passed several events of the key at once (the trace compares the key's partial matches after each step of the watermark).
        "#]].assert_eq(&t.finish("payments", false));
    }

    /// Over every library pattern's examples: each key's trace finds exactly the alerts the
    /// replay writes for that key, and every alert explains without a problem.
    #[test]
    fn every_example_key_trace_agrees_with_the_replay() {
        let mut names: Vec<String> = std::fs::read_dir(root().join("patterns"))
            .expect("patterns")
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".tl").map(str::to_owned))
            .collect();
        names.sort();
        assert!(names.len() >= 10, "{names:?}");
        let mut checked = 0;
        for name in &names {
            let plan = plan(name);
            let nfa = &plan.patterns[0];
            let events = events(&plan, name);
            let alerts = alerts(&plan, &events);
            for a in &alerts {
                let refs = Bound::new(&nfa.tables, &tables());
                let text = alert(nfa, &plan.topic, a, &matched(a, &events), &refs).expect("explained");
                for problem in ["FALSE", "PROBLEM", "OUTSIDE"] {
                    assert!(!text.contains(problem), "{name}:\n{text}");
                }
            }
            let mut keys: Vec<Key> = events.iter().map(|e| Key::of(e.field(nfa.meta.key))).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let mut t = KeyTrace::new(nfa.clone(), key.clone(), plan.out_of_orderness, OpConfig::default());
                t.set_tables(&tables());
                for e in &events {
                    t.feed(0, e.clone());
                }
                let report = t.finish(&plan.topic, false);
                let traced: Vec<&str> = report
                    .lines()
                    .filter_map(|l| l.trim_start().strip_prefix('#')?.split_once(" alert ")?.1.split(' ').next())
                    .collect();
                let replayed: Vec<&str> = alerts
                    .iter()
                    .filter(|a| a["key"].as_str() == Some(key.to_string().as_str()))
                    .map(|a| a["alert_id"].as_str().expect("id"))
                    .collect();
                assert_eq!(traced, replayed, "{name}, key {key}:\n{report}");
                checked += replayed.len();
            }
        }
        assert!(checked >= names.len(), "every example alerts: {checked} alerts checked");
    }
}
