//! One pattern's partial matches for one key (FlinkCEP's `NFA` + `NFAState`), processing events
//! and the passage of time. Semantics follow `docs/design/flinkcep-runtime.md` step by step: the
//! visiting order of partial matches, version numbering, reference counting and the skip
//! strategies all decide what comes out, and in which order.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::sync::Arc;

use super::buffer::{EventId, EventPath, NodeId, NodeRef, SharedBuffer};
use super::dewey::Dewey;
use super::pq::JavaPq;
use crate::expr::{AggFunc, ConditionCache, Fold, MatchView};
use crate::nfa::{Action, FieldId, Nfa, Read, SkipStrategy, StateId, StateKind, VarId};
use crate::refdata::Bound;
use crate::value::{Event, Value};
use smallvec::SmallVec;

/// A partial match (or a completed match waiting to be released).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    pub state: StateId,
    pub version: Dewey,
    /// Node of the last taken event; `None` for the fresh start state.
    pub prev: Option<NodeRef>,
    pub start_ts: i64,
    pub prev_ts: i64,
    pub start_id: Option<EventId>,
    /// What the conditions read of the events taken so far ([`Nfa::reads`](crate::Nfa), in
    /// order), folded as the events were taken: the same values as a walk over the partial
    /// match's path, without the walk. `None`: nothing read has been taken yet. Derived: not
    /// in snapshots, rebuilt from the path when a snapshot is read.
    pub regs: Option<Arc<[Fold]>>,
}

/// The registers after taking `event` into `var`: those reading `var` fold its value in (a new
/// array), the others are shared.
fn take_regs(reads: &[Read], regs: &Option<Arc<[Fold]>>, var: VarId, event: &Event) -> Option<Arc<[Fold]>> {
    if !reads.iter().any(|r| r.1 == var) {
        return regs.clone();
    }
    let mut folds: Vec<Fold> = match regs {
        Some(r) => r.to_vec(),
        None => vec![Fold::default(); reads.len()],
    };
    for (fold, (func, v, field)) in folds.iter_mut().zip(reads) {
        if *v == var {
            fold.add(*func, field.map_or(Value::Null, |f| event.field(f).clone()));
        }
    }
    Some(folds.into())
}

/// The registers of a partial match whose last taken event is `prev`, rebuilt from its path.
fn regs_from_path(nfa: &Nfa, buffer: &SharedBuffer, prev: Option<NodeRef>, version: &Dewey) -> Option<Arc<[Fold]>> {
    let (Some(prev), false) = (prev, nfa.reads.is_empty()) else { return None };
    let mut nodes = Vec::new();
    buffer.first_path(prev, version, &mut nodes);
    let mut regs = None;
    for n in nodes.iter().rev() {
        if let Some(e) = buffer.event(n.event) {
            regs = take_regs(&nfa.reads, &regs, n.var, e);
        }
    }
    regs
}

fn key(p: &Partial) -> (i64, u32) {
    match p.start_id {
        Some(e) => (e.ts, e.id),
        None => (i64::MAX, u32::MAX),
    }
}

/// FlinkCEP's comparator: by start event only.
fn cmp(a: &Partial, b: &Partial) -> Ordering {
    key(a).cmp(&key(b))
}

/// Per variable (in order of its first event), the events it took.
pub type MatchEvents = Vec<(VarId, Vec<Arc<Event>>)>;

/// A match: per variable (in order of their first event) the events it took, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub events: MatchEvents,
}

/// A partial match that ran out of time, and when it did.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeout {
    pub events: MatchEvents,
    pub ts: i64,
}

/// A started partial match as an explanation shows it (read-only, [`RunState::partial_views`]):
/// the NFA state it waits in, the time of its first event and the events it took so far.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialView {
    pub state: StateId,
    pub start_ts: i64,
    /// Per variable (in order of its first event), the events it took, in order.
    pub events: MatchEvents,
}

