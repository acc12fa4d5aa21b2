//! The differential checks between the engine's tiers, shared by the tests (`tests/`), the
//! generated-pattern harness ([`crate::gen`]) and the fuzz target (`engine/fuzz`):
//!
//! - [`skip_is_exact`]: an operator that skips the steps that change nothing (the default) vs
//!   one that takes FlinkCEP's full step for every event (`Config::exact_steps`): the same
//!   outputs in the same order, the same stats, and after every call the same changed keys with
//!   the same snapshot bytes;
//! - [`multi_is_exact`]: the multi-pattern operator vs one `Operator` per pattern: per pattern
//!   and key the same outputs in order, the same late events, stats, funnel and held partial
//!   matches;
//! - [`differential`]: an operator checkpointed (its changed keys snapshotted into a store) and
//!   replaced at random points by a fresh one restored from the store vs one that ran straight
//!   through: the same outputs in the same order, the same stats.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use engine::runtime::{
    Config, FastTier, Key, MatchEvents, MultiOperator, MultiOutput, Operator, Output, Stats, TierCounts,
};
use engine::Nfa;

use crate::streams::{apply, configs, Rng, Step};

/// What differs between two tiers' runs, for a failure message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Differs(pub String);

/// Every configuration the checks run with: [`configs`] and FlinkCEP's full steps.
pub fn all_configs() -> Vec<Config> {
    let mut v = configs().to_vec();
    v.push(Config { exact_steps: true, timeouts: true, ..Config::default() });
    // The skip tier alone, and the fast tier falling back to the exact runtime early.
    v.push(Config { fast_tier: FastTier::Off, timeouts: true, ..Config::default() });
    v.push(Config {
        fast_tier: FastTier::FallBackAfter(3),
        timeouts: true,
        max_partial_matches_per_key: Some(3),
        ..Config::default()
    });
    v
}

/// One output, for a failure message.
pub fn describe(o: Option<&Output>) -> String {
    match o {
        None => "nothing".into(),
        Some(Output::Match { key, ts, events }) => format!("match {key}@{ts} {:?}", seqs(events)),
        Some(Output::Timeout { key, ts, events }) => format!("timeout {key}@{ts} {:?}", seqs(events)),
        Some(Output::Late { key, event, watermark }) => format!("late {key} seq {} wm {watermark}", event.seq),
    }
}

pub fn seqs(events: &MatchEvents) -> Vec<(u16, Vec<u64>)> {
    events.iter().map(|(v, l)| (v.0, l.iter().map(|e| e.seq).collect())).collect()
}

/// The run again with every event through FlinkCEP's full step (`Config::exact_steps`): the same
/// outputs in the same order, the same stats, and after every step the same changed keys with
/// the same snapshot bytes. Checks the engine's skip of steps that change nothing and its fast
/// tier (as `config` sets it). Returns the outputs, and how the keys ran on the tiers.
pub fn skip_is_exact(nfa: &Arc<Nfa>, config: Config, steps: &[Step]) -> Result<(Vec<Output>, TierCounts), Differs> {
    let run = |exact_steps: bool| {
        let mut op = Operator::new(nfa.clone(), Config { exact_steps, ..config });
        let mut out = Vec::new();
        let mut snapshots = Vec::new();
        for s in steps {
            apply(&mut op, s, &mut out);
            for k in op.take_dirty() {
                let mut bytes = Vec::new();
                op.snapshot_key(&k, &mut bytes);
                snapshots.push((k, bytes));
            }
        }
        (out, op.stats(), snapshots, op.tier_counts())
    };
    let (skipping, exact) = (run(false), run(true));
    let name = &nfa.meta.name;
    if skipping.0 != exact.0 {
        let at =
            skipping.0.iter().zip(&exact.0).position(|(a, b)| a != b).unwrap_or(skipping.0.len().min(exact.0.len()));
        return Err(Differs(format!(
            "{name}: output {at} differs: {} vs {}",
            describe(skipping.0.get(at)),
            describe(exact.0.get(at))
        )));
    }
    if skipping.1 != exact.1 {
        return Err(Differs(format!("{name}: stats differ: {:?} vs {:?}", skipping.1, exact.1)));
    }
    if skipping.2 != exact.2 {
        return Err(Differs(format!("{name}: the snapshots of the changed keys differ")));
    }
    Ok((skipping.0, skipping.3))
}

/// Per (pattern, key): its outputs in order.
type PerKey = BTreeMap<(usize, String), Vec<Output>>;

fn key_of(o: &Output) -> String {
    match o {
        Output::Match { key, .. } | Output::Timeout { key, .. } | Output::Late { key, .. } => key.to_string(),
    }
}

