//! The Kafka-independent core shared by `tripline run` and `tripline replay`: the engine state of
//! one input partition (one operator per pattern over the partition's stream, the partition's
//! watermark) and what it emits ([`Emit`]: alerts and timeouts rendered as JSON lines). Its
//! changelog encoding is in [`super::changelog`].
//!
//! State is per partition, as the watermark is: an event is late when its time is at or behind
//! the newest event time of its partition minus the stream's allowed out-of-orderness (minus
//! 1 ms, as Flink's bounded out-of-orderness generator). The result depends only on the
//! partition's records in offset order, never on how partitions interleave, on batching or on
//! the wall clock, so a replay of the same records gives the same alerts as the service.

use std::sync::Arc;

use engine::runtime::{After, Config as OpConfig, Drain, Key, Operator, Output};
use engine::{Event, Nfa, RefData};

use super::alert::{alert_line, timeout_line};
use super::coords::{seq_of, watermark_of};
use super::plan::{LiveKeys, StreamPlan};
use super::repartition::{Marker, Upstreams};
use super::stored::Stored;

/// What a partition reports, per record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records read from the partition.
    pub consumed: u64,
    /// Events fed to the patterns.
    pub processed: u64,
    pub late: u64,
    pub dead_lettered: u64,
    pub alerts: u64,
    pub timeouts: u64,
}

/// An output of the engine, rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emit {
    /// An alert: its record key (the pattern key) and JSON document, its event time, and
    /// whether its pattern runs in shadow mode.
    Alert { key: String, json: String, ts: i64, shadow: bool },
    /// A timed-out partial match (JSON document).
    Timeout { key: String, json: String },
}

/// A seek of the consumer on a partition, until the partition's first record after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sought {
    /// The offset sought.
    pub offset: i64,
    /// How often it was sought again because the first record came from further on.
    pub again: u8,
    /// That first record's offset, the last time.
    pub first: Option<i64>,
}

impl Sought {
    pub fn at(offset: i64) -> Sought {
        Sought { offset, again: 0, first: None }
    }
}

/// The engine state of one input partition.
#[derive(Debug)]
pub struct Partition {
    pub plan: Arc<StreamPlan>,
    pub partition: i32,
    pub(super) operators: Vec<Operator>,
    /// Pattern versions a switch replaced that still hold partial matches, finishing them
    /// ([`Partition::with_plan`]), in the order they were replaced.
    pub(super) draining: Vec<Draining>,
    /// The content hashes of operators that went (dropped, or done draining): the next
    /// [`Partition::take_changes`] deletes what is stored of them (changelog tombstones for
    /// keys that hold only timers, the local range).
    pub(super) gone: Vec<String>,
    /// The operators' settings (for operators made on a switch or a restore).
    pub(super) config: OpConfig,
    /// Newest event time seen (i64::MIN before the first event).
    pub(super) max_ts: i64,
    /// A repartition topic's partition: its watermark comes from the source partitions'
    /// markers, not from its events (see [`super::repartition`]).
    pub(super) upstreams: Option<Upstreams>,
    /// The offset of the next record to read (the position a commit records).
    pub next_offset: i64,
    /// Records were read since the last commit (the service's bookkeeping; not state).
    pub advanced: bool,
    /// The consumer was sought on this partition and its first record since has not come: where
    /// it was sought (the service checks that record, see `serve::records`).
    pub sought: Option<Sought>,
    pub counts: Counts,
    /// What was read since the service's last commit (for the metrics; not state).
    pub reads: Reads,
    outs: Vec<Output>,
    /// The operators' counts at the last [`Partition::take_pattern_counts`].
    reported: Vec<PatternCounts>,
    /// Where keys not in memory are (see [`Partition::open`]); `None`: all are in memory.
    pub(super) stored: Option<Stored>,
    /// The pattern set the partition runs (its hash), recorded in its meta record.
    pub set: String,
    /// Transactions that took its changes (not state).
    pub(super) commits: u64,
    /// The reference tables its patterns read (installed at transaction boundaries, see
    /// [`Partition::set_reference`]).
    reference: RefData,
}