/// The run state of one pattern for one key.
#[derive(Clone, Debug)]
pub struct RunState {
    partial: JavaPq<Partial>,
    completed: JavaPq<Partial>,
    /// Set when a run started (FlinkCEP registers a window timer then).
    pub new_start: bool,
    pub buffer: SharedBuffer,
    /// Reused between events.
    scratch: Vec<Partial>,
    spare: Vec<Partial>,
    cond_cache: Option<ConditionCache>,
    /// Per state, for the event being processed: whether its partial matches stay as they are.
    stay: Vec<u8>,
}

const UNKNOWN: u8 = 0;
const STAYS: u8 = 1;
const MOVES: u8 = 2;
const DEPENDS: u8 = 3;

impl RunState {
    pub fn new(nfa: &Nfa) -> Self {
        let mut partial = JavaPq::new();
        partial.offer(start_state(nfa.start, Dewey::new(1)), cmp);
        RunState {
            partial,
            completed: JavaPq::new(),
            new_start: false,
            buffer: SharedBuffer::default(),
            scratch: Vec::new(),
            spare: Vec::new(),
            cond_cache: None,
            stay: Vec::new(),
        }
    }

    /// Only the fresh start state, nothing held, nothing buffered: the key holds no memory.
    pub fn is_idle(&self) -> bool {
        self.completed.is_empty() && self.partial.len() == 1 && self.partial.iter().all(|p| p.start_id.is_none())
    }

    /// Keeps at most `max` partial matches, dropping those that started earliest; returns how
    /// many were dropped, and the held-back matches that this releases: a completed match waits
    /// only for partial matches that started before it (FlinkCEP's skip strategies), and when
    /// the budget drops those, it is released now, not at the next step that changes something.
    pub fn enforce_budget(&mut self, nfa: &Nfa, max: usize) -> (usize, Vec<Match>) {
        // Counted first: under the budget (every event, when one is set) nothing is allocated.
        if self.partial.iter().filter(|p| p.start_id.is_some()).count() <= max {
            return (0, Vec::new());
        }
        let mut doomed: Vec<Partial> = self.partial.iter().filter(|p| p.start_id.is_some()).cloned().collect();
        doomed.sort_by(cmp);
        doomed.truncate(doomed.len() - max);
        for d in &doomed {
            if let Some(prev) = d.prev {
                self.buffer.release_node(prev, &d.version);
            }
        }
        self.partial.remove_if(|p| doomed.contains(p), cmp);
        let mut released = Vec::new();
        if !self.completed.is_empty() {
            let mut partial = std::mem::take(&mut self.partial);
            self.release_completed(nfa, JavaPq::new(), &mut partial, &mut released);
            self.partial = partial;
        }
        (doomed.len(), released)
    }

    /// Number of partial matches (the fresh start state not counted). Constant time: the queue
    /// always holds exactly one fresh start state (it is re-offered on every event, and nothing
    /// else removes a state that has not started).
    pub fn partial_count(&self) -> usize {
        self.partial.len().saturating_sub(1)
    }

    /// The started partial matches (the fresh start state excluded), ordered by their first event
    /// (time, then arrival) as the queue compares them; partial matches that share a first event
    /// keep the queue's (deterministic) order. For explanations: nothing changes.
    pub fn partial_views(&self) -> Vec<PartialView> {
        let mut started: Vec<&Partial> = self.partial.iter().filter(|p| p.start_id.is_some()).collect();
        started.sort_by(|a, b| cmp(a, b));
        started
            .into_iter()
            .map(|p| PartialView { state: p.state, start_ts: p.start_ts, events: current_events(&self.buffer, p) })
            .collect()
    }

    /// The partial matches and the completed matches held back, each in backing-array order
    /// (what a snapshot writes).
    pub(super) fn queues(&self) -> (&[Partial], &[Partial]) {
        (self.partial.as_slice(), self.completed.as_slice())
    }

    /// A run state from what [`RunState::queues`], `new_start` and `buffer` held; `None` unless
    /// both queues are heaps in FlinkCEP's order. The scratch space starts empty (it holds nothing
    /// between events), and the partial matches' registers are rebuilt from their paths.
    pub(super) fn from_parts(
        nfa: &Nfa,
        mut partial: Vec<Partial>,
        mut completed: Vec<Partial>,
        new_start: bool,
        buffer: SharedBuffer,
    ) -> Option<Self> {
        for p in partial.iter_mut().chain(completed.iter_mut()) {
            p.regs = regs_from_path(nfa, &buffer, p.prev, &p.version);
        }
        Some(RunState {
            partial: JavaPq::from_heap(partial, cmp)?,
            completed: JavaPq::from_heap(completed, cmp)?,
            new_start,
            buffer,
            scratch: Vec::new(),
            spare: Vec::new(),
            cond_cache: None,
            stay: Vec::new(),
        })
    }
}

