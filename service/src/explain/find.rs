//! `tripline explain --alert ID` and `tripline explain --key KEY --pattern NAME`: finds the
//! alert, the pattern version that raised it and the matched records (in Kafka or in files), or
//! runs one pattern over a range watching one key, and returns what [`super`] makes of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::runtime::{Config as OpConfig, Key};
use engine::{Bound, Nfa, Value};
use rdkafka::message::Message;
use serde_json::Value as Json;

use std::time::Duration;

use crate::core::context::Step;
use crate::core::coords::{coords, seq_of};
use crate::core::plan::{admit, StreamPlan};
use crate::core::range::{bounds, PartRange};
use crate::core::tables;
use crate::error::{Error, Result};
use crate::io::alert_avro;
use crate::io::avro::{AvroIn, Retried};
use crate::io::files::read_records;
use crate::io::kafka;
use crate::io::reader::{self, PartReader, Read};
use crate::replay::{choose, kafka_ranges, read_kafka, Choice, Env, Input, Item};

/// Where the events come from, and which patterns may have raised the alert.
#[derive(Debug)]
pub struct Sources<'a> {
    pub patterns: Option<Choice<'a>>,
    pub input: Option<&'a Path>,
    pub config: Option<&'a Path>,
}

/// How long an explanation waits for a schema registry that does not answer.
const REGISTRY_PATIENCE: Duration = Duration::from_secs(30);

/// `tripline explain --alert ID [--alerts FILE]`: the explanation's text.
pub fn alert(id: &str, alerts: Option<&Path>, src: &Sources<'_>) -> Result<String> {
    let id = id.trim();
    let mut env = Env::load(src.config)?;
    let alert = find_alert(&mut env, id, alerts)?;
    let name = alert["pattern"].as_str().unwrap_or_default().to_owned();
    let hash = alert["hash"].as_str().unwrap_or_default().to_owned();
    let nfa = pattern_of(&mut env, src, &name, &hash, alert["version"].as_u64().unwrap_or(0))?;
    let stream = &env.cfg.streams[&nfa.meta.stream];
    let topic = stream.topic.clone();
    let wanted: BTreeSet<(i32, i64)> =
        super::alert::coordinates(&alert)?.into_iter().flat_map(|(_, list)| list).collect();
    let plan = StreamPlan::new(
        &nfa.meta.stream,
        stream,
        env.catalog.streams[&nfa.meta.stream].clone(),
        std::slice::from_ref(&nfa),
    );
    let events = match src.input {
        Some(file) => events_from_file(&env, file, &plan, &wanted)?,
        None => events_from_kafka(&mut env, &plan, &wanted)?,
    };
    // The reference tables its conditions read: as the service had them at the alert's first
    // record (recorded in the context topic), or the config's for a file.
    let mut refs = Bound::NONE;
    if !nfa.tables.is_empty() {
        let data = match src.input {
            Some(_) => tables::load(&env.cfg, &env.path)?,
            None => {
                let mut context = env.context()?;
                let (p, o) = wanted.iter().next().copied().unwrap_or((0, 0));
                let steps = context.due(&topic, p, o);
                let last =
                    steps.into_iter().filter_map(|s| if let Step::Tables(d) = s { Some(d) } else { None }).last();
                last.unwrap_or_default()
            }
        };
        refs = Bound::new(&nfa.tables, &data);
    }
    let label = if src.input.is_some() { plan.name.clone() } else { topic };
    super::alert(&nfa, &label, &alert, &events, &refs).map_err(|e| e.context(format!("alert {id}")))
}

/// The alert line with id `id`: from `alerts` (JSON lines, as replay writes them) or from the
/// alerts and shadow alerts topics.
fn find_alert(env: &mut Env, id: &str, alerts: Option<&Path>) -> Result<Json> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::usage(format!("`{id}` is not an alert id (32 hex digits, the alert's \"alert_id\")")));
    }
    // JSON alerts, or Avro ones (`outputs.alert_format`), read through the registry.
    let mut records = alert_avro::Records::new(kafka::registry(&env.cfg).ok());
    let mut matches = |bytes: &[u8]| -> Option<Json> {
        // Most records are other alerts: look for the id's bytes before parsing (an Avro
        // record holds them as they are).
        if !bytes.windows(id.len()).any(|w| w == id.as_bytes()) {
            return None;
        }
        let text = match records.text(bytes) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("an alert record that holds `{id}` does not decode: {e}");
                return None;
            }
        };
        let j: Json = serde_json::from_str(&text).ok()?;
        (j["alert_id"].as_str() == Some(id)).then_some(j)
    };
    match alerts {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::usage(format!("cannot read {}: {e}", file.display())))?;
            text.lines()
                .find_map(|l| matches(l.as_bytes()))
                .ok_or_else(|| Error::usage(format!("no alert `{id}` in {}", file.display())))
        }
        None => {
            let topics = [env.cfg.outputs.alerts_topic.clone(), env.cfg.outputs.shadow_alerts_topic.clone()];
            let (reader, cfg) = env.reader_with_config()?;
            for t in &topics {
                if reader::partitions(reader, cfg, &[t.as_str()]).is_err() {
                    continue;
                }
                let mut found = None;
                reader::scan(reader, cfg, t, &mut |_, _, v| {
                    found = matches(v);
                    found.is_none()
                })?;
                if let Some(j) = found {
                    return Ok(j);
                }
            }
            // Reached here: either no such alert or the broker is away; say which.
            reader::partitions(reader, cfg, &[])?;
            Err(Error::usage(format!(
                "no alert `{id}` in topics {} (give a replay's output with --alerts FILE)",
                topics.join(", ")
            )))
        }
    }
}

