//! Consumed records, a batch at a time: decoded in order (waiting out registry outages, with
//! nothing left open meanwhile), admitted and fed to their partitions (partitions side by side on
//! several threads, each partition's records in order), and their outputs produced in the open
//! transaction: alerts, timeouts, the late event or the dead letter, with the source's
//! coordinates in headers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use engine::Event;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};

use super::rebalance::GroupContext;
use super::Ended;
use super::{Out, Output, Worker};
use crate::core::coords::seq_of;
use crate::core::partition::{Emit, Partition, Sought};
use crate::core::plan::{admit, Reject};
use crate::core::repartition::{self, Marker};
use crate::error::{Error, Result};
use crate::io::avro::{DecodeError, Retried};
use crate::io::http::Health;
use crate::io::kafka::header;

impl Worker {
    /// Opens a transaction unless one is open (the producer's begins with its first output,
    /// see [`Worker::flush_outbox`]).
    pub(super) fn begin(&mut self) {
        if !self.in_txn {
            self.in_txn = true;
            self.txn_started = Instant::now();
        }
    }

    /// Processes a batch of polled records, each tagged with the [epoch](Worker::epoch) it was
    /// polled in: a record of an older epoch is dropped (a rewind or a rebalance came between;
    /// the consumer reads it again from the new position). The records are decoded in order,
    /// then each partition's records are fed to its state, partitions side by side on up to
    /// `threads` threads, then every record's outputs are produced in order, each before its
    /// partition's position moves past it. An error leaves the transaction for the caller to
    /// abort.
    pub(super) fn handle_batch(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        msgs: &[(u64, BorrowedMessage<'_>)],
        health: &Health,
    ) -> Result<()> {
        let mut ready: Vec<Ready<'_, '_>> = Vec::with_capacity(msgs.len());
        let mut resought: Vec<(&str, i32)> = Vec::new();
        for (epoch, msg) in msgs {
            if *epoch != self.epoch.load(Ordering::Relaxed) {
                continue;
            }
            let (topic, p, off) = (msg.topic(), msg.partition(), msg.offset());
            if !self.plans.contains_key(topic) {
                continue;
            }
            match self.parts.get_mut(topic).and_then(|m| m.get_mut(&p)) {
                // Not (or no longer) ours, or already in the restored state.
                None => continue,
                Some(part) if off < part.next_offset => continue,
                Some(part) => {
                    if !resought.is_empty() && resought.contains(&(topic, p)) {
                        continue;
                    }
                    if part.sought.is_some() && !check_sought(consumer, part, topic, p, off)? {
                        resought.push((topic, p));
                        continue;
                    }
                }
            }
            let Some(plan) = self.plans.get(topic) else { continue };
            let mut seq = seq_of(p, off);
            // A repartition topic's record: a marker, or a forwarded record (its event has the
            // coordinates of the record it was forwarded from).
            let mut marker = None;
            if plan.is_repartitioned() {
                match repartition::read(&|name| header(msg, name)) {
                    Ok(repartition::Record::Marker(m)) => marker = Some(m),
                    Ok(repartition::Record::Data(src)) => seq = seq_of(src.partition, src.offset),
                    Err(e) => {
                        let r = Reject::new(repartition::NotRepartitioned::CODE, e.to_string());
                        ready.push(Ready::new(msg, Err(r), None));
                        continue;
                    }
                }
            }
            if marker.is_some() {
                ready.push(Ready::new(msg, Err(Reject::new("no-value", "a marker")), marker));
                continue;
            }
            let decoded = match self.avro.decode(plan, msg.payload(), seq) {
                Ok(event) => Ok(event),
                Err(DecodeError::Reject(r)) => Err(r),
                Err(DecodeError::Unavailable(why)) => {
                    let plan = plan.clone();
                    // Never wait with a transaction open: it would keep read_committed readers
                    // of every output partition it wrote waiting as long as the registry is away.
                    if self.in_txn || self.pending.is_some() || !ready.is_empty() {
                        tracing::warn!("{why}: committing what is done before waiting for the schema registry");
                        self.step_and_publish(&mut ready)?;
                        if self.commit_or_rewind(consumer)? == Ended::Aborted {
                            // Rewound: the consumer reads this record and the rest again.
                            return Ok(());
                        }
                    }
                    let stop = || health.shutdown.load(Ordering::Relaxed);
                    match self.avro.decode_retrying(&plan, msg.payload(), seq, None, &stop)? {
                        Retried::Decoded(event) => Ok(event),
                        Retried::Rejected(r) => Err(r),
                        // Not consumed, nor is anything after it: the next owner reads them.
                        Retried::Cancelled => return Ok(()),
                    }
                }
            };
            ready.push(Ready::new(msg, decoded, None));
        }
        self.step_and_publish(&mut ready)
    }

    /// Feeds `ready` to their partitions and produces their outputs, unless a staged
    /// transaction is still committing: then they wait in the outbox (then `ready` is empty).
    fn step_and_publish(&mut self, ready: &mut Vec<Ready<'_, '_>>) -> Result<()> {
        if ready.is_empty() {
            return Ok(());
        }
        self.begin();
        self.step(ready);
        // A key state the store could not give makes what followed it wrong: nothing of this
        // transaction may commit.
        for part in self.parts.values().flat_map(|m| m.values()) {
            if let Some(e) = part.take_store_error() {
                return Err(Error::failed(format!(
                    "the state of {}/{}: {e}; stopping (a restart restores from the changelog if the store is damaged)",
                    part.plan.topic, part.partition
                )));
            }
        }
        for r in ready.iter_mut() {
            self.publish(r)?;
        }
        ready.clear();
        self.flush_outbox()
    }

    /// Feeds each record to its partition's state, partitions side by side.
    fn step(&mut self, ready: &mut [Ready<'_, '_>]) {
        // Per partition, the indices of its records (in offset order).
        let mut by_part: HashMap<(&str, i32), Vec<usize>> = HashMap::new();
        for (i, r) in ready.iter().enumerate() {
            by_part.entry((r.msg.topic(), r.msg.partition())).or_default().push(i);
        }
        let mut work: Vec<Work<'_>> = Vec::with_capacity(by_part.len());
        for (t, m) in &mut self.parts {
            for (p, part) in m.iter_mut() {
                if let Some(idx) = by_part.remove(&(t.as_str(), *p)) {
                    let items = idx
                        .into_iter()
                        .filter_map(|i| {
                            let r = &mut ready[i];
                            let decoded = r.decoded.take()?;
                            Some((i, Input { decoded, marker: r.marker, bytes: r.msg.payload_len() as u64 }))
                        })
                        .collect();
                    work.push((part, items));
                }
            }
        }
        let (min_ts, max_ts) = (self.min_ts, self.max_ts);
        let records: usize = work.iter().map(|(_, w)| w.len()).sum();
        let threads = self.threads.min(work.len());
        let mut results: Vec<Vec<(usize, Stepped)>> = Vec::new();
        if threads <= 1 || records < PARALLEL_MIN_RECORDS {
            results.extend(work.into_iter().map(|(part, items)| step_partition(part, items, min_ts, max_ts)));
        } else {
            // Partitions dealt to threads, biggest first, each to the least loaded.
            work.sort_by_key(|(_, w)| std::cmp::Reverse(w.len()));
            let mut shares: Vec<(usize, Vec<Work<'_>>)> = (0..threads).map(|_| (0, Vec::new())).collect();
            for w in work {
                let least = (0..shares.len()).min_by_key(|&i| shares[i].0).unwrap_or(0);
                shares[least].0 += w.1.len();
                shares[least].1.push(w);
            }
            std::thread::scope(|scope| {
                let handles: Vec<_> = shares
                    .into_iter()
                    .map(|(_, share)| {
                        scope.spawn(move || {
                            share
                                .into_iter()
                                .map(|(part, items)| step_partition(part, items, min_ts, max_ts))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for h in handles {
                    match h.join() {
                        Ok(r) => results.extend(r),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
            });
        }
        for (i, s) in results.into_iter().flatten() {
            let r = &mut ready[i];
            r.decode_failed = s.decode_failed;
            r.outcome = Some(s.outcome);
            r.emit = s.emit;
            r.forward = s.forward;
        }
    }

    /// Puts one stepped record's outputs in the outbox and moves its partition's position past
    /// it (the offset is committed only with a transaction that produced the outbox).
    fn publish(&mut self, r: &mut Ready<'_, '_>) -> Result<()> {
        let msg = r.msg;
        let (topic, p, off) = (msg.topic(), msg.partition(), msg.offset());
        let Some(outcome) = r.outcome.take() else { return Ok(()) };
        let Some(plan) = self.plans.get(topic).cloned() else { return Ok(()) };
        // Partitions whose quiet time is watched: those that forward, or advance when idle.
        if !self.repartition.activity.is_empty() {
            self.repartition.read(topic, p);
        }
        if r.marker.is_none() {
            self.totals.consumed += 1;
        }
        if outcome.is_ok() && !r.forward.is_empty() {
            self.forward(&plan, msg, &r.forward)?;
        }
        match outcome {
            Ok(None) if r.marker.is_some() => {}
            Ok(None) => self.totals.processed += 1,
            Ok(Some((ts, wm))) => {
                self.totals.late += 1;
                let (ts, wm) = (ts.to_string(), wm.to_string());
                let extra = [("tripline.reason", "late"), ("tripline.event_time", &ts), ("tripline.watermark", &wm)];
                self.copy_out(Output::Late, msg, &extra)?;
            }
            Err(rej) => {
                self.totals.dead_lettered += 1;
                *self
                    .batch
                    .rejects
                    .entry((plan.metric_label().into_owned(), rej.code, r.decode_failed))
                    .or_default() += 1;
                tracing::debug!(topic, partition = p, offset = off, reason = rej.code, "dead letter: {}", rej.message);
                let extra = [("tripline.reason", rej.code), ("tripline.error", rej.message.as_str())];
                self.copy_out(Output::DeadLetter, msg, &extra)?;
            }
        }
        let emit = std::mem::take(&mut r.emit);
        self.publish_emits(topic, p, off, emit, msg.timestamp().to_millis())?;
        // Its outputs are in the transaction: the record is done.
        let part = self
            .parts
            .get_mut(topic)
            .and_then(|m| m.get_mut(&p))
            .ok_or_else(|| Error::failed(format!("no state for {topic}/{p}")))?;
        part.next_offset = off + 1;
        part.advanced = true;
        Ok(())
    }

    /// Puts the alerts and timeouts `emit` raised at `topic`/`p` (by its record at `off`, or by
    /// a clock advance before it) in the outbox; `ingest`: the record's timestamp, for the
    /// latency metric.
    pub(super) fn publish_emits(
        &mut self,
        topic: &str,
        p: i32,
        off: i64,
        emit: Vec<Emit>,
        ingest: Option<i64>,
    ) -> Result<()> {
        for e in emit {
            let (key, json, to, ts) = match e {
                Emit::Alert { key, json, shadow: true, ts } => (key, json, Output::ShadowAlerts, Some(ts)),
                Emit::Alert { key, json, ts, .. } => (key, json, Output::Alerts, Some(ts)),
                Emit::Timeout { key, json } => (key, json, Output::Timeouts, None),
            };
            if self.topic_of(to).is_none() {
                continue;
            }
            let size = key.len() + json.len() + RECORD_OVERHEAD;
            if size > self.max_record {
                return Err(Error::failed(format!(
                    "the {} record of {topic}/{p} at offset {off} is {size} bytes, more than a record may be \
                     (message.max.bytes = {}): raise message.max.bytes (kafka.properties) and the topic's \
                     max.message.bytes, or bound the match with a window or engine.max_partial_matches_per_key",
                    to.label(),
                    self.max_record
                )));
            }
            let payload = match (self.alert_schemas, to) {
                (Some((live, _)), Output::Alerts) => avro_alert(live, &json)?,
                (Some((_, shadow)), Output::ShadowAlerts) => avro_alert(shadow, &json)?,
                _ => json.into_bytes(),
            };
            self.batch.produced(to, Some(key.as_bytes()), Some(&payload));
            self.outbox.push(Out { to, at: None, key: Some(key.into_bytes()), payload: Some(payload), headers: None });
            if let Some(ts) = ts {
                self.totals.alerts += 1;
                self.batch.latencies.push((ts, ingest));
            }
        }
        Ok(())
    }

    /// Copies the consumed record to the late or dead-letter topic with its source's coordinates
    /// and `extra` headers. A copy over the largest record size is cut so that it can always be
    /// written: the body is shortened and `tripline.truncated` says its original length.
    fn copy_out(&mut self, out: Output, msg: &BorrowedMessage<'_>, extra: &[(&str, &str)]) -> Result<()> {
        let mut headers = source_headers(msg);
        headers.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let payload = msg.payload();
        let key = msg.key();
        let fixed = key.map_or(0, <[u8]>::len)
            + headers.iter().map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD).sum::<usize>()
            + RECORD_OVERHEAD;
        let body = payload.map_or(0, <[u8]>::len);
        let payload = if fixed + body > self.max_record {
            let keep = self.max_record.saturating_sub(fixed + TRUNCATED_HEADER);
            headers.push(("tripline.truncated", body.to_string()));
            tracing::warn!(
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                bytes = body,
                kept = keep,
                "{} record cut to fit message.max.bytes",
                out.label()
            );
            payload.map(|b| &b[..keep.min(b.len())])
        } else {
            payload
        };
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in &headers {
            h = h.insert(Header { key: k, value: Some(v.as_str()) });
        }
        self.batch.produced(out, key, payload);
        self.outbox.push(Out {
            to: out,
            at: None,
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
            headers: Some(h),
        });
        Ok(())
    }
}

/// A polled record on its way: decoded, then stepped (fed to its partition), then published.
pub(super) struct Ready<'a, 'm> {
    msg: &'a BorrowedMessage<'m>,
    /// Taken by the step.
    decoded: Option<std::result::Result<Event, Reject>>,
    /// A repartition topic's watermark marker (then `decoded` is not used).
    marker: Option<Marker>,
    decode_failed: bool,
    /// Set by the step: processed (None), late (event time, watermark), or rejected.
    outcome: Option<Outcome>,
    emit: Vec<Emit>,
    /// Set by the step: the record's keys in the repartition topics it goes to.
    forward: Vec<String>,
}

impl<'a, 'm> Ready<'a, 'm> {
    fn new(msg: &'a BorrowedMessage<'m>, decoded: std::result::Result<Event, Reject>, marker: Option<Marker>) -> Self {
        Ready {
            msg,
            decoded: Some(decoded),
            marker,
            decode_failed: false,
            outcome: None,
            emit: Vec::new(),
            forward: Vec::new(),
        }
    }
}

/// What became of a record: processed (`Ok(None)`), late (`Ok(Some((event time, watermark)))`)
/// or rejected.
type Outcome = std::result::Result<Option<(i64, i64)>, Reject>;

/// A partition and its records of a batch, for one step.
type Work<'p> = (&'p mut Partition, Vec<(usize, Input)>);

/// A record as its partition's step takes it.
struct Input {
    decoded: std::result::Result<Event, Reject>,
    marker: Option<Marker>,
    /// Payload bytes, for the metrics.
    bytes: u64,
}

/// What a partition's step made of a record.
struct Stepped {
    decode_failed: bool,
    outcome: Outcome,
    emit: Vec<Emit>,
    forward: Vec<String>,
}

/// Below this many records in a batch, partitions are stepped on the loop's thread (a thread's
/// start costs more than they take).
const PARALLEL_MIN_RECORDS: usize = 64;

/// Feeds one partition's records to its state, in order (runs on any thread: it touches this
/// partition only).
fn step_partition(part: &mut Partition, items: Vec<(usize, Input)>, min_ts: i64, max_ts: i64) -> Vec<(usize, Stepped)> {
    let plan = part.plan.clone();
    let mut out = Vec::with_capacity(items.len());
    for (i, input) in items {
        let mut emit = Vec::new();
        if let Some(m) = input.marker {
            part.mark(m, &mut emit);
            out.push((i, Stepped { decode_failed: false, outcome: Ok(None), emit, forward: Vec::new() }));
            continue;
        }
        part.counts.consumed += 1;
        let decode_failed = input.decoded.is_err();
        part.reads.consumed += 1;
        part.reads.bytes += input.bytes;
        part.reads.decoded += u64::from(!decode_failed);
        let mut forward = Vec::new();
        let outcome = match input.decoded.and_then(|ev| admit(&plan, &ev, min_ts, max_ts).map(|()| ev)) {
            Ok(ev) => {
                let ts = ev.ts;
                forward.extend(plan.forwards().iter().map(|f| engine::runtime::Key::of(ev.field(f.field)).to_string()));
                if part.process(ev, &mut emit) {
                    part.reads.processed += 1;
                    Ok(None)
                } else {
                    part.reads.late += 1;
                    Ok(Some((ts, part.watermark())))
                }
            }
            Err(r) => {
                part.counts.dead_lettered += 1;
                Err(r)
            }
        };
        out.push((i, Stepped { decode_failed, outcome, emit, forward }));
    }
    out
}

/// What a record costs beyond its key, value and headers, at most (Kafka's record format v2:
/// lengths, attributes, deltas as varints), with a margin for the batch framing.
const RECORD_OVERHEAD: usize = 512;
/// What one header costs beyond its key and value (two varint lengths).
const HEADER_OVERHEAD: usize = 10;
/// Room for the `tripline.truncated` header of a cut record.
const TRUNCATED_HEADER: usize = 64;

/// Headers naming a record's source: topic, partition, offset and record timestamp. A record of
/// a repartition topic names the record it was forwarded from.
pub(super) fn source_headers(msg: &BorrowedMessage<'_>) -> Vec<(&'static str, String)> {
    use crate::core::repartition::headers as h;
    if let (Some(topic), Some(p), Some(o)) =
        (header(msg, h::SOURCE_TOPIC), header(msg, h::SOURCE_PARTITION), header(msg, h::SOURCE_OFFSET))
    {
        let mut out = vec![(h::SOURCE_TOPIC, topic), (h::SOURCE_PARTITION, p), (h::SOURCE_OFFSET, o)];
        if let Some(ts) = header(msg, h::SOURCE_TIMESTAMP) {
            out.push((h::SOURCE_TIMESTAMP, ts));
        }
        return out;
    }
    let mut h = vec![
        ("tripline.source.topic", msg.topic().to_owned()),
        ("tripline.source.partition", msg.partition().to_string()),
        ("tripline.source.offset", msg.offset().to_string()),
    ];
    if let Some(ts) = msg.timestamp().to_millis() {
        h.push(("tripline.source.timestamp", ts.to_string()));
    }
    h
}

/// Whether the first record of a partition the consumer was sought on comes from where it was
/// sought. A seek can lose a race with the consumer's own start of a partition just assigned
/// (from the group's offset), and records polled before a seek on assignment are past it; then
/// the record is past the offset sought, and the seek is done again (`false`: this batch's
/// records of the partition are dropped). A record past the offset can also be legitimate (the
/// offset held a transaction marker, or a record compacted away): the same record coming first
/// again after the new seek, or a third miss, is taken as it is.
fn check_sought(
    consumer: &BaseConsumer<GroupContext>,
    part: &mut Partition,
    topic: &str,
    p: i32,
    off: i64,
) -> Result<bool> {
    let Some(sought) = part.sought else { return Ok(true) };
    if off <= sought.offset || sought.first == Some(off) || sought.again >= 3 {
        part.sought = None;
        return Ok(true);
    }
    tracing::warn!(
        topic,
        partition = p,
        sought = sought.offset,
        got = off,
        "the consumer did not start where it was sought: seeking again"
    );
    consumer
        .seek(topic, p, rdkafka::Offset::Offset(sought.offset), crate::io::kafka::REQUEST_TIMEOUT)
        .map_err(|e| Error::failed(format!("cannot seek {topic}/{p} to offset {} again: {e}", sought.offset)))?;
    part.sought = Some(Sought { again: sought.again + 1, first: Some(off), ..sought });
    Ok(false)
}

/// An alert's JSON line as a Confluent-framed Avro record of schema `id`.
fn avro_alert(id: u32, json: &str) -> Result<Vec<u8>> {
    let datum = crate::io::alert_avro::encode(json)
        .map_err(|e| Error::failed(format!("an alert does not fit the alert schema ({e}): {json}")))?;
    Ok(crate::io::avro::frame(id, &datum))
}
