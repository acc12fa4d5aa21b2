//! Event time for one pattern over a keyed stream (FlinkCEP's `CepOperator`): events are buffered
//! per key until the watermark passes them, then fed to the key's run in timestamp order (ties:
//! arrival order, or a configured field); an event at or behind the watermark is late.
//!
//! Inputs are explicit: [`Operator::process`] and [`Operator::advance_watermark`]. Outputs come
//! in a deterministic order: timers fire in (timestamp, key) order; for each key and timestamp,
//! matches released by time come first, then timeouts, then the matches of the events.
//!
//! For a durable store (the service's changelog), the operator records which keys changed
//! ([`Operator::take_dirty`]) and writes and restores one key at a time
//! ([`Operator::snapshot_key`], [`Operator::restore_key`]; the format is in [`super::snapshot`]).
//!
//! Reference tables are installed with [`Operator::set_reference`] between calls (the service:
//! at transaction boundaries) and read by every event processed after it; they are not part of
//! the key states or their snapshots.

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::fmt;
use std::sync::Arc;

use super::fast::{self, Chain, Run};
use super::queue::Queue;
use super::run::{self as run, MatchEvents, PartialView, RunState};
use super::snapshot::{self, SnapshotError};
use super::split::{self, KeyRecords};
use crate::expr::ConditionCache;
use crate::nfa::{FieldId, Nfa};
use crate::refdata::{Bound, RefData};
use crate::value::{Event, Text, Value};

/// A key of the stream (the pattern's `key` field): text or a whole number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Int(i64),
    Str(Text),
    /// The key field was null.
    Null,
}

impl Key {
    pub fn of(v: &Value) -> Key {
        match v {
            Value::Int(i) => Key::Int(*i),
            Value::Str(s) => Key::Str(s.clone()),
            Value::Float(f) => Key::Str(Text::new(f.to_string())),
            Value::Bool(b) => Key::Str(Text::new(b.to_string())),
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
    /// For [`Operator::take_key_records`]: a key holding more events than this is written as a
    /// split snapshot (its events' values in records of their own, each written once); `None`
    /// writes every key in one record.
    pub inline_events: Option<usize>,
    /// Every event takes FlinkCEP's full step, even one that leaves every partial match of its
    /// key as it is, and conditions read earlier events by walking the match's path (the
    /// default skips those steps and reads registers: same output, same state). For
    /// differential tests; slower.
    pub exact_steps: bool,
    /// Whether keys of a chain pattern run on the fast tier ([`super::fast`]; off with
    /// `exact_steps`).
    pub fast_tier: FastTier,
}

impl Config {
    /// The pattern as the fast tier runs it: `None` unless it is a chain and the tier is on.
    pub(super) fn fast_chain(&self, nfa: &Nfa) -> Option<Chain> {
        let log_max = match self.fast_tier {
            _ if self.exact_steps => return None,
            FastTier::Off => return None,
            FastTier::On => fast::LOG_MAX,
            FastTier::FallBackAfter(n) => n,
        };
        Chain::of(nfa, log_max)
    }
}

/// [`Config::fast_tier`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FastTier {
    /// On; a key falls back to the exact runtime after [`fast::LOG_MAX`] changes until it goes
    /// idle.
    #[default]
    On,
    Off,
    /// On, falling back after this many changes (for tests of the fall-back).
    FallBackAfter(usize),
}

/// How keys ran on the tiers ([`Operator::tier_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierCounts {
    /// Runs made on the fast tier (one each time a key starts from idle).
    pub fast_runs: u64,
    /// Runs made on the exact runtime.
    pub exact_runs: u64,
    /// Fast runs that fell back to the exact runtime (their log outgrew its bound).
    pub fallbacks: u64,
}

impl TierCounts {
    /// Counts a run made by [`Run::new`].
    pub(super) fn count_new(&mut self, chain: Option<&Chain>) {
        match chain {
            Some(_) => self.fast_runs += 1,
            None => self.exact_runs += 1,
        }
    }
}

/// Counters of the operator's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub late: u64,
    pub matches: u64,
    /// Partial matches whose window passed (returned as [`Output::Timeout`] only with
    /// [`Config::timeouts`], counted either way).
    pub timeouts: u64,
    /// Partial matches dropped because a key hit the partial-match budget.
    pub dropped_partial_matches: u64,
    /// With a [`Backing`]: keys needed and found in memory.
    pub state_hits: u64,
    /// With a [`Backing`]: keys needed that were not in memory (read from the backing, which
    /// may hold nothing for them).
    pub state_misses: u64,
}

/// Everything one key holds.
#[derive(Clone, Debug)]
pub struct KeyState {
    /// `None`: only the fresh start state (no partial match started, nothing held back), made
    /// when an event starts something.
    pub run: Option<Box<Run>>,
    /// Buffered events by timestamp, in arrival order.
    pub queue: Queue,
    /// The key's pending window timers, ascending. Its other timers are the timestamps of
    /// `queue` (a buffered timestamp always has one): together they are the key's entries in the
    /// operator's timer set.
    windows: WindowTimers,
    /// Whether the key is in the operator's set of changed keys.
    dirty: bool,
    /// When the key was last visited (the operator's tick), for eviction.
    used: u64,
}

impl KeyState {
    fn new(windows: WindowTimers) -> Self {
        KeyState { run: None, queue: Queue::new(), windows, dirty: false, used: 0 }
    }

    fn partial_count(&self) -> usize {
        self.run.as_deref().map_or(0, Run::partial_count)
    }

    /// Calls `f` with the key's run as the exact runtime holds it (a fresh one when it holds
    /// none; replayed from a fast run).
    fn with_run<R>(&self, nfa: &Nfa, f: impl FnOnce(&RunState) -> R) -> R {
        match &self.run {
            Some(run) => run.with_exact(nfa, f),
            None => f(&RunState::new(nfa)),
        }
    }
}

/// A key's pending window timers, ascending: one per run started within the window, fired
/// from the front.
pub(super) type WindowTimers = VecDeque<i64>;

/// Adds `t` to an ascending list of timers (usually at the end).
pub(super) fn add_timer(timers: &mut WindowTimers, t: i64) {
    if timers.back().is_none_or(|&last| last < t) {
        timers.push_back(t);
    } else if let Err(i) = timers.binary_search(&t) {
        timers.insert(i, t);
    }
}

/// Removes and returns the window timers of `key` if it has no state.
fn take_orphans(orphans: &mut HashMap<Key, WindowTimers>, key: &Key) -> WindowTimers {
    if orphans.is_empty() {
        return WindowTimers::new();
    }
    orphans.remove(key).unwrap_or_default()
}

/// Forgets the timers up to `t`, which just fired (a key's timers fire in ascending order).
pub(super) fn remove_fired(timers: &mut WindowTimers, t: i64) {
    while timers.front().is_some_and(|&first| first <= t) {
        timers.pop_front();
    }
}