fn start_state(state: StateId, version: Dewey) -> Partial {
    Partial { state, version, prev: None, start_ts: -1, prev_ts: -1, start_id: None, regs: None }
}

/// Condition context: the events the partial match has taken so far (never the candidate):
/// what conditions read of them from its registers, or (without `reads`) found on first use by
/// walking the match's path in the shared buffer (newest first).
struct Ctx<'a> {
    buffer: &'a SharedBuffer,
    partial: &'a Partial,
    path: RefCell<Option<Vec<NodeId>>>,
    /// The pattern's reads, when the registers answer them.
    reads: Option<&'a [Read]>,
}

impl<'a> Ctx<'a> {
    fn new(buffer: &'a SharedBuffer, partial: &'a Partial, reads: Option<&'a [Read]>) -> Self {
        Ctx { buffer, partial, path: RefCell::new(None), reads }
    }
}

impl MatchView for Ctx<'_> {
    fn folded(&self, func: AggFunc, var: VarId, field: Option<FieldId>) -> Option<Value> {
        let i = self.reads?.iter().position(|r| *r == (func, var, field))?;
        Some(match &self.partial.regs {
            Some(regs) => regs.get(i)?.result(func),
            None => Fold::default().result(func),
        })
    }

    fn visit(&self, var: VarId, f: &mut dyn FnMut(&Event) -> bool) {
        let mut path = self.path.borrow_mut();
        let nodes = path.get_or_insert_with(|| {
            let mut v = Vec::new();
            if let Some(prev) = self.partial.prev {
                self.buffer.first_path(prev, &self.partial.version, &mut v);
            }
            v
        });
        // Oldest first, as FlinkCEP's context lists them.
        for n in nodes.iter().rev().filter(|n| n.var == var) {
            if let Some(e) = self.buffer.event(n.event) {
                if !f(e) {
                    break;
                }
            }
        }
    }
}

fn current_events(buffer: &SharedBuffer, p: &Partial) -> MatchEvents {
    let Some(prev) = p.prev else { return Vec::new() };
    buffer.extract(prev, &p.version).first().map(|path| buffer.materialize(path)).unwrap_or_default()
}

/// An event being processed; registered in the buffer when first taken.
struct Incoming<'r> {
    event: Arc<Event>,
    /// The reference tables conditions read.
    refs: &'r Bound,
    ts: i64,
    id: Option<EventId>,
    /// Conditions read earlier events from the registers (else by walking the path).
    registers: bool,
    /// Results of the conditions that do not depend on the partial match, for this event.
    cache: ConditionCache,
    /// Whether the event may start a partial match (see [`RunState::step_gated`]).
    starts: bool,
}

impl Incoming<'_> {
    fn id(&mut self, buffer: &mut SharedBuffer) -> EventId {
        *self.id.get_or_insert_with(|| buffer.register_event(self.event.clone(), self.ts))
    }
}

struct Outgoing {
    /// (source state, edge index)
    edges: SmallVec<[(StateId, usize); 8]>,
    takes: u32,
    ignores: u32,
}