/// Runs `patterns` both ways over `steps`; `Err` says what differs.
pub fn multi_is_exact(patterns: &[Arc<Nfa>], config: Config, steps: &[Step]) -> Result<(u64, u64), Differs> {
    let mut singles: Vec<Operator> = patterns.iter().map(|n| Operator::new(n.clone(), config)).collect();
    let mut outs: Vec<Vec<Output>> = vec![Vec::new(); patterns.len()];
    let mut multi = MultiOperator::new(patterns.to_vec(), config).map_err(|e| Differs(e.to_string()))?;
    let mut multi_out = Vec::new();
    for s in steps {
        for (op, out) in singles.iter_mut().zip(&mut outs) {
            apply(op, s, out);
        }
        match s {
            Step::Event(k, e) => multi.process(k.clone(), e.clone(), &mut multi_out),
            Step::Watermark(wm) => multi.advance_watermark(*wm, &mut multi_out),
        }
    }
    let mut want = PerKey::new();
    let mut want_late: Vec<Vec<u64>> = vec![Vec::new(); patterns.len()];
    for (p, out) in outs.iter().enumerate() {
        for o in out {
            match o {
                Output::Late { event, .. } => want_late[p].push(event.seq),
                o => want.entry((p, key_of(o))).or_default().push(o.clone()),
            }
        }
    }
    let mut got = PerKey::new();
    let mut got_late = Vec::new();
    for o in multi_out {
        match o {
            MultiOutput::Pattern(_, Output::Late { .. }) => {
                return Err(Differs("a pattern output a late event".into()))
            }
            MultiOutput::Pattern(p, o) => got.entry((p, key_of(&o))).or_default().push(o),
            MultiOutput::Late { event, .. } => got_late.push(event.seq),
        }
    }
    for (p, nfa) in patterns.iter().enumerate() {
        let name = &nfa.meta.name;
        if want_late[p] != got_late {
            return Err(Differs(format!("{name}: late events {:?} vs {got_late:?}", want_late[p])));
        }
        let mut ks: Vec<&String> = want.keys().chain(got.keys()).filter(|(q, _)| *q == p).map(|(_, k)| k).collect();
        ks.sort();
        ks.dedup();
        for k in ks {
            let (w, g) = (want.get(&(p, k.clone())), got.get(&(p, k.clone())));
            if w != g {
                return Err(Differs(format!("{name}, key {k}: outputs\n{w:?}\nvs multi\n{g:?}")));
            }
        }
        if singles[p].stats() != multi.pattern_stats(p) {
            return Err(Differs(format!(
                "{name}: stats {:?} vs multi {:?}",
                singles[p].stats(),
                multi.pattern_stats(p)
            )));
        }
        if singles[p].funnel() != multi.funnel(p) {
            return Err(Differs(format!("{name}: funnel {:?} vs multi {:?}", singles[p].funnel(), multi.funnel(p))));
        }
    }
    let held: usize = singles.iter().map(Operator::active_partial_matches).sum();
    if multi.active_partial_matches() != held {
        return Err(Differs(format!("{} partial matches held vs multi {}", held, multi.active_partial_matches())));
    }
    Ok(multi.work())
}

pub fn add(a: Stats, b: Stats) -> Stats {
    Stats {
        events: a.events + b.events,
        late: a.late + b.late,
        matches: a.matches + b.matches,
        timeouts: a.timeouts + b.timeouts,
        dropped_partial_matches: a.dropped_partial_matches + b.dropped_partial_matches,
        state_hits: a.state_hits + b.state_hits,
        state_misses: a.state_misses + b.state_misses,
    }
}

pub fn straight(nfa: &Arc<Nfa>, config: Config, steps: &[Step]) -> (Vec<Output>, Stats) {
    let mut op = Operator::new(nfa.clone(), config);
    let mut out = Vec::new();
    for s in steps {
        apply(&mut op, s, &mut out);
    }
    (out, op.stats())
}

/// The durable copy: encoded key to snapshot.
pub type Store = BTreeMap<Vec<u8>, Vec<u8>>;

pub fn key_bytes(k: &Key) -> Vec<u8> {
    let mut b = Vec::new();
    k.encode(&mut b);
    b
}

