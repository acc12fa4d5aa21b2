//! `tripline bench scale`: the engine's per-event cost as the window and the number of keys grow,
//! at a fixed event rate. Events are generated as the FlinkCEP harness generates its input (the
//! same type mix and amounts, about one event per millisecond of event time with ±50 ms of
//! jitter, keys uniform over `keys`), and run through P1 (`testdata/bench/P1.tl`) with its
//! window set to each of `windows`, with the harness's watermarks (1 s of out-of-orderness). One
//! line per (window, keys): events/s, nanoseconds per event, matches, and the state left at the
//! end (keys and partial matches held, the operator's memory estimate).

use std::sync::Arc;
use std::time::Instant;

use engine::runtime::{Config, Key, Operator, Output};
use engine::{Event, TypeId, Value};

use crate::core::config::parse_duration;
use crate::error::{Error, Result};
use crate::obs::out;

const OUT_OF_ORDERNESS_MS: i64 = 1000;
const TYPES: [&str; 5] = ["login", "auth", "deposit", "withdraw", "trade"];

/// What to run.
#[derive(Clone, Debug)]
pub struct Scale {
    pub events: usize,
    /// Windows, as the language writes them (`1m`, `24h`).
    pub windows: Vec<String>,
    pub keys: Vec<u64>,
    pub seed: u64,
}

/// The harness's random numbers (SplitMix64), for the same mix of events.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        (self.unit() * n as f64) as u64
    }
}

/// `n` events over `keys` keys, as the harness generates its base input (without hot keys).
pub(crate) fn generate(n: usize, keys: u64, seed: u64) -> Vec<(Key, Arc<Event>)> {
    let mut rng = SplitMix64(seed);
    let types = TYPES.map(Value::str);
    let mut base: i64 = 1_700_000_000_000;
    let mut events = Vec::with_capacity(n);
    for seq in 0..n as u64 {
        base += rng.below(3) as i64;
        let ts = base + rng.below(101) as i64 - 50;
        let key = rng.below(keys) as i64;
        let r = rng.unit();
        let ty = if r < 0.25 {
            0
        } else if r < 0.50 {
            1
        } else if r < 0.65 {
            2
        } else if r < 0.85 {
            3
        } else {
            4
        };
        let amount = match ty {
            3 if rng.unit() < 0.1 => 1000.0 + rng.unit() * 4000.0,
            3 => 10.0 + rng.unit() * 990.0,
            2 => 10.0 + rng.unit() * 1990.0,
            4 => 100.0,
            _ => 0.0,
        };
        let fields =
            vec![Value::Int(seq as i64), Value::Int(key), Value::Int(ts), types[ty].clone(), Value::Float(amount)];
        events.push((Key::Int(key), Arc::new(Event { seq, ts, kind: TypeId(0), fields: fields.into() })));
    }
    events
}

/// Runs every (window, keys) pair and prints a line for each.
pub fn run(scale: &Scale) -> Result<()> {
    if scale.events == 0 || scale.keys.is_empty() || scale.keys.contains(&0) || scale.windows.is_empty() {
        return Err(Error::usage("bench scale needs --events, --keys and --windows above 0"));
    }
    for w in &scale.windows {
        parse_duration(w)?;
    }
    out(&format!(
        "pattern P1 (testdata/bench/P1.tl) with each window; {} events per run, about 1 per ms of event time\n",
        scale.events
    ));
    for &keys in &scale.keys {
        let events = generate(scale.events, keys, scale.seed);
        let span_s = events.last().map_or(0, |(_, e)| e.ts - events[0].1.ts) / 1000;
        for window in &scale.windows {
            let nfa = super::bench::compile_with_window("P1", window)?;
            let mut op = Operator::new(nfa, Config::default());
            op.track_changes(false);
            let mut outputs: Vec<Output> = Vec::new();
            let mut matches = 0usize;
            let mut max_ts = i64::MIN;
            let start = Instant::now();
            for (key, event) in &events {
                max_ts = max_ts.max(event.ts);
                op.process(key.clone(), event.clone(), &mut outputs);
                op.advance_watermark(max_ts - OUT_OF_ORDERNESS_MS - 1, &mut outputs);
                matches += outputs.iter().filter(|o| matches!(o, Output::Match { .. })).count();
                outputs.clear();
            }
            let secs = start.elapsed().as_secs_f64();
            out(&format!(
                "window={window} keys={keys} span_s={span_s} events={} eps={:.0} ns_per_event={:.0} matches={matches} \
                 keys_held={} partial_matches={} state_mb={:.1}\n",
                events.len(),
                events.len() as f64 / secs.max(1e-9),
                secs * 1e9 / events.len() as f64,
                op.active_keys(),
                op.active_partial_matches(),
                op.memory_estimate() as f64 / 1e6,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_events_follow_the_harness_mix_and_rate() {
        let events = generate(20_000, 100, 42);
        assert_eq!(events.len(), 20_000);
        let span = events.last().map(|(_, e)| e.ts).unwrap_or(0) - events[0].1.ts;
        assert!((15_000..25_000).contains(&span), "about one event per ms: {span} ms");
        let auth = events.iter().filter(|(_, e)| e.fields[3] == Value::str("auth")).count();
        assert!((4_500..5_500).contains(&auth), "a quarter are auth: {auth}");
        assert!(events.iter().all(|(k, _)| matches!(k, Key::Int(0..=99))));
        assert_eq!(generate(100, 100, 42)[99].1, events[99].1, "deterministic");
    }
}
