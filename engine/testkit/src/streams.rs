//! Input streams for the operator's differential tests: the library's patterns with their
//! examples and random streams made from them, and random streams of `cep_events` (FlinkCEP's
//! test event) for test patterns with windows, loops, negations and every skip strategy.

use std::collections::BTreeMap;
use std::sync::Arc;

use dsl::{SourceFile, StreamSchema};
use engine::runtime::{Config, Key, Operator, Output};
use engine::{Event, FieldId, Nfa, TypeId, Value};
use serde_json::Value as Json;

use crate::{catalog_from, files, root, source, test_catalog};

/// One call on the operator.
#[derive(Clone, Debug)]
pub enum Step {
    Event(Key, Arc<Event>),
    Watermark(i64),
}

/// A small deterministic generator (splitmix64).
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A library pattern with its schema, example events and the stream's out-of-orderness.
#[derive(Debug)]
pub struct Library {
    pub nfa: Arc<Nfa>,
    pub schema: Arc<StreamSchema>,
    pub examples: Vec<Arc<Event>>,
    pub out_of_orderness: i64,
}

pub fn duration_ms(s: &str) -> i64 {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().expect("duration");
    n * match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => panic!("unit {unit}"),
    }
}

pub fn library() -> &'static [Library] {
    static LIB: std::sync::OnceLock<Vec<Library>> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let config_path = root().join("tripline.toml");
        let catalog = catalog_from(&config_path);
        let config: toml::Table = std::fs::read_to_string(&config_path).expect("config").parse().expect("TOML");
        let mut out = Vec::new();
        for path in files(&root().join("patterns"), "tl") {
            let compiled = dsl::compile_source(&source(&path), &catalog);
            assert!(compiled.is_ok(), "{}: {:?}", path.display(), compiled.diagnostics);
            for p in compiled.patterns {
                let nfa = Arc::new(p.nfa);
                let schema = catalog.streams[&nfa.meta.stream].clone();
                let file = root().join(format!("patterns/examples/{}.events.jsonl", nfa.meta.name));
                let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                // Decoded as `tripline replay` decodes them (the examples are valid: `examples.rs`).
                let examples = text
                    .lines()
                    .enumerate()
                    .map(|(i, l)| {
                        let line: Json = serde_json::from_str(l).expect("JSON");
                        let event = dsl::json_event(&schema, line["type"].as_str(), &line["value"], i as u64 + 1);
                        Arc::new(event.unwrap_or_else(|e| panic!("{}:{}: {e}", file.display(), i + 1)))
                    })
                    .collect();
                let out_of_orderness = config["streams"][&nfa.meta.stream]
                    .get("max_out_of_orderness")
                    .and_then(|v| v.as_str())
                    .map_or(0, duration_ms);
                out.push(Library { nfa, schema, examples, out_of_orderness });
            }
        }
        assert!(out.len() >= 14, "only {} library patterns", out.len());
        out
    })
}

/// The steps `tripline replay` takes over the examples: each event, then the stream's
/// watermark; the end of the input is the end of time.
pub fn replay_steps(lib: &Library) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut max_ts = i64::MIN;
    for e in &lib.examples {
        steps.push(Step::Event(Key::of(e.field(lib.nfa.meta.key)), e.clone()));
        max_ts = max_ts.max(e.ts);
        steps.push(Step::Watermark(max_ts.saturating_sub(lib.out_of_orderness).saturating_sub(1)));
    }
    steps.push(Step::Watermark(i64::MAX));
    steps
}

/// A random stream for a library pattern: example events with some fields replaced by values
/// other examples have there, a few keys, event times from milliseconds to months apart (some
/// out of order), watermarks at random lags.
pub fn library_steps(lib: &Library, seed: u64, len: usize) -> Vec<Step> {
    let mut rng = Rng(seed);
    let nf = lib.schema.fields.len();
    // Per record type and field, the values the examples have.
    let mut pools: BTreeMap<(u16, usize), Vec<Value>> = BTreeMap::new();
    for e in &lib.examples {
        for (i, v) in e.fields.iter().enumerate() {
            pools.entry((e.kind.0, i)).or_default().push(v.clone());
        }
    }
    let key_field = lib.nfa.meta.key;
    let mut keys: Vec<Value> = Vec::new();
    for e in &lib.examples {
        let k = e.field(key_field);
        if !k.is_null() && !keys.contains(k) && keys.len() < 3 {
            keys.push(k.clone());
        }
    }
    let ts_field = lib.schema.timestamp_field.expect("event time");
    let gaps = [0, 0, 1, 200, 1_000, 30_000, 600_000, 3_600_000, 86_400_000, 200 * 86_400_000];
    let lags = [0, 1, 1_000, 5_000, 60_000, 3_600_000];
    let mut now = lib.examples.first().map_or(1_700_000_000_000, |e| e.ts);
    let mut max_ts = now;
    let mut steps = Vec::new();
    for seq in 0..len as u64 {
        let template = rng.pick(&lib.examples);
        let mut fields: Vec<Value> = template.fields.to_vec();
        for (i, f) in fields.iter_mut().enumerate().take(nf) {
            if rng.below(3) == 0 {
                if let Some(pool) = pools.get(&(template.kind.0, i)) {
                    *f = rng.pick(pool).clone();
                }
            }
        }
        let gap = *rng.pick(&gaps);
        now += rng.below(gap + 1) as i64;
        let ts = if rng.below(8) == 0 { now - rng.below(10_000) as i64 } else { now };
        max_ts = max_ts.max(ts);
        fields[ts_field.index()] = Value::Int(ts);
        let key = rng.pick(&keys).clone();
        fields[key_field.index()] = key.clone();
        let e = Event { seq: seq + 1, ts, kind: template.kind, fields: fields.into() };
        steps.push(Step::Event(Key::of(&key), Arc::new(e)));
        if rng.below(2) == 0 {
            steps.push(Step::Watermark(max_ts - rng.pick(&lags)));
        }
    }
    steps.push(Step::Watermark(i64::MAX));
    steps
}

