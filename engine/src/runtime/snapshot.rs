//! Per-key snapshots of an [`Operator`](super::Operator), for a durable copy of its state (the
//! service writes one record per changed key to a compacted changelog and to RocksDB) and the
//! [`Key`] encoding such records are keyed by.
//!
//! # Guarantee
//!
//! An operator rebuilt from the snapshots of all its keys ([`Operator::restore_key`]) and its
//! watermark ([`Operator::set_watermark`]) behaves exactly like the operator they were taken
//! from: the same outputs in the same order, the same stats from then on. A snapshot holds
//! everything a key holds: the partial matches and the held-back completed matches in the exact
//! backing-array layout of their `java.util.PriorityQueue`s, every Dewey version, the shared
//! buffer with its reference counts and per-timestamp id counters, the buffered events, and the
//! key's pending timers (window timers outlive the state of a key that went idle, so a key with
//! no state but pending timers has a snapshot too). The watermark, the stats and the
//! configuration are the operator's, not a key's: the caller keeps them.
//!
//! Decoding checks everything against the pattern ([`crate::Nfa`]): the pattern's fingerprint,
//! state, variable and record-type ids, field counts, references between the parts of the shared
//! buffer (which must form an acyclic graph), heap order of the queues, canonical encodings, no
//! trailing bytes. Truncated, corrupted or foreign bytes give a [`SnapshotError`], never a panic,
//! and no allocation larger than a small multiple of the input. (There is no checksum: the
//! stores below have their own. A corrupted snapshot that still passes the checks decodes to a
//! state the operator can run, not necessarily the original one.)
//!
//! # Format (version 1)
//!
//! Integers are LEB128 varints (`v`), signed ones zigzag-encoded (`z`), always in their shortest
//! form. Times are written relative to a base time (the key's earliest buffered or taken event
//! or window timer) or to the previous time of an ascending list (`asc`: the first relative to
//! the base as `z`, the others as the `v` difference to their predecessor).
//!
//! ```text
//! snapshot  = 0x01 fingerprint:u32le base:z flags:u8 windows:asc(v count)  [state]
//! flags     = 1: the key has state, 2: the run's new_start flag
//! state     = events queue buffer partials:list(partial) completed:list(partial)
//! events    = v count, event*              each distinct Arc<Event> once, in order of first use
//! event     = seq:z(diff to previous event) ts:z(diff to previous; first: to base)
//!             kind:v fields:v value*
//! value     = 0 null | 1 false | 2 true | 3 same as this field of the previous event
//!           | 4 int:z | 5 int:z(diff to the event's ts) | 6 float:f64le | 7 float that is an
//!             integer:z | 8 string:v len, UTF-8 | 9 string seen before in this snapshot:v index
//! queue     = v buckets, (ts:asc v count, event index:v*)*        buffered events by timestamp
//! buffer    = counts:(v n, (ts:asc next id:v)*)
//!             events:(v n, (ts:asc(non-strict) id:v refs:z event index:v)*)  ascending (ts, id)
//!             nodes:(v n, node*)                                 ascending (event, variable)
//! node      = buffer event index:v(diff to previous node's) var:v refs:z v edges, edge*
//! edge      = target:v (0: none, else node index + 1; an earlier event's node) dewey refs:z
//! dewey     = v digits, digit:v*
//! partial   = state:v flags:u8 dewey [prev node index:v] [start_ts:z(to base)
//!             prev_ts:z(to start_ts)] [start event ts:z(to start_ts) id:v]
//!             flags: 1 has prev, 2 has start event, 4 start_ts = prev_ts = -1 (fresh)
//! ```
//!
//! The bytes of a snapshot are a function of the key's state alone (tables are sorted), so an
//! unchanged key gives the same bytes.
//!
//! A key holding many events is better stored in several records, so that a change writes
//! what changed rather than everything the key holds: the split snapshots of
//! [`super::split`] (format 2) use this format's parts.
//!
//! [`Operator::restore_key`]: super::Operator::restore_key
//! [`Operator::set_watermark`]: super::Operator::set_watermark

use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::buffer::{Edge, Edges, EventId, Node, NodeId, NodeRef, SharedBuffer};
use super::dewey::Dewey;
use super::operator::{Key, WindowTimers};
use super::run::{Partial, RunState};
use crate::nfa::{Nfa, StateId, TypeId, VarId};
use crate::value::{Event, Text, Value};

