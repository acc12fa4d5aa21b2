//! The transaction of a commit interval: the changed state of every partition that advanced
//! goes to the changelog, their offsets are added, and the transaction commits; the local store
//! follows a commit. A failed commit aborts and rewinds every partition to the store (the last
//! commit) and the consumer to the matching offsets.

use std::fmt;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::batch::Batch;
use super::rebalance::GroupContext;
use super::Output;
use super::Worker;
use crate::core::changelog::state_prefix;
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::kafka::{produce, REQUEST_TIMEOUT};

/// The largest state record the changelog takes (Kafka's default `message.max.bytes` is about
/// 1 MB). One key's state beyond it stops the service with a message rather than failing every
/// commit: `engine.max_partial_matches_per_key` bounds it.
const MAX_STATE_RECORD: usize = 900 * 1024;

/// How long a transaction operation may take before it counts as failed.
pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

impl Worker {
    /// Commits the open transaction: changelog records of the touched partitions, their
    /// offsets, then the commit; on success the local store follows. On failure everything is
    /// rewound to the last commit.
    pub(super) fn commit(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<()> {
        if !self.in_txn {
            return Ok(());
        }
        let started = Instant::now();
        let mut changes = Vec::new();
        let mut offsets = TopicPartitionList::new();
        let mut records = Vec::new();
        for (t, m) in &mut self.parts {
            for (p, part) in m.iter_mut().filter(|(_, part)| part.advanced) {
                part.advanced = false;
                records.clear();
                part.take_changes(&mut records);
                let counts = part.take_pattern_counts();
                self.batch.patterns.extend(part.plan.patterns.iter().cloned().zip(counts));
                self.batch.add_reads(&part.plan.name, std::mem::take(&mut part.reads));
                offsets
                    .add_partition_offset(t, *p, Offset::Offset(part.next_offset))
                    .or_fail(Kind::Failed, "offsets to commit")?;
                let cp = p % self.changelog_parts;
                for (k, v) in records.drain(..) {
                    if let Some(v) = v.as_ref().filter(|v| v.len() > MAX_STATE_RECORD) {
                        // The key record: partition prefix, `K`, the pattern's 16-digit hash, the key.
                        let at = state_prefix(t, *p).len() + 1 + 16;
                        let key = k
                            .get(at..)
                            .and_then(|b| engine::runtime::Key::decode(b).ok())
                            .map(|k| k.to_string())
                            .unwrap_or_default();
                        return Err(Error::failed(format!(
                            "the state of one key of {t}/{p} ({key}) is {} bytes, more than a changelog record may \
                             be ({MAX_STATE_RECORD}); bound it with engine.max_partial_matches_per_key",
                            v.len()
                        )));
                    }
                    produce(&self.producer, &self.changelog, Some(cp), Some(&k), v.as_deref(), None)?;
                    self.batch.produced(Output::Changelog, Some(&k), v.as_deref());
                    changes.push((k, v));
                }
            }
        }
        let result = match consumer.group_metadata() {
            None => Err(Failure::NotInGroup),
            Some(cgm) => {
                let t0 = started.elapsed();
                let r = self.wait_delivered();
                let r = r.and_then(|()| self.producer.send_offsets_to_transaction(&offsets, &cgm, TXN_TIMEOUT));
                let t1 = started.elapsed();
                let r = r.and_then(|()| self.producer.commit_transaction(TXN_TIMEOUT));
                tracing::debug!(
                    changelog_us = t0.as_micros() as u64,
                    offsets_us = (t1 - t0).as_micros() as u64,
                    commit_us = (started.elapsed() - t1).as_micros() as u64,
                    "commit"
                );
                r.map_err(Failure::Kafka)
            }
        };
        match result {
            Ok(()) => {
                self.in_txn = false;
                self.totals.commits += 1;
                self.totals.commit_us += started.elapsed().as_micros() as u64;
                self.store.apply(&changes)?;
                self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
                self.metrics.transactions_committed.inc();
                std::mem::take(&mut self.batch).fold_into(&self.metrics);
                self.update_gauges(consumer);
                Ok(())
            }
            Err(e) => {
                self.in_txn = false;
                self.totals.aborts += 1;
                self.metrics.transactions_aborted.inc();
                // Everything in it is done again from the last commit, and counted then.
                self.batch = Batch::default();
                tracing::warn!("commit failed: {e}; aborting and rewinding to the last commit");
                if let Failure::Kafka(KafkaError::Transaction(te)) = &e {
                    if te.is_fatal() {
                        return Err(Error::failed(format!(
                            "the producer cannot go on ({te}): another instance with the same instance_id, or the \
                             broker fenced it"
                        )));
                    }
                }
                self.producer.abort_transaction(TXN_TIMEOUT).or_fail(Kind::Failed, "cannot abort the transaction")?;
                self.rewind(consumer)
            }
        }
    }

    /// Runs `produce` in a transaction of its own (none may be open) and commits it; on failure
    /// the transaction is aborted.
    pub(super) fn transaction_of_its_own(&mut self, produce: impl FnOnce(&Self) -> Result<()>) -> Result<()> {
        let result = self
            .producer
            .begin_transaction()
            .or_fail(Kind::Failed, "cannot begin a transaction")
            .and_then(|()| produce(self))
            .and_then(|()| self.producer.commit_transaction(TXN_TIMEOUT).or_fail(Kind::Failed, "cannot commit"));
        if result.is_err() {
            let _ = self.producer.abort_transaction(TXN_TIMEOUT);
        }
        result
    }

    /// Serves delivery reports until nothing is in flight. `commit_transaction` flushes too, but
    /// rdkafka's flush sleeps in steps of 100 ms between checks, which would put a floor of 100 ms
    /// under every commit.
    fn wait_delivered(&self) -> rdkafka::error::KafkaResult<()> {
        let deadline = Instant::now() + TXN_TIMEOUT;
        self.producer.flush(Duration::ZERO).or_else(|e| match e {
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => Ok(()),
            e => Err(e),
        })?;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Rebuilds every partition from the store (the last committed state) and seeks back.
    pub(super) fn rewind(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<()> {
        let list: Vec<(String, i32)> =
            self.parts.iter().flat_map(|(t, m)| m.keys().map(move |p| (t.clone(), *p))).collect();
        for (t, p) in list {
            let part = self.load(&t, p, &self.store.scan(&state_prefix(&t, p))?)?;
            let at = part.next_offset;
            self.parts.entry(t.clone()).or_default().insert(p, part);
            if let Err(e) = consumer.seek(&t, p, Offset::Offset(at), REQUEST_TIMEOUT) {
                tracing::warn!(topic = %t, partition = p, "cannot seek back to {at}: {e}");
            }
        }
        Ok(())
    }
}

/// Why a transaction did not commit.
#[derive(Debug)]
enum Failure {
    /// The consumer has no group metadata (it is not in a group).
    NotInGroup,
    Kafka(KafkaError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotInGroup => f.write_str("the consumer has no group metadata (not in a group)"),
            Failure::Kafka(e) => e.fmt(f),
        }
    }
}
