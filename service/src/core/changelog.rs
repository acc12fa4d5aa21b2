//! The stored form of a partition's engine state: the records the service writes to the
//! changelog topic and to its local store (RocksDB), and the [`Backing`] through which the
//! engine reads the keys it does not hold in memory.
//!
//! # Records (state format 2)
//!
//! Every record of a partition is under its prefix `T<topic length:u16><topic><partition:u32>`
//! ([`state_prefix`]):
//!
//! | key | value | where |
//! | --- | --- | --- |
//! | `M` | the partition's meta record (below) | changelog, store |
//! | `K<pattern hash><key>` | the key's head: its snapshot (the engine's format 1, first byte 1) or the head of a split snapshot (format 2, first byte 2), or for one over [`CHUNK`] bytes a chunk header `0xC1 parts:u32 length:u64` | changelog, store |
//! | `K<pattern hash>C<part:u32><key>` | part `part` of a chunked head | changelog, store |
//! | `K<pattern hash>S<key length:u32><key><sub-key>` | one of the other records of a split snapshot (an event's values, a shared-buffer event with its nodes: see the engine's `runtime::split`), framed: `0` then the value, or a chunk header | changelog, store |
//! | `K<pattern hash>S<key length:u32><key><sub-key>0xFF<part:u32>` | part `part` of a chunked split record | changelog, store |
//! | `K<pattern hash>W<time:u64, sign bit flipped><key>` | empty: the key has a pending timer at `time` | store only |
//!
//! A key's records are written only when the key changed in the transaction; each record is at
//! most [`CHUNK`] bytes plus its key, so no key's state is too big for the changelog. A key
//! holding more than [`INLINE_EVENTS`] events is stored split: a change writes its head (timers,
//! queue, partial matches), the values of the events it did not hold before (each event's
//! once), the shared-buffer events whose references or nodes changed, and deletes what it no
//! longer holds; a smaller key is one record (cheaper than several). The timer records (`W`)
//! index the stored keys by their pending timers, so that a key whose state is not
//! in memory costs no memory and still fires on time; they are derived from the snapshots (a
//! restore from the changelog writes them again); those behind the watermark are never read
//! again and every 64th commit of a partition deletes them. A stale `W` record (the key changed
//! since) is skipped, or makes the engine read the key once more.
//!
//! Meta record, format 2 (all integers big-endian):
//! `2 position:i64 newest event time:i64 consumed processed late dead-lettered alerts
//! timeouts:u64 set:(u16 length, UTF-8) patterns:u16 (hash:16 bytes keys:u64 partial
//! matches:u64)*`. It names the pattern set the partition ran and, per pattern, how many keys
//! hold state (a restore from the local store reads no key). Format 3 is format 2 followed by
//! the pattern versions that are draining (replaced, finishing their partial matches; see
//! `Partition::with_plan`): `draining:u16 (hash:16 bytes from seq:u64 horizon:i64)*`; their
//! counts are in the list before. Format 4 adds to each pattern of that list the key buckets on
//! which its alerts are live (`from:u16 to:u16`, see `plan::LiveKeys`: a canary deployment).
//! Format 5 adds to each draining version the lanes of its drain (`lanes:u16 (lane:u16
//! seq:u64)*`, see `engine::runtime::After`; none: `from seq` is the drain's) and ends with
//! the state of a repartition topic's partition: `0`, or `1 partitions:u16 watermark:i64
//! marks:u16 (partition:u16 watermark:i64 idle:u8)* reads:u16 (partition:u16 offset:i64)*`
//! (see `repartition::Upstreams`). Format 1 (written before keys were stored out of memory: no
//! set, no per-pattern counts, no timer records) is still read from the changelog; a local
//! store in format 1 is restored from the changelog instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use engine::runtime::{snapshot_summary, After, Backing, Drain, Key, KeyRecords, Operator, SnapshotError};

use super::partition::{Counts, Draining, Partition, Resolve, StoredVersion};
use super::plan::LiveKeys;
use super::repartition::Upstreams;
use super::stored::Stored;
pub use super::stored::{StateError, StoredState, INLINE_EVENTS};

/// The largest stored value: a snapshot over it is written in parts of this size (Kafka's
/// default `message.max.bytes` is about 1 MB).
pub const CHUNK: usize = 256 * 1024;

/// What a transaction changes in the stored state.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// For the changelog and the store (`None` deletes).
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// For the store only: the timer records.
    pub local: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Key ranges `[from, to)` to delete from the store (timer records the watermark passed).
    pub delete_ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.local.is_empty() && self.delete_ranges.is_empty()
    }
}

/// One pattern's keys in the store, for the engine ([`Backing`]).
#[derive(Debug)]
struct KeyReader {
    stored: Stored,
    /// `<partition prefix>K<hash>`.
    prefix: Vec<u8>,
    hash: String,
    pattern: String,
}

