//! One pattern set running over the records of a replay: the service's per-partition state
//! ([`Partition`]) and the alerts it raised.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::runtime::Config as OpConfig;

use super::{Chosen, Input};
use crate::audit::{self, Report};
use crate::core::config::Config;
use crate::core::partition::{Emit, Partition};
use crate::core::pattern_sets::Position;
use crate::core::plan::{admit, Reject, StreamPlan};

/// One pattern set running over the records: the service's per-partition state and what it
/// emitted.
pub(super) struct Runner {
    /// By stream name.
    pub(super) plans: BTreeMap<String, Arc<StreamPlan>>,
    op_config: OpConfig,
    /// By stream, then partition.
    parts: BTreeMap<String, BTreeMap<i32, Partition>>,
    /// Recorded starts by (topic, partition): offset and watermark.
    pub(super) starts: BTreeMap<(String, i32), Position>,
    emit: Vec<Emit>,
    /// The alert lines, in the order they were raised.
    pub(super) lines: Vec<String>,
    pub(super) counts: audit::Counts,
}

impl Runner {
    pub(super) fn new(chosen: Chosen, cfg: &Config, catalog: &dsl::Catalog) -> Runner {
        let op_config =
            OpConfig { max_partial_matches_per_key: cfg.engine.max_partial_matches_per_key, ..OpConfig::default() };
        let mut plans = BTreeMap::new();
        for (name, s) in &cfg.streams {
            if let Some(schema) = catalog.streams.get(name).cloned() {
                plans.insert(name.clone(), StreamPlan::new(name, s, schema, &chosen.set.nfas));
            }
        }
        Runner {
            plans,
            op_config,
            parts: BTreeMap::new(),
            starts: chosen.starts,
            emit: Vec::new(),
            lines: Vec::new(),
            counts: audit::Counts::default(),
        }
    }

    /// Feeds one decoded record at `offset` of `partition` of `stream`; an admission problem is
    /// returned (the service dead-letters the record).
    fn feed(
        &mut self,
        stream: &str,
        partition: i32,
        offset: i64,
        event: engine::Event,
        cfg: &Config,
    ) -> Option<Reject> {
        let plan = self.plans.get(stream)?;
        if let Err(r) = admit(plan, &event, cfg.service.min_event_time, cfg.service.max_event_time) {
            return Some(r);
        }
        if !self.parts.contains_key(stream) {
            self.parts.insert(stream.to_owned(), BTreeMap::new());
        }
        let parts = self.parts.get_mut(stream).expect("inserted above");
        let part = parts.entry(partition).or_insert_with(|| {
            let mut part = Partition::new(plan.clone(), partition, self.op_config).without_change_tracking();
            // Started where the recorded set took effect: its watermark then.
            if let Some(pos) = self.starts.get(&(plan.topic.clone(), partition)).filter(|p| p.offset == offset) {
                part.resume_at(pos.watermark.unwrap_or(i64::MIN));
            }
            part
        });
        if part.process(event, &mut self.emit) {
            self.counts.processed += 1;
        } else {
            self.counts.late += 1;
        }
        self.take_alerts();
        None
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

/// Feeds one input record to every runner; returns the first runner's admission problem.
pub(super) fn feed(runners: &mut [Runner], report: &mut Report, input: Input<'_>, cfg: &Config) -> Option<Reject> {
    let Input { stream, source, partition, offset, timestamp, event } = input;
    let ts = event.as_ref().ok().map(|e| e.ts);
    report.read(source, partition, offset, timestamp, ts);
    let problem = match event {
        Err(r) => Some(r),
        Ok(event) => match runners {
            [a] => a.feed(stream, partition, offset, event, cfg),
            [a, rest @ ..] => {
                let problem = a.feed(stream, partition, offset, event.clone(), cfg);
                for r in rest {
                    r.feed(stream, partition, offset, event.clone(), cfg);
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
