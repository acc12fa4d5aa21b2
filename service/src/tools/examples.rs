//! `tripline test`: each pattern file run over its examples, as ksql-test-runner does for ksqlDB.
//!
//! A pattern file `DIR/NAME.tl` has its examples in `DIR/examples/NAME.events.jsonl` (the events,
//! JSON lines `{"stream","type","value"}` as `tripline produce` takes them) and
//! `DIR/examples/NAME.alerts.jsonl` (the alerts they must raise, one JSON line each: `pattern`,
//! `key`, `match`, `fields`, `message`), or in `DIR/NAME.events.jsonl` and `DIR/NAME.alerts.jsonl`
//! next to it. The events run through every pattern of the file as the service runs them (the
//! same admission checks and watermark rule, one partition per input partition, every window
//! closed at the end of the file); an event's coordinate is its line number, so `match` lists
//! line numbers. The raised alerts are compared with the expected ones: an alert is identified
//! by its pattern, key and matched lines; a missing one, an unexpected one and one whose other
//! keys differ (field by field) each fail the example.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::runtime::Config as OpConfig;
use engine::RefData;
use serde_json::{Map, Value};

use crate::core::config::Config;
use crate::core::partition::{Emit, Partition};
use crate::core::pattern_sets::{compile_files, PatternSet};
use crate::core::plan::{admit, StreamPlan};
use crate::core::{source, tables};
use crate::error::{Error, Result};
use crate::io::files::{read_records, Problem};

/// The keys of an alert that an example pins down (and `--update` writes).
pub const KEYS: [&str; 5] = ["pattern", "key", "match", "fields", "message"];

/// One pattern file's examples and how they went.
#[derive(Debug)]
pub struct Outcome {
    /// The file's name without `.tl`.
    pub name: String,
    pub file: PathBuf,
    /// The events file, if there is one.
    pub events: Option<PathBuf>,
    /// Where the expected alerts are (or go, with `--update`).
    pub expected: Option<PathBuf>,
    pub result: Ran,
}

/// What running one file's examples gave.
#[derive(Debug)]
pub enum Ran {
    /// The file has no events file: nothing to run.
    NoExamples,
    /// It could not run (the file does not compile, an event is rejected, a file is
    /// unreadable): why.
    Error(String),
    Checked(Checked),
}

/// Where an alert differs: the path of the key (`fields.volume`), the expected value and the
/// raised one.
pub type Difference = (String, Value, Value);

/// The comparison of the raised alerts with the expected ones.
#[derive(Debug, Default)]
pub struct Checked {
    pub events: usize,
    pub expected: usize,
    pub raised: usize,
    /// Events refused as late: line, event time, watermark.
    pub late: Vec<(u64, i64, i64)>,
    pub missing: Vec<Value>,
    pub unexpected: Vec<Value>,
    /// Alerts raised with the expected identity whose other keys differ: the expected alert and
    /// each difference (path, expected, raised).
    pub different: Vec<(Value, Vec<Difference>)>,
    /// The raised alerts, projected on [`KEYS`] (what `--update` writes).
    pub raised_lines: Vec<String>,
    /// Per line number of the events file, the line (for the report).
    pub lines: BTreeMap<u64, String>,
}

impl Checked {
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.different.is_empty()
    }
}

impl Outcome {
    pub fn passed(&self) -> bool {
        match &self.result {
            Ran::NoExamples => true,
            Ran::Error(_) => false,
            Ran::Checked(c) => c.passed(),
        }
    }
}

/// Runs the examples of every pattern file under `paths` (files, or directories of `*.tl`
/// files), in file-name order.
pub fn run(cfg: &Config, config_path: &Path, paths: &[PathBuf]) -> Result<Vec<Outcome>> {
    let catalog = cfg.catalog(config_path)?;
    let files = source::expand(paths)?;
    if files.is_empty() {
        return Err(Error::usage("no pattern files (*.tl) in the paths given"));
    }
    Ok(files.iter().map(|f| run_file(cfg, config_path, &catalog, f)).collect())
}

/// The examples of pattern file `file`: `(events, expected alerts)`, where they are or, for the
/// expected alerts, would be written.
pub fn example_files(file: &Path) -> (Option<PathBuf>, PathBuf) {
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    for base in [dir.join("examples"), dir.to_owned()] {
        let events = base.join(format!("{name}.events.jsonl"));
        if events.is_file() {
            return (Some(events), base.join(format!("{name}.alerts.jsonl")));
        }
    }
    (None, dir.join("examples").join(format!("{name}.alerts.jsonl")))
}