impl Backing for KeyReader {
    fn load(&mut self, key: &Key, out: &mut Vec<u8>) -> bool {
        let mut k = self.prefix.clone();
        key.encode(&mut k);
        let value = match self.stored.raw.get(&k) {
            Ok(Some(v)) => v,
            Ok(None) => return false,
            Err(e) => {
                self.stored.fail(e);
                return false;
            }
        };
        let get = |k: &[u8]| self.stored.raw.get(k);
        match assemble(&self.prefix, key, value, get, out) {
            Ok(Some(parts)) => {
                self.stored
                    .chunked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((self.hash.clone(), key.clone(), Vec::new()), parts);
                true
            }
            Ok(None) => true,
            Err(e) => {
                self.stored.fail(e);
                false
            }
        }
    }

    /// The key's records were written before it left memory: eviction waits for the store's
    /// queued writes, so the range read sees them.
    fn records(&mut self, key: &Key, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        let from = sub_prefix(&self.prefix, key);
        let mut to = from.clone();
        to.push(0xff);
        let mut raw: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let result = self.stored.raw.scan(&from, &to, &mut |k, v| {
            raw.push((k[from.len()..].to_vec(), v.to_vec()));
            true
        });
        if let Err(e) = result {
            self.stored.fail(e);
            return;
        }
        let mut chunked = Vec::new();
        if unframe(raw, out, &mut chunked).is_none() {
            self.stored.fail(StateError::CorruptSplit(key.to_string()));
            out.clear();
            return;
        }
        if !chunked.is_empty() {
            let mut map = self.stored.chunked.lock().unwrap_or_else(|p| p.into_inner());
            for (sub, parts) in chunked {
                map.insert((self.hash.clone(), key.clone(), sub), parts);
            }
        }
    }

    fn due(
        &mut self,
        after: i64,
        until: i64,
        limit: usize,
        in_memory: &dyn Fn(&Key) -> bool,
        out: &mut Vec<(i64, Key)>,
    ) -> Option<i64> {
        if after == i64::MAX {
            return None;
        }
        let mut from = self.prefix.clone();
        from.push(TIMER);
        let mut to = self.prefix.clone();
        to.push(TIMER + 1);
        from.extend_from_slice(&time_bytes(after.saturating_add(1)));
        let skip = self.prefix.len() + 1;
        let (mut bad, mut next) = (None, None);
        // Past `until`, records of keys in memory are skipped (their timers are in memory), up
        // to this many: then the next time is a lower bound, and the operator asks again there.
        let mut skips = 256;
        let result = self.stored.raw.scan(&from, &to, &mut |k, _| {
            let Some((t, key)) = k.get(skip..).and_then(|rest| {
                let (t, key) = rest.split_at_checked(8)?;
                Some((time_of(t)?, Key::decode(key).ok()?))
            }) else {
                bad = Some(StateError::CorruptTimer);
                return false;
            };
            if out.len() >= limit && out.last().is_some_and(|(last, _)| *last != t) {
                next = Some(t);
                return false;
            }
            if t > until {
                if skips > 0 && in_memory(&key) {
                    skips -= 1;
                    return true;
                }
                next = Some(t);
                return false;
            }
            out.push((t, key));
            true
        });
        if let Some(e) = bad.or(result.err()) {
            self.stored.fail(e);
            // Asked again next time.
            return Some(i64::MIN);
        }
        next
    }

    fn corrupt(&mut self, key: &Key, error: SnapshotError) {
        self.stored.fail(StateError::Snapshot { pattern: format!("{} (key {key})", self.pattern), error });
    }
}

/// A stored key's snapshot from its record `value` (reading the parts of a chunked one with
/// `get`), appended to `out`; returns the number of parts of a chunked one.
fn assemble(
    prefix: &[u8],
    key: &Key,
    value: Vec<u8>,
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, StateError>,
    out: &mut Vec<u8>,
) -> Result<Option<u32>, StateError> {
    if value.first() != Some(&CHUNKED) {
        out.extend_from_slice(&value);
        return Ok(None);
    }
    let (parts, len) = match (value.get(1..5), value.get(5..13)) {
        (Some(p), Some(l)) if value.len() == 13 => {
            (u32::from_be_bytes(p.try_into().unwrap_or_default()), u64::from_be_bytes(l.try_into().unwrap_or_default()))
        }
        _ => return Err(StateError::CorruptChunk(key.to_string())),
    };
    let start = out.len();
    for i in 0..parts {
        let part = get(&part_key(prefix, i, key))?.ok_or_else(|| StateError::CorruptChunk(key.to_string()))?;
        out.extend_from_slice(&part);
    }
    if (out.len() - start) as u64 != len {
        return Err(StateError::CorruptChunk(key.to_string()));
    }
    Ok(Some(parts))
}

/// `<pattern prefix>C<i><key>`.
fn part_key(pattern_prefix: &[u8], i: u32, key: &Key) -> Vec<u8> {
    let mut k = pattern_prefix.to_vec();
    k.push(PART);
    k.extend_from_slice(&i.to_be_bytes());
    key.encode(&mut k);
    k
}

/// `<pattern prefix>S<key length:u32><key>`: the prefix of the other records of a key stored
/// as a split snapshot.
fn sub_prefix(pattern_prefix: &[u8], key: &Key) -> Vec<u8> {
    let mut k = pattern_prefix.to_vec();
    k.push(SUB);
    let at = k.len();
    k.extend_from_slice(&[0; 4]);
    key.encode(&mut k);
    let len = (k.len() - at - 4) as u32;
    k[at..at + 4].copy_from_slice(&len.to_be_bytes());
    k
}

