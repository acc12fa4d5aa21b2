//! One pattern set running over the records of a replay: the service's per-partition state
//! ([`Partition`]) and the alerts it raised.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::runtime::Config as OpConfig;
use engine::RefData;

use super::env::Timeline;
use super::{Chosen, Input};
use crate::audit::{self, Report};
use crate::core::config::Config;
use crate::core::context::{Context, Step};
use crate::core::partition::{Emit, Partition};
use crate::core::pattern_sets::Position;
use crate::core::plan::{admit, expose, Reject, StreamPlan};
use crate::core::repartition::Marker;

/// One pattern set running over the records: the service's per-partition state and what it
/// emitted.
pub(super) struct Runner {
    /// By topic (a stream's topic, or a repartition topic of it, see `core::repartition`).
    pub(super) plans: BTreeMap<String, Arc<StreamPlan>>,
    op_config: OpConfig,
    /// By topic, then partition.
    parts: BTreeMap<String, BTreeMap<i32, Partition>>,
    /// Recorded starts by (topic, partition): offset and watermark.
    pub(super) starts: BTreeMap<(String, i32), Position>,
    emit: Vec<Emit>,
    /// The alert lines, in the order they were raised.
    pub(super) lines: Vec<String>,
    pub(super) counts: audit::Counts,
    /// With the sets as the service switched them: the timeline, each set's plans (by set hash,
    /// then stream), and per partition the next step to apply.
    timeline: Option<(Timeline, BTreeMap<String, Plans>)>,
    cursors: BTreeMap<(String, i32), usize>,
    /// Switches where the replay's watermark was not the one the service recorded.
    pub(super) mismatches: Vec<String>,
    /// What the service applied besides the records, still to apply (see `core::context`).
    pub(super) context: Context,
    /// The reference tables partitions start with (a file's: the config's).
    pub(super) tables: RefData,
}

/// Plans by topic.
type Plans = BTreeMap<String, Arc<StreamPlan>>;

/// The plans of every configured stream (with a schema) for the patterns of `nfas`, by topic, as
/// the service lays them out (see `StreamPlan::layout`: repartition topics included).
fn plans_of(cfg: &Config, catalog: &dsl::Catalog, nfas: &[Arc<engine::Nfa>]) -> Plans {
    let mut plans = BTreeMap::new();
    for (name, s) in &cfg.streams {
        if let Some(schema) = catalog.streams.get(name).cloned() {
            for plan in StreamPlan::layout(name, s, schema, nfas, &cfg.kafka.group_id) {
                plans.insert(plan.topic.clone(), plan);
            }
        }
    }
    plans
}

impl Runner {
    pub(super) fn new(chosen: Chosen, cfg: &Config, catalog: &dsl::Catalog) -> Runner {
        let op_config =
            OpConfig { max_partial_matches_per_key: cfg.engine.max_partial_matches_per_key, ..OpConfig::default() };
        // With a timeline, `set` holds every version of its sets: the topics to read.
        let plans = expose(plans_of(cfg, catalog, &chosen.set.nfas), &chosen.set.live_keys);
        let timeline = chosen.timeline.map(|t| {
            let per_set = t
                .sets
                .iter()
                .map(|(h, set)| (h.clone(), expose(plans_of(cfg, catalog, &set.nfas), &set.live_keys)))
                .collect();
            (t, per_set)
        });
        Runner {
            plans,
            op_config,
            parts: BTreeMap::new(),
            starts: chosen.starts,
            emit: Vec::new(),
            lines: Vec::new(),
            counts: audit::Counts::default(),
            timeline,
            cursors: BTreeMap::new(),
            mismatches: Vec::new(),
            context: Context::default(),
            tables: RefData::default(),
        }
    }