/// A pattern version being replaced, finishing the partial matches it holds.
#[derive(Debug)]
pub struct Draining {
    pub(super) op: Operator,
    /// Its counts at the last [`Partition::take_pattern_counts`].
    seen: PatternCounts,
    /// The keys on which its alerts are live, as when it was replaced.
    pub(super) live: LiveKeys,
}

impl Draining {
    pub(super) fn new(op: Operator, live: LiveKeys) -> Self {
        Draining { op, seen: PatternCounts::default(), live }
    }
}

/// A pattern version a partition's stored state holds that is not in its plan: its content
/// hash, keys and partial matches, where its drain began (if it was draining) and the keys on
/// which its alerts were live.
#[derive(Clone, Debug)]
pub(super) struct StoredVersion {
    pub hash: String,
    pub keys: u64,
    pub partials: u64,
    pub drain: Option<Drain>,
    pub live: LiveKeys,
}

/// Finds a pattern version by its content hash (one that ran before: a restored partition's
/// draining versions).
pub type Resolve<'a> = &'a dyn Fn(&str) -> Option<Arc<Nfa>>;

/// Records read from a partition, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub consumed: u64,
    /// Payload bytes.
    pub bytes: u64,
    pub decoded: u64,
    pub processed: u64,
    pub late: u64,
}

/// What one pattern's operator counted (cumulative, or a difference).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatternCounts {
    pub matches: u64,
    pub timeouts: u64,
    /// Partial matches dropped by the budget.
    pub dropped: u64,
    /// Per variable of the pattern, partial matches that reached it.
    pub funnel: Vec<u64>,
    /// Keys found in memory / read from the store.
    pub state_hits: u64,
    pub state_misses: u64,
}

impl Partition {
    pub fn new(plan: Arc<StreamPlan>, partition: i32, config: OpConfig) -> Self {
        let config = stored_config(config);
        let operators = plan.patterns.iter().map(|n| Operator::new(n.clone(), config)).collect();
        let upstreams = plan.is_repartitioned().then(Upstreams::new);
        Partition {
            plan,
            partition,
            operators,
            draining: Vec::new(),
            gone: Vec::new(),
            config,
            max_ts: i64::MIN,
            upstreams,
            next_offset: 0,
            advanced: false,
            sought: None,
            counts: Counts::default(),
            reads: Reads::default(),
            outs: Vec::new(),
            reported: Vec::new(),
            stored: None,
            set: String::new(),
            commits: 0,
            reference: RefData::default(),
        }
    }