/// The format version, the first byte of every snapshot.
pub const FORMAT_VERSION: u8 = 1;

/// The first byte of a split snapshot's head ([`super::split`]).
pub const SPLIT_VERSION: u8 = 2;

/// Buffered events by timestamp, in arrival order (a key's queue).
pub(super) use super::queue::Queue;

/// Why bytes are not a snapshot (or a [`Key`]) this operator can restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The first byte names a format this engine does not read.
    UnsupportedVersion(u8),
    /// The snapshot was taken for another pattern, or another version of this one.
    OtherPattern,
    /// The bytes end before the snapshot does.
    Truncated,
    /// The bytes are not a valid snapshot for this pattern: what is wrong, and at which byte.
    Invalid { offset: usize, reason: &'static str },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::UnsupportedVersion(v) => {
                write!(f, "snapshot format {v} is not supported (this engine reads format {FORMAT_VERSION})")
            }
            SnapshotError::OtherPattern => {
                f.write_str("the snapshot was taken for another pattern or another version of it")
            }
            SnapshotError::Truncated => f.write_str("the snapshot is truncated"),
            SnapshotError::Invalid { offset, reason } => write!(f, "invalid snapshot at byte {offset}: {reason}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

pub(super) type Result<T> = std::result::Result<T, SnapshotError>;

pub(super) const HAS_STATE: u8 = 1;
pub(super) const NEW_START: u8 = 2;

pub(super) const P_PREV: u8 = 1;
pub(super) const P_START_ID: u8 = 2;
pub(super) const P_FRESH: u8 = 4;

const V_NULL: u8 = 0;
const V_FALSE: u8 = 1;
const V_TRUE: u8 = 2;
const V_REPEAT: u8 = 3;
const V_INT: u8 = 4;
const V_INT_TS: u8 = 5;
const V_FLOAT: u8 = 6;
const V_FLOAT_INT: u8 = 7;
const V_STR: u8 = 8;
const V_STR_REF: u8 = 9;

const K_INT: u8 = 1;
const K_STR: u8 = 2;
const K_NULL: u8 = 3;

/// 32 bits of FNV-1a over the pattern's content hash and the sizes of its tables: a snapshot
/// restores only into the pattern (and version) it was taken from.
pub(super) fn fingerprint(nfa: &Nfa) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    };
    eat(nfa.meta.hash.as_bytes());
    for n in [nfa.states.len(), nfa.vars.len(), nfa.types.len(), nfa.fields.len()] {
        eat(&(n as u64).to_le_bytes());
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Writing

pub(super) fn put_v(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

pub(super) fn put_z(out: &mut Vec<u8>, v: i64) {
    put_v(out, zigzag(v));
}

/// Bytes `put_v` writes for `v`.
fn v_len(v: u64) -> u32 {
    (64 - v.leading_zeros()).max(1).div_ceil(7)
}

/// An ascending list of times being written.
pub(super) struct Asc {
    base: i64,
    prev: Option<i64>,
}

impl Asc {
    pub(super) fn new(base: i64) -> Self {
        Asc { base, prev: None }
    }

    pub(super) fn put(&mut self, out: &mut Vec<u8>, t: i64) {
        match self.prev {
            None => put_z(out, t.wrapping_sub(self.base)),
            Some(p) => put_v(out, t.wrapping_sub(p) as u64),
        }
        self.prev = Some(t);
    }
}

pub(super) fn put_dewey(out: &mut Vec<u8>, d: &Dewey) {
    let digits = d.digits();
    put_v(out, digits.len() as u64);
    for &x in digits {
        put_v(out, u64::from(x));
    }
}

/// Same variant, same bits (unlike `==`, which says `1 == 1.0`).
fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Str(x), Value::Str(y)) => x == y,
        _ => false,
    }
}

/// `x` as an integer, if it converts back to exactly the same bits.
fn float_as_int(x: f64) -> Option<i64> {
    if x.fract() != 0.0 || x.abs() >= 9.0e15 {
        return None;
    }
    let i = x as i64;
    ((i as f64).to_bits() == x.to_bits()).then_some(i)
}

