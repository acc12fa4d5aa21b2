//! Event time for one pattern over a keyed stream (FlinkCEP's `CepOperator`): events are buffered
//! per key until the watermark passes them, then fed to the key's run in timestamp order (ties:
//! arrival order, or a configured field); an event at or behind the watermark is late.
//!
//! Inputs are explicit: [`Operator::process`] and [`Operator::advance_watermark`]. Outputs come
//! in a deterministic order: timers fire in (timestamp, key) order; for each key and timestamp,
//! matches released by time come first, then timeouts, then the matches of the events.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap as HashMap;
use std::fmt;
use std::sync::Arc;

use super::run::{MatchEvents, RunState};
use crate::nfa::{FieldId, Nfa};
use crate::value::{Event, Value};

/// A key of the stream (the pattern's `key` field): text or a whole number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Int(i64),
    Str(Arc<str>),
    /// The key field was null.
    Null,
}

impl Key {
    pub fn of(v: &Value) -> Key {
        match v {
            Value::Int(i) => Key::Int(*i),
            Value::Str(s) => Key::Str(s.clone()),
            Value::Float(f) => Key::Str(Arc::from(f.to_string().as_str())),
            Value::Bool(b) => Key::Str(Arc::from(b.to_string().as_str())),
            Value::Null => Key::Null,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Str(s) => f.write_str(s),
            Key::Null => f.write_str("null"),
        }
    }
}

/// What the operator emits.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A complete match, emitted at event time `ts`.
    Match { key: Key, ts: i64, events: MatchEvents },
    /// A partial match whose window passed at `ts`.
    Timeout { key: Key, ts: i64, events: MatchEvents },
    /// An event at or behind the watermark: not processed.
    Late { key: Key, event: Arc<Event>, watermark: i64 },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// At most this many partial matches per key; beyond it the oldest are dropped.
    pub max_partial_matches_per_key: Option<usize>,
    /// Events with equal timestamps are fed in ascending order of this field (else arrival order).
    pub tie_break: Option<FieldId>,
    /// Emit timed-out partial matches (with their events) as [`Output::Timeout`].
    pub timeouts: bool,
}

/// Counters of the operator's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub late: u64,
    pub matches: u64,
    /// Timed-out partial matches returned (only with [`Config::timeouts`]).
    pub timeouts: u64,
    /// Partial matches dropped because a key hit the partial-match budget.
    pub dropped_partial_matches: u64,
}

/// Everything one key holds.
#[derive(Clone, Debug)]
pub struct KeyState {
    pub run: RunState,
    /// Buffered events by timestamp, in arrival order.
    pub queue: BTreeMap<i64, Vec<Arc<Event>>>,
}

