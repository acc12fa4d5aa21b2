//! Split snapshots (state format 2): a key's state as several records, so that a change
//! writes what changed and not everything the key holds. FlinkCEP's shared buffer keeps its
//! events and its nodes in map entries of their own for the same reason.
//!
//! A key's records ([`KeyRecords`], from
//! [`Operator::take_key_records`](super::Operator::take_key_records)):
//!
//! - the **head**: the key's timers, its time-order queue (by payload id), the shared buffer's
//!   id counters and the ids of its events, and the partial matches (rewritten whenever the key
//!   changes, as FlinkCEP rewrites its `NFAState`);
//! - one **payload** record per event the key holds (sub-key `P id:u32`): the event's values,
//!   written once, when the key first holds the event, and deleted when it holds it no more;
//! - one **event** record per shared-buffer event (sub-key `E ts:u64 id:u32`, the time with its
//!   sign bit flipped so that sub-keys sort as events do): its reference count, its payload id
//!   and the nodes of the variables that took it, with their edges; written when it changes.
//!
//! ```text
//! head    = 0x02 fingerprint:u32le base:z flags:u8 windows:asc(v count)
//!           next:v queue counts buffer partials:list(partial) completed:list(partial)
//!           (flags as in format 1; a split snapshot always has state)
//! queue   = v buckets, (ts:asc v count, payload id:v*)*
//! counts  = v n, (ts:asc next id:v)*
//! buffer  = v n, (ts:asc(non-strict) id:v)*            ascending: the event records
//! partial = state:v flags:u8 dewey [prev event:v (index in buffer) var:v]
//!           [start_ts:z(to base) prev_ts:z(to start_ts)] [start event ts:z(to start_ts) id:v]
//! event   = refs:z payload id:v v nodes, (var:v refs:z v edges, edge*)*   ascending by var
//! edge    = 0 | 1 ts:z(to the event's) id:v var:v, then dewey refs:z
//! payload = seq:v kind:v fields:v value*                (values of format 1, each payload
//!           standing alone: no 3, a 9 refers to a text of the same payload)
//! ```
//!
//! Payload ids are the key's own, below `next`; an event keeps its id while the key holds it
//! (in its queue or its shared buffer). A reader is given the head and every other record of
//! the key: a missing record, one nothing refers to, or an edge to a node that is not there
//! (or not earlier) is an error, as are the checks of format 1.

use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::buffer::{Edge, Edges, EventId, NodeId, SharedBuffer};
use super::operator::WindowTimers;
use super::run::{Partial, RunState};
use super::snapshot::{
    fingerprint, put_dewey, put_partial_with, put_times, put_v, put_value, put_z, read_dewey, read_event_body,
    read_partial_with, read_times, Asc, AscReader, Decoded, Queue, Reader, Result, SnapshotError, HAS_STATE, NEW_START,
    SPLIT_VERSION,
};
use crate::nfa::{Nfa, VarId};
use crate::value::Event;

/// A key's state as records: its head (a split snapshot, or a whole one of format 1) and the
/// other records to write and to delete, by sub-key (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRecords {
    pub head: Vec<u8>,
    /// Records to write: (sub-key, value).
    pub put: Vec<(Vec<u8>, Vec<u8>)>,
    /// Sub-keys of records to delete, ascending.
    pub gone: Vec<Vec<u8>>,
}

impl KeyRecords {
    pub fn clear(&mut self) {
        self.head.clear();
        self.put.clear();
        self.gone.clear();
    }
}

/// What is stored of a key kept as a split snapshot: the payload id of each event (the events
/// are held, so that no address in the map is reused while it is there), the next id, and the
/// bytes of each event record.
#[derive(Debug, Default)]
pub(super) struct SplitState {
    by_addr: HashMap<usize, (u32, Arc<Event>)>,
    next: u32,
    events: HashMap<EventId, Box<[u8]>>,
}

impl SplitState {
    /// The bytes it takes (an estimate, as [`Operator::memory_estimate`](super::Operator::memory_estimate)'s).
    pub(super) fn memory_estimate(&self) -> usize {
        64 + self.by_addr.len() * 48 + self.events.values().map(|b| 48 + b.len()).sum::<usize>()
    }