/// Where the states of keys that are not in memory live: the service's RocksDB store, as of
/// the last commit. The operator does no I/O itself; with a backing it keeps only a cache of
/// keys in memory ([`Operator::evict`]) and asks the backing for the others: a key's state
/// when one of its events arrives, and the keys whose stored timers the watermark passes.
///
/// A backing must return what [`Operator::snapshot_key`] gave for the key at the last commit
/// (and the timers of those snapshots): keys that changed since are in memory, so the operator
/// never asks for them.
pub trait Backing: Send + fmt::Debug {
    /// Appends the stored snapshot of `key` to `out`; `false` (nothing appended) when the key
    /// holds nothing. A read error is the backing's to keep and report (the operator goes on as
    /// if the key held nothing; the caller must not commit what follows).
    fn load(&mut self, key: &Key, out: &mut Vec<u8>) -> bool;
    /// Appends the other stored records of `key` (those of a split snapshot, as
    /// [`Operator::take_key_records`] gave them), ascending by sub-key.
    fn records(&mut self, key: &Key, out: &mut Vec<(Vec<u8>, Vec<u8>)>);
    /// Appends the stored timers `(t, key)` with `after < t <= until` in ascending order: all of
    /// them, or at least `limit` and then every timer at the same time as the last one. Returns
    /// a time before which no stored timer of a key out of memory is due (`None`: none is stored
    /// after those appended), so that the operator need not ask again before the watermark
    /// reaches it: the time of the first stored timer after those appended whose key is not
    /// `in_memory`, or of one a few timers on if those are all of keys in memory.
    fn due(
        &mut self,
        after: i64,
        until: i64,
        limit: usize,
        in_memory: &dyn Fn(&Key) -> bool,
        out: &mut Vec<(i64, Key)>,
    ) -> Option<i64>;
    /// A stored snapshot of `key` does not decode for this pattern.
    fn corrupt(&mut self, key: &Key, error: SnapshotError);
}

/// [`Backing::due`] over timers kept in an ordered set: for backings that hold their timer index
/// in memory (the tests' backings do). A backing over a store scans its own index instead.
pub fn due_in_set(
    timers: &BTreeSet<(i64, Key)>,
    after: i64,
    until: i64,
    limit: usize,
    in_memory: &dyn Fn(&Key) -> bool,
    out: &mut Vec<(i64, Key)>,
) -> Option<i64> {
    for (t, k) in timers.iter().filter(|(t, _)| *t > after) {
        if out.len() >= limit && out.last().is_some_and(|(last, _)| last != t) {
            return Some(*t);
        }
        if *t > until {
            if in_memory(k) {
                continue;
            }
            return Some(*t);
        }
        out.push((*t, k.clone()));
    }
    None
}

/// How an operator runs while its pattern version is being replaced ([`Operator::drain`]): it
/// finishes the partial matches it holds, and the events read after the switch start none.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Drain {
    /// The events read after the switch: they extend the partial matches held, and start none.
    pub after: After,
    /// The newest event time read before the switch. Until the watermark reaches it, events
    /// read before the switch may still be buffered, and may start partial matches.
    pub horizon: i64,
}

/// Which events were read after a switch ([`Drain::after`]), by their `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum After {
    /// Those at or after this `seq` (the caller's `seq`s grow in reading order).
    Seq(u64),
    /// Events from several sources, each read in its own order: an event's source (its lane) is
    /// the top 16 bits of its `seq` ([`LANE_SHIFT`]), and its `seq`s grow in reading order
    /// within the lane. Per lane, the first `seq` read after the switch; every event of a lane
    /// not listed was read after it.
    Lanes(Arc<std::collections::BTreeMap<u16, u64>>),
}

/// Where a `seq`'s lane is ([`After::Lanes`]).
pub const LANE_SHIFT: u32 = 48;

impl After {
    /// Whether the event with `seq` was read after the switch.
    pub fn contains(&self, seq: u64) -> bool {
        match self {
            After::Seq(from) => seq >= *from,
            After::Lanes(lanes) => lanes.get(&((seq >> LANE_SHIFT) as u16)).is_none_or(|from| seq >= *from),
        }
    }
}

/// Timers read from the backing per step of [`Operator::advance_watermark`].
const DUE_CHUNK: usize = 4096;

/// One pattern over a keyed stream, in event time.
#[derive(Debug)]
pub struct Operator {
    nfa: Arc<Nfa>,
    /// The keys in memory (all of them without a backing).
    store: HashMap<Key, KeyState>,
    /// Where the other keys are (see [`Backing`]).
    backing: Option<Box<dyn Backing>>,
    /// The timers of the keys in memory; a key's stored timers are in the backing.
    timers: BTreeSet<(i64, Key)>,
    /// Window timers of keys whose state was dropped (idle keys): they still fire, as Flink's
    /// do, and a key that comes back before they do takes them back into its state.
    orphan_timers: HashMap<Key, WindowTimers>,
    /// Keys whose state or timers changed since the last [`Operator::take_dirty`]; a key whose
    /// state has `dirty` set is in it.
    dirty: HashSet<Key>,
    track_changes: bool,
    watermark: i64,
    config: Config,
    stats: Stats,
    /// Per variable: partial matches that took their first event into it (the funnel).
    reached: Vec<u64>,
    /// Partial matches held over all keys, in memory or stored (kept up to date per key visit).
    partials: usize,
    /// Keys holding state, in memory or stored.
    keys: usize,
    /// Ticks of key visits, for least-recently-used eviction.
    tick: u64,
    /// Reused for snapshots read from the backing.
    scratch: Vec<u8>,
    /// Keys stored as split snapshots: what is stored of them (see
    /// [`Operator::take_key_records`]).
    split: HashMap<Key, split::SplitState>,
    /// With a backing: no stored timer of a key out of memory is before this time (`None`: not
    /// known yet). The backing is asked for due timers only once the watermark reaches it.
    stored_floor: Option<i64>,
    /// Reused to decide whether an event starts a partial match at a key that holds none, and
    /// by fast runs.
    start_cache: ConditionCache,
    /// The pattern as the fast tier runs it, if it is a chain and the tier is on.
    chain: Option<Chain>,
    tiers: TierCounts,
    /// Set while the pattern version is being replaced.
    drain: Option<Drain>,
    /// The reference tables the pattern reads, from the last snapshot installed.
    refs: Bound,
}

impl Operator {
    pub fn new(nfa: Arc<Nfa>, config: Config) -> Self {
        let nfa_vars = nfa.vars.len();
        let start_cache = ConditionCache::new(&nfa.conditions);
        let chain = config.fast_chain(&nfa);
        Operator {
            nfa,
            store: HashMap::default(),
            backing: None,
            timers: BTreeSet::new(),
            orphan_timers: HashMap::default(),
            dirty: HashSet::default(),
            track_changes: true,
            watermark: i64::MIN,
            config,
            stats: Stats::default(),
            reached: vec![0; nfa_vars],
            partials: 0,
            keys: 0,
            tick: 0,
            scratch: Vec::new(),
            split: HashMap::default(),
            stored_floor: None,
            start_cache,
            chain,
            tiers: TierCounts::default(),
            drain: None,
            refs: Bound::NONE,
        }
    }

    /// Installs a snapshot of the reference tables: every event processed from now on (by
    /// [`Operator::advance_watermark`], which processes the buffered events it passes) reads the
    /// tables the pattern names ([`Nfa::tables`]) from `data`, a missing one as empty. Changes
    /// no state: partial matches go on, and what they took stays taken. Cheap (the tables are
    /// shared); a pattern that reads no table keeps nothing.
    pub fn set_reference(&mut self, data: &RefData) {
        self.refs = Bound::new(&self.nfa.tables, data);
    }

    /// The reference tables installed last, resolved for the pattern: what to render its
    /// outputs with ([`crate::alert::body_with`]) and to evaluate its conditions with
    /// ([`crate::Cond::holds_with`]) as it did.
    pub fn reference(&self) -> &Bound {
        &self.refs
    }

    /// How keys ran on the tiers since the operator was made.
    pub fn tier_counts(&self) -> TierCounts {
        self.tiers
    }

    /// Keeps the states of keys that are not in memory in `backing` (which holds the states of
    /// the last commit; see [`Backing`]); `keys` and `partials` are what it holds (the counts
    /// [`Operator::active_keys`] and [`Operator::active_partial_matches`] go on from). Only for
    /// an operator that holds nothing yet, and change tracking stays on.
    pub fn set_backing(&mut self, backing: Box<dyn Backing>, keys: usize, partials: usize) {
        self.backing = Some(backing);
        self.stored_floor = None;
        self.keys = keys;
        self.partials = partials;
        self.track_changes = true;
    }

