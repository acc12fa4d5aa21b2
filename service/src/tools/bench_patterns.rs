//! `tripline bench patterns`: many patterns on one stream. A fleet of generated rules (a few
//! shapes: an authorisation then a large withdrawal, a large deposit then a large withdrawal, a
//! withdrawal not followed by an authorisation, a trade, trades and then a withdrawal; with
//! thresholds and windows drawn per rule) runs over the same generated events (the FlinkCEP
//! harness's mix, see [`super::bench_scale`], with a merchant per event), for each number of
//! rules: through the engine's multi-pattern operator, and, up to `--separate-max` rules, through
//! one operator per rule as the service runs them today (the matches must be the same).
//!
//! Two fleets: `merchant`, where each rule starts at one merchant (as rule fleets are often
//! written: per merchant, branch or product; Esper's classic benchmark does the same per
//! symbol) and goes on with the account's events anywhere, and `shared`, where every rule starts
//! anywhere, so that each event starts or moves partial matches in a share of all the rules.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use dsl::{Catalog, SourceFile, StreamSchema};
use engine::runtime::{Config, Key, MultiOperator, MultiOutput, Operator, Output};
use engine::{Event, Nfa, Value};

use crate::error::{Error, Kind, Result, ResultExt};
use crate::obs::out;
use crate::tools::bench_scale::SplitMix64;

const SCHEMA: &str = include_str!("../../../testdata/bench/fleet_events.avsc");
const OUT_OF_ORDERNESS_MS: i64 = 1000;
const MERCHANTS: u64 = 1000;

/// Which rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fleet {
    /// Each rule watches one merchant.
    Merchant,
    /// Every rule watches every merchant.
    Shared,
}

