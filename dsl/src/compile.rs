//! Checked pattern to [`engine::Nfa`].
//!
//! The automaton has FlinkCEP's shape and is built the way FlinkCEP's `NFACompiler` builds it:
//! walking the sequence from its last element to its first, each element becomes a state with
//! TAKE / IGNORE / PROCEED edges (loops and repetitions become several states, negations become
//! edges into STOP states, `not followed by` at the end a PENDING state). Building the same graph
//! is what makes the engine produce FlinkCEP's matches, including its corner cases.

use std::collections::HashMap;

use engine::{Action, Cond, Edge, Nfa, NfaBuilder, PatternMeta, State, StateId, StateKind, Template, VarId, VarInfo};
use sha2::{Digest, Sha256};

use crate::ast::Contiguity;
use crate::check::{CheckedPattern, Inner, RElement, RKind};

const END_STATE: &str = "$end";
const GROUP_STATE: &str = "(group)";

/// How an element consumes events relative to the previous one (FlinkCEP's `ConsumingStrategy`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    Strict,
    SkipTillNext,
    SkipTillAny,
    NotNext,
    NotFollow,
}

fn strategy(el: &RElement) -> Strategy {
    match el.contiguity {
        None | Some(Contiguity::Next) => Strategy::Strict,
        Some(Contiguity::FollowedBy) => Strategy::SkipTillNext,
        Some(Contiguity::FollowedByAny) => Strategy::SkipTillAny,
        Some(Contiguity::NotNext) => Strategy::NotNext,
        Some(Contiguity::NotFollowedBy) => Strategy::NotFollow,
    }
}

fn inner_strategy(el: &RElement) -> Strategy {
    match el.inner {
        Inner::Relaxed => Strategy::SkipTillNext,
        Inner::Strict => Strategy::Strict,
        Inner::Any => Strategy::SkipTillAny,
    }
}

fn is_looping(el: &RElement) -> bool {
    matches!(el.times, Some((_, None)))
}

fn is_times(el: &RElement) -> bool {
    matches!(el.times, Some((_, Some(_))))
}

/// `(from, to)` repetitions, FlinkCEP's `Times` (a loop `{n,}` is `(n, n)` plus the looping state).
fn times(el: &RElement) -> (u32, u32) {
    match el.times {
        Some((n, Some(m))) => (n, m),
        Some((n, None)) => (n, n),
        None => (1, 1),
    }
}

/// A position in a (sub)sequence: FlinkCEP's `Pattern` with its `previous` link.
#[derive(Clone, Copy)]
struct Cur<'a> {
    seq: &'a [RElement],
    idx: usize,
}

impl<'a> Cur<'a> {
    fn el(&self) -> &'a RElement {
        &self.seq[self.idx]
    }

    fn previous(&self) -> Option<Cur<'a>> {
        (self.idx > 0).then(|| Cur { seq: self.seq, idx: self.idx - 1 })
    }

    fn var(&self) -> Option<VarId> {
        match self.el().kind {
            RKind::Var(v) => Some(v),
            RKind::Group(_) => None,
        }
    }

    fn group(&self) -> Option<&'a [RElement]> {
        match &self.el().kind {
            RKind::Group(g) => Some(g),
            RKind::Var(_) => None,
        }
    }
}

struct Compiler<'a> {
    p: &'a CheckedPattern,
    states: Vec<State>,
    used_names: HashMap<String, ()>,
    stop_states: HashMap<String, StateId>,
    original_state_map: HashMap<String, StateId>,
    first_of_loop: HashMap<*const RElement, bool>,
    current_group: Option<&'a RElement>,
    current: Cur<'a>,
    following: Option<Cur<'a>>,
    window_time: Option<i64>,
    start: Option<StateId>,
}