    /// The partition under another pattern set of its stream, switched before its record at
    /// offset `at` (the first record read under the new set). What happens to partial matches
    /// in flight (see docs/service.md, "Partial matches in flight when the patterns change"):
    /// - a pattern version in both sets (same content hash) keeps its operator and state;
    /// - a version that is no longer in the set and holds state **drains**: it finishes the
    ///   partial matches it holds, alerting as itself, until they complete or time out, and
    ///   starts none from records read from `at` on (the events it had read before still start
    ///   partial matches when the watermark reaches them); then it goes;
    /// - a version new to the partition starts empty at the partition's watermark and sees
    ///   the records from `at` on, so every record starts partial matches in exactly one
    ///   version: before `at` the old one, from `at` the new one, and none is lost;
    /// - a version that is still draining (a rollback to it) resumes with what it holds.
    ///
    /// Versions that go holding nothing are dropped (their stored records are deleted at the
    /// next [`Partition::take_changes`]: changelog tombstones and the local range).
    pub fn with_plan(mut self, plan: Arc<StreamPlan>, at: i64) -> Partition {
        let wm = self.watermark();
        let drain = Drain { after: self.after(at), horizon: self.max_ts };
        self.reported.resize_with(self.operators.len(), PatternCounts::default);
        let lives: Vec<LiveKeys> = self.plan.live_keys.clone();
        let mut old: Vec<Option<Draining>> = self
            .operators
            .drain(..)
            .zip(self.reported.drain(..))
            .enumerate()
            .map(|(i, (op, seen))| Some(Draining { op, seen, live: lives.get(i).copied().unwrap_or(LiveKeys::ALL) }))
            .collect();
        let mut draining: Vec<Option<Draining>> = std::mem::take(&mut self.draining).into_iter().map(Some).collect();
        let find = |v: &mut Vec<Option<Draining>>, hash: &str| {
            v.iter_mut().find(|d| d.as_ref().is_some_and(|d| d.op.nfa().meta.hash == hash)).and_then(Option::take)
        };
        let (mut operators, mut reported) = (Vec::new(), Vec::new());
        for nfa in &plan.patterns {
            if let Some(d) = find(&mut old, &nfa.meta.hash) {
                operators.push(d.op);
                reported.push(d.seen);
            } else if let Some(mut d) = find(&mut draining, &nfa.meta.hash) {
                d.op.resume();
                operators.push(d.op);
                reported.push(d.seen);
            } else {
                let mut op = Operator::new(nfa.clone(), self.config);
                self.attach_new(&mut op);
                op.set_watermark(wm);
                op.set_reference(&self.reference);
                operators.push(op);
                reported.push(PatternCounts::default());
            }
        }
        self.draining = draining.into_iter().flatten().collect();
        for mut d in old.into_iter().flatten() {
            if d.op.active_keys() > 0 {
                d.op.drain(drain.clone());
                self.draining.push(d);
            } else {
                self.gone.push(d.op.nfa().meta.hash.clone());
            }
        }
        Partition { plan, operators, reported, ..self }
    }

    /// Makes the draining operators named in a restored partition's meta record, and drains
    /// the stored state of versions that were live in the set the partition ran but are not
    /// in its plan (the partition switches to the plan where its state ends): `stored` per
    /// content hash holds the keys, partial matches and (if it was draining) the drain. Their
    /// pattern versions come from `resolve`; the state of one it does not know is not read
    /// (the caller counts it as stale).
    pub(super) fn restore_draining(
        &mut self,
        stored: Vec<StoredVersion>,
        resolve: Resolve<'_>,
    ) -> Vec<(Operator, u64, u64, LiveKeys)> {
        let switch = Drain { after: self.after(self.next_offset), horizon: self.max_ts };
        let mut made = Vec::new();
        // Those that were draining first, then those the switch replaces: the order
        // `with_plan` keeps them in.
        let (mut stored, replaced): (Vec<_>, Vec<_>) = stored.into_iter().partition(|s| s.drain.is_some());
        stored.extend(replaced);
        for v in stored {
            if self.operators.iter().any(|o| o.nfa().meta.hash == v.hash) || v.keys == 0 {
                continue;
            }
            let Some(nfa) = resolve(&v.hash) else {
                continue;
            };
            let mut op = Operator::new(nfa, self.config);
            op.set_watermark(self.watermark());
            op.set_reference(&self.reference);
            op.drain(v.drain.unwrap_or_else(|| switch.clone()));
            made.push((op, v.keys, v.partials, v.live));
        }
        made
    }

    /// The operators of draining pattern versions.
    pub fn draining(&self) -> impl Iterator<Item = &Operator> {
        self.draining.iter().map(|d| &d.op)
    }

    /// Every operator: the plan's, then the draining ones.
    pub fn all_operators(&self) -> impl Iterator<Item = &Operator> {
        self.operators.iter().chain(self.draining())
    }

    /// Stops recording changed keys (for runs that keep no durable copy: replay).
    pub fn without_change_tracking(mut self) -> Self {
        for op in self.operators.iter_mut().chain(self.draining.iter_mut().map(|d| &mut d.op)) {
            op.track_changes(false);
        }
        self
    }

    /// The partition's watermark: newest event time - out-of-orderness - 1 ms; on a
    /// repartition topic, the one its markers give ([`Upstreams::mark`]).
    pub fn watermark(&self) -> i64 {
        match &self.upstreams {
            Some(u) => u.watermark,
            None => watermark_of(self.max_ts, self.plan.out_of_orderness),
        }
    }