/// Writes the key's state: its run and buffered events (if it has state) and its window timers
/// (ascending).
pub(super) fn encode(
    nfa: &Nfa,
    state: Option<(&RunState, &Queue)>,
    windows: impl ExactSizeIterator<Item = i64> + Clone,
    out: &mut Vec<u8>,
) {
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&fingerprint(nfa).to_le_bytes());
    let Some((run, queue)) = state else {
        let base = windows.clone().next().unwrap_or(0);
        put_z(out, base);
        out.push(0);
        put_times(out, base, windows);
        return;
    };
    let buffer = &run.buffer;
    let mut events: Vec<(&EventId, &(i32, Arc<Event>))> = buffer.events.iter().collect();
    events.sort_unstable_by_key(|(id, _)| **id);
    let mut nodes: Vec<(NodeRef, &Node)> = buffer.nodes().collect();
    nodes.sort_unstable_by_key(|(_, n)| n.id);
    let base = [queue.keys().next().copied(), events.first().map(|(id, _)| id.ts), windows.clone().next()]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0);
    put_z(out, base);
    out.push(HAS_STATE | if run.new_start { NEW_START } else { 0 });
    put_times(out, base, windows);

    // The events, each distinct `Arc` once.
    let queued: usize = queue.events();
    let n = queued + events.len();
    out.reserve(16 + 40 * n + 24 * (nodes.len() + run.queues().0.len()));
    let mut table: Vec<&Arc<Event>> = Vec::with_capacity(n);
    let mut index: HashMap<*const Event, u32> = HashMap::with_capacity_and_hasher(n, Default::default());
    let mut queue_refs: Vec<u32> = Vec::with_capacity(queued);
    queue_refs.extend(queue.values().flatten().map(|e| intern(e, &mut table, &mut index)));
    let event_refs: Vec<u32> = events.iter().map(|(_, (_, e))| intern(e, &mut table, &mut index)).collect();
    put_v(out, table.len() as u64);
    let mut strings: HashMap<&str, u32> = HashMap::with_capacity_and_hasher(n, Default::default());
    let (mut prev_seq, mut prev_ts) = (0u64, base);
    let mut prev: Option<&Event> = None;
    for &e in &table {
        put_z(out, e.seq.wrapping_sub(prev_seq) as i64);
        put_z(out, e.ts.wrapping_sub(prev_ts));
        (prev_seq, prev_ts) = (e.seq, e.ts);
        put_v(out, u64::from(e.kind.0));
        put_v(out, e.fields.len() as u64);
        for (i, v) in e.fields.iter().enumerate() {
            let before = prev.and_then(|p| p.fields.get(i));
            put_value(out, v, before, e.ts, &mut strings);
        }
        prev = Some(e);
    }

    // The queue.
    put_v(out, queue.len() as u64);
    let mut asc = Asc::new(base);
    let mut refs = queue_refs.iter();
    for (ts, list) in queue.iter() {
        asc.put(out, ts);
        put_v(out, list.len() as u64);
        for i in refs.by_ref().take(list.len()) {
            put_v(out, u64::from(*i));
        }
    }

    // The shared buffer.
    put_v(out, buffer.counts.len() as u64);
    let mut asc = Asc::new(base);
    for (ts, next) in buffer.counts.iter() {
        asc.put(out, ts);
        put_v(out, u64::from(next));
    }
    put_v(out, events.len() as u64);
    let mut asc = Asc::new(base);
    let mut event_pos: HashMap<EventId, u32> = HashMap::with_capacity_and_hasher(events.len(), Default::default());
    for (pos, ((id, (refs, _)), table_index)) in events.iter().zip(&event_refs).enumerate() {
        asc.put(out, id.ts);
        put_v(out, u64::from(id.id));
        put_z(out, i64::from(*refs));
        put_v(out, u64::from(*table_index));
        event_pos.insert(**id, pos as u32);
    }
    put_v(out, nodes.len() as u64);
    let node_pos: HashMap<NodeRef, u32> = nodes.iter().enumerate().map(|(i, (r, _))| (*r, i as u32)).collect();
    let mut prev_event = 0u32;
    for (_, node) in &nodes {
        let id = node.id;
        // A node's event is in the buffer (the node holds a reference to it). In a state that
        // breaks this (only a corrupted one can), index 0 or a backward step fails decoding.
        let e = event_pos.get(&id.event).copied().unwrap_or(0);
        put_v(out, u64::from(e.wrapping_sub(prev_event)));
        prev_event = e;
        put_v(out, u64::from(id.var.0));
        put_z(out, i64::from(node.refs));
        put_v(out, node.edges.len() as u64);
        for edge in &node.edges {
            put_v(out, edge.target.and_then(|t| node_pos.get(&t)).map_or(0, |&i| u64::from(i) + 1));
            put_dewey(out, &edge.version);
            put_z(out, i64::from(edge.refs));
        }
    }

    // The partial matches and the completed ones held back.
    let (partial, completed) = run.queues();
    for q in [partial, completed] {
        put_v(out, q.len() as u64);
        for p in q {
            put_partial(out, p, base, &node_pos);
        }
    }
}