/// Compiles a checked pattern. Its content hash covers the compiled meaning (the dump), so
/// comments and layout do not change it. An error when the automaton is one the engine refuses
/// to run (the checker refuses every such pattern it knows of; `compile_source` reports any
/// other as a diagnostic rather than panic).
pub fn compile(p: &CheckedPattern) -> Result<Nfa, engine::BuildError> {
    let mut c = Compiler {
        p,
        states: Vec::new(),
        used_names: HashMap::new(),
        stop_states: HashMap::new(),
        original_state_map: HashMap::new(),
        first_of_loop: HashMap::new(),
        current_group: None,
        current: Cur { seq: &p.seq, idx: p.seq.len() - 1 },
        following: None,
        window_time: None,
        start: None,
    };
    let sink = c.create_ending_state();
    let sink = c.create_middle_states(sink);
    c.create_start_state(sink);
    let start = c.start.expect("compile: start state");
    let mut b = NfaBuilder::new(PatternMeta {
        name: p.name.clone(),
        description: p.description.clone(),
        version: p.version,
        severity: p.severity,
        mode: p.mode,
        stream: p.stream.name.clone(),
        key: p.key,
        hash: String::new(),
    });
    for f in &p.stream.fields {
        b.add_field(f.path.clone());
    }
    for t in &p.stream.types {
        b.add_type(t.name.clone());
    }
    for v in &p.vars {
        b.add_var(VarInfo { name: v.name.clone(), looping: v.looping, negated: v.negated });
    }
    // In the checker's order: the ids its expressions name.
    for t in &p.tables {
        b.add_table(t.clone());
    }
    for cond in &p.conditions {
        b.add_condition(cond.clone());
    }
    // The builder numbers states in insertion order: the same ids as the scratch table's.
    for s in &c.states {
        let id = b.add_state(s.name.clone(), s.var, s.kind);
        if let Some(ms) = s.window_ms {
            b.state_window(id, ms);
        }
    }
    for (i, s) in c.states.into_iter().enumerate() {
        for e in s.edges {
            b.add_edge(StateId(i as u32), e.action, e.target, e.cond);
        }
    }
    b.start(start).skip(p.skip).message(Template { parts: p.message.clone() });
    if let Some(ms) = c.window_time {
        b.window(ms);
    }
    for o in &p.outputs {
        b.add_output(o.name.clone(), o.expr.clone());
    }
    let mut nfa = b.build()?;
    nfa.meta.hash = content_hash(&nfa);
    Ok(nfa)
}

