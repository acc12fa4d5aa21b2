//! `tripline replay`: runs a pattern set over an exported file of events, with the same
//! watermark rules as the service, and writes the alerts as JSON lines. Same input and patterns,
//! same bytes out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::runtime::{Config as OpConfig, Key};
use engine::{Nfa, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::config::{self, Config};
use crate::pipeline::{admit, coords, seq_of, Emit, Partition, StreamPlan};
use crate::{decode, err, out, source, EXIT_INVALID, EXIT_OK, EXIT_USAGE};

/// Options of a replay.
pub struct Replay<'a> {
    pub patterns: &'a [PathBuf],
    pub input: &'a Path,
    pub output: &'a Path,
    pub config: Option<&'a Path>,
    /// For Avro input whose record types fit several streams.
    pub stream: Option<&'a str>,
    /// The input goes on after its end (a range of a live topic): windows are not closed at the
    /// end, so the alerts are those the running service had emitted after these records.
    pub open_end: bool,
}

/// Counts for the summary.
#[derive(Default)]
struct Counts {
    dropped: u64,
    events: u64,
    rejected: u64,
    late: u64,
    alerts: BTreeMap<String, u64>,
}

pub fn run(opts: &Replay<'_>) -> u8 {
    match replay(opts) {
        Ok((counts, rejected_lines)) => {
            let mut summary = format!(
                "replayed {} events: {} alert(s), {} late, {} rejected, {} partial match(es) dropped by the budget\n",
                counts.events,
                counts.alerts.values().sum::<u64>(),
                counts.late,
                counts.rejected,
                counts.dropped
            );
            for (p, n) in &counts.alerts {
                let _ = writeln!(summary, "  {p}: {n}");
            }
            err(&summary);
            if rejected_lines {
                EXIT_INVALID
            } else {
                EXIT_OK
            }
        }
        Err((code, msg)) => {
            err(&format!("{msg}\n"));
            code
        }
    }
}

/// Compiles the pattern files; diagnostics go to stdout.
pub fn compile_patterns(paths: &[PathBuf], catalog: &dsl::Catalog) -> Result<Vec<Arc<Nfa>>, (u8, String)> {
    compile_reporting(paths, catalog, &mut |d| out(&format!("{d}\n")))
}

/// Compiles pattern files (and directories of them) against `catalog`, sorted by name; each
/// diagnostic goes to `report`. The error: an exit status and a one-line message.
pub fn compile_reporting(
    paths: &[PathBuf],
    catalog: &dsl::Catalog,
    report: &mut dyn FnMut(String),
) -> Result<Vec<Arc<Nfa>>, (u8, String)> {
    let files = source::expand(paths).map_err(|e| (EXIT_USAGE, format!("error: {e}")))?;
    let mut nfas = Vec::new();
    let mut bad = 0;
    for f in &files {
        let src = match source::read(f) {
            Ok(s) => s,
            Err(d) => {
                report(d.render().trim_end().to_owned());
                bad += 1;
                continue;
            }
        };
        let compiled = dsl::compile_source(&src, catalog);
        for d in &compiled.diagnostics {
            report(d.render());
        }
        bad += compiled.diagnostics.len();
        nfas.extend(compiled.patterns.into_iter().map(|p| Arc::new(p.nfa)));
    }
    if bad > 0 {
        return Err((EXIT_INVALID, format!("error: the patterns have {bad} error(s); nothing was replayed")));
    }
    if nfas.is_empty() {
        return Err((EXIT_USAGE, "error: no patterns found".to_owned()));
    }
    nfas.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    Ok(nfas)
}