fn decision_graph(
    nfa: &Nfa,
    p: &Partial,
    event: &Event,
    ctx: &Ctx<'_>,
    cache: &mut ConditionCache,
    refs: &Bound,
) -> Outgoing {
    let mut out = Outgoing { edges: SmallVec::new(), takes: 0, ignores: 0 };
    let mut stack: SmallVec<[StateId; 8]> = smallvec::smallvec![p.state];
    while let Some(s) = stack.pop() {
        for (i, e) in nfa.state(s).edges.iter().enumerate() {
            if !e.cond.holds_cached_with(&nfa.conditions, event, ctx, cache, refs) {
                continue;
            }
            match e.action {
                Action::Proceed => stack.push(e.target),
                Action::Ignore | Action::Take => {
                    out.edges.push((s, i));
                    let self_ignore = e.action == Action::Ignore && e.target == p.state;
                    if !self_ignore {
                        if e.action == Action::Ignore {
                            out.ignores += 1;
                        } else {
                            out.takes += 1;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Whether every partial match waiting in `state` stays exactly as it is for this event, decided
/// by the event alone (`None` when a guard's result depends on the match). A started partial
/// match stays when only its state's self-IGNORE edge passes (no branch: FlinkCEP re-creates it
/// with the same version); the fresh start state stays when no TAKE or IGNORE edge passes (it is
/// re-offered with the same version, and no run starts).
fn stays(nfa: &Nfa, state: StateId, event: &Event, cache: &mut ConditionCache, refs: &Bound) -> Option<bool> {
    let start = state == nfa.start;
    let mut stack: SmallVec<[StateId; 8]> = smallvec::smallvec![state];
    let mut only_self_ignore = true;
    let mut edges = 0;
    while let Some(s) = stack.pop() {
        for e in &nfa.state(s).edges {
            if !e.cond.holds_for_any_with(&nfa.conditions, event, cache, refs)? {
                continue;
            }
            match e.action {
                Action::Proceed => stack.push(e.target),
                Action::Ignore if e.target == state && !start => edges += 1,
                _ => only_self_ignore = false,
            }
        }
    }
    Some(only_self_ignore && (start || edges == 1))
}

/// Whether `event` leaves a key that holds nothing for the pattern (only the fresh start state)
/// as it is: no partial match starts (decided by the event alone; `false` when a start guard
/// reads the match). `cache` is reset here.
pub(super) fn starts_nothing(nfa: &Nfa, event: &Event, cache: &mut ConditionCache, refs: &Bound) -> bool {
    cache.reset();
    stays(nfa, nfa.start, event, cache, refs) == Some(true)
}

/// A run as seen from outside, enough to tell without touching it that an event or an advance
/// of time leaves it as it is ([`step_changes_nothing`], [`time_changes_nothing`]): for the
/// multi-pattern operator, which keeps one per pattern and key beside the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Summary {
    /// The states its partial matches wait in (bit `i`: state `i`); `None` when unknown (more
    /// than 64 states) or when a started partial match waits in the start state (it takes the
    /// full step).
    states: Option<u64>,
    /// When the queue's head (the earliest start) started, if it is a started partial match.
    head_start: Option<i64>,
    /// Completed matches are held back.
    completed: bool,
    /// [`RunState::is_idle`].
    pub idle: bool,
}

impl Summary {
    /// A run's summary from its parts: the states its partial matches wait in (the fresh start
    /// state's included; `None`: unknown), the earliest start, whether matches are held back.
    pub(super) fn of(states: Option<u64>, head_start: Option<i64>, completed: bool, idle: bool) -> Self {
        Summary { states, head_start, completed, idle }
    }
}

impl RunState {
    pub(super) fn summary(&self, nfa: &Nfa) -> Summary {
        let mut states = Some(0u64);
        for p in self.partial.iter() {
            let i = p.state.index();
            states = match states {
                Some(m) if i < 64 && !(p.start_id.is_some() && p.state == nfa.start) => Some(m | 1 << i),
                _ => None,
            };
        }
        let head_start = self.partial.peek().and_then(|p| p.start_id.map(|_| p.start_ts));
        Summary { states, head_start, completed: !self.completed.is_empty(), idle: self.is_idle() }
    }
}

/// Whether [`RunState::step`] (skipping unchanged steps) would leave a run with this summary as
/// it is for `event`: every state its partial matches wait in stays, by the event alone (the
/// same decision as the step's). `cache` is reset here.
pub(super) fn step_changes_nothing(
    nfa: &Nfa,
    s: &Summary,
    event: &Event,
    cache: &mut ConditionCache,
    refs: &Bound,
) -> bool {
    let Some(mut mask) = s.states else { return false };
    cache.reset();
    while mask != 0 {
        let i = mask.trailing_zeros();
        mask &= mask - 1;
        if stays(nfa, StateId(i), event, cache, refs) != Some(true) {
            return false;
        }
    }
    true
}

/// Whether [`RunState::advance_time`] to `ts` would release and time out nothing for a run with
/// this summary (its early exit: nothing held back, the earliest start within the window, no
/// windows to the previous event).
pub(super) fn time_changes_nothing(nfa: &Nfa, s: &Summary, ts: i64) -> bool {
    !s.completed
        && !nfa.has_state_windows()
        && match (nfa.window_ms, s.head_start) {
            (Some(w), Some(start)) if w > 0 => ts.wrapping_sub(start) < w,
            _ => true,
        }
}

fn final_after_proceed(
    nfa: &Nfa,
    from: StateId,
    event: &Event,
    ctx: &Ctx<'_>,
    cache: &mut ConditionCache,
    refs: &Bound,
) -> Option<StateId> {
    let mut stack: SmallVec<[StateId; 8]> = smallvec::smallvec![from];
    while let Some(s) = stack.pop() {
        for e in &nfa.state(s).edges {
            if e.action == Action::Proceed && e.cond.holds_cached_with(&nfa.conditions, event, ctx, cache, refs) {
                if nfa.state(e.target).kind == StateKind::Final {
                    return Some(e.target);
                }
                stack.push(e.target);
            }
        }
    }
    None
}

fn self_increase(ignores: u32, takes: u32) -> u32 {
    if takes == 0 && ignores == 0 {
        0
    } else {
        ignores + takes.max(1)
    }
}

/// Adds a successor and locks its path. A successor with the same node and version as its
/// parent takes over the parent's lock instead (FlinkCEP locks it and then releases the parent:
/// the same counts, without the two walks).
fn add_partial(out: &mut Vec<Partial>, buffer: &mut SharedBuffer, p: Partial, parent: &Partial, inherited: &mut bool) {
    if !*inherited && p.prev == parent.prev && p.version == parent.version {
        *inherited = true;
    } else if let Some(prev) = p.prev {
        buffer.lock_node(prev, &p.version);
    }
    out.push(p);
}

/// The successors of `p` for the event, appended to `out` (which the caller reuses). A take
/// into a (non-negated) variable that `p` had not taken yet counts in `reached[var]`.
fn next_states(
    nfa: &Nfa,
    buffer: &mut SharedBuffer,
    p: &Partial,
    ev: &mut Incoming<'_>,
    out: &mut Vec<Partial>,
    reached: &mut [u64],
) {
    let is_start = p.state == nfa.start;
    if is_start && p.start_id.is_none() && !ev.starts {
        // The fresh start state takes nothing from an event that may start nothing.
        out.push(p.clone());
        return;
    }
    let reads = ev.registers.then_some(&nfa.reads[..]);
    let og = {
        let ctx = Ctx::new(buffer, p, reads);
        decision_graph(nfa, p, &ev.event, &ctx, &mut ev.cache, ev.refs)
    };
    let (takes, ignores) = (og.takes, og.ignores);
    let mut take_to_visit = takes.saturating_sub(1);
    let mut ignore_to_visit = ignores;
    let take_to_skip = takes.saturating_sub(1);
    let mut inherited = false;
    for (src, i) in og.edges {
        let edge = &nfa.state(src).edges[i];
        match edge.action {
            Action::Ignore => {
                if is_start {
                    continue;
                }
                let version = if edge.target == p.state {
                    p.version.increase(self_increase(ignores, takes))
                } else {
                    let v = p.version.increase(take_to_skip + ignore_to_visit).add_stage();
                    ignore_to_visit = ignore_to_visit.saturating_sub(1);
                    v
                };
                let n = Partial { state: edge.target, version, ..p.clone() };
                add_partial(out, buffer, n, p, &mut inherited);
            }
            Action::Take => {
                let current = p.version.increase(take_to_visit);
                let next = current.add_stage();
                take_to_visit = take_to_visit.saturating_sub(1);
                let var = nfa.state(src).var.unwrap_or(VarId(0));
                if p.prev.is_none_or(|n| n.var() != var) {
                    if let Some(r) = reached.get_mut(var.index()).filter(|_| !nfa.vars[var.index()].negated) {
                        *r += 1;
                    }
                }
                let eid = ev.id(buffer);
                let node = buffer.put(var, eid, p.prev, &current);
                let (start_ts, start_id) = if is_start { (ev.ts, Some(eid)) } else { (p.start_ts, p.start_id) };
                let n = Partial {
                    state: edge.target,
                    version: next.clone(),
                    prev: Some(node),
                    start_ts,
                    prev_ts: ev.ts,
                    start_id,
                    regs: take_regs(&nfa.reads, &p.regs, var, &ev.event),
                };
                add_partial(out, buffer, n.clone(), p, &mut inherited);
                let fin = {
                    let ctx = Ctx::new(buffer, p, reads);
                    final_after_proceed(nfa, edge.target, &ev.event, &ctx, &mut ev.cache, ev.refs)
                };
                if let Some(f) = fin {
                    add_partial(out, buffer, Partial { state: f, ..n }, p, &mut inherited);
                }
            }
            Action::Proceed => {}
        }
    }
    if is_start {
        out.push(start_state(p.state, p.version.increase(self_increase(ignores, takes))));
    }
    if let (Some(prev), false) = (p.prev, inherited) {
        buffer.release_node(prev, &p.version);
    }
}

impl RunState {
    /// Feeds one event at time `ts`; returns the matches it completes (and releases).
    pub fn process(&mut self, nfa: &Nfa, event: Arc<Event>, ts: i64) -> Vec<Match> {
        self.process_counting(nfa, event, ts, &mut [])
    }

    /// [`RunState::process`], counting in `reached` (indexed by [`VarId`]) the partial matches
    /// that took their first event into each variable: the pattern's funnel. Negated variables
    /// are not counted; a shorter slice counts only the variables it covers.
    pub fn process_counting(&mut self, nfa: &Nfa, event: Arc<Event>, ts: i64, reached: &mut [u64]) -> Vec<Match> {
        self.step(nfa, event, ts, reached, true)
    }

    /// [`RunState::process_counting`]; with `skip_unchanged` false, FlinkCEP's full step is taken
    /// even for an event that leaves every partial match as it is, and conditions walk the path
    /// instead of reading registers (same result, more work: for differential tests).
    pub fn step(
        &mut self,
        nfa: &Nfa,
        event: Arc<Event>,
        ts: i64,
        reached: &mut [u64],
        skip_unchanged: bool,
    ) -> Vec<Match> {
        self.step_gated(nfa, event, ts, reached, skip_unchanged, true)
    }

    /// [`RunState::step`]; with `starts` false, the event starts no partial match (the fresh
    /// start state stays as it is) while the started ones go on as usual: how a pattern version
    /// that is being replaced finishes the partial matches it holds (the operator's drain).
    pub fn step_gated(
        &mut self,
        nfa: &Nfa,
        event: Arc<Event>,
        ts: i64,
        reached: &mut [u64],
        skip_unchanged: bool,
        starts: bool,
    ) -> Vec<Match> {
        self.step_with(nfa, event, ts, reached, skip_unchanged, starts, Bound::empty())
    }

    /// [`RunState::step_gated`], conditions reading reference tables from `refs` (the plain
    /// forms read none: every table is empty).
    #[allow(clippy::too_many_arguments)]
    pub fn step_with(
        &mut self,
        nfa: &Nfa,
        event: Arc<Event>,
        ts: i64,
        reached: &mut [u64],
        skip_unchanged: bool,
        starts: bool,
        refs: &Bound,
    ) -> Vec<Match> {
        let mut cache = self.cond_cache.take().unwrap_or_else(|| ConditionCache::new(&nfa.conditions));
        cache.reset();
        let mut stay = std::mem::take(&mut self.stay);
        stay.clear();
        stay.resize(nfa.states.len(), UNKNOWN);
        // Skip what cannot change anything: when every partial match (the fresh start state
        // included) stays as it is, FlinkCEP's step would rebuild the same queue (re-offering a
        // heap's elements in array order gives the same array), release nothing (the queue's
        // head is the same as after the last step) and take no event.
        let unchanged = skip_unchanged
            && self.partial.iter().all(|p| {
                // The start state's rule is for its fresh partial match (a started one there
                // would be replaced by a fresh one): anything else takes the full step.
                if p.state == nfa.start && p.start_id.is_some() {
                    return false;
                }
                if p.state == nfa.start && !starts {
                    return true;
                }
                let s = &mut stay[p.state.index()];
                if *s == UNKNOWN {
                    *s = match stays(nfa, p.state, &event, &mut cache, refs) {
                        Some(true) => STAYS,
                        Some(false) => MOVES,
                        None => DEPENDS,
                    };
                }
                *s == STAYS
            });
        if unchanged {
            self.stay = stay;
            self.cond_cache = Some(cache);
            return Vec::new();
        }
        let mut ev = Incoming { event, refs, ts, id: None, cache, registers: skip_unchanged, starts };
        let mut new_partial = JavaPq::reusing(std::mem::take(&mut self.spare));
        let mut potential = JavaPq::new();
        let mut current = std::mem::take(&mut self.partial).into_vec();
        let mut next = std::mem::take(&mut self.scratch);
        let mut retain = Vec::new();
        for p in current.drain(..) {
            if p.state != nfa.start {
                let s = &mut stay[p.state.index()];
                if *s == UNKNOWN {
                    *s = match stays(nfa, p.state, &ev.event, &mut ev.cache, refs) {
                        Some(true) => STAYS,
                        Some(false) => MOVES,
                        None => DEPENDS,
                    };
                }
                if *s == STAYS {
                    new_partial.offer(p, cmp);
                    continue;
                }
            }
            next.clear();
            next_states(nfa, &mut self.buffer, &p, &mut ev, &mut next, reached);
            retain.clear();
            let mut discard = false;
            for n in next.drain(..) {
                if p.state == nfa.start && n.start_ts > 0 {
                    self.new_start = true;
                }
                match nfa.state(n.state).kind {
                    StateKind::Final => potential.offer(n, cmp),
                    StateKind::Stop => {
                        discard = true;
                        if let Some(prev) = n.prev {
                            self.buffer.release_node(prev, &n.version);
                        }
                    }
                    _ => retain.push(n),
                }
            }
            if discard {
                for r in retain.drain(..) {
                    if let Some(prev) = r.prev {
                        self.buffer.release_node(prev, &r.version);
                    }
                }
            } else {
                for r in retain.drain(..) {
                    new_partial.offer(r, cmp);
                }
            }
        }
        self.scratch = next;
        // Keep the allocation (drained: the old partial matches moved on or were dropped).
        self.spare = current;
        self.stay = stay;
        self.cond_cache = Some(std::mem::take(&mut ev.cache));
        let mut result = Vec::new();
        self.release_completed(nfa, potential, &mut new_partial, &mut result);
        self.partial = new_partial;
        if let Some(id) = ev.id {
            self.buffer.release_event(id);
        }
        result
    }

    /// Advances time to `ts`: partial matches whose window has passed time out (or, waiting on a
    /// `not followed by` at the end, complete); held-back matches may be released.
    /// Timed-out partial matches are returned (with their events) only if `timeouts_wanted`;
    /// the third value counts them either way.
    pub fn advance_time(&mut self, nfa: &Nfa, ts: i64, timeouts_wanted: bool) -> (Vec<Match>, Vec<Timeout>, usize) {
        let mut result = Vec::new();
        let mut timeouts = Vec::new();
        let mut expired = 0;
        let window = nfa.window_ms.unwrap_or(0);
        let expired_to_prev = |p: &Partial| {
            p.state != nfa.start
                && nfa.state(p.state).window_ms.is_some_and(|w| w > 0 && ts.wrapping_sub(p.prev_ts) >= w)
        };
        // The head of the queue has the earliest start: if it has not expired, none has.
        let expired_to_first = window > 0
            && self.partial.peek().is_some_and(|p| p.start_id.is_some() && ts.wrapping_sub(p.start_ts) >= window);
        let any_expired = expired_to_first || (nfa.has_state_windows() && self.partial.iter().any(expired_to_prev));
        if self.completed.is_empty() && !any_expired {
            // Nothing to do but forget old id counters: rebuilding the queue would give the same layout.
            self.buffer.advance_time(ts);
            return (result, timeouts, expired);
        }
        let mut new_partial = JavaPq::new();
        let mut potential = JavaPq::new();
        let current = std::mem::take(&mut self.partial).into_vec();
        for p in current {
            let state = nfa.state(p.state);
            let is_start = p.state == nfa.start;
            // Java's long arithmetic wraps; so does this (it matters only at the end of time).
            let timed_out = |since: i64, w: i64| !is_start && w > 0 && ts.wrapping_sub(since) >= w;
            let to_prev = state.window_ms.is_some_and(|w| timed_out(p.prev_ts, w));
            let to_first = timed_out(p.start_ts, window);
            if to_prev || to_first {
                if state.kind == StateKind::Pending {
                    potential.offer(p, cmp);
                    continue;
                }
                expired += 1;
                if timeouts_wanted {
                    let events = current_events(&self.buffer, &p);
                    let at = if to_prev {
                        p.prev_ts.wrapping_add(state.window_ms.unwrap_or(0))
                    } else {
                        p.start_ts.wrapping_add(window)
                    };
                    timeouts.push(Timeout { events, ts: at });
                }
                if let Some(prev) = p.prev {
                    self.buffer.release_node(prev, &p.version);
                }
            } else {
                new_partial.offer(p, cmp);
            }
        }
        self.release_completed(nfa, potential, &mut new_partial, &mut result);
        self.partial = new_partial;
        self.buffer.advance_time(ts);
        (result, timeouts, expired)
    }

    fn release_completed(
        &mut self,
        nfa: &Nfa,
        potential: JavaPq<Partial>,
        partial: &mut JavaPq<Partial>,
        result: &mut Vec<Match>,
    ) {
        for m in potential.into_vec() {
            self.completed.offer(m, cmp);
        }
        let skipping = nfa.skip != SkipStrategy::NoSkip;
        while let Some(m) = self.completed.peek() {
            if skipping {
                if let Some(p) = partial.peek() {
                    if cmp(m, p) == Ordering::Greater {
                        break;
                    }
                }
            }
            let Some(m) = self.completed.poll(cmp) else { break };
            let Some(prev) = m.prev else { continue };
            let paths = self.buffer.extract(prev, &m.version);
            if skipping {
                if let Some(pid) = pruning_id(nfa.skip, &paths) {
                    prune(&mut self.buffer, partial, nfa.skip, pid);
                    prune(&mut self.buffer, &mut self.completed, nfa.skip, pid);
                }
            }
            if let Some(first) = paths.first() {
                result.push(Match { events: self.buffer.materialize(first) });
            }
            self.buffer.release_node(prev, &m.version);
        }
    }
}

/// The event relative to which a skip strategy prunes (FlinkCEP's `getPruningId`).
fn pruning_id(skip: SkipStrategy, paths: &[EventPath]) -> Option<EventId> {
    let all = || paths.iter().flatten();
    let of = |x: VarId| all().filter(move |(v, _)| *v == x).map(|(_, l)| l);
    match skip {
        SkipStrategy::NoSkip => None,
        SkipStrategy::ToNext => all().filter_map(|(_, l)| l.first().copied()).min(),
        SkipStrategy::PastLastEvent => all().filter_map(|(_, l)| l.last().copied()).max(),
        SkipStrategy::ToFirst(x) => of(x).filter_map(|l| l.first().copied()).max(),
        SkipStrategy::ToLast(x) => of(x).filter_map(|l| l.last().copied()).max(),
    }
}

fn prune(buffer: &mut SharedBuffer, q: &mut JavaPq<Partial>, skip: SkipStrategy, pid: EventId) {
    let should = |p: &Partial| match p.start_id {
        Some(s) => match skip {
            SkipStrategy::ToNext | SkipStrategy::PastLastEvent => s <= pid,
            _ => s < pid,
        },
        None => false,
    };
    let doomed: Vec<Partial> = q.iter().filter(|p| should(p)).cloned().collect();
    for d in &doomed {
        if let Some(prev) = d.prev {
            buffer.release_node(prev, &d.version);
        }
    }
    q.remove_if(|p| doomed.contains(p), cmp);
}
