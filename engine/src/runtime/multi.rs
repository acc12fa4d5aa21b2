//! Many patterns over one keyed stream ([`MultiOperator`]): the per-event work is done once per
//! stream, not once per pattern. An event is buffered once for its key, one timer set serves
//! every pattern, and when the watermark releases the event only the patterns it can change
//! look at it: those that hold partial matches for the key, and those whose start it passes,
//! found through an index of the start conditions' equalities ([`StartIndex`]) rather than by
//! asking every pattern.
//!
//! Each pattern sees exactly what an [`Operator`](super::Operator) of its own would see for each
//! key: the same events in the same order, time advanced at the same points, so its matches,
//! timeouts and stats are the same (the tests compare them). Why: an operator of its own visits a
//! key at each of the key's buffered timestamps (shared here, so every pattern is visited then)
//! and at its own window timers (kept per pattern here, and only that pattern is advanced then,
//! unless buffered events are due, which every pattern processes); a visit processes the
//! buffered events the watermark passed and then advances time to the watermark, which a second
//! time in the same [`MultiOperator::advance_watermark`] changes nothing. A pattern holding
//! nothing for a key (only the fresh start state) that an event starts nothing in is left out:
//! its step would change nothing. What differs is only the order of outputs across keys within
//! one watermark advance, where an operator of its own might come to a key later than the shared
//! timers do.
//!
//! Not yet: a backing store, snapshots and eviction (the service runs one
//! [`Operator`](super::Operator) per pattern, which has them).

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::fast::{Chain, Run};
use super::operator::{add_timer, remove_fired, Config, Key, Output, Stats, TierCounts, WindowTimers};
use super::queue::Queue;
use super::run::{self as run, Summary};
use crate::expr::{BinOp, Cond, ConditionCache, Expr};
use crate::nfa::{Action, FieldId, Nfa, StateId, TypeId};
use crate::refdata::{Bound, RefData};
use crate::value::{Event, Text, Value};

/// What a [`MultiOperator`] emits.
#[derive(Clone, Debug, PartialEq)]
pub enum MultiOutput {
    /// A match or a timeout of the pattern at this index (never [`Output::Late`]).
    Pattern(usize, Output),
    /// An event at or behind the watermark: no pattern processed it.
    Late { key: Key, event: Arc<Event>, watermark: i64 },
}

/// Which patterns an event can start, from the equalities that every start condition of a
/// pattern requires: `field == "text"`, `field in ("a", "b")` or the record type. A pattern with
/// a start condition that requires none is asked about every event.
#[derive(Debug, Default)]
pub struct StartIndex {
    by_kind: HashMap<TypeId, Vec<u32>>,
    by_field: Vec<(FieldId, TextIndex)>,
    always: Vec<u32>,
}

/// Patterns by the text a field must equal for them to start.
type TextIndex = HashMap<Text, Vec<u32>>;

/// Where an equality looks: the record type or a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    Kind,
    Field(FieldId),
}

/// A conjunct every passing event satisfies: the dimension has one of the values.
#[derive(Clone, Debug)]
struct Required {
    dim: Dim,
    kinds: Vec<TypeId>,
    texts: Vec<Text>,
}

