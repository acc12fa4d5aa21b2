//! Partitions coming and going: on assignment each partition's state is restored (from the
//! local store when it is current, else from the changelog) and the running pattern set's
//! activation on it is recorded; before a revocation the open transaction commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::Ended;
use super::Output;
use super::{Shared, Worker};
use crate::core::changelog::{meta_key, meta_position, state_prefix, StateRecords};
use crate::core::partition::{Partition, Sought};
use crate::core::pattern_sets::{Activation, PatternSet, Position};
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::kafka::{log_rdkafka, produce, REQUEST_TIMEOUT};
use crate::obs::now_ms;
use crate::obs::progress::Progress;

/// How an assignment's restore ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Restored {
    /// Every assigned partition's state is in memory.
    Done,
    /// A shutdown request cut the restore short: nothing was processed for these partitions.
    Interrupted,
    /// The partitions were revoked while they were restored.
    Revoked,
}

/// How often a restore polls the group consumer, so that a long restore does not exceed
/// `max.poll.interval.ms` (and the group does not move the partitions away for that).
const KEEP_ALIVE: Duration = Duration::from_millis(500);

impl Worker {
    /// A partition's engine state from the local store (which holds the last commit): its meta
    /// record only; keys are read when needed.
    pub(super) fn load(&self, topic: &str, p: i32) -> Result<Partition> {
        let plan =
            self.plans.get(topic).ok_or_else(|| Error::failed(format!("no stream reads topic `{topic}`")))?.clone();
        let mut part = Partition::new(plan, p, self.op_config);
        part.set = self.set.hash();
        // Timer records are read by range: every queued write must be in.
        self.store.sync()?;
        let library = &self.library;
        let summary = part
            .open(self.store.clone(), &|h| library.get(h))
            .or_fail_with(Kind::Failed, || format!("the state of {topic}/{p} cannot be restored"))?;
        if summary.stale > 0 {
            tracing::warn!(
                topic,
                partition = p,
                stale = summary.stale,
                "the stored state of pattern versions this instance does not know (not in the pattern sets topic) is not read"
            );
        }
        if let Some(t) = &self.tables {
            part.set_reference(t.current());
        }
        let draining: Vec<String> =
            part.draining().map(|o| format!("{}@{}", o.nfa().meta.name, o.nfa().meta.version)).collect();
        if !draining.is_empty() {
            tracing::info!(topic, partition = p, draining = %draining.join(" "), "replaced pattern versions finish their partial matches");
        }
        Ok(part)
    }