/// The index of `e` in the table of distinct events, added if new.
fn intern<'s>(e: &'s Arc<Event>, table: &mut Vec<&'s Arc<Event>>, index: &mut HashMap<*const Event, u32>) -> u32 {
    let next = table.len() as u32;
    let i = *index.entry(Arc::as_ptr(e)).or_insert(next);
    if i == next {
        table.push(e);
    }
    i
}

pub(super) fn put_times(out: &mut Vec<u8>, base: i64, times: impl ExactSizeIterator<Item = i64>) {
    put_v(out, times.len() as u64);
    let mut asc = Asc::new(base);
    for t in times {
        asc.put(out, t);
    }
}

pub(super) fn put_value<'a>(
    out: &mut Vec<u8>,
    v: &'a Value,
    before: Option<&Value>,
    ts: i64,
    strings: &mut HashMap<&'a str, u32>,
) {
    if matches!(v, Value::Int(_) | Value::Float(_) | Value::Str(_)) && before.is_some_and(|b| identical(b, v)) {
        out.push(V_REPEAT);
        return;
    }
    match v {
        Value::Null => out.push(V_NULL),
        Value::Bool(false) => out.push(V_FALSE),
        Value::Bool(true) => out.push(V_TRUE),
        Value::Int(i) => {
            let (plain, rel) = (zigzag(*i), zigzag(i.wrapping_sub(ts)));
            if v_len(rel) < v_len(plain) {
                out.push(V_INT_TS);
                put_v(out, rel);
            } else {
                out.push(V_INT);
                put_v(out, plain);
            }
        }
        Value::Float(x) => match float_as_int(*x) {
            Some(i) => {
                out.push(V_FLOAT_INT);
                put_z(out, i);
            }
            None => {
                out.push(V_FLOAT);
                out.extend_from_slice(&x.to_le_bytes());
            }
        },
        Value::Str(s) => {
            let next = strings.len() as u32;
            match strings.get(s.as_str()) {
                Some(&i) => {
                    out.push(V_STR_REF);
                    put_v(out, u64::from(i));
                }
                None => {
                    strings.insert(s.as_str(), next);
                    out.push(V_STR);
                    put_v(out, s.len() as u64);
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }
}

fn put_partial(out: &mut Vec<u8>, p: &Partial, base: i64, node_pos: &HashMap<NodeRef, u32>) {
    let prev = p.prev.and_then(|n| node_pos.get(&n));
    put_partial_with(out, p, base, prev.is_some(), |out| {
        if let Some(&i) = prev {
            put_v(out, u64::from(i));
        }
    });
}

/// Writes a partial match; its previous node, when `has_prev`, is `put_prev`'s to write.
pub(super) fn put_partial_with(
    out: &mut Vec<u8>,
    p: &Partial,
    base: i64,
    has_prev: bool,
    put_prev: impl FnOnce(&mut Vec<u8>),
) {
    put_v(out, u64::from(p.state.0));
    let fresh = p.start_ts == -1 && p.prev_ts == -1;
    let flags = if has_prev { P_PREV } else { 0 }
        | if p.start_id.is_some() { P_START_ID } else { 0 }
        | if fresh { P_FRESH } else { 0 };
    out.push(flags);
    put_dewey(out, &p.version);
    if has_prev {
        put_prev(out);
    }
    if !fresh {
        put_z(out, p.start_ts.wrapping_sub(base));
        put_z(out, p.prev_ts.wrapping_sub(p.start_ts));
    }
    if let Some(id) = p.start_id {
        put_z(out, id.ts.wrapping_sub(p.start_ts));
        put_v(out, u64::from(id.id));
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

pub(super) struct Reader<'a> {
    b: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }

    pub(super) fn invalid(&self, reason: &'static str) -> SnapshotError {
        SnapshotError::Invalid { offset: self.pos, reason }
    }

    pub(super) fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        let x = *self.b.get(self.pos).ok_or(SnapshotError::Truncated)?;
        self.pos += 1;
        Ok(x)
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(SnapshotError::Truncated);
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A varint in its shortest form.
    pub(super) fn v(&mut self) -> Result<u64> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                self.pos = start;
                return Err(self.invalid("integer too large"));
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    self.pos = start;
                    return Err(self.invalid("integer not in its shortest form"));
                }
                return Ok(v);
            }
        }
        self.pos = start;
        Err(self.invalid("integer too large"))
    }

    pub(super) fn z(&mut self) -> Result<i64> {
        self.v().map(unzigzag)
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32> {
        let at = self.pos;
        let v = self.v()?;
        u32::try_from(v).map_err(|_| SnapshotError::Invalid { offset: at, reason: what })
    }

    pub(super) fn i32(&mut self, what: &'static str) -> Result<i32> {
        let at = self.pos;
        let v = self.z()?;
        i32::try_from(v).map_err(|_| SnapshotError::Invalid { offset: at, reason: what })
    }

    /// An index below `n`.
    pub(super) fn index(&mut self, n: usize, what: &'static str) -> Result<usize> {
        let at = self.pos;
        let v = self.v()?;
        usize::try_from(v).ok().filter(|&i| i < n).ok_or(SnapshotError::Invalid { offset: at, reason: what })
    }

    /// A count of items that take at least `min` bytes each: never more than the bytes left allow.
    pub(super) fn count(&mut self, min: usize) -> Result<usize> {
        let v = self.v()?;
        match usize::try_from(v) {
            Ok(n) if n <= self.remaining() / min.max(1) => Ok(n),
            _ => Err(SnapshotError::Truncated),
        }
    }

    pub(super) fn finish(&self) -> Result<()> {
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err(self.invalid("bytes after the end of the snapshot"))
        }
    }
}