/// The pattern that raised an alert (`name`, content `hash`): among the given patterns, else
/// among the sets the service recorded, else (file input) the config's patterns.
fn pattern_of(env: &mut Env, src: &Sources<'_>, name: &str, hash: &str, version: u64) -> Result<Arc<Nfa>> {
    let choice = match src.patterns {
        Some(c) => c,
        None if src.input.is_none() => {
            // The recorded activations name the set that ran this version.
            let topic = env.cfg.outputs.pattern_sets_topic.clone();
            let recorded = env.activations()?;
            let set = recorded.iter().find(|a| a.patterns.iter().any(|p| p.hash == hash)).map(|a| a.set.clone());
            match set {
                Some(set) => return pattern_in(env, Choice::Recorded(&set), name, hash, version),
                None => {
                    return Err(Error::usage(format!(
                        "pattern `{name}` version {version} (hash {hash}) is in no pattern set recorded in `{topic}`: \
                         give its file with --patterns"
                    )))
                }
            }
        }
        None => Choice::Configured,
    };
    pattern_in(env, choice, name, hash, version)
}

fn pattern_in(env: &mut Env, choice: Choice<'_>, name: &str, hash: &str, version: u64) -> Result<Arc<Nfa>> {
    let chosen = choose(env, choice)?;
    if let Some(n) = chosen.set.nfas.iter().find(|n| n.meta.hash == hash) {
        return Ok(n.clone());
    }
    let other = chosen.set.nfas.iter().find(|n| n.meta.name == name);
    Err(Error::usage(match other {
        Some(n) => format!(
            "the alert was raised by `{name}` version {version} (hash {hash}); {} has version {} (hash {}): \
             give the version that raised it (--patterns FILE, or --pattern-set HASH)",
            chosen.origin, n.meta.version, n.meta.hash
        ),
        None => format!("the alert was raised by pattern `{name}`, which is not in {}", chosen.origin),
    }))
}

fn events_from_file(
    env: &Env,
    file: &Path,
    plan: &StreamPlan,
    wanted: &BTreeSet<(i32, i64)>,
) -> Result<Vec<Arc<engine::Event>>> {
    let seqs: BTreeSet<u64> = wanted.iter().map(|&(p, o)| seq_of(p, o)).collect();
    let mut events = Vec::new();
    for (_, record) in read_records(file, &env.catalog, Some(&plan.name))? {
        if let Ok((stream, _, event)) = record {
            if stream == plan.name && seqs.contains(&event.seq) {
                events.push(Arc::new(event));
            }
        }
    }
    Ok(events)
}

fn events_from_kafka(
    env: &mut Env,
    plan: &Arc<StreamPlan>,
    wanted: &BTreeSet<(i32, i64)>,
) -> Result<Vec<Arc<engine::Event>>> {
    let mut avro = AvroIn::for_plans(&env.cfg, &env.path, [plan])?;
    let reader = env.reader()?;
    let mut events = Vec::new();
    for &(partition, offset) in wanted {
        let range = PartRange { topic: plan.topic.clone(), partition, start: offset, end: offset + 1 };
        let mut r = PartReader::new(reader, &range)?;
        let Read::Record(m) = r.next()? else {
            return Err(Error::usage(format!("{}/{partition}@{offset} is not in the topic any more", plan.topic)));
        };
        match avro.decode_retrying(plan, m.payload(), seq_of(partition, offset), Some(REGISTRY_PATIENCE), &|| false)? {
            Retried::Decoded(e) => events.push(Arc::new(e)),
            Retried::Rejected(r) => {
                return Err(Error::usage(format!(
                    "{}/{partition}@{offset} does not decode ({}): {}: the service dead-lettered it, so no alert can \
                     name it; is the alert from another cluster?",
                    plan.topic, r.code, r.message
                )))
            }
            Retried::Cancelled => {
                return Err(Error::failed(format!("{}/{partition}@{offset}: decoding was cancelled", plan.topic)))
            }
        }
    }
    Ok(events)
}