/// `<pattern prefix>S<key length:u32><key><sub-key>`: one record of a split snapshot.
fn sub_key(pattern_prefix: &[u8], key: &Key, sub: &[u8]) -> Vec<u8> {
    let mut k = sub_prefix(pattern_prefix, key);
    k.extend_from_slice(sub);
    k
}

/// The values of a key's split records as stored (framed, big ones in parts; ascending by
/// sub-key), unframed into `out`; the parts of each chunked one into `chunked`. `None` when
/// they are not well framed.
fn unframe(
    raw: Vec<(Vec<u8>, Vec<u8>)>,
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    chunked: &mut Vec<(Vec<u8>, u32)>,
) -> Option<()> {
    let mut records = raw.into_iter();
    while let Some((sub, v)) = records.next() {
        match v.split_first()? {
            (&WHOLE, value) => out.push((sub, value.to_vec())),
            (&CHUNKED, header) if header.len() == 12 => {
                let parts = u32::from_be_bytes(header[..4].try_into().ok()?);
                let len = u64::from_be_bytes(header[4..].try_into().ok()?);
                let mut value = Vec::with_capacity(usize::try_from(len).ok()?.min(1 << 30));
                for i in 0..parts {
                    let (k, part) = records.next()?;
                    if k != sub_part(&sub, i) {
                        return None;
                    }
                    value.extend_from_slice(&part);
                }
                if value.len() as u64 != len {
                    return None;
                }
                chunked.push((sub.clone(), parts));
                out.push((sub, value));
            }
            _ => return None,
        }
    }
    Some(())
}

