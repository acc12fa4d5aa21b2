//! The fast tier: a key's run for a *chain* pattern without the shared buffer, Dewey versions
//! or the priority queue. A chain is a sequence of single elements (no quantifier, not
//! optional, not negated), each after the first joined by `next` or `followed by`, with at most
//! a window on the whole pattern (none on an element), any skip strategy and any conditions
//! (on the event, on earlier elements). P1 of the FlinkCEP benchmark is one.
//!
//! # Why it gives the exact runtime's output
//!
//! In a chain's automaton ([`Chain::of`] checks the shape on the compiled [`Nfa`], so a
//! builder-made automaton of that shape qualifies too) the start state has one TAKE edge; the
//! state waiting for element `k` has one TAKE edge (to the next element, or to the final
//! state) and, for `followed by`, one self-IGNORE edge whose guard is the TAKE guard negated;
//! there are no PROCEED edges. So in [`RunState::step`]:
//!
//! - a started partial match never branches: it takes the event (TAKE holds), stays (the
//!   IGNORE holds, exactly when the TAKE does not) or, for `next`, has no successor and is
//!   dropped. It is a line of taken events, one per element: its shared-buffer path is that
//!   line, and the extracted match and a timeout's events are those events, per variable in
//!   element order;
//! - the fresh start state starts a partial match when its TAKE holds (`new_start` when the
//!   event's time is positive, as FlinkCEP's check reads), and is re-offered either way;
//! - the queue compares by first event. Events are processed in time order and a key's events
//!   are registered in processing order, so the first events' ids order as the events were
//!   processed: this tier numbers a key's events in processing order instead. A new partial
//!   match starts at the newest event and is offered right before the fresh start state (the
//!   greatest), so the queue's array, rebuilt by offering in array order, stays sorted: the
//!   array order (the order of timeouts) is the order of first events, which `runs` keeps;
//! - completed matches are released in order of first event while no partial match started
//!   earlier (when a skip strategy is set), each pruning partial and completed matches by
//!   [`pruning_id`](super::run)'s rule on first events, applied here to the same events.
//!
//! [`RunState::advance_time`] times out, in array order, the started partial matches whose
//! first event is a window old, after checking the queue's head (the earliest); then releases
//! as above. [`RunState::enforce_budget`] drops the earliest.
//!
//! # Snapshots
//!
//! A key's state must be the same bytes whichever tier ran it. The exact state of a run is a
//! function of the calls that changed it since it was made (the run starts afresh whenever the
//! key goes idle): a run here logs those calls (an event that took or dropped something, a
//! time that timed out or released something, a budget that dropped something), and
//! [`FastRun::to_exact`] replays them on a fresh [`RunState`], then advances it to the last
//! time the run saw (which only forgets per-timestamp id counters: the calls left out change
//! nothing else). A logged event keeps the reference tables its conditions read (the operator's
//! installed snapshot then), so that the replay reads what the step read even when the tables
//! changed since (a pattern reading no table logs an empty [`Bound`], a null pointer).
//! When a key's log grows past its bound the key falls back to the exact runtime
//! (the replayed state) until it goes idle. The differential harness compares every output and,
//! after every call, the snapshot bytes of every changed key against FlinkCEP's full step.
//!
//! The multi-pattern operator runs it too (without snapshots: a key's log only bounds how long
//! it stays on this tier).

use std::collections::VecDeque;
use std::sync::Arc;

use smallvec::SmallVec;

use super::run::{Match, MatchEvents, RunState, Summary, Timeout};
use crate::expr::{Cond, ConditionCache, MatchView};
use crate::nfa::{Action, Nfa, SkipStrategy, StateId, StateKind, VarId};
use crate::refdata::Bound;
use crate::value::Event;

/// A key's run falls back to the exact runtime after this many logged calls by default.
pub const LOG_MAX: usize = 256;

#[derive(Clone, Debug)]
struct Element {
    /// The state that waits for it.
    state: StateId,
    var: VarId,
    take: Cond,
    /// `followed by` (a partial match waiting for it ignores other events); else `next`.
    relaxed: bool,
}

/// A pattern the fast tier runs: its elements in order (see the module's documentation).
#[derive(Clone, Debug)]
pub struct Chain {
    elements: Vec<Element>,
    /// The pattern's window, 0 for none.
    window: i64,
    skip: SkipStrategy,
    log_max: usize,
}