/// Where key states live. In memory here; the service keeps them in RocksDB.
pub trait StateStore {
    fn get_mut(&mut self, key: &Key) -> Option<&mut KeyState>;
    /// The state of `key`, created with `new` if it has none.
    fn get_or_insert_with(&mut self, key: &Key, new: impl FnOnce() -> KeyState) -> &mut KeyState;
    fn insert(&mut self, key: Key, state: KeyState);
    fn remove(&mut self, key: &Key);
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Key states in a hash map.
#[derive(Clone, Debug, Default)]
pub struct InMemory(HashMap<Key, KeyState>);

impl StateStore for InMemory {
    fn get_mut(&mut self, key: &Key) -> Option<&mut KeyState> {
        self.0.get_mut(key)
    }
    fn get_or_insert_with(&mut self, key: &Key, new: impl FnOnce() -> KeyState) -> &mut KeyState {
        self.0.entry(key.clone()).or_insert_with(new)
    }
    fn insert(&mut self, key: Key, state: KeyState) {
        self.0.insert(key, state);
    }
    fn remove(&mut self, key: &Key) {
        self.0.remove(key);
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One pattern over a keyed stream, in event time.
#[derive(Debug)]
pub struct Operator<S: StateStore = InMemory> {
    nfa: Arc<Nfa>,
    store: S,
    timers: BTreeSet<(i64, Key)>,
    watermark: i64,
    config: Config,
    stats: Stats,
}

impl Operator<InMemory> {
    pub fn new(nfa: Arc<Nfa>, config: Config) -> Self {
        Operator::with_store(nfa, config, InMemory::default())
    }
}

impl<S: StateStore> Operator<S> {
    pub fn with_store(nfa: Arc<Nfa>, config: Config, store: S) -> Self {
        Operator { nfa, store, timers: BTreeSet::new(), watermark: i64::MIN, config, stats: Stats::default() }
    }

    pub fn nfa(&self) -> &Arc<Nfa> {
        &self.nfa
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Keys holding partial matches or buffered events (idle keys hold nothing).
    pub fn active_keys(&self) -> usize {
        self.store.len()
    }

    /// Takes an event of `key` (its event time is `event.ts`).
    pub fn process(&mut self, key: Key, event: Arc<Event>, out: &mut Vec<Output>) {
        self.stats.events += 1;
        if event.ts <= self.watermark {
            self.stats.late += 1;
            out.push(Output::Late { key, event, watermark: self.watermark });
            return;
        }
        let ts = event.ts;
        let nfa = &self.nfa;
        let state =
            self.store.get_or_insert_with(&key, || KeyState { run: RunState::new(nfa), queue: BTreeMap::new() });
        let list = state.queue.entry(ts).or_default();
        if list.is_empty() {
            self.timers.insert((ts, key));
        }
        list.push(event);
    }

    /// Moves the watermark to `wm` (never backwards) and processes what it releases.
    pub fn advance_watermark(&mut self, wm: i64, out: &mut Vec<Output>) {
        if wm <= self.watermark {
            return;
        }
        self.watermark = wm;
        while let Some((t, key)) = self.timers.first().cloned() {
            if t > wm {
                break;
            }
            self.timers.remove(&(t, key.clone()));
            self.on_timer(key, out);
        }
    }

    fn on_timer(&mut self, key: Key, out: &mut Vec<Output>) {
        let nfa = self.nfa.clone();
        let window = nfa.window_ms.unwrap_or(0);
        let wm = self.watermark;
        let (tie_break, budget) = (self.config.tie_break, self.config.max_partial_matches_per_key);
        let emit_timeouts = self.config.timeouts;
        let Some(state) = self.store.get_mut(&key) else { return };
        let mut new_timers = Vec::new();
        let stats = &mut self.stats;
        let emit_time = |state: &mut KeyState, ts: i64, out: &mut Vec<Output>, stats: &mut Stats| {
            let (matches, timeouts) = state.run.advance_time(&nfa, ts, emit_timeouts);
            stats.matches += matches.len() as u64;
            stats.timeouts += timeouts.len() as u64;
            out.extend(matches.into_iter().map(|m| Output::Match { key: key.clone(), ts, events: m.events }));
            out.extend(timeouts.into_iter().map(|t| Output::Timeout { key: key.clone(), ts: t.ts, events: t.events }));
        };
        while let Some((&ts, _)) = state.queue.first_key_value() {
            if ts > wm {
                break;
            }
            let mut batch = state.queue.remove(&ts).unwrap_or_default();
            emit_time(state, ts, out, stats);
            if let Some(f) = tie_break {
                batch.sort_by(|a, b| a.field(f).compare(b.field(f)).unwrap_or(std::cmp::Ordering::Equal));
            }
            for e in batch {
                let matches = state.run.process(&nfa, e, ts);
                if window > 0 && state.run.new_start {
                    new_timers.push(ts.saturating_add(window));
                }
                state.run.new_start = false;
                stats.matches += matches.len() as u64;
                out.extend(matches.into_iter().map(|m| Output::Match { key: key.clone(), ts, events: m.events }));
                if let Some(max) = budget {
                    stats.dropped_partial_matches += state.run.enforce_budget(max) as u64;
                }
            }
        }
        emit_time(state, wm, out, stats);
        let idle = state.queue.is_empty() && state.run.is_idle();
        for t in new_timers {
            // A timer at or below the watermark fires in this pass, as in Flink.
            self.timers.insert((t, key.clone()));
        }
        if idle {
            // Its leftover window timers, if any, find no state and do nothing.
            self.store.remove(&key);
        }
    }
}