    /// The sub-keys of every stored record, ascending.
    pub(super) fn sub_keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .by_addr
            .values()
            .map(|(id, _)| payload_sub_key(*id))
            .chain(self.events.keys().map(|id| event_sub_key(*id)))
            .collect();
        keys.sort_unstable();
        keys
    }
}

const SUB_PAYLOAD: u8 = b'P';
const SUB_EVENT: u8 = b'E';

fn payload_sub_key(id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5);
    k.push(SUB_PAYLOAD);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn event_sub_key(id: EventId) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(SUB_EVENT);
    k.extend_from_slice(&((id.ts as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&id.id.to_be_bytes());
    k
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes `run` and `queue` as a split snapshot into `out` (cleared first): the head, the
/// records that changed since `stored` was written, and those gone; `stored` follows.
pub(super) fn encode(
    nfa: &Nfa,
    run: &RunState,
    queue: &Queue,
    windows: impl ExactSizeIterator<Item = i64> + Clone,
    stored: &mut SplitState,
    out: &mut KeyRecords,
) {
    out.clear();
    let buffer = &run.buffer;
    let mut events: Vec<(&EventId, &(i32, Arc<Event>))> = buffer.events.iter().collect();
    events.sort_unstable_by_key(|(id, _)| **id);
    let base = [queue.keys().next().copied(), events.first().map(|(id, _)| id.ts), windows.clone().next()]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0);

    // Payload ids: the stored ones kept, new events numbered on, their payloads written.
    let mut old = std::mem::take(&mut stored.by_addr);
    let mut now: HashMap<usize, (u32, Arc<Event>)> =
        HashMap::with_capacity_and_hasher(old.len() + 4, Default::default());
    let mut id_of = |e: &Arc<Event>, put: &mut Vec<(Vec<u8>, Vec<u8>)>| -> u32 {
        let addr = Arc::as_ptr(e) as usize;
        if let Some((id, _)) = now.get(&addr) {
            return *id;
        }
        let id = match old.remove(&addr) {
            Some((id, _)) => id,
            None => {
                let id = stored.next;
                stored.next = stored.next.wrapping_add(1);
                put.push((payload_sub_key(id), encode_payload(e)));
                id
            }
        };
        now.insert(addr, (id, Arc::clone(e)));
        id
    };
    let queue_ids: Vec<Vec<u32>> =
        queue.values().map(|list| list.iter().map(|e| id_of(e, &mut out.put)).collect()).collect();
    let event_ids: Vec<u32> = events.iter().map(|(_, (_, e))| id_of(e, &mut out.put)).collect();
    out.gone.extend(old.into_values().map(|(id, _)| payload_sub_key(id)));
    stored.by_addr = now;

    // The head.
    let head = &mut out.head;
    head.push(SPLIT_VERSION);
    head.extend_from_slice(&fingerprint(nfa).to_le_bytes());
    put_z(head, base);
    head.push(HAS_STATE | if run.new_start { NEW_START } else { 0 });
    put_times(head, base, windows);
    put_v(head, u64::from(stored.next));
    put_v(head, queue.len() as u64);
    let mut asc = Asc::new(base);
    for (&ts, ids) in queue.keys().zip(&queue_ids) {
        asc.put(head, ts);
        put_v(head, ids.len() as u64);
        for &id in ids {
            put_v(head, u64::from(id));
        }
    }
    put_v(head, buffer.counts.len() as u64);
    let mut asc = Asc::new(base);
    for (ts, next) in buffer.counts.iter() {
        asc.put(head, ts);
        put_v(head, u64::from(next));
    }
    put_v(head, events.len() as u64);
    let mut asc = Asc::new(base);
    for (id, _) in &events {
        asc.put(head, id.ts);
        put_v(head, u64::from(id.id));
    }
    let (partial, completed) = run.queues();
    for q in [partial, completed] {
        put_v(head, q.len() as u64);
        for p in q {
            put_partial(head, p, base, buffer, &events);
        }
    }

    // The event records that changed.
    let mut nodes: Vec<_> = buffer.nodes().map(|(_, n)| n).collect();
    nodes.sort_unstable_by_key(|n| n.id);
    let mut nodes = nodes.into_iter().peekable();
    let mut old = std::mem::take(&mut stored.events);
    let mut bytes = Vec::new();
    for ((id, (refs, _)), payload) in events.iter().zip(event_ids) {
        bytes.clear();
        put_z(&mut bytes, i64::from(*refs));
        put_v(&mut bytes, u64::from(payload));
        let mut mine = Vec::new();
        while let Some(node) = nodes.next_if(|n| n.id.event <= **id) {
            // A node of an event not in the buffer (only a corrupted state has one) is not kept,
            // as format 1 does not keep it.
            if node.id.event == **id {
                mine.push((node.id.var, node));
            }
        }
        put_v(&mut bytes, mine.len() as u64);
        for (var, node) in mine {
            put_v(&mut bytes, u64::from(var.0));
            put_z(&mut bytes, i64::from(node.refs));
            put_v(&mut bytes, node.edges.len() as u64);
            for edge in &node.edges {
                // An edge to a node that is gone leads nowhere (format 1 writes it so too).
                match edge.target.and_then(|t| buffer.node_id(t)) {
                    None => bytes.push(0),
                    Some(t) => {
                        bytes.push(1);
                        put_z(&mut bytes, t.event.ts.wrapping_sub(id.ts));
                        put_v(&mut bytes, u64::from(t.event.id));
                        put_v(&mut bytes, u64::from(t.var.0));
                    }
                }
                put_dewey(&mut bytes, &edge.version);
                put_z(&mut bytes, i64::from(edge.refs));
            }
        }
        let unchanged = old.remove(*id).is_some_and(|before| *before == *bytes);
        if !unchanged {
            out.put.push((event_sub_key(**id), bytes.clone()));
        }
        stored.events.insert(**id, bytes.as_slice().into());
    }
    out.gone.extend(old.into_keys().map(event_sub_key));
    out.gone.sort_unstable();
}

fn put_partial(
    out: &mut Vec<u8>,
    p: &Partial,
    base: i64,
    buffer: &SharedBuffer,
    events: &[(&EventId, &(i32, Arc<Event>))],
) {
    let prev = p
        .prev
        .and_then(|r| buffer.node_id(r))
        .and_then(|n| events.binary_search_by_key(&n.event, |(id, _)| **id).ok().map(|i| (i, n.var)));
    put_partial_with(out, p, base, prev.is_some(), |out| {
        if let Some((i, var)) = prev {
            put_v(out, i as u64);
            put_v(out, u64::from(var.0));
        }
    });
}

/// An event's payload record: `seq:v kind:v fields:v value*` (its time is elsewhere).
fn encode_payload(e: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 12 * e.fields.len());
    put_v(&mut out, e.seq);
    put_v(&mut out, u64::from(e.kind.0));
    put_v(&mut out, e.fields.len() as u64);
    let mut strings: HashMap<&str, u32> = HashMap::default();
    for v in e.fields.iter() {
        put_value(&mut out, v, None, e.ts, &mut strings);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A split head, read without its other records.
struct Head {
    flags: u8,
    windows: WindowTimers,
    next: u32,
    queue: Vec<(i64, Vec<u32>)>,
    counts: Vec<(i64, u32)>,
    buffer: Vec<EventId>,
    /// Partial matches with their previous node as (index in `buffer`, variable).
    queues: [Vec<HeadPartial>; 2],
}

/// A partial match as a head holds it: its previous node as (index in the buffer, variable).
type HeadPartial = (Partial, Option<(usize, VarId)>);

fn read_head(nfa: &Nfa, bytes: &[u8]) -> Result<Head> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != SPLIT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    if r.bytes(4)? != fingerprint(nfa).to_le_bytes() {
        return Err(SnapshotError::OtherPattern);
    }
    let base = r.z()?;
    let at = r.pos;
    let flags = r.u8()?;
    if flags & !(HAS_STATE | NEW_START) != 0 || flags & HAS_STATE == 0 {
        return Err(SnapshotError::Invalid { offset: at, reason: "unknown flags" });
    }
    let windows = read_times(&mut r, base)?;
    let next = r.u32("payload id out of range")?;
    let n = r.count(2)?;
    let mut queue = Vec::with_capacity(n);
    let mut asc = AscReader::new(base, true);
    for _ in 0..n {
        let t = asc.next(&mut r)?;
        let at = r.pos;
        let len = r.count(1)?;
        if len == 0 {
            return Err(SnapshotError::Invalid { offset: at, reason: "an empty timestamp in the queue" });
        }
        let mut ids = Vec::with_capacity(len);
        for _ in 0..len {
            ids.push(r.index(next as usize, "a payload id not below the next one")? as u32);
        }
        queue.push((t, ids));
    }
    let n = r.count(2)?;
    let mut counts = Vec::with_capacity(n);
    let mut asc = AscReader::new(base, true);
    for _ in 0..n {
        counts.push((asc.next(&mut r)?, r.u32("event id counter out of range")?));
    }
    let n = r.count(2)?;
    let mut buffer: Vec<EventId> = Vec::with_capacity(n);
    let mut asc = AscReader::new(base, false);
    for _ in 0..n {
        let at = r.pos;
        let id = EventId { ts: asc.next(&mut r)?, id: r.u32("event id out of range")? };
        if buffer.last().is_some_and(|&last| last >= id) {
            return Err(SnapshotError::Invalid { offset: at, reason: "buffer events out of order" });
        }
        buffer.push(id);
    }
    let mut queues: [Vec<HeadPartial>; 2] = [Vec::new(), Vec::new()];
    for q in &mut queues {
        let n = r.count(3)?;
        q.reserve(n);
        for _ in 0..n {
            q.push(read_partial(&mut r, nfa, base, buffer.len())?);
        }
    }
    r.finish()?;
    Ok(Head { flags, windows, next, queue, counts, buffer, queues })
}

fn read_partial(r: &mut Reader<'_>, nfa: &Nfa, base: i64, events: usize) -> Result<HeadPartial> {
    read_partial_with(r, nfa, base, |r| {
        let i = r.index(events, "no such buffer event")?;
        Ok((i, VarId(r.index(nfa.vars.len(), "no such variable")? as u16)))
    })
}

/// The pending timers (ascending) and partial matches of a split head, read alone.
pub(super) fn summary(nfa: &Nfa, head: &[u8]) -> Result<(Vec<i64>, usize)> {
    let h = read_head(nfa, head)?;
    let mut timers: Vec<i64> = h.windows.iter().copied().chain(h.queue.iter().map(|(t, _)| *t)).collect();
    timers.sort_unstable();
    timers.dedup();
    Ok((timers, h.queues[0].len().saturating_sub(1)))
}

/// Reads a split snapshot: its head and all the key's other records, ascending by sub-key;
/// also what is stored of it.
pub(super) fn decode(nfa: &Nfa, head: &[u8], records: &[(Vec<u8>, Vec<u8>)]) -> Result<(Decoded, SplitState)> {
    let h = read_head(nfa, head)?;
    let at = head.len();
    let invalid = |reason| SnapshotError::Invalid { offset: at, reason };
    let split = records.partition_point(|(k, _)| k.first().is_some_and(|&b| b < SUB_PAYLOAD));
    let (event_records, payload_records) = records.split_at(split);
    if event_records.iter().any(|(k, _)| k.first() != Some(&SUB_EVENT))
        || payload_records.iter().any(|(k, _)| k.first() != Some(&SUB_PAYLOAD) || k.len() != 5)
    {
        return Err(invalid("a stored record of an unknown kind"));
    }
    if event_records.len() != h.buffer.len() {
        return Err(invalid("the stored events are not the buffer's"));
    }
    if payload_records.iter().any(|(k, _)| u32::from_be_bytes([k[1], k[2], k[3], k[4]]) >= h.next) {
        return Err(invalid("a payload id not below the next one"));
    }

    // Payloads, each read when first referred to, and at most once.
    let mut events: Vec<Option<Arc<Event>>> = vec![None; payload_records.len()];
    let mut payload = |id: u32, ts: i64| -> Result<Arc<Event>> {
        let i = payload_records
            .binary_search_by(|(k, _)| k[1..].cmp(&id.to_be_bytes()[..]))
            .map_err(|_| invalid("an event whose payload is missing"))?;
        if let Some(e) = &events[i] {
            return if e.ts == ts { Ok(e.clone()) } else { Err(invalid("a payload at two times")) };
        }
        let e = Arc::new(read_payload(nfa, ts, &payload_records[i].1)?);
        events[i] = Some(e.clone());
        Ok(e)
    };

    let mut queue = Queue::new();
    for (t, ids) in &h.queue {
        let list = ids.iter().map(|&id| payload(id, *t)).collect::<Result<Vec<_>>>()?;
        queue.insert(*t, list);
    }

    let mut buffer = SharedBuffer::default();
    for &(t, next) in &h.counts {
        buffer.counts.insert(t, next);
    }
    let mut stored_events = HashMap::with_capacity_and_hasher(h.buffer.len(), Default::default());
    // Edges lead to earlier events, read before: an edge whose node is not stored by then is not
    // stored at all (reported once every record has been read).
    let mut dangling = false;
    for (&id, (k, bytes)) in h.buffer.iter().zip(event_records) {
        if *k != event_sub_key(id) {
            return Err(invalid("the stored events are not the buffer's"));
        }
        let mut r = Reader::new(bytes);
        let refs = r.i32("reference count out of range")?;
        let e = payload(r.u32("payload id out of range")?, id.ts)?;
        buffer.events.insert(id, (refs, e));
        let n = r.count(3)?;
        let mut last_var = None;
        for _ in 0..n {
            let at = r.pos;
            let var = VarId(r.index(nfa.vars.len(), "no such variable")? as u16);
            if last_var.is_some_and(|v| v >= var) {
                return Err(SnapshotError::Invalid { offset: at, reason: "buffer nodes out of order" });
            }
            last_var = Some(var);
            let refs = r.i32("reference count out of range")?;
            let m = r.count(3)?;
            let mut edges = Edges::with_capacity(m);
            for _ in 0..m {
                let at = r.pos;
                let target = match r.u8()? {
                    0 => None,
                    1 => {
                        let ts = id.ts.wrapping_add(r.z()?);
                        let event = EventId { ts, id: r.u32("event id out of range")? };
                        let var = VarId(r.index(nfa.vars.len(), "no such variable")? as u16);
                        // Edges lead to earlier events: the graph has no cycle.
                        if event >= id {
                            return Err(SnapshotError::Invalid { offset: at, reason: "an edge to a later event" });
                        }
                        let target = buffer.find(NodeId { event, var });
                        dangling |= target.is_none();
                        target
                    }
                    _ => return Err(SnapshotError::Invalid { offset: at, reason: "unknown edge kind" }),
                };
                let version = read_dewey(&mut r)?;
                edges.push(Edge { target, version, refs: r.i32("reference count out of range")? });
            }
            buffer.insert_node(NodeId { event: id, var }, edges, refs);
        }
        r.finish()?;
        stored_events.insert(id, bytes.as_slice().into());
    }
    if dangling {
        return Err(invalid("an edge to a node that is not stored"));
    }
    if events.iter().any(Option::is_none) {
        return Err(invalid("a stored payload no event refers to"));
    }

    let [partial, completed] = h.queues.map(|q| {
        q.into_iter()
            .map(|(mut p, prev)| {
                if let Some((i, var)) = prev {
                    let node = buffer.find(NodeId { event: h.buffer[i], var });
                    if node.is_none() {
                        return Err(invalid("a partial match at a node that is not stored"));
                    }
                    p.prev = node;
                }
                Ok(p)
            })
            .collect::<Result<Vec<_>>>()
    });
    let (partial, completed) = (partial?, completed?);
    let run = RunState::from_parts(nfa, partial, completed, h.flags & NEW_START != 0, buffer)
        .ok_or(invalid("partial matches out of heap order"))?;
    let mut stored = SplitState { by_addr: HashMap::default(), next: h.next, events: stored_events };
    for (rec, e) in payload_records.iter().zip(events.into_iter().flatten()) {
        let id = u32::from_be_bytes([rec.0[1], rec.0[2], rec.0[3], rec.0[4]]);
        stored.by_addr.insert(Arc::as_ptr(&e) as usize, (id, e));
    }
    Ok(((Some((run, queue)), h.windows), stored))
}

/// An event from its payload record and its time.
fn read_payload(nfa: &Nfa, ts: i64, bytes: &[u8]) -> Result<Event> {
    let mut r = Reader::new(bytes);
    let seq = r.v()?;
    let (kind, fields) = read_event_body(&mut r, nfa, ts, None, &mut Vec::new())?;
    r.finish()?;
    Ok(Event { seq, ts, kind, fields })
}
