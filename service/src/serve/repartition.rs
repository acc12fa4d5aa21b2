//! The service's side of repartitioning (see `core::repartition`): the repartition topics set
//! up at start, the source stage's records forwarded in the consuming transaction, the
//! watermark markers every transaction ends with, and idle markers for quiet source partitions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};

use super::rebalance::GroupContext;
use super::{Out, Output, Worker};
use crate::core::config::Config;
use crate::core::plan::{Stage, StreamPlan};
use crate::core::repartition::{partition_of, Marker};
use crate::error::{Error, Result};
use crate::io::kafka::{self, produce};

/// The topics of repartitioning and what the loop knows of the forwarding source partitions.
#[derive(Debug, Default)]
pub(super) struct Topology {
    /// Per repartition topic, its partition count.
    partitions: HashMap<String, i32>,
    /// Per stream topic that forwards: its partition count and idle timeout.
    sources: HashMap<String, (i32, Duration)>,
    /// Per stream topic whose watermark advances by the wall clock when idle: its idle timeout
    /// (see `serve::clock`).
    pub(super) clocks: HashMap<String, Duration>,
    /// Per forwarding (or clock-advancing) source partition: when it last read a record,
    /// whether it has said it is idle since, and when its clock may advance next.
    pub(super) activity: HashMap<String, HashMap<i32, Activity>>,
    /// No idle marker until a record is read: set by a rewind (a transaction aborted). A broker
    /// that is away would abort every idle marker's transaction, and aborts in a row stop the
    /// service; while nothing is read, nothing waits for the markers anyway.
    held: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Activity {
    pub(super) last: Instant,
    /// An idle marker was written (or is in the open transaction).
    idle: bool,
    /// No wall-clock advance before this (the last advance, or a rewind, plus the timeout).
    pub(super) next_advance: Option<Instant>,
}

impl Topology {
    /// Creates the repartition topics of `plans` that are missing, each with as many partitions
    /// as its stream's topic, which must exist (it sizes them).
    pub(super) fn set_up(
        cfg: &Config,
        probe: &BaseConsumer,
        plans: &BTreeMap<String, Arc<StreamPlan>>,
    ) -> Result<Topology> {
        let mut t = Topology::default();
        for plan in plans.values().filter(|p| !p.is_repartitioned()) {
            if let Some(s) = cfg.streams.get(&plan.name).filter(|s| s.advance_when_idle) {
                t.clocks.insert(plan.topic.clone(), Duration::from_millis(s.idle_timeout_ms().max(1) as u64));
            }
        }
        let mut wanted = Vec::new();
        for plan in plans.values() {
            let Stage::Repartitioned { source_topic, .. } = &plan.stage else { continue };
            let count =
                kafka::partition_counts(probe, &[source_topic.as_str()])?[0].map(|n| n as i32).ok_or_else(|| {
                    Error::usage(format!(
                    "topic `{source_topic}` of stream `{}` does not exist: it must, to size its repartition topic `{}` \
                     (create it, then start the service)",
                    plan.name, plan.topic
                ))
                })?;
            let idle = cfg
                .streams
                .get(&plan.name)
                .map_or(crate::core::config::DEFAULT_IDLE_TIMEOUT_MS, |s| s.idle_timeout_ms());
            t.sources.insert(source_topic.clone(), (count, Duration::from_millis(idle.max(1) as u64)));
            wanted.push((plan.topic.clone(), count, false));
        }
        if wanted.is_empty() {
            return Ok(t);
        }
        kafka::ensure_topics(cfg, &wanted)?;
        for (topic, _, _) in &wanted {
            let n = kafka::partition_counts(probe, &[topic.as_str()])?[0].ok_or_else(|| {
                Error::failed(format!("the repartition topic `{topic}` is not there after creating it"))
            })?;
            t.partitions.insert(topic.clone(), n as i32);
        }
        Ok(t)
    }

    /// A forwarding source partition read a record (per record: no allocation).
    pub(super) fn read(&mut self, topic: &str, partition: i32) {
        self.held = false;
        if let Some(a) = self.activity.get_mut(topic).and_then(|m| m.get_mut(&partition)) {
            a.last = Instant::now();
            a.idle = false;
            a.next_advance = None;
        }
    }

    fn activity(&self, topic: &str, partition: i32) -> Option<&Activity> {
        self.activity.get(topic).and_then(|m| m.get(&partition))
    }

    /// After an assignment or a rewind (`rewound`): every source partition counts as active
    /// from now on (an idle marker that aborted is written again once it is idle again, after
    /// a rewind only once a record was read). After a rewind, no clock advance for `hold` (a
    /// broker that is away aborts each, and aborts in a row stop the service).
    pub(super) fn restart(&mut self, parts: impl Iterator<Item = (String, i32)>, rewound: bool, hold: Duration) {
        self.held = rewound;
        self.activity.clear();
        let now = Instant::now();
        let next_advance = rewound.then(|| now + hold);
        for (t, p) in parts.filter(|(t, _)| self.sources.contains_key(t) || self.clocks.contains_key(t)) {
            self.activity.entry(t).or_default().insert(p, Activity { last: now, idle: false, next_advance });
        }
    }
}

impl Worker {
    /// After an assignment or a rewind (see [`Topology::restart`]).
    pub(super) fn restart_activity(&mut self, rewound: bool) {
        let parts: Vec<(String, i32)> =
            self.parts.iter().flat_map(|(t, m)| m.keys().map(move |p| (t.clone(), *p))).collect();
        // Doubled by every abort in a row, from the idle timeout up to 2^5 times it.
        let hold =
            self.repartition.clocks.values().copied().max().unwrap_or_default() * 2u32.pow(self.aborts_in_a_row.min(5));
        self.repartition.restart(parts.into_iter(), rewound, hold);
    }