    /// The partition of `topic` the record at `offset` goes to, made when it is the first
    /// (started at the recorded watermark when a set took effect there) and, with a timeline,
    /// switched to the set that took effect at or before `offset` as the service switched it.
    /// `None` when no set ran there. `event_time`: its watermark follows its own events (a
    /// repartition topic's plan run over a file, which has no markers).
    fn partition(&mut self, topic: &str, partition: i32, offset: i64, event_time: bool) -> Option<&mut Partition> {
        let plan = self.plans.get(topic)?.clone();
        let key = (plan.topic.clone(), partition);
        let parts = self.parts.entry(topic.to_owned()).or_default();
        let Some((timeline, per_set)) = &self.timeline else {
            let part = parts.entry(partition).or_insert_with(|| {
                let mut part = Partition::new(plan.clone(), partition, self.op_config).without_change_tracking();
                part.set_reference(&self.tables);
                if event_time {
                    part.use_event_time();
                }
                // Started where the recorded set took effect: its watermark then.
                if let Some(pos) = self.starts.get(&key).filter(|p| p.offset == offset) {
                    part.resume_at(pos.watermark.unwrap_or(i64::MIN));
                }
                part
            });
            return Some(part);
        };
        let steps = timeline.steps.get(&key)?;
        let cursor = self.cursors.entry(key.clone()).or_insert(0);
        if let std::collections::btree_map::Entry::Vacant(v) = parts.entry(partition) {
            // The set in effect at the first record read: the last one that took effect at or
            // before it (or the first one).
            let due = steps.iter().take_while(|s| s.offset <= offset).count();
            let step = &steps[due.max(1) - 1];
            let mut part =
                Partition::new(per_set[&step.set][topic].clone(), partition, self.op_config).without_change_tracking();
            part.set_reference(&self.tables);
            if event_time {
                part.use_event_time();
            }
            part.set = step.set.clone();
            if step.offset == offset {
                part.resume_at(step.watermark.unwrap_or(i64::MIN));
            }
            v.insert(part);
            *cursor = due.max(1);
        }
        while let Some(step) = steps.get(*cursor).filter(|s| s.offset <= offset) {
            *cursor += 1;
            let Some(part) = parts.remove(&partition) else { break };
            if part.set == step.set {
                parts.insert(partition, part);
                continue;
            }
            let (want, have) = (step.watermark.unwrap_or(i64::MIN), part.watermark());
            if want != have {
                self.mismatches.push(format!(
                    "{}/{partition}@{}: set {} took effect at watermark {want} in the service ({}), at {have} in this \
                     replay: the records before it were not read as the service read them",
                    key.0, step.offset, step.set, step.reason
                ));
            }
            let mut part = part.with_plan(per_set[&step.set][topic].clone(), step.offset);
            part.set = step.set.clone();
            parts.insert(partition, part);
        }
        parts.get_mut(&partition)
    }

    /// Feeds one decoded record at `offset` of `partition` of `input` (a topic; with `file`, a
    /// stream); an admission problem is returned (the service dead-letters the record).
    ///
    /// A file has no repartition topics: its events go to the stream's topic's plan at their
    /// partition and to each repartition topic's plan at partition 0, whose watermark follows
    /// its events (the file in one partition gives what the service gives over the repartition
    /// topic, but for events late at one stage and not the other).
    fn feed(
        &mut self,
        input: &str,
        partition: i32,
        offset: i64,
        event: engine::Event,
        file: bool,
        cfg: &Config,
    ) -> Option<Reject> {
        let topics: Vec<(String, i32)> = if file {
            let mut t: Vec<(String, i32)> = self
                .plans
                .values()
                .filter(|p| p.name == input && !p.is_repartitioned())
                .map(|p| (p.topic.clone(), partition))
                .collect();
            t.extend(
                self.plans.values().filter(|p| p.name == input && p.is_repartitioned()).map(|p| (p.topic.clone(), 0)),
            );
            t
        } else {
            vec![(input.to_owned(), partition)]
        };
        let mut problem = None;
        for (i, (topic, p)) in topics.iter().enumerate() {
            let mut emit = std::mem::take(&mut self.emit);
            let due = if file { Vec::new() } else { self.context.due(topic, *p, offset) };
            let Some(part) = self.partition(topic, *p, offset, file && i > 0) else { continue };
            // Made before this record was read, whatever becomes of it.
            apply(part, due, &mut emit);
            if let Err(r) = admit(&part.plan, &event, cfg.service.min_event_time, cfg.service.max_event_time) {
                problem.get_or_insert(r);
                self.emit = emit;
                self.take_alerts();
                continue;
            }
            if part.plan.patterns.is_empty() && part.draining().next().is_none() && !part.plan.forwards().is_empty() {
                // Only forwards (counted where the patterns read it).
                self.emit = emit;
                continue;
            }
            let on_time = part.process(event.clone(), &mut emit);
            self.emit = emit;
            if on_time {
                self.counts.processed += 1;
            } else {
                self.counts.late += 1;
            }
            self.take_alerts();
        }
        problem
    }

