//! The changelog encoding of a partition's engine state: one record per (pattern, key), keyed
//! `T<topic><partition>K<pattern hash><key>`, and the partition's meta record
//! (`...M`: position, newest event time, counts). The service writes these to the changelog
//! topic and to RocksDB; a restore reads them back.

use engine::runtime::{Key, SnapshotError};

use super::partition::{Counts, Partition};

impl Partition {
    /// The changelog records for everything that changed since the last call: one per changed
    /// (pattern, key) — its snapshot, or `None` (a tombstone) when the key holds nothing — and the
    /// partition's meta record (position, newest event time, counts).
    pub fn take_changes(&mut self, out: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        let prefix = state_prefix(&self.plan.topic, self.partition);
        for op in &mut self.operators {
            let hash = op.nfa().meta.hash.clone();
            for key in op.take_dirty() {
                let mut k = prefix.clone();
                k.push(KIND_KEY);
                k.extend_from_slice(hash.as_bytes());
                key.encode(&mut k);
                let mut v = Vec::new();
                let value = op.snapshot_key(&key, &mut v).then_some(v);
                out.push((k, value));
            }
        }
        let mut k = prefix;
        k.push(KIND_META);
        out.push((k, Some(self.encode_meta())));
    }

    fn encode_meta(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        v.push(META_VERSION);
        for n in [self.next_offset, self.max_ts] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        let c = &self.counts;
        for n in [c.consumed, c.processed, c.late, c.dead_lettered, c.alerts, c.timeouts] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v
    }

    /// Restores the partition from its state records (as [`Partition::take_changes`] wrote them,
    /// latest value per key). Records of patterns that no longer run are skipped and returned
    /// as the count of stale records.
    pub fn restore<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<RestoreSummary, StateError> {
        let prefix = state_prefix(&self.plan.topic, self.partition);
        let mut summary = RestoreSummary::default();
        for (k, v) in records {
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                return Err(StateError::OtherPartition);
            };
            match rest.split_first() {
                Some((&KIND_META, _)) => {
                    self.decode_meta(v)?;
                    summary.meta = true;
                }
                Some((&KIND_KEY, rest)) if rest.len() >= HASH_LEN => {
                    let (hash, key) = rest.split_at(HASH_LEN);
                    let Some(op) = self.operators.iter_mut().find(|o| o.nfa().meta.hash.as_bytes() == hash) else {
                        summary.stale += 1;
                        continue;
                    };
                    let key = Key::decode(key).map_err(StateError::Key)?;
                    op.restore_key(key, v)
                        .map_err(|error| StateError::Snapshot { pattern: op.nfa().meta.name.clone(), error })?;
                    summary.keys += 1;
                }
                _ => return Err(StateError::UnknownKind),
            }
        }
        let wm = self.watermark();
        for op in &mut self.operators {
            op.set_watermark(wm);
            op.take_dirty();
        }
        Ok(summary)
    }

    fn decode_meta(&mut self, v: &[u8]) -> Result<(), StateError> {
        let (&version, rest) = v.split_first().ok_or(StateError::CorruptMeta)?;
        if version != META_VERSION {
            return Err(StateError::MetaVersion(version));
        }
        if rest.len() != 64 {
            return Err(StateError::CorruptMeta);
        }
        let n = |i: usize| -> [u8; 8] {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[i * 8..i * 8 + 8]);
            b
        };
        self.next_offset = i64::from_be_bytes(n(0));
        self.max_ts = i64::from_be_bytes(n(1));
        let u = |i| u64::from_be_bytes(n(i));
        self.counts =
            Counts { consumed: u(2), processed: u(3), late: u(4), dead_lettered: u(5), alerts: u(6), timeouts: u(7) };
        Ok(())
    }
}

/// The position (offset of the next record) that a partition's state records hold, read from its
/// meta record without restoring anything; `None` when there is none (a new partition).
pub fn stored_position(topic: &str, partition: i32, records: &[(Vec<u8>, Vec<u8>)]) -> Option<i64> {
    let mut meta_key = state_prefix(topic, partition);
    meta_key.push(KIND_META);
    let (_, v) = records.iter().find(|(k, _)| *k == meta_key)?;
    let bytes: [u8; 8] = v.get(1..9)?.try_into().ok()?;
    (v.first() == Some(&META_VERSION)).then(|| i64::from_be_bytes(bytes))
}

/// A partition's state records as (key, value), the latest value of each key.
pub type StateRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// Why a partition's state records cannot be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("a state record of another partition")]
    OtherPartition,
    #[error("an unknown kind of state record")]
    UnknownKind,
    #[error("a state key: {0}")]
    Key(SnapshotError),
    #[error("the state of pattern `{pattern}`: {error}")]
    Snapshot { pattern: String, error: SnapshotError },
    #[error("a corrupt partition meta record")]
    CorruptMeta,
    #[error("partition meta record version {0}, this build reads {META_VERSION}")]
    MetaVersion(u8),
}

/// What a restore found.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreSummary {
    /// Whether the partition's meta record was there (else the partition is new).
    pub meta: bool,
    pub keys: u64,
    /// Records of patterns that no longer run (another content hash).
    pub stale: u64,
}

const META_VERSION: u8 = 1;
const KIND_META: u8 = b'M';
const KIND_KEY: u8 = b'K';
/// Pattern content hashes are 16 hex digits.
const HASH_LEN: usize = 16;

/// The prefix of the state records of one pattern (by content hash) in a partition.
pub fn pattern_prefix(topic: &str, partition: i32, hash: &str) -> Vec<u8> {
    let mut k = state_prefix(topic, partition);
    k.push(KIND_KEY);
    k.extend_from_slice(hash.as_bytes());
    k
}

/// The prefix of every state record of a partition: `T`, topic length (u16), topic, partition (u32).
pub fn state_prefix(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 8);
    k.push(b'T');
    k.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_position_is_read_from_the_meta_record() {
        let mut meta_key = state_prefix("payments", 2);
        meta_key.push(KIND_META);
        let mut meta = vec![META_VERSION];
        meta.extend_from_slice(&42i64.to_be_bytes());
        meta.extend_from_slice(&[0; 56]);
        let mut other_key = state_prefix("payments", 2);
        other_key.extend_from_slice(b"K0123456789abcdefM");
        let records = vec![(other_key, vec![1, 2, 3]), (meta_key, meta)];
        assert_eq!(stored_position("payments", 2, &records), Some(42));
        assert_eq!(stored_position("payments", 3, &records), None);
        assert_eq!(stored_position("payments", 2, &records[..1]), None);
    }

    #[test]
    fn state_prefixes_never_overlap() {
        // One topic's prefix is never a prefix of another partition's (or topic's) records.
        let a = state_prefix("pay", 1);
        for (t, p) in [("pay", 10), ("pay", 256), ("payments", 1), ("pa", 1)] {
            assert!(!state_prefix(t, p).starts_with(&a), "{t}/{p}");
        }
    }
}
