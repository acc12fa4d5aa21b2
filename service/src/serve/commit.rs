//! The transaction of a commit interval: the changed state of every partition that advanced
//! goes to the changelog, their offsets are added, and the transaction commits; the local store
//! follows a commit.
//!
//! Commits are pipelined: the loop stages a transaction (its changelog records produced, its
//! offsets taken) and a committer thread waits for its records' delivery, adds the offsets and
//! commits, while the loop reads and processes the next records. Their outputs wait in the
//! outbox ([`Worker::outbox`]) until the staged transaction has ended: one producer has one
//! transaction at a time, and a transaction's records all come after the previous one's. The next
//! transaction is staged only once the previous one committed ([`Worker::settle`]); if that one
//! aborts, so does everything processed after it (nothing of it was produced), and the rewind
//! takes every partition back to the last commit.
//!
//! Every way a transaction can end is decided here, by librdkafka's error classes:
//! - retriable (a timeout, a coordinator moving): the same call again, for up to
//!   [`RETRY_BUDGET`], as librdkafka asks for `send_offsets_to_transaction` and
//!   `commit_transaction`;
//! - abortable (a delivery failure, a rebalance, the budget spent): the transaction aborts and
//!   the caller rewinds every partition to the store (the last commit) and the consumer to the
//!   matching offsets ([`Worker::rewind`]); [`MAX_ABORTS_IN_A_ROW`] aborts with no commit
//!   between them stop the service (a rejection that repeats would otherwise loop for ever);
//! - fatal (a fenced producer, a record that can never be written): the transaction aborts
//!   where it still can and the error stops the service, which restarts from the last commit.
//!
//! Nothing is committed after an error: an error anywhere after `begin_transaction` aborts
//! ([`Worker::abort_open`]) before it is returned, so neither the revocation callback nor the
//! shutdown path can commit a half-done transaction.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::batch::Batch;
use super::rebalance::{committed_offset, GroupContext, Restored};
use super::{Ended, Output, Worker};
use crate::core::partition::{Partition, Sought};
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::kafka::{produce, produce_at, TxnContext, REQUEST_TIMEOUT};
use crate::io::store::Changes;

/// How long a transaction operation may take before it counts as failed.
pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a retriable failure of one transaction step is retried before the transaction
/// aborts.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Aborts in a row (no commit between them) after which the service stops: the same records
/// would be rejected again and again.
pub(super) const MAX_ABORTS_IN_A_ROW: u32 = 10;

