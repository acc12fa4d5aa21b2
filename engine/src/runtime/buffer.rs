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

/// A node: an event as taken by a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId {
    pub event: EventId,
    pub var: VarId,
}

/// An edge to the node of the previous event (`None`: the match starts here), for the runs of
/// compatible versions. Fields are visible to `snapshot`, which writes and rebuilds them.
#[derive(Clone, Debug)]
pub(super) struct Edge {
    pub(super) target: Option<NodeId>,
    pub(super) version: Dewey,
    pub(super) refs: i32,
}

/// A node's edges: most nodes have one (a run that took the event), kept inline.
pub(super) type Edges = smallvec::SmallVec<[Edge; 1]>;

#[derive(Clone, Debug, Default)]
pub(super) struct Node {
    pub(super) edges: Edges,
    pub(super) refs: i32,
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

    pub(super) fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
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

    /// The value of `k`, inserted with `make` if absent; `true` if it was.
    pub(super) fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> (&mut V, bool) {
        let new = !self.contains_key(&k);
        if new {
            self.insert(k, make());
        }
        (self.get_mut(&k).unwrap_or_else(|| unreachable!("present or just inserted")), new)
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

    pub(super) fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
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

#[derive(Clone, Debug, Default)]
pub struct SharedBuffer {
    /// Taken events with their reference counts.
    pub(super) events: SmallMap<EventId, (i32, Arc<Event>)>,
    /// Per timestamp, the next event id.
    pub(super) counts: Counts,
    pub(super) nodes: SmallMap<NodeId, Node>,
}

impl SharedBuffer {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.nodes.is_empty()
    }

    /// Number of stored events and nodes (for memory accounting).
    pub fn size(&self) -> (usize, usize) {
        (self.events.len(), self.nodes.len())
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

    pub fn lock_node(&mut self, node: NodeId, version: &Dewey) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.refs = n.refs.wrapping_add(1);
            for e in &mut n.edges {
                if version.is_compatible_with(&e.version) {
                    e.refs = e.refs.wrapping_add(1);
                }
            }
        }
    }

    /// Records that `var` took `event` after `prev` (in the run of `version`).
    pub fn put(&mut self, var: VarId, event: EventId, prev: Option<NodeId>, version: &Dewey) -> NodeId {
        if let Some(p) = prev {
            self.lock_node(p, version);
        }
        let id = NodeId { event, var };
        let (node, new) = self.nodes.get_or_insert_with(id, Node::default);
        node.edges.push(Edge { target: prev, version: version.clone(), refs: 0 });
        if new {
            if let Some(e) = self.events.get_mut(&event) {
                e.0 = e.0.wrapping_add(1);
            }
        }
        id
    }

    pub fn release_node(&mut self, node: NodeId, version: &Dewey) {
        // Mostly one chain: the stack stays inline.
        let mut stack: smallvec::SmallVec<[(NodeId, Dewey); 2]> = smallvec::smallvec![(node, version.clone())];
        while let Some((cur, v)) = stack.pop() {
            let Some(n) = self.nodes.get_mut(&cur) else { break };
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
                self.nodes.remove(&cur);
                self.release_event(cur.event);
            }
        }
    }

    /// Every path of `version` ending at `node`, earliest event first; the first path is the one
    /// that follows the last compatible edge at each node.
    pub fn extract(&self, node: NodeId, version: &Dewey) -> Vec<EventPath> {
        let mut out = Vec::new();
        if !self.nodes.contains_key(&node) {
            return out;
        }
        let mut stack: Vec<(Option<NodeId>, Dewey, Vec<NodeId>)> = vec![(Some(node), version.clone(), Vec::new())];
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
                Some(id) => {
                    path.push(id);
                    if let Some(n) = self.nodes.get(&id) {
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
    pub fn first_path(&self, node: NodeId, version: &Dewey, out: &mut Vec<NodeId>) {
        let mut cur = Some(node);
        let mut v = version.clone();
        while let Some(id) = cur {
            let Some(n) = self.nodes.get(&id) else {
                out.clear();
                return;
            };
            out.push(id);
            match n.edges.iter().rev().find(|e| v.is_compatible_with(&e.version)) {
                Some(e) => {
                    cur = e.target;
                    v = e.version.clone();
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