fn run_file(cfg: &Config, config_path: &Path, catalog: &dsl::Catalog, file: &Path) -> Outcome {
    let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let (events, expected) = example_files(file);
    let result = match (&events, compile(catalog, file)) {
        (_, Err(why)) => Ran::Error(why),
        (None, Ok(_)) => Ran::NoExamples,
        (Some(ev), Ok(set)) => match check(cfg, config_path, catalog, &set, ev, &expected) {
            Ok(c) => Ran::Checked(c),
            Err(why) => Ran::Error(why),
        },
    };
    Outcome { name, file: file.to_owned(), events, expected: Some(expected), result }
}

/// The patterns of `file`, or its diagnostics.
fn compile(catalog: &dsl::Catalog, file: &Path) -> std::result::Result<PatternSet, String> {
    let mut diagnostics = Vec::new();
    compile_files(&[file.to_owned()], catalog, &mut |d| diagnostics.push(d))
        .map_err(|e| format!("{e}:\n{}", diagnostics.join("\n")))
}

/// Runs `events` through the patterns of `set` and compares with `expected` (a missing file
/// expects no alert). `Err`: why it cannot run.
fn check(
    cfg: &Config,
    config_path: &Path,
    catalog: &dsl::Catalog,
    set: &PatternSet,
    events: &Path,
    expected: &Path,
) -> std::result::Result<Checked, String> {
    let mut plans: BTreeMap<String, Arc<StreamPlan>> = BTreeMap::new();
    for n in &set.nfas {
        let stream = &n.meta.stream;
        if !plans.contains_key(stream) {
            let (Some(s), Some(schema)) = (cfg.streams.get(stream), catalog.streams.get(stream)) else {
                return Err(format!(
                    "pattern `{}` reads stream `{stream}`, which the config does not have",
                    n.meta.name
                ));
            };
            plans.insert(stream.clone(), StreamPlan::new(stream, s, schema.clone(), &set.nfas));
        }
    }
    let op_config =
        OpConfig { max_partial_matches_per_key: cfg.engine.max_partial_matches_per_key, ..OpConfig::default() };
    let reference = example_tables(cfg, config_path, events)?;
    let mut parts: BTreeMap<(String, i32), Partition> = BTreeMap::new();
    let mut c = Checked::default();
    let mut emit = Vec::new();
    let records = read_records(events, catalog, None).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(events).map_err(|e| format!("cannot read {}: {e}", events.display()))?;
    c.lines = text.lines().enumerate().map(|(i, l)| (i as u64 + 1, l.to_owned())).collect();
    let at = |n: u64| format!("{}:{n}", events.display());
    for (n, record) in records {
        let (stream, partition, event) = match record {
            Ok(r) => r,
            Err(Problem::Fatal(why) | Problem::Rejected(why)) => return Err(format!("{}: {why}", at(n))),
        };
        let Some(plan) = plans.get(&stream) else { continue };
        c.events += 1;
        admit(plan, &event, cfg.service.min_event_time, cfg.service.max_event_time)
            .map_err(|r| format!("{}: the service would dead-letter it ({}): {}", at(n), r.code, r.message))?;
        let part = parts.entry((stream.clone(), partition)).or_insert_with(|| {
            let mut part = Partition::new(plan.clone(), partition, op_config).without_change_tracking();
            part.set_reference(&reference);
            part
        });
        let ts = event.ts;
        if !part.process(event, &mut emit) {
            c.late.push((n, ts, part.watermark()));
        }
    }
    for part in parts.values_mut() {
        part.finish(&mut emit);
    }
    let raised: Vec<Value> = emit
        .iter()
        .filter_map(|e| match e {
            Emit::Alert { json, .. } => serde_json::from_str(json).ok(),
            Emit::Timeout { .. } => None,
        })
        .collect();
    c.raised = raised.len();
    c.raised_lines = raised.iter().map(|a| project(a, &KEYS).to_string()).collect();
    let want: Vec<Value> = match std::fs::read_to_string(expected) {
        Ok(t) => t
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| format!("{}:{}: not a JSON alert: {e}", expected.display(), i + 1))
            })
            .collect::<std::result::Result<_, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", expected.display())),
    };
    c.expected = want.len();
    let mut left: Vec<Option<Value>> = raised.into_iter().map(Some).collect();
    for w in want {
        let found = left.iter_mut().find(|a| a.as_ref().is_some_and(|a| identity(a) == identity(&w)));
        match found.and_then(Option::take) {
            None => c.missing.push(w),
            Some(a) => {
                let keys: Vec<&str> = w.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
                let mut diffs = Vec::new();
                differences("", &w, &project(&a, &keys), &mut diffs);
                if !diffs.is_empty() {
                    c.different.push((w, diffs));
                }
            }
        }
    }
    c.unexpected = left.into_iter().flatten().map(|a| project(&a, &KEYS)).collect();
    Ok(c)
}