impl Chain {
    /// The chain of `nfa`, if it is one; a key falls back to the exact runtime after `log_max`
    /// logged calls.
    pub fn of(nfa: &Nfa, log_max: usize) -> Option<Chain> {
        if nfa.has_state_windows() {
            return None;
        }
        let mut elements: Vec<Element> = Vec::new();
        let mut s = nfa.start;
        loop {
            if elements.len() >= nfa.states.len() {
                return None;
            }
            let state = nfa.state(s);
            let var = state.var?;
            let info = nfa.vars.get(var.index())?;
            if state.kind != StateKind::Normal || info.looping || info.negated || elements.iter().any(|e| e.var == var)
            {
                return None;
            }
            let (take, ignore) = match state.edges.as_slice() {
                [t] if t.action == Action::Take => (t, None),
                [t, i] | [i, t] if t.action == Action::Take && i.action == Action::Ignore && s != nfa.start => {
                    (t, Some(i))
                }
                _ => return None,
            };
            let relaxed = match ignore {
                None => false,
                Some(i) if i.target == s && i.cond == Cond::negate(take.cond.clone()) => true,
                Some(_) => return None,
            };
            elements.push(Element { state: s, var, take: take.cond.clone(), relaxed });
            let next = nfa.state(take.target);
            if next.kind == StateKind::Final {
                if !next.edges.is_empty() {
                    return None;
                }
                break;
            }
            s = take.target;
        }
        Some(Chain { elements, window: nfa.window_ms.unwrap_or(0), skip: nfa.skip, log_max })
    }
}

/// A key's event as taken: its number in the key's processing order, and the event.
type Taken = (u64, Arc<Event>);

/// A started partial match (or a completed match held back): its events, one per element.
#[derive(Clone, Debug)]
struct Line {
    start_ts: i64,
    taken: SmallVec<[Taken; 3]>,
}

impl Line {
    fn start(&self) -> u64 {
        self.taken[0].0
    }

    fn events(&self, chain: &Chain) -> MatchEvents {
        chain.elements.iter().zip(&self.taken).map(|(el, (_, e))| (el.var, vec![e.clone()])).collect()
    }
}

/// What conditions see of a line: its events so far, per variable.
struct View<'a> {
    chain: &'a Chain,
    taken: &'a [Taken],
}

impl MatchView for View<'_> {
    fn visit(&self, var: VarId, f: &mut dyn FnMut(&Event) -> bool) {
        for (el, (_, e)) in self.chain.elements.iter().zip(self.taken) {
            if el.var == var && !f(e) {
                break;
            }
        }
    }
}

/// A call that changed the run, for [`FastRun::to_exact`].
#[derive(Clone, Debug)]
enum Call {
    /// An event, at its time, with the reference tables it was processed against.
    Step(Arc<Event>, i64, Bound),
    Time(i64),
    Budget(usize),
}

/// One key's run of a [`Chain`] (see the module's documentation).
#[derive(Clone, Debug, Default)]
pub struct FastRun {
    /// Started partial matches, by first event.
    runs: VecDeque<Line>,
    /// How many of `runs` wait for each element.
    waiting: Vec<u32>,
    /// Completed matches held back, by first event.
    completed: VecDeque<Line>,
    /// The next event's number.
    seq: u64,
    log: Vec<Call>,
    last_time: Option<i64>,
    /// Set when a run started (FlinkCEP registers a window timer then).
    pub new_start: bool,
}

impl FastRun {
    pub fn new(chain: &Chain) -> Self {
        FastRun { waiting: vec![0; chain.elements.len()], ..FastRun::default() }
    }

    /// Nothing started, nothing held back.
    pub fn is_idle(&self) -> bool {
        self.runs.is_empty() && self.completed.is_empty()
    }

    pub fn partial_count(&self) -> usize {
        self.runs.len()
    }

    /// Events held (counted once per line that holds them), for memory estimates.
    fn held_events(&self) -> usize {
        self.runs.iter().chain(&self.completed).map(|l| l.taken.len()).sum()
    }

    /// What [`RunState::summary`] gives for the same run: the states its partial matches wait
    /// in (the fresh start state's, always there, included), the earliest start, whether
    /// matches are held back.
    pub(super) fn summary(&self, chain: &Chain) -> Summary {
        let mut states = Some(0u64);
        let waiting = chain.elements.iter().zip(&self.waiting).enumerate().filter(|(k, (_, &w))| *k == 0 || w > 0);
        for (_, (el, _)) in waiting {
            let i = el.state.index();
            states = states.filter(|_| i < 64).map(|m| m | 1 << i);
        }
        Summary::of(states, self.runs.front().map(|l| l.start_ts), !self.completed.is_empty(), self.is_idle())
    }