/// An ascending list of times being read.
pub(super) struct AscReader {
    base: i64,
    prev: Option<i64>,
    strict: bool,
}

impl AscReader {
    pub(super) fn new(base: i64, strict: bool) -> Self {
        AscReader { base, prev: None, strict }
    }

    pub(super) fn next(&mut self, r: &mut Reader<'_>) -> Result<i64> {
        let t = match self.prev {
            None => self.base.wrapping_add(r.z()?),
            Some(p) => {
                let at = r.pos;
                let d = r.v()?;
                match i64::try_from(i128::from(p) + i128::from(d)) {
                    Ok(t) if d > 0 || !self.strict => t,
                    _ => return Err(SnapshotError::Invalid { offset: at, reason: "times out of order" }),
                }
            }
        };
        self.prev = Some(t);
        Ok(t)
    }
}

pub(super) fn read_times(r: &mut Reader<'_>, base: i64) -> Result<WindowTimers> {
    let n = r.count(1)?;
    let mut asc = AscReader::new(base, true);
    let mut out = WindowTimers::with_capacity(n);
    for _ in 0..n {
        out.push_back(asc.next(r)?);
    }
    Ok(out)
}

pub(super) fn read_dewey(r: &mut Reader<'_>) -> Result<Dewey> {
    let at = r.pos;
    let n = r.count(1)?;
    if n == 0 {
        return Err(SnapshotError::Invalid { offset: at, reason: "a version without digits" });
    }
    let mut digits = smallvec::SmallVec::<[u32; 8]>::with_capacity(n);
    for _ in 0..n {
        digits.push(r.u32("version digit out of range")?);
    }
    Ok(Dewey::from_digits(&digits))
}