    /// Puts the consumed record `msg` (admitted by the source stage) in the outbox for each
    /// repartition topic its plan forwards to: `keys` are its key values there, in the order of
    /// the plan's forwards.
    pub(super) fn forward(
        &mut self,
        plan: &StreamPlan,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        keys: &[String],
    ) -> Result<()> {
        use rdkafka::Message;
        for (f, key) in plan.forwards().iter().zip(keys) {
            let n = self
                .repartition
                .partitions
                .get(&f.topic)
                .copied()
                .ok_or_else(|| Error::failed(format!("the repartition topic `{}` was not set up", f.topic)))?;
            let mut h = OwnedHeaders::new_with_capacity(4);
            for (k, v) in super::records::source_headers(msg) {
                h = h.insert(Header { key: k, value: Some(v.as_str()) });
            }
            let payload = msg.payload().map(<[u8]>::to_vec);
            self.batch.produced(Output::Repartition, Some(key.as_bytes()), payload.as_deref());
            self.outbox.push(Out {
                to: Output::Repartition,
                at: Some((f.topic.clone(), partition_of(key, n), msg.timestamp().to_millis())),
                key: Some(key.clone().into_bytes()),
                payload,
                headers: Some(h),
            });
        }
        Ok(())
    }

    /// The markers a transaction ends with, produced in it (after everything it forwarded):
    /// the watermark of every forwarding source partition in `advanced`, to every partition of
    /// each repartition topic it forwards to.
    pub(super) fn produce_markers(&mut self, advanced: &[(String, i32)]) -> Result<()> {
        let n = self.write_markers(advanced)?;
        for _ in 0..n {
            self.batch.produced(Output::Repartition, None, None);
        }
        Ok(())
    }

    /// Produces the markers of the forwarding source partitions `parts` (see
    /// [`Worker::produce_markers`]); how many.
    pub(super) fn write_markers(&self, parts: &[(String, i32)]) -> Result<usize> {
        let mut written = 0;
        for (t, p) in parts {
            let Some(&(count, _)) = self.repartition.sources.get(t) else { continue };
            let Some(part) = self.parts.get(t).and_then(|m| m.get(p)) else { continue };
            let idle = self.repartition.activity(t, *p).is_some_and(|a| a.idle);
            let marker = Marker { from: *p, partitions: count, watermark: part.watermark(), idle };
            for f in part.plan.forwards() {
                let n = self.repartition.partitions.get(&f.topic).copied().unwrap_or(0);
                for q in 0..n {
                    let mut h = OwnedHeaders::new_with_capacity(6);
                    for (k, v) in marker.headers(t) {
                        h = h.insert(Header { key: k, value: Some(v.as_str()) });
                    }
                    produce(&self.producer, &f.topic, Some(q), None, None, Some(h))?;
                    written += 1;
                }
            }
        }
        Ok(written)
    }

    /// Opens a transaction for the idle markers of forwarding source partitions that read no
    /// record for their stream's `idle_timeout` and have nothing left to read (their markers go
    /// out when it commits, see [`Worker::produce_markers`]). A partition whose end is not
    /// known yet (the client's statistics come every second), or that has records left to
    /// read, is not idle: marking it would make its records late in the repartition topic.
    pub(super) fn mark_idle(&mut self, consumer: &BaseConsumer<GroupContext>) {
        if self.repartition.sources.is_empty() || self.repartition.held {
            return;
        }
        let mut quiet: Vec<(String, i32)> = Vec::new();
        for (t, parts) in &self.repartition.activity {
            let Some(&(_, timeout)) = self.repartition.sources.get(t) else { continue };
            quiet.extend(
                parts.iter().filter(|(_, a)| !a.idle && a.last.elapsed() >= timeout).map(|(p, _)| (t.clone(), *p)),
            );
        }
        if quiet.is_empty() {
            return;
        }
        let due = at_end(self, consumer, quiet);
        for (t, p) in &due {
            if let Some(a) = self.repartition.activity.get_mut(t).and_then(|m| m.get_mut(p)) {
                a.idle = true;
            }
        }
        for (t, p) in due {
            if let Some(part) = self.parts.get_mut(&t).and_then(|m| m.get_mut(&p)) {
                tracing::debug!(topic = %t, partition = p, "idle: no longer holds back the repartition topics' watermark");
                // In the open transaction: its offset and meta record are written again,
                // unchanged, and its marker goes out.
                part.advanced = true;
                self.begin();
            }
        }
    }
}

/// Those of the partitions `quiet` that have nothing left to read: their position (past
/// transaction markers), or where their next record is when the consumer has none (a partition
/// it never read a record of), is at the end the client's statistics last gave (every second;
/// a partition whose end is not known yet is not at its end).
pub(super) fn at_end(
    w: &Worker,
    consumer: &BaseConsumer<GroupContext>,
    quiet: Vec<(String, i32)>,
) -> Vec<(String, i32)> {
    let ends = consumer.context().ends.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Ok(positions) = consumer.position() else { return Vec::new() };
    quiet
        .into_iter()
        .filter(|(t, p)| {
            let next = w.parts.get(t).and_then(|m| m.get(p)).map_or(0, |part| part.next_offset);
            let position = positions.find_partition(t, *p).and_then(|e| e.offset().to_raw()).unwrap_or(next).max(next);
            ends.get(&(t.clone(), *p)).is_some_and(|&end| position >= end)
        })
        .collect()
}
