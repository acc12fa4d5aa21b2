//! Repartitioning, as Kafka Streams does it: a pattern keyed by another field than its stream's
//! partitioning key (`streams.<name>.key`) reads a repartition topic,
//! `<group>.<stream>.by-<field>`, instead of the stream's topic. The service writes it while it
//! reads the stream, inside the transaction that consumes the records, so every record reaches
//! it exactly once:
//!
//! - **data records**: the original record's key-field value as the key, its bytes as the value,
//!   its coordinates in headers (`tripline.source.topic`, `.partition`, `.offset`,
//!   `.timestamp`), in the partition [`partition_of`] the key; an event read there has the
//!   coordinates of its source record (alert ids name the source records);
//! - **watermark markers**: after each transaction, every source partition that advanced
//!   writes its watermark to every partition of the repartition topic ([`Marker`]), after the
//!   records it forwarded in that transaction; a source partition with no record for
//!   `idle_timeout` writes an idle marker.
//!
//! A repartition partition's watermark ([`Upstreams`]) is the minimum over the source
//! partitions' latest markers, idle ones left out (when all are idle, the maximum of them); it
//! never goes back. An event at or behind it is late. Its input is the repartition topic
//! alone, markers included, so a replay that reads it gives the service's bytes.

use std::collections::BTreeMap;

/// The repartition topic of `stream` by `field` for consumer group `group`: characters a topic
/// name cannot hold (`[a-zA-Z0-9._-]`) become `_`.
pub fn topic_name(group: &str, stream: &str, field: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
    };
    format!("{}.{}.by-{}", clean(group), clean(stream), clean(field))
}

/// The repartition partition of a key (its text) among `partitions`: the first 8 bytes of the
/// SHA-256 of the text, big-endian, modulo `partitions`. The same on every instance.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) % partitions.max(1) as u64) as i32
}

/// Header names of repartition records.
pub mod headers {
    pub const SOURCE_TOPIC: &str = "tripline.source.topic";
    pub const SOURCE_PARTITION: &str = "tripline.source.partition";
    pub const SOURCE_OFFSET: &str = "tripline.source.offset";
    pub const SOURCE_TIMESTAMP: &str = "tripline.source.timestamp";
    /// On a marker: `watermark`.
    pub const MARKER: &str = "tripline.marker";
    /// On a marker: the source topic's partition count.
    pub const SOURCE_PARTITIONS: &str = "tripline.source.partitions";
    pub const WATERMARK: &str = "tripline.watermark";
    /// On a marker: `true` when the source partition is idle.
    pub const IDLE: &str = "tripline.idle";
}

/// A source partition's watermark, as written to every partition of a repartition topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The source partition.
    pub from: i32,
    /// How many partitions the source topic has.
    pub partitions: i32,
    pub watermark: i64,
    /// The source partition had no record for `idle_timeout`.
    pub idle: bool,
}

impl Marker {
    /// The marker's headers (its record has no key and no value).
    pub fn headers(&self, source_topic: &str) -> Vec<(&'static str, String)> {
        vec![
            (headers::MARKER, "watermark".to_owned()),
            (headers::SOURCE_TOPIC, source_topic.to_owned()),
            (headers::SOURCE_PARTITION, self.from.to_string()),
            (headers::SOURCE_PARTITIONS, self.partitions.to_string()),
            (headers::WATERMARK, self.watermark.to_string()),
            (headers::IDLE, self.idle.to_string()),
        ]
    }
}

/// Where a repartition record came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The source record's timestamp.
    pub timestamp: Option<i64>,
}

/// What a record of a repartition topic is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Data(Source),
    Marker(Marker),
}

/// A record of a repartition topic that the service did not write: what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotRepartitioned(pub String);

impl NotRepartitioned {
    /// The dead-letter reason code of such a record.
    pub const CODE: &'static str = "not-repartitioned";
}

/// Reads a repartition record's headers (`get`: a header's value by name). A record without
/// them was not written by the service: it is rejected (it goes to the dead-letter topic).
pub fn read(get: &dyn Fn(&str) -> Option<String>) -> Result<Record, NotRepartitioned> {
    let bad = NotRepartitioned;
    let need = |name: &str| get(name).ok_or_else(|| bad(format!("no `{name}` header: not written by the service")));
    let num = |name: &str| -> Result<i64, NotRepartitioned> {
        let v = need(name)?;
        v.parse().map_err(|_| bad(format!("header `{name}` is `{v}`, not a number")))
    };
    let partition = |name: &str| -> Result<i32, NotRepartitioned> {
        let n = num(name)?;
        i32::try_from(n)
            .ok()
            .filter(|p| (0..=0xffff).contains(p))
            .ok_or_else(|| bad(format!("`{name}` {n} is no partition")))
    };
    if get(headers::MARKER).is_some() {
        return Ok(Record::Marker(Marker {
            from: partition(headers::SOURCE_PARTITION)?,
            partitions: partition(headers::SOURCE_PARTITIONS)?.max(1),
            watermark: num(headers::WATERMARK)?,
            idle: get(headers::IDLE).as_deref() == Some("true"),
        }));
    }
    let offset = num(headers::SOURCE_OFFSET)?;
    if !(0..1 << super::coords::OFFSET_BITS).contains(&offset) {
        return Err(bad(format!("`{}` {offset} is no offset", headers::SOURCE_OFFSET)));
    }
    Ok(Record::Data(Source {
        topic: need(headers::SOURCE_TOPIC)?,
        partition: partition(headers::SOURCE_PARTITION)?,
        offset,
        timestamp: get(headers::SOURCE_TIMESTAMP).and_then(|v| v.parse().ok()),
    }))
}