    /// Whether the key has logged more calls than the chain allows: it should fall back.
    fn over_budget(&self, chain: &Chain) -> bool {
        self.log.len() > chain.log_max
    }

    /// The exact runtime's state for the same calls (see the module's documentation).
    pub fn to_exact(&self, nfa: &Nfa) -> RunState {
        let mut run = RunState::new(nfa);
        for call in &self.log {
            match call {
                Call::Step(e, ts, refs) => {
                    run.step_with(nfa, e.clone(), *ts, &mut [], true, true, refs);
                    run.new_start = false;
                }
                Call::Time(ts) => {
                    run.advance_time(nfa, *ts, false);
                }
                Call::Budget(max) => {
                    run.enforce_budget(nfa, *max);
                }
            }
        }
        if let Some(t) = self.last_time {
            run.advance_time(nfa, t, false);
        }
        run.new_start = self.new_start;
        run
    }

    /// [`RunState::process_counting`] for a chain; `cache` is reset here. With no reference
    /// tables ([`FastRun::step_with`]).
    pub fn step(
        &mut self,
        chain: &Chain,
        nfa: &Nfa,
        event: Arc<Event>,
        ts: i64,
        reached: &mut [u64],
        cache: &mut ConditionCache,
    ) -> Vec<Match> {
        self.step_with(chain, nfa, event, ts, reached, cache, Bound::empty())
    }

    /// [`FastRun::step`], conditions reading reference tables from `refs`.
    #[allow(clippy::too_many_arguments)]
    pub fn step_with(
        &mut self,
        chain: &Chain,
        nfa: &Nfa,
        event: Arc<Event>,
        ts: i64,
        reached: &mut [u64],
        cache: &mut ConditionCache,
        refs: &Bound,
    ) -> Vec<Match> {
        cache.reset();
        let seq = self.seq;
        self.seq += 1;
        let n = chain.elements.len();
        let mut changed = false;
        let mut done: SmallVec<[Line; 2]> = SmallVec::new();
        // When every element with waiting runs is `followed by` and its guard fails for this
        // event whatever the run holds, every run stays: skip the walk.
        let all_stay = chain.elements.iter().zip(&self.waiting).all(|(el, &w)| {
            w == 0 || (el.relaxed && el.take.holds_for_any_with(&nfa.conditions, &event, cache, refs) == Some(false))
        });
        if !all_stay {
            let waiting = &mut self.waiting;
            self.runs.retain_mut(|line| {
                let k = line.taken.len();
                let el = &chain.elements[k];
                let view = View { chain, taken: &line.taken };
                if el.take.holds_cached_with(&nfa.conditions, &event, &view, cache, refs) {
                    count(reached, el.var);
                    changed = true;
                    waiting[k] -= 1;
                    line.taken.push((seq, event.clone()));
                    if k + 1 == n {
                        done.push(std::mem::replace(line, Line { start_ts: 0, taken: SmallVec::new() }));
                        return false;
                    }
                    waiting[k + 1] += 1;
                    true
                } else if el.relaxed {
                    true
                } else {
                    changed = true;
                    waiting[k] -= 1;
                    false
                }
            });
        }
        let first = &chain.elements[0];
        if first.take.holds_cached_with(&nfa.conditions, &event, &View { chain, taken: &[] }, cache, refs) {
            count(reached, first.var);
            changed = true;
            if ts > 0 {
                self.new_start = true;
            }
            let line = Line { start_ts: ts, taken: smallvec::smallvec![(seq, event.clone())] };
            if n == 1 {
                done.push(line);
            } else {
                self.waiting[1] += 1;
                self.runs.push_back(line);
            }
        }
        let mut out = Vec::new();
        if changed {
            for line in done {
                insert(&mut self.completed, line);
            }
            self.release(chain, &mut out);
            self.log.push(Call::Step(event, ts, refs.clone()));
        }
        out
    }