/// The sub-key of part `i` of a chunked split record: after the record's own, so that a range
/// read of the key's records returns each part right after its header.
fn sub_part(sub: &[u8], i: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(sub.len() + 5);
    k.extend_from_slice(sub);
    k.push(0xff);
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// Appends the records that store `value` under `key`: the value whole, or (over [`CHUNK`]) a
/// chunk header there and its parts under `part_key(i)`; then tombstones for the parts of
/// `had_parts` it no longer uses. `framed` prefixes a whole value with [`WHOLE`] (split
/// records, whose values may begin with any byte; a head begins with its format). Returns the
/// number of parts (0: whole).
fn put_value(
    out: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    key: Vec<u8>,
    value: Option<&[u8]>,
    framed: bool,
    had_parts: u32,
    part_key: impl Fn(u32) -> Vec<u8>,
) -> u32 {
    let mut parts: u32 = 0;
    match value {
        None => out.push((key, None)),
        Some(v) if v.len() < CHUNK => {
            let mut whole = Vec::with_capacity(v.len() + 1);
            if framed {
                whole.push(WHOLE);
            }
            whole.extend_from_slice(v);
            out.push((key, Some(whole)));
        }
        Some(v) => {
            for (i, part) in v.chunks(CHUNK).enumerate() {
                out.push((part_key(i as u32), Some(part.to_vec())));
                parts += 1;
            }
            let mut header = vec![CHUNKED];
            header.extend_from_slice(&parts.to_be_bytes());
            header.extend_from_slice(&(v.len() as u64).to_be_bytes());
            out.push((key, Some(header)));
        }
    }
    for i in parts..had_parts {
        out.push((part_key(i), None));
    }
    parts
}

/// A time as 8 bytes that sort as the times do.
fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_of(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// What opening a partition's stored state found.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreSummary {
    /// Whether the partition's meta record was there (else the partition is new).
    pub meta: bool,
    /// Keys holding state, over the patterns that run.
    pub keys: u64,
    /// Patterns whose state is stored but which no longer run (another content hash).
    pub stale: u64,
}

/// The meta record, decoded.
struct Meta {
    next_offset: i64,
    max_ts: i64,
    counts: Counts,
    set: String,
    /// Per pattern hash: keys and partial matches.
    patterns: Vec<(String, u64, u64)>,
    /// Per pattern (parallel to `patterns`), the keys on which its alerts are live (format 4).
    live: Vec<LiveKeys>,
    /// The draining pattern versions (format 3).
    draining: Vec<(String, Drain)>,
    /// A repartition topic's partition: the source partitions' watermarks (format 5).
    upstreams: Option<Upstreams>,
}

impl Partition {
    /// Keeps the partition's key states in `raw` (the local store at the last commit), which
    /// holds its records in format 2: reads the meta record (position, counts, the keys per
    /// pattern) and nothing else; keys are read when they are needed. Fails on a meta record
    /// of another format (restore from the changelog then, [`Partition::index`]).
    pub fn open(&mut self, raw: Arc<dyn StoredState>, resolve: Resolve<'_>) -> Result<RestoreSummary, StateError> {
        let mut summary = RestoreSummary::default();
        let meta = match raw.get(&self.meta_key())? {
            Some(v) => {
                if !is_current(&v) {
                    return Err(StateError::OldStore);
                }
                Some(decode_meta(&v)?)
            }
            None => None,
        };
        let stored = Stored { raw, chunked: Arc::default(), error: Arc::default() };
        let mut per_pattern: HashMap<String, (u64, u64)> = HashMap::new();
        let mut others = Vec::new();
        if let Some(meta) = meta {
            summary.meta = true;
            others = self.take_meta(meta, &mut per_pattern);
        }
        let wm = self.watermark();
        for op in &mut self.operators {
            let (keys, partials) = per_pattern.remove(&op.nfa().meta.hash).unwrap_or_default();
            summary.keys += keys;
            attach(&stored, &self.plan.topic, self.partition, op, keys as usize, partials as usize);
            op.set_watermark(wm);
        }
        let held = others.iter().filter(|v| v.keys > 0).count() as u64;
        for (mut op, keys, partials, live) in self.restore_draining(others, resolve) {
            summary.keys += keys;
            attach(&stored, &self.plan.topic, self.partition, &mut op, keys as usize, partials as usize);
            self.draining.push(Draining::new(op, live));
        }
        summary.stale = held - self.draining.len() as u64;
        self.stored = Some(stored);
        Ok(summary)
    }

    /// Takes the position, counts and set of a decoded meta record; per pattern of the plan its
    /// keys and partial matches go into `live`; returns the other stored versions (keys,
    /// partial matches, and the drain of those that were draining).
    fn take_meta(&mut self, meta: Meta, live: &mut HashMap<String, (u64, u64)>) -> Vec<StoredVersion> {
        self.next_offset = meta.next_offset;
        self.max_ts = meta.max_ts;
        if let (Some(u), Some(stored)) = (&mut self.upstreams, meta.upstreams) {
            *u = stored;
        }
        self.counts = meta.counts;
        if self.set.is_empty() {
            self.set = meta.set;
        }
        let mut others = Vec::new();
        for (i, (hash, keys, partials)) in meta.patterns.into_iter().enumerate() {
            if self.operators.iter().any(|o| o.nfa().meta.hash == hash) {
                live.insert(hash, (keys, partials));
            } else {
                let drain = meta.draining.iter().find(|(h, _)| *h == hash).map(|(_, d)| d.clone());
                let live = meta.live.get(i).copied().unwrap_or(LiveKeys::ALL);
                others.push(StoredVersion { hash, keys, partials, drain, live });
            }
        }
        others
    }

    /// Checks a partition's records as read from the changelog (latest value per key, key
    /// order; either format) and returns what the local store must hold for them: the same
    /// records with the meta record in format 2 (per-pattern counts, the set) and the timer
    /// records. Then [`Partition::open`] the store. Records of patterns that no longer run are
    /// kept as they are and counted as stale.
    pub fn index(
        &mut self,
        records: &[(Vec<u8>, Vec<u8>)],
        resolve: Resolve<'_>,
    ) -> Result<(StateRecords, RestoreSummary), StateError> {
        let prefix = state_prefix(&self.plan.topic, self.partition);
        let mut summary = RestoreSummary::default();
        let mut out = Vec::with_capacity(records.len() * 2);
        // The meta record first: it says which versions drain.
        let meta_key = self.meta_key();
        if let Ok(i) = records.binary_search_by(|(k, _)| k.as_slice().cmp(&meta_key)) {
            let meta = decode_meta(&records[i].1)?;
            let others = self.take_meta(meta, &mut HashMap::new());
            summary.meta = true;
            for (op, _, _, live) in self.restore_draining(others, resolve) {
                self.draining.push(Draining::new(op, live));
            }
        }
        let ops: Vec<&Operator> = self.all_operators().collect();
        let mut counts: HashMap<&str, (u64, u64)> = ops.iter().map(|o| (o.nfa().meta.hash.as_str(), (0, 0))).collect();
        let mut stale: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        let get = |k: &[u8]| -> Result<Option<Vec<u8>>, StateError> {
            Ok(records.binary_search_by(|(rk, _)| rk.as_slice().cmp(k)).ok().map(|i| records[i].1.clone()))
        };
        let mut bytes = Vec::new();
        for (k, v) in records {
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                return Err(StateError::OtherPartition);
            };
            match rest.split_first() {
                Some((&KIND_META, [])) => continue,
                Some((&KIND_KEY, rest)) if rest.len() > HASH_LEN => {
                    let (hash, key) = rest.split_at(HASH_LEN);
                    out.push((k.clone(), v.clone()));
                    if key.first() == Some(&PART) || key.first() == Some(&SUB) {
                        continue;
                    }
                    if key.first() == Some(&TIMER) {
                        return Err(StateError::UnknownKind);
                    }
                    let Some(op) = ops.iter().find(|o| o.nfa().meta.hash.as_bytes() == hash) else {
                        stale.insert(hash.to_vec());
                        continue;
                    };
                    let key = Key::decode(key).map_err(StateError::Key)?;
                    let pattern_prefix = &k[..prefix.len() + 1 + HASH_LEN];
                    bytes.clear();
                    assemble(pattern_prefix, &key, v.clone(), get, &mut bytes)?;
                    let (timers, partials, has_state) = snapshot_summary(op.nfa(), &bytes).map_err(|error| {
                        StateError::Snapshot { pattern: format!("{} (key {key})", op.nfa().meta.name), error }
                    })?;
                    if has_state {
                        let c = counts.entry(op.nfa().meta.hash.as_str()).or_default();
                        c.0 += 1;
                        c.1 += partials as u64;
                        summary.keys += 1;
                    }
                    for t in timers {
                        let mut tk = pattern_prefix.to_vec();
                        tk.push(TIMER);
                        tk.extend_from_slice(&time_bytes(t));
                        key.encode(&mut tk);
                        out.push((tk, Vec::new()));
                    }
                }
                _ => return Err(StateError::UnknownKind),
            }
        }
        summary.stale = stale.len() as u64;
        let patterns: Vec<(String, u64, u64)> = ops
            .iter()
            .map(|o| {
                let (keys, partials) = counts.get(o.nfa().meta.hash.as_str()).copied().unwrap_or_default();
                (o.nfa().meta.hash.clone(), keys, partials)
            })
            .collect();
        drop(ops);
        if summary.meta || !out.is_empty() {
            out.push((meta_key, self.encode_meta(&patterns)));
        }
        // The draining versions are made again when the store is opened.
        self.draining.clear();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok((out, summary))
    }

    /// The changes since the last call: per changed (pattern, key) its snapshot (in parts when
    /// big) or a tombstone, and its timer records; the timer records the watermark passed; the
    /// partition's meta record.
    pub fn take_changes(&mut self, out: &mut Changes) {
        let prefix = state_prefix(&self.plan.topic, self.partition);
        let chunked = self.stored.as_ref().map(|s| s.chunked.clone()).unwrap_or_default();
        let mut chunked = chunked.lock().unwrap_or_else(|p| p.into_inner());
        self.commits += 1;
        let gc = self.commits % TIMER_GC_EVERY == 0;
        let stored = self.stored.is_some();
        for op in self.operators.iter_mut().chain(self.draining.iter_mut().map(|d| &mut d.op)) {
            write_changes(op, &prefix, &mut chunked, stored, gc, out);
        }
        // Versions done draining go (their keys' tombstones are written above), and with them
        // what the local store holds of them (timer records).
        for d in self.draining.iter().filter(|d| d.op.drained()) {
            self.gone.push(d.op.nfa().meta.hash.clone());
        }
        self.draining.retain(|d| !d.op.drained());
        let gone = std::mem::take(&mut self.gone);
        if let Some(st) = &self.stored {
            for hash in gone {
                self.forget(st, &hash, out);
            }
        }
        let patterns: Vec<(String, u64, u64)> = self
            .all_operators()
            .map(|op| (op.nfa().meta.hash.clone(), op.active_keys() as u64, op.active_partial_matches() as u64))
            .collect();
        out.records.push((self.meta_key(), Some(self.encode_meta(&patterns))));
    }

    /// Deletes every record of pattern version `hash` (which no longer runs here): a tombstone
    /// for each of its changelog records, stored or written in `out` (keys that hold only
    /// timers are stored although they count as holding nothing), and the local range.
    fn forget(&self, st: &Stored, hash: &str, out: &mut Changes) {
        let from = pattern_prefix(&self.plan.topic, self.partition, hash);
        // Up to the prefix of the next hash.
        let mut to = from.clone();
        if let Some(last) = to.last_mut() {
            *last = last.saturating_add(1);
        }
        let mut dead: std::collections::BTreeSet<Vec<u8>> =
            out.records.iter().filter(|(k, _)| k.starts_with(&from)).map(|(k, _)| k.clone()).collect();
        let (topic, partition) = (&self.plan.topic, self.partition);
        // Records of earlier commits may still be queued for the store.
        if let Err(e) = st.raw.sync() {
            st.fail(e);
        }
        let scanned = st.raw.scan(&from, &to, &mut |k, _| {
            if in_changelog(k, topic, partition) {
                dead.insert(k.to_vec());
            }
            true
        });
        if let Err(e) = scanned {
            st.fail(e);
        }
        out.records.extend(dead.into_iter().map(|k| (k, None)));
        out.delete_ranges.push((from, to));
    }

    /// The keys on which each operator's alerts are live, in [`Partition::all_operators`] order.
    fn lives(&self) -> impl Iterator<Item = LiveKeys> + '_ {
        let plan = (0..self.operators.len()).map(|i| self.plan.live_keys.get(i).copied().unwrap_or(LiveKeys::ALL));
        plan.chain(self.draining.iter().map(|d| d.live))
    }

    fn meta_key(&self) -> Vec<u8> {
        let mut k = state_prefix(&self.plan.topic, self.partition);
        k.push(KIND_META);
        k
    }

    /// The meta record; `patterns`: per operator, in [`Partition::all_operators`] order, its
    /// content hash, keys and partial matches.
    fn encode_meta(&self, patterns: &[(String, u64, u64)]) -> Vec<u8> {
        let mut v = Vec::with_capacity(96 + self.set.len() + patterns.len() * 32);
        v.push(META_VERSION);
        for n in [self.next_offset, self.max_ts] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        let c = &self.counts;
        for n in [c.consumed, c.processed, c.late, c.dead_lettered, c.alerts, c.timeouts] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        let set = &self.set.as_bytes()[..self.set.len().min(u16::MAX as usize)];
        v.extend_from_slice(&(set.len() as u16).to_be_bytes());
        v.extend_from_slice(set);
        v.extend_from_slice(&(patterns.len() as u16).to_be_bytes());
        let hash_bytes = |v: &mut Vec<u8>, hash: &str| {
            let mut h = [b'0'; HASH_LEN];
            let hb = hash.as_bytes();
            h[..hb.len().min(HASH_LEN)].copy_from_slice(&hb[..hb.len().min(HASH_LEN)]);
            v.extend_from_slice(&h);
        };
        for ((hash, keys, partials), live) in patterns.iter().zip(self.lives()) {
            hash_bytes(&mut v, hash);
            v.extend_from_slice(&keys.to_be_bytes());
            v.extend_from_slice(&partials.to_be_bytes());
            v.extend_from_slice(&live.from.to_be_bytes());
            v.extend_from_slice(&live.to.to_be_bytes());
        }
        v.extend_from_slice(&(self.draining.len() as u16).to_be_bytes());
        let none = Drain { after: After::Seq(0), horizon: i64::MIN };
        for d in &self.draining {
            let drain = d.op.draining().unwrap_or(&none);
            hash_bytes(&mut v, &d.op.nfa().meta.hash);
            let (from_seq, lanes) = match &drain.after {
                After::Seq(s) => (*s, None),
                After::Lanes(l) => (0, Some(l)),
            };
            v.extend_from_slice(&from_seq.to_be_bytes());
            v.extend_from_slice(&drain.horizon.to_be_bytes());
            v.extend_from_slice(&(lanes.map_or(0, |l| l.len()) as u16).to_be_bytes());
            for (lane, seq) in lanes.into_iter().flat_map(|l| l.iter()) {
                v.extend_from_slice(&lane.to_be_bytes());
                v.extend_from_slice(&seq.to_be_bytes());
            }
        }
        match &self.upstreams {
            None => v.push(0),
            Some(u) => {
                v.push(1);
                v.extend_from_slice(&(u.partitions as u16).to_be_bytes());
                v.extend_from_slice(&u.watermark.to_be_bytes());
                v.extend_from_slice(&(u.marks.len() as u16).to_be_bytes());
                for (p, (wm, idle)) in &u.marks {
                    v.extend_from_slice(&(*p as u16).to_be_bytes());
                    v.extend_from_slice(&wm.to_be_bytes());
                    v.push(u8::from(*idle));
                }
                v.extend_from_slice(&(u.read.len() as u16).to_be_bytes());
                for (p, o) in &u.read {
                    v.extend_from_slice(&(*p as u16).to_be_bytes());
                    v.extend_from_slice(&o.to_be_bytes());
                }
            }
        }
        v
    }

    /// The first error reading the stored state since the last call (the transaction must not
    /// commit: what followed it may be wrong).
    pub fn take_store_error(&self) -> Option<StateError> {
        self.stored.as_ref().and_then(|s| s.error.lock().unwrap_or_else(|p| p.into_inner()).take())
    }

    /// Whether the partition's keys are kept in a store (else all are in memory).
    pub fn is_stored(&self) -> bool {
        self.stored.is_some()
    }

    /// Keys in memory, over the patterns.
    pub fn cached_keys(&self) -> usize {
        self.all_operators().map(Operator::cached_keys).sum()
    }

    /// Drops unchanged keys from memory (their state is in the store) until about `keep` are
    /// left, each pattern keeping its share; returns how many went.
    pub fn evict(&mut self, keep: usize) -> usize {
        let total = self.cached_keys();
        if total <= keep || self.stored.is_none() {
            return 0;
        }
        let mut gone = 0;
        for op in self.operators.iter_mut().chain(self.draining.iter_mut().map(|d| &mut d.op)) {
            let share = (op.cached_keys() as u128 * keep as u128 / total.max(1) as u128) as usize;
            gone += op.evict(share);
        }
        gone
    }

    /// Gives operators made after [`Partition::open`] (a reload's new patterns) their backing.
    pub(super) fn attach_new(&mut self, op: &mut Operator) {
        if let Some(stored) = &self.stored {
            attach(stored, &self.plan.topic, self.partition, op, 0, 0);
        }
    }
}

