//! `tripline tail`: follows a topic's committed records (values, one per line) from the
//! beginning, with the one reader of committed records; Avro records (Avro alerts) as JSON.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::{alert_avro, kafka, reader};

/// Prints the committed records of `topic` from the beginning; stops after `max` records, or
/// when nothing new came for `idle` (if given). The number of records printed.
pub fn tail(config: Option<&Path>, topic: &str, max: Option<u64>, idle: Option<Duration>, keys: bool) -> Result<u64> {
    let (cfg, _) = super::load(config)?;
    let consumer = reader::reader(&cfg)?;
    // The topic may be about to be created (by a service starting up): wait for it a while.
    let wait = idle.unwrap_or(Duration::from_secs(30));
    let started = Instant::now();
    let parts = loop {
        if let Some(n) = kafka::partition_counts(&consumer, &[topic])?[0] {
            break n;
        }
        if started.elapsed() >= wait {
            return Err(Error::usage(format!("no topic `{topic}` (waited {wait:?})")));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).or_fail(Kind::Failed, "assignment")?;
    }
    consumer.assign(&tpl).or_fail(Kind::Failed, "cannot read the topic")?;
    // Avro records (Avro alerts, `outputs.alert_format`) are printed as JSON, read through the
    // registry when one is configured.
    let mut records = alert_avro::Records::new(kafka::registry(&cfg).ok());
    let out = std::io::stdout();
    let mut w = out.lock();
    let mut n = 0u64;
    let mut last = Instant::now();
    while !(max.is_some_and(|m| n >= m) || idle.is_some_and(|d| last.elapsed() >= d)) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                n += 1;
                if keys {
                    let k = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                    let _ = write!(w, "{}/{}\t{k}\t", m.partition(), m.offset());
                }
                let payload = m.payload().unwrap_or_default();
                match records.text(payload) {
                    Ok(text) => {
                        let _ = w.write_all(text.as_bytes());
                    }
                    Err(e) => {
                        tracing::warn!("{topic}/{}@{}: {e}", m.partition(), m.offset());
                        let _ = w.write_all(String::from_utf8_lossy(payload).as_bytes());
                    }
                }
                if w.write_all(b"\n").and_then(|()| w.flush()).is_err() {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => tracing::warn!("{e}"),
        }
    }
    Ok(n)
}