/// Reads one event's values (after its header).
pub(super) fn read_values(
    r: &mut Reader<'_>,
    n: usize,
    ts: i64,
    before: Option<&Event>,
    strings: &mut Vec<Text>,
) -> Result<Box<[Value]>> {
    let mut fields = Vec::with_capacity(n);
    for i in 0..n {
        let at = r.pos;
        let v = match r.u8()? {
            V_NULL => Value::Null,
            V_FALSE => Value::Bool(false),
            V_TRUE => Value::Bool(true),
            V_REPEAT => match before.and_then(|b| b.fields.get(i)) {
                Some(v @ (Value::Int(_) | Value::Float(_) | Value::Str(_))) => v.clone(),
                _ => return Err(SnapshotError::Invalid { offset: at, reason: "no previous value to repeat" }),
            },
            V_INT => Value::Int(r.z()?),
            V_INT_TS => Value::Int(ts.wrapping_add(r.z()?)),
            V_FLOAT => {
                let b = r.bytes(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Float(f64::from_le_bytes(a))
            }
            V_FLOAT_INT => {
                let i = r.z()?;
                let x = i as f64;
                if float_as_int(x) != Some(i) {
                    return Err(SnapshotError::Invalid { offset: at, reason: "float out of range" });
                }
                Value::Float(x)
            }
            V_STR => {
                let len = r.count(1)?;
                let s = std::str::from_utf8(r.bytes(len)?)
                    .map_err(|_| SnapshotError::Invalid { offset: at, reason: "text is not UTF-8" })?;
                let s = Text::new(s);
                strings.push(s.clone());
                Value::Str(s)
            }
            V_STR_REF => Value::Str(strings[r.index(strings.len(), "no such text")?].clone()),
            _ => return Err(SnapshotError::Invalid { offset: at, reason: "unknown value kind" }),
        };
        fields.push(v);
    }
    Ok(fields.into_boxed_slice())
}

fn read_partial(r: &mut Reader<'_>, nfa: &Nfa, base: i64, nodes: &[NodeRef]) -> Result<Partial> {
    let (mut p, prev) = read_partial_with(r, nfa, base, |r| Ok(nodes[r.index(nodes.len(), "no such node")?]))?;
    p.prev = prev;
    Ok(p)
}

/// Reads a partial match; its previous node, if it has one, is `read_prev`'s to read (and
/// returned apart: the partial match's `prev` is `None`).
pub(super) fn read_partial_with<P>(
    r: &mut Reader<'_>,
    nfa: &Nfa,
    base: i64,
    read_prev: impl FnOnce(&mut Reader<'_>) -> Result<P>,
) -> Result<(Partial, Option<P>)> {
    let state = StateId(r.index(nfa.states.len(), "no such state")? as u32);
    let at = r.pos;
    let flags = r.u8()?;
    if flags & !(P_PREV | P_START_ID | P_FRESH) != 0 {
        return Err(SnapshotError::Invalid { offset: at, reason: "unknown partial match flags" });
    }
    let version = read_dewey(r)?;
    let prev = if flags & P_PREV != 0 { Some(read_prev(r)?) } else { None };
    let (start_ts, prev_ts) = if flags & P_FRESH != 0 {
        (-1, -1)
    } else {
        let s = base.wrapping_add(r.z()?);
        (s, s.wrapping_add(r.z()?))
    };
    let start_id = if flags & P_START_ID != 0 {
        let ts = start_ts.wrapping_add(r.z()?);
        Some(EventId { ts, id: r.u32("event id out of range")? })
    } else {
        None
    };
    Ok((Partial { state, version, prev: None, start_ts, prev_ts, start_id, regs: None }, prev))
}

/// An event's record type and values (after its sequence number and time).
pub(super) fn read_event_body(
    r: &mut Reader<'_>,
    nfa: &Nfa,
    ts: i64,
    before: Option<&Event>,
    strings: &mut Vec<Text>,
) -> Result<(TypeId, Box<[Value]>)> {
    let kind = TypeId(r.index(nfa.types.len(), "no such record type")? as u16);
    let at = r.pos;
    let nf = r.count(1)?;
    if nf > nfa.fields.len() {
        return Err(SnapshotError::Invalid { offset: at, reason: "more fields than the stream has" });
    }
    Ok((kind, read_values(r, nf, ts, before, strings)?))
}

/// A decoded snapshot: the key's run and buffered events (if it has state), its window timers.
pub(super) type Decoded = (Option<(RunState, Queue)>, WindowTimers);

/// Reads a snapshot written by [`encode`] for `nfa`.
pub(super) fn decode(nfa: &Nfa, bytes: &[u8]) -> Result<Decoded> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let fp = r.bytes(4)?;
    if fp != fingerprint(nfa).to_le_bytes() {
        return Err(SnapshotError::OtherPattern);
    }
    let base = r.z()?;
    let at = r.pos;
    let flags = r.u8()?;
    if flags & !(HAS_STATE | NEW_START) != 0 || flags == NEW_START {
        return Err(SnapshotError::Invalid { offset: at, reason: "unknown flags" });
    }
    let windows = read_times(&mut r, base)?;
    if flags & HAS_STATE == 0 {
        r.finish()?;
        return Ok((None, windows));
    }

    // The events.
    let n = r.count(4)?;
    let mut table: Vec<Arc<Event>> = Vec::with_capacity(n);
    let mut strings: Vec<Text> = Vec::new();
    let (mut seq, mut ts) = (0u64, base);
    for _ in 0..n {
        seq = seq.wrapping_add(r.z()? as u64);
        ts = ts.wrapping_add(r.z()?);
        let (kind, fields) = read_event_body(&mut r, nfa, ts, table.last().map(|e| e.as_ref()), &mut strings)?;
        table.push(Arc::new(Event { seq, ts, kind, fields }));
    }
    let mut used = vec![false; table.len()];
    let mut event = |r: &mut Reader<'_>| -> Result<Arc<Event>> {
        let i = r.index(table.len(), "no such event")?;
        used[i] = true;
        Ok(table[i].clone())
    };

    // The queue.
    let buckets = r.count(2)?;
    let mut queue = Queue::new();
    let mut asc = AscReader::new(base, true);
    for _ in 0..buckets {
        let t = asc.next(&mut r)?;
        let at = r.pos;
        let len = r.count(1)?;
        if len == 0 {
            return Err(SnapshotError::Invalid { offset: at, reason: "an empty timestamp in the queue" });
        }
        let mut list = Vec::with_capacity(len);
        for _ in 0..len {
            let at = r.pos;
            let e = event(&mut r)?;
            if e.ts != t {
                return Err(SnapshotError::Invalid { offset: at, reason: "a queued event under another timestamp" });
            }
            list.push(e);
        }
        queue.insert(t, list);
    }

    // The shared buffer.
    let mut buffer = SharedBuffer::default();
    let n = r.count(2)?;
    let mut asc = AscReader::new(base, true);
    for _ in 0..n {
        let t = asc.next(&mut r)?;
        buffer.counts.insert(t, r.u32("event id counter out of range")?);
    }
    let n = r.count(4)?;
    let mut ids: Vec<EventId> = Vec::with_capacity(n);
    let mut asc = AscReader::new(base, false);
    for _ in 0..n {
        let at = r.pos;
        let id = EventId { ts: asc.next(&mut r)?, id: r.u32("event id out of range")? };
        if ids.last().is_some_and(|&last| last >= id) {
            return Err(SnapshotError::Invalid { offset: at, reason: "buffer events out of order" });
        }
        let refs = r.i32("reference count out of range")?;
        let e = event(&mut r)?;
        buffer.events.insert(id, (refs, e));
        ids.push(id);
    }
    let n = r.count(4)?;
    let mut nodes: Vec<NodeRef> = Vec::with_capacity(n);
    let mut node_ids: Vec<NodeId> = Vec::with_capacity(n);
    let mut event_pos = 0usize;
    for _ in 0..n {
        let at = r.pos;
        let d = r.v()?;
        event_pos = usize::try_from(d)
            .ok()
            .and_then(|d| event_pos.checked_add(d))
            .filter(|&p| p < ids.len())
            .ok_or(SnapshotError::Invalid { offset: at, reason: "no such buffer event" })?;
        let var = VarId(r.index(nfa.vars.len(), "no such variable")? as u16);
        let id = NodeId { event: ids[event_pos], var };
        if node_ids.last().is_some_and(|last| (last.event, last.var) >= (id.event, id.var)) {
            return Err(SnapshotError::Invalid { offset: at, reason: "buffer nodes out of order" });
        }
        let refs = r.i32("reference count out of range")?;
        let m = r.count(3)?;
        let mut edges = Edges::with_capacity(m);
        for _ in 0..m {
            let at = r.pos;
            let target = match r.index(nodes.len() + 1, "no such node")? {
                0 => None,
                i => {
                    // Edges lead to earlier events: the graph has no cycle.
                    if node_ids[i - 1].event >= id.event {
                        return Err(SnapshotError::Invalid { offset: at, reason: "an edge to a later event" });
                    }
                    Some(nodes[i - 1])
                }
            };
            let version = read_dewey(&mut r)?;
            edges.push(Edge { target, version, refs: r.i32("reference count out of range")? });
        }
        nodes.push(buffer.insert_node(id, edges, refs));
        node_ids.push(id);
    }

    // The partial matches and the completed ones.
    let mut queues: [Vec<Partial>; 2] = [Vec::new(), Vec::new()];
    for q in &mut queues {
        let n = r.count(3)?;
        q.reserve(n);
        for _ in 0..n {
            q.push(read_partial(&mut r, nfa, base, &nodes)?);
        }
    }
    let at = r.pos;
    r.finish()?;
    if used.iter().any(|u| !u) {
        return Err(SnapshotError::Invalid { offset: at, reason: "an event nothing refers to" });
    }
    let [partial, completed] = queues;
    let run = RunState::from_parts(nfa, partial, completed, flags & NEW_START != 0, buffer)
        .ok_or(SnapshotError::Invalid { offset: at, reason: "partial matches out of heap order" })?;
    Ok((Some((run, queue)), windows))
}