impl Fleet {
    fn name(self) -> &'static str {
        match self {
            Fleet::Merchant => "merchant",
            Fleet::Shared => "shared",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Patterns {
    pub events: usize,
    pub keys: u64,
    pub counts: Vec<usize>,
    pub fleets: Vec<Fleet>,
    /// Also run one operator per rule for counts up to this.
    pub separate_max: usize,
    pub seed: u64,
}

/// One of `items`, at random.
fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[(rng.next() % items.len() as u64) as usize]
}

/// The text of rule `i` of a fleet (the language's syntax).
pub(crate) fn rule(fleet: Fleet, i: usize, seed: u64) -> String {
    let mut rng = SplitMix64(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let at = match fleet {
        Fleet::Merchant => format!(" and merchant == \"m{:04}\"", i as u64 % MERCHANTS),
        Fleet::Shared => String::new(),
    };
    let window = pick(&mut rng, &["1m", "5m", "10m"]);
    let x = pick(&mut rng, &[500, 1000, 1500, 2000, 3000]);
    let y = pick(&mut rng, &[500, 1000, 1500, 2000, 3000]);
    let (shape, skip) = match rng.next() % 4 {
        0 => (
            format!("match a followed by b\n  where\n    a: type == \"auth\"{at}\n    b: type == \"withdraw\" and amount > {x}"),
            "skip past last event",
        ),
        1 => (
            format!(
                "match a followed by b\n  where\n    a: type == \"deposit\" and amount > {}{at}\n    \
                 b: type == \"withdraw\" and amount > {y}",
                x.min(1900)
            ),
            "skip past last event",
        ),
        2 => (
            format!(
                "match a followed by b not followed by c\n  where\n    a: type == \"login\"{at}\n    \
                 b: type == \"withdraw\" and amount > {x}\n    c: type == \"auth\""
            ),
            "skip past last event",
        ),
        _ => (
            format!(
                "match first followed by burst{{3,}} followed by last\n  where\n    first: type == \"trade\"{at}\n    \
                 burst: type == \"trade\"\n    last: type == \"withdraw\" and amount > first.amount * {}",
                x / 100
            ),
            "skip past last event",
        ),
    };
    format!("pattern fleet_{i:04}\n  from fleet\n  key `key`\n  {shape}\n  within {window}\n  {skip}\n")
}

/// The first `n` rules of a fleet, compiled.
fn compile(fleet: Fleet, n: usize, seed: u64, schema: &StreamSchema) -> Result<Vec<Arc<Nfa>>> {
    let mut catalog = Catalog::default();
    catalog.insert(schema.clone());
    let mut text = String::new();
    for i in 0..n {
        let _ = writeln!(text, "{}", rule(fleet, i, seed));
    }
    let compiled = dsl::compile_source(&SourceFile::new("fleet.tl", text), &catalog);
    if !compiled.is_ok() {
        let why: Vec<String> = compiled.diagnostics.iter().map(|d| d.render()).collect();
        return Err(Error::failed(format!("the generated rules do not compile: {}", why.join("; "))));
    }
    Ok(compiled.patterns.into_iter().map(|p| Arc::new(p.nfa)).collect())
}

/// The harness's events with a merchant each.
fn events(p: &Patterns) -> Vec<(Key, Arc<Event>)> {
    let mut rng = SplitMix64(p.seed.wrapping_add(7));
    super::bench_scale::generate(p.events, p.keys, p.seed)
        .into_iter()
        .map(|(k, e)| {
            let mut fields = e.fields.to_vec();
            fields.push(Value::str(&format!("m{:04}", rng.next() % MERCHANTS)));
            (k, Arc::new(Event { seq: e.seq, ts: e.ts, kind: e.kind, fields: fields.into() }))
        })
        .collect()
}

/// One run's figures.
struct Figures {
    secs: f64,
    matches: u64,
}

fn run_multi(patterns: &[Arc<Nfa>], events: &[(Key, Arc<Event>)]) -> Result<(Figures, MultiOperator)> {
    let mut op = MultiOperator::new(patterns.to_vec(), Config::default()).or_fail(Kind::Failed, "the fleet")?;
    let mut outputs = Vec::new();
    let (mut matches, mut max_ts) = (0u64, i64::MIN);
    let start = Instant::now();
    for (key, event) in events {
        max_ts = max_ts.max(event.ts);
        op.process(key.clone(), event.clone(), &mut outputs);
        op.advance_watermark(max_ts - OUT_OF_ORDERNESS_MS - 1, &mut outputs);
        matches += outputs.iter().filter(|o| matches!(o, MultiOutput::Pattern(_, Output::Match { .. }))).count() as u64;
        outputs.clear();
    }
    op.advance_watermark(i64::MAX, &mut outputs);
    matches += outputs.iter().filter(|o| matches!(o, MultiOutput::Pattern(_, Output::Match { .. }))).count() as u64;
    Ok((Figures { secs: start.elapsed().as_secs_f64(), matches }, op))
}

fn run_separate(patterns: &[Arc<Nfa>], events: &[(Key, Arc<Event>)]) -> Figures {
    let mut ops: Vec<Operator> = patterns
        .iter()
        .map(|n| {
            let mut op = Operator::new(n.clone(), Config::default());
            op.track_changes(false);
            op
        })
        .collect();
    let mut outputs = Vec::new();
    let (mut matches, mut max_ts) = (0u64, i64::MIN);
    let count = |outputs: &[Output]| outputs.iter().filter(|o| matches!(o, Output::Match { .. })).count() as u64;
    let start = Instant::now();
    for (key, event) in events {
        max_ts = max_ts.max(event.ts);
        for op in &mut ops {
            op.process(key.clone(), event.clone(), &mut outputs);
            op.advance_watermark(max_ts - OUT_OF_ORDERNESS_MS - 1, &mut outputs);
        }
        matches += count(&outputs);
        outputs.clear();
    }
    for op in &mut ops {
        op.advance_watermark(i64::MAX, &mut outputs);
    }
    matches += count(&outputs);
    Figures { secs: start.elapsed().as_secs_f64(), matches }
}

/// Runs every (fleet, count) and prints a line for each, the multi-pattern operator's rate
/// relative to its rate with one rule, and with separate operators their rate.
pub fn run(p: &Patterns) -> Result<()> {
    if p.events == 0 || p.keys == 0 || p.counts.is_empty() || p.counts.contains(&0) || p.fleets.is_empty() {
        return Err(Error::usage("bench patterns needs --events, --keys and --counts above 0"));
    }
    let schema = StreamSchema::from_avro_json("fleet", SCHEMA, Some("ts")).or_fail(Kind::Usage, "the fleet schema")?;
    let events = events(p);
    out(&format!(
        "{} events over {} keys and {MERCHANTS} merchants (testdata/bench/fleet_events.avsc); rules: `tripline bench \
         patterns --print-rules N`\n",
        events.len(),
        p.keys
    ));
    let n = events.len() as f64;
    for &fleet in &p.fleets {
        let mut single_eps = None;
        for &count in &p.counts {
            let patterns = compile(fleet, count, p.seed, &schema)?;
            let (multi, op) = run_multi(&patterns, &events)?;
            let eps = n / multi.secs.max(1e-9);
            let single = *single_eps.get_or_insert(eps);
            let (steps, checks) = op.work();
            let mut line = format!(
                "fleet={} patterns={count} multi_eps={eps:.0} ns_per_event={:.0} of_one_pattern={:.3} matches={} \
                 steps_per_event={:.2} start_checks_per_event={:.2} unindexed={} partial_matches_left={}",
                fleet.name(),
                multi.secs * 1e9 / n,
                eps / single,
                multi.matches,
                steps as f64 / n,
                checks as f64 / n,
                op.index().unindexed(),
                op.active_partial_matches(),
            );
            if count <= p.separate_max {
                let separate = run_separate(&patterns, &events);
                if separate.matches != multi.matches {
                    return Err(Error::failed(format!(
                        "{} rules of fleet {}: {} matches with one operator per rule, {} with the multi-pattern \
                             operator",
                        count,
                        fleet.name(),
                        separate.matches,
                        multi.matches
                    )));
                }
                let sep_eps = n / separate.secs.max(1e-9);
                let _ = write!(line, " separate_eps={sep_eps:.0} speedup={:.2}", eps / sep_eps);
            }
            out(&format!("{line}\n"));
        }
    }
    Ok(())
}

/// The rules of a fleet as text (`--print-rules`).
pub fn print_rules(fleet: Fleet, n: usize, seed: u64) {
    for i in 0..n {
        out(&format!("{}\n", rule(fleet, i, seed)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_of_both_fleets_compiles_and_merchant_rules_are_indexed() {
        let schema = StreamSchema::from_avro_json("fleet", SCHEMA, Some("ts")).expect("schema");
        for fleet in [Fleet::Merchant, Fleet::Shared] {
            let patterns = compile(fleet, 200, 42, &schema).expect("compiles");
            assert_eq!(patterns.len(), 200);
            let op = MultiOperator::new(patterns, Config::default()).expect("one key");
            assert_eq!(op.index().unindexed(), 0, "every rule starts with an equality");
            // An authorisation at merchant m0002: rules that start with one, there or anywhere.
            let fields = vec![Value::Int(1), Value::Int(1), Value::Int(1), Value::str("auth"), Value::Float(0.0)];
            let mut fields = fields;
            fields.push(Value::str("m0002"));
            let event = Event { seq: 1, ts: 1, kind: engine::TypeId(0), fields: fields.into() };
            let mut found = Vec::new();
            op.index().candidates(&event, &mut found);
            let auth_rules = (0..200).filter(|&i| rule(fleet, i, 42).contains("a: type == \"auth\"")).count();
            match fleet {
                // Indexed by merchant, the more selective equality: rule 2 (and 202, ... beyond 200).
                Fleet::Merchant => assert_eq!(found, vec![2]),
                Fleet::Shared => assert_eq!(found.len(), auth_rules),
            }
        }
        assert_ne!(rule(Fleet::Merchant, 1, 42), rule(Fleet::Merchant, 2, 42));
        assert_eq!(rule(Fleet::Shared, 3, 42), rule(Fleet::Shared, 3, 42), "deterministic");
    }

    #[test]
    fn the_multi_pattern_operator_finds_the_matches_of_one_operator_per_rule() {
        let p = Patterns { events: 20_000, keys: 50, counts: vec![], fleets: vec![], separate_max: 0, seed: 42 };
        let schema = StreamSchema::from_avro_json("fleet", SCHEMA, Some("ts")).expect("schema");
        let events = events(&p);
        for fleet in [Fleet::Merchant, Fleet::Shared] {
            let patterns = compile(fleet, 40, 42, &schema).expect("compiles");
            let (multi, _) = run_multi(&patterns, &events).expect("one key");
            let separate = run_separate(&patterns, &events);
            assert_eq!(multi.matches, separate.matches, "{}", fleet.name());
            assert!(multi.matches > 0, "{}: the rules match", fleet.name());
        }
    }
}