/// Appends the records of `op`'s changes since the last call to `out` (see
/// [`Partition::take_changes`]): per changed key its snapshot (in parts when big) or a
/// tombstone, and its timer records (`stored`: the partition keeps a local store); the timer
/// records the watermark passed when `gc`.
fn write_changes(
    op: &mut Operator,
    prefix: &[u8],
    chunked: &mut HashMap<super::stored::ChunkedRecord, u32>,
    stored: bool,
    gc: bool,
    out: &mut Changes,
) {
    let hash = op.nfa().meta.hash.clone();
    let mut pattern_prefix = prefix.to_vec();
    pattern_prefix.push(KIND_KEY);
    pattern_prefix.extend_from_slice(hash.as_bytes());
    let mut rec = KeyRecords::default();
    for key in op.take_dirty() {
        let held = op.take_key_records(&key, &mut rec);
        let mut had = |sub: &[u8]| {
            if chunked.is_empty() {
                0
            } else {
                chunked.remove(&(hash.clone(), key.clone(), sub.to_vec())).unwrap_or(0)
            }
        };
        let mut big: Vec<(Vec<u8>, u32)> = Vec::new();
        for sub in &rec.gone {
            let k = sub_key(&pattern_prefix, &key, sub);
            put_value(&mut out.records, k.clone(), None, true, had(sub), |i| sub_part(&k, i));
        }
        for (sub, bytes) in &rec.put {
            let k = sub_key(&pattern_prefix, &key, sub);
            let parts = put_value(&mut out.records, k.clone(), Some(bytes), true, had(sub), |i| sub_part(&k, i));
            if parts > 0 {
                big.push((sub.clone(), parts));
            }
        }
        let mut k = pattern_prefix.clone();
        key.encode(&mut k);
        let head = held.then_some(rec.head.as_slice());
        let parts = put_value(&mut out.records, k, head, false, had(&[]), |i| part_key(&pattern_prefix, i, &key));
        if parts > 0 {
            big.push((Vec::new(), parts));
        }
        for (sub, parts) in big {
            chunked.insert((hash.clone(), key.clone(), sub), parts);
        }
        if stored {
            for t in op.key_timers(&key) {
                let mut tk = pattern_prefix.clone();
                tk.push(TIMER);
                tk.extend_from_slice(&time_bytes(t));
                key.encode(&mut tk);
                out.local.push((tk, Some(Vec::new())));
            }
        }
    }
    // Timer records behind the watermark are never read again (they are only garbage):
    // they go every `TIMER_GC_EVERY` commits, so that few range deletes pile up.
    let wm = op.watermark();
    if stored && gc && wm > i64::MIN && wm < i64::MAX {
        let mut from = pattern_prefix.clone();
        from.push(TIMER);
        let mut to = from.clone();
        to.extend_from_slice(&time_bytes(wm + 1));
        out.delete_ranges.push((from, to));
    }
}