impl StartIndex {
    pub fn new(patterns: &[Arc<Nfa>]) -> Self {
        let options: Vec<Vec<Required>> = patterns.iter().map(|n| start_requirements(n)).collect();
        // The more distinct values the patterns require of a dimension, the fewer patterns an
        // event's value finds: each pattern is indexed by its option on the most selective one.
        let mut distinct: Vec<(Dim, Vec<Text>, Vec<TypeId>)> = Vec::new();
        for r in options.iter().flatten() {
            let at = match distinct.iter().position(|(d, _, _)| *d == r.dim) {
                Some(at) => at,
                None => {
                    distinct.push((r.dim, Vec::new(), Vec::new()));
                    distinct.len() - 1
                }
            };
            distinct[at].1.extend(r.texts.iter().cloned());
            distinct[at].2.extend_from_slice(&r.kinds);
        }
        for (_, texts, kinds) in &mut distinct {
            texts.sort_unstable();
            texts.dedup();
            kinds.sort_unstable();
            kinds.dedup();
        }
        let spread_of = |dim: Dim| {
            distinct.iter().find(|(d, _, _)| *d == dim).map_or(0, |(_, texts, kinds)| texts.len() + kinds.len())
        };
        let mut index = StartIndex::default();
        for (i, opts) in options.into_iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let best =
                opts.into_iter().max_by_key(|r| (spread_of(r.dim), std::cmp::Reverse(r.texts.len() + r.kinds.len())));
            match best {
                None => index.always.push(i),
                Some(r) => match r.dim {
                    Dim::Kind => {
                        for k in r.kinds {
                            let list = index.by_kind.entry(k).or_default();
                            if list.last() != Some(&i) {
                                list.push(i);
                            }
                        }
                    }
                    Dim::Field(f) => {
                        let slot = match index.by_field.iter().position(|(g, _)| *g == f) {
                            Some(s) => s,
                            None => {
                                index.by_field.push((f, HashMap::default()));
                                index.by_field.len() - 1
                            }
                        };
                        for t in r.texts {
                            let list = index.by_field[slot].1.entry(t).or_default();
                            if list.last() != Some(&i) {
                                list.push(i);
                            }
                        }
                    }
                },
            }
        }
        index
    }

    /// The patterns `event` may start, ascending, into `out` (cleared first).
    pub fn candidates(&self, event: &Event, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.always);
        if let Some(l) = self.by_kind.get(&event.kind) {
            out.extend_from_slice(l);
        }
        for (f, map) in &self.by_field {
            if let Some(Value::Str(s)) = event.fields.get(f.index()) {
                if let Some(l) = map.get(&**s) {
                    out.extend_from_slice(l);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }

    /// Patterns asked about every event (no equality indexes their start).
    pub fn unindexed(&self) -> usize {
        self.always.len()
    }
}

/// The equalities every event that starts `nfa` satisfies: per dimension that every start edge
/// constrains, the union of the values the edges require of it (empty when no dimension is
/// constrained by every start edge).
fn start_requirements(nfa: &Nfa) -> Vec<Required> {
    // The TAKE and IGNORE edges of the start state and of the states its PROCEED edges reach
    // (whatever their conditions: a superset of what can move the fresh start state).
    let mut edges: Vec<Vec<Required>> = Vec::new();
    let mut seen = vec![false; nfa.states.len()];
    let mut stack: Vec<StateId> = vec![nfa.start];
    while let Some(s) = stack.pop() {
        if std::mem::replace(&mut seen[s.index()], true) {
            continue;
        }
        for e in &nfa.state(s).edges {
            match e.action {
                Action::Proceed => stack.push(e.target),
                Action::Take | Action::Ignore => {
                    let mut req = Vec::new();
                    cond_requirements(&e.cond, &nfa.conditions, &mut req);
                    edges.push(req);
                }
            }
        }
    }
    let Some(first) = edges.first() else {
        return Vec::new();
    };
    let mut options: Vec<Required> = Vec::new();
    for candidate in first {
        let dim = candidate.dim;
        if options.iter().any(|o| o.dim == dim) {
            continue;
        }
        let mut all = Required { dim, kinds: Vec::new(), texts: Vec::new() };
        // Each edge's conjuncts on `dim` all hold; any one of them bounds its values.
        let every = edges.iter().all(|reqs| match reqs.iter().find(|r| r.dim == dim) {
            Some(r) => {
                all.kinds.extend_from_slice(&r.kinds);
                all.texts.extend(r.texts.iter().cloned());
                true
            }
            None => false,
        });
        if every {
            options.push(all);
        }
    }
    options
}

fn cond_requirements(cond: &Cond, conditions: &[Expr], out: &mut Vec<Required>) {
    match cond {
        Cond::IsType(t) => out.push(Required { dim: Dim::Kind, kinds: vec![*t], texts: Vec::new() }),
        Cond::Holds(id) => {
            if let Some(e) = conditions.get(id.index()) {
                expr_requirements(e, out);
            }
        }
        Cond::And(a, b) => {
            cond_requirements(a, conditions, out);
            cond_requirements(b, conditions, out);
        }
        Cond::True | Cond::Not(_) => {}
    }
}

/// The conjuncts of `e` (an `and` chain) that require a field to equal text: `f == "x"`,
/// `"x" == f`, `f in ("x", "y")`. A text literal equals only the same text (`Value::sql_eq`), so
/// an event whose field is anything else fails the conjunct.
fn expr_requirements(e: &Expr, out: &mut Vec<Required>) {
    let text = |v: &Value| match v {
        Value::Str(s) => Some(s.clone()),
        _ => None,
    };
    match e {
        Expr::Binary(BinOp::And, a, b) => {
            expr_requirements(a, out);
            expr_requirements(b, out);
        }
        Expr::Binary(BinOp::Eq, a, b) => {
            if let (Expr::Field(f), Expr::Lit(v)) | (Expr::Lit(v), Expr::Field(f)) = (&**a, &**b) {
                if let Some(t) = text(v) {
                    out.push(Required { dim: Dim::Field(*f), kinds: Vec::new(), texts: vec![t] });
                }
            }
        }
        Expr::In { expr, list, negated: false } => {
            if let Expr::Field(f) = &**expr {
                let texts: Option<Vec<Text>> = list.iter().map(text).collect();
                if let Some(texts) = texts {
                    out.push(Required { dim: Dim::Field(*f), kinds: Vec::new(), texts });
                }
            }
        }
        _ => {}
    }
}

/// One pattern's state at one key.
#[derive(Debug)]
struct Slot {
    pattern: u32,
    /// `None`: only the fresh start state (the key holds nothing for the pattern).
    run: Option<Run>,
    /// The pattern's pending window timers at this key, ascending (they outlive its run, as
    /// an operator's do: see [`super::Operator`]).
    windows: WindowTimers,
    /// Set while a visit advances this pattern.
    visit: bool,
    /// The run's summary, kept up to date: events and advances of time that leave the run as
    /// it is are told from it without touching the run.
    summary: Summary,
}

/// Everything one key holds, for all patterns.
#[derive(Debug, Default)]
struct MultiKey {
    /// Buffered events by timestamp, in arrival order (once for every pattern).
    queue: Queue,
    /// Ascending by pattern; only patterns with a run or pending window timers.
    slots: Vec<Slot>,
}

/// Per pattern: what it counted ([`Stats::matches`], [`Stats::timeouts`],
/// [`Stats::dropped_partial_matches`]; events and late events are counted once, in
/// [`MultiOperator::stats`]) and its funnel.
#[derive(Debug, Default, Clone)]
struct PatternCounts {
    stats: Stats,
    reached: Vec<u64>,
}

/// Many patterns over one keyed stream, all keyed by the same field (group patterns by key
/// field, one `MultiOperator` per group). Inputs and outputs as [`super::Operator`]'s, with
/// outputs tagged by pattern index.
#[derive(Debug)]
pub struct MultiOperator {
    work: Patterns,
    keys: HashMap<Key, MultiKey>,
    /// Every pattern's timers at every key: buffered timestamps and window timers.
    timers: BTreeSet<(i64, Key)>,
    watermark: i64,
    stats: Stats,
}

/// The patterns and what they counted: what a visit of a key uses besides the key's state.
#[derive(Debug)]
struct Patterns {
    nfas: Vec<Arc<Nfa>>,
    index: StartIndex,
    /// Per pattern, reused to decide whether an event starts it, and by its fast runs.
    caches: Vec<ConditionCache>,
    /// Per pattern, as the fast tier runs it (a chain, with the tier on).
    chains: Vec<Option<Chain>>,
    /// Per pattern, the reference tables it reads, from the last snapshot installed.
    refs: Vec<Bound>,
    tiers: TierCounts,
    config: Config,
    counts: Vec<PatternCounts>,
    candidates: Vec<u32>,
    /// Pattern steps taken and start checks made: the work done per pattern.
    steps: u64,
    checks: u64,
}

/// Patterns that cannot run in one [`MultiOperator`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultiError {
    #[error("pattern `{pattern}` reads stream `{stream}`, the first pattern reads `{first}`")]
    OtherStream { pattern: String, stream: String, first: String },
    #[error("pattern `{pattern}` is keyed by `{key}`, the first pattern by `{first}`: group patterns by key field")]
    OtherKey { pattern: String, key: String, first: String },
}