/// The first 16 hex digits of the SHA-256 of the NFA dump (which does not include the hash).
/// The dump names the reference tables the pattern reads, never their contents: changing a
/// table's contents changes no hash, reading another table does.
pub fn content_hash(nfa: &Nfa) -> String {
    let digest = Sha256::digest(engine::dump::dump(nfa).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl<'a> Compiler<'a> {
    // -- state creation ------------------------------------------------------------------------

    fn unique_name(&mut self, base: &str) -> String {
        let mut candidate = base.to_owned();
        let mut counter = 0;
        while self.used_names.contains_key(&candidate) {
            candidate = format!("{base}:{counter}");
            counter += 1;
        }
        self.used_names.insert(candidate.clone(), ());
        candidate
    }

    fn create_named(&mut self, base: &str, var: Option<VarId>, kind: StateKind) -> StateId {
        let name = self.unique_name(base);
        self.states.push(State { name, var, kind, edges: Vec::new(), window_ms: None });
        StateId((self.states.len() - 1) as u32)
    }

    fn current_name(&self) -> &'a str {
        match self.current.var() {
            Some(v) => &self.p.vars[v.index()].name,
            None => GROUP_STATE,
        }
    }

    /// A state for the current element; a taking state of a single element gets its window.
    fn create_state(&mut self, kind: StateKind, is_take: bool) -> StateId {
        let name = self.current_name();
        let id = self.create_named(name, self.current.var(), kind);
        let el = self.current.el();
        if is_take && el.times.is_none() {
            self.states[id.index()].window_ms = el.window_ms;
        }
        id
    }

    fn add(&mut self, from: StateId, action: Action, target: StateId, cond: Cond) {
        self.states[from.index()].edges.push(Edge { action, target, cond });
    }

    fn is_final(&self, s: StateId) -> bool {
        self.states[s.index()].kind == StateKind::Final
    }

    // -- conditions ----------------------------------------------------------------------------

    fn condition_of(&self, cur: Cur<'a>) -> Cond {
        match cur.var() {
            Some(v) => {
                let var = &self.p.vars[v.index()];
                let ty = var.ty.map_or(Cond::True, Cond::IsType);
                let cond = var.cond.map_or(Cond::True, Cond::Holds);
                Cond::and(ty, cond)
            }
            None => Cond::True,
        }
    }

    fn until_of(&self, cur: Cur<'a>) -> Option<Cond> {
        cur.var().and_then(|v| self.p.vars[v.index()].until).map(Cond::Holds)
    }

    fn take_condition(&self, cur: Cur<'a>) -> Cond {
        self.condition_of(cur)
    }

    fn extend_with_until(cond: Option<Cond>, until: Option<Cond>, is_take: bool) -> Option<Cond> {
        match (cond, until) {
            (Some(c), Some(u)) => Some(Cond::and(Cond::negate(u), c)),
            (None, Some(u)) if is_take => Some(Cond::negate(u)),
            (c, _) => c,
        }
    }

    fn ignore_for(&self, strategy: Strategy, cur: Cur<'a>) -> Option<Cond> {
        match strategy {
            Strategy::SkipTillNext => Some(Cond::negate(self.condition_of(cur))),
            Strategy::SkipTillAny => Some(Cond::True),
            _ => None,
        }
    }

    fn head_of_group(&self, cur: Cur<'a>) -> bool {
        self.current_group.is_some() && cur.previous().is_none()
    }

    fn group_first_of_loop(&self) -> bool {
        self.current_group.and_then(|g| self.first_of_loop.get(&(g as *const RElement)).copied()).unwrap_or(true)
    }

    fn set_first_of_loop(&mut self, v: bool) {
        if self.current.group().is_some() {
            self.first_of_loop.insert(self.current.el() as *const RElement, v);
        }
    }

    fn ignore_condition(&self, cur: Cur<'a>) -> Option<Cond> {
        let mut s = strategy(cur.el());
        if self.head_of_group(cur) {
            let g = self.current_group.expect("head of group has a group");
            s = if self.group_first_of_loop() { strategy(g) } else { inner_strategy(g) };
        }
        self.ignore_for(s, cur)
    }

    fn inner_ignore_condition(&self, cur: Cur<'a>) -> Option<Cond> {
        let mut s = inner_strategy(cur.el());
        if self.head_of_group(cur) {
            s = inner_strategy(self.current_group.expect("head of group has a group"));
        }
        self.ignore_for(s, cur)
    }

    fn is_head_of_optional_group(&self, cur: Cur<'a>) -> bool {
        self.head_of_group(cur) && self.group_first_of_loop() && self.current_group.is_some_and(|g| g.optional)
    }

    // -- negations -----------------------------------------------------------------------------

    /// The `not followed by` elements reachable backwards through optional elements.
    fn current_not_conditions(&self) -> Vec<(Cond, String)> {
        let mut out = Vec::new();
        let mut prev = self.current;
        while let Some(p) = prev.previous() {
            let el = p.el();
            if !(el.optional || strategy(el) == Strategy::NotFollow) {
                break;
            }
            prev = p;
            if strategy(el) == Strategy::NotFollow {
                let name = p.var().map(|v| self.p.vars[v.index()].name.clone()).unwrap_or_default();
                out.push((self.take_condition(p), name));
            }
        }
        out
    }

    fn create_stop_state(&mut self, cond: Cond, name: &str) -> StateId {
        if let Some(&s) = self.stop_states.get(name) {
            return s;
        }
        let var = self.p.vars.iter().position(|v| v.name == name).map(|i| VarId(i as u16));
        let s = self.create_named(name, var, StateKind::Stop);
        self.add(s, Action::Take, s, cond);
        self.stop_states.insert(name.to_owned(), s);
        s
    }

    fn add_stop_states(&mut self, state: StateId) {
        for (cond, name) in self.current_not_conditions() {
            let stop = self.create_stop_state(cond.clone(), &name);
            self.add(state, Action::Proceed, stop, cond);
        }
    }

    fn add_stop_state_to_looping(&mut self, state: StateId) {
        if let Some(f) = self.following {
            if strategy(f.el()) == Strategy::NotFollow {
                let cond = self.take_condition(f);
                let name = f.var().map(|v| self.p.vars[v.index()].name.clone()).unwrap_or_default();
                let stop = self.create_stop_state(cond.clone(), &name);
                self.add(state, Action::Proceed, stop, cond);
            }
        }
    }

    /// Taking an event in an optional state ends the negations before it: the TAKE edge goes to a
    /// copy of the sink without the PROCEED edges into those negations' STOP states.
    fn copy_without_transitive_nots(&mut self, sink: StateId) -> StateId {
        let nots = self.current_not_conditions();
        if nots.is_empty() || !self.current.el().optional {
            return sink;
        }
        let orig = self.states[sink.index()].clone();
        let copy = self.create_named(&orig.name, orig.var, orig.kind);
        self.states[copy.index()].window_ms = orig.window_ms;
        for e in orig.edges {
            if e.action == Action::Proceed {
                let mut target = e.target;
                let mut remove = false;
                if self.states[target.index()].kind == StateKind::Stop {
                    remove = nots.iter().any(|(_, n)| self.states[target.index()].name == *n);
                } else {
                    target = self.copy_without_transitive_nots(target);
                }
                if !remove {
                    self.add(copy, Action::Proceed, target, e.cond);
                }
            } else {
                let target = if e.target == sink { copy } else { e.target };
                self.add(copy, e.action, target, e.cond);
            }
        }
        copy
    }

    fn copy(&mut self, state: StateId) -> StateId {
        let orig = self.states[state.index()].clone();
        let base = orig.name.split(':').next().unwrap_or(&orig.name).to_owned();
        let copy = self.create_named(&base, orig.var, orig.kind);
        self.states[copy.index()].window_ms = orig.window_ms;
        for e in orig.edges {
            let target = if e.target == state { copy } else { e.target };
            self.add(copy, e.action, target, e.cond);
        }
        copy
    }

    fn update_with_greedy_condition(&mut self, state: StateId, take: &Cond) {
        for e in &mut self.states[state.index()].edges {
            let c = std::mem::replace(&mut e.cond, Cond::True);
            e.cond = Cond::and(c, Cond::negate(take.clone()));
        }
    }

    // -- the walk ------------------------------------------------------------------------------

    fn create_ending_state(&mut self) -> StateId {
        self.window_time = self.p.window_ms;
        self.create_named(END_STATE, None, StateKind::Final)
    }

    fn create_middle_states(&mut self, sink: StateId) -> StateId {
        let mut last_sink = sink;
        while let Some(prev) = self.current.previous() {
            let el = self.current.el();
            match strategy(el) {
                Strategy::NotFollow => {
                    if (el.window_ms.is_some() || self.window_time.is_some()) && self.is_final(last_sink) {
                        let pending = self.create_state(StateKind::Pending, true);
                        let not_cond = self.take_condition(self.current);
                        let stop = self.create_stop_state(not_cond.clone(), self.current_name());
                        self.add(pending, Action::Proceed, stop, not_cond.clone());
                        self.add(pending, Action::Ignore, pending, Cond::negate(not_cond));
                        last_sink = pending;
                    }
                }
                Strategy::NotNext => {
                    let not_next = self.create_state(StateKind::Normal, true);
                    let not_cond = self.take_condition(self.current);
                    let stop = self.create_stop_state(not_cond.clone(), self.current_name());
                    if self.is_final(last_sink) {
                        // So that the PROCEED to the final state does not fire before the next event.
                        self.add(not_next, Action::Ignore, last_sink, Cond::negate(not_cond.clone()));
                    } else {
                        self.add(not_next, Action::Proceed, last_sink, Cond::negate(not_cond.clone()));
                    }
                    self.add(not_next, Action::Proceed, stop, not_cond);
                    last_sink = not_next;
                }
                _ => last_sink = self.convert_pattern(last_sink),
            }
            self.following = Some(self.current);
            self.current = prev;
        }
        last_sink
    }

    fn create_start_state(&mut self, sink: StateId) {
        let start = self.convert_pattern(sink);
        self.start = Some(start);
    }

    fn convert_pattern(&mut self, sink: StateId) -> StateId {
        let el = self.current.el();
        let last_sink = if is_looping(el) {
            self.set_first_of_loop(false);
            let s = self.copy_without_transitive_nots(sink);
            let looping = self.create_looping(s);
            self.set_first_of_loop(true);
            self.create_times_state(looping, sink, times(el))
        } else if is_times(el) {
            self.create_times_state(sink, sink, times(el))
        } else {
            let take = self.take_condition(self.current);
            let ignore = self.ignore_condition(self.current);
            self.create_singleton_state(sink, Some(sink), take, ignore, el.optional)
        };
        self.add_stop_states(last_sink);
        last_sink
    }

    fn create_times_state(&mut self, sink: StateId, proceed: StateId, (from, to): (u32, u32)) -> StateId {
        let mut last_sink = sink;
        self.set_first_of_loop(false);
        let cur = self.current;
        let until = self.until_of(cur);
        let inner_ignore = Self::extend_with_until(self.inner_ignore_condition(cur), until.clone(), false);
        let take = Self::extend_with_until(Some(self.take_condition(cur)), until.clone(), true).unwrap_or(Cond::True);
        if cur.el().greedy && from != to {
            if until.is_some() {
                let copy = self.copy(sink);
                let name = self.states[sink.index()].name.clone();
                self.original_state_map.insert(name, copy);
            }
            self.update_with_greedy_condition(sink, &take);
        }
        for _ in from..to {
            last_sink = self.create_singleton_state(last_sink, Some(proceed), take.clone(), inner_ignore.clone(), true);
            self.add_stop_state_to_looping(last_sink);
        }
        for _ in 0..from.saturating_sub(1) {
            last_sink = self.create_singleton_state(last_sink, None, take.clone(), inner_ignore.clone(), false);
            self.add_stop_state_to_looping(last_sink);
        }
        self.set_first_of_loop(true);
        let ignore = self.ignore_condition(cur);
        self.create_singleton_state(last_sink, Some(proceed), take, ignore, cur.el().optional)
    }

    fn create_singleton_state(
        &mut self,
        sink: StateId,
        proceed: Option<StateId>,
        take: Cond,
        ignore: Option<Cond>,
        is_optional: bool,
    ) -> StateId {
        if let Some(group) = self.current.group() {
            return self.create_group_pattern_state(group, sink, proceed, is_optional);
        }
        let cur = self.current;
        let singleton = self.create_state(StateKind::Normal, true);
        let sink = self.copy_without_transitive_nots(sink);
        self.add(singleton, Action::Take, sink, take.clone());
        if is_optional {
            let proceed = proceed.expect("compile: optional state has a proceed target");
            let until = self.until_of(cur);
            if cur.el().greedy {
                if let Some(u) = &until {
                    let name = self.states[proceed.index()].name.clone();
                    if let Some(&orig) = self.original_state_map.get(&name) {
                        self.add(singleton, Action::Proceed, orig, u.clone());
                    }
                }
                let cond = until.map_or(Cond::True, Cond::negate);
                self.add(singleton, Action::Proceed, proceed, cond);
            } else {
                self.add(singleton, Action::Proceed, proceed, Cond::True);
            }
        }
        if let Some(ig) = ignore {
            let ignore_state = if is_optional || self.is_head_of_optional_group(cur) {
                let s = self.create_state(StateKind::Normal, false);
                self.add(s, Action::Take, sink, take);
                self.add(s, Action::Ignore, s, ig.clone());
                self.add_stop_states(s);
                s
            } else {
                singleton
            };
            self.add(singleton, Action::Ignore, ignore_state, ig);
        }
        singleton
    }

    fn create_group_pattern_state(
        &mut self,
        group: &'a [RElement],
        sink: StateId,
        proceed: Option<StateId>,
        is_optional: bool,
    ) -> StateId {
        let (old_current, old_following, old_group) = (self.current, self.following, self.current_group);
        self.current_group = Some(self.current.el());
        self.current = Cur { seq: group, idx: group.len() - 1 };
        let last = self.create_middle_states(sink);
        let last = self.convert_pattern(last);
        if is_optional {
            let proceed = proceed.expect("compile: optional group has a proceed target");
            self.add(last, Action::Proceed, proceed, Cond::True);
        }
        self.current = old_current;
        self.following = old_following;
        self.current_group = old_group;
        last
    }

    fn create_looping_group_pattern_state(&mut self, group: &'a [RElement], sink: StateId) -> StateId {
        let (old_current, old_following, old_group) = (self.current, self.following, self.current_group);
        let dummy = self.create_state(StateKind::Normal, true);
        self.current_group = Some(self.current.el());
        self.current = Cur { seq: group, idx: group.len() - 1 };
        let last = self.create_middle_states(dummy);
        let last = self.convert_pattern(last);
        self.add(last, Action::Proceed, sink, Cond::True);
        self.add(dummy, Action::Proceed, last, Cond::True);
        self.current = old_current;
        self.following = old_following;
        self.current_group = old_group;
        last
    }

    fn create_looping(&mut self, sink: StateId) -> StateId {
        if let Some(group) = self.current.group() {
            return self.create_looping_group_pattern_state(group, sink);
        }
        let cur = self.current;
        let until = self.until_of(cur);
        let ignore = Self::extend_with_until(self.inner_ignore_condition(cur), until.clone(), false);
        let take = Self::extend_with_until(Some(self.take_condition(cur)), until.clone(), true).unwrap_or(Cond::True);
        let looping = self.create_state(StateKind::Normal, true);
        if cur.el().greedy {
            if let Some(u) = &until {
                let copy = self.copy(sink);
                self.add(looping, Action::Proceed, copy, u.clone());
                let name = self.states[sink.index()].name.clone();
                self.original_state_map.insert(name, copy);
            }
            self.add(looping, Action::Proceed, sink, until.clone().map_or(Cond::True, Cond::negate));
            let plain_take = self.take_condition(cur);
            self.update_with_greedy_condition(sink, &plain_take);
        } else {
            self.add(looping, Action::Proceed, sink, Cond::True);
        }
        self.add(looping, Action::Take, looping, take.clone());
        self.add_stop_state_to_looping(looping);
        if let Some(ig) = ignore {
            let ignore_state = self.create_state(StateKind::Normal, false);
            self.add(ignore_state, Action::Take, looping, take);
            self.add(ignore_state, Action::Ignore, ignore_state, ig.clone());
            self.add(looping, Action::Ignore, ignore_state, ig);
            self.add_stop_state_to_looping(ignore_state);
        }
        looping
    }
}