    /// Takes a watermark marker read at `offset` of `partition` of repartition topic `topic`.
    pub(super) fn mark(&mut self, topic: &str, partition: i32, offset: i64, marker: Marker) {
        let mut emit = std::mem::take(&mut self.emit);
        if let Some(part) = self.partition(topic, partition, offset, false) {
            part.mark(marker, &mut emit);
        }
        self.emit = emit;
        self.take_alerts();
    }

    /// Applies the recorded context of `topic`/`partition` due before its record at `next`
    /// (the end of what was read of it: what came after its last record).
    pub(super) fn end_of(&mut self, topic: &str, partition: i32, next: i64) {
        let due = self.context.due(topic, partition, next);
        if due.is_empty() {
            return;
        }
        let mut emit = std::mem::take(&mut self.emit);
        if let Some(part) = self.partition(topic, partition, next, false) {
            apply(part, due, &mut emit);
        }
        self.emit = emit;
        self.take_alerts();
    }

    fn take_alerts(&mut self) {
        for e in self.emit.drain(..) {
            if let Emit::Alert { json, .. } = e {
                self.lines.push(json);
            }
        }
    }

    /// The end of the input: windows close unless it goes on.
    pub(super) fn finish(&mut self, open_end: bool) {
        for part in self.parts.values_mut().flat_map(BTreeMap::values_mut) {
            if !open_end {
                part.finish(&mut self.emit);
            }
            self.counts.dropped += part.dropped_partial_matches();
        }
        self.take_alerts();
    }
}

/// Applies recorded context steps to a partition, in order.
fn apply(part: &mut Partition, steps: Vec<Step>, emit: &mut Vec<Emit>) {
    for s in steps {
        match s {
            Step::Advance(clock) => {
                part.advance_clock(clock, emit);
            }
            Step::Tables(data) => part.set_reference(&data),
        }
    }
}

/// Feeds one input record to every runner; returns the first runner's admission problem.
/// `file`: the input is a file (`Input::source` is a stream, not a topic).
pub(super) fn feed(
    runners: &mut [Runner],
    report: &mut Report,
    input: Input<'_>,
    file: bool,
    cfg: &Config,
) -> Option<Reject> {
    let Input { stream, source, partition, offset, timestamp, event } = input;
    let ts = event.as_ref().ok().map(|e| e.ts);
    report.read(source, partition, offset, timestamp, ts);
    let at = if file { stream } else { source };
    let problem = match event {
        Err(r) => Some(r),
        Ok(event) => match runners {
            [a] => a.feed(at, partition, offset, event, file, cfg),
            [a, rest @ ..] => {
                let problem = a.feed(at, partition, offset, event.clone(), file, cfg);
                for r in rest {
                    r.feed(at, partition, offset, event.clone(), file, cfg);
                }
                problem
            }
            [] => None,
        },
    };
    if let Some(r) = &problem {
        report.dead_letter(r.code);
    }
    problem
}