    /// Starts finishing what the operator holds, because its pattern version is replaced (the
    /// service's policy for partial matches in flight, see `docs/service.md`): events read from
    /// now on (those `drain.after` contains) extend the partial matches held but start
    /// none, and a key that holds none no longer takes events once the watermark reaches
    /// `drain.horizon`. Matches and timeouts are reported as before. Once
    /// [`Operator::drained`], the operator holds nothing. Runs on the fast tier go to the exact
    /// runtime.
    pub fn drain(&mut self, drain: Drain) {
        self.drain = Some(drain);
        self.chain = None;
        for s in self.store.values_mut() {
            if let Some(run) = s.run.as_deref_mut() {
                run.make_exact(&self.nfa);
            }
        }
    }

    /// Ends a drain: the pattern version is live again (a rollback to it) and starts partial
    /// matches from every event, with what it still holds.
    pub fn resume(&mut self) {
        self.drain = None;
        self.chain = self.config.fast_chain(&self.nfa);
    }

    /// The drain the operator is in, if its pattern version is being replaced.
    pub fn draining(&self) -> Option<&Drain> {
        self.drain.as_ref()
    }

    /// A draining operator that holds nothing any more (no key holds a partial match or an
    /// event): it can go.
    pub fn drained(&self) -> bool {
        self.drain.is_some() && self.keys == 0
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

    /// Keys holding partial matches or buffered events (idle keys hold nothing), in memory or
    /// in the backing.
    pub fn active_keys(&self) -> usize {
        self.keys
    }

    /// Estimated bytes of the key states in memory (their events, shared buffers, partial
    /// matches, queues and timers): for the metrics, O(keys in memory).
    pub fn memory_estimate(&self) -> usize {
        // Calibrated against the resident memory of a service holding 21,000 keys of the
        // payment patterns (the hash tables' spare room and the allocator's included).
        const KEY: usize = 128;
        let fields = self.nfa.fields.len();
        let event = 128 + 40 * fields;
        let mut bytes = self.orphan_timers.len() * (KEY + 96);
        for s in self.store.values() {
            let (events, nodes) = s.run.as_deref().map_or((0, 0), Run::size);
            let queued: usize = s.queue.events();
            bytes +=
                KEY + 1024 + (events + queued) * event + nodes * 128 + s.partial_count() * 160 + s.windows.len() * 64;
        }
        // What split keys remember of their stored records: per event an id, a held pointer,
        // and its shared-buffer record's bytes.
        for st in self.split.values() {
            bytes += KEY + st.memory_estimate();
        }
        bytes
    }

    /// Keys in memory: with state, or only pending timers.
    pub fn cached_keys(&self) -> usize {
        self.store.len() + self.orphan_timers.len()
    }

    /// Partial matches held over all keys (started ones; a key's fresh start state is not one).
    pub fn active_partial_matches(&self) -> usize {
        self.partials
    }

    /// The funnel, by [`crate::nfa::VarId`]: how many partial matches took their first event
    /// into each variable since the operator was made (negated variables stay 0). A complete
    /// match is counted in [`Stats::matches`].
    pub fn funnel(&self) -> &[u64] {
        &self.reached
    }

    /// The started partial matches of `key` with their state and events so far (empty when the
    /// key holds no state in memory), ordered by first event: [`RunState::partial_views`].
    /// Read-only.
    pub fn partial_matches(&self, key: &Key) -> Vec<PartialView> {
        match self.store.get(key) {
            Some(s) if s.run.is_some() => s.with_run(&self.nfa, RunState::partial_views),
            _ => Vec::new(),
        }
    }

    /// Events of `key` waiting in its time-order queue for the watermark to pass them (not yet
    /// seen by its partial matches), in memory. Read-only.
    pub fn buffered_events(&self, key: &Key) -> usize {
        self.store.get(key).map_or(0, |s| s.queue.events())
    }

    /// The stored state of a key that is not in memory (and did not change since the commit).
    fn read_stored(&mut self, key: &Key) -> Option<snapshot::Decoded> {
        if self.orphan_timers.contains_key(key) || self.dirty.contains(key) {
            return None;
        }
        let backing = self.backing.as_mut()?;
        self.scratch.clear();
        self.stats.state_misses += 1;
        if !backing.load(key, &mut self.scratch) {
            return None;
        }
        let decoded = if self.scratch.first() == Some(&snapshot::SPLIT_VERSION) {
            let mut records = Vec::new();
            backing.records(key, &mut records);
            split::decode(&self.nfa, &self.scratch, &records).map(|(decoded, stored)| {
                self.split.insert(key.clone(), stored);
                decoded
            })
        } else {
            snapshot::decode(&self.nfa, &self.scratch)
        };
        match decoded {
            Ok(decoded) => Some(decoded),
            Err(e) => {
                backing.corrupt(key, e);
                None
            }
        }
    }

    /// Brings the stored state of `key` into memory, with its timers, unless it is there (or
    /// changed since the commit, so that what is stored is out of date).
    fn fetch(&mut self, key: &Key) {
        if self.backing.is_none() {
            return;
        }
        if self.store.contains_key(key) {
            self.stats.state_hits += 1;
            return;
        }
        if let Some((state, windows)) = self.read_stored(key) {
            self.install(key.clone(), state, windows);
        }
    }

    /// Puts a decoded state in memory with its timers (counts unchanged: they include it).
    fn install(&mut self, key: Key, state: Option<(RunState, Queue)>, windows: WindowTimers) {
        for &t in &windows {
            self.timers.insert((t, key.clone()));
        }
        match state {
            Some((run, queue)) if !(queue.is_empty() && run.is_idle()) => {
                for &t in queue.keys() {
                    self.timers.insert((t, key.clone()));
                }
                self.tick += 1;
                let run = (!run.is_idle()).then(|| Box::new(Run::Exact(run)));
                self.store.insert(key, KeyState { run, queue, windows, dirty: false, used: self.tick });
            }
            _ if !windows.is_empty() => {
                self.orphan_timers.insert(key, windows);
            }
            _ => {}
        }
    }

    /// Takes an event of `key` (its event time is `event.ts`).
    pub fn process(&mut self, key: Key, event: Arc<Event>, out: &mut Vec<Output>) {
        self.stats.events += 1;
        if event.ts <= self.watermark {
            self.stats.late += 1;
            out.push(Output::Late { key, event, watermark: self.watermark });
            return;
        }
        self.fetch(&key);
        if let Some(d) = &self.drain {
            // Draining: only keys that may still hold a partial match take events.
            let wm = self.watermark;
            if !self.store.get(&key).is_some_and(|s| s.run.is_some() || wm < d.horizon) {
                return;
            }
        }
        let ts = event.ts;
        self.tick += 1;
        let tick = self.tick;
        let state = match self.store.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.keys += 1;
                let windows = take_orphans(&mut self.orphan_timers, &key);
                v.insert(KeyState::new(windows))
            }
        };
        state.used = tick;
        if self.track_changes && !state.dirty {
            state.dirty = true;
            self.dirty.insert(key.clone());
        }
        if state.queue.push(ts, event) {
            self.timers.insert((ts, key));
        }
    }

    /// Moves the watermark to `wm` (never backwards) and processes what it releases.
    pub fn advance_watermark(&mut self, wm: i64, out: &mut Vec<Output>) {
        if wm <= self.watermark {
            return;
        }
        let mut after = self.watermark;
        self.watermark = wm;
        let mut due = Vec::new();
        loop {
            // Stored timers due first, a chunk at a time, so that timers fire in (time, key)
            // order over memory and backing alike.
            let mut until = wm;
            let ask = self.stored_floor.is_none_or(|floor| floor <= wm);
            if let Some(backing) = self.backing.as_mut().filter(|_| ask) {
                due.clear();
                let (store, orphans) = (&self.store, &self.orphan_timers);
                let in_memory = |k: &Key| store.contains_key(k) || orphans.contains_key(k);
                let next = backing.due(after, wm, DUE_CHUNK, &in_memory, &mut due);
                if due.len() >= DUE_CHUNK {
                    until = due.last().map_or(wm, |(t, _)| *t);
                }
                if until >= wm {
                    self.stored_floor = Some(next.unwrap_or(i64::MAX));
                }
                for (_, key) in due.drain(..) {
                    if !self.orphan_timers.contains_key(&key) {
                        self.fetch(&key);
                    }
                }
            }
            while self.timers.first().is_some_and(|(t, _)| *t <= until) {
                let Some((t, key)) = self.timers.pop_first() else { break };
                self.on_timer(t, key, out);
            }
            if until >= wm {
                break;
            }
            after = until;
        }
    }

    /// The timer `(t, key)` fired (it is out of the timer set).
    fn on_timer(&mut self, t: i64, key: Key, out: &mut Vec<Output>) {
        let nfa = &*self.nfa;
        let window = nfa.window_ms.unwrap_or(0);
        let wm = self.watermark;
        let (tie_break, budget) = (self.config.tie_break, self.config.max_partial_matches_per_key);
        let emit_timeouts = self.config.timeouts;
        let exact_steps = self.config.exact_steps;
        let drain = self.drain.clone();
        self.tick += 1;
        let tick = self.tick;
        let Some(state) = self.store.get_mut(&key) else {
            // A window timer that outlived the key's state: it does nothing, but it is gone.
            if let Some(timers) = self.orphan_timers.get_mut(&key) {
                remove_fired(timers, t);
                if timers.is_empty() {
                    self.orphan_timers.remove(&key);
                }
            }
            if self.track_changes {
                self.dirty.insert(key);
            }
            return;
        };
        state.used = tick;
        remove_fired(&mut state.windows, t);
        let partials_before = state.partial_count();
        if self.track_changes && !state.dirty {
            state.dirty = true;
            self.dirty.insert(key.clone());
        }
        let mut new_timers = Vec::new();
        let stats = &mut self.stats;
        let reached = &mut self.reached;
        let start_cache = &mut self.start_cache;
        let chain = self.chain.as_ref();
        let tiers = &mut self.tiers;
        let refs = &self.refs;
        let emit_time = |state: &mut KeyState, ts: i64, out: &mut Vec<Output>, stats: &mut Stats| {
            let Some(run) = state.run.as_deref_mut() else { return };
            let (matches, timeouts, timed_out) = run.advance_time(nfa, chain, ts, emit_timeouts);
            stats.matches += matches.len() as u64;
            stats.timeouts += timed_out as u64;
            out.extend(matches.into_iter().map(|m| Output::Match { key: key.clone(), ts, events: m.events }));
            out.extend(timeouts.into_iter().map(|t| Output::Timeout { key: key.clone(), ts: t.ts, events: t.events }));
        };
        while let Some(ts) = state.queue.first_ts() {
            if ts > wm {
                break;
            }
            let Some((_, mut batch)) = state.queue.pop_first() else { break };
            emit_time(state, ts, out, stats);
            if let Some(f) = tie_break {
                batch.sort_by(|a, b| a.field(f).compare(b.field(f)).unwrap_or(std::cmp::Ordering::Equal));
            }
            for e in batch {
                let starts = drain.as_ref().is_none_or(|d| !d.after.contains(e.seq));
                let run = match state.run.as_mut() {
                    Some(run) => run,
                    None if !starts => continue,
                    // The fresh start state stays as it is for an event that starts nothing:
                    // its step would change nothing (see `RunState::step`).
                    None if !exact_steps && run::starts_nothing(nfa, &e, start_cache, refs) => continue,
                    None => {
                        tiers.count_new(chain);
                        state.run.insert(Box::new(Run::new(nfa, chain)))
                    }
                };
                let mut matches = if starts {
                    run.step(nfa, chain, e, ts, reached, !exact_steps, start_cache, refs)
                } else {
                    run.step_without_start(nfa, e, ts, reached, !exact_steps, refs)
                };
                if run.take_new_start() && window > 0 {
                    new_timers.push(ts.saturating_add(window));
                }
                if let Some(max) = budget {
                    let (dropped, released) = run.enforce_budget(nfa, chain, max);
                    stats.dropped_partial_matches += dropped as u64;
                    matches.extend(released);
                }
                if run.fall_back_if_due(chain, nfa) {
                    tiers.fallbacks += 1;
                }
                stats.matches += matches.len() as u64;
                out.extend(matches.into_iter().map(|m| Output::Match { key: key.clone(), ts, events: m.events }));
            }
        }
        emit_time(state, wm, out, stats);
        self.partials = (self.partials + state.partial_count()).saturating_sub(partials_before);
        // A run holding nothing is the fresh start state again (as when the key's state is
        // dropped: it then starts afresh too).
        if state.run.as_deref().is_some_and(Run::is_idle) {
            state.run = None;
        }
        if drain.as_ref().is_some_and(|d| wm >= d.horizon) && state.run.is_none() && !state.queue.is_empty() {
            // Draining, and every event read before the switch is processed: what the key
            // still buffers can start nothing.
            for &t in state.queue.keys() {
                // (A window timer at the same time stays: it is the same entry.)
                if state.windows.binary_search(&t).is_err() {
                    self.timers.remove(&(t, key.clone()));
                }
            }
            state.queue = Queue::new();
        }
        let idle = state.queue.is_empty() && state.run.is_none();
        for t in new_timers {
            // A timer at or below the watermark fires in this pass, as in Flink.
            if self.timers.insert((t, key.clone())) {
                add_timer(&mut state.windows, t);
            }
        }
        if idle {
            // Its leftover window timers, if any, find no state and do nothing (but they fire).
            let windows = std::mem::take(&mut state.windows);
            self.store.remove(&key);
            self.keys = self.keys.saturating_sub(1);
            if !windows.is_empty() {
                self.orphan_timers.insert(key, windows);
            }
        }
    }

    /// The keys whose state or pending timers changed since the last call (or since the
    /// operator was made), in ascending order; the record starts afresh. A late event changes
    /// nothing; a processed event, a fired timer (even one that finds no state) and a dropped
    /// idle key do. Write [`Operator::snapshot_key`] of each (or a tombstone when it returns
    /// `false`) to keep a durable copy of the operator.
    pub fn take_dirty(&mut self) -> Vec<Key> {
        let mut keys: Vec<Key> = self.dirty.drain().collect();
        keys.sort_unstable();
        for k in &keys {
            if let Some(state) = self.store.get_mut(k) {
                state.dirty = false;
            }
        }
        keys
    }

    /// Turns the record of changed keys on (the default) or off. Off, [`Operator::take_dirty`]
    /// returns nothing and the record costs no memory: for runs that keep no durable copy
    /// (replay, benchmarks). Turning it off forgets what was recorded. An operator with a
    /// backing always records.
    pub fn track_changes(&mut self, on: bool) {
        if self.backing.is_some() {
            return;
        }
        if !on {
            self.take_dirty();
        }
        self.track_changes = on;
    }

    /// Drops keys that did not change since the last [`Operator::take_dirty`] from memory, least
    /// recently used first, until at most `keep` keys are in memory (or none that could go is
    /// left); returns how many went. Their state must be in the backing as the last snapshots
    /// gave it (the caller has written them there). Without a backing nothing goes.
    pub fn evict(&mut self, keep: usize) -> usize {
        if self.backing.is_none() || self.cached_keys() <= keep {
            return 0;
        }
        let mut over = self.cached_keys() - keep;
        let mut gone = 0;
        // Keys with only pending timers first (they were last used before they went idle).
        let orphans: Vec<Key> =
            self.orphan_timers.keys().filter(|k| !self.dirty.contains(*k)).take(over).cloned().collect();
        for key in orphans {
            self.split.remove(&key);
            for t in self.orphan_timers.remove(&key).unwrap_or_default() {
                self.timers.remove(&(t, key.clone()));
                self.stored_floor = self.stored_floor.map(|f| f.min(t));
            }
            gone += 1;
        }
        over -= gone;
        if over == 0 {
            return gone;
        }
        let mut clean: Vec<(u64, &Key)> =
            self.store.iter().filter(|(_, s)| !s.dirty).map(|(k, s)| (s.used, k)).collect();
        if clean.len() > over {
            clean.select_nth_unstable(over);
            clean.truncate(over);
        }
        let victims: Vec<Key> = clean.into_iter().map(|(_, k)| k.clone()).collect();
        for key in victims {
            self.split.remove(&key);
            if let Some(state) = self.store.remove(&key) {
                for &t in state.queue.keys().chain(state.windows.iter()) {
                    self.timers.remove(&(t, key.clone()));
                    self.stored_floor = self.stored_floor.map(|f| f.min(t));
                }
                gone += 1;
            }
        }
        gone
    }

    /// The pending timers of `key` in memory, ascending (its buffered timestamps and window
    /// timers): what a backing indexes a snapshot by.
    pub fn key_timers(&self, key: &Key) -> Vec<i64> {
        let mut out: Vec<i64> = match (self.store.get(key), self.orphan_timers.get(key)) {
            (Some(s), _) => s.queue.keys().chain(s.windows.iter()).copied().collect(),
            (None, Some(w)) => w.iter().copied().collect(),
            (None, None) => Vec::new(),
        };
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Appends the complete state of `key` to `out`: its partial matches, shared buffer and
    /// buffered events, and its pending timers (window timers outlive a dropped idle key, so a
    /// key with no state may still have a snapshot). Returns `false`, appending nothing, when the
    /// key holds nothing in memory (write a tombstone if it changed). The format is described in
    /// [`super::snapshot`].
    pub fn snapshot_key(&self, key: &Key, out: &mut Vec<u8>) -> bool {
        match (self.store.get(key), self.orphan_timers.get(key)) {
            (Some(state), _) => state.with_run(&self.nfa, |run| {
                snapshot::encode(&self.nfa, Some((run, &state.queue)), state.windows.iter().copied(), out)
            }),
            (None, Some(windows)) => snapshot::encode(&self.nfa, None, windows.iter().copied(), out),
            (None, None) => return false,
        }
        true
    }

    /// The records of `key`'s complete state, for a store that keeps a big key's events apart
    /// (what [`Operator::snapshot_key`] gives in one record). A key holding more events than
    /// [`Config::inline_events`] gets a split snapshot (first byte
    /// [`SPLIT_VERSION`](super::snapshot::SPLIT_VERSION)) as its head, and records of its events
    /// ([`super::split`]): an event's values are in `put` once, when the key first holds it at
    /// this call, a shared-buffer event's record whenever it changed, and `gone` names the
    /// records of what the key no longer holds. Other keys get [`Operator::snapshot_key`]'s
    /// bytes as their head (and `gone` lists the records of a key that was split before).
    /// Returns `false`, with an empty head, when the key holds nothing (delete its head and the
    /// `gone` records). Call it for each key of [`Operator::take_dirty`]: the operator remembers
    /// what it gave, and its backing must return the head and the records as stored after the
    /// last call.
    pub fn take_key_records(&mut self, key: &Key, out: &mut KeyRecords) -> bool {
        out.clear();
        let mut stored = self.split.remove(key);
        let held = match (self.store.get(key), self.orphan_timers.get(key)) {
            (Some(state), _) => {
                // One look at the run (a fast run's is replayed): its held events decide the form.
                let (nfa, inline) = (&self.nfa, self.config.inline_events);
                let split = state.with_run(nfa, |run| {
                    let events = state.queue.events() + run.buffer.events.len();
                    let as_split = events > 0 && inline.is_some_and(|max| events > max || stored.is_some());
                    let windows = state.windows.iter().copied();
                    if as_split {
                        let mut split = stored.take().unwrap_or_default();
                        split::encode(nfa, run, &state.queue, windows, &mut split, out);
                        Some(split)
                    } else {
                        snapshot::encode(nfa, Some((run, &state.queue)), windows, &mut out.head);
                        None
                    }
                });
                if let Some(split) = split {
                    self.split.insert(key.clone(), split);
                    return true;
                }
                true
            }
            (None, Some(windows)) => {
                snapshot::encode(&self.nfa, None, windows.iter().copied(), &mut out.head);
                true
            }
            (None, None) => false,
        };
        if let Some(stored) = stored {
            out.gone = stored.sub_keys();
        }
        held
    }

    /// Replaces whatever `key` holds by the state in `bytes` (from [`Operator::snapshot_key`] of
    /// an operator of the same pattern). The bytes are checked against the pattern first: on an
    /// error nothing changes. The key is not recorded as changed. Restore every key and then
    /// [`Operator::set_watermark`] (or the other way round) before processing anything.
    pub fn restore_key(&mut self, key: Key, bytes: &[u8]) -> Result<(), SnapshotError> {
        let (state, windows) = snapshot::decode(&self.nfa, bytes)?;
        self.remove_key(&key);
        if let Some((run, queue)) = &state {
            if !(queue.is_empty() && run.is_idle()) {
                self.partials += run.partial_count();
                self.keys += 1;
            }
        }
        self.install(key, state, windows);
        Ok(())
    }

    /// Replaces whatever `key` holds by the state in its records (from
    /// [`Operator::take_key_records`] of an operator of the same pattern: the head, and the
    /// other records ascending by sub-key), as [`Operator::restore_key`] does with a whole
    /// snapshot. The records are checked against the pattern and each other first: on an error
    /// nothing changes.
    pub fn restore_key_records(
        &mut self,
        key: Key,
        head: &[u8],
        records: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), SnapshotError> {
        if head.first() != Some(&snapshot::SPLIT_VERSION) {
            if !records.is_empty() {
                return Err(SnapshotError::Invalid { offset: 0, reason: "records besides a whole snapshot" });
            }
            return self.restore_key(key, head);
        }
        let ((state, windows), stored) = split::decode(&self.nfa, head, records)?;
        self.remove_key(&key);
        if let Some((run, queue)) = &state {
            if !(queue.is_empty() && run.is_idle()) {
                self.partials += run.partial_count();
                self.keys += 1;
            }
        }
        self.split.insert(key.clone(), stored);
        self.install(key, state, windows);
        Ok(())
    }

    /// Forgets everything `key` holds in memory (state and timers) without recording a change:
    /// for keys that another instance now owns.
    pub fn remove_key(&mut self, key: &Key) {
        self.split.remove(key);
        if let Some(state) = self.store.remove(key) {
            for &t in state.queue.keys().chain(state.windows.iter()) {
                self.timers.remove(&(t, key.clone()));
            }
            self.partials = self.partials.saturating_sub(state.partial_count());
            self.keys = self.keys.saturating_sub(1);
        }
        for t in self.orphan_timers.remove(key).unwrap_or_default() {
            self.timers.remove(&(t, key.clone()));
        }
        self.dirty.remove(key);
    }

    /// Sets the watermark without firing anything: for an operator being restored, to the
    /// watermark its snapshots were taken at. (Timers at or below it, which a snapshot taken
    /// between calls never holds, would fire on the next [`Operator::advance_watermark`].)
    pub fn set_watermark(&mut self, wm: i64) {
        self.watermark = wm;
    }
}

