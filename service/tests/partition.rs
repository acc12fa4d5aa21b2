//! The service's core driven in-process, without a broker (as Arroyo's operator tests drive an
//! operator with a collector): a [`Partition`] is fed decoded records and its outputs collected.
//!
//! - every library pattern's examples give exactly the expected alerts;
//! - a partition checkpointed through its changelog records ([`Partition::take_changes`]) at
//!   any point, with its keys dropped from memory and read back from the store, and restored
//!   into a fresh one ([`Partition::open`], [`Partition::index`]) emits the same bytes as one
//!   that ran straight through: what makes the service exactly once across crashes;
//! - late events are refused and counted, never fed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::runtime::Config as OpConfig;
use serde_json::Value;
use tripline_service::core::changelog::{Changes, MemoryState};
use tripline_service::core::config::Config;
use tripline_service::core::partition::{Emit, Partition};
use tripline_service::core::pattern_sets::compile_files;
use tripline_service::core::plan::{admit, build_plans, StreamPlan};
use tripline_service::io::files::read_records;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("service/ is in the repository").to_owned()
}

/// The library's config and the plan of `pattern`'s stream with that pattern alone.
fn plan_of(pattern: &str) -> (Config, dsl::Catalog, Arc<StreamPlan>) {
    let path = root().join("tripline.toml");
    let cfg = Config::load(&path).expect("config");
    let catalog = cfg.catalog(&path).expect("catalog");
    let set = compile_files(&[root().join(format!("patterns/{pattern}.tl"))], &catalog, &mut |d| panic!("{d}"))
        .expect("compiles");
    let plans = build_plans(&cfg.streams, &path, &catalog, &set.nfas).expect("plans");
    let plan = plans.into_values().next().expect("one stream");
    (cfg, catalog, plan)
}

/// The example events of `pattern`, decoded (each `seq` its line number, in partition 0).
fn examples(pattern: &str, catalog: &dsl::Catalog) -> Vec<engine::Event> {
    let file = root().join(format!("patterns/examples/{pattern}.events.jsonl"));
    read_records(&file, catalog, None)
        .expect("readable")
        .map(|(n, r)| r.unwrap_or_else(|e| panic!("{pattern} line {n}: {e:?}")).2)
        .collect()
}

/// Feeds `events` to `part` (each admitted as the service does); the emitted outputs.
fn feed(part: &mut Partition, cfg: &Config, events: &[engine::Event], emit: &mut Vec<Emit>) {
    for e in events {
        admit(&part.plan, e, cfg.service.min_event_time, cfg.service.max_event_time).expect("admitted");
        part.process(e.clone(), emit);
    }
}

fn alert_lines(emit: &[Emit]) -> Vec<String> {
    emit.iter()
        .filter_map(|e| match e {
            Emit::Alert { json, .. } => Some(json.clone()),
            Emit::Timeout { .. } => None,
        })
        .collect()
}

fn library() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("patterns"))
        .expect("patterns/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tl"))
        .map(|p| p.file_stem().expect("name").to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 12, "{names:?}");
    names
}

/// The parts of an alert the examples pin down.
fn project(line: &str) -> Value {
    let a: Value = serde_json::from_str(line).expect("JSON");
    let mut m = serde_json::Map::new();
    for k in ["pattern", "key", "match", "fields", "message"] {
        m.insert(k.to_owned(), a[k].clone());
    }
    Value::Object(m)
}

#[test]
fn every_library_pattern_raises_exactly_its_expected_alerts_in_process() {
    for name in library() {
        let (cfg, catalog, plan) = plan_of(&name);
        let mut part = Partition::new(plan, 0, OpConfig::default()).without_change_tracking();
        let mut emit = Vec::new();
        feed(&mut part, &cfg, &examples(&name, &catalog), &mut emit);
        part.finish(&mut emit);
        let got: Vec<Value> = alert_lines(&emit).iter().map(|l| project(l)).collect();
        let expected = std::fs::read_to_string(root().join(format!("patterns/examples/{name}.alerts.jsonl")))
            .expect("expected alerts");
        let want: Vec<Value> =
            expected.lines().map(|l| serde_json::from_str(l).expect("expected alert is JSON")).collect();
        assert_eq!(got, want, "{name}");
        assert_eq!(part.counts.alerts, want.len() as u64, "{name}: counted");
    }
}