// ---------------------------------------------------------------------------------------------
// Keys

impl Key {
    /// Appends the key's bytes: a tag (1 int, 2 text, 3 null), then for an int its 8 bytes
    /// big-endian with the sign bit flipped, for text its UTF-8 bytes (to the end). Byte order
    /// is key order, so a store iterates its keys as [`Key`]'s `Ord` sorts them.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Key::Int(i) => {
                out.push(K_INT);
                out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
            }
            Key::Str(s) => {
                out.push(K_STR);
                out.extend_from_slice(s.as_bytes());
            }
            Key::Null => out.push(K_NULL),
        }
    }

    /// The key [`Key::encode`] wrote: all of `bytes`.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Key, SnapshotError> {
        let invalid = |offset, reason| SnapshotError::Invalid { offset, reason };
        match bytes.split_first() {
            None => Err(SnapshotError::Truncated),
            Some((&K_INT, rest)) => match <[u8; 8]>::try_from(rest) {
                Ok(b) => Ok(Key::Int((u64::from_be_bytes(b) ^ (1 << 63)) as i64)),
                Err(_) if rest.len() < 8 => Err(SnapshotError::Truncated),
                Err(_) => Err(invalid(9, "bytes after the key")),
            },
            Some((&K_STR, rest)) => match std::str::from_utf8(rest) {
                Ok(s) => Ok(Key::Str(Text::new(s))),
                Err(e) => Err(invalid(1 + e.valid_up_to(), "text is not UTF-8")),
            },
            Some((&K_NULL, [])) => Ok(Key::Null),
            Some((&K_NULL, _)) => Err(invalid(1, "bytes after the key")),
            Some(_) => Err(invalid(0, "unknown key kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_are_canonical() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX / 3, u64::MAX] {
            let mut out = Vec::new();
            put_v(&mut out, v);
            assert_eq!(out.len() as u32, v_len(v));
            let mut r = Reader::new(&out);
            assert_eq!(r.v(), Ok(v));
            assert_eq!(r.finish(), Ok(()));
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -1_741_026_000_000] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert!(Reader::new(&[0x80, 0x00]).v().is_err(), "not the shortest form");
        assert!(Reader::new(&[0xff; 10]).v().is_err(), "more than 64 bits");
        assert!(Reader::new(&[0xff; 11]).v().is_err());
        assert_eq!(Reader::new(&[0x80]).v(), Err(SnapshotError::Truncated));
    }

    #[test]
    fn keys_round_trip_in_order() {
        let keys = [
            Key::Int(i64::MIN),
            Key::Int(-1),
            Key::Int(0),
            Key::Int(7),
            Key::Int(i64::MAX),
            Key::Str(Text::new("")),
            Key::Str(Text::new("CARD-1")),
            Key::Str(Text::new("CARD-10")),
            Key::Str(Text::new("é")),
            Key::Null,
        ];
        let bytes: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut b = Vec::new();
                k.encode(&mut b);
                b
            })
            .collect();
        for (k, b) in keys.iter().zip(&bytes) {
            assert_eq!(Key::decode(b).as_ref(), Ok(k));
        }
        assert!(bytes.windows(2).all(|w| w[0] < w[1]), "byte order is key order");
        for bad in [&[][..], &[1, 0, 0], &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[2, 0xff], &[3, 0], &[4], &[0]] {
            assert!(Key::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn floats_as_integers_only_when_exact() {
        assert_eq!(float_as_int(3.0), Some(3));
        assert_eq!(float_as_int(-0.0), None);
        assert_eq!(float_as_int(0.5), None);
        assert_eq!(float_as_int(f64::NAN), None);
        assert_eq!(float_as_int(f64::INFINITY), None);
        assert_eq!(float_as_int(1e300), None);
    }
}
