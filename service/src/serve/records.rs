//! One consumed record: decoded (waiting out registry outages), admitted, fed to its partition,
//! and its outputs produced in the open transaction: alerts, timeouts, the late event or the
//! dead letter, with the source's coordinates in headers.

use std::sync::atomic::Ordering;
use std::time::Instant;

use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::Producer;

use super::Output;
use super::Worker;
use crate::core::coords::seq_of;
use crate::core::partition::Emit;
use crate::core::plan::admit;
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::avro::Retried;
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
    /// holds a state past, is skipped).
    pub(super) fn handle(&mut self, msg: &BorrowedMessage<'_>, health: &Health) -> Result<()> {
        let (topic, p, off) = (msg.topic(), msg.partition(), msg.offset());
        let Some(plan) = self.plans.get(topic).cloned() else { return Ok(()) };
        match self.parts.get(topic).and_then(|m| m.get(&p)) {
            // Not (or no longer) ours, or already in the restored state.
            None => return Ok(()),
            Some(part) if off < part.next_offset => return Ok(()),
            Some(_) => {}
        }
        self.begin()?;
        let seq = seq_of(p, off);
        let stop = || health.shutdown.load(Ordering::Relaxed);
        let decoded = match self.avro.decode_retrying(&plan, msg.payload(), seq, None, &stop)? {
            Retried::Decoded(event) => Ok(event),
            Retried::Rejected(r) => Err(r),
            // Not consumed: the next owner reads it again.
            Retried::Cancelled => return Ok(()),
        };
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
        part.next_offset = off + 1;
        part.advanced = true;
        match outcome {
            Ok(None) => {
                self.totals.processed += 1;
                part.reads.processed += 1;
            }
            Ok(Some((ts, wm))) => {
                self.totals.late += 1;
                part.reads.late += 1;
                self.batch.produced(Output::Late, msg.key(), msg.payload());
                let headers = source_headers(msg)
                    .insert(Header { key: "tripline.reason", value: Some("late") })
                    .insert(Header { key: "tripline.event_time", value: Some(&ts.to_string()) })
                    .insert(Header { key: "tripline.watermark", value: Some(&wm.to_string()) });
                produce(&self.producer, &self.late_topic, None, msg.key(), msg.payload(), Some(headers))?;
            }
            Err(r) => {
                part.counts.dead_lettered += 1;
                self.totals.dead_lettered += 1;
                *self.batch.rejects.entry((plan.name.clone(), r.code, decode_failed)).or_default() += 1;
                self.batch.produced(Output::DeadLetter, msg.key(), msg.payload());
                tracing::debug!(topic, partition = p, offset = off, reason = r.code, "dead letter: {}", r.message);
                let headers = source_headers(msg)
                    .insert(Header { key: "tripline.reason", value: Some(r.code) })
                    .insert(Header { key: "tripline.error", value: Some(&r.message) });
                produce(&self.producer, &self.dead_letter_topic, None, msg.key(), msg.payload(), Some(headers))?;
            }
        }
        let ingest = msg.timestamp().to_millis();
        for e in emit.drain(..) {
            match e {
                Emit::Alert { key, json, ts, shadow } => {
                    self.totals.alerts += 1;
                    let (k, v) = (Some(key.as_bytes()), Some(json.as_bytes()));
                    let (topic, out) = if shadow {
                        (&self.shadow_alerts_topic, Output::ShadowAlerts)
                    } else {
                        (&self.alerts_topic, Output::Alerts)
                    };
                    produce(&self.producer, topic, None, k, v, None)?;
                    self.batch.produced(out, k, v);
                    self.batch.latencies.push((ts, ingest));
                }
                Emit::Timeout { key, json } => {
                    if let Some(t) = &self.timeouts_topic {
                        let (k, v) = (Some(key.as_bytes()), Some(json.as_bytes()));
                        produce(&self.producer, t, None, k, v, None)?;
                        self.batch.produced(Output::Timeouts, k, v);
                    }
                }
            }
        }
        self.emit = emit;
        Ok(())
    }
}

/// Headers naming a record's source: topic, partition, offset and record timestamp.
fn source_headers(msg: &BorrowedMessage<'_>) -> OwnedHeaders {
    let h = OwnedHeaders::new()
        .insert(Header { key: "tripline.source.topic", value: Some(msg.topic()) })
        .insert(Header { key: "tripline.source.partition", value: Some(&msg.partition().to_string()) })
        .insert(Header { key: "tripline.source.offset", value: Some(&msg.offset().to_string()) });
    match msg.timestamp().to_millis() {
        Some(ts) => h.insert(Header { key: "tripline.source.timestamp", value: Some(&ts.to_string()) }),
        None => h,
    }
}