#[test]
fn a_partition_restored_from_its_changelog_records_goes_on_byte_for_byte() {
    for name in library() {
        let (cfg, catalog, plan) = plan_of(&name);
        let events = examples(&name, &catalog);
        // Straight through, all in memory.
        let mut straight = Vec::new();
        let mut part = Partition::new(plan.clone(), 0, OpConfig::default()).without_change_tracking();
        feed(&mut part, &cfg, &events, &mut straight);
        part.finish(&mut straight);
        // Kept in a store and checkpointed after every event (the changelog: latest value per
        // key); every key dropped from memory after every other event; and replaced at every
        // third by a partition opened from the store or restored from the changelog: each must
        // pick up exactly there.
        let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut store = Arc::new(MemoryState::default());
        let mut emitted = Vec::new();
        let mut part = Partition::new(plan.clone(), 0, OpConfig::default());
        part.open(store.clone()).expect("an empty store opens");
        for (i, e) in events.iter().enumerate() {
            feed(&mut part, &cfg, std::slice::from_ref(e), &mut emitted);
            part.next_offset = i as i64 + 1;
            let mut changes = Changes::default();
            part.take_changes(&mut changes);
            assert!(!changes.records.is_empty(), "{name}: the meta record at least");
            store.apply(&changes);
            for (k, v) in changes.records {
                match v {
                    Some(v) => changelog.insert(k, v),
                    None => changelog.remove(&k),
                };
            }
            if i % 2 == 1 {
                part.evict(0);
                assert_eq!(part.cached_keys(), 0, "{name}: nothing changed since the commit");
            }
            if i % 3 == 2 {
                let mut fresh = Partition::new(plan.clone(), 0, OpConfig::default());
                if i % 2 == 0 {
                    // From the changelog, into a new store.
                    let records: Vec<(Vec<u8>, Vec<u8>)> = changelog.clone().into_iter().collect();
                    let (local, summary) = fresh.index(&records).expect("indexes");
                    assert!(summary.meta && summary.stale == 0, "{name}: {summary:?}");
                    store = Arc::new(MemoryState(std::sync::Mutex::new(local.into_iter().collect())));
                }
                let summary = fresh.open(store.clone()).expect("opens");
                assert!(summary.meta && summary.stale == 0, "{name}: {summary:?}");
                assert_eq!(fresh.next_offset, i as i64 + 1, "{name}: the position");
                assert_eq!(fresh.watermark(), part.watermark(), "{name}: the watermark");
                assert_eq!(fresh.counts, part.counts, "{name}: the counts");
                let active = |p: &Partition| {
                    p.operators().iter().map(|o| (o.active_keys(), o.active_partial_matches())).collect::<Vec<_>>()
                };
                assert_eq!(active(&fresh), active(&part), "{name}: keys and partial matches");
                part = fresh;
            }
        }
        part.finish(&mut emitted);
        assert!(part.take_store_error().is_none());
        assert_eq!(emitted, straight, "{name}: restored partitions emit what one straight run does");
    }
}

#[test]
fn late_events_are_refused_counted_and_never_fed() {
    let (cfg, catalog, plan) = plan_of("rapid_movement");
    let events = examples("rapid_movement", &catalog);
    let mut part = Partition::new(plan.clone(), 0, OpConfig::default()).without_change_tracking();
    let mut emit = Vec::new();
    feed(&mut part, &cfg, &events, &mut emit);
    let wm = part.watermark();
    assert!(wm > i64::MIN, "the examples move the watermark");
    let (processed, alerts) = (part.counts.processed, emit.len());
    // An event at the watermark, and one behind it: late (`ts <= watermark`), nothing emitted.
    for ts in [wm, wm - 1] {
        let mut late = events[0].clone();
        late.ts = ts;
        assert!(part.is_late(ts));
        assert!(!part.process(late, &mut emit), "ts {ts} at or behind the watermark {wm} is late");
    }
    assert_eq!(part.counts.late, 2);
    assert_eq!(part.counts.processed, processed, "late events are not processed");
    assert_eq!(emit.len(), alerts, "late events raise nothing");
    assert_eq!(part.watermark(), wm, "late events do not move the watermark");
    // One after it is on time.
    let mut on_time = events[0].clone();
    on_time.ts = wm + 1;
    assert!(part.process(on_time, &mut emit));
    assert_eq!(part.counts.processed, processed + 1);
}