    /// Starts the partition at a recorded watermark (a replay from where a pattern set took
    /// effect): events at or behind it are late, as they were for the service.
    pub fn resume_at(&mut self, watermark: i64) {
        if watermark == i64::MIN || self.max_ts != i64::MIN {
            return;
        }
        match &mut self.upstreams {
            Some(u) if u.watermark != i64::MIN => return,
            Some(u) => u.watermark = watermark,
            None => self.max_ts = watermark.saturating_add(1).saturating_add(self.plan.out_of_orderness),
        }
        for op in &mut self.operators {
            op.set_watermark(watermark);
        }
    }

    /// Whether an event at `ts` would be late: at or behind the watermark, when a pattern reads
    /// the partition (one that only forwards to repartition topics has nothing to be late for).
    pub fn is_late(&self, ts: i64) -> bool {
        ts <= self.watermark() && !(self.operators.is_empty() && self.draining.is_empty())
    }

    /// Its watermark follows its own events even on a repartition topic (a replay of a file,
    /// which has no markers).
    pub fn use_event_time(&mut self) {
        self.upstreams = None;
    }

    /// The source partitions' watermarks a repartition topic's partition holds (`None` for
    /// another partition).
    pub fn upstreams(&self) -> Option<&Upstreams> {
        self.upstreams.as_ref()
    }

    /// The records read from offset `at` on (see [`engine::runtime::After`]): by offset, or on a
    /// repartition topic (whose events have their source records' coordinates) per source
    /// partition from where its read position is now.
    fn after(&self, at: i64) -> After {
        match &self.upstreams {
            Some(u) => u.after(),
            None => After::Seq(seq_of(self.partition, at)),
        }
    }

    /// Takes a watermark marker of a source partition (a repartition topic's partition; on
    /// another it does nothing): the watermark moves to what the markers give, and the windows
    /// it passes close.
    pub fn mark(&mut self, marker: Marker, emit: &mut Vec<Emit>) {
        let Some(u) = &mut self.upstreams else { return };
        let before = u.watermark;
        let wm = u.mark(marker);
        if wm == before {
            return;
        }
        for i in 0..self.operators.len() + self.draining.len() {
            op_at(&mut self.operators, &mut self.draining, i).advance_watermark(wm, &mut self.outs);
            self.render(i, emit);
        }
    }

    /// Installs the reference tables its patterns read from now on (every operator, draining
    /// ones included, and those made later). The service calls it only between transactions,
    /// and a replay where the service did (see `core::reference`).
    pub fn set_reference(&mut self, data: &RefData) {
        self.reference = data.clone();
        for op in self.operators.iter_mut().chain(self.draining.iter_mut().map(|d| &mut d.op)) {
            op.set_reference(data);
        }
    }

    /// The reference tables installed.
    pub fn reference(&self) -> &RefData {
        &self.reference
    }

    /// Moves the watermark as if an event stamped `clock` had arrived (an idle partition's
    /// wall-clock advance, see `core::clock`), and closes the windows it passes. Returns the new
    /// watermark, or `None` when it does not move (`clock` is not past the newest event time,
    /// or the partition reads a repartition topic, whose watermark its markers give).
    pub fn advance_clock(&mut self, clock: i64, emit: &mut Vec<Emit>) -> Option<i64> {
        if self.upstreams.is_some() || clock <= self.max_ts {
            return None;
        }
        self.max_ts = clock;
        let wm = self.watermark();
        for i in 0..self.operators.len() + self.draining.len() {
            op_at(&mut self.operators, &mut self.draining, i).advance_watermark(wm, &mut self.outs);
            self.render(i, emit);
        }
        Some(wm)
    }

    /// Whether an advance of the watermark could release anything here: a pattern holds
    /// partial matches or buffered events, or the partition forwards to repartition topics
    /// (whose patterns wait for its watermark).
    pub fn waits_for_time(&self) -> bool {
        !self.plan.forwards().is_empty() || self.all_operators().any(|op| op.active_keys() > 0)
    }