/// The pending timers of a snapshot (its buffered timestamps and window timers, ascending), and
/// its partial matches: for indexing stored snapshots without keeping them in memory. Reads
/// the head of a split snapshot alone.
pub fn snapshot_summary(nfa: &Nfa, bytes: &[u8]) -> Result<(Vec<i64>, usize, bool), SnapshotError> {
    if bytes.first() == Some(&snapshot::SPLIT_VERSION) {
        let (timers, partials) = split::summary(nfa, bytes)?;
        return Ok((timers, partials, true));
    }
    let (state, windows) = snapshot::decode(nfa, bytes)?;
    let mut timers: Vec<i64> = windows.iter().copied().collect();
    let (mut partials, mut has_state) = (0, false);
    if let Some((run, queue)) = &state {
        timers.extend(queue.keys().copied());
        if !(queue.is_empty() && run.is_idle()) {
            partials = run.partial_count();
            has_state = true;
        }
    }
    timers.sort_unstable();
    timers.dedup();
    Ok((timers, partials, has_state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::NfaBuilder;
    use crate::expr::{BinOp, Cond, Expr};
    use crate::nfa::{Action, Mode, PatternMeta, Severity, StateId, StateKind, TypeId, VarId, VarInfo};

    /// `a followed by b within 10ms of previous`, keyed by field 0, `a: x == 1`, `b: x == 2`.
    fn nfa() -> Arc<Nfa> {
        nfa_with(None)
    }

    fn nfa_with(window: Option<i64>) -> Arc<Nfa> {
        let meta = PatternMeta {
            name: "ab".to_owned(),
            description: String::new(),
            version: 1,
            severity: Severity::Low,
            mode: Mode::Live,
            stream: "s".to_owned(),
            key: FieldId(0),
            hash: "0".to_owned(),
        };
        let mut b = NfaBuilder::new(meta);
        b.add_field("k");
        let x = b.add_field("x");
        b.add_type("T");
        let [va, vb] = ["a", "b"].map(|n| b.add_var(VarInfo { name: n.to_owned(), looping: false, negated: false }));
        let eq = |v| Expr::Binary(BinOp::Eq, Box::new(Expr::Field(x)), Box::new(Expr::Lit(Value::Int(v))));
        let (ca, cb) = (b.add_condition(eq(1)), b.add_condition(eq(2)));
        let end = b.add_state("$end", None, StateKind::Final);
        let sb = b.add_state("b", Some(vb), StateKind::Normal);
        let sa = b.add_state("a", Some(va), StateKind::Normal);
        b.add_edge(sb, Action::Take, end, Cond::Holds(cb))
            .add_edge(sb, Action::Ignore, sb, Cond::negate(Cond::Holds(cb)))
            .state_window(sb, 10)
            .add_edge(sa, Action::Take, sb, Cond::Holds(ca))
            .start(sa);
        if let Some(ms) = window {
            b.window(ms);
        }
        Arc::new(b.build().expect("a valid automaton"))
    }

    /// [`nfa`] with a whole-pattern window of 10 ms too: window timers per started run.
    fn nfa_with_window() -> Arc<Nfa> {
        nfa_with(Some(10))
    }

    fn ev(seq: u64, ts: i64, key: &str, x: i64) -> Arc<Event> {
        Arc::new(Event { seq, ts, kind: TypeId(0), fields: vec![Value::str(key), Value::Int(x)].into() })
    }

    /// The seqs of each match in `out`, by key.
    fn matched(out: &[Output]) -> Vec<(String, Vec<u64>)> {
        let mut m: Vec<(String, Vec<u64>)> = out
            .iter()
            .filter_map(|o| match o {
                Output::Match { key, events, .. } => {
                    Some((key.to_string(), events.iter().flat_map(|(_, l)| l.iter().map(|e| e.seq)).collect()))
                }
                _ => None,
            })
            .collect();
        m.sort();
        m
    }

    #[test]
    fn a_draining_operator_finishes_what_it_holds_and_starts_nothing_from_later_events() {
        let mut op = Operator::new(nfa(), Config::default());
        let k = |s: &str| Key::Str(Text::new(s));
        let mut out = Vec::new();
        // Before the switch: k1 starts at 100 (processed), k2's `a` at 103 is still buffered.
        op.process(k("k1"), ev(1, 100, "k1", 1), &mut out);
        op.process(k("k2"), ev(3, 103, "k2", 1), &mut out);
        op.advance_watermark(101, &mut out);
        assert_eq!((op.active_partial_matches(), op.buffered_events(&k("k2"))), (1, 1));
        // The switch: records from seq 10 on are read after it; the newest event time was 103.
        op.drain(Drain { after: After::Seq(10), horizon: 103 });
        assert!(!op.drained());
        // After it: an `a` of k1 starts nothing; a `b` completes k1's partial match.
        op.process(k("k1"), ev(10, 104, "k1", 1), &mut out);
        op.process(k("k1"), ev(11, 105, "k1", 2), &mut out);
        // k2's buffered `a` (read before the switch) still starts one, which a later `b` completes.
        op.process(k("k2"), ev(12, 106, "k2", 2), &mut out);
        // A key that held nothing: not taken at all.
        op.process(k("k3"), ev(13, 104, "k3", 1), &mut out);
        op.process(k("k3"), ev(14, 105, "k3", 2), &mut out);
        assert_eq!(op.buffered_events(&k("k3")), 0);
        op.advance_watermark(110, &mut out);
        assert_eq!(matched(&out), vec![("k1".to_owned(), vec![1, 11]), ("k2".to_owned(), vec![3, 12])]);
        assert!(op.drained(), "nothing is held any more: {} keys", op.active_keys());
        // Once the watermark passed the horizon, a key holding no partial match takes nothing.
        op.process(k("k1"), ev(15, 111, "k1", 1), &mut out);
        assert_eq!(op.buffered_events(&k("k1")), 0);

        // Resumed (a rollback to this version), it starts partial matches again.
        op.resume();
        out.clear();
        op.process(k("k1"), ev(16, 112, "k1", 1), &mut out);
        op.process(k("k1"), ev(17, 113, "k1", 2), &mut out);
        op.advance_watermark(120, &mut out);
        assert_eq!(matched(&out), vec![("k1".to_owned(), vec![16, 17])]);
    }

    #[test]
    fn events_read_after_a_switch_are_told_per_lane() {
        let lane = |l: u64, n: u64| (l << LANE_SHIFT) | n;
        let after = After::Lanes(Arc::new([(0u16, lane(0, 10)), (2, lane(2, 5))].into_iter().collect()));
        assert!(!after.contains(lane(0, 9)) && after.contains(lane(0, 10)));
        assert!(!after.contains(lane(2, 4)) && after.contains(lane(2, 5)));
        // Lane 1 had nothing read before the switch; lane 0's high positions are not lane 2's.
        assert!(after.contains(lane(1, 0)));
        assert!(!after.contains(lane(0, 9)));
        assert!(After::Seq(10).contains(10) && !After::Seq(10).contains(9));
        // A draining operator fed from two lanes: an `a` read before the switch in lane 2 still
        // starts a partial match, one read after it in lane 0 does not.
        let mut op = Operator::new(nfa(), Config::default());
        let k = |s: &str| Key::Str(Text::new(s));
        let mut out = Vec::new();
        op.process(k("k"), ev(lane(2, 4), 100, "k", 1), &mut out);
        op.process(k("k"), ev(lane(0, 9), 99, "k", 5), &mut out);
        op.drain(Drain { after, horizon: 100 });
        op.process(k("k"), ev(lane(0, 10), 101, "k", 1), &mut out);
        op.process(k("k"), ev(lane(2, 6), 102, "k", 2), &mut out);
        op.advance_watermark(110, &mut out);
        assert_eq!(matched(&out), vec![("k".to_owned(), vec![lane(2, 4), lane(2, 6)])]);
    }

    #[test]
    fn a_draining_key_drops_what_it_buffers_once_nothing_read_before_the_switch_is_left() {
        let mut op = Operator::new(nfa(), Config::default());
        let k1 = Key::Str(Text::new("k1"));
        let mut out = Vec::new();
        // k1 holds a partial match and an event from before the switch (an `x = 5`: no `a`).
        op.process(k1.clone(), ev(1, 100, "k1", 1), &mut out);
        op.process(k1.clone(), ev(2, 104, "k1", 5), &mut out);
        op.advance_watermark(101, &mut out);
        op.drain(Drain { after: After::Seq(10), horizon: 104 });
        // The partial match times out of its 10 ms at 111; k1 keeps receiving `a`s after it.
        for (i, ts) in (105..=130).step_by(5).enumerate() {
            op.process(k1.clone(), ev(10 + i as u64, ts, "k1", 1), &mut out);
            op.advance_watermark(ts - 1, &mut out);
        }
        assert!(matched(&out).is_empty(), "{out:?}");
        assert_eq!(op.active_partial_matches(), 0);
        assert!(op.drained(), "k1 went, although it kept receiving events: {} keys", op.active_keys());
    }

    #[test]
    fn partial_matches_and_buffered_events_are_visible_per_key() {
        let mut op = Operator::new(nfa(), Config::default());
        let (k1, k2) = (Key::Str(Text::new("k1")), Key::Str(Text::new("k2")));
        let mut out = Vec::new();
        assert!(op.partial_matches(&k1).is_empty(), "no state yet");
        assert_eq!(op.buffered_events(&k1), 0);
        op.process(k1.clone(), ev(1, 100, "k1", 1), &mut out);
        op.process(k1.clone(), ev(2, 101, "k1", 1), &mut out);
        op.process(k2.clone(), ev(3, 102, "k2", 5), &mut out);
        assert_eq!((op.buffered_events(&k1), op.buffered_events(&k2)), (2, 1), "before the watermark");
        assert!(op.partial_matches(&k1).is_empty(), "buffered events are not taken yet");
        op.advance_watermark(102, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!((op.buffered_events(&k1), op.buffered_events(&k2)), (0, 0));
        // Two partial matches of k1, each in `b` with its own `a`, by first event; k2's event started none.
        let views = op.partial_matches(&k1);
        type Seqs = Vec<(VarId, Vec<u64>)>;
        let seqs = |events: &MatchEvents| -> Seqs {
            events.iter().map(|(var, l)| (*var, l.iter().map(|e| e.seq).collect())).collect()
        };
        let summary: Vec<(StateId, i64, Seqs)> = views.iter().map(|v| (v.state, v.start_ts, seqs(&v.events))).collect();
        assert_eq!(
            summary,
            vec![(StateId(1), 100, vec![(VarId(0), vec![1])]), (StateId(1), 101, vec![(VarId(0), vec![2])])]
        );
        assert!(op.partial_matches(&k2).is_empty(), "k2 is idle: its state was dropped");
        assert_eq!(op.partial_matches(&k1).len(), op.active_partial_matches(), "the same partial matches as counted");
        // A `b` completes both; nothing is left.
        op.process(k1.clone(), ev(4, 105, "k1", 2), &mut out);
        assert_eq!(op.buffered_events(&k1), 1);
        op.advance_watermark(105, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(op.partial_matches(&k1).is_empty());
    }

    /// A backing in a map, as a store holds the snapshots of the last commit: each key's
    /// snapshot and a timer index.
    #[derive(Debug, Default)]
    struct MapBacking {
        snapshots: Arc<std::sync::Mutex<Stored>>,
    }

    /// Each key's snapshot, and the keys by their pending timers.
    #[derive(Debug, Default)]
    struct Stored(HashMap<Key, Vec<u8>>, BTreeSet<(i64, Key)>);

    impl Backing for MapBacking {
        fn load(&mut self, key: &Key, out: &mut Vec<u8>) -> bool {
            let m = self.snapshots.lock().expect("lock");
            m.0.get(key).map(|s| out.extend_from_slice(s)).is_some()
        }
        // Whole snapshots only (`snapshot_key`): no other records.
        fn records(&mut self, _: &Key, _: &mut Vec<(Vec<u8>, Vec<u8>)>) {}
        fn due(
            &mut self,
            after: i64,
            until: i64,
            limit: usize,
            in_memory: &dyn Fn(&Key) -> bool,
            out: &mut Vec<(i64, Key)>,
        ) -> Option<i64> {
            let m = self.snapshots.lock().expect("lock");
            due_in_set(&m.1, after, until, limit, in_memory, out)
        }
        fn corrupt(&mut self, key: &Key, error: SnapshotError) {
            panic!("{key}: {error}");
        }
    }

    #[test]
    fn keys_kept_in_a_backing_behave_as_keys_in_memory() {
        // Timeouts are emitted when window timers fire: those of keys out of memory too.
        let config = Config { timeouts: true, ..Config::default() };
        let mut memory = Operator::new(nfa_with_window(), config);
        memory.track_changes(false);
        let backing = MapBacking::default();
        let store = backing.snapshots.clone();
        let mut stored = Operator::new(nfa_with_window(), config);
        stored.set_backing(Box::new(backing), 0, 0);
        let (mut want, mut got) = (Vec::new(), Vec::new());
        // 40 keys, each an `a` and (for even keys) a `b` 3..12 ms later: some match, some time out.
        let mut steps: Vec<(i64, Key, i64)> = Vec::new();
        for k in 0..40i64 {
            steps.push((100 + k, Key::Int(k), 1));
            if k % 2 == 0 {
                steps.push((103 + k + k % 10, Key::Int(k), 2));
            }
        }
        steps.sort_by_key(|(ts, _, _)| *ts);
        for (i, (ts, key, x)) in steps.into_iter().enumerate() {
            let e = Arc::new(Event {
                seq: i as u64,
                ts,
                kind: TypeId(0),
                fields: vec![Value::str(&key.to_string()), Value::Int(x)].into(),
            });
            memory.process(key.clone(), e.clone(), &mut want);
            memory.advance_watermark(ts - 2, &mut want);
            stored.process(key, e, &mut got);
            stored.advance_watermark(ts - 2, &mut got);
            // A commit after every event: the changed keys' snapshots and timers into the map,
            // then all but 2 keys out of memory.
            let mut m = store.lock().expect("lock");
            for key in stored.take_dirty() {
                let mut snap = Vec::new();
                if stored.snapshot_key(&key, &mut snap) {
                    m.0.insert(key.clone(), snap);
                } else {
                    m.0.remove(&key);
                }
                for t in stored.key_timers(&key) {
                    m.1.insert((t, key.clone()));
                }
            }
            drop(m);
            stored.evict(2);
            assert!(stored.cached_keys() <= 2);
        }
        memory.advance_watermark(i64::MAX, &mut want);
        stored.advance_watermark(i64::MAX, &mut got);
        let timeouts = want.iter().filter(|o| matches!(o, Output::Timeout { .. })).count();
        assert!(timeouts >= 20 && want.len() > timeouts, "{want:?}");
        assert_eq!(got, want, "the same outputs in the same order");
        assert_eq!(stored.active_keys(), memory.active_keys());
        assert!(stored.stats().state_misses > 0);
    }

    /// `a followed by b` keyed by `k`: `a: x in list watch`, `b: x == lookup(limits, k)`, and an
    /// output `limit: lookup(limits, a.k)`.
    fn nfa_with_tables() -> Arc<Nfa> {
        use crate::nfa::TableId;
        let meta = PatternMeta {
            name: "tables".to_owned(),
            description: String::new(),
            version: 1,
            severity: Severity::Low,
            mode: Mode::Live,
            stream: "s".to_owned(),
            key: FieldId(0),
            hash: "0".to_owned(),
        };
        let mut b = NfaBuilder::new(meta);
        let k = b.add_field("k");
        let x = b.add_field("x");
        b.add_type("T");
        let (watch, limits) = (b.add_table("watch"), b.add_table("limits"));
        assert_eq!((watch, limits), (TableId(0), TableId(1)));
        let [va, vb] = ["a", "b"].map(|n| b.add_var(VarInfo { name: n.to_owned(), looping: false, negated: false }));
        let ca = b.add_condition(Expr::InTable { expr: Box::new(Expr::Field(x)), table: watch, negated: false });
        let lookup = |key: Expr| Expr::Lookup { table: limits, key: Box::new(key) };
        let cb = b.add_condition(Expr::Binary(BinOp::Eq, Box::new(Expr::Field(x)), Box::new(lookup(Expr::Field(k)))));
        let end = b.add_state("$end", None, StateKind::Final);
        let sb = b.add_state("b", Some(vb), StateKind::Normal);
        let sa = b.add_state("a", Some(va), StateKind::Normal);
        b.add_edge(sb, Action::Take, end, Cond::Holds(cb))
            .add_edge(sb, Action::Ignore, sb, Cond::negate(Cond::Holds(cb)))
            .add_edge(sa, Action::Take, sb, Cond::Holds(ca))
            .start(sa);
        b.add_output("limit", lookup(Expr::VarField(va, k)));
        Arc::new(b.build().expect("a valid automaton"))
    }

    /// `watch` holds `watched`; `limits` maps `k1` to `limit`.
    fn reference(watched: i64, limit: i64) -> RefData {
        use crate::refdata::{RefTable, TableKind};
        let mut watch = RefTable::new(TableKind::List);
        watch.insert(Value::Int(watched), Value::Bool(true)).expect("a valid key");
        let mut limits = RefTable::new(TableKind::Map);
        limits.insert(Value::str("k1"), Value::Int(limit)).expect("a valid key");
        let mut data = RefData::default();
        data.set("watch", Arc::new(watch));
        data.set("limits", Arc::new(limits));
        data
    }

    #[test]
    fn events_after_a_change_of_the_reference_tables_read_the_new_contents_on_every_tier() {
        let nfa = nfa_with_tables();
        let k1 = Key::Str(Text::new("k1"));
        let configs = [
            Config::default(),
            Config { fast_tier: FastTier::Off, ..Config::default() },
            Config { exact_steps: true, ..Config::default() },
        ];
        let mut runs = Vec::new();
        for config in configs {
            let mut op = Operator::new(nfa.clone(), config);
            let mut out = Vec::new();
            let mut snapshots = Vec::new();
            let mut step = |op: &mut Operator, out: &mut Vec<Output>, seq: u64, x: i64| {
                op.process(k1.clone(), ev(seq, seq as i64, "k1", x), out);
                op.advance_watermark(seq as i64, out);
                let mut bytes = Vec::new();
                // (Nothing, once the key is idle again.)
                op.snapshot_key(&k1, &mut bytes);
                snapshots.push(bytes);
            };
            // 1 is watched: a partial match starts. Then 2 is watched instead, and k1's limit is 7:
            // the partial match stays (no state is reset), the next 2 starts another, and a 7
            // completes both (5, the old limit, would have completed none).
            op.set_reference(&reference(1, 5));
            step(&mut op, &mut out, 1, 1);
            op.set_reference(&reference(2, 7));
            step(&mut op, &mut out, 2, 1);
            step(&mut op, &mut out, 3, 2);
            step(&mut op, &mut out, 4, 5);
            assert!(out.is_empty(), "{out:?}");
            step(&mut op, &mut out, 5, 7);
            assert_eq!(matched(&out), vec![("k1".to_owned(), vec![1, 5]), ("k1".to_owned(), vec![3, 5])]);
            // Outputs render with the installed tables.
            let Some(Output::Match { events, .. }) = out.first() else { panic!("a match") };
            let body = crate::alert::body_with(&nfa, events, op.reference());
            assert_eq!(body.fields, vec![("limit".to_owned(), Value::Int(7))]);
            assert_eq!(crate::alert::body(&nfa, events).fields, vec![("limit".to_owned(), Value::Null)]);
            if config == Config::default() {
                assert!(op.tier_counts().fast_runs > 0, "a chain runs on the fast tier");
            }
            runs.push(snapshots);
        }
        // The fast tier's snapshots replay its log with the tables each event was processed
        // against: the same bytes as the exact runtime's.
        assert_eq!(runs[0], runs[1]);
        assert_eq!(runs[1], runs[2]);

        // With no tables installed, every table is empty: nothing is watched.
        let mut op = Operator::new(nfa.clone(), Config::default());
        let mut out = Vec::new();
        op.process(k1.clone(), ev(1, 1, "k1", 1), &mut out);
        op.advance_watermark(1, &mut out);
        assert_eq!(op.active_partial_matches(), 0);
        // A pattern that reads no table binds nothing.
        let mut plain = Operator::new(nfa_with(None), Config::default());
        plain.set_reference(&reference(1, 5));
        assert!(plain.reference().same(Bound::empty()));
    }

    #[test]
    fn the_multi_pattern_operator_reads_each_patterns_tables() {
        use crate::runtime::multi::{MultiOperator, MultiOutput};
        let k1 = Key::Str(Text::new("k1"));
        for config in [Config::default(), Config { fast_tier: FastTier::Off, ..Config::default() }] {
            let mut multi = MultiOperator::new(vec![nfa(), nfa_with_tables()], config).expect("one stream, one key");
            let mut single = Operator::new(nfa_with_tables(), config);
            let (mut out, mut single_out) = (Vec::new(), Vec::new());
            for (seq, x, data) in [(1, 1, Some((1, 5))), (2, 2, Some((2, 7))), (3, 2, None), (4, 7, None)] {
                if let Some((watched, limit)) = data {
                    multi.set_reference(&reference(watched, limit));
                    single.set_reference(&reference(watched, limit));
                }
                multi.process(k1.clone(), ev(seq, seq as i64, "k1", x), &mut out);
                multi.advance_watermark(seq as i64, &mut out);
                single.process(k1.clone(), ev(seq, seq as i64, "k1", x), &mut single_out);
                single.advance_watermark(seq as i64, &mut single_out);
            }
            let tables: Vec<Output> = out
                .iter()
                .filter_map(|o| match o {
                    MultiOutput::Pattern(1, o) => Some(o.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(tables, single_out);
            // The plain pattern `a: x == 1 followed by b: x == 2` matched 1, 2 regardless.
            assert!(out.iter().any(|o| matches!(o, MultiOutput::Pattern(0, _))));
            assert_eq!(matched(&tables), [1, 2, 3].map(|s| ("k1".to_owned(), vec![s, 4])).to_vec());
            assert!(multi.reference(0).same(Bound::empty()));
            assert!(multi.reference(1).table(crate::nfa::TableId(1)).is_some());
        }
    }
}