/// Gives `op` its backing in `stored`.
fn attach(stored: &Stored, topic: &str, partition: i32, op: &mut Operator, keys: usize, partials: usize) {
    let hash = op.nfa().meta.hash.clone();
    let reader = KeyReader {
        stored: stored.clone(),
        prefix: pattern_prefix(topic, partition, &hash),
        pattern: op.nfa().meta.name.clone(),
        hash,
    };
    op.set_backing(Box::new(reader), keys, partials);
}

fn decode_meta(v: &[u8]) -> Result<Meta, StateError> {
    let (&version, rest) = v.split_first().ok_or(StateError::CorruptMeta)?;
    if !(1..=META_VERSION).contains(&version) {
        return Err(StateError::MetaVersion(version));
    }
    if rest.len() < 64 || (version == 1 && rest.len() != 64) {
        return Err(StateError::CorruptMeta);
    }
    let n = |i: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        b.copy_from_slice(&rest[i * 8..i * 8 + 8]);
        b
    };
    let u = |i| u64::from_be_bytes(n(i));
    let mut meta = Meta {
        next_offset: i64::from_be_bytes(n(0)),
        max_ts: i64::from_be_bytes(n(1)),
        counts: Counts {
            consumed: u(2),
            processed: u(3),
            late: u(4),
            dead_lettered: u(5),
            alerts: u(6),
            timeouts: u(7),
        },
        set: String::new(),
        patterns: Vec::new(),
        live: Vec::new(),
        draining: Vec::new(),
        upstreams: None,
    };
    if version == 1 {
        return Ok(meta);
    }
    let mut r = &rest[64..];
    let mut take = |n: usize| -> Result<&[u8], StateError> {
        if r.len() < n {
            return Err(StateError::CorruptMeta);
        }
        let (a, b) = r.split_at(n);
        r = b;
        Ok(a)
    };
    let len = u16::from_be_bytes(take(2)?.try_into().unwrap_or_default()) as usize;
    meta.set = String::from_utf8(take(len)?.to_vec()).map_err(|_| StateError::CorruptMeta)?;
    let n = u16::from_be_bytes(take(2)?.try_into().unwrap_or_default());
    for _ in 0..n {
        let hash = String::from_utf8(take(HASH_LEN)?.to_vec()).map_err(|_| StateError::CorruptMeta)?;
        let keys = u64::from_be_bytes(take(8)?.try_into().unwrap_or_default());
        let partials = u64::from_be_bytes(take(8)?.try_into().unwrap_or_default());
        meta.patterns.push((hash, keys, partials));
        meta.live.push(if version >= 4 {
            let from = u16::from_be_bytes(take(2)?.try_into().unwrap_or_default());
            let to = u16::from_be_bytes(take(2)?.try_into().unwrap_or_default());
            LiveKeys { from, to }
        } else {
            LiveKeys::ALL
        });
    }
    if version >= 3 {
        let n = u16::from_be_bytes(take(2)?.try_into().unwrap_or_default());
        for _ in 0..n {
            let hash = String::from_utf8(take(HASH_LEN)?.to_vec()).map_err(|_| StateError::CorruptMeta)?;
            let from_seq = u64::from_be_bytes(take(8)?.try_into().unwrap_or_default());
            let horizon = i64::from_be_bytes(take(8)?.try_into().unwrap_or_default());
            let lanes = if version >= 5 { u16::from_be_bytes(take(2)?.try_into().unwrap_or_default()) } else { 0 };
            let mut after = After::Seq(from_seq);
            if lanes > 0 {
                let mut map = BTreeMap::new();
                for _ in 0..lanes {
                    let lane = u16::from_be_bytes(take(2)?.try_into().unwrap_or_default());
                    map.insert(lane, u64::from_be_bytes(take(8)?.try_into().unwrap_or_default()));
                }
                after = After::Lanes(Arc::new(map));
            }
            meta.draining.push((hash, Drain { after, horizon }));
        }
    }
    if version >= 5 && take(1)?[0] == 1 {
        let u16_of = |b: &[u8]| u16::from_be_bytes(b.try_into().unwrap_or_default());
        let i64_of = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or_default());
        let mut u = Upstreams::new();
        u.partitions = i32::from(u16_of(take(2)?));
        u.watermark = i64_of(take(8)?);
        for _ in 0..u16_of(take(2)?) {
            let p = i32::from(u16_of(take(2)?));
            let wm = i64_of(take(8)?);
            let idle = take(1)?[0] == 1;
            u.marks.insert(p, (wm, idle));
        }
        for _ in 0..u16_of(take(2)?) {
            let p = i32::from(u16_of(take(2)?));
            u.read.insert(p, i64_of(take(8)?));
        }
        meta.upstreams = Some(u);
    }
    if !take(0)?.is_empty() || !r.is_empty() {
        return Err(StateError::CorruptMeta);
    }
    Ok(meta)
}