impl MultiOperator {
    /// The patterns must read the same stream with the same key field (the caller keys events
    /// by it); group them by key field, one operator per group.
    pub fn new(patterns: Vec<Arc<Nfa>>, config: Config) -> Result<Self, MultiError> {
        if let Some(first) = patterns.first() {
            for p in &patterns[1..] {
                if p.meta.stream != first.meta.stream {
                    return Err(MultiError::OtherStream {
                        pattern: p.meta.name.clone(),
                        stream: p.meta.stream.clone(),
                        first: first.meta.stream.clone(),
                    });
                }
                if p.meta.key != first.meta.key {
                    return Err(MultiError::OtherKey {
                        pattern: p.meta.name.clone(),
                        key: p.field_name(p.meta.key).to_owned(),
                        first: first.field_name(first.meta.key).to_owned(),
                    });
                }
            }
        }
        let index = StartIndex::new(&patterns);
        let caches = patterns.iter().map(|n| ConditionCache::new(&n.conditions)).collect();
        let chains = patterns.iter().map(|n| config.fast_chain(n)).collect();
        let refs = vec![Bound::NONE; patterns.len()];
        let counts = patterns
            .iter()
            .map(|n| PatternCounts { stats: Stats::default(), reached: vec![0; n.vars.len()] })
            .collect();
        Ok(MultiOperator {
            work: Patterns {
                nfas: patterns,
                index,
                caches,
                chains,
                refs,
                tiers: TierCounts::default(),
                config,
                counts,
                candidates: Vec::new(),
                steps: 0,
                checks: 0,
            },
            keys: HashMap::default(),
            timers: BTreeSet::new(),
            watermark: i64::MIN,
            stats: Stats::default(),
        })
    }