    /// Feeds an on-time event to every pattern of the stream and moves the watermark; returns
    /// false (and feeds nothing) when the event is late.
    pub fn process(&mut self, event: Event, emit: &mut Vec<Emit>) -> bool {
        if self.is_late(event.ts) {
            self.counts.late += 1;
            return false;
        }
        self.counts.processed += 1;
        self.max_ts = self.max_ts.max(event.ts);
        if let Some(u) = &mut self.upstreams {
            let (p, o) = super::coords::coords(event.seq);
            u.read(p, o);
        }
        let wm = self.watermark();
        let event = Arc::new(event);
        for i in 0..self.operators.len() + self.draining.len() {
            let op = op_at(&mut self.operators, &mut self.draining, i);
            let key = Key::of(event.field(op.nfa().meta.key));
            op.process(key, event.clone(), &mut self.outs);
            op.advance_watermark(wm, &mut self.outs);
            self.render(i, emit);
        }
        true
    }

    /// End of input (replay only): time runs to its end, every window closes.
    pub fn finish(&mut self, emit: &mut Vec<Emit>) {
        for i in 0..self.operators.len() + self.draining.len() {
            op_at(&mut self.operators, &mut self.draining, i).advance_watermark(i64::MAX, &mut self.outs);
            self.render(i, emit);
        }
    }

    fn render(&mut self, op: usize, emit: &mut Vec<Emit>) {
        let (operator, live) = match self.operators.len() {
            n if op < n => (&self.operators[op], self.plan.live_keys.get(op).copied().unwrap_or(LiveKeys::ALL)),
            n => (&self.draining[op - n].op, self.draining[op - n].live),
        };
        let (nfa, refs) = (operator.nfa(), operator.reference());
        // Events read from a repartition topic come from several partitions.
        let lanes = self.upstreams.is_some();
        for o in self.outs.drain(..) {
            match o {
                Output::Match { key, ts, events } => {
                    self.counts.alerts += 1;
                    let key_text = key.to_string();
                    let shadow = nfa.meta.mode == engine::Mode::Shadow || !live.live_for(&key_text);
                    emit.push(Emit::Alert {
                        key: key_text,
                        json: alert_line(nfa, refs, &key, ts, &events, shadow, lanes),
                        ts,
                        shadow,
                    });
                }
                Output::Timeout { key, ts, events } => {
                    self.counts.timeouts += 1;
                    emit.push(Emit::Timeout {
                        key: key.to_string(),
                        json: timeout_line(nfa, &key, ts, &events, lanes),
                    });
                }
                // Lateness is decided once per event, above, against the shared watermark.
                Output::Late { .. } => {}
            }
        }
    }

    /// The operators, one per pattern of the stream (in `plan.patterns` order).
    pub fn operators(&self) -> &[Operator] {
        &self.operators
    }

    /// Per pattern (in `plan.patterns` order), what its operator counted since the last call:
    /// for the metrics, which the service folds in when a transaction commits.
    /// A draining version's counts go to the plan's pattern of the same name (its funnel only
    /// when it has the same variables).
    pub fn take_pattern_counts(&mut self) -> Vec<PatternCounts> {
        self.reported.resize_with(self.operators.len(), PatternCounts::default);
        let mut out: Vec<PatternCounts> =
            self.operators.iter().zip(&mut self.reported).map(|(op, seen)| count_since(op, seen)).collect();
        for d in &mut self.draining {
            let delta = count_since(&d.op, &mut d.seen);
            let name = &d.op.nfa().meta.name;
            if let Some(i) = self.operators.iter().position(|o| &o.nfa().meta.name == name) {
                let c = &mut out[i];
                c.matches += delta.matches;
                c.timeouts += delta.timeouts;
                c.dropped += delta.dropped;
                c.state_hits += delta.state_hits;
                c.state_misses += delta.state_misses;
                if c.funnel.len() == delta.funnel.len() {
                    for (a, b) in c.funnel.iter_mut().zip(&delta.funnel) {
                        *a += b;
                    }
                }
            }
        }
        out
    }