fn replay(opts: &Replay<'_>) -> Result<(Counts, bool), (u8, String)> {
    let cfg_path = config::locate(opts.config).map_err(|e| (EXIT_USAGE, format!("error: {e:#}")))?;
    let cfg = Config::load(&cfg_path).map_err(|e| (EXIT_USAGE, format!("error: {e:#}")))?;
    let catalog = cfg.catalog(&cfg_path).map_err(|e| (EXIT_USAGE, format!("error: {e:#}")))?;
    let nfas = compile_patterns(opts.patterns, &catalog)?;
    for n in &nfas {
        if catalog.streams.get(&n.meta.stream).is_some_and(|s| s.timestamp_field.is_none()) {
            return Err((
                EXIT_USAGE,
                format!(
                    "error: {}: stream `{}` (read by pattern `{}`) has no timestamp_field: replay needs each event's event time",
                    cfg_path.display(),
                    n.meta.stream,
                    n.meta.name
                ),
            ));
        }
    }

    let op_config =
        OpConfig { max_partial_matches_per_key: cfg.engine.max_partial_matches_per_key, ..OpConfig::default() };
    let mut plans: BTreeMap<String, Arc<StreamPlan>> = BTreeMap::new();
    for (name, s) in &cfg.streams {
        let Some(schema) = catalog.streams.get(name).cloned() else { continue };
        plans.insert(name.clone(), StreamPlan::new(name, s, schema, &nfas));
    }
    // One engine state per (stream, partition), as the service keeps it.
    let mut parts: BTreeMap<(String, i32), Partition> = BTreeMap::new();

    let records = read_records(opts.input, &catalog, opts.stream)?;
    let output = std::fs::File::create(opts.output)
        .map_err(|e| (EXIT_USAGE, format!("error: cannot write {}: {e}", opts.output.display())))?;
    let mut writer = BufWriter::new(output);
    let mut counts = Counts::default();
    let mut emit = Vec::new();
    let write_err = |e: std::io::Error| (EXIT_USAGE, format!("error: writing {}: {e}", opts.output.display()));
    let mut progress = crate::progress::Progress::new("replay", "events", None);
    for (n, record) in records {
        counts.events += 1;
        progress.inc(1);
        let (stream, partition, event) = match record {
            Ok(x) => x,
            Err(Fatal(reason)) => return Err((EXIT_USAGE, format!("error: {}: {reason}", opts.input.display()))),
            Err(Rejected(reason)) => {
                counts.rejected += 1;
                err(&format!("{}:{n}: rejected: {reason}\n", opts.input.display()));
                continue;
            }
        };
        let plan = plans.get(&stream).expect("every catalog stream has a plan");
        if let Err(r) = admit(plan, &event, cfg.service.min_event_time, cfg.service.max_event_time) {
            counts.rejected += 1;
            err(&format!("{}:{n}: rejected ({}): {}\n", opts.input.display(), r.code, r.message));
            continue;
        }
        let part = parts
            .entry((stream, partition))
            .or_insert_with(|| Partition::new(plan.clone(), partition, op_config).without_change_tracking());
        if !part.process(event, &mut emit) {
            counts.late += 1;
        }
        write_emits(&mut emit, &mut writer, &mut counts).map_err(write_err)?;
    }
    for part in parts.values_mut() {
        // End of input is the end of time (unless the input goes on, as the service's does).
        if !opts.open_end {
            part.finish(&mut emit);
            write_emits(&mut emit, &mut writer, &mut counts).map_err(write_err)?;
        }
        counts.dropped += part.dropped_partial_matches();
    }
    progress.finish();
    writer.flush().map_err(write_err)?;
    let rejected = counts.rejected > 0;
    Ok((counts, rejected))
}

