//! The shared buffer (FlinkCEP's `SharedBuffer` + `SharedBufferAccessor`): the events partial
//! matches have taken, stored once, linked into a graph whose edges carry Dewey versions, so that
//! runs share their common prefixes. Reference counts free what no run can reach any more.
//! Counts and ids wrap as Java's `int`s do (a state restored from a snapshot may hold any value).

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use super::dewey::Dewey;
use crate::nfa::VarId;
use crate::value::Event;

/// An event in the buffer: its timestamp and its rank among the taken events of that timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    pub ts: i64,
    pub id: u32,
}

/// A node's identity: an event as taken by a variable (what snapshots write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub event: EventId,
    pub var: VarId,
}

/// A handle to a node in the buffer's arena: its slot, the slot's generation when the node was
/// made (a handle to a node that is gone finds nothing, even when the slot is reused), and the
/// node's variable. Partial matches and edges hold these, so walking a path indexes a vector
/// instead of looking nodes up by identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeRef {
    slot: u32,
    gen: u32,
    var: VarId,
}

impl NodeRef {
    /// The variable that took the node's event.
    pub fn var(self) -> VarId {
        self.var
    }
}

/// An edge to the node of the previous event (`None`: the match starts here), for the runs of
/// compatible versions. Fields are visible to `snapshot`, which writes and rebuilds them.
#[derive(Clone, Debug)]
pub(super) struct Edge {
    pub(super) target: Option<NodeRef>,
    pub(super) version: Dewey,
    pub(super) refs: i32,
}

/// A node's edges: most nodes have one (a run that took the event), kept inline.
pub(super) type Edges = smallvec::SmallVec<[Edge; 1]>;

#[derive(Clone, Debug)]
pub(super) struct Node {
    pub(super) id: NodeId,
    pub(super) edges: Edges,
    pub(super) refs: i32,
}

#[derive(Clone, Debug)]
struct Slot {
    gen: u32,
    node: Option<Node>,
}

/// `Lockable.release`: frees when the count reaches zero (or was already not positive).
fn release(refs: &mut i32) -> bool {
    if *refs <= 0 {
        return true;
    }
    *refs -= 1;
    *refs == 0
}

/// A map for the few entries a key's buffer mostly holds: a vector searched in order (one
/// allocation, entries side by side) up to [`SmallMap::SMALL`] entries, a hash map beyond.
/// Iteration order is unspecified (encoders sort).
#[derive(Clone, Debug)]
pub(super) enum SmallMap<K, V> {
    Small(Vec<(K, V)>),
    Large(HashMap<K, V>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Small(Vec::new())
    }
}

impl<K: Copy + Eq + std::hash::Hash, V> SmallMap<K, V> {
    const SMALL: usize = 8;

