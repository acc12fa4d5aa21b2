//! Walking the automaton: the order in which a match took its events, the edge by which a
//! partial match took one, what a partial match waiting in a state can do next, and what it
//! does with an event when that is certain.

use std::collections::VecDeque;
use std::sync::Arc;

use engine::runtime::MatchEvents;
use engine::{Action, Bound, Cond, Edge, Event, Nfa, StateId, StateKind, VarId};

use super::text::cond_text;

/// The events of a (partial) match in the order the engine took them: event time, then arrival.
pub(super) fn in_order(events: &MatchEvents) -> Vec<(VarId, Arc<Event>)> {
    let mut all: Vec<(VarId, Arc<Event>)> =
        events.iter().flat_map(|(v, list)| list.iter().map(move |e| (*v, e.clone()))).collect();
    all.sort_by_key(|(_, e)| (e.ts, e.seq));
    all
}

/// The match's events as a condition sees them: per variable, in order of first event.
pub(super) fn view_of(taken: &[(VarId, Arc<Event>)]) -> MatchEvents {
    let mut view: MatchEvents = Vec::new();
    for (v, e) in taken {
        match view.iter_mut().find(|(var, _)| var == v) {
            Some((_, list)) => list.push(e.clone()),
            None => view.push((*v, vec![e.clone()])),
        }
    }
    view
}

/// The TAKE edge (and its state) by which a partial match waiting in `from` takes `event` into
/// `var`: searched from `from` through the PROCEED edges that pass for the event and the IGNORE
/// edges to other states (events skipped in between), preferring an edge whose guard passes.
/// Without one (the events or the pattern are not what the engine ran), the first TAKE edge of
/// `var` found.
pub(super) fn find_take<'a>(
    nfa: &'a Nfa,
    from: StateId,
    var: VarId,
    event: &Event,
    view: &MatchEvents,
    refs: &Bound,
) -> Option<(StateId, &'a Edge)> {
    let mut queue = VecDeque::from([from]);
    let mut seen = vec![false; nfa.states.len()];
    seen[from.index()] = true;
    let mut fallback = None;
    while let Some(s) = queue.pop_front() {
        let state = nfa.state(s);
        for e in &state.edges {
            let next = match e.action {
                Action::Take if state.var == Some(var) => {
                    if e.cond.holds_with(&nfa.conditions, event, view, refs) {
                        return Some((s, e));
                    }
                    fallback.get_or_insert((s, e));
                    None
                }
                Action::Proceed if e.cond.holds_with(&nfa.conditions, event, view, refs) => Some(e.target),
                Action::Ignore if e.target != s => Some(e.target),
                _ => None,
            };
            if let Some(t) = next.filter(|t| !seen[t.index()]) {
                seen[t.index()] = true;
                queue.push_back(t);
            }
        }
    }
    fallback
}

/// The state a partial match is in after taking `taken` (in order) from the start.
pub(super) fn state_after(nfa: &Nfa, taken: &[(VarId, Arc<Event>)], refs: &Bound) -> StateId {
    let mut state = nfa.start;
    for (i, (var, e)) in taken.iter().enumerate() {
        if let Some((_, edge)) = find_take(nfa, state, *var, e, &view_of(&taken[..i]), refs) {
            state = edge.target;
        }
    }
    state
}