fn write_emits(emit: &mut Vec<Emit>, w: &mut impl Write, counts: &mut Counts) -> std::io::Result<()> {
    for e in emit.drain(..) {
        if let Emit::Alert { json, .. } = e {
            let pattern = json_pattern(&json);
            *counts.alerts.entry(pattern).or_default() += 1;
            w.write_all(json.as_bytes())?;
            w.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// The pattern name of an alert line (for the summary).
fn json_pattern(line: &str) -> String {
    serde_json::from_str::<Json>(line).ok().and_then(|j| j["pattern"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// Why a record was not replayed: the input cannot be read on, or this record is bad.
enum Problem {
    Fatal(String),
    Rejected(String),
}
use Problem::{Fatal, Rejected};

type Records = Box<dyn Iterator<Item = (u64, Result<(String, i32, engine::Event), Problem>)>>;

const AVRO_MAGIC: &[u8; 4] = b"Obj\x01";

/// The records of an export: JSON lines, or an Avro object container file (detected by its
/// magic bytes). Each record's `seq` is its coordinate: a JSON line with `"partition"` and
/// `"offset"` (as `tripline export` writes) is that record of that partition; otherwise the
/// line or record number, from 1, in partition 0.
fn read_records(path: &Path, catalog: &dsl::Catalog, stream: Option<&str>) -> Result<Records, (u8, String)> {
    let open =
        || std::fs::File::open(path).map_err(|e| (EXIT_USAGE, format!("error: cannot read {}: {e}", path.display())));
    let mut magic = [0u8; 4];
    let is_avro = std::io::Read::read_exact(&mut open()?, &mut magic).is_ok() && &magic == AVRO_MAGIC;
    if !is_avro {
        let catalog = catalog.clone();
        let lines = std::io::BufReader::new(open()?).lines().enumerate();
        return Ok(Box::new(lines.filter_map(move |(i, line)| {
            let n = i as u64 + 1;
            match line {
                Err(e) => Some((n, Err(Fatal(format!("line {n}: {e}"))))),
                Ok(l) if l.trim().is_empty() => None,
                Ok(l) => Some((n, parse_line(&l, &catalog, n).map_err(Rejected))),
            }
        })));
    }
    let reader = apache_avro::Reader::new(std::io::BufReader::new(open()?))
        .map_err(|e| (EXIT_USAGE, format!("error: {}: not a readable Avro file: {e}", path.display())))?;
    // The record type of each union branch (or the one record type) of the writer schema.
    let branch_names: Vec<String> = match reader.writer_schema() {
        apache_avro::Schema::Record(r) => vec![r.name.fullname(None)],
        apache_avro::Schema::Union(u) => u
            .variants()
            .iter()
            .map(|v| match v {
                apache_avro::Schema::Record(r) => r.name.fullname(None),
                _ => String::new(),
            })
            .collect(),
        other => {
            return Err((
                EXIT_USAGE,
                format!("error: {}: the Avro schema is {other:?}, not a record or a union of records", path.display()),
            ))
        }
    };
    let candidates: Vec<&String> = catalog
        .streams
        .iter()
        .filter(|(name, s)| {
            stream.is_none_or(|want| want == name.as_str())
                && branch_names.iter().filter(|b| !b.is_empty()).all(|b| s.record_type(b).is_some())
        })
        .map(|(name, _)| name)
        .collect();
    let stream_name = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err((
                EXIT_USAGE,
                format!(
                    "error: {}: no configured stream has the record type(s) {}{}",
                    path.display(),
                    branch_names.join(", "),
                    stream.map(|s| format!(" (asked for stream `{s}`)")).unwrap_or_default()
                ),
            ))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            return Err((
                EXIT_USAGE,
                format!(
                    "error: {}: several streams fit ({}): say which with --stream",
                    path.display(),
                    names.join(", ")
                ),
            ));
        }
    };
    let schema = catalog.streams[&stream_name].clone();
    Ok(Box::new(reader.enumerate().map(move |(i, record)| {
        let n = i as u64 + 1;
        let value = match record {
            Ok(v) => v,
            Err(e) => return (n, Err(Fatal(format!("record {n}: {e}")))),
        };
        let type_name = match &value {
            apache_avro::types::Value::Union(idx, _) => branch_names.get(*idx as usize).cloned(),
            _ => branch_names.first().cloned(),
        };
        let result = serde_json::Value::try_from(value)
            .map_err(|e| Rejected(format!("record {n}: {e}")))
            .and_then(|json| decode::json_event(&schema, type_name.as_deref(), &json, n).map_err(Rejected))
            .map(|event| (stream_name.clone(), 0, event));
        (n, result)
    })))
}

fn parse_line(line: &str, catalog: &dsl::Catalog, n: u64) -> Result<(String, i32, engine::Event), String> {
    let j: Json = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let stream = j["stream"].as_str().ok_or("no \"stream\"")?;
    let schema = catalog.streams.get(stream).ok_or_else(|| format!("unknown stream `{stream}`"))?;
    let (partition, seq) = match (j.get("partition"), j.get("offset")) {
        (None, None) => (0, n),
        (Some(p), Some(o)) => {
            let p = p.as_i64().filter(|p| (0..=0xffff).contains(p)).ok_or("\"partition\" is not a partition number")?;
            let o = o.as_i64().filter(|o| (0..1 << 48).contains(o)).ok_or("\"offset\" is not an offset")?;
            (p as i32, seq_of(p as i32, o))
        }
        _ => return Err("give both \"partition\" and \"offset\", or neither".to_owned()),
    };
    let event = decode::json_event(schema, j["type"].as_str(), &j["value"], seq)?;
    Ok((stream.to_owned(), partition, event))
}

fn json_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or_else(|| "null".to_owned(), |n| n.to_string()),
        Value::Str(s) => serde_json::to_string(s.as_ref()).unwrap_or_default(),
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A stable alert id: the pattern's content hash, the key and the matched events' coordinates.
pub fn alert_id(nfa: &Nfa, key: &Key, matched: &[(String, Vec<u64>)]) -> String {
    let mut h = Sha256::new();
    h.update(nfa.meta.hash.as_bytes());
    h.update([0]);
    h.update(key.to_string().as_bytes());
    for (var, seqs) in matched {
        h.update([0]);
        h.update(var.as_bytes());
        for s in seqs {
            h.update(s.to_be_bytes());
        }
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// One alert as a JSON line, fields in a fixed order. `match` lists, per variable, the offsets
/// of the events it took in `partition` (an export without coordinates: partition 0, line or
/// record numbers).
pub fn alert_line(nfa: &Nfa, key: &Key, ts: i64, events: &engine::runtime::MatchEvents) -> String {
    let body = engine::alert::body(nfa, events);
    let m = &nfa.meta;
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "{{\"alert_id\":{},\"pattern\":{},\"version\":{},\"hash\":{},\"severity\":{},\"mode\":{},\"key\":{},\"ts\":{ts},",
        json_str(&alert_id(nfa, key, &body.matched)),
        json_str(&m.name),
        m.version,
        json_str(&m.hash),
        json_str(m.severity.as_str()),
        json_str(if m.mode == engine::Mode::Shadow { "shadow" } else { "live" }),
        json_str(&key.to_string()),
    );
    write_match(&mut s, &body.matched);
    s.push_str(",\"fields\":{");
    for (i, (name, v)) in body.fields.iter().enumerate() {
        let _ = write!(s, "{}{}:{}", if i > 0 { "," } else { "" }, json_str(name), json_value(v));
    }
    let _ = write!(s, "}},\"message\":{}}}", json_str(&body.message));
    s
}

/// A timed-out partial match as a JSON line: the pattern, the key, when the window closed and
/// the events taken so far.
pub fn timeout_line(nfa: &Nfa, key: &Key, ts: i64, events: &engine::runtime::MatchEvents) -> String {
    let m = &nfa.meta;
    let mut matched = Vec::new();
    for (i, v) in nfa.vars.iter().enumerate() {
        if let Some((_, list)) = events.iter().find(|(var, _)| var.index() == i) {
            matched.push((v.name.clone(), list.iter().map(|e| e.seq).collect::<Vec<u64>>()));
        }
    }
    let mut s = String::with_capacity(160);
    let _ = write!(
        s,
        "{{\"pattern\":{},\"version\":{},\"hash\":{},\"key\":{},\"timed_out_at\":{ts},",
        json_str(&m.name),
        m.version,
        json_str(&m.hash),
        json_str(&key.to_string()),
    );
    write_match(&mut s, &matched);
    s.push('}');
    s
}

/// `"partition":P,"match":{"var":[offset,...],...}`.
fn write_match(s: &mut String, matched: &[(String, Vec<u64>)]) {
    let partition = matched.iter().flat_map(|(_, seqs)| seqs.first()).map(|&q| coords(q).0).next().unwrap_or(0);
    let _ = write!(s, "\"partition\":{partition},\"match\":{{");
    for (i, (var, seqs)) in matched.iter().enumerate() {
        let list: Vec<String> = seqs.iter().map(|&q| coords(q).1.to_string()).collect();
        let _ = write!(s, "{}{}:[{}]", if i > 0 { "," } else { "" }, json_str(var), list.join(","));
    }
    s.push('}');
}