/// The position (offset of the next record) in a partition's meta record, and whether the
/// record is in the current format (a local store in an older one is restored from the
/// changelog); `None` when the record is not one.
pub fn meta_position(meta: &[u8]) -> Option<(i64, bool)> {
    let bytes: [u8; 8] = meta.get(1..9)?.try_into().ok()?;
    let version = *meta.first()?;
    (1..=META_VERSION).contains(&version).then(|| (i64::from_be_bytes(bytes), is_current(meta)))
}

/// Whether a local store with this meta record can be opened as it is (formats 2 and 3; one in
/// format 1 is restored from the changelog).
fn is_current(meta: &[u8]) -> bool {
    matches!(meta.first(), Some(2..=META_VERSION))
}

/// The key of a partition's meta record.
pub fn meta_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = state_prefix(topic, partition);
    k.push(KIND_META);
    k
}

/// Whether a stored record is one of the changelog's (not a timer record of the local store).
pub fn in_changelog(key: &[u8], topic: &str, partition: i32) -> bool {
    let at = state_prefix(topic, partition).len() + 1 + HASH_LEN;
    !(key.get(at - HASH_LEN - 1) == Some(&KIND_KEY) && key.get(at) == Some(&TIMER))
}

/// A partition's state records as (key, value), the latest value of each key.
pub type StateRecords = Vec<(Vec<u8>, Vec<u8>)>;

