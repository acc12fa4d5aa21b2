//! What the tests of the explanations run on: the library patterns and their examples, and the
//! alerts a replay of the examples writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::runtime::Config as OpConfig;
use engine::{Event, Nfa, RefData};
use serde_json::Value as Json;

use crate::core::coords::seq_of;
use crate::core::partition::{Emit, Partition};
use crate::core::plan::StreamPlan;

pub(super) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The plan of the library pattern `name` alone, on its stream.
pub(super) fn plan(name: &str) -> Arc<StreamPlan> {
    let root = root();
    let cfg = crate::core::config::Config::load(&root.join("tripline.toml")).expect("config");
    let catalog = cfg.catalog(&root.join("tripline.toml")).expect("catalog");
    let text = std::fs::read_to_string(root.join(format!("patterns/{name}.tl"))).expect("pattern");
    let compiled = dsl::compile_source(&dsl::SourceFile::new(format!("{name}.tl"), text), &catalog);
    assert!(compiled.diagnostics.is_empty(), "{:?}", compiled.diagnostics);
    let nfas: Vec<Arc<Nfa>> = compiled.patterns.into_iter().map(|p| Arc::new(p.nfa)).collect();
    let stream = nfas[0].meta.stream.clone();
    StreamPlan::new(&stream, &cfg.streams[&stream], catalog.streams[&stream].clone(), &nfas)
}

/// The example events of pattern `name`: JSON lines, `seq` = line number, partition 0.
pub(super) fn events(plan: &StreamPlan, name: &str) -> Vec<Arc<Event>> {
    let text = std::fs::read_to_string(root().join(format!("patterns/examples/{name}.events.jsonl"))).expect("events");
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let j: Json = serde_json::from_str(l).expect("json");
            let ev = dsl::json_event(&plan.schema, j["type"].as_str(), &j["value"], i as u64 + 1);
            Arc::new(ev.expect("event"))
        })
        .collect()
}

/// The library config's reference tables (from their files).
pub(super) fn tables() -> RefData {
    let path = root().join("tripline.toml");
    let cfg = crate::core::config::Config::load(&path).expect("config");
    crate::core::tables::load(&cfg, &path).expect("tables")
}

/// The alert lines a replay of the examples writes (the whole range, end of time), with the
/// library's reference tables.
pub(super) fn alerts(plan: &Arc<StreamPlan>, events: &[Arc<Event>]) -> Vec<Json> {
    let mut part = Partition::new(plan.clone(), 0, OpConfig::default()).without_change_tracking();
    part.set_reference(&tables());
    let mut emit = Vec::new();
    for e in events {
        part.process((**e).clone(), &mut emit);
    }
    part.finish(&mut emit);
    emit.into_iter()
        .filter_map(|e| match e {
            Emit::Alert { json, .. } => Some(serde_json::from_str(&json).expect("alert json")),
            Emit::Timeout { .. } => None,
        })
        .collect()
}

/// The events an alert names.
pub(super) fn matched(alert: &Json, events: &[Arc<Event>]) -> Vec<Arc<Event>> {
    let partition = alert["partition"].as_i64().expect("partition") as i32;
    let offsets: Vec<u64> = alert["match"]
        .as_object()
        .expect("match")
        .values()
        .flat_map(|l| l.as_array().expect("list").iter().map(|o| seq_of(partition, o.as_i64().expect("offset"))))
        .collect();
    events.iter().filter(|e| offsets.contains(&e.seq)).cloned().collect()
}