    /// [`RunState::advance_time`] for a chain.
    pub fn advance_time(&mut self, chain: &Chain, ts: i64, timeouts_wanted: bool) -> (Vec<Match>, Vec<Timeout>, usize) {
        let (mut matches, mut timeouts, mut expired) = (Vec::new(), Vec::new(), 0);
        self.last_time = Some(ts);
        let w = chain.window;
        let head_expired = w > 0 && self.runs.front().is_some_and(|l| ts.wrapping_sub(l.start_ts) >= w);
        if !head_expired && self.completed.is_empty() {
            return (matches, timeouts, expired);
        }
        if head_expired {
            let waiting = &mut self.waiting;
            self.runs.retain(|line| {
                if ts.wrapping_sub(line.start_ts) < w {
                    return true;
                }
                expired += 1;
                waiting[line.taken.len()] -= 1;
                if timeouts_wanted {
                    timeouts.push(Timeout { events: line.events(chain), ts: line.start_ts.wrapping_add(w) });
                }
                false
            });
        }
        self.release(chain, &mut matches);
        if expired > 0 || !matches.is_empty() {
            self.log.push(Call::Time(ts));
        }
        (matches, timeouts, expired)
    }

    /// [`RunState::enforce_budget`] for a chain.
    pub fn enforce_budget(&mut self, chain: &Chain, max: usize) -> (usize, Vec<Match>) {
        if self.runs.len() <= max {
            return (0, Vec::new());
        }
        let dropped = self.runs.len() - max;
        for line in self.runs.drain(..dropped) {
            self.waiting[line.taken.len()] -= 1;
        }
        let mut released = Vec::new();
        self.release(chain, &mut released);
        self.log.push(Call::Budget(max));
        (dropped, released)
    }

    /// Releases the completed matches no earlier-started run holds back, pruning as the skip
    /// strategy says.
    fn release(&mut self, chain: &Chain, out: &mut Vec<Match>) {
        let skipping = chain.skip != SkipStrategy::NoSkip;
        while let Some(m) = self.completed.front() {
            if skipping && self.runs.front().is_some_and(|p| p.start() < m.start()) {
                break;
            }
            let Some(m) = self.completed.pop_front() else { break };
            if let Some((pid, inclusive)) = pruning(chain, &m) {
                let doomed = |l: &Line| if inclusive { l.start() <= pid } else { l.start() < pid };
                while self.runs.front().is_some_and(doomed) {
                    if let Some(l) = self.runs.pop_front() {
                        self.waiting[l.taken.len()] -= 1;
                    }
                }
                while self.completed.front().is_some_and(doomed) {
                    self.completed.pop_front();
                }
            }
            out.push(Match { events: m.events(chain) });
        }
    }
}

/// The event (by number) relative to which the skip strategy prunes after match `m`, and
/// whether a line starting at it is pruned too (FlinkCEP's `getPruningId` and `shouldPrune`).
fn pruning(chain: &Chain, m: &Line) -> Option<(u64, bool)> {
    let of = |x: VarId| chain.elements.iter().position(|e| e.var == x).and_then(|i| m.taken.get(i)).map(|t| t.0);
    match chain.skip {
        SkipStrategy::NoSkip => None,
        SkipStrategy::ToNext => m.taken.first().map(|t| (t.0, true)),
        SkipStrategy::PastLastEvent => m.taken.last().map(|t| (t.0, true)),
        SkipStrategy::ToFirst(x) | SkipStrategy::ToLast(x) => of(x).map(|s| (s, false)),
    }
}

/// Inserts a line into lines ordered by first event.
fn insert(lines: &mut VecDeque<Line>, line: Line) {
    let at = lines.partition_point(|l| l.start() < line.start());
    lines.insert(at, line);
}

fn count(reached: &mut [u64], var: VarId) {
    if let Some(r) = reached.get_mut(var.index()) {
        *r += 1;
    }
}

/// A key's run on either tier.
#[derive(Clone, Debug)]
pub enum Run {
    Exact(RunState),
    Fast(FastRun),
}

impl Run {
    pub fn is_idle(&self) -> bool {
        match self {
            Run::Exact(r) => r.is_idle(),
            Run::Fast(r) => r.is_idle(),
        }
    }

    pub fn partial_count(&self) -> usize {
        match self {
            Run::Exact(r) => r.partial_count(),
            Run::Fast(r) => r.partial_count(),
        }
    }

    /// (events, nodes) held, for memory estimates: a fast run's lines count as nodes, and as
    /// events with one more per logged call (an upper bound: a logged event is mostly one its
    /// lines hold, and not every call logs one).
    pub fn size(&self) -> (usize, usize) {
        match self {
            Run::Exact(r) => r.buffer.size(),
            Run::Fast(r) => {
                let held = r.held_events();
                (held + r.log.len(), held)
            }
        }
    }

