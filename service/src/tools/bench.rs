//! `tripline bench`: the throughput benchmark against FlinkCEP (`shared/bench/flinkcep`). Reads
//! the harness's generated input (`seq,key,ts,type,amount`), runs P1 or P2 (`testdata/bench/`)
//! through the engine on preloaded events, with the harness's watermarks (bounded
//! out-of-orderness of 1 s), and writes the matches in the harness's line format.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use dsl::{Catalog, SourceFile, StreamSchema};
use engine::runtime::{Config, Key, MatchEvents, Operator, Output};
use engine::{Event, Nfa, TypeId, Value};

use crate::error::{Error, Kind, Result, ResultExt};
use crate::obs::out;
use crate::obs::progress::Progress;

const SCHEMA: &str = include_str!("../../../testdata/bench/bench_events.avsc");
const P1: &str = include_str!("../../../testdata/bench/P1.tl");
const P2: &str = include_str!("../../../testdata/bench/P2.tl");
const OUT_OF_ORDERNESS_MS: i64 = 1000;

fn compile(pattern: &str) -> Result<(Arc<Nfa>, StreamSchema)> {
    compile_text(pattern, None)
}

/// P1 or P2 with its whole-pattern window replaced by `window` (as the language writes it).
pub(crate) fn compile_with_window(pattern: &str, window: &str) -> Result<Arc<Nfa>> {
    compile_text(pattern, Some(window)).map(|(nfa, _)| nfa)
}

fn compile_text(pattern: &str, window: Option<&str>) -> Result<(Arc<Nfa>, StreamSchema)> {
    let schema =
        StreamSchema::from_avro_json("bench", SCHEMA, Some("ts")).or_fail(Kind::Usage, "the benchmark schema")?;
    let mut catalog = Catalog::default();
    catalog.insert(schema.clone());
    let text = match pattern {
        "P1" => P1,
        "P2" => P2,
        other => return Err(Error::usage(format!("unknown pattern `{other}`: use P1 or P2"))),
    };
    let text = match window {
        Some(w) => text
            .lines()
            .map(|l| if l.trim_start().starts_with("within ") { format!("  within {w}") } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n"),
        None => text.to_owned(),
    };
    let compiled = dsl::compile_source(&SourceFile::new(format!("testdata/bench/{pattern}.tl"), text), &catalog);
    let p = compiled.patterns.into_iter().next().ok_or_else(|| {
        let why: Vec<String> = compiled.diagnostics.iter().map(|d| d.render()).collect();
        Error::usage(format!("the benchmark pattern does not compile: {}", why.join("; ")))
    })?;
    Ok((Arc::new(p.nfa), schema))
}

fn load(path: &Path, schema: &StreamSchema) -> Result<Vec<(Key, Arc<Event>)>> {
    let file = std::fs::File::open(path).or_fail_with(Kind::Usage, || format!("cannot read {}", path.display()))?;
    let mut events = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.or_fail_with(Kind::Usage, || format!("{}:{}", path.display(), i + 1))?;
        if i == 0 && line.starts_with("seq") {
            continue;
        }
        let bad = || Error::usage(format!("{}:{}: expected seq,key,ts,type,amount", path.display(), i + 1));
        let mut parts = line.split(',');
        let mut next = || parts.next().ok_or_else(bad);
        let seq: u64 = next()?.parse().map_err(|_| bad())?;
        let key: i64 = next()?.parse().map_err(|_| bad())?;
        let ts: i64 = next()?.parse().map_err(|_| bad())?;
        let kind = next()?;
        let amount: f64 = next()?.parse().map_err(|_| bad())?;
        // A short text is stored inline in its value: no allocation, nothing shared.
        let t = Value::str(kind);
        let fields = vec![Value::Int(seq as i64), Value::Int(key), Value::Int(ts), t, Value::Float(amount)];
        debug_assert_eq!(schema.fields.len(), fields.len());
        events.push((Key::Int(key), Arc::new(Event { seq, ts, kind: TypeId(0), fields: fields.into() })));
    }
    Ok(events)
}

/// A memory figure of this process from /proc/self/status (`VmHWM`, `VmRSS`), in kB.
fn status_kb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn peak_rss_mb() -> f64 {
    status_kb("VmHWM:") / 1024.0
}

fn line(pattern: &str, nfa: &Nfa, key: &Key, events: &MatchEvents) -> String {
    let seqs = |name: &str| -> Vec<String> {
        events
            .iter()
            .find(|(v, _)| nfa.var_name(*v) == name)
            .map(|(_, l)| l.iter().map(|e| e.seq.to_string()).collect())
            .unwrap_or_default()
    };
    match pattern {
        "P1" => format!("P1,{key},{},{}", seqs("a").join(";"), seqs("b").join(";")),
        _ => format!("P2,{key},{},{},{}", seqs("first").join(";"), seqs("burst").join(";"), seqs("last").join(";")),
    }
}

/// Runs the benchmark; prints one line of figures.
pub fn run(input: &Path, pattern: &str, matches_out: Option<&Path>, config: Config) -> Result<()> {
    let (nfa, schema) = compile(pattern)?;
    let t0 = Instant::now();
    let rss_before = status_kb("VmRSS:");
    let events = load(input, &schema)?;
    let parse_secs = t0.elapsed().as_secs_f64();
    // What a preloaded event costs in memory: the events, their field values, keys and the
    // vector holding them (the process's resident growth while loading).
    let event_bytes = (status_kb("VmRSS:") - rss_before).max(0.0) * 1024.0 / events.len().max(1) as f64;

    let mut op = Operator::new(nfa.clone(), config);
    let mut outputs: Vec<Output> = Vec::new();
    let mut max_ts = i64::MIN;
    let mut progress = Progress::new("bench", "events", Some(events.len() as u64));
    let start = Instant::now();
    for (key, event) in &events {
        progress.inc(1);
        max_ts = max_ts.max(event.ts);
        op.process(key.clone(), event.clone(), &mut outputs);
        op.advance_watermark(max_ts - OUT_OF_ORDERNESS_MS - 1, &mut outputs);
    }
    op.advance_watermark(i64::MAX, &mut outputs);
    let secs = start.elapsed().as_secs_f64();
    progress.finish();

    let mut lines: Vec<String> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Match { key, events, .. } => Some(line(pattern, &nfa, key, events)),
            _ => None,
        })
        .collect();
    lines.sort();
    if let Some(path) = matches_out {
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
            for l in &lines {
                writeln!(f, "{l}")?;
            }
            f.flush()
        };
        write().or_fail_with(Kind::Usage, || format!("cannot write {}", path.display()))?;
    }
    let (stats, tiers) = (op.stats(), op.tier_counts());
    out(&format!(
        "tripline {pattern} events={} matches={} secs={secs:.3} eps={:.0} rss_mb={:.0} parse_secs={parse_secs:.3} late={} timeouts={} event_bytes={event_bytes:.0} fast_runs={} exact_runs={} fallbacks={}\n",
        events.len(),
        lines.len(),
        events.len() as f64 / secs.max(1e-9),
        peak_rss_mb(),
        stats.late,
        stats.timeouts,
        tiers.fast_runs,
        tiers.exact_runs,
        tiers.fallbacks,
    ));
    Ok(())
}