/// Writes the changed keys to the store; checks that then the store holds exactly what a full
/// snapshot of every key would (no change went unrecorded). Returns the sizes written.
pub fn checkpoint(op: &mut Operator, store: &mut Store, all_keys: &BTreeSet<Key>) -> Result<Vec<usize>, Differs> {
    let dirty = op.take_dirty();
    if !dirty.windows(2).all(|w| w[0] < w[1]) {
        return Err(Differs(format!("take_dirty is not sorted: {dirty:?}")));
    }
    let mut sizes = Vec::new();
    for key in dirty {
        let mut snap = Vec::new();
        if op.snapshot_key(&key, &mut snap) {
            sizes.push(snap.len());
            store.insert(key_bytes(&key), snap);
        } else if !snap.is_empty() {
            return Err(Differs("snapshot_key returned false but wrote bytes".into()));
        } else {
            store.remove(&key_bytes(&key));
        }
    }
    if !op.take_dirty().is_empty() {
        return Err(Differs("take_dirty twice in a row".into()));
    }
    for key in all_keys {
        let mut snap = Vec::new();
        let held = op.snapshot_key(key, &mut snap).then_some(snap);
        if held.as_ref() != store.get(&key_bytes(key)) {
            return Err(Differs(format!("key {key}: the store is stale (a change was not recorded)")));
        }
    }
    Ok(sizes)
}

/// A fresh operator restored from the store; every key's snapshot re-encodes to the same bytes.
pub fn restore(nfa: &Arc<Nfa>, config: Config, store: &Store, wm: i64) -> Result<Operator, Differs> {
    let mut op = Operator::new(nfa.clone(), config);
    for (kb, snap) in store {
        let key = Key::decode(kb).map_err(|e| Differs(format!("key: {e}")))?;
        op.restore_key(key.clone(), snap).map_err(|e| Differs(format!("key {key}: {e}")))?;
        let mut again = Vec::new();
        if !op.snapshot_key(&key, &mut again) || &again != snap {
            return Err(Differs(format!("key {key}: the restored state snapshots differently")));
        }
    }
    op.set_watermark(wm);
    if !op.take_dirty().is_empty() {
        return Err(Differs("restoring recorded changes".into()));
    }
    Ok(op)
}

/// How often (in percent per step) the operator is checkpointed and replaced.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub checkpoint: u64,
    pub crash: u64,
    pub seed: u64,
}

/// Runs `steps` with checkpoints and crashes: a crash loses everything since the last
/// checkpoint (outputs included) and the steps from there are replayed into an operator restored
/// from the store. Returns the outputs, the stats and the snapshot sizes written.
pub fn with_restarts(
    nfa: &Arc<Nfa>,
    config: Config,
    steps: &[Step],
    plan: Plan,
) -> Result<(Vec<Output>, Stats, Vec<usize>, Store), Differs> {
    let all_keys: BTreeSet<Key> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Event(k, _) => Some(k.clone()),
            Step::Watermark(_) => None,
        })
        .collect();
    let mut rng = Rng(plan.seed);
    let mut op = Operator::new(nfa.clone(), config);
    let mut store = Store::new();
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    // (step, outputs, stats, watermark) at the last checkpoint.
    let mut saved = (0usize, 0usize, Stats::default(), i64::MIN);
    let mut base = Stats::default();
    let (mut i, mut furthest_crash) = (0, 0);
    while i < steps.len() {
        apply(&mut op, &steps[i], &mut out);
        i += 1;
        if rng.below(100) < plan.checkpoint {
            sizes.extend(checkpoint(&mut op, &mut store, &all_keys)?);
            saved = (i, out.len(), add(base, op.stats()), op.watermark());
        }
        if i > furthest_crash && rng.below(100) < plan.crash {
            furthest_crash = i;
            i = saved.0;
            out.truncate(saved.1);
            base = saved.2;
            op = restore(nfa, config, &store, saved.3)?;
        }
    }
    sizes.extend(checkpoint(&mut op, &mut store, &all_keys)?);
    Ok((out, add(base, op.stats()), sizes, store))
}

/// The first difference between two runs' outputs (in order) and stats; `what` names the runs.
pub fn same_run(what: &str, want: (&[Output], &Stats), got: (&[Output], &Stats)) -> Result<(), Differs> {
    let ((want, want_stats), (got, got_stats)) = (want, got);
    if let Some(i) = (0..want.len().max(got.len())).find(|&i| want.get(i) != got.get(i)) {
        return Err(Differs(format!(
            "{what}: output {i} of {}: expected {}, got {}",
            want.len(),
            describe(want.get(i)),
            describe(got.get(i))
        )));
    }
    if want_stats != got_stats {
        return Err(Differs(format!("{what}: stats {got_stats:?}, expected {want_stats:?}")));
    }
    Ok(())
}

/// Straight through vs with restarts (the snapshot tier): the same outputs in the same order,
/// the same stats.
pub fn differential(nfa: &Arc<Nfa>, config: Config, steps: &[Step], plan: Plan) -> Result<Vec<usize>, Differs> {
    let (want, want_stats) = straight(nfa, config, steps);
    let (got, got_stats, sizes, _) = with_restarts(nfa, config, steps, plan)?;
    let what = format!("{} ({config:?}, {plan:?})", nfa.meta.name);
    same_run(&what, (&want, &want_stats), (&got, &got_stats))?;
    Ok(sizes)
}
