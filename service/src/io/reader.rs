//! The one reader of committed records (replays, explanations, `tail`, `export`, the recorded
//! pattern sets): a client that reads `read_committed` only, is assigned partitions by hand,
//! never joins the service's consumer group and never commits offsets. A range given as times
//! or offsets ([`crate::core::range::Bound`]) resolves to offsets here (`offsets_for_times` on
//! the record timestamps).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka;
use crate::core::config::Config;
use crate::core::range::{Bound, PartRange};
use crate::core::times;
use crate::error::{Error, Kind, ResultExt};

/// How long metadata and offset lookups may take before the broker counts as unreachable.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A partition that gives nothing for this long, short of its end, has stalled.
const STALL: Duration = Duration::from_secs(30);

/// The client of a replay: librdkafka's own messages (a refused connection, retried) go to the
/// debug log, so that a failure is reported once, as the error the command ends with.
#[derive(Debug)]
pub struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, fac, "{message}");
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// The Kafka client of replays and explanations.
pub type Reader = BaseConsumer<Quiet>;

/// A client that reads committed records, outside any consumer group.
pub fn reader(cfg: &Config) -> Result<Reader, Error> {
    let mut c = kafka::client_config(cfg)?;
    // A group id of its own (librdkafka wants one), never joined: partitions are assigned by hand.
    c.set("group.id", format!("{}.replay", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("socket.connection.setup.timeout.ms", "5000");
    kafka::create(cfg, &c, Quiet, "Kafka reader").map_err(|e| e.with_kind(Kind::Usage))
}

/// The partition counts of `topics`, or an error naming the unreachable broker or the first
/// missing topic.
pub fn partitions(consumer: &Reader, cfg: &Config, topics: &[&str]) -> Result<Vec<i32>, Error> {
    let bootstrap = cfg.kafka.bootstrap_servers.clone().unwrap_or_default();
    let md = consumer.fetch_metadata(None, LOOKUP_TIMEOUT).map_err(|e| {
        Error::usage(format!(
            "cannot reach the Kafka brokers at {bootstrap} ({}): is the broker up?",
            kafka::redact(cfg, &e.to_string())
        ))
    })?;
    let mut out = Vec::new();
    for t in topics {
        match md.topics().iter().find(|m| m.name() == *t && m.error().is_none()) {
            Some(m) if !m.partitions().is_empty() => out.push(m.partitions().len() as i32),
            _ => {
                let mut known: Vec<&str> =
                    md.topics().iter().map(|m| m.name()).filter(|n| !n.starts_with("__")).collect();
                known.sort_unstable();
                return Err(Error::usage(format!(
                    "no topic `{t}` at {bootstrap} (topics there: {})",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// The offsets to read, per partition of `topics`: `from` (default: `defaults`, else the
/// beginning) up to `to` (default: the end when the replay starts), within what the topic
/// still holds.
pub fn resolve(
    consumer: &Reader,
    cfg: &Config,
    topics: &[&str],
    from: Option<&Bound>,
    to: Option<&Bound>,
    defaults: &BTreeMap<(String, i32), i64>,
) -> Result<Vec<PartRange>, Error> {
    let counts = partitions(consumer, cfg, topics)?;
    if topics.len() > 1 && [from, to].iter().any(|b| matches!(b, Some(Bound::Offsets(_)))) {
        return Err(Error::usage(format!(
            "explicit offsets name partitions of one topic, and this replay reads {}: choose one with --topic",
            topics.join(", ")
        )));
    }
    let mut ranges = Vec::new();
    let mut held = Vec::new();
    for (topic, &n) in topics.iter().zip(&counts) {
        let at = |bound: Option<&Bound>, ends: &[(i64, i64)]| -> Result<Vec<Option<i64>>, Error> {
            match bound {
                None => Ok(vec![None; n as usize]),
                Some(Bound::Offsets(m)) => {
                    if let Some(p) = m.keys().find(|p| **p < 0 || **p >= n) {
                        return Err(Error::usage(format!("topic `{topic}` has no partition {p} (it has {n})")));
                    }
                    Ok((0..n).map(|p| Some(m.get(&p).copied().unwrap_or(i64::MIN))).collect())
                }
                Some(Bound::Time(t)) => {
                    let mut tpl = TopicPartitionList::new();
                    for p in 0..n {
                        tpl.add_partition_offset(topic, p, Offset::Offset(*t)).or_fail(Kind::Usage, topic)?;
                    }
                    let found = consumer.offsets_for_times(tpl, LOOKUP_TIMEOUT).or_fail_with(Kind::Usage, || {
                        format!("cannot look up the offsets of `{topic}` at {}", times::format(*t))
                    })?;
                    Ok((0..n)
                        .map(|p| {
                            let hi = ends[p as usize].1;
                            Some(match found.find_partition(topic, p).map(|e| e.offset()) {
                                Some(Offset::Offset(o)) if o >= 0 => o,
                                _ => hi,
                            })
                        })
                        .collect())
                }
            }
        };
        let mut ends = Vec::new();
        for p in 0..n {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p, LOOKUP_TIMEOUT)
                .or_fail_with(Kind::Usage, || format!("cannot read the offsets of {topic}/{p}"))?;
            ends.push((lo, hi));
        }
        let starts = at(from, &ends)?;
        let stops = at(to, &ends)?;
        for p in 0..n {
            let (lo, hi) = ends[p as usize];
            held.push(format!("{topic}/{p}: offsets {lo}..{hi}"));
            // A partition left out of an explicit offset list is not read.
            if starts[p as usize] == Some(i64::MIN) || stops[p as usize] == Some(i64::MIN) {
                continue;
            }
            let start =
                starts[p as usize].or_else(|| defaults.get(&(topic.to_string(), p)).copied()).unwrap_or(lo).max(lo);
            let end = stops[p as usize].unwrap_or(hi).min(hi);
            if end > start {
                ranges.push(PartRange { topic: topic.to_string(), partition: p, start, end });
            }
        }
    }
    if ranges.is_empty() {
        let range = match (from, to) {
            (None, None) => "the topics".to_owned(),
            (f, t) => format!(
                "the range{}{}",
                f.map(|b| format!(" from {}", b.describe())).unwrap_or_default(),
                t.map(|b| format!(" to {}", b.describe())).unwrap_or_default()
            ),
        };
        return Err(Error::usage(format!(
            "no records to replay: {range} holds none ({}; --from/--to times are record timestamps)",
            held.join(", ")
        )));
    }
    Ok(ranges)
}

/// One record read, or the end of a partition's range.
#[derive(Debug)]
pub enum Read<'a> {
    Record(BorrowedMessage<'a>),
    /// The partition's range is done; `next` is the first offset not read.
    Done {
        next: i64,
    },
}

/// Reads `range` record by record: call [`PartReader::next`] until it gives `Done`.
pub struct PartReader<'a> {
    consumer: &'a Reader,
    range: PartRange,
    last: Instant,
    next: i64,
}

impl std::fmt::Debug for PartReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartReader").field("range", &self.range).field("next", &self.next).finish_non_exhaustive()
    }
}

impl<'a> PartReader<'a> {
    pub fn new(consumer: &'a Reader, range: &PartRange) -> Result<Self, Error> {
        let what = || format!("cannot read {}/{}", range.topic, range.partition);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&range.topic, range.partition, Offset::Offset(range.start))
            .or_fail_with(Kind::Usage, what)?;
        consumer.assign(&tpl).or_fail_with(Kind::Usage, what)?;
        Ok(PartReader { consumer, range: range.clone(), last: Instant::now(), next: range.start })
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Read<'a>, Error> {
        let r = &self.range;
        loop {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    self.last = Instant::now();
                    if m.topic() != r.topic || m.partition() != r.partition {
                        continue;
                    }
                    if m.offset() >= r.end {
                        return Ok(Read::Done { next: m.offset() });
                    }
                    self.next = m.offset() + 1;
                    return Ok(Read::Record(m));
                }
                // The end of what is committed: a range that reaches past it (records of an
                // open transaction) ends here.
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    let pos = self
                        .consumer
                        .position()
                        .ok()
                        .and_then(|tpl| tpl.find_partition(&r.topic, r.partition).map(|e| e.offset()))
                        .and_then(|o| if let Offset::Offset(o) = o { Some(o) } else { None })
                        .unwrap_or(self.next);
                    return Ok(Read::Done { next: pos.max(self.next) });
                }
                Some(Err(e)) => {
                    if self.last.elapsed() >= STALL {
                        return Err(Error::usage(format!("reading {}/{} failed: {e}", r.topic, r.partition)));
                    }
                    tracing::warn!(topic = %r.topic, partition = r.partition, "{e}");
                }
                None if self.last.elapsed() >= STALL => {
                    return Err(Error::usage(format!(
                        "reading {}/{} stalled at offset {} of {}..{} for {}s (an open transaction blocks \
                         read_committed readers, or the broker went away)",
                        r.topic,
                        r.partition,
                        self.next,
                        r.start,
                        r.end,
                        STALL.as_secs()
                    )))
                }
                None => {}
            }
        }
    }
}

/// Whether `topic` exists.
pub fn exists(consumer: &Reader, cfg: &Config, topic: &str) -> Result<bool, Error> {
    let md = consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT).map_err(|e| {
        Error::usage(format!(
            "cannot reach the Kafka brokers at {} ({}): is the broker up?",
            cfg.kafka.bootstrap_servers.as_deref().unwrap_or_default(),
            kafka::redact(cfg, &e.to_string())
        ))
    })?;
    Ok(md.topics().iter().any(|m| m.name() == topic && m.error().is_none() && !m.partitions().is_empty()))
}

