//! Reading a range of the input topics as the service reads them: committed records, in
//! offset order per partition, each decoded through the schema registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::Message;

use super::Env;
use crate::core::coords::seq_of;
use crate::core::plan::{Reject, StreamPlan};
use crate::core::range::{Bound, PartRange};
use crate::core::repartition::{self, Marker};
use crate::error::{Error, Result};
use crate::io::avro::{AvroIn, Retried};
use crate::io::kafka::header;
use crate::io::reader::{self, PartReader, Read, Reader};
use crate::obs::progress::Progress;

/// How long a replay waits for a schema registry that does not answer.
const REGISTRY_PATIENCE: Duration = Duration::from_secs(30);

/// What reading a Kafka range gives.
#[derive(Debug)]
pub enum Item<'a> {
    Record(Input<'a>),
    /// A watermark marker of a repartition topic (see `core::repartition`).
    Marker {
        topic: &'a str,
        partition: i32,
        offset: i64,
        marker: Marker,
    },
    /// A partition's range is done; `next` is the first offset not read.
    Done {
        topic: &'a str,
        partition: i32,
        next: i64,
    },
}

/// A record of the input: where it is, and the event or why it is not one.
#[derive(Debug)]
pub struct Input<'a> {
    pub stream: &'a str,
    /// The topic (Kafka) or the stream (a file).
    pub source: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record timestamp.
    pub timestamp: Option<i64>,
    pub event: Result<engine::Event, Reject>,
}

/// The ranges to read of `topics` (narrowed to `only`), checked against the cluster.
pub fn kafka_ranges(
    env: &Env,
    reader: &Reader,
    topics: &mut BTreeMap<String, Arc<StreamPlan>>,
    only: Option<&str>,
    from: Option<&Bound>,
    to: Option<&Bound>,
    defaults: &BTreeMap<(String, i32), i64>,
) -> Result<Vec<PartRange>> {
    if let Some(t) = only {
        if !topics.contains_key(t) {
            let read: Vec<&str> = topics.keys().map(String::as_str).collect();
            return Err(Error::usage(format!("no pattern here reads topic `{t}` (they read: {})", read.join(", "))));
        }
        topics.retain(|k, _| k == t);
    }
    let names: Vec<&str> = topics.keys().map(String::as_str).collect();
    reader::resolve(reader, &env.cfg, &names, from, to, defaults)
}

/// Reads `ranges` (partition by partition, in offset order), decoding each record through the
/// schema registry as the service does, with progress; `on` gets each record, and the end of
/// each partition's range.
pub fn read_kafka(
    env: &Env,
    reader: &Reader,
    topics: &BTreeMap<String, Arc<StreamPlan>>,
    ranges: &[PartRange],
    on: &mut dyn FnMut(Item<'_>),
) -> Result<()> {
    let mut avro = AvroIn::for_plans(&env.cfg, &env.path, topics.values())?;
    let total: i64 = ranges.iter().map(|r| r.end - r.start).sum();
    let mut progress = Progress::new("replay", "records", Some(total as u64));
    for (i, range) in ranges.iter().enumerate() {
        let plan = topics[&range.topic].clone();
        let mut reader = PartReader::new(reader, range)?;
        let mut n = 0u64;
        let next = loop {
            let m = match reader.next()? {
                Read::Done { next } => break next,
                Read::Record(m) => m,
            };
            if n % 4096 == 0 {
                progress.set_message(format!(
                    "{}/{}@{} of {}..{} (partition {} of {})",
                    range.topic,
                    range.partition,
                    m.offset(),
                    range.start,
                    range.end,
                    i + 1,
                    ranges.len()
                ));
            }
            n += 1;
            progress.inc(1);
            let mut seq = seq_of(range.partition, m.offset());
            // A repartition topic's record: a marker, or a forwarded record (its event has the
            // coordinates of the record it was forwarded from), or one the service did not write.
            let mut rejected = None;
            if plan.is_repartitioned() {
                match repartition::read(&|name| header(&m, name)) {
                    Ok(repartition::Record::Marker(marker)) => {
                        on(Item::Marker {
                            topic: &range.topic,
                            partition: range.partition,
                            offset: m.offset(),
                            marker,
                        });
                        continue;
                    }
                    Ok(repartition::Record::Data(src)) => seq = seq_of(src.partition, src.offset),
                    Err(e) => rejected = Some(Reject::new(repartition::NotRepartitioned::CODE, e.to_string())),
                }
            }
            let event = match rejected {
                Some(r) => Err(r),
                None => match avro.decode_retrying(&plan, m.payload(), seq, Some(REGISTRY_PATIENCE), &|| false)? {
                    Retried::Decoded(e) => Ok(e),
                    Retried::Rejected(r) => Err(r),
                    Retried::Cancelled => return Err(Error::failed("the replay was cancelled")),
                },
            };
            on(Item::Record(Input {
                stream: &plan.name,
                source: &range.topic,
                partition: range.partition,
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                event,
            }));
        };
        if next < range.end {
            tracing::warn!(
                topic = %range.topic, partition = range.partition, read_to = next, end = range.end,
                "the committed records end before the range does (an open transaction, or records still to come)"
            );
        }
        on(Item::Done { topic: &range.topic, partition: range.partition, next });
    }
    progress.finish();
    Ok(())
}