    pub fn patterns(&self) -> &[Arc<Nfa>] {
        &self.work.nfas
    }

    /// Installs a snapshot of the reference tables for every pattern, as
    /// [`Operator::set_reference`](super::Operator::set_reference) does for one.
    pub fn set_reference(&mut self, data: &RefData) {
        for (refs, nfa) in self.work.refs.iter_mut().zip(&self.work.nfas) {
            *refs = Bound::new(&nfa.tables, data);
        }
    }

    /// The reference tables installed last, resolved for pattern `i`
    /// ([`Operator::reference`](super::Operator::reference)).
    pub fn reference(&self, i: usize) -> &Bound {
        &self.work.refs[i]
    }

    pub fn index(&self) -> &StartIndex {
        &self.work.index
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Events and late events (once per event, whatever the number of patterns).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// What pattern `i` counted: matches, timeouts and dropped partial matches, as an
    /// [`super::Operator`] of its own counts them (its events and late events are
    /// [`MultiOperator::stats`]'s).
    pub fn pattern_stats(&self, i: usize) -> Stats {
        let mut s = self.work.counts[i].stats;
        s.events = self.stats.events;
        s.late = self.stats.late;
        s
    }

    /// The funnel of pattern `i` ([`super::Operator::funnel`]).
    pub fn funnel(&self, i: usize) -> &[u64] {
        &self.work.counts[i].reached
    }

    /// How the patterns' runs at keys ran on the tiers ([`super::Operator::tier_counts`]).
    pub fn tier_counts(&self) -> TierCounts {
        self.work.tiers
    }

    /// Pattern steps taken and start checks made so far: how much per-pattern work the events
    /// caused (an operator per pattern takes one step per pattern and event).
    pub fn work(&self) -> (u64, u64) {
        (self.work.steps, self.work.checks)
    }

    /// Keys holding buffered events, partial matches or pending timers.
    pub fn cached_keys(&self) -> usize {
        self.keys.len()
    }

    /// Started partial matches over all keys and patterns.
    pub fn active_partial_matches(&self) -> usize {
        self.keys.values().flat_map(|k| &k.slots).filter_map(|s| s.run.as_ref()).map(Run::partial_count).sum()
    }

    /// Takes an event of `key` (its event time is `event.ts`).
    pub fn process(&mut self, key: Key, event: Arc<Event>, out: &mut Vec<MultiOutput>) {
        self.stats.events += 1;
        if event.ts <= self.watermark {
            self.stats.late += 1;
            out.push(MultiOutput::Late { key, event, watermark: self.watermark });
            return;
        }
        let ts = event.ts;
        let state = self.keys.entry(key.clone()).or_default();
        if state.queue.push(ts, event) {
            self.timers.insert((ts, key));
        }
    }

    /// Moves the watermark to `wm` (never backwards) and processes what it releases.
    pub fn advance_watermark(&mut self, wm: i64, out: &mut Vec<MultiOutput>) {
        if wm <= self.watermark {
            return;
        }
        self.watermark = wm;
        let mut new_timers = Vec::new();
        while self.timers.first().is_some_and(|(t, _)| *t <= wm) {
            let Some((t, key)) = self.timers.pop_first() else { break };
            let Some(state) = self.keys.get_mut(&key) else { continue };
            self.work.visit(state, t, wm, &key, &mut new_timers, out);
            if state.queue.is_empty() && state.slots.is_empty() {
                self.keys.remove(&key);
            }
            for t in new_timers.drain(..) {
                // A timer at or below the watermark fires in this advance, as in Flink.
                self.timers.insert((t, key.clone()));
            }
        }
    }
}

impl Patterns {
    /// The timer `(t, key)` fired: a buffered timestamp (every pattern) or a window timer of
    /// some patterns. Window timers to add go to `new_timers`.
    fn visit(
        &mut self,
        state: &mut MultiKey,
        t: i64,
        wm: i64,
        key: &Key,
        new_timers: &mut Vec<i64>,
        out: &mut Vec<MultiOutput>,
    ) {
        // The patterns whose window timers fired; an operator of their own visits the key now
        // if it holds anything for them (a pattern's buffered events are the key's).
        let has_queue = !state.queue.is_empty();
        for slot in &mut state.slots {
            slot.visit = slot.windows.front().is_some_and(|&w| w <= t) && (slot.run.is_some() || has_queue);
            remove_fired(&mut slot.windows, t);
        }
        if state.queue.first_ts().is_some_and(|ts| ts <= wm) {
            // Due events: every pattern's operator processes them (now or at their timestamp's
            // timer, later in this advance with the same watermark: the same steps).
            while let Some(ts) = state.queue.first_ts() {
                if ts > wm {
                    break;
                }
                let Some((_, mut batch)) = state.queue.pop_first() else { break };
                for slot in &mut state.slots {
                    self.emit_time(slot, key, ts, out);
                }
                if let Some(f) = self.config.tie_break {
                    batch.sort_by(|a, b| a.field(f).compare(b.field(f)).unwrap_or(std::cmp::Ordering::Equal));
                }
                for e in batch {
                    self.feed(state, key, e, ts, new_timers, out);
                }
            }
            for slot in &mut state.slots {
                slot.visit = slot.run.is_some();
            }
        }
        for slot in &mut state.slots {
            if std::mem::take(&mut slot.visit) {
                self.emit_time(slot, key, wm, out);
            }
            // A run holding nothing is the fresh start state again.
            if slot.run.is_some() && slot.summary.idle {
                slot.run = None;
            }
        }
        state.slots.retain(|s| s.run.is_some() || !s.windows.is_empty());
    }