impl Worker {
    /// Commits the open transaction and waits for it (see the module's documentation for how it
    /// can end), and rewinds after an abort.
    pub(super) fn commit_or_rewind(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<Ended> {
        let ended = self.commit(consumer)?;
        if ended == Ended::Aborted {
            self.rewind(consumer)?;
        }
        Ok(ended)
    }

    /// Commits the open transaction and waits until it has ended, after the staged one before
    /// it: changelog records of the touched partitions, their offsets, then the commit; on
    /// success the local store follows. `Aborted` leaves the partitions ahead of the last
    /// commit: the caller rewinds them (or drops them).
    pub(super) fn commit(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<Ended> {
        let before = self.commit_behind(consumer)?;
        if before == Ended::Aborted || self.pending.is_none() {
            return Ok(before);
        }
        self.settle(consumer)
    }

    /// Stages the open transaction to commit behind the loop (see the module's documentation),
    /// once the staged one before it has ended, and returns how that one ended. `Aborted`: it
    /// or the staging failed, and everything processed since the last commit is dropped; the
    /// caller rewinds.
    pub(super) fn commit_behind(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<Ended> {
        let before = self.settle(consumer)?;
        if before == Ended::Aborted || !self.in_txn {
            return Ok(before);
        }
        if !self.stage(consumer)? {
            return Ok(Ended::Aborted);
        }
        Ok(before)
    }

    /// Ends the staged transaction if its committer is done, then produces what waits in the
    /// outbox. Never waits for the committer.
    pub(super) fn pump(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<Ended> {
        let ended = match &self.pending {
            Some(p) if !p.committer.is_finished() => return Ok(Ended::Idle),
            Some(_) => self.settle(consumer)?,
            None => Ended::Idle,
        };
        if ended != Ended::Aborted {
            self.flush_outbox()?;
        }
        Ok(ended)
    }

    /// Stages the open transaction: its waiting outputs and its changelog records produced,
    /// its offsets handed with the group's metadata to a committer thread. `false`: it could
    /// not be staged and has ended (aborted; see [`Worker::fail`]).
    fn stage(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<bool> {
        debug_assert!(self.pending.is_none(), "a transaction is staged while another commits");
        let started = Instant::now();
        let staged = self.flush_outbox().map_err(Failure::Fatal).and_then(|()| self.try_stage(consumer));
        // The partitions go on from the staged state: their reads of the store must see it.
        let staged = staged.and_then(|s| self.store.stage(&s.1).map(|()| s).map_err(Failure::Fatal));
        let (staged, changes) = match staged {
            Ok(s) => s,
            Err(failure) => return self.fail(failure).map(|()| false),
        };
        if self.failpoints.kill_in_transaction == Some(self.totals.commits + 1) {
            // The records at the broker: the kill leaves them in an open transaction.
            let _ = self.producer.flush(Duration::from_secs(10));
            super::kill_self(
                "failpoint kill-in-transaction: the transaction's records are produced, it does not commit",
            );
        }
        let parts = staged.offsets.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        self.in_txn = false;
        self.begun = false;
        let producer = self.producer.clone();
        let committer = std::thread::Builder::new()
            .name("tripline-commit".into())
            .spawn(move || commit_staged(&producer, &staged))
            .or_fail(Kind::Failed, "cannot start the committer thread");
        let committer = match committer {
            Ok(c) => c,
            Err(e) => return self.fail(Failure::Fatal(e)).map(|()| false),
        };
        let batch = std::mem::take(&mut self.batch);
        self.pending = Some(Pending { committer, changes, batch, started, parts });
        Ok(true)
    }

    /// Waits for the staged transaction, if any, and ends it: on a commit the local store and
    /// the metrics follow; on a failure see [`Worker::fail`].
    pub(super) fn settle(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<Ended> {
        let ended = self.end_staged()?;
        if ended == Ended::Committed {
            self.update_gauges(consumer);
        }
        Ok(ended)
    }

    /// [`Worker::settle`] but for the gauges.
    fn end_staged(&mut self) -> Result<Ended> {
        let Some(Pending { committer, changes, batch, started, parts }) = self.pending.take() else {
            return Ok(Ended::Idle);
        };
        let result = committer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match result {
            Ok(marks) => {
                self.marks.extend(marks);
                // Their group offsets are theirs again.
                for tp in &parts {
                    self.distrusted.remove(tp);
                }
            }
            Err(failure) => return self.fail(failure).map(|()| Ended::Aborted),
        }
        self.aborts_in_a_row = 0;
        self.totals.commits += 1;
        self.totals.commit_us += started.elapsed().as_micros() as u64;
        if self.failpoints.kill_after_commit == Some(self.totals.commits) {
            super::kill_self("failpoint kill-after-commit: the transaction committed, the store is not written");
        }
        self.store.apply(changes)?;
        // Its keys can leave memory now; the open transaction's keys could not while it committed.
        self.evict()?;
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.transactions_committed.inc();
        batch.fold_into(&self.metrics);
        Ok(Ended::Committed)
    }

    /// Ends the producer's transaction after a failure, and with it everything processed since
    /// the last commit: the outbox and the open transaction are dropped (nothing of them was
    /// produced while a staged transaction committed), the store forgets the staged changes, and
    /// the caller rewinds. A fatal failure stops the service unless a new producer recovers from
    /// it.
    fn fail(&mut self, failure: Failure) -> Result<()> {
        self.in_txn = false;
        self.begun = false;
        self.outbox.clear();
        self.store.unstage()?;
        match failure {
            Failure::Abortable(why) => self.abort(&why),
            Failure::Lost(why) => {
                // Nothing to abort: the producer's transaction is over.
                self.count_abort();
                tracing::warn!(
                    "the committed transaction was lost ({why}): rewinding to the last commit the store has"
                );
                Ok(())
            }
            Failure::Fatal(e) => {
                if let Some(why) = self.recoverable_fatal() {
                    return self.renew_producer(&why);
                }
                self.count_abort();
                tracing::warn!("aborting the transaction: {e}");
                if let Err(x) = self.producer.abort_transaction(TXN_TIMEOUT) {
                    tracing::warn!(
                        "the abort failed too ({x}): the broker aborts the transaction when this instance restarts"
                    );
                }
                Err(e)
            }
        }
    }

    /// The producer's fatal error when a new producer (same transactional id) recovers from it:
    /// the broker lost the producer's idempotence state (a broker restarted without it, a log
    /// truncated). Fencing is not among them: another instance owns the id now.
    pub(super) fn recoverable_fatal(&self) -> Option<String> {
        let (code, reason) = self.producer.client().fatal_error()?;
        matches!(
            code,
            RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::DuplicateSequenceNumber
                | RDKafkaErrorCode::GaplessGuarantee
        )
        .then(|| format!("{code:?}: {reason}"))
    }

    /// Replaces the producer after a [recoverable fatal error](Worker::recoverable_fatal): the
    /// new one initialises with the same transactional id, which fences the old one's epoch, so
    /// the broker aborts its open transaction. Counts as an abort; the caller rewinds.
    pub(super) fn renew_producer(&mut self, why: &str) -> Result<()> {
        self.in_txn = false;
        self.begun = false;
        self.outbox.clear();
        self.count_abort();
        if self.aborts_in_a_row >= MAX_ABORTS_IN_A_ROW {
            return Err(Error::failed(format!(
                "{} transactions in a row aborted, the last because of: {why}; stopping",
                self.aborts_in_a_row
            )));
        }
        self.replace_producer(why)
    }

    /// Counts an aborted transaction; what it did is done, and counted, again.
    fn count_abort(&mut self) {
        self.totals.aborts += 1;
        self.aborts_in_a_row += 1;
        self.metrics.transactions_aborted.inc();
        self.batch = Batch::default();
    }

    /// A new producer in place of one with a recoverable fatal error.
    fn replace_producer(&mut self, why: &str) -> Result<()> {
        tracing::warn!("the producer cannot go on ({why}): replacing it; its open transaction is aborted and redone");
        let context = TxnContext::new(self.connection_lost.clone(), &self.changelog);
        let producer: BaseProducer<TxnContext> =
            self.producer_config.create_with_context(context).or_fail(Kind::Failed, "cannot create a new producer")?;
        let started = Instant::now();
        loop {
            match producer.init_transactions(TXN_TIMEOUT) {
                Ok(()) => break,
                Err(KafkaError::Transaction(te)) if !te.is_fatal() && started.elapsed() < RETRY_BUDGET => {
                    tracing::warn!("initialising the new producer's transactions: {te}; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(Error::failed(format!("cannot initialise the new producer's transactions: {e}")));
                }
            }
        }
        self.producer = Arc::new(producer);
        Ok(())
    }

    /// Begins the producer's transaction for the open one, unless it has begun.
    pub(super) fn begin_producer(&mut self) -> Result<()> {
        if !self.begun {
            self.producer.begin_transaction().or_fail(Kind::Failed, "cannot begin a transaction")?;
            self.begun = true;
        }
        Ok(())
    }

    /// Produces what waits in the outbox, in the open transaction, unless a staged one is still
    /// committing.
    pub(super) fn flush_outbox(&mut self) -> Result<()> {
        if self.pending.is_some() || self.outbox.is_empty() {
            return Ok(());
        }
        self.begin_producer()?;
        for out in std::mem::take(&mut self.outbox) {
            if let Some((topic, p, ts)) = &out.at {
                produce_at(
                    &self.producer,
                    topic,
                    Some(*p),
                    *ts,
                    out.key.as_deref(),
                    out.payload.as_deref(),
                    out.headers,
                )?;
            } else if let Some(topic) = self.topic_of(out.to) {
                produce(&self.producer, topic, None, out.key.as_deref(), out.payload.as_deref(), out.headers)?;
            }
        }
        Ok(())
    }

    /// The part of staging that can fail: the open transaction begun at the producer, the
    /// changed state of every partition that advanced produced to the changelog, their offsets
    /// and the group's metadata taken. Returns those, and the state records to write to the
    /// store once the transaction commits.
    fn try_stage(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<(Staged, Changes), Failure> {
        let mut offsets = TopicPartitionList::new();
        self.begin_producer().map_err(Failure::Fatal)?;
        self.evict().map_err(Failure::Fatal)?;
        let mut changes = Changes::default();
        let mut at = Vec::new();
        let mut forwarding = Vec::new();
        let set = self.set.hash();
        for (t, m) in &mut self.parts {
            for (p, part) in m.iter_mut().filter(|(_, part)| part.advanced) {
                part.advanced = false;
                if !part.plan.forwards().is_empty() {
                    forwarding.push((t.clone(), *p));
                }
                part.set.clone_from(&set);
                let from = changes.records.len();
                part.take_changes(&mut changes);
                at.push((from, *p % self.changelog_parts));
                let counts = part.take_pattern_counts();
                self.batch.patterns.extend(part.plan.patterns.iter().cloned().zip(counts));
                self.batch.add_reads(&part.plan.metric_label(), std::mem::take(&mut part.reads));
                offsets
                    .add_partition_offset(t, *p, Offset::Offset(part.next_offset))
                    .map_err(|e| Failure::Fatal(Error::failed(format!("offsets to commit: {e}"))))?;
            }
        }
        // After the records they forwarded (in the outbox, produced above).
        self.produce_markers(&forwarding).map_err(Failure::Fatal)?;
        // Every record is at most a chunk (see `core::changelog`) plus its key.
        at.push((changes.records.len(), 0));
        let _ = self.producer.context().take_delivered();
        let mut last_keys = HashMap::new();
        for w in at.windows(2) {
            let ((from, cp), (to, _)) = (w[0], w[1]);
            for (k, v) in &changes.records[from..to] {
                produce(&self.producer, &self.changelog, Some(cp), Some(k), v.as_deref(), None)
                    .map_err(Failure::Fatal)?;
                self.batch.produced(Output::Changelog, Some(k), v.as_deref());
            }
            if let Some((k, _)) = changes.records[from..to].last() {
                last_keys.insert(cp, k.clone());
            }
        }
        let cgm = consumer
            .group_metadata()
            .ok_or_else(|| Failure::Abortable("the consumer has no group metadata (not in a group)".into()))?;
        // Whether the broker holds a record, whatever its transaction markers say yet.
        let mut reader = self.restore_config.clone();
        reader.set("isolation.level", "read_uncommitted");
        let check = Survival { reader, changelog: self.changelog.clone(), last_keys };
        Ok((Staged { offsets, cgm, check }, changes))
    }

    /// Aborts the producer's transaction after an abortable failure. Fails (the service stops)
    /// when the abort itself fails, or after [`MAX_ABORTS_IN_A_ROW`].
    fn abort(&mut self, why: &str) -> Result<()> {
        self.in_txn = false;
        self.begun = false;
        self.count_abort();
        tracing::warn!("the transaction cannot commit ({why}): aborting and rewinding to the last commit");
        if let Err(e) = self.producer.abort_transaction(TXN_TIMEOUT) {
            match self.recoverable_fatal() {
                // The new producer's initialisation aborts it.
                Some(fatal) => self.replace_producer(&fatal)?,
                None => {
                    return Err(Error::failed(format!(
                        "cannot abort the transaction after `{why}`: {e}; stopping (a restart resumes from the last \
                         commit)"
                    )))
                }
            }
        }
        if self.aborts_in_a_row >= MAX_ABORTS_IN_A_ROW {
            return Err(Error::failed(format!(
                "{} transactions in a row aborted, the last because of: {why}; stopping rather than retrying the same records for ever",
                self.aborts_in_a_row
            )));
        }
        Ok(())
    }

    /// Ends every transaction because the service stops with `error`: a staged one is waited
    /// for (it commits or aborts as it would have), and nothing of the open one may commit. The
    /// abort is best effort (a fenced producer cannot abort; the broker aborts its transaction
    /// when the next instance initialises).
    pub(super) fn abort_open(&mut self, error: &Error) {
        if self.pending.is_some() {
            // Its own failure is logged by `fail`; the service stops with `error` anyway.
            let _ = self.end_staged();
        }
        self.in_txn = false;
        self.outbox.clear();
        if !self.begun {
            return;
        }
        self.begun = false;
        self.count_abort();
        tracing::warn!("aborting the open transaction: {error}");
        if let Err(e) = self.producer.abort_transaction(TXN_TIMEOUT) {
            tracing::warn!("the abort failed too ({e}): the broker aborts the transaction when this instance restarts");
        }
    }

    /// Runs `produce` in a transaction of its own (none may be open or staged) and commits it;
    /// on failure the transaction is aborted.
    pub(super) fn transaction_of_its_own(&mut self, produce: impl FnOnce(&Self) -> Result<()>) -> Result<()> {
        debug_assert!(self.pending.is_none() && !self.begun, "a transaction of its own while another is open");
        let result = self
            .producer
            .begin_transaction()
            .or_fail(Kind::Failed, "cannot begin a transaction")
            .and_then(|()| produce(self))
            .and_then(|()| {
                retrying(&self.producer, "committing", || self.producer.commit_transaction(TXN_TIMEOUT))
                    .map_err(Failure::into_error)
            });
        if result.is_err() {
            let _ = self.producer.abort_transaction(TXN_TIMEOUT);
        }
        result
    }

    /// Drops unchanged keys from memory when more than `state.cache_size` are there, least
    /// recently used first, each partition keeping its share. Their state is in the store once
    /// the queued writes are in (waited for here; they had a commit interval to get there).
    fn evict(&mut self) -> Result<()> {
        let total = self.cached_keys();
        if total <= self.cache_size {
            return Ok(());
        }
        self.store.sync()?;
        let mut gone = 0;
        for part in self.parts.values_mut().flat_map(HashMap::values_mut) {
            let share = (part.cached_keys() as u128 * self.cache_size as u128 / total as u128) as usize;
            gone += part.evict(share);
        }
        self.metrics.state_evictions.inc_by(gone as u64);
        Ok(())
    }

    /// Keys in memory over all partitions.
    pub(super) fn cached_keys(&self) -> usize {
        self.parts.values().flat_map(HashMap::values).map(Partition::cached_keys).sum()
    }

    /// Rebuilds every partition from the last commit and seeks the consumer back to match. The
    /// last commit is the local store's, unless the group's committed offset of a partition says
    /// otherwise: a broker that restarted may have lost transactions it had committed (the
    /// development broker can; so can a single broker without replicas that crashed), and then
    /// the partition is restored from the changelog at the group's offset, which the same
    /// transactions wrote, as a reassigned partition is. A failed seek stops the service: the
    /// state would rewind and the consumer not.
    pub(super) fn rewind(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<()> {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        // What the broker holds is checked here: a connection lost from now on counts again.
        self.connection_lost.store(false, Ordering::SeqCst);
        let list: Vec<(String, i32)> =
            self.parts.iter().flat_map(|(t, m)| m.keys().map(move |p| (t.clone(), *p))).collect();
        if list.is_empty() {
            return Ok(());
        }
        let lost = self.lost_commits()?;
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &list {
            tpl.add_partition(t, *p);
        }
        let started = Instant::now();
        let committed = loop {
            match consumer.committed_offsets(tpl.clone(), REQUEST_TIMEOUT) {
                Ok(c) => break c,
                Err(e) if started.elapsed() < RETRY_BUDGET => {
                    tracing::warn!("reading the group's committed offsets to rewind to: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(Error::failed(format!("cannot read the group's committed offsets to rewind to: {e}")))
                }
            }
        };
        let mut behind = Vec::new();
        for (t, p) in &list {
            let group = committed_offset(&committed, t, *p);
            let (current, local) = self.store_is_current(t, *p, group)?;
            if !current || lost.is_some() {
                behind.push(format!("{t}/{p}: local {local:?}, group {group:?}"));
            }
        }
        self.parts.clear();
        if !behind.is_empty() {
            match &lost {
                Some(why) => tracing::warn!(
                    partitions = %behind.join("; "),
                    "the broker lost committed transactions ({why}): restoring from the changelog, each partition \
                     from where its surviving state ends, whatever the group's offsets say"
                ),
                None => tracing::warn!(
                    partitions = %behind.join("; "),
                    "the group's committed offsets differ from the local state (the broker lost committed transactions?): \
                     restoring from the changelog"
                ),
            }
            // What the marks named is gone or restored; the next commits set new ones. Until a
            // commit of theirs, the group's offsets of these partitions are not theirs: a later
            // restore must not follow them past a state the broker lost.
            self.marks.clear();
            if lost.is_some() {
                self.distrusted.extend(list.iter().cloned());
            }
            consumer.context().shared.revoked_while_restoring.store(false, Ordering::Relaxed);
            match self.assign(consumer, &list, lost.is_some())? {
                Restored::Done => {}
                // The partitions went (a rebalance) or the service stops: nothing more to rewind.
                Restored::Revoked | Restored::Interrupted => {
                    self.parts.clear();
                    return Ok(());
                }
            }
        } else {
            for (t, p) in &list {
                let part = self.load(t, *p)?;
                self.parts.entry(t.clone()).or_default().insert(*p, part);
            }
        }
        for (t, p) in list {
            let Some(at) = self.parts.get(&t).and_then(|m| m.get(&p)).map(|part| part.next_offset) else {
                continue;
            };
            consumer.seek(&t, p, Offset::Offset(at), REQUEST_TIMEOUT).map_err(|e| {
                Error::failed(format!(
                    "cannot seek {t}/{p} back to offset {at} after an abort: {e}; stopping (a restart resumes from the last commit)"
                ))
            })?;
            if let Some(part) = self.parts.get_mut(&t).and_then(|m| m.get_mut(&p)) {
                part.sought = Some(Sought::at(at));
            }
        }
        self.restart_activity(true);
        // The aborted transaction's table records are gone: the version again, whole.
        self.tables_after(None, true);
        Ok(())
    }
}

impl Worker {
    /// Whether the broker lost transactions it had committed: the last record each of the last
    /// commits wrote to a changelog partition ([`Worker::marks`]) must still be there, committed.
    /// A broker that restarts may come back without its last transactions yet with the group
    /// offsets they committed (the development broker can, when it restarts while transactions
    /// commit); then the local store, which followed those commits, and the group's offsets agree,
    /// and only the changelog tells. `Some(why)` when a record is gone.
    fn lost_commits(&self) -> Result<Option<String>> {
        let started = Instant::now();
        let mut marks: Vec<_> = self.marks.iter().collect();
        marks.sort_by_key(|(cp, _)| **cp);
        for (cp, (at, key)) in marks {
            match still_there(&self.restore_config, &self.changelog, *cp, *at, key, started) {
                Ok(true) => {}
                Ok(false) => {
                    return Ok(Some(format!(
                    "changelog partition {}/{cp} no longer has, committed, the record it acknowledged at offset {at}",
                    self.changelog
                )))
                }
                Err(e) => {
                    return Err(Error::failed(format!(
                        "cannot check that the last commits' records are still there: {e}; stopping (a restart \
                         restores from what the broker holds)"
                    )))
                }
            }
        }
        Ok(None)
    }
}

/// What the committer of a staged transaction needs.
struct Staged {
    offsets: TopicPartitionList,
    cgm: ConsumerGroupMetadata,
    check: Survival,
}

/// Per changelog partition, the offset and key of the last record the last commit that wrote
/// to it wrote there: what the broker must still hold (see [`Worker::lost_commits`]).
pub(super) type Marks = HashMap<i32, (i64, Vec<u8>)>;

/// What tells whether a transaction's records survived a broker restart: the key of the last
/// record it wrote to each changelog partition, and a reader's settings.
struct Survival {
    reader: rdkafka::ClientConfig,
    changelog: String,
    last_keys: HashMap<i32, Vec<u8>>,
}

/// The committer thread's part of a staged transaction: its records delivered, its offsets
/// added, the commit; then, if a broker connection went down meanwhile, the check that its
/// records survived ([`check_survived`]).
fn commit_staged(producer: &BaseProducer<TxnContext>, staged: &Staged) -> Result<Marks, Failure> {
    let Staged { offsets, cgm, check } = staged;
    let started = Instant::now();
    wait_delivered(producer).map_err(|e| classify("delivering the transaction's records", e))?;
    let t0 = started.elapsed();
    check_connection(producer)?;
    retrying(producer, "adding the offsets to the transaction", || {
        producer.send_offsets_to_transaction(offsets, cgm, TXN_TIMEOUT)
    })?;
    let t1 = started.elapsed();
    check_connection(producer)?;
    retrying(producer, "committing the transaction", || producer.commit_transaction(TXN_TIMEOUT))?;
    // The client's error events (a lost connection) are seen only once served.
    producer.poll(Duration::ZERO);
    let delivered = producer.context().take_delivered();
    let fatal = producer.client().fatal_error().is_some();
    if producer.context().connection_lost.load(Ordering::SeqCst) || fatal {
        check_survived(&delivered, check)?;
    }
    tracing::debug!(
        delivery_us = t0.as_micros() as u64,
        offsets_us = (t1 - t0).as_micros() as u64,
        commit_us = (started.elapsed() - t1).as_micros() as u64,
        "commit"
    );
    Ok(check.last_keys.iter().filter_map(|(cp, key)| delivered.get(cp).map(|&at| (*cp, (at, key.clone())))).collect())
}

/// After a commit during which a broker connection went down (or the producer failed, as when a
/// restarted broker no longer knows its sequence numbers): whether the broker still holds
/// the transaction's records. A broker that restarts can lose the records of a transaction it
/// had acknowledged and still accept the commit afterwards (the development broker does, on a
/// clean restart: it drops what an open transaction wrote); then the offsets are committed
/// without their outputs. The last record the transaction wrote to each changelog partition
/// (where the delivery reports put it) is read back; if any is gone, the transaction is
/// [lost](Failure::Lost) and is done again from the store, which does not have it.
fn check_survived(delivered: &HashMap<i32, i64>, check: &Survival) -> Result<(), Failure> {
    let started = Instant::now();
    for (cp, key) in &check.last_keys {
        let Some(&at) = delivered.get(cp) else {
            return Err(Failure::Lost(format!("no delivery report for changelog partition {cp}")));
        };
        match still_there(&check.reader, &check.changelog, *cp, at, key, started) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Failure::Lost(format!(
                    "the broker no longer holds the record it acknowledged at {}/{cp} offset {at}",
                    check.changelog
                )))
            }
            Err(e) => {
                return Err(Failure::Fatal(Error::failed(format!(
                    "cannot check that the committed transaction's records survived a lost broker connection: {e}; \
                     stopping (a restart restores from what the broker holds)"
                ))))
            }
        }
    }
    tracing::info!("a broker connection went down during the commit: the transaction's records are there");
    Ok(())
}

/// Whether changelog partition `cp` holds the record with `key` at `at`, as `reader` reads it;
/// read errors (a broker still coming back) are retried until [`RETRY_BUDGET`] after `started`.
fn still_there(
    reader: &rdkafka::ClientConfig,
    changelog: &str,
    cp: i32,
    at: i64,
    key: &[u8],
    started: Instant,
) -> Result<bool> {
    loop {
        match read_one(reader, changelog, cp, at) {
            Ok(found) => return Ok(found.as_deref() == Some(key)),
            Err(e) if started.elapsed() < RETRY_BUDGET => {
                tracing::warn!("reading back {changelog}/{cp} at offset {at}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The key of the committed record at `at` in changelog partition `cp`; `None` when the
/// partition has another record there, or ends before it.
fn read_one(reader: &rdkafka::ClientConfig, changelog: &str, cp: i32, at: i64) -> Result<Option<Vec<u8>>> {
    let reader: BaseConsumer = reader.create().map_err(|e| Error::failed(format!("cannot create a reader: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(changelog, cp, Offset::Offset(at)).map_err(Error::failed)?;
    reader.assign(&tpl).map_err(Error::failed)?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while Instant::now() < deadline {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.offset() == at => return Ok(Some(m.key().unwrap_or_default().to_vec())),
            Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
            Some(Err(e)) => return Err(Error::failed(e)),
            None => {}
        }
    }
    Err(Error::failed(format!("nothing read from {changelog}/{cp} at offset {at} in {REQUEST_TIMEOUT:?}")))
}

/// Fails (abortable) when a broker connection went down since the last rewind: the broker may
/// have restarted, and a broker that restarts may have lost records of the open transaction
/// that it had acknowledged (a single broker without replicas can; the development broker
/// always does) and still commit the rest, or lost transactions it had committed. Redoing the
/// transaction from what the broker holds (see [`Worker::rewind`]) is always safe; committing it
/// could commit offsets without their outputs.
fn check_connection(producer: &BaseProducer<TxnContext>) -> Result<(), Failure> {
    producer.poll(Duration::ZERO);
    if producer.context().connection_lost.load(Ordering::SeqCst) {
        return Err(Failure::Abortable(
            "a broker connection went down since the last rewind (the broker may have lost what it acknowledged)"
                .into(),
        ));
    }
    Ok(())
}

/// Runs one transaction step, again while it fails with a retriable error (for up to
/// [`RETRY_BUDGET`]).
fn retrying(
    producer: &BaseProducer<TxnContext>,
    what: &str,
    step: impl Fn() -> KafkaResult<()>,
) -> Result<(), Failure> {
    let started = Instant::now();
    loop {
        match step() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(te))
                if te.is_retriable()
                    && !te.is_fatal()
                    && !te.txn_requires_abort()
                    && started.elapsed() < RETRY_BUDGET =>
            {
                tracing::warn!("{what}: {te}; retrying");
                producer.poll(Duration::from_millis(100));
            }
            Err(e) => return Err(classify(what, e)),
        }
    }
}

/// Serves delivery reports until nothing is in flight. `commit_transaction` flushes too, but
/// rdkafka's flush sleeps in steps of 100 ms between checks, which would put a floor of 100 ms
/// under every commit.
fn wait_delivered(producer: &BaseProducer<TxnContext>) -> KafkaResult<()> {
    let deadline = Instant::now() + TXN_TIMEOUT;
    producer.flush(Duration::ZERO).or_else(|e| match e {
        KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => Ok(()),
        e => Err(e),
    })?;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        producer.poll(Duration::from_millis(1));
    }
    Ok(())
}

/// A staged transaction: its committer, and what follows its commit.
pub(super) struct Pending {
    committer: std::thread::JoinHandle<Result<Marks, Failure>>,
    /// The state records the local store takes once it commits.
    changes: Changes,
    /// What it did, for the metrics once it commits.
    batch: Batch,
    /// When it was staged.
    started: Instant,
    /// The input partitions whose offsets it commits.
    parts: Vec<(String, i32)>,
}

/// Why a transaction cannot commit.
#[derive(Debug)]
enum Failure {
    /// Abort, rewind, and do it again.
    Abortable(String),
    /// It committed, but the broker lost its records (see [`check_survived`]): rewind to the
    /// store, which does not have it, and do it again.
    Lost(String),
    /// Stop the service.
    Fatal(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Abortable(why) | Failure::Lost(why) => Error::failed(why),
            Failure::Fatal(e) => e,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Abortable(why) | Failure::Lost(why) => f.write_str(why),
            Failure::Fatal(e) => e.fmt(f),
        }
    }
}

/// librdkafka's class of a failed transaction step (retriable ones are retried before this).
fn classify(what: &str, e: KafkaError) -> Failure {
    match &e {
        KafkaError::Transaction(te) if te.is_fatal() => Failure::Fatal(Error::failed(format!(
            "{what}: the producer cannot go on ({te}): another instance with the same instance_id took over, or the \
             broker fenced it"
        ))),
        _ => Failure::Abortable(format!("{what}: {e}")),
    }
}
