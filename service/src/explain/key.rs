//! One key over a range ([`KeyTrace`]): the pattern run over the range as a partition of the
//! service runs it, watching one key's matches, timeouts and partial matches, and why the
//! partial matches that ended without either ended. Its report ([`KeyTrace::finish`]) is
//! written in `report.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::runtime::{Config as OpConfig, Key, MatchEvents, Operator, Output, PartialView};
use engine::{Bound, Event, Nfa, RefData, StateId, VarId};

use crate::core::context::Step;
use crate::core::coords::watermark_of;

use super::walk::{in_order, next_move, view_of, waiting, Move};

/// Why one key did or did not alert over a range of the pattern's stream: the pattern runs over
/// the range exactly as the service runs it (per partition: the watermark over all the
/// partition's events, late events skipped, timers fired after every on-time event), with an
/// operator that sees only this key's events, so that its counts and partial matches are the
/// key's.
#[derive(Debug)]
pub struct KeyTrace {
    pub(super) nfa: Arc<Nfa>,
    pub(super) key: Key,
    out_of_orderness: i64,
    config: OpConfig,
    pub(super) partitions: BTreeMap<i32, PartitionTrace>,
    /// The reference tables installed last, and as the pattern reads them (what the report's
    /// texts evaluate conditions with).
    tables: RefData,
    pub(super) refs: Bound,
}

#[derive(Debug)]
pub(super) struct PartitionTrace {
    pub(super) op: Operator,
    /// Newest event time of the partition (all keys).
    max_ts: i64,
    /// Events of the partition read (all keys).
    pub(super) read: u64,
    /// The key's on-time events, in offset order.
    pub(super) events: Vec<Arc<Event>>,
    /// The key's late events, each with the watermark it was behind.
    pub(super) late: Vec<(Arc<Event>, i64)>,
    /// Matches: (event time, events).
    pub(super) matches: Vec<(i64, MatchEvents)>,
    /// Timed-out partial matches: (when the window closed, events).
    pub(super) timeouts: Vec<(i64, MatchEvents)>,
    /// Partial matches that ended without a match or a timeout, and why.
    pub(super) discarded: Vec<Discard>,
    /// The key's partial matches after the last step that changed them.
    last: Vec<PartialView>,
    /// The operator's budget drops at that step.
    dropped: u64,
    outs: Vec<Output>,
}

/// A partial match that ended without a match or a timeout.
#[derive(Debug)]
pub(super) struct Discard {
    pub(super) start_ts: i64,
    /// Its events, in order, up to the end (with those it took in its last step).
    pub(super) taken: Vec<(VarId, Arc<Event>)>,
    /// The state it ended in.
    pub(super) state: StateId,
    pub(super) reason: Reason,
}

/// Why a partial match ended without a match or a timeout, as far as the trace can tell.
#[derive(Debug)]
pub(super) enum Reason {
    /// A `not` element's guard held on this event.
    Negated(VarId, Arc<Event>),
    /// The event could be neither taken nor skipped (strict contiguity, an `until`).
    Blocked(Arc<Event>),
    /// The skip strategy cleared it when these matches (indices into `matches`) were made.
    Skipped(Vec<usize>),
    /// The per-key budget dropped it.
    Budget,
    /// None of the above: it ended while the pattern processed these events.
    Unknown(Vec<Arc<Event>>),
}

/// A (partial) match by the `seq`s of its events, per variable.
type Seqs = Vec<(VarId, Vec<u64>)>;

fn seqs(events: &MatchEvents) -> Seqs {
    events.iter().map(|(v, l)| (*v, l.iter().map(|e| e.seq).collect())).collect()
}

/// Whether `q` holds every event of `p` (per variable, as a prefix): `q` is `p` continued.
fn extends(p: &Seqs, q: &Seqs) -> bool {
    p.iter().all(|(v, l)| q.iter().any(|(w, m)| w == v && m.starts_with(l)))
}

impl PartitionTrace {
    fn collect(&mut self) {
        for out in self.outs.drain(..) {
            match out {
                Output::Match { ts, events, .. } => self.matches.push((ts, events)),
                Output::Timeout { ts, events, .. } => self.timeouts.push((ts, events)),
                // Lateness is decided before the operator sees an event, as the service does.
                Output::Late { .. } => {}
            }
        }
    }

