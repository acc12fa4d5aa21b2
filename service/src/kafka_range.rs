//! Reading a range of Kafka topics as the service read them, for replays and explanations:
//! `--from` / `--to` as times (offsets found with `offsets_for_times` on the record timestamps)
//! or explicit partition offsets, committed records only (`read_committed`), by a client that
//! never joins the service's consumer group and never commits offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka;
use crate::times;

/// How long metadata and offset lookups may take before the broker counts as unreachable.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A partition that gives nothing for this long, short of its end, has stalled.
const STALL: Duration = Duration::from_secs(30);

/// One end of a range, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    /// A record timestamp (ms since the epoch).
    Time(i64),
    /// Offsets by partition (`0:1200,1:1180`); partitions not listed are not read.
    Offsets(BTreeMap<i32, i64>),
}

impl Bound {
    /// Parses `--from` / `--to`: RFC 3339, epoch ms, or `PARTITION:OFFSET[,PARTITION:OFFSET...]`.
    pub fn parse(flag: &str, text: &str) -> Result<Bound, String> {
        if text.contains(':') && text.split(',').all(|part| part.trim().split_once(':').is_some_and(is_offset_pair)) {
            let mut map = BTreeMap::new();
            for part in text.split(',') {
                let (p, o) = part.trim().split_once(':').unwrap_or_default();
                let (p, o): (i32, i64) = (
                    p.trim().parse().map_err(|_| bad_offsets(flag, text))?,
                    o.trim().parse().map_err(|_| bad_offsets(flag, text))?,
                );
                if map.insert(p, o).is_some() {
                    return Err(format!("{flag} {text}: partition {p} is given twice"));
                }
            }
            return Ok(Bound::Offsets(map));
        }
        times::parse(text).map(Bound::Time).map_err(|e| format!("{flag}: {e}, or offsets as PARTITION:OFFSET,..."))
    }

    fn describe(&self) -> String {
        match self {
            Bound::Time(t) => times::format(*t),
            Bound::Offsets(m) => m.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(","),
        }
    }
}

fn is_offset_pair((p, o): (&str, &str)) -> bool {
    let digits = |s: &str| !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit());
    digits(p) && digits(o)
}

fn bad_offsets(flag: &str, text: &str) -> String {
    format!("{flag} {text}: offsets are PARTITION:OFFSET pairs separated by commas")
}

/// Parses `--from` and `--to` and checks them against each other, before connecting; `file`:
/// the input is a file, where a range of topics makes no sense.
pub fn bounds(
    from: Option<&str>,
    to: Option<&str>,
    topic: Option<&str>,
    file: bool,
) -> Result<(Option<Bound>, Option<Bound>), String> {
    let from = from.map(|t| Bound::parse("--from", t)).transpose()?;
    let to = to.map(|t| Bound::parse("--to", t)).transpose()?;
    if file && (from.is_some() || to.is_some() || topic.is_some()) {
        return Err(
            "--from, --to and --topic select a range of Kafka topics; with --input the whole file is read".into()
        );
    }
    check_order(from.as_ref(), to.as_ref())?;
    Ok((from, to))
}