/// The watermark of a repartition partition: the source partitions' latest markers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstreams {
    /// The source topic's partition count, from the latest marker.
    pub partitions: i32,
    /// Per source partition that wrote a marker: its watermark and whether it is idle.
    pub marks: BTreeMap<i32, (i64, bool)>,
    /// The watermark (`i64::MIN` until every source partition wrote a marker).
    pub watermark: i64,
    /// Per source partition, the offset after the last of its records read here: where a
    /// switch of pattern set divides the records read before it from those read after
    /// ([`Upstreams::after`]).
    pub read: BTreeMap<i32, i64>,
}

impl Upstreams {
    pub fn new() -> Upstreams {
        Upstreams { partitions: 0, marks: BTreeMap::new(), watermark: i64::MIN, read: BTreeMap::new() }
    }

    /// The records read from now on, by their `seq` (see [`super::coords::seq_of`]): per source
    /// partition, those at or after its read position.
    pub fn after(&self) -> engine::runtime::After {
        let lanes = self.read.iter().map(|(&p, &o)| (p as u16, super::coords::seq_of(p, o))).collect();
        engine::runtime::After::Lanes(std::sync::Arc::new(lanes))
    }

    /// A record of source partition `partition` at `offset` was read.
    pub fn read(&mut self, partition: i32, offset: i64) {
        self.read.insert(partition, offset + 1);
    }

    /// Takes a marker; returns the watermark: the minimum over the source partitions that are
    /// not idle (one that wrote no marker yet holds it at `i64::MIN`), or, when all are idle,
    /// the maximum of theirs. It never goes back.
    pub fn mark(&mut self, m: Marker) -> i64 {
        self.partitions = m.partitions;
        self.marks.insert(m.from, (m.watermark, m.idle));
        let mut min: Option<i64> = None;
        let mut idle_max = i64::MIN;
        for p in 0..self.partitions {
            match self.marks.get(&p) {
                None => min = Some(i64::MIN),
                Some(&(wm, false)) => min = Some(min.map_or(wm, |m| m.min(wm))),
                Some(&(wm, true)) => idle_max = idle_max.max(wm),
            }
        }
        self.watermark = self.watermark.max(min.unwrap_or(idle_max));
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(from: i32, watermark: i64, idle: bool) -> Marker {
        Marker { from, partitions: 3, watermark, idle }
    }

    #[test]
    fn the_watermark_is_the_slowest_busy_source_partition_and_never_goes_back() {
        let mut u = Upstreams::new();
        assert_eq!(u.mark(marker(0, 100, false)), i64::MIN, "partitions 1 and 2 have said nothing yet");
        assert_eq!(u.mark(marker(1, 50, false)), i64::MIN);
        assert_eq!(u.mark(marker(2, 70, false)), 50);
        assert_eq!(u.mark(marker(1, 90, false)), 70);
        // An idle partition no longer holds it back.
        assert_eq!(u.mark(marker(2, 70, true)), 90);
        // When it resumes behind, the watermark stays.
        assert_eq!(u.mark(marker(2, 75, false)), 90);
        assert_eq!(u.mark(marker(2, 200, false)), 90);
        // All idle: the furthest of them.
        for p in 0..3 {
            u.mark(marker(p, [100, 90, 200][p as usize], true));
        }
        assert_eq!(u.watermark, 200);
    }

    #[test]
    fn markers_and_sources_round_trip_through_headers() {
        let m = marker(2, -5, true);
        let h = m.headers("trades");
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(read(&get), Ok(Record::Marker(m)));
        let data =
            [(headers::SOURCE_TOPIC, "trades"), (headers::SOURCE_PARTITION, "3"), (headers::SOURCE_OFFSET, "17")];
        let get = |n: &str| data.iter().find(|(k, _)| *k == n).map(|(_, v)| (*v).to_owned());
        assert_eq!(
            read(&get),
            Ok(Record::Data(Source { topic: "trades".into(), partition: 3, offset: 17, timestamp: None }))
        );
        let none = |_: &str| None;
        assert!(read(&none).is_err());
    }

    #[test]
    fn topic_names_and_partitions() {
        assert_eq!(topic_name("risk", "trades", "symbol"), "risk.trades.by-symbol");
        assert_eq!(topic_name("risk", "trades", "order/leg id"), "risk.trades.by-order_leg_id");
        let parts: std::collections::BTreeSet<i32> = (0..100).map(|i| partition_of(&format!("S{i}"), 4)).collect();
        assert_eq!(parts.len(), 4, "keys spread over every partition");
        assert_eq!(partition_of("ACME", 4), partition_of("ACME", 4));
    }
}