    /// Partial matches dropped by the per-key budget, over all patterns.
    pub fn dropped_partial_matches(&self) -> u64 {
        self.all_operators().map(|o| o.stats().dropped_partial_matches).sum()
    }
}

/// Operator `i` of the plan's (`ops`), then of the draining ones.
fn op_at<'a>(ops: &'a mut [Operator], draining: &'a mut [Draining], i: usize) -> &'a mut Operator {
    match ops.len() {
        n if i < n => &mut ops[i],
        n => &mut draining[i - n].op,
    }
}

/// What `op` counted since `seen`, which becomes its counts now.
fn count_since(op: &Operator, seen: &mut PatternCounts) -> PatternCounts {
    let stats = op.stats();
    let now = PatternCounts {
        matches: stats.matches,
        timeouts: stats.timeouts,
        dropped: stats.dropped_partial_matches,
        funnel: op.funnel().to_vec(),
        state_hits: stats.state_hits,
        state_misses: stats.state_misses,
    };
    let mut delta = PatternCounts {
        matches: now.matches - seen.matches,
        timeouts: now.timeouts - seen.timeouts,
        dropped: now.dropped - seen.dropped,
        funnel: now.funnel.clone(),
        state_hits: now.state_hits - seen.state_hits,
        state_misses: now.state_misses - seen.state_misses,
    };
    for (d, s) in delta.funnel.iter_mut().zip(&seen.funnel) {
        *d -= s;
    }
    *seen = now;
    delta
}

