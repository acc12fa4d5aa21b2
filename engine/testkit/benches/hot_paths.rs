//! Micro-benchmarks of the hot paths: compiling a pattern, evaluating a condition, and the
//! runtime (one key's run on the exact runtime and on the fast tier, and the keyed event-time
//! operator with and without the fast tier) on the FlinkCEP benchmark's P1/P2.
//!
//!     cargo bench -p tripline-testkit --bench hot_paths

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dsl::{Catalog, SourceFile, StreamSchema};
use engine::expr::ConditionCache;
use engine::runtime::fast::{Chain, FastRun};
use engine::runtime::{Config, FastTier, Key, Operator, RunState};
use engine::{Event, Nfa, TypeId, Value};

const SCHEMA: &str = include_str!("../../../testdata/bench/bench_events.avsc");

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    c.insert(StreamSchema::from_avro_json("bench", SCHEMA, Some("ts")).expect("schema"));
    c
}

fn compile(file: &str) -> Arc<Nfa> {
    let text = std::fs::read_to_string(testkit::root().join("testdata/bench").join(file)).expect("pattern");
    let compiled = dsl::compile_source(&SourceFile::new(file, text), &catalog());
    Arc::new(compiled.patterns.into_iter().next().expect("compiles").nfa)
}

/// A deterministic stream like the harness's: `keys` keys, a type mix, a random-walk price.
fn events(n: usize, keys: i64) -> Vec<(Key, Arc<Event>)> {
    let mut x: u64 = 42;
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let types: Vec<Value> = ["login", "auth", "deposit", "withdraw", "trade"].iter().map(|t| Value::str(t)).collect();
    let mut price = 100.0f64;
    (0..n)
        .map(|i| {
            let r = next();
            let key = (r % keys as u64) as i64;
            let t = types[((r >> 20) % 5) as usize].clone();
            price *= 1.0 + (((r >> 40) % 401) as f64 - 200.0) / 10_000.0;
            let amount = if matches!(&t, Value::Str(s) if s == "trade") { price } else { ((r >> 8) % 3000) as f64 };
            let ts = i as i64;
            let fields = vec![Value::Int(i as i64), Value::Int(key), Value::Int(ts), t, Value::Float(amount)];
            (Key::Int(key), Arc::new(Event { seq: i as u64, ts, kind: TypeId(0), fields: fields.into() }))
        })
        .collect()
}

fn front_end(c: &mut Criterion) {
    let text = std::fs::read_to_string(testkit::root().join("testdata/bench/P2.tl")).expect("pattern");
    let catalog = catalog();
    c.bench_function("compile P2 (parse, check, compile)", |b| {
        b.iter(|| dsl::compile_source(&SourceFile::new("P2.tl", black_box(text.clone())), &catalog))
    });
}

fn conditions(c: &mut Criterion) {
    let nfa = compile("P1.tl");
    let evs = events(1024, 16);
    let cond = &nfa.conditions[1]; // type == "withdraw" and amount > 1000
    let mut g = c.benchmark_group("condition");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("P1 b: type == \"withdraw\" and amount > 1000", |b| {
        b.iter(|| evs.iter().filter(|(_, e)| cond.eval(Some(e), &engine::expr::EmptyMatch).is_true()).count())
    });
    g.finish();
}

fn runtime(c: &mut Criterion) {
    let mut g = c.benchmark_group("runtime");
    for (file, keys) in [("P1.tl", 1), ("P2.tl", 1)] {
        let nfa = compile(file);
        let evs = events(20_000, keys);
        g.throughput(Throughput::Elements(evs.len() as u64));
        g.bench_function(format!("RunState::process {file}, one key"), |b| {
            b.iter(|| {
                let mut st = RunState::new(&nfa);
                let mut n = 0;
                for (_, e) in &evs {
                    n += st.advance_time(&nfa, e.ts, false).0.len();
                    n += st.process(&nfa, e.clone(), e.ts).len();
                }
                n
            })
        });
    }
    // The fast tier's run of the same chain (P1), one key.
    let nfa = compile("P1.tl");
    let chain = Chain::of(&nfa, usize::MAX).expect("P1 is a chain");
    let evs = events(20_000, 1);
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("FastRun::step P1.tl, one key", |b| {
        let mut cache = ConditionCache::new(&nfa.conditions);
        b.iter(|| {
            let mut st = FastRun::new(&chain);
            let mut n = 0;
            for (_, e) in &evs {
                n += st.advance_time(&chain, e.ts, false).0.len();
                n += st.step(&chain, &nfa, e.clone(), e.ts, &mut [], &mut cache).len();
            }
            n
        })
    });
    let tiers =
        [("", Config::default()), (" (fast tier off)", Config { fast_tier: FastTier::Off, ..Config::default() })];
    for (file, keys, (tier, config)) in [("P1.tl", 100, tiers[0]), ("P1.tl", 100, tiers[1]), ("P2.tl", 100, tiers[0])] {
        let nfa = compile(file);
        let evs = events(50_000, keys);
        g.throughput(Throughput::Elements(evs.len() as u64));
        g.bench_function(format!("Operator {file}, {keys} keys, watermark per event{tier}"), |b| {
            b.iter(|| {
                let mut op = Operator::new(nfa.clone(), config);
                let mut out = Vec::new();
                for (k, e) in &evs {
                    op.process(k.clone(), e.clone(), &mut out);
                    op.advance_watermark(e.ts - 1001, &mut out);
                }
                op.advance_watermark(i64::MAX, &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, front_end, conditions, runtime);
criterion_main!(benches);