    /// Takes over newly assigned partitions: their state from the store when it is current,
    /// else from the changelog. `lost`: the broker lost committed transactions (see
    /// [`Worker::rewind`]): every partition comes from the changelog and resumes where its
    /// surviving state ends, whatever the group's offsets say.
    pub(super) fn assign(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        list: &[(String, i32)],
        lost: bool,
    ) -> Result<Restored> {
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in list {
            tpl.add_partition(t, *p);
        }
        let committed = consumer
            .committed_offsets(tpl.clone(), REQUEST_TIMEOUT)
            .or_fail(Kind::Failed, "cannot read the group's committed offsets")?;
        // The restore polls the consumer to stay in the group: no record of these partitions
        // may come back meanwhile.
        consumer.pause(&tpl).or_fail(Kind::Failed, "cannot pause the assigned partitions for their restore")?;
        let mut dropped = Vec::new();
        let restored = self.restore_all(consumer, list, &committed, &mut dropped, started, lost);
        // Records polled meanwhile (of partitions this instance already held) are read again.
        let revoked = matches!(restored, Ok(Restored::Revoked));
        // The consumer starts a new partition at the group's committed offset: one whose state
        // resumes elsewhere (the broker lost transactions whose offsets it kept) is sought there.
        if matches!(restored, Ok(Restored::Done)) {
            for (t, p) in list {
                let Some(at) = self.parts.get(t).and_then(|m| m.get(p)).map(|part| part.next_offset) else { continue };
                let group = committed_offset(&committed, t, *p);
                if group != Some(at) && (at > 0 || group.is_some()) {
                    dropped.push((t.clone(), *p, at));
                }
            }
        }
        for (t, p, off) in dropped.into_iter().filter(|_| !revoked) {
            // A partition just assigned can be sought once its fetcher has started (after the
            // client has read the group's offset): until then the seek fails, and is retried.
            let started = Instant::now();
            while let Err(e) = consumer.seek(&t, p, Offset::Offset(off), REQUEST_TIMEOUT) {
                if started.elapsed() >= REQUEST_TIMEOUT {
                    return Err(Error::failed(format!("cannot seek {t}/{p} to offset {off} after a restore: {e}")));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(part) = self.parts.get_mut(&t).and_then(|m| m.get_mut(&p)) {
                part.sought = Some(Sought::at(off));
            }
        }
        // Revoked: the next assignment is not paused.
        if !revoked {
            consumer.resume(&tpl).or_fail(Kind::Failed, "cannot resume the restored partitions")?;
        }
        restored
    }

    /// Whether the local store holds the state at the group's committed offset of `t`/`p` (then
    /// it is the last commit; otherwise the changelog is), and the store's position.
    pub(super) fn store_is_current(&self, t: &str, p: i32, committed: Option<i64>) -> Result<(bool, Option<i64>)> {
        let local = self.store.get(&meta_key(t, p))?.as_deref().and_then(meta_position);
        let current = match local {
            Some((at, current)) => current && Some(at) == committed,
            // A new partition: nothing stored, nothing committed.
            None => committed.is_none(),
        };
        Ok((current, local.map(|(at, _)| at)))
    }

    /// Restores each of `list` in turn (see [`Worker::assign`]).
    fn restore_all(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        list: &[(String, i32)],
        committed: &TopicPartitionList,
        dropped: &mut Vec<(String, i32, i64)>,
        started: Instant,
        lost: bool,
    ) -> Result<Restored> {
        let mut from_changelog = 0;
        for (t, p) in list {
            let committed_at = committed_offset(committed, t, *p);
            let prefix = state_prefix(t, *p);
            let (current, _) = self.store_is_current(t, *p, committed_at)?;
            let mut part = if current && !lost {
                self.metrics.restored_partitions.with_label_values(&["store"]).inc();
                self.load(t, *p)?
            } else {
                from_changelog += 1;
                self.metrics.restored_partitions.with_label_values(&["changelog"]).inc();
                let records = match self.read_changelog(consumer, t, *p, dropped)? {
                    Ok(records) => records,
                    Err(cut) => return Ok(cut),
                };
                let plan = self.plans.get(t).ok_or_else(|| Error::failed(format!("no stream reads topic `{t}`")))?;
                let mut part = Partition::new(plan.clone(), *p, self.op_config);
                let library = &self.library;
                let (records, _) = part.index(&records, &|h| library.get(h)).or_fail_with(Kind::Failed, || {
                    format!("the state of {t}/{p} in the changelog cannot be restored")
                })?;
                self.store.replace(&prefix, &records)?;
                self.load(t, *p)?
            };
            self.metrics.restore_remaining.with_label_values(&[t.as_str(), &p.to_string()]).set(0);
            // A partition with no state at all starts at the group's offset (offsets set by hand
            // for a fresh start), unless the broker lost transactions of it; one with state goes
            // on from where its state is (the consumer is sought there, see `assign`).
            let trusted = !lost && !self.distrusted.contains(&(t.clone(), *p));
            if let Some(c) = committed_at.filter(|&c| c != part.next_offset) {
                if part.next_offset == 0 && trusted {
                    tracing::warn!(
                        topic = %t, partition = p, committed = c,
                        "no state, and a committed offset (set by hand?): starting at the committed offset"
                    );
                    part.next_offset = c;
                } else {
                    tracing::warn!(
                        topic = %t, partition = p, state_at = part.next_offset, committed = c,
                        "the state and the group's committed offset disagree: going on from the state"
                    );
                }
            }
            self.parts.entry(t.clone()).or_default().insert(*p, part);
        }
        tracing::info!(
            partitions = list.len(),
            from_changelog,
            ms = started.elapsed().as_millis() as u64,
            "partitions assigned and restored"
        );
        Ok(Restored::Done)
    }

    /// The committed changelog records of one input partition (latest per key), or why the
    /// reading was cut short (a shutdown request, a revocation). Polls the group consumer every
    /// [`KEEP_ALIVE`]; a record it returns (of a partition not paused) goes into `dropped`, to
    /// be read again.
    fn read_changelog(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        topic: &str,
        p: i32,
        dropped: &mut Vec<(String, i32, i64)>,
    ) -> Result<std::result::Result<StateRecords, Restored>> {
        let cfg_client = self.restore_client()?;
        let cp = p % self.changelog_parts;
        let (lo, hi) =
            cfg_client.fetch_watermarks(&self.changelog, cp, REQUEST_TIMEOUT).or_fail_with(Kind::Failed, || {
                format!("cannot read the end of changelog partition {}/{cp}", self.changelog)
            })?;
        let prefix = state_prefix(topic, p);
        let mut latest: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        if hi <= lo {
            return Ok(Ok(Vec::new()));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.changelog, cp, Offset::Beginning)
            .or_fail(Kind::Failed, "changelog assignment")?;
        cfg_client.assign(&tpl).or_fail(Kind::Failed, "cannot read the changelog")?;
        let mut read = 0u64;
        let part_label = p.to_string();
        let remaining = self.metrics.restore_remaining.with_label_values(&[topic, part_label.as_str()]);
        remaining.set(hi - lo);
        let started = Instant::now();
        let mut last_progress = started;
        let mut polled = started;
        let mut progress = Progress::new("restore", "changelog records", Some((hi - lo) as u64));
        progress.set_message(format!("{topic}/{p} from {}/{cp}", self.changelog));
        loop {
            match cfg_client.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    read += 1;
                    progress.inc(1);
                    self.metrics.restore_records.inc();
                    remaining.set((hi - m.offset() - 1).max(0));
                    last_progress = Instant::now();
                    if let Some(k) = m.key().filter(|k| k.starts_with(&prefix)) {
                        match m.payload() {
                            Some(v) => {
                                latest.insert(k.to_vec(), v.to_vec());
                            }
                            None => {
                                latest.remove(k);
                            }
                        }
                    }
                    if m.offset() + 1 >= hi {
                        break;
                    }
                    if self.failpoints.slow_restore_ms.is_some_and(|ms| started.elapsed().as_millis() < u128::from(ms))
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => tracing::warn!("reading the changelog: {e}"),
                None => {}
            }
            if last_progress.elapsed() >= Duration::from_secs(120) {
                return Err(Error::failed(format!(
                    "restoring {topic}/{p} from changelog partition {}/{cp} stalled after {read} of {} records \
                     (an open transaction of a crashed instance blocks read_committed readers until that \
                     instance restarts or the transaction times out)",
                    self.changelog,
                    hi - lo
                )));
            }
            if self.health.shutdown.load(Ordering::Relaxed) {
                return Ok(Err(Restored::Interrupted));
            }
            if polled.elapsed() >= KEEP_ALIVE {
                polled = Instant::now();
                if let Some(Ok(m)) = consumer.poll(Duration::ZERO) {
                    if !dropped.iter().any(|(t, dp, _)| t == m.topic() && *dp == m.partition()) {
                        dropped.push((m.topic().to_owned(), m.partition(), m.offset()));
                    }
                }
                if consumer.context().shared.revoked_while_restoring.load(Ordering::Relaxed) {
                    return Ok(Err(Restored::Revoked));
                }
            }
        }
        progress.finish();
        Ok(Ok(latest.into_iter().collect()))
    }

    fn restore_client(&self) -> Result<BaseConsumer> {
        // The same client settings as the group consumer, but no group: it never commits.
        self.restore_config.create().or_fail(Kind::Failed, "cannot create the changelog reader")
    }
}

/// The group consumer's context: commits before partitions are revoked, and hands new
/// assignments to the loop.
pub(super) struct GroupContext {
    pub(super) shared: Arc<Shared>,
    /// Per input partition, its end (the last stable offset, as read_committed sees it) from the
    /// client's statistics, every second: the consumer lag gauges.
    pub(super) ends: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_rdkafka(level, fac, log_message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, t) in statistics.topics {
            for (p, s) in t.partitions {
                let end = if s.ls_offset >= 0 { s.ls_offset } else { s.hi_offset };
                if p >= 0 && end >= 0 {
                    ends.insert((topic.clone(), p), end);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Records polled before are not processed after (see `Shared::epoch`).
        self.shared.epoch.fetch_add(1, Ordering::Relaxed);
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = match self.shared.core.try_lock() {
                Ok(core) => core,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // The loop holds the worker while it polls from inside a restore (no transaction
                // is open then): the restore stops and its partitions are dropped.
                Err(TryLockError::WouldBlock) => {
                    self.shared.revoked_while_restoring.store(true, Ordering::Relaxed);
                    tracing::info!(partitions = tpl.count(), "partitions revoked during their restore");
                    return;
                }
            };
            core.health.ready.store(false, Ordering::Relaxed);
            // What was processed is committed before the partitions go (the generation is
            // still valid here); if that fails, the transaction is aborted and the next owner
            // reprocesses from the last commit.
            let mut aborted = false;
            if (core.in_txn || core.pending.is_some()) && core.fatal.is_none() {
                match core.commit(consumer) {
                    Ok(ended) => aborted = ended == Ended::Aborted,
                    Err(e) => core.fatal = Some(e),
                }
            }
            core.metrics.rebalances.with_label_values(&["revoke"]).inc();
            core.metrics.ready.set(0);
            for e in tpl.elements() {
                if let Some(part) = core.parts.get_mut(e.topic()).and_then(|m| m.remove(&e.partition())) {
                    let label = part.plan.metric_label();
                    let labels = [label.as_ref(), &e.partition().to_string()];
                    for g in [&core.metrics.watermark, &core.metrics.watermark_lag] {
                        let _ = g.remove_label_values(&labels);
                    }
                    let _ = core.metrics.consumer_lag.remove_label_values(&labels);
                    let _ =
                        core.metrics.restore_remaining.remove_label_values(&[e.topic(), &e.partition().to_string()]);
                }
            }
            // The partitions this instance keeps (none under the eager protocol) go back to the
            // last commit too.
            if aborted && core.fatal.is_none() {
                if let Err(e) = core.rewind(consumer) {
                    core.fatal = Some(e);
                }
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.shared.epoch.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let list = tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                *self.shared.assigned.lock().unwrap_or_else(|p| p.into_inner()) = Some(list);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }
}

impl Worker {
    /// The activation record of `set` on the assigned partitions (`only`: these of them).
    pub(super) fn activation_record(&self, set: &PatternSet, reason: &str, only: Option<&[(String, i32)]>) -> Vec<u8> {
        serde_json::to_vec(&self.activation(set, reason, only)).unwrap_or_default()
    }

    /// The activation of `set` on this instance's partitions (or those of `only`), at their
    /// current positions.
    pub(super) fn activation(&self, set: &PatternSet, reason: &str, only: Option<&[(String, i32)]>) -> Activation {
        let mut positions = Vec::new();
        for (t, parts) in &self.parts {
            for (p, part) in parts {
                if only.is_some_and(|l| !l.iter().any(|(lt, lp)| lt == t && lp == p)) {
                    continue;
                }
                let wm = part.watermark();
                positions.push(Position {
                    topic: t.clone(),
                    partition: *p,
                    offset: part.next_offset,
                    watermark: (wm != i64::MIN).then_some(wm),
                });
            }
        }
        positions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let mut a = set.activation(reason, &self.instance, now_ms(), positions);
        a.deployment = self.deployment.clone();
        a.group = self.group.clone();
        a
    }

    /// Records that the running set takes effect on newly assigned partitions (from their
    /// restored positions), in a transaction of its own, before any of their records is read.
    pub(super) fn record_assignment(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        list: &[(String, i32)],
    ) -> Result<()> {
        if list.is_empty() {
            return Ok(());
        }
        let _ = self.commit_or_rewind(consumer)?;
        let record = self.activation_record(&self.set, "assign", Some(list));
        let key = self.set.hash();
        // With it, the watermark of each source partition taken that forwards to repartition
        // topics: every repartition partition hears at once where they are (and a transaction
        // of this producer completes on each, after the one a killed predecessor left open).
        let mut markers = 0;
        self.transaction_of_its_own(|w| {
            produce(&w.producer, &w.pattern_sets_topic, Some(0), Some(key.as_bytes()), Some(&record), None)?;
            markers = w.write_markers(list)?;
            Ok(())
        })
        .map_err(|e| {
            e.context(format!("cannot record the pattern set's activation in `{}`", self.pattern_sets_topic))
        })?;
        self.metrics.records_produced.with_label_values(&[Output::PatternSets.label()]).inc();
        self.metrics.records_produced.with_label_values(&[Output::Repartition.label()]).inc_by(markers as u64);
        tracing::info!(set = %key, partitions = list.len(), topic = %self.pattern_sets_topic, "pattern set activation recorded");
        Ok(())
    }
}

/// The group's committed offset of `t`/`p` in `committed` (`None`: nothing committed).
pub(super) fn committed_offset(committed: &TopicPartitionList, t: &str, p: i32) -> Option<i64> {
    committed.find_partition(t, p).and_then(|e| match e.offset() {
        Offset::Offset(n) => Some(n),
        _ => None,
    })
}