/// The operator settings of a partition: keys holding more than
/// [`INLINE_EVENTS`](super::stored::INLINE_EVENTS) events are stored split unless the caller
/// chose otherwise.
fn stored_config(config: OpConfig) -> OpConfig {
    OpConfig { inline_events: config.inline_events.or(Some(super::stored::INLINE_EVENTS)), ..config }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The payments plan of the library's `names` patterns (`edit(name, source)` applied).
    fn plan(names: &[&str], edit: &dyn Fn(&str, String) -> String) -> Arc<StreamPlan> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cfg = crate::core::config::Config::load(&root.join("tripline.toml")).expect("config");
        let catalog = cfg.catalog(&root.join("tripline.toml")).expect("catalog");
        let mut nfas = Vec::new();
        for n in names {
            let text = std::fs::read_to_string(root.join(format!("patterns/{n}.tl"))).expect("pattern");
            let compiled = dsl::compile_source(&dsl::SourceFile::new(format!("{n}.tl"), edit(n, text)), &catalog);
            assert!(compiled.diagnostics.is_empty(), "{:?}", compiled.diagnostics);
            nfas.extend(compiled.patterns.into_iter().map(|p| Arc::new(p.nfa)));
        }
        StreamPlan::new("payments", &cfg.streams["payments"], catalog.streams["payments"].clone(), &nfas)
    }

    #[test]
    fn a_new_pattern_set_keeps_the_state_of_unchanged_patterns_only() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let old = plan(&["rapid_movement", "structuring"], &|_, t| t);
        let mut part = Partition::new(old.clone(), 0, OpConfig::default());
        let events =
            std::fs::read_to_string(root.join("patterns/examples/rapid_movement.events.jsonl")).expect("events");
        let mut emit = Vec::new();
        // The example's first event, a large credit: a partial match waiting for the debit once a
        // later event (another account's, a minute on) moves the watermark past it.
        let first: serde_json::Value = serde_json::from_str(events.lines().next().expect("an event")).expect("json");
        let mut later = first["value"].clone();
        later["account_id"] = "ACC-OTHER".into();
        later["direction"] = "OUT".into();
        later["event_time"] = (first["value"]["event_time"].as_i64().expect("ts") + 60_000).into();
        for (i, value) in [&first["value"], &later].into_iter().enumerate() {
            let ev = dsl::json_event(&old.schema, Some("Payment"), value, i as u64).expect("event");
            part.process(ev, &mut emit);
        }
        let held = |p: &Partition, name: &str| {
            let op = p.operators().iter().find(|o| o.nfa().meta.name == name).expect("operator");
            (op.active_partial_matches(), op.watermark())
        };
        let (rapid, wm) = held(&part, "rapid_movement");
        assert_eq!(rapid, 1, "the credit waits for its debit");
        assert_eq!(wm, part.watermark());
        // rapid_movement unchanged, structuring changed (another version: another hash).
        let new = plan(&["rapid_movement", "structuring"], &|n, t| {
            if n == "structuring" {
                t.replacen("version ", "version 9", 1)
            } else {
                t
            }
        });
        assert_ne!(new.patterns[1].meta.hash, old.patterns[1].meta.hash);
        assert_eq!(new.patterns[0].meta.hash, old.patterns[0].meta.hash);
        let before = part.watermark();
        let part = part.with_plan(new.clone(), 2);
        assert_eq!(held(&part, "rapid_movement"), (rapid, before), "unchanged: the state stays");
        assert_eq!(held(&part, "structuring"), (0, before), "changed: starts empty at the watermark");
        assert!(Arc::ptr_eq(&part.plan, &new));
        let draining = |p: &Partition| -> Vec<(String, u32, usize, usize)> {
            p.draining()
                .map(|o| (o.nfa().meta.name.clone(), o.nfa().meta.version, o.active_keys(), o.active_partial_matches()))
                .collect()
        };
        // The old structuring holds the later event, buffered ahead of the watermark (read
        // before the switch, it may still start a partial match): it drains.
        let old_version = old.patterns[1].meta.version;
        assert_eq!(draining(&part), vec![("structuring".to_owned(), old_version, 1, 0)]);
        assert_eq!(part.draining().next().and_then(|o| o.draining()).map(|d| d.after.clone()), Some(After::Seq(2)));
        // Dropping a pattern whose operator holds nothing drops it.
        let part = part.with_plan(plan(&["rapid_movement"], &|_, t| t), 2);
        assert_eq!(part.operators().len(), 1);
        assert_eq!(held(&part, "rapid_movement").0, rapid);
        assert_eq!(draining(&part).len(), 1, "the new structuring held nothing: it went");
        // A pattern that goes holding a partial match drains too.
        let part = part.with_plan(plan(&["structuring"], &|_, t| t), 2);
        assert_eq!(part.operators().len(), 1);
        assert_eq!(part.operators()[0].nfa().meta.version, old_version, "a rollback resumes the draining version");
        assert_eq!(draining(&part), vec![("rapid_movement".to_owned(), old.patterns[0].meta.version, 2, rapid)]);
    }

    #[test]
    fn a_partition_resumed_at_a_recorded_watermark_decides_lateness_as_the_service_did() {
        let plan = plan(&["rapid_movement"], &|_, t| t);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let events =
            std::fs::read_to_string(root.join("patterns/examples/rapid_movement.events.jsonl")).expect("events");
        let first: serde_json::Value = serde_json::from_str(events.lines().next().expect("an event")).expect("json");
        let event = |ts: i64, seq: u64| {
            let mut v = first["value"].clone();
            v["event_time"] = ts.into();
            dsl::json_event(&plan.schema, Some("Payment"), &v, seq).expect("event")
        };
        let mut part = Partition::new(plan.clone(), 0, OpConfig::default());
        part.resume_at(10_000);
        assert_eq!(part.watermark(), 10_000);
        assert_eq!(part.operators()[0].watermark(), 10_000);
        let mut emit = Vec::new();
        assert!(!part.process(event(10_000, 1), &mut emit), "at the watermark: late");
        assert!(part.process(event(10_001, 2), &mut emit), "after it: on time");
        // The same as a partition that saw the events the watermark came from.
        let mut seen = Partition::new(plan.clone(), 0, OpConfig::default());
        seen.process(event(10_000 + plan.out_of_orderness + 1, 1), &mut emit);
        assert_eq!(seen.watermark(), 10_000);
        // No watermark recorded (no event before the set took effect): nothing changes.
        let mut fresh = Partition::new(plan, 0, OpConfig::default());
        fresh.resume_at(i64::MIN);
        assert_eq!(fresh.watermark(), i64::MIN);
    }
}