/// Checks what can be checked before connecting: an end before the start.
pub fn check_order(from: Option<&Bound>, to: Option<&Bound>) -> Result<(), String> {
    match (from, to) {
        (Some(Bound::Time(a)), Some(Bound::Time(b))) if b <= a => {
            Err(format!("--to {} is not after --from {}: the range is empty", times::format(*b), times::format(*a)))
        }
        (Some(Bound::Offsets(a)), Some(Bound::Offsets(b))) => {
            for (p, start) in a {
                match b.get(p) {
                    Some(end) if end <= start => {
                        return Err(format!(
                            "--to {p}:{end} is not after --from {p}:{start}: partition {p}'s range is empty"
                        ))
                    }
                    Some(_) => {}
                    None => return Err(format!("--from names partition {p}, --to does not")),
                }
            }
            if let Some(p) = b.keys().find(|p| !a.contains_key(p)) {
                return Err(format!("--to names partition {p}, --from does not"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The records of one partition to read: offsets `start..end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRange {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    /// Exclusive.
    pub end: i64,
}

/// The client of a replay: librdkafka's own messages (a refused connection, retried) go to the
/// debug log, so that a failure is reported once, as the error the command ends with.
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
pub fn reader(cfg: &Config) -> Result<Reader, String> {
    let mut c = kafka::client_config(cfg).map_err(|e| format!("{e:#}"))?;
    // A group id of its own (librdkafka wants one), never joined: partitions are assigned by hand.
    c.set("group.id", format!("{}.replay", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("socket.connection.setup.timeout.ms", "5000");
    kafka::create(cfg, &c, Quiet, "Kafka reader").map_err(|e| format!("{e:#}"))
}

/// The partition counts of `topics`, or an error naming the unreachable broker or the first
/// missing topic.
pub fn partitions(consumer: &Reader, cfg: &Config, topics: &[&str]) -> Result<Vec<i32>, String> {
    let bootstrap = cfg.kafka.bootstrap_servers.clone().unwrap_or_default();
    let md = consumer.fetch_metadata(None, LOOKUP_TIMEOUT).map_err(|e| {
        format!(
            "cannot reach the Kafka brokers at {bootstrap} ({}): is the broker up?",
            kafka::redact(cfg, &e.to_string())
        )
    })?;
    let mut out = Vec::new();
    for t in topics {
        match md.topics().iter().find(|m| m.name() == *t && m.error().is_none()) {
            Some(m) if !m.partitions().is_empty() => out.push(m.partitions().len() as i32),
            _ => {
                let mut known: Vec<&str> =
                    md.topics().iter().map(|m| m.name()).filter(|n| !n.starts_with("__")).collect();
                known.sort_unstable();
                return Err(format!("no topic `{t}` at {bootstrap} (topics there: {})", known.join(", ")));
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
) -> Result<Vec<PartRange>, String> {
    let counts = partitions(consumer, cfg, topics)?;
    if topics.len() > 1 && [from, to].iter().any(|b| matches!(b, Some(Bound::Offsets(_)))) {
        return Err(format!(
            "explicit offsets name partitions of one topic, and this replay reads {}: choose one with --topic",
            topics.join(", ")
        ));
    }
    let mut ranges = Vec::new();
    let mut held = Vec::new();
    for (topic, &n) in topics.iter().zip(&counts) {
        let at = |bound: Option<&Bound>, ends: &[(i64, i64)]| -> Result<Vec<Option<i64>>, String> {
            match bound {
                None => Ok(vec![None; n as usize]),
                Some(Bound::Offsets(m)) => {
                    if let Some(p) = m.keys().find(|p| **p < 0 || **p >= n) {
                        return Err(format!("topic `{topic}` has no partition {p} (it has {n})"));
                    }
                    Ok((0..n).map(|p| Some(m.get(&p).copied().unwrap_or(i64::MIN))).collect())
                }
                Some(Bound::Time(t)) => {
                    let mut tpl = TopicPartitionList::new();
                    for p in 0..n {
                        tpl.add_partition_offset(topic, p, Offset::Offset(*t)).map_err(|e| e.to_string())?;
                    }
                    let found = consumer.offsets_for_times(tpl, LOOKUP_TIMEOUT).map_err(|e| {
                        format!("cannot look up the offsets of `{topic}` at {}: {e}", times::format(*t))
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
                .map_err(|e| format!("cannot read the offsets of {topic}/{p}: {e}"))?;
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
        return Err(format!(
            "no records to replay: {range} holds none ({}; --from/--to times are record timestamps)",
            held.join(", ")
        ));
    }
    Ok(ranges)
}

/// One record read, or the end of a partition's range.
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

impl<'a> PartReader<'a> {
    pub fn new(consumer: &'a Reader, range: &PartRange) -> Result<Self, String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&range.topic, range.partition, Offset::Offset(range.start))
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| format!("cannot read {}/{}: {e}", range.topic, range.partition))?;
        Ok(PartReader { consumer, range: range.clone(), last: Instant::now(), next: range.start })
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Read<'a>, String> {
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
                        return Err(format!("reading {}/{} failed: {e}", r.topic, r.partition));
                    }
                    tracing::warn!(topic = %r.topic, partition = r.partition, "{e}");
                }
                None if self.last.elapsed() >= STALL => {
                    return Err(format!(
                        "reading {}/{} stalled at offset {} of {}..{} for {}s (an open transaction blocks \
                         read_committed readers, or the broker went away)",
                        r.topic,
                        r.partition,
                        self.next,
                        r.start,
                        r.end,
                        STALL.as_secs()
                    ))
                }
                None => {}
            }
        }
    }
}

/// Every committed record of `topic` (all partitions, from the beginning to the end it has
/// now) as (partition, offset, value).
pub fn read_all(consumer: &Reader, cfg: &Config, topic: &str) -> Result<Vec<(i32, i64, Vec<u8>)>, String> {
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
) -> Result<(), String> {
    let n = partitions(consumer, cfg, &[topic])?[0];
    for p in 0..n {
        let (lo, hi) = consumer.fetch_watermarks(topic, p, LOOKUP_TIMEOUT).map_err(|e| format!("{topic}/{p}: {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_as_times_or_offsets() {
        assert_eq!(Bound::parse("--from", "1772323200000"), Ok(Bound::Time(1_772_323_200_000)));
        assert_eq!(Bound::parse("--from", "2026-03-01T00:00:00Z"), Ok(Bound::Time(1_772_323_200_000)));
        assert_eq!(Bound::parse("--from", "0:100, 2:7"), Ok(Bound::Offsets(BTreeMap::from([(0, 100), (2, 7)]))));
        assert!(Bound::parse("--from", "0:1,0:2").expect_err("twice").contains("partition 0 is given twice"));
        assert!(Bound::parse("--to", "last tuesday").expect_err("bad").starts_with("--to: "));
    }

    #[test]
    fn an_end_before_the_start_is_refused_before_connecting() {
        let t = |ms| Some(Bound::Time(ms));
        assert!(check_order(t(10).as_ref(), t(20).as_ref()).is_ok());
        let e = check_order(t(20).as_ref(), t(10).as_ref()).expect_err("backwards");
        assert!(e.contains("is not after"), "{e}");
        assert!(check_order(t(20).as_ref(), t(20).as_ref()).is_err());
        let o = |pairs: &[(i32, i64)]| Some(Bound::Offsets(pairs.iter().copied().collect()));
        assert!(check_order(o(&[(0, 5)]).as_ref(), o(&[(0, 9)]).as_ref()).is_ok());
        assert!(check_order(o(&[(0, 9)]).as_ref(), o(&[(0, 5)]).as_ref()).expect_err("x").contains("partition 0"));
        assert!(check_order(o(&[(0, 1)]).as_ref(), o(&[(1, 5)]).as_ref()).is_err());
    }
}