    /// Moves the operator's watermark to `wm`; when that changes the key's partial matches,
    /// finds those that ended without a successor, a match or a timeout.
    pub(super) fn advance(&mut self, nfa: &Nfa, key: &Key, wm: i64) {
        let refs = self.op.reference().clone();
        let (buffered, prev_wm) = (self.op.buffered_events(key), self.op.watermark());
        let (matches, timeouts) = (self.matches.len(), self.timeouts.len());
        self.op.advance_watermark(wm, &mut self.outs);
        let changed = !self.outs.is_empty() || self.op.buffered_events(key) < buffered;
        self.collect();
        if !changed {
            return;
        }
        let now = self.op.partial_matches(key);
        let successors: Vec<Seqs> = now
            .iter()
            .map(|v| seqs(&v.events))
            .chain(self.matches[matches..].iter().map(|(_, m)| seqs(m)))
            .chain(self.timeouts[timeouts..].iter().map(|(_, m)| seqs(m)))
            .collect();
        let dropped = self.op.stats().dropped_partial_matches;
        let budget = dropped > self.dropped;
        self.dropped = dropped;
        let wm = self.op.watermark();
        let mut released: Vec<&Arc<Event>> = self.events.iter().filter(|e| e.ts > prev_wm && e.ts <= wm).collect();
        released.sort_by_key(|e| (e.ts, e.seq));
        for p in std::mem::replace(&mut self.last, now) {
            let mine = seqs(&p.events);
            if successors.iter().any(|q| extends(&mine, q)) {
                continue;
            }
            // Follow it through the events released in this step while what it does is certain.
            let mut taken = in_order(&p.events);
            let mut state = p.state;
            let last = taken.last().map(|(_, e)| (e.ts, e.seq));
            let after: Vec<&Arc<Event>> =
                released.iter().copied().filter(|e| last.is_none_or(|l| (e.ts, e.seq) > l)).collect();
            let mut reason = None;
            for e in &after {
                let view = view_of(&taken);
                let w = waiting(nfa, state);
                if let Some((var, _)) = w.forbidden.iter().find(|(_, c)| c.holds_with(&nfa.conditions, e, &view, &refs))
                {
                    reason = Some(Reason::Negated(*var, (*e).clone()));
                    break;
                }
                match next_move(nfa, state, e, &view, &refs) {
                    Move::Blocked => {
                        reason = Some(Reason::Blocked((*e).clone()));
                        break;
                    }
                    Move::Take(var, target) => {
                        taken.push((var, (*e).clone()));
                        state = target;
                    }
                    Move::Skip(target) => state = target,
                    Move::Branch => break,
                }
            }
            let reason = reason.unwrap_or_else(|| {
                if nfa.skip != engine::SkipStrategy::NoSkip && self.matches.len() > matches {
                    Reason::Skipped((matches..self.matches.len()).collect())
                } else if budget {
                    Reason::Budget
                } else {
                    Reason::Unknown(after.into_iter().cloned().collect())
                }
            });
            self.discarded.push(Discard { start_ts: p.start_ts, taken, state, reason });
        }
    }
}

impl KeyTrace {
    /// A trace of `key` under `nfa`, for a stream with this bounded out-of-orderness (ms) and
    /// engine configuration (timeouts are turned on: they are what the trace reports).
    pub fn new(nfa: Arc<Nfa>, key: Key, out_of_orderness_ms: i64, config: OpConfig) -> Self {
        KeyTrace {
            nfa,
            key,
            out_of_orderness: out_of_orderness_ms,
            config: OpConfig { timeouts: true, ..config },
            partitions: BTreeMap::new(),
            tables: RefData::default(),
            refs: Bound::NONE,
        }
    }

    /// Every event of the pattern's stream (all keys: they move the watermark), in offset order
    /// per partition (partitions may interleave): the events the service admitted (decoded,
    /// [`admit`](crate::core::plan::admit)), each with `seq` = [`seq_of`](crate::core::coords::seq_of)`(partition, offset)`.
    pub fn feed(&mut self, partition: i32, event: Arc<Event>) {
        let (nfa, key, ooo) = (&self.nfa, &self.key, self.out_of_orderness);
        let part = partition_of(&mut self.partitions, nfa, self.config, &self.tables, partition);
        part.read += 1;
        let mine = Key::of(event.field(nfa.meta.key)) == *key;
        let wm = watermark_of(part.max_ts, ooo);
        if event.ts <= wm {
            if mine {
                part.late.push((event, wm));
            }
            return;
        }
        part.max_ts = part.max_ts.max(event.ts);
        let wm = watermark_of(part.max_ts, ooo);
        if mine {
            part.events.push(event.clone());
            part.op.process(key.clone(), event, &mut part.outs);
        }
        part.advance(nfa, key, wm);
    }

    /// Applies what the service recorded for `partition` besides its records (see
    /// `core::context`): a wall-clock advance, or the reference tables it installed.
    pub fn apply(&mut self, partition: i32, steps: Vec<Step>) {
        for s in steps {
            match s {
                Step::Tables(data) => self.set_tables(&data),
                Step::Advance(clock) => {
                    let (nfa, key, ooo) = (&self.nfa, &self.key, self.out_of_orderness);
                    let part = partition_of(&mut self.partitions, nfa, self.config, &self.tables, partition);
                    part.max_ts = part.max_ts.max(clock);
                    let wm = watermark_of(part.max_ts, ooo);
                    part.advance(nfa, key, wm);
                }
            }
        }
    }

    /// Installs reference tables in every partition (and those made later).
    pub fn set_tables(&mut self, data: &RefData) {
        self.tables = data.clone();
        self.refs = Bound::new(&self.nfa.tables, data);
        for p in self.partitions.values_mut() {
            p.op.set_reference(data);
        }
    }
}

/// The trace of `partition`, made (with the tables installed) on its first event.
fn partition_of<'a>(
    partitions: &'a mut BTreeMap<i32, PartitionTrace>,
    nfa: &Arc<Nfa>,
    config: OpConfig,
    tables: &RefData,
    partition: i32,
) -> &'a mut PartitionTrace {
    partitions.entry(partition).or_insert_with(|| {
        let mut op = Operator::new(nfa.clone(), config);
        op.track_changes(false);
        op.set_reference(tables);
        PartitionTrace {
            op,
            max_ts: i64::MIN,
            read: 0,
            events: Vec::new(),
            late: Vec::new(),
            matches: Vec::new(),
            timeouts: Vec::new(),
            discarded: Vec::new(),
            last: Vec::new(),
            dropped: 0,
            outs: Vec::new(),
        }
    })
}