/// Options of `tripline explain --key`.
#[derive(Debug)]
pub struct KeyOptions<'a> {
    pub key: &'a str,
    pub pattern: &'a str,
    pub topic: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub open_end: bool,
}

/// `tripline explain --key KEY --pattern NAME`: the trace's text.
pub fn key(opts: &KeyOptions<'_>, src: &Sources<'_>) -> Result<String> {
    let (from, to) = bounds(opts.from, opts.to, opts.topic, src.input.is_some())?;
    let mut env = Env::load(src.config)?;
    let chosen = choose(&mut env, src.patterns.unwrap_or(Choice::Configured))?;
    let Some(nfa) = chosen.set.nfas.iter().find(|n| n.meta.name == opts.pattern).cloned() else {
        let names: Vec<&str> = chosen.set.nfas.iter().map(|n| n.meta.name.as_str()).collect();
        return Err(Error::usage(format!(
            "no pattern `{}` in {} (it has: {})",
            opts.pattern,
            chosen.origin,
            names.join(", ")
        )));
    };
    let stream_cfg = &env.cfg.streams[&nfa.meta.stream];
    let schema = env.catalog.streams[&nfa.meta.stream].clone();
    let key = parse_key(&schema, &nfa, opts.key);
    // The stream's plan as the service runs it: every pattern of the set that reads it (the
    // admission checks need their keys).
    let plan = StreamPlan::new(&nfa.meta.stream, stream_cfg, schema, &chosen.set.nfas);
    let op_config =
        OpConfig { max_partial_matches_per_key: env.cfg.engine.max_partial_matches_per_key, ..OpConfig::default() };
    let mut trace = super::KeyTrace::new(nfa.clone(), key, plan.out_of_orderness, op_config);
    let (min_ts, max_ts) = (env.cfg.service.min_event_time, env.cfg.service.max_event_time);
    let feed = |trace: &mut super::KeyTrace, input: Input<'_>| {
        if let Ok(event) = input.event {
            if input.stream == plan.name && admit(&plan, &event, min_ts, max_ts).is_ok() {
                trace.feed(input.partition, Arc::new(event));
            }
        }
    };
    let label = match src.input {
        Some(file) => {
            // A file has no recorded context: the config's reference tables.
            trace.set_tables(&tables::load(&env.cfg, &env.path)?);
            for (_, record) in read_records(file, &env.catalog, Some(&plan.name))? {
                if let Ok((stream, partition, event)) = record {
                    let offset = coords(event.seq).1;
                    let (source, timestamp, event) = (stream.as_str(), None, Ok(event));
                    feed(&mut trace, Input { stream: source, source, partition, offset, timestamp, event });
                }
            }
            plan.name.clone()
        }
        None => {
            let mut topics: BTreeMap<String, Arc<StreamPlan>> = BTreeMap::new();
            topics.insert(plan.topic.clone(), plan.clone());
            let defaults = chosen.starts.iter().map(|(k, p)| (k.clone(), p.offset)).collect();
            let reader = reader::reader(&env.cfg)?;
            let ranges = kafka_ranges(&env, &reader, &mut topics, opts.topic, from.as_ref(), to.as_ref(), &defaults)?;
            // What the service applied besides the records, where it applied it (as a replay).
            let mut context = env.context()?;
            for r in &ranges {
                context.start_at(&r.topic, r.partition, r.start);
            }
            read_kafka(&env, &reader, &topics, &ranges, &mut |item| match item {
                Item::Record(input) => {
                    trace.apply(input.partition, context.due(input.source, input.partition, input.offset));
                    feed(&mut trace, input);
                }
                Item::Done { topic, partition, next } => trace.apply(partition, context.due(topic, partition, next)),
                Item::Marker { .. } => {}
            })?;
            plan.topic.clone()
        }
    };
    Ok(trace.finish(&label, opts.open_end || src.input.is_none()))
}

/// A key as typed on the command line, as the pattern's key field holds it.
fn parse_key(schema: &dsl::StreamSchema, nfa: &Nfa, text: &str) -> Key {
    let field = &schema.fields[nfa.meta.key.index()];
    match field.ty {
        dsl::FieldType::Int | dsl::FieldType::Timestamp => {
            text.trim().parse::<i64>().map(|i| Key::of(&Value::Int(i))).unwrap_or_else(|_| Key::of(&Value::str(text)))
        }
        _ => Key::of(&Value::str(text)),
    }
}

/// Pattern paths as a choice (helper for the CLI).
pub fn choice<'a>(files: &'a [PathBuf], hash: &'a Option<String>) -> Option<Choice<'a>> {
    match (files, hash) {
        (_, Some(h)) => Some(Choice::Recorded(h.as_str())),
        ([], None) => None,
        (f, None) => Some(Choice::Files(f)),
    }
}