/// The test patterns over `cep_events` (FlinkCEP's test event): the compiler's golden patterns
/// keyed by `id` instead of `name` (so that their elements meet), and patterns with windows of
/// both kinds, every skip strategy, negations and loops.
pub const CEP_PATTERNS: &str = r#"
pattern w_loop from cep_events key id
  match a followed by b+ followed by c
  where a: name == "a"  b: name == "b"  c: name == "c"
  within 5s
  skip to next

pattern w_previous from cep_events key id
  match a{2,} consecutive followed by b within 2s of previous
  where a: name == "a" and price < 20.0  b: name == "b" and price > first(a.price)
  within 8s
  skip to last a

pattern w_combinations from cep_events key id
  match a followed by any b{1,} allow combinations followed by c
  where a: name == "a"  b: name == "b"  c: name == "c" and price >= avg(b.price)
  within 6s
  skip to first b

pattern w_pending from cep_events key id
  match a followed by b not followed by c
  where a: name == "a"  b: name == "b"  c: name == "c"
  within 3s
  skip past last event

pattern w_not_next from cep_events key id
  match a not next b followed by c? followed by d
  where a: name == "a"  b: name == "b"  c: name == "c"  d: name == "d" and price > a.price
  within 4s

pattern w_greedy from cep_events key id
  match a followed by b* greedy followed by c: SubEvent
  where a: name == "a"  b: name == "b" until price > 10.0  c: volume > 100.0
  within 10s
  skip to next
"#;

pub fn cep_patterns() -> &'static [Arc<Nfa>] {
    static PATS: std::sync::OnceLock<Vec<Arc<Nfa>>> = std::sync::OnceLock::new();
    PATS.get_or_init(|| {
        let catalog = test_catalog();
        let mut sources = vec![CEP_PATTERNS.to_owned()];
        for path in files(&root().join("testdata/dsl/nfa"), "tl") {
            let text = std::fs::read_to_string(&path).expect("readable");
            // The key field alone in `message` and `emit` follows the key.
            sources.push(text.replace("key name", "key id").replace("{name}", "{id}").replace("{ name,", "{ id,"));
        }
        let mut out = Vec::new();
        for text in sources {
            let compiled = dsl::compile_source(&SourceFile::new("t.tl", text.clone()), &catalog);
            assert!(compiled.is_ok(), "{text}\n{:?}", compiled.diagnostics);
            out.extend(compiled.patterns.into_iter().map(|p| Arc::new(p.nfa)));
        }
        assert!(out.len() >= 19, "only {} cep patterns", out.len());
        out
    })
}

/// One random `cep_events` event: (key, name, gap, price, SubEvent, out of order, watermark lag).
pub type CepEvent = (u8, u8, u8, u8, bool, u8, u8);

pub fn cep_steps(events: &[CepEvent]) -> Vec<Step> {
    let names = ["a", "b", "c", "d"];
    let gaps = [0, 0, 1, 10, 300, 900, 1_500, 2_500, 4_000];
    let prices = [1.0, 5.0, 9.0, 12.0, 50.0];
    let lags = [0, 1, 500, 1_500, 3_000, 6_000];
    let (mut now, mut max_ts) = (1_000i64, 1_000i64);
    let mut steps = Vec::new();
    for (seq, &(key, name, gap, price, sub, back, lag)) in events.iter().enumerate() {
        now += gaps[gap as usize % gaps.len()];
        let ts = if back % 6 == 0 { now - i64::from(back) * 100 } else { now };
        max_ts = max_ts.max(ts);
        let id = i64::from(key % 3);
        let price = prices[price as usize % prices.len()];
        let mut fields =
            vec![Value::Int(id), Value::str(names[name as usize % 4]), Value::Float(price), Value::Int(ts)];
        let kind = if sub {
            fields.push(Value::Float(price * 20.0));
            TypeId(1)
        } else {
            fields.push(Value::Null);
            TypeId(0)
        };
        let e = Event { seq: seq as u64 + 1, ts, kind, fields: fields.into() };
        steps.push(Step::Event(Key::Int(id), Arc::new(e)));
        if lag % 2 == 0 {
            steps.push(Step::Watermark(max_ts - lags[lag as usize / 2 % lags.len()]));
        }
    }
    steps.push(Step::Watermark(i64::MAX));
    steps
}

pub fn configs() -> [Config; 4] {
    [
        Config::default(),
        Config { timeouts: true, ..Config::default() },
        Config { timeouts: true, max_partial_matches_per_key: Some(2), ..Config::default() },
        // For cep_events, field 2 is the price; library streams get some field of theirs.
        Config {
            timeouts: true,
            tie_break: Some(FieldId(2)),
            max_partial_matches_per_key: Some(50),
            ..Config::default()
        },
    ]
}

/// Makes one call on the operator.
pub fn apply(op: &mut Operator, step: &Step, out: &mut Vec<Output>) {
    match step {
        Step::Event(k, e) => op.process(k.clone(), e.clone(), out),
        Step::Watermark(wm) => op.advance_watermark(*wm, out),
    }
}