    /// Feeds one released event to the patterns it can change at `key`.
    fn feed(
        &mut self,
        state: &mut MultiKey,
        key: &Key,
        e: Arc<Event>,
        ts: i64,
        new_timers: &mut Vec<i64>,
        out: &mut Vec<MultiOutput>,
    ) {
        // Patterns holding nothing here that the event starts get a fresh run.
        self.index.candidates(&e, &mut self.candidates);
        for &p in &self.candidates {
            let at = state.slots.binary_search_by_key(&p, |s| s.pattern);
            if matches!(at, Ok(i) if state.slots[i].run.is_some()) {
                continue;
            }
            let nfa = &self.nfas[p as usize];
            self.checks += 1;
            let refs = &self.refs[p as usize];
            if !self.config.exact_steps && run::starts_nothing(nfa, &e, &mut self.caches[p as usize], refs) {
                continue;
            }
            let chain = self.chains[p as usize].as_ref();
            self.tiers.count_new(chain);
            let run = Run::new(nfa, chain);
            let summary = run.summary(nfa, chain);
            match at {
                Ok(i) => {
                    state.slots[i].run = Some(run);
                    state.slots[i].summary = summary;
                }
                Err(i) => state.slots.insert(
                    i,
                    Slot { pattern: p, run: Some(run), windows: WindowTimers::new(), visit: false, summary },
                ),
            }
        }
        let skip = !self.config.exact_steps;
        for slot in &mut state.slots {
            let Some(run) = slot.run.as_mut() else { continue };
            let p = slot.pattern as usize;
            let nfa = &self.nfas[p];
            let refs = &self.refs[p];
            if skip && run::step_changes_nothing(nfa, &slot.summary, &e, &mut self.caches[p], refs) {
                continue;
            }
            let counts = &mut self.counts[p];
            let chain = self.chains[p].as_ref();
            self.steps += 1;
            let mut matches = run.step(nfa, chain, e.clone(), ts, &mut counts.reached, skip, &mut self.caches[p], refs);
            let started = run.take_new_start();
            if let Some(window) = nfa.window_ms.filter(|&w| w > 0 && started) {
                let t = ts.saturating_add(window);
                add_timer(&mut slot.windows, t);
                new_timers.push(t);
            }
            if let Some(max) = self.config.max_partial_matches_per_key {
                let (dropped, released) = run.enforce_budget(nfa, chain, max);
                counts.stats.dropped_partial_matches += dropped as u64;
                matches.extend(released);
            }
            counts.stats.matches += matches.len() as u64;
            out.extend(
                matches
                    .into_iter()
                    .map(|m| MultiOutput::Pattern(p, Output::Match { key: key.clone(), ts, events: m.events })),
            );
            if run.fall_back_if_due(chain, nfa) {
                self.tiers.fallbacks += 1;
            }
            slot.summary = run.summary(nfa, chain);
        }
    }

    /// Advances a pattern's run at `key` to `ts`: what time releases and times out.
    fn emit_time(&mut self, slot: &mut Slot, key: &Key, ts: i64, out: &mut Vec<MultiOutput>) {
        let p = slot.pattern as usize;
        let Some(run) = slot.run.as_mut() else { return };
        let nfa = &self.nfas[p];
        if !self.config.exact_steps && run::time_changes_nothing(nfa, &slot.summary, ts) {
            return;
        }
        let chain = self.chains[p].as_ref();
        let (matches, timeouts, timed_out) = run.advance_time(nfa, chain, ts, self.config.timeouts);
        slot.summary = run.summary(nfa, chain);
        let stats = &mut self.counts[p].stats;
        stats.matches += matches.len() as u64;
        stats.timeouts += timed_out as u64;
        out.extend(
            matches
                .into_iter()
                .map(|m| MultiOutput::Pattern(p, Output::Match { key: key.clone(), ts, events: m.events })),
        );
        out.extend(
            timeouts
                .into_iter()
                .map(|t| MultiOutput::Pattern(p, Output::Timeout { key: key.clone(), ts: t.ts, events: t.events })),
        );
    }
}