const META_VERSION: u8 = 5;
/// Commits of a partition between two deletions of its passed timer records.
const TIMER_GC_EVERY: u64 = 64;
const KIND_META: u8 = b'M';
const KIND_KEY: u8 = b'K';
/// After the pattern hash: a part of a chunked snapshot.
const PART: u8 = b'C';
/// After the pattern hash: one of the records of a key's split snapshot besides its head.
const SUB: u8 = b'S';
/// After the pattern hash: a timer record.
const TIMER: u8 = b'W';
/// The first byte of a chunk header (a snapshot's first byte is its format, 1 or 2).
const CHUNKED: u8 = 0xC1;
/// The first byte of a split record stored whole (its value follows).
const WHOLE: u8 = 0;
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

/// A [`StoredState`] in memory (for tests, and for checking a store against the changelog).
#[derive(Debug, Default)]
pub struct MemoryState(pub Mutex<BTreeMap<Vec<u8>, Vec<u8>>>);

impl MemoryState {
    /// Applies changes as the store does.
    pub fn apply(&self, changes: &Changes) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (from, to) in &changes.delete_ranges {
            let gone: Vec<Vec<u8>> = m.range(from.clone()..to.clone()).map(|(k, _)| k.clone()).collect();
            for k in gone {
                m.remove(&k);
            }
        }
        for (k, v) in changes.records.iter().chain(&changes.local) {
            match v {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
    }
}

impl StoredState for MemoryState {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned())
    }
    fn scan(&self, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StateError> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in m.range(from.to_vec()..to.to_vec()) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_position_is_read_from_the_meta_record() {
        let mut meta = vec![META_VERSION];
        meta.extend_from_slice(&42i64.to_be_bytes());
        meta.extend_from_slice(&[0; 56]);
        assert_eq!(meta_position(&meta), Some((42, true)));
        meta[0] = 1;
        assert_eq!(meta_position(&meta), Some((42, false)), "format 1: restored from the changelog");
        meta[0] = 7;
        assert_eq!(meta_position(&meta), None);
    }

    #[test]
    fn state_prefixes_never_overlap() {
        // One topic's prefix is never a prefix of another partition's (or topic's) records.
        let a = state_prefix("pay", 1);
        for (t, p) in [("pay", 10), ("pay", 256), ("payments", 1), ("pa", 1)] {
            assert!(!state_prefix(t, p).starts_with(&a), "{t}/{p}");
        }
    }

    #[test]
    fn timer_records_sort_by_time() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for w in times.windows(2) {
            assert!(time_bytes(w[0]) < time_bytes(w[1]));
            assert_eq!(time_of(&time_bytes(w[0])), Some(w[0]));
        }
    }
}