/// Every committed record of `topic` (all partitions, from the beginning to the end it has
/// now) as (partition, offset, value).
pub fn read_all(consumer: &Reader, cfg: &Config, topic: &str) -> Result<Vec<(i32, i64, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    scan(consumer, cfg, topic, &mut |p, o, v| {
        out.push((p, o, v.to_vec()));
        true
    })?;
    Ok(out)
}

/// Calls `on(partition, offset, value)` on the committed records of `topic` (partition by
/// partition, to the end each has now) until it returns false.
pub fn scan(
    consumer: &Reader,
    cfg: &Config,
    topic: &str,
    on: &mut dyn FnMut(i32, i64, &[u8]) -> bool,
) -> Result<(), Error> {
    let n = partitions(consumer, cfg, &[topic])?[0];
    for p in 0..n {
        let (lo, hi) =
            consumer.fetch_watermarks(topic, p, LOOKUP_TIMEOUT).or_fail_with(Kind::Usage, || format!("{topic}/{p}"))?;
        if hi <= lo {
            continue;
        }
        let mut reader =
            PartReader::new(consumer, &PartRange { topic: topic.to_owned(), partition: p, start: lo, end: hi })?;
        while let Read::Record(m) = reader.next()? {
            if !on(p, m.offset(), m.payload().unwrap_or_default()) {
                return Ok(());
            }
        }
    }
    Ok(())
}