/// The reference tables the examples `events` run with: the config's (from their files; a
/// table read from a topic is empty here), each replaced by its contents in
/// `NAME.tables.json` beside the events when that file names it (an object of table name to
/// contents, as in a table's file).
fn example_tables(cfg: &Config, config_path: &Path, events: &Path) -> std::result::Result<RefData, String> {
    let mut data = tables::load(cfg, config_path).map_err(|e| e.to_string())?;
    let name = events.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".events.jsonl"));
    let Some(path) = name.map(|n| events.with_file_name(format!("{n}.tables.json"))).filter(|p| p.is_file()) else {
        return Ok(data);
    };
    let at = |what: String| format!("{}: {what}", path.display());
    let text = std::fs::read_to_string(&path).map_err(|e| at(format!("cannot read it: {e}")))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| at(format!("not JSON: {e}")))?;
    let Value::Object(tables) = json else { return Err(at("an object of table name to contents".into())) };
    for (table, contents) in &tables {
        let t = cfg.tables.get(table).ok_or_else(|| at(format!("no table `{table}` in the config")))?;
        let contents = tables::from_json(t, contents).map_err(|e| at(format!("table `{table}`: {e}")))?;
        data.set(table.clone(), Arc::new(contents));
    }
    Ok(data)
}

/// An alert's keys `keys` (the others dropped).
fn project(alert: &Value, keys: &[&str]) -> Value {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = alert.get(*k) {
            m.insert((*k).to_owned(), v.clone());
        }
    }
    Value::Object(m)
}

/// What identifies an alert: its pattern, key and matched events.
fn identity(a: &Value) -> (Value, Value, Value) {
    (a["pattern"].clone(), a["key"].clone(), a["match"].clone())
}

/// The paths at which `want` and `got` differ (objects compared key by key; a number equal as
/// a number is equal: `2500` and `2500.0`).
fn differences(path: &str, want: &Value, got: &Value, out: &mut Vec<Difference>) {
    let sub = |k: &str| if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") };
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                differences(&sub(k), wv, g.get(k).unwrap_or(&Value::Null), out);
            }
            for (k, gv) in g.iter().filter(|(k, _)| !w.contains_key(*k)) {
                out.push((sub(k), Value::Null, gv.clone()));
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push((path.to_owned(), a.clone(), b.clone())),
    }
}

/// An alert in one line: pattern, key and matched lines per step.
pub fn describe(alert: &Value) -> String {
    let steps: Vec<String> = alert["match"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(var, lines)| {
                    let list: Vec<String> = lines.as_array().into_iter().flatten().map(|l| l.to_string()).collect();
                    format!("{var} {}", list.join(","))
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} key={} (lines: {})",
        alert["pattern"].as_str().unwrap_or("?"),
        alert["key"].as_str().map_or_else(|| alert["key"].to_string(), str::to_owned),
        steps.join("; ")
    )
}

/// The event lines an alert's `match` names, in line order.
pub fn matched_lines(alert: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = alert["match"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|l| l.as_array().cloned().unwrap_or_default())
        .filter_map(|l| l.as_u64())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Writes the raised alerts of every checked outcome as its expected alerts (`--update`); the
/// files written.
pub fn update(outcomes: &[Outcome]) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for o in outcomes {
        let (Ran::Checked(c), Some(path)) = (&o.result, &o.expected) else { continue };
        if c.passed() && path.is_file() {
            continue;
        }
        let mut text = c.raised_lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::usage(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(path, text).map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))?;
        written.push(path.clone());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_reported_by_path_and_numbers_compare_as_numbers() {
        let want: Value = serde_json::json!({"fields": {"a": 1, "b": "x", "c": 2500}, "message": "m"});
        let got: Value = serde_json::json!({"fields": {"a": 2, "b": "x", "c": 2500.0, "d": true}, "message": "m"});
        let mut d = Vec::new();
        differences("", &want, &got, &mut d);
        assert_eq!(
            d,
            vec![
                ("fields.a".to_owned(), Value::from(1), Value::from(2)),
                ("fields.d".to_owned(), Value::Null, Value::Bool(true)),
            ]
        );
    }

    #[test]
    fn an_alert_is_described_by_its_pattern_key_and_lines() {
        let a = serde_json::json!({"pattern": "p", "key": "K", "match": {"open": [1], "burst": [3, 4]}});
        assert_eq!(describe(&a), "p key=K (lines: burst 3,4; open 1)");
        assert_eq!(matched_lines(&a), vec![1, 3, 4]);
    }
}