    pub(super) fn len(&self) -> usize {
        match self {
            SmallMap::Small(v) => v.len(),
            SmallMap::Large(m) => m.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn get(&self, k: &K) -> Option<&V> {
        match self {
            SmallMap::Small(v) => v.iter().find(|(x, _)| x == k).map(|(_, v)| v),
            SmallMap::Large(m) => m.get(k),
        }
    }

    pub(super) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        match self {
            SmallMap::Small(v) => v.iter_mut().find(|(x, _)| x == k).map(|(_, v)| v),
            SmallMap::Large(m) => m.get_mut(k),
        }
    }

    /// Inserts or replaces.
    pub(super) fn insert(&mut self, k: K, value: V) {
        match self {
            SmallMap::Small(v) => {
                if let Some(slot) = v.iter_mut().find(|(x, _)| *x == k) {
                    slot.1 = value;
                } else if v.len() < Self::SMALL {
                    v.push((k, value));
                } else {
                    let mut m: HashMap<K, V> = std::mem::take(v).into_iter().collect();
                    m.insert(k, value);
                    *self = SmallMap::Large(m);
                }
            }
            SmallMap::Large(m) => {
                m.insert(k, value);
            }
        }
    }

    pub(super) fn remove(&mut self, k: &K) -> Option<V> {
        match self {
            SmallMap::Small(v) => v.iter().position(|(x, _)| x == k).map(|i| v.swap_remove(i).1),
            SmallMap::Large(m) => m.remove(k),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let (small, large) = match self {
            SmallMap::Small(v) => (Some(v.iter().map(|(k, v)| (k, v))), None),
            SmallMap::Large(m) => (None, Some(m.iter())),
        };
        small.into_iter().flatten().chain(large.into_iter().flatten())
    }
}

/// Per timestamp, the next event id (FlinkCEP's `eventsCount`), ascending by timestamp. A key's
/// events are registered in time order and old counters are forgotten as time passes, so this
/// holds a timestamp or two: a short sorted vector, inline, not a map.
#[derive(Clone, Debug, Default)]
pub(super) struct Counts(smallvec::SmallVec<[(i64, u32); 2]>);

impl Counts {
    /// The next id at `ts`, counted.
    fn next(&mut self, ts: i64) -> u32 {
        let i = match self.0.last() {
            Some((t, _)) if *t == ts => self.0.len() - 1,
            Some((t, _)) if *t < ts => self.0.len(),
            None => 0,
            _ => self.0.partition_point(|(t, _)| *t < ts),
        };
        if self.0.get(i).is_none_or(|(t, _)| *t != ts) {
            self.0.insert(i, (ts, 0));
        }
        let id = self.0[i].1;
        self.0[i].1 = id.wrapping_add(1);
        id
    }

    /// Sets the counter of `ts` (restoring a snapshot).
    pub(super) fn insert(&mut self, ts: i64, next: u32) {
        match self.0.binary_search_by_key(&ts, |(t, _)| *t) {
            Ok(i) => self.0[i].1 = next,
            Err(i) => self.0.insert(i, (ts, next)),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// (timestamp, next id), ascending.
    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, u32)> + '_ {
        self.0.iter().copied()
    }

    fn forget_before(&mut self, ts: i64) {
        let n = self.0.partition_point(|(t, _)| *t < ts);
        if n > 0 {
            self.0.drain(..n);
        }
    }
}

/// The events of one match, per variable in order of their first event, each list in order.
pub type EventPath = Vec<(VarId, Vec<EventId>)>;

/// The buffer: events by id (with their reference counts), nodes in an arena of slots (freed
/// slots are reused under a new generation), and an index from a node's identity to its slot,
/// used only where identities come from outside (a new node's event and variable, snapshots).
#[derive(Clone, Debug, Default)]
pub struct SharedBuffer {
    /// Taken events with their reference counts.
    pub(super) events: SmallMap<EventId, (i32, Arc<Event>)>,
    /// Per timestamp, the next event id.
    pub(super) counts: Counts,
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: SmallMap<NodeId, NodeRef>,
}

impl SharedBuffer {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.index.is_empty()
    }

    /// Number of stored events and nodes (for memory accounting).
    pub fn size(&self) -> (usize, usize) {
        (self.events.len(), self.index.len())
    }

    pub fn register_event(&mut self, event: Arc<Event>, ts: i64) -> EventId {
        let id = EventId { ts, id: self.counts.next(ts) };
        self.events.insert(id, (1, event));
        id
    }

    pub fn event(&self, id: EventId) -> Option<&Arc<Event>> {
        self.events.get(&id).map(|e| &e.1)
    }

    pub fn release_event(&mut self, id: EventId) {
        if let Some(e) = self.events.get_mut(&id) {
            if release(&mut e.0) {
                self.events.remove(&id);
            }
        }
    }

    pub(super) fn node(&self, r: NodeRef) -> Option<&Node> {
        self.slots.get(r.slot as usize).filter(|s| s.gen == r.gen).and_then(|s| s.node.as_ref())
    }

    fn node_mut(&mut self, r: NodeRef) -> Option<&mut Node> {
        self.slots.get_mut(r.slot as usize).filter(|s| s.gen == r.gen).and_then(|s| s.node.as_mut())
    }

    /// The identity of a node that is still stored.
    pub fn node_id(&self, r: NodeRef) -> Option<NodeId> {
        self.node(r).map(|n| n.id)
    }

    /// The stored node with this identity.
    pub(super) fn find(&self, id: NodeId) -> Option<NodeRef> {
        self.index.get(&id).copied()
    }

    /// The stored nodes, in no particular order.
    pub(super) fn nodes(&self) -> impl Iterator<Item = (NodeRef, &Node)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let n = s.node.as_ref()?;
            Some((NodeRef { slot: i as u32, gen: s.gen, var: n.id.var }, n))
        })
    }

    /// Stores a node with identity `id` (replacing one stored under it) and returns its handle.
    pub(super) fn insert_node(&mut self, id: NodeId, edges: Edges, refs: i32) -> NodeRef {
        if let Some(old) = self.find(id) {
            self.free_node(old);
        }
        let node = Node { id, edges, refs };
        let r = match self.free.pop() {
            Some(slot) => {
                let s = &mut self.slots[slot as usize];
                s.node = Some(node);
                NodeRef { slot, gen: s.gen, var: id.var }
            }
            None => {
                self.slots.push(Slot { gen: 0, node: Some(node) });
                NodeRef { slot: (self.slots.len() - 1) as u32, gen: 0, var: id.var }
            }
        };
        self.index.insert(id, r);
        r
    }

    fn free_node(&mut self, r: NodeRef) -> Option<Node> {
        let s = self.slots.get_mut(r.slot as usize).filter(|s| s.gen == r.gen)?;
        let node = s.node.take()?;
        s.gen = s.gen.wrapping_add(1);
        self.free.push(r.slot);
        self.index.remove(&node.id);
        Some(node)
    }

    pub fn lock_node(&mut self, node: NodeRef, version: &Dewey) {
        if let Some(n) = self.node_mut(node) {
            n.refs = n.refs.wrapping_add(1);
            for e in &mut n.edges {
                if version.is_compatible_with(&e.version) {
                    e.refs = e.refs.wrapping_add(1);
                }
            }
        }
    }

    /// Records that `var` took `event` after `prev` (in the run of `version`).
    pub fn put(&mut self, var: VarId, event: EventId, prev: Option<NodeRef>, version: &Dewey) -> NodeRef {
        if let Some(p) = prev {
            self.lock_node(p, version);
        }
        let id = NodeId { event, var };
        let edge = Edge { target: prev, version: version.clone(), refs: 0 };
        if let Some(r) = self.find(id) {
            if let Some(n) = self.node_mut(r) {
                n.edges.push(edge);
                return r;
            }
        }
        if let Some(e) = self.events.get_mut(&event) {
            e.0 = e.0.wrapping_add(1);
        }
        self.insert_node(id, smallvec::smallvec![edge], 0)
    }

    pub fn release_node(&mut self, node: NodeRef, version: &Dewey) {
        // Mostly one chain: the stack stays inline.
        let mut stack: smallvec::SmallVec<[(NodeRef, Dewey); 2]> = smallvec::smallvec![(node, version.clone())];
        while let Some((cur, v)) = stack.pop() {
            let Some(n) = self.node_mut(cur) else { break };
            let mut i = 0;
            while i < n.edges.len() {
                let e = &mut n.edges[i];
                if v.is_compatible_with(&e.version) && release(&mut e.refs) {
                    let e = n.edges.remove(i);
                    if let Some(t) = e.target {
                        stack.push((t, e.version));
                    }
                    continue;
                }
                i += 1;
            }
            if release(&mut n.refs) {
                let event = n.id.event;
                self.free_node(cur);
                self.release_event(event);
            }
        }
    }

    /// Every path of `version` ending at `node`, earliest event first; the first path is the one
    /// that follows the last compatible edge at each node.
    pub fn extract(&self, node: NodeRef, version: &Dewey) -> Vec<EventPath> {
        let mut out = Vec::new();
        if self.node(node).is_none() {
            return out;
        }
        let mut stack: Vec<(Option<NodeRef>, Dewey, Vec<NodeId>)> = vec![(Some(node), version.clone(), Vec::new())];
        while let Some((entry, v, mut path)) = stack.pop() {
            match entry {
                None => {
                    let mut m: EventPath = Vec::new();
                    for n in path.iter().rev() {
                        match m.iter_mut().find(|(var, _)| *var == n.var) {
                            Some((_, list)) => list.push(n.event),
                            None => m.push((n.var, vec![n.event])),
                        }
                    }
                    out.push(m);
                }
                Some(r) => {
                    if let Some(n) = self.node(r) {
                        path.push(n.id);
                        for e in &n.edges {
                            if v.is_compatible_with(&e.version) {
                                stack.push((e.target, e.version.clone(), path.clone()));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The first path `extract` would return (the last compatible edge at every node), pushed
    /// newest first into `out`, without building the others.
    pub fn first_path(&self, node: NodeRef, version: &Dewey, out: &mut Vec<NodeId>) {
        let mut cur = Some(node);
        let mut v = version;
        while let Some(r) = cur {
            let Some(n) = self.node(r) else {
                out.clear();
                return;
            };
            out.push(n.id);
            match n.edges.iter().rev().find(|e| v.is_compatible_with(&e.version)) {
                Some(e) => {
                    cur = e.target;
                    v = &e.version;
                }
                None => {
                    // A dead end: `extract` finds no path through it.
                    out.clear();
                    return;
                }
            }
        }
    }

    /// The events of a path.
    pub fn materialize(&self, path: &EventPath) -> Vec<(VarId, Vec<Arc<Event>>)> {
        path.iter().map(|(var, ids)| (*var, ids.iter().filter_map(|id| self.event(*id).cloned()).collect())).collect()
    }

    /// Forgets the per-timestamp id counters older than `ts`.
    pub fn advance_time(&mut self, ts: i64) {
        self.counts.forget_before(ts);
    }
}