    /// Whether a run started at the last step; clears the flag.
    pub fn take_new_start(&mut self) -> bool {
        let flag = match self {
            Run::Exact(r) => &mut r.new_start,
            Run::Fast(r) => &mut r.new_start,
        };
        std::mem::take(flag)
    }

    /// Calls `f` with the exact runtime's state (replayed for a fast run).
    pub fn with_exact<R>(&self, nfa: &Nfa, f: impl FnOnce(&RunState) -> R) -> R {
        match self {
            Run::Exact(r) => f(r),
            Run::Fast(r) => f(&r.to_exact(nfa)),
        }
    }

    /// [`RunState::summary`].
    pub(super) fn summary(&self, nfa: &Nfa, chain: Option<&Chain>) -> Summary {
        match (self, chain) {
            (Run::Exact(r), _) => r.summary(nfa),
            (Run::Fast(r), Some(c)) => r.summary(c),
            (Run::Fast(_), None) => unreachable!("a fast run needs the chain"),
        }
    }

    /// [`RunState::step`] on either tier (`skip_unchanged` for the exact runtime; `cache` for
    /// the fast tier, reset there), conditions reading reference tables from `refs`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step(
        &mut self,
        nfa: &Nfa,
        chain: Option<&Chain>,
        event: Arc<Event>,
        ts: i64,
        reached: &mut [u64],
        skip_unchanged: bool,
        cache: &mut ConditionCache,
        refs: &Bound,
    ) -> Vec<Match> {
        match (self, chain) {
            (Run::Exact(r), _) => r.step_with(nfa, event, ts, reached, skip_unchanged, true, refs),
            (Run::Fast(r), Some(c)) => r.step_with(c, nfa, event, ts, reached, cache, refs),
            (Run::Fast(_), None) => unreachable!("a fast run needs the chain"),
        }
    }

    /// [`RunState::step_gated`] with `starts` false: the event starts no partial match. A fast
    /// run goes to the exact runtime first (the fast tier always starts one where it can).
    pub(super) fn step_without_start(
        &mut self,
        nfa: &Nfa,
        event: Arc<Event>,
        ts: i64,
        reached: &mut [u64],
        skip_unchanged: bool,
        refs: &Bound,
    ) -> Vec<Match> {
        self.make_exact(nfa);
        match self {
            Run::Exact(r) => r.step_with(nfa, event, ts, reached, skip_unchanged, false, refs),
            Run::Fast(_) => Vec::new(),
        }
    }

    /// The run on the exact runtime (a fast one replayed there).
    pub(super) fn make_exact(&mut self, nfa: &Nfa) {
        if let Run::Fast(r) = self {
            *self = Run::Exact(r.to_exact(nfa));
        }
    }

    /// [`RunState::advance_time`] on either tier.
    pub(super) fn advance_time(
        &mut self,
        nfa: &Nfa,
        chain: Option<&Chain>,
        ts: i64,
        timeouts_wanted: bool,
    ) -> (Vec<Match>, Vec<Timeout>, usize) {
        match (self, chain) {
            (Run::Exact(r), _) => r.advance_time(nfa, ts, timeouts_wanted),
            (Run::Fast(r), Some(c)) => r.advance_time(c, ts, timeouts_wanted),
            (Run::Fast(_), None) => unreachable!("a fast run needs the chain"),
        }
    }

    /// [`RunState::enforce_budget`] on either tier.
    pub(super) fn enforce_budget(&mut self, nfa: &Nfa, chain: Option<&Chain>, max: usize) -> (usize, Vec<Match>) {
        match (self, chain) {
            (Run::Exact(r), _) => r.enforce_budget(nfa, max),
            (Run::Fast(r), Some(c)) => r.enforce_budget(c, max),
            (Run::Fast(_), None) => unreachable!("a fast run needs the chain"),
        }
    }

    /// A fresh run: on the fast tier for a chain.
    pub(super) fn new(nfa: &Nfa, chain: Option<&Chain>) -> Self {
        match chain {
            Some(c) => Run::Fast(FastRun::new(c)),
            None => Run::Exact(RunState::new(nfa)),
        }
    }

    /// Falls back to the exact runtime if the fast run logged too much; `true` if it did.
    pub fn fall_back_if_due(&mut self, chain: Option<&Chain>, nfa: &Nfa) -> bool {
        match (&*self, chain) {
            (Run::Fast(r), Some(c)) if r.over_budget(c) => {
                *self = Run::Exact(r.to_exact(nfa));
                true
            }
            _ => false,
        }
    }
}
