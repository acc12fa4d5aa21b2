//! One consumed record: decoded (waiting out registry outages), admitted, fed to its partition,
//! and its outputs produced in the open transaction: alerts, timeouts, the late event or the
//! dead letter, with the source's coordinates in headers.

use std::sync::atomic::Ordering;
use std::time::Instant;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::Producer;

use super::rebalance::GroupContext;
use super::Ended;
use super::Output;
use super::Worker;
use crate::core::coords::seq_of;
use crate::core::partition::Emit;
use crate::core::plan::admit;
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::avro::{DecodeError, Retried};
use crate::io::http::Health;
use crate::io::kafka::produce;

impl Worker {
    /// Opens a transaction unless one is open.
    pub(super) fn begin(&mut self) -> Result<()> {
        if !self.in_txn {
            self.producer.begin_transaction().or_fail(Kind::Failed, "cannot begin a transaction")?;
            self.in_txn = true;
            self.txn_started = Instant::now();
        }
        Ok(())
    }

    /// Processes one consumed record (a record of a partition this instance does not hold, or
    /// holds a state past, is skipped). The record's outputs are produced before its partition's
    /// position moves past it; an error leaves the transaction for the caller to abort.
    pub(super) fn handle(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        msg: &BorrowedMessage<'_>,
        health: &Health,
    ) -> Result<()> {
        let (topic, p, off) = (msg.topic(), msg.partition(), msg.offset());
        let Some(plan) = self.plans.get(topic).cloned() else { return Ok(()) };
        match self.parts.get(topic).and_then(|m| m.get(&p)) {
            // Not (or no longer) ours, or already in the restored state.
            None => return Ok(()),
            Some(part) if off < part.next_offset => return Ok(()),
            Some(_) => {}
        }
        let seq = seq_of(p, off);
        let decoded = match self.avro.decode(&plan, msg.payload(), seq) {
            Ok(event) => Ok(event),
            Err(DecodeError::Reject(r)) => Err(r),
            Err(DecodeError::Unavailable(why)) => {
                // Never wait with a transaction open: it would keep read_committed readers of
                // every output partition it wrote waiting as long as the registry is away.
                if self.in_txn {
                    tracing::warn!("{why}: committing what is done before waiting for the schema registry");
                    if self.commit_or_rewind(consumer)? == Ended::Aborted {
                        // Rewound: the consumer reads this record again.
                        return Ok(());
                    }
                }
                let stop = || health.shutdown.load(Ordering::Relaxed);
                match self.avro.decode_retrying(&plan, msg.payload(), seq, None, &stop)? {
                    Retried::Decoded(event) => Ok(event),
                    Retried::Rejected(r) => Err(r),
                    // Not consumed: the next owner reads it again.
                    Retried::Cancelled => return Ok(()),
                }
            }
        };
        self.begin()?;
        let mut emit = std::mem::take(&mut self.emit);
        let part = self
            .parts
            .get_mut(topic)
            .and_then(|m| m.get_mut(&p))
            .ok_or_else(|| Error::failed(format!("no state for {topic}/{p}")))?;
        part.counts.consumed += 1;
        self.totals.consumed += 1;
        let decode_failed = decoded.is_err();
        part.reads.consumed += 1;
        part.reads.bytes += msg.payload_len() as u64;
        part.reads.decoded += u64::from(!decode_failed);
        let outcome = match decoded.and_then(|ev| admit(&plan, &ev, self.min_ts, self.max_ts).map(|()| ev)) {
            Ok(ev) => {
                let ts = ev.ts;
                if part.process(ev, &mut emit) {
                    Ok(None)
                } else {
                    Ok(Some((ts, part.watermark())))
                }
            }
            Err(r) => Err(r),
        };
        match &outcome {
            Ok(None) => {
                self.totals.processed += 1;
                part.reads.processed += 1;
            }
            Ok(Some(_)) => {
                self.totals.late += 1;
                part.reads.late += 1;
            }
            Err(_) => {
                part.counts.dead_lettered += 1;
                self.totals.dead_lettered += 1;
            }
        }
        match outcome {
            Ok(None) => {}
            Ok(Some((ts, wm))) => {
                let (ts, wm) = (ts.to_string(), wm.to_string());
                let extra = [("tripline.reason", "late"), ("tripline.event_time", &ts), ("tripline.watermark", &wm)];
                self.copy_out(Output::Late, msg, &extra)?;
            }
            Err(r) => {
                *self.batch.rejects.entry((plan.name.clone(), r.code, decode_failed)).or_default() += 1;
                tracing::debug!(topic, partition = p, offset = off, reason = r.code, "dead letter: {}", r.message);
                let extra = [("tripline.reason", r.code), ("tripline.error", r.message.as_str())];
                self.copy_out(Output::DeadLetter, msg, &extra)?;
            }
        }
        let ingest = msg.timestamp().to_millis();
        for e in emit.drain(..) {
            let (key, json, out) = match &e {
                Emit::Alert { key, json, shadow: true, .. } => (key, json, Output::ShadowAlerts),
                Emit::Alert { key, json, .. } => (key, json, Output::Alerts),
                Emit::Timeout { key, json } => (key, json, Output::Timeouts),
            };
            let to = match out {
                Output::ShadowAlerts => &self.shadow_alerts_topic,
                Output::Alerts => &self.alerts_topic,
                _ => match &self.timeouts_topic {
                    Some(t) => t,
                    None => continue,
                },
            };
            let (k, v) = (Some(key.as_bytes()), Some(json.as_bytes()));
            let size = key.len() + json.len() + RECORD_OVERHEAD;
            if size > self.max_record {
                return Err(Error::failed(format!(
                    "the {} record of {topic}/{p} at offset {off} is {size} bytes, more than a record may be (message.max.bytes = \
                     {}): raise message.max.bytes (kafka.properties) and the topic's max.message.bytes, or bound the \
                     match with a window or engine.max_partial_matches_per_key",
                    out.label(),
                    self.max_record
                )));
            }
            produce(&self.producer, to, None, k, v, None)?;
            self.batch.produced(out, k, v);
            if let Emit::Alert { ts, .. } = e {
                self.totals.alerts += 1;
                self.batch.latencies.push((ts, ingest));
            }
        }
        self.emit = emit;
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
        let topic = if out == Output::Late { &self.late_topic } else { &self.dead_letter_topic };
        produce(&self.producer, topic, None, key, payload, Some(h))?;
        self.batch.produced(out, key, payload);
        Ok(())
    }
}

/// What a record costs beyond its key, value and headers, at most (Kafka's record format v2:
/// lengths, attributes, deltas as varints), with a margin for the batch framing.
const RECORD_OVERHEAD: usize = 512;
/// What one header costs beyond its key and value (two varint lengths).
const HEADER_OVERHEAD: usize = 10;
/// Room for the `tripline.truncated` header of a cut record.
const TRUNCATED_HEADER: usize = 64;

/// Headers naming a record's source: topic, partition, offset and record timestamp.
fn source_headers(msg: &BorrowedMessage<'_>) -> Vec<(&'static str, String)> {
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