/// What a partial match waiting in a state can do next.
pub(super) struct Waiting<'a> {
    /// The steps that can take the next event: (variable, guard).
    pub(super) takes: Vec<(VarId, &'a Cond)>,
    /// `not` elements that discard it if seen: (variable, guard).
    pub(super) forbidden: Vec<(VarId, &'a Cond)>,
    /// It waits for time to pass (a `not followed by` at the end).
    pub(super) pending: bool,
    /// The fewest further events that complete a match.
    pub(super) more: Option<usize>,
}

pub(super) fn waiting(nfa: &Nfa, from: StateId) -> Waiting<'_> {
    let mut w = Waiting { takes: Vec::new(), forbidden: Vec::new(), pending: false, more: more_events(nfa, from) };
    let mut queue = VecDeque::from([from]);
    let mut seen = vec![false; nfa.states.len()];
    seen[from.index()] = true;
    while let Some(s) = queue.pop_front() {
        let state = nfa.state(s);
        w.pending |= state.kind == StateKind::Pending;
        for e in &state.edges {
            let target = nfa.state(e.target);
            let stop = target.kind == StateKind::Stop;
            match e.action {
                Action::Take => {
                    let var = state.var.unwrap_or(VarId(0));
                    let list = if stop || nfa.vars[var.index()].negated { &mut w.forbidden } else { &mut w.takes };
                    if !list.iter().any(|(v, c)| *v == var && cond_text(nfa, c) == cond_text(nfa, &e.cond)) {
                        list.push((var, &e.cond));
                    }
                }
                Action::Proceed if stop => {
                    if let Some(var) = target.var {
                        w.forbidden.push((var, &e.cond));
                    }
                }
                Action::Proceed | Action::Ignore => {}
            }
            let walk = !stop && (e.action == Action::Proceed || (e.action == Action::Ignore && e.target != s));
            if walk && !seen[e.target.index()] {
                seen[e.target.index()] = true;
                queue.push_back(e.target);
            }
        }
    }
    w
}

/// The fewest TAKEs from `from` to the final state (or a pending one, which completes by time).
fn more_events(nfa: &Nfa, from: StateId) -> Option<usize> {
    let mut dist = vec![usize::MAX; nfa.states.len()];
    let mut queue = VecDeque::from([(from, 0usize)]);
    dist[from.index()] = 0;
    let mut best = None;
    while let Some((s, d)) = queue.pop_front() {
        if d > dist[s.index()] {
            continue;
        }
        let state = nfa.state(s);
        if matches!(state.kind, StateKind::Final | StateKind::Pending) {
            best = Some(best.map_or(d, |b: usize| b.min(d)));
            continue;
        }
        for e in &state.edges {
            if nfa.state(e.target).kind == StateKind::Stop {
                continue;
            }
            let nd = d + usize::from(e.action == Action::Take);
            if nd < dist[e.target.index()] {
                dist[e.target.index()] = nd;
                if e.action == Action::Take {
                    queue.push_back((e.target, nd));
                } else {
                    queue.push_front((e.target, nd));
                }
            }
        }
    }
    best
}

/// What a partial match waiting in `state` does with `event`, when that is certain.
pub(super) enum Move {
    /// Exactly one TAKE passes (and no IGNORE): it takes the event into the variable.
    Take(VarId, StateId),
    /// Only IGNOREs (to one state) pass: it skips the event.
    Skip(StateId),
    /// Nothing passes: the partial match ends.
    Blocked,
    /// Several edges pass: the partial match branches.
    Branch,
}

pub(super) fn next_move(nfa: &Nfa, state: StateId, event: &Event, view: &MatchEvents, refs: &Bound) -> Move {
    let (mut takes, mut skips) = (Vec::new(), Vec::new());
    let mut queue = VecDeque::from([state]);
    let mut seen = vec![false; nfa.states.len()];
    seen[state.index()] = true;
    while let Some(s) = queue.pop_front() {
        for e in &nfa.state(s).edges {
            if !e.cond.holds_with(&nfa.conditions, event, view, refs) {
                continue;
            }
            match e.action {
                Action::Take => takes.push((nfa.state(s).var.unwrap_or(VarId(0)), e.target)),
                Action::Ignore => skips.push(e.target),
                Action::Proceed if !seen[e.target.index()] => {
                    seen[e.target.index()] = true;
                    queue.push_back(e.target);
                }
                Action::Proceed => {}
            }
        }
    }
    match (takes.as_slice(), skips.as_slice()) {
        ([], []) => Move::Blocked,
        (&[(var, target)], []) => Move::Take(var, target),
        ([], &[target, ..]) if skips.iter().all(|&t| t == target) => Move::Skip(target),
        _ => Move::Branch,
    }
}
